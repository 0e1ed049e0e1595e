"""Enterprise reports (企业报表): the figures no sensor measures, reported per month or per year.

Value added at current and comparable prices, average employees, revenue, R&D expense, gross
output and new-product output (DESIGN §2), stored as the ``enterprise_report`` measurement
(DESIGN §4). Amounts are in **yuan** here and in the store; an import may say 万元 in a header
and is scaled on the way in (``fmc.central.reports``).

A period is a calendar year (``"2019"``), a month (``"2019-03"``), a quarter (``"2019-Q2"``) or a year
to date (``"2019-YTD-06"``, 1–6月累计), local time. Reports of several kinds may cover the same months:
a figure for a period comes from a report for exactly that period, else is composed from the fewest
reports that make it up, per field (``fmc.indicators.engine``, docs/reports.md).
"""

from __future__ import annotations

import os
import re
import unicodedata
from datetime import date
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator, model_validator

from fmc.core.config import ID_PATTERN, ConfigError, InventoryProblem, _Model

# The canonical form stored in the ``period`` tag: a year, a month, a quarter, or a year to date
# (1–N月累计: January to the end of month N).
PERIOD_PATTERN = r"^[0-9]{4}(-(0[1-9]|1[0-2]|Q[1-4]|YTD-(0[1-9]|1[0-2])))?$"
MIN_YEAR, MAX_YEAR = 1949, 2100
# Same forms as the agent config's [enterprise] region / industry (fmc.agent.config).

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

# Plausibility ceilings, per report (any period: a year's figure is the largest). A figure above its
# ceiling is a slip (extra digits, 元 under a 亿元 header, 1.7e308 from a broken export),
# not a figure: stored, it outweighs its whole county, and pooled sums of a few reach inf, so that a
# published intensity reads 0 or nan. Refused on every entry path (EnterpriseReport), never clamped.
# - money, in yuan: 10¹³ (10 万亿元). China's largest enterprises by revenue (State Grid, Sinopec,
#   CNPC) report 3-4 万亿元 a year; value added, R&D and output are smaller still. A county's sum
#   of a million enterprises at the ceiling is 10¹⁹ yuan, nowhere near a float's range.
# - employees_avg, persons: 2 000 000. The largest employers in China (CNPC, State Grid, Foxconn's
#   Chinese plants at their peak) have about 1-1.5 million people.
MONEY_CEILING_YUAN = 1e13
EMPLOYEES_CEILING = 2_000_000.0
FIGURE_CEILINGS: dict[str, float] = {
    **{name: MONEY_CEILING_YUAN for name in MONEY_FIELDS}, "employees_avg": EMPLOYEES_CEILING,
}


def figure_unit(name: str) -> str:
    return "persons" if name == "employees_avg" else "yuan"


def ceiling_text(name: str) -> str:
    """'the plausibility ceiling of 10,000,000,000,000 yuan (10 万亿元, more than any enterprise's
    annual figure)': a field's ceiling and why, for messages."""
    if name in MONEY_FIELDS:
        why = "10 万亿元, more than any enterprise's annual figure"
    else:
        why = "more than any enterprise's workforce"
    return f"the plausibility ceiling of {FIGURE_CEILINGS[name]:,.0f} {figure_unit(name)} ({why})"


def implausible_figure(name: str, value: float) -> str | None:
    """Why a figure above its field's ceiling is refused, or None."""
    if value <= FIGURE_CEILINGS[name]:
        return None
    return f"above {ceiling_text(name)}; check the digits and the unit"


PERIOD_HINT = ("write a year (2019), a month (2019-03; also 2019/3, 2019年3月), a quarter (2019-Q2, 2019年第二季度) "
               "or a year to date (2019-YTD-06, 2019年1-6月)")
_YEAR = re.compile(r"(\d{4})\s*(?:年度?)?")
_MONTH = re.compile(r"(\d{4})\s*(?:(-|/)\s*(\d{1,2})|年\s*(\d{1,2})\s*月份?)")
_COMPACT_MONTH = re.compile(r"(\d{4})(\d{2})")  # 201903, what statistical systems export
_QUARTER_NUMBERS = {"1": 1, "2": 2, "3": 3, "4": 4, "一": 1, "二": 2, "三": 3, "四": 4}
_QUARTER = re.compile(r"(\d{4})\s*(?:-?\s*[Qq]\s*([1-4])|年\s*(?:第\s*)?([1-4一二三四])\s*季度?|年\s*[Qq]\s*([1-4]))")
_YEAR_TO_DATE = re.compile(r"(\d{4})\s*(?:-\s*YTD\s*-\s*(\d{1,2})|年\s*1\s*[-–—~～至到]\s*(\d{1,2})\s*月(?:份)?"
                           r"\s*(?:累计)?)", re.IGNORECASE)


def parse_period(text: str) -> str:
    """'2019', '2019年', '2019年度' -> '2019'; '2019-03', '2019-3', '2019/3', '2019年3月', '201903'
    -> '2019-03'; '2019-Q2', '2019Q2', '2019年第二季度', '2019年2季度' -> '2019-Q2'; '2019-YTD-06',
    '2019年1-6月', '2019年1-6月累计' -> '2019-YTD-06' (1–12月 is the year, 1–3月 the first quarter, 1–1月
    January: one period has one form). Raises
    ``ValueError`` naming the accepted forms."""
    folded = unicodedata.normalize("NFKC", text).strip()
    year = month = quarter = through = None
    if m := _YEAR.fullmatch(folded):
        year = int(m.group(1))
    elif m := _MONTH.fullmatch(folded):
        year, month = int(m.group(1)), int(m.group(3) or m.group(4))
    elif m := _COMPACT_MONTH.fullmatch(folded):
        year, month = int(m.group(1)), int(m.group(2))
    elif m := _QUARTER.fullmatch(folded):
        year, quarter = int(m.group(1)), _QUARTER_NUMBERS[m.group(2) or m.group(3) or m.group(4)]
    elif m := _YEAR_TO_DATE.fullmatch(folded):
        year, through = int(m.group(1)), int(m.group(2) or m.group(3))
    elif re.fullmatch(r"\d{4}\s*[-/.年]\s*\d{1,2}\s*[-/.月]\s*\d{1,2}\s*日?(?:\s+\d{1,2}:\d{2}(?::\d{2})?)?", folded):
        raise ValueError(f"{text!r} is a day, not a period; {PERIOD_HINT} (Excel may have turned 2019-03 into a date:"
                         " format the column as text)")
    if year is None:
        raise ValueError(f"{text!r} is not a period; {PERIOD_HINT}")
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise ValueError(f"{text!r}: year {year} is out of range {MIN_YEAR}-{MAX_YEAR}")
    if quarter is not None:
        return f"{year:04d}-Q{quarter}"
    if through is not None:
        if not 1 <= through <= 12:
            raise ValueError(f"{text!r}: there is no month {through}; {PERIOD_HINT}")
        if through == 12:
            return f"{year:04d}"  # January to December: the year
        if through == 1:
            return f"{year:04d}-01"
        if through == 3:
            return f"{year:04d}-Q1"  # the same months: one period, whatever form it was written in
        return f"{year:04d}-YTD-{through:02d}"
    if month is None:
        return f"{year:04d}"
    if not 1 <= month <= 12:
        raise ValueError(f"{text!r}: there is no month {month}; {PERIOD_HINT}")
    return f"{year:04d}-{month:02d}"


def period_months(period: str) -> tuple[int, int, int]:
    """(year, first month, last month) of a canonical period."""
    year = int(period[:4])
    if len(period) == 4:
        return year, 1, 12
    rest = period[5:]
    if rest.startswith("Q"):
        q = int(rest[1])
        return year, 3 * q - 2, 3 * q
    if rest.startswith("YTD-"):
        return year, 1, int(rest[4:])
    return year, int(rest), int(rest)


def period_bounds(period: str) -> tuple[date, date]:
    """[first day, first day of the next period) of a canonical period."""
    year, first, last = period_months(period)
    return date(year, first, 1), date(year + last // 12, last % 12 + 1, 1)


def plausible_figure(value: float | None, info: ValidationInfo) -> float | None:
    """A field validator of the report models: refuses a figure above its field's ceiling."""
    if value is not None and info.field_name is not None and (why := implausible_figure(info.field_name, value)):
        raise ValueError(why)
    return value


# A reported figure: finite and non-negative (and at most its FIGURE_CEILINGS, checked by the model).
Figure = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class EnterpriseReport(_Model):
    """One enterprise's figures for one period; amounts in yuan, at least one figure given."""

    enterprise: str = Field(pattern=ID_PATTERN, description="enterprise id (e.g. the 统一社会信用代码)")
    period: str = Field(pattern=PERIOD_PATTERN, description="'2019' (a year), '2019-03' (a month), '2019-Q2' (a "
                        "quarter) or '2019-YTD-06' (January to June, 1–6月累计), local time")
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

    _plausible = field_validator(*REPORT_FIELDS)(plausible_figure)

    @model_validator(mode="after")
    def _some_figure(self) -> EnterpriseReport:
        if all(getattr(self, name) is None for name in REPORT_FIELDS):
            raise ValueError(f"no figures: give at least one of {', '.join(REPORT_FIELDS)}")
        return self

    @property
    def annual(self) -> bool:
        return len(self.period) == 4

    @property
    def kind(self) -> str:
        """year, quarter, ytd or month."""
        if len(self.period) == 4:
            return "year"
        return "quarter" if "Q" in self.period else "ytd" if "YTD" in self.period else "month"

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
