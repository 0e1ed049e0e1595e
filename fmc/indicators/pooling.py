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
    Period,
    compute_all,
    pool_sums,
    pooled_result,
)
from fmc.indicators.plan import INDICATORS, LOWER_IS_BETTER, POINT_INDICATORS, Targets
from fmc.indicators.sums import EnterpriseInfo

Level = Literal["enterprise", "county", "city", "province", "industry"]
LEVELS: tuple[Level, ...] = ("enterprise", "county", "city", "province", "industry")
REGION_DIGITS: Mapping[str, int] = {"province": 2, "city": 4, "county": 6}


@dataclass(frozen=True, slots=True)
class EnterpriseFigures:
    """One enterprise's results for a period; each carries what pooling its group needs (its
    baseline and previous year as numerator and denominator, ``engine.compute``)."""

    info: EnterpriseInfo
    results: Mapping[str, IndicatorResult]


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


def enterprise_figures(
    info: EnterpriseInfo, period: Period, data: EnterpriseData, targets: Targets
) -> EnterpriseFigures:
    """All indicators of one enterprise for ``period``."""
    return EnterpriseFigures(info, compute_all(period, data, targets))


def group_key(level: Level, info: EnterpriseInfo, region_scope: str | None = None) -> tuple[str, str | None]:
    """(region, industry) of the group an enterprise belongs to at ``level``."""
    if level in REGION_DIGITS:
        return info.region[: REGION_DIGITS[level]], None
    if level == "industry":
        return (region_scope or info.region[:2]), info.industry[:2]
    return info.region, info.industry


def in_population(info: EnterpriseInfo, population: str) -> bool:
    """Whether the enterprise counts in a plan population (unknown flags: it does)."""
    return population == "all" or info.populations is None or population in info.populations


def group_rows(
    level: Level,
    members: Sequence[EnterpriseFigures],
    targets: Targets,
    *,
    region_scope: str | None = None,
    populations: Mapping[str, str] | None = None,
) -> list[GroupRow]:
    """The rows of ``level`` from the enterprises in scope, ranked, in key order.

    ``region_scope``: the region prefix the caller may see; industry rows are pooled within it
    (the province's 2 digits when None). A group pools, for each indicator, the members of the
    population its target is about (``populations``: indicator -> population; default the plan's
    ``policy.populations``); a group without any such member has an empty, insufficient row."""
    wanted = targets.policy.populations if populations is None else populations
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
            pooled: dict[str, IndicatorResult] = {}
            in_it: dict[str, list[EnterpriseFigures]] = {}  # population -> its members (a few populations)
            for name in INDICATORS:
                population = wanted.get(name, "all")
                held = in_it.get(population)
                if held is None:
                    held = in_it[population] = [f for f in fs if in_population(f.info, population)]
                sums = pool_sums([f.results[name] for f in held])
                pooled[name] = pooled_result(name, fs[0].results[name].period, sums, targets,
                                             scale=100.0 if name in POINT_INDICATORS else 1.0, population=population)
            rows.append(GroupRow(level, region, industry, None, pooled))
    rows.sort(key=lambda r: r.key)
    return rank(rows, targets)


def rank(rows: Sequence[GroupRow], targets: Targets) -> list[GroupRow]:
    """Ranks per indicator, best first (1, 2, 2, 4 on ties); rows without a value have no rank.
    Lower is better for an indicator whose target falls, and, where the plan sets no target, for
    total energy and the intensities (``LOWER_IS_BETTER``)."""
    ranks: list[dict[str, int]] = [{} for _ in rows]
    for name in INDICATORS:
        t = targets.indicators.get(name)  # type: ignore[call-overload]
        higher_better = t.higher_is_better if t is not None else name not in LOWER_IS_BETTER
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
