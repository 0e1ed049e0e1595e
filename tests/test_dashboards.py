"""The Grafana dashboards: every query runs on the real InfluxDB against data the project's own
writers produced and returns the figures that data implies; every name a query uses exists in
what the writers write; the JSON models are sound; the committed files are what the code makes.

Grafana itself cannot run here. What it does to a query is emulated as its InfluxDB datasource
does it (frontend: dashboard variables regex-formatted; backend ``pkg/tsdb/influxdb/models/query.go``:
``$timeFilter``, ``$interval``, ``$__interval_ms``, ``$__interval``).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, get_args
from zoneinfo import ZoneInfo

import httpx
import pytest

from fmc.agent.selfmetrics import AgentCounters, agent_point
from fmc.agent.spool import SpoolStats
from fmc.central.config import load_plan
from fmc.central.grafana import dashboards as gd
from fmc.central.materialize import indicator_points, period_tag
from fmc.central.service import IndicatorService
from fmc.core.carriers import CARRIERS
from fmc.core.lineprotocol import encode
from fmc.core.localtime import NS, local_day_bounds
from fmc.core.points import Point
from fmc.core.rejections import REJECTION_REASONS
from fmc.indicators.engine import ConsumptionDay, EnterpriseData, EnterpriseDay, Period, Report, Status
from fmc.indicators.plan import INDICATORS, POINT_INDICATORS, Targets, load_targets
from fmc.indicators.pooling import EnterpriseFigures, GroupRow, enterprise_figures, group_rows
from fmc.indicators.sums import EnterpriseInfo
from fmc.plant.config import MeterConfig
from fmc.plant.meters import MeterAccumulator, MeterInterval
from fmc.plant.rollups import InventoryItem, Site, consumption_daily, enterprise_daily
from fmc.plant.states import STATES, EquipmentDay, StateChange
from fmc.stores.influxdb.config import InfluxDBSink
from fmc.stores.influxdb.query import InfluxQueryStore
from tests.servers.influxdb import InfluxDBError, InfluxDBServer
from tests.store_backends import daily_point

ROOT = Path(__file__).resolve().parent.parent
TZ = "Asia/Shanghai"
ZONE = ZoneInfo(TZ)
ALL = "$__all"
H = 3600 * NS

# Three enterprises. "ent-a_1" is a decoy: the id "ent-a.1" put into a regex unescaped matches it.
SITE_A = Site("ent-a.1", "330602", "1711", TZ)
SITE_B = Site("ent-b.2", "330602", "17", TZ)
SITE_C = Site("ent-a_1", "330100", "18", TZ)
SITES = (SITE_A, SITE_B, SITE_C)
D1, D2 = date(2019, 3, 1), date(2019, 3, 2)
YEAR = Period.of_year(2019)
YTD = Period.year_to_date(date(2020, 3, 31))
MONTHS = [Period.of_month(2019, m) for m in range(1, 13)]


def local_ms(d: date, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(d.year, d.month, d.day, hour, minute, tzinfo=ZONE).timestamp() * 1000)


# --- what Grafana does to a query --------------------------------------------------------------------------

# Grafana's variable syntax: $name, [[name]], [[name:format]], ${name}, ${name.path}, ${name:format}
VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")
REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
BUILTINS = {"timeFilter", "__interval", "__interval_ms", "interval", "__value", "__data", "__url_time_range",
            "col", "__field", "__series", "__from", "__to", "__dashboard", "__org", "__user", "__range"}


def regex_escape(value: str) -> str:
    """Grafana's regexEscape (what its 'regex' format does to each value)."""
    return REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def interval_ms(interval: str) -> int:
    units = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    return int(interval[:-1]) * units[interval[-1]]


def interpolate(
    model: Mapping[str, Any],
    query: str,
    values: Mapping[str, str | list[str]],
    *,
    start_ms: int = 0,
    end_ms: int = 4_102_444_800_000,
    interval: str = "1h",
    old_join: bool = False,
) -> str:
    """The query Grafana sends for ``values`` of the dashboard's variables and a time range.

    ``old_join``: multi-values joined with "|" without a group, as some Grafana versions do."""
    defined = {v["name"]: v for v in model["templating"]["list"]}

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        if name not in defined:
            return m.group(0)  # not a dashboard variable: left for the backend
        value = values[name]
        if value == ALL:
            return str(defined[name]["allValue"])  # a custom all value is put in as is
        if isinstance(value, str):
            return regex_escape(value)
        escaped = [regex_escape(v) for v in value]
        if len(escaped) == 1 or old_join:
            return "|".join(escaped)
        return "(" + "|".join(escaped) + ")"

    q = VARIABLE.sub(replace, query)
    q = q.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    q = q.replace("$interval", interval)
    q = q.replace("$__interval_ms", str(interval_ms(interval)))
    return q.replace("$__interval", interval)


# --- the seed: written by the project's own writers ---------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """One enterprise's year figures for the indicator engine (days, consumption, reports)."""

    nc: Mapping[int, int]  # NC machines of 10
    networked: Mapping[int, int]  # networked NC machines
    kwh_per_day: Mapping[int, float]
    water_per_day: Mapping[int, float] | None
    value_added: Mapping[int, float]  # 10⁴ yuan a year
    employees: float


PROFILES = {
    SITE_A.enterprise: Profile({2016: 4, 2018: 5, 2019: 5}, {2016: 2, 2018: 4, 2019: 5},
                               {2016: 1000.0, 2018: 900.0, 2019: 850.0}, {2016: 10.0, 2018: 9.0, 2019: 8.0},
                               {2016: 1200.0, 2018: 1320.0, 2019: 1440.0}, 100.0),
    SITE_B.enterprise: Profile({2016: 5, 2018: 5, 2019: 4}, {2016: 5, 2018: 5, 2019: 4},
                               {2016: 500.0, 2018: 600.0, 2019: 700.0}, {2016: 6.0, 2018: 6.0, 2019: 6.0},
                               {2016: 600.0, 2018: 600.0, 2019: 600.0}, 50.0),
    SITE_C.enterprise: Profile({2016: 2, 2018: 3, 2019: 3}, {2016: 1, 2018: 2, 2019: 3},
                               {2016: 300.0, 2018: 250.0, 2019: 200.0}, None,
                               {2016: 240.0, 2018: 300.0, 2019: 360.0}, 20.0),
}


def year_days(year: int) -> Iterator[date]:
    d = date(year, 1, 1)
    while d.year == year:
        yield d
        d += timedelta(days=1)


def enterprise_data(site: Site) -> EnterpriseData:
    p = PROFILES[site.enterprise]
    daily, consumption, reports = [], [], []
    for year in p.nc:
        for d in year_days(year):
            daily.append(EnterpriseDay(d, 10, p.nc[year], equipment_networked=p.networked[year],
                                       nc_equipment_networked=p.networked[year]))
            kwh = p.kwh_per_day[year]
            consumption.append(ConsumptionDay(d, "electricity", kwh, tce=kwh * 0.1229 / 1000))
            if p.water_per_day is not None:
                w = p.water_per_day[year]
                consumption.append(ConsumptionDay(d, "water_intake", w, m3=w))
                consumption.append(ConsumptionDay(d, "wastewater", w / 2, m3=w / 2))
        for m in range(1, 13):
            va = p.value_added[year] / 12
            reports.append(Report(Period.of_month(year, m), value_added=va, value_added_comparable=va,
                                  employees_avg=p.employees, revenue=va * 4, rd_expense=va * 0.08,
                                  gross_output=va * 4, new_product_output=va * 1.5))
    return EnterpriseData(site.enterprise, daily, consumption, reports)


@dataclass
class Seed:
    points: list[Point] = field(default_factory=list)
    rows: dict[tuple[str, str, str], GroupRow] = field(default_factory=dict)  # (level, key, period tag)
    t0_ms: int = 0  # the agents' clock: now, floored to 2 minutes

    def row(self, level: str, key: str, period: str = "2019") -> GroupRow:
        return self.rows[(level, key, period)]


def indicator_seed(seed: Seed, targets: Targets) -> None:
    infos = [EnterpriseInfo(s.enterprise, s.region, s.industry) for s in SITES]
    data = {s.enterprise: enterprise_data(s) for s in SITES}

    def figures(period: Period) -> list[EnterpriseFigures]:
        return [enterprise_figures(info, period, data[info.enterprise], targets) for info in infos]

    rows: list[GroupRow] = []
    year = figures(YEAR)
    rows += group_rows("enterprise", year, targets)
    for level in ("county", "city", "province", "industry"):
        rows += group_rows(level, year, targets)  # type: ignore[arg-type]
    in_3306 = [f for f in year if f.info.region.startswith("3306")]
    rows += group_rows("industry", in_3306, targets, region_scope="3306")
    for period in (*MONTHS, YTD):
        rows += group_rows("enterprise", figures(period), targets)
    for r in rows:
        seed.rows[(r.level, r.key, period_tag(next(iter(r.results.values())).period))] = r
    seed.points += indicator_points(rows, TZ)


def day_record(equipment: str, day: date, nc: str, kind: str, **hours: float) -> EquipmentDay:
    start, end = local_day_bounds(day, ZONE)
    ns = {k: round(hours.get(k, 0.0) * H) for k in ("off", "idle", "running", "down")}
    offline = end - start - sum(ns.values())
    return EquipmentDay(equipment, day, start, end, start, offline, ns["off"], ns["idle"], ns["running"], ns["down"],
                        good_samples=100 if sum(ns.values()) else 0, in_inventory_s=86_400.0, nc=nc, kind=kind)


def meter_intervals(meter: str, carrier: str, rate: float, step_min: int, hours: Sequence[tuple[int, int]]) -> list[
        MeterInterval]:
    """A counter read every ``step_min`` minutes of D1 in the hour spans given (a gap between them),
    growing by ``rate`` a reading; intervals until D2 01:00."""
    acc = MeterAccumulator(MeterConfig(id=meter, carrier=carrier), interval_s=900, timezone=TZ)
    out: list[MeterInterval] = []
    day_start = local_ms(D1) * 1_000_000
    for first, last in hours:
        for minute in range(first * 60, last * 60 + 1, step_min):
            t = day_start + minute * 60 * NS
            out += acc.observe(rate * minute / step_min, 0, t, t)
    out += acc.advance(day_start + 25 * H)
    return out


def plant_seed(seed: Seed, site: Site, scale: float) -> None:
    """What an agent's plant model writes for one enterprise on D1 and D2."""
    days = [
        day_record("m1", D1, "true", "loom", running=8 * scale, idle=2, down=0.5),
        day_record("m2", D1, "false", "knitter", idle=1),
        day_record("m1", D2, "true", "loom", running=4 * scale, idle=1, off=1),
        day_record("m2", D2, "false", "knitter"),  # offline all day: no data
    ]
    seed.points += [d.to_point(site) for d in days]
    inventory = [InventoryItem("m1", True, 100_000.0), InventoryItem("m2", False, 50_000.0)]
    seed.points += [enterprise_daily(day, site, inventory, days) for day in (D1, D2)]
    d1 = local_ms(D1) * 1_000_000
    changes = [
        StateChange("m1", d1 + 8 * H, "running", "offline"),
        StateChange("m1", d1 + 16 * H, "idle", "running"),
        StateChange("m1", d1 + 18 * H, "down", "idle"),
        StateChange("m1", d1 + 18 * H + H // 2, "offline", "down"),
        StateChange("m2", d1 + 10 * H, "idle", "offline"),
        StateChange("m2", d1 + 11 * H, "offline", "idle"),
    ]
    seed.points += [c.to_point(site) for c in changes]
    electricity = meter_intervals("main", "electricity", 10.0 * scale, 5, [(0, 6), (8, 12)])
    water = meter_intervals("w1", "water_intake", 0.5, 15, [(0, 24)])
    seed.points += [iv.to_point(site) for iv in electricity + water]
    seed.points += consumption_daily(D1, site, electricity + water, {"main": "electricity", "w1": "water_intake"})


def spool_stats(depth: int, oldest_ms: int | None) -> SpoolStats:
    return SpoolStats(depth=depth, bytes=depth * 120, oldest_enqueued_ms=oldest_ms, dropped={}, dead_letters=0,
                      rejected_total=0)


# gw-a: reporting now; gw-b: reported from 3 h to 2 h ago, restarted halfway, then stopped cleanly
GW_A_REJECTED = [0, 0, 1, 1, 3, 3, 3, 5, 5, 5]
GW_A_SINK_ERRORS = [0, 0, 0, 2, 2, 2, 2, 2, 2, 2]
GW_B_REJECTED = [min(k, 4) for k in range(30)] + [0 if k < 40 else 1 for k in range(30, 61)]


def agent_seed(seed: Seed) -> None:
    now_ms = int(time.time() * 1000)
    seed.t0_ms = t0 = now_ms - now_ms % 120_000
    for k, rejected in enumerate(GW_A_REJECTED):
        t = t0 - (10 - k) * 60_000
        counters = AgentCounters(received=100 * k, accepted=90 * k, written=80 * k, sink_errors=GW_A_SINK_ERRORS[k],
                                 rejected={"payload_not_json": rejected})
        point = agent_point(SITE_A.enterprise, "gw-a", t * 1_000_000, up=True, uptime_s=600.0 + 60 * k,
                            spool=spool_stats(k, t - 10_000 * k if k else None), counters=counters,
                            sources=[True, k > 2], gateway="line-1")
        if k < 5:  # written by an agent from before the gateway tag
            point.tags.pop("gateway")
        seed.points.append(point)
    for k, rejected in enumerate(GW_B_REJECTED):
        t = t0 - 180 * 60_000 + k * 60_000
        seed.points.append(agent_point(
            SITE_B.enterprise, "gw-b", t * 1_000_000, up=k < 60, uptime_s=60.0 * (k if k < 30 else k - 30),
            spool=spool_stats(100 if k < 60 else 0, t - 5_000 if k < 60 else None),
            counters=AgentCounters(rejected={"value_not_finite": rejected}), sources=[True],
        ))


def write_points(server: InfluxDBServer, db: str, points: Sequence[Point]) -> None:
    lines = [encode(p) for p in points]
    for i in range(0, len(lines), 5000):
        response = httpx.post(f"{server.url}/write", params={"db": db, "precision": "ns"},
                              content="\n".join(lines[i:i + 5000]).encode(), timeout=30)
        assert response.status_code == 204, response.text


@pytest.fixture(scope="module")
def targets() -> Targets:
    return load_targets(ROOT / "fmc" / "indicators" / "plans" / "zhejiang-2017-2020.toml")


@pytest.fixture(scope="module")
def seed(targets: Targets) -> Seed:
    s = Seed()
    indicator_seed(s, targets)
    plant_seed(s, SITE_A, 1.0)
    plant_seed(s, SITE_C, 1.5)  # the decoy, with other figures
    agent_seed(s)
    return s


@pytest.fixture(scope="module")
def store(influxdb: InfluxDBServer, seed: Seed) -> Iterator[tuple[InfluxDBServer, str]]:
    db = f"fmc_dash_{uuid.uuid4().hex[:10]}"
    influxdb.create_database(db)
    write_points(influxdb, db, seed.points)
    yield influxdb, db
    if influxdb.running:
        influxdb.query(f'DROP DATABASE "{db}"')


# --- the dashboards --------------------------------------------------------------------------------------


def by_uid(lang: str = "zh") -> dict[str, gd.Dashboard]:
    return {d.uid: d for d in gd.build_dashboards(lang=lang)}


def panels_of(model: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in model["panels"]:
        out.append(p)
        out += p.get("panels", [])
    return out


def targets_of(model: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["refId"]: t for p in panels_of(model) for t in p.get("targets", [])}


DASHBOARDS = by_uid()
ENT, BUR, GW = (DASHBOARDS[u] for u in (gd.ENTERPRISE_UID, gd.BUREAU_UID, gd.GATEWAYS_UID))
ENT_VALUES = {"enterprise": SITE_A.enterprise, "year": "2019", "equipment": ALL}
BUR_VALUES = {"region": "3306", "industry": ALL, "year": "2019", "indicator": "nc_rate"}
GW_VALUES = {"enterprise": ALL, "host": ALL}


def run(store: tuple[InfluxDBServer, str], board: gd.Dashboard, ref_id: str, values: Mapping[str, Any],
        **kw: Any) -> list[dict[str, Any]]:
    server, db = store
    query = interpolate(board.model, targets_of(board.model)[ref_id]["query"], values, **kw)
    return server.select(db, query, epoch="ms")


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


YEAR_2019 = {"start_ms": local_ms(date(2019, 1, 1)), "end_ms": local_ms(date(2020, 1, 1)) - 1}
DAYS = {"start_ms": local_ms(D1), "end_ms": local_ms(D2 + timedelta(days=1)) - 1}


# --- the enterprise dashboard ------------------------------------------------------------------------------

def check_kpi(store, seed, name: str) -> None:
    rows = run(store, ENT, f"kpi_{name}", ENT_VALUES)
    want = seed.row("enterprise", SITE_A.enterprise).results[name]
    assert len(rows) == 1  # the decoy "ent-a_1" is not matched
    assert close(rows[0]["value"], want.value) and close(rows[0]["target"], want.target)
    assert rows[0]["status"] == want.status
    assert rows[0]["time"] == local_ms(date(2019, 1, 1))


def check_kpi_table(store, seed, points: bool) -> None:
    rows = run(store, ENT, "kpi_rates" if points else "kpi_quantities", ENT_VALUES)
    results = seed.row("enterprise", SITE_A.enterprise).results
    assert sorted(r["indicator"] for r in rows) == sorted(n for n in INDICATORS if (n in POINT_INDICATORS) == points)
    for r in rows:
        want = results[r["indicator"]]
        for f in ("value", "target", "baseline", "yoy", "avg_annual", "coverage"):
            assert close(r[f], getattr(want, f)), (r["indicator"], f)
        assert r["status"] == want.status


def check_trend(store, seed, name: str) -> None:
    rows = run(store, ENT, f"trend_{name}", ENT_VALUES, **YEAR_2019)
    assert [r["time"] for r in rows] == [local_ms(p.start) for p in MONTHS]
    for r, period in zip(rows, MONTHS, strict=True):
        want = seed.row("enterprise", SITE_A.enterprise, period.label).results[name]
        assert close(r["value"], want.value) and close(r["target"], want.target), period.label


def check_states(store, seed) -> None:
    rows = run(store, ENT, "states", ENT_VALUES, **DAYS)
    d1 = local_ms(D1)
    got = defaultdict(list)
    for r in rows:
        got[r["equipment"]].append(((r["time"] - d1) / 3_600_000, r["state"]))
    assert dict(got) == {"m1": [(8, "running"), (16, "idle"), (18, "down"), (18.5, "offline")],
                         "m2": [(10, "idle"), (11, "offline")]}
    only_m2 = run(store, ENT, "states", {**ENT_VALUES, "equipment": ["m2"]}, **DAYS)
    assert {r["equipment"] for r in only_m2} == {"m2"}


def merged_rows(store, board: gd.Dashboard, ref_ids: Sequence[str], values: Mapping[str, Any],
                **kw: Any) -> list[dict[str, Any]]:
    """The rows of a table of several queries after Grafana's merge transformation: rows of the
    results whose shared fields (time and the tags) are equal make one row, the others stay apart."""
    results = [run(store, board, ref, values, **kw) for ref in ref_ids]
    shared = set.intersection(*(set(rows[0]) for rows in results if rows)) if any(results) else set()
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rows in results:
        for r in rows:
            merged.setdefault(tuple(r[k] for k in sorted(shared)), {}).update(r)
    return list(merged.values())


def utilisation_table(store, values: Mapping[str, Any] = ENT_VALUES, **kw: Any) -> dict[str, dict[str, Any]]:
    panel = next(p for p in panels_of(ENT.model) if p.get("targets") and p["targets"][0]["refId"] == "utilisation")
    assert panel["transformations"][0] == {"id": "merge", "options": {}}
    rows = merged_rows(store, ENT, [t["refId"] for t in panel["targets"]], values, **kw)
    return {r["equipment"]: r for r in rows}


def check_utilisation(store, seed) -> None:
    rows = {r["equipment"]: r for r in run(store, ENT, "utilisation", ENT_VALUES, **DAYS)}
    assert set(rows) == {"m1", "m2"}
    m1, m2 = rows["m1"], rows["m2"]
    assert (m1["kind"], m1["nc"], m2["kind"], m2["nc"]) == ("loom", "true", "knitter", "false")
    assert close(m1["utilisation"], 12 / 48 * 100)  # running 8 h + 4 h of two whole days in service
    assert m2["utilisation"] == 0  # in service, never running: 0 %, a figure
    table = utilisation_table(store, **DAYS)
    assert set(table) == {"m1", "m2"} and close(table["m1"]["utilisation"], 12 / 48 * 100)
    assert close(table["m1"]["utilisation_online"], 12 / 16.5 * 100)


def check_utilisation_online(store, seed) -> None:
    rows = {r["equipment"]: r for r in run(store, ENT, "utilisation_online", ENT_VALUES, **DAYS)}
    assert set(rows) == {"m1", "m2"}
    m1, m2 = rows["m1"], rows["m2"]
    assert (m1["kind"], m1["nc"], m2["kind"], m2["nc"]) == ("loom", "true", "knitter", "false")
    assert close(m1["utilisation_online"], 12 / 16.5 * 100)  # of 10.5 h + 6 h online
    assert m2["utilisation_online"] == 0  # online 1 h on D1, never running: 0 %, a figure


def check_utilisation_hours(store, seed) -> None:
    rows = {r["equipment"]: r for r in run(store, ENT, "utilisation_hours", ENT_VALUES, **DAYS)}
    assert set(rows) == {"m1", "m2"}
    m1, m2 = rows["m1"], rows["m2"]
    assert (close(m1["running_h"], 12), close(m1["online_h"], 16.5)) == (True, True)
    assert m2["running_h"] == 0 and close(m2["online_h"], 1)


COMMISSIONING_SITE = Site("ent-u", "330602", "17", TZ)
D0 = date(2019, 5, 1)


def equipment_days(equipment: str, running_h: Sequence[float], in_scope: Sequence[bool], kind: str = "loom",
                   nc: str = "true") -> list[EquipmentDay]:
    """Days from D0 on: running the hours given, in the ledger's scope or not (offline the rest)."""
    out = []
    for k, (hours, scoped) in enumerate(zip(running_h, in_scope, strict=True)):
        start, end = local_day_bounds(D0 + timedelta(days=k), ZONE)
        running = round(hours * H)
        out.append(EquipmentDay(equipment, D0 + timedelta(days=k), start, end, start, end - start - running, 0, 0,
                                running, 0, good_samples=100, in_inventory_s=86_400.0 if scoped else 0.0, nc=nc,
                                kind=kind))
    return out


def test_trial_runs_before_commissioning_do_not_count_in_utilisation_in_service(influx_db):
    """Commissioned on day 3 (in_inventory_s = 0 before, fmc.plant.states), test-run 20 h a day on days
    1-2, then 10 h a day in service: 20 h of 48 h in service (42 %), not 60 h of 48 h (125 %)."""
    server, db = influx_db
    days = equipment_days("new", [20, 20, 10, 10], [False, False, True, True])
    write_points(server, db, [d.to_point(COMMISSIONING_SITE) for d in days])
    values = {"enterprise": COMMISSIONING_SITE.enterprise, "year": "2019", "equipment": ALL}
    span = {"start_ms": local_ms(D0), "end_ms": local_ms(D0 + timedelta(days=4)) - 1}
    [row] = run((server, db), ENT, "utilisation", values, **span)
    assert close(row["utilisation"], 20 / 48 * 100)
    [online] = run((server, db), ENT, "utilisation_online", values, **span)
    assert close(online["utilisation_online"], 100)  # online: every day
    [hours] = run((server, db), ENT, "utilisation_hours", values, **span)
    assert close(hours["running_h"], 60)


def test_a_machine_outside_the_ledger_scope_has_no_utilisation_in_service(influx_db):
    """An auxiliary machine, or one the ledger does not list, running all day: no figure in service
    (InfluxQL's x / 0 made it 0 %), its online utilisation and hours still shown."""
    server, db = influx_db
    days = equipment_days("aux", [24] * 4, [False] * 4, kind="unlisted", nc="unknown")
    days += equipment_days("m1", [6] * 4, [True] * 4)
    write_points(server, db, [d.to_point(COMMISSIONING_SITE) for d in days])
    values = {"enterprise": COMMISSIONING_SITE.enterprise, "year": "2019", "equipment": ALL}
    span = {"start_ms": local_ms(D0), "end_ms": local_ms(D0 + timedelta(days=4)) - 1}
    assert [r["equipment"] for r in run((server, db), ENT, "utilisation", values, **span)] == ["m1"]
    rows = utilisation_table((server, db), values=values, **span)
    assert rows["aux"].get("utilisation") is None and close(rows["aux"]["utilisation_online"], 100)
    assert close(rows["aux"]["running_h"], 96) and close(rows["m1"]["utilisation"], 25)


def test_a_machine_never_online_has_no_utilisation_online(influx_db):
    """A machine in service but offline every day of the range (online_s = 0): no online
    utilisation (InfluxQL's x / 0 made it 0 %, "online but idle"), its in-service 0 % and its 0 h
    online still shown."""
    server, db = influx_db
    days = equipment_days("dark", [0] * 4, [True] * 4)
    days += equipment_days("m1", [6] * 4, [True] * 4)
    write_points(server, db, [d.to_point(COMMISSIONING_SITE) for d in days])
    values = {"enterprise": COMMISSIONING_SITE.enterprise, "year": "2019", "equipment": ALL}
    span = {"start_ms": local_ms(D0), "end_ms": local_ms(D0 + timedelta(days=4)) - 1}
    rows = utilisation_table((server, db), values=values, **span)
    assert rows["dark"].get("utilisation_online") is None and rows["dark"]["utilisation"] == 0
    assert [r["equipment"] for r in run((server, db), ENT, "utilisation_online", values, **span)] == ["m1"]
    assert (rows["dark"]["running_h"], rows["dark"]["online_h"]) == (0, 0)
    assert close(rows["m1"]["utilisation_online"], 100) and close(rows["m1"]["online_h"], 24)


def check_energy_daily(store, seed) -> None:
    rows = run(store, ENT, "energy_daily", ENT_VALUES, **DAYS)
    # 1440 kWh metered on D1 (the 2-hour gap's 240 kWh included, counted once), 0.1229 kgce/kWh
    assert [(r["carrier"], r["time"]) for r in rows] == [("electricity", local_ms(D1))]
    assert close(rows[0]["tce"], 1440 * 0.1229 / 1000)


def check_energy_mix(store, seed) -> None:
    rows = run(store, ENT, "energy_mix", ENT_VALUES, **DAYS)
    assert [r["carrier"] for r in rows] == ["electricity"]  # water carries no tce: not zero energy
    assert close(rows[0]["sum"], 1440 * 0.1229 / 1000)


def check_water_daily(store, seed) -> None:
    rows = run(store, ENT, "water_daily", ENT_VALUES, **DAYS)
    assert [(r["carrier"], r["m3"]) for r in rows] == [("water_intake", 48.0)]  # 96 readings, 0.5 m³ apart


def check_carrier_coverage(store, seed) -> None:
    rows = {r["carrier"]: r["coverage"] for r in run(store, ENT, "carrier_coverage", ENT_VALUES, **DAYS)}
    assert close(rows["electricity"], 10 / 24) and close(rows["water_intake"], 1.0)


def check_meter_coverage(store, seed) -> None:
    rows = run(store, ENT, "meter_coverage", ENT_VALUES, start_ms=local_ms(D1), end_ms=local_ms(D1, 12) - 1,
               interval="1h")
    by_meter = defaultdict(list)
    for r in rows:
        by_meter[r["meter"]].append(r["mean"])
    # read 00:00-06:00 and 08:00-12:00: the gap shows as 0, not as a quiet meter
    assert by_meter["main"] == [1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1]
    assert by_meter["w1"] == [1] * 12
    # after the last intervals (the agent wrote none from D2 01:00 on): 0 as well, not nothing
    rows = run(store, ENT, "meter_coverage", ENT_VALUES, start_ms=local_ms(D1, 22), end_ms=local_ms(D2, 4) - 1,
               interval="1h")
    by_meter = defaultdict(list)
    for r in rows:
        by_meter[r["meter"]].append(r["mean"])
    assert by_meter == {"main": [0] * 6, "w1": [1, 1, 0, 0, 0, 0]}


def test_day_buckets_of_the_meter_coverage_are_local_days(store, seed):
    """Over a long range Grafana's $__interval becomes a day: each bucket is a local day, not UTC's
    (which starts at 08:00 in Shanghai and spread a day's coverage over two bars)."""
    rows = run(store, ENT, "meter_coverage", ENT_VALUES, **DAYS, interval="1d")
    got: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        got[r["meter"]].append((r["time"], r["mean"]))
    coverage: dict[tuple[str, date], list[float]] = defaultdict(list)
    for p in seed.points:
        if p.measurement == "meter_interval" and p.tags["enterprise"] == SITE_A.enterprise:
            day = datetime.fromtimestamp(p.ts_ns / NS, ZONE).date()
            coverage[(p.tags["meter"], day)].append(float(p.fields["coverage"]))  # type: ignore[arg-type]
    for meter in ("main", "w1"):
        assert [t for t, _ in got[meter]] == [local_ms(D1), local_ms(D2)], meter
        for (_, mean), day in zip(got[meter], (D1, D2), strict=True):
            values = coverage[(meter, day)]
            assert close(mean, sum(values) / len(values) if values else 0), (meter, day)


def test_day_buckets_are_local_days_of_the_zone_the_dashboards_are_built_for(store, seed):
    """A plant in another zone (Xinjiang's local UTC+6) gets its own midnights, not Shanghai's."""
    urumqi = ZoneInfo("Asia/Urumqi")
    board = next(d for d in gd.build_dashboards(timezone="Asia/Urumqi") if d.uid == gd.ENTERPRISE_UID)
    rows = run(store, board, "meter_coverage", ENT_VALUES, **DAYS, interval="1d")
    starts = {datetime.fromtimestamp(r["time"] / 1000, urumqi) for r in rows}
    assert starts and all((t.hour, t.minute) == (0, 0) for t in starts), sorted(starts)


def statement_rest(query: str, start: int) -> str:
    """From ``start`` to the end of its statement: the query's end or the subquery's ")"."""
    depth = 0
    for i in range(start, len(query)):
        depth += {"(": 1, ")": -1}.get(query[i], 0)
        if depth < 0:
            return query[start:i]
    return query[start:]


@pytest.mark.parametrize("zone", [TZ, "Asia/Urumqi", "Europe/Berlin", "America/Argentina/Buenos_Aires"])
def test_every_query_grouped_by_the_panel_interval_buckets_local_time(zone):
    """$__interval may be a day or longer: every query grouped by it names the plant's time zone, the
    one the dashboards are built for (the committed files: Asia/Shanghai)."""
    boards = {d.uid: d for d in gd.build_dashboards(lang="zh", timezone=zone)} if zone != TZ else DASHBOARDS
    grouped = 0
    for uid, ref in all_ref_ids():
        query = targets_of(boards[uid].model)[ref]["query"]
        for m in re.finditer(r"GROUP BY time\(\$__interval\)", query):
            assert statement_rest(query, m.start()).rstrip().endswith(f"tz('{zone}')"), (uid, ref)
            grouped += 1
        if zone != TZ:
            assert TZ not in query, (uid, ref)
    assert grouped >= 7  # meter coverage and the gateway panels over time


@pytest.mark.parametrize("zone", ["Mars/Base", "Asia/Shanghai') fill(0", "Asia/Shanghai'", "Asia/Shanghai ",
                                  "/etc/localtime", "Asia/../Asia/Shanghai", ""])
def test_a_zone_that_is_no_iana_name_is_refused(zone):
    with pytest.raises(ValueError, match="IANA name"):
        gd.build_dashboards(timezone=zone)


# --- the bureau dashboard ------------------------------------------------------------------------------


def check_share(store, seed, name: str) -> None:
    rows = run(store, BUR, f"share_{name}", BUR_VALUES)
    want = seed.row("city", "3306").results[name]
    if want.met_share is None:  # type: ignore[attr-defined]
        assert rows == []
    else:
        assert len(rows) == 1 and close(rows[0]["met_share"], want.met_share * 100)  # type: ignore[attr-defined]
    if name == "nc_rate":  # A met (50 ≥ 40 + 2·3), B missed (40 < 50 + 2·3)
        assert close(rows[0]["met_share"], 50.0)


def check_group_figures(store, seed) -> None:
    rows = run(store, BUR, "group_figures", BUR_VALUES)
    results = seed.row("city", "3306").results
    assert sorted(r["indicator"] for r in rows) == sorted(INDICATORS)
    for r in rows:
        want = results[r["indicator"]]
        assert close(r["value"], want.value) and close(r["target"], want.target) and r["status"] == want.status
        assert (r["met_count"], r["assessed"], r["members"]) == (want.met_count, want.assessed, 2)  # type: ignore
        assert close(r["coverage"], want.coverage)


def enterprise_rows(seed, enterprises: Sequence[str]) -> dict[tuple[str, str], Any]:
    return {(e, name): seed.row("enterprise", e).results[name] for e in enterprises for name in INDICATORS}


def check_status_matrix(store, seed) -> None:
    rows = run(store, BUR, "status_matrix", BUR_VALUES)
    want = enterprise_rows(seed, [SITE_A.enterprise, SITE_B.enterprise])
    assert {(r["enterprise"], r["indicator"]): r["status"] for r in rows} == {k: v.status for k, v in want.items()}
    assert len(rows) == len(want)
    # another scope: the province, one industry (a prefix of the enterprise's code)
    rows = run(store, BUR, "status_matrix", {**BUR_VALUES, "region": "33", "industry": "18"})
    assert {r["enterprise"] for r in rows} == {SITE_C.enterprise}
    rows = run(store, BUR, "status_matrix", {**BUR_VALUES, "region": "33", "industry": "17"})
    assert {r["enterprise"] for r in rows} == {SITE_A.enterprise, SITE_B.enterprise}


def check_detail(store, seed, points: bool) -> None:
    rows = run(store, BUR, "detail_rates" if points else "detail_quantities", BUR_VALUES)
    want = {k: r for k, r in enterprise_rows(seed, [SITE_A.enterprise, SITE_B.enterprise]).items()
            if (k[1] in POINT_INDICATORS) == points}
    assert len(rows) == len(want)
    ranks = {e: seed.row("enterprise", e).ranks for e in (SITE_A.enterprise, SITE_B.enterprise)}
    for r in rows:
        w = want[(r["enterprise"], r["indicator"])]
        assert close(r["value"], w.value) and close(r["target"], w.target) and r["status"] == w.status
        assert close(r["yoy"], w.yoy) and close(r["coverage"], w.coverage)
        assert r["rank"] == ranks[r["enterprise"]].get(r["indicator"])
        assert (r["region"], r["industry"]) == (("330602", "1711") if r["enterprise"] == SITE_A.enterprise
                                                else ("330602", "17"))


def check_ranking(store, seed) -> None:
    rows = run(store, BUR, "ranking", BUR_VALUES)
    assert sorted((r["rank"], r["enterprise"], r["value"]) for r in rows) == [
        (1, SITE_A.enterprise, 50.0), (2, SITE_B.enterprise, 40.0)]  # C (30 %) is ranked 3rd, in 3301
    rows = run(store, BUR, "ranking", {**BUR_VALUES, "region": "33", "indicator": "energy_intensity"})
    want = {e: seed.row("enterprise", e) for e in PROFILES}
    assert {r["enterprise"]: r["rank"] for r in rows} == {e: w.ranks["energy_intensity"] for e, w in want.items()}


def check_coverage_matrix(store, seed) -> None:
    rows = run(store, BUR, "coverage_matrix", {**BUR_VALUES, "region": "33"})
    want = enterprise_rows(seed, list(PROFILES))
    got = {(r["enterprise"], r["indicator"]): r["coverage"] for r in rows}
    assert got.keys() == want.keys()
    assert all(close(got[k], w.coverage) for k, w in want.items())
    assert got[(SITE_C.enterprise, "water_intensity")] == 0  # C meters no water: seen, not hidden


def check_industry_share(store, seed) -> None:
    rows = run(store, BUR, "industry_share", BUR_VALUES)
    results = seed.row("industry", "3306/17").results
    want = {n: r.met_share * 100 for n, r in results.items() if r.met_share is not None}  # type: ignore[attr-defined]
    assert {r["industry"] for r in rows} == {"17"}
    got = {r["indicator"]: r["met_share"] for r in rows}
    assert got.keys() == want.keys() and all(close(got[n], want[n]) for n in want)
    rows = run(store, BUR, "industry_share", {**BUR_VALUES, "region": "33"})
    assert {r["industry"] for r in rows} == {"17", "18"}


# --- the gateway dashboard ------------------------------------------------------------------------------


def gw_range(seed: Seed) -> dict[str, int]:
    return {"start_ms": seed.t0_ms - 4 * 3_600_000, "end_ms": seed.t0_ms - 1}


def check_agents_up(store, seed) -> None:
    assert [r["sum"] for r in run(store, GW, "agents_up", GW_VALUES)] == [1]  # gw-b is silent for 2 h


def check_agents_known(store, seed) -> None:
    assert [r["count"] for r in run(store, GW, "agents_known", GW_VALUES)] == [2]
    assert [r["count"] for r in run(store, GW, "agents_known", {**GW_VALUES, "enterprise": [SITE_B.enterprise]})] == [1]


def check_spool_total(store, seed) -> None:
    assert [r["sum"] for r in run(store, GW, "spool_total", GW_VALUES)] == [9]  # gw-a 9 + gw-b 0 at its stop


def check_oldest_max(store, seed) -> None:
    assert [r["max"] for r in run(store, GW, "oldest_max", GW_VALUES)] == [90.0]


def check_last_report(store, seed) -> None:
    rows = {r["host"]: r for r in run(store, GW, "last_report", GW_VALUES)}
    assert set(rows) == {"gw-a", "gw-b"}
    a, b = rows["gw-a"], rows["gw-b"]
    assert a["time"] == seed.t0_ms - 60_000 and b["time"] == seed.t0_ms - 120 * 60_000
    assert (a["up"], a["spool_depth"], a["oldest_unsent_s"], a["sources_connected"], a["sources"]) == (1, 9, 90, 2, 2)
    assert (a["rejected"], a["sink_errors"], a["uptime_s"]) == (5, 2, 1140)
    assert (b["up"], b["spool_depth"], b["enterprise"]) == (0, 0, SITE_B.enterprise)
    assert (a["gateway"], b["gateway"]) == ("line-1", "main")  # the newest point's; one row per host


def check_reporting(store, seed) -> None:
    rows = run(store, GW, "reporting", GW_VALUES, interval="2m", **gw_range(seed))
    buckets = defaultdict(list)
    for r in rows:
        buckets[r["host"]].append(r["max"])
    assert {h: len(v) for h, v in buckets.items()} == {"gw-a": 120, "gw-b": 120}
    assert sum(buckets["gw-a"]) == 5 and buckets["gw-a"][-5:] == [1] * 5
    assert buckets["gw-b"][30:60] == [1] * 30 and buckets["gw-b"][60] == 0  # its last point said up = 0
    assert sum(buckets["gw-b"]) == 30


def check_spool_depth(store, seed) -> None:
    rows = run(store, GW, "spool_depth", GW_VALUES, interval="1m", **gw_range(seed))
    assert [r["max"] for r in rows if r["host"] == "gw-a"] == list(range(10))
    assert [r["max"] for r in rows if r["host"] == "gw-b"] == [100] * 60 + [0]


def check_oldest_unsent(store, seed) -> None:
    rows = run(store, GW, "oldest_unsent", GW_VALUES, interval="1m", **gw_range(seed))
    assert [r["max"] for r in rows if r["host"] == "gw-a"] == [10.0 * k for k in range(10)]


def check_rejections(store, seed) -> None:
    rows = run(store, GW, "rejections", GW_VALUES, interval="1m", **gw_range(seed))
    assert len(rows) == 1
    # gw-a: 0→5; gw-b: 0→4, restarted (counters from 0), 0→1: 5, not 5 - 4
    want = {r: 0 for r in (*REJECTION_REASONS, "other")} | {"payload_not_json": 5, "value_not_finite": 5}
    assert {k: v for k, v in rows[0].items() if k != "time"} == want
    only_b = run(store, GW, "rejections", {**GW_VALUES, "host": ["gw-b"]}, interval="1m", **gw_range(seed))
    assert only_b[0]["payload_not_json"] == 0 and only_b[0]["value_not_finite"] == 5


def check_rejections_host(store, seed) -> None:
    rows = run(store, GW, "rejections_host", GW_VALUES, interval="1m", **gw_range(seed))
    totals = defaultdict(int)
    for r in rows:
        totals[r["host"]] += r["non_negative_difference"]
    assert dict(totals) == {"gw-a": 5, "gw-b": 5}


def check_losses(store, seed) -> None:
    rows = run(store, GW, "sink_errors", GW_VALUES, interval="1m", **gw_range(seed))
    assert sum(r["non_negative_difference"] for r in rows if r["host"] == "gw-a") == 2
    assert all(r["non_negative_difference"] == 0 for r in run(store, GW, "dropped", GW_VALUES, interval="1m",
                                                              **gw_range(seed)))


CHECKS: dict[str, Callable[..., None]] = {
    **{f"kpi_{n}": (lambda s, d, n=n: check_kpi(s, d, n)) for n in gd.ENTERPRISE_KPIS},
    "kpi_rates": lambda s, d: check_kpi_table(s, d, points=True),
    "kpi_quantities": lambda s, d: check_kpi_table(s, d, points=False),
    **{f"trend_{n}": (lambda s, d, n=n: check_trend(s, d, n)) for n in gd.ENTERPRISE_KPIS},
    "states": check_states,
    "utilisation": check_utilisation,
    "utilisation_online": check_utilisation_online,
    "utilisation_hours": check_utilisation_hours,
    "energy_daily": check_energy_daily,
    "energy_mix": check_energy_mix,
    "water_daily": check_water_daily,
    "carrier_coverage": check_carrier_coverage,
    "meter_coverage": check_meter_coverage,
    **{f"share_{n}": (lambda s, d, n=n: check_share(s, d, n)) for n in INDICATORS},
    "group_figures": check_group_figures,
    "status_matrix": check_status_matrix,
    "detail_rates": lambda s, d: check_detail(s, d, points=True),
    "detail_quantities": lambda s, d: check_detail(s, d, points=False),
    "ranking": check_ranking,
    "coverage_matrix": check_coverage_matrix,
    "industry_share": check_industry_share,
    "agents_up": check_agents_up,
    "agents_known": check_agents_known,
    "spool_total": check_spool_total,
    "oldest_max": check_oldest_max,
    "last_report": check_last_report,
    "reporting": check_reporting,
    "spool_depth": check_spool_depth,
    "oldest_unsent": check_oldest_unsent,
    "rejections": check_rejections,
    "rejections_host": check_rejections_host,
    "sink_errors": check_losses,
    "dropped": check_losses,
}


def all_ref_ids() -> list[tuple[str, str]]:
    return [(uid, ref) for uid, d in DASHBOARDS.items() for ref in targets_of(d.model)]


def test_every_panel_query_has_a_check_and_ref_ids_are_unique_per_dashboard():
    assert {ref for _, ref in all_ref_ids()} == set(CHECKS)
    for d in DASHBOARDS.values():
        refs = [t["refId"] for p in panels_of(d.model) for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), d.uid


@pytest.mark.parametrize("ref_id", sorted(CHECKS))
def test_each_panel_query_returns_what_the_seed_implies(store, seed, ref_id):
    CHECKS[ref_id](store, seed)


def test_enterprise_panels_add_up_the_gateways_of_one_enterprise(influxdb):
    """Two gateways of one enterprise (tag ``gateway``), each with its own meters, write the same day:
    the daily panels show the enterprise's total, not two points a day (nor one gateway's)."""
    db = f"fmc_dash_gw_{uuid.uuid4().hex[:10]}"
    influxdb.create_database(db)
    try:
        points: list[Point] = []
        for gateway, meter, rate, hours in (("hall-a", "ea", 10.0, [(0, 24)]), ("hall-b", "eb", 5.0, [(0, 12)])):
            site = Site(SITE_A.enterprise, SITE_A.region, SITE_A.industry, TZ, gateway)
            electricity = meter_intervals(meter, "electricity", rate, 5, hours)
            water = meter_intervals(f"w-{meter}", "water_intake", 0.5, 15, [(0, 24)])
            counted = {meter: "electricity", f"w-{meter}": "water_intake"}
            points += consumption_daily(D1, site, electricity + water, counted)
        write_points(influxdb, db, points)
        store = (influxdb, db)
        # hall-a 24 h × 12 readings × 10 kWh = 2880 kWh, hall-b 12 h × 12 × 5 = 720 kWh: 3600 kWh
        for ref_id in ("energy_daily", "energy_mix"):
            rows = run(store, ENT, ref_id, ENT_VALUES, **DAYS)
            assert [r["carrier"] for r in rows] == ["electricity"], ref_id
            assert close(rows[0]["tce" if ref_id == "energy_daily" else "sum"], 3600 * 0.1229 / 1000), ref_id
        rows = run(store, ENT, "energy_daily", ENT_VALUES, **DAYS)
        assert [r["time"] for r in rows] == [local_ms(D1)]
        rows = run(store, ENT, "water_daily", ENT_VALUES, **DAYS)
        assert [(r["carrier"], r["time"], r["m3"]) for r in rows] == [("water_intake", local_ms(D1), 96.0)]
        # electricity: hall-a whole day, hall-b half of it: 0.75 (the mean over the gateways)
        rows = run(store, ENT, "carrier_coverage", ENT_VALUES, **DAYS)
        got = {r["carrier"]: (r["time"], r["coverage"]) for r in rows}
        assert len(rows) == 2 and got["water_intake"] == (local_ms(D1), 1.0)
        assert got["electricity"][0] == local_ms(D1) and close(got["electricity"][1], 0.75)
    finally:
        if influxdb.running:
            influxdb.query(f'DROP DATABASE "{db}"')


MOVER_OLD = Site("ent-x", "330603", "17", TZ)  # in January
MOVER_NEW = Site("ent-x", "330602", "17", TZ)  # from February: same city, another county


async def materialized_after_a_move(server: InfluxDBServer, db: str) -> None:
    """The year to date materialized by the central service on 1 February, while ent-x was in 330603,
    then on 1 April, after it moved to 330602 (an enterprise belongs to the region of the period's end):
    5 NC machines of 10 in January (2016: 4, the baseline), 3 from February."""
    rows = [(MOVER_OLD, EnterpriseDay(d, 10, 4, equipment_networked=4, nc_equipment_networked=4))
            for d in year_days(2016)]
    rows += [(MOVER_OLD if d.month == 1 else MOVER_NEW,
              EnterpriseDay(d, 10, 5 if d.month == 1 else 3, equipment_networked=3, nc_equipment_networked=3))
             for d in year_days(2020) if d.month <= 3]
    write_points(server, db, [daily_point(site, row) for site, row in rows])
    service = IndicatorService(InfluxQueryStore(InfluxDBSink(type="influxdb", url=server.url, database=db),
                                                timezone=TZ), load_plan(), revalidate_s=3600)
    try:
        await service.materialize([Period.year_to_date(date(2020, 1, 31))])
        await service.materialize([Period.year_to_date(date(2020, 3, 31))])
    finally:
        await service.aclose()


async def test_an_enterprise_that_moved_county_is_not_listed_in_its_old_county(influx_db):
    server, db = influx_db
    await materialized_after_a_move(server, db)
    old = {"region": "330603", "industry": ALL, "year": "2020-YTD", "indicator": "nc_rate"}
    rows = run((server, db), BUR, "status_matrix", old)
    assert rows == [], f"county 330603 still lists {sorted({r['enterprise'] for r in rows})} for 2020-YTD"
    assert run((server, db), BUR, "group_figures", old) == []  # the county has no member any more
    new = run((server, db), BUR, "status_matrix", {**old, "region": "330602"})
    assert {r["enterprise"] for r in new} == {"ent-x"}


async def test_the_enterprise_stat_shows_one_figure_after_a_move(influx_db):
    server, db = influx_db
    await materialized_after_a_move(server, db)
    rows = run((server, db), ENT, "kpi_nc_rate", {"enterprise": "ent-x", "year": "2020-YTD", "equipment": ALL})
    # two rows (January's 50 % in 330603, March's 30 % in 330602): which one the stat's lastNotNull shows
    # depends on the order InfluxDB returns them in; the detail table and the year's table showed both
    assert len(rows) == 1, f"{len(rows)} figures for one indicator: {[r['value'] for r in rows]}"
    assert close(rows[0]["value"], 30.0)


def test_a_period_without_data_shows_no_number(store, seed):
    """2020 has no data: the figure is absent and the status says so (no 0 from silence)."""
    rows = run(store, ENT, "kpi_nc_rate", {**ENT_VALUES, "year": "2020-YTD"})
    assert len(rows) == 1 and rows[0]["value"] is None and rows[0]["status"] == "insufficient_data"


def test_the_decoy_would_match_if_grafana_did_not_escape_the_dot(store):
    """The regex context is what makes "ent-a.1" exact: unescaped, it matches "ent-a_1" too."""
    server, db = store
    query = targets_of(ENT.model)["kpi_nc_rate"]["query"].replace("$enterprise", "ent-a.1").replace("$year", "2019")
    assert len(server.select(db, query)) == 2
    assert len(run(store, ENT, "kpi_nc_rate", ENT_VALUES)) == 1


def test_multi_values_joined_without_a_group_still_match_exactly(store, seed):
    """Some Grafana versions join multi-values as a|b without parentheses: /^($host)$/ stays exact."""
    values = {"enterprise": [SITE_A.enterprise, SITE_B.enterprise], "host": ["gw-a", "gw-b"]}
    for old_join in (False, True):
        rows = run(store, GW, "last_report", values, old_join=old_join)
        assert {r["host"] for r in rows} == {"gw-a", "gw-b"}
        rows = run(store, GW, "last_report", {**values, "host": ["gw-b", "gw"]}, old_join=old_join)
        assert {r["host"] for r in rows} == {"gw-b"}


HOSTILE = [
    "x') OR 1=1; DROP DATABASE \"{db}\" --",
    "ent-a.1|.*",
    ".*",
    "a\nb",
    "/^.*$/",
    "ent-a.1$/ OR \"enterprise\" =~ /.*",
    "SELECT * FROM \"indicator\"",
    "企业'\"\\",
    "\\",
    "ent-a.1\x00",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_variable_values_match_nothing_and_harm_nothing(store, seed, value):
    server, db = store
    before = server.select(db, 'SELECT count("status") FROM "indicator"')[0]["count"]
    value = value.replace("{db}", db)
    for board, ref, values in ((ENT, "kpi_quantities", {**ENT_VALUES, "enterprise": value}),
                               (BUR, "detail_rates", {**BUR_VALUES, "region": value}),
                               (BUR, "detail_quantities", {**BUR_VALUES, "industry": value}),
                               (GW, "last_report", {**GW_VALUES, "host": [value, "gw-a"]})):
        try:
            rows = run(store, board, ref, values)
        except InfluxDBError:
            continue  # refused (a control character): refused is fine, matched or run is not
        if ref == "last_report":
            assert {r["host"] for r in rows} == {"gw-a"}, value
        else:
            assert rows == [], value
    assert server.select(db, 'SELECT count("status") FROM "indicator"')[0]["count"] == before


# --- the variables -----------------------------------------------------------------------------------


def variable_values(store, board: gd.Dashboard, name: str, values: Mapping[str, Any], **kw: Any) -> set[str]:
    server, db = store
    var = next(v for v in board.model["templating"]["list"] if v["name"] == name)
    return {r["value"] for r in server.select(db, interpolate(board.model, var["query"], values, **kw))}


def test_the_variables_list_what_the_writers_wrote(store, seed):
    assert variable_values(store, ENT, "enterprise", {}, **DAYS) == {SITE_A.enterprise, SITE_C.enterprise}
    assert variable_values(store, ENT, "year", ENT_VALUES) == {"2019", "2020-YTD"}
    assert variable_values(store, ENT, "equipment", ENT_VALUES, **DAYS) == {"m1", "m2"}
    regions = {r.region for (level, _, _), r in seed.rows.items() if level in ("county", "city", "province")}
    assert regions == {"33", "3301", "3306", "330100", "330602"}
    assert variable_values(store, BUR, "region", BUR_VALUES) == regions
    assert variable_values(store, BUR, "industry", BUR_VALUES) == {"17", "18"}
    assert variable_values(store, BUR, "year", BUR_VALUES) == {"2019", "2020-YTD"}
    assert variable_values(store, GW, "enterprise", GW_VALUES) == {SITE_A.enterprise, SITE_B.enterprise}
    assert variable_values(store, GW, "host", GW_VALUES) == {"gw-a", "gw-b"}
    assert variable_values(store, GW, "host", {"enterprise": [SITE_B.enterprise]}) == {"gw-b"}
    custom = next(v for v in BUR.model["templating"]["list"] if v["name"] == "indicator")
    assert [o["value"] for o in custom["options"]] == list(INDICATORS)


def test_the_industry_variable_is_labelled_as_the_divisions_it_lists(store, seed):
    """Its values are two-digit GB/T 4754 divisions (大类), not sections (门类, a letter: C manufacturing)."""
    assert variable_values(store, BUR, "industry", BUR_VALUES) == {"17", "18"}
    labels = {lang: next(v["label"] for v in by_uid(lang)[gd.BUREAU_UID + ("" if lang == "zh" else "-en")]
                         .model["templating"]["list"] if v["name"] == "industry") for lang in gd.LANGS}
    assert labels == {"zh": "行业（GB/T 4754 大类）", "en": "Industry (GB/T 4754 division)"}


# --- every name a query uses exists in what the writers write --------------------------------------------


def writer_schema(points: Sequence[Point]) -> dict[str, tuple[set[str], set[str]]]:
    schema: dict[str, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    for p in points:
        tags, fields = schema[p.measurement]
        tags.update(p.tags)
        fields.update(p.fields)
    return dict(schema)


def names_problems(query: str, schema: Mapping[str, tuple[set[str], set[str]]]) -> list[str]:
    """Measurements, tags and fields the query names that the writers do not write."""
    problems = []
    measurements = re.findall(r'FROM\s+"(\w+)"', query)
    if not measurements:
        return [f"no measurement in {query!r}"]
    tags, fields = set(), set()
    for m in measurements:
        if m not in schema:
            problems.append(f"measurement {m!r}")
            continue
        tags |= schema[m][0]
        fields |= schema[m][1]
    aliases = set(re.findall(r'AS\s+"(\w+)"', query))
    for select_list in re.findall(r"SELECT\s+(.*?)\s+FROM", query):
        names = re.findall(r'"(\w+)"', re.sub(r'AS\s+"\w+"', "", select_list))
        some_field = any(n in fields or n in aliases for n in names)  # InfluxQL selects a tag beside a field only
        for name in names:
            if name not in fields and name not in aliases and not (some_field and name in tags):
                problems.append(f"field {name!r}")
    for name in re.findall(r'"(\w+)"\s*(?:=~|!~|=|!=)', query):
        if name not in tags:
            problems.append(f"tag {name!r}")
    without_time = re.sub(r"time\([^)]*\)", "", query)
    for group_by in re.findall(r"GROUP BY\s+(.*?)(?:\)|\s+ORDER|\s+fill|$)", without_time):
        problems += [f"tag {name!r}" for name in re.findall(r'"(\w+)"', group_by) if name not in tags]
    for name in re.findall(r'WITH KEY = "(\w+)"', query):
        if name not in tags:
            problems.append(f"tag {name!r}")
    return problems


def every_query() -> list[tuple[str, str]]:
    out = []
    for lang in gd.LANGS:
        for d in gd.build_dashboards(lang=lang):
            out += [(f"{d.uid}/{t['refId']}", t["query"]) for p in panels_of(d.model) for t in p.get("targets", [])]
            variables = d.model["templating"]["list"]
            out += [(f"{d.uid}/${v['name']}", v["query"]) for v in variables if v["type"] == "query"]
    return out


def test_every_measurement_tag_and_field_a_query_names_is_written(seed):
    schema = writer_schema(seed.points)
    problems = {where: p for where, q in every_query() if (p := names_problems(q, schema))}
    assert not problems


def test_the_names_check_fails_when_a_writer_renames_a_field(seed):
    schema = writer_schema(seed.points)
    tags, fields = schema["consumption_daily"]
    renamed = {**schema, "consumption_daily": (tags, (fields - {"tce"}) | {"tce_t"})}
    assert names_problems(targets_of(ENT.model)["energy_mix"]["query"], renamed) == ["field 'tce'"]
    no_carrier = {**schema, "consumption_daily": (tags - {"carrier"}, fields)}
    assert "tag 'carrier'" in names_problems(targets_of(ENT.model)["energy_mix"]["query"], no_carrier)
    assert names_problems('SELECT "x" FROM "nothing"', schema) == ["measurement 'nothing'", "field 'x'"]


# --- the JSON models ---------------------------------------------------------------------------------------


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


ALL_DASHBOARDS = gd.all_dashboards()


def test_uids_titles_and_folders():
    uids = [d.uid for d in ALL_DASHBOARDS]
    assert len(uids) == len(set(uids)) == 6
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,40}", u) for u in uids)
    folders: dict[str, str] = {}
    for d in ALL_DASHBOARDS:
        assert d.model["uid"] == d.uid and d.model["title"] == d.title and d.title.strip()
        assert folders.setdefault(d.folder_uid, d.folder_title) == d.folder_title
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d.folder_uid) and d.folder_uid != "general"
        assert d.model["schemaVersion"] >= 39 and d.model["id"] is None
    en = [d for d in ALL_DASHBOARDS if d.uid.endswith("-en")]
    assert len(en) == 3 and {d.folder_uid for d in en}.isdisjoint({d.folder_uid for d in ALL_DASHBOARDS
                                                                    if d not in en})


def test_panel_ids_are_unique_and_the_grid_is_sane():
    for d in ALL_DASHBOARDS:
        panels = panels_of(d.model)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids), d.uid
        boxes = []
        for p in panels:
            g = p["gridPos"]
            assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0 and g["x"] + g["w"] <= 24, (d.uid, p)
            boxes.append((g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
            assert p["type"] in {"row", "stat", "table", "timeseries", "state-timeline", "piechart", "bargauge"}
            assert p.get("title"), p
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (d.uid, a, b)


def test_every_datasource_reference_is_the_one_influxdb_datasource():
    for d in gd.all_dashboards("another-uid"):
        refs = [v for k, v in walk(d.model) if k == "datasource"]
        assert refs and all(r == {"type": "influxdb", "uid": "another-uid"} for r in refs), d.uid
    for d in ALL_DASHBOARDS:
        assert all(v == {"type": "influxdb", "uid": gd.DATASOURCE_UID} for k, v in walk(d.model) if k == "datasource")
        for p in panels_of(d.model):
            if p["type"] != "row":
                assert p["datasource"] == {"type": "influxdb", "uid": gd.DATASOURCE_UID} and p["targets"], p["title"]
            for t in p.get("targets", []):
                assert t["rawQuery"] is True and t["resultFormat"] in ("time_series", "table")
                assert "from(bucket" not in t["query"] and "SLIMIT" not in t["query"].upper()


def test_a_model_shares_no_mutable_parts():
    """A caller may change one panel's dict (a push adapting the model) without changing another's."""
    for d in ALL_DASHBOARDS:
        seen: set[int] = set()
        stack: list[Any] = [d.model]
        while stack:
            node = stack.pop()
            if isinstance(node, dict | list):
                assert id(node) not in seen, (d.uid, node)
                seen.add(id(node))
                stack += node.values() if isinstance(node, dict) else node


def test_every_variable_used_is_defined():
    for d in ALL_DASHBOARDS:
        defined = {v["name"] for v in d.model["templating"]["list"]}
        for text in strings(d.model):
            for m in VARIABLE.finditer(text):
                name = m.group(1) or m.group(2) or m.group(4)
                if name.startswith("tag_") or name in BUILTINS:
                    continue
                assert name in defined, (d.uid, name, text[:120])
        for v in d.model["templating"]["list"]:
            if v.get("includeAll"):
                assert v["allValue"] == ".*"
            if v.get("multi"):  # grouped in every query, as some Grafana versions join with a bare |
                for text in strings(d.model["panels"]):
                    assert f"${v['name']}$" not in text and f"/^${v['name']}/" not in text, (d.uid, v["name"])


def test_drill_down_links_open_the_enterprise_dashboard_of_the_same_language():
    for lang in gd.LANGS:
        boards = {d.uid: d for d in gd.build_dashboards(lang=lang)}
        enterprise_uid = gd.ENTERPRISE_UID + ("" if lang == "zh" else "-en")
        bureau = boards[gd.BUREAU_UID + ("" if lang == "zh" else "-en")]
        drill = [v for k, v in walk(bureau.model) if k == "url" and "var-enterprise" in v]
        assert len(drill) >= 4
        assert all(u.startswith(f"/d/{enterprise_uid}?var-enterprise=${{__value.raw}}&var-year=${{year}}")
                   for u in drill)
        for d in boards.values():
            for link in d.model["links"]:
                assert link["url"].removeprefix("/d/") in boards


def test_both_languages_run_the_same_queries_with_their_own_labels():
    zh, en = gd.build_dashboards(lang="zh"), gd.build_dashboards(lang="en")
    cjk = re.compile(r"[\u3400-\u9fff]")
    for a, b in zip(zh, en, strict=True):
        assert b.uid == a.uid + "-en"
        qa = {r: t["query"] for r, t in targets_of(a.model).items()}
        qb = {r: t["query"] for r, t in targets_of(b.model).items()}
        assert qa == qb
        variables = [[v["query"] for v in d.model["templating"]["list"] if v["type"] == "query"] for d in (a, b)]
        assert variables[0] == variables[1]
        assert cjk.search(a.title) and not any(cjk.search(s) for s in strings(b.model)), b.uid
    with pytest.raises(ValueError, match="lang"):
        gd.build_dashboards(lang="fr")


def test_labels_cover_every_indicator_state_status_and_carrier():
    assert set(gd.INDICATOR_LABELS) == set(gd.INDICATOR_UNITS) == set(INDICATORS)
    assert set(gd.STATE_LABELS) == set(STATES)
    assert set(gd.STATUS_LABELS) == set(get_args(Status))
    assert set(gd.CARRIER_LABELS) == set(CARRIERS)
    assert set(gd.ENTERPRISE_KPIS) <= set(INDICATORS)


# --- how Grafana shows the figures ------------------------------------------------------------------------


def field_config(panel: Mapping[str, Any], field_name: str) -> dict[str, Any]:
    """The decimals and unit Grafana applies to one field of a panel: defaults, then its byName override."""
    config = {k: v for k, v in panel["fieldConfig"]["defaults"].items() if k in ("decimals", "unit")}
    for o in panel["fieldConfig"]["overrides"]:
        if o["matcher"] == {"id": "byName", "options": field_name}:
            config |= {p["id"]: p["value"] for p in o["properties"] if p["id"] in ("decimals", "unit")}
    return config


def grafana_decimals(value: float) -> int:
    """Grafana's decimals when a field sets none (getDecimalsForValue in valueFormats.ts)."""
    if value == 0 or value % 1 == 0:
        return 0
    log10 = math.floor(math.log10(abs(value)))
    dec = -log10 + 1
    if abs(value) / 10 ** (log10 - 1) > 2.25:  # always: the "special case for 2.5"
        dec += 1
    return max(0, dec)


def display(value: float, config: Mapping[str, Any]) -> str:
    """Grafana's text for a number, in the units these dashboards use."""
    unit, decimals = config.get("unit", "none"), config.get("decimals")
    suffix = ""
    if unit == "percentunit":
        value, suffix = value * 100, "%"
    elif unit == "percent":
        suffix = "%"
    elif unit.startswith("suffix:"):
        suffix = unit.removeprefix("suffix:")
    else:
        assert unit == "none", unit
    return f"{value:.{grafana_decimals(value) if decimals is None else decimals}f}{suffix}"


def indicator_panels(lang: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Every panel of every dashboard of ``lang`` with the query of its first target."""
    for d in gd.build_dashboards(lang=lang):
        for p in panels_of(d.model):
            if p.get("targets"):
                yield p, p["targets"][0]["query"]


def shown_indicators(query: str) -> set[str]:
    """The indicators a query of the indicator measurement reads."""
    if m := re.search(r'"indicator" = \'(\w+)\'', query):
        return {m.group(1)}
    if m := re.search(r'"indicator" (=~|!~) /\^\(([\w|]+)\)\$/', query):
        group = set(m.group(2).split("|"))
        return group if m.group(1) == "=~" else set(INDICATORS) - group
    return set(INDICATORS)


@pytest.mark.parametrize("lang", gd.LANGS)
def test_yoy_and_avg_annual_are_shown_in_percent_or_percentage_points_by_indicator(lang):
    """yoy and avg_annual are a fraction for the quantities, the difference in points for the rates
    (fmc.indicators.engine.yoy_change): −3.6 % (missed) and −4 % (met) must not both read −0.04, and
    the NC rate's +2 points must not read 2.00 in the same column as fractions."""
    points = "百分点" if lang == "zh" else "pp"
    seen = 0
    for panel, query in indicator_panels(lang):
        for name in ("yoy", "avg_annual"):
            if f'"{name}"' not in query:
                continue
            seen += 1
            shown, config = shown_indicators(query), field_config(panel, name)
            assert shown <= POINT_INDICATORS or not shown & POINT_INDICATORS, (panel["title"], "one unit a column")
            if shown <= POINT_INDICATORS:
                assert display(2.0, config) == f"2.00 {points}", (panel["title"], config)
            else:
                missed, met = display(-0.036, config), display(-0.040, config)
                assert (missed, met) == ("-3.60%", "-4.00%"), (panel["title"], config)
    assert seen == 6  # the enterprise's two tables (yoy, avg_annual), the bureau's two detail tables (yoy)


@pytest.mark.parametrize("lang", gd.LANGS)
def test_intensities_are_shown_finely_enough_to_tell_the_value_from_its_target(lang):
    """An enterprise at 0.100 tce/万元 against a target of 0.096 (4 % lower) must not read "0.10"
    beside "0.10" and 未达标; nor water at 1.00 against 0.95 m³/万元, wastewater at 1.00 against 0.98."""
    cases = {"energy_intensity": (0.100, 0.096), "water_intensity": (1.00, 0.95), "wastewater_intensity": (1.00, 0.98)}
    seen = 0
    for panel, query in indicator_panels(lang):
        shown = shown_indicators(query) if '"indicator"' in query and '"value"' in query else set()
        for name in shown & cases.keys():
            value, target = cases[name]
            seen += 1
            a, b = display(value, field_config(panel, "value")), display(target, field_config(panel, "target"))
            assert a != b, (panel["title"], name, a)
    # the three intensities' stats and trends; the enterprise's, the region's, the detail and ranking tables
    assert seen == 3 * 2 + 3 * 4


def test_a_table_of_several_indicators_names_each_ones_unit():
    for lang in gd.LANGS:
        checked = 0
        for panel, query in indicator_panels(lang):
            if panel["type"] != "table" or '"value"' not in query or not re.search(r'GROUP BY .*"indicator"', query):
                continue  # not a row per indicator (the ranking shows the one $indicator)
            if field_config(panel, "value").get("unit"):
                continue  # the rates: one unit, on the column
            mapping = next(p["value"][0] for o in panel["fieldConfig"]["overrides"] for p in o["properties"]
                           if o["matcher"]["options"] == "indicator" and p["id"] == "mappings")
            assert mapping["options"]["energy_intensity"]["text"].endswith(
                "（tce/万元）" if lang == "zh" else "(tce/10⁴ yuan)"), panel["title"]
            checked += 1
        assert checked == 3  # the enterprise's, the region's and the bureau's detail table of the quantities


# --- the committed files ---------------------------------------------------------------------------------


def test_the_committed_dashboards_are_what_the_code_makes():
    folder = ROOT / "grafana" / "dashboards"
    committed = {p.name: p.read_text(encoding="utf-8") for p in folder.glob("*.json")}
    generated = {f"{d.uid}.json": gd.dashboard_json(d) for d in ALL_DASHBOARDS}
    assert committed.keys() == generated.keys(), (
        "regenerate: python -m fmc.central.grafana.dashboards grafana/dashboards")
    for name, text in generated.items():
        assert committed[name] == text, f"{name} is stale: python -m fmc.central.grafana.dashboards grafana/dashboards"
        assert json.loads(text)["uid"] == name.removesuffix(".json")


def test_the_command_writes_every_dashboard(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "fmc.central.grafana.dashboards", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{d.uid}.json" for d in ALL_DASHBOARDS)
    text = (out / f"{gd.ENTERPRISE_UID}.json").read_text(encoding="utf-8")
    assert text.endswith("}\n") and "企业" in text  # UTF-8 as is, not \u escapes
    assert json.loads(text) == ALL_DASHBOARDS[0].model


def test_the_command_writes_the_dashboards_of_another_zone(tmp_path):
    """For a file-provisioned Grafana of a plan in another zone; a zone no IANA name is a usage error."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "fmc.central.grafana.dashboards", str(out), "--timezone",
                           "Europe/Berlin"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = (out / f"{gd.GATEWAYS_UID}.json").read_text(encoding="utf-8")
    assert "tz('Europe/Berlin')" in text and "Asia/Shanghai" not in text
    done = subprocess.run([sys.executable, "-m", "fmc.central.grafana.dashboards", str(out), "--timezone",
                           "Europe/Berlin'"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "IANA name" in done.stderr and "Traceback" not in done.stderr


def test_the_command_says_what_is_wrong_without_a_traceback(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    done = subprocess.run([sys.executable, "-m", "fmc.central.grafana.dashboards", str(blocker / "sub")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot write the dashboards into" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "fmc.central.grafana.dashboards"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "OUT_DIR" in done.stderr and "Traceback" not in done.stderr
