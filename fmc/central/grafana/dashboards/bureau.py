"""The bureau dashboard: a region's pooled figures and share of enterprises on track, each enterprise's
status, figures, rank and coverage (linked to its enterprise dashboard), and the share by industry.
"""

from __future__ import annotations

from typing import Any

from fmc.central.grafana.dashboards.labels import INDICATOR_LABELS, pick
from fmc.central.grafana.dashboards.panels import (
    GROUP_LEVELS,
    SINCE,
    Board,
    color_cell,
    display_name,
    indicator_group,
    lit,
    match,
    override,
    query_var,
    table_defaults,
    table_options,
    threshold_steps,
)
from fmc.indicators.plan import INDICATORS


def bureau_panels(b: Board) -> list[dict[str, Any]]:
    region = match("region", "region")
    region_prefix = match("region", "region", prefix=True)
    industry = match("industry", "industry", prefix=True)
    year = match("period", "year")
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
                f"AND {region} AND \"indicator\" = {lit(name)} AND {year}",
                alias=pick(INDICATOR_LABELS[name], b.lang),
            )
            for name in INDICATORS
        ],
        "fieldConfig": {"defaults": {"unit": "percent", "min": 0, "max": 100, "decimals": 0,
                                     "color": {"mode": "thresholds"},
                                     "thresholds": threshold_steps((None, "red"), (50, "orange"), (80, "green"))},
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
            # one row per indicator: value and target in each one's unit (named beside it), with
            # Grafana's three significant digits (0.100 against 0.0960 tce/万元)
            "defaults": table_defaults(),
            "overrides": [
                display_name("indicator", b.t("indicator"), mappings=[b.indicator_mapping(with_unit=True)]),
                display_name("value", b.t("value")),
                display_name("target", b.t("target")),
                display_name("status", b.t("status"), mappings=[b.status_mapping()],
                              **{"custom.cellOptions": {"type": "color-background"}}),
                display_name("met_count", b.t("met_count"), decimals=0),
                display_name("assessed", b.t("assessed"), decimals=0),
                display_name("members", b.t("members"), decimals=0),
                display_name("coverage", b.t("coverage"), unit="percentunit", decimals=2),
            ],
        },
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
        "options": table_options(),
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
            "defaults": table_defaults(mappings=[b.status_mapping()]),
            "overrides": [
                {"matcher": {"id": "byType", "options": "string"}, "properties": [color_cell()]},
                override(first_col, links=[b.drill_link()], **{"custom.cellOptions": {"type": "auto"}}),
            ],
        },
        "transformations": _matrix("enterprise", "indicator", "status", first_col, b),
        "options": table_options(sort_by=first_col),
    }, w=24, h=10)
    # the rates (%, yoy in percentage points) and the other indicators (yoy in %) apart, as on the
    # enterprise dashboard: a column has one unit
    for points, key in ((True, "rates"), (False, "quantities")):
        values = {"unit": "percent", "decimals": 2} if points else {}
        b.add({
            "type": "table",
            "title": b.t(f"detail_{key}"),
            "targets": [b.target(
                f"detail_{key}",
                'SELECT "value", "target", "status", "rank", "yoy", "coverage" FROM "indicator" '
                f'WHERE {enterprises} AND {indicator_group(points)} '
                'GROUP BY "enterprise", "region", "industry", "indicator"',
                table=True,
            )],
            "fieldConfig": {
                "defaults": table_defaults(),
                "overrides": [
                    display_name("enterprise", b.t("enterprise"), links=[b.drill_link()]),
                    display_name("region", b.t("region_col")),
                    display_name("industry", b.t("industry_col")),
                    display_name("indicator", b.t("indicator"), mappings=[b.indicator_mapping(with_unit=not points)]),
                    display_name("value", b.t("value"), **values),
                    display_name("target", b.t("target"), **values),
                    display_name("status", b.t("status"), mappings=[b.status_mapping()],
                                  **{"custom.cellOptions": {"type": "color-background"}}),
                    display_name("rank", b.t("rank"), decimals=0),
                    b.change_override("yoy", points),
                    display_name("coverage", b.t("coverage"), unit="percentunit", decimals=2),
                ],
            },
            "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
            "options": table_options(sort_by=b.t("enterprise")),
        }, w=24, h=10)
    b.add({
        "type": "table",
        "title": b.t("ranking"),
        "description": b.describe("ranking"),
        "targets": [b.target(
            "ranking",
            'SELECT "rank", "value", "target", "status" FROM "indicator" '
            f'WHERE {enterprises} AND {match("indicator", "indicator")} GROUP BY "enterprise"',
            table=True,
        )],
        "fieldConfig": {
            # any one indicator ($indicator): Grafana's three significant digits fit each one's magnitude
            "defaults": table_defaults(),
            "overrides": [
                display_name("enterprise", b.t("enterprise"), links=[b.drill_link()]),
                display_name("rank", b.t("rank"), decimals=0),
                display_name("value", b.t("value")),
                display_name("target", b.t("target")),
                display_name("status", b.t("status"), mappings=[b.status_mapping()],
                              **{"custom.cellOptions": {"type": "color-background"}}),
            ],
        },
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
        "options": table_options(sort_by=b.t("rank")),
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
            "defaults": table_defaults(unit="percentunit", decimals=0, color={"mode": "thresholds"},
                                        thresholds=threshold_steps((None, "red"), (0.5, "orange"), (0.95, "green"))),
            "overrides": [
                {"matcher": {"id": "byType", "options": "number"}, "properties": [color_cell()]},
                override(first_col, links=[b.drill_link()]),
            ],
        },
        "transformations": _matrix("enterprise", "indicator", "coverage", first_col, b),
        "options": table_options(sort_by=first_col),
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
            "defaults": table_defaults(unit="percent", decimals=0, color={"mode": "thresholds"},
                                        thresholds=threshold_steps((None, "red"), (50, "orange"), (80, "green"))),
            "overrides": [{"matcher": {"id": "byType", "options": "number"}, "properties": [color_cell()]}],
        },
        "transformations": _matrix("industry", "indicator", "met_share", b.t("industry_col"), b),
        "options": table_options(sort_by=b.t("industry_col")),
    }, w=24, h=9)
    return b.panels


def _matrix(row: str, column: str, value: str, first_col: str, b: Board) -> list[dict[str, Any]]:
    """Long rows (row, column, value) as a matrix with a column per indicator, labelled."""
    rename = {name: pick(INDICATOR_LABELS[name], b.lang) for name in INDICATORS}
    rename[f"{row}\\{column}"] = first_col
    return [
        {"id": "groupingToMatrix", "options": {"rowField": row, "columnField": column, "valueField": value}},
        {"id": "organize", "options": {"renameByName": rename,
                                       "indexByName": {f"{row}\\{column}": 0,
                                                       **{name: i + 1 for i, name in enumerate(INDICATORS)}}}},
    ]


def bureau_variables(b: Board) -> list[dict[str, Any]]:
    indicator = {
        "name": "indicator",
        "label": b.t("indicator"),
        "type": "custom",
        "query": ", ".join(f"{pick(INDICATOR_LABELS[n], b.lang)} : {n}" for n in INDICATORS),
        "options": [
            {"text": pick(INDICATOR_LABELS[n], b.lang), "value": n, "selected": i == 0}
            for i, n in enumerate(INDICATORS)
        ],
        "current": {"text": pick(INDICATOR_LABELS[INDICATORS[0]], b.lang), "value": INDICATORS[0], "selected": True},
        "multi": False,
        "includeAll": False,
        "hide": 0,
        "skipUrlSync": False,
    }
    return [
        query_var(b, "region", 'SHOW TAG VALUES FROM "indicator" WITH KEY = "region" '
                   f'WHERE "level" =~ {GROUP_LEVELS} AND {SINCE}', refresh=1, sort=1),
        query_var(b, "industry", 'SHOW TAG VALUES FROM "indicator" WITH KEY = "industry" '
                   f"WHERE \"level\" = 'industry' AND {SINCE}", refresh=1, sort=1, include_all=True),
        query_var(b, "year", 'SHOW TAG VALUES FROM "indicator" WITH KEY = "period" '
                   f'WHERE "period" =~ /^[0-9]{{4}}(-YTD)?$/ AND {SINCE}', refresh=1, sort=2),
        indicator,
    ]
