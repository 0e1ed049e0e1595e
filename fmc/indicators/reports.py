"""Enterprise reports (企业报表): the figures no sensor measures, reported per month or per year.

Value added at current and comparable prices, average employees, revenue, R&D expense, gross
output and new-product output (DESIGN §2), stored as the ``enterprise_report`` measurement
(DESIGN §4). Amounts are in **yuan** here and in the store; an import may say 万元 in a header
and is scaled on the way in (``fmc.central.reports``).

A period is a calendar year (``"2019"``) or a calendar month (``"2019-03"``), local time. A month
and the year it belongs to may both be reported: for annual figures the annual report wins; the
months serve monthly, quarterly and year-to-date figures (docs/reports.md).
"""

from __future__ import annotations

import os
import re
import unicodedata
from datetime import date
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from fmc.core.config import ID_PATTERN, ConfigError, InventoryProblem, _Model
from fmc.core.regions import INDUSTRY_CODE_PATTERN, REGION_CODE_PATTERN

# The canonical form stored in the ``period`` tag: a year, or a year and a two-digit month.
PERIOD_PATTERN = r"^[0-9]{4}(-(0[1-9]|1[0-2]))?$"
MIN_YEAR, MAX_YEAR = 1949, 2100
# Same forms as the agent config's [enterprise] region / industry (fmc.agent.config).
REGION_PATTERN = REGION_CODE_PATTERN
INDUSTRY_PATTERN = INDUSTRY_CODE_PATTERN

# The reported figures, in the order of DESIGN §4; every one a field of ``enterprise_report``.
REPORT_FIELDS = (
    "value_added",
    "value_added_comparable",
    "employees_avg",
    "revenue",
    "rd_expense",
    "gross_output",
    "new_product_output",
)
MONEY_FIELDS = tuple(f for f in REPORT_FIELDS if f != "employees_avg")

PERIOD_HINT = "write a year (2019) or a month (2019-03; also 2019/3, 2019年3月)"
_YEAR = re.compile(r"(\d{4})\s*(?:年度?)?")
_MONTH = re.compile(r"(\d{4})\s*(?:(-|/)\s*(\d{1,2})|年\s*(\d{1,2})\s*月份?)")
_COMPACT_MONTH = re.compile(r"(\d{4})(\d{2})")  # 201903, what statistical systems export


def parse_period(text: str) -> str:
    """'2019', '2019年', '2019年度' -> '2019'; '2019-03', '2019-3', '2019/3', '2019年3月', '201903'
    -> '2019-03'. Raises ``ValueError`` naming the accepted forms."""
    folded = unicodedata.normalize("NFKC", text).strip()
    year = month = None
    if m := _YEAR.fullmatch(folded):
        year = int(m.group(1))
    elif m := _MONTH.fullmatch(folded):
        year, month = int(m.group(1)), int(m.group(3) or m.group(4))
    elif m := _COMPACT_MONTH.fullmatch(folded):
        year, month = int(m.group(1)), int(m.group(2))
    elif re.fullmatch(r"\d{4}\s*[-/.年]\s*\d{1,2}\s*[-/.月]\s*\d{1,2}\s*日?(?:\s+\d{1,2}:\d{2}(?::\d{2})?)?", folded):
        raise ValueError(f"{text!r} is a day, not a period; {PERIOD_HINT} (Excel may have turned 2019-03 into a date:"
                         " format the column as text)")
    if year is None:
        raise ValueError(f"{text!r} is not a period; {PERIOD_HINT}")
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise ValueError(f"{text!r}: year {year} is out of range {MIN_YEAR}-{MAX_YEAR}")
    if month is None:
        return f"{year:04d}"
    if not 1 <= month <= 12:
        raise ValueError(f"{text!r}: there is no month {month}; {PERIOD_HINT}")
    return f"{year:04d}-{month:02d}"


def period_bounds(period: str) -> tuple[date, date]:
    """[first day, first day of the next period) of a canonical period."""
    year = int(period[:4])
    if len(period) == 4:
        return date(year, 1, 1), date(year + 1, 1, 1)
    month = int(period[5:7])
    return date(year, month, 1), date(year + month // 12, month % 12 + 1, 1)


# A reported figure: finite and non-negative.
Figure = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class EnterpriseReport(_Model):
    """One enterprise's figures for one period; amounts in yuan, at least one figure given."""

    enterprise: str = Field(pattern=ID_PATTERN, description="enterprise id (e.g. the 统一社会信用代码)")
    period: str = Field(pattern=PERIOD_PATTERN, description="'2019' (a year) or '2019-03' (a month), local time")
    value_added: Figure | None = Field(default=None, description="工业增加值 at current prices, yuan")
    value_added_comparable: Figure | None = Field(default=None, description="可比价工业增加值, yuan")
    employees_avg: Figure | None = Field(default=None, description="年平均从业人员 / 从业人员平均人数, persons")
    revenue: Figure | None = Field(default=None, description="主营业务收入 / 营业收入, yuan")
    rd_expense: Figure | None = Field(default=None, description="研发费用 / R&D经费支出, yuan")
    gross_output: Figure | None = Field(default=None, description="工业总产值, yuan")
    new_product_output: Figure | None = Field(default=None, description="新产品产值, yuan")

    @field_validator("period", mode="before")
    @classmethod
    def _period(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        return parse_period(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _some_figure(self) -> EnterpriseReport:
        if all(getattr(self, name) is None for name in REPORT_FIELDS):
            raise ValueError(f"no figures: give at least one of {', '.join(REPORT_FIELDS)}")
        return self

    @property
    def annual(self) -> bool:
        return len(self.period) == 4

    def figures(self) -> dict[str, float]:
        """The figures given, by field name (the ``enterprise_report`` fields)."""
        return {name: value for name in REPORT_FIELDS if (value := getattr(self, name)) is not None}


class ReportsError(ConfigError):
    """A bad reports file (or points for unknown enterprises): every problem, nothing imported.

    A ``ConfigError`` so the CLI's handler prints it and exits with code 2; the problems are the
    inventory's ``InventoryProblem`` (message, line, column as written in the file).
    """

    def __init__(self, file: str | os.PathLike[str] | None, problems: list[InventoryProblem]) -> None:
        self.report_problems = problems
        super().__init__(file, [(p.where or "(file)", p.message, "") for p in problems])

    def render(self) -> str:
        lines = [f"{self.file}: bad enterprise reports, nothing imported ({len(self.report_problems)} problem(s))"]
        lines.extend(f"  - {p}" for p in self.report_problems)
        return "\n".join(lines)
