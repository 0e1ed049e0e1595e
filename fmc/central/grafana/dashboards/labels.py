"""The dashboards' words, in Chinese and English: titles, descriptions and the labels of indicators,
statuses, equipment states and carriers. ``pick`` chooses one language of a pair.
"""

from __future__ import annotations

from typing import Literal

from fmc.indicators.labels import INDICATOR_LABELS as LABELS

LANGS = ("zh", "en")
Lang = Literal["zh", "en"]

TEXT: dict[str, tuple[str, str]] = {
    "folder": ("fmc 传统制造业改造提升", "fmc manufacturing upgrade"),
    "enterprise_title": ("企业看板：数字化与绿色指标", "Enterprise: digital and green indicators"),
    "bureau_title": ("经信局看板：辖区企业指标", "Bureau: enterprises in the region"),
    "gateways_title": ("网关运行状况", "Gateway health"),
    "enterprise": ("企业", "Enterprise"),
    "year": ("年度", "Year"),
    "equipment": ("设备", "Equipment"),
    "region": ("区域（代码前缀）", "Region (code prefix)"),
    "industry": ("行业（GB/T 4754 大类）", "Industry (GB/T 4754 division)"),
    "indicator": ("指标", "Indicator"),
    "host": ("网关", "Gateway"),
    "gateway_id": ("网关编号（[enterprise] gateway）", "Gateway id ([enterprise] gateway)"),
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
    "all_rates": ("比率指标（$year）", "Rates ($year)"),
    "all_quantities": ("能耗、水耗与劳动生产率（$year）", "Energy, water and labour productivity ($year)"),
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
    "detail_rates": ("企业指标明细：比率指标", "Indicators of each enterprise: rates"),
    "detail_quantities": ("企业指标明细：能耗、水耗与劳动生产率",
                          "Indicators of each enterprise: energy, water and labour productivity"),
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

DESCRIPTIONS: dict[str, tuple[str, str]] = {
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
        "equipment_daily 的整日汇总：稼动率（在册时间）= 在册日的运行时间 ÷ 在册时间 in_inventory_s（设备在台账范围内的"
        "整日时间，离线也计入；投产前的试运行不计入，所选时段内均不在台账范围的设备不显示）；"
        "稼动率（在线时间）= 运行时间 ÷ 在线时间 online_s（所选时段内从未在线的设备不显示）。只含已结束的日。",
        "Whole days of equipment_daily: utilisation (in service) = running_s of the days in the ledger's "
        "scope ÷ in_inventory_s (those whole days, offline time included; a trial run before commissioning "
        "does not count, a machine outside the scope for the whole range has no figure); utilisation "
        "(online) = running_s ÷ online_s (a machine never online in the range has no figure). Completed days "
        "only.",
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
        "每个网关 30 天内最后一个 agent 点。运行=0 表示正常停止；最近上报超过 5 分钟表示网关失联或已停止。"
        "网关编号是该点所写的 [enterprise] gateway（旧版 agent 不写，为空）；两台网关写同一编号时，fmc check 会警告。",
        "The last agent point of each gateway within 30 days. Up = 0 is a clean stop; a last report older "
        "than 5 minutes means the gateway is cut off or stopped. Gateway id: the [enterprise] gateway that point "
        "was written as (empty from older agents); fmc check warns when two hosts write as one gateway id.",
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
# Decimals of a panel showing one indicator (its stat and its monthly trend), fine enough for the
# differences its target is about: energy per value added is some 0.1 tce/万元 and its target 4 % lower
# a year (0.1000 against 0.0960), water and wastewater some m³/万元 to 10s of m³/万元, 5 % and 2 % lower.
# A table of several indicators leaves the decimals to Grafana (three significant digits: 0.100, 0.0960,
# 22.4), since one column cannot have one number of decimals per row.
INDICATOR_DECIMALS: dict[str, int] = {
    "nc_rate": 2,
    "networking_rate": 2,
    "energy": 2,
    "energy_intensity": 4,
    "water_intensity": 3,
    "wastewater_intensity": 3,
    "labour_productivity": 2,
    "rd_intensity": 2,
    "new_product_ratio": 2,
}
# The units of yoy and avg_annual (fmc.indicators.engine.yoy_change): a fraction for the quantities
# (e_t/e_{t-1} - 1: -0.036 reads -3.60%), the difference in percentage points for the rates
# (fmc.indicators.plan.POINT_INDICATORS: 2.0 reads 2.00 百分点 / pp). Two decimals, as fmc indicators prints.
RELATIVE_CHANGE_UNIT = ("percentunit", "percentunit")
POINTS_CHANGE_UNIT = ("suffix: 百分点", "suffix: pp")
CHANGE_DECIMALS = 2
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


def pick(pair: tuple[str, ...], lang: Lang) -> str:
    """The Chinese or English member of a (zh, en, ...) tuple."""
    return pair[0] if lang == "zh" else pair[1]
