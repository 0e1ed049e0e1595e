"""Equipment state tracker: samples -> state changes and local-day totals. Pure, no clock.

One ``EquipmentTracker`` per piece of equipment. Time only ever comes in as a parameter: the
timestamp of a sample (``observe``) or the caller's clock (``advance``). The tracker keeps a time
cursor that only moves forward and attributes every nanosecond between its start and the
cursor to exactly one state, so a day's offline + off + idle + running + down is exactly the time
the tracker covered in that day. The rules for the judgement calls (late and future timestamps,
jumps, dwell, offline) are in docs/plant-semantics.md; the short version is in the comments.

States and their codes (the `code` field of `equipment_state`):
offline 0 (no good data for offline_after_s), off 1, idle 2, running 3, down 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from fmc.core.localtime import NS, local_date, local_day_bounds, zone
from fmc.core.points import Point, Priority
from fmc.core.quality import contact_lost
from fmc.plant.config import EquipmentClassConfig, MapRule, PlantConfig, ThresholdRule, normalize_key
from fmc.plant.rollups import Site

if TYPE_CHECKING:
    from fmc.plant.rollups import InventoryItem

STATES = ("offline", "off", "idle", "running", "down")
STATE_CODES: dict[str, int] = {state: code for code, state in enumerate(STATES)}
# Among the opinions of an equipment's rules the highest wins: a fault outranks production,
# production outranks waiting, waiting outranks switched off.
PRIORITY: dict[str, int] = {"off": 1, "idle": 2, "running": 3, "down": 4}
SNAPSHOT_VERSION = 1

# Built-in value tables (keys as normalize_key makes them: integers as text, names casefolded).
# None: the value carries no opinion and the other rules decide. Reasons: docs/plant-semantics.md.
BUILTIN_TABLES: dict[str, dict[str, str | None]] = {
    # OPC 40001-1 MachineryItemState: the machine reports it, so it is online; NotAvailable means
    # "switched off or in energy saving mode" -> off (not offline, which is silence).
    "opcua_machinery_item_state": {
        "0": "off", "notavailable": "off",
        "1": "down", "outofservice": "down",
        "2": "idle", "notexecuting": "idle",
        "3": "running", "executing": "running",
    },
    # OPC 40001-1 MachineryOperationMode: maintenance is not available for production (down);
    # setup is preparation (idle, but a running item state still wins); processing says nothing.
    "opcua_machinery_operation_mode": {
        "0": None, "none": None,
        "1": "down", "maintenance": "down",
        "2": "idle", "setup": "idle",
        "3": None, "processing": None,
    },
    # OPC 40501-1 ChannelState of an NC channel.
    "opcua_channel_state": {
        "0": "running", "active": "running",
        "1": "down", "interrupted": "down",
        "2": "idle", "reset": "idle",
    },
    # PackML (ISA-TR88.00.02) StateCurrent numbers and names.
    "packml_state": {
        "0": None, "undefined": None,
        "1": "down", "clearing": "down",
        "2": "off", "stopped": "off",
        "3": "idle", "starting": "idle",
        "4": "idle", "idle": "idle",
        "5": "idle", "suspended": "idle",
        "6": "running", "execute": "running",
        "7": "off", "stopping": "off",
        "8": "down", "aborting": "down",
        "9": "down", "aborted": "down",
        "10": "down", "holding": "down",
        "11": "down", "held": "down",
        "12": "down", "unholding": "down",
        "13": "idle", "suspending": "idle",
        "14": "idle", "unsuspending": "idle",
        "15": "idle", "resetting": "idle",
        "16": "idle", "completing": "idle",
        "17": "idle", "complete": "idle",
    },
}

_UNUSABLE = object()  # a value a rule cannot read (text for a threshold): no effect on the rule


# --- events -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateChange:
    """The equipment entered ``state`` at ``ts_ns`` (for `equipment_state`)."""

    equipment: str
    ts_ns: int
    state: str
    previous: str

    @property
    def code(self) -> int:
        return STATE_CODES[self.state]

    def to_point(self, site: Site) -> Point:
        return Point(
            "equipment_state",
            {"enterprise": site.enterprise, "equipment": self.equipment},
            {"state": self.state, "code": self.code},
            self.ts_ns,
            Priority.EVENT,
        )


@dataclass(frozen=True, slots=True)
class EquipmentDay:
    """One completed local day of one equipment (for `equipment_daily`). Durations in ns."""

    equipment: str
    day: date
    start_ns: int  # local midnight, UTC ns
    end_ns: int  # next local midnight
    covered_from_ns: int  # the tracker's time starts here on its first day, else = start_ns
    offline_ns: int
    off_ns: int
    idle_ns: int
    running_ns: int
    down_ns: int
    good_samples: int
    in_inventory_s: float  # the whole day when the equipment is in the inventory's scope that day
    nc: str  # tag: "true", "false", "unknown" (not in the inventory)
    kind: str
    # times a live subscription confirmed that day that the last good values still hold
    # (``confirm_alive``): good data of the day, though no sample; not written to the store
    alive_confirmations: int = 0

    @property
    def covered_ns(self) -> int:
        return self.end_ns - self.covered_from_ns

    @property
    def online_ns(self) -> int:
        return self.off_ns + self.idle_ns + self.running_ns + self.down_ns

    @property
    def online_s(self) -> float:
        return self.online_ns / NS

    def to_point(self, site: Site) -> Point:
        return Point(
            "equipment_daily",
            site.tags(equipment=self.equipment, nc=self.nc, kind=self.kind),
            {
                "online_s": self.online_ns / NS,
                "running_s": self.running_ns / NS,
                "idle_s": self.idle_ns / NS,
                "down_s": self.down_ns / NS,
                "good_samples": self.good_samples,
                "in_inventory_s": float(self.in_inventory_s),
            },
            self.start_ns,
            Priority.ROLLUP,
        )


Event = StateChange | EquipmentDay


# --- rules ------------------------------------------------------------------------------------------


class _Rule:
    """One rule's memory: its accepted opinion and, during a dwell, the opinion waiting to be accepted."""

    __slots__ = (
        "dwell_ns", "off_below", "off_state", "on_above", "on_state", "output", "pending",
        "pending_since", "raw_on", "seen", "signal", "table",
    )

    def __init__(self, cfg: Any) -> None:
        self.signal: str = cfg.signal
        self.dwell_ns = round(cfg.min_dwell_s * NS)
        self.table: dict[str, str | None] | None = None
        self.on_above = self.off_below = 0.0
        self.on_state: str | None = None
        self.off_state: str | None = None
        if isinstance(cfg, ThresholdRule):
            self.on_above = cfg.on_above
            self.off_below = cfg.on_above if cfg.off_below is None else cfg.off_below
            self.on_state, self.off_state = cfg.on_state, cfg.off_state
        elif isinstance(cfg, MapRule):
            self.table = dict(cfg.states)
        else:
            self.table = BUILTIN_TABLES[cfg.type]
        self.forget()

    def forget(self) -> None:
        self.raw_on: bool | None = None  # threshold: the hysteresis flag of the latest value
        self.output: str | None = None  # the accepted opinion
        self.seen = False  # an opinion was accepted since the last forget
        self.pending: str | None = None
        self.pending_since: int | None = None

    def _opinion(self, value: float | int | str | bool) -> object:
        if self.table is not None:
            return self.table.get(normalize_key(value))  # unmapped: no opinion
        try:
            x = float(value)
        except ValueError:
            return _UNUSABLE
        if x > self.on_above:
            self.raw_on = True
        elif x < self.off_below:
            self.raw_on = False
        elif self.raw_on is None:
            self.raw_on = False  # first value inside the band: not yet switched on
        return self.on_state if self.raw_on else self.off_state

    def feed(self, value: float | int | str | bool, t: int) -> bool:
        """Take a good value at time t; False when the rule cannot read it."""
        op = self._opinion(value)
        if op is _UNUSABLE:
            return False
        assert op is None or isinstance(op, str)
        if not self.seen or self.dwell_ns == 0:
            # the first opinion after silence has nothing to debounce against
            self.output, self.seen, self.pending_since = op, True, None
        elif op == self.output:
            self.pending_since = None  # back to the accepted opinion: the pending change was a blip
        elif self.pending_since is None or self.pending != op:
            self.pending, self.pending_since = op, t
        return True

    def due(self) -> int | None:
        return None if self.pending_since is None else self.pending_since + self.dwell_ns

    def confirm(self) -> None:
        self.output, self.pending_since = self.pending, None

    def dump(self) -> dict[str, Any]:
        return {"signal": self.signal, "raw_on": self.raw_on, "output": self.output, "seen": self.seen,
                "pending": self.pending, "pending_since": self.pending_since}

    def load(self, d: dict[str, Any]) -> None:
        self.raw_on, self.output, self.seen = d["raw_on"], d["output"], d["seen"]
        self.pending, self.pending_since = d["pending"], d["pending_since"]


# --- the tracker ------------------------------------------------------------------------------------


class EquipmentTracker:
    """Derives one equipment's state from its samples and accumulates its local days.

    ``observe`` and ``advance`` return the events that became final: ``StateChange`` when the
    state changed, ``EquipmentDay`` when a local day ended. Timing rules:

    - a sample whose timestamp is more than ``max_clock_skew_s`` ahead of ``received_ns`` (when
      given) is taken at ``received_ns``: a device clock in the future must not drag time along;
    - a sample older than the cursor (out of order, or a device clock behind the caller's) is
      applied at the cursor: its value and its goodness count now; the past is never rewritten;
    - ``advance(now)`` with ``now`` behind the cursor does nothing (clocks stepping back);
    - a step forward across more than ``max_catch_up_days`` local midnights closes the open day
      as usual, emits nothing for the days in between (counted in ``counts["skipped_days"]``,
      and the days kept for ``take_skipped_days``) and resumes, offline, at the new time.
    """

    def __init__(
        self,
        equipment: str,
        equipment_class: EquipmentClassConfig,
        *,
        start_ns: int,
        site: Site,
        inventory: InventoryItem | None = None,
        plant: PlantConfig | None = None,
    ) -> None:
        plant = plant or PlantConfig()
        self.equipment = equipment
        self.site = site
        self.inventory = inventory
        self._tz = zone(site.timezone)
        offline_after = equipment_class.offline_after_s or plant.offline_after_s
        self._offline_after_ns = round(offline_after * NS)
        self._skew_ns = round(plant.max_clock_skew_s * NS)
        self._max_catch_up_days = plant.max_catch_up_days
        self._default_state = equipment_class.default_state
        self._rules = [_Rule(r) for r in equipment_class.rules]
        self._by_signal: dict[str, list[_Rule]] = {}
        for rule in self._rules:
            self._by_signal.setdefault(rule.signal, []).append(rule)
        self.counts: dict[str, int] = {
            "late_samples": 0, "future_samples": 0, "bad_samples": 0, "unusable_values": 0, "skipped_days": 0,
            "contact_lost": 0,
        }
        self._t = start_ns
        self._state = "offline"
        self._last_good: int | None = None
        self._skipped: list[date] = []  # days jumped over since the last take_skipped_days()
        self._open_day(local_date(start_ns, self._tz), covered_from=start_ns)

    # --- public -----------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def cursor_ns(self) -> int:
        return self._t

    def observe(
        self,
        signal: str,
        value: float | int | str | bool | None,
        quality: int,
        ts_ns: int,
        received_ns: int | None = None,
    ) -> list[Event]:
        """One sample; quality != 0, None or a non-finite number is not good data. A quality that
        says the source lost contact (``fmc.core.quality.contact_lost``) takes the equipment
        offline at ``ts_ns``, without waiting ``offline_after_s``."""
        events: list[Event] = []
        t = ts_ns
        if received_ns is not None and t > received_ns + self._skew_ns:
            self.counts["future_samples"] += 1
            t = received_ns
        if t < self._t:
            self.counts["late_samples"] += 1
            t = self._t
        self._advance_to(t, events)
        if quality != 0 or value is None or (isinstance(value, float) and not math.isfinite(value)):
            self.counts["bad_samples"] += 1
            if contact_lost(quality):
                self.counts["contact_lost"] += 1
                if self._state != "offline":
                    self._go_offline(t, events)
            return events
        self._good += 1
        self._last_good = t
        for rule in self._by_signal.get(signal, ()):
            if not rule.feed(value, t):
                self.counts["unusable_values"] += 1
        self._settle(t, events)
        return events

    def advance(self, now_ns: int) -> list[Event]:
        """Time passes without a sample: dwell confirmations, going offline, day ends."""
        events: list[Event] = []
        self._advance_to(now_ns, events)
        return events

    def confirm_alive(self, now_ns: int) -> list[Event]:
        """The source vouches that the last values still hold: an OPC UA subscription reports only
        changes, so a machine standing still (speed 0, power 0) sends nothing while its session is
        alive and its last value was good. The equipment stays online in its state, and the
        confirmation is good data of the day it falls in (``alive_confirmations``: it makes the day
        networked like a sample would; it is not counted as a sample). Equipment already offline is
        not brought back: only a new good sample does that. The caller only vouches while the last
        sample was good (a Bad status ends it) and the session is up."""
        events: list[Event] = []
        self._advance_to(now_ns, events)
        if self._state != "offline" and self._last_good is not None and self._t > self._last_good:
            self._last_good = self._t
            self._confirmed += 1
        return events

    def take_skipped_days(self) -> list[date]:
        """The local days jumped over (no ``EquipmentDay``) since the last call, oldest first. Not in
        the snapshot: the plant model takes them after each call that moves the tracker."""
        days = self._skipped
        if days:  # called for every signal point: no new list when there is nothing (nearly always)
            self._skipped = []
        return days

    def open_day_totals(self) -> EquipmentDay:
        """The open day so far (up to the cursor), e.g. for a live dashboard; not an event."""
        return self._day_record(partial=True)

    # --- time ---------------------------------------------------------------------------------------

    def _open_day(self, day: date, covered_from: int) -> None:
        self._day = day
        self._day_start, self._day_end = local_day_bounds(day, self._tz)
        self._covered_from = covered_from
        self._acc = dict.fromkeys(STATES, 0)
        self._good = 0
        self._confirmed = 0

    def _offline_at(self) -> int | None:
        if self._state == "offline" or self._last_good is None:
            return None
        return self._last_good + self._offline_after_ns

    def _advance_to(self, target: int, events: list[Event]) -> None:
        if target <= self._t:
            return
        if target >= self._day_end and (local_date(target, self._tz) - self._day).days > self._max_catch_up_days:
            self._jump(target, events)
            return
        while self._t < target:
            offline_at = self._offline_at()
            dues = [d for r in self._rules if (d := r.due()) is not None]
            due = min(dues) if dues else None
            step = min(x for x in (target, self._day_end, offline_at, due) if x is not None)
            self._acc[self._state] += step - self._t
            self._t = step
            if step == self._day_end:
                events.append(self._day_record(partial=False))
                self._open_day(date.fromordinal(self._day.toordinal() + 1), covered_from=step)
            # offline strictly after offline_after_s: a sample exactly at the deadline keeps it online
            if offline_at is not None and step == offline_at and step < target:
                self._go_offline(step, events)
            elif due is not None and step == due:
                for rule in self._rules:
                    if rule.due() == step:
                        rule.confirm()
                self._settle(step, events)

    def _jump(self, target: int, events: list[Event]) -> None:
        # finish the open day as time would have run, then skip the empty days between
        self._advance_to(self._day_end, events)
        if self._state != "offline":
            self._go_offline(self._t, events)
        new_day = local_date(target, self._tz)
        self.counts["skipped_days"] += (new_day - self._day).days
        self._skipped.extend(date.fromordinal(d) for d in range(self._day.toordinal(), new_day.toordinal()))
        self._open_day(new_day, covered_from=target)
        self._t = target

    def _go_offline(self, t: int, events: list[Event]) -> None:
        # values seen before the silence are stale: after it, every rule waits for a new value
        for rule in self._rules:
            rule.forget()
        self._set_state("offline", t, events)

    def _settle(self, t: int, events: list[Event]) -> None:
        if self._last_good is None or t - self._last_good > self._offline_after_ns:
            new = "offline"
        else:
            opinions = [r.output for r in self._rules if r.output is not None]
            new = max(opinions, key=PRIORITY.__getitem__) if opinions else self._default_state
        self._set_state(new, t, events)

    def _set_state(self, new: str, t: int, events: list[Event]) -> None:
        if new != self._state:
            events.append(StateChange(self.equipment, t, new, self._state))
            self._state = new

    def _day_record(self, *, partial: bool) -> EquipmentDay:
        inv = self.inventory
        in_inventory = inv is not None and inv.in_scope_on(self._day)
        end = self._t if partial else self._day_end
        return EquipmentDay(
            equipment=self.equipment,
            day=self._day,
            start_ns=self._day_start,
            end_ns=end,
            covered_from_ns=self._covered_from,
            offline_ns=self._acc["offline"],
            off_ns=self._acc["off"],
            idle_ns=self._acc["idle"],
            running_ns=self._acc["running"],
            down_ns=self._acc["down"],
            good_samples=self._good,
            in_inventory_s=(self._day_end - self._day_start) / NS if in_inventory else 0.0,
            nc="unknown" if inv is None else ("true" if inv.nc else "false"),
            kind="unlisted" if inv is None else inv.kind,
            alive_confirmations=self._confirmed,
        )

    # --- persistence ----------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to resume, as plain JSON-able values (ints stay exact)."""
        return {
            "version": SNAPSHOT_VERSION,
            "equipment": self.equipment,
            "cursor_ns": self._t,
            "state": self._state,
            "last_good_ns": self._last_good,
            "day": self._day.isoformat(),
            "covered_from_ns": self._covered_from,
            "state_ns": dict(self._acc),
            "good_samples": self._good,
            "alive_confirmations": self._confirmed,
            "rules": [r.dump() for r in self._rules],
            "counts": dict(self.counts),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Resume from ``snapshot()`` (e.g. after an agent restart mid-day).

        When the class's rules changed since (other signals or order), the rules start afresh:
        they wait for new values, as after a period offline.
        """
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"tracker snapshot version {snapshot.get('version')!r} is not {SNAPSHOT_VERSION}")
        if snapshot["equipment"] != self.equipment:
            raise ValueError(f"snapshot of {snapshot['equipment']!r} given to the tracker of {self.equipment!r}")
        self._open_day(date.fromisoformat(snapshot["day"]), covered_from=int(snapshot["covered_from_ns"]))
        self._t = int(snapshot["cursor_ns"])
        self._state = snapshot["state"]
        self._last_good = snapshot["last_good_ns"]
        self._acc = {s: int(snapshot["state_ns"][s]) for s in STATES}
        self._good = int(snapshot["good_samples"])
        self._confirmed = int(snapshot.get("alive_confirmations", 0))  # absent in snapshots of older agents
        self.counts.update(snapshot["counts"])
        rules = snapshot["rules"]
        if [r["signal"] for r in rules] == [r.signal for r in self._rules]:
            for rule, saved in zip(self._rules, rules, strict=True):
                rule.load(saved)
        else:
            for rule in self._rules:
                rule.forget()
