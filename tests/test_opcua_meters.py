"""OPC UA meters on a real asyncua server: `kind = "meter"` nodes become `meter_reading` points (tags
enterprise, meter, carrier; fields value, quality — as MQTT meters make them) and, through a real
Ingest with the plant model, `meter_interval` and `consumption_daily` with tce and m³; a counter
reset mid-run and a server restart count every unit once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua

from fmc.agent.ingest import Ingest
from fmc.agent.metrics import AgentMetrics
from fmc.agent.runtime import Agent
from fmc.agent.spool import Spool
from fmc.cli.plugins import load_config
from fmc.core import lineprotocol
from fmc.core.points import Point
from fmc.plant.config import PlantSections
from fmc.plant.ledger import load_inventory
from fmc.plant.model import PlantModel
from fmc.plant.rollups import Site
from fmc.sources.opcua import config as schema
from fmc.sources.opcua.browse import browse_machines
from fmc.sources.opcua.check import check_opcua
from fmc.sources.opcua.source import OpcUaSource
from fmc.stores.embedded.store import EmbeddedStore
from tests.servers.opcua import OpcUaTestServer
from tests.test_opcua_adapter import ENTERPRISE, source_config, wait_until

CST = timezone(timedelta(hours=8))
# readings are stamped by the "device" on 2026-03-01 from 23:00 local; the ingest's clock follows them
T0 = datetime(2026, 3, 1, 23, 0, tzinfo=CST)
S = 10**9
ELECTRICITY = "Meters.Main_Electricity_kWh"
WATER = "Meters.WaterIntake_m3"
SECTIONS = PlantSections.model_validate({
    "plant": {"interval_minutes": 15, "sample_delay_s": 0},
    "meter": [
        {"id": "main", "carrier": "electricity", "kind": "counter", "unit": "kWh", "max_rate_per_h": 1000},
        {"id": "intake", "carrier": "water_intake", "kind": "counter", "unit": "m3", "max_rate_per_h": 100},
    ],
})


def ns(dt: datetime) -> int:
    return int(dt.timestamp()) * S


class Clock:
    def __init__(self, t: int) -> None:
        self.ns = t

    def __call__(self) -> int:
        return self.ns


@pytest.fixture(scope="module")
def factory() -> Iterator[OpcUaTestServer]:
    with OpcUaTestServer(layout="factory") as server:
        yield server


def meter_nodes() -> list[dict[str, Any]]:
    return [
        {"kind": "meter", "meter": "main", "carrier": "electricity", "node_id": f"ns=plant;s={ELECTRICITY}"},
        {"kind": "meter", "meter": "intake", "carrier": "water_intake",
         "browse_path": ["plant:Meters", "plant:WaterIntake_m3"]},
    ]


class PlantHarness:
    """A source feeding a real Ingest (with the plant model and a clock the test moves) and Spool."""

    def __init__(self, tmp_path: Path, cfg: schema.OpcUaSource) -> None:
        self.spool = Spool(tmp_path / "spool.db")
        self.clock = Clock(ns(T0))
        self.plant = PlantModel(Site.from_enterprise(ENTERPRISE), SECTIONS, [], start_ns=ns(T0))
        self.metrics = AgentMetrics()
        self.ingest = Ingest(self.spool, self.metrics, max_series=1000, commit_interval_ms=5, plant=self.plant,
                             clock=self.clock)
        self.ingest.start()
        self.source = OpcUaSource(cfg, ENTERPRISE, self.ingest, self.metrics, logging.getLogger("fmc.test.meters"))

    def points(self, measurement: str) -> list[Point]:
        lines = self.spool.read_batch(1_000_000).lines
        return [p for p in (lineprotocol.parse(line) for line in lines) if p.measurement == measurement]

    def close(self) -> None:
        self.source.stop()
        self.ingest.stop()
        self.spool.close()


def test_meter_nodes_make_readings_intervals_and_daily_consumption_through_a_reset_and_a_restart(
    factory: OpcUaTestServer, tmp_path: Path
) -> None:
    def reading(name: str, value: float, at: datetime, status: int | None = None) -> None:
        factory.write(name, value, source_ts=at.astimezone(UTC), status=status)

    # the registers before the agent connects: its first readings are the baselines
    reading(ELECTRICITY, 1000.0, T0)
    reading(WATER, 500.0, T0)
    h = PlantHarness(tmp_path, source_config(factory, meter_nodes()))
    try:
        h.source.start()
        wait_until(lambda: h.source.connected, what="the source to connect")
        assert h.source.live_meters() == {"main", "intake"} and h.source.live_equipment() == set()
        wait_until(lambda: len(h.points("meter_reading")) == 2, what="the baselines")

        def step(minute: int, kwh: float, m3: float, status: int | None = None) -> None:
            at = T0 + timedelta(minutes=minute)
            reading(ELECTRICITY, kwh, at, status)
            reading(WATER, m3, at)
            wait_until(lambda: sum(p.ts_ns == ns(at) for p in h.points("meter_reading")) == 2,
                       what=f"the readings of 23:00 + {minute} min")
            h.clock.ns = ns(at)

        # 10 kWh and 1 m³ every 5 minutes; the electricity register is reset at 23:20 (a meter swap: it
        # counted 5 kWh from 0 by its first reading); one Bad reading, ignored; the server restarts at 23:40
        step(5, 1010.0, 501.0)
        step(10, 1020.0, 502.0)
        step(15, 1030.0, 503.0)
        step(20, 5.0, 504.0)
        step(25, 15.0, 505.0)
        step(30, 25.0, 506.0)
        step(35, 999.0, 507.0, status=ua.StatusCodes.BadSensorFailure)  # stored with its quality, not counted
        # (the register read 30 then; the 23:40 reading carries those 5 kWh)
        step(40, 35.0, 508.0)
        opened = h.source.sessions_opened
        factory.restart()  # the registers keep their values (as a PLC's do); a new session reads them again
        wait_until(lambda: h.source.sessions_opened > opened and h.source.connected, what="the new session")
        wait_until(lambda: len(h.points("meter_reading")) == 20, what="the registers read again")
        step(45, 45.0, 509.0)
        step(50, 55.0, 510.0)
        step(55, 65.0, 511.0)
        step(60, 75.0, 512.0)  # 00:00 the next local day
        step(65, 85.0, 513.0)
        # past midnight + max_gap_s + one interval: 2026-03-01's consumption is final
        h.clock.ns = ns(T0 + timedelta(hours=1, seconds=1800 + 16 * 60))
        wait_until(lambda: len(h.points("consumption_daily")) == 2, what="consumption_daily")
        readings, interval_points = h.points("meter_reading"), h.points("meter_interval")
        daily = {p.tags["carrier"]: p.fields for p in h.points("consumption_daily")}
    finally:
        h.close()

    assert {tuple(sorted(p.tags.items())) for p in readings} == {
        (("carrier", "electricity"), ("enterprise", ENTERPRISE.id), ("meter", "main")),
        (("carrier", "water_intake"), ("enterprise", ENTERPRISE.id), ("meter", "intake")),
    }
    good = [p for p in readings if p.fields["quality"] == 0]
    assert all(set(p.fields) == {"value", "quality"} for p in good)
    bad = [p for p in readings if p.fields["quality"] != 0]
    # stored with its quality (asyncua sends no value with it)
    assert [p.fields["quality"] for p in bad] == [ua.StatusCodes.BadSensorFailure]
    # the restart's first notification (the retained register, same source timestamp) is the same reading
    # again: dropped, not counted twice
    counts = h.plant.event_counts()
    assert counts[("meter", "reset_counted")] == 1 and counts[("meter", "bad_quality")] == 1
    assert counts[("meter", "out_of_order")] == 2  # the two registers read again after the restart
    assert counts[("meter", "implausible")] == 0 and counts[("meter", "gap")] == 0

    intervals: dict[str, list[tuple[int, float, float]]] = {}
    for p in sorted(interval_points, key=lambda p: p.ts_ns):
        intervals.setdefault(p.tags["meter"], []).append(
            ((p.ts_ns - ns(T0)) // S // 60, round(p.fields["amount"], 9), p.fields["coverage"]))
    # 23:00-24:00: 10 kWh per 5 minutes, but the 5 kWh the new register counted from 0 by 23:20 (counted
    # once, never negative, the old register's 1030 kWh not again) and 10 kWh from 23:30 to 23:40
    assert intervals["main"][:4] == [(0, 30.0, 1.0), (15, 25.0, 1.0), (30, 20.0, 1.0), (45, 30.0, 1.0)]
    assert all(a >= 0 for _, a, _ in intervals["main"])
    assert intervals["intake"][:4] == [(0, 3.0, 1.0), (15, 3.0, 1.0), (30, 3.0, 1.0), (45, 3.0, 1.0)]
    assert round(daily["electricity"]["amount"], 9) == 105.0
    assert round(daily["electricity"]["tce"], 12) == round(105.0 * 0.1229 / 1000, 12)  # kWh × kgce/kWh ÷ 1000
    assert round(daily["water_intake"]["m3"], 9) == 12.0 and "tce" not in daily["water_intake"]


def test_meter_node_settings_are_checked_at_start() -> None:
    def problems(node: dict[str, Any]) -> str:
        with pytest.raises(ValueError) as e:
            schema.OpcUaSource(name="s", endpoint="opc.tcp://127.0.0.1:4840", node=[node])
        return str(e.value)

    assert "needs meter" in problems({"kind": "meter", "node_id": "i=1", "carrier": "electricity"})
    assert "not one of" in problems({"kind": "meter", "node_id": "i=1", "meter": "m", "carrier": "gas"})
    assert "equipment and signal are for kind" in problems(
        {"kind": "meter", "node_id": "i=1", "meter": "m", "carrier": "electricity", "equipment": "e"})
    assert "a meter reading is a number" in problems(
        {"kind": "meter", "node_id": "i=1", "meter": "m", "carrier": "electricity", "value_type": "text"})
    assert "meter and carrier are for kind" in problems(
        {"node_id": "i=1", "equipment": "e", "signal": "s", "meter": "m"})
    with pytest.raises(ValueError, match="both feed meter 'm'"):
        schema.OpcUaSource(name="s", endpoint="opc.tcp://127.0.0.1:4840", node=[
            {"kind": "meter", "node_id": "i=1", "meter": "m", "carrier": "electricity"},
            {"kind": "meter", "node_id": "i=2", "meter": "m", "carrier": "electricity"}])
    feeds = schema.OpcUaSource(name="s", endpoint="opc.tcp://127.0.0.1:4840", node=[
        {"kind": "meter", "node_id": "i=1", "meter": "m", "carrier": "electricity"},
        {"node_id": "i=2", "equipment": "e", "signal": "s"}]).feeds()
    assert (feeds.equipment, feeds.meters, feeds.any_equipment, feeds.any_meter) == (
        frozenset({"e"}), frozenset({"m"}), False, False)


AGENT_HEAD = """
[enterprise]
id = "91330602MA2BXXXX1X"
name = "示范纺织"
region = "330602"
industry = "17"

[plant]
interval_minutes = 1   # this test's only setting beyond the paste: intervals it can see in seconds

[spool]
path = "spool.db"
commit_interval_ms = 5

[sink]
type = "embedded"
path = "store.db"

[metrics]
enabled = false
"""


async def test_a_config_that_browse_printed_measures_states_and_consumption_as_pasted(
    factory: OpcUaTestServer, tmp_path: Path
) -> None:
    """The issue's plant: four site meters in a Meters folder, CNC machines with OPC 40001 MachineryItemState
    and OPC 40501 ChannelState / OperationMode / spindle speed directly under the machine (no Equipment),
    energy counters per machine, a loom with only Running and a pick rate. `fmc opcua browse` prints the
    config; pasted as is, the agent measures the machines' states and the site's kWh, m³ and tce."""
    report = await browse_machines(factory.url)
    printed = report.render_toml()
    assert {m.equipment for m in report.machines} == {"cnc-01", "cnc-02", "loom-07"}  # Meters is no machine
    assert {m.meter for m in report.meters} == {"main_electricity_kwh", "natural_gas_m3", "water_intake_m3",
                                                "wastewater_m3"}
    assert [m.meter for m in report.machines[0].meters] == ["cnc-01-energy_kwh"]
    (cnc,) = [m for m in report.machines if m.equipment == "cnc-01"]
    assert cnc.kind == "machine_tool" and {s.signal for s in cnc.signals} == {
        "channel_state", "operation_mode", "spindle_speed", "machinery_item_state"}
    (loom,) = [m for m in report.machines if m.equipment == "loom-07"]
    assert {s.signal for s in loom.signals} == {"running", "pick_rate"}

    # the registers' readings at whole minutes, stamped by the device: 20 and 10 minutes ago, and 2 minutes ago
    minute = time.time_ns() // (60 * S) * 60 * S
    stamps = [datetime.fromtimestamp((minute - m * 60 * S) / S, UTC) for m in (20, 10, 2)]
    registers = {"Meters.Main_Electricity_kWh": (125_000.0, 125_100.0, 125_180.0),
                 "Meters.NaturalGas_m3": (8_000.0, 8_005.0, 8_009.0),
                 "Meters.WaterIntake_m3": (3_200.0, 3_210.0, 3_218.0),
                 "Meters.Wastewater_m3": (2_900.0, 2_908.0, 2_915.0),
                 "CNC-01.Energy_kWh": (4_000.0, 4_030.0, 4_050.0)}
    for name, values in registers.items():
        factory.write(name, values[0], source_ts=stamps[0])
    factory.write("CNC-01.Channel1.ChannelState", 0, variant_type=ua.VariantType.Int32)  # Active: running
    factory.write("CNC-02.Channel1.ChannelState", 2, variant_type=ua.VariantType.Int32)  # Reset …
    factory.write("CNC-02.Spindle.ActualSpeed", 0.0)  # … standing …
    factory.write("CNC-02.ItemState.CurrentState", ua.LocalizedText("NotExecuting"))  # … and waiting: idle
    factory.write("Loom-07.Running", True)

    path = tmp_path / "agent.toml"
    path.write_text(AGENT_HEAD + printed, encoding="utf-8")
    cfg = load_config(path)
    agent = Agent(cfg, inventory=load_inventory(path, cfg.equipment, cfg.inventory), shutdown_flush_s=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await _wait(lambda: agent.sources and agent.sources[0].connected, "the OPC UA source to connect")
        for step in (1, 2):
            await asyncio.sleep(1.2)  # the pasted nodes sample every 1000 ms: each reading is sampled
            for name, values in registers.items():
                factory.write(name, values[step], source_ts=stamps[step])
        store = EmbeddedStore(cfg.sink_settings().path)  # type: ignore[attr-defined]

        seen: dict[str, Any] = {}

        def measured() -> bool:
            seen["states"] = {p.tags["equipment"]: p.fields["state"] for p in store.points("equipment_state")}
            seen["meters"] = {p.tags["meter"] for p in store.points("meter_interval")
                              if p.ts_ns == minute - 3 * 60 * S}  # the last interval before the newest reading
            states_ok = seen["states"] == {"cnc-01": "running", "cnc-02": "idle", "loom-07": "running"}
            return states_ok and seen["meters"] == {*(m.meter for m in report.meters), "cnc-01-energy_kwh"}

        await _wait(measured, "states and meter intervals in the store", timeout=20, seen=seen)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    intervals = store.points("meter_interval")
    store.close()
    total: dict[str, dict[str, float]] = {}
    for p in intervals:
        for key, value in p.fields.items():
            total.setdefault(p.tags["meter"], {}).setdefault(key, 0.0)
            total[p.tags["meter"]][key] += value
    assert round(total["main_electricity_kwh"]["amount"], 6) == 180.0
    assert round(total["main_electricity_kwh"]["tce"], 9) == round(180.0 * 0.1229 / 1000, 9)
    assert round(total["natural_gas_m3"]["amount"], 6) == 9.0
    assert round(total["natural_gas_m3"]["tce"], 9) == round(9.0 * 1.2143 / 1000, 9)
    assert round(total["water_intake_m3"]["m3"], 6) == 18.0 and "tce" not in total["water_intake_m3"]
    assert round(total["wastewater_m3"]["m3"], 6) == 15.0
    assert round(total["cnc-01-energy_kwh"]["amount"], 6) == 50.0  # a sub-meter: enterprise_total = false
    assert cfg.meter[4].enterprise_total is False and cfg.meter[0].enterprise_total is True
    assert all(p.fields["coverage"] == 1.0 for p in intervals if p.tags["meter"] == "main_electricity_kwh")


async def _wait(predicate: Any, what: str, timeout: float = 15.0, seen: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f": {seen}" if seen else ""))
        await asyncio.sleep(0.1)


async def test_check_counts_a_node_with_a_bad_status_as_not_readable(factory: OpcUaTestServer) -> None:
    # the node exists, but has no good data now
    factory.write("Loom-07.PickRate", 0.0, status=ua.StatusCodes.BadSensorFailure)
    try:
        cfg = source_config(factory, [
            {"equipment": "loom-07", "signal": "pick_rate", "node_id": "ns=plant;s=Loom-07.PickRate"},
            {"equipment": "loom-07", "signal": "running", "node_id": "ns=plant;s=Loom-07.Running"},
            {"kind": "meter", "meter": "main", "carrier": "electricity", "node_id": f"ns=plant;s={ELECTRICITY}"},
        ])
        result = await check_opcua(cfg, timeout=10)
    finally:
        factory.write("Loom-07.PickRate", 450.0)
    assert result.ok and result.warning, result.detail  # a warning: it may heal by itself
    assert "2 of 3 node(s) readable" in result.detail
    assert "Bad status now (no good data): loom-07/pick_rate (ns=" in result.detail
    assert "BadSensorFailure" in result.detail
