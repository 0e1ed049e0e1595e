"""Enterprises to counties, cities, the province and industries (DESIGN §2). Pure.

A group's figure is pooled (Σ numerators ÷ Σ denominators of its members, ``indicators.pool``)
with the count and share of its members that met their own target; rows of one level are ranked
per indicator. Regions are GB/T 2260 code prefixes of the enterprise's 6-digit code (province 2
digits, city 4, county 6); industries are GB/T 4754 divisions (the first 2 digits of the code),
pooled within the region the caller may see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fmc.indicators.engine import (
    EnterpriseData,
    IndicatorResult,
    Measure,
    Period,
    _assemble,
    measure,
    pool,
)
from fmc.indicators.plan import INDICATORS, Targets
from fmc.indicators.sums import EnterpriseInfo

Level = Literal["enterprise", "county", "city", "province", "industry"]
LEVELS: tuple[Level, ...] = ("enterprise", "county", "city", "province", "industry")
REGION_DIGITS: Mapping[str, int] = {"province": 2, "city": 4, "county": 6}


@dataclass(frozen=True, slots=True)
class EnterpriseFigures:
    """One enterprise's results for a period, and its results for the same period of the year
    before and of the base year (what pooling its group needs)."""

    info: EnterpriseInfo
    results: Mapping[str, IndicatorResult]
    previous: Mapping[str, IndicatorResult]
    baseline: Mapping[str, IndicatorResult]


@dataclass(frozen=True, slots=True)
class GroupRow:
    """One row of a level: an enterprise or a group, its results per indicator and its ranks.

    ``region``: the enterprise's county code, or the group's region code (for an industry row,
    the region it is pooled within); ``industry``: the enterprise's code or the industry row's
    division, else None; ``enterprise``: the id on enterprise rows, else None."""

    level: Level
    region: str
    industry: str | None
    enterprise: str | None
    results: Mapping[str, IndicatorResult]
    ranks: Mapping[str, int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        if self.level == "enterprise":
            return self.enterprise or ""
        if self.level == "industry":
            return f"{self.region}/{self.industry}"
        return self.region


def _light(indicator: str, period: Period, m: Measure, targets: Targets) -> IndicatorResult:
    """A result that carries only what pooling reads (value, numerator, denominator)."""
    return _assemble(indicator, period, m, targets, None, None)


def enterprise_figures(
    info: EnterpriseInfo, period: Period, data: EnterpriseData, targets: Targets
) -> EnterpriseFigures:
    """All indicators of one enterprise for ``period``, measuring each of the three periods once."""
    min_cov = targets.policy.min_coverage
    prev_period = period.in_year(period.year - 1)
    base_period = period.in_year(targets.base_year)
    results: dict[str, IndicatorResult] = {}
    previous: dict[str, IndicatorResult] = {}
    baseline_r: dict[str, IndicatorResult] = {}
    for name in INDICATORS:
        m = measure(name, period, data, targets)
        mp = measure(name, prev_period, data, targets)
        mb = m if period.year == targets.base_year else measure(name, base_period, data, targets)
        baseline = mb.value(min_cov)
        if baseline is None and (name != "labour_productivity" or period.kind == "year"):
            baseline = data.baseline_values.get(name)
        results[name] = _assemble(name, period, m, targets, mp.value(min_cov), baseline)
        previous[name] = _light(name, prev_period, mp, targets)
        baseline_r[name] = _light(name, base_period, mb, targets)
    return EnterpriseFigures(info, results, previous, baseline_r)


def group_key(level: Level, info: EnterpriseInfo, region_scope: str | None = None) -> tuple[str, str | None]:
    """(region, industry) of the group an enterprise belongs to at ``level``."""
    if level in REGION_DIGITS:
        return info.region[: REGION_DIGITS[level]], None
    if level == "industry":
        return (region_scope or info.region[:2]), info.industry[:2]
    return info.region, info.industry


def group_rows(
    level: Level, members: Sequence[EnterpriseFigures], targets: Targets, *, region_scope: str | None = None
) -> list[GroupRow]:
    """The rows of ``level`` from the enterprises in scope, ranked, in key order.

    ``region_scope``: the region prefix the caller may see; industry rows are pooled within it
    (the province's 2 digits when None)."""
    if level == "enterprise":
        rows = [
            GroupRow("enterprise", f.info.region, f.info.industry, f.info.enterprise, dict(f.results))
            for f in members
        ]
    else:
        groups: dict[tuple[str, str | None], list[EnterpriseFigures]] = {}
        for f in members:
            groups.setdefault(group_key(level, f.info, region_scope), []).append(f)
        rows = []
        for (region, industry), fs in groups.items():
            pooled = {
                name: pool(
                    [f.results[name] for f in fs],
                    targets,
                    baseline_results=[f.baseline[name] for f in fs],
                    previous_results=[f.previous[name] for f in fs],
                )
                for name in INDICATORS
            }
            rows.append(GroupRow(level, region, industry, None, pooled))
    rows.sort(key=lambda r: r.key)
    return rank(rows, targets)


def rank(rows: Sequence[GroupRow], targets: Targets) -> list[GroupRow]:
    """Ranks per indicator, best first (1, 2, 2, 4 on ties); rows without a value have no rank.
    Lower is better for intensities with a falling target and for total energy."""
    ranks: list[dict[str, int]] = [{} for _ in rows]
    for name in INDICATORS:
        t = targets.indicators.get(name)  # type: ignore[call-overload]
        higher_better = t.higher_is_better if t is not None else name != "energy"
        valued = [(i, r.results[name].value) for i, r in enumerate(rows) if r.results[name].value is not None]
        valued.sort(key=lambda iv: -iv[1] if higher_better else iv[1])  # type: ignore[operator]
        previous_value, previous_rank = None, 0
        for position, (i, v) in enumerate(valued, start=1):
            if v != previous_value:
                previous_value, previous_rank = v, position
            ranks[i][name] = previous_rank
    return [
        GroupRow(r.level, r.region, r.industry, r.enterprise, r.results, ranks[i]) for i, r in enumerate(rows)
    ]
