"""The simulated pilot plant behind ``fmc demo``: a textile mill whose machines speak OPC UA and
whose utility meters publish over MQTT. Everything here is SIMULATED; no real plant is measured.

- ``PlantSimulator`` — the plant itself: ~20 machines with two shifts and their breaks, idle
  spells, faults and one machine whose link to its controller drops now and then; four utility
  meters whose registers follow the machines' load (one is reset to 0 mid-run); and a few
  deliberately bad MQTT messages. Pure and deterministic for a seed and the times it is given;
  it does no I/O and reports what it produced (``SimulatorReport``): the tests and the summary
  check the agent against it.
- ``OpcUaPlantServer`` — an asyncua server on a free 127.0.0.1 port (security None) with an
  OPC 40001-style ``Objects/Machines`` folder. CNC cutters and embroidery machines look like OPC
  40501 machine tools (``Monitoring/Channel1/ChannelState``, ``Monitoring/Spindle/ActualSpeed``,
  ``Monitoring/MachineTool/Power``, ``Production/ActiveProgram/State/CurrentState``); looms,
  knitters and dyeing machines have a vendor model (main drive speed, power, a program state
  code, a good count); the non-NC machines carry only a retrofitted power meter.
- the equipment ledger (设备台账): every connected machine plus equipment that is on the ledger
  but never connected, and one scrapped machine, written as the CSV factories keep
  (``write_ledger_csv``) so the demo loads it the way ``fmc run`` does.
- ``opcua_nodes`` / ``equipment_classes`` / ``meter_configs`` — the agent config entries that
  match this plant, so ``fmc.demo.run`` builds the config from one source of truth.

Time is real (the agent's plant model runs on the wall clock), but states change every few
seconds instead of every few minutes so that a 20-second demo shows every state.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import random
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from asyncua import Server, ua

PLANT_TZ = timezone(timedelta(hours=8), "CST")  # the plant's local time, as its meters print it
HOST = "127.0.0.1"

# --- namespaces and address space -----------------------------------------------------------------

PLANT_URI = "http://fmc.example/demo/textile-plant/"
DI_URI = "http://opcfoundation.org/UA/DI/"
MACHINERY_URI = "http://opcfoundation.org/UA/Machinery/"
MACHINE_TOOL_URI = "http://opcfoundation.org/UA/MachineTool/"
# alias -> URI, as the agent's [opcua.namespaces] names them (registered on the server in this order)
NAMESPACES: dict[str, str] = {"plant": PLANT_URI, "di": DI_URI, "machinery": MACHINERY_URI, "mt": MACHINE_TOOL_URI}

Profile = Literal["machine_tool", "textile", "power_only"]
ValueKind = Literal["double", "int32", "uint32", "text"]

# signal -> (browse path below the machine object as (namespace alias, BrowseName) pairs, OPC UA type)
_MT_LAYOUT: dict[str, tuple[tuple[tuple[str, str], ...], ValueKind]] = {
    "channel_state": ((("mt", "Monitoring"), ("mt", "Channel1"), ("mt", "ChannelState")), "int32"),
    "spindle_speed": ((("mt", "Monitoring"), ("mt", "Spindle"), ("mt", "ActualSpeed")), "double"),
    "power_kw": ((("mt", "Monitoring"), ("mt", "MachineTool"), ("mt", "Power")), "double"),
    "program_state": ((("mt", "Production"), ("mt", "ActiveProgram"), ("mt", "State"), ("ua", "CurrentState")),
                      "text"),
    "good_count": ((("mt", "Production"), ("mt", "ActiveProgram"), ("mt", "PartsCount")), "uint32"),
}
_TEXTILE_LAYOUT: dict[str, tuple[tuple[tuple[str, str], ...], ValueKind]] = {
    "spindle_speed": ((("plant", "Monitoring"), ("plant", "MainDrive"), ("plant", "ActualSpeed")), "double"),
    "power_kw": ((("plant", "Monitoring"), ("plant", "Power")), "double"),
    "program_state": ((("plant", "Monitoring"), ("plant", "ProgramState")), "int32"),
    "good_count": ((("plant", "Production"), ("plant", "GoodCount")), "uint32"),
    "temperature_c": ((("plant", "Monitoring"), ("plant", "LiquorTemperature")), "double"),
}
_POWER_LAYOUT: dict[str, tuple[tuple[tuple[str, str], ...], ValueKind]] = {
    "power_kw": ((("plant", "Monitoring"), ("plant", "Power")), "double"),  # a retrofitted power meter
}

# what a machine tool's NC channel and active program say in each state (OPC 40501-1)
CHANNEL_STATE = {"running": 0, "down": 1, "idle": 2}  # Active, Interrupted, Reset
PROGRAM_STATE_TEXT = {"running": "Running", "down": "Interrupted", "idle": "Ready"}
# the vendor code a loom, knitter or dyeing machine's PLC publishes
PROGRAM_STATE_CODES = {"off": 0, "idle": 1, "running": 2, "down": 3}
BAD_LINK_STATUS = "BadCommunicationError"  # what the gateway reports while the machine's PLC is unreachable


@dataclass(frozen=True, slots=True)
class MachineKind:
    kind: str  # the ledger's kind and the agent's [[equipment_class]] name
    label: str  # Chinese and English, for the summary and the ledger
    profile: Profile
    nc: bool  # numerically controlled / digital equipment (数控设备)
    asset_value: float  # 原值 of one machine, yuan
    run_kw: float
    idle_kw: float
    off_kw: float  # controller or lamp standby while switched off
    nominal_rpm: float = 0.0  # main shaft, knife, needle cylinder or pump speed when running
    good_per_s: float = 0.0  # good pieces (metres, panels, designs) per second of running
    manual: bool = False  # needs its operator at the machine: it stands during breaks
    heats: bool = False  # dyeing machines publish their liquor temperature
    can_switch_off: bool = True
    # a power reading cannot tell a fault from "switched off", so power-only machines do not fault here
    can_fault: bool = True

    def signals(self) -> tuple[str, ...]:
        layout = layout_of(self.profile)
        return tuple(s for s in layout if s != "temperature_c" or self.heats)


def layout_of(profile: Profile) -> dict[str, tuple[tuple[tuple[str, str], ...], ValueKind]]:
    return {"machine_tool": _MT_LAYOUT, "textile": _TEXTILE_LAYOUT, "power_only": _POWER_LAYOUT}[profile]


AIR_JET_LOOM = MachineKind("air_jet_loom", "喷气织机 air-jet loom", "textile", True, 380_000, 4.5, 0.6, 0.08,
                           nominal_rpm=650, good_per_s=0.05)
KNITTER = MachineKind("circular_knitter", "电脑圆纬机 circular knitter", "textile", True, 260_000, 5.5, 0.5, 0.06,
                      nominal_rpm=28, good_per_s=0.08)
DYEING = MachineKind("dyeing_machine", "溢流染色机 dyeing machine", "textile", True, 900_000, 30.0, 3.0, 0.2,
                     nominal_rpm=1450, good_per_s=0.002, heats=True)
CNC_CUTTER = MachineKind("cnc_cutter", "数控裁床 CNC cutter", "machine_tool", True, 1_200_000, 11.0, 1.5, 0.3,
                         nominal_rpm=3000, good_per_s=0.5, manual=True, can_switch_off=False)
EMBROIDERY = MachineKind("embroidery", "电脑绣花机 embroidery machine", "machine_tool", True, 650_000, 3.0, 0.4, 0.1,
                         nominal_rpm=850, good_per_s=0.02, manual=True, can_switch_off=False)
INSPECTION = MachineKind("inspection_table", "验布台 inspection table", "power_only", False, 35_000, 1.2, 0.3, 0.02,
                         manual=True, can_fault=False)
WARPER = MachineKind("warper", "整经机 sectional warper", "power_only", False, 180_000, 7.5, 0.8, 0.05,
                     can_fault=False)


@dataclass(frozen=True, slots=True)
class MachineSpec:
    equipment: str  # equipment id: the ledger's 设备编号, the `equipment` tag, the OPC UA object's BrowseName
    kind: MachineKind
    flaky_link: bool = False  # the link between the gateway and its PLC drops now and then

    @property
    def signals(self) -> tuple[str, ...]:
        return self.kind.signals()


@dataclass(frozen=True, slots=True)
class LedgerOnly:
    """Equipment on the ledger that the agent never hears from (it still counts in the denominators)."""

    equipment: str
    label: str
    nc: bool
    asset_value: float
    commissioned: date
    decommissioned: date | None = None
    why: str = ""


DEMO_MACHINES: tuple[MachineSpec, ...] = (
    *(MachineSpec(f"loom-{i:02d}", AIR_JET_LOOM) for i in range(1, 7)),
    *(MachineSpec(f"knit-{i:02d}", KNITTER, flaky_link=(i == 3)) for i in range(1, 5)),
    *(MachineSpec(f"dye-{i:02d}", DYEING) for i in range(1, 3)),
    *(MachineSpec(f"cut-{i:02d}", CNC_CUTTER) for i in range(1, 3)),
    *(MachineSpec(f"emb-{i:02d}", EMBROIDERY) for i in range(1, 4)),
    *(MachineSpec(f"insp-{i:02d}", INSPECTION) for i in range(1, 3)),
    MachineSpec("warp-01", WARPER),
)
DEMO_LEDGER_ONLY: tuple[LedgerOnly, ...] = (
    LedgerOnly("jacq-01", "电子提花机 jacquard loom", True, 1_480_000, date(2025, 10, 15),
               why="new; its network card is on order"),
    LedgerOnly("rapier-01", "剑杆织机 rapier loom", True, 210_000, date(2012, 5, 1),
               why="old controller without a network port"),
    LedgerOnly("press-01", "液压打包机 baling press", False, 58_000, date(2015, 3, 1),
               why="no controller"),
    LedgerOnly("shuttle-01", "有梭织机 shuttle loom", False, 42_000, date(2003, 9, 1), date(2024, 12, 31),
               why="scrapped on 2024-12-31: not counted"),
)

# --- meters ----------------------------------------------------------------------------------------

METER_PERIOD_S = 2  # meters report less often than machines
BASE_LOAD_KW = 40.0  # compressors, lighting, air conditioning: on the main meter, not on a machine


@dataclass(frozen=True, slots=True)
class MeterSpec:
    carrier: str
    meter: str  # meter id: the MQTT topic's last level and the agent's [[meter]] id
    label: str
    unit: str  # as the summary prints it
    config_unit: str  # as the agent's [[meter]] unit takes it
    start_reading: float
    resolution: float  # one step of the register
    max_rate_per_h: float  # what makes a reset countable (docs/plant-semantics.md §2)
    resets: bool = False  # maintenance resets the register to 0 mid-run

    @property
    def digits(self) -> int:
        return max(0, -math.floor(math.log10(self.resolution)))


DEMO_METERS: tuple[MeterSpec, ...] = (
    MeterSpec("electricity", "main-incomer", "电 electricity", "kWh", "kWh", 1_284_530.25, 0.01, 2_000.0),
    MeterSpec("natural_gas", "boiler-1", "天然气 natural gas", "m³", "m3", 356_712.4, 0.001, 500.0),
    MeterSpec("water_intake", "intake-1", "取水 water intake", "m³", "m3", 98_211.5, 0.001, 100.0, resets=True),
    MeterSpec("wastewater", "wwtp-outlet", "废水 wastewater", "m³", "m3", 81_003.2, 0.001, 100.0),
)

# Meters the OPC UA server exposes (an [[opcua.node]] kind = "meter"): the dyehouse's energy counter, a
# sub-meter of main-incomer (enterprise_total = false, so the site's electricity is not counted twice).
# BrowseName under Objects/Meters -> (meter id, start reading in kWh, max_rate_per_h)
OPCUA_METERS: dict[str, tuple[str, float, float]] = {"Dyehouse_Energy_kWh": ("dyehouse", 52_114.5, 1_000.0)}

# Deliberately bad MQTT messages, each a mistake real plants make; (tick within the cycle, kind).
BAD_MESSAGE_CYCLE_S = 10
BAD_MALFORMED_JSON = "malformed JSON"
BAD_NAN = "NaN reading"
BAD_CLOCK = "meter clock at 1970"
BAD_CARRIER = "unknown carrier in topic"
BAD_SCHEDULE: tuple[tuple[int, str], ...] = ((1, BAD_MALFORMED_JSON), (2, BAD_NAN), (2, BAD_CLOCK), (3, BAD_CARRIER))

# --- shifts and the state machine ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shift:
    name: str
    start_h: int
    break_start: tuple[int, int]  # (hour, minute), 30 minutes
    break_minutes: int = 30


# Two 12-hour shifts (两班倒), each with a meal break.
SHIFTS: tuple[Shift, ...] = (Shift("早班 day shift 08:00–20:00", 8, (12, 0)),
                             Shift("夜班 night shift 20:00–08:00", 20, (0, 0)))


def shift_at(local: datetime) -> tuple[Shift, bool]:
    """The shift on at ``local`` time and whether it is on its break."""
    shift = SHIFTS[0] if 8 <= local.hour < 20 else SHIFTS[1]
    minutes = local.hour * 60 + local.minute
    start = shift.break_start[0] * 60 + shift.break_start[1]
    return shift, start <= minutes < start + shift.break_minutes


# Compressed time: a state lasts seconds, not minutes, so a short demo shows them all.
DURATION_S: dict[str, tuple[int, int]] = {"running": (5, 12), "idle": (2, 5), "down": (3, 7), "off": (3, 6)}
TRANSITIONS: dict[str, dict[str, float]] = {
    "running": {"idle": 0.55, "down": 0.30, "off": 0.15},
    "idle": {"running": 0.80, "off": 0.20},
    "down": {"idle": 0.60, "running": 0.40},
    "off": {"idle": 0.40, "running": 0.60},
}
RAMP_SHARE = 0.35  # the main drive's speed in the second it ramps up or coasts down (inside the hysteresis band)
LINK_LOSS_AT_S = 4  # the flaky machine's link drops at this tick of every cycle …
LINK_LOSS_S = 12  # … for this many seconds …
LINK_CYCLE_S = 40  # … once per cycle


@dataclass(slots=True)
class _Machine:
    state: str
    left_s: int
    previous: str
    good_count: float
    temperature_c: float
    power_kw: float = 0.0
    last: dict[str, float | int | str] = field(default_factory=dict)


# --- what the simulator produces ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimMessage:
    topic: str
    payload: bytes
    bad: str | None = None  # which deliberate mistake, None for a good message


@dataclass(slots=True)
class PlantTick:
    """One second of the plant: machine values to write (Good status), machines whose link just
    dropped (their nodes turn Bad), and the MQTT messages to publish."""

    now_ms: int
    values: dict[str, dict[str, float | int | str]]
    link_lost: list[str]
    messages: list[SimMessage]
    meter_values: dict[str, float] = field(default_factory=dict)  # OPC UA meter registers (OPCUA_METERS)


@dataclass(slots=True)
class SimulatorReport:
    """What the simulator did: the numbers the summary and the tests check the agent against."""

    ticks: int = 0
    values_written: dict[str, int] = field(default_factory=dict)  # per equipment, Good values
    changes_written: int = 0  # values that differ from the node's previous value (what a subscription reports)
    link_losses: dict[str, int] = field(default_factory=dict)  # per equipment
    state_seconds: dict[str, dict[str, int]] = field(default_factory=dict)  # the simulator's truth, per equipment
    initial_states: dict[str, str] = field(default_factory=dict)  # what the OPC UA server starts with
    timeline: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # (tick time ms, state) on change
    meter_messages: dict[str, int] = field(default_factory=dict)
    bad_messages: dict[str, int] = field(default_factory=dict)
    bad_topics: list[str] = field(default_factory=list)
    # the register's increments from the first to the last published reading, in the meter's unit:
    # what a perfect accumulator counts (a reset is done right after a reading, so nothing is unseen)
    meter_increments: dict[str, float] = field(default_factory=dict)
    resets: dict[str, int] = field(default_factory=dict)  # meter -> time of the reset, ms

    @property
    def mqtt_good(self) -> int:
        return sum(self.meter_messages.values())

    @property
    def bad_total(self) -> int:
        return sum(self.bad_messages.values())

    @property
    def mqtt_total(self) -> int:
        return self.mqtt_good + self.bad_total


class PlantSimulator:
    """One second of the plant per ``tick(now_ms)``; deterministic for a seed and the times given."""

    def __init__(
        self,
        seed: int,
        machines: Sequence[MachineSpec] = DEMO_MACHINES,
        meters: Sequence[MeterSpec] = DEMO_METERS,
        reset_at_tick: int | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.machines = tuple(machines)
        self.meters = tuple(meters)
        # a reset happens right after a reading, so the tick must be one that publishes readings
        self.reset_at_tick = None if reset_at_tick is None else reset_at_tick - reset_at_tick % METER_PERIOD_S
        self.report = SimulatorReport()
        self._m: dict[str, _Machine] = {}
        for spec in self.machines:
            roll = self.rng.random()
            state = "running" if roll < 0.7 else "idle" if roll < 0.85 else "down" if roll < 0.95 else "off"
            if (state == "off" and not spec.kind.can_switch_off) or (state == "down" and not spec.kind.can_fault):
                state = "idle"
            self._m[spec.equipment] = _Machine(
                state=state,
                left_s=self.rng.randint(1, DURATION_S[state][1]),
                previous=state,
                good_count=float(self.rng.randrange(1_000, 20_000)) if spec.kind.good_per_s >= 0.01 else 40.0,
                temperature_c=95.0 + self.rng.random() * 30 if state == "running" else 40.0,
            )
            self.report.state_seconds[spec.equipment] = {}
            self.report.initial_states[spec.equipment] = state
        self._steps = {m.meter: round(m.start_reading / m.resolution) for m in self.meters}  # register, in steps
        self.opcua_registers = {name: start for name, (_, start, _) in OPCUA_METERS.items()}  # kWh
        self._fraction = dict.fromkeys(self._steps, 0.0)  # flow not yet a whole step
        self._counted: dict[str, int] = {}  # steps since the first published reading

    # --- machines ------------------------------------------------------------------------------------

    def initial_values(self) -> dict[str, dict[str, float | int | str]]:
        """The values the OPC UA server starts with: every machine as it stands (no time passes)."""
        return {spec.equipment: self._values(spec, self._m[spec.equipment]) for spec in self.machines}

    def tick(self, now_ms: int) -> PlantTick:
        """Advance one second and return what the plant produced in it."""
        k = self.report.ticks
        local = datetime.fromtimestamp(now_ms / 1000, PLANT_TZ)
        _, on_break = shift_at(local)
        values: dict[str, dict[str, float | int | str]] = {}
        link_lost: list[str] = []
        for spec in self.machines:
            m = self._m[spec.equipment]
            self._advance_state(spec, m, on_break)
            seconds = self.report.state_seconds[spec.equipment]
            seconds[m.state] = seconds.get(m.state, 0) + 1
            timeline = self.report.timeline.setdefault(spec.equipment, [])
            if not timeline or timeline[-1][1] != m.state:
                timeline.append((now_ms, m.state))
            current = self._values(spec, m)  # the machine runs on whether or not anyone hears it
            if spec.flaky_link and LINK_LOSS_AT_S <= k % LINK_CYCLE_S < LINK_LOSS_AT_S + LINK_LOSS_S:
                if k % LINK_CYCLE_S == LINK_LOSS_AT_S:
                    link_lost.append(spec.equipment)
                    self.report.link_losses[spec.equipment] = self.report.link_losses.get(spec.equipment, 0) + 1
                    m.last = {}  # after the outage every value is news again
                continue
            self.report.changes_written += sum(1 for s, v in current.items() if m.last.get(s) != v)
            m.last = dict(current)
            values[spec.equipment] = current
            self.report.values_written[spec.equipment] = self.report.values_written.get(spec.equipment, 0) + len(
                current)
        self._advance_meters()
        # the dyehouse's energy counter: its machines' power, read over OPC UA
        dyehouse_kw = sum(self._m[s.equipment].power_kw for s in self.machines if s.kind.heats)
        for name in OPCUA_METERS:
            self.opcua_registers[name] += dyehouse_kw / 3600.0
        messages: list[SimMessage] = []
        if k % METER_PERIOD_S == 0:
            messages += self._meter_messages(now_ms, local)
            if k == self.reset_at_tick:
                self._reset_meters(now_ms)
        messages += self._bad_messages(k, now_ms)
        self.report.ticks += 1
        return PlantTick(now_ms, values, link_lost, messages,
                         {name: round(v, 3) for name, v in self.opcua_registers.items()})

    def _advance_state(self, spec: MachineSpec, m: _Machine, on_break: bool) -> None:
        m.previous = m.state
        m.left_s -= 1
        if m.left_s > 0:
            return
        weights = dict(TRANSITIONS[m.state])
        if not spec.kind.can_switch_off:
            weights.pop("off", None)
        if not spec.kind.can_fault:
            weights.pop("down", None)
        if on_break and spec.kind.manual:
            weights["running"] = 0.0  # the operator is at lunch: the machine waits
            weights["idle"] = weights.get("idle", 0.0) + 0.5
        states = [s for s in weights if s != m.state and weights[s] > 0]
        if not states:
            m.left_s = 1
            return
        m.state = self.rng.choices(states, [weights[s] for s in states])[0]
        m.left_s = self.rng.randint(*DURATION_S[m.state])

    def _values(self, spec: MachineSpec, m: _Machine) -> dict[str, float | int | str]:
        kind, rng, state = spec.kind, self.rng, m.state
        running = state == "running"
        if running:
            power = kind.run_kw * (1 + rng.gauss(0, 0.03))
            m.good_count += kind.good_per_s * max(0.0, 1 + rng.gauss(0, 0.1))
        elif state == "idle":
            power = kind.idle_kw * (1 + rng.gauss(0, 0.05))
        elif state == "down":
            power = kind.idle_kw * 0.5 * (1 + rng.gauss(0, 0.05))  # the controller stays on during a fault
        else:
            power = kind.off_kw * (1 + rng.gauss(0, 0.05))  # standby: the meter still reads a little
        m.power_kw = max(power, 0.001)
        out: dict[str, float | int | str] = {"power_kw": round(m.power_kw, 3)}
        if kind.profile == "power_only":
            return out
        if running != (m.previous == "running"):
            rpm = kind.nominal_rpm * RAMP_SHARE  # ramping up or coasting down: inside the hysteresis band
        elif running:
            rpm = kind.nominal_rpm * (1 + rng.gauss(0, 0.01))
        else:
            rpm = 0.0
        out["spindle_speed"] = round(rpm, 1)
        out["good_count"] = int(m.good_count)
        if kind.profile == "machine_tool":
            ui_state = state if state != "off" else "idle"
            out["channel_state"] = CHANNEL_STATE[ui_state]
            out["program_state"] = PROGRAM_STATE_TEXT[ui_state]
        else:
            out["program_state"] = PROGRAM_STATE_CODES[state]
        if kind.heats:  # heat towards 130 °C while dyeing, cool slowly otherwise
            target = 130.0 if running else 40.0
            m.temperature_c += (target - m.temperature_c) * (0.03 if running else 0.005)
            out["temperature_c"] = round(m.temperature_c + rng.gauss(0, 0.05), 2)
        return out

    # --- meters ----------------------------------------------------------------------------------------

    def _advance_meters(self) -> None:
        # a machine nobody hears (its link is down) still draws power
        load_kw = BASE_LOAD_KW + sum(m.power_kw for m in self._m.values())
        dyeing = sum(1 for s in self.machines if s.kind.heats and self._m[s.equipment].state == "running")
        per_hour = {  # consumption per hour of each carrier, from what the plant does
            "electricity": load_kw,
            "natural_gas": 5.0 + 25.0 * dyeing,  # the steam boiler follows the dyehouse
            "water_intake": 6.0 + 10.0 * dyeing,
            "wastewater": 0.85 * (6.0 + 10.0 * dyeing),
        }
        for m in self.meters:
            # the register moves in whole steps; the flow in between is carried to the next second
            self._fraction[m.meter] += per_hour.get(m.carrier, 0.0) / 3600.0 / m.resolution
            whole = math.floor(self._fraction[m.meter])
            self._fraction[m.meter] -= whole
            self._steps[m.meter] += whole
            if m.meter in self._counted:
                self._counted[m.meter] += whole

    def _meter_messages(self, now_ms: int, local: datetime) -> list[SimMessage]:
        stamp = local.isoformat(timespec="milliseconds")
        out = []
        for m in self.meters:
            reading = round(self._steps[m.meter] * m.resolution, m.digits)
            out.append(SimMessage(f"meters/{m.carrier}/{m.meter}", _json({"t": stamp, "d": {"reading": reading}})))
            self.report.meter_messages[m.meter] = self.report.meter_messages.get(m.meter, 0) + 1
            self._counted.setdefault(m.meter, 0)  # the first reading is the baseline
            self.report.meter_increments[m.meter] = round(self._counted[m.meter] * m.resolution, m.digits)
        return out

    def _reset_meters(self, now_ms: int) -> None:
        for m in self.meters:
            if m.resets:  # maintenance resets the totaliser right after it was read
                self._steps[m.meter] = 0
                self.report.resets[m.meter] = now_ms

    def _bad_messages(self, k: int, now_ms: int) -> list[SimMessage]:
        out = []
        for at, kind in BAD_SCHEDULE:
            if k % BAD_MESSAGE_CYCLE_S != at:
                continue
            stamp = datetime.fromtimestamp(now_ms / 1000, PLANT_TZ).isoformat(timespec="milliseconds")
            if kind == BAD_MALFORMED_JSON:  # a gateway cut the message short
                msg = SimMessage("meters/electricity/main-incomer", f'{{"t": "{stamp}", "d": {{"reading": 12'.encode(),
                                 kind)
            elif kind == BAD_NAN:  # a flow computer's division by zero, serialised as NaN
                msg = SimMessage("meters/natural_gas/boiler-1", f'{{"t": "{stamp}", "d": {{"reading": NaN}}}}'.encode(),
                                 kind)
            elif kind == BAD_CLOCK:  # a meter whose clock battery died
                msg = SimMessage("meters/wastewater/wwtp-outlet",
                                 _json({"t": "1970-01-01T08:00:00.000+08:00", "d": {"reading": 81_000.0}}), kind)
            else:  # a meter set up with "gas" where the plant's config says natural_gas
                msg = SimMessage("meters/gas/boiler-2", _json({"t": stamp, "d": {"reading": 1.0}}), kind)
            out.append(msg)
            self.report.bad_messages[kind] = self.report.bad_messages.get(kind, 0) + 1
            self.report.bad_topics.append(msg.topic)
        return out


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# --- the ledger ---------------------------------------------------------------------------------------

LEDGER_HEADERS = ("设备编号", "设备名称", "设备类别", "kind", "是否数控", "原值(元)", "启用日期", "报废日期",
                  "是否联网")


def _commissioned(n: int) -> date:
    return date(2016 + n % 8, 1 + (3 * n) % 12, 1)  # spread over the years, all before the demo


def write_ledger_csv(
    path: Path, machines: Sequence[MachineSpec] = DEMO_MACHINES, ledger_only: Sequence[LedgerOnly] = DEMO_LEDGER_ONLY
) -> Path:
    """The equipment ledger as a factory keeps it: Chinese headers, UTF-8 with BOM (Excel opens it)."""
    rows: list[list[str]] = []
    for n, spec in enumerate(machines):
        k = spec.kind
        rows.append([spec.equipment, k.label.split(" ")[0], k.label.split(" ")[0], k.kind, "是" if k.nc else "否",
                     f"{k.asset_value:.2f}", _commissioned(n).isoformat(), "", "是"])
    for item in ledger_only:
        rows.append([item.equipment, item.label.split(" ")[0], item.label.split(" ")[0], "", "是" if item.nc else "否",
                     f"{item.asset_value:.2f}", item.commissioned.isoformat(),
                     item.decommissioned.isoformat() if item.decommissioned else "", "否"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LEDGER_HEADERS)
        writer.writerows(rows)
    return path


# --- the agent config entries that fit this plant ----------------------------------------------------------


def opcua_nodes(machines: Sequence[MachineSpec] = DEMO_MACHINES) -> list[dict[str, Any]]:
    """``[[opcua.node]]`` entries: machine tools by browse path (as ``fmc opcua browse`` prints them),
    the others by NodeId; the retrofitted power meters cannot subscribe, so they are polled."""
    nodes: list[dict[str, Any]] = []
    for spec in machines:
        layout = layout_of(spec.kind.profile)
        for signal in spec.signals:
            path, _ = layout[signal]
            node: dict[str, Any] = {"equipment": spec.equipment, "signal": signal}
            if spec.kind.profile == "machine_tool":
                node["browse_path"] = ["machinery:Machines", f"plant:{spec.equipment}", *(f"{a}:{n}" for a, n in path)]
            else:
                node["node_id"] = f"ns=plant;s={node_id_text(spec.equipment, path)}"
            if spec.kind.profile == "power_only":
                node |= {"mode": "poll", "poll_interval_s": 1.0}
            else:
                node |= {"sampling_interval_ms": 500, "queue_size": 4}
            if signal in ("channel_state", "program_state"):
                node["value_type"] = "state"
            nodes.append(node)
    return nodes


def equipment_classes(machines: Sequence[MachineSpec] = DEMO_MACHINES) -> list[dict[str, Any]]:
    """``[[equipment_class]]`` per machine kind: how its signals become offline/off/idle/running/down."""
    out: dict[str, dict[str, Any]] = {}
    for spec in machines:
        k = spec.kind
        if k.kind in out:
            continue
        if k.profile == "machine_tool":  # OPC 40501 ChannelState: the built-in table
            rules: list[dict[str, Any]] = [{"type": "opcua_channel_state", "signal": "channel_state"}]
        elif k.profile == "textile":
            rules = [
                # the main drive proves production; hysteresis keeps a coasting shaft "running"
                {"type": "threshold", "signal": "spindle_speed", "on_above": round(k.nominal_rpm * 0.5, 1),
                 "off_below": round(k.nominal_rpm * 0.2, 1), "on_state": "running"},
                {"type": "map", "signal": "program_state", "states": {"0": "off", "1": "idle", "3": "down"}},
            ]
        else:  # power only: two thresholds give off / idle / running
            span = k.run_kw - k.idle_kw
            rules = [
                {"type": "threshold", "signal": "power_kw", "on_above": round(k.idle_kw + 0.6 * span, 3),
                 "off_below": round(k.idle_kw + 0.4 * span, 3), "on_state": "running"},
                {"type": "threshold", "signal": "power_kw", "on_above": round((k.idle_kw + k.off_kw) / 2, 3),
                 "on_state": "idle", "off_state": "off"},
            ]
        out[k.kind] = {"name": k.kind, "rules": rules}
    return list(out.values())


def meter_configs(meters: Sequence[MeterSpec] = DEMO_METERS) -> list[dict[str, Any]]:
    """``[[meter]]`` per meter: cumulative counters with a plausible maximum rate."""
    return [{"id": m.meter, "carrier": m.carrier, "kind": "counter", "unit": m.config_unit,
             "max_rate_per_h": m.max_rate_per_h} for m in meters]


def opcua_meter_specs() -> list[MeterSpec]:
    """The OPC UA sub-meters as the summary lists them (their increments are not checked against the
    simulator: a subscription's last value lags the register by up to a sampling interval)."""
    return [MeterSpec("electricity", meter, "电 electricity", "kWh", "kWh", start, 0.001, rate)
            for meter, start, rate in OPCUA_METERS.values()]


def opcua_meter_configs() -> list[dict[str, Any]]:
    """``[[meter]]`` per OPC UA sub-meter (not in the enterprise's total: main-incomer counts their energy)."""
    return [{"id": meter, "carrier": "electricity", "kind": "counter", "unit": "kWh", "max_rate_per_h": rate,
             "enterprise_total": False} for meter, _, rate in OPCUA_METERS.values()]


def opcua_meter_nodes() -> list[dict[str, Any]]:
    """``[[opcua.node]]`` kind = "meter" per OPC UA meter, by browse path as ``fmc opcua browse`` prints them."""
    return [{"kind": "meter", "meter": meter, "carrier": "electricity",
             "browse_path": ["plant:Meters", f"plant:{name}"], "sampling_interval_ms": 500}
            for name, (meter, _, _) in OPCUA_METERS.items()]


# --- the OPC UA server ------------------------------------------------------------------------------------


def node_id_text(equipment: str, path: Sequence[tuple[str, str]]) -> str:
    """The string identifier of a variable in the plant namespace, e.g. ``loom-01.Monitoring.Power``."""
    return ".".join([equipment, *(name for _, name in path)])


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class OpcUaPlantServer:
    """An asyncua server in the caller's event loop: ``Objects/Machines/<equipment>/…`` for every machine."""

    def __init__(self, machines: Sequence[MachineSpec] = DEMO_MACHINES, host: str = HOST) -> None:
        self.machines = tuple(machines)
        self.host = host
        self.port = 0
        self._server: Server | None = None
        self._nodes: dict[tuple[str, str], tuple[ua.NodeId, ValueKind]] = {}  # (equipment, signal) -> node, type
        self._last: dict[tuple[str, str], Any] = {}  # the last value written, for the Bad status of a lost link
        self._meter_ns = 0

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/fmc-demo/"

    async def start(self, initial: Mapping[str, Mapping[str, float | int | str]], attempts: int = 5) -> str:
        """Build the address space with ``initial`` values and listen; returns the endpoint URL."""
        last: Exception | None = None
        for _ in range(attempts):  # a free port can be taken between the probe and the bind
            self.port = free_port(self.host)
            server = await self._build(initial)
            try:
                await server.start()
            except OSError as e:
                last = e
                continue
            self._server = server
            return self.url
        raise RuntimeError(f"cannot start the demo OPC UA server on {self.host}: {last}")

    async def _build(self, initial: Mapping[str, Mapping[str, float | int | str]]) -> Server:
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("fmc demo plant (SIMULATED)")
        await server.set_application_uri("urn:fmc-demo:plant-simulator")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])  # loopback only: security None is fine here
        ix = {alias: await server.register_namespace(uri) for alias, uri in NAMESPACES.items()}
        ix["ua"] = 0
        plant = ix["plant"]
        self._nodes.clear()
        machines_folder = await server.nodes.objects.add_folder(ua.NodeId("Machines", plant),
                                                                ua.QualifiedName("Machines", ix["machinery"]))
        for n, spec in enumerate(self.machines):
            obj = await machines_folder.add_object(ua.NodeId(spec.equipment, plant),
                                                   ua.QualifiedName(spec.equipment, plant))
            ident = await obj.add_object(ua.NodeId(f"{spec.equipment}.Identification", plant),
                                         ua.QualifiedName("Identification", ix["di"]))
            for name, value in (("Manufacturer", ua.LocalizedText("Demo Machinery Co. (simulated)")),
                                ("Model", ua.LocalizedText(spec.kind.label)),
                                ("SerialNumber", f"SIM-{1000 + n}")):
                await ident.add_variable(ua.NodeId(f"{spec.equipment}.Identification.{name}", plant),
                                         ua.QualifiedName(name, ix["di"]), value)
            if spec.kind.profile == "machine_tool":  # OPC 40501 machine tools have Equipment and Monitoring
                await obj.add_object(ua.NodeId(f"{spec.equipment}.Equipment", plant),
                                     ua.QualifiedName("Equipment", ix["mt"]))
            folders: dict[tuple[tuple[str, str], ...], Any] = {(): obj}
            layout = layout_of(spec.kind.profile)
            for signal in spec.signals:
                path, vkind = layout[signal]
                parent = obj
                for depth in range(1, len(path)):
                    key = path[:depth]
                    if key not in folders:
                        alias, name = path[depth - 1]
                        folders[key] = await parent.add_object(
                            ua.NodeId(node_id_text(spec.equipment, key), plant), ua.QualifiedName(name, ix[alias]))
                    parent = folders[key]
                alias, name = path[-1]
                node_id = ua.NodeId(node_id_text(spec.equipment, path), plant)
                value = initial[spec.equipment][signal]
                await parent.add_variable(node_id, ua.QualifiedName(name, ix[alias]), _variant(value, vkind))
                self._nodes[(spec.equipment, signal)] = (node_id, vkind)
                self._last[(spec.equipment, signal)] = value
        meters = await server.nodes.objects.add_object(ua.NodeId("Meters", plant), ua.QualifiedName("Meters", plant))
        for name, (_, start, _) in OPCUA_METERS.items():
            await meters.add_variable(ua.NodeId(f"Meters.{name}", plant), ua.QualifiedName(name, plant),
                                      ua.Variant(start, ua.VariantType.Double))
        self._meter_ns = plant
        return server

    async def write(self, tick: PlantTick) -> int:
        """Write one tick: Good values with the tick's time as source timestamp, Bad status for the
        nodes of a machine whose link just dropped. Returns the number of values written."""
        server = self._server
        if server is None:
            raise RuntimeError("the demo OPC UA server is not running")
        ts = datetime.fromtimestamp(tick.now_ms / 1000, UTC)
        written = 0
        for equipment, values in tick.values.items():
            for signal, value in values.items():
                node_id, vkind = self._nodes[(equipment, signal)]
                dv = ua.DataValue(_variant(value, vkind), StatusCode=ua.StatusCode(ua.StatusCodes.Good),
                                  SourceTimestamp=ts, ServerTimestamp=ts)
                await server.write_attribute_value(node_id, dv)
                self._last[(equipment, signal)] = value
                written += 1
        for name, reading in tick.meter_values.items():
            dv = ua.DataValue(ua.Variant(reading, ua.VariantType.Double),
                              StatusCode=ua.StatusCode(ua.StatusCodes.Good), SourceTimestamp=ts, ServerTimestamp=ts)
            await server.write_attribute_value(ua.NodeId(f"Meters.{name}", self._meter_ns), dv)
            written += 1
        bad = ua.StatusCode(getattr(ua.StatusCodes, BAD_LINK_STATUS))
        for equipment in tick.link_lost:
            for (eq, signal), (node_id, vkind) in self._nodes.items():
                if eq != equipment:
                    continue
                value = self._last[(eq, signal)]
                dv = ua.DataValue(_variant(value, vkind), StatusCode=bad,
                                  SourceTimestamp=ts, ServerTimestamp=ts)
                await server.write_attribute_value(node_id, dv)
                written += 1
        return written

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await asyncio.wait_for(server.stop(), timeout=10.0)


_VARIANT_TYPES: dict[ValueKind, ua.VariantType] = {
    "double": ua.VariantType.Double, "int32": ua.VariantType.Int32, "uint32": ua.VariantType.UInt32,
    "text": ua.VariantType.LocalizedText,
}


def _variant(value: float | int | str, vkind: ValueKind) -> ua.Variant:
    if vkind == "text":
        return ua.Variant(ua.LocalizedText(str(value)), ua.VariantType.LocalizedText)
    if vkind == "double":
        return ua.Variant(float(value), ua.VariantType.Double)
    return ua.Variant(int(value), _VARIANT_TYPES[vkind])
