"""Enterprise reports (企业报表) from CSV: ``fmc reports import FILE``, and their store points.

The file is read the way the equipment ledger is (``fmc.plant.ledger``: UTF-8 with or without
BOM, GB18030/GBK, UTF-16; comma, tab or semicolon; title rows above the header; Chinese or English
headers in any order; amounts with thousands separators or full-width digits). A money column
may name its unit in brackets, 工业增加值(万元), and is scaled to yuan; a bare header is yuan.
Import is atomic: any bad row raises ``ReportsError`` listing every problem by the line number
Excel shows and the column as written, and nothing is returned.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from fmc.core.config import InventoryProblem
from fmc.core.points import Point, Priority
from fmc.core.regions import INDUSTRY_CODE_PATTERN, REGION_CODE_PATTERN
from fmc.indicators.reports import (
    FIGURE_CEILINGS,
    MONEY_FIELDS,
    REPORT_FIELDS,
    EnterpriseReport,
    ReportsError,
    ceiling_text,
    implausible_figure,
    period_bounds,
)
from fmc.plant.ledger import (
    AMOUNT_UNITS,
    TOTAL_ROW_MARKERS,
    HeaderUnits,
    _cell,
    _delimiter_name,
    cells_beyond_header,
    collect_columns,
    header_key,
    match_header,
    parse_number,
    read_csv_text,
    split_cell_fix,
    split_csv,
)

MEASUREMENT = "enterprise_report"
DEFAULT_TZ = "Asia/Shanghai"

# Header synonyms per field, compared as ``header_key`` forms (case, spaces, '_', '-', '*', ':'
# and '?' ignored; full-width folded), like the inventory's.
REPORT_HEADERS: dict[str, tuple[str, ...]] = {
    "enterprise": (
        "企业编号", "统一社会信用代码", "社会信用代码", "企业代码", "企业ID", "enterprise", "enterprise_id",
        "credit_code",
    ),
    "period": ("期间", "年份", "月份", "报告期", "统计期", "统计期间", "period", "year", "month", "reporting_period"),
    "value_added": ("工业增加值", "现价工业增加值", "value_added", "industrial_value_added"),
    "value_added_comparable": ("可比价工业增加值", "工业增加值(可比价)", "value_added_comparable"),
    "employees_avg": (
        "年平均从业人员", "从业人员平均人数", "年平均从业人数", "平均从业人员", "employees_avg", "average_employees",
        "employees",
    ),
    "revenue": ("主营业务收入", "营业收入", "revenue", "main_business_revenue"),
    "rd_expense": ("研发费用", "R&D经费支出", "研究与试验发展经费支出", "rd_expense", "r&d_expense", "r&d_expenditure"),
    "gross_output": ("工业总产值", "gross_output", "gross_industrial_output"),
    "new_product_output": ("新产品产值", "new_product_output"),
}
REQUIRED_LABELS = {
    "enterprise": "enterprise id (企业编号 / 统一社会信用代码)",
    "period": "period (期间 / 报告期)",
}

# Units a header may name in brackets: money to yuan, employees in persons.
MONEY_UNITS: dict[str, float] = {
    **AMOUNT_UNITS, "千元": 1_000.0, "亿元": 100_000_000.0, "10kyuan": 10_000.0, "10000yuan": 10_000.0,
}
PERSON_UNITS: dict[str, float] = {"人": 1.0, "persons": 1.0, "person": 1.0, "people": 1.0}
REPORT_UNITS: HeaderUnits = {**{name: MONEY_UNITS for name in MONEY_FIELDS}, "employees_avg": PERSON_UNITS}

_WAN_HINT = "工业增加值(万元)"
_SCALE_NAMES = {1_000.0: "千元", 10_000.0: "万元", 100_000_000.0: "亿元"}  # a money header's unit, for messages
_FORM = {
    "enterprise": "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64 characters "
    "(e.g. the 18-character 统一社会信用代码)",
}


def _synonyms() -> dict[str, str]:
    return {header_key(name): name_field for name_field, names in REPORT_HEADERS.items() for name in names}


def match_report_header(header: str) -> tuple[str, float] | None:
    """(field, scale) for a reports header: '工业增加值（万元）' -> ('value_added', 10000.0)."""
    return match_header(header, _synonyms(), REPORT_UNITS, notes=False)


@dataclass(frozen=True)
class _Column:
    field: str
    index: int
    header: str
    scale: float = 1.0


@dataclass(frozen=True)
class ReportsImport:
    """A reports file read without problems, with what ``fmc reports import`` says about it."""

    path: Path
    reports: list[EnterpriseReport]
    lines: dict[tuple[str, str], int]  # (enterprise, period) -> spreadsheet line
    warnings: list[str] = field(default_factory=list)
    encoding: str = "UTF-8"
    delimiter: str = "comma"
    header_line: int = 1


def read_reports_csv(path: str | Path) -> list[EnterpriseReport]:
    """Every report in a CSV file; ``ReportsError`` lists every problem, nothing is returned then."""
    return read_reports_file(path).reports


def read_reports_file(path: str | Path) -> ReportsImport:
    path = Path(path)
    text, encoding = read_csv_text(path, ReportsError)
    return parse_reports_text(text, path=path, encoding=encoding)


def parse_reports_text(text: str, *, path: Path, encoding: str = "UTF-8") -> ReportsImport:
    """A reports CSV already decoded; ``path`` only names it in messages."""
    synonyms = _synonyms()
    try:
        rows, delimiter, header_offset = split_csv(text, synonyms, REPORT_UNITS, notes=False)
    except csv.Error as e:
        raise ReportsError(path, [InventoryProblem(f"not readable as CSV: {e}")]) from None
    if not any(any(cell.strip() for cell in row) for row in rows):
        raise ReportsError(path, [InventoryProblem("the file is empty; the first line names the columns")])

    header_line = header_offset + 1
    body = rows[header_offset + 1:]
    columns, warnings, problems = _map_header(rows[header_offset], body, header_line, synonyms)
    if problems:
        raise ReportsError(path, problems)

    reports: list[EnterpriseReport] = []
    lines: dict[tuple[str, str], int] = {}
    skipped_totals: list[int] = []
    for line, row in enumerate(body, start=header_line + 1):
        if not any(cell.strip() for cell in row):
            continue  # blank lines and Excel's trailing ",,,," rows
        if _cell(row, columns["enterprise"].index).strip().startswith(TOTAL_ROW_MARKERS):
            skipped_totals.append(line)
            continue
        beyond = cells_beyond_header(row, len(rows[header_offset]))
        if beyond is not None:  # its cells are not under their headers: none of them is read
            problems.append(InventoryProblem(f"{beyond}; {split_cell_fix(delimiter)}", line))
            continue
        report, row_problems = _parse_row(row, line, columns)
        problems.extend(row_problems)
        if report is None:
            continue
        key = (report.enterprise, report.period)
        if key in lines:
            problems.append(
                InventoryProblem(
                    f"enterprise {report.enterprise!r}, period {report.period} is also on line {lines[key]}; "
                    "one row per enterprise and period",
                    line,
                    columns["period"].header,
                )
            )
            continue
        lines[key] = line
        reports.append(report)
    if problems:
        raise ReportsError(path, problems)  # in line order: rows are read top to bottom
    if skipped_totals:
        warnings.append(f"total row(s) skipped: line {', '.join(map(str, skipped_totals))}")
    if not reports:
        warnings.append("no report rows below the header")
    return ReportsImport(path, reports, lines, warnings, encoding, _delimiter_name(delimiter), header_line)


def _map_header(
    header: list[str], body: list[list[str]], header_line: int, synonyms: dict[str, str]
) -> tuple[dict[str, _Column], list[str], list[InventoryProblem]]:
    def unit_problem(name: str) -> InventoryProblem | None:
        # a known header with a unit we do not know: an error, not an unknown column
        m = re.fullmatch(r"(.+?)\((.+)\)", header_key(name))
        if m and synonyms.get(m.group(1)) is not None:
            return InventoryProblem(_unit_message(name, synonyms[m.group(1)]), header_line, name)
        return None

    # a bracket after a column that takes no unit is an error here ("takes no unit"), not a note
    columns, unknown, problems = collect_columns(
        header, body, header_line, synonyms, REPORT_UNITS, unit_problem, notes=False
    )
    missing = [name for name in REQUIRED_LABELS if name not in columns]
    for field_name in missing:
        problems.append(
            InventoryProblem(
                f"no {REQUIRED_LABELS[field_name]} column; name it one of: {' / '.join(REPORT_HEADERS[field_name])}",
                header_line,
            )
        )
    if not missing and not any(name in columns for name in REPORT_FIELDS):
        problems.append(
            InventoryProblem(
                "no figure columns; name at least one of: "
                + ", ".join(f"{REPORT_HEADERS[name][0]} ({name})" for name in REPORT_FIELDS),
                header_line,
            )
        )
    if missing:
        shown = [cell.strip() for cell in header if cell.strip()][:12]
        problems.append(InventoryProblem(f"the header row reads: {', '.join(shown) or '(nothing)'}", header_line))
    warnings = [f"column(s) not part of the reports, ignored: {', '.join(unknown)}"] if unknown else []
    return columns, warnings, problems


def _unit_message(header: str, field_name: str) -> str:
    if field_name in MONEY_FIELDS:
        return f"unknown unit in {header!r}; write (元), (千元), (万元) or (亿元), or no unit for yuan"
    if field_name == "employees_avg":
        return f"unknown unit in {header!r}; write (人) or no unit"
    return f"{header!r}: this column takes no unit"


def _parse_row(
    row: list[str], line: int, columns: dict[str, _Column]
) -> tuple[EnterpriseReport | None, list[InventoryProblem]]:
    values: dict[str, Any] = {}
    problems: list[InventoryProblem] = []
    for field_name, column in columns.items():
        cell = _cell(row, column.index).strip()
        if not cell:
            if field_name in REQUIRED_LABELS:
                problems.append(InventoryProblem(f"empty; every row needs its {REQUIRED_LABELS[field_name]}", line,
                                                 column.header))
            continue
        if field_name in REQUIRED_LABELS:
            values[field_name] = cell
            continue
        try:
            value = parse_number(cell)
        except ValueError as e:
            message = str(e)
            if "万" in cell:  # parse_number's hint names the inventory's column
                message = f"{cell!r} is not a number; write digits only and put the unit in the header: {_WAN_HINT}"
            problems.append(InventoryProblem(message, line, column.header))
            continue
        if value < 0:
            problems.append(InventoryProblem(f"{cell!r} is negative; reported figures are ≥ 0", line, column.header))
            continue
        scaled = value * column.scale
        if implausible_figure(field_name, scaled):  # also a product that overflowed: 1e305 亿元 is inf yuan
            problems.append(InventoryProblem(_ceiling_message(cell, field_name, column.scale), line, column.header))
            continue
        values[field_name] = round(scaled, 2) if column.scale != 1.0 else value
    figure_cells = any(_cell(row, c.index).strip() for c in columns.values() if c.field in REPORT_FIELDS)
    try:
        report = EnterpriseReport.model_validate(values)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            if err["type"] == "missing":
                continue  # an empty enterprise or period cell, already reported as empty
            if not err["loc"] and figure_cells:
                continue  # "no figures" when the row's figures were there but bad: already reported
            problems.append(_row_problem(err, line, columns, values))
        return None, problems
    return (None, problems) if problems else (report, [])


def _ceiling_message(cell: str, field_name: str, scale: float) -> str:
    """'1.7e308' under 工业增加值(万元): the ceiling in the header's unit too (1,000,000,000 万元)."""
    in_header_unit = ""
    if scale != 1.0:
        unit = _SCALE_NAMES.get(scale, f"×{scale:g} yuan")
        in_header_unit = f", {FIGURE_CEILINGS[field_name] / scale:,.0f} {unit} in this column"
    return f"{cell!r} is above {ceiling_text(field_name)}{in_header_unit}; check the digits and the header's unit"


def _row_problem(err: Any, line: int, columns: dict[str, _Column], values: dict[str, Any]) -> InventoryProblem:
    field_name = next((p for p in err["loc"] if isinstance(p, str)), None)
    if field_name is None:  # the model's own check: no figure in the row
        return InventoryProblem(err["msg"].removeprefix("Value error, "), line)
    column = columns.get(field_name)
    if err["type"] == "string_pattern_mismatch":
        message = f"{values.get(field_name)!r} has the wrong form; write {_FORM.get(field_name, 'text')}"
    else:
        message = err["msg"].removeprefix("Value error, ")
    return InventoryProblem(message, line, column.header if column else field_name)


# --- store points --------------------------------------------------------------------------------


def period_start_ns(period: str, tz: str = DEFAULT_TZ) -> int:
    """UTC nanoseconds of local midnight on the first day of the period."""
    first, _ = period_bounds(period)
    local = datetime(first.year, first.month, first.day, tzinfo=ZoneInfo(tz))
    return int(local.timestamp()) * 1_000_000_000


def report_points(
    reports: Iterable[EnterpriseReport],
    region_of: Mapping[str, str] | Callable[[str], str | None],
    industry_of: Mapping[str, str] | Callable[[str], str | None],
    *,
    tz: str = DEFAULT_TZ,
) -> list[Point]:
    """``enterprise_report`` points, one per report: tags enterprise, region, industry, period;
    the figures given as float fields; ts the start of the period in local time; ROLLUP priority.

    ``region_of`` / ``industry_of`` map an enterprise id to its 6-digit region code and its
    GB/T 4754 industry code (a dict or a function). An enterprise either does not know, or a code
    of the wrong form, raises ``ReportsError`` listing every such enterprise; no points then."""
    region = _lookup(region_of)
    industry = _lookup(industry_of)
    points: list[Point] = []
    problems: list[InventoryProblem] = []
    checked: set[str] = set()
    for report in reports:
        enterprise = report.enterprise
        reg, ind = region(enterprise), industry(enterprise)
        if enterprise not in checked:
            checked.add(enterprise)
            if reg is None or ind is None:
                missing = " and ".join(w for w, v in (("region", reg), ("industry", ind)) if v is None)
                problems.append(InventoryProblem(f"unknown enterprise {enterprise!r}: no {missing} known for it"))
            else:
                if not re.fullmatch(REGION_CODE_PATTERN, reg):
                    problems.append(
                        InventoryProblem(f"enterprise {enterprise!r}: region {reg!r} is not a 6-digit code")
                    )
                if not re.fullmatch(INDUSTRY_CODE_PATTERN, ind):
                    problems.append(
                        InventoryProblem(f"enterprise {enterprise!r}: industry {ind!r} is not a GB/T 4754 code")
                    )
        if problems or reg is None or ind is None:
            continue
        points.append(
            Point(
                MEASUREMENT,
                {"enterprise": enterprise, "region": reg, "industry": ind, "period": report.period},
                {name: float(value) for name, value in report.figures().items()},
                period_start_ns(report.period, tz),
                Priority.ROLLUP,
            )
        )
    if problems:
        raise ReportsError("<reports>", problems)
    return points


def _lookup(source: Mapping[str, str] | Callable[[str], str | None]) -> Callable[[str], str | None]:
    if isinstance(source, Mapping):
        return source.get
    return source


# --- CLI -----------------------------------------------------------------------------------------


def reports_import_main(path: Path, out: TextIO) -> int:
    """``fmc reports import FILE``: 0 and a summary, or 2 and every problem in the file. Reads and
    checks only; the caller writes ``report_points`` of ``read_reports_csv`` to the store."""
    try:
        imported = read_reports_file(path)
    except ReportsError as e:
        print(e.render(), file=out)
        return 2
    reports = imported.reports
    w = out.write
    w(f"{imported.path}: {len(reports)} report(s) — {imported.encoding}, {imported.delimiter}-separated, "
      f"header on line {imported.header_line}\n")
    for warning in imported.warnings:
        w(f"warning: {warning}\n")
    w(f"  enterprises: {len({r.enterprise for r in reports})}\n")
    for kind, label in (("year", "annual"), ("quarter", "quarterly"), ("ytd", "year to date (1–N月累计)"),
                        ("month", "monthly")):
        periods = sorted({r.period for r in reports if r.kind == kind})
        shown = ", ".join(periods) if len(periods) <= 4 else f"{periods[0]} … {periods[-1]}"
        if periods or kind in ("year", "month"):
            w(f"  {label}: {sum(1 for r in reports if r.kind == kind)}" + (f" ({shown})" if periods else "") + "\n")
    years_with_several = sorted(y for y in {r.period[:4] for r in reports}
                                if len({r.kind for r in reports if r.period[:4] == y}) > 1)
    if years_with_several:
        w(f"  several kinds of report for {', '.join(years_with_several)}: the annual report gives the annual figures "
          "it has; each other figure of a period comes from the report for exactly that period if it gives it, else "
          "from the fewest reports that make the period up (docs/reports.md)\n")
    for name in REPORT_FIELDS:
        given = [getattr(r, name) for r in reports if getattr(r, name) is not None]
        if given:
            unit = "persons" if name == "employees_avg" else "yuan"
            w(f"  {name}: {len(given)} report(s), total {math.fsum(given):,.2f} {unit}\n")
    return 0
