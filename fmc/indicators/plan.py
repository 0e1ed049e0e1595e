"""A plan's targets and the indicator policy, as a file (`fmc/indicators/plans/*.toml`, or any path). DESIGN §2.

A plan is data, not code: the 2017-2020 Zhejiang plan is the default file
``fmc/indicators/plans/zhejiang-2017-2020.toml`` (built in, named ``zhejiang-2017-2020``); another plan
(other rates, another base year) is a new file. ``fmc.indicators.engine`` reads these models; it never
hard-codes a rate.

Target kinds:

- ``points_per_year``: ``baseline + step·(y - base_year)`` percentage points, capped at ``cap``
  (NC rate, networking rate: +2 points a year, at most 100 %);
- ``rate_per_year``: ``baseline·(1 + step)^(y - base_year)`` (energy −4 %, water −5 %, wastewater
  −2 % per unit of value added, labour productivity +7 %); a negative step means lower is better;
- ``floor``: the value must reach ``step`` in every plan year (R&D ≥ 1.5 %, new products ≥ 35 %).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from fmc.core.carriers import equal_value_for
from fmc.core.config import (
    ID_PATTERN,
    ConfigError,
    _Model,
    equal_values_by_year,
    known_timezone,
    problems_from,
    read_toml,
)

PLANS_DIR = Path(__file__).parent / "plans"  # the built-in plan files

Indicator = Literal[
    "nc_rate",
    "networking_rate",
    "energy",
    "energy_intensity",
    "water_intensity",
    "wastewater_intensity",
    "labour_productivity",
    "rd_intensity",
    "new_product_ratio",
]
INDICATORS: tuple[str, ...] = get_args(Indicator)  # in this order everywhere (tables, CSV, dashboards)
Population = Literal["all", "backbone", "above_designated_size"]
POPULATIONS: tuple[str, ...] = get_args(Population)
# Indicators in percent whose changes are differences in percentage points, not ratios.
POINT_INDICATORS = frozenset({"nc_rate", "networking_rate", "rd_intensity", "new_product_ratio"})
# Less is better (for ranks where a plan file sets no target to say which way the indicator should go).
LOWER_IS_BETTER = frozenset({"energy", "energy_intensity", "water_intensity", "wastewater_intensity"})


class PlanInfo(_Model):
    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    source: str = Field(default="", max_length=500, description="the document and section the numbers come from")
    version: str = Field(default="1", pattern=r"^[0-9A-Za-z._-]{1,32}$",
                         description="the plan file's version: raise it when a setting changes (every figure says it)")


class IndicatorTarget(_Model):
    """The target of one indicator."""

    kind: Literal["points_per_year", "rate_per_year", "floor"]
    step: float = Field(
        description="points a year (points_per_year), a fraction a year such as -0.04 (rate_per_year), "
        "or the minimum value in the indicator's unit (floor)"
    )
    cap: float | None = Field(default=None, description="upper limit of a points path, e.g. 100 (%)")
    status_basis: Literal["path", "year_on_year"] = "path"
    years: list[int] | None = Field(
        default=None, description="the plan years the target applies in (default: every plan year), e.g. [2020] "
        "for a level the plan sets for its end")

    @model_validator(mode="after")
    def _check(self) -> IndicatorTarget:
        if self.kind == "rate_per_year" and not -1 < self.step < 10:
            raise ValueError(f"step = {self.step}: a rate a year is a fraction such as -0.04 (−4 %) or 0.07 (+7 %)")
        if self.cap is not None and self.kind != "points_per_year":
            raise ValueError('cap applies only to kind = "points_per_year"')
        if self.kind == "floor" and self.status_basis == "year_on_year":
            raise ValueError('a floor has no year-on-year requirement; use status_basis = "path"')
        return self

    @property
    def higher_is_better(self) -> bool:
        return self.kind != "rate_per_year" or self.step >= 0


class Policy(_Model):
    """Every choice of DESIGN §2 that is policy, not code."""

    timezone: str = "Asia/Shanghai"
    nc_rate_basis: Literal["period_end", "equipment_days"] = "period_end"
    nc_rate_weight: Literal["count", "asset_value"] = "count"
    networking_denominator: Literal["nc_equipment_days", "all_equipment_days"] = "nc_equipment_days"
    networking_basis: Literal["equipment_days", "period_end"] = Field(
        default="equipment_days", description="networked NC-equipment-days ÷ NC-equipment-days over the period, "
        "or the networked count on the period's last day (年末数, as surveys report it)")
    # (when a day counts as networked is the agent's `[plant] networked_min_online_minutes`: the agent
    # applies it when it builds enterprise_daily; the engine reads the networked counts)
    electricity_basis: Literal["equivalent", "equal"] = "equivalent"
    electricity_equal_value: dict[int, float] = Field(
        default_factory=dict, description="year -> kgce per kWh (等价值), as published for that year"
    )
    value_added_prices: Literal["comparable", "current"] = "comparable"
    deflator: dict[int, float] = Field(
        default_factory=dict,
        description="year -> price index of that year relative to the base year (base year = 1.0); "
        "comparable value added = current value added ÷ index, unless a comparable figure is reported",
    )
    min_coverage: float = Field(default=0.95, gt=0, le=1)
    populations: dict[Indicator, Population] = Field(
        default_factory=dict, description="whom each indicator's target is about, and so whom a group pools for it "
        "(default all): backbone (骨干企业) or above_designated_size (规模以上工业企业), flags of the registry")
    period_end_within_days: int = Field(
        default=7, ge=0, le=31, description="a period-end figure is that of the period's last day, or of the latest "
        "day with data at most this many days before it; older data gives no period-end figure")

    _tz = field_validator("timezone")(lambda cls, v: known_timezone(v))
    _equal = field_validator("electricity_equal_value")(lambda cls, v: equal_values_by_year(v))

    @field_validator("deflator")
    @classmethod
    def _deflator(cls, v: dict[int, float]) -> dict[int, float]:
        for year, value in v.items():
            if not 1990 <= year <= 2100:
                raise ValueError(f"year {year} is not a calendar year; write e.g. 2018 = 1.021")
            if not 0.1 < value < 10:
                raise ValueError(f"{year} = {value}: a price index relative to the base year is near 1.0")
        return v

    @model_validator(mode="after")
    def _equal_needed(self) -> Policy:
        if self.electricity_basis == "equal" and not self.electricity_equal_value:
            raise ValueError('electricity_basis = "equal" needs [policy.electricity_equal_value] year = kgce/kWh')
        return self

    def electricity_kgce(self, year: int) -> float | None:
        """kgce per kWh of electricity for ``year`` under the equal-value basis (latest year ≤ ``year``)."""
        if self.electricity_basis != "equal":
            return None
        return equal_value_for(self.electricity_equal_value, year)


class Targets(_Model):
    """A plan policy file."""

    plan: PlanInfo
    base_year: int = Field(ge=1990, le=2100)
    first_year: int = Field(ge=1990, le=2100)
    last_year: int = Field(ge=1990, le=2100)
    policy: Policy = Field(default_factory=Policy)
    indicators: dict[Indicator, IndicatorTarget] = Field(default_factory=dict)
    _source_file: str | None = PrivateAttr(default=None)
    _digest: tuple[int, str] | None = PrivateAttr(default=None)  # (id of the instance it is of, digest)

    @property
    def source_file(self) -> str | None:
        """The name of the file it was loaded from (None: built in code)."""
        return self._source_file

    @property
    def digest(self) -> str:
        """12 hex digits of SHA-256 over the plan as loaded: a figure says under which exact policy it was made."""
        if self._digest is None or self._digest[0] != id(self):  # a copy (model_copy) has its own
            self._digest = (id(self), hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12])
        return self._digest[1]

    @model_validator(mode="after")
    def _years(self) -> Targets:
        if not self.base_year < self.first_year <= self.last_year:
            raise ValueError(
                f"years: base_year ({self.base_year}) < first_year ({self.first_year}) <= last_year "
                f"({self.last_year}) is required"
            )
        for name, t in self.indicators.items():
            outside = [y for y in t.years or () if y not in self.years]
            if outside:
                raise ValueError(f"indicators.{name}.years: {outside} lie outside the plan's years "
                                 f"{self.first_year}-{self.last_year}")
        return self

    @property
    def years(self) -> range:
        return range(self.first_year, self.last_year + 1)

    def applies(self, indicator: str, year: int) -> bool:
        """Whether the indicator has a target in ``year`` (a plan year, and one of the target's ``years``)."""
        t = self.indicators.get(indicator)  # type: ignore[call-overload]
        return t is not None and year in self.years and (t.years is None or year in t.years)

    def target_for(self, indicator: str, year: int, baseline: float | None) -> float | None:
        """The target for ``year`` on the path from the baseline; None outside the plan or without a baseline."""
        t = self.indicators.get(indicator)  # type: ignore[call-overload]
        if t is None or not self.applies(indicator, year):
            return None
        if t.kind == "floor":
            return t.step
        if baseline is None:
            return None
        n = year - self.base_year
        if t.kind == "points_per_year":
            v = baseline + t.step * n
            return min(v, t.cap) if t.cap is not None else v
        return baseline * (1.0 + t.step) ** n


# Settings a plan file once had that live elsewhere now: setting -> (what is wrong, the fix).
MOVED_SETTINGS: dict[str, tuple[str, str]] = {
    "policy.networked_min_online_minutes": (
        "is not a plan setting: whether a day counts as networked is decided by the agent when it builds "
        "enterprise_daily, and the engine only reads the networked counts",
        "remove it from the plan file and set `[plant] networked_min_online_minutes` in each agent's agent.toml "
        "(default 1 minute)",
    ),
}


def load_targets(path: str | os.PathLike[str]) -> Targets:
    """Read and validate a plan policy file; every problem is a ConfigError naming setting and fix."""
    path = Path(path)
    data = read_toml(path, missing_fix="name a built-in plan (zhejiang-2017-2020) or a plan file", env=False)
    try:
        targets = Targets.model_validate(data)
        targets._source_file = path.name
        return targets
    except ValidationError as e:
        problems = [
            (setting, *MOVED_SETTINGS[setting]) if setting in MOVED_SETTINGS else (
                setting,
                wrong,
                fix.replace("deploy/examples/agent.toml", "fmc/indicators/plans/zhejiang-2017-2020.toml")
                or "correct it as described; docs/indicators.md lists every setting",
            )
            for setting, wrong, fix in problems_from(e)
        ]
        raise ConfigError(path, problems) from None
