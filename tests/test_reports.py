"""Enterprise reports (企业报表): CSV import in Chinese and English, 万元 scaling, atomic errors by
line and column, duplicates, store points at the start of the local period, a round trip."""

from __future__ import annotations

import codecs
import csv
import io
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fmc.central.reports import (
    REPORT_HEADERS,
    match_report_header,
    period_start_ns,
    read_reports_csv,
    read_reports_file,
    report_points,
    reports_import_main,
)
from fmc.core.points import Priority
from fmc.indicators.reports import REPORT_FIELDS, EnterpriseReport, ReportsError, parse_period, period_bounds

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "reports"
EXAMPLE = ROOT / "deploy" / "examples" / "reports.csv"


def _problems(path: Path) -> list[tuple[int | None, str | None, str]]:
    with pytest.raises(ReportsError) as info:
        read_reports_csv(path)
    return [(p.line, p.column, p.message) for p in info.value.report_problems]


def _write(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "r.csv"
    path.write_bytes(text.encode(encoding))
    return path


# --- good files -----------------------------------------------------------------------------------


def test_good_chinese_file_scales_wan_yuan_and_skips_title_and_total_rows() -> None:
    imported = read_reports_file(DATA / "good_zh.csv")
    assert imported.encoding == "UTF-8 with BOM"
    assert imported.header_line == 2  # "2019年企业主要经济指标" title row above it
    by_key = {(r.enterprise, r.period): r for r in imported.reports}
    assert list(by_key) == [
        ("91330602MA2BX1234K", "2019"),
        ("91330602MA2BX1234K", "2019-03"),  # 2019年3月
        ("91330602MA2BX1234K", "2019-04"),  # 2019/4
        ("SXJN-002", "2019"),  # 2019年度
    ]
    annual = by_key["91330602MA2BX1234K", "2019"]
    assert annual.value_added == 12_505_000.0  # "1,250.5" 万元 × 10⁴
    assert annual.value_added_comparable == 12_000_000.0
    assert annual.employees_avg == 320.0  # (人): no scaling
    assert annual.rd_expense == 1_302_000.0  # 130.2 万元
    march = by_key["91330602MA2BX1234K", "2019-03"]
    assert march.value_added_comparable is None  # empty cell: not reported
    assert by_key["SXJN-002", "2019"].value_added == 23_000_000.0  # full-width ２３００ 万元
    assert any("企业名称" in w for w in imported.warnings)
    assert any("line 7" in w for w in imported.warnings)  # 合计 row


def test_good_english_file_semicolons_and_yuan() -> None:
    reports = read_reports_csv(DATA / "good_en.csv")
    keys = [(r.enterprise, r.period) for r in reports]
    assert keys == [("E-001", "2020"), ("E-001", "2020-01"), ("E-002", "2020-02")]
    assert reports[0].value_added == 12_500_000.0
    assert reports[1].value_added == 980_000.50
    assert reports[1].rd_expense is None
    assert reports[2].value_added == 0.0  # zero is a figure, not a gap
    assert reports[2].figures() == {"value_added": 0.0, "employees_avg": 12.0}


def test_gb18030_tab_separated(tmp_path: Path) -> None:
    text = "统一社会信用代码\t年份\t工业总产值(千元)\t新产品产值(千元)\r\nA1\t2018\t1,000\t350\r\n"
    (r,) = read_reports_csv(_write(tmp_path, text, "gb18030"))
    assert (r.enterprise, r.period, r.gross_output, r.new_product_output) == ("A1", "2018", 1_000_000.0, 350_000.0)


def test_example_file_reads() -> None:
    assert len(read_reports_csv(EXAMPLE)) == 12


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("工业增加值（万元）", ("value_added", 10_000.0)),
        ("可比价工业增加值(元)", ("value_added_comparable", 1.0)),
        ("R&D经费支出(亿元)", ("rd_expense", 100_000_000.0)),
        ("从业人员平均人数(人)", ("employees_avg", 1.0)),
        ("Value Added (10k yuan)", ("value_added", 10_000.0)),
        ("营业收入", ("revenue", 1.0)),
        ("报告期", ("period", 1.0)),
        ("企业名称", None),
    ],
)
def test_headers(header: str, expected: tuple[str, float] | None) -> None:
    assert match_report_header(header) == expected


def test_every_synonym_is_recognised() -> None:
    for field_name, names in REPORT_HEADERS.items():
        for name in names:
            assert match_report_header(name) == (field_name, 1.0), name


# --- bad files ------------------------------------------------------------------------------------


def test_every_bad_row_reported_by_line_and_column() -> None:
    problems = _problems(DATA / "bad_rows.csv")
    where = [(line, column) for line, column, _ in problems]
    assert where == [
        (3, "企业编号"),  # empty id
        (4, "企业编号"),  # "bad id!"
        (5, "期间"),  # 2019-13
        (6, "工业增加值(万元)"),  # negative
        (7, "工业增加值(万元)"),  # abc
        (7, "年平均从业人员"),  # 1e400 overflows
        (8, None),  # no figure at all
        (9, "期间"),  # empty period
        (10, "期间"),  # duplicate of line 2
        (11, "期间"),  # a day, not a period
        (12, "工业增加值(万元)"),  # "1万" in the cell
        (12, "主营业务收入(万元)"),  # #N/A
    ]
    messages = dict(((line, column), message) for line, column, message in problems)
    assert "empty" in messages[3, "企业编号"]
    assert "wrong form" in messages[4, "企业编号"]
    assert "no month 13" in messages[5, "期间"]
    assert "negative" in messages[6, "工业增加值(万元)"]
    assert "no figures" in messages[8, None]
    assert "also on line 2" in messages[10, "期间"]
    assert "header" in messages[12, "工业增加值(万元)"]
    assert "Excel error" in messages[12, "主营业务收入(万元)"]


@pytest.mark.parametrize(("text", "line"), [
    # the docs' own figure: 工业增加值（万元） 1,250.5 is 12 505 000 yuan; cut under its header, it was 1 万元
    ("企业编号,期间,工业增加值(万元)\n91330602A1,2019,1,250.5\n91330602B2,2019,980\n", 2),
    # five figure cells under two figure headers: value added 1, employees 250
    ("企业编号,期间,工业增加值,从业人员平均人数\n91330602B2,2019,980,50\n91330602A1,2019,1,250,000,200\n", 3),
], ids=["cut", "shifted"])
def test_a_row_longer_than_the_header_is_refused_by_line_not_cut(tmp_path: Path, text: str, line: int) -> None:
    problems = _problems(_write(tmp_path, text))
    assert [(n, column) for n, column, _ in problems] == [(line, None)]
    assert "more cells than the header" in problems[0][2] and '"1,250.5" (in quotes)' in problems[0][2]


def test_trailing_empty_cells_and_quoted_thousands_are_read(tmp_path: Path) -> None:
    text = '企业编号,期间,工业增加值(万元)\n91330602A1,2019,"1,250.5",,\n91330602B2,2019,980,\n,,,,\n'
    reports = read_reports_csv(_write(tmp_path, text))
    assert [(r.enterprise, r.value_added) for r in reports] == [("91330602A1", 12_505_000.0),
                                                                 ("91330602B2", 9_800_000.0)]


def test_a_figure_above_its_plausibility_ceiling_is_refused_naming_line_column_value_and_limit(
    tmp_path: Path,
) -> None:
    # 1.7e308 万元 overflows to inf yuan, and a county's pooled sum with it; 1e300 employees; a revenue
    # one yuan above 10 万亿元. Line 4 is every ceiling itself (10⁹ 万元 is 10¹³ yuan): read.
    text = ("企业编号,期间,工业增加值(万元),年平均从业人员,营业收入\n"
            "91330602A1,2019,1250,320,8600\n"
            "91330602B2,2019,1.7e308,1e300,10000000000001\n"
            "91330602C3,2019,1000000000,2000000,10000000000000\n")
    path = _write(tmp_path, text)
    problems = _problems(path)
    assert [(line, column) for line, column, _ in problems] == [
        (3, "工业增加值(万元)"), (3, "年平均从业人员"), (3, "营业收入")]
    messages = [message for _, _, message in problems]
    assert "'1.7e308'" in messages[0] and "1,000,000,000 万元" in messages[0]
    assert "10,000,000,000,000 yuan" in messages[0]
    assert "'1e300'" in messages[1] and "2,000,000 persons" in messages[1]
    assert "'10000000000001'" in messages[2] and "10,000,000,000,000 yuan" in messages[2]
    out = io.StringIO()
    assert reports_import_main(path, out) == 2
    assert str(path) in out.getvalue() and "line 3, 工业增加值(万元): '1.7e308'" in out.getvalue()
    at_ceiling = _write(tmp_path, text.replace(text.splitlines()[2] + "\n", ""))
    assert [(r.value_added, r.employees_avg, r.revenue) for r in read_reports_csv(at_ceiling)][1] == (
        1e13, 2e6, 1e13)


def test_bad_file_returns_nothing_and_main_exits_2() -> None:
    out = io.StringIO()
    assert reports_import_main(DATA / "bad_rows.csv", out) == 2
    text = out.getvalue()
    assert "nothing imported (12 problem(s))" in text
    assert "line 10, 期间" in text


def test_duplicate_month_names_both_lines(tmp_path: Path) -> None:
    text = "enterprise,period,revenue\nE1,2019-03,1\nE1,2019,5\nE1,2019年3月,2\n"
    assert _problems(_write(tmp_path, text)) == [
        (4, "period", "enterprise 'E1', period 2019-03 is also on line 2; one row per enterprise and period")
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("enterprise,revenue\nE1,1\n", "no period"),
        ("期间,工业增加值\n2019,1\n", "no enterprise id"),
        ("enterprise,period,remark\nE1,2019,x\n", "no figure columns"),
        ("enterprise,period,revenue,营业收入\nE1,2019,1,2\n", "both mean revenue"),
        ("enterprise,period,工业增加值(美元)\nE1,2019,1\n", "unknown unit"),
        ("", "empty"),
    ],
)
def test_bad_headers(tmp_path: Path, text: str, needle: str) -> None:
    problems = _problems(_write(tmp_path, text))
    assert any(needle in message for _, _, message in problems), problems


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    assert "does not exist" in _problems(tmp_path / "nope.csv")[0][2]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(codecs.BOM_UTF8 + b"\xff\xfe\xfd")
    assert "UTF-8" in _problems(bad)[0][2]


# --- the model ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "period"),
    [("2019", "2019"), ("2019年", "2019"), ("2019年度", "2019"), ("2019-03", "2019-03"), ("2019-3", "2019-03"),
     ("2019/3", "2019-03"), ("2019年3月", "2019-03"), ("２０１９年１２月", "2019-12"), ("201911", "2019-11")],
)
def test_periods(text: str, period: str) -> None:
    assert parse_period(text) == period


@pytest.mark.parametrize("text", ["19", "2019-00", "2019.3", "2019/3/1", "1800", "Q1 2019", ""])
def test_bad_periods(text: str) -> None:
    with pytest.raises(ValueError):
        parse_period(text)


def test_model_rules() -> None:
    assert EnterpriseReport(enterprise="E1", period="2019年3月", revenue=1).period == "2019-03"
    for bad in ({"revenue": -1}, {"revenue": float("nan")}, {"revenue": float("inf")}, {}, {"revenue": 1.7e308},
                {"employees_avg": 1e300}, {"value_added": 1e13 * 1.01}):
        with pytest.raises(ValidationError):
            EnterpriseReport(enterprise="E1", period="2019", **bad)
    with pytest.raises(ValidationError):
        EnterpriseReport(enterprise="企业", period="2019", revenue=1)
    assert period_bounds("2019-12")[1].isoformat() == "2020-01-01"


# --- points ---------------------------------------------------------------------------------------


def test_points_at_local_period_start() -> None:
    reports = read_reports_csv(DATA / "good_en.csv")
    points = report_points(reports, {"E-001": "330602", "E-002": "330603"}, lambda e: "17")
    first = points[0]
    assert first.measurement == "enterprise_report"
    assert first.tags == {"enterprise": "E-001", "region": "330602", "industry": "17", "period": "2020"}
    assert first.priority is Priority.ROLLUP
    # 2020-01-01 00:00 in Shanghai (UTC+8) is 2019-12-31 16:00 UTC
    assert first.ts_ns == int(datetime(2019, 12, 31, 16, tzinfo=UTC).timestamp()) * 10**9
    assert points[2].ts_ns == int(datetime(2020, 1, 31, 16, tzinfo=UTC).timestamp()) * 10**9  # 2020-02
    assert points[2].fields == {"value_added": 0.0, "employees_avg": 12.0}
    assert all(isinstance(v, float) for p in points for v in p.fields.values())
    assert period_start_ns("2020", tz="UTC") == int(datetime(2020, 1, 1, tzinfo=UTC).timestamp()) * 10**9


def test_points_unknown_enterprise_is_an_error() -> None:
    reports = read_reports_csv(DATA / "good_en.csv")
    with pytest.raises(ReportsError) as info:
        report_points(reports, {"E-001": "330602"}, {"E-001": "17", "E-002": "17"})
    messages = [p.message for p in info.value.report_problems]
    assert messages == ["unknown enterprise 'E-002': no region known for it"]
    with pytest.raises(ReportsError, match="not a 6-digit code"):
        report_points(reports, {"E-001": "33", "E-002": "330602"}, lambda e: "17")


def test_main_summary() -> None:
    out = io.StringIO()
    assert reports_import_main(DATA / "good_zh.csv", out) == 0
    text = out.getvalue()
    assert "4 report(s)" in text
    assert "annual report gives the annual figures" in text


# --- round trip -----------------------------------------------------------------------------------

_cents = st.integers(min_value=0, max_value=10**13)
_persons_cents = st.integers(min_value=0, max_value=2_000_000 * 100)  # up to the employees' ceiling
_report = st.builds(
    lambda enterprise, year, month, figures: (enterprise, f"{year}" if month is None else f"{year}-{month:02d}",
                                              figures),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,20}", fullmatch=True),
    st.integers(min_value=1990, max_value=2100),
    st.none() | st.integers(min_value=1, max_value=12),
    st.fixed_dictionaries({}, optional={name: _persons_cents if name == "employees_avg" else _cents
                                        for name in REPORT_FIELDS}).filter(bool),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(_report, max_size=8, unique_by=lambda r: (r[0], r[1])),
    chinese=st.booleans(),
    wan=st.booleans(),
    delimiter=st.sampled_from([",", "\t", ";"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "gb18030", "utf-16"]),
)
def test_round_trip(
    tmp_path: Path, rows: list[tuple[str, str, dict[str, int]]], chinese: bool, wan: bool, delimiter: str,
    encoding: str,
) -> None:
    names = {name: REPORT_HEADERS[name][0] if chinese else name for name in ("enterprise", "period", *REPORT_FIELDS)}
    header = [names["enterprise"], names["period"]]
    for name in REPORT_FIELDS:
        header.append(f"{names[name]}(万元)" if wan and name != "employees_avg" else names[name])
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(header)
    expected = []
    for enterprise, period, figures in rows:
        cells = [enterprise, period]
        values: dict[str, float] = {}
        for name in REPORT_FIELDS:
            if name not in figures:
                cells.append("")
                continue
            yuan = Decimal(figures[name]) / 100
            scaled = wan and name != "employees_avg"
            cells.append(f"{yuan / 10_000 if scaled else yuan:,f}")
            values[name] = float(yuan)
        writer.writerow(cells)
        expected.append(EnterpriseReport(enterprise=enterprise, period=period, **values))
    path = tmp_path / "round.csv"
    path.write_bytes(buffer.getvalue().encode(encoding))
    assert read_reports_csv(path) == expected
