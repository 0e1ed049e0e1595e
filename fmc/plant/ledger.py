"""The equipment ledger (设备台账) as factories keep it: CSV import, merge with the config, summary.

The CSV is whatever Excel wrote: Chinese or English headers in any order, UTF-8 with or without
BOM, GB18030/GBK, or UTF-16 ("Unicode text"); comma, tab or semicolon between cells; yes/no as
是/否, √/×, Y/N …; amounts with thousands separators or full-width digits; dates as text or as
Excel day numbers. Import is atomic: a file with any bad row raises ``InventoryError`` listing
every problem by the line number Excel shows, and nothing is imported.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import logging
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TextIO, TypedDict

from pydantic import ValidationError

from fmc.core.config import ConfigError, InventoryProblem
from fmc.plant.equipment import EquipmentItem, InventoryConfig, InventoryError

REQUIRED_FIELDS = ("id", "nc")
REQUIRED_LABELS = {"id": "equipment id (设备编号)", "nc": "NC yes/no (是否数控)"}

# Header synonyms per field. Matching ignores case, spaces, '_', '-', '*' (a "required" mark in
# many templates), ':' and '?', and treats full-width characters as their ASCII twins (NFKC).
# An amount column may carry its unit: 原值(元), 原值（万元）, asset_value (yuan); any other column a
# note in brackets, as ledger templates write them: 启用日期（年/月/日）, 是否纳入统计(是/否).
HEADER_SYNONYMS: dict[str, tuple[str, ...]] = {
    "id": ("设备编号", "编号", "设备代码", "设备编码", "设备ID", "id", "equipment_id"),
    "name": ("设备名称", "名称", "name", "equipment_name"),
    "category": ("设备类别", "类别", "类型", "设备类型", "设备分类", "category", "type"),
    "kind": ("kind",),
    "nc": ("是否数控", "数控设备", "数控", "是否数控设备", "是否数字化设备", "数字化设备", "nc", "is_nc"),
    "key_process": ("是否关键工序", "关键工序", "关键工序设备", "是否关键工序设备", "key_process"),
    "asset_value": ("原值", "资产原值", "设备原值", "固定资产原值", "asset_value", "original_value"),
    "commissioned": ("启用日期", "投产日期", "投用日期", "启用时间", "投产时间", "commissioned", "commissioning_date"),
    "decommissioned": (
        "报废日期", "停用日期", "退役日期", "报废时间", "decommissioned", "decommissioning_date",
    ),
    "in_scope": ("是否在统计范围", "统计范围", "是否纳入统计", "in_scope"),
    "connected": ("是否联网", "联网", "已联网", "connected"),
}

# Multipliers to yuan for a unit written in the amount header.
AMOUNT_UNITS: dict[str, float] = {"元": 1.0, "yuan": 1.0, "cny": 1.0, "rmb": 1.0, "¥": 1.0, "万元": 10_000.0}

TRUE_WORDS = frozenset({"是", "y", "yes", "true", "1", "√", "✓", "✔"})
FALSE_WORDS = frozenset({"否", "n", "no", "false", "0", "×", "✗", "✘"})
BOOL_HINT = "write 是 or 否 (also Y/N, yes/no, true/false, 1/0, √/×)"

# Rows Chinese ledgers end with; an id can never look like this (ids are ASCII), so skipping is safe.
TOTAL_ROW_MARKERS = ("合计", "总计", "小计")
EXCEL_ERROR_VALUES = frozenset({"#N/A", "#VALUE!", "#REF!", "#DIV/0!", "#NUM!", "#NAME?", "#NULL!"})
DELIMITERS = (",", "\t", ";")
HEADER_SEARCH_ROWS = 10  # title rows above the header (e.g. "2020年设备台账") are skipped
EXCEL_EPOCH = date(1899, 12, 30)  # Excel's day 0: from 1900-03-01 on (61), day numbers are days since it
# An Excel day number is taken as a date only between these (see ``serial_date_window``): a number
# outside is some other number (a year-month 201903 read as a day is 2452-10-14, "19" is 1900-01-19)
# and is refused, not booked centuries away. An older date is still accepted written out (1949-10-01).
EXCEL_SERIAL_FIRST = date(1950, 1, 1)
EXCEL_SERIAL_YEARS_AHEAD = 5  # machines bought for the coming years are listed with their planned date

log = logging.getLogger("fmc.inventory")


# --- values --------------------------------------------------------------------------------------


def _fold(text: str) -> str:
    """Full-width to ASCII (１２３，４ -> 123,4), trimmed: for numbers, dates and yes/no, never for names."""
    return unicodedata.normalize("NFKC", text).strip()


def parse_bool(text: str) -> bool:
    word = _fold(text).casefold()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{text!r} is not yes or no; {BOOL_HINT}")


_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[+-]?\d+)?", re.IGNORECASE)


def parse_number(text: str) -> float:
    """'1,234,567.00', '１２３４５６７', '¥1234567', '1234567元' -> 1234567.0."""
    folded = _fold(text)
    if folded in EXCEL_ERROR_VALUES:
        raise ValueError(f"{text!r} is an Excel error value, not a number; fix the formula in that cell")
    core = re.sub(r"\s+", "", folded).removeprefix("¥").removesuffix("元")
    if not _NUMBER.fullmatch(core):
        hint = "; write it in yuan as digits (120000), or name the column 原值(万元)" if "万" in core else ""
        raise ValueError(f"{text!r} is not a number{hint}")
    value = float(core.replace(",", ""))
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a number")
    return value


_YMD = re.compile(
    r"(\d{4})\s*([-/.年])\s*(\d{1,2})\s*(?:[-/.月])\s*(\d{1,2})\s*日?"
    r"(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?"  # Excel writes date-time cells as "2019/5/1 0:00"
)
_YM = re.compile(r"(\d{4})\s*(?:[-/]|年)\s*(\d{1,2})\s*月?")
_SERIAL = re.compile(r"\d+(?:\.\d+)?")


def parse_date(text: str) -> date:
    """2019-05-01, 2019/5/1, 2019.5.1, 2019年5月1日, 20190501, an Excel day number (43586) within
    ``serial_date_window()``, or a month (2019-05, 2019年5月, 201905 -> the 1st). Year first only:
    05/01/2019 is ambiguous."""
    folded = _fold(text)
    if folded in EXCEL_ERROR_VALUES:
        raise ValueError(f"{text!r} is an Excel error value, not a date; fix the formula in that cell")
    m = _YMD.fullmatch(folded)
    if m:
        # "2019年5-1" and "2019-5月1" are typos, not dates: the separators must agree
        if (m.group(2) == "年") != ("月" in folded):
            raise ValueError(f"{text!r} is not a date; write it as 2019-05-01")
        return _checked_date(text, int(m.group(1)), int(m.group(3)), int(m.group(4)))
    m = _YM.fullmatch(folded)
    if m and ("年" in folded) == ("月" in folded):
        return _checked_date(text, int(m.group(1)), int(m.group(2)), 1)
    if re.fullmatch(r"\d{8}", folded):
        return _checked_date(text, int(folded[:4]), int(folded[4:6]), int(folded[6:]))
    if re.fullmatch(r"\d{6}", folded) and 1 <= int(folded[4:]) <= 12:
        # a year-month as fixed-asset systems export 启用年月 (Excel keeps it as a number): the 1st,
        # as 2019-05 is. No day number of the window has six digits (100000 is 2173-10-14).
        return date(int(folded[:4]), int(folded[4:]), 1)
    if _SERIAL.fullmatch(folded):
        return _excel_serial_date(text, folded)
    if re.fullmatch(r"\d{1,2}\s*[-/.]\s*\d{1,2}\s*[-/.]\s*\d{4}", folded):
        raise ValueError(f"{text!r}: day and month order is ambiguous; write the year first: 2019-05-01")
    raise ValueError(f"{text!r} is not a date; write it as 2019-05-01 (or 2019/5/1, 2019年5月1日)")


def _checked_date(text: str, year: int, month: int, day: int) -> date:
    try:
        return date(year, month, day)
    except ValueError:
        raise ValueError(f"{text!r} is not a date: there is no such day") from None


def _excel_serial_date(text: str, folded: str) -> date:
    integer_part = folded.split(".")[0]
    if len(integer_part) == 4 and 1900 <= int(integer_part) <= 2100:
        # a bare year, or Excel's number 2019.1 for a typed "2019.10": either way not a day
        raise ValueError(f"{text!r} is a year or a month, not a day; write the full date: 2019-05-01")
    serial = int(integer_part)  # a fraction is the time of day
    first, last = serial_date_window()
    if not (first - EXCEL_EPOCH).days <= serial <= (last - EXCEL_EPOCH).days:
        # the window's day numbers are all after Excel's fictitious 1900-02-29: plain days from the epoch
        raise ValueError(
            f"{text!r} is not a date: as an Excel day number it is outside {first.isoformat()} … "
            f"{last.isoformat()}; write it as 2019-05-01 (a month as 2019-05)"
        )
    return EXCEL_EPOCH + timedelta(days=serial)


def serial_date_window(today: date | None = None) -> tuple[date, date]:
    """(first, last) day an Excel day number may stand for: 1950-01-01 to the end of the year five
    years from ``today``. The window only grows, so a ledger accepted once stays accepted."""
    year = (today or date.today()).year + EXCEL_SERIAL_YEARS_AHEAD
    return EXCEL_SERIAL_FIRST, date(year, 12, 31)


def _text(text: str) -> str | None:
    stripped = text.strip()
    return stripped or None


def id_key(equipment_id: str) -> str:
    """What two ids must not share: 'CNC-01', 'cnc-01' and 'ＣＮＣ－０１' are one key. The sources' ids
    are matched exactly, so such a pair in a ledger would be two machines in both rates' denominators,
    one of them never heard from; the import refuses it rather than guess which row is right."""
    return unicodedata.normalize("NFKC", equipment_id).strip().casefold()


def _id_clash_fix(place: str) -> str:
    """What to do about two ids with one ``id_key``: which ``place`` (a row, a table) is right is the
    engineer's call, not the import's."""
    return (f"the sources' ids are matched exactly, so they would be two machines: keep the {place} that is "
            "right, or give the other machine an id of its own")


# --- headers -------------------------------------------------------------------------------------


def header_key(header: str) -> str:
    """The form headers are compared in: '是否数控?' / 'Is NC' / 'asset-value' -> '是否数控' / 'isnc' / 'assetvalue'."""
    return re.sub(r"[\s_\-*:?]+", "", unicodedata.normalize("NFKC", header).casefold())


def _synonym_index() -> dict[str, str]:
    return {header_key(name): field_name for field_name, names in HEADER_SYNONYMS.items() for name in names}


@dataclass(frozen=True)
class _Column:
    field: str
    index: int
    header: str  # as written in the file, for messages
    scale: float = 1.0  # asset value in 万元 -> yuan


# Which fields may carry a unit in their header, and the scale each unit gives (inventory: 原值 only).
HeaderUnits = Mapping[str, Mapping[str, float]]
INVENTORY_UNITS: HeaderUnits = {"asset_value": AMOUNT_UNITS}


def match_header(
    header: str, index: dict[str, str] | None = None, units: HeaderUnits | None = None, *, notes: bool = True
) -> tuple[str, float] | None:
    """(field, scale) for a header, or None when it is not a known column. ``index`` maps
    ``header_key`` forms to fields (default: the inventory's synonyms); ``units`` says which fields
    may name a unit in brackets, 原值(万元), and its scale (default: ``INVENTORY_UNITS``). With
    ``notes``, a field that takes no unit may carry a note in brackets, 启用日期（年/月/日）: it is
    dropped. A field that takes a unit never does, so 原值(美元) or 原值(含税) is not read as yuan."""
    synonyms = index if index is not None else _synonym_index()
    scaled = units if units is not None else INVENTORY_UNITS
    key = header_key(header)
    if key in synonyms:
        return synonyms[key], 1.0
    m = re.fullmatch(r"(.+?)\((.+)\)", key)
    field_name = synonyms.get(m.group(1)) if m else None
    if m and field_name in scaled and m.group(2) in scaled[field_name]:
        return field_name, scaled[field_name][m.group(2)]
    noted = re.fullmatch(r"(.+?)\([^()]*\)", key) if notes else None
    field_name = synonyms.get(noted.group(1)) if noted else None
    if field_name is not None and field_name not in scaled:
        return field_name, 1.0
    return None


def expected_headers(field_name: str) -> str:
    """'设备编号 / 编号 / 设备代码 / … / id' — what a user may write for a field, both languages."""
    return " / ".join(HEADER_SYNONYMS[field_name])


# --- the file ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InventoryImport:
    """A CSV ledger read without problems, with what ``fmc inventory check`` reports about it."""

    path: Path
    items: list[EquipmentItem]
    lines: dict[str, int]  # id -> spreadsheet line, so a later clash can name it
    warnings: list[str] = field(default_factory=list)
    encoding: str = "UTF-8"
    delimiter: str = ","
    header_line: int = 1


def decode_ledger(raw: bytes) -> tuple[str, str]:
    """(text, encoding name). BOMs first; then strict UTF-8; then GB18030 (a superset of GBK and
    GB2312), which is what Chinese Excel writes for "CSV (逗号分隔)"."""
    for bom, codec, label in (
        (codecs.BOM_UTF8, "utf-8-sig", "UTF-8 with BOM"),
        (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
        (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
    ):
        if raw.startswith(bom):
            try:
                return raw.decode(codec), label
            except UnicodeDecodeError as e:
                raise ValueError(f"starts like {label} but byte {e.start} is not: {e.reason}") from None
    try:
        return raw.decode("utf-8"), "UTF-8"
    except UnicodeDecodeError:
        pass
    try:
        # GB18030 has a BOM too (84 31 95 33), rarely written; it decodes to U+FEFF
        return raw.decode("gb18030").removeprefix("\ufeff"), "GB18030"
    except UnicodeDecodeError as e:
        raise ValueError(
            f"the text is neither UTF-8 nor GB18030/GBK (byte {e.start}); save it from Excel as "
            "'CSV UTF-8 (逗号分隔)'"
        ) from None


def _split_rows(text: str, delimiter: str) -> Iterable[list[str]]:
    return csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)


def _find_header(
    rows: Iterable[list[str]], synonyms: dict[str, str], units: HeaderUnits | None = None, *, notes: bool = True
) -> tuple[int, int]:
    """(row offset, recognised columns) of the first row naming at least two known columns."""
    for offset, row in enumerate(itertools.islice(rows, HEADER_SEARCH_ROWS)):
        recognised = sum(1 for cell in row if match_header(cell, synonyms, units, notes=notes))
        if recognised >= 2:
            return offset, recognised
    return -1, 0


def _sniff(
    text: str, synonyms: dict[str, str], units: HeaderUnits | None = None, *, notes: bool = True
) -> tuple[str, int]:
    """(delimiter, header row offset): the delimiter under which a header shows up first, and with
    the most recognised columns (a stray "nc,id" inside a later cell must not win)."""
    found: list[tuple[int, int, int, str]] = []
    for order, delimiter in enumerate(DELIMITERS):
        try:
            offset, recognised = _find_header(_split_rows(text, delimiter), synonyms, units, notes=notes)
        except csv.Error:
            continue
        if offset >= 0:
            found.append((offset, -recognised, order, delimiter))
    if found:
        offset, _, _, delimiter = min(found)
        return delimiter, offset
    # no header recognised: split the first line the most, and let the header check say what is missing
    first_line = text.split("\n", 1)[0]
    delimiter = max(DELIMITERS, key=first_line.count)
    rows = itertools.islice(_split_rows(text, delimiter), HEADER_SEARCH_ROWS)
    return delimiter, next((offset for offset, row in enumerate(rows) if any(c.strip() for c in row)), 0)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "id": _text,
    "name": _text,
    "category": _text,
    "kind": _text,
    "nc": parse_bool,
    "key_process": parse_bool,
    "in_scope": parse_bool,
    "connected": parse_bool,
    "asset_value": parse_number,
    "commissioned": parse_date,
    "decommissioned": parse_date,
}

_FORM_BY_FIELD = {
    "id": "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64 characters",
    "name": "text of at most 128 characters without control characters or backslashes",
    "category": "text of at most 128 characters without control characters or backslashes",
    "kind": "one word of letters, digits, '_' or '-', at most 64 characters (e.g. loom)",
}


def read_csv_text(path: Path, error: Callable[[Path, list[InventoryProblem]], ConfigError]) -> tuple[str, str]:
    """(text, encoding) of a CSV file Excel wrote; ``error`` (the importer's own) when it cannot be read."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(path, [InventoryProblem("the file does not exist")]) from None
    except OSError as e:
        raise error(path, [InventoryProblem(f"cannot read it: {e.strerror or e}")]) from None
    try:
        return decode_ledger(raw)
    except ValueError as e:
        raise error(path, [InventoryProblem(str(e))]) from None


def read_inventory_csv(path: str | Path) -> InventoryImport:
    """Read and check a CSV ledger; ``InventoryError`` lists every problem, nothing is returned then."""
    path = Path(path)
    text, encoding = read_csv_text(path, InventoryError)
    return parse_inventory_text(text, path=path, encoding=encoding)


def split_csv(
    text: str, synonyms: dict[str, str], units: HeaderUnits | None = None, *, notes: bool = True
) -> tuple[list[list[str]], str, int]:
    """(rows, delimiter, header row offset) of decoded CSV text whose header names at least two
    columns known to ``synonyms`` (see ``match_header``); raises ``csv.Error``."""
    explicit = re.match(r"sep=(.)\r?\n", text)  # Excel's own "sep=;" line; Excel does not show it as a row
    if explicit:
        text, delimiter = text[explicit.end():], explicit.group(1)
        header_offset = max(_find_header(_split_rows(text, delimiter), synonyms, units, notes=notes)[0], 0)
    else:
        delimiter, header_offset = _sniff(text, synonyms, units, notes=notes)
    return list(_split_rows(text, delimiter)), delimiter, header_offset


def parse_inventory_text(text: str, *, path: Path, encoding: str = "UTF-8") -> InventoryImport:
    """The CSV ledger already decoded; ``path`` only names it in messages."""
    synonyms = _synonym_index()
    try:
        rows, delimiter, header_offset = split_csv(text, synonyms)
    except csv.Error as e:
        raise InventoryError(path, [InventoryProblem(f"not readable as CSV: {e}")]) from None
    if not any(any(cell.strip() for cell in row) for row in rows):
        raise InventoryError(path, [InventoryProblem("the file is empty; the first line names the columns")])

    header_line = header_offset + 1
    columns, warnings, problems = _map_header(rows[header_offset], rows[header_offset + 1:], header_line, synonyms)
    if problems:
        raise InventoryError(path, problems)

    items: list[EquipmentItem] = []
    lines: dict[str, int] = {}
    first_ids: dict[str, str] = {}  # id_key -> the id as its first row writes it
    zero_values: list[int] = []  # lines whose 原值 is 0: read as none (EquipmentItem)
    skipped_totals: list[int] = []
    width = len(rows[header_offset])
    for line, row in enumerate(rows[header_offset + 1:], start=header_line + 1):
        if not any(cell.strip() for cell in row):
            continue  # blank lines and Excel's trailing ",,,," rows
        id_cell = _cell(row, columns["id"].index).strip()
        if id_cell.startswith(TOTAL_ROW_MARKERS):
            skipped_totals.append(line)
            continue
        beyond = cells_beyond_header(row, width)
        if beyond is not None:  # its cells are not under their headers: none of them is read
            problems.append(InventoryProblem(f"{beyond}; {split_cell_fix(delimiter)}", line))
            continue
        item, row_problems = _parse_row(row, line, columns)
        problems.extend(row_problems)
        row_id = item.id if item is not None else _text(id_cell)
        first = first_ids.get(id_key(row_id)) if row_id is not None else None
        if row_id is not None and first == row_id:
            problems.append(
                InventoryProblem(
                    f"id {row_id!r} is also on line {lines[row_id]}; each piece of equipment has one row",
                    line,
                    columns["id"].header,
                )
            )
        elif row_id is not None and first is not None:
            problems.append(
                InventoryProblem(
                    f"id {row_id!r} and {first!r} on line {lines[first]} differ only in case or full-width "
                    f"characters; {_id_clash_fix('row')}",
                    line,
                    columns["id"].header,
                )
            )
        elif row_id is not None:
            first_ids[id_key(row_id)] = row_id
            lines[row_id] = line
        if item is not None:
            items.append(item)
            # a 原值 cell read without a problem that gives no value was a 0
            value_column = columns.get("asset_value")
            if item.asset_value is None and value_column is not None and _cell(row, value_column.index).strip():
                zero_values.append(line)
    if problems:
        raise InventoryError(path, problems)  # already in line order: rows are read top to bottom
    if zero_values:
        warnings.append(f"原值 0 on line(s) {', '.join(map(str, zero_values))} read as no 原值 (an empty cell, as "
                        "fixed-asset systems export it): left out of the NC rate by value, whose coverage they "
                        "lower; write the machine's original value")
    if skipped_totals:
        warnings.append(f"total row(s) skipped: line {', '.join(map(str, skipped_totals))}")
    if not items:
        warnings.append("no equipment rows below the header")
    return InventoryImport(path, items, lines, warnings, encoding, _delimiter_name(delimiter), header_line)


def cells_beyond_header(row: Sequence[str], width: int) -> str | None:
    """What is wrong with a row that has a non-empty cell right of the header's ``width`` columns, or
    None (Excel's trailing empty cells are fine). Such a row had a delimiter inside a cell, unquoted
    (``1,250.5`` in a comma-separated file): the cell split, and every cell from there on would be
    read under the wrong header, or not at all, without a word. ``split_cell_fix`` says what to do."""
    extra = [cell.strip() for cell in row[width:] if cell.strip()]
    if not extra:
        return None
    shown = ", ".join(repr(cell) for cell in extra[:3]) + (", …" if len(extra) > 3 else "")
    return f"more cells than the header's {width} column(s): {shown} right of the last one"


def split_cell_fix(delimiter: str) -> str:
    """How to keep a cell from splitting at ``delimiter`` (``cells_beyond_header``)."""
    if delimiter == ",":
        return ('a number with a thousands separator splits into two cells unless quoted: write "1,250.5" '
                "(in quotes) or 1250.5, or save the file tab-separated")
    return f"a cell with a {_delimiter_name(delimiter)} in it splits unless quoted: quote it, or use another delimiter"


def collect_columns(
    header: list[str],
    body: list[list[str]],
    header_line: int,
    synonyms: dict[str, str],
    units: HeaderUnits | None = None,
    unmatched: Callable[[str], InventoryProblem | None] | None = None,
    *,
    notes: bool = True,
) -> tuple[dict[str, _Column], list[str], list[InventoryProblem]]:
    """Match each header cell to a field (shared by the ledger and the reports import): the
    columns found, the unknown headers, and problems (a field named twice, also by a note:
    启用日期 and 启用日期（年/月/日）; whatever ``unmatched`` says about a header it recognises as
    wrong rather than unknown)."""
    columns: dict[str, _Column] = {}
    unknown: list[str] = []
    problems: list[InventoryProblem] = []
    for index, cell in enumerate(header):
        name = cell.strip()
        if not name:
            if any(_cell(row, index).strip() for row in body):
                unknown.append(f"column {_column_letter(index)} (no header)")
            continue
        matched = match_header(name, synonyms, units, notes=notes)
        if matched is None:
            problem = unmatched(name) if unmatched is not None else None
            if problem is not None:
                problems.append(problem)
            else:
                unknown.append(name)
            continue
        field_name, scale = matched
        if field_name in columns:
            problems.append(
                InventoryProblem(
                    f"columns {columns[field_name].header!r} and {name!r} both mean {field_name}; keep one",
                    header_line,
                )
            )
            continue
        columns[field_name] = _Column(field_name, index, name, scale)
    return columns, unknown, problems


def _map_header(
    header: list[str], body: list[list[str]], header_line: int, synonyms: dict[str, str]
) -> tuple[dict[str, _Column], list[str], list[InventoryProblem]]:
    def unit_problem(name: str) -> InventoryProblem | None:
        # 原值(美元), 原值(含税): a known amount column with a unit it cannot be read in. Ignored, its
        # amounts would be missing from the value-weighted NC rate without more than a warning.
        m = re.fullmatch(r"(.+?)\((.+)\)", header_key(name))
        field_name = synonyms.get(m.group(1)) if m else None
        if field_name in INVENTORY_UNITS:
            message = f"unknown unit in {name!r}; write (元) or (万元), or no unit for yuan"
            return InventoryProblem(message, header_line, name)
        return None

    columns, unknown, problems = collect_columns(header, body, header_line, synonyms, unmatched=unit_problem)
    missing = [field_name for field_name in REQUIRED_FIELDS if field_name not in columns]
    for field_name in missing:
        problems.append(
            InventoryProblem(
                f"no {REQUIRED_LABELS[field_name]} column; name it one of: {expected_headers(field_name)}",
                header_line,
            )
        )
    if missing:
        # garbled headers (a wrong encoding) or a header on another row show up here
        shown = [cell.strip() for cell in header if cell.strip()][:12]
        problems.append(InventoryProblem(f"the header row reads: {', '.join(shown) or '(nothing)'}", header_line))
    warnings = [f"column(s) not part of the inventory, ignored: {', '.join(unknown)}"] if unknown else []
    return columns, warnings, problems


def _parse_row(
    row: list[str], line: int, columns: dict[str, _Column]
) -> tuple[EquipmentItem | None, list[InventoryProblem]]:
    values: dict[str, Any] = {}
    problems: list[InventoryProblem] = []
    for field_name, column in columns.items():
        cell = _cell(row, column.index)
        if not cell.strip():
            if field_name in REQUIRED_FIELDS:
                hint = BOOL_HINT if field_name == "nc" else "every row needs an id"
                problems.append(InventoryProblem(f"empty; {hint}", line, column.header))
            continue
        try:
            value = _PARSERS[field_name](cell)
        except ValueError as e:
            problems.append(InventoryProblem(str(e), line, column.header))
            continue
        if field_name == "asset_value":
            if value < 0:
                problems.append(InventoryProblem(f"{cell.strip()!r} is negative; 原值 is ≥ 0", line, column.header))
                continue
            value = round(value * column.scale, 2) if column.scale != 1.0 else value
        values[field_name] = value
    if problems:
        return None, problems
    try:
        return EquipmentItem.model_validate(values), []
    except ValidationError as e:
        return None, [_row_problem(err, line, columns, values) for err in e.errors(include_url=False)]


def _row_problem(err: Any, line: int, columns: dict[str, _Column], values: dict[str, Any]) -> InventoryProblem:
    field_name = next((p for p in err["loc"] if isinstance(p, str)), None)
    if field_name is None:  # the model's own check: the dates
        column = columns.get("decommissioned")
        return InventoryProblem(err["msg"].removeprefix("Value error, "), line, column.header if column else None)
    column = columns.get(field_name)
    if err["type"] == "string_pattern_mismatch":
        message = f"{values.get(field_name)!r} has the wrong form; write {_FORM_BY_FIELD.get(field_name, 'text')}"
    else:
        message = err["msg"].removeprefix("Value error, ")
    return InventoryProblem(message, line, column.header if column else field_name)


def _cell(row: list[str], index: int) -> str:
    return row[index] if index < len(row) else ""


def _column_letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def _delimiter_name(delimiter: str) -> str:
    return {",": "comma", "\t": "tab", ";": "semicolon"}.get(delimiter, repr(delimiter))


def load_inventory_csv(path: str | Path, logger: logging.Logger | None = None) -> list[EquipmentItem]:
    """The items of a CSV ledger; warnings (ignored columns …) are logged once each."""
    imported = read_inventory_csv(path)
    for warning in imported.warnings:
        (logger or log).warning("%s: %s", imported.path, warning)
    return imported.items


# --- config + CSV --------------------------------------------------------------------------------


def merge_inventory(
    config_file: str | Path, equipment: Sequence[EquipmentItem], imported: InventoryImport | None
) -> list[EquipmentItem]:
    """``[[equipment]]`` tables first, then the CSV rows; an id defined twice, also in another case
    (``id_key``), is a ``ConfigError`` naming both places."""
    problems: list[tuple[str, str, str]] = []
    position: dict[str, int] = {}  # id_key -> index of the [[equipment]] table
    for index, item in enumerate(equipment):
        key = id_key(item.id)
        if key not in position:
            position[key] = index
        elif (first := equipment[position[key]].id) == item.id:
            problems.append((
                f"equipment[{index}].id",
                f"{item.id!r} is also equipment[{position[key]}]",
                "keep one [[equipment]] table per piece of equipment",
            ))
        else:
            problems.append((
                f"equipment[{index}].id",
                f"{item.id!r} and equipment[{position[key]}] {first!r} differ only in case",
                _id_clash_fix("table"),
            ))
    merged = list(equipment)
    csv_path, csv_items, csv_lines = (
        (imported.path, imported.items, imported.lines) if imported is not None else (Path(), [], {})
    )
    for item in csv_items:
        index = position.get(id_key(item.id))
        if index is None:
            merged.append(item)
        elif (configured := equipment[index].id) == item.id:
            problems.append((
                f"equipment[{index}].id",
                f"{item.id!r} is also in {csv_path} line {csv_lines[item.id]}",
                "describe each piece of equipment in one place: the [[equipment]] table or the CSV row",
            ))
        else:
            problems.append((
                f"equipment[{index}].id",
                f"{configured!r} and {item.id!r} in {csv_path} line {csv_lines[item.id]} differ only in case",
                _id_clash_fix("[[equipment]] table or the CSV row"),
            ))
    if problems:
        raise ConfigError(config_file, problems)
    return merged


def load_inventory(
    config_file: str | Path,
    equipment: Sequence[EquipmentItem],
    inventory: InventoryConfig | None,
    logger: logging.Logger | None = None,
) -> list[EquipmentItem]:
    """The whole inventory of an agent config: its ``[[equipment]]`` plus the ``[inventory] csv``
    file (a relative path is taken from the config file's folder)."""
    imported = None
    if inventory is not None and inventory.csv is not None:
        csv_path = inventory.csv if inventory.csv.is_absolute() else Path(config_file).parent / inventory.csv
        imported = read_inventory_csv(csv_path)
        for warning in imported.warnings:
            (logger or log).warning("%s: %s", imported.path, warning)
    return merge_inventory(config_file, equipment, imported)


# --- summary -------------------------------------------------------------------------------------

NO_CATEGORY = "(no category)"


class CategorySummary(TypedDict):
    equipment_total: int
    equipment_nc: int


class NcSummary(TypedDict):
    """Counted = in the statistical scope and in service on ``on``; amounts in yuan, shares 0…1."""

    on: date
    equipment_total: int
    equipment_nc: int
    asset_value_total: float  # over counted items that have a 原值
    asset_value_nc: float
    equipment_without_asset_value: int  # counted, but left out of the value-weighted share
    nc_share_by_count: float | None  # None: nothing counted
    nc_share_by_value: float | None  # None: no 原值 among the counted items
    equipment_connected: int
    nc_equipment_connected: int
    key_process_total: int
    key_process_nc: int
    out_of_scope: int
    not_yet_commissioned: int
    decommissioned: int
    by_category: dict[str, CategorySummary]


def nc_summary(items: Iterable[EquipmentItem], on: date) -> NcSummary:
    """Year-end style counts (年末数) for one day: the NC-rate numerator and denominator, by count
    and by original asset value."""
    counted: list[EquipmentItem] = []
    out_of_scope = not_yet = gone = 0
    for item in items:
        if not item.in_scope:
            out_of_scope += 1
        elif item.commissioned is not None and on < item.commissioned:
            not_yet += 1
        elif not item.in_service(on):
            gone += 1
        else:
            counted.append(item)
    nc = [i for i in counted if i.nc]
    valued = [i for i in counted if i.asset_value is not None]
    value_total = round(math.fsum(i.asset_value or 0.0 for i in valued), 2)
    value_nc = round(math.fsum(i.asset_value or 0.0 for i in valued if i.nc), 2)
    by_category: dict[str, CategorySummary] = {}
    for item in counted:
        entry = by_category.setdefault(item.category or NO_CATEGORY, {"equipment_total": 0, "equipment_nc": 0})
        entry["equipment_total"] += 1
        entry["equipment_nc"] += int(item.nc)
    return {
        "on": on,
        "equipment_total": len(counted),
        "equipment_nc": len(nc),
        "asset_value_total": value_total,
        "asset_value_nc": value_nc,
        "equipment_without_asset_value": len(counted) - len(valued),
        "nc_share_by_count": len(nc) / len(counted) if counted else None,
        "nc_share_by_value": value_nc / value_total if value_total > 0 else None,
        "equipment_connected": sum(1 for i in counted if i.connected),
        "nc_equipment_connected": sum(1 for i in nc if i.connected),
        "key_process_total": sum(1 for i in counted if i.key_process),
        "key_process_nc": sum(1 for i in nc if i.key_process),
        "out_of_scope": out_of_scope,
        "not_yet_commissioned": not_yet,
        "decommissioned": gone,
        "by_category": dict(sorted(by_category.items())),
    }


def _display_width(text: str) -> int:
    """Terminal columns: Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _display_width(text))


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.1f} %"


def inventory_check_main(path: Path, out: TextIO, *, on: date | None = None) -> int:
    """``fmc inventory check FILE``: 0 and a summary, or 2 and every problem in the file."""
    try:
        imported = read_inventory_csv(path)
    except InventoryError as e:
        print(e.render(), file=out)
        return 2
    day = on or date.today()
    summary = nc_summary(imported.items, day)
    w = out.write
    w(f"{imported.path}: {len(imported.items)} equipment row(s) — {imported.encoding}, "
      f"{imported.delimiter}-separated, header on line {imported.header_line}\n")
    for warning in imported.warnings:
        w(f"warning: {warning}\n")
    w(f"counted on {day.isoformat()} (in scope and in service): {summary['equipment_total']}\n")
    w(f"  not counted: {summary['out_of_scope']} out of scope, {summary['not_yet_commissioned']} not yet "
      f"commissioned, {summary['decommissioned']} decommissioned\n")
    w(f"  NC 数控: {summary['equipment_nc']} — NC share by count {_pct(summary['nc_share_by_count'])}\n")
    missing = summary["equipment_without_asset_value"]
    w(f"  原值: {summary['asset_value_total']:,.2f} yuan, NC {summary['asset_value_nc']:,.2f} — NC share by "
      f"value {_pct(summary['nc_share_by_value'])}"
      + (f" ({missing} without 原值 left out)" if missing else "") + "\n")
    w(f"  connected 联网: {summary['equipment_connected']} (NC {summary['nc_equipment_connected']})\n")
    w(f"  key process 关键工序: {summary['key_process_total']} (NC {summary['key_process_nc']})\n")
    if summary["by_category"]:
        width = max(8, *(_display_width(name) for name in summary["by_category"]))
        w(f"by category:\n  {_pad('category', width)}  {'total':>5}  {'NC':>5}  {'NC share':>8}\n")
        for name, entry in summary["by_category"].items():
            share = entry["equipment_nc"] / entry["equipment_total"]
            w(f"  {_pad(name, width)}  {entry['equipment_total']:>5}  {entry['equipment_nc']:>5}  {_pct(share):>8}\n")
    return 0
