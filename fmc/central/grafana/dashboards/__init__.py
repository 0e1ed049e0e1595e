"""Grafana dashboards as code: the JSON models of the enterprise, bureau and gateway-health dashboards.

Pure: ``build_dashboards`` returns the models as dicts (Grafana's classic dashboard JSON model,
``schemaVersion`` 39); ``write_dashboards`` writes them as the committed ``grafana/dashboards/*.json``
(``python -m fmc.central.grafana.dashboards OUT_DIR``, in ``__main__.py``); ``fmc grafana push`` and
file provisioning load them. Every query is InfluxQL on the InfluxDB datasource of uid ``fmc-influxdb``
and reads the data model of DESIGN §4; it runs on InfluxDB 1.x, on 2.x through the v1 compatibility
API and on 3.x (no Flux; no SLIMIT; metaqueries carry a time bound, since 3.x looks back one day by
default). ``grafana/README.md`` says what each panel shows.

Labels exist in Chinese (``lang="zh"``, the default) and English (``lang="en"``), from the same
code: the queries are identical, the uids of the English set end in ``-en``. Queries grouped by the
panel's interval bucket in local time, of ``timezone`` (the plan's; ``DEFAULT_TIMEZONE`` for the
committed files).

Variables are always matched as regular expressions (``"enterprise" =~ /^$enterprise$/``): Grafana
regex-escapes a value it puts into an InfluxQL query, which is right inside ``/…/`` and wrong
inside ``'…'``. Multi-value variables are wrapped in a group (``/^($host)$/``), since some Grafana
versions join the values with ``|`` without one.

This module assembles the dashboards and is what the rest of fmc imports; the parts live beside it:
``labels.py`` (the Chinese and English words), ``panels.py`` (uids, query pieces, the grid layout and
the shared panel builders), and one module per dashboard: ``enterprise.py``, ``bureau.py``,
``gateways.py``. The ``agent`` measurement's fields are listed in ``fmc/agent/selfmetrics.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmc.central.grafana.dashboards.bureau import bureau_panels, bureau_variables
from fmc.central.grafana.dashboards.enterprise import ENTERPRISE_KPIS, enterprise_panels, enterprise_variables
from fmc.central.grafana.dashboards.gateways import gateway_panels, gateway_variables
from fmc.central.grafana.dashboards.labels import (
    CARRIER_LABELS,
    INDICATOR_LABELS,
    INDICATOR_UNITS,
    LANGS,
    STATE_LABELS,
    STATUS_LABELS,
    TEXT,
    Lang,
    pick,
)
from fmc.central.grafana.dashboards.panels import (
    BUREAU_UID,
    DATASOURCE_UID,
    DEFAULT_TIMEZONE,
    ENTERPRISE_UID,
    GATEWAYS_UID,
    Board,
)

__all__ = [
    "BUREAU_UID",
    "CARRIER_LABELS",
    "DATASOURCE_UID",
    "DEFAULT_TIMEZONE",
    "ENTERPRISE_KPIS",
    "ENTERPRISE_UID",
    "GATEWAYS_UID",
    "INDICATOR_LABELS",
    "INDICATOR_UNITS",
    "LANGS",
    "SCHEMA_VERSION",
    "STATE_LABELS",
    "STATUS_LABELS",
    "Dashboard",
    "Lang",
    "all_dashboards",
    "build_dashboards",
    "dashboard_json",
    "write_dashboards",
]

SCHEMA_VERSION = 39


@dataclass
class Dashboard:
    """One dashboard: its uid, title and folder, and the JSON model Grafana takes."""

    uid: str
    title: str
    folder_uid: str
    folder_title: str
    model: dict[str, Any]


def _model(uid: str, title: str, b: Board, panels: list[dict[str, Any]], variables: list[dict[str, Any]],
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


def build_dashboards(datasource_uid: str = DATASOURCE_UID, lang: str = "zh",
                     timezone: str = DEFAULT_TIMEZONE) -> list[Dashboard]:
    """The enterprise, bureau and gateway-health dashboards in one language ("zh" or "en"), their
    buckets of a day or longer the local days of ``timezone`` (an IANA name; ValueError otherwise)."""
    if lang not in LANGS:
        raise ValueError(f"lang {lang!r}: use one of {', '.join(LANGS)}")
    language: Lang = "zh" if lang == "zh" else "en"
    suffix = "" if language == "zh" else "-en"
    folder_uid = "fmc" + suffix
    folder_title = pick(TEXT["folder"], language)
    out: list[Dashboard] = []
    specs = (
        (ENTERPRISE_UID, "enterprise_title", enterprise_panels, enterprise_variables, "now-90d"),
        (BUREAU_UID, "bureau_title", bureau_panels, bureau_variables, "now-1y"),
        (GATEWAYS_UID, "gateways_title", gateway_panels, gateway_variables, "now-24h"),
    )
    uids = [uid + suffix for uid, *_ in specs]
    for (_, title_key, panels_of, variables_of, time_from), full_uid in zip(specs, uids, strict=True):
        b = Board(language, datasource_uid, timezone)
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


def all_dashboards(datasource_uid: str = DATASOURCE_UID, timezone: str = DEFAULT_TIMEZONE) -> list[Dashboard]:
    """Both language sets."""
    return [d for lang in LANGS for d in build_dashboards(datasource_uid, lang, timezone)]


def dashboard_json(dashboard: Dashboard) -> str:
    """The file form: pretty JSON, sorted keys, UTF-8 text as is, a trailing newline."""
    return json.dumps(dashboard.model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_dashboards(out_dir: Path, timezone: str = DEFAULT_TIMEZONE) -> list[Path]:
    """Write every dashboard of both languages to ``out_dir/<uid>.json``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for dashboard in all_dashboards(timezone=timezone):
        path = out_dir / f"{dashboard.uid}.json"
        path.write_text(dashboard_json(dashboard), encoding="utf-8")
        paths.append(path)
    return paths
