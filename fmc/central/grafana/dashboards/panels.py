"""What every dashboard is built from: the uids, the InfluxQL pieces (``match``, ``lit``), the ``Board``
that lays panels out on Grafana's grid, and the field-config and variable builders the panels share.
"""

from __future__ import annotations

import re
from typing import Any

from fmc.central.grafana.dashboards.labels import (
    CARRIER_LABELS,
    CHANGE_DECIMALS,
    DESCRIPTIONS,
    INDICATOR_LABELS,
    INDICATOR_UNITS,
    POINTS_CHANGE_UNIT,
    RELATIVE_CHANGE_UNIT,
    STATE_LABELS,
    STATUS_LABELS,
    TEXT,
    Lang,
    pick,
)
from fmc.core.carriers import CARRIERS
from fmc.core.config import known_timezone
from fmc.indicators.plan import INDICATORS, POINT_INDICATORS

# the InfluxDB datasource every panel and variable names (fmc.central.grafana.push creates it with this uid)
DATASOURCE_UID = "fmc-influxdb"
ENTERPRISE_UID = "fmc-enterprise"
BUREAU_UID = "fmc-bureau"
GATEWAYS_UID = "fmc-gateways"
# Metaqueries on InfluxDB 3 look back one day unless told otherwise; indicator points are stamped
# at the start of their period (years back), so their variables look back to this.
SINCE = "time >= '2000-01-01T00:00:00Z'"
# An agent reports every minute (fmc.agent.selfmetrics.INTERVAL_S): up means a point within 5.
AGENT_UP_WINDOW = "5m"
AGENT_LOOKBACK = "30d"
# Time buckets of the panel's interval ($__interval) start at UTC midnight unless the query names a
# zone, and over a long range Grafana makes that interval 12 hours, a day or a week: a day's bars
# would then run from 08:00 to 08:00 in Shanghai, one local day spread over two. The plant's days are
# those of fmc's time zone (the plan's [policy] timezone, Asia/Shanghai unless configured), so every
# query grouped by $__interval ends with InfluxQL's time zone clause (Board.local_buckets). Fixed
# buckets of 15 minutes or less need none. The committed JSON files are built with the default.
DEFAULT_TIMEZONE = "Asia/Shanghai"
# An IANA zone name as it may go between InfluxQL's quotes: no quote, backslash or space to escape.
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")
GROUP_LEVELS = "/^(province|city|county)$/"
MONTH_PERIOD = "/^[0-9]{4}-[0-9]{2}$/"


def local_buckets(timezone: str) -> str:
    """InfluxQL's ``tz('…')`` clause of an IANA zone name; ValueError for anything else."""
    if not _ZONE_NAME.match(timezone):
        raise ValueError(f"time zone {timezone!r}: use an IANA name such as 'Asia/Shanghai'")
    return f"tz('{known_timezone(timezone)}')"


def match(tag: str, var: str, *, prefix: bool = False, multi: bool = False) -> str:
    """``"tag" =~ /^$var$/``: a variable as a regex (Grafana escapes it), grouped when multi-valued."""
    value = f"(${var})" if multi else f"${var}"
    return f'"{tag}" =~ /^{value}{"" if prefix else "$"}/'


def indicator_group(points: bool) -> str:
    """InfluxQL: the indicators whose changes are in percentage points (the rates), or the others.

    yoy and avg_annual are points for the one and a fraction for the other: a table shows each group
    apart, its change columns in one unit (a column cannot have a unit per row)."""
    names = "|".join(n for n in INDICATORS if n in POINT_INDICATORS)
    return f'"indicator" {"=~" if points else "!~"} /^({names})$/'


class Board:
    """Panels of one dashboard, laid out left to right on Grafana's 24-column grid."""

    def __init__(self, lang: Lang, datasource_uid: str, timezone: str = DEFAULT_TIMEZONE) -> None:
        self.lang = lang
        self.datasource_uid = datasource_uid
        # ends every query grouped by $__interval: its buckets are local days (DEFAULT_TIMEZONE's comment)
        self.local_buckets = local_buckets(timezone)
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
        return pick(TEXT[key], self.lang)

    def describe(self, key: str) -> str:
        return pick(DESCRIPTIONS[key], self.lang)

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
                status: {"text": pick(labels, self.lang), "color": labels[2], "index": i}
                for i, (status, labels) in enumerate(STATUS_LABELS.items())
            },
        }

    def indicator_mapping(self, with_unit: bool = False) -> dict[str, Any]:
        """Indicator names; ``with_unit`` for a table whose value column holds several units."""
        def text(name: str) -> str:
            label = pick(INDICATOR_LABELS[name], self.lang)
            if not with_unit:
                return label
            unit = pick(INDICATOR_UNITS[name], self.lang)
            unit = "%" if unit == "percent" else unit.removeprefix("suffix: ")
            return f"{label}（{unit}）" if self.lang == "zh" else f"{label} ({unit})"

        return {
            "type": "value",
            "options": {name: {"text": text(name), "index": i} for i, name in enumerate(INDICATORS)},
        }

    def change_override(self, field_name: str, points: bool) -> dict[str, Any]:
        """yoy or avg_annual of the rates (``points``, in percentage points) or of the other indicators."""
        unit = pick(POINTS_CHANGE_UNIT if points else RELATIVE_CHANGE_UNIT, self.lang)
        return display_name(field_name, self.t(field_name), unit=unit, decimals=CHANGE_DECIMALS)

    def state_mapping(self) -> dict[str, Any]:
        return {
            "type": "value",
            "options": {
                state: {"text": pick(labels, self.lang), "color": labels[2], "index": i}
                for i, (state, labels) in enumerate(STATE_LABELS.items())
            },
        }

    def carrier_overrides(self) -> list[dict[str, Any]]:
        """Series named by their carrier (alias $tag_carrier) get the carrier's label."""
        return [display_name(carrier, pick(CARRIER_LABELS[carrier], self.lang)) for carrier in CARRIERS]

    def drill_link(self) -> dict[str, Any]:
        uid = ENTERPRISE_UID + ("" if self.lang == "zh" else "-en")
        return {
            "title": self.t("drill"),
            "url": f"/d/{uid}?var-enterprise=${{__value.raw}}&var-year=${{year}}",
        }


def display_name(field_name: str, label: str, **extra: Any) -> dict[str, Any]:
    properties: list[dict[str, Any]] = [{"id": "displayName", "value": label}]
    properties += [{"id": key, "value": value} for key, value in extra.items()]
    return {"matcher": {"id": "byName", "options": field_name}, "properties": properties}


def override(field_name: str, **props: Any) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": field_name},
        "properties": [{"id": key, "value": value} for key, value in props.items()],
    }


def threshold_steps(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def table_options(sort_by: str | None = None, desc: bool = False) -> dict[str, Any]:
    options: dict[str, Any] = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    if sort_by is not None:
        options["sortBy"] = [{"displayName": sort_by, "desc": desc}]
    return options


def table_defaults(**extra: Any) -> dict[str, Any]:
    return {
        "custom": {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True, "inspect": False},
        **extra,
    }


def color_cell() -> dict[str, Any]:
    return {"id": "custom.cellOptions", "value": {"type": "color-background"}}


def legend(placement: str = "bottom") -> dict[str, Any]:
    return {"showLegend": True, "displayMode": "list", "placement": placement, "calcs": []}


def timeseries_custom(bars: bool = False, stack: bool = False) -> dict[str, Any]:
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


def lit(value: str) -> str:
    """An InfluxQL string literal of a name from the code (an indicator, never user input)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def query_var(
    b: Board,
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
