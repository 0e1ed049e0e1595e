"""The indicator engine: DESIGN §2 indicators per enterprise and period, and pooled groups. Pure.

Inputs are the two daily enterprise rollups (``enterprise_daily``, ``consumption_daily``, one row
per local day: periods cut on local days are local calendar periods) and the enterprise's reports
(``enterprise_report``; money in 10⁴ yuan 万元). Every result carries its numerator and denominator,
so any group of enterprises is pooled as Σ numerators ÷ Σ denominators (``pool``).

Never a number computed from silence: when the share of expected data present (``coverage``) is
below ``policy.min_coverage``, or a needed figure is missing, the value is None and the status
``insufficient_data``.

Coverage (docs/indicators.md states every rule):

- NC and networking rates: days with an ``enterprise_daily`` row ÷ days in the period, for the networking
  rate only the rows with networked counts (a day the agent was off for long has the ledger's counts
  alone); a period-end figure needs a day within ``period_end_within_days`` of the period's end (a
  networking one, its networked counts); an asset-value rate, the share of equipment with an original
  value;
- energy, water, wastewater: per carrier, Σ daily ``coverage`` ÷ the days it is expected on (a missing
  day counting 0; a carrier is expected where it exists, ``expected_windows``); the figure's is the
  smallest carrier's;
- reports: 1 when the period's figure is given or composed exactly (``_report_sum``), else the share
  of its months that reports give; intensities and productivity: the smaller of the two.

Baselines (``baseline_of``) and pooling (``pool``, ``PoolSums``) are one rule each, for enterprises and
groups alike.
"""

from __future__ import annotations

import calendar
import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Literal, TypeVar

from fmc.core.carriers import ENERGY_CARRIERS
from fmc.indicators.plan import INDICATORS, POINT_INDICATORS, Policy, Targets
from fmc.indicators.sums import CarrierSums, DailySums, PeriodSums, SumsWanted

Status = Literal["met", "missed", "insufficient_data", "no_target"]
BaselineSource = Literal["measured", "survey"]
_T = TypeVar("_T")
_EPS = 1e-9  # relative tolerance of comparisons with a target (0.96**4 is not exact in binary)


# --- periods ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """A calendar period of local days, ``start`` to ``end`` inclusive."""

    kind: Literal["month", "quarter", "year", "ytd"]
    start: date
    end: date

    # The constructors below are cached (``_period_of``): a province's figures name the same few periods
    # hundreds of thousands of times (each report, each year before and base year), and a period is immutable.

    @classmethod
    def of_year(cls, year: int) -> Period:
        return _period_of(cls, "year", year, 0)

    @classmethod
    def of_month(cls, year: int, month: int) -> Period:
        return _period_of(cls, "month", year, month)

    @classmethod
    def of_quarter(cls, year: int, quarter: int) -> Period:
        if not 1 <= quarter <= 4:
            raise ValueError(f"quarter {quarter}: use 1 to 4")
        return _period_of(cls, "quarter", year, quarter)

    @classmethod
    def year_to_date(cls, through: date) -> Period:
        if type(through) is not date:  # a datetime (a date subclass) stays what it was given
            return cls("ytd", date(through.year, 1, 1), through)
        return _period_of(cls, "ytd", through.year, through.toordinal())

    @property
    def year(self) -> int:
        return self.start.year

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def label(self) -> str:
        if self.kind == "year":
            return f"{self.year}"
        if self.kind == "month":
            return f"{self.year}-{self.start.month:02d}"
        if self.kind == "quarter":
            return f"{self.year}-Q{(self.start.month + 2) // 3}"
        return f"{self.year}-YTD-{self.end.month:02d}-{self.end.day:02d}"

    def in_year(self, year: int) -> Period:
        """The same period in another year. A year to date through a month's last day runs to that
        month's last day (1–2月累计: to 28 February in 2017, to 29 February in 2016, whichever way),
        as the statistics' 上年同期 does; any other day stays that day."""
        if self.kind == "year":
            return Period.of_year(year)
        if self.kind == "month":
            return Period.of_month(year, self.start.month)
        if self.kind == "quarter":
            return Period.of_quarter(year, (self.start.month + 2) // 3)
        month = self.end.month
        last = calendar.monthrange(year, month)[1]
        month_end = self.end.day == calendar.monthrange(self.end.year, month)[1]
        return Period.year_to_date(date(year, month, last if month_end else min(self.end.day, last)))

    def months(self) -> list[tuple[int, int]]:
        """(year, month) of the months the period touches."""
        out, d = [], self.start.replace(day=1)
        while d <= self.end:
            out.append((d.year, d.month))
            d = date(d.year + d.month // 12, d.month % 12 + 1, 1)
        return out

    def contains(self, day: date) -> bool:
        return self.start <= day <= self.end


@functools.lru_cache(maxsize=4096)
def _period_of(cls: type[Period], kind: str, year: int, n: int) -> Period:
    """A period by kind: ``n`` is the month, the quarter, or the ordinal of a year to date's last day."""
    if kind == "year":
        return cls("year", date(year, 1, 1), date(year, 12, 31))
    if kind == "month":
        return cls("month", date(year, n, 1), date(year, n, calendar.monthrange(year, n)[1]))
    if kind == "quarter":
        m = 3 * n
        return cls("quarter", date(year, m - 2, 1), date(year, m, calendar.monthrange(year, m)[1]))
    return cls("ytd", date(year, 1, 1), date.fromordinal(n))


@functools.lru_cache(maxsize=1024)
def _in_year(period: Period, year: int) -> Period:
    return period.in_year(year)


# --- inputs ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnterpriseDay:
    """One ``enterprise_daily`` row (a local day)."""

    day: date
    equipment_total: int
    equipment_nc: int
    asset_value_total: float = 0.0
    asset_value_nc: float = 0.0
    # None: not known, the agent had no data of the day (a ledger-only row, ``enterprise_daily_unobserved``)
    equipment_networked: int | None = 0
    nc_equipment_networked: int | None = 0
    equipment_valued: int | None = None  # equipment with an original value (原值); None: not carried


@dataclass(frozen=True, slots=True)
class ConsumptionDay:
    """One ``consumption_daily`` row (a local day, one carrier)."""

    day: date
    carrier: str
    amount: float
    tce: float | None = None
    m3: float | None = None
    coverage: float = 1.0


@dataclass(frozen=True, slots=True)
class Report:
    """One ``enterprise_report``: money in 10⁴ yuan (万元); a missing figure is None, not 0."""

    period: Period
    value_added: float | None = None
    value_added_comparable: float | None = None
    employees_avg: float | None = None
    revenue: float | None = None
    rd_expense: float | None = None
    gross_output: float | None = None
    new_product_output: float | None = None


@dataclass(frozen=True, slots=True)
class EnterpriseData:
    enterprise: str
    daily: Sequence[EnterpriseDay] = ()
    consumption: Sequence[ConsumptionDay] = ()
    reports: Sequence[Report] = ()
    # figures reported for the base year (surveys), used when the data cannot give the baseline
    baseline_values: Mapping[str, float] = field(default_factory=dict)
    # carriers expected for energy; None = the energy carriers seen in the data
    energy_carriers: frozenset[str] | None = None
    # sums a store computed, by (period start, period end); a period not here is summed from the rows
    sums: Mapping[tuple[date, date], PeriodSums] = field(default_factory=dict)
    # gateway id -> its last day in service, as the registry declares (``silent_carriers``)
    retired_gateways: Mapping[str, date] = field(default_factory=dict)
    # gateway id -> its first day in service, as the registry declares (``coverage_in_service``)
    commissioned_gateways: Mapping[str, date] = field(default_factory=dict)


# --- results ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measure:
    """numerator ÷ denominator × scale, with the coverage of the data behind it."""

    numerator: float | None
    denominator: float | None
    coverage: float
    scale: float = 1.0
    inputs: tuple[tuple[str, float], ...] = ()  # coverage of each input (a carrier, a report field, …)
    den_coverage: float | None = None  # coverage of the denominator alone (None: ``coverage``)

    def value(self, min_coverage: float) -> float | None:
        if self.numerator is None or self.denominator is None or self.coverage + _EPS < min_coverage:
            return None
        if self.denominator <= 0:
            return None
        return self.numerator / self.denominator * self.scale


@dataclass(frozen=True, slots=True)
class IndicatorResult:
    indicator: str
    period: Period
    value: float | None
    baseline: float | None
    target: float | None
    yoy: float | None  # e_t/e_{t-1} - 1; points for percentages
    avg_annual: float | None  # (e_n/e_0)^(1/n) - 1 since the base year; points a year for percentages
    coverage: float
    status: Status
    numerator: float | None = None
    denominator: float | None = None
    scale: float = 1.0
    previous: float | None = None
    # provenance, and what pooling the enterprise into a group needs (``pool``)
    enterprise: str | None = None
    baseline_source: BaselineSource | None = None  # "measured" (base-year data) or "survey" (registry)
    inputs: tuple[tuple[str, float], ...] = ()  # coverage of each input
    base_numerator: float | None = None  # the baseline's share of a pooled baseline (see ``baseline_of``)
    base_denominator: float | None = None
    prev_numerator: float | None = None  # the previous year's figure, as numerator and denominator
    prev_denominator: float | None = None
    size: float | None = None  # the enterprise's weight in a group's coverage (see ``member_size``)
    note: str | None = None  # a reason worth telling (e.g. why a survey baseline was not used)


def _slot_setter(cls: type[_T]) -> Callable[..., _T]:
    """A constructor of the frozen slots dataclass ``cls`` (its fields in order) that sets each slot directly: what
    its ``__init__`` does (the same defaults, no ``__post_init__``) at half the cost, which counts for the
    hundreds of thousands of measures and results of a province (a frozen ``__init__`` goes through
    ``object.__setattr__`` per field)."""
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__: construct it with its __init__")
    fields = dataclasses.fields(cls)
    ns: dict[str, object] = {"_new": object.__new__, "_cls": cls}
    params = []
    for f in fields:
        if f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name} has a default_factory: construct it with its __init__")
        ns[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            ns[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
    body = "".join(f"    _set_{f.name}(o, {f.name})\n" for f in fields)
    exec(f"def make({', '.join(params)}):\n    o = _new(_cls)\n{body}    return o\n", ns)
    return ns["make"]  # type: ignore[return-value]


_new_result = _slot_setter(IndicatorResult)  # called with positional arguments in the order of these fields:
_RESULT_FIELDS = ("indicator", "period", "value", "baseline", "target", "yoy", "avg_annual", "coverage", "status",
                  "numerator", "denominator", "scale", "previous", "enterprise", "baseline_source", "inputs",
                  "base_numerator", "base_denominator", "prev_numerator", "prev_denominator", "size", "note")
if tuple(f.name for f in dataclasses.fields(IndicatorResult)) != _RESULT_FIELDS:
    raise TypeError("IndicatorResult's fields changed: update _RESULT_FIELDS and _Enterprise.result")
_new_measure = _slot_setter(Measure)


@dataclass(frozen=True, slots=True)
class PoolSums:
    """What a group adds up over its members (``pool``): a sum, so pooling is order-free and a group of
    groups is the group of their members. Floats are summed with ``math.fsum`` over the members."""

    members: int = 0
    included: int = 0  # members with a figure (in num, den)
    num: float = 0.0
    den: float = 0.0
    base_num: float = 0.0  # baselines of the included members
    base_den: float = 0.0
    base_missing: int = 0  # included members without a baseline
    prev_num: float = 0.0  # the previous year of the included members
    prev_den: float = 0.0
    prev_missing: int = 0
    size_all: float = 0.0  # Σ sizes of the members whose size is known
    size_included: float = 0.0  # … of those of them with a figure
    assessed: int = 0
    met: int = 0
    measured: int = 0  # included members whose baseline is measured / from the survey
    survey: int = 0
    pooled: tuple[str, ...] = ()  # ids of the included members
    excluded: tuple[tuple[str, str], ...] = ()  # (id, why) of the members without a figure
    without_baseline: tuple[str, ...] = ()

    @staticmethod
    def total(parts: Sequence[PoolSums]) -> PoolSums:
        f = math.fsum
        return PoolSums(
            members=sum(p.members for p in parts),
            included=sum(p.included for p in parts),
            num=f(p.num for p in parts), den=f(p.den for p in parts),
            base_num=f(p.base_num for p in parts), base_den=f(p.base_den for p in parts),
            base_missing=sum(p.base_missing for p in parts),
            prev_num=f(p.prev_num for p in parts), prev_den=f(p.prev_den for p in parts),
            prev_missing=sum(p.prev_missing for p in parts),
            size_all=f(p.size_all for p in parts), size_included=f(p.size_included for p in parts),
            assessed=sum(p.assessed for p in parts), met=sum(p.met for p in parts),
            measured=sum(p.measured for p in parts), survey=sum(p.survey for p in parts),
            pooled=tuple(sorted(e for p in parts for e in p.pooled)),
            excluded=tuple(sorted(x for p in parts for x in p.excluded)),
            without_baseline=tuple(sorted(e for p in parts for e in p.without_baseline)),
        )


@dataclass(frozen=True, slots=True)
class PooledResult(IndicatorResult):
    members: int = 0
    included: int = 0  # members whose figure was sufficient (in the pooled sums)
    assessed: int = 0  # members with a status met or missed
    met_count: int = 0
    met_share: float | None = None  # met_count ÷ assessed
    population: str = "all"  # whom the group holds for this indicator (``Policy.populations``)
    pooled: tuple[str, ...] = ()  # the members in the value, baseline, previous year and target
    excluded: tuple[tuple[str, str], ...] = ()  # members without a figure, and why
    without_baseline: tuple[str, ...] = ()  # included members without a baseline (no target then)
    baseline_sources: tuple[tuple[str, int], ...] = ()  # ("measured", n), ("survey", m)
    sums: PoolSums | None = None  # what pooling this group into a wider one needs


# --- measures --------------------------------------------------------------------------------------------


def summarize(period: Period, daily: Iterable[EnterpriseDay], consumption: Iterable[ConsumptionDay]) -> PeriodSums:
    """The period's sums from daily rows: what a store computes in its query (``fmc.central.store``).
    A day delivered twice counts once (the last one wins, as in the stores)."""
    rows: dict[date, EnterpriseDay] = {}
    for r in daily:
        if period.contains(r.day):
            rows[r.day] = r
    sums = None
    if rows:
        last = rows[max(rows)]
        v = rows.values()
        sums = DailySums(
            days=len(rows),
            equipment_total=float(sum(r.equipment_total for r in v)),
            equipment_nc=float(sum(r.equipment_nc for r in v)),
            asset_value_total=math.fsum(r.asset_value_total for r in v),
            asset_value_nc=math.fsum(r.asset_value_nc for r in v),
            equipment_networked=float(sum(r.equipment_networked or 0 for r in v)),
            nc_equipment_networked=float(sum(r.nc_equipment_networked or 0 for r in v)),
            last_day=last.day,
            last_equipment_total=float(last.equipment_total),
            last_equipment_nc=float(last.equipment_nc),
            last_asset_value_total=last.asset_value_total,
            last_asset_value_nc=last.asset_value_nc,
            last_equipment_networked=_float_or_nan(last.equipment_networked),
            last_nc_equipment_networked=_float_or_nan(last.nc_equipment_networked),
            last_equipment_valued=_float_or_nan(last.equipment_valued),
            networked_days=float(sum(1 for r in v if r.nc_equipment_networked is not None)),
        )
    best: dict[tuple[date, str], ConsumptionDay] = {}
    for c in consumption:
        if period.contains(c.day):
            best[(c.day, c.carrier)] = c
    by_carrier: dict[str, list[ConsumptionDay]] = {}
    for (_, carrier), c in sorted(best.items()):
        by_carrier.setdefault(carrier, []).append(c)
    carriers = {
        carrier: CarrierSums(
            carrier=carrier,
            rows=len(cs),
            amount=math.fsum(c.amount for c in cs),
            tce=math.fsum(c.tce for c in cs if c.tce is not None),
            tce_rows=sum(1 for c in cs if c.tce is not None),
            m3=math.fsum(c.m3 for c in cs if c.m3 is not None),
            m3_rows=sum(1 for c in cs if c.m3 is not None),
            coverage=math.fsum(min(max(c.coverage, 0.0), 1.0) for c in cs),
            first_day=cs[0].day,
            last_day=cs[-1].day,
        )
        for carrier, cs in by_carrier.items()
    }
    return PeriodSums(sums, carriers)


def _float_or_nan(value: int | None) -> float:
    return math.nan if value is None else float(value)


def sums_wanted(policy: Policy) -> SumsWanted:
    """The sums the engine reads under ``policy`` (what a store need not compute otherwise)."""
    daily: set[str] = set()
    if policy.nc_rate_basis == "equipment_days":
        daily |= {"asset_value_nc", "asset_value_total"} if policy.nc_rate_weight == "asset_value" else {
            "equipment_nc", "equipment_total"}
    if policy.networking_basis == "equipment_days":
        if policy.networking_denominator == "all_equipment_days":
            daily |= {"equipment_networked", "equipment_total"}
        else:
            daily |= {"nc_equipment_networked", "equipment_nc"}
    return SumsWanted(frozenset(daily), amount=policy.electricity_basis == "equal",
                      last_networked=policy.networking_basis == "period_end",
                      valued=policy.nc_rate_weight == "asset_value")


def period_sums(period: Period, data: EnterpriseData) -> PeriodSums:
    """The sums the store gave for the period, else those of the daily rows."""
    given = data.sums.get((period.start, period.end))
    if given is not None:
        return given
    return summarize(period, data.daily, data.consumption)


def _rate_measure(indicator: str, period: Period, sums: DailySums | None, targets: Targets) -> Measure:
    policy = targets.policy
    # each rate's coverage counts the days that have its inputs: the NC rate's are the ledger's counts,
    # in every row; the networking rate's the networked counts, which a day the agent was off for longer
    # than it catches up lacks (a ledger-only row)
    days = sums.days if sums is not None else 0
    if indicator == "networking_rate" and sums is not None and not math.isnan(sums.networked_days):
        days = sums.networked_days
    if sums is None or days <= 0:
        return _new_measure(numerator=None, denominator=None, coverage=0.0, scale=100.0,
                            inputs=(("enterprise_daily", 0.0),))
    coverage = min(days / period.days, 1.0)
    inputs: tuple[tuple[str, float], ...] = (("enterprise_daily", coverage),)
    period_end = policy.nc_rate_basis == "period_end" if indicator == "nc_rate" else (
        policy.networking_basis == "period_end")
    unknown_end = indicator == "networking_rate" and (
        math.isnan(sums.last_equipment_networked) or math.isnan(sums.last_nc_equipment_networked))
    if period_end and ((period.end - sums.last_day).days > policy.period_end_within_days or unknown_end):
        # no day near the period's end (or, for the networking rate, no networked counts on it): no
        # period-end figure, whatever day came last
        return _new_measure(numerator=None, denominator=None, coverage=0.0, scale=100.0,
                            inputs=(*inputs, ("period_end", 0.0)))

    def rate(num: float, den: float, cov: float = coverage, extra: tuple[tuple[str, float], ...] = ()) -> Measure:
        return _new_measure(numerator=num, denominator=den, coverage=cov, scale=100.0,
                            inputs=(*inputs, *extra))

    if indicator == "nc_rate":
        if policy.nc_rate_weight == "asset_value":
            # a blank 原值 is 0 in the rollup's sums: the share of the equipment with one (in the ledger on the
            # last day with data) is the weighting's coverage; a rollup that does not say weighs nothing
            valued = 0.0 if math.isnan(sums.last_equipment_valued) else sums.last_equipment_valued
            share = min(valued / sums.last_equipment_total, 1.0) if sums.last_equipment_total > 0 else 1.0
            extra = (("asset_value", share),)
            if period_end:
                return rate(sums.last_asset_value_nc, sums.last_asset_value_total, min(coverage, share), extra)
            return rate(sums.asset_value_nc, sums.asset_value_total, min(coverage, share), extra)
        if period_end:
            return rate(sums.last_equipment_nc, sums.last_equipment_total)
        return rate(sums.equipment_nc, sums.equipment_total)
    if policy.networking_denominator == "all_equipment_days":
        if period_end:
            return rate(sums.last_equipment_networked, sums.last_equipment_total)
        return rate(sums.equipment_networked, sums.equipment_total)
    if period_end:
        return rate(sums.last_nc_equipment_networked, sums.last_equipment_nc)
    return rate(sums.nc_equipment_networked, sums.equipment_nc)


def _carrier_sum(
    period: Period, sums: Mapping[str, CarrierSums], expected: Mapping[str, int], targets: Targets, field_: str
) -> tuple[float | None, float, tuple[tuple[str, float], ...]]:
    """(Σ tce or m³ of the expected carriers over the period, coverage, coverage per carrier).

    ``expected``: carrier -> the days of the period it is expected on. Each carrier's coverage is Σ
    of its daily coverage ÷ its expected days (a missing day counts 0); the figure's is the smallest:
    a carrier that misses a month leaves the sum short by that month whatever the others did."""
    if not expected:
        return None, 0.0, ()
    total = 0.0
    per_carrier: list[tuple[str, float]] = []
    present = False  # a carrier with rows (no generators here: a province runs this 60,000 times)
    for carrier in sorted(expected):
        days = expected[carrier]
        c = sums.get(carrier)
        if c is None or c.rows <= 0:
            per_carrier.append((carrier, 0.0))
            continue
        present = True
        per_carrier.append((carrier, min(min(max(c.coverage, 0.0), float(c.rows)) / days, 1.0) if days > 0 else 1.0))
        if field_ == "tce":
            kgce = targets.policy.electricity_kgce(period.year) if carrier == "electricity" else None
            if carrier == "electricity" and targets.policy.electricity_basis == "equal" and kgce is None:
                return None, 0.0, tuple(per_carrier)  # no equal value for that year yet: not the equivalent value
            if kgce is not None:
                total += c.amount * kgce / 1000.0
            elif c.tce_rows == c.rows:
                total += c.tce
            else:
                return None, 0.0, tuple(per_carrier)  # an energy carrier without tce: not zero energy
        elif c.m3_rows == c.rows:
            total += c.m3
        elif c.m3_rows == 0 and not math.isnan(c.amount):
            total += c.amount  # water carriers are metered in m³
        else:
            # no m³ field and Σ amount not read, or some days in m³ and some not: never a number from silence
            return None, 0.0, tuple(per_carrier)
    coverage = min([cov for _, cov in per_carrier])
    return (total if present else None), coverage, tuple(per_carrier)


def carrier_spans(data: EnterpriseData) -> dict[str, tuple[date, date]]:
    """carrier -> (first day, last day) with a row, over all the rows and period sums ``data`` holds
    (the service gives the sums of the period, the year before and the base year)."""
    spans: dict[str, tuple[date, date]] = {}
    for r in data.consumption:
        known = spans.get(r.carrier)
        spans[r.carrier] = (r.day, r.day) if known is None else (min(known[0], r.day), max(known[1], r.day))
    for (start, end), ps in data.sums.items():
        for carrier, c in ps.carriers.items():
            if c.rows > 0:
                first, last = c.first_day or start, c.last_day or end
                known = spans.get(carrier)
                spans[carrier] = (first, last) if known is None else (min(known[0], first), max(known[1], last))
    return spans


def _carriers_last_gateways(data: EnterpriseData) -> tuple[dict[str, tuple[date, set[str]]], dict[str, date]]:
    """(carrier -> its last day and the gateways with a row on it, gateway -> its last day with any row), over
    the period sums ``data`` holds; a carrier with a later row of unknown gateway (``data.consumption``)
    is left out: it is not known to have gone silent."""
    last: dict[str, tuple[date, set[str]]] = {}
    gateway_last: dict[str, date] = {}
    for ps in data.sums.values():
        for gateway, day in ps.gateway_last_days.items():
            known = gateway_last.get(gateway)
            if known is None or day > known:
                gateway_last[gateway] = day
        for carrier, c in ps.carriers.items():
            if c.rows <= 0 or c.last_day is None or not c.last_gateways:
                continue
            got = last.get(carrier)
            if got is None or c.last_day > got[0]:
                last[carrier] = (c.last_day, set(c.last_gateways))
            elif c.last_day == got[0]:
                got[1].update(c.last_gateways)
    for r in data.consumption:
        got = last.get(r.carrier)
        if got is not None and r.day > got[0]:
            del last[r.carrier]
    return last, gateway_last


def silent_carriers(data: EnterpriseData) -> frozenset[str]:
    """The carriers whose gateway went silent with them: no gateway that wrote a carrier's last row wrote
    any row (``enterprise_daily``, another carrier) after it, in the period sums ``data`` holds, and the
    registry does not say it was retired (``data.retired_gateways``). Such a carrier was not taken out of
    a configuration (the agent writes a row for every configured meter every day): its gateway's data
    stopped, a dead gateway. Rows without gateways (``data.consumption``, sums that do not say) make no
    carrier silent."""
    last, gateway_last = _carriers_last_gateways(data)
    retired = data.retired_gateways
    return frozenset(c for c, (day, gateways) in last.items()
                     if any(g not in retired and gateway_last.get(g, day) <= day for g in gateways))


def retired_carrier_ends(data: EnterpriseData) -> dict[str, date]:
    """carrier -> the day it ended where every gateway that wrote its last row went silent with it and is
    declared retired (the registry's ``retired_gateways``: 煤改气's boiler house pulled down with the coal):
    the latest of those gateways' last days in service when later than the carrier's last row (the gateway
    died before it was retired: the days between count as missing), else that row's day."""
    retired = data.retired_gateways
    if not retired:  # most enterprises: nothing declared
        return {}
    last, gateway_last = _carriers_last_gateways(data)
    out: dict[str, date] = {}
    for c, (day, gateways) in last.items():
        silent = [g for g in gateways if gateway_last.get(g, day) <= day]
        if silent and len(silent) == len(gateways) and all(g in retired for g in silent):
            out[c] = max(day, *(retired[g] for g in silent))
    return out


def coverage_in_service(
    period: Period, carriers: Mapping[str, CarrierSums], retired: Mapping[str, date],
    commissioned: Mapping[str, date] | None = None,
) -> Mapping[str, CarrierSums]:
    """``carriers`` with the coverage of those that several gateways measure weighed by each gateway's days
    in service, where the registry declares one retired (``retired``: gateway -> its last day in service)
    or commissioned (``commissioned``: its first day) within the period. Without it a hall retired on
    30 September beside a hall that goes on leaves the electricity (366 + 274) ÷ 2 covered, 0.87 of the
    year, and a hall opened on 1 July (366 + 184) ÷ 2; each gateway-day in service counts once instead:
    Σ coverage × the period's days ÷ Σ the gateways' days in service (never fewer than the days a
    gateway covered: rows outside its declared service count). The same carriers when none applies."""
    commissioned = commissioned or {}

    def bounded(g: str) -> bool:
        return (g in retired and retired[g] < period.end) or (g in commissioned and commissioned[g] > period.start)

    out: dict[str, CarrierSums] | None = None
    for name, c in carriers.items():
        if not c.gateway_coverage or not any(bounded(g) for g, _ in c.gateway_coverage):
            continue
        in_service = 0.0
        for g, covered in c.gateway_coverage:
            first = max(period.start, commissioned.get(g, period.start))
            last = min(period.end, retired.get(g, period.end))
            in_service += max(float(max((last - first).days + 1, 0)), covered)
        if in_service <= 0:
            continue
        if out is None:
            out = dict(carriers)
        total = math.fsum(covered for _, covered in c.gateway_coverage)
        out[name] = replace(c, coverage=total * period.days / in_service)
    return carriers if out is None else out


def expected_windows(
    spans: Mapping[str, tuple[date, date]], silent: Iterable[str] = ()
) -> dict[str, tuple[date | None, date | None]]:
    """carrier -> (expected from, expected to), None meaning open (docs/indicators.md, "Expected carriers").

    A carrier is expected from its first day with a row when another of the carriers had rows before
    it (a carrier added: gas from 2019), and to its last day when another had rows after it (a carrier
    removed: the coal meter) — unless it is one of ``silent`` (``silent_carriers``: the gateway that
    measured it wrote nothing after it, a gateway dead, not a meter removed). When the carriers start or
    stop together, the enterprise's data did, not its carriers: they stay expected, and the silence
    counts as missing."""
    quiet = frozenset(silent)
    out: dict[str, tuple[date | None, date | None]] = {}
    for c, (first, last) in spans.items():
        started = ended = False
        for other, (f, la) in spans.items():
            if other != c:
                started = started or f < first
                ended = ended or la > last
        out[c] = (first if started else None, last if ended and c not in quiet else None)
    return out


def expected_days(period: Period, window: tuple[date | None, date | None]) -> int:
    lo = max(period.start, window[0] or period.start)
    hi = min(period.end, window[1] or period.end)
    return max((hi - lo).days + 1, 0)


def _report_figure(r: Report, name: str, targets: Targets) -> float | None:
    """A report's figure of a field (``_report_sum``)."""
    if name == "value_added" and targets.policy.value_added_prices == "comparable":
        # the reported comparable figure, else current ÷ the year's deflator (the base year's prices are
        # the comparable ones); never current prices silently
        if r.value_added_comparable is not None:
            return r.value_added_comparable
        index = 1.0 if r.period.year == targets.base_year else targets.policy.deflator.get(r.period.year)
        if index is not None and r.value_added is not None:
            return r.value_added / index
        return None
    return getattr(r, name)


def _report_sum(period: Period, reports: Sequence[Report], name: str, targets: Targets) -> tuple[float | None, float]:
    """(a report figure for the period, coverage), per field (docs/indicators.md, "Reports"):

    1. the figure of a report for exactly the period;
    2. else composed from the **fewest** reports of the period's year that make it up exactly, as flows
       over months — adding reports that follow each other (the months of a quarter, Q1 + Q2) and
       taking one from another that contains it (1–6月累计 − 1–3月累计 = Q2; the year − Q1–Q3 = Q4).
       Employees: the average over the months (person-months ÷ months);
    3. else None (a sum with a month missing would be understated), coverage the share of the
       period's months that reports inside it give.
    A period that does not end on a month's last day has report figures only from a report for exactly it.
    """
    for r in reports:
        if r.period.start == period.start and r.period.end == period.end:
            v = _report_figure(r, name, targets)
            if v is not None:  # per field: a figure the report leaves empty comes from the others
                return v, 1.0
    first, last = period.start.month, period.end.month
    month_end = calendar.monthrange(period.end.year, last)[1]
    # edges between month boundaries (k = after month k) of the period's year: (from, to, flow)
    edges: list[tuple[int, int, float]] = []
    covered: set[int] = set()
    for r in reports:
        rp = r.period
        if rp.year != period.year or rp.start.day != 1 or rp.end.day != calendar.monthrange(rp.year,
                                                                                             rp.end.month)[1]:
            continue
        v = _report_figure(r, name, targets)
        if v is None:
            continue
        a, b = rp.start.month - 1, rp.end.month
        flow = v * (b - a) if name == "employees_avg" else v  # employees: person-months
        edges.append((a, b, flow))
        if first - 1 <= a and b <= last:
            covered.update(range(a + 1, b + 1))
    coverage = len(covered) / (last - first + 1)
    if period.end.day != month_end or period.start.day != 1:
        return None, coverage
    total = _compose(first - 1, last, edges)
    if total is None:
        return None, coverage
    if total < 0:
        return None, coverage  # reports that contradict each other (a revision): no figure from them
    months = last - first + 1
    return (total / months if name == "employees_avg" else total), 1.0


def _compose(start: int, end: int, edges: Sequence[tuple[int, int, float]]) -> float | None:
    """Σ of the flow from month boundary ``start`` to ``end`` along the fewest edges (an edge walked
    backwards counts negative); ties go to the longer reports first; None when no path exists."""
    ordered = sorted(edges, key=lambda e: (-(e[1] - e[0]), e[0]))
    best: dict[int, float] = {start: 0.0}
    frontier = [start]
    while frontier and end not in best:
        reached: list[int] = []
        for node in frontier:
            for a, b, flow in ordered:
                for here, there, sign in ((a, b, 1.0), (b, a, -1.0)):
                    if here == node and there not in best:
                        best[there] = best[node] + sign * flow
                        reached.append(there)
        frontier = reached
    total = best.get(end)
    return None if total is None else (0.0 if abs(total) < 1e-9 else total)


def measure(indicator: str, period: Period, data: EnterpriseData, targets: Targets) -> Measure:
    """Numerator, denominator and coverage of one indicator of one enterprise for one period."""
    return _Enterprise(data, targets).at(period).measure(indicator)


class _Enterprise:
    """One enterprise under one plan while its figures are computed: what every period and indicator of
    it shares, worked out once (the plan's rules, the years its reports cover, its energy carriers'
    windows) instead of once per indicator and period — a province computes 20,000 of these."""

    __slots__ = ("_windows", "data", "report_years", "rules", "targets")

    def __init__(self, data: EnterpriseData, targets: Targets) -> None:
        self.data = data
        self.targets = targets
        self.rules = _rules(targets)
        self.report_years = frozenset(r.period.year for r in data.reports)  # every period asks
        self._windows: dict[str, tuple[date | None, date | None]] | None = None

    def at(self, period: Period) -> _At:
        return _At(self, period)

    def energy_carriers(self, period: Period) -> dict[str, int]:
        """The energy carriers expected in the period, with the days each is expected on."""
        data = self.data
        if data.energy_carriers is not None:
            return {c: period.days for c in data.energy_carriers}
        if self._windows is None:  # from all the data the enterprise holds: the same for each period
            spans = {c: span for c, span in carrier_spans(data).items() if c in ENERGY_CARRIERS}
            for c, end in retired_carrier_ends(data).items():  # it existed until its gateway was retired
                if c in spans:
                    spans[c] = (spans[c][0], max(spans[c][1], end))
            windows = expected_windows(spans)
            # only a carrier that ended can have gone silent instead: most enterprises have none, and a
            # province's 20,000 need not walk their sums for it
            if any(w[1] is not None for w in windows.values()):
                silent = silent_carriers(data)
                if silent:
                    windows = expected_windows(spans, silent)
            self._windows = windows
        expected = {c: expected_days(period, w) for c, w in self._windows.items()}
        return {c: n for c, n in expected.items() if n > 0}

    def result(
        self, indicator: str, now: _At, before: _At, base: _At, whole_year: bool, rule: _Rule
    ) -> IndicatorResult:
        """``compute``: the indicator's result from its measures now, a year before and in the base year
        (``rule``: the plan's for the indicator in the period's year)."""
        m = now.measure(indicator)
        mp = _NO_MEASURE if before.empty else before.measure(indicator)
        mb = m if base is now else _NO_MEASURE if base.empty else base.measure(indicator)
        min_cov = self.rules.min_coverage
        previous = mp.value(min_cov)
        measured = mb.value(min_cov)
        b = _baseline(indicator, whole_year, m, mb, measured, self.data, self.rules)
        baseline = b.value
        value = m.value(min_cov)
        # 0 ÷ 0 over complete data (no NC machines for the networking rate): no figure of its own, but known
        # to add nothing to a group's sums (``pool_sums``), so it carries its 0 and 0
        empty = value is None and _empty(m, min_cov)
        prev_empty = previous is None and _empty(mp, min_cov)
        target = rule.target(baseline)
        coverage = m.coverage
        if coverage == 1.0:  # most figures: one shared float rather than one each (the same bits)
            coverage = 1.0
        # member_size, from the values worked out already
        sized = mp if previous is not None else mb if measured is not None else None
        return _new_result(  # positional, in the order of _RESULT_FIELDS (a third cheaper than keywords)
            indicator,
            now.period,
            value,
            baseline,
            target,
            None if previous is None or value is None else yoy_change(indicator, value, previous),  # yoy
            # avg_annual
            None if baseline is None or value is None else avg_annual_change(indicator, value, baseline, rule.years),
            coverage,
            rule.status(value, target, previous),  # status
            m.numerator if value is not None or empty else None,  # numerator
            m.denominator if value is not None or empty else None,  # denominator
            m.scale,
            previous,
            self.data.enterprise,
            b.source,  # baseline_source
            _interned(m.inputs),  # inputs
            b.numerator,  # base_numerator
            b.denominator,  # base_denominator
            mp.numerator if previous is not None or prev_empty else None,  # prev_numerator
            mp.denominator if previous is not None or prev_empty else None,  # prev_denominator
            None if sized is None else sized.numerator if indicator == "energy" else sized.denominator,  # size
            _empty_note(indicator) if empty else b.note,
        )

    def periods(self, period: Period) -> tuple[_At, _At, _At]:
        """The period, the same period a year before and in the base year."""
        now = _At(self, period)
        before = _At(self, _in_year(period, period.year - 1))
        base_year = self.rules.base_year
        base = now if period.year == base_year else _At(self, _in_year(period, base_year))
        return now, before, base


def _empty(m: Measure, min_coverage: float) -> bool:
    """Whether ``m`` is 0 ÷ 0 over data complete enough for a figure: nothing to measure (a member without NC
    machines has no networking rate), not data missing."""
    return m.numerator == 0 and m.denominator == 0 and m.coverage + _EPS >= min_coverage


_EMPTY_NOTES = {
    "nc_rate": "no in-scope equipment in the period (0 ÷ 0): no NC rate; it adds nothing to a group's sums",
    "networking_rate": "no NC equipment in the period (0 ÷ 0; over all equipment: no equipment): no networking "
                       "rate; it adds nothing to a group's sums",
}


def _empty_note(indicator: str) -> str:
    return _EMPTY_NOTES.get(indicator, "0 ÷ 0 over complete data: no figure; it adds nothing to a group's sums")


_NO_SUMS = PeriodSums(None, {})  # a period without rows (what ``summarize`` gives for none)
# What every indicator measures in a period without data and reports (``_At.empty``), as far as a result
# reads it of the year before or the base year: no numerator, so no value, and no denominator.
_NO_MEASURE = Measure(None, None, 0.0)


class _At:
    """One enterprise in one period: its sums, and the report and energy figures several indicators share."""

    __slots__ = ("_energy", "_exact", "_reports", "e", "empty", "period", "sums")

    def __init__(self, e: _Enterprise, period: Period) -> None:
        self.e = e
        self.period = period
        data = e.data
        given = data.sums.get((period.start, period.end))
        if given is None:
            given = _NO_SUMS if not data.daily and not data.consumption else summarize(period, data.daily,
                                                                                         data.consumption)
        if (data.retired_gateways or data.commissioned_gateways) and given.carriers:
            carriers = coverage_in_service(period, given.carriers, data.retired_gateways, data.commissioned_gateways)
            if carriers is not given.carriers:
                given = replace(given, carriers=carriers)
        self.sums = given
        # no sums and no report of the year (often the year before and the base year): every indicator's
        # numerator is None (no daily rows, no carrier rows, no report figure)
        self.empty = given.daily is None and not given.carriers and period.year not in e.report_years
        self._reports: dict[str, tuple[float | None, float]] = {}
        self._energy: tuple[float | None, float, tuple[tuple[str, float], ...]] | None = None
        self._exact: list[Report] | None = None

    def report(self, name: str) -> tuple[float | None, float]:
        """``_report_sum`` of a field (value added serves four indicators)."""
        got = self._reports.get(name)
        if got is None:
            period = self.period
            if period.year not in self.e.report_years:
                # no report of the period's year: no figure, and none of its months given (what
                # _report_sum finds, without walking the reports)
                got = None, 0 / (period.end.month - period.start.month + 1)
            else:
                if self._exact is None:  # the reports for exactly the period, in their order
                    self._exact = [r for r in self.e.data.reports
                                   if r.period.start == period.start and r.period.end == period.end]
                plain = name != "value_added" or not self.e.rules.comparable
                for r in self._exact:  # step 1 of _report_sum, without walking every report per field
                    v = getattr(r, name) if plain else _report_figure(r, name, self.e.targets)
                    if v is not None:
                        got = v, 1.0
                        break
                else:
                    got = _report_sum(period, self.e.data.reports, name, self.e.targets)
            self._reports[name] = got
        return got

    def energy(self) -> tuple[float | None, float, tuple[tuple[str, float], ...]]:
        if self._energy is None:  # energy and energy intensity: the same sum
            self._energy = _carrier_sum(self.period, self.sums.carriers, self.e.energy_carriers(self.period),
                                        self.e.targets, "tce")
        return self._energy

    def measure(self, indicator: str) -> Measure:
        """Numerator, denominator and coverage of one indicator (``measure``)."""
        period, targets = self.period, self.e.targets
        if indicator in ("nc_rate", "networking_rate"):
            return _rate_measure(indicator, period, self.sums.daily, targets)
        if indicator in ("rd_intensity", "new_product_ratio"):
            num_name, den_name = (
                ("rd_expense", "revenue") if indicator == "rd_intensity" else ("new_product_output", "gross_output")
            )
            n, cn = self.report(num_name)
            d, cd = self.report(den_name)
            return _new_measure(numerator=n, denominator=d, coverage=min(cn, cd), scale=100.0,
                                inputs=((num_name, cn), (den_name, cd)), den_coverage=cd)
        if indicator == "labour_productivity":
            n, cn = self.report("value_added")
            d, cd = self.report("employees_avg")
            return _new_measure(numerator=n, denominator=d, coverage=min(cn, cd),
                                inputs=(("value_added", cn), ("employees_avg", cd)), den_coverage=cd)
        if indicator in ("energy", "energy_intensity"):
            n, cn, inputs = self.energy()
        elif indicator == "water_intensity":
            n, cn, inputs = _carrier_sum(period, self.sums.carriers, {"water_intake": period.days}, targets, "m3")
        elif indicator == "wastewater_intensity":
            n, cn, inputs = _carrier_sum(period, self.sums.carriers, {"wastewater": period.days}, targets, "m3")
        else:
            raise ValueError(f"unknown indicator {indicator!r}")
        if indicator == "energy":
            return _new_measure(numerator=n, denominator=1.0, coverage=cn, inputs=inputs)
        d, cd = self.report("value_added")
        return _new_measure(numerator=n, denominator=d, coverage=min(cn, cd),
                            inputs=(*inputs, ("value_added", cd)), den_coverage=cd)


# Equal ``inputs`` tuples, one object: a province's results carry a few hundred distinct ones, not
# 180,000. Bounded (cleared when full); a tuple with a -0.0 is never merged with one with 0.0 (they are
# equal, but not the same bits).
_INPUTS: dict[tuple[tuple[str, float], ...], tuple[tuple[tuple[str, float], ...], bool]] = {}
_INPUTS_MAX = 4096


def _interned(inputs: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
    hit = _INPUTS.get(inputs)
    if hit is None:
        if not all(c != 0.0 or math.copysign(1.0, c) > 0 for _, c in inputs):
            return inputs
        if len(_INPUTS) >= _INPUTS_MAX:
            _INPUTS.clear()
        _INPUTS[inputs] = (inputs, any(c == 0.0 for _, c in inputs))
        return inputs
    canonical, has_zero = hit
    if has_zero and not all(c != 0.0 or math.copysign(1.0, c) > 0 for _, c in inputs):
        return inputs
    return canonical


# --- changes, targets, status ----------------------------------------------------------------------------


def yoy_change(indicator: str, value: float | None, previous: float | None) -> float | None:
    """``e_t/e_{t-1} - 1``; for percentages the difference in points."""
    if value is None or previous is None:
        return None
    if indicator in POINT_INDICATORS:
        return value - previous
    return value / previous - 1.0 if previous > 0 else None


def avg_annual_change(indicator: str, value: float | None, baseline: float | None, years: int) -> float | None:
    """``(e_n/e_0)^(1/n) - 1`` over n years; for percentages ``(e_n - e_0)/n`` points a year."""
    if value is None or baseline is None or years <= 0:
        return None
    if indicator in POINT_INDICATORS:
        return (value - baseline) / years
    if baseline <= 0 or value < 0:
        return None
    return (value / baseline) ** (1.0 / years) - 1.0


def status_of(
    indicator: str, targets: Targets, year: int, value: float | None, target: float | None, previous: float | None
) -> Status:
    """met / missed against the target (or, with ``status_basis = "year_on_year"``, against last year's
    value and the plan's yearly step), insufficient_data without a value or what it is measured against,
    no_target outside the plan."""
    return _rules(targets).rule(indicator, year).status(value, target, previous)


class _Rule:
    """``Targets.target_for`` (the same arithmetic, so the same bits: ``tests/test_indicators.py`` holds it
    to it) and ``status_of`` for one indicator and year, with what they read of the plan looked up once."""

    __slots__ = ("active", "cap", "factor", "higher_is_better", "kind", "points", "status_basis", "step", "years")

    def __init__(self, targets: Targets, indicator: str, year: int) -> None:
        t = targets.indicators.get(indicator)  # type: ignore[call-overload]
        self.active = t is not None and targets.applies(indicator, year)
        self.years = year - targets.base_year  # since the base year (avg_annual_change)
        self.kind = self.status_basis = ""
        self.step = self.points = self.factor = 0.0
        self.cap: float | None = None
        self.higher_is_better = False
        if t is not None:
            n = year - targets.base_year
            self.kind, self.step, self.cap, self.status_basis = t.kind, t.step, t.cap, t.status_basis
            self.higher_is_better = t.higher_is_better
            if self.active and t.kind == "points_per_year":
                self.points = t.step * n  # baseline + step·n
            elif self.active and t.kind == "rate_per_year":
                self.factor = (1.0 + t.step) ** n  # baseline·(1 + step)^n

    def target(self, baseline: float | None) -> float | None:
        """``Targets.target_for``."""
        if not self.active:
            return None
        if self.kind == "floor":
            return self.step
        if baseline is None:
            return None
        if self.kind == "points_per_year":
            v = baseline + self.points
            return min(v, self.cap) if self.cap is not None else v
        return baseline * self.factor

    def status(self, value: float | None, target: float | None, previous: float | None) -> Status:
        """``status_of`` (its one implementation)."""
        if value is None:
            return "insufficient_data"
        if not self.active:
            return "no_target"
        if self.status_basis == "year_on_year":
            if previous is None:
                return "insufficient_data"
            if self.kind == "points_per_year":
                cap = self.cap if self.cap is not None else float("inf")
                ok = value - previous >= self.step - _EPS or value >= cap - _EPS
            else:
                required = previous * (1.0 + self.step)
                ok = value <= required * (1 + _EPS) if not self.higher_is_better else value >= required * (1 - _EPS)
            return "met" if ok else "missed"
        if target is None:
            return "insufficient_data"
        if self.higher_is_better:
            return "met" if value >= target - _EPS * max(1.0, abs(target)) else "missed"
        return "met" if value <= target + _EPS * max(1.0, abs(target)) else "missed"


class _Rules:
    """What a plan decides for the engine, read once per plan rather than once per enterprise."""

    __slots__ = ("_by_year", "_targets", "base_year", "basis", "comparable", "min_coverage")

    def __init__(self, targets: Targets) -> None:
        policy = targets.policy
        self.min_coverage = policy.min_coverage
        self.base_year = targets.base_year
        self.basis = {"nc_rate": policy.nc_rate_basis, "networking_rate": policy.networking_basis}
        self.comparable = policy.value_added_prices == "comparable"  # _report_figure
        self._by_year: dict[int, dict[str, _Rule]] = {}
        self._targets = targets

    def year(self, year: int) -> dict[str, _Rule]:
        """indicator -> its rule in ``year``."""
        rules = self._by_year.get(year)
        if rules is None:
            rules = self._by_year[year] = {name: _Rule(self._targets, name, year) for name in INDICATORS}
        return rules

    def rule(self, indicator: str, year: int) -> _Rule:
        got = self.year(year).get(indicator)
        return _Rule(self._targets, indicator, year) if got is None else got


_RULES: dict[int, tuple[Targets, _Rules]] = {}  # id -> (the plan, kept so that its id is not reused, its rules)


def _rules(targets: Targets) -> _Rules:
    got = _RULES.get(id(targets))
    if got is not None and got[0] is targets:
        return got[1]
    if len(_RULES) >= 16:
        _RULES.clear()
    rules = _Rules(targets)
    _RULES[id(targets)] = (targets, rules)
    return rules


def _assemble(
    indicator: str,
    period: Period,
    m: Measure,
    targets: Targets,
    previous: float | None,
    baseline: float | None,
) -> IndicatorResult:
    value = m.value(targets.policy.min_coverage)
    target = targets.target_for(indicator, period.year, baseline)
    return IndicatorResult(
        indicator=indicator,
        period=period,
        value=value,
        baseline=baseline,
        target=target,
        yoy=yoy_change(indicator, value, previous),
        avg_annual=avg_annual_change(indicator, value, baseline, period.year - targets.base_year),
        coverage=m.coverage,
        status=status_of(indicator, targets, period.year, value, target, previous),
        numerator=m.numerator if value is not None else None,
        denominator=m.denominator if value is not None else None,
        scale=m.scale,
        previous=previous,
        inputs=m.inputs,
    )


# --- baselines: one rule for enterprises and groups -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Baseline:
    """An enterprise's baseline for an indicator and period: its value, where it came from, and its
    share of a group's pooled baseline (``numerator`` ÷ ``denominator``)."""

    value: float | None
    source: BaselineSource | None = None
    numerator: float | None = None
    denominator: float | None = None
    note: str | None = None  # why there is none, when that needs saying


def baseline_of(
    indicator: str, period: Period, current: Measure, base: Measure, data: EnterpriseData, targets: Targets
) -> Baseline:
    """The one place the baseline is decided (docs/indicators.md, "Baselines").

    - **measured**: the same period of the base year computed from the data (sufficient coverage);
      in a group it weighs with its own base-year numerator and denominator.
    - else **survey**: the figure reported for the base year (``data.baseline_values``, the
      registry), for a whole calendar year only (a survey gives annual figures). A survey gives a
      rate, not its parts: in a group it weighs with the enterprise's base-year denominator where the
      data has it (value added or employees reported for the base year), else with its denominator
      in the period itself.
    - else none: no target on a path from it.
    """
    rules = _rules(targets)
    return _baseline(indicator, _whole_year(period), current, base, base.value(rules.min_coverage), data, rules)


_NO_BASELINE = Baseline(None)
_EMPTY_BASELINE = Baseline(None, None, 0.0, 0.0)  # a base year of 0 ÷ 0 over complete data
_SURVEY_NOTES: dict[str, str] = {}  # indicator -> the note (one string, not one per enterprise)


def _baseline(
    indicator: str, whole_year: bool, current: Measure, base: Measure, measured: float | None, data: EnterpriseData,
    rules: _Rules,
) -> Baseline:
    """``baseline_of``, given whether the period is a whole calendar year, the base measure's value
    (``measured``) and the plan's rules."""
    min_cov = rules.min_coverage
    if measured is not None:
        return Baseline(measured, "measured", base.numerator, base.denominator)
    # the base year measured 0 ÷ 0 (no NC machines then): no baseline of its own, but its share of a group's
    # is known, 0 ÷ 0, where nothing else gives one
    empty = _empty(base, min_cov)
    survey = data.baseline_values.get(indicator)
    if survey is None or not whole_year or indicator == "energy":
        return _EMPTY_BASELINE if empty else _NO_BASELINE
    basis = rules.basis.get(indicator)
    if basis == "equipment_days":
        # the survey's rate is a year-end figure (年末数): not comparable with one over equipment-days
        note = _SURVEY_NOTES.get(indicator)
        if note is None:
            note = _SURVEY_NOTES.setdefault(indicator, f"the survey's {indicator} is a year-end figure; the value "
                                            "is over equipment-days (policy: period_end to compare them)")
        return Baseline(None, None, 0.0, 0.0, note) if empty else Baseline(None, note=note)
    weight = 0.0 if empty else None
    den_cov = base.coverage if base.den_coverage is None else base.den_coverage
    if base.denominator is not None and base.denominator > 0 and den_cov + _EPS >= min_cov:
        weight = base.denominator
    elif current.denominator is not None and current.denominator > 0:
        weight = current.denominator
    if weight is None:
        return Baseline(survey, "survey")
    return Baseline(survey, "survey", survey * weight / current.scale, weight)


def _whole_year(period: Period) -> bool:
    return period.start == date(period.year, 1, 1) and period.end == date(period.year, 12, 31)


def member_size(indicator: str, previous: Measure, base: Measure, min_coverage: float) -> float | None:
    """An enterprise's weight in a group's coverage: what it added to the group's denominator (its
    energy, for ``energy``) in the same period a year before, else in the base year; None when neither
    is known. Known sizes let a silent large member lower a group's coverage more than a small one."""
    for m in (previous, base):
        if m.value(min_coverage) is not None:
            return m.numerator if indicator == "energy" else m.denominator
    return None


def compute(indicator: str, period: Period, data: EnterpriseData, targets: Targets) -> IndicatorResult:
    """One indicator of one enterprise for one period, against the plan (baseline: ``baseline_of``)."""
    e = _Enterprise(data, targets)
    return e.result(indicator, *e.periods(period), _whole_year(period), e.rules.rule(indicator, period.year))


def compute_all(period: Period, data: EnterpriseData, targets: Targets) -> dict[str, IndicatorResult]:
    e = _Enterprise(data, targets)
    now, before, base = e.periods(period)
    whole_year = _whole_year(period)
    rules = e.rules.year(period.year)
    return {name: e.result(name, now, before, base, whole_year, rules[name]) for name in INDICATORS}


# --- pooling ---------------------------------------------------------------------------------------------


def _adds_up(r: IndicatorResult) -> bool:
    """Whether a member's numerator and denominator go into a group's sums: it has a figure, or its complete
    data is 0 ÷ 0 (no NC machines: ``_Enterprise.result`` gives it its 0 and 0), which is pooled and adds
    nothing. A member without a figure is one whose data is missing (or whose ratio has no meaning)."""
    return r.numerator is not None and r.denominator is not None and (
        r.value is not None or (r.numerator == 0 and r.denominator == 0))


def member_sums(r: IndicatorResult) -> PoolSums:
    """One member's part of a group's sums (a pooled result: its own sums; else ``pool_sums`` of it alone,
    the one place the rule for a member is written)."""
    if isinstance(r, PooledResult) and r.sums is not None:
        return r.sums
    return pool_sums([r])


def pool_sums(results: Sequence[IndicatorResult]) -> PoolSums:
    """``PoolSums.total`` of the members' ``member_sums``, without a ``PoolSums`` per member: the same
    values summed in the same order, so the same bits (a county of thousands is pooled per indicator and
    level; a pooled member brings its own sums, and then the parts are added up as they are)."""
    if any(isinstance(r, PooledResult) and r.sums is not None for r in results):
        return PoolSums.total([member_sums(r) for r in results])
    num: list[float] = []
    den: list[float] = []
    base_num: list[float] = []
    base_den: list[float] = []
    prev_num: list[float] = []
    prev_den: list[float] = []
    size_all: list[float] = []
    size_included: list[float] = []
    pooled: list[str] = []
    excluded: list[tuple[str, str]] = []
    without_baseline: list[str] = []
    included = base_missing = prev_missing = assessed = met = measured = survey = 0
    for r in results:
        who = r.enterprise or ""
        size = r.size if r.size is not None and r.size > 0 else None
        if not _adds_up(r):
            # member_sums: members=1, size_all, excluded; every other sum 0
            num.append(0.0)
            den.append(0.0)
            base_num.append(0.0)
            base_den.append(0.0)
            prev_num.append(0.0)
            prev_den.append(0.0)
            size_all.append(size or 0.0)
            size_included.append(0.0)
            excluded.append((who, "insufficient_data"))
            continue
        included += 1
        num.append(r.numerator)
        den.append(r.denominator)
        if r.base_numerator is not None and r.base_denominator is not None:
            base_num.append(r.base_numerator)
            base_den.append(r.base_denominator)
            if r.baseline_source == "measured":
                measured += 1
            elif r.baseline_source == "survey":
                survey += 1
        else:
            base_num.append(0.0)
            base_den.append(0.0)
            base_missing += 1
            without_baseline.append(who)
        if r.prev_numerator is not None and r.prev_denominator is not None:
            prev_num.append(r.prev_numerator)
            prev_den.append(r.prev_denominator)
        else:
            prev_num.append(0.0)
            prev_den.append(0.0)
            prev_missing += 1
        size_all.append(size or 0.0)
        size_included.append(size or 0.0)
        if r.status == "met":
            assessed += 1
            met += 1
        elif r.status == "missed":
            assessed += 1
        pooled.append(who)
    f = math.fsum
    return PoolSums(
        members=len(results), included=included, num=f(num), den=f(den), base_num=f(base_num),
        base_den=f(base_den), base_missing=base_missing, prev_num=f(prev_num), prev_den=f(prev_den),
        prev_missing=prev_missing, size_all=f(size_all), size_included=f(size_included), assessed=assessed,
        met=met, measured=measured, survey=survey, pooled=tuple(sorted(pooled)), excluded=tuple(sorted(excluded)),
        without_baseline=tuple(sorted(without_baseline)),
    )


def _ratio(num: float, den: float, scale: float, total: bool) -> float | None:
    if total:
        return num
    return num / den * scale if den > 0 else None


def pooled_result(
    indicator: str, period: Period, s: PoolSums, targets: Targets, *, scale: float, population: str = "all"
) -> PooledResult:
    """A group's result from its sums (docs/indicators.md, "Pooling").

    The value is Σ numerators ÷ Σ denominators of the members with a figure (energy: Σ tce), when
    they are at least ``min_coverage`` of the members (``coverage``). The baseline and the previous
    year are pooled over exactly those members; one of them without a baseline (previous year) leaves
    the group without a baseline (previous year), hence without a target (change): never a
    comparison between different sets of enterprises."""
    total = indicator == "energy"
    by_count = s.included / s.members if s.members else 0.0
    by_size = s.size_included / s.size_all if s.size_all > 0 else 1.0  # no size known: by count only
    coverage = min(by_count, by_size)
    m = Measure(s.num if s.included else None, (1.0 if total else s.den) if s.included else None, coverage, scale,
                inputs=(("members", by_count), ("size", by_size)))
    value = m.value(targets.policy.min_coverage)
    baseline = previous = None
    if value is not None:
        if period.year == targets.base_year:
            baseline = value
        elif s.base_missing == 0:
            baseline = _ratio(s.base_num, s.base_den, scale, total)
        if s.prev_missing == 0:
            previous = _ratio(s.prev_num, s.prev_den, scale, total)
    base = _assemble(indicator, period, m, targets, previous, baseline)
    sources = tuple((k, n) for k, n in (("measured", s.measured), ("survey", s.survey)) if n)
    return PooledResult(
        **{f: getattr(base, f) for f in IndicatorResult.__dataclass_fields__},
        members=s.members,
        included=s.included,
        assessed=s.assessed,
        met_count=s.met,
        met_share=s.met / s.assessed if s.assessed else None,
        population=population,
        pooled=s.pooled,
        excluded=s.excluded,
        without_baseline=s.without_baseline,
        baseline_sources=sources,
        sums=s,
    )


def pool(
    results: Sequence[IndicatorResult],
    targets: Targets,
    *,
    baseline_results: Sequence[IndicatorResult] | None = None,
    previous_results: Sequence[IndicatorResult] | None = None,
    population: str = "all",
) -> PooledResult:
    """A group of enterprises (a county, a city, an industry) for one indicator and period.

    ``results``: the members' results (or groups' pooled results: a group of groups is the group of
    their members). Each member brings its own baseline and previous year (``compute``);
    ``baseline_results`` / ``previous_results``, when given, are each member's results for the same
    period of the base year / the year before, in the order of ``results``, and replace them.
    met_share is the share of the members with a status met or missed that met their own target.
    """
    if not results:
        raise ValueError("pool() needs at least one member result")
    indicator, period = results[0].indicator, results[0].period
    for r in results:
        if r.indicator != indicator or r.period != period:
            raise ValueError("pool() takes results of one indicator and one period")
    members = list(results)
    if (baseline_results is not None or previous_results is not None) and any(
            isinstance(r, PooledResult) for r in members):
        # a group's pooled sums already hold its members' base and previous years: replacing them is
        # not possible from one result per group, and silently ignoring them would mislead
        raise ValueError("baseline_results and previous_results replace enterprises' years, not a group's")
    for given, num, den in ((baseline_results, "base_numerator", "base_denominator"),
                            (previous_results, "prev_numerator", "prev_denominator")):
        if given is None:
            continue
        if len(given) != len(members):
            raise ValueError("baseline_results and previous_results pair with results, one each")
        members = [
            dataclasses.replace(r, **{num: g.numerator if _adds_up(g) else None,
                                      den: g.denominator if _adds_up(g) else None},
                                **({"baseline_source": "measured"} if num == "base_numerator" else {}))
            for r, g in zip(members, given, strict=True)
        ]
    s = PoolSums.total([member_sums(r) for r in members])
    return pooled_result(indicator, period, s, targets, scale=results[0].scale, population=population)
