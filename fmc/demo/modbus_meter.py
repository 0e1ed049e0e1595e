"""The demo's Modbus water meter: a pymodbus TCP server on 127.0.0.1 whose input registers hold a
cumulative water counter — litres, uint32, low word first (the layout of many water meters' Modbus
option) — that the simulated plant advances every tick. The demo agent reads it with a ``[[modbus]]``
source (``modbus_section``), ×0.001 to m³, into the ``[[meter]]`` ``intake-2-modbus``.

The server notes the first and the last reading it answered: the register's increments between them
are what a perfect accumulator counts (the demo's check compares them with the agent's consumption).
"""

from __future__ import annotations

import random
from typing import Any

from fmc.demo.plant import HOST, MeterSpec, free_port
from fmc.sources.modbus.decode import encode_value

MODBUS_SOURCE = "water-modbus"
# the label is the carrier's (the summary labels each carrier's total with it); the id says Modbus
MODBUS_METER = MeterSpec("water_intake", "intake-2-modbus", "取水 water intake", "m³", "m3", 45_120.0, 0.001, 50.0)
UNIT = 1
ADDRESS = 0  # input register 30001 in the meter's manual
POLL_INTERVAL_S = 1.0


class ModbusWaterMeter:
    """The meter: ``start()`` in the demo's loop, ``tick()`` once a simulated second, ``stop()``."""

    def __init__(self, seed: int, host: str = HOST) -> None:
        self.host = host
        self.port = 0
        self.litres = round(MODBUS_METER.start_reading / MODBUS_METER.resolution)
        self._rng = random.Random(seed * 7919 + 3)
        self._fraction = 0.0  # flow not yet a whole litre
        self._server: Any = None
        self.first_served: int | None = None
        self.last_served: int | None = None

    async def start(self, attempts: int = 5) -> int:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        device = SimDevice(id=UNIT, simdata=(
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
        ), action=self._action)
        for _ in range(attempts):  # a free port can be taken between the probe and the bind
            self.port = free_port(self.host)
            server = ModbusTcpServer(device, address=(self.host, self.port))
            try:
                await server.serve_forever(background=True)
            except RuntimeError:
                continue
            self._server = server
            return self.port
        raise RuntimeError("the Modbus water meter found no free port")

    def tick(self) -> None:
        """One second of the plant's make-up water: 2 to 4 m³/h, in whole litres (the register's step)."""
        self._fraction += self._rng.uniform(2.0, 4.0) / 3.6  # m³/h -> litres in a second
        whole = int(self._fraction)
        self.litres += whole
        self._fraction -= whole

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: object) -> None:
        if function_code == 4:  # input registers: the counter, as it is at this read
            registers[ADDRESS - start_address : ADDRESS - start_address + 2] = encode_value(
                self.litres, "uint32", word_order="little")
            self.first_served = self.litres if self.first_served is None else self.first_served
            self.last_served = self.litres

    @property
    def increments(self) -> float | None:
        """m³ between the first and the last reading served."""
        if self.first_served is None or self.last_served is None:
            return None
        return round((self.last_served - self.first_served) * MODBUS_METER.resolution, 3)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None


def modbus_section(port: int, host: str = HOST) -> dict[str, Any]:
    """The demo agent's ``[[modbus]]`` table for the meter."""
    return {
        "name": MODBUS_SOURCE, "transport": "tcp", "host": host, "port": port,
        "reconnect_min_s": 0.2, "reconnect_max_s": 2.0,
        "device": [{"unit": UNIT, "name": "water meter", "poll_interval_s": POLL_INTERVAL_S, "timeout_s": 1.0,
                    "retries": 1, "register": [{
                        "function": "input", "address": ADDRESS, "type": "uint32", "word_order": "little",
                        "scale": MODBUS_METER.resolution, "meter": MODBUS_METER.meter,
                        "carrier": MODBUS_METER.carrier}]}],
    }
