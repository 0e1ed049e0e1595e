"""One Modbus connection — a TCP socket, a serial line, or a serial line behind a TCP converter —
shared by the devices on it, one request at a time (``Link.read``).

fmc does its own retries and timeouts (pymodbus gets ``retries=0`` and a longer timeout of its own),
so each device keeps its own ``timeout_s`` and ``retries`` on a shared line, every failed attempt is
counted with its reason, and the line is held for one attempt only: a device that does not answer
costs the others its own timeout, then they go first.

pymodbus drops an answer whose CRC is wrong or that comes from another unit id, and then waits for
its timeout; ``_ReplyWatch`` sees the bytes first (pymodbus's ``trace_packet`` hook) and names
those timeouts ``crc_error`` and ``wrong_unit_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU

# exception codes (Modbus application protocol 1.1b3, 7) -> the reason counted on /metrics
EXCEPTION_REASONS: dict[int, str] = {
    1: "illegal_function", 2: "illegal_address", 3: "illegal_value", 4: "device_failure", 5: "acknowledge",
    6: "busy", 7: "negative_acknowledge", 8: "memory_parity_error", 0x0A: "gateway_path_unavailable",
    0x0B: "gateway_target_failed",
}
# a device that answers these, after its retries, is not reachable: it goes offline
NO_ANSWER = frozenset({"timeout", "wrong_unit_id", "crc_error", "connection_failed", "gateway_path_unavailable",
                       "gateway_target_failed"})
# worth asking again: the device (or the gateway before it) may answer the next time
_RETRYABLE_EXCEPTIONS = frozenset({"busy", "acknowledge", "gateway_path_unavailable", "gateway_target_failed"})
# what to do about each reason, for logs and fmc check
FIXES: dict[str, str] = {
    "timeout": "no answer: check the unit id, the wiring (A/B), baudrate/parity/stopbits, or host and port",
    "wrong_unit_id": "another unit id answered: two devices share one unit id, or the unit id is wrong",
    "crc_error": "answers arrive damaged: check baudrate/parity/stopbits, termination and shielding of the RS-485 line",
    "connection_failed": "cannot connect: check host and port (or serial_port and its permissions)",
    "illegal_function": "the device does not read this function: check function in its manual",
    "illegal_address": "the device has no such register: check the address (0-based: the manual's 40001 is "
                       "holding 0), or lower max_gap so unused addresses are not read",
    "illegal_value": "the device refuses this request: lower max_registers (some devices read fewer at once)",
    "device_failure": "the device reports an internal failure",
    "busy": "the device was busy: raise poll_interval_s if it persists",
    "gateway_path_unavailable": "the gateway has no path to this unit id: check the gateway's routing",
    "gateway_target_failed": "the gateway got no answer from the unit behind it: check that device and its line",
    "bad_response": "the answer does not fit the request",
}


def exception_reason(code: int) -> str:
    return EXCEPTION_REASONS.get(code, f"exception_{code}")


@dataclass(slots=True)
class ReadResult:
    """The answer of one read, after retries: the words (bits), or why there are none."""

    values: list[int] | list[bool] | None
    reason: str | None = None  # the last failure's reason when ``values`` is None
    failures: list[str] = field(default_factory=list)  # every failed attempt's reason, in order

    @property
    def no_answer(self) -> bool:
        return self.values is None and self.reason in NO_ANSWER


class _ReplyWatch:
    """Looks at what arrives before pymodbus does, to tell why an answer was dropped."""

    def __init__(self, rtu: bool) -> None:
        self._framer = (FramerRTU if rtu else FramerSocket)(DecodePDU(False))
        self.unit = 0
        self.fault: str | None = None

    def expect(self, unit: int) -> None:
        self.unit, self.fault = unit, None

    def trace(self, sending: bool, data: bytes) -> bytes:
        if not sending and self.fault is None and data:
            try:
                used, unit, _tid, frame = self._framer.decode(data)
            except Exception:  # not a frame we can read; pymodbus decides what it is
                return data
            if used and not frame:
                self.fault = "crc_error"  # the RTU framer consumes a frame whose CRC fails and returns nothing
            elif frame and self.unit and unit != self.unit:
                self.fault = "wrong_unit_id"
        return data


_READS = {"coil": "read_coils", "discrete_input": "read_discrete_inputs", "holding": "read_holding_registers",
          "input": "read_input_registers"}


class Link:
    """One connection and its lock. Created inside the loop that uses it (pymodbus needs a running loop)."""

    def __init__(
        self, transport: str, *, host: str | None = None, port: int = 502, serial_port: str | None = None,
        baudrate: int = 9600, parity: str = "E", stopbits: int = 1, bytesize: int = 8, timeout_s: float = 1.0,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        rtu = transport != "tcp"
        self._watch = _ReplyWatch(rtu)
        self._lock = asyncio.Lock()
        self._on_failure = on_failure or (lambda reason: None)
        # pymodbus's own timeout is a backstop past ours (each read passes its device's timeout_s);
        # it also bounds connecting
        common: dict[str, Any] = {"timeout": timeout_s + 1.0, "retries": 0, "reconnect_delay": 0,
                                  "trace_packet": self._watch.trace}
        self.client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if transport == "rtu":
            self.client = AsyncModbusSerialClient(str(serial_port), framer=FramerType.RTU, baudrate=baudrate,
                                                  parity=parity, stopbits=stopbits, bytesize=bytesize, **common)
        else:
            self.client = AsyncModbusTcpClient(str(host), port=port,
                                               framer=FramerType.RTU if rtu else FramerType.SOCKET, **common)
        self.requests = 0  # answered requests (tests, the benchmark)

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    async def read(
        self, unit: int, function: str, address: int, count: int, *, timeout_s: float, retries: int
    ) -> ReadResult:
        """Read ``count`` registers (bits) from ``address``; up to ``retries`` more attempts after a
        timeout, a busy device or a gateway's failure. Never raises for the device's faults."""
        failures: list[str] = []
        for _attempt in range(retries + 1):
            async with self._lock:
                reason, values = await self._attempt(unit, function, address, count, timeout_s)
            if values is not None:
                self.requests += 1
                return ReadResult(values, None, failures)
            failures.append(reason)
            self._on_failure(reason)
            if reason not in NO_ANSWER and reason not in _RETRYABLE_EXCEPTIONS:
                break  # an illegal address stays illegal; "connection_failed" waits for the caller's backoff
            if reason == "connection_failed":
                break
        return ReadResult(None, failures[-1], failures)

    async def _attempt(
        self, unit: int, function: str, address: int, count: int, timeout_s: float
    ) -> tuple[str, list[int] | list[bool] | None]:
        client = self.client
        if not client.connected:
            with contextlib.suppress(Exception):  # refused, no route, no such serial port: all "connection_failed"
                await asyncio.wait_for(client.connect(), timeout_s + 1.0)
            if not client.connected:
                return "connection_failed", None
        self._watch.expect(unit)
        try:
            response = await asyncio.wait_for(getattr(client, _READS[function])(address, count=count, device_id=unit),
                                              timeout_s)
        except TimeoutError:
            return self._watch.fault or "timeout", None
        except ConnectionException:
            client.close()
            return "connection_failed", None
        except ModbusException:  # pymodbus's own timeout or a frame it cannot decode
            return self._watch.fault or "timeout", None
        if response.isError():
            return exception_reason(response.exception_code), None
        got: Sequence[int] | Sequence[bool] = response.bits if function in ("coil", "discrete_input") else \
            response.registers
        if len(got) < count:
            return "bad_response", None
        return "", list(got[:count])  # type: ignore[return-value]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def quiet_pymodbus() -> None:
    """pymodbus logs every dropped frame and timeout as an error; the source counts and logs them itself."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
