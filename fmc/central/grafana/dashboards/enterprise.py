"""The enterprise dashboard: the enterprise manager's indicators of the year against the plan, their
monthly trend, the equipment's states and utilisation, energy and water by carrier, metered coverage.
"""

from __future__ import annotations

from typing import Any

from fmc.central.grafana.dashboards.labels import INDICATOR_DECIMALS, INDICATOR_LABELS, INDICATOR_UNITS, pick
from fmc.central.grafana.dashboards.panels import (
    MONTH_PERIOD,
    SINCE,
    Board,
    display_name,
    indicator_group,
    legend,
    lit,
    match,
    query_var,
    table_defaults,
    table_options,
    threshold_steps,
    timeseries_custom,
)

# The indicators the enterprise dashboard shows one by one (DESIGN §1: the enterprise manager's view).
# consumption_daily has a row per gateway and day, stamped at local midnight (on a quarter hour in
# every time zone): 15-minute buckets put each day's rows of all gateways together at its own stamp
DAY_STAMPS = "15m"

ENTERPRISE_KPIS = (
    "nc_rate",
    "networking_rate",
    "energy_intensity",
    "water_intensity",
    "wastewater_intensity",
    "labour_productivity",
)


def _enterprise_indicator_where(extra: str) -> str:
    return f"\"level\" = 'enterprise' AND {match('enterprise', 'enterprise')} AND {extra}"


def enterprise_panels(b: Board) -> list[dict[str, Any]]:
    ent = match("enterprise", "enterprise")
    eq = match("equipment", "equipment", multi=True)
    year = match("period", "year")
    b.row(b.t("row_year"))
    for name in ENTERPRISE_KPIS:
        where = _enterprise_indicator_where(f'"indicator" = {lit(name)} AND {year}')
        query = f'SELECT "value", "target", "status" FROM "indicator" WHERE {where}'
        unit = pick(INDICATOR_UNITS[name], b.lang)
        b.add({
            "type": "stat",
            "title": pick(INDICATOR_LABELS[name], b.lang),
            "description": b.describe("kpi"),
            "targets": [b.target(f"kpi_{name}", query, table=True)],
            "fieldConfig": {
                "defaults": {
                    "decimals": INDICATOR_DECIMALS[name],
                    "color": {"mode": "fixed", "fixedColor": "blue"},
                    "mappings": [b.status_mapping()],
                },
                "overrides": [
                    display_name("value", b.t("value"), unit=unit),
                    display_name("target", b.t("target"), unit=unit),
                    display_name("status", b.t("status"), **{"color": {"mode": "thresholds"}}),
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
    # every indicator in two tables: the rates (%, changes in percentage points) and the others (changes in
    # %, values in their own units, named beside the indicator, with Grafana's three significant digits)
    for points, key in ((True, "rates"), (False, "quantities")):
        query = (
            'SELECT "value", "target", "baseline", "yoy", "avg_annual", "coverage", "status" FROM "indicator" '
            f"WHERE {_enterprise_indicator_where(year)} AND {indicator_group(points)} GROUP BY \"indicator\""
        )
        values = {"unit": "percent", "decimals": 2} if points else {}
        b.add({
            "type": "table",
            "title": b.t(f"all_{key}"),
            "description": b.describe("kpi"),
            "targets": [b.target(f"kpi_{key}", query, table=True)],
            "fieldConfig": {
                "defaults": table_defaults(),
                "overrides": [
                    display_name("indicator", b.t("indicator"), mappings=[b.indicator_mapping(with_unit=not points)]),
                    *[display_name(f, b.t(f), **values) for f in ("value", "target", "baseline")],
                    *[b.change_override(f, points) for f in ("yoy", "avg_annual")],
                    display_name("coverage", b.t("coverage"), unit="percentunit", decimals=2),
                    display_name("status", b.t("status"), mappings=[b.status_mapping()], **{"custom.cellOptions": {
                        "type": "color-background"}}),
                ],
            },
            "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
            "options": table_options(),
        }, w=12, h=8)

    b.row(b.t("row_trend"))
    for name in ENTERPRISE_KPIS:
        where = _enterprise_indicator_where(f'"indicator" = {lit(name)} AND "period" =~ {MONTH_PERIOD}')
        query = f'SELECT "value", "target" FROM "indicator" WHERE {where} AND $timeFilter'
        b.add({
            "type": "timeseries",
            "title": pick(INDICATOR_LABELS[name], b.lang) + b.t("trend_suffix"),
            "description": b.describe("trend"),
            "targets": [b.target(f"trend_{name}", query, alias="$col")],
            "fieldConfig": {
                "defaults": {"unit": pick(INDICATOR_UNITS[name], b.lang), "decimals": INDICATOR_DECIMALS[name],
                             "custom": timeseries_custom()},
                "overrides": [
                    display_name("value", b.t("value")),
                    display_name("target", b.t("target"), **{"custom.lineStyle": {"fill": "dash", "dash": [10, 10]}}),
                ],
            },
            "options": {"legend": legend(), "tooltip": {"mode": "multi", "sort": "none"}},
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
                    "legend": legend(), "tooltip": {"mode": "single", "sort": "none"}},
    }, w=24, h=10)
    # Utilisation in service counts the running time of the days in the ledger's scope only
    # (in_inventory_s is the whole day then, else 0: fmc.plant.states): a trial run before the
    # commissioning date is no running time in service, and a machine out of scope in the whole range
    # has no row here, hence no figure, rather than InfluxQL's x / 0 = 0. Utilisation online likewise
    # counts the days the machine was online (running time is online time, so the sums are those of
    # every day): a machine never online in the range has no figure rather than 0 %, which reads as
    # online but idle. The hours count every day, so that machine still shows 0 h online. Grafana
    # merges the three results into one row per machine (same time, equipment, kind, nc).
    in_service = (
        'SELECT sum("running_s") / sum("in_inventory_s") * 100 AS "utilisation" '
        f'FROM "equipment_daily" WHERE {ent} AND {eq} AND "in_inventory_s" > 0 AND $timeFilter '
        'GROUP BY "equipment", "kind", "nc"'
    )
    online = (
        'SELECT sum("running_s") / sum("online_s") * 100 AS "utilisation_online" '
        f'FROM "equipment_daily" WHERE {ent} AND {eq} AND "online_s" > 0 AND $timeFilter '
        'GROUP BY "equipment", "kind", "nc"'
    )
    hours = (
        'SELECT sum("running_s") / 3600 AS "running_h", sum("online_s") / 3600 AS "online_h" '
        f'FROM "equipment_daily" WHERE {ent} AND {eq} AND $timeFilter GROUP BY "equipment", "kind", "nc"'
    )
    b.add({
        "type": "table",
        "title": b.t("utilisation"),
        "description": b.describe("utilisation"),
        "targets": [b.target("utilisation", in_service, table=True),
                    b.target("utilisation_online", online, table=True),
                    b.target("utilisation_hours", hours, table=True)],
        "fieldConfig": {
            "defaults": table_defaults(decimals=1),
            "overrides": [
                display_name("equipment", b.t("equipment")),
                display_name("kind", b.t("kind")),
                display_name("nc", b.t("nc")),
                display_name("utilisation", b.t("util_calendar"), unit="percent", min=0, max=100,
                              **{"custom.cellOptions": {"type": "gauge", "mode": "basic"}}),
                display_name("utilisation_online", b.t("util_online"), unit="percent", min=0, max=100,
                              **{"custom.cellOptions": {"type": "gauge", "mode": "basic"}}),
                display_name("running_h", b.t("running_h")),
                display_name("online_h", b.t("online_h")),
            ],
        },
        "transformations": [{"id": "merge", "options": {}},
                            {"id": "organize", "options": {"excludeByName": {"Time": True}}}],
        "options": table_options(sort_by=b.t("util_calendar"), desc=True),
    }, w=24, h=9)

    b.row(b.t("row_energy"))
    b.add({
        "type": "timeseries",
        "title": b.t("energy_daily"),
        "targets": [b.target(
            "energy_daily",
            f'SELECT sum("tce") AS "tce" FROM "consumption_daily" WHERE {ent} AND $timeFilter '
            f'GROUP BY time({DAY_STAMPS}), "carrier" fill(none)',
            alias="$tag_carrier",
        )],
        "fieldConfig": {"defaults": {"unit": "suffix: tce", "decimals": 3, "custom": timeseries_custom(True, True)},
                        "overrides": b.carrier_overrides()},
        "options": {"legend": legend(), "tooltip": {"mode": "multi", "sort": "desc"}},
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
            f'SELECT sum("m3") AS "m3" FROM "consumption_daily" WHERE {ent} AND $timeFilter '
            f'GROUP BY time({DAY_STAMPS}), "carrier" fill(none)',
            alias="$tag_carrier",
        )],
        "fieldConfig": {"defaults": {"unit": "suffix: m³", "decimals": 1, "custom": timeseries_custom(True)},
                        "overrides": b.carrier_overrides()},
        "options": {"legend": legend(), "tooltip": {"mode": "multi", "sort": "desc"}},
    }, w=12, h=8)
    b.add({
        "type": "timeseries",
        "title": b.t("carrier_coverage"),
        "targets": [b.target(
            "carrier_coverage",
            f'SELECT mean("coverage") AS "coverage" FROM "consumption_daily" WHERE {ent} AND $timeFilter '
            f'GROUP BY time({DAY_STAMPS}), "carrier" fill(none)',
            alias="$tag_carrier",
        )],
        "fieldConfig": {"defaults": {"unit": "percentunit", "min": 0, "max": 1, "custom": timeseries_custom()},
                        "overrides": b.carrier_overrides()},
        "options": {"legend": legend(), "tooltip": {"mode": "multi", "sort": "none"}},
    }, w=12, h=8)
    b.add({
        "type": "state-timeline",
        "title": b.t("meter_coverage"),
        "description": b.describe("meter_coverage"),
        "interval": "15m",
        "targets": [b.target(
            "meter_coverage",
            f'SELECT mean("coverage") FROM "meter_interval" WHERE {ent} AND $timeFilter '
            f'GROUP BY time($__interval), "meter" fill(0) {b.local_buckets}',
            alias="$tag_meter",
        )],
        "fieldConfig": {
            "defaults": {"unit": "percentunit", "min": 0, "max": 1, "decimals": 0,
                         "color": {"mode": "thresholds"},
                         "thresholds": threshold_steps((None, "red"), (0.5, "orange"), (0.95, "green")),
                         "custom": {"fillOpacity": 80, "lineWidth": 0}},
            "overrides": [],
        },
        "options": {"mergeValues": False, "showValue": "never", "alignValue": "left", "rowHeight": 0.9,
                    "legend": legend(), "tooltip": {"mode": "single", "sort": "none"}},
    }, w=24, h=8)
    return b.panels


def enterprise_variables(b: Board) -> list[dict[str, Any]]:
    return [
        query_var(b, "enterprise", 'SHOW TAG VALUES FROM "enterprise_daily" WITH KEY = "enterprise" WHERE $timeFilter',
                   refresh=2, sort=1),
        query_var(b, "year", 'SHOW TAG VALUES FROM "indicator" WITH KEY = "period" WHERE '
                   f"{match('enterprise', 'enterprise')} AND \"period\" =~ /^[0-9]{{4}}(-YTD)?$/ AND {SINCE}",
                   refresh=1, sort=2),
        query_var(b, "equipment", 'SHOW TAG VALUES FROM "equipment_daily" WITH KEY = "equipment" WHERE '
                   f"{match('enterprise', 'enterprise')} AND $timeFilter", refresh=2, sort=1, multi=True),
    ]
