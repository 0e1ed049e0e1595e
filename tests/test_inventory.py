"""Equipment inventory (设备台账): CSV import in the forms Excel writes, atomic errors by line,
merge with [[equipment]] tables, and the NC summary against hand-computed figures."""

from __future__ import annotations

import csv
import io
import logging
import tomllib
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from fmc.core.config import ID_PATTERN, ConfigError
from fmc.plant.equipment import KIND_PATTERN, EquipmentItem, InventoryConfig, InventoryError, kind_from_category
from fmc.plant.ledger import (
    FALSE_WORDS,
    HEADER_SYNONYMS,
    TRUE_WORDS,
    decode_ledger,
    inventory_check_main,
    load_inventory,
    load_inventory_csv,
    match_header,
    merge_inventory,
    nc_summary,
    parse_bool,
    parse_date,
    parse_number,
    read_inventory_csv,
    serial_date_window,
)
from fmc.plant.rollups import InventoryItem, Site, enterprise_daily

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "inventory"
EXAMPLE = ROOT / "deploy" / "examples" / "inventory.csv"
YEAR_END_2020 = date(2020, 12, 31)


def write_bytes(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def problems_of(exc: InventoryError) -> list[tuple[int | None, str | None]]:
    return [(p.line, p.column) for p in exc.inventory_problems]


# --- good files ----------------------------------------------------------------------------------


def test_good_english_file_every_field():
    imported = read_inventory_csv(DATA / "good_en.csv")
    assert (imported.encoding, imported.delimiter, imported.header_line) == ("UTF-8", "comma", 1)
    assert [i.id for i in imported.items] == ["L-01", "L-02", "L-03", "L-04", "W-01", "D-01", "D-02", "C-01", "E-01"]
    by_id = {i.id: i for i in imported.items}
    assert by_id["L-01"] == EquipmentItem(
        id="L-01", name="Air-jet loom 1", category="Loom", kind="loom", nc=True, key_process=True,
        asset_value=1_250_000.0, commissioned=date(2018, 3, 15), decommissioned=None, in_scope=True, connected=True,
    )
    assert by_id["L-03"].asset_value == 980_000.50 and by_id["L-03"].commissioned == date(2019, 5, 1)
    assert by_id["L-03"].connected is False
    assert by_id["W-01"].commissioned == date(2019, 5, 1)  # Excel day number 43586
    assert by_id["D-01"].commissioned == date(2017, 8, 1)  # 42948
    assert by_id["D-01"].asset_value == 2_400_000.0 and by_id["D-01"].nc is False
    assert by_id["L-04"].decommissioned == date(2020, 6, 30)
    assert by_id["C-01"].in_scope is False
    assert by_id["D-02"].asset_value is None
    assert imported.lines == {"L-01": 2, "L-02": 3, "L-03": 4, "L-04": 5, "W-01": 6, "D-01": 7, "D-02": 8,
                              "C-01": 9, "E-01": 10}
    assert imported.warnings == ["column(s) not part of the inventory, ignored: Location"]


def test_good_chinese_file_with_bom():
    raw = (DATA / "good_zh_bom.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    imported = read_inventory_csv(DATA / "good_zh_bom.csv")
    assert imported.encoding == "UTF-8 with BOM"
    by_id = {i.id: i for i in imported.items}
    assert len(by_id) == 9  # the 合计 row is not equipment
    assert by_id["L-01"] == EquipmentItem(
        id="L-01", name="喷气织机1号", category="织机", kind="织机", nc=True, key_process=True,
        asset_value=1_250_000.0, commissioned=date(2018, 3, 15), in_scope=True, connected=True,
    )
    assert by_id["L-02"].asset_value == 1_250_000.0  # full-width digits
    assert by_id["L-02"].nc and by_id["L-02"].connected  # √
    assert by_id["D-01"].nc is False and by_id["D-01"].key_process is True  # ×, √
    assert by_id["L-04"].decommissioned == date(2020, 6, 30)  # 2020年6月30日
    assert imported.warnings == [
        "column(s) not part of the inventory, ignored: 序号, 备注",
        "total row(s) skipped: line 11",
    ]


def test_gb18030_file_is_detected_and_equals_the_utf8_one():
    raw = (DATA / "good_zh_gb18030.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # so the test really exercises the fallback
    gb = read_inventory_csv(DATA / "good_zh_gb18030.csv")
    assert gb.encoding == "GB18030"
    assert gb.items == read_inventory_csv(DATA / "good_zh_bom.csv").items
    assert gb.items[0].name == "喷气织机1号"
    with_bom = DATA / "good_zh_gb18030.csv"
    assert decode_ledger("\ufeff".encode("gb18030") + with_bom.read_bytes())[0].startswith("序号,设备编号")


def test_english_and_chinese_files_describe_the_same_equipment():
    def facts(path: Path) -> list[tuple]:
        return [
            (i.id, i.nc, i.key_process, i.asset_value, i.commissioned, i.decommissioned, i.in_scope, i.connected)
            for i in load_inventory_csv(path)
        ]

    assert facts(DATA / "good_en.csv") == facts(DATA / "good_zh_bom.csv")


def test_nc_summary_hand_computed_at_year_end():
    summary = nc_summary(load_inventory_csv(DATA / "good_en.csv"), YEAR_END_2020)
    # counted: L-01 L-02 L-03 W-01 D-01 E-01; L-04 scrapped 2020-06-30, D-02 from 2021, C-01 out of scope
    assert summary == {
        "on": YEAR_END_2020,
        "equipment_total": 6,
        "equipment_nc": 5,
        "asset_value_total": 6_740_000.50,  # 1,250,000 ×2 + 980,000.50 + 860,000 + 2,400,000 (E-01 has none)
        "asset_value_nc": 4_340_000.50,
        "equipment_without_asset_value": 1,
        "nc_share_by_count": 5 / 6,
        "nc_share_by_value": 4_340_000.50 / 6_740_000.50,
        "equipment_connected": 4,  # L-01 L-02 W-01 E-01
        "nc_equipment_connected": 4,
        "key_process_total": 3,  # L-01 L-02 D-01
        "key_process_nc": 2,
        "out_of_scope": 1,
        "not_yet_commissioned": 1,
        "decommissioned": 1,
        "by_category": {
            "Dyeing": {"equipment_total": 1, "equipment_nc": 0},
            "Embroidery": {"equipment_total": 1, "equipment_nc": 1},
            "Loom": {"equipment_total": 3, "equipment_nc": 3},
            "Warping": {"equipment_total": 1, "equipment_nc": 1},
        },
    }


def test_nc_summary_mid_year_and_date_boundaries():
    items = load_inventory_csv(DATA / "good_en.csv")
    mid = nc_summary(items, date(2020, 6, 29))
    # L-04 (non-NC, 120,000) still in service; E-01 not yet commissioned (2020-12-01)
    assert (mid["equipment_total"], mid["equipment_nc"]) == (6, 4)
    assert mid["asset_value_total"] == 6_740_000.50 + 120_000
    assert mid["asset_value_nc"] == 4_340_000.50
    assert (mid["not_yet_commissioned"], mid["decommissioned"]) == (2, 0)
    # decommissioned is exclusive: on the scrapping day it no longer counts; commissioned is inclusive
    on_scrap_day = nc_summary(items, date(2020, 6, 30))
    assert on_scrap_day["decommissioned"] == 1 and on_scrap_day["equipment_total"] == 5
    assert nc_summary(items, date(2020, 12, 1))["equipment_nc"] == 5


def test_nc_summary_empty_and_valueless():
    empty = nc_summary([], YEAR_END_2020)
    assert empty["equipment_total"] == 0 and empty["nc_share_by_count"] is None
    assert empty["nc_share_by_value"] is None and empty["by_category"] == {}
    one = nc_summary([EquipmentItem(id="a", nc=True)], YEAR_END_2020)
    assert one["nc_share_by_count"] == 1.0 and one["nc_share_by_value"] is None
    assert one["by_category"] == {"(no category)": {"equipment_total": 1, "equipment_nc": 1}}


def test_example_ledger_loads_with_the_hand_computed_summary():
    imported = read_inventory_csv(EXAMPLE)
    assert len(imported.items) == 20 and imported.encoding == "UTF-8 with BOM"
    assert imported.warnings == ["column(s) not part of the inventory, ignored: 序号, 规格型号, 使用部门, 备注"]
    s = nc_summary(imported.items, YEAR_END_2020)
    assert (s["equipment_total"], s["equipment_nc"]) == (16, 13)
    assert (s["out_of_scope"], s["not_yet_commissioned"], s["decommissioned"]) == (2, 1, 1)
    assert (s["asset_value_total"], s["asset_value_nc"]) == (18_020_000.0, 17_270_000.0)
    assert (s["equipment_connected"], s["nc_equipment_connected"]) == (12, 12)
    assert (s["key_process_total"], s["key_process_nc"]) == (12, 11)
    assert s["by_category"]["织机"] == {"equipment_total": 8, "equipment_nc": 7}
    assert s["by_category"]["染色机"] == {"equipment_total": 2, "equipment_nc": 1}
    # the agent example's topic names loom-07: it is in the ledger and connected
    assert next(i for i in imported.items if i.id == "loom-07").connected


# --- bad files -----------------------------------------------------------------------------------


def test_bad_rows_every_problem_by_line_and_nothing_imported():
    with pytest.raises(InventoryError) as err:
        load_inventory_csv(DATA / "bad_rows.csv")
    exc = err.value
    assert problems_of(exc) == [
        (3, "设备编号"),  # empty id
        (4, "设备编号"),  # '织机 05': wrong form
        (5, "是否数控"),  # '可能'
        (6, "是否数控"),  # empty
        (7, "原值"),  # '12万'
        (8, "原值"),  # negative
        (9, "启用日期"),  # 2019-02-30
        (10, "启用日期"),  # 05/01/2019
        (11, "报废日期"),  # before commissioned
        (12, "是否关键工序"),  # '也许'
        (12, "是否联网"),  # 'maybe'
        (13, "设备编号"),  # L-01 again
        (15, "原值"),  # #VALUE!
        (15, "启用日期"),  # '2019'
    ]
    text = exc.render().splitlines()
    assert text[0].endswith("bad equipment inventory, nothing imported (14 problem(s))")
    expected = [
        "line 3, 设备编号: empty; every row needs an id",
        "line 4, 设备编号: '织机 05' has the wrong form",
        "line 5, 是否数控: '可能' is not yes or no; write 是 or 否",
        "line 6, 是否数控: empty; write 是 or 否",
        "line 7, 原值: '12万' is not a number",
        "line 8, 原值: '-5000' is negative",
        "line 9, 启用日期: '2019-02-30' is not a date: there is no such day",
        "line 10, 启用日期: '05/01/2019': day and month order is ambiguous",
        "line 11, 报废日期: decommissioned 2018-12-31 is before commissioned 2019-05-01",
        "line 12, 是否关键工序: '也许' is not yes or no",
        "line 12, 是否联网: 'maybe' is not yes or no",
        "line 13, 设备编号: id 'L-01' is also on line 2",
        "line 15, 原值: '#VALUE!' is an Excel error value",
        "line 15, 启用日期: '2019' is a year or a month, not a day",
    ]
    for line, want in zip(text[1:], expected, strict=True):
        assert line.startswith(f"  - {want}"), (line, want)
    assert isinstance(exc, ConfigError)  # so `fmc` prints it and exits 2 like any config mistake


def test_a_row_longer_than_the_header_is_refused_by_line_not_cut(tmp_path):
    # 原值 1,200,000 unquoted: read as 1 yuan, the rest dropped with only a warning
    path = write_bytes(tmp_path, "w.csv", "设备编号,是否数控,原值\nA,是,\"1,200,000\",\nB,是,1,200,000\n".encode())
    with pytest.raises(InventoryError) as err:
        read_inventory_csv(path)
    assert problems_of(err.value) == [(3, None)]
    assert "more cells than the header's 3 column(s): '200', '000' right of the last one" in err.value.render()


def test_duplicate_ids_name_both_lines(tmp_path):
    path = write_bytes(tmp_path, "dup.csv", b"id,nc\nA-1,yes\nB-1,no\nA-1,no\nA-1,yes\nB-1,yes\n")
    with pytest.raises(InventoryError) as err:
        read_inventory_csv(path)
    assert [str(p) for p in err.value.inventory_problems] == [
        "line 4, id: id 'A-1' is also on line 2; each piece of equipment has one row",
        "line 5, id: id 'A-1' is also on line 2; each piece of equipment has one row",
        "line 6, id: id 'B-1' is also on line 3; each piece of equipment has one row",
    ]


def test_ids_that_differ_only_in_case_or_width_are_refused_naming_both_rows(tmp_path):
    # the sources' equipment tags are matched exactly: CNC-01 and cnc-01 would be two machines in both
    # rates' denominators, one of them never heard from; which row is right is the engineer's call
    text = "设备编号,是否数控\nCNC-01,是\ncnc-01,否\n L-1 ,否\nl-1,是\nＣＮＣ－０１,是\n"
    with pytest.raises(InventoryError) as err:
        read_inventory_csv(write_bytes(tmp_path, "case.csv", text.encode()))
    messages = [str(p) for p in err.value.inventory_problems]
    assert messages[0] == ("line 3, 设备编号: id 'cnc-01' and 'CNC-01' on line 2 differ only in case or "
                           "full-width characters; the sources' ids are matched exactly, so they would be two "
                           "machines: keep the row that is right, or give the other machine an id of its own")
    assert messages[1].startswith("line 5, 设备编号: id 'l-1' and 'L-1' on line 4 differ only in case")
    assert messages[2].startswith("line 6, 设备编号: 'ＣＮＣ－０１' has the wrong form")
    assert messages[3].startswith("line 6, 设备编号: id 'ＣＮＣ－０１' and 'CNC-01' on line 2 differ only in case")
    assert len(messages) == 4


def test_merge_ids_that_differ_only_in_case_names_both_places(tmp_path):
    (tmp_path / "ledger.csv").write_text("id,nc\nPRESS-01,0\n", encoding="utf-8")
    equipment, inventory = toml_inventory(TOML_EQUIPMENT)
    with pytest.raises(ConfigError) as err:
        load_inventory(tmp_path / "agent.toml", [*equipment, EquipmentItem(id="CNC-01", nc=True)], inventory)
    assert [p[:2] for p in err.value.problems] == [
        ("equipment[2].id", "'CNC-01' and equipment[0] 'cnc-01' differ only in case"),
        ("equipment[1].id", f"'press-01' and 'PRESS-01' in {tmp_path / 'ledger.csv'} line 2 differ only in case"),
    ]


def test_missing_required_column_names_the_headers_in_both_languages():
    with pytest.raises(InventoryError) as err:
        read_inventory_csv(DATA / "missing_nc.csv")
    problem, found = err.value.inventory_problems
    assert (problem.line, found.line) == (1, 1)
    assert "NC yes/no (是否数控)" in problem.message
    for header in ("是否数控", "数控设备", "数控", "nc"):
        assert header in problem.message.split("one of: ")[1].split(" / ")
    assert found.message == "the header row reads: 设备编号, 设备名称, 设备类别, 原值"


def test_both_required_columns_missing(tmp_path):
    path = write_bytes(tmp_path, "x.csv", "设备名称,设备类别,原值\n织机,织机,1\n".encode())
    with pytest.raises(InventoryError) as err:
        read_inventory_csv(path)
    messages = [p.message for p in err.value.inventory_problems]
    assert len(messages) == 3
    assert "设备编号" in messages[0] and "id" in messages[0].split(" / ")
    assert "是否数控" in messages[1]
    assert messages[2] == "the header row reads: 设备名称, 设备类别, 原值"


def test_two_columns_meaning_the_same_field(tmp_path):
    path = write_bytes(tmp_path, "x.csv", "设备编号,编号,数控\nA,B,是\n".encode())
    with pytest.raises(InventoryError) as err:
        read_inventory_csv(path)
    assert [str(p) for p in err.value.inventory_problems] == [
        "line 1: columns '设备编号' and '编号' both mean id; keep one"
    ]


def test_unreadable_files(tmp_path):
    with pytest.raises(InventoryError, match="does not exist"):
        read_inventory_csv(tmp_path / "nope.csv")
    with pytest.raises(InventoryError, match="neither UTF-8 nor GB18030"):
        read_inventory_csv(write_bytes(tmp_path, "bin.csv", b"id,nc\r\nA,\xff\xff\r\n"))  # 0xFF leads nothing
    with pytest.raises(InventoryError, match="empty"):
        read_inventory_csv(write_bytes(tmp_path, "empty.csv", b"\xef\xbb\xbf\r\n,,\r\n"))


# --- the forms Excel writes ----------------------------------------------------------------------


def test_title_rows_above_the_header_keep_excel_line_numbers(tmp_path):
    text = "绍兴示范纺织有限公司设备台账,,\n2020年12月,,\n设备编号,是否数控,原值(万元)\nL-1,是,12.5\nL-2,不知道,1\n"
    with pytest.raises(InventoryError) as err:
        read_inventory_csv(write_bytes(tmp_path, "t.csv", text.encode("gb18030")))
    assert problems_of(err.value) == [(5, "是否数控")]
    ok = read_inventory_csv(write_bytes(tmp_path, "ok.csv", text.replace("不知道", "否").encode("gb18030")))
    assert ok.header_line == 3 and ok.lines == {"L-1": 4, "L-2": 5}
    assert [i.asset_value for i in ok.items] == [125_000.0, 10_000.0]  # 原值 in 万元 -> yuan


def test_unicode_text_tab_separated_and_semicolon_with_sep_line(tmp_path):
    # Excel "Unicode Text (*.txt)": UTF-16 LE with BOM, tab-separated
    utf16 = write_bytes(tmp_path, "u.txt", "设备编号\t是否数控\t原值\r\nL-1\t是\t1,234,567.00\r\n".encode("utf-16"))
    imported = read_inventory_csv(utf16)
    assert (imported.encoding, imported.delimiter) == ("UTF-16", "tab")
    assert imported.items == [EquipmentItem(id="L-1", nc=True, asset_value=1_234_567.0)]
    # European-locale Excel: semicolons, and its own "sep=;" first line (not shown as a row by Excel)
    semi = write_bytes(tmp_path, "s.csv", b"sep=;\r\nid;nc;asset_value\r\nL-1;1;1,5\r\n")
    with pytest.raises(InventoryError) as err:
        read_inventory_csv(semi)
    assert problems_of(err.value) == [(2, "asset_value")]  # '1,5' is no number here, on Excel's line 2
    semi.write_bytes(b"id;nc;asset_value\r\nL-1;1;1500\r\n")
    assert read_inventory_csv(semi).delimiter == "semicolon"


def test_delimiter_is_taken_from_the_header_not_from_a_later_cell(tmp_path):
    # split at commas, line 2 would look like a header with five known columns; the real one is line 1
    text = "设备编号\t设备名称\t是否数控\nA\tnc,id,name,category,kind\t是\n"
    imported = read_inventory_csv(write_bytes(tmp_path, "t.csv", text.encode()))
    assert (imported.delimiter, imported.header_line) == ("tab", 1)
    assert imported.items == [EquipmentItem(id="A", name="nc,id,name,category,kind", nc=True)]


def test_unknown_columns_warned_once(tmp_path, caplog):
    path = write_bytes(tmp_path, "w.csv", "序号,设备编号,数控,存放地点,\n1,A,是,一车间,\n2,B,否,二车间,x\n".encode())
    with caplog.at_level(logging.WARNING, logger="fmc.inventory"):
        items = load_inventory_csv(path)
    assert [i.id for i in items] == ["A", "B"]
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [f"{path}: column(s) not part of the inventory, ignored: 序号, 存放地点, column E (no header)"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("设备编号", ("id", 1.0)), ("*设备编号", ("id", 1.0)), ("ID", ("id", 1.0)), ("Equipment ID", ("id", 1.0)),
        ("设备名称", ("name", 1.0)), ("类型", ("category", 1.0)), ("Kind", ("kind", 1.0)),
        ("是否数控？", ("nc", 1.0)), ("NC", ("nc", 1.0)), ("关键工序", ("key_process", 1.0)),
        ("Key Process", ("key_process", 1.0)), ("原值（元）", ("asset_value", 1.0)), ("原值(元)", ("asset_value", 1.0)),
        ("资产原值（万元）", ("asset_value", 10_000.0)), ("asset-value", ("asset_value", 1.0)),
        ("投用日期", ("commissioned", 1.0)), ("退役日期", ("decommissioned", 1.0)), ("统计范围", ("in_scope", 1.0)),
        ("In Scope", ("in_scope", 1.0)), ("联网", ("connected", 1.0)), ("CONNECTED", ("connected", 1.0)),
        ("序号", None), ("备注", None), ("备注(x)", None), ("原值（美元）", None), ("原值(含税)", None),
        # a note in brackets, as ledger templates write them, on a column that takes no unit
        ("启用日期（年/月/日）", ("commissioned", 1.0)), ("报废日期(年-月-日)", ("decommissioned", 1.0)),
        ("是否纳入统计（是/否）", ("in_scope", 1.0)), ("是否数控(Y/N)", ("nc", 1.0)), ("名称(元)", ("name", 1.0)),
    ],
)
def test_header_synonyms(header, expected):
    assert match_header(header) == expected


# a ledger template's headers: every column but 原值 with a note in brackets
NOTED_LEDGER = (
    "设备编号,设备名称,是否数控（是/否）,原值（元）,启用日期（年/月/日）,报废日期(年/月/日),是否纳入统计（是/否）\n"
    "cnc-01,加工中心,是,880000,2018/5/1,,是\n"
    "cnc-02,数控车床,是,560000,2021/3/1,,是\n"  # bought for next year: not yet in service
    "lathe-01,普通车床,否,120000,2010/1/1,2019/6/30,是\n"  # scrapped in 2019
    "boiler-01,锅炉,否,300000,2012/1/1,,否\n"  # a utility, not production equipment
)


def test_bracketed_notes_keep_the_columns_that_decide_who_is_counted(tmp_path):
    imported = read_inventory_csv(write_bytes(tmp_path, "noted.csv", NOTED_LEDGER.encode("utf-8-sig")))
    assert imported.warnings == []
    s = nc_summary(imported.items, YEAR_END_2020)
    # only cnc-01 counts at the end of 2020 (not NC 2 of 4, the scrapped lathe and the boiler counted)
    assert (s["equipment_nc"], s["equipment_total"]) == (1, 1)
    assert (s["not_yet_commissioned"], s["decommissioned"], s["out_of_scope"]) == (1, 1, 1)
    assert s["asset_value_total"] == 880_000.0


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        # a note must not make a second column of a field: which one would be read?
        ("设备编号,是否数控,启用日期,启用日期（年/月/日）",
         "columns '启用日期' and '启用日期（年/月/日）' both mean commissioned"),
        ("设备编号,是否数控,报废日期（年/月/日）,停用日期", "both mean decommissioned"),
        # an amount in a unit it cannot be read in is an error, not a column ignored with a warning
        ("设备编号,是否数控,原值（美元）", "unknown unit in '原值（美元）'"),
        ("设备编号,是否数控,原值(含税)", "unknown unit in '原值(含税)'"),
    ],
)
def test_a_bracketed_header_that_cannot_be_read_safely_is_a_problem(tmp_path, header, needle):
    text = header + "\n" + ",".join(["A", "是"] + ["1"] * (header.count(",") - 1)) + "\n"
    with pytest.raises(InventoryError) as e:
        read_inventory_csv(write_bytes(tmp_path, "h.csv", text.encode()))
    assert [p.line for p in e.value.inventory_problems] == [1]
    assert needle in e.value.inventory_problems[0].message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-05-01", date(2019, 5, 1)), ("2019/5/1", date(2019, 5, 1)), ("2019.5.1", date(2019, 5, 1)),
        ("2019年5月1日", date(2019, 5, 1)), ("2019 年 5 月 1 日", date(2019, 5, 1)), ("43586", date(2019, 5, 1)),
        ("43586.75", date(2019, 5, 1)), ("20190501", date(2019, 5, 1)), ("2019/5/1 0:00", date(2019, 5, 1)),
        ("２０１９－０５－０１", date(2019, 5, 1)), ("2019-05", date(2019, 5, 1)), ("2019年5月", date(2019, 5, 1)),
        ("201903", date(2019, 3, 1)), ("２０１９１２", date(2019, 12, 1)), ("18264", date(1950, 1, 1)),
        (" 2020-02-29 ", date(2020, 2, 29)),
    ],
)
def test_parse_date(text, expected):
    assert parse_date(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2019-02-29", "no such day"), ("2019", "year or a month"), ("2019.10", "year or a month"),
        ("01/05/2019", "ambiguous"), ("5月1日", "not a date"), ("2019年5-1", "not a date"),
        ("#N/A", "Excel error value"), ("0", "not a date"), ("yesterday", "not a date"),
        # day numbers outside 1950 … five years ahead are some other number, never a date centuries away
        ("60", "outside 1950-01-01"), ("19", "outside"), ("280", "outside"), ("18263", "outside"),
        ("201913", "outside"), ("201900", "outside"), ("2958465", "outside"),
    ],
)
def test_parse_date_rejects(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_date(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234,567.00", 1_234_567.0), ("１，２３４，５６７．００", 1_234_567.0), ("¥1,234", 1234.0),
        ("￥1234", 1234.0), ("1234元", 1234.0), ("0", 0.0), ("1.2E+06", 1_200_000.0), ("980000.50", 980_000.5),
        (" 12 345 ", 12345.0),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize("text", ["12万", "1,23,4", "1.234.567", "abc", "#DIV/0!", "nan", "inf", "1e999"])
def test_parse_number_rejects(text):
    with pytest.raises(ValueError, match=r"not a number|Excel error"):
        parse_number(text)


def test_parse_bool_all_spellings():
    for word in ["是", "Y", "y", "yes", "YES", "true", "TRUE", "1", "√", "✓", "１"]:
        assert parse_bool(word) is True, word
    for word in ["否", "N", "no", "No", "false", "FALSE", "0", "×", "✗"]:
        assert parse_bool(word) is False, word
    for word in ["x", "maybe", "可能", "2"]:
        with pytest.raises(ValueError, match="not yes or no"):
            parse_bool(word)


def test_a_zero_original_value_is_no_original_value(tmp_path):
    # a fixed-asset system exports an empty 原值 as 0: counted as "valued", the asset-value NC rate's
    # coverage (equipment_valued ÷ equipment_total) read 3/3 and the rate was published on one machine's value
    text = "设备编号,是否数控,原值(万元)\ncnc-01,是,56\ncnc-02,是,0\nlathe-01,否,0.00\n"
    imported = read_inventory_csv(write_bytes(tmp_path, "zero.csv", text.encode("utf-8-sig")))
    assert [i.asset_value for i in imported.items] == [560_000.0, None, None]
    assert imported.warnings == ["原值 0 on line(s) 3, 4 read as no 原值 (an empty cell, as fixed-asset systems "
                                 "export it): left out of the NC rate by value, whose coverage they lower; write "
                                 "the machine's original value"]
    assert nc_summary(imported.items, YEAR_END_2020)["equipment_without_asset_value"] == 2
    items = [InventoryItem(e.id, e.nc, e.asset_value) for e in imported.items]  # as the agent makes them
    daily = enterprise_daily(YEAR_END_2020, Site("e1", "330602", "17"), items, [])
    assert (daily.fields["equipment_valued"], daily.fields["equipment_total"]) == (1, 3)
    assert EquipmentItem(id="a", nc=True, asset_value=0).asset_value is None  # an [[equipment]] table too


# --- the model and the config side ---------------------------------------------------------------


def test_item_defaults_and_checks():
    item = EquipmentItem(id="L-1", category="Air-jet Loom", nc=True)
    assert (item.name, item.kind, item.in_scope, item.connected, item.key_process) == (
        "L-1", "air_jet_loom", True, False, False)
    assert EquipmentItem(id="x", category="织机", nc=False).kind == "织机"
    assert EquipmentItem(id="x", nc=False).kind == "equipment"
    assert EquipmentItem(id="x", category="织机", kind="loom", nc=False).kind == "loom"
    assert kind_from_category("—") == "equipment" and kind_from_category("CNC 车床 (5-axis)") == "cnc_车床_5_axis"
    for bad in [
        {"id": "a b", "nc": True},
        {"id": "a", "nc": True, "asset_value": -1},
        {"id": "a", "nc": True, "asset_value": float("nan")},
        {"id": "a", "nc": True, "commissioned": date(2020, 1, 2), "decommissioned": date(2020, 1, 1)},
        {"id": "a", "nc": True, "kind": "two words"},
        {"id": "a", "nc": True, "name": "tab\there"},
        {"id": "a"},
        {"id": "a", "nc": True, "colour": "red"},
    ]:
        with pytest.raises(ValidationError):
            EquipmentItem.model_validate(bad)
    same_day = EquipmentItem(id="a", nc=True, commissioned=date(2020, 1, 1), decommissioned=date(2020, 1, 1))
    assert not same_day.in_service(date(2020, 1, 1))  # never in service: allowed, counts nowhere


TOML_EQUIPMENT = """
[[equipment]]
id = "cnc-01"
name = "数控车床"
category = "CNC lathe"
nc = true
key_process = true
asset_value = 560000.0
commissioned = 2019-05-01
connected = true

[[equipment]]
id = "press-01"
category = "压机"
nc = false
in_scope = false

[inventory]
csv = "ledger.csv"
"""


def toml_inventory(text: str) -> tuple[list[EquipmentItem], InventoryConfig]:
    data = tomllib.loads(text)
    return (TypeAdapter(list[EquipmentItem]).validate_python(data.get("equipment", [])),
            InventoryConfig.model_validate(data.get("inventory", {})))


def test_merge_toml_and_csv(tmp_path):
    config_file = tmp_path / "agent.toml"
    config_file.write_text(TOML_EQUIPMENT, encoding="utf-8")
    ledger = "设备编号,是否数控,设备类别\nloom-01,是,织机\nloom-02,否,织机\n"
    (tmp_path / "ledger.csv").write_bytes(ledger.encode("gb18030"))
    equipment, inventory = toml_inventory(TOML_EQUIPMENT)
    assert equipment[0].commissioned == date(2019, 5, 1) and equipment[0].kind == "cnc_lathe"
    assert inventory.csv == Path("ledger.csv")
    items = load_inventory(config_file, equipment, inventory)  # csv path taken from the config's folder
    assert [(i.id, i.nc, i.kind) for i in items] == [
        ("cnc-01", True, "cnc_lathe"),
        ("press-01", False, "压机"),
        ("loom-01", True, "织机"),
        ("loom-02", False, "织机"),
    ]
    s = nc_summary(items, YEAR_END_2020)
    assert (s["equipment_total"], s["equipment_nc"], s["out_of_scope"]) == (3, 2, 1)
    assert load_inventory(config_file, equipment, None) == equipment
    assert load_inventory(config_file, [], inventory) == items[2:]


def test_merge_id_in_both_places_names_both(tmp_path):
    config_file = tmp_path / "agent.toml"
    (tmp_path / "ledger.csv").write_text("id,nc\nloom-01,1\npress-01,0\n", encoding="utf-8")
    equipment, inventory = toml_inventory(TOML_EQUIPMENT)
    with pytest.raises(ConfigError) as err:
        load_inventory(config_file, equipment, inventory)
    assert err.value.problems == [(
        "equipment[1].id",
        f"'press-01' is also in {tmp_path / 'ledger.csv'} line 3",
        "describe each piece of equipment in one place: the [[equipment]] table or the CSV row",
    )]
    assert str(config_file) in err.value.render()


def test_merge_duplicate_within_toml():
    a = EquipmentItem(id="a", nc=True)
    with pytest.raises(ConfigError) as err:
        merge_inventory("agent.toml", [a, EquipmentItem(id="b", nc=False), a], None)
    assert [p[:2] for p in err.value.problems] == [("equipment[2].id", "'a' is also equipment[0]")]


def test_a_bad_csv_named_in_the_config_stops_the_agent(tmp_path):
    config_file = tmp_path / "agent.toml"
    (tmp_path / "ledger.csv").write_text("id,nc\nloom-01,perhaps\n", encoding="utf-8")
    with pytest.raises(InventoryError) as err:
        load_inventory(config_file, [], InventoryConfig(csv=Path("ledger.csv")))
    assert problems_of(err.value) == [(2, "nc")]


# --- fmc inventory check -------------------------------------------------------------------------


def test_check_prints_a_summary():
    out = io.StringIO()
    assert inventory_check_main(DATA / "good_zh_gb18030.csv", out, on=YEAR_END_2020) == 0
    text = out.getvalue()
    assert "9 equipment row(s) — GB18030, comma-separated, header on line 1" in text
    assert "counted on 2020-12-31 (in scope and in service): 6\n" in text
    assert "not counted: 1 out of scope, 1 not yet commissioned, 1 decommissioned" in text
    assert "NC 数控: 5 — NC share by count 83.3 %" in text
    assert "原值: 6,740,000.50 yuan, NC 4,340,000.50 — NC share by value 64.4 % (1 without 原值 left out)" in text
    assert "connected 联网: 4 (NC 4)" in text
    assert "warning: total row(s) skipped: line 11" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.split("by category:\n")[1].splitlines()[1:]}
    assert rows == {"刺绣机": ["1", "1", "100.0", "%"], "整经机": ["1", "1", "100.0", "%"],
                    "染色机": ["1", "0", "0.0", "%"], "织机": ["3", "3", "100.0", "%"]}


def test_check_exit_2_with_every_problem():
    out = io.StringIO()
    assert inventory_check_main(DATA / "bad_rows.csv", out) == 2
    lines = out.getvalue().splitlines()
    assert len(lines) == 15 and "line 7, 原值: '12万' is not a number" in lines[5]


# --- round trip ----------------------------------------------------------------------------------

EXCEL_EPOCH = date(1899, 12, 30)
# names as Excel holds them: no control characters or backslashes, no surrounding blanks (cells are trimmed)
NAME_WORD = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="\\"),
                    min_size=1, max_size=12)
NAME_TEXT = st.lists(NAME_WORD, min_size=1, max_size=4).map(" ".join)


@st.composite
def items_strategy(draw: st.DrawFn) -> list[EquipmentItem]:
    # unique also case aside: ids that differ only in case are refused (id_key)
    ids = draw(st.lists(st.from_regex(ID_PATTERN, fullmatch=True), max_size=12, unique_by=str.casefold))
    items = []
    for item_id in ids:
        commissioned = draw(st.none() | st.dates(date(1900, 3, 1), date(2100, 12, 31)))
        decommissioned = draw(st.none() | st.dates(commissioned or date(1900, 3, 1), date(2100, 12, 31)))
        cents = draw(st.none() | st.integers(1, 10**13))  # a 原值 of 0 is read as none
        items.append(EquipmentItem(
            id=item_id,
            name=draw(st.none() | NAME_TEXT),
            category=draw(st.none() | NAME_TEXT),
            kind=draw(st.none() | st.from_regex(KIND_PATTERN, fullmatch=True)),
            nc=draw(st.booleans()),
            key_process=draw(st.booleans()),
            asset_value=None if cents is None else cents / 100,
            commissioned=commissioned,
            decommissioned=decommissioned,
            in_scope=draw(st.booleans()),
            connected=draw(st.booleans()),
        ))
    return items


def spell_bool(draw: st.DrawFn, value: bool) -> str:
    word = draw(st.sampled_from(sorted(TRUE_WORDS if value else FALSE_WORDS)))
    return draw(st.sampled_from([word, word.upper(), word.capitalize()]))


def spell_amount(draw: st.DrawFn, value: float, per_10k: bool) -> str:
    amount = Decimal(round(value * 100)) / (1_000_000 if per_10k else 100)
    text = draw(st.sampled_from([f"{amount}", f"{amount:,}", f"¥{amount:,}", f"{amount}元"]))
    if draw(st.booleans()):  # full-width, as a Chinese IME types it
        text = text.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789,."})
    return text


def spell_date(draw: st.DrawFn, d: date) -> str:
    forms = [d.isoformat(), f"{d.year}/{d.month}/{d.day}", f"{d.year}.{d.month}.{d.day}",
             f"{d.year}年{d.month}月{d.day}日", d.strftime("%Y%m%d"), f"{d.year}/{d.month}/{d.day} 0:00"]
    serial = (d - EXCEL_EPOCH).days
    if serial_date_window()[0] <= d <= serial_date_window()[1]:  # other day numbers are refused, see parse_date
        forms.append(str(serial))
    return draw(st.sampled_from(forms))


@given(data=st.data(), items=items_strategy())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_round_trip_any_header_language_order_and_spelling(tmp_path_factory, data, items):
    draw = data.draw
    fields = list(HEADER_SYNONYMS)
    # a column may be left out only when every item has that field's default
    defaults = {"name": lambda i: i.name == i.id, "category": lambda i: i.category is None,
                "kind": lambda i: i.kind == EquipmentItem(id=i.id, category=i.category, nc=i.nc).kind,
                "key_process": lambda i: not i.key_process, "asset_value": lambda i: i.asset_value is None,
                "commissioned": lambda i: i.commissioned is None, "decommissioned": lambda i: i.decommissioned is None,
                "in_scope": lambda i: i.in_scope, "connected": lambda i: not i.connected}
    columns = [f for f in fields
               if f in ("id", "nc") or not all(defaults[f](i) for i in items) or draw(st.booleans())]
    columns = draw(st.permutations(columns))
    headers = {f: draw(st.sampled_from(HEADER_SYNONYMS[f])) for f in columns}
    per_10k = "asset_value" in columns and draw(st.booleans())
    if "asset_value" in columns:
        headers["asset_value"] += "（万元）" if per_10k else draw(st.sampled_from(["", "(元)", "（元）"]))
    extra = draw(st.sampled_from([None, "备注", "Location", "序号"]))

    def cell(item: EquipmentItem, f: str) -> str:
        value = getattr(item, f)
        if value is None:
            return ""
        if isinstance(value, bool):
            return spell_bool(draw, value)
        if f == "asset_value":
            return spell_amount(draw, value, per_10k)
        if isinstance(value, date):
            return spell_date(draw, value)
        return value

    delimiter = draw(st.sampled_from([",", "\t", ";"]))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=draw(st.sampled_from(["\r\n", "\n"])))
    if draw(st.booleans()):
        writer.writerow(["设备台账（2020年）"])  # a title row above the header
    writer.writerow([headers[f] for f in columns] + ([extra] if extra else []))
    for item in items:
        writer.writerow([cell(item, f) for f in columns] + (["x"] if extra else []))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "gb18030", "utf-16"]))
    raw = buffer.getvalue().encode(encoding)
    if encoding == "gb18030":
        # detection tries UTF-8 first: GB18030 bytes that happen to be valid UTF-8 cannot be told apart
        try:
            raw.decode("utf-8")
            assume(raw.isascii())
        except UnicodeDecodeError:
            pass
    path = tmp_path_factory.mktemp("rt") / "ledger.csv"
    path.write_bytes(raw)

    assert read_inventory_csv(path).items == items


@given(st.text(max_size=200))
def test_any_category_gives_a_valid_kind(category):
    assert EquipmentItem(id="x", category=None, nc=True, kind=kind_from_category(category)).kind


def test_excel_serial_day_numbers_match_excel():
    # reference values from Excel: =DATEVALUE("2019-05-01") is 43586, 1950-01-01 is 18264
    assert parse_date("43586") == EXCEL_EPOCH + timedelta(days=43586) == date(2019, 5, 1)
    assert parse_date("18264") == date(1950, 1, 1)
    first, last = serial_date_window()
    assert (first, last.month, last.day) == (date(1950, 1, 1), 12, 31) and last.year == date.today().year + 5
    assert parse_date(str((last - EXCEL_EPOCH).days)) == last
    with pytest.raises(ValueError, match="outside"):
        parse_date(str((last - EXCEL_EPOCH).days + 1))
    assert serial_date_window(date(2019, 6, 1)) == (date(1950, 1, 1), date(2024, 12, 31))


# a fixed-asset system's export: 启用日期 and 报废日期 as year-months, which Excel keeps as numbers
YEAR_MONTH_LEDGER = (
    "设备编号,设备名称,是否数控,原值(元),启用日期,报废日期\n"
    "cnc-01,数控车床,是,560000,2018/5/1,\n"
    "cnc-02,加工中心,是,880000,201903,\n"  # March 2019: once read as day number 201903, 2452-10-14
    "lathe-01,普通车床,否,120000,2015/1/1,201906\n"  # scrapped June 2019
)


def test_a_year_month_number_is_that_month_not_a_day_number_centuries_away(tmp_path):
    imported = read_inventory_csv(write_bytes(tmp_path, "ym.csv", YEAR_MONTH_LEDGER.encode("utf-8-sig")))
    by_id = {i.id: i for i in imported.items}
    assert by_id["cnc-02"].commissioned == date(2019, 3, 1) and by_id["lathe-01"].decommissioned == date(2019, 6, 1)
    s = nc_summary(imported.items, YEAR_END_2020)
    # both NC machines in service at the end of 2020, the lathe scrapped: not 1 of 2 (cnc-02 "not yet
    # commissioned") and not a scrapped machine in the count
    assert (s["equipment_nc"], s["equipment_total"], s["not_yet_commissioned"], s["decommissioned"]) == (2, 2, 0, 1)


def test_a_day_number_outside_the_window_is_a_problem_naming_its_cell(tmp_path):
    text = "设备编号,是否数控,启用日期\nA,是,43586\nB,是,19\nC,否,201913\n"
    with pytest.raises(InventoryError) as e:
        read_inventory_csv(write_bytes(tmp_path, "far.csv", text.encode()))
    assert problems_of(e.value) == [(3, "启用日期"), (4, "启用日期")]
    assert "outside 1950-01-01" in e.value.inventory_problems[0].message
