"""The REST API's models (``fmc api``, docs/api.md): query-parameter patterns, responses, the
report body. Pure data; the routers (``fmc.central.api.routers``) answer with them.

Patterns use ``[0-9]``, not ``\\d``: the validator's ``\\d`` also matches other scripts' digits
(Arabic-Indic, full-width), which are no region or industry code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fmc.central.provenance import PROVENANCE_CSV_COLUMNS
from fmc.core.config import ID_PATTERN
from fmc.indicators.labels import INDICATOR_LABELS, STATUS_LABELS
from fmc.indicators.plan import Indicator, Targets
from fmc.indicators.reports import (
    FIGURE_CEILINGS,
    MAX_YEAR,
    MIN_YEAR,
    PERIOD_PATTERN,
    REPORT_FIELDS,
    plausible_figure,
)

# --- query and path parameters ------------------------------------------------------------------------------

PERIOD_QUERY_PATTERN = (
    r"^[0-9]{4}(-(Q[1-4]|0[1-9]|1[0-2]|YTD(-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01]))?))?$"
)
REPORT_PERIOD_PATTERN = PERIOD_PATTERN  # as stored: a year, a month, a quarter or a year to date
ENTERPRISE_ID_PATTERN = ID_PATTERN
PAGE_MAX = 1_000_000_000
YEAR_MIN, YEAR_MAX = MIN_YEAR, MAX_YEAR

LevelName = Literal["enterprise", "county", "city", "province", "industry"]
IndicatorName = Indicator  # the plan file's indicator names
Format = Literal["json", "csv"]
Lang = Literal["zh", "en"]
StatusName = Literal["met", "missed", "insufficient_data", "no_target"]

# What each parameter takes, for 422 messages (a sentence a person can act on).
PARAMETER_HINTS: dict[str, str] = {
    "period": "a year (2019), a quarter (2019-Q2), a month (2019-03) or a year to date (2019-YTD, 2019-YTD-06-30)",
    "region": "a GB/T 2260 code prefix of 2, 4 or 6 digits (33 province, 3306 city, 330602 county)",
    "industry": "a GB/T 4754 code of 2 to 4 digits (17 textiles)",
    "enterprise": "an enterprise id: letters, digits, '_', '.', '-', starting with a letter or digit, at most 64",
    "enterprise_id": "an enterprise id: letters, digits, '_', '.', '-', starting with a letter or digit, at most 64",
    "indicator": "one of " + ", ".join(INDICATOR_LABELS),
    "level": "one of enterprise, county, city, province, industry",
    "page": f"a whole number from 1 to {PAGE_MAX}",
    "page_size": "a whole number from 1 to the server's page_size_max",
    "format": "json or csv",
    "lang": "zh or en",
    "year": f"a calendar year from {YEAR_MIN} to {YEAR_MAX}",
    "report_period": "a year (2019), a month (2019-03), a quarter (2019-Q2) or a year to date (2019-YTD-06)",
}


def whole_number(value: object) -> object:
    """A query number as written: ASCII digits only (the lax int parser would also take ' 5',
    '1_000', '+5' and '1.0')."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit() and len(value) <= 12):
        raise ValueError("a whole number written with the digits 0-9")
    return value


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- responses --------------------------------------------------------------------------------------------


class Problem(_Out):
    """Every error: one sentence saying what is wrong and what to do."""

    detail: str


class Health(_Out):
    status: Literal["ok", "unavailable"]
    store: Literal["reachable", "unreachable"]
    detail: str | None = None


class IndicatorLabel(_Out):
    indicator: IndicatorName
    zh: str
    en: str
    unit: str


class StatusLabel(_Out):
    status: StatusName
    zh: str
    en: str


class TargetsOut(_Out):
    """The plan and policy the figures are measured against, with the indicators' labels and units."""

    targets: Targets
    indicators: list[IndicatorLabel]
    statuses: list[StatusLabel]


def indicator_labels() -> list[IndicatorLabel]:
    return [IndicatorLabel(indicator=k, zh=zh, en=en, unit=unit) for k, (zh, en, unit) in INDICATOR_LABELS.items()]


def status_labels() -> list[StatusLabel]:
    return [StatusLabel(status=k, zh=zh, en=en) for k, (zh, en) in STATUS_LABELS.items()]


class EnterpriseOut(_Out):
    enterprise: str
    name: str | None = None
    region: str = Field(description="6-digit GB/T 2260 county code")
    industry: str = Field(description="GB/T 4754 industry code")


class PolicyRef(_Out):
    """The policy file a figure was computed under."""

    file: str | None = Field(default=None, description="the plan file's name")
    plan: str
    version: str
    digest: str = Field(description="12 hex digits of SHA-256 over the policy as loaded")


class Excluded(_Out):
    enterprise: str
    reason: str = Field(description="insufficient_data: the member has no figure for the period")


class Provenance(_Out):
    """Where the figure comes from (docs/indicators.md). Enterprise rows: ``baseline_source``; group rows:
    ``population``, ``pooled`` (the members in the value, baseline, previous year and target),
    ``pooled_digest``, ``excluded``, ``without_baseline``, ``baseline_sources``."""

    policy: PolicyRef
    inputs: dict[str, float] = Field(description="coverage of each input: a carrier, a report field, "
                                     "enterprise_daily; for groups the share of members and of size")
    baseline_source: Literal["measured", "survey"] | None = None
    population: str | None = None
    pooled: list[str] | None = None
    pooled_digest: str | None = None
    excluded: list[Excluded] | None = None
    without_baseline: list[str] | None = None
    baseline_sources: dict[str, int] | None = None
    note: str | None = None


class IndicatorValue(_Out):
    """One indicator of one row. Changes: ``yoy`` e_t/e_{t-1} - 1 (percentage points for the
    indicators in %), ``avg_annual`` the average annual change since the base year. Group rows
    also carry ``members``, ``included`` (members with a figure), ``assessed`` (members met or
    missed), ``met_count`` and ``met_share``."""

    indicator: IndicatorName
    unit: str
    period: str
    value: float | None = None
    baseline: float | None = None
    target: float | None = None
    yoy: float | None = None
    avg_annual: float | None = None
    coverage: float
    status: StatusName
    rank: int | None = Field(default=None, description="rank among the rows of the response (all pages), 1 = best")
    members: int | None = None
    included: int | None = None
    assessed: int | None = None
    met_count: int | None = None
    met_share: float | None = None
    provenance: Provenance | None = None


class Row(_Out):
    """One row of a level: an enterprise, a county, a city, the province or an industry."""

    level: LevelName
    key: str = Field(description="enterprise id, region code, or <region>/<division> for industry rows")
    region: str = Field(description="the enterprise's county code, the group's code, or the region an industry "
                        "row is pooled within")
    industry: str | None = None
    enterprise: str | None = None
    name: str | None = Field(default=None, description="enterprise name, or the industry division's name")
    indicators: dict[str, IndicatorValue]


T = TypeVar("T")


class Page(_Out, Generic[T]):
    items: list[T]
    page: int
    page_size: int
    total: int = Field(description="items on all pages")


class Filters(_Out):
    region: str | None = None
    industry: str | None = None
    enterprise: str | None = None
    indicator: IndicatorName | None = None


class IndicatorPage(Page[Row]):
    level: LevelName
    period: str
    filters: Filters
    computed_at: datetime


class EnterprisePage(Page[EnterpriseOut]):
    pass


class EnterpriseIndicators(_Out):
    enterprise: EnterpriseOut
    period: str
    computed_at: datetime
    indicators: dict[str, IndicatorValue]


class ReportOut(_Out):
    """A report as stored: money in yuan, employees in persons."""

    enterprise: str
    period: str
    figures: dict[str, float]


class ReportsOut(_Out):
    enterprise: str
    first_year: int
    last_year: int
    items: list[ReportOut]


# --- CSV columns: (key, Chinese header, English header) ------------------------------------------------------

# Long format: one line per row and indicator, so a pivot table in Excel needs no reshaping.
INDICATOR_CSV_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("level", "层级", "level"),
    ("region", "区划代码", "region"),
    ("industry", "行业代码", "industry"),
    ("enterprise", "企业编号", "enterprise"),
    ("name", "名称", "name"),
    ("indicator", "指标代码", "indicator"),
    ("indicator_label", "指标", "indicator name"),
    ("unit", "单位", "unit"),
    ("period", "期间", "period"),
    ("value", "数值", "value"),
    ("baseline", "基期值", "baseline"),
    ("target", "目标值", "target"),
    ("yoy", "同比变化", "year-on-year change"),
    ("avg_annual", "年均变化", "average annual change"),
    ("coverage", "数据覆盖率", "coverage"),
    ("status", "状态代码", "status"),
    ("status_label", "状态", "status name"),
    ("rank", "排名", "rank"),
    ("members", "企业数", "members"),
    ("included", "有数据企业数", "included"),
    ("assessed", "参评企业数", "assessed"),
    ("met_count", "达标企业数", "met count"),
    ("met_share", "达标企业占比", "met share"),
    *PROVENANCE_CSV_COLUMNS,
)
ENTERPRISE_CSV_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("enterprise", "企业编号", "enterprise"),
    ("name", "企业名称", "name"),
    ("region", "区划代码", "region"),
    ("industry", "行业代码", "industry"),
    ("industry_label", "行业名称", "industry name"),
)
# Headers that `fmc reports import` reads back (units in brackets).
REPORT_CSV_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("enterprise", "企业编号", "enterprise"),
    ("period", "期间", "period"),
    ("value_added", "工业增加值(元)", "value_added (yuan)"),
    ("value_added_comparable", "可比价工业增加值(元)", "value_added_comparable (yuan)"),
    ("employees_avg", "年平均从业人员(人)", "employees_avg (persons)"),
    ("revenue", "主营业务收入(元)", "revenue (yuan)"),
    ("rd_expense", "研发费用(元)", "rd_expense (yuan)"),
    ("gross_output", "工业总产值(元)", "gross_output (yuan)"),
    ("new_product_output", "新产品产值(元)", "new_product_output (yuan)"),
)
TARGET_CSV_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("plan", "规划", "plan"),
    ("base_year", "基期年", "base year"),
    ("first_year", "起始年", "first year"),
    ("last_year", "终止年", "last year"),
    ("indicator", "指标代码", "indicator"),
    ("indicator_label", "指标", "indicator name"),
    ("unit", "单位", "unit"),
    ("kind", "目标类型", "target kind"),
    ("step", "目标步长", "step"),
    ("cap", "上限", "cap"),
    ("status_basis", "考核依据", "status basis"),
)


# --- request bodies ---------------------------------------------------------------------------------------

# A reported figure: a finite, non-negative JSON number, at most its field's plausibility ceiling.
Figure = Annotated[float | None, Field(ge=0, allow_inf_nan=False, strict=True)]


def _figure(name: str, description: str) -> Any:
    """A figure field, its ceiling (``FIGURE_CEILINGS``) in the OpenAPI schema as its maximum."""
    return Field(default=None, description=f"{description}; at most {FIGURE_CEILINGS[name]:,.0f}",
                 json_schema_extra={"maximum": FIGURE_CEILINGS[name]})


class ReportFigures(BaseModel):
    """The body of ``PUT /v1/enterprises/{id}/reports/{period}``: money in yuan, employees in
    persons; at least one figure. The enterprise and the period come from the path. Figures are
    JSON numbers (strict: "12 万元" or "3306" as a string is refused, not guessed at)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value_added: Figure = _figure("value_added", "工业增加值 at current prices, yuan")
    value_added_comparable: Figure = _figure("value_added_comparable", "可比价工业增加值, yuan")
    employees_avg: Figure = _figure("employees_avg", "年平均从业人员, persons")
    revenue: Figure = _figure("revenue", "主营业务收入, yuan")
    rd_expense: Figure = _figure("rd_expense", "研发费用, yuan")
    gross_output: Figure = _figure("gross_output", "工业总产值, yuan")
    new_product_output: Figure = _figure("new_product_output", "新产品产值, yuan")

    _plausible = field_validator(*REPORT_FIELDS)(plausible_figure)  # the report's own rule: one message
