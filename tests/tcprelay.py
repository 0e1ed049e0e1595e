"""A TCP relay on 127.0.0.1 in front of a real server (the MQTT broker, an OPC UA server), that can
lose what the clients send or what the server sends: the network fault between "the agent sent its
PUBACKs" and "the broker got them", or between "the server sent a notification" and "the agent got it".

    relay = TcpRelay(broker.host, broker.port)   # clients connect to relay.port
    relay.swallow_upstream()   # from now on, bytes from the clients are dropped (the broker's still arrive)
    relay.swallow_downstream() # ... or bytes from the server (the clients' still arrive)
    ...
    relay.forward()            # back to normal; connections that lost bytes are closed first
    relay.close()

Nothing is parsed or answered by the relay: the server is real, only some bytes never arrive.
A connection that lost bytes has a broken stream, so it is never forwarded again: it is closed
when forwarding resumes (or when either side closes it).
"""

from __future__ import annotations

import contextlib
import socket
import threading

HOST = "127.0.0.1"


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.lost_bytes = {True: False, False: False}  # from the client?

    def close(self) -> None:
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


class TcpRelay:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server((HOST, 0))
        self.host = HOST
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._swallow = {True: False, False: False}  # from the client?
        self._closed = False
        self.swallowed = 0  # bytes that never arrived
        threading.Thread(target=self._accept, name="tcprelay-accept", daemon=True).start()

    def swallow_upstream(self) -> None:
        with self._lock:
            self._swallow[True] = True

    def swallow_downstream(self) -> None:
        with self._lock:
            self._swallow[False] = True

    def forward(self) -> None:
        with self._lock:
            self._swallow = {True: False, False: False}
            broken = [p for p in self._pairs if any(p.lost_bytes.values())]
        for pair in broken:
            pair.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()  # the server is down: the client sees a closed connection
                continue
            upstream.settimeout(None)
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, False), daemon=True).start()

    def _pump(self, pair: _Pair, from_client: bool) -> None:
        src, dst = (pair.client, pair.upstream) if from_client else (pair.upstream, pair.client)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    swallow = self._swallow[from_client] or pair.lost_bytes[from_client]
                    if swallow:
                        pair.lost_bytes[from_client] = True
                        self.swallowed += len(data)
                if swallow:
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            pair.close()
            with self._lock:
                if pair in self._pairs:
                    self._pairs.remove(pair)
