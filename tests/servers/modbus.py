"""Real pymodbus servers for the tests: Modbus TCP, RTU framing over TCP (what a serial-to-Ethernet
converter passes through), and RTU on a serial line (a socat pseudo-terminal pair).

``ModbusTestServer`` runs a pymodbus server in a thread with its own event loop, so it keeps
answering while a test waits for the source under test (in its own thread too). Each unit id has
``SIZE`` coils, discrete inputs, holding and input registers, all 0; an address past them answers
"illegal data address" as a real device does. ``set_words`` / ``set_value`` / ``set_bits`` change
what a unit holds (pymodbus's documented ``action`` hook copies it into the registers of each read).

Faults of a real bus, per unit: ``delay_s`` (a slow device), ``exception`` (it answers with that
exception code), ``silent`` (it takes the request and never answers), ``wrong_unit`` (the answer
carries another unit id), ``corrupt_crc`` (the answer's CRC is wrong; RTU framing only). The last
three are made in pymodbus's ``trace_packet`` hook on the server's outgoing bytes. ``stop()`` and
``start()`` (same port) make a device vanish and return.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerRTU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from fmc.sources.modbus.decode import encode_value
from tests.ports import free_port

SIZE = 512  # addresses of each table per unit (a multiple of 16)
T = TypeVar("T")
_TABLES = {1: "c", 2: "d", 3: "h", 4: "i"}
_TABLE_OF = {"coil": "c", "discrete_input": "d", "holding": "h", "input": "i"}


@dataclass
class UnitState:
    words: dict[str, list[int]] = field(default_factory=lambda: {"h": [0] * SIZE, "i": [0] * SIZE})
    bits: dict[str, list[bool]] = field(default_factory=lambda: {"c": [False] * SIZE, "d": [False] * SIZE})
    delay_s: float = 0.0
    exception: int | None = None
    silent: bool = False
    wrong_unit: bool = False
    corrupt_crc: bool = False
    requests: int = 0


class ModbusTestServer:
    """One pymodbus server: ``mode`` "tcp" (Modbus TCP), "rtu_over_tcp" (RTU frames on TCP) or "rtu"
    (RTU on ``serial_port``). Use as a context manager, or ``start()`` / ``close()``."""

    def __init__(self, units: Sequence[int] = (1,), *, mode: str = "tcp", serial_port: str | None = None,
                 baudrate: int = 19200, parity: str = "N", port: int | None = None) -> None:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # a fault made on purpose is not news
        self.mode = mode
        self.units = {u: UnitState() for u in units}
        self.serial_port = serial_port
        self.baudrate, self.parity = baudrate, parity
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="modbus-test-server", daemon=True)
        self._thread.start()
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    # --- life ---------------------------------------------------------------------------------------------

    def __enter__(self) -> ModbusTestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> int:
        """Listen (again, on the same port or serial line); returns the TCP port."""
        self._call(self._start())
        return self.port

    async def _start(self) -> None:
        devices = [
            SimDevice(
                id=unit,
                simdata=(
                    [SimData(0, count=SIZE, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=SIZE, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=SIZE, values=0, datatype=DataType.REGISTERS)],
                    [SimData(0, count=SIZE, values=0, datatype=DataType.REGISTERS)],
                ),
                action=partial(self._action, unit),
            )
            for unit in self.units
        ]
        server: ModbusTcpServer | ModbusSerialServer
        if self.mode == "rtu":
            server = ModbusSerialServer(devices, framer=FramerType.RTU, port=str(self.serial_port),
                                        baudrate=self.baudrate, parity=self.parity, trace_packet=self._trace)
        else:
            framer = FramerType.RTU if self.mode == "rtu_over_tcp" else FramerType.SOCKET
            server = ModbusTcpServer(devices, framer=framer, address=("127.0.0.1", self.port),
                                     trace_packet=self._trace)
        await server.serve_forever(background=True)
        self._server = server

    def stop(self) -> None:
        """Stop answering: the listener and every connection close (a device that vanished)."""
        if self._server is not None:
            self._call(self._server.shutdown())
            self._server = None

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # --- what the units hold --------------------------------------------------------------------------------

    def set_words(self, unit: int, function: str, address: int, words: Sequence[int]) -> None:
        self.units[unit].words[_TABLE_OF[function]][address : address + len(words)] = list(words)

    def set_value(self, unit: int, function: str, address: int, value: float, data_type: str,
                  byte_order: str = "big", word_order: str = "big") -> None:
        self.set_words(unit, function, address, encode_value(value, data_type, byte_order, word_order))

    def set_bits(self, unit: int, function: str, address: int, bits: Sequence[bool]) -> None:
        self.units[unit].bits[_TABLE_OF[function]][address : address + len(bits)] = list(bits)

    def requests(self, unit: int) -> int:
        return self.units[unit].requests

    # --- pymodbus hooks ---------------------------------------------------------------------------------

    async def _action(self, unit: int, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        state = self.units[unit]
        state.requests += 1
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if state.exception is not None:
            return ExcCodes(state.exception)
        table = _TABLES.get(function_code)
        if table in ("c", "d"):  # 16 bits to a register, bit 0 first (pymodbus's SimUtils layout)
            bits = state.bits[table]
            for r in range(SIZE // 16):
                registers[r] = sum(1 << b for b in range(16) if bits[r * 16 + b])
        elif table is not None:
            words = state.words[table]
            registers[address - start_address : address - start_address + count] = words[address : address + count]
        return None

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending or not data:
            return data
        rtu = self.mode != "tcp"
        unit_at = 0 if rtu else 6
        state = self.units.get(data[unit_at])
        if state is None:
            return data
        if state.silent:
            return b""
        out = bytearray(data)
        if state.wrong_unit:
            out[unit_at] = (out[unit_at] % 247) + 1
            if rtu:
                out[-2:] = FramerRTU.compute_CRC(bytes(out[:-2])).to_bytes(2, "big")
        if state.corrupt_crc and rtu:
            out[-1] ^= 0xFF
        return bytes(out)


@contextlib.contextmanager
def serial_pair(folder: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals from socat (what a USB RS-485 adapter and its cable look like):
    bytes written to one come out of the other. Yields their paths."""
    socat = shutil.which("socat")
    if socat is None:
        raise RuntimeError("socat is not installed: scripts/test installs it (apt-get install socat)")
    a, b = folder / "ttyA", folder / "ttyB"
    proc = subprocess.Popen([socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (a.exists() and b.exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("socat did not make the pseudo-terminal pair")
            time.sleep(0.02)
        yield str(a), str(b)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(5)
