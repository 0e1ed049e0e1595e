"""The line to the meters (a serial port, or TCP to a transparent converter) and one request on it.

Blocking I/O on purpose: a bus carries one request at a time and waits for its answer, so the
source runs each bus in a thread of its own (``source.py``) and a read waits with a deadline.
pyserial rather than pyserial-asyncio: the same blocking calls serve the agent's thread, ``fmc
check`` and ``fmc dlt645 read``; an asyncio wrapper would add a dependency and a loop to drive
them without letting two requests share the bus anyway.

``Client.read`` sends a read-data frame and waits for the reply, retrying a timeout, a broken
frame or another meter's answer; it returns a ``Reading``: the value, or why there is none, with
every failed attempt's reason for the counters (``fmc_source_errors_total{source,reason}``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fmc.sources.dlt645 import config as schema
from fmc.sources.dlt645 import frame as f

# reasons a request failed, as counted and logged
TIMEOUT = "timeout"  # no whole frame within timeout_s
CHECKSUM = "checksum"  # a frame whose checksum is wrong (noise, a bad termination, two talkers)
BAD_END = "bad_end"  # a frame without its 16 end byte
ERROR_FLAG = "error_flag"  # the meter answered with the error bit (C = 0xD1) and an error byte
WRONG_ADDRESS = "wrong_address"  # an answer from another address
BAD_REPLY = "bad_reply"  # an answer to another function or data identifier, or too short
BCD_INVALID = "bcd_invalid"  # the value is not BCD
NOISE = "noise"  # bytes on the line that were neither a frame nor the FE preamble
IO_ERROR = "io_error"  # the port or the connection failed
READ_SLICE_S = 0.02  # a serial read waits at most this long at a time (the port's fixed timeout)


class TransportError(Exception):
    """The port or the connection failed: close it and open it again."""


class Transport(Protocol):
    where: str

    def open(self) -> None: ...

    def close(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def read(self, wait_s: float) -> bytes:
        """What arrived within ``wait_s`` (b"" when nothing did); TransportError when the line failed."""
        ...

    def discard_input(self) -> None:
        """Drop whatever is waiting (a late answer to an earlier request)."""
        ...


class SerialTransport:
    def __init__(self, cfg: schema.Dlt645Source) -> None:
        self.cfg = cfg
        self.where = cfg.where
        self._port: object | None = None

    def open(self) -> None:
        import serial

        parity = {"even": serial.PARITY_EVEN, "odd": serial.PARITY_ODD, "none": serial.PARITY_NONE}[self.cfg.parity]
        try:
            self._port = serial.Serial(
                str(self.cfg.port), self.cfg.baudrate, bytesize=self.cfg.data_bits, parity=parity,
                stopbits=self.cfg.stop_bits, timeout=READ_SLICE_S, write_timeout=5.0,
                exclusive=True,  # a second master on the bus (fmc check while the agent runs) garbles both
            )
        except Exception as e:  # SerialException, OSError, ValueError (a bad setting for this port)
            raise TransportError(f"cannot open {self.where}: {e}") from None

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(Exception):  # closing a failed port: nothing left to do
                port.close()  # type: ignore[attr-defined]

    def _serial(self) -> Any:  # serial.Serial, imported lazily
        if self._port is None:
            raise TransportError(f"{self.where} is not open")
        return self._port

    def write(self, data: bytes) -> None:
        port = self._serial()
        try:
            port.write(data)
            port.flush()
        except Exception as e:  # SerialException, OSError, termios.error: the line failed
            raise TransportError(f"cannot write to {self.where}: {e}") from None

    def read(self, wait_s: float) -> bytes:
        # The port's timeout stays fixed (setting it reconfigures the line each time): read in
        # slices of READ_SLICE_S until something came or the wait is over.
        deadline = time.monotonic() + wait_s
        port = self._serial()
        try:
            while True:
                data = port.read(port.in_waiting or 1)
                if data or time.monotonic() >= deadline:
                    return bytes(data)
        except Exception as e:  # SerialException, OSError, termios.error: the line failed
            raise TransportError(f"cannot read from {self.where}: {e}") from None

    def discard_input(self) -> None:
        port = self._serial()
        try:
            port.reset_input_buffer()
        except Exception as e:  # SerialException, OSError, termios.error: the line failed
            raise TransportError(f"cannot read from {self.where}: {e}") from None


class TcpTransport:
    """A transparent serial-to-Ethernet converter (TCP server mode): bytes in, bytes out."""

    def __init__(self, cfg: schema.Dlt645Source, connect_timeout_s: float = 5.0) -> None:
        self.cfg = cfg
        self.where = cfg.where
        self.connect_timeout_s = connect_timeout_s
        self._sock: socket.socket | None = None

    def open(self) -> None:
        try:
            sock = socket.create_connection((str(self.cfg.host), int(self.cfg.port)), timeout=self.connect_timeout_s)
        except OSError as e:
            raise TransportError(f"cannot connect to {self.where}: {e.strerror or e}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise TransportError(f"{self.where} is not connected")
        return self._sock

    def write(self, data: bytes) -> None:
        try:
            sock = self._socket()
            sock.settimeout(5.0)
            sock.sendall(data)
        except OSError as e:
            raise TransportError(f"cannot send to {self.where}: {e.strerror or e}") from None

    def read(self, wait_s: float) -> bytes:
        sock = self._socket()
        sock.settimeout(max(0.001, wait_s))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return b""
        except OSError as e:
            raise TransportError(f"the connection to {self.where} failed: {e.strerror or e}") from None
        if not data:
            raise TransportError(f"{self.where} closed the connection")
        return data

    def discard_input(self) -> None:
        sock = self._socket()
        sock.setblocking(False)
        try:
            while sock.recv(4096):
                pass
            raise TransportError(f"{self.where} closed the connection")
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            raise TransportError(f"the connection to {self.where} failed: {e.strerror or e}") from None
        finally:
            sock.setblocking(True)


def make_transport(cfg: schema.Dlt645Source) -> Transport:
    return SerialTransport(cfg) if cfg.transport == "serial" else TcpTransport(cfg)


@dataclass(slots=True)
class Reading:
    """The outcome of one read: ``value``, or ``reason`` and ``detail`` saying why not; ``failures``
    lists the reason of every failed attempt (counted), ``noise`` the stray bytes seen."""

    value: float | None = None
    reason: str | None = None
    detail: str = ""
    failures: list[str] = field(default_factory=list)
    noise: int = 0
    error_code: int | None = None

    @property
    def answered(self) -> bool:
        """The meter spoke (a value, or an error reply, or a value that is not BCD)."""
        return self.value is not None or self.reason in (ERROR_FLAG, BCD_INVALID)


@dataclass(slots=True)
class _Wait:
    frame: f.Frame | None = None
    problem: str | None = None  # a broken frame (checksum, bad_end)
    noise: int = 0
    other: tuple[str, str] | None = None  # (reason, detail) of the first whole reply that was not the answer

    def failure(self, timeout_s: float) -> tuple[str, str]:
        """Why no answer came: a broken frame, else a reply that was not the answer, else nothing."""
        if self.problem is None and self.other is not None:
            return self.other
        reason = self.problem or TIMEOUT
        return reason, _problem_detail(reason, timeout_s)


class Client:
    """Requests on one bus, one at a time (the caller holds the bus: one thread per bus)."""

    def __init__(self, transport: Transport, preamble: int = f.MAX_PREAMBLE) -> None:
        self.transport = transport
        self.preamble = preamble

    def read(self, address: str, ident: f.Identifier, timeout_s: float, retries: int) -> Reading:
        """Read one data identifier; TransportError when the line itself fails."""
        request = f.read_data_request(address, ident.di, self.preamble)

        def other_than_the_answer(fr: f.Frame) -> tuple[str, str] | None:
            if fr.address != address:
                return WRONG_ADDRESS, f"meter {fr.address} answered the request to {address}"
            if fr.is_error:
                return None  # an error reply names no identifier: it is the answer
            if fr.function != f.READ_DATA:
                return BAD_REPLY, f"a reply with control code 0x{fr.control:02X} to a read"
            if len(fr.data) < 4 + ident.size or int.from_bytes(fr.data[:4], "little") != ident.di:
                return BAD_REPLY, f"the reply does not carry {ident.text} ({fr.data[:4][::-1].hex()} instead)"
            return None

        out = Reading()
        for _ in range(retries + 1):
            self.transport.discard_input()
            self.transport.write(request)
            got = self._wait(timeout_s, other_than_the_answer)
            out.noise += got.noise
            fr = got.frame
            if fr is None:
                out.reason, out.detail = got.failure(timeout_s)
                out.failures.append(out.reason)
                continue
            if fr.is_error:
                code = fr.data[0] if fr.data else 0
                out.failures.append(ERROR_FLAG)
                out.reason, out.error_code = ERROR_FLAG, code
                out.detail = f"error reply to {ident.text} ({ident.name}): {f.describe_error(code)}"
                return out  # the meter answered: asking again gets the same answer
            try:
                out.value = f.decode_value(ident, fr.data[4 : 4 + ident.size])
            except f.BcdError as e:
                out.failures.append(BCD_INVALID)
                out.reason, out.detail = BCD_INVALID, str(e)
                return out
            out.reason, out.detail = None, ""
            return out
        return out

    def read_address(self, timeout_s: float, retries: int = 0) -> tuple[str | None, Reading]:
        """Broadcast "read address" (AAAAAAAAAAAA): the address of the one meter on the bus."""
        request = f.read_address_request(self.preamble)

        def other_than_the_answer(fr: f.Frame) -> tuple[str, str] | None:
            if fr.is_error or fr.function != f.READ_ADDRESS:
                return BAD_REPLY, f"a reply with control code 0x{fr.control:02X} to read address"
            return None

        out = Reading()
        for _ in range(retries + 1):
            self.transport.discard_input()
            self.transport.write(request)
            got = self._wait(timeout_s, other_than_the_answer)
            out.noise += got.noise
            fr = got.frame
            if fr is None:
                out.reason, out.detail = got.failure(timeout_s)
                out.failures.append(out.reason)
                if got.problem is None and got.other is not None:
                    return None, out  # a meter answered, not with an address: asking again gets the same
                continue
            # the reply carries the address in DATA too (and in the header, which some meters leave AA)
            address = f.decode_address(fr.data[:6]) if len(fr.data) >= 6 else fr.address
            out.reason = None
            return address, out
        return None, out

    def _wait(self, timeout_s: float, other_than_the_answer: Callable[[f.Frame], tuple[str, str] | None]) -> _Wait:
        """Bytes until the answer or the deadline. Our own request echoed by a half-duplex converter
        (a frame without the reply bit) is passed over, and so is a whole reply that is not the
        answer (``other_than_the_answer`` says why: another meter's late reply, say): the answer may
        still come, or be right behind it in what arrived. A broken frame is remembered and the
        bytes after it scanned on (a stray 68 can look like a header): it is the answer only when
        nothing good follows in what arrived."""
        deadline = time.monotonic() + timeout_s
        buffer = b""
        out = _Wait()
        while True:
            while buffer:
                s = f.scan(buffer)
                if out.problem is None:  # the bytes of a broken frame are not noise besides it
                    out.noise += s.noise
                buffer = buffer[s.consumed :]
                if s.problem is not None:
                    out.problem = s.problem
                    continue
                if s.frame is None:
                    break
                if s.frame.is_reply:
                    why = other_than_the_answer(s.frame)
                    if why is None:
                        out.frame, out.problem = s.frame, None
                        return out
                    out.other = out.other or why
            if out.problem is not None and not buffer:
                return out  # a broken reply and nothing after it: retry now rather than at the deadline
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            buffer += self.transport.read(left)


def _problem_detail(reason: str, timeout_s: float) -> str:
    if reason == CHECKSUM:
        return "a reply with a wrong checksum (noise on the line: check the A/B wiring, the termination, two masters)"
    if reason == BAD_END:
        return "a reply without its end byte 16"
    return f"no answer within {timeout_s:g}s"


# what a person does about each reason (fmc check, fmc dlt645 read, the log)
FIXES: dict[str, str] = {
    TIMEOUT: "check the address (fmc dlt645 scan with one meter on the bus), the wiring (A to A, B to B), "
    "baudrate and parity (2400 8E1 by default), and the converter's serial settings",
    CHECKSUM: "check the wiring and the bus termination; make sure no other master polls this bus",
    BAD_END: "check the wiring and the serial settings (parity, data bits)",
    WRONG_ADDRESS: "two meters answer: check that each address is configured once and the meters' addresses",
    BAD_REPLY: "the device does not speak DL/T 645-2007 for this identifier (a 1997 meter?): check the protocol",
    BCD_INVALID: "the meter sent a value that is not BCD: check the data identifier and the meter's protocol",
    IO_ERROR: "check the serial device (ls -l /dev/serial/by-id/, the user in group dialout; another program, "
    "such as the running agent, may hold the port) or the converter's address (many take one client only)",
}
