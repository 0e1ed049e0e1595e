"""Meter accumulator: readings -> consumption per aligned interval (`meter_interval`). Pure, no clock.

One ``MeterAccumulator`` per physical meter, one ``VirtualMeter`` per sum/difference of meters.
Kinds of meter:

- ``counter``: a cumulative register. Consumption is the increase between readings. A decrease is
  noise (within ``max_jitter``: ignored); any other decrease is believed only when the next reading
  confirms it: a return to the old level is a glitch (one bad reading, ignored, counted
  ``glitch``); otherwise it is a rollover (``rollover`` set, the old reading in the top tenth:
  ``rollover - old + new``) or a reset/replacement (the new reading counts from 0 when it is
  plausible under ``max_rate_per_h``; otherwise nothing is counted and the span stays uncovered).
  With ``max_rate_per_h`` and no reading within ``max_gap_s``, the decrease is taken as real (the
  next reading may still show it was a glitch); without it, only the next reading can tell.
  An increase beyond ``max_rate_per_h`` × elapsed is rejected, the baseline kept; if the next
  reading confirms the new level, the meter is re-based there without counting the jump.
- ``interval``: each reading is the consumption since the previous reading.
- ``power``: kW (W, MW) samples integrated by the trapezoid rule into kWh; nothing is integrated
  across a gap longer than ``max_gap_s``.

Consumption between two readings is spread over the intervals they span by time share when they
are at most ``max_gap_s`` apart; that time is *covered*. Consumption of a longer gap is real (the
counter says so) but its time is unknown: it is added, uncovered, to the interval of the later
reading, so totals stay right and no interval pretends to be complete. The same happens to
consumption that arrives for an interval already emitted: it goes to the first open interval.
Nothing is ever filled in for time without readings. An interval is emitted when a reading at or
after its end has been accepted, or when the caller's clock is ``max_gap_s`` past its end.

Intervals are aligned to UTC multiples of the interval length; they are aligned to local
midnight too when the zone's UTC offset is a multiple of the interval (+08:00: any interval that
divides an hour or a day up to 60 min; see ``fmc.plant.config.check_interval_alignment``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from fmc.core.carriers import is_water
from fmc.core.localtime import NS, local_date, zone
from fmc.core.points import Point, Priority
from fmc.plant.config import (
    POWER_UNITS_KW,
    CoefficientsConfig,
    MeterConfig,
    PlantConfig,
    VirtualMeterConfig,
    native_to_canonical,
)
from fmc.plant.rollups import Site
from fmc.plant.tce import Coefficients, coefficients_for, tce

NS_PER_HOUR = 3600 * NS
SNAPSHOT_VERSION = 1
# A decrease is a rollover only when the wrap is small against the register's range, i.e. the old
# reading was near the top and the new one near 0; anything else is a reset.
ROLLOVER_WINDOW = 0.1


@dataclass(frozen=True, slots=True)
class MeterInterval:
    """Consumption of one meter in one aligned interval [start_ns, end_ns)."""

    meter: str
    carrier: str
    start_ns: int
    end_ns: int
    amount_native: float  # in the meter's unit (power meters: kWh; virtual meters: canonical)
    amount: float  # in the carrier's canonical unit (fmc.plant.config.CANONICAL_UNIT)
    tce: float | None  # None: the carrier is not counted as energy (water by default)
    m3: float | None  # water carriers only
    covered_ns: int  # time of the interval whose consumption was measured
    lump: float = 0.0  # part of `amount` from outside the interval's covered time (gaps, late data)
    clamped: bool = False  # virtual meters: the difference was negative and was set to 0

    @property
    def coverage(self) -> float:
        return self.covered_ns / (self.end_ns - self.start_ns)

    @property
    def complete(self) -> bool:
        return self.covered_ns >= self.end_ns - self.start_ns

    def to_point(self, site: Site) -> Point:
        fields: dict[str, float] = {"amount": self.amount_native}
        if self.tce is not None:
            fields["tce"] = self.tce
        if self.m3 is not None:
            fields["m3"] = self.m3
        fields["coverage"] = self.coverage
        return Point(
            "meter_interval",
            site.tags(meter=self.meter, carrier=self.carrier),
            dict(fields),
            self.start_ns,
            Priority.ROLLUP,
        )


class _Pricing:
    """tce and m3 of canonical amounts, with the coefficient table of the interval's local year."""

    def __init__(self, config: CoefficientsConfig | None, timezone: str) -> None:
        self._config = config
        self._tz = zone(timezone)
        self._by_year: dict[int, Coefficients] = {}

    def interval(self, meter: str, carrier: str, start: int, end: int, amount_native: float, amount: float,
                 covered: int, lump: float, clamped: bool = False) -> MeterInterval:
        year = local_date(start, self._tz).year
        if year not in self._by_year:
            self._by_year[year] = coefficients_for(self._config, year)
        return MeterInterval(
            meter, carrier, start, end, amount_native, amount,
            tce(carrier, amount, self._by_year[year]), amount if is_water(carrier) else None,
            covered, lump, clamped,
        )


class MeterAccumulator:
    """Turns one meter's readings into `meter_interval` records.

    ``observe`` and ``advance`` return the intervals that became final, oldest first. Timing:
    a reading more than ``max_clock_skew_s`` ahead of ``received_ns`` is taken at ``received_ns``;
    a reading at or before the last accepted one is dropped (a redelivery or out of order; for a
    counter nothing is lost, the next reading carries it). When time moves on by more than
    ``max_catch_up_days`` at once, only intervals holding data are emitted for that span.
    """

    def __init__(
        self,
        meter: MeterConfig,
        *,
        interval_s: int = 900,
        coefficients: CoefficientsConfig | None = None,
        timezone: str = "Asia/Shanghai",
        max_clock_skew_s: float = 300.0,
        max_catch_up_days: int = 7,
    ) -> None:
        if interval_s <= 0 or 86_400 % interval_s:
            raise ValueError(f"interval_s = {interval_s} must divide a day")
        assert meter.unit is not None  # set by the config's validator
        self.meter = meter
        self._i = interval_s * NS
        self._gap = round(meter.max_gap_s * NS)
        self._skew = round(max_clock_skew_s * NS)
        self._cap = max_catch_up_days * 86_400 // interval_s
        self._pricing = _Pricing(coefficients, timezone)
        if meter.kind == "power":
            self._kw_per_reading = meter.scale * POWER_UNITS_KW[meter.unit]
            self._to_canonical = native_to_canonical(meter.carrier, "kWh")
        else:
            self._to_canonical = native_to_canonical(meter.carrier, meter.unit, meter.density_kg_per_l)
        self._last_ts: int | None = None
        self._last_value: float | None = None  # counter: baseline in `unit`; power: last kW
        self._candidate: tuple[float, int] | None = None  # counter: a rejected jump that may be a new level
        # counter: a decrease waiting for the next reading to say whether it is real (value, ts)
        self._drop: tuple[float, int] | None = None
        # counter: a decrease taken as real for lack of a next reading: (level before it, amount booked
        # for it, the level's time or None); the next reading may still show it was a glitch
        self._before_drop: tuple[float, float, int | None] | None = None
        self._horizon: int | None = None  # start of the first interval not yet emitted
        self._open: dict[int, list[Any]] = {}  # start -> [amount_native, covered_ns, lump]
        self._clock: int | None = None
        self.counts: dict[str, int] = dict.fromkeys(
            ("bad_quality", "not_finite", "negative", "out_of_order", "future_timestamp", "implausible",
             "jitter", "glitch", "rollover", "reset_counted", "reset_uncounted", "rebaseline", "gap",
             "late_data", "skipped_intervals"),
            0,
        )

    @classmethod
    def from_plant(
        cls, meter: MeterConfig, plant: PlantConfig, coefficients: CoefficientsConfig | None, timezone: str
    ) -> MeterAccumulator:
        return cls(meter, interval_s=plant.interval_minutes * 60, coefficients=coefficients, timezone=timezone,
                   max_clock_skew_s=plant.max_clock_skew_s, max_catch_up_days=plant.max_catch_up_days)

    # --- public -------------------------------------------------------------------------------------

    def observe(self, value: float, quality: int, ts_ns: int, received_ns: int | None = None) -> list[MeterInterval]:
        """One reading (the `meter_reading` value, before this meter's ``scale``)."""
        t = ts_ns
        if received_ns is not None and t > received_ns + self._skew:
            self.counts["future_timestamp"] += 1
            t = received_ns
        if quality != 0:
            self.counts["bad_quality"] += 1
        elif not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            self.counts["not_finite"] += 1
        elif value < 0:
            self.counts["negative"] += 1  # no register or power reading of consumption is negative
        elif self._last_ts is not None and t <= (self._last_ts if self._drop is None else self._drop[1]):
            self.counts["out_of_order"] += 1
        else:
            if self._horizon is None:
                self._horizon = self._bucket(t)
            if self.meter.kind == "counter":
                self._counter(value * self.meter.scale, t)
            elif self.meter.kind == "interval":
                self._interval_reading(value * self.meter.scale, t)
            else:
                self._power(value * self._kw_per_reading, t)
        return self._emit()

    def confirm(self, ts_ns: int) -> list[MeterInterval]:
        """The meter still reads what it last read (a live OPC UA session, which sends a register
        only when it changes): a counter's accepted reading, a power meter's last accepted kW, again at
        ``ts_ns``. Nothing while a counter's decrease or jump waits for its next reading to decide it
        (the reading held back is not the register: repeating it would turn a glitch into a reset, or
        agree with a spike), nothing for an interval meter (its reading is consumption)."""
        if self._last_value is None or self._last_ts is None or ts_ns <= self._last_ts:
            return []
        if self.meter.kind == "counter":
            if self._drop is not None or self._before_drop is not None or self._candidate is not None:
                return []
            self._counter(self._last_value, ts_ns)
        elif self.meter.kind == "power":
            self._power(self._last_value, ts_ns)
        else:
            return []
        return self._emit()

    def advance(self, now_ns: int) -> list[MeterInterval]:
        """The caller's clock: intervals max_gap_s past their end are final even without readings."""
        if self._clock is None or now_ns > self._clock:
            self._clock = now_ns
        if self._drop is not None and self._clock - self._drop[1] >= self._gap and self.meter.max_rate_per_h:
            # no reading within max_gap_s to say otherwise: with a rate to bound what it books, the
            # decrease is taken as real (the next reading may still show it was a glitch); without one
            # it waits for the next reading, however late: nothing else can tell a glitch from a reset
            level, level_ts = self._last_value, self._last_ts
            assert level is not None
            self._before_drop = (level, self._book_drop(*self._drop), level_ts)
            self._drop = None
        return self._emit()

    # --- the three kinds ----------------------------------------------------------------------------

    def _limit(self, t1: int, t2: int) -> float | None:
        rate = self.meter.max_rate_per_h
        return None if rate is None else rate * (t2 - t1) / NS_PER_HOUR

    def _counter(self, x: float, t: int) -> None:
        if self._last_value is None or self._last_ts is None:
            self._last_value, self._last_ts = x, t  # the first reading is only a baseline
            return
        if self._drop is not None:
            # this reading decides the decrease before it: a glitch, or a real reset or rollover
            d, td = self._drop
            self._drop = None
            if self._returned(x, t, self._last_value, self._last_ts, d, td):
                self.counts["glitch"] += 1  # one bad reading: measured on from the level before it
            else:
                self._book_drop(d, td)
        elif self._before_drop is not None:
            level, booked, level_ts = self._before_drop
            self._before_drop = None
            d, td = self._last_value, self._last_ts
            if self._returned(x, t, level, level_ts, d, td):
                # the decrease taken as real was a glitch after all: count from the level before it,
                # less what was booked for the decrease (nothing for a reset without max_rate_per_h)
                self.counts["glitch"] += 1
                self._spread(td, t, max(x - level - booked, 0.0))
                self._last_value, self._last_ts, self._candidate = x, t, None
                return
        prev, t1 = self._last_value, self._last_ts
        limit = self._limit(t1, t)
        delta = x - prev
        if delta >= 0:
            if limit is not None and delta > limit:
                cand = self._candidate
                if cand is not None and x >= cand[0] and t > cand[1] and x - cand[0] <= (self._limit(cand[1], t) or 0):
                    # two readings agree on a new level (a replaced meter): start there, count the jump nowhere
                    self.counts["rebaseline"] += 1
                    self._spread(cand[1], t, x - cand[0])
                    self._last_value, self._last_ts, self._candidate = x, t, None
                else:
                    self.counts["implausible"] += 1
                    self._candidate = (x, t)
                return
            self._spread(t1, t, delta)
            self._last_value, self._last_ts, self._candidate = x, t, None
            return
        self._candidate = None
        if -delta <= self.meter.max_jitter:
            # noise: no consumption, and the baseline stays at the higher value so nothing counts twice
            self.counts["jitter"] += 1
            self._spread(t1, t, 0.0)
            self._last_ts = t
            return
        # one reading below the register proves nothing yet (a 0 from a failing gateway looks like a
        # reset, and near the top of the range like a wrap): the next reading decides
        self._drop = (x, t)

    def _returned(self, x: float, t: int, level: float, level_ts: int | None, d: float, td: int) -> bool:
        """After a decrease from ``level`` (at ``level_ts``) to ``d`` (at ``td``), does ``x`` show it was
        a glitch?

        It does when ``x`` is back at the old level or above (within ``max_jitter``): a reset register
        would have had to count more than the old register's whole reading since ``td`` — and, with
        ``max_rate_per_h``, more than the rate allows (below it the decrease stays a reset: a nearly
        new register can climb past a small old reading) — or when ``d`` is more than a register reset
        to 0 after ``level`` could have counted by ``td``: then the low reading is the old register's,
        one bad reading below it (a flickering last digit), not a new register's."""
        if x < level - self.meter.max_jitter:
            return False
        limit = self._limit(td, t)
        if limit is None or x - d > limit:
            return True
        reach = None if level_ts is None else self._limit(level_ts, td)
        return reach is not None and d > reach

    def _book_drop(self, x: float, t: int) -> float:
        """A real decrease to ``x`` at ``t`` (confirmed): rollover or reset; returns the amount booked."""
        prev, t1 = self._last_value, self._last_ts
        assert prev is not None and t1 is not None
        limit = self._limit(t1, t)
        rollover = self.meter.rollover
        booked = 0.0
        wrap = None if rollover is None else rollover - prev + x
        if wrap is not None and 0 <= wrap < rollover * ROLLOVER_WINDOW and (limit is None or wrap <= limit):
            self.counts["rollover"] += 1
            booked = wrap
            self._spread(t1, t, wrap)
        elif limit is not None and x <= limit:
            self.counts["reset_counted"] += 1  # reset to 0 and counted up to x since
            booked = x
            self._spread(t1, t, x)
        else:
            # replaced by a meter with another reading, or no max_rate_per_h to judge: count nothing
            self.counts["reset_uncounted"] += 1
        self._last_value, self._last_ts = x, t
        return booked

    def _interval_reading(self, x: float, t: int) -> None:
        t1 = self._last_ts
        self._last_ts = t  # the next reading covers the time since this one, even if this one is rejected
        if t1 is None:
            self._lump(t, x)  # when its period began is unknown
            return
        limit = self._limit(t1, t)
        if limit is not None and x > limit:
            self.counts["implausible"] += 1
            return
        self._spread(t1, t, x)

    def _power(self, p: float, t: int) -> None:
        rate = self.meter.max_rate_per_h
        if rate is not None and p > rate:
            self.counts["implausible"] += 1
            return
        p1, t1 = self._last_value, self._last_ts
        self._last_value, self._last_ts = p, t
        if p1 is None or t1 is None:
            return
        if t - t1 > self._gap:
            self.counts["gap"] += 1  # energy across a gap is unknown: nothing is integrated
            return
        pieces = []
        span = t - t1
        for start, lo, hi in self._pieces(t1, t):
            p_lo = p1 + (p - p1) * (lo - t1) / span
            p_hi = p1 + (p - p1) * (hi - t1) / span
            pieces.append((start, (p_lo + p_hi) / 2 * (hi - lo) / NS_PER_HOUR, hi - lo))
        self._book(pieces, (p1 + p) / 2 * span / NS_PER_HOUR)

    # --- booking consumption into intervals ---------------------------------------------------------------

    def _bucket(self, t: int) -> int:
        return t - t % self._i

    def _pieces(self, t1: int, t2: int) -> list[tuple[int, int, int]]:
        """(interval start, lo, hi) for each interval [t1, t2) overlaps."""
        out = []
        start = self._bucket(t1)
        while start < t2:
            out.append((start, max(t1, start), min(t2, start + self._i)))
            start += self._i
        return out

    def _spread(self, t1: int, t2: int, amount: float) -> None:
        """Consumption measured between two readings: by time share, or a lump across a long gap."""
        if t2 - t1 > self._gap:
            self.counts["gap"] += 1
            self._lump(t2, amount)
            return
        span = t2 - t1
        pieces = [(start, amount * (hi - lo) / span, hi - lo) for start, lo, hi in self._pieces(t1, t2)]
        self._book(pieces, amount)

    def _book(self, pieces: list[tuple[int, float, int]], total: float) -> None:
        assert self._horizon is not None
        booked = 0.0
        for n, (start, share, duration) in enumerate(pieces):
            if n == len(pieces) - 1:
                share = max(total - booked, 0.0)  # the last piece takes the rounding: parts sum to the total
            booked += share
            if start < self._horizon:
                self.counts["late_data"] += 1
                self._lump(self._horizon, share)
            else:
                slot = self._open.setdefault(start, [0.0, 0, 0.0])
                slot[0] += share
                slot[1] += duration

    def _lump(self, t: int, amount: float) -> None:
        """Consumption whose time is unknown: into the interval holding t (its end), uncovered."""
        assert self._horizon is not None
        start = max(self._bucket(t - 1), self._horizon)
        slot = self._open.setdefault(start, [0.0, 0, 0.0])
        slot[0] += amount
        slot[2] += amount

    # --- emitting final intervals -------------------------------------------------------------------------

    def _emit(self) -> list[MeterInterval]:
        if self._horizon is None:
            return []
        until = self._horizon
        if self._last_ts is not None:
            until = max(until, self._bucket(self._last_ts))  # a later reading exists for everything before
        if self._clock is not None:
            until = max(until, self._bucket(self._clock - self._gap))  # nothing more can cover these
        n = (until - self._horizon) // self._i
        if n <= 0:
            return []
        if n > self._cap:
            starts = sorted(s for s in self._open if s < until)
            self.counts["skipped_intervals"] += n - len(starts)
        else:
            starts = list(range(self._horizon, until, self._i))
        out = [self._record(s, self._open.pop(s, [0.0, 0, 0.0])) for s in starts]
        self._horizon = until
        return out

    def _record(self, start: int, slot: list[Any]) -> MeterInterval:
        amount_native, covered, lump = slot
        m = self.meter
        return self._pricing.interval(
            m.id, m.carrier, start, start + self._i, amount_native, amount_native * self._to_canonical,
            min(int(covered), self._i), lump * self._to_canonical,
        )

    # --- persistence ------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "meter": self.meter.id,
            "kind": self.meter.kind,
            "interval_ns": self._i,
            "last_ts_ns": self._last_ts,
            "last_value": self._last_value,
            "candidate": None if self._candidate is None else list(self._candidate),
            "drop": None if self._drop is None else list(self._drop),
            "before_drop": None if self._before_drop is None else list(self._before_drop),
            "horizon_ns": self._horizon,
            "open": [[start, *slot] for start, slot in sorted(self._open.items())],
            "clock_ns": self._clock,
            "counts": dict(self.counts),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"meter snapshot version {snapshot.get('version')!r} is not {SNAPSHOT_VERSION}")
        if snapshot["meter"] != self.meter.id or snapshot["kind"] != self.meter.kind:
            raise ValueError(f"snapshot of meter {snapshot['meter']!r} ({snapshot['kind']}) does not fit "
                             f"meter {self.meter.id!r} ({self.meter.kind})")
        if snapshot["interval_ns"] != self._i:
            raise ValueError("the snapshot was taken with another interval length; it cannot be resumed")
        self._last_ts = snapshot["last_ts_ns"]
        self._last_value = snapshot["last_value"]
        cand = snapshot["candidate"]
        self._candidate = None if cand is None else (float(cand[0]), int(cand[1]))
        drop, before = snapshot.get("drop"), snapshot.get("before_drop")  # absent in older snapshots
        self._drop = None if drop is None else (float(drop[0]), int(drop[1]))
        self._before_drop = None if before is None else (  # the level's time: absent in older snapshots
            float(before[0]), float(before[1]), None if len(before) < 3 or before[2] is None else int(before[2]))
        self._horizon = snapshot["horizon_ns"]
        self._open = {int(s): [float(a), int(c), float(lump)] for s, a, c, lump in snapshot["open"]}
        self._clock = snapshot["clock_ns"]
        self.counts.update(snapshot["counts"])


class VirtualMeter:
    """A sum or difference of meters, per interval: Σ add − Σ subtract in the canonical unit.

    An interval is emitted when every part delivered it, or ``max_wait_s`` after its end with the
    parts that came (a missing part counts as 0 and uncovered). A part's interval that comes after
    that is counted (``late_parts``) and its consumption (subtracted ones: negative) goes, uncovered
    (``lump``), into the next interval emitted — like a meter's late data, never dropped; a late
    subtracted part lowers the following intervals down to 0 at most, and the rest waits for later
    ones. Coverage is the least coverage of the parts. A negative result while an added meter did not
    measure the whole interval (a gap: its consumption comes later, lumped) is subtracted from the
    following intervals, as a late subtracted part is (``deferred``): the total stays Σ add −
    Σ subtract. Otherwise a negative result (a sub-meter reading more than the main meter) is not a
    measurement: amount 0, coverage 0, ``clamped``; rounding noise below 1e-9 of the parts is just 0.
    """

    def __init__(
        self,
        config: VirtualMeterConfig,
        *,
        interval_s: int = 900,
        coefficients: CoefficientsConfig | None = None,
        timezone: str = "Asia/Shanghai",
    ) -> None:
        self.config = config
        self._i = interval_s * NS
        self._wait = round(config.max_wait_s * NS)
        self._sign = {m: 1.0 for m in config.add} | {m: -1.0 for m in config.subtract}
        self._pricing = _Pricing(coefficients, timezone)
        self._pending: dict[int, dict[str, MeterInterval]] = {}
        self._emitted_until: int | None = None  # starts before this were emitted
        self._late = 0.0  # consumption of late parts (canonical, signed), for the next intervals emitted
        self.counts: dict[str, int] = {"late_parts": 0, "clamped": 0, "deferred": 0, "missing_parts": 0}

    def add(self, interval: MeterInterval) -> list[MeterInterval]:
        """A part's interval (others are ignored); returns combined intervals now complete."""
        if interval.meter not in self._sign:
            return []
        if self._emitted_until is not None and interval.start_ns < self._emitted_until:
            # its interval was emitted without it: the consumption goes into the next one, uncovered
            self.counts["late_parts"] += 1
            self._late += self._sign[interval.meter] * interval.amount
            return []
        parts = self._pending.setdefault(interval.start_ns, {})
        parts.setdefault(interval.meter, interval)  # a redelivered interval counts once
        return self._emit(lambda start, parts: len(parts) == len(self._sign))

    def advance(self, now_ns: int) -> list[MeterInterval]:
        return self._emit(lambda start, parts: start + self._i + self._wait <= now_ns)

    def _emit(self, ready: Any) -> list[MeterInterval]:
        out = []
        # in order: a later interval waits for an earlier one, so intervals leave in sequence
        for start in sorted(self._pending):
            if not ready(start, self._pending[start]):
                break
            out.append(self._combine(start, self._pending.pop(start)))
            self._emitted_until = start + self._i
        return out

    def _combine(self, start: int, parts: dict[str, MeterInterval]) -> MeterInterval:
        amount = sum(self._sign[m] * iv.amount for m, iv in parts.items())
        lump = sum(self._sign[m] * iv.lump for m, iv in parts.items())
        covered = min((parts[m].covered_ns if m in parts else 0) for m in self._sign)
        if len(parts) < len(self._sign):
            self.counts["missing_parts"] += 1
        clamped = False
        if amount < 0:
            scale = sum(abs(iv.amount) for iv in parts.values())
            if amount >= -1e-9 * scale:
                pass  # rounding noise
            elif any(m not in parts or parts[m].covered_ns < self._i for m in self.config.add):
                # an added meter did not measure all of this interval (a gap: its consumption comes
                # later, lumped into the interval of its next reading): what is subtracted here is
                # subtracted from what follows, as a late subtracted part is, not dropped
                self.counts["deferred"] += 1
                self._late += amount
            else:
                self.counts["clamped"] += 1
                clamped, covered = True, 0
            amount, lump = 0.0, 0.0
        if self._late:
            # late parts' consumption, uncovered; a late subtracted part lowers this one down to 0 at
            # most, the rest waits for the next ones
            late = max(self._late, -amount)
            self._late -= late
            amount += late
            lump += late
        c = self.config
        return self._pricing.interval(c.id, c.carrier, start, start + self._i, amount, amount, covered,
                                      max(lump, 0.0), clamped)

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "virtual_meter": self.config.id,
            "emitted_until_ns": self._emitted_until,
            "late": self._late,
            "pending": [asdict(iv) for parts in self._pending.values() for iv in parts.values()],
            "counts": dict(self.counts),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        if snapshot.get("version") != SNAPSHOT_VERSION or snapshot["virtual_meter"] != self.config.id:
            raise ValueError(f"not a snapshot of virtual meter {self.config.id!r} (version {SNAPSHOT_VERSION})")
        self._emitted_until = snapshot["emitted_until_ns"]
        self._late = float(snapshot.get("late", 0.0))  # absent in snapshots of older agents
        self._pending = {}
        for d in snapshot["pending"]:
            iv = MeterInterval(**d)
            self._pending.setdefault(iv.start_ns, {})[iv.meter] = iv
        self.counts.update(snapshot["counts"])
