"""Simulated DL/T 645-2007 meters on a simulated bus, for the tests and ``fmc demo``: a real peer
speaking real frames over TCP (a transparent converter) or a serial line (one end of a pty pair).

SIMULATED: nothing here measures anything. ``MeterBus.answer`` is pure (a request's bytes in, the
reply's bytes out); ``TcpMeterServer`` and ``SerialMeterServer`` put it on a line, each in a thread.
Faults a test or the demo can switch on per meter: silence (``answering = False``), an error reply
for an identifier (``errors``), a wrong checksum for the next replies (``corrupt_next``), another
address in the reply (``reply_address``), a value that is not BCD (``not_bcd``); per bus: noise
bytes before each reply (``noise``).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from fmc.sources.dlt645 import frame as f

ENERGY_ROLLOVER_KWH = 1_000_000.0  # forward active energy shows 000000.00-999999.99, then 0 again


@dataclass
class SimulatedMeter:
    address: str
    registers: dict[int, float] = field(default_factory=dict)  # data identifier -> value in its unit
    answering: bool = True
    errors: dict[int, int] = field(default_factory=dict)  # data identifier -> error byte
    corrupt_next: int = 0  # so many replies go out with a wrong checksum
    reply_address: str | None = None  # answer as this address (a misconfigured meter)
    not_bcd: set[int] = field(default_factory=set)  # identifiers whose value goes out as 0xAA bytes
    follows: set[int] = field(default_factory=set)  # identifiers answered with C = B1 ("more frames follow")
    on_read: Callable[[int, float], None] | None = None  # told of every value sent (the bus lock held)
    requests: int = 0

    def add_energy(self, kwh: float, di: int = 0x00010000) -> None:
        """Advance an energy register, wrapping at 1 000 000 kWh like a real register."""
        value = self.registers.get(di, 0.0) + kwh
        self.registers[di] = round(value % ENERGY_ROLLOVER_KWH, 2)


class MeterBus:
    """The meters on one bus; one request in, at most one reply out."""

    def __init__(self, meters: list[SimulatedMeter] | None = None, *, preamble: int = 2) -> None:
        self.meters: dict[str, SimulatedMeter] = {m.address: m for m in meters or []}
        self.preamble = preamble
        self.noise = b""  # sent before every reply (line noise, a converter's banner)
        self.lock = threading.Lock()

    def add(self, meter: SimulatedMeter) -> SimulatedMeter:
        with self.lock:
            self.meters[meter.address] = meter
        return meter

    def answer(self, request: f.Frame) -> bytes | None:
        with self.lock:
            return self._answer(request)

    def _answer(self, request: f.Frame) -> bytes | None:
        if request.is_reply:
            return None  # another device's reply (or our own echo): not for a meter
        if request.function == f.READ_ADDRESS and request.address == f.BROADCAST_ADDRESS:
            present = [m for m in self.meters.values() if m.answering]
            if not present:
                return None
            replies = [self._frame(m, m.address, f.READ_ADDRESS | f.REPLY_BIT, f.encode_address(m.address))
                       for m in present]
            if len(replies) == 1:
                return self.noise + replies[0]
            # several meters answer at once: on RS-485 their bits mix; the result fails its checksum
            mixed = bytearray(replies[0])
            for other in replies[1:]:
                for i in range(min(len(mixed), len(other))):
                    mixed[i] &= other[i]  # a driven 0 wins on the line
            mixed[-2] = (f.checksum(bytes(mixed[self.preamble : -2])) + 0x5A) & 0xFF
            return self.noise + bytes(mixed)
        meter = self.meters.get(request.address)
        if meter is None or not meter.answering:
            return None
        meter.requests += 1
        if request.function != f.READ_DATA or len(request.data) != 4:
            return self._frame(meter, meter.address, request.function | f.REPLY_BIT | f.ERROR_BIT, b"\x01")
        di = int.from_bytes(request.data, "little")
        ident = f.IDENTIFIERS.get(di)
        code = meter.errors.get(di)
        if code is None and (ident is None or di not in meter.registers):
            code = 0x02  # no data requested
        if code is not None:
            return self._frame(meter, meter.address, f.READ_DATA | f.REPLY_BIT | f.ERROR_BIT, bytes([code]))
        assert ident is not None
        value = bytes([0xAA] * ident.size) if di in meter.not_bcd else f.encode_value(ident, meter.registers[di])
        if meter.on_read is not None:
            meter.on_read(di, meter.registers[di])
        control = f.READ_DATA | f.REPLY_BIT | (f.FOLLOWS_BIT if di in meter.follows else 0)
        return self._frame(meter, meter.reply_address or meter.address, control, f.read_reply_data(di, value))

    def _frame(self, meter: SimulatedMeter, address: str, control: int, data: bytes) -> bytes:
        raw = bytearray(f.encode_frame(address, control, data, self.preamble))
        if meter.corrupt_next > 0:
            meter.corrupt_next -= 1
            raw[-2] ^= 0x5A  # the checksum byte
        return self.noise + bytes(raw)


def _serve_bytes(bus: MeterBus, buffer: bytes) -> tuple[bytes, list[bytes]]:
    """Every whole request in ``buffer`` answered; the bytes left over (a partial request)."""
    replies = []
    while buffer:
        s = f.scan(buffer)
        buffer = buffer[s.consumed :]
        if s.frame is not None:
            reply = bus.answer(s.frame)
            if reply is not None:
                replies.append(reply)
        elif s.problem is None:
            break
    return buffer, replies


class TcpMeterServer:
    """The bus behind a transparent serial-to-Ethernet converter, on 127.0.0.1 (one client at a time,
    as a converter's TCP server mode)."""

    def __init__(self, bus: MeterBus, host: str = "127.0.0.1", port: int = 0) -> None:
        self.bus = bus
        self._listener = socket.create_server((host, port))
        self.host, self.port = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, name="dlt645-sim-tcp", daemon=True)

    def start(self) -> TcpMeterServer:
        self._thread.start()
        return self

    def drop_clients(self) -> None:
        """Close every connection (the converter rebooted); new ones are accepted."""
        for c in list(self._clients):
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        buffers: dict[socket.socket, bytes] = {}
        while not self._stop.is_set():
            readable, _, _ = select.select([self._listener, *self._clients], [], [], 0.05)
            for sock in readable:
                if sock is self._listener:
                    try:
                        conn, _ = self._listener.accept()
                    except OSError:
                        continue
                    self._clients.append(conn)
                    buffers[conn] = b""
                    continue
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self._clients.remove(sock)
                    buffers.pop(sock, None)
                    sock.close()
                    continue
                buffers[sock], replies = _serve_bytes(self.bus, buffers[sock] + data)
                for reply in replies:
                    with contextlib.suppress(OSError):
                        sock.sendall(reply)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for c in self._clients:
            c.close()
        self._listener.close()

    def __enter__(self) -> TcpMeterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class SerialMeterServer:
    """The bus on a serial line: ``path`` is the meters' end of a pty pair (socat) or a real port."""

    def __init__(self, bus: MeterBus, path: str, baudrate: int = 2400) -> None:
        import serial

        self.bus = bus
        self._port = serial.Serial(path, baudrate, parity=serial.PARITY_EVEN, timeout=0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dlt645-sim-serial", daemon=True)

    def start(self) -> SerialMeterServer:
        self._thread.start()
        return self

    def _run(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                data = self._port.read(self._port.in_waiting or 1)  # what came, not a full 256 bytes
            except Exception:  # the pty went away: the test is over
                return
            if not data:
                continue
            buffer, replies = _serve_bytes(self.bus, buffer + data)
            for reply in replies:
                self._port.write(reply)
                self._port.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._port.close()

    def __enter__(self) -> SerialMeterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
