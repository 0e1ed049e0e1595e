"""The gateway-health dashboard, from the agents' self-metrics (the ``agent`` measurement): which
gateways report, their spool, rejections by reason, dropped points and failed writes.
"""

from __future__ import annotations

from typing import Any

from fmc.central.grafana.dashboards.panels import (
    AGENT_LOOKBACK,
    AGENT_UP_WINDOW,
    Board,
    display_name,
    legend,
    match,
    query_var,
    table_defaults,
    table_options,
    threshold_steps,
    timeseries_custom,
)
from fmc.core.rejections import REJECTION_REASONS


def gateway_panels(b: Board) -> list[dict[str, Any]]:
    scope = f"{match('enterprise', 'enterprise', multi=True)} AND {match('host', 'host', multi=True)}"
    recent = f"time > now() - {AGENT_LOOKBACK}"
    per_host = 'GROUP BY "enterprise", "host"'

    def latest(field: str, window: str) -> str:
        return f'SELECT last("{field}") AS "{field}" FROM "agent" WHERE {scope} AND time > now() - {window} {per_host}'

    stats = [
        ("agents_up", f'SELECT sum("up") FROM ({latest("up", AGENT_UP_WINDOW)})', "none", None),
        ("agents_known", f'SELECT count("up") FROM ({latest("up", AGENT_LOOKBACK)})', "none", None),
        ("spool_total", f'SELECT sum("spool_depth") FROM ({latest("spool_depth", AGENT_LOOKBACK)})', "short",
         threshold_steps((None, "green"), (10_000, "orange"), (1_000_000, "red"))),
        ("oldest_max", f'SELECT max("oldest_unsent_s") FROM ({latest("oldest_unsent_s", AGENT_LOOKBACK)})', "s",
         threshold_steps((None, "green"), (300, "orange"), (3600, "red"))),
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
    # the gateway id as a column of the newest point, not a group: a gateway's series from before its
    # agent wrote the tag would otherwise show it twice for the 30 days of the look-back
    columns = ("gateway", "up", "uptime_s", "spool_depth", "spool_bytes", "oldest_unsent_s", "dead_letters",
               "sources_connected", "sources", "rejected", "dropped", "sink_errors")
    selected = ", ".join(f'"{c}"' for c in columns)
    query = f'SELECT {selected} FROM "agent" WHERE {scope} AND {recent} {per_host} ORDER BY time DESC LIMIT 1'
    b.add({
        "type": "table",
        "title": b.t("last_report"),
        "description": b.describe("last_report"),
        "targets": [b.target("last_report", query, table=True)],
        "fieldConfig": {
            "defaults": table_defaults(decimals=0),
            "overrides": [
                display_name("Time", b.t("last_seen"), unit="dateTimeFromNow"),
                display_name("enterprise", b.t("enterprise")),
                display_name("host", b.t("host")),
                display_name("gateway", b.t("gateway_id")),
                display_name("up", b.t("up"), mappings=[{"type": "value", "options": {
                    "1": {"text": b.t("up"), "color": "green", "index": 0},
                    "0": {"text": b.t("down"), "color": "red", "index": 1}}}],
                    **{"custom.cellOptions": {"type": "color-background"}}),
                display_name("uptime_s", b.t("uptime_s"), unit="s"),
                display_name("spool_depth", b.t("spool_depth")),
                display_name("spool_bytes", b.t("spool_bytes"), unit="bytes"),
                display_name("oldest_unsent_s", b.t("oldest_unsent"), unit="s", color={"mode": "thresholds"},
                              thresholds=threshold_steps((None, "green"), (300, "orange"), (3600, "red")),
                              **{"custom.cellOptions": {"type": "color-text"}}),
                *[display_name(c, b.t(c)) for c in ("dead_letters", "sources_connected", "sources", "rejected",
                                                     "dropped", "sink_errors")],
            ],
        },
        "options": table_options(sort_by=b.t("last_seen")),
    }, w=24, h=9)
    b.add({
        "type": "state-timeline",
        "title": b.t("reporting"),
        "interval": "2m",
        "targets": [b.target(
            "reporting",
            f'SELECT max("up") FROM "agent" WHERE {scope} AND $timeFilter '
            f'GROUP BY time($__interval), "enterprise", "host" fill(0) {b.local_buckets}',
            alias="$tag_enterprise $tag_host",
        )],
        "fieldConfig": {
            "defaults": {"color": {"mode": "thresholds"}, "thresholds": threshold_steps((None, "red"), (1, "green")),
                         "mappings": [{"type": "value", "options": {
                             "0": {"text": b.t("down"), "color": "red", "index": 0},
                             "1": {"text": b.t("up"), "color": "green", "index": 1}}}],
                         "custom": {"fillOpacity": 80, "lineWidth": 0}},
            "overrides": [],
        },
        "options": {"mergeValues": True, "showValue": "never", "alignValue": "left", "rowHeight": 0.9,
                    "legend": legend(), "tooltip": {"mode": "single", "sort": "none"}},
    }, w=24, h=8)
    for key, field, unit in (("spool_depth", "spool_depth", "short"), ("oldest_unsent", "oldest_unsent_s", "s")):
        b.add({
            "type": "timeseries",
            "title": b.t(key),
            "interval": "1m",
            "targets": [b.target(
                key,
                f'SELECT max("{field}") FROM "agent" WHERE {scope} AND $timeFilter '
                f'GROUP BY time($__interval), "enterprise", "host" fill(none) {b.local_buckets}',
                alias="$tag_enterprise $tag_host",
            )],
            "fieldConfig": {"defaults": {"unit": unit, "min": 0, "custom": timeseries_custom()}, "overrides": []},
            "options": {"legend": legend(), "tooltip": {"mode": "multi", "sort": "desc"}},
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
            f'GROUP BY time($__interval), "enterprise", "host" {b.local_buckets})',
            table=True,
        )],
        "fieldConfig": {
            "defaults": table_defaults(decimals=0),
            "overrides": [display_name("Field", b.t("reason")), display_name("Total", b.t("count"))],
        },
        "transformations": [
            {"id": "reduce", "options": {"mode": "seriesToRows", "reducers": ["sum"], "includeTimeField": False}},
            {"id": "filterByValue", "options": {"type": "exclude", "match": "any", "filters": [
                {"fieldName": "Total", "config": {"id": "lowerOrEqual", "options": {"value": 0}}}]}},
        ],
        "options": table_options(sort_by=b.t("count"), desc=True),
    }, w=8, h=9)
    b.add({
        "type": "timeseries",
        "title": b.t("rejections_host"),
        "interval": "1m",
        "targets": [b.target(
            "rejections_host",
            f'SELECT non_negative_difference(max("rejected")) FROM "agent" WHERE {scope} AND $timeFilter '
            f'GROUP BY time($__interval), "enterprise", "host" fill(none) {b.local_buckets}',
            alias="$tag_enterprise $tag_host",
        )],
        "fieldConfig": {"defaults": {"unit": "short", "min": 0, "decimals": 0, "custom": timeseries_custom(True)},
                        "overrides": []},
        "options": {"legend": legend(), "tooltip": {"mode": "multi", "sort": "desc"}},
    }, w=8, h=9)
    b.add({
        "type": "timeseries",
        "title": b.t("losses"),
        "interval": "1m",
        "targets": [
            b.target(
                key,
                f'SELECT non_negative_difference(max("{key}")) FROM "agent" WHERE {scope} AND $timeFilter '
                f'GROUP BY time($__interval), "enterprise", "host" fill(none) {b.local_buckets}',
                alias=f"$tag_enterprise $tag_host {b.t(key)}",
            )
            for key in ("dropped", "sink_errors")
        ],
        "fieldConfig": {"defaults": {"unit": "short", "min": 0, "decimals": 0, "custom": timeseries_custom(True)},
                        "overrides": []},
        "options": {"legend": legend(), "tooltip": {"mode": "multi", "sort": "desc"}},
    }, w=8, h=9)
    return b.panels


def gateway_variables(b: Board) -> list[dict[str, Any]]:
    since = f"time > now() - {AGENT_LOOKBACK}"
    return [
        query_var(b, "enterprise", f'SHOW TAG VALUES FROM "agent" WITH KEY = "enterprise" WHERE {since}',
                   refresh=2, sort=1, multi=True, include_all=True),
        query_var(b, "host", 'SHOW TAG VALUES FROM "agent" WITH KEY = "host" WHERE '
                   f"{match('enterprise', 'enterprise', multi=True)} AND {since}",
                   refresh=2, sort=1, multi=True, include_all=True),
    ]
