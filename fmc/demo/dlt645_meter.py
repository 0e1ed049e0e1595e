"""The demo plant's DL/T 645-2007 electricity meter: the dyehouse's own supply, metered by a
utility-style RS-485 meter behind a transparent serial-to-Ethernet converter — simulated with
``fmc.sources.dlt645.simulator`` on 127.0.0.1 in the demo's process, read by the agent's
``[[dlt645]]`` source. SIMULATED: no real meter is read.

Its register starts just below 999999.99 kWh, so it rolls over to 0 a few seconds into the run,
and the agent's ``[[meter]]`` says ``rollover = 1000000``: the summary shows the wrap counted as
consumption, not as a reset. ``fmc.demo.run`` needs four calls: ``start``, ``tick`` each second,
``settle`` after the last tick, ``stop``; plus ``source_config``/``meter_config`` for the agent.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from fmc.demo.plant import MeterSpec
from fmc.sources.dlt645.simulator import ENERGY_ROLLOVER_KWH, MeterBus, SimulatedMeter, TcpMeterServer

DLT645_SOURCE = "dyehouse-dlt645"
ADDRESS = "330602000645"  # as on the nameplate
FORWARD_ACTIVE = 0x00010000
# the register wraps about 3 s into the run (at ~150 kW): the demo's readings are on both sides of it
START_KWH = 999_999.88
SPEC = MeterSpec("electricity", "dyehouse-645", "电 electricity", "kWh", "kWh", START_KWH, 0.01, 2_000.0)


class DemoDlt645Meter:
    """One simulated meter on a simulated converter; it counts what the agent's reads can see."""

    def __init__(self, seed: int) -> None:
        self.spec = SPEC
        self._rng = random.Random(seed)
        self._steps = 0  # register steps (0.01 kWh) since the start, not wrapped
        self._fraction = 0.0
        self._served: list[int] = []  # _steps at each value read: the agent's consumption is last − first
        self.meter = SimulatedMeter(ADDRESS, {FORWARD_ACTIVE: START_KWH},
                                    on_read=lambda di, value: self._served.append(self._steps))
        self.bus = MeterBus([self.meter])
        self._server: TcpMeterServer | None = None

    @property
    def port(self) -> int:
        return self._server.port if self._server is not None else 0

    def start(self) -> int:
        self._server = TcpMeterServer(self.bus).start()
        return self.port

    def tick(self) -> None:
        """One second of the dyehouse: 120-180 kW."""
        kw = 150.0 + self._rng.uniform(-30.0, 30.0)
        self._fraction += kw / 3600.0 / self.spec.resolution
        whole = int(self._fraction)
        self._fraction -= whole
        with self.bus.lock:
            self._steps += whole
            value = START_KWH + self._steps * self.spec.resolution
            self.meter.registers[FORWARD_ACTIVE] = round(value % ENERGY_ROLLOVER_KWH, 2)

    async def settle(self, timeout_s: float = 5.0) -> None:
        """Wait for two reads after the last tick: the last value is read, and a wrap just before it
        confirmed (the accumulator decides a drop at the next reading)."""
        seen = len(self._served)
        deadline = time.monotonic() + timeout_s
        while len(self._served) < seen + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    @property
    def increments_kwh(self) -> float | None:
        """The register's increments between the first and the last read the agent made."""
        if not self._served:
            return None
        return round((self._served[-1] - self._served[0]) * self.spec.resolution, 2)

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def source_config(self) -> dict[str, Any]:
        """The agent's ``[[dlt645]]``: a converter on loopback, read twice a second."""
        return {"name": DLT645_SOURCE, "transport": "tcp", "host": "127.0.0.1", "port": self.port,
                "poll_interval_s": 0.5, "timeout_s": 0.5, "retries": 1, "reconnect_min_s": 0.2,
                "reconnect_max_s": 2.0, "meter": [{"address": ADDRESS, "meter": self.spec.meter}]}

    def meter_config(self) -> dict[str, Any]:
        """Its ``[[meter]]``: a counter that wraps at 1 000 000 kWh."""
        return {"id": self.spec.meter, "carrier": "electricity", "kind": "counter", "unit": "kWh",
                "rollover": ENERGY_ROLLOVER_KWH, "max_rate_per_h": self.spec.max_rate_per_h}
