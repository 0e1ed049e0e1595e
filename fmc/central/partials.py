"""The pieces a store's ``period_sums`` is made of, per gateway, and how they add up. Pure.

A store first reads, for a range of local days, each gateway's sums and last row of
``enterprise_daily``, each gateway's sums of ``consumption_daily`` per carrier, each carrier's first
and last day on each gateway, and each enterprise's count of local days, all of them and those with
networked counts (``Partials``); ``period_sums`` is then
``merge`` of those. Partials of disjoint ranges ``combine`` into the partials of their union exactly
(sums add, the later last row wins, spans widen, days add), which is what lets the central service's
sums cache (``fmc.central.sums_cache``) keep one entry per month and answer a year from twelve.

Gateway keys are the ``gateway`` tag as stored: a row without the tag is ``""`` and is gateway
``main`` only when merged (two groups, "" and "main", still count as two gateways for the day count).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date

from fmc.core.config import DEFAULT_GATEWAY
from fmc.core.localtime import local_date
from fmc.indicators.sums import (
    DAILY_SUM_FIELDS,
    LAST_DAY_FIELDS,
    CarrierSums,
    DailySums,
    PeriodSums,
    SumsWanted,
)

MS = 1_000_000  # ns per ms: times are kept in ms, as InfluxDB answers with epoch=ms
# the last row's fields, in this order: the stocks, the networked counts, the valued equipment
LAST_FIELDS = (*LAST_DAY_FIELDS, "equipment_networked", "nc_equipment_networked", "equipment_valued")
# a carrier's sums, in this order
CARRIER_FIELDS = ("n_rows", "amount", "tce", "tce_rows", "m3", "m3_rows", "coverage")


@dataclass(frozen=True, slots=True)
class LastRow:
    """A gateway's last ``enterprise_daily`` row in the range: its time (ms) and ``LAST_FIELDS``
    (NaN where the row lacks the field)."""

    time_ms: int
    values: tuple[float, ...]


@dataclass(slots=True)
class Partials:
    """``period_sums`` of a range of days before the gateways are merged.

    - ``daily[(enterprise, gateway)]``: [rows with equipment_total, Σ each of DAILY_SUM_FIELDS];
    - ``last[(enterprise, gateway)]``: the gateway's last row;
    - ``days[enterprise]``: local days with a row of any gateway;
    - ``networked_days[enterprise]``: local days with a row with the networked counts, of any gateway;
    - ``spans[(enterprise, carrier, gateway)]``: the carrier's first and last local day on the gateway;
    - ``carriers[(enterprise, carrier, gateway)]``: Σ of CARRIER_FIELDS.
    """

    daily: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    last: dict[tuple[str, str], LastRow] = field(default_factory=dict)
    days: dict[str, int] = field(default_factory=dict)
    spans: dict[tuple[str, str, str], tuple[date, date]] = field(default_factory=dict)
    carriers: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    networked_days: dict[str, int] = field(default_factory=dict)

    def only(self, enterprises: set[str]) -> Partials:
        """The partials of these enterprises only."""
        return Partials(
            {k: v for k, v in self.daily.items() if k[0] in enterprises},
            {k: v for k, v in self.last.items() if k[0] in enterprises},
            {k: v for k, v in self.days.items() if k in enterprises},
            {k: v for k, v in self.spans.items() if k[0] in enterprises},
            {k: v for k, v in self.carriers.items() if k[0] in enterprises},
            {k: v for k, v in self.networked_days.items() if k in enterprises},
        )


def combine(parts: Iterable[Partials]) -> Partials:
    """The partials of the union of disjoint ranges."""
    out = Partials()
    for p in parts:
        for key, sums in p.daily.items():
            got = out.daily.get(key)
            out.daily[key] = list(sums) if got is None else [a + b for a, b in zip(got, sums, strict=True)]
        for key, row in p.last.items():
            known = out.last.get(key)
            if known is None or row.time_ms > known.time_ms:
                out.last[key] = row
        for enterprise, n in p.days.items():
            out.days[enterprise] = out.days.get(enterprise, 0) + n
        for enterprise, n in p.networked_days.items():
            out.networked_days[enterprise] = out.networked_days.get(enterprise, 0) + n
        for key, (first, last) in p.spans.items():
            span = out.spans.get(key)
            out.spans[key] = (first, last) if span is None else (min(span[0], first), max(span[1], last))
        for key, sums in p.carriers.items():
            got = out.carriers.get(key)
            out.carriers[key] = list(sums) if got is None else [a + b for a, b in zip(got, sums, strict=True)]
    return out


def _nan_sum(values: Iterable[float]) -> float:
    """Σ as the store's sum(): a missing field adds nothing (0 when none has it)."""
    return math.fsum(0.0 if math.isnan(v) else v for v in values)


def _zero_nan(v: float) -> float:
    return 0.0 if math.isnan(v) else v


def merge(p: Partials, wanted: SumsWanted, tz: object) -> dict[str, PeriodSums]:
    """``period_sums`` of the partials (``tz``: the store's ZoneInfo, for the last day's local date).

    An enterprise with several gateways is the sum of its gateways: Σ of every row, the local days
    of any gateway, the last day's stocks Σ over gateways of each one's last row, a carrier's
    coverage ÷ the gateways that measure it, each gateway's last day with a row (docs/design.md §4). An
    enterprise with one gateway (most) takes a shorter way to the same numbers: a province is 20,000 of
    them."""
    rows_of: dict[str, list[float]] = {}
    for (enterprise, _), sums in p.daily.items():
        got = rows_of.get(enterprise)
        rows_of[enterprise] = sums if got is None else [a + b for a, b in zip(got, sums, strict=True)]
    lasts: dict[str, dict[str, LastRow]] = {}
    for (enterprise, gateway), row in sorted(p.last.items()):
        gateways = lasts.setdefault(enterprise, {})
        name = gateway or DEFAULT_GATEWAY  # a row without the tag is gateway "main"'s: the later one wins
        known = gateways.get(name)
        if known is None or row.time_ms > known.time_ms:
            gateways[name] = row
    daily: dict[str, DailySums] = {}
    n_last = len(LAST_DAY_FIELDS)
    nan = math.nan
    daily_wanted = [f in wanted.daily for f in DAILY_SUM_FIELDS]
    local_days: dict[int, date] = {}  # most enterprises share their last day: one conversion each
    for enterprise, gateways in lasts.items():
        sums = rows_of.get(enterprise)
        days = p.days.get(enterprise, 0)
        if sums is None or not sums[0] or not days:
            continue
        rows = list(gateways.values())
        if len(rows) == 1:
            values = [_zero_nan(v) for v in rows[0].values]
            valued_value = rows[0].values[-1]
            last_ms = rows[0].time_ms
        else:
            values = [_nan_sum(r.values[i] for r in rows) for i in range(len(LAST_FIELDS))]
            valued = [r.values[-1] for r in rows if not math.isnan(r.values[-1])]
            valued_value = math.fsum(valued) if valued else nan
            last_ms = max(r.time_ms for r in rows)
        # a last row without the networked counts (a ledger-only day) leaves them unknown, never 0
        for i in (n_last, n_last + 1):
            if any(math.isnan(r.values[i]) for r in rows):
                values[i] = nan
        last_day = local_days.get(last_ms)
        if last_day is None:
            last_day = local_days[last_ms] = local_date(last_ms * MS, tz)  # type: ignore[arg-type]
        daily[enterprise] = DailySums(
            days,
            *[sums[1 + i] if w else nan for i, w in enumerate(daily_wanted)],
            last_day,
            *values[:n_last],
            last_equipment_networked=values[n_last] if wanted.last_networked else nan,
            last_nc_equipment_networked=values[n_last + 1] if wanted.last_networked else nan,
            last_equipment_valued=valued_value if wanted.valued else nan,
            networked_days=float(p.networked_days.get(enterprise, 0)),
        )
    # each gateway's last day with a row, enterprise_daily or a carrier's (a carrier removed from a gateway
    # that went on writing, versus a gateway gone silent: engine.silent_carriers)
    gateway_last: dict[str, dict[str, date]] = {}
    for enterprise, gateways in lasts.items():
        for name, row in gateways.items():
            last_day = local_days.get(row.time_ms)
            if last_day is None:
                last_day = local_days[row.time_ms] = local_date(row.time_ms * MS, tz)  # type: ignore[arg-type]
            gateway_last.setdefault(enterprise, {})[name] = last_day
    # (enterprise, carrier) -> its first and last day over its gateways, the gateways with a row on the last
    span_of: dict[tuple[str, str], tuple[date, date, tuple[str, ...]]] = {}
    one_name: dict[str, tuple[str, ...]] = {}  # most carriers of a province: ("main",), one tuple for all
    for (enterprise, carrier, gateway), (first, last) in p.spans.items():
        name = gateway or DEFAULT_GATEWAY
        days = gateway_last.get(enterprise)
        if days is None:
            gateway_last[enterprise] = {name: last}
        elif name not in days or last > days[name]:
            days[name] = last
        key = (enterprise, carrier)
        got = span_of.get(key)
        if got is None:
            names = one_name.get(name)
            if names is None:
                names = one_name[name] = (name,)
            span_of[key] = (first, last, names)
        else:  # a carrier of several gateways (or of "" and "main"): the earliest first, the latest last
            names = (name,) if last > got[1] else tuple(sorted({*got[2], name})) if last == got[1] else got[2]
            span_of[key] = (min(first, got[0]), max(last, got[1]), names)

    parts: dict[tuple[str, str], dict[str, list[float]]] = {}
    for (enterprise, carrier, gateway), sums in p.carriers.items():
        if not sums[0]:
            continue
        by_gateway = parts.setdefault((enterprise, carrier), {})
        name = gateway or DEFAULT_GATEWAY
        got = by_gateway.get(name)
        by_gateway[name] = sums if got is None else [a + b for a, b in zip(got, sums, strict=True)]
    carriers: dict[str, dict[str, CarrierSums]] = {}
    for (enterprise, carrier), by_gateway in sorted(parts.items()):
        each: tuple[tuple[str, float], ...] = ()
        if len(by_gateway) == 1:
            [(n_rows, amount, tce, tce_rows, m3, m3_rows, coverage)] = by_gateway.values()
        else:
            n_rows, amount, tce, tce_rows, m3, m3_rows, coverage = (
                math.fsum(g[i] for g in by_gateway.values()) for i in range(7)
            )
            each = tuple(sorted((name, g[6]) for name, g in by_gateway.items()))
        span = span_of.get((enterprise, carrier))
        # Σ amounts over gateways; coverage: Σ of the daily coverages ÷ the gateways that measure
        # the carrier (a day one of two gateways missed is half covered, never 1 + 0 = "whole");
        # the carrier's first and last day: the earliest and the latest over its gateways
        carriers.setdefault(enterprise, {})[carrier] = CarrierSums(
            carrier, int(n_rows), amount if wanted.amount else nan, tce, int(tce_rows),
            m3, int(m3_rows), coverage / len(by_gateway),
            *(span if span is not None else (None, None, ())), each,
        )
    # one gateway with the same last day is most of a province: one mapping for all of them (read only),
    # not 20,000 dicts of one entry per period held by the service's figures
    one_gateway: dict[tuple[str, date], dict[str, date]] = {}
    for e, days in gateway_last.items():
        if len(days) == 1:
            [(name, day)] = days.items()
            gateway_last[e] = one_gateway.setdefault((name, day), days)
    return {e: PeriodSums(daily.get(e), carriers.get(e, {}), gateway_last.get(e, {}))
            for e in sorted(daily.keys() | carriers.keys())}


def as_partials(sums: Mapping[str, float | None], names: Iterable[str]) -> list[float]:
    """The numbers ``names`` of one answer row (None or missing: 0, as the store's sum of nothing)."""
    return [float(v) if isinstance(v := sums.get(n), int | float) and not isinstance(v, bool) else 0.0
            for n in names]
