"""``fmc demo``: a simulated knitting and weaving plant, an embedded MQTT broker, the real agent
and the embedded store, in one process and without any server; then a summary of what it measured.

Four parts, kept apart so a later version can swap one without touching the others (the plan
is a pilot plant whose machines speak OPC UA while the meters stay on MQTT):

- ``PlantSimulator`` — the plant: machines with shifts, idle spells and faults, and utility meters
  whose counters follow the machines' load. Pure and deterministic for a seed and a start time;
  it returns messages and reports what it sent, it does no I/O.
- ``DemoBroker`` / ``MqttPublisher`` — the transport: amqtt on a free 127.0.0.1 port, and a
  paho client that publishes the simulator's messages with QoS 1.
- the agent — ``collector.agent.Agent``, exactly what ``fmc run`` starts, writing to the embedded store.
- ``summarise`` / ``render_summary`` — reads the store, the agent's metrics and the simulator's
  report, and prints plain-text tables that stay aligned with Chinese text.

Everything printed is labelled SIMULATED DATA: these figures describe no real plant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import socket
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

from schemas.config import AgentConfig

# --- the simulated plant -------------------------------------------------------------------------

PLANT_TZ = timezone(timedelta(hours=8), "CST")  # the plant's local time, as its meters print it
METER_PERIOD_S = 2  # meters report less often than machines
BAD_MESSAGE_CYCLE_S = 10  # the deliberately bad messages repeat every this many seconds

# program_state codes the machines publish (numeric in v1; companion-spec states come later)
PROGRAM_STATE_CODES = {"off": 0, "idle": 1, "running": 2, "down": 3}
STATE_LABELS = {0: "停机 off", 1: "待机 idle", 2: "运行 running", 3: "故障 down"}


@dataclass(frozen=True, slots=True)
class MachineKind:
    label: str  # Chinese and English, for the summary
    nominal_rpm: float  # main shaft, needle cylinder, knife or pump speed when running
    run_kw: float
    idle_kw: float
    good_per_s: float  # good pieces per second of running
    heats: bool = False  # dyeing machines publish their liquor temperature


LOOM = MachineKind("喷气织机 air-jet loom", 650.0, 4.5, 0.6, 0.25)
KNITTER = MachineKind("圆纬机 circular knitter", 28.0, 5.5, 0.5, 0.08)
CNC_CUTTER = MachineKind("数控裁床 CNC cutter", 3000.0, 11.0, 1.5, 0.5)
DYEING = MachineKind("溢流染色机 dyeing machine", 1450.0, 30.0, 3.0, 0.002, heats=True)


@dataclass(frozen=True, slots=True)
class MachineSpec:
    equipment: str
    kind: MachineKind
    flaky_network: bool = False  # loses its connection now and then: fewer seconds with data

    @property
    def signals(self) -> tuple[str, ...]:
        base = ("spindle_speed", "power_kw", "program_state", "good_count")
        return (*base, "temperature_c") if self.kind.heats else base


@dataclass(frozen=True, slots=True)
class MeterSpec:
    carrier: str
    meter: str
    label: str
    unit: str
    start_reading: float
    resolution: float


DEMO_MACHINES: tuple[MachineSpec, ...] = (
    *(MachineSpec(f"loom-{i:02d}", LOOM) for i in range(1, 5)),
    *(MachineSpec(f"knit-{i:02d}", KNITTER, flaky_network=(i == 3)) for i in range(1, 5)),
    *(MachineSpec(f"cnc-cut-{i:02d}", CNC_CUTTER) for i in range(1, 3)),
    *(MachineSpec(f"dye-{i:02d}", DYEING) for i in range(1, 3)),
)
DEMO_METERS: tuple[MeterSpec, ...] = (
    MeterSpec("electricity", "main-incomer", "电 electricity", "kWh", 1_284_530.25, 0.01),
    MeterSpec("natural_gas", "boiler-1", "天然气 natural gas", "m³", 356_712.4, 0.001),
    MeterSpec("water_intake", "intake-1", "取水 water intake", "m³", 98_211.5, 0.001),
    MeterSpec("wastewater", "wwtp-outlet", "废水 wastewater", "m³", 81_003.2, 0.001),
)
BASE_LOAD_KW = 40.0  # compressors, lighting, air conditioning: on the main meter, not on a machine

# Deliberately bad messages, each a mistake real plants make; (tick within the cycle, kind).
BAD_MALFORMED_JSON = "malformed JSON"
BAD_NAN = "NaN value"
BAD_CLOCK = "device clock at 1970"
BAD_CARRIER = "unknown carrier in topic"
BAD_SCHEDULE: tuple[tuple[int, str], ...] = ((1, BAD_MALFORMED_JSON), (2, BAD_NAN), (2, BAD_CLOCK), (3, BAD_CARRIER))


@dataclass(frozen=True, slots=True)
class SimMessage:
    topic: str
    payload: bytes
    bad: str | None = None  # which deliberate mistake, None for a good message


@dataclass(slots=True)
class SimulatorReport:
    """What the simulator sent: the numbers the summary and the tests check the agent against."""

    start_ms: int
    ticks: int = 0
    machine_messages: dict[str, int] = field(default_factory=dict)  # per equipment
    meter_messages: dict[str, int] = field(default_factory=dict)  # per meter
    bad_messages: dict[str, int] = field(default_factory=dict)  # per kind of mistake
    bad_topics: list[str] = field(default_factory=list)

    @property
    def good_total(self) -> int:
        return sum(self.machine_messages.values()) + sum(self.meter_messages.values())

    @property
    def bad_total(self) -> int:
        return sum(self.bad_messages.values())

    @property
    def total(self) -> int:
        return self.good_total + self.bad_total


@dataclass(slots=True)
class _MachineState:
    state: str  # running | idle | down
    state_left_s: int = 0  # for down: seconds until repaired
    offline_left_s: int = 0  # > 0: the network is gone, nothing is published
    good_count: float = 0.0
    temperature_c: float = 25.0
    power_kw: float = 0.0
    offset_ms: int = 0  # each controller publishes at its own phase within the second


def shift_staffing(local: datetime) -> float:
    """Chance an idle machine gets an operator within a minute, by shift (three 8-hour shifts)."""
    if 8 <= local.hour < 16:
        return 0.95
    if 16 <= local.hour < 24:
        return 0.85
    return 0.6  # night shift: fewer operators


class PlantSimulator:
    """One second of plant time per ``tick()``; deterministic for a seed and a start time."""

    def __init__(
        self,
        seed: int,
        start_ms: int,
        machines: Sequence[MachineSpec] = DEMO_MACHINES,
        meters: Sequence[MeterSpec] = DEMO_METERS,
    ) -> None:
        self.rng = random.Random(seed)
        self.machines = tuple(machines)
        self.meters = tuple(meters)
        self.start_ms = start_ms - start_ms % 1000  # whole seconds: "seconds with data" counts cleanly
        self.report = SimulatorReport(start_ms=self.start_ms)
        self._state: dict[str, _MachineState] = {}
        for spec in self.machines:
            roll = self.rng.random()
            state = "running" if roll < 0.75 else "idle" if roll < 0.92 else "down"
            s = _MachineState(state=state, offset_ms=self.rng.randrange(0, 400))
            s.good_count = float(self.rng.randrange(1_000, 20_000)) if spec.kind.good_per_s >= 0.01 else 40.0
            s.temperature_c = 95.0 + self.rng.random() * 30 if state == "running" else 40.0
            s.state_left_s = self.rng.randrange(5, 20) if state == "down" else 0
            self._state[spec.equipment] = s
        self._readings = {m.meter: m.start_reading for m in self.meters}

    def tick(self) -> list[SimMessage]:
        """Advance one second and return what the plant publishes in it."""
        k = self.report.ticks
        now_ms = self.start_ms + k * 1000
        local = datetime.fromtimestamp(now_ms / 1000, PLANT_TZ)
        messages: list[SimMessage] = []
        for spec in self.machines:
            messages += self._machine_second(spec, now_ms, shift_staffing(local))
        self._advance_meters()
        if k % METER_PERIOD_S == 0:
            messages += self._meter_messages(now_ms, local)
        messages += self._bad_messages(k, now_ms)
        self.report.ticks += 1
        return messages

    def _machine_second(self, spec: MachineSpec, now_ms: int, staffing: float) -> list[SimMessage]:
        s, kind, rng = self._state[spec.equipment], spec.kind, self.rng
        # state changes: short idle spells, an occasional fault that takes a while to clear
        if s.state == "running":
            roll = rng.random()
            if roll < 0.004:
                s.state, s.state_left_s = "down", rng.randrange(6, 25)
            elif roll < 0.024:
                s.state = "idle"
        elif s.state == "idle":
            if rng.random() < 0.2 * staffing:
                s.state = "running"
        else:
            s.state_left_s -= 1
            if s.state_left_s <= 0:
                s.state = "idle"
        if spec.flaky_network:
            if s.offline_left_s > 0:
                s.offline_left_s -= 1
            elif rng.random() < 0.08:
                s.offline_left_s = rng.randrange(2, 5)

        running = s.state == "running"
        rpm = kind.nominal_rpm * (1 + rng.gauss(0, 0.01)) if running else 0.0
        if running:
            s.power_kw = kind.run_kw * (1 + rng.gauss(0, 0.03))
            s.good_count += kind.good_per_s * (1 + rng.gauss(0, 0.1))
        elif s.state == "idle":
            s.power_kw = kind.idle_kw * (1 + rng.gauss(0, 0.05))
        else:
            s.power_kw = kind.idle_kw * 0.3  # the controller stays on during a fault
        if kind.heats:  # heat towards 130 °C while dyeing, cool slowly otherwise
            target = 130.0 if running else 40.0
            s.temperature_c += (target - s.temperature_c) * (0.03 if running else 0.005)
        if s.offline_left_s > 0:
            return []  # the machine runs on, but nothing reaches the broker

        ts_ms = now_ms + s.offset_ms
        values: dict[str, float | int] = {
            "spindle_speed": round(rpm, 1),
            "power_kw": round(s.power_kw, 2),
            "program_state": PROGRAM_STATE_CODES[s.state],
            "good_count": int(s.good_count),
        }
        if kind.heats:
            values["temperature_c"] = round(s.temperature_c, 1)
        out = [
            SimMessage(f"plant/{spec.equipment}/{signal}", _json({"ts": ts_ms, "value": value}))
            for signal, value in values.items()
        ]
        self.report.machine_messages[spec.equipment] = self.report.machine_messages.get(spec.equipment, 0) + len(out)
        return out

    def _advance_meters(self) -> None:
        load_kw = BASE_LOAD_KW + sum(s.power_kw for s in self._state.values())
        dyeing = sum(
            1 for spec in self.machines if spec.kind.heats and self._state[spec.equipment].state == "running"
        )
        per_hour = {  # consumption per hour of each carrier, from what the plant does
            "electricity": load_kw,
            "natural_gas": 5.0 + 25.0 * dyeing,  # the steam boiler follows the dyehouse
            "water_intake": 6.0 + 10.0 * dyeing,
            "wastewater": 0.85 * (6.0 + 10.0 * dyeing),
        }
        for m in self.meters:
            self._readings[m.meter] += per_hour.get(m.carrier, 0.0) / 3600.0

    def _meter_messages(self, now_ms: int, local: datetime) -> list[SimMessage]:
        stamp = local.isoformat(timespec="milliseconds")
        out = []
        for m in self.meters:
            digits = max(0, -math.floor(math.log10(m.resolution)))
            reading = round(math.floor(self._readings[m.meter] / m.resolution) * m.resolution, digits)
            out.append(SimMessage(f"meters/{m.carrier}/{m.meter}", _json({"t": stamp, "d": {"reading": reading}})))
            self.report.meter_messages[m.meter] = self.report.meter_messages.get(m.meter, 0) + 1
        return out

    def _bad_messages(self, k: int, now_ms: int) -> list[SimMessage]:
        out = []
        for at, kind in BAD_SCHEDULE:
            if k % BAD_MESSAGE_CYCLE_S != at:
                continue
            if kind == BAD_MALFORMED_JSON:  # a gateway cut the message short
                msg = SimMessage("plant/loom-02/power_kw", f'{{"ts": {now_ms}, "value": 4.'.encode(), kind)
            elif kind == BAD_NAN:  # a PLC's division by zero, serialised as NaN
                msg = SimMessage("plant/knit-01/spindle_speed", f'{{"ts": {now_ms}, "value": NaN}}'.encode(), kind)
            elif kind == BAD_CLOCK:  # a controller whose clock battery died
                msg = SimMessage("plant/cnc-cut-02/power_kw", _json({"ts": 0, "value": 10.5}), kind)
            else:  # a meter set up with "gas" where the plant's config says natural_gas
                stamp = datetime.fromtimestamp(now_ms / 1000, PLANT_TZ).isoformat(timespec="milliseconds")
                msg = SimMessage("meters/gas/boiler-2", _json({"t": stamp, "d": {"reading": 1.0}}), kind)
            out.append(msg)
            self.report.bad_messages[kind] = self.report.bad_messages.get(kind, 0) + 1
            self.report.bad_topics.append(msg.topic)
        return out


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# --- transport: broker and publisher --------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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

SOURCE_NAME = "plant-sim"
DEMO_ENTERPRISE = {
    "id": "demo-330602-0001",
    "name": "示范纺织（模拟） Demo Textiles (simulated)",
    "region": "330602",
    "industry": "17",
}


def demo_config(broker_port: int, workdir: Path, metrics_port: int | None) -> AgentConfig:
    """The agent configuration ``fmc demo`` runs with; the same shape as deploy/examples/agent.toml."""
    return AgentConfig.model_validate(
        {
            "enterprise": DEMO_ENTERPRISE,
            "mqtt": [
                {
                    "name": SOURCE_NAME,
                    "host": "127.0.0.1",
                    "port": broker_port,
                    "client_id": "fmc-demo",
                    "clean_session": False,  # persistent session: the broker keeps QoS 1 messages for us
                    "reconnect_min_s": 0.2,
                    "reconnect_max_s": 2.0,
                    "subscribe": [
                        {
                            "topic": "plant/{equipment}/{signal}",
                            "qos": 1,
                            "value_path": "value",
                            "timestamp_path": "ts",
                            "timestamp_unit": "ms",
                        },
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
            "sink": {"type": "embedded", "path": str(workdir / "fmc-store.db")},
            "spool": {"path": str(workdir / "spool.db")},
            "metrics": (
                {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"} if metrics_port else {"enabled": False}
            ),
            "log": {"level": "warning"},
        }
    )


# --- summary --------------------------------------------------------------------------------------


@dataclass(slots=True)
class EquipmentSummary:
    equipment: str
    kind_label: str
    published: int  # good messages the simulator sent for it
    points: int  # signal points in the store
    signals: int
    seconds_with_data: int
    seconds: int
    last: dict[str, float]


@dataclass(slots=True)
class MeterSummary:
    meter: str
    carrier_label: str
    unit: str
    readings: int
    first: float | None
    last: float | None

    @property
    def consumption(self) -> float | None:
        return None if self.first is None or self.last is None else self.last - self.first


@dataclass(slots=True)
class DemoSummary:
    workdir: Path
    store_path: Path
    seconds: int
    equipment: list[EquipmentSummary]
    meters: list[MeterSummary]
    report: SimulatorReport
    received: int
    accepted: int
    rejected: dict[str, int]
    written: int
    dead_lettered: int
    store_points: int
    spool_depth: int
    problems: list[str] = field(default_factory=list)


def summarise(
    store_path: Path,
    workdir: Path,
    report: SimulatorReport,
    metrics: Any,
    spool_depth: int,
    machines: Sequence[MachineSpec] = DEMO_MACHINES,
    meters: Sequence[MeterSpec] = DEMO_METERS,
) -> DemoSummary:
    """Read back what the run stored (only its own time window: a reused workdir keeps older runs)."""
    from adapters.embedded import EmbeddedStore

    start_ns = report.start_ms * 1_000_000
    end_ns = start_ns + (report.ticks + 1) * 1_000_000_000
    enterprise = {"enterprise": DEMO_ENTERPRISE["id"]}
    equipment: list[EquipmentSummary] = []
    meter_rows: list[MeterSummary] = []
    with EmbeddedStore(store_path, readonly=True) as store:
        for spec in machines:
            pts = store.points("signal", {**enterprise, "equipment": spec.equipment}, start_ns, end_ns, ["value"])
            seconds = {(p.ts_ns - start_ns) // 1_000_000_000 for p in pts}
            last = {p.tags["signal"]: float(p.fields["value"]) for p in pts}  # time order: the last wins
            equipment.append(
                EquipmentSummary(
                    equipment=spec.equipment,
                    kind_label=spec.kind.label,
                    published=report.machine_messages.get(spec.equipment, 0),
                    points=len(pts),
                    signals=len({p.tags["signal"] for p in pts}),
                    seconds_with_data=len(seconds),
                    seconds=report.ticks,
                    last=last,
                )
            )
        for m in meters:
            tags = {**enterprise, "meter": m.meter, "carrier": m.carrier}
            stored = store.points("meter_reading", tags, start_ns, end_ns, ["value"])
            readings = [float(p.fields["value"]) for p in stored]
            meter_rows.append(
                MeterSummary(
                    meter=m.meter,
                    carrier_label=m.label,
                    unit=m.unit,
                    readings=len(readings),
                    first=readings[0] if readings else None,
                    last=readings[-1] if readings else None,
                )
            )
        store_points = sum(
            len(store.points(measurement, enterprise, start_ns, end_ns, ["value"]))
            for measurement in ("signal", "meter_reading")
        )
    source = {"source": SOURCE_NAME}
    return DemoSummary(
        workdir=workdir,
        store_path=store_path,
        seconds=report.ticks,
        equipment=equipment,
        meters=meter_rows,
        report=report,
        received=int(metrics.value("fmc_messages_received_total", source)),
        accepted=int(metrics.value("fmc_points_accepted_total", source)),
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
            if sample.name == "fmc_rejected_total" and sample.labels.get("source") == SOURCE_NAME and sample.value:
                out[sample.labels["reason"]] = int(sample.value)
    return dict(sorted(out.items()))


def text_width(text: str) -> int:
    """Columns a terminal gives ``text``: East Asian wide and fullwidth characters take two."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text
    )


def pad(text: str, width: int, align: str = "<") -> str:
    gap = " " * max(0, width - text_width(text))
    return gap + text if align == ">" else text + gap


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Plain-text table; ``align`` has one '<' or '>' per column."""
    widths = [max(text_width(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    def line(cells: Sequence[str]) -> str:
        return "  ".join(pad(str(c), w, a) for c, w, a in zip(cells, widths, align, strict=True)).rstrip()
    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def render_summary(s: DemoSummary) -> str:
    banner = "SIMULATED DATA — 模拟数据: no real plant, machine or meter is measured here"
    out = ["", "=" * text_width(banner), banner, "=" * text_width(banner), ""]
    out.append(f"{DEMO_ENTERPRISE['name']}  (enterprise {DEMO_ENTERPRISE['id']}, region 330602, industry 17)")
    out.append(f"{s.seconds} s of plant time, {len(s.equipment)} machines, {len(s.meters)} meters")
    out.append("")
    out.append("Equipment — measurement `signal` in the store")
    rows = []
    for e in s.equipment:
        state = e.last.get("program_state")
        share = 100.0 * e.seconds_with_data / e.seconds if e.seconds else 0.0
        rows.append(
            [
                e.equipment,
                str(e.points),
                str(e.published),
                str(e.signals),
                f"{share:.0f}% ({e.seconds_with_data}/{e.seconds})",
                e.kind_label,
                STATE_LABELS.get(int(state), "—") if state is not None else "—",
                _num(e.last.get("spindle_speed")),
                _num(e.last.get("power_kw"), 2),
                _num(e.last.get("temperature_c")) if "temperature_c" in e.last else "",
                _num(e.last.get("good_count"), 0),
            ]
        )
    headers = ["equipment", "stored", "sent", "signals", "seconds with data", "type 类型", "state 状态",
               "rpm", "kW", "°C", "good count"]
    out += render_table(headers, rows, "<>>><<<>>>>")
    out.append("(stored = points in the store; sent = good messages the simulator published; last values shown)")
    out.append("")
    out.append("Meters — measurement `meter_reading` in the store (cumulative counters)")
    rows = [
        [m.meter, str(m.readings), m.carrier_label, _num(m.first, 3), _num(m.last, 3), _num(m.consumption, 3), m.unit]
        for m in s.meters
    ]
    out += render_table(["meter", "stored", "carrier 能源/水", "first reading", "last reading", "consumption", "unit"],
                        rows, "<><>>><")
    out.append("")
    out.append("Totals")
    bad = ", ".join(f"{kind} {n}" for kind, n in sorted(s.report.bad_messages.items())) or "none"
    rejected = ", ".join(f"{reason} {n}" for reason, n in s.rejected.items()) or "none"
    totals = [
        ("messages sent by the simulator", f"{s.report.total}  (deliberately bad: {s.report.bad_total}: {bad})"),
        ("messages received by the agent", str(s.received)),
        ("points accepted into the spool", str(s.accepted)),
        ("rejected, by reason", f"{sum(s.rejected.values())}  ({rejected})"),
        ("points written to the embedded store", str(s.written)),
        ("points refused by the store", str(s.dead_lettered)),
        ("points in the store from this run", str(s.store_points)),
        ("spool depth at the end", str(s.spool_depth)),
    ]
    width = max(text_width(k) for k, _ in totals)
    out += [f"  {pad(k, width)}  {v}" for k, v in totals]
    out.append("")
    out.append(f"Store: {s.store_path}  (SQLite; read it with adapters.embedded.EmbeddedStore)")
    out.append(f"Work dir (kept): {s.workdir}")
    out.append("Run the real agent on your plant: copy deploy/examples/agent.toml, set the enterprise,")
    out.append("broker and store, then `fmc check -c agent.toml` and `fmc run -c agent.toml`")
    out.append("(as shipped: fmc run -c deploy/examples/agent.toml).")
    if s.problems:
        out.append("")
        out += [f"PROBLEM: {p}" for p in s.problems]
    out.append("")
    return "\n".join(out)


# --- the run ----------------------------------------------------------------------------------------


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
    from collector.logs import TextFormatter

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


def _received(agent: Any) -> float:
    return float(agent.metrics.value("fmc_messages_received_total", {"source": SOURCE_NAME}))


async def _simulate(
    sim: PlantSimulator,
    agent: Any,
    agent_task: asyncio.Task[None],
    broker: DemoBroker,
    cfg: AgentConfig,
    ticks: int,
    say: Callable[[str], None],
) -> list[str]:
    """Publish ``ticks`` seconds of plant data and wait until the agent received all of it.
    Returns the problems seen (empty when all went well)."""
    problems: list[str] = []
    # publish only once the agent's persistent session is subscribed, or the broker would have
    # nobody to keep the first messages for
    filters = [sub.mqtt_filter() for sub in cfg.mqtt[0].subscribe]
    await _wait_until(lambda: broker.has_subscriptions(filters) or agent_task.done(), 15.0)
    if agent_task.done() or not broker.has_subscriptions(filters):
        return ["the agent did not subscribe to the demo broker within 15 s"]
    publisher = MqttPublisher("127.0.0.1", broker.port)
    await publisher.connect()
    try:
        say(f"simulating {len(sim.machines)} machines and {len(sim.meters)} meters for {ticks} s …")
        t0 = time.monotonic()
        for k in range(ticks):
            await asyncio.sleep(max(0.0, t0 + k - time.monotonic()))  # one tick per wall-clock second
            if agent_task.done():
                return ["the agent stopped while the plant was publishing"]
            publisher.publish(sim.tick())
            if k and k % 5 == 0:
                received = _received(agent)
                say(f"  {k:>3} s: {publisher.published} messages published, {received:.0f} received by the agent")
        if not await publisher.flush():
            problems.append("the broker did not acknowledge every published message")
    finally:
        await publisher.close()
    sent = sim.report.total
    if not await _wait_until(lambda: agent_task.done() or _received(agent) >= sent, 15.0):
        problems.append(f"the agent received {_received(agent):.0f} of {sent} messages within 15 s")
    return problems


async def run_demo(
    duration_s: float = 20.0,
    workdir: Path | None = None,
    out: TextIO = sys.stdout,
    seed: int = 2017,
) -> int:
    """Run the simulated plant through the real agent into the embedded store; print a summary.

    Returns the exit code: 0 when every message the simulator sent reached the agent and the
    spool was empty at the end, 1 otherwise (the output says what went wrong).
    """
    from collector.agent import Agent
    from collector.spool import Spool

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="fmc-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ticks = max(1, math.ceil(duration_s))
    say("fmc demo — SIMULATED DATA: a simulated textile plant, the real agent, an embedded store")
    say(f"work dir: {workdir} (kept after the demo)")

    problems: list[str] = []
    sim = PlantSimulator(seed, start_ms=time.time_ns() // 1_000_000)
    with _quiet_loggers(("amqtt", "transitions"), logging.WARNING), _agent_logger() as agent_log:
        broker = DemoBroker()
        try:
            await broker.start()
        except RuntimeError as e:
            say(f"PROBLEM: {e}")
            return 1
        try:
            metrics_port = free_port()
            cfg = demo_config(broker.port, workdir, metrics_port)
            agent = Agent(cfg, logger=agent_log)
            say(f"MQTT broker (amqtt): 127.0.0.1:{broker.port}   "
                f"agent metrics while it runs: http://127.0.0.1:{metrics_port}/metrics")
            stop = asyncio.Event()
            agent_task = asyncio.create_task(agent.run(stop), name="fmc-demo-agent")
            try:
                problems += await _simulate(sim, agent, agent_task, broker, cfg, ticks, say)
            except Exception as e:  # reported below; the agent and the broker still stop cleanly
                problems.append(f"{type(e).__name__}: {e}")
            finally:
                stop.set()  # the agent flushes its spool into the store before it returns
                try:
                    await agent_task
                except Exception as e:
                    problems.append(f"the agent failed: {type(e).__name__}: {e}")
        finally:
            await broker.stop()

    store_path = workdir / "fmc-store.db"
    if not cfg.spool.path.exists() or not store_path.exists():
        for p in [*problems, f"the agent wrote no spool or no store in {workdir}"]:
            say(f"PROBLEM: {p}")
        return 1
    with Spool(cfg.spool.path, max_bytes=cfg.spool.max_bytes) as spool:
        spool_depth = spool.stats().depth
    summary = summarise(store_path, workdir, sim.report, agent.metrics, spool_depth)
    if summary.received < sim.report.total and not any("received" in p for p in problems):
        problems.append(f"the agent received {summary.received} of {sim.report.total} messages")
    if spool_depth != 0:
        problems.append(f"{spool_depth} points were left in the spool (they go to the store on the next start)")
    summary.problems = problems
    say(render_summary(summary))
    return 0 if not problems else 1
