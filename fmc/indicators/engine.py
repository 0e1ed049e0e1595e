"""The indicator engine: DESIGN §2 indicators per enterprise and period, and pooled groups. Pure.

Inputs are the two daily enterprise rollups (``enterprise_daily``, ``consumption_daily``, one row
per local day: periods cut on local days are local calendar periods) and the enterprise's reports
(``enterprise_report``; money in 10⁴ yuan 万元). Every result carries its numerator and denominator,
so any group of enterprises is pooled as Σ numerators ÷ Σ denominators (``pool``).

Never a number computed from silence: when the share of expected data present (``coverage``) is
below ``policy.min_coverage``, or a needed figure is missing, the value is None and the status
``insufficient_data``.

Coverage:

- NC and networking rates: days with an ``enterprise_daily`` row ÷ days in the period;
- energy, water, wastewater: Σ daily ``coverage`` of the carriers ÷ (days × carriers), a missing
  day counting 0 (the carriers are those the caller names, else those seen in its data);
- reports: share of the period's months reported (a report for exactly the period counts as all);
  a sum over months needs every month;
- intensities and productivity: the smaller of the two.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from fmc.core.carriers import ENERGY_CARRIERS
from fmc.indicators.plan import INDICATORS, POINT_INDICATORS, Policy, Targets
from fmc.indicators.sums import CarrierSums, DailySums, PeriodSums, SumsWanted

Status = Literal["met", "missed", "insufficient_data", "no_target"]
_EPS = 1e-9  # relative tolerance of comparisons with a target (0.96**4 is not exact in binary)


# --- periods ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """A calendar period of local days, ``start`` to ``end`` inclusive."""

    kind: Literal["month", "quarter", "year", "ytd"]
    start: date
    end: date

    @classmethod
    def of_year(cls, year: int) -> Period:
        return cls("year", date(year, 1, 1), date(year, 12, 31))

    @classmethod
    def of_month(cls, year: int, month: int) -> Period:
        return cls("month", date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1]))

    @classmethod
    def of_quarter(cls, year: int, quarter: int) -> Period:
        if not 1 <= quarter <= 4:
            raise ValueError(f"quarter {quarter}: use 1 to 4")
        m = 3 * quarter
        return cls("quarter", date(year, m - 2, 1), date(year, m, calendar.monthrange(year, m)[1]))

    @classmethod
    def year_to_date(cls, through: date) -> Period:
        return cls("ytd", date(through.year, 1, 1), through)

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
        """The same period in another year (year to 29 February -> 28 February)."""
        if self.kind == "year":
            return Period.of_year(year)
        if self.kind == "month":
            return Period.of_month(year, self.start.month)
        if self.kind == "quarter":
            return Period.of_quarter(year, (self.start.month + 2) // 3)
        last = calendar.monthrange(year, self.end.month)[1]
        return Period.year_to_date(date(year, self.end.month, min(self.end.day, last)))

    def months(self) -> list[tuple[int, int]]:
        """(year, month) of the months the period touches."""
        out, d = [], self.start.replace(day=1)
        while d <= self.end:
            out.append((d.year, d.month))
            d = date(d.year + d.month // 12, d.month % 12 + 1, 1)
        return out

    def contains(self, day: date) -> bool:
        return self.start <= day <= self.end


# --- inputs ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnterpriseDay:
    """One ``enterprise_daily`` row (a local day)."""

    day: date
    equipment_total: int
    equipment_nc: int
    asset_value_total: float = 0.0
    asset_value_nc: float = 0.0
    equipment_networked: int = 0
    nc_equipment_networked: int = 0


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


# --- results ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measure:
    """numerator ÷ denominator × scale, with the coverage of the data behind it."""

    numerator: float | None
    denominator: float | None
    coverage: float
    scale: float = 1.0

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


@dataclass(frozen=True, slots=True)
class PooledResult(IndicatorResult):
    members: int = 0
    included: int = 0  # members whose figure was sufficient (in the pooled sums)
    assessed: int = 0  # members with a status met or missed
    met_count: int = 0
    met_share: float | None = None  # met_count ÷ assessed


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
            equipment_networked=float(sum(r.equipment_networked for r in v)),
            nc_equipment_networked=float(sum(r.nc_equipment_networked for r in v)),
            last_day=last.day,
            last_equipment_total=float(last.equipment_total),
            last_equipment_nc=float(last.equipment_nc),
            last_asset_value_total=last.asset_value_total,
            last_asset_value_nc=last.asset_value_nc,
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
        )
        for carrier, cs in by_carrier.items()
    }
    return PeriodSums(sums, carriers)


def sums_wanted(policy: Policy) -> SumsWanted:
    """The sums the engine reads under ``policy`` (what a store need not compute otherwise)."""
    daily: set[str] = set()
    if policy.nc_rate_basis == "equipment_days":
        daily |= {"asset_value_nc", "asset_value_total"} if policy.nc_rate_weight == "asset_value" else {
            "equipment_nc", "equipment_total"}
    if policy.networking_denominator == "all_equipment_days":
        daily |= {"equipment_networked", "equipment_total"}
    else:
        daily |= {"nc_equipment_networked", "equipment_nc"}
    return SumsWanted(frozenset(daily), amount=policy.electricity_basis == "equal")


def period_sums(period: Period, data: EnterpriseData) -> PeriodSums:
    """The sums the store gave for the period, else those of the daily rows."""
    given = data.sums.get((period.start, period.end))
    if given is not None:
        return given
    return summarize(period, data.daily, data.consumption)


def _rate_measure(indicator: str, period: Period, sums: DailySums | None, targets: Targets) -> Measure:
    policy = targets.policy
    if sums is None or sums.days <= 0:
        return Measure(None, None, 0.0, 100.0)
    coverage = min(sums.days / period.days, 1.0)
    if indicator == "nc_rate":
        asset = policy.nc_rate_weight == "asset_value"
        if policy.nc_rate_basis == "period_end":
            if asset:
                return Measure(sums.last_asset_value_nc, sums.last_asset_value_total, coverage, 100.0)
            return Measure(sums.last_equipment_nc, sums.last_equipment_total, coverage, 100.0)
        if asset:
            return Measure(sums.asset_value_nc, sums.asset_value_total, coverage, 100.0)
        return Measure(sums.equipment_nc, sums.equipment_total, coverage, 100.0)
    if policy.networking_denominator == "all_equipment_days":
        return Measure(sums.equipment_networked, sums.equipment_total, coverage, 100.0)
    return Measure(sums.nc_equipment_networked, sums.equipment_nc, coverage, 100.0)


def _carrier_sum(
    period: Period, sums: Mapping[str, CarrierSums], carriers: frozenset[str], targets: Targets, field_: str
) -> tuple[float | None, float]:
    """(Σ tce or m³ of the carriers over the period, coverage)."""
    if not carriers:
        return None, 0.0
    total = 0.0
    covered = 0.0
    present = False
    for carrier in sorted(carriers):
        c = sums.get(carrier)
        if c is None or c.rows <= 0:
            continue
        present = True
        covered += min(max(c.coverage, 0.0), float(c.rows))
        if field_ == "tce":
            kgce = targets.policy.electricity_kgce(period.year) if carrier == "electricity" else None
            if carrier == "electricity" and targets.policy.electricity_basis == "equal" and kgce is None:
                return None, 0.0  # no equal value for that year yet: not the equivalent value silently
            if kgce is not None:
                total += c.amount * kgce / 1000.0
            elif c.tce_rows == c.rows:
                total += c.tce
            else:
                return None, 0.0  # an energy carrier without tce: not zero energy
        elif c.m3_rows == c.rows:
            total += c.m3
        elif c.m3_rows == 0 and not math.isnan(c.amount):
            total += c.amount  # water carriers are metered in m³
        elif c.m3_rows == 0:
            return None, 0.0  # no m³ field and Σ amount not read: never a number from silence
        else:
            return None, 0.0  # some days in m³ and some not: no sum to trust
    coverage = min(covered / (period.days * len(carriers)), 1.0)
    return (total if present else None), coverage


def _energy_carriers(data: EnterpriseData, sums: PeriodSums) -> frozenset[str]:
    if data.energy_carriers is not None:
        return data.energy_carriers
    seen = {r.carrier for r in data.consumption} | set(sums.carriers)
    for s in data.sums.values():
        seen.update(s.carriers)
    return frozenset(c for c in seen if c in ENERGY_CARRIERS)


def _report_sum(period: Period, reports: Sequence[Report], name: str, targets: Targets) -> tuple[float | None, float]:
    """(a report figure for the period, coverage): a report for exactly the period, else its months."""

    def figure(r: Report) -> float | None:
        if name == "value_added":
            if targets.policy.value_added_prices == "comparable":
                if r.value_added_comparable is not None:
                    return r.value_added_comparable
                index = targets.policy.deflator.get(r.period.year)
                if index is not None and r.value_added is not None:
                    return r.value_added / index
            return r.value_added
        return getattr(r, name)

    for r in reports:
        if r.period.start == period.start and r.period.end == period.end:
            v = figure(r)
            return v, (1.0 if v is not None else 0.0)
    wanted = period.months()
    monthly: dict[tuple[int, int], float] = {}
    for r in reports:
        if r.period.kind == "month" and (r.period.year, r.period.start.month) in wanted:
            v = figure(r)
            if v is not None:
                monthly[(r.period.year, r.period.start.month)] = v
    coverage = len(monthly) / len(wanted)
    if len(monthly) < len(wanted):
        return None, coverage  # a sum with a month missing would be understated
    values = [monthly[m] for m in wanted]
    if name == "employees_avg":
        return sum(values) / len(values), coverage
    return sum(values), coverage


def measure(indicator: str, period: Period, data: EnterpriseData, targets: Targets) -> Measure:
    """Numerator, denominator and coverage of one indicator of one enterprise for one period."""
    sums = period_sums(period, data)
    if indicator in ("nc_rate", "networking_rate"):
        return _rate_measure(indicator, period, sums.daily, targets)
    if indicator in ("rd_intensity", "new_product_ratio"):
        num_name, den_name = (
            ("rd_expense", "revenue") if indicator == "rd_intensity" else ("new_product_output", "gross_output")
        )
        n, cn = _report_sum(period, data.reports, num_name, targets)
        d, cd = _report_sum(period, data.reports, den_name, targets)
        return Measure(n, d, min(cn, cd), 100.0)
    if indicator == "labour_productivity":
        n, cn = _report_sum(period, data.reports, "value_added", targets)
        d, cd = _report_sum(period, data.reports, "employees_avg", targets)
        return Measure(n, d, min(cn, cd))
    if indicator in ("energy", "energy_intensity"):
        n, cn = _carrier_sum(period, sums.carriers, _energy_carriers(data, sums), targets, "tce")
    elif indicator == "water_intensity":
        n, cn = _carrier_sum(period, sums.carriers, frozenset({"water_intake"}), targets, "m3")
    elif indicator == "wastewater_intensity":
        n, cn = _carrier_sum(period, sums.carriers, frozenset({"wastewater"}), targets, "m3")
    else:
        raise ValueError(f"unknown indicator {indicator!r}")
    if indicator == "energy":
        return Measure(n, 1.0, cn)
    d, cd = _report_sum(period, data.reports, "value_added", targets)
    return Measure(n, d, min(cn, cd))


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
    t = targets.indicators.get(indicator)  # type: ignore[call-overload]
    if value is None:
        return "insufficient_data"
    if t is None or year not in targets.years:
        return "no_target"
    if t.status_basis == "year_on_year":
        if previous is None:
            return "insufficient_data"
        if t.kind == "points_per_year":
            cap = t.cap if t.cap is not None else float("inf")
            ok = value - previous >= t.step - _EPS or value >= cap - _EPS
        else:
            required = previous * (1.0 + t.step)
            ok = value <= required * (1 + _EPS) if not t.higher_is_better else value >= required * (1 - _EPS)
        return "met" if ok else "missed"
    if target is None:
        return "insufficient_data"
    if t.higher_is_better:
        return "met" if value >= target - _EPS * max(1.0, abs(target)) else "missed"
    return "met" if value <= target + _EPS * max(1.0, abs(target)) else "missed"


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
    )


def compute(indicator: str, period: Period, data: EnterpriseData, targets: Targets) -> IndicatorResult:
    """One indicator of one enterprise for one period, against the plan.

    The baseline is the same period of the base year computed from the data; failing that, the
    reported base-year figure (``data.baseline_values``) — for labour productivity only for a
    whole year, since it is not comparable across period lengths.
    """
    min_cov = targets.policy.min_coverage
    m = measure(indicator, period, data, targets)
    previous = measure(indicator, period.in_year(period.year - 1), data, targets).value(min_cov)
    if period.year == targets.base_year:
        baseline = m.value(min_cov)
    else:
        baseline = measure(indicator, period.in_year(targets.base_year), data, targets).value(min_cov)
    if baseline is None and (indicator != "labour_productivity" or period.kind == "year"):
        baseline = data.baseline_values.get(indicator)
    return _assemble(indicator, period, m, targets, previous, baseline)


def compute_all(period: Period, data: EnterpriseData, targets: Targets) -> dict[str, IndicatorResult]:
    return {name: compute(name, period, data, targets) for name in INDICATORS}


# --- pooling ---------------------------------------------------------------------------------------------


def pooled_measure(results: Sequence[IndicatorResult]) -> tuple[Measure, int]:
    """Σ numerators ÷ Σ denominators of the members with a figure; coverage = their share of members."""
    ok = [r for r in results if r.value is not None and r.numerator is not None and r.denominator is not None]
    if not results:
        return Measure(None, None, 0.0), 0
    scale = results[0].scale
    if not ok:
        return Measure(None, None, 0.0, scale), 0
    num = sum(r.numerator for r in ok)  # type: ignore[misc]
    den = sum(r.denominator for r in ok)  # type: ignore[misc]
    if results[0].indicator == "energy":
        den = 1.0  # energy is a total: Σ tce
    return Measure(num, den, len(ok) / len(results), scale), len(ok)


def pool(
    results: Sequence[IndicatorResult],
    targets: Targets,
    *,
    baseline_results: Sequence[IndicatorResult] | None = None,
    previous_results: Sequence[IndicatorResult] | None = None,
) -> PooledResult:
    """A group of enterprises (a county, a city, an industry) for one indicator and period.

    ``results``: the members' results; ``baseline_results`` / ``previous_results``: the members'
    results for the same period of the base year / the year before (pooled the same way). The
    pooled value needs ``policy.min_coverage`` of the members to have a figure. met_share is the
    share of the members with a status met or missed that met their own target.
    """
    if not results:
        raise ValueError("pool() needs at least one member result")
    indicator, period = results[0].indicator, results[0].period
    for r in results:
        if r.indicator != indicator or r.period != period:
            raise ValueError("pool() takes results of one indicator and one period")
    min_cov = targets.policy.min_coverage
    m, included = pooled_measure(results)
    baseline = pooled_measure(baseline_results)[0].value(min_cov) if baseline_results else None
    if period.year == targets.base_year:
        baseline = m.value(min_cov)
    previous = pooled_measure(previous_results)[0].value(min_cov) if previous_results else None
    base = _assemble(indicator, period, m, targets, previous, baseline)
    assessed = [r for r in results if r.status in ("met", "missed")]
    met = sum(1 for r in assessed if r.status == "met")
    return PooledResult(
        **{f: getattr(base, f) for f in IndicatorResult.__dataclass_fields__},
        members=len(results),
        included=included,
        assessed=len(assessed),
        met_count=met,
        met_share=met / len(assessed) if assessed else None,
    )
