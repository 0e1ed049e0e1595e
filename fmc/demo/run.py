"""``fmc demo``: a simulated pilot plant — a textile mill whose ~20 machines speak OPC UA and whose
utility meters publish over MQTT — collected by the real agent into the embedded store, in one
process and without any server; then a summary of what the agent measured.

Parts, kept apart so each can change alone:

- ``fmc.demo.plant`` — the plant: ``PlantSimulator`` (machines with shifts, idle spells,
  faults and a flaky link; meters, one of which is reset mid-run; deliberately bad messages),
  ``OpcUaPlantServer`` (asyncua on a free 127.0.0.1 port) and the equipment ledger (CSV).
- ``DemoBroker`` / ``MqttPublisher`` — the meters' transport: amqtt on a free 127.0.0.1 port and a
  paho client publishing with QoS 1.
- the agent — ``fmc.agent.runtime.Agent``, exactly what ``fmc run`` starts, with an ``[[opcua]]``
  source for the machines, an ``[[mqtt]]`` source for the meters, the ledger as its inventory, and
  the embedded store as its sink (``demo_config``).
- ``summarise`` / ``render_summary`` — per equipment and per enterprise figures read from the
  store, the agent's plant model (today so far) and its metrics, checked against what the
  simulator reports; plain-text tables that stay aligned with Chinese text. The same figures go
  to ``demo-summary.json`` in the work dir.

Everything printed is labelled SIMULATED DATA: these figures describe no real plant.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from fmc.cli.plugins import AgentConfig
from fmc.core.tables import pad, render_table, text_width
from fmc.demo.history import HISTORY_YEARS, SHOWN_YEAR, DemoApi, indicator_table, write_history
from fmc.demo.plant import (
    DEMO_LEDGER_ONLY,
    DEMO_MACHINES,
    DEMO_METERS,
    NAMESPACES,
    PLANT_TZ,
    LedgerOnly,
    MachineSpec,
    MeterSpec,
    OpcUaPlantServer,
    PlantSimulator,
    SimMessage,
    SimulatorReport,
    equipment_classes,
    free_port,
    meter_configs,
    opcua_nodes,
    shift_at,
    write_ledger_csv,
)

if TYPE_CHECKING:  # typing only: the agent is imported when the demo runs
    from fmc.agent.runtime import Agent

# --- transport: broker and publisher --------------------------------------------------------------


class DemoBroker:
    """amqtt inside this process: one TCP listener on 127.0.0.1, anonymous, no $SYS topics."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._broker: Any = None

    @staticmethod
    def broker_config(host: str, port: int) -> dict[str, Any]:
        # amqtt 0.12 format: listeners by name ("default" is required) and plugins by dotted
        # class path. Leaving out BrokerSysPlugin means no $SYS interval; leaving out the logging
        # plugins keeps its packet log quiet.
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    async def start(self, attempts: int = 5) -> int:
        from amqtt.broker import Broker
        from amqtt.errors import BrokerError

        last: Exception | None = None
        for _ in range(attempts):  # a free port can be taken between the probe and the bind
            port = free_port(self.host)
            broker = Broker(self.broker_config(self.host, port))
            try:
                await broker.start()
            except BrokerError as e:
                last = e
                continue
            self._broker, self.port = broker, port
            return port
        raise RuntimeError(f"cannot start the demo MQTT broker on {self.host}: {last}")

    def has_subscriptions(self, filters: Sequence[str]) -> bool:
        subscriptions = self._broker.subscriptions if self._broker is not None else {}
        return all(subscriptions.get(f) for f in filters)

    async def stop(self) -> None:
        if self._broker is not None:
            broker, self._broker = self._broker, None
            await broker.shutdown()


class MqttPublisher:
    """The plant's side of MQTT: a paho client publishing with QoS 1 from its own thread."""

    def __init__(self, host: str, port: int, client_id: str = "plant-sim-publisher") -> None:
        import paho.mqtt.client as mqtt

        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.max_inflight_messages_set(1000)  # a tick publishes ~60 messages at once
        self._host, self._port = host, port
        self._pending: list[Any] = []
        self.published = 0

    async def connect(self, timeout_s: float = 10.0) -> None:
        await asyncio.to_thread(self._client.connect, self._host, self._port)
        self._client.loop_start()
        deadline = time.monotonic() + timeout_s
        while not self._client.is_connected():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulator could not connect to the demo broker on port {self._port}")
            await asyncio.sleep(0.02)

    def publish(self, messages: Sequence[SimMessage]) -> None:
        for m in messages:
            self._pending.append(self._client.publish(m.topic, m.payload, qos=1))
        self.published += len(messages)

    async def flush(self, timeout_s: float = 15.0) -> bool:
        """Wait until the broker acknowledged every message; False if it did not in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(info.is_published() for info in self._pending):
                self._pending.clear()
                return True
            await asyncio.sleep(0.02)
        return False

    async def close(self) -> None:
        await asyncio.to_thread(self._client.disconnect)
        self._client.loop_stop()


# --- the agent's configuration ---------------------------------------------------------------------

OPCUA_SOURCE = "plant-opcua"
MQTT_SOURCE = "meters-mqtt"
DEMO_ENTERPRISE = {
    "id": "demo-330602-0001",
    "name": "示范纺织（模拟） Demo Textiles (simulated)",
    "region": "330602",
    "industry": "17",
}
# Not the defaults: 1-minute meter intervals complete during a short run (default 15), and a
# machine whose link drops shows as offline after 8 s (default 600 s).
DEMO_PLANT = {"interval_minutes": 1, "offline_after_s": 8.0}
LEDGER_FILE = "equipment-ledger.csv"
STORE_FILE = "fmc-store.db"
SPOOL_FILE = "spool.db"
SUMMARY_FILE = "demo-summary.json"
SETTLE_S = 1.5  # after the last tick: one publishing interval (0.5 s) and one poll round (1 s)


def demo_config(
    opcua_endpoint: str,
    broker_port: int,
    workdir: Path,
    metrics_port: int | None,
    machines: Sequence[MachineSpec] = DEMO_MACHINES,
    meters: Sequence[MeterSpec] = DEMO_METERS,
) -> AgentConfig:
    """The agent configuration ``fmc demo`` runs with; the same shape as deploy/examples/agent.toml."""
    return AgentConfig.model_validate(
        {
            "enterprise": DEMO_ENTERPRISE,
            "opcua": [
                {
                    "name": OPCUA_SOURCE,
                    "endpoint": opcua_endpoint,
                    "security_policy": "None",  # a loopback demo; a plant uses Basic256Sha256
                    "timestamp": "source",
                    "reconnect_min_s": 0.2,
                    "reconnect_max_s": 2.0,
                    "namespaces": NAMESPACES,
                    "node": opcua_nodes(machines),
                }
            ],
            "mqtt": [
                {
                    "name": MQTT_SOURCE,
                    "host": "127.0.0.1",
                    "port": broker_port,
                    "client_id": "fmc-demo",
                    "clean_session": False,  # persistent session: the broker keeps QoS 1 messages for us
                    "reconnect_min_s": 0.2,
                    "reconnect_max_s": 2.0,
                    "subscribe": [
                        {
                            "topic": "meters/{carrier}/{meter}",
                            "qos": 1,
                            "kind": "meter",
                            "value_path": "d.reading",
                            "timestamp_path": "t",
                            "timestamp_unit": "iso8601",
                        },
                    ],
                }
            ],
            "plant": DEMO_PLANT,
            "equipment_class": equipment_classes(machines),
            "meter": meter_configs(meters),
            "sink": {"type": "embedded", "path": str(workdir / STORE_FILE)},
            "spool": {"path": str(workdir / SPOOL_FILE)},
            "metrics": (
                {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"} if metrics_port else {"enabled": False}
            ),
            "log": {"level": "warning"},
        }
    )


# --- summary --------------------------------------------------------------------------------------

STATE_LABELS = {
    "offline": "离线 offline", "off": "停机 off", "idle": "待机 idle", "running": "运行 running", "down": "故障 down",
}
TRACKED = ("running", "idle", "down", "off", "offline")


@dataclass(slots=True)
class EquipmentRow:
    equipment: str
    label: str
    nc: bool
    connected: bool
    counted: bool  # in the ledger's scope and in service today: in the denominators
    note: str
    state: str | None  # the last `equipment_state` in the store; None: none written
    seconds: dict[str, float]  # today so far, from the agent's state tracker
    state_changes: int  # `equipment_state` points in the store
    values: int  # `signal` points in the store
    bad_values: int  # … of them with a Bad OPC UA status
    good_samples: int  # good values the tracker saw today
    sim_seconds: dict[str, int]  # the simulator's truth (connected machines)

    @property
    def delivered_good_data(self) -> bool:
        return self.good_samples > 0


@dataclass(slots=True)
class MeterRow:
    meter: str
    carrier: str
    label: str
    unit: str
    readings: int  # `meter_reading` points in the store
    first: float | None
    last: float | None
    intervals_written: int  # `meter_interval` points in the store
    amount_written: float  # … their `amount`
    tce_written: float | None  # … their `tce`
    amount_open: float  # the interval still open in the agent's accumulator (not written yet)
    tce_open: float | None
    events: dict[str, int]  # the accumulator's counts that are not 0 (reset_counted, …)
    sim_increments: float | None  # the register's true increments, from the simulator
    reset_at_ms: int | None

    @property
    def consumption(self) -> float:
        return self.amount_written + self.amount_open

    @property
    def tce(self) -> float | None:
        if self.tce_written is None and self.tce_open is None:
            return None
        return (self.tce_written or 0.0) + (self.tce_open or 0.0)


@dataclass(slots=True)
class EnterpriseFigures:
    day: str  # the local date the figures are for
    equipment_counted: int
    equipment_nc: int
    asset_value_total: float
    asset_value_nc: float
    networked_min_online_minutes: float
    nc_networked: int  # by the rule: good data and ≥ the minimum online time today
    nc_with_good_data: int  # the demo's stand-in: delivered good data in this run
    tce_by_carrier: dict[str, float]
    m3_by_carrier: dict[str, float]

    @property
    def tce_total(self) -> float:
        return sum(self.tce_by_carrier.values())


@dataclass(slots=True)
class DemoSummary:
    workdir: Path
    store_path: Path
    started_ms: int  # the agent's start
    first_tick_ms: int
    last_tick_ms: int
    ticks: int
    shift: str
    on_break: bool
    equipment: list[EquipmentRow]
    meters: list[MeterRow]
    enterprise: EnterpriseFigures
    report: SimulatorReport
    opcua_received: int
    mqtt_received: int
    accepted: int
    rejected: dict[str, int]
    written: int
    dead_lettered: int
    store_points: dict[str, int]
    spool_depth: int
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["workdir"], doc["store_path"] = str(self.workdir), str(self.store_path)
        doc["simulated"] = True
        return doc


def _ledger_rows(inventory: Sequence[Any], machines: Sequence[MachineSpec],
                 ledger_only: Sequence[LedgerOnly]) -> list[tuple[Any, str, str]]:
    """(inventory item, label, note) in ledger order."""
    labels = {s.equipment: s.kind.label for s in machines}
    notes = {x.equipment: x.why for x in ledger_only}
    labels.update({x.equipment: x.label for x in ledger_only})
    flaky = {s.equipment for s in machines if s.flaky_link}
    out = []
    for item in inventory:
        note = notes.get(item.id, "")
        if item.id in flaky:
            note = "its link to the PLC drops now and then"
        elif not item.connected and item.decommissioned is None:
            note = f"never connected ({note})" if note else "never connected"
        out.append((item, labels.get(item.id, item.category or item.kind), note))
    return out


def summarise(
    agent: Agent,
    sim: SimulatorReport,
    *,
    workdir: Path,
    spool_depth: int,
    started_ms: int,
    first_tick_ms: int,
    last_tick_ms: int,
    machines: Sequence[MachineSpec] = DEMO_MACHINES,
    meters: Sequence[MeterSpec] = DEMO_METERS,
    ledger_only: Sequence[LedgerOnly] = DEMO_LEDGER_ONLY,
) -> DemoSummary:
    """Read back what the run measured: the store, the agent's plant model (today so far) and metrics."""
    from fmc.plant.config import native_to_canonical
    from fmc.plant.rollups import is_networked
    from fmc.plant.tce import coefficients_for, tce
    from fmc.stores.embedded.store import EmbeddedStore

    cfg, plant = agent.cfg, agent.plant
    assert plant is not None, "the demo's agent has an inventory, so it has a plant model"
    store_path = workdir / STORE_FILE
    today = datetime.fromtimestamp(last_tick_ms / 1000, PLANT_TZ).date()
    shift, on_break = shift_at(datetime.fromtimestamp(first_tick_ms / 1000, PLANT_TZ))
    coefficients = coefficients_for(cfg.coefficients, today.year)
    equipment: list[EquipmentRow] = []
    meter_rows: list[MeterRow] = []
    with EmbeddedStore(store_path, readonly=True) as store:
        for item, label, note in _ledger_rows(agent.inventory, machines, ledger_only):
            tags = {"equipment": item.id}
            states = store.points("equipment_state", tags, fields=["state"])
            values = store.points("signal", tags, fields=["quality"])
            tracker = plant.trackers[item.id]
            day = tracker.open_day_totals()
            seconds = {
                "running": day.running_ns / 1e9, "idle": day.idle_ns / 1e9, "down": day.down_ns / 1e9,
                "off": day.off_ns / 1e9, "offline": day.offline_ns / 1e9,
            }
            equipment.append(
                EquipmentRow(
                    equipment=item.id,
                    label=label,
                    nc=item.nc,
                    connected=item.connected,
                    counted=item.counts_on(today),
                    note=note,
                    state=str(states[-1].fields["state"]) if states else None,
                    seconds=seconds,
                    state_changes=len(states),
                    values=len(values),
                    bad_values=sum(1 for p in values if p.fields.get("quality")),
                    good_samples=day.good_samples,
                    sim_seconds=dict(sim.state_seconds.get(item.id, {})),
                )
            )
        for m in meters:
            tags = {"meter": m.meter, "carrier": m.carrier}
            readings = [float(p.fields["value"]) for p in store.points("meter_reading", tags, fields=["value"])]
            intervals = store.points("meter_interval", tags, fields=["amount", "tce"])
            acc = plant.meters[m.meter]
            snap = acc.snapshot()
            amount_open = sum(float(row[1]) for row in snap["open"])
            factor = native_to_canonical(m.carrier, acc.meter.unit or m.config_unit)
            tce_open = tce(m.carrier, amount_open * factor, coefficients)
            tce_values = [float(p.fields["tce"]) for p in intervals if "tce" in p.fields]
            meter_rows.append(
                MeterRow(
                    meter=m.meter,
                    carrier=m.carrier,
                    label=m.label,
                    unit=m.unit,
                    readings=len(readings),
                    first=readings[0] if readings else None,
                    last=readings[-1] if readings else None,
                    intervals_written=len(intervals),
                    amount_written=sum(float(p.fields["amount"]) for p in intervals),
                    tce_written=sum(tce_values) if tce_values else (None if tce_open is None else 0.0),
                    amount_open=amount_open,
                    tce_open=tce_open,
                    events={k: v for k, v in acc.counts.items() if v},
                    sim_increments=sim.meter_increments.get(m.meter),
                    reset_at_ms=sim.resets.get(m.meter),
                )
            )
        store_points = {name: store.count(name) for name in
                        ("signal", "meter_reading", "equipment_state", "meter_interval", "equipment_daily",
                         "enterprise_daily", "consumption_daily")}

    counted = [e for e in equipment if e.counted]
    nc = [e for e in counted if e.nc]
    minimum = cfg.plant.networked_min_online_minutes
    values_by_id = {item.id: item.asset_value or 0.0 for item in agent.inventory}
    tce_by_carrier: dict[str, float] = {}
    m3_by_carrier: dict[str, float] = {}
    for row in meter_rows:
        if row.tce is not None:
            tce_by_carrier[row.carrier] = tce_by_carrier.get(row.carrier, 0.0) + row.tce
        if row.unit == "m³" and row.carrier in ("water_intake", "wastewater"):
            m3_by_carrier[row.carrier] = m3_by_carrier.get(row.carrier, 0.0) + row.consumption
    enterprise = EnterpriseFigures(
        day=today.isoformat(),
        equipment_counted=len(counted),
        equipment_nc=len(nc),
        asset_value_total=sum(values_by_id[e.equipment] for e in counted),
        asset_value_nc=sum(values_by_id[e.equipment] for e in nc),
        networked_min_online_minutes=minimum,
        nc_networked=sum(
            1 for e in nc
            if is_networked(e.good_samples, sum(v for k, v in e.seconds.items() if k != "offline"), minimum)
        ),
        nc_with_good_data=sum(1 for e in nc if e.delivered_good_data),
        tce_by_carrier=tce_by_carrier,
        m3_by_carrier=m3_by_carrier,
    )
    metrics = agent.metrics
    return DemoSummary(
        workdir=workdir,
        store_path=store_path,
        started_ms=started_ms,
        first_tick_ms=first_tick_ms,
        last_tick_ms=last_tick_ms,
        ticks=sim.ticks,
        shift=shift.name,
        on_break=on_break,
        equipment=equipment,
        meters=meter_rows,
        enterprise=enterprise,
        report=sim,
        opcua_received=int(metrics.value("fmc_messages_received_total", {"source": OPCUA_SOURCE})),
        mqtt_received=int(metrics.value("fmc_messages_received_total", {"source": MQTT_SOURCE})),
        accepted=int(sum(metrics.value("fmc_points_accepted_total", {"source": s}) for s in (OPCUA_SOURCE,
                                                                                            MQTT_SOURCE))),
        rejected=_rejections_by_reason(metrics),
        written=int(metrics.value("fmc_points_written_total", {"sink": "embedded"})),
        dead_lettered=int(metrics.value("fmc_points_dead_lettered_total", {"sink": "embedded"})),
        store_points=store_points,
        spool_depth=spool_depth,
    )


def _rejections_by_reason(metrics: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "fmc_rejected_total" and sample.value:
                reason = sample.labels["reason"]
                out[reason] = out.get(reason, 0) + int(sample.value)
    return dict(sorted(out.items()))


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _pct(part: float, whole: float) -> str:
    return "—" if not whole else f"{100.0 * part / whole:.1f} %"


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, PLANT_TZ).strftime("%H:%M:%S")


def _state_cell(e: EquipmentRow) -> str:
    if not e.counted:
        return "—"
    return STATE_LABELS.get(e.state or "offline", e.state or "offline")  # no state written yet: offline


def render_summary(s: DemoSummary) -> str:
    banner = "SIMULATED DATA — 模拟数据: a simulated pilot plant; no real plant, machine or meter is measured here"
    out = ["", "=" * text_width(banner), banner, "=" * text_width(banner), ""]
    ent = s.enterprise
    out.append(f"{DEMO_ENTERPRISE['name']}  (enterprise {DEMO_ENTERPRISE['id']}, region 330602, industry 17)")
    out.append(f"{s.ticks} s of plant data on {ent.day}, {_clock(s.first_tick_ms)}–{_clock(s.last_tick_ms)} "
               f"plant time (Asia/Shanghai); {s.shift}{', on its break' if s.on_break else ''}")
    out.append("States change every few seconds here; in a real plant they change every few minutes.")
    out.append("")

    out.append(f"Equipment — today so far (since the agent started at {_clock(s.started_ms)}), seconds per state from "
               "the agent's state tracker;")
    out.append("state = the last `equipment_state` in the store; values = `signal` points (bad = Bad OPC UA status)")
    rows = []
    notes = []
    for e in s.equipment:
        secs = [_num(e.seconds[k], 0) if e.counted else "" for k in TRACKED]
        mark = "*" if e.note else ""
        rows.append([
            e.equipment + mark, e.label, "yes" if e.nc else "no", "yes" if e.connected else "no", _state_cell(e),
            *secs, str(e.state_changes), f"{e.values} ({e.bad_values})",
        ])
        if e.note:
            notes.append(f"{e.equipment}: {e.note}")
    headers = ["equipment", "type 类型", "NC", "联网 conn.", "state 状态", "running", "idle", "down", "off", "offline",
               "changes", "values (bad)"]
    out += render_table(headers, rows, "<<<<<>>>>>>>")
    out.append("* " + "; ".join(notes))
    out.append("")

    out.append(f"Enterprise — 企业指标 (SIMULATED), {ent.day}")
    lines: list[tuple[str, str]] = [
        ("NC rate 装备数控化率", "period end: the ledger's equipment in scope and in service today"),
        ("  by count",
         f"{ent.equipment_nc} of {ent.equipment_counted} = {_pct(ent.equipment_nc, ent.equipment_counted)}"),
        ("  by asset value 原值", f"¥{ent.asset_value_nc:,.0f} of ¥{ent.asset_value_total:,.0f} = "
                                f"{_pct(ent.asset_value_nc, ent.asset_value_total)}"),
        ("networking rate 机器联网率", "today so far: networked NC equipment ÷ NC equipment"),
        (f"  by the rule (good data, ≥ {ent.networked_min_online_minutes:g} min online today)",
         f"{ent.nc_networked} of {ent.equipment_nc} = {_pct(ent.nc_networked, ent.equipment_nc)}"
         + (f"  (this run lasted {s.ticks} s: no equipment can be online {ent.networked_min_online_minutes:g} min)"
            if s.ticks < ent.networked_min_online_minutes * 60 else "")),
        ("  delivered good data in this run (demo stand-in)",
         f"{ent.nc_with_good_data} of {ent.equipment_nc} = {_pct(ent.nc_with_good_data, ent.equipment_nc)}"
         "  (NC equipment never connected: the gap)"),
        ("energy 综合能源消费量", "`meter_interval` tce, plus the interval still open in the agent"),
    ]
    labels = {m.carrier: m.label for m in s.meters}
    for carrier, value in ent.tce_by_carrier.items():
        lines.append((f"  {labels.get(carrier, carrier)}", f"{value:.6f} tce"))
    lines.append(("  total", f"{ent.tce_total:.6f} tce  ({ent.tce_total * 1000:.3f} kgce)"))
    lines.append(("water 水", "m³ (fresh water and other media are not energy)"))
    for carrier, value in ent.m3_by_carrier.items():
        lines.append((f"  {labels.get(carrier, carrier)}", f"{value:.3f} m³"))
    width = max(text_width(k) for k, _ in lines)
    out += [f"  {pad(k, width)}  {v}" for k, v in lines]
    out.append("")

    out.append("Meters — raw `meter_reading` and 1-minute `meter_interval` points in the store (cumulative counters)")
    rows = []
    for m in s.meters:
        digits = 2 if m.unit == "kWh" else 3
        rows.append([
            m.meter, m.label, str(m.readings), _num(m.first, digits), _num(m.last, digits), str(m.intervals_written),
            _num(m.amount_written, digits), _num(m.amount_open, digits), _num(m.consumption, digits), m.unit,
            "—" if m.tce is None else f"{m.tce:.6f}",
        ])
    out += render_table(["meter", "carrier 能源/水", "readings", "first reading", "last reading", "intervals",
                         "in intervals", "open interval", "consumption", "unit", "tce"], rows, "<<>>>>>>><>")
    for m in s.meters:
        if m.reset_at_ms is None:
            continue
        events = ", ".join(f"{k} {v}" for k, v in sorted(m.events.items())) or "none"
        naive = None if m.first is None or m.last is None else m.last - m.first
        out.append(f"{m.meter}: the register was reset to 0 at {_clock(m.reset_at_ms)} (simulated maintenance). "
                   f"Counted once: {_num(m.consumption, 3)} {m.unit}; the register's true increments: "
                   f"{_num(m.sim_increments, 3)} {m.unit}")
        out.append(f"  (last − first reading would say {_num(naive, 3)} {m.unit}; accumulator events: {events})")
    out.append(f"(intervals are {DEMO_PLANT['interval_minutes']} minute here, 15 by default; the open interval is "
               "written once it ends)")
    out.append("")

    out.append("Agent")
    r = s.report
    bad = ", ".join(f"{kind} {n}" for kind, n in sorted(r.bad_messages.items())) or "none"
    rejected = ", ".join(f"{reason} {n}" for reason, n in s.rejected.items()) or "none"
    written_values = sum(r.values_written.values())
    totals = [
        ("OPC UA values written by the simulator", f"{written_values}  ({r.changes_written} of them changes; "
                                                   f"link losses: {sum(r.link_losses.values())})"),
        ("OPC UA values received by the agent", f"{s.opcua_received}  (initial values, changes, polls)"),
        ("MQTT messages sent by the simulator", f"{r.mqtt_total}  (deliberately bad: {r.bad_total}: {bad})"),
        ("MQTT messages received by the agent", str(s.mqtt_received)),
        ("points accepted into the spool", str(s.accepted)),
        ("rejected, by reason", f"{sum(s.rejected.values())}  ({rejected})"),
        ("points written to the embedded store", str(s.written)),
        ("points refused by the store", str(s.dead_lettered)),
        ("points in the store", ", ".join(f"{k} {v}" for k, v in s.store_points.items() if v)),
        ("spool depth at the end", str(s.spool_depth)),
    ]
    width = max(text_width(k) for k, _ in totals)
    out += [f"  {pad(k, width)}  {v}" for k, v in totals]
    out.append("")
    out.append(f"Store: {s.store_path}  (SQLite; read it with fmc.stores.embedded.store.EmbeddedStore)")
    out.append(f"Work dir (kept): {s.workdir}  — {LEDGER_FILE} (the ledger it loaded), {SUMMARY_FILE}")
    out.append("Daily rollups (equipment_daily, enterprise_daily, consumption_daily) are written at local midnight;")
    out.append("the 'today so far' figures above come from the agent's plant model.")
    out.append("Run the real agent on your plant: copy deploy/examples/agent.toml, set the enterprise,")
    out.append("servers and store, then `fmc check -c agent.toml` and `fmc run -c agent.toml`.")
    if s.problems:
        out.append("")
        out += [f"PROBLEM: {p}" for p in s.problems]
    out.append("")
    return "\n".join(out)


@contextlib.contextmanager
def _quiet_loggers(names: Sequence[str], level: int) -> Iterator[None]:
    """Raise these libraries' log levels for the demo, and put them back afterwards."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, before, strict=True):
            lg.setLevel(old)


@contextlib.contextmanager
def _agent_logger(name: str = "fmc.demo.agent") -> Iterator[logging.Logger]:
    """The agent's warnings and errors on stderr, formatted as ``fmc run`` prints them; the
    summary on ``out`` stays clean. The handler is removed afterwards."""
    from fmc.core.logs import TextFormatter

    logger = logging.getLogger(name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter())
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


async def _wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll_s)
    return True




def _received(agent: Agent, source: str) -> float:
    return float(agent.metrics.value("fmc_messages_received_total", {"source": source}))


def _connected(agent: Agent, source: str) -> bool:
    return agent.metrics.value("fmc_source_connected", {"source": source}) >= 1


def _fresh_workdir(workdir: Path) -> None:
    """A demo starts afresh: an earlier demo's spool and store in the same work dir are replaced
    (its plant state would resume, and its meters would see this run's registers start over)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in (STORE_FILE, SPOOL_FILE):
        for suffix in ("", "-wal", "-shm", "-journal"):
            (workdir / f"{name}{suffix}").unlink(missing_ok=True)


@dataclass(slots=True)
class _Run:
    """The demo's live parts, for ``_simulate``."""

    sim: PlantSimulator
    server: OpcUaPlantServer
    broker: DemoBroker
    agent: Agent
    agent_task: asyncio.Task[None]
    cfg: AgentConfig
    first_tick_ms: int = 0
    last_tick_ms: int = 0


async def _simulate(run: _Run, ticks: int, say: Callable[[str], None]) -> list[str]:
    """Run ``ticks`` seconds of plant and wait until the agent has what was sent.
    Returns the problems seen (empty when all went well)."""
    sim, agent, task = run.sim, run.agent, run.agent_task
    # start the plant's clock only once the agent listens on both sources, or its first seconds would be lost
    filters = [sub.mqtt_filter() for sub in run.cfg.mqtt[0].subscribe]
    ready = await _wait_until(
        lambda: task.done() or (run.broker.has_subscriptions(filters) and _connected(agent, OPCUA_SOURCE)), 20.0
    )
    if task.done():
        return ["the agent stopped before it was connected to the simulated plant"]
    if not ready:
        missing = "the OPC UA server" if not _connected(agent, OPCUA_SOURCE) else "the MQTT broker"
        return [f"the agent did not connect to {missing} within 20 s"]
    publisher = MqttPublisher("127.0.0.1", run.broker.port)
    await publisher.connect()
    written = 0
    try:
        say(f"simulating {len(sim.machines)} machines and {len(sim.meters)} meters for {ticks} s …")
        t0 = time.monotonic()
        for k in range(ticks):
            await asyncio.sleep(max(0.0, t0 + k - time.monotonic()))  # one tick per wall-clock second
            if task.done():
                return ["the agent stopped while the plant was running"]
            now_ms = time.time_ns() // 1_000_000
            run.first_tick_ms = run.first_tick_ms or now_ms
            run.last_tick_ms = now_ms
            tick = sim.tick(now_ms)
            written += await run.server.write(tick)
            publisher.publish(tick.messages)
            if k and k % 5 == 0:
                say(f"  {k:>3} s: OPC UA {written} values written, {_received(agent, OPCUA_SOURCE):.0f} received; "
                    f"MQTT {publisher.published} messages published, {_received(agent, MQTT_SOURCE):.0f} received")
        if not await publisher.flush():
            return ["the broker did not acknowledge every published message"]
    finally:
        await publisher.close()
    problems: list[str] = []
    sent = sim.report.mqtt_total
    if not await _wait_until(lambda: task.done() or _received(agent, MQTT_SOURCE) >= sent, 15.0):
        problems.append(f"the agent received {_received(agent, MQTT_SOURCE):.0f} of {sent} MQTT messages within 15 s")
    await asyncio.sleep(SETTLE_S)  # OPC UA: the last changes come with the next publish or poll
    return problems


async def run_demo(
    duration_s: float = 20.0,
    workdir: Path | None = None,
    out: TextIO = sys.stdout,
    seed: int = 2017,
) -> int:
    """Run the simulated plant through the real agent into the embedded store; print a summary.

    Returns the exit code: 0 when every MQTT message reached the agent, every connected machine
    delivered data, the meters' consumption matches the simulator's registers and the spool was
    empty at the end; 1 otherwise (the output says what went wrong).
    """
    from fmc.plant.ledger import load_inventory_csv

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="fmc-demo-"))
    _fresh_workdir(workdir)
    ticks = max(1, math.ceil(duration_s))
    say("fmc demo — SIMULATED DATA: a simulated textile plant (OPC UA machines, MQTT meters), the real agent, "
        "an embedded store")
    say(f"work dir: {workdir} (kept after the demo; an earlier demo's spool and store there are replaced)")
    ledger = write_ledger_csv(workdir / LEDGER_FILE)
    inventory = load_inventory_csv(ledger)
    say(f"equipment ledger 设备台账: {ledger.name}, {len(inventory)} rows ({len(DEMO_MACHINES)} connected machines, "
        f"{len(inventory) - len(DEMO_MACHINES)} on the ledger only)")
    history = write_history(workdir / STORE_FILE, len(inventory))
    say(f"SIMULATED HISTORY: {history} daily rollups and annual reports of {HISTORY_YEARS[0]}-{HISTORY_YEARS[-1]} "
        "written to the store, so the plan's targets can be shown")
    api = DemoApi(workdir, workdir / STORE_FILE)
    try:
        await api.start()
        say(f"API (fmc api, while the demo runs): {api.url}/docs  key (scope province): {api.key}")
        say(f"  curl -H 'Authorization: Bearer {api.key}' '{api.url}/v1/indicators?level=enterprise"
            f"&period={SHOWN_YEAR}&format=csv'")
    except Exception as e:  # the demo goes on without its API; say why
        say(f"PROBLEM: the API did not start: {type(e).__name__}: {e}")
    try:
        return await _run_plant(workdir, ticks, seed, inventory, say)
    finally:
        await api.stop()


async def _run_plant(workdir: Path, ticks: int, seed: int, inventory: Any, say: Callable[[str], None]) -> int:
    from fmc.agent.runtime import Agent
    from fmc.agent.spool import Spool

    problems: list[str] = []
    sim = PlantSimulator(seed, reset_at_tick=ticks // 2)
    with _quiet_loggers(("amqtt", "transitions", "asyncua"), logging.ERROR), _agent_logger() as agent_log:
        server, broker = OpcUaPlantServer(), DemoBroker()
        try:
            endpoint = await server.start(sim.initial_values())
            await broker.start()
        except RuntimeError as e:
            await server.stop()
            say(f"PROBLEM: {e}")
            return 1
        try:
            metrics_port = free_port()
            try:
                cfg = demo_config(endpoint, broker.port, workdir, metrics_port)
                agent = Agent(cfg, logger=agent_log, inventory=inventory)
            except Exception as e:  # the demo's own config is wrong: say so plainly (the finally stops the servers)
                say(f"PROBLEM: cannot set up the agent: {type(e).__name__}: {e}")
                return 1
            say(f"OPC UA server (asyncua, security None): {endpoint}  {len(DEMO_MACHINES)} machines under "
                "Objects/Machines")
            say(f"MQTT broker (amqtt): 127.0.0.1:{broker.port}  {len(DEMO_METERS)} meters;  "
                f"agent metrics while it runs: http://127.0.0.1:{metrics_port}/metrics")
            say(f"demo settings: [plant] interval_minutes = {DEMO_PLANT['interval_minutes']} (default 15) so meter "
                f"intervals complete in a short run; offline_after_s = {DEMO_PLANT['offline_after_s']:g} "
                "(default 600) so a lost link shows")
            started_ms = time.time_ns() // 1_000_000
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop), name="fmc-demo-agent")
            run = _Run(sim, server, broker, agent, task, cfg)
            try:
                problems += await _simulate(run, ticks, say)
            except Exception as e:  # reported below; the agent and the servers still stop cleanly
                problems.append(f"{type(e).__name__}: {e}")
            finally:
                stop.set()  # the agent flushes its spool into the store before it returns
                try:
                    await task
                except Exception as e:
                    problems.append(f"the agent failed: {type(e).__name__}: {e}")
        finally:
            await broker.stop()
            await server.stop()

    store_path = workdir / STORE_FILE
    if getattr(agent, "plant", None) is None or not run.first_tick_ms or not store_path.exists():
        for p in [*problems, f"the run produced no data to summarise (work dir {workdir})"]:
            say(f"PROBLEM: {p}")
        return 1
    with Spool(cfg.spool.path, max_bytes=cfg.spool.max_bytes) as spool:
        spool_depth = spool.stats().depth
    summary = summarise(agent, sim.report, workdir=workdir, spool_depth=spool_depth, started_ms=started_ms,
                        first_tick_ms=run.first_tick_ms, last_tick_ms=run.last_tick_ms)
    problems += _checks(summary)
    summary.problems = problems
    (workdir / SUMMARY_FILE).write_text(json.dumps(summary.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
    say(render_summary(summary))
    table, table_problems = await indicator_table(workdir / STORE_FILE)
    say(table)
    problems += table_problems
    return 0 if not problems else 1


def _checks(s: DemoSummary) -> list[str]:
    """What must hold after a good run; each failure is printed as a PROBLEM and makes the exit code 1."""
    problems: list[str] = []
    if s.mqtt_received < s.report.mqtt_total:
        problems.append(f"the agent received {s.mqtt_received} of {s.report.mqtt_total} MQTT messages")
    silent = [e.equipment for e in s.equipment if e.connected and (e.values == 0 or e.state_changes == 0)]
    if silent:
        problems.append(f"no values or no states in the store for connected machine(s): {', '.join(silent)}")
    for m in s.meters:
        if m.sim_increments is not None and abs(m.consumption - m.sim_increments) > 1e-6 * max(1.0, m.sim_increments):
            problems.append(f"meter {m.meter}: the agent counted {m.consumption:.6f} {m.unit}, the register moved "
                            f"{m.sim_increments:.6f} {m.unit}")
    if s.spool_depth != 0:
        problems.append(f"{s.spool_depth} points were left in the spool (they go to the store on the next start)")
    return problems
