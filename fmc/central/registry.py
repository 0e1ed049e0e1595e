"""The central registry of enterprises (``[registry] csv``): names, regions, industries, and the
base-year figures enterprises reported in surveys (used when the data cannot give a baseline).

CSV, UTF-8 (with or without BOM) or GB18030, Chinese or English headers:

=================  ==========================================  =========
column             headers accepted                            required
=================  ==========================================  =========
enterprise         enterprise, id, 企业编号, 企业代码           yes
name               name, 企业名称                               no
region             region, 行政区划代码, 区划代码               yes
industry           industry, 行业代码                           yes
baseline figures   baseline_<indicator>, 基期<indicator label>  no
backbone           backbone, 骨干企业                           no
above designated   above_designated_size, 规上企业, 规模以上企业  no
closed on          closed_on, 注销日期, 停产日期, 关停日期       no
retired gateways   retired_gateways, 退役网关                   no
commissioned gw.   commissioned_gateways, 启用网关, 投运网关      no
=================  ==========================================  =========

The two flags name the plan's populations (一(二): the NC and networking targets are for 骨干企业, the
others for 规模以上工业企业): 是/否, Y/N, 1/0; an empty cell is 否.

The closing date is the last day an enterprise existed (closed, retired: the plan's 有序退出), in the
ledger's date forms (2018-06-30, 2018/6/30, 2018年6月30日, …); empty: still open. It is a member of
the periods that start on or before that day only (``IndicatorService``), so the periods before it
keep it as they always did.

The retired gateways are the enterprise's gateways taken out of service for good, each with its last day
in service: ``boiler:2020-09-30`` (``；`` or ``;`` between several, ``：`` as well as ``:``). A gateway
that stops writing is taken for a dead one, whose carriers stay expected and count as missing; one
declared here ended them, as when the boiler house is pulled down with the coal (煤改气):
``engine.silent_carriers`` and docs/indicators.md (Expected carriers). The commissioned gateways are
those put into service within the enterprise's data (a new hall), each with its first day in service,
written alike. Together they say which days each gateway was there to measure: a carrier that several
gateways measure is covered by their days in service (``engine.coverage_in_service``), not by the whole
period of each.

The whole file is checked before any of it is used: every bad row is named by line and column, and
a row with more cells than the header (an unquoted ``1,234``, split in two) is a bad row.
"""

from __future__ import annotations

import csv
import io
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import MappingProxyType

from fmc.core.config import ID_PATTERN, ConfigError
from fmc.core.regions import INDUSTRY_CODE_PATTERN, REGION_CODE_PATTERN
from fmc.indicators.labels import INDICATOR_LABELS
from fmc.indicators.plan import INDICATORS
from fmc.plant.ledger import cells_beyond_header, decode_ledger, parse_date, split_cell_fix

FLAG_YES = frozenset({"是", "y", "yes", "1", "true", "√", "✓"})
FLAG_NO = frozenset({"否", "n", "no", "0", "false", ""})
# one for the entries that declare none (a province's 100,000), read only so that none can change it for all
_NO_GATEWAYS: Mapping[str, date] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    enterprise: str
    name: str | None
    region: str
    industry: str
    baseline_values: dict[str, float] = field(default_factory=dict)
    # the plan's populations (一(二)): 骨干企业 and 规模以上工业企业; None: the file has no such column
    backbone: bool | None = None
    above_designated_size: bool | None = None
    # the last day it existed (注销/停产/关停); None: open. Not a member of the periods that start after it
    closed_on: date | None = None
    # gateway id -> its last day in service: its silence after that is no missing data (煤改气's boiler house)
    retired_gateways: Mapping[str, date] = field(default_factory=dict)
    # gateway id -> its first day in service (a new hall): not missing before it
    commissioned_gateways: Mapping[str, date] = field(default_factory=dict)


def _header_key(header: str) -> str | None:
    h = header.strip().lstrip("\ufeff")
    low = h.lower().replace(" ", "_")
    synonyms = {
        "enterprise": ("enterprise", "id", "enterprise_id", "企业编号", "企业代码"),
        "name": ("name", "企业名称"),
        "region": ("region", "行政区划代码", "区划代码"),
        "industry": ("industry", "行业代码"),
        "backbone": ("backbone", "骨干企业", "是否骨干企业"),
        "above_designated_size": (
            "above_designated_size", "规上企业", "规模以上企业", "规模以上工业企业", "是否规上企业"),
        "closed_on": ("closed_on", "closing_date", "注销日期", "停产日期", "关停日期", "关闭日期"),
        "retired_gateways": ("retired_gateways", "退役网关", "已退役网关"),
        "commissioned_gateways": ("commissioned_gateways", "启用网关", "投运网关"),
    }
    for key, names in synonyms.items():
        if low in names or h in names:
            return key
    for indicator in INDICATORS:
        if low == f"baseline_{indicator}" or h == f"基期{INDICATOR_LABELS[indicator][0]}":
            return f"baseline:{indicator}"
    return None


def parse_gateway_days(cell: str, what: str = "last day in service") -> dict[str, date]:
    """``boiler:2020-09-30; hall-b:2021/3/31`` -> {gateway: day}; ValueError naming the entry (``what``: the
    day it gives, for the message)."""
    out: dict[str, date] = {}
    for entry in re.split(r"[;；\n]", cell):
        entry = entry.strip()
        if not entry:
            continue
        parts = re.split(r"\s*[:：]\s*", entry, maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{entry!r} has no ':' between the gateway id and its {what}")
        gateway, day = parts
        if not re.fullmatch(ID_PATTERN, gateway):
            raise ValueError(f"{gateway!r} in {entry!r} is not a gateway id")
        if gateway in out:
            raise ValueError(f"gateway {gateway!r} is named twice")
        out[gateway] = parse_date(day)  # its message quotes the date
    return out


def read_registry(path: Path) -> dict[str, RegistryEntry]:
    """Every enterprise of the file by id; ConfigError listing every problem, nothing partial."""
    try:
        text, _ = decode_ledger(path.read_bytes())  # the ledger's decoding: BOMs, UTF-8, GB18030
    except FileNotFoundError:
        raise ConfigError(path, [("registry.csv", "the file does not exist", "fix [registry] csv")]) from None
    except (OSError, ValueError) as e:
        raise ConfigError(path, [("(file)", f"cannot read it: {e}", "save it as UTF-8 or GB18030 CSV")]) from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ConfigError(path, [("(file)", "empty", "write a header line and one line per enterprise")])
    keys = [_header_key(h) for h in rows[0]]
    problems: list[tuple[str, str, str]] = []
    for column, (header, key) in enumerate(zip(rows[0], keys, strict=True), start=1):
        if key is None and header.strip():
            problems.append((f"line 1, column {column}", f"unknown header {header!r}",
                             "use enterprise, name, region, industry, backbone, above_designated_size, closed_on, "
                             "retired_gateways, commissioned_gateways or baseline_<indicator> (docs/central.md)"))
    for required in ("enterprise", "region", "industry"):
        if required not in keys:
            problems.append(("line 1", f"no {required} column", f"add a {required} column"))
    if problems:
        raise ConfigError(path, problems)
    entries: dict[str, RegistryEntry] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        beyond = cells_beyond_header(row, len(rows[0]))
        if beyond is not None:  # its cells are not under their headers (a baseline 1,234 was read as 1)
            problems.append((f"line {line}", beyond, split_cell_fix(",")))
            continue
        values = {k: row[i].strip() for i, k in enumerate(keys) if k is not None and i < len(row)}

        def bad(column: str, wrong: str, fix: str, line: int = line) -> None:
            problems.append((f"line {line}, column {column}", wrong, fix))

        enterprise = values.get("enterprise", "")
        if not re.fullmatch(ID_PATTERN, enterprise):
            bad("enterprise", f"{enterprise!r} is not an id", "letters, digits, '.', '_' or '-', at most 64")
        elif enterprise in entries:
            bad("enterprise", f"{enterprise!r} appears twice", "keep one line per enterprise")
        region = values.get("region", "")
        if not re.fullmatch(REGION_CODE_PATTERN, region):
            bad("region", f"{region!r} is not a 6-digit GB/T 2260 code", "write e.g. 330602")
        industry = values.get("industry", "")
        if not re.fullmatch(INDUSTRY_CODE_PATTERN, industry):
            bad("industry", f"{industry!r} is not a GB/T 4754 code", "write e.g. 17 or 1711")
        baselines: dict[str, float] = {}
        for key, cell in values.items():
            if key.startswith("baseline:") and cell:
                try:
                    number = float(cell.replace(",", ""))
                except ValueError:
                    number = math.nan
                if not math.isfinite(number) or number < 0:
                    bad(key.removeprefix("baseline:"), f"{cell!r} is not a number ≥ 0", "write a plain number")
                else:  # one key string for every enterprise: a province's registry holds 100,000 of them
                    baselines[sys.intern(key.removeprefix("baseline:"))] = number
        flags: dict[str, bool | None] = {}
        for flag in ("backbone", "above_designated_size"):
            if flag not in keys:
                continue
            cell = values.get(flag, "").strip().lower()
            if cell in FLAG_YES:
                flags[flag] = True
            elif cell in FLAG_NO:
                flags[flag] = False  # an empty cell is "no": the column names those who are
            else:
                bad(flag, f"{values.get(flag)!r} is neither yes nor no",
                    "write 是 or 否 (or 1/0, Y/N), or leave it empty")
        closed_on: date | None = None
        if values.get("closed_on"):
            try:
                closed_on = parse_date(values["closed_on"])
            except ValueError as e:  # its message quotes the cell
                bad("closed_on", str(e), "write the last day it existed, e.g. 2018-06-30, or leave it empty")
        gateway_days: dict[str, dict[str, date]] = {}
        for column, what in (("retired_gateways", "last day in service"),
                             ("commissioned_gateways", "first day in service")):
            gateway_days[column] = {}
            if values.get(column):
                try:
                    gateway_days[column] = parse_gateway_days(values[column], what)
                except ValueError as e:
                    bad(column, str(e), f"write each gateway id and its {what}, e.g. boiler:2020-09-30; "
                                        "hall-b:2021-03-31")
        retired, commissioned = gateway_days["retired_gateways"], gateway_days["commissioned_gateways"]
        for gateway in sorted(retired.keys() & commissioned.keys()):
            if retired[gateway] < commissioned[gateway]:
                bad("retired_gateways", f"gateway {gateway!r} is retired on {retired[gateway]}, before it was "
                                        f"commissioned on {commissioned[gateway]}", "correct one of the two days")
        entries[enterprise] = RegistryEntry(enterprise, values.get("name") or None, region, industry, baselines,
                                            **flags, closed_on=closed_on, retired_gateways=retired or _NO_GATEWAYS,
                                            commissioned_gateways=commissioned or _NO_GATEWAYS)
    if problems:
        raise ConfigError(path, problems)
    return entries
