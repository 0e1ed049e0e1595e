"""A QoS 1 MQTT 3.1.1 publisher for benchmarks: PUBLISH packets written straight to a socket.

paho's publisher costs about 50 µs a message in Python, so a 500k backlog took minutes to queue on a
loaded machine; here the packets are built in one pass and written in large chunks, and a reader
thread counts the broker's PUBACKs to keep a bounded window of unacknowledged packet ids. What the
broker queues for the subscribers is the same: QoS 1 messages, one topic per series.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator

BASE_NS = 1_764_000_000_000_000_000
WINDOW = 20_000  # unacknowledged PUBLISHes at most: fewer than the 65,535 packet ids
CHUNK = 500  # packets per socket write


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str, keepalive_s: int = 60) -> bytes:
    body = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive_s) + _string(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    body = _string(topic) + struct.pack("!H", packet_id) + payload
    return b"\x32" + _remaining_length(len(body)) + body


def messages(n_equipment: int, n_signals: int, per_series: int) -> Iterator[tuple[str, bytes]]:
    """The bench stream: 500 machines × 4 signals, each with its own device timestamp (ns)."""
    for i in range(per_series):
        for e in range(n_equipment):
            for s in range(n_signals):
                ts = BASE_NS + i * 1_000_000_000 + e * 1000 + s
                payload = json.dumps({"ts": ts, "value": round(e + s * 0.5 + i * 0.01, 3)})
                yield f"plant/eq{e:04d}/sig{s}", payload.encode()


def publish(port: int, stream: Iterator[tuple[str, bytes]], client_id: str = "bench-publisher") -> int:
    """Publish every message of ``stream`` at QoS 1 to the broker on 127.0.0.1:``port``; return once
    the broker acknowledged them all. Returns how many."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id))
    connack = sock.recv(4)
    if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
        raise RuntimeError(f"the broker refused the publisher: {connack!r}")
    acked = 0
    room = threading.Condition()
    failed: list[BaseException] = []

    def read_acks() -> None:
        nonlocal acked
        buffer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                buffer += data
                whole = len(buffer) // 4 * 4  # PUBACKs only: 4 bytes each
                n = whole // 4
                buffer = buffer[whole:]
                with room:
                    acked += n
                    room.notify_all()
        except OSError as e:
            failed.append(e)
            with room:
                room.notify_all()

    reader = threading.Thread(target=read_acks, daemon=True)
    reader.start()
    sent = 0
    chunk: list[bytes] = []
    for topic, payload in stream:
        chunk.append(publish_packet(topic, payload, sent % 65535 + 1))
        sent += 1
        if len(chunk) >= CHUNK:
            with room:
                while sent - acked > WINDOW and not failed:
                    room.wait(1.0)
            sock.sendall(b"".join(chunk))
            chunk = []
    if chunk:
        sock.sendall(b"".join(chunk))
    with room:
        while acked < sent and not failed:
            if not room.wait(120):
                raise RuntimeError(f"the broker acknowledged {acked} of {sent} messages")
    if failed:
        raise RuntimeError(f"publisher connection failed: {failed[0]}")
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    return sent
