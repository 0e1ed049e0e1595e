"""What ``fmc demo`` prints and writes to ``demo-summary.json``: ``summarise`` reads back what the run
measured — the embedded store, the agent's plant model (today so far) and its metrics, beside what
the simulator reports — into a ``DemoSummary``; ``render_summary`` turns it into plain-text tables
that stay aligned with Chinese text. Everything is labelled SIMULATED DATA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmc.core.tables import pad, render_table, text_width
from fmc.demo.plant import (
    DEMO_LEDGER_ONLY,
    DEMO_MACHINES,
    DEMO_METERS,
    PLANT_TZ,
    LedgerOnly,
    MachineSpec,
    MeterSpec,
    SimulatorReport,
    shift_at,
)
from fmc.demo.settings import (
    DEMO_ENTERPRISE,
    DEMO_PLANT,
    LEDGER_FILE,
    MQTT_SOURCE,
    OPCUA_SOURCE,
    STORE_FILE,
    SUMMARY_FILE,
)

if TYPE_CHECKING:  # typing only: the agent is imported when the demo runs
    from fmc.agent.runtime import Agent


# the state column's labels, Chinese and English together
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
