"""Grafana dashboards as code: the JSON models of the enterprise, bureau and gateway-health dashboards.

Pure: ``build_dashboards`` returns the models as dicts (Grafana's classic dashboard JSON model,
``schemaVersion`` 39); ``write_dashboards`` writes them as the committed ``grafana/dashboards/*.json``
(``python -m fmc.central.grafana.dashboards OUT_DIR``); ``fmc grafana push`` and file provisioning load
them. Every query is InfluxQL on the InfluxDB datasource of uid ``fmc-influxdb`` and reads the data
model of DESIGN §4; it runs on InfluxDB 1.x, on 2.x through the v1 compatibility API and on 3.x
(no Flux; no SLIMIT; metaqueries carry a time bound, since 3.x looks back one day by default).
``grafana/README.md`` says what each panel shows.

Labels exist in Chinese (``lang="zh"``, the default) and English (``lang="en"``), from the same
code: the queries are identical, the uids of the English set end in ``-en``.

Variables are always matched as regular expressions (``"enterprise" =~ /^$enterprise$/``): Grafana
regex-escapes a value it puts into an InfluxQL query, which is right inside ``/…/`` and wrong
inside ``'…'``. Multi-value variables are wrapped in a group (``/^($host)$/``), since some Grafana
versions join the values with ``|`` without one.

The ``agent`` measurement's fields are listed in ``fmc/agent/selfmetrics.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fmc.core.carriers import CARRIERS
from fmc.core.rejections import REJECTION_REASONS
from fmc.indicators.labels import INDICATOR_LABELS as LABELS
from fmc.indicators.plan import INDICATORS

DATASOURCE_UID = "fmc-influxdb"
SCHEMA_VERSION = 39
LANGS = ("zh", "en")
Lang = Literal["zh", "en"]

ENTERPRISE_UID = "fmc-enterprise"
BUREAU_UID = "fmc-bureau"
GATEWAYS_UID = "fmc-gateways"
# Metaqueries on InfluxDB 3 look back one day unless told otherwise; indicator points are stamped
# at the start of their period (years back), so their variables look back to this.
SINCE = "time >= '2000-01-01T00:00:00Z'"
# An agent reports every minute (fmc.agent.selfmetrics.INTERVAL_S): up means a point within 5.
AGENT_UP_WINDOW = "5m"
AGENT_LOOKBACK = "30d"
GROUP_LEVELS = "/^(province|city|county)$/"
MONTH_PERIOD = "/^[0-9]{4}-[0-9]{2}$/"

# --- labels --------------------------------------------------------------------------------------------

_TEXT: dict[str, tuple[str, str]] = {
    "folder": ("fmc 传统制造业改造提升", "fmc manufacturing upgrade"),
    "enterprise_title": ("企业看板：数字化与绿色指标", "Enterprise: digital and green indicators"),
    "bureau_title": ("经信局看板：辖区企业指标", "Bureau: enterprises in the region"),
    "gateways_title": ("网关运行状况", "Gateway health"),
    "enterprise": ("企业", "Enterprise"),
    "year": ("年度", "Year"),
    "equipment": ("设备", "Equipment"),
    "region": ("区域（代码前缀）", "Region (code prefix)"),
    "industry": ("行业（GB/T 4754 门类）", "Industry (GB/T 4754 division)"),
    "indicator": ("指标", "Indicator"),
    "host": ("网关", "Gateway"),
    "value": ("实际值", "Value"),
    "target": ("目标值", "Target"),
    "baseline": ("基期值", "Baseline"),
    "yoy": ("同比变化", "Year on year"),
    "avg_annual": ("年均变化", "Average a year"),
    "coverage": ("数据覆盖率", "Data coverage"),
    "status": ("状态", "Status"),
    "rank": ("排名", "Rank"),
    "met_count": ("达标企业数", "Met"),
    "assessed": ("参评企业数", "Assessed"),
    "members": ("企业数", "Enterprises"),
    "met_share": ("达标企业占比", "Share on track"),
    "row_year": ("本年指标（$year）", "This year's indicators ($year)"),
    "all_indicators": ("全部指标（$year）", "All indicators ($year)"),
    "row_trend": ("月度趋势：实际值对照目标路径", "Monthly trend against the target path"),
    "trend_suffix": ("（月度）", " (monthly)"),
    "row_equipment": ("设备", "Equipment"),
    "states": ("设备状态", "Equipment states"),
    "utilisation": ("设备稼动率（所选时段）", "Equipment utilisation (time range)"),
    "util_calendar": ("稼动率（在册时间）", "Utilisation (in service)"),
    "util_online": ("稼动率（在线时间）", "Utilisation (online)"),
    "running_h": ("运行小时", "Running h"),
    "online_h": ("在线小时", "Online h"),
    "kind": ("类型", "Kind"),
    "nc": ("数控", "NC"),
    "row_energy": ("能源与用水", "Energy and water"),
    "energy_daily": ("每日综合能耗（tce，按能源品种）", "Daily energy (tce, by carrier)"),
    "energy_mix": ("能耗构成（tce，所选时段）", "Energy by carrier (tce, time range)"),
    "water_daily": ("每日用水与废水（m³）", "Daily water and wastewater (m³)"),
    "meter_coverage": ("计量数据覆盖率（每只表）", "Metered data coverage (each meter)"),
    "carrier_coverage": ("每日计量覆盖率（按品种）", "Daily metered coverage (by carrier)"),
    "row_region": ("辖区汇总：$region（$year）", "Region $region ($year)"),
    "share_on_track": ("达标企业占比（按指标）", "Share of enterprises on track (by indicator)"),
    "group_figures": ("辖区合计指标（汇总计算）", "Pooled figures of the region"),
    "row_enterprises": ("企业", "Enterprises"),
    "status_matrix": ("企业达标状态（点击企业查看企业看板）", "Status of each enterprise (click for its dashboard)"),
    "detail": ("企业指标明细", "Indicators of each enterprise"),
    "ranking": ("排名：$indicator", "Ranking: $indicator"),
    "coverage_matrix": ("数据覆盖率（按企业和指标）", "Data coverage (by enterprise and indicator)"),
    "industry_share": ("分行业达标企业占比", "Share on track by industry"),
    "industry_col": ("行业", "Industry"),
    "region_col": ("区域", "Region"),
    "drill": ("打开企业看板", "Open the enterprise dashboard"),
    "agents_up": ("运行中的网关（5 分钟内上报）", "Gateways up (reported within 5 min)"),
    "agents_known": ("已知网关（30 天内上报）", "Known gateways (reported within 30 days)"),
    "spool_total": ("待发送点数（合计）", "Points waiting (total)"),
    "oldest_max": ("最久未发送点的等待时间", "Oldest unsent point"),
    "last_report": ("各网关最近一次上报", "Last report of each gateway"),
    "last_seen": ("最近上报", "Last report"),
    "reporting": ("上报情况", "Reporting"),
    "spool_depth": ("待发送点数", "Points waiting"),
    "oldest_unsent": ("最久未发送点的等待时间", "Age of the oldest unsent point"),
    "rejections": ("拒收（所选时段，按原因）", "Rejections (time range, by reason)"),
    "rejections_host": ("拒收（按网关）", "Rejections (by gateway)"),
    "losses": ("丢弃点数与写入失败", "Dropped points and failed writes"),
    "reason": ("原因", "Reason"),
    "count": ("次数", "Count"),
    "up": ("运行", "Up"),
    "down": ("无上报或已停止", "Silent or stopped"),
    "uptime_s": ("运行时长", "Uptime"),
    "spool_bytes": ("待发送字节", "Bytes waiting"),
    "dead_letters": ("死信", "Dead letters"),
    "sources_connected": ("已连接数据源", "Sources connected"),
    "sources": ("数据源", "Sources"),
    "rejected": ("拒收", "Rejected"),
    "dropped": ("丢弃", "Dropped"),
    "sink_errors": ("写入失败", "Failed writes"),
}

_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "kpi": (
        "中央服务写入的 indicator 点（level=enterprise，period=$year）：本年（或年初至今）实际值、"
        "按基期值推算的目标值和状态。数据不足时不显示数值。",
        "indicator points written by the central service (level=enterprise, period=$year): the value, "
        "the target on the path from the baseline, and the status. No number when the data are insufficient.",
    ),
    "trend": (
        "月度 indicator 点（period=YYYY-MM）：实际值与按基期同月值推算的目标路径。",
        "Monthly indicator points (period=YYYY-MM): the value and the target on the path from the "
        "same month of the base year.",
    ),
    "states": (
        "equipment_state：状态变化时写入。所选时段开始前的状态不显示。",
        "equipment_state, written on each change. The state before the start of the range is not shown.",
    ),
    "utilisation": (
        "equipment_daily 的整日汇总：稼动率（在册时间）= 运行时间 ÷ 在册时间 in_inventory_s（设备在台账范围内的"
        "整日时间，离线也计入）；稼动率（在线时间）= 运行时间 ÷ 在线时间 online_s。只含已结束的日。",
        "Whole days of equipment_daily: utilisation (in service) = running_s ÷ in_inventory_s (the whole "
        "days the equipment is in the ledger's scope, offline time included); utilisation (online) = "
        "running_s ÷ online_s. Completed days only.",
    ),
    "meter_coverage": (
        "meter_interval 的 coverage：每个间隔内有计量数据的时间占比。0%（红色）是数据缺失，不是节能。",
        "coverage of meter_interval: the share of each interval that was measured. 0 % (red) is missing "
        "data, not saving.",
    ),
    "share": (
        "辖区（county/city/province 行，region=$region）中本指标达标的企业占参评企业的比例（met_share）。",
        "met_share of the region's row (county, city or province, region=$region): the enterprises that "
        "met their target among those assessed.",
    ),
    "ranking": (
        "rank：中央服务在同一批企业中的排名（1 最好；能耗强度越低越好）。",
        "rank: the position among the enterprises the central service ranked together (1 is best; lower "
        "intensities rank higher).",
    ),
    "industry_share": (
        "level=industry 行（在 region=$region 范围内汇总）的 met_share。中央服务需为该区域生成行业行。",
        "met_share of the level=industry rows pooled within region $region; the central service must "
        "materialize industry rows for that region.",
    ),
    "rejections": (
        "agent 点的 rejected_<原因> 计数在所选时段内的增量（各网关相加）。网关重启后从 0 重新计数。",
        "Increase over the range of the agent points' rejected_<reason> counters, summed over gateways. "
        "The counters restart from 0 with the agent.",
    ),
    "last_report": (
        "每个网关 30 天内最后一个 agent 点。运行=0 表示正常停止；最近上报超过 5 分钟表示网关失联或已停止。",
        "The last agent point of each gateway within 30 days. Up = 0 is a clean stop; a last report older "
        "than 5 minutes means the gateway is cut off or stopped.",
    ),
}

# the project's one table of indicator names (fmc/indicators/labels.py), English capitalised for titles
INDICATOR_LABELS: dict[str, tuple[str, str]] = {
    name: (zh, en[:1].upper() + en[1:]) for name, (zh, en, _) in LABELS.items()
}
INDICATOR_UNITS: dict[str, tuple[str, str]] = {
    "nc_rate": ("percent", "percent"),
    "networking_rate": ("percent", "percent"),
    "energy": ("suffix: tce", "suffix: tce"),
    "energy_intensity": ("suffix: tce/万元", "suffix: tce/10⁴ yuan"),
    "water_intensity": ("suffix: m³/万元", "suffix: m³/10⁴ yuan"),
    "wastewater_intensity": ("suffix: m³/万元", "suffix: m³/10⁴ yuan"),
    "labour_productivity": ("suffix: 万元/人", "suffix: 10⁴ yuan/person"),
    "rd_intensity": ("percent", "percent"),
    "new_product_ratio": ("percent", "percent"),
}
# The indicators the enterprise dashboard shows one by one (DESIGN §1: the enterprise manager's view).
ENTERPRISE_KPIS = (
    "nc_rate",
    "networking_rate",
    "energy_intensity",
    "water_intensity",
    "wastewater_intensity",
    "labour_productivity",
)
STATUS_LABELS: dict[str, tuple[str, str, str]] = {  # status -> (zh, en, colour)
    "met": ("达标", "Met", "green"),
    "missed": ("未达标", "Missed", "red"),
    "insufficient_data": ("数据不足", "Insufficient data", "orange"),
    "no_target": ("无目标", "No target", "blue"),
}
STATE_LABELS: dict[str, tuple[str, str, str]] = {  # equipment state -> (zh, en, colour)
    "offline": ("离线", "Offline", "#8e8e8e"),
    "off": ("关机", "Off", "#3b5998"),
    "idle": ("待机", "Idle", "yellow"),
    "running": ("运行", "Running", "green"),
    "down": ("故障", "Down", "red"),
}
CARRIER_LABELS: dict[str, tuple[str, str]] = {
    "electricity": ("电力", "Electricity"),
    "natural_gas": ("天然气", "Natural gas"),
    "coal": ("原煤", "Coal"),
    "diesel": ("柴油", "Diesel"),
    "gasoline": ("汽油", "Gasoline"),
    "lpg": ("液化石油气", "LPG"),
    "steam": ("蒸汽", "Steam"),
    "heat": ("热力", "Heat"),
    "water_intake": ("取水", "Water intake"),
    "water_reused": ("回用水", "Reused water"),
    "wastewater": ("废水", "Wastewater"),
}


def _pick(pair: tuple[str, ...], lang: Lang) -> str:
    return pair[0] if lang == "zh" else pair[1]


# --- the model ---------------------------------------------------------------------------------------


@dataclass
class Dashboard:
    """One dashboard: its uid, title and folder, and the JSON model Grafana takes."""

    uid: str
    title: str
    folder_uid: str
    folder_title: str
    model: dict[str, Any]


def _match(tag: str, var: str, *, prefix: bool = False, multi: bool = False) -> str:
    """``"tag" =~ /^$var$/``: a variable as a regex (Grafana escapes it), grouped when multi-valued."""
    value = f"(${var})" if multi else f"${var}"
    return f'"{tag}" =~ /^{value}{"" if prefix else "$"}/'


class _Board:
    """Panels of one dashboard, laid out left to right on Grafana's 24-column grid."""

    def __init__(self, lang: Lang, datasource_uid: str) -> None:
        self.lang = lang
        self.datasource_uid = datasource_uid
        self.panels: list[dict[str, Any]] = []
        self._next_id = 1
        self._x = 0
        self._y = 0
        self._row_h = 0

    @property
    def ds(self) -> dict[str, str]:
        """The datasource reference (a new dict each time: the model shares no mutable parts)."""
        return {"type": "influxdb", "uid": self.datasource_uid}

    def t(self, key: str) -> str:
        return _pick(_TEXT[key], self.lang)

    def describe(self, key: str) -> str:
        return _pick(_DESCRIPTIONS[key], self.lang)

    def target(self, ref_id: str, query: str, *, table: bool = False, alias: str | None = None) -> dict[str, Any]:
        t: dict[str, Any] = {
            "refId": ref_id,
            "datasource": self.ds,
            "query": query,
            "rawQuery": True,
            "resultFormat": "table" if table else "time_series",
        }
        if alias is not None:
            t["alias"] = alias
        return t

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({
            "id": self._id(),
            "type": "row",
            "title": title,
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
            "panels": [],
        })
        self._y += 1

    def add(self, panel: dict[str, Any], w: int, h: int) -> dict[str, Any]:
        if self._x + w > 24:
            self._newline()
        grid = {"h": h, "w": w, "x": self._x, "y": self._y}
        panel = {"id": self._id(), **panel, "datasource": self.ds, "gridPos": grid}
        self._x += w
        self._row_h = max(self._row_h, h)
        self.panels.append(panel)
        return panel

    def _newline(self) -> None:
        self._y += self._row_h
        self._x = 0
        self._row_h = 0

    def _id(self) -> int:
        n = self._next_id
        self._next_id += 1
        return n

    # --- field config pieces -------------------------------------------------------------------------

    def status_mapping(self) -> dict[str, Any]:
        return {
            "type": "value",
            "options": {
                status: {"text": _pick(labels, self.lang), "color": labels[2], "index": i}
                for i, (status, labels) in enumerate(STATUS_LABELS.items())
            },
        }

    def indicator_mapping(self) -> dict[str, Any]:
        return {
            "type": "value",
            "options": {
                name: {"text": _pick(INDICATOR_LABELS[name], self.lang), "index": i}
                for i, name in enumerate(INDICATORS)
            },
        }

    def state_mapping(self) -> dict[str, Any]:
        return {
            "type": "value",
            "options": {
                state: {"text": _pick(labels, self.lang), "color": labels[2], "index": i}
                for i, (state, labels) in enumerate(STATE_LABELS.items())
            },
        }

    def carrier_overrides(self) -> list[dict[str, Any]]:
        """Series named by their carrier (alias $tag_carrier) get the carrier's label."""
        return [_display_name(carrier, _pick(CARRIER_LABELS[carrier], self.lang)) for carrier in CARRIERS]

    def drill_link(self) -> dict[str, Any]:
        uid = ENTERPRISE_UID + ("" if self.lang == "zh" else "-en")
        return {
            "title": self.t("drill"),
            "url": f"/d/{uid}?var-enterprise=${{__value.raw}}&var-year=${{year}}",
        }


def _display_name(field_name: str, label: str, **extra: Any) -> dict[str, Any]:
    properties: list[dict[str, Any]] = [{"id": "displayName", "value": label}]
    properties += [{"id": key, "value": value} for key, value in extra.items()]
    return {"matcher": {"id": "byName", "options": field_name}, "properties": properties}


def _property(field_name: str, **props: Any) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": field_name},
        "properties": [{"id": key, "value": value} for key, value in props.items()],
    }


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def _table_options(sort_by: str | None = None, desc: bool = False) -> dict[str, Any]:
    options: dict[str, Any] = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    if sort_by is not None:
        options["sortBy"] = [{"displayName": sort_by, "desc": desc}]
    return options


def _table_defaults(**extra: Any) -> dict[str, Any]:
    return {
        "custom": {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True, "inspect": False},
        **extra,
    }


def _color_cell() -> dict[str, Any]:
    return {"id": "custom.cellOptions", "value": {"type": "color-background"}}


def _legend(placement: str = "bottom") -> dict[str, Any]:
    return {"showLegend": True, "displayMode": "list", "placement": placement, "calcs": []}


def _timeseries_custom(bars: bool = False, stack: bool = False) -> dict[str, Any]:
    return {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1 if bars else 2,
        "fillOpacity": 80 if bars else 0,
        "showPoints": "never" if bars else "always",
        "pointSize": 5,
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "axisPlacement": "auto",
    }


# --- the enterprise dashboard ------------------------------------------------------------------------------


def _enterprise_indicator_where(extra: str) -> str:
    return f"\"level\" = 'enterprise' AND {_match('enterprise', 'enterprise')} AND {extra}"


def _enterprise(b: _Board) -> list[dict[str, Any]]:
    ent = _match("enterprise", "enterprise")
    eq = _match("equipment", "equipment", multi=True)
    year = _match("period", "year")
    b.row(b.t("row_year"))
    for name in ENTERPRISE_KPIS:
        where = _enterprise_indicator_where(f'"indicator" = {_lit(name)} AND {year}')
        query = f'SELECT "value", "target", "status" FROM "indicator" WHERE {where}'
        unit = _pick(INDICATOR_UNITS[name], b.lang)
        b.add({
            "type": "stat",
            "title": _pick(INDICATOR_LABELS[name], b.lang),
            "description": b.describe("kpi"),
            "targets": [b.target(f"kpi_{name}", query, table=True)],
            "fieldConfig": {
                "defaults": {
                    "decimals": 2,
                    "color": {"mode": "fixed", "fixedColor": "blue"},
                    "mappings": [b.status_mapping()],
                },
                "overrides": [
                    _display_name("value", b.t("value"), unit=unit),
                    _display_name("target", b.t("target"), unit=unit),
                    _display_name("status", b.t("status"), **{"color": {"mode": "thresholds"}}),
                ],
            },
            "options": {
                "reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": "/^(value|target|status)$/"},
                "orientation": "horizontal",
                "textMode": "value_and_name",
                "colorMode": "background",
                "graphMode": "none",
                "justifyMode": "auto",
                "wideLayout": True,
            },
        }, w=4, h=6)
    query = (
        'SELECT "value", "target", "baseline", "yoy", "avg_annual", "coverage", "status" FROM "indicator" '
        f"WHERE {_enterprise_indicator_where(year)} GROUP BY \"indicator\""
    )
    b.add({
        "type": "table",
        "title": b.t("all_indicators"),
        "description": b.describe("kpi"),
        "targets": [b.target("kpi_table", query, table=True)],
        "fieldConfig": {
            "defaults": _table_defaults(decimals=2),
            "overrides": [
                _display_name("indicator", b.t("indicator"), mappings=[b.indicator_mapping()]),
                *[_display_name(f, b.t(f)) for f in ("value", "target", "baseline", "yoy", "avg_annual")],
                _display_name("coverage", b.t("coverage"), unit="percentunit"),
                _display_name("status", b.t("status"), mappings=[b.status_mapping()], **{"custom.cellOptions": {
                    "type": "color-background"}}),
            ],
        },
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
        "options": _table_options(),
    }, w=24, h=8)

    b.row(b.t("row_trend"))
    for name in ENTERPRISE_KPIS:
        where = _enterprise_indicator_where(f'"indicator" = {_lit(name)} AND "period" =~ {MONTH_PERIOD}')
        query = f'SELECT "value", "target" FROM "indicator" WHERE {where} AND $timeFilter'
        b.add({
            "type": "timeseries",
            "title": _pick(INDICATOR_LABELS[name], b.lang) + b.t("trend_suffix"),
            "description": b.describe("trend"),
            "targets": [b.target(f"trend_{name}", query, alias="$col")],
            "fieldConfig": {
                "defaults": {"unit": _pick(INDICATOR_UNITS[name], b.lang), "decimals": 2,
                             "custom": _timeseries_custom()},
                "overrides": [
                    _display_name("value", b.t("value")),
                    _display_name("target", b.t("target"), **{"custom.lineStyle": {"fill": "dash", "dash": [10, 10]}}),
                ],
            },
            "options": {"legend": _legend(), "tooltip": {"mode": "multi", "sort": "none"}},
        }, w=8, h=7)

    b.row(b.t("row_equipment"))
    query = f'SELECT "state" FROM "equipment_state" WHERE {ent} AND {eq} AND $timeFilter GROUP BY "equipment"'
    b.add({
        "type": "state-timeline",
        "title": b.t("states"),
        "description": b.describe("states"),
        "targets": [b.target("states", query, alias="$tag_equipment")],
        "fieldConfig": {
            "defaults": {"mappings": [b.state_mapping()], "color": {"mode": "fixed", "fixedColor": "#8e8e8e"},
                         "custom": {"fillOpacity": 80, "lineWidth": 0}},
            "overrides": [],
        },
        "options": {"mergeValues": True, "showValue": "auto", "alignValue": "left", "rowHeight": 0.9,
                    "legend": _legend(), "tooltip": {"mode": "single", "sort": "none"}},
    }, w=24, h=10)
    query = (
        'SELECT sum("running_s") / sum("in_inventory_s") * 100 AS "utilisation", '
        'sum("running_s") / sum("online_s") * 100 AS "utilisation_online", '
        'sum("running_s") / 3600 AS "running_h", sum("online_s") / 3600 AS "online_h" '
        f'FROM "equipment_daily" WHERE {ent} AND {eq} AND $timeFilter GROUP BY "equipment", "kind", "nc"'
    )
    b.add({
        "type": "table",
        "title": b.t("utilisation"),
        "description": b.describe("utilisation"),
        "targets": [b.target("utilisation", query, table=True)],
        "fieldConfig": {
            "defaults": _table_defaults(decimals=1),
            "overrides": [
                _display_name("equipment", b.t("equipment")),
                _display_name("kind", b.t("kind")),
                _display_name("nc", b.t("nc")),
                _display_name("utilisation", b.t("util_calendar"), unit="percent", min=0, max=100,
                              **{"custom.cellOptions": {"type": "gauge", "mode": "basic"}}),
                _display_name("utilisation_online", b.t("util_online"), unit="percent", min=0, max=100,
                              **{"custom.cellOptions": {"type": "gauge", "mode": "basic"}}),
                _display_name("running_h", b.t("running_h")),
                _display_name("online_h", b.t("online_h")),
            ],
        },
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
        "options": _table_options(sort_by=b.t("util_calendar"), desc=True),
    }, w=24, h=9)

    b.row(b.t("row_energy"))
    b.add({
        "type": "timeseries",
        "title": b.t("energy_daily"),
        "targets": [b.target(
            "energy_daily",
            f'SELECT "tce" FROM "consumption_daily" WHERE {ent} AND $timeFilter GROUP BY "carrier"',
            alias="$tag_carrier",
        )],
        "fieldConfig": {"defaults": {"unit": "suffix: tce", "decimals": 3, "custom": _timeseries_custom(True, True)},
                        "overrides": b.carrier_overrides()},
        "options": {"legend": _legend(), "tooltip": {"mode": "multi", "sort": "desc"}},
    }, w=16, h=8)
    b.add({
        "type": "piechart",
        "title": b.t("energy_mix"),
        "targets": [b.target(
            "energy_mix",
            f'SELECT sum("tce") FROM "consumption_daily" WHERE {ent} AND $timeFilter GROUP BY "carrier"',
            alias="$tag_carrier",
        )],
        "fieldConfig": {"defaults": {"unit": "suffix: tce", "decimals": 2}, "overrides": b.carrier_overrides()},
        "options": {"reduceOptions": {"values": False, "calcs": ["sum"], "fields": ""}, "pieType": "pie",
                    "legend": {"showLegend": True, "displayMode": "table", "placement": "right",
                               "values": ["value", "percent"]},
                    "tooltip": {"mode": "single", "sort": "none"}},
    }, w=8, h=8)
    b.add({
        "type": "timeseries",
        "title": b.t("water_daily"),
        "targets": [b.target(
            "water_daily",
            f'SELECT "m3" FROM "consumption_daily" WHERE {ent} AND $timeFilter GROUP BY "carrier"',
            alias="$tag_carrier",
        )],
        "fieldConfig": {"defaults": {"unit": "suffix: m³", "decimals": 1, "custom": _timeseries_custom(True)},
                        "overrides": b.carrier_overrides()},
        "options": {"legend": _legend(), "tooltip": {"mode": "multi", "sort": "desc"}},
    }, w=12, h=8)
    b.add({
        "type": "timeseries",
        "title": b.t("carrier_coverage"),
        "targets": [b.target(
            "carrier_coverage",
            f'SELECT "coverage" FROM "consumption_daily" WHERE {ent} AND $timeFilter GROUP BY "carrier"',
            alias="$tag_carrier",
        )],
        "fieldConfig": {"defaults": {"unit": "percentunit", "min": 0, "max": 1, "custom": _timeseries_custom()},
                        "overrides": b.carrier_overrides()},
        "options": {"legend": _legend(), "tooltip": {"mode": "multi", "sort": "none"}},
    }, w=12, h=8)
    b.add({
        "type": "state-timeline",
        "title": b.t("meter_coverage"),
        "description": b.describe("meter_coverage"),
        "interval": "15m",
        "targets": [b.target(
            "meter_coverage",
            f'SELECT mean("coverage") FROM "meter_interval" WHERE {ent} AND $timeFilter '
            'GROUP BY time($__interval), "meter" fill(0)',
            alias="$tag_meter",
        )],
        "fieldConfig": {
            "defaults": {"unit": "percentunit", "min": 0, "max": 1, "decimals": 0,
                         "color": {"mode": "thresholds"},
                         "thresholds": _thresholds((None, "red"), (0.5, "orange"), (0.95, "green")),
                         "custom": {"fillOpacity": 80, "lineWidth": 0}},
            "overrides": [],
        },
        "options": {"mergeValues": False, "showValue": "never", "alignValue": "left", "rowHeight": 0.9,
                    "legend": _legend(), "tooltip": {"mode": "single", "sort": "none"}},
    }, w=24, h=8)
    return b.panels


def _enterprise_variables(b: _Board) -> list[dict[str, Any]]:
    return [
        _query_var(b, "enterprise", 'SHOW TAG VALUES FROM "enterprise_daily" WITH KEY = "enterprise" WHERE $timeFilter',
                   refresh=2, sort=1),
        _query_var(b, "year", 'SHOW TAG VALUES FROM "indicator" WITH KEY = "period" WHERE '
                   f"{_match('enterprise', 'enterprise')} AND \"period\" =~ /^[0-9]{{4}}(-YTD)?$/ AND {SINCE}",
                   refresh=1, sort=2),
        _query_var(b, "equipment", 'SHOW TAG VALUES FROM "equipment_daily" WITH KEY = "equipment" WHERE '
                   f"{_match('enterprise', 'enterprise')} AND $timeFilter", refresh=2, sort=1, multi=True),
    ]


# --- the bureau dashboard ------------------------------------------------------------------------------


def _bureau(b: _Board) -> list[dict[str, Any]]:
    region = _match("region", "region")
    region_prefix = _match("region", "region", prefix=True)
    industry = _match("industry", "industry", prefix=True)
    year = _match("period", "year")
    enterprises = f"\"level\" = 'enterprise' AND {region_prefix} AND {industry} AND {year}"
    b.row(b.t("row_region"))
    b.add({
        "type": "bargauge",
        "title": b.t("share_on_track"),
        "description": b.describe("share"),
        "targets": [
            b.target(
                f"share_{name}",
                f'SELECT "met_share" * 100 AS "met_share" FROM "indicator" WHERE "level" =~ {GROUP_LEVELS} '
                f"AND {region} AND \"indicator\" = {_lit(name)} AND {year}",
                alias=_pick(INDICATOR_LABELS[name], b.lang),
            )
            for name in INDICATORS
        ],
        "fieldConfig": {"defaults": {"unit": "percent", "min": 0, "max": 100, "decimals": 0,
                                     "color": {"mode": "thresholds"},
                                     "thresholds": _thresholds((None, "red"), (50, "orange"), (80, "green"))},
                        "overrides": []},
        "options": {"reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": ""},
                    "orientation": "horizontal", "displayMode": "gradient", "valueMode": "color",
                    "showUnfilled": True, "namePlacement": "left", "minVizHeight": 16, "minVizWidth": 8},
    }, w=10, h=10)
    b.add({
        "type": "table",
        "title": b.t("group_figures"),
        "targets": [b.target(
            "group_figures",
            'SELECT "value", "target", "status", "met_count", "assessed", "members", "coverage" FROM "indicator" '
            f"WHERE \"level\" =~ {GROUP_LEVELS} AND {region} AND {year} GROUP BY \"indicator\"",
            table=True,
        )],
        "fieldConfig": {
            "defaults": _table_defaults(decimals=2),
            "overrides": [
                _display_name("indicator", b.t("indicator"), mappings=[b.indicator_mapping()]),
                _display_name("value", b.t("value")),
                _display_name("target", b.t("target")),
                _display_name("status", b.t("status"), mappings=[b.status_mapping()],
                              **{"custom.cellOptions": {"type": "color-background"}}),
                _display_name("met_count", b.t("met_count"), decimals=0),
                _display_name("assessed", b.t("assessed"), decimals=0),
                _display_name("members", b.t("members"), decimals=0),
                _display_name("coverage", b.t("coverage"), unit="percentunit"),
            ],
        },
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
        "options": _table_options(),
    }, w=14, h=10)

    b.row(b.t("row_enterprises"))
    first_col = b.t("enterprise")
    b.add({
        "type": "table",
        "title": b.t("status_matrix"),
        "targets": [b.target(
            "status_matrix",
            f'SELECT "status" FROM "indicator" WHERE {enterprises} GROUP BY "enterprise", "indicator"',
            table=True,
        )],
        "fieldConfig": {
            "defaults": _table_defaults(mappings=[b.status_mapping()]),
            "overrides": [
                {"matcher": {"id": "byType", "options": "string"}, "properties": [_color_cell()]},
                _property(first_col, links=[b.drill_link()], **{"custom.cellOptions": {"type": "auto"}}),
            ],
        },
        "transformations": _matrix("enterprise", "indicator", "status", first_col, b),
        "options": _table_options(sort_by=first_col),
    }, w=24, h=10)
    b.add({
        "type": "table",
        "title": b.t("detail"),
        "targets": [b.target(
            "detail",
            'SELECT "value", "target", "status", "rank", "yoy", "coverage" FROM "indicator" '
            f'WHERE {enterprises} GROUP BY "enterprise", "region", "industry", "indicator"',
            table=True,
        )],
        "fieldConfig": {
            "defaults": _table_defaults(decimals=2),
            "overrides": [
                _display_name("enterprise", b.t("enterprise"), links=[b.drill_link()]),
                _display_name("region", b.t("region_col")),
                _display_name("industry", b.t("industry_col")),
                _display_name("indicator", b.t("indicator"), mappings=[b.indicator_mapping()]),
                _display_name("value", b.t("value")),
                _display_name("target", b.t("target")),
                _display_name("status", b.t("status"), mappings=[b.status_mapping()],
                              **{"custom.cellOptions": {"type": "color-background"}}),
                _display_name("rank", b.t("rank"), decimals=0),
                _display_name("yoy", b.t("yoy"), decimals=3),
                _display_name("coverage", b.t("coverage"), unit="percentunit"),
            ],
        },
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
        "options": _table_options(sort_by=b.t("enterprise")),
    }, w=24, h=12)
    b.add({
        "type": "table",
        "title": b.t("ranking"),
        "description": b.describe("ranking"),
        "targets": [b.target(
            "ranking",
            'SELECT "rank", "value", "target", "status" FROM "indicator" '
            f'WHERE {enterprises} AND {_match("indicator", "indicator")} GROUP BY "enterprise"',
            table=True,
        )],
        "fieldConfig": {
            "defaults": _table_defaults(decimals=2),
            "overrides": [
                _display_name("enterprise", b.t("enterprise"), links=[b.drill_link()]),
                _display_name("rank", b.t("rank"), decimals=0),
                _display_name("value", b.t("value")),
                _display_name("target", b.t("target")),
                _display_name("status", b.t("status"), mappings=[b.status_mapping()],
                              **{"custom.cellOptions": {"type": "color-background"}}),
            ],
        },
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
        "options": _table_options(sort_by=b.t("rank")),
    }, w=10, h=12)
    b.add({
        "type": "table",
        "title": b.t("coverage_matrix"),
        "targets": [b.target(
            "coverage_matrix",
            f'SELECT "coverage" FROM "indicator" WHERE {enterprises} GROUP BY "enterprise", "indicator"',
            table=True,
        )],
        "fieldConfig": {
            "defaults": _table_defaults(unit="percentunit", decimals=0, color={"mode": "thresholds"},
                                        thresholds=_thresholds((None, "red"), (0.5, "orange"), (0.95, "green"))),
            "overrides": [
                {"matcher": {"id": "byType", "options": "number"}, "properties": [_color_cell()]},
                _property(first_col, links=[b.drill_link()]),
            ],
        },
        "transformations": _matrix("enterprise", "indicator", "coverage", first_col, b),
        "options": _table_options(sort_by=first_col),
    }, w=14, h=12)
    b.add({
        "type": "table",
        "title": b.t("industry_share"),
        "description": b.describe("industry_share"),
        "targets": [b.target(
            "industry_share",
            'SELECT "met_share" * 100 AS "met_share" FROM "indicator" '
            f"WHERE \"level\" = 'industry' AND {region} AND {industry} AND {year} GROUP BY \"industry\", \"indicator\"",
            table=True,
        )],
        "fieldConfig": {
            "defaults": _table_defaults(unit="percent", decimals=0, color={"mode": "thresholds"},
                                        thresholds=_thresholds((None, "red"), (50, "orange"), (80, "green"))),
            "overrides": [{"matcher": {"id": "byType", "options": "number"}, "properties": [_color_cell()]}],
        },
        "transformations": _matrix("industry", "indicator", "met_share", b.t("industry_col"), b),
        "options": _table_options(sort_by=b.t("industry_col")),
    }, w=24, h=9)
    return b.panels


def _matrix(row: str, column: str, value: str, first_col: str, b: _Board) -> list[dict[str, Any]]:
    """Long rows (row, column, value) as a matrix with a column per indicator, labelled."""
    rename = {name: _pick(INDICATOR_LABELS[name], b.lang) for name in INDICATORS}
    rename[f"{row}\\{column}"] = first_col
    return [
        {"id": "groupingToMatrix", "options": {"rowField": row, "columnField": column, "valueField": value}},
        {"id": "organize", "options": {"renameByName": rename,
                                       "indexByName": {f"{row}\\{column}": 0,
                                                       **{name: i + 1 for i, name in enumerate(INDICATORS)}}}},
    ]


def _bureau_variables(b: _Board) -> list[dict[str, Any]]:
    indicator = {
        "name": "indicator",
        "label": b.t("indicator"),
        "type": "custom",
        "query": ", ".join(f"{_pick(INDICATOR_LABELS[n], b.lang)} : {n}" for n in INDICATORS),
        "options": [
            {"text": _pick(INDICATOR_LABELS[n], b.lang), "value": n, "selected": i == 0}
            for i, n in enumerate(INDICATORS)
        ],
        "current": {"text": _pick(INDICATOR_LABELS[INDICATORS[0]], b.lang), "value": INDICATORS[0], "selected": True},
        "multi": False,
        "includeAll": False,
        "hide": 0,
        "skipUrlSync": False,
    }
    return [
        _query_var(b, "region", 'SHOW TAG VALUES FROM "indicator" WITH KEY = "region" '
                   f'WHERE "level" =~ {GROUP_LEVELS} AND {SINCE}', refresh=1, sort=1),
        _query_var(b, "industry", 'SHOW TAG VALUES FROM "indicator" WITH KEY = "industry" '
                   f"WHERE \"level\" = 'industry' AND {SINCE}", refresh=1, sort=1, include_all=True),
        _query_var(b, "year", 'SHOW TAG VALUES FROM "indicator" WITH KEY = "period" '
                   f'WHERE "period" =~ /^[0-9]{{4}}(-YTD)?$/ AND {SINCE}', refresh=1, sort=2),
        indicator,
    ]


# --- the gateway health dashboard ----------------------------------------------------------------------------


def _gateways(b: _Board) -> list[dict[str, Any]]:
    scope = f"{_match('enterprise', 'enterprise', multi=True)} AND {_match('host', 'host', multi=True)}"
    recent = f"time > now() - {AGENT_LOOKBACK}"
    per_host = 'GROUP BY "enterprise", "host"'

    def latest(field: str, window: str) -> str:
        return f'SELECT last("{field}") AS "{field}" FROM "agent" WHERE {scope} AND time > now() - {window} {per_host}'

    stats = [
        ("agents_up", f'SELECT sum("up") FROM ({latest("up", AGENT_UP_WINDOW)})', "none", None),
        ("agents_known", f'SELECT count("up") FROM ({latest("up", AGENT_LOOKBACK)})', "none", None),
        ("spool_total", f'SELECT sum("spool_depth") FROM ({latest("spool_depth", AGENT_LOOKBACK)})', "short",
         _thresholds((None, "green"), (10_000, "orange"), (1_000_000, "red"))),
        ("oldest_max", f'SELECT max("oldest_unsent_s") FROM ({latest("oldest_unsent_s", AGENT_LOOKBACK)})', "s",
         _thresholds((None, "green"), (300, "orange"), (3600, "red"))),
    ]
    for key, query, unit, thresholds in stats:
        defaults: dict[str, Any] = {"unit": unit, "decimals": 0}
        if thresholds is None:
            defaults["color"] = {"mode": "fixed", "fixedColor": "blue"}
        else:
            defaults.update(color={"mode": "thresholds"}, thresholds=thresholds)
        b.add({
            "type": "stat",
            "title": b.t(key),
            "targets": [b.target(key, query)],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": ""},
                        "orientation": "auto", "textMode": "value", "colorMode": "background",
                        "graphMode": "none", "justifyMode": "auto", "wideLayout": True},
        }, w=6, h=4)
    columns = ("up", "uptime_s", "spool_depth", "spool_bytes", "oldest_unsent_s", "dead_letters",
               "sources_connected", "sources", "rejected", "dropped", "sink_errors")
    selected = ", ".join(f'"{c}"' for c in columns)
    query = f'SELECT {selected} FROM "agent" WHERE {scope} AND {recent} {per_host} ORDER BY time DESC LIMIT 1'
    b.add({
        "type": "table",
        "title": b.t("last_report"),
        "description": b.describe("last_report"),
        "targets": [b.target("last_report", query, table=True)],
        "fieldConfig": {
            "defaults": _table_defaults(decimals=0),
            "overrides": [
                _display_name("Time", b.t("last_seen"), unit="dateTimeFromNow"),
                _display_name("enterprise", b.t("enterprise")),
                _display_name("host", b.t("host")),
                _display_name("up", b.t("up"), mappings=[{"type": "value", "options": {
                    "1": {"text": b.t("up"), "color": "green", "index": 0},
                    "0": {"text": b.t("down"), "color": "red", "index": 1}}}],
                    **{"custom.cellOptions": {"type": "color-background"}}),
                _display_name("uptime_s", b.t("uptime_s"), unit="s"),
                _display_name("spool_depth", b.t("spool_depth")),
                _display_name("spool_bytes", b.t("spool_bytes"), unit="bytes"),
                _display_name("oldest_unsent_s", b.t("oldest_unsent"), unit="s", color={"mode": "thresholds"},
                              thresholds=_thresholds((None, "green"), (300, "orange"), (3600, "red")),
                              **{"custom.cellOptions": {"type": "color-text"}}),
                *[_display_name(c, b.t(c)) for c in ("dead_letters", "sources_connected", "sources", "rejected",
                                                     "dropped", "sink_errors")],
            ],
        },
        "options": _table_options(sort_by=b.t("last_seen")),
    }, w=24, h=9)
    b.add({
        "type": "state-timeline",
        "title": b.t("reporting"),
        "interval": "2m",
        "targets": [b.target(
            "reporting",
            f'SELECT max("up") FROM "agent" WHERE {scope} AND $timeFilter '
            'GROUP BY time($__interval), "enterprise", "host" fill(0)',
            alias="$tag_enterprise $tag_host",
        )],
        "fieldConfig": {
            "defaults": {"color": {"mode": "thresholds"}, "thresholds": _thresholds((None, "red"), (1, "green")),
                         "mappings": [{"type": "value", "options": {
                             "0": {"text": b.t("down"), "color": "red", "index": 0},
                             "1": {"text": b.t("up"), "color": "green", "index": 1}}}],
                         "custom": {"fillOpacity": 80, "lineWidth": 0}},
            "overrides": [],
        },
        "options": {"mergeValues": True, "showValue": "never", "alignValue": "left", "rowHeight": 0.9,
                    "legend": _legend(), "tooltip": {"mode": "single", "sort": "none"}},
    }, w=24, h=8)
    for key, field, unit in (("spool_depth", "spool_depth", "short"), ("oldest_unsent", "oldest_unsent_s", "s")):
        b.add({
            "type": "timeseries",
            "title": b.t(key),
            "interval": "1m",
            "targets": [b.target(
                key,
                f'SELECT max("{field}") FROM "agent" WHERE {scope} AND $timeFilter '
                'GROUP BY time($__interval), "enterprise", "host" fill(none)',
                alias="$tag_enterprise $tag_host",
            )],
            "fieldConfig": {"defaults": {"unit": unit, "min": 0, "custom": _timeseries_custom()}, "overrides": []},
            "options": {"legend": _legend(), "tooltip": {"mode": "multi", "sort": "desc"}},
        }, w=12, h=8)
    inner = ", ".join(f'non_negative_difference(max("rejected_{r}")) AS "{r}"' for r in (*REJECTION_REASONS, "other"))
    outer = ", ".join(f'sum("{r}") AS "{r}"' for r in (*REJECTION_REASONS, "other"))
    b.add({
        "type": "table",
        "title": b.t("rejections"),
        "description": b.describe("rejections"),
        "interval": "1m",
        "targets": [b.target(
            "rejections",
            f'SELECT {outer} FROM (SELECT {inner} FROM "agent" WHERE {scope} AND $timeFilter '
            'GROUP BY time($__interval), "enterprise", "host")',
            table=True,
        )],
        "fieldConfig": {
            "defaults": _table_defaults(decimals=0),
            "overrides": [_display_name("Field", b.t("reason")), _display_name("Total", b.t("count"))],
        },
        "transformations": [
            {"id": "reduce", "options": {"mode": "seriesToRows", "reducers": ["sum"], "includeTimeField": False}},
            {"id": "filterByValue", "options": {"type": "exclude", "match": "any", "filters": [
                {"fieldName": "Total", "config": {"id": "lowerOrEqual", "options": {"value": 0}}}]}},
        ],
        "options": _table_options(sort_by=b.t("count"), desc=True),
    }, w=8, h=9)
    b.add({
        "type": "timeseries",
        "title": b.t("rejections_host"),
        "interval": "1m",
        "targets": [b.target(
            "rejections_host",
            f'SELECT non_negative_difference(max("rejected")) FROM "agent" WHERE {scope} AND $timeFilter '
            'GROUP BY time($__interval), "enterprise", "host" fill(none)',
            alias="$tag_enterprise $tag_host",
        )],
        "fieldConfig": {"defaults": {"unit": "short", "min": 0, "decimals": 0, "custom": _timeseries_custom(True)},
                        "overrides": []},
        "options": {"legend": _legend(), "tooltip": {"mode": "multi", "sort": "desc"}},
    }, w=8, h=9)
    b.add({
        "type": "timeseries",
        "title": b.t("losses"),
        "interval": "1m",
        "targets": [
            b.target(
                key,
                f'SELECT non_negative_difference(max("{key}")) FROM "agent" WHERE {scope} AND $timeFilter '
                'GROUP BY time($__interval), "enterprise", "host" fill(none)',
                alias=f"$tag_enterprise $tag_host {b.t(key)}",
            )
            for key in ("dropped", "sink_errors")
        ],
        "fieldConfig": {"defaults": {"unit": "short", "min": 0, "decimals": 0, "custom": _timeseries_custom(True)},
                        "overrides": []},
        "options": {"legend": _legend(), "tooltip": {"mode": "multi", "sort": "desc"}},
    }, w=8, h=9)
    return b.panels


def _gateway_variables(b: _Board) -> list[dict[str, Any]]:
    since = f"time > now() - {AGENT_LOOKBACK}"
    return [
        _query_var(b, "enterprise", f'SHOW TAG VALUES FROM "agent" WITH KEY = "enterprise" WHERE {since}',
                   refresh=2, sort=1, multi=True, include_all=True),
        _query_var(b, "host", 'SHOW TAG VALUES FROM "agent" WITH KEY = "host" WHERE '
                   f"{_match('enterprise', 'enterprise', multi=True)} AND {since}",
                   refresh=2, sort=1, multi=True, include_all=True),
    ]


# --- assembly ------------------------------------------------------------------------------------------


def _lit(value: str) -> str:
    """An InfluxQL string literal of a name from the code (an indicator, never user input)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _query_var(
    b: _Board,
    name: str,
    query: str,
    *,
    refresh: int,
    sort: int,
    multi: bool = False,
    include_all: bool = False,
) -> dict[str, Any]:
    """A query variable. refresh 1: on load, 2: on time range change; sort 1: a-z, 2: z-a."""
    var: dict[str, Any] = {
        "name": name,
        "label": b.t(name),
        "type": "query",
        "datasource": b.ds,
        "query": query,
        "definition": query,
        "refresh": refresh,
        "sort": sort,
        "regex": "",
        "multi": multi,
        "includeAll": include_all or multi,
        "current": {},
        "options": [],
        "hide": 0,
        "skipUrlSync": False,
    }
    if include_all or multi:
        # a regex matching every value, rather than a list of all of them in the query
        var["allValue"] = ".*"
    return var


def _model(uid: str, title: str, b: _Board, panels: list[dict[str, Any]], variables: list[dict[str, Any]],
           time_from: str, links: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": None,
        "uid": uid,
        "title": title,
        "tags": ["fmc", b.lang],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "",
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": []},
        "links": links,
        "templating": {"list": variables},
        "panels": panels,
    }


def build_dashboards(datasource_uid: str = DATASOURCE_UID, lang: str = "zh") -> list[Dashboard]:
    """The enterprise, bureau and gateway-health dashboards in one language ("zh" or "en")."""
    if lang not in LANGS:
        raise ValueError(f"lang {lang!r}: use one of {', '.join(LANGS)}")
    language: Lang = "zh" if lang == "zh" else "en"
    suffix = "" if language == "zh" else "-en"
    folder_uid = "fmc" + suffix
    folder_title = _pick(_TEXT["folder"], language)
    out: list[Dashboard] = []
    specs = (
        (ENTERPRISE_UID, "enterprise_title", _enterprise, _enterprise_variables, "now-90d"),
        (BUREAU_UID, "bureau_title", _bureau, _bureau_variables, "now-1y"),
        (GATEWAYS_UID, "gateways_title", _gateways, _gateway_variables, "now-24h"),
    )
    uids = [uid + suffix for uid, *_ in specs]
    for (_, title_key, panels_of, variables_of, time_from), full_uid in zip(specs, uids, strict=True):
        b = _Board(language, datasource_uid)
        title = b.t(title_key)
        links = [
            {"type": "link", "title": b.t(other_key), "url": f"/d/{other_uid}", "icon": "dashboard",
             "targetBlank": False, "asDropdown": False, "includeVars": False, "keepTime": False, "tags": [],
             "tooltip": ""}
            for (_, other_key, *_), other_uid in zip(specs, uids, strict=True) if other_uid != full_uid
        ]
        model = _model(full_uid, title, b, panels_of(b), variables_of(b), time_from, links)
        out.append(Dashboard(full_uid, title, folder_uid, folder_title, model))
    return out


def all_dashboards(datasource_uid: str = DATASOURCE_UID) -> list[Dashboard]:
    """Both language sets."""
    return [d for lang in LANGS for d in build_dashboards(datasource_uid, lang)]


def dashboard_json(dashboard: Dashboard) -> str:
    """The file form: pretty JSON, sorted keys, UTF-8 text as is, a trailing newline."""
    return json.dumps(dashboard.model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_dashboards(out_dir: Path) -> list[Path]:
    """Write every dashboard of both languages to ``out_dir/<uid>.json``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for dashboard in all_dashboards():
        path = out_dir / f"{dashboard.uid}.json"
        path.write_text(dashboard_json(dashboard), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fmc.central.grafana.dashboards",
        description="Write the fmc Grafana dashboards (Chinese and English) as JSON files into OUT_DIR.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="directory for the <uid>.json files")
    args = parser.parse_args(argv)
    try:
        paths = write_dashboards(args.out_dir)
    except OSError as e:
        print(f"cannot write the dashboards into {args.out_dir}: {e.strerror or e}; "
              "pass a directory you can write to", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
