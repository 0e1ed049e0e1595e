"""The plant model at run time: raw points in, derived points out — states, intervals, daily rollups.

It joins the pure parts (``fmc.plant.states``, ``fmc.plant.meters``, ``fmc.plant.rollups``) for one
enterprise: one ``EquipmentTracker`` per inventory item (connected or not: equipment that never
sends data is offline all day and still counts in the denominators), one ``MeterAccumulator`` per
``[[meter]]``, the ``[[virtual_meter]]``s, and the daily ``enterprise_daily`` and
``consumption_daily`` points. It does no I/O and reads no clock: the ingest writer thread feeds it
the points it commits (``observe``) and the time (``advance``), and commits what it returns in
the same transaction. ``snapshot``/``restore`` let a restart mid-day resume the day's
accumulated seconds from the spool; ``inputs`` and ``replay`` let it resume exactly where the
last commit left it: the ingest journals every call (``observe``, ``advance``, ``confirm_alive``)
with the points it derived, and a restart replays the calls journaled after the snapshot. That
works because the model is deterministic: the same calls in the same order give the same state.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from typing import Any

from fmc.core.localtime import NS, local_date, local_day_bounds
from fmc.core.points import Point, Priority
from fmc.plant.config import EquipmentClassConfig, PlantSections
from fmc.plant.meters import MeterAccumulator, MeterInterval, VirtualMeter
from fmc.plant.rollups import (
    InventoryItem,
    MeterDayTotal,
    Site,
    add_to_day_total,
    consumption_daily_of,
    counted_meters,
    enterprise_daily,
    enterprise_daily_unobserved,
    meter_day_totals,
)
from fmc.plant.states import EquipmentDay, EquipmentTracker, StateChange
from fmc.plant.tce import coefficients_for

SNAPSHOT_VERSION = 1
# Days whose consumption_daily was written and can still be completed by an interval that comes
# after it (a meter's first readings, timestamped back in such a day): the day is written again,
# whole. Each costs one total per counted meter. An interval for an older written day is counted
# (consumption_too_late) and left out of the rollup: it is still written as a meter_interval.
WRITTEN_DAYS_KEPT = 14
# The days the trackers jump over (the agent was off for more than max_catch_up_days) get an
# enterprise_daily of the ledger's counts alone; at most this many, the latest: a clock stepping years
# ahead must not write a row for every day in between.
MAX_UNOBSERVED_DAYS = 366


class PlantModel:
    def __init__(
        self,
        site: Site,
        sections: PlantSections,
        inventory: Sequence[InventoryItem],
        *,
        start_ns: int,
    ) -> None:
        self.site = site
        self.sections = sections
        self.inventory = list(inventory)
        plant = sections.plant
        classes = {c.name: c for c in sections.equipment_class}
        self.trackers: dict[str, EquipmentTracker] = {}
        for item in self.inventory:
            # equipment of a kind with no class still has an online/offline life: good data = idle (fmc
            # check and the start warn about the connected ones: fmc.agent.feeds.check_classes)
            cls = classes.get(item.kind) or EquipmentClassConfig(name="unclassified")
            self.trackers[item.id] = EquipmentTracker(
                item.id, cls, start_ns=start_ns, site=site, inventory=item, plant=plant
            )
        self.meters: dict[str, MeterAccumulator] = {}
        for m in sections.meter:
            self.meters[m.reads] = MeterAccumulator.from_plant(m, plant, sections.coefficients, site.timezone)
        self.virtual = [
            VirtualMeter(v, interval_s=plant.interval_minutes * 60, coefficients=sections.coefficients,
                         timezone=site.timezone)
            for v in sections.virtual_meter
        ]
        self.counted = counted_meters(sections)
        # a day's consumption is final once every meter's last interval of the day is: max_gap_s
        # (or a virtual meter's max_wait_s) after midnight, plus one interval
        waits = [m.max_gap_s for m in sections.meter] + [v.max_wait_s for v in sections.virtual_meter]
        self._consumption_wait_ns = round((max(waits, default=0) + plant.interval_minutes * 60) * NS)
        self._equipment_days: dict[date, list[EquipmentDay]] = defaultdict(list)
        self._intervals: dict[date, list[MeterInterval]] = defaultdict(list)
        # the counted meters' totals of the days whose consumption_daily was written (the last
        # WRITTEN_DAYS_KEPT of them), and those of them to write again
        self._written: dict[date, dict[str, MeterDayTotal]] = {}
        self._rewrite: set[date] = set()
        self._forgotten_until: date | None = None  # the newest written day no longer kept
        # days jumped over whose ledger-only enterprise_daily was written in this advance or the
        # observe calls before it: each tracker reports the same days
        self._unobserved: set[date] = set()
        self._clock = start_ns
        self.counts: dict[str, int] = {"unknown_equipment": 0, "unknown_meter": 0, "consumption_rewritten": 0,
                                       "consumption_too_late": 0}
        self._last_quality: dict[str, int] = {}
        # each meter's last reading as received (raw value, ts); None after a reading that was not good
        self._last_reading: dict[str, tuple[float, int] | None] = {}
        # the trackers' time is the agent's clock less this: samples still on their way are not late
        self._delay_ns = round(plant.sample_delay_s * NS)

    # --- input ------------------------------------------------------------------------------------

    def observe(self, points: Iterable[Point], received_ns: int) -> list[Point]:
        """Raw points the ingest is committing; returns the derived points to commit with them.
        Store-only points (``Point.store_only``: values of the past sent late) are passed over."""
        out: list[Point] = []
        for p in points:
            if p.store_only:
                continue  # a value of the past sent late: stored, but no state or reading of now
            if p.measurement == "signal":
                tracker = self.trackers.get(p.tags.get("equipment", ""))
                if tracker is None:
                    self.counts["unknown_equipment"] += 1
                    continue
                value = p.fields.get("value", p.fields.get("text"))
                quality = int(p.fields.get("quality", 0))
                self._last_quality[tracker.equipment] = quality
                self._events(tracker.observe(p.tags["signal"], value, quality, p.ts_ns, received_ns), out)
                self._unobserved_out((tracker,), out)
            elif p.measurement == "meter_reading":
                meter = self.meters.get(p.tags.get("meter", ""))
                if meter is None:
                    self.counts["unknown_meter"] += 1
                    continue
                value = p.fields.get("value")
                quality = int(p.fields.get("quality", 0))
                number = isinstance(value, float | int) and not isinstance(value, bool)
                if number or quality != 0:  # a Bad status often comes without a value: counted all the same
                    reading = float(value) if number else math.nan  # type: ignore[arg-type]
                    good = quality == 0 and math.isfinite(reading) and reading >= 0
                    self._last_reading[p.tags["meter"]] = (reading, p.ts_ns) if good else None
                    self._intervals_out(meter.observe(reading, quality, p.ts_ns, received_ns), out)
        return out

    def inputs(self, points: Iterable[Point]) -> list[list[Any]]:
        """What ``observe`` reads of ``points``, as JSON-able rows for the ingest's journal: the
        samples of known equipment and the readings of known meters, in order (``replay`` feeds
        them to ``observe`` again; other points change nothing but the unknown counts)."""
        rows: list[list[Any]] = []
        for p in points:
            if p.store_only:
                continue
            if p.measurement == "signal":
                equipment = p.tags.get("equipment", "")
                if equipment in self.trackers:
                    rows.append(["s", equipment, p.tags.get("signal", ""), _observed_fields(p), p.ts_ns])
            elif p.measurement == "meter_reading":
                meter = p.tags.get("meter", "")
                if meter in self.meters:
                    rows.append(["m", meter, "", _observed_fields(p), p.ts_ns])
        return rows

    def replay(self, entry: dict[str, Any]) -> None:
        """Make one journaled call again, dropping what it returns (committed with it back then):
        ``{"observe": inputs(points), "received_ns": …}``, ``{"advance": now_ns}`` or
        ``{"confirm_alive": [equipment…], "now_ns": …, "meters": [meter…]}``."""
        if "observe" in entry:
            points = [
                Point("signal", {"equipment": key, "signal": signal}, fields, ts, Priority.RAW) if kind == "s"
                else Point("meter_reading", {"meter": key}, fields, ts, Priority.RAW)
                for kind, key, signal, fields, ts in entry["observe"]
            ]
            self.observe(points, int(entry["received_ns"]))
        elif "advance" in entry:
            self.advance(int(entry["advance"]))
        elif "confirm_alive" in entry:
            self.confirm_alive(entry["confirm_alive"], int(entry["now_ns"]), entry.get("meters", ()))
        else:
            raise ValueError(f"not a plant journal entry: {sorted(entry)}")

    def confirm_alive(self, equipment: Iterable[str], now_ns: int, meters: Iterable[str] = ()) -> list[Point]:
        """Equipment whose values come from a live OPC UA subscription: unchanged values are still
        good data (see EquipmentTracker.confirm_alive), as long as the last sample was good.

        ``meters`` read from a live OPC UA session: a register that did not change is not sent again
        (or comes back with its old source timestamp), yet it still reads the same now. A counter or
        a power meter whose last reading was good gets its last accepted reading again at the
        trackers' time (``now_ns - sample_delay_s``, ``MeterAccumulator.confirm``): a counter's time
        without consumption is covered (not a gap that leaves its intervals uncovered), a steady power
        is integrated (not lost across ``max_gap_s``). Not a reading held back as undecided (a drop
        to 0 that the next change may show to be a glitch, a spike): repeating it would decide it.
        An interval meter gets nothing: its reading is consumption, never repeated."""
        out: list[Point] = []
        t = now_ns - self._delay_ns
        for eq in equipment:
            tracker = self.trackers.get(eq)
            if tracker is not None and self._last_quality.get(eq) == 0:
                self._events(tracker.confirm_alive(t), out)
                self._unobserved_out((tracker,), out)
        for meter_id in meters:
            meter = self.meters.get(meter_id)
            reading = self._last_reading.get(meter_id)
            if meter is not None and reading is not None and t > reading[1]:
                self._intervals_out(meter.confirm(t), out)
        return out

    def advance(self, now_ns: int) -> list[Point]:
        """Time passes: offline detection, intervals and days that became final."""
        out: list[Point] = []
        self._clock = max(self._clock, now_ns)
        tracked = now_ns - self._delay_ns  # samples stamped after this may still be on their way
        for tracker in self.trackers.values():
            self._events(tracker.advance(tracked), out)
        self._unobserved_out(self.trackers.values(), out)
        for meter in self.meters.values():
            self._intervals_out(meter.advance(now_ns), out)
        for v in self.virtual:
            self._virtual_out(v.advance(now_ns), out)
        tz = self.site.tz
        # every tracker has advanced to `tracked`: a day that ended by then is complete
        for day in sorted(d for d in self._equipment_days if local_day_bounds(d, tz)[1] <= tracked):
            out.append(enterprise_daily(
                day, self.site, self.inventory, self._equipment_days.pop(day),
                networked_min_online_minutes=self.sections.plant.networked_min_online_minutes,
            ))
        for day in sorted(d for d in self._intervals if local_day_bounds(d, tz)[1] + self._consumption_wait_ns
                          <= now_ns):
            self._written[day] = meter_day_totals(day, self.site, self._intervals.pop(day), self.counted)
            self._rewrite.add(day)
        for day in sorted(self._rewrite):
            out.extend(consumption_daily_of(day, self.site, self._written[day],
                                            coefficients=coefficients_for(self.sections.coefficients, day.year)))
        if len(self._written) > WRITTEN_DAYS_KEPT:
            for day in sorted(self._written)[:-WRITTEN_DAYS_KEPT]:  # oldest first: the last is the newest forgotten
                del self._written[day]
                self._forgotten_until = day
        self._rewrite.clear()
        self._unobserved.clear()  # every tracker is past the days it could jump over now
        return out

    def event_counts(self) -> dict[tuple[str, str], int]:
        """What the trackers and accumulators counted, summed per (part, kind), for /metrics."""
        out: dict[tuple[str, str], int] = {("plant", k): v for k, v in self.counts.items()}
        for part, counters in (("equipment", [t.counts for t in self.trackers.values()]),
                               ("meter", [m.counts for m in self.meters.values()]),
                               ("virtual_meter", [v.counts for v in self.virtual])):
            for counts in counters:
                for kind, n in list(counts.items()):
                    out[(part, kind)] = out.get((part, kind), 0) + n
        return out

    # --- events -----------------------------------------------------------------------------------

    def _events(self, events: Iterable[StateChange | EquipmentDay], out: list[Point]) -> None:
        for e in events:
            out.append(e.to_point(self.site))
            if isinstance(e, EquipmentDay):
                self._equipment_days[e.day].append(e)

    def _unobserved_out(self, trackers: Iterable[EquipmentTracker], out: list[Point]) -> None:
        """The ledger-only ``enterprise_daily`` of each day the trackers jumped over: its equipment
        and asset values are the ledger's whether or not data came, so the NC rate keeps the day; its
        networked counts are not known, and left out (docs/plant-semantics.md §4). A day some tracker
        has a record of is rolled up as usual, from the records."""
        for tracker in trackers:
            skipped = tracker.take_skipped_days()
            if not skipped:
                continue
            for day in skipped[-MAX_UNOBSERVED_DAYS:]:
                if day not in self._unobserved and day not in self._equipment_days:
                    self._unobserved.add(day)
                    out.append(enterprise_daily_unobserved(day, self.site, self.inventory))

    def _intervals_out(self, intervals: Iterable[MeterInterval], out: list[Point]) -> None:
        for iv in intervals:
            out.append(iv.to_point(self.site))
            self._keep_for_day(iv)
            for v in self.virtual:
                self._virtual_out(v.add(iv), out)

    def _virtual_out(self, intervals: Iterable[MeterInterval], out: list[Point]) -> None:
        for iv in intervals:
            out.append(iv.to_point(self.site))
            self._keep_for_day(iv)

    def _keep_for_day(self, iv: MeterInterval) -> None:
        """Keep ``iv`` for its day's consumption_daily. A day already written is written again, with
        ``iv`` added: writing only what came late would overwrite the day's row with a part of it."""
        day = local_date(iv.start_ns, self.site.tz)
        written = self._written.get(day)
        if written is not None:
            carrier = self.counted.get(iv.meter)
            if carrier is None:
                return
            # a meter counted since (added to the config) joins the day only with something it measured
            total = written.get(iv.meter) or MeterDayTotal(carrier)
            if add_to_day_total(total, iv):
                written[iv.meter] = total
                self.counts["consumption_rewritten"] += 1
                self._rewrite.add(day)
        elif day not in self._intervals and self._forgotten_until is not None and day <= self._forgotten_until:
            # its day may have been written and is no longer kept: a row of this interval alone
            # would overwrite the day's
            if iv.meter in self.counted and (iv.amount or iv.covered_ns):
                self.counts["consumption_too_late"] += 1
        else:
            self._intervals[day].append(iv)

    # --- persistence ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "clock": self._clock,
            "trackers": {k: t.snapshot() for k, t in self.trackers.items()},
            "meters": {k: m.snapshot() for k, m in self.meters.items()},
            "virtual": {v.config.id: v.snapshot() for v in self.virtual},
            "equipment_days": [_dump(e) for days in self._equipment_days.values() for e in days],
            "intervals": [_dump(i) for ivs in self._intervals.values() for i in ivs],
            "written": {d.isoformat(): {m: [t.carrier, t.amount, t.covered_ns, t.last_start_ns]
                                        for m, t in totals.items()} for d, totals in self._written.items()},
            "forgotten_until": None if self._forgotten_until is None else self._forgotten_until.isoformat(),
            "last_quality": dict(self._last_quality),
            "last_reading": {k: None if r is None else list(r) for k, r in self._last_reading.items()},
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Resume from a snapshot. Equipment or meters added to the config since start fresh;
        removed ones are dropped."""
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"plant snapshot version {snapshot.get('version')} is not {SNAPSHOT_VERSION}")
        for key, state in snapshot["trackers"].items():
            if key in self.trackers:
                self.trackers[key].restore(state)
        for key, state in snapshot["meters"].items():
            if key in self.meters:
                self.meters[key].restore(state)
        virtual = {v.config.id: v for v in self.virtual}
        for key, state in snapshot["virtual"].items():
            if key in virtual:
                virtual[key].restore(state)
        for d in snapshot["equipment_days"]:
            e = _load(EquipmentDay, d)
            if e.equipment in self.trackers:
                self._equipment_days[e.day].append(e)
        for d in snapshot["intervals"]:
            iv = _load(MeterInterval, d)
            self._intervals[local_date(iv.start_ns, self.site.tz)].append(iv)
        # absent in snapshots of older agents; a meter since removed from the config still counts in its days
        for day, totals in snapshot.get("written", {}).items():
            self._written[date.fromisoformat(day)] = {
                m: MeterDayTotal(str(c), float(a), int(cov), int(s)) for m, (c, a, cov, s) in totals.items()}
        if snapshot.get("forgotten_until"):
            self._forgotten_until = date.fromisoformat(snapshot["forgotten_until"])
        elif "written" not in snapshot:
            # an older agent's snapshot: it kept no totals, so any day before the snapshot's that is not
            # waiting for its rollup may have been written already
            self._forgotten_until = local_date(int(snapshot["clock"]), self.site.tz) - timedelta(days=1)
        self._clock = max(self._clock, int(snapshot["clock"]))
        self._last_quality.update(
            {k: int(q) for k, q in snapshot.get("last_quality", {}).items() if k in self.trackers})
        self._last_reading.update(  # absent in snapshots of older agents
            {k: None if r is None else (float(r[0]), int(r[1]))
             for k, r in snapshot.get("last_reading", {}).items() if k in self.meters})


def _observed_fields(p: Point) -> dict[str, Any]:
    return {k: p.fields[k] for k in ("value", "text", "quality") if k in p.fields}


def _dump(obj: Any) -> dict[str, Any]:
    d = dataclasses.asdict(obj)
    for k, v in d.items():
        if isinstance(v, date):
            d[k] = v.isoformat()
    return d


def _load(cls: type, d: dict[str, Any]) -> Any:
    d = dict(d)
    if "day" in d:
        d["day"] = date.fromisoformat(d["day"])
    return cls(**d)
