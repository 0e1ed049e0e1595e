"""One Modbus connection — a TCP socket, a serial line, or a serial line behind a TCP converter —
shared by the devices on it, one request at a time (``Link.read``).

fmc does its own retries and timeouts (pymodbus gets ``retries=0`` and a longer timeout of its own),
so each device keeps its own ``timeout_s`` and ``retries`` on a shared line, every failed attempt is
counted with its reason, and the line is held for one attempt only: a device that does not answer
costs the others its own timeout (twice on an RTU line, below), then they go first.

pymodbus drops an answer whose CRC is wrong or that comes from another unit id, and then waits for
its timeout; ``_ReplyWatch`` sees the bytes first (pymodbus's ``trace_packet`` hook) and names
those timeouts ``crc_error`` and ``wrong_unit_id``.

RTU frames carry no transaction id: an answer that comes after its timeout would be taken for the
answer to the next request, and a second block of the same size on the same device would get the
first block's values. So on an RTU line (serial, or RTU over TCP), after a timeout or an answer
that does not fit its request, the line stays held for the device's ``timeout_s`` once more and
whatever arrives meanwhile is dropped (libmodbus's protocol error recovery does the same: sleep the
response timeout, then flush); an answer of the device dropped so is counted as ``late_answer``.
Every answer is also checked against its request (function, number of values), as libmodbus's
``check_confirmation`` does.
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
NO_ANSWER = frozenset({"timeout", "late_answer", "wrong_unit_id", "crc_error", "connection_failed",
                       "gateway_path_unavailable", "gateway_target_failed"})
# worth asking again: the device (or the gateway before it) may answer the next time
_RETRYABLE_EXCEPTIONS = frozenset({"busy", "acknowledge", "gateway_path_unavailable", "gateway_target_failed"})
# what to do about each reason, for logs and fmc check
FIXES: dict[str, str] = {
    "timeout": "no answer: check the unit id, the wiring (A/B), baudrate/parity/stopbits, or host and port",
    "late_answer": "the device answers, but after timeout_s: raise timeout_s (a late answer is dropped, as it "
                   "could be taken for the next request's)",
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
    "bad_response": "the answer does not fit the request (its function or its number of values): an answer to "
                    "another request, or a device that answers wrongly",
}


def failed_attempt_s(transport: str, timeout_s: float) -> float:
    """How long one unanswered attempt holds the link: its timeout, and on an RTU line as long again
    for a late answer to pass (``Link._out_of_step``)."""
    return timeout_s * (1 if transport == "tcp" else 2)


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
        self.settling = False  # the line is held after a failed attempt: what arrives is dropped
        self.late = False  # a frame of ``unit`` arrived while settling

    def expect(self, unit: int) -> None:
        self.unit, self.fault, self.settling, self.late = unit, None, False, False

    def settle(self) -> None:
        self.settling, self.late = True, False

    def trace(self, sending: bool, data: bytes) -> bytes:
        if not sending and data and (self.fault is None or self.settling):
            try:
                used, unit, _tid, frame = self._framer.decode(data)
            except Exception:  # not a frame we can read; pymodbus decides what it is
                return data
            if self.settling:
                self.late = self.late or bool(frame and unit == self.unit)
            elif used and not frame:
                self.fault = "crc_error"  # the RTU framer consumes a frame whose CRC fails and returns nothing
            elif frame and self.unit and unit != self.unit:
                self.fault = "wrong_unit_id"
        return data


_FUNCTION_CODES = {"coil": 1, "discrete_input": 2, "holding": 3, "input": 4}


def answer_fits(function: str, count: int, function_code: int, values: Sequence[int] | Sequence[bool]) -> bool:
    """Whether an answer (not an exception) is one to a read of ``count`` values with ``function``: its
    function code, and its number of values (bits come in whole bytes)."""
    if function_code != _FUNCTION_CODES[function]:
        return False
    if function in ("coil", "discrete_input"):
        return len(values) == (count + 7) // 8 * 8
    return len(values) == count


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
        self._rtu = rtu
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
            return await self._out_of_step(self._watch.fault or "timeout", timeout_s), None
        except ConnectionException:
            client.close()
            return "connection_failed", None
        except ModbusException:  # pymodbus's own timeout, a frame it cannot decode, another unit's answer
            return await self._out_of_step(self._watch.fault or "timeout", timeout_s), None
        if response.isError():
            if response.function_code != _FUNCTION_CODES[function] | 0x80:
                return await self._out_of_step("bad_response", timeout_s), None
            return exception_reason(response.exception_code), None
        got: Sequence[int] | Sequence[bool] = response.bits if function in ("coil", "discrete_input") else \
            response.registers
        if not answer_fits(function, count, response.function_code, got):
            return await self._out_of_step("bad_response", timeout_s), None
        return "", list(got[:count])  # type: ignore[return-value]

    async def _out_of_step(self, reason: str, timeout_s: float) -> str:
        """After a failed attempt on an RTU line: hold the line ``timeout_s`` more and drop what arrives
        (an answer still on its way would otherwise be taken for the next request's). Returns the
        attempt's reason: ``late_answer`` for a timeout whose device answered meanwhile."""
        if not self._rtu:
            return reason  # Modbus TCP: the transaction id tells a late answer from the next one
        self._watch.settle()
        try:
            await asyncio.sleep(timeout_s)
        finally:
            self._watch.settling = False
        return "late_answer" if reason == "timeout" and self._watch.late else reason

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def quiet_pymodbus() -> None:
    """pymodbus logs every dropped frame and timeout as an error; the source counts and logs them itself."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
