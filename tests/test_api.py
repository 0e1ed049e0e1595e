"""The REST API (``fmc api``) on a real embedded store seeded with the project's writers, through
the real indicator service: formats (JSON, CSV with BOM and zh/en headers), pagination, ETags,
errors (401, 404, 422, 503, never 500), report writes, and ``serve()`` for real over HTTP.

``tests/test_api_access.py`` checks the scopes, ``tests/test_api_fuzz.py`` hostile input and the
OpenAPI fuzzing. The seed helpers here are shared with them.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import inspect
import io
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute

from fmc.central.api import responses as api_responses
from fmc.central.api.app import create_app
from fmc.central.api.responses import (
    Rendered,
    RenderedBodies,
    accepts_gzip,
    csv_cell,
    etag_matches,
    link_header,
    wants_csv,
)
from fmc.central.config import ApiConfig, load_plan
from fmc.central.keys import KeyStore
from fmc.central.registry import RegistryEntry
from fmc.central.reports import report_points
from fmc.central.service import IndicatorService
from fmc.central.store import Scope
from fmc.cli import api as api_cli
from fmc.cli.plugins import load_central_config
from fmc.core.config import ConfigError
from fmc.core.lineprotocol import encode
from fmc.core.localtime import local_day_start_ns, zone
from fmc.core.points import Point
from fmc.indicators.engine import EnterpriseDay, Period
from fmc.indicators.plan import INDICATORS
from fmc.indicators.pooling import Level
from fmc.indicators.reports import EnterpriseReport
from fmc.plant.rollups import InventoryItem, Site, consumption_daily, enterprise_daily
from fmc.stores.embedded.store import EmbeddedQueryStore, EmbeddedStore
from tests.ports import free_port
from tests.store_backends import Backend, daily_point

PLAN = load_plan()
TZ = "Asia/Shanghai"
YEARS = (2016, 2019)  # the plan's base year and a plan year
PAGE_SIZE_MAX = 500
ROOT = Path(__file__).resolve().parent.parent


# --- the seed: five enterprises in four counties of two provinces, one registry-only ---------------------


@dataclass(frozen=True)
class Shape:
    id: str
    name: str
    region: str
    industry: str
    equipment: int  # in the ledger
    nc: dict[int, int]  # NC equipment per year
    networked: dict[int, int]  # NC equipment networked every day, per year
    kwh: dict[int, float]  # electricity per day
    water_m3: dict[int, float]  # water intake per day
    value_added: dict[int, float]  # yuan, annual report
    employees: float


ENTERPRISES = (
    Shape("91330602A1", "绍兴甲纺织有限公司", "330602", "17", 100, {2016: 40, 2019: 50}, {2016: 20, 2019: 40},
          {2016: 10_000.0, 2019: 8_000.0}, {2016: 300.0, 2019: 240.0}, {2016: 10e6, 2019: 12e6}, 200),
    Shape("91330602B2", "绍兴乙化纤有限公司", "330602", "28", 50, {2016: 10, 2019: 16}, {2016: 5, 2019: 12},
          {2016: 5_000.0, 2019: 5_200.0}, {2016: 100.0, 2019: 90.0}, {2016: 5e6, 2019: 6e6}, 80),
    # names starting with = + - @: stored text that Excel would take for a formula
    Shape("91330603C3", '=HYPERLINK("http://example.invalid","x")', "330603", "17", 40, {2016: 8, 2019: 12},
          {2016: 4, 2019: 10}, {2016: 2_000.0, 2019: 2_100.0}, {2016: 50.0, 2019: 49.0}, {2016: 2e6, 2019: 2.4e6},
          50),
    Shape("91330102D4", "@杭州丙印染有限公司", "330102", "17", 60, {2016: 30, 2019: 33}, {2016: 15, 2019: 30},
          {2016: 6_000.0, 2019: 5_000.0}, {2016: 200.0, 2019: 150.0}, {2016: 8e6, 2019: 9e6}, 120),
    Shape("91320500E5", "-苏州丁纺织有限公司", "320500", "17", 30, {2016: 6, 2019: 9}, {2016: 3, 2019: 9},
          {2016: 1_500.0, 2019: 1_400.0}, {2016: 40.0, 2019: 38.0}, {2016: 1.5e6, 2019: 1.8e6}, 30),
)
# Known from the registry only, without any data: in a province of its own, since a member without a
# figure keeps its groups below min_coverage (never a number from silence).
REGISTRY_ONLY = RegistryEntry("91310104F6", "+上海戊新材料有限公司", "310104", "29")
BY_ID = {e.id: e for e in ENTERPRISES}


@dataclass(frozen=True)
class EquipmentDay:
    equipment: str
    day: date
    good_samples: int
    online_s: float


@dataclass(frozen=True)
class Interval:
    meter: str
    carrier: str
    start_ns: int
    end_ns: int
    amount: float
    covered_ns: int


def days_of(year: int) -> Iterator[date]:
    d = date(year, 1, 1)
    while d.year == year:
        yield d
        d += timedelta(days=1)


def enterprise_points(shape: Shape, years: tuple[int, ...] = YEARS) -> list[Point]:
    """Rollups and reports of one enterprise, made by the project's writers."""
    site = Site(shape.id, shape.region, shape.industry, TZ)
    tz = zone(TZ)
    points: list[Point] = []
    meters = {"el-main": "electricity", "water-in": "water_intake"}
    for year in years:
        inventory = [InventoryItem(f"eq-{i:03d}", nc=i < shape.nc[year]) for i in range(shape.equipment)]
        for day in days_of(year):
            online = [EquipmentDay(f"eq-{i:03d}", day, 100, 3600.0) for i in range(shape.networked[year])]
            points.append(enterprise_daily(day, site, inventory, online))
            start = local_day_start_ns(day, tz)
            end = local_day_start_ns(day + timedelta(days=1), tz)
            intervals = [
                Interval("el-main", "electricity", start, end, shape.kwh[year], end - start),
                Interval("water-in", "water_intake", start, end, shape.water_m3[year], end - start),
            ]
            points.extend(consumption_daily(day, site, intervals, meters))
    reports = [
        EnterpriseReport(enterprise=shape.id, period=str(year), value_added=shape.value_added[year],
                         value_added_comparable=shape.value_added[year], employees_avg=shape.employees,
                         revenue=shape.value_added[year] * 4, rd_expense=shape.value_added[year] * 0.08,
                         gross_output=shape.value_added[year] * 5, new_product_output=shape.value_added[year] * 2)
        for year in years
    ]
    points.extend(report_points(reports, {shape.id: shape.region}, {shape.id: shape.industry}, tz=TZ))
    return points


def write_store(path: Path, shapes: tuple[Shape, ...]) -> Path:
    store = EmbeddedStore(path)
    try:
        points = [p for s in shapes for p in enterprise_points(s)]
        outcome = store.write_lines([encode(p) for p in points])
        assert outcome.refused == []
    finally:
        store.close()
    return path


def registry(shapes: tuple[Shape, ...] = ENTERPRISES, *, extra: bool = True) -> dict[str, RegistryEntry]:
    out = {s.id: RegistryEntry(s.id, s.name, s.region, s.industry) for s in shapes}
    if extra:
        out[REGISTRY_ONLY.enterprise] = REGISTRY_ONLY
    return out


def store_snapshot(path: Path) -> list[tuple]:
    """Every stored point, to check that nothing changed."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(
            "SELECT s.measurement, s.tags, p.ts, p.fields FROM points p JOIN series s ON s.id = p.series_id "
            "ORDER BY s.measurement, s.tags, p.ts"
        ).fetchall()


_TEMPLATE: dict[str, Path] = {}


def seed_template(factory: pytest.TempPathFactory) -> Path:
    """The seeded store file, written once per test session (tests copy it before writing)."""
    if "path" not in _TEMPLATE:
        _TEMPLATE["path"] = write_store(factory.mktemp("seed") / "template.db", ENTERPRISES)
    return _TEMPLATE["path"]


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seed_template(tmp_path_factory)


@dataclass
class Api:
    client: TestClient
    keys: KeyStore
    store_path: Path
    key: dict[str, str]  # scope text -> full key

    def get(self, url: str, scope: str | None = "province", **kwargs: object) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
        if scope is not None:
            headers["Authorization"] = f"Bearer {self.key[scope]}"
        return self.client.get(url, headers=headers, **kwargs)  # type: ignore[arg-type]

    def put(self, url: str, body: object, scope: str | None = "province") -> httpx.Response:
        """PUT ``body`` as JSON (bytes are sent as they are)."""
        headers = {"Authorization": f"Bearer {self.key[scope]}"} if scope is not None else {}
        if isinstance(body, bytes):
            return self.client.put(url, content=body, headers={**headers, "Content-Type": "application/json"})
        return self.client.put(url, json=body, headers=headers)


SCOPES = ("province", "region:33", "region:3306", "region:330602", "enterprise:91330602A1")


def make_api(tmp_path: Path, store_file: Path, shapes: tuple[Shape, ...] = ENTERPRISES, *,
             registry_extra: bool = True, page_size_default: int = 100) -> tuple[TestClient, KeyStore, dict]:
    keys = KeyStore(tmp_path / "keys.db")
    key = {scope: keys.create(scope, f"test {scope}")[1] for scope in SCOPES}
    service = IndicatorService(EmbeddedQueryStore(store_file), PLAN, registry=registry(shapes, extra=registry_extra),
                               revalidate_s=3600)
    cfg = ApiConfig(keys_file=tmp_path / "keys.db", page_size_default=page_size_default, page_size_max=PAGE_SIZE_MAX)
    return TestClient(create_app(service, keys, cfg)), keys, key


@pytest.fixture
def api(tmp_path: Path, seeded_template: Path) -> Iterator[Api]:
    store_file = tmp_path / "store.db"
    shutil.copy(seeded_template, store_file)
    client, keys, key = make_api(tmp_path, store_file)
    with client:
        yield Api(client, keys, store_file, key)
    keys.close()


def parse_csv(resp: httpx.Response) -> list[dict[str, str]]:
    assert resp.content.startswith(b"\xef\xbb\xbf"), "CSV starts with a UTF-8 BOM"
    text = resp.content.decode("utf-8")[1:]
    assert "\r\n" in text and "\n" not in text.replace("\r\n", ""), "CRLF line ends only"
    return list(csv.DictReader(io.StringIO(text, newline="")))


def num(cell: str) -> float | None:
    return None if cell == "" else float(cell)


# --- pure helpers -------------------------------------------------------------------------------------------------


def test_csv_cell_guards_formulas_but_not_numbers() -> None:
    assert csv_cell("=SUM(A1)") == "'=SUM(A1)"
    assert csv_cell("+86 575") == "'+86 575"
    assert csv_cell("-x") == "'-x"
    assert csv_cell("@cmd") == "'@cmd"
    assert csv_cell("\tx") == "'\tx"
    assert csv_cell("绍兴") == "绍兴"
    assert csv_cell(-4.5) == "-4.5"
    assert csv_cell(-3) == "-3"
    assert csv_cell(1234567.25) == "1234567.25"  # no thousands separator
    assert csv_cell(None) == ""
    assert csv_cell(float("nan")) == ""
    assert csv_cell(float("inf")) == ""


def test_negotiation_and_etag_comparison() -> None:
    assert wants_csv(None, "text/csv")
    assert wants_csv(None, "text/csv;q=0.9, application/json;q=0.5")
    assert not wants_csv(None, "application/json, text/csv;q=0.5")
    assert not wants_csv(None, "text/csv;q=0")
    assert not wants_csv(None, "*/*")
    assert not wants_csv(None, None)
    assert wants_csv("csv", "application/json")
    assert not wants_csv("json", "text/csv")
    assert etag_matches('W/"abc"', 'W/"abc"')
    assert etag_matches('"x", W/"abc"', 'W/"abc"')
    assert etag_matches("*", 'W/"abc"')
    assert not etag_matches('W/"abd"', 'W/"abc"')
    assert not etag_matches(None, 'W/"abc"')


def test_link_header_pages() -> None:
    links = link_header("/v1/indicators", [("level", "enterprise"), ("page", "2")], 2, 10, 35)
    assert '</v1/indicators?level=enterprise&page=1&page_size=10>; rel="first"' in links
    assert 'page=1&page_size=10>; rel="prev"' in links
    assert 'page=3&page_size=10>; rel="next"' in links
    assert 'page=4&page_size=10>; rel="last"' in links
    only = link_header("/v1/enterprises", [], 1, 10, 0)
    assert 'rel="next"' not in only and 'rel="prev"' not in only


def test_rendered_bodies_keep_a_province_sized_level_and_stay_bounded() -> None:
    """The county level of a 20,000-enterprise province is 5.4 MB of JSON (bench.province: its
    pooled member ids): kept, a warm request is a look-up. Under 4 MiB per body it was rendered
    again for every request, half a second each, and 50 clients at once waited 35 s."""
    def rendered(n: int, fill: bytes = b"x") -> Rendered:
        return Rendered(fill * n, None, "application/json", {})

    bodies = RenderedBodies()
    county = rendered(5_400_000)
    bodies.remember("county", county)
    assert bodies.get("county") is county
    bodies.remember("huge", rendered(17 << 20))
    assert bodies.get("huge") is None  # one body above the bound is rendered each time, not kept
    for i in range(20):  # 20 × 5.4 MB: more than the 64 MiB in all, the least recently used go
        bodies.remember(f"b{i}", rendered(5_400_000, b"y"))
        bodies.get("county")  # asked all the while: stays
    assert bodies.get("county") is not None and bodies.get("b0") is None and bodies.get("b19") is not None
    assert len(bodies) * 5_400_000 <= 64 << 20


@pytest.mark.parametrize(("header", "gzip_ok"), [
    (None, False), ("", False), ("gzip", True), ("gzip, deflate", True), ("br;q=1.0, gzip;q=0.8", True),
    ("GZIP", True), ("x-gzip", True), ("gzip;q=0", False), ("identity", False), ("*", True), ("*;q=0", False),
    ("*, gzip;q=0", False), ("gzip;q=0, *", False), ("deflate, br", False), ("gzip;q=nonsense", False),
])
def test_accept_encoding_admits_gzip(header: str | None, gzip_ok: bool) -> None:
    assert accepts_gzip(header) is gzip_ok


# --- endpoints ----------------------------------------------------------------------------------------------------


def test_health_needs_no_key(api: Api) -> None:
    r = api.get("/v1/health", scope=None)
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "store": "reachable", "detail": None}


def test_health_and_queries_say_503_when_the_store_is_gone(tmp_path: Path) -> None:
    client, keys, key = make_api(tmp_path, tmp_path / "no-such-store.db", registry_extra=False)
    with client:
        r = client.get("/v1/health")
        assert r.status_code == 503
        assert r.json()["store"] == "unreachable"
        auth = {"Authorization": f"Bearer {key['province']}"}
        r = client.get("/v1/indicators?level=county&period=2019", headers=auth)
        assert r.status_code == 503
        detail = r.json()["detail"]
        assert "store is unreachable" in detail
        assert "Traceback" not in r.text and str(tmp_path) not in r.text  # no trace, no server path
        assert r.headers["Retry-After"]
    keys.close()


def test_targets_with_labels(api: Api) -> None:
    r = api.get("/v1/targets")
    assert r.status_code == 200
    body = r.json()
    assert body["targets"]["base_year"] == 2016
    assert body["targets"]["indicators"]["nc_rate"]["step"] == 2
    labels = {i["indicator"]: i for i in body["indicators"]}
    assert set(labels) == set(INDICATORS)
    assert labels["nc_rate"]["zh"] == "装备数控化率" and labels["nc_rate"]["unit"] == "%"
    rows = parse_csv(api.get("/v1/targets?format=csv&lang=en"))
    assert {r["indicator"] for r in rows} == set(INDICATORS)
    energy_intensity = next(r for r in rows if r["indicator"] == "energy_intensity")
    assert float(energy_intensity["step"]) == -0.04 and energy_intensity["target kind"] == "rate_per_year"


def test_enterprises_list_detail_and_csv(api: Api) -> None:
    r = api.get("/v1/enterprises")
    assert r.status_code == 200
    body = r.json()
    ids = [e["enterprise"] for e in body["items"]]
    assert ids == sorted([*BY_ID, REGISTRY_ONLY.enterprise])
    assert body["total"] == 6 and r.headers["X-Total-Count"] == "6"
    r = api.get("/v1/enterprises?region=3306&industry=17")
    assert [e["enterprise"] for e in r.json()["items"]] == ["91330602A1", "91330603C3"]
    one = api.get("/v1/enterprises/91330602A1").json()
    assert one == {"enterprise": "91330602A1", "name": "绍兴甲纺织有限公司", "region": "330602", "industry": "17"}
    rows = parse_csv(api.get("/v1/enterprises", headers={"Accept": "text/csv"}))
    assert list(rows[0]) == ["企业编号", "企业名称", "区划代码", "行业代码", "行业名称"]
    by_id = {r["企业编号"]: r for r in rows}
    assert by_id["91330602A1"]["行业名称"] == "纺织业"
    # stored names that look like formulas are defused; the JSON keeps them as they are
    assert by_id["91330603C3"]["企业名称"] == "'" + BY_ID["91330603C3"].name
    assert by_id["91330102D4"]["企业名称"] == "'@杭州丙印染有限公司"
    assert by_id["91320500E5"]["企业名称"] == "'-苏州丁纺织有限公司"
    assert by_id[REGISTRY_ONLY.enterprise]["企业名称"] == "'" + REGISTRY_ONLY.name
    assert api.get("/v1/enterprises/91330603C3").json()["name"] == BY_ID["91330603C3"].name
    r = api.get("/v1/enterprises/NOPE")
    assert r.status_code == 404 and "NOPE" in r.json()["detail"]


def test_indicators_json_matches_csv_in_both_languages(api: Api) -> None:
    j = api.get("/v1/indicators?level=county&period=2019")
    assert j.status_code == 200
    body = j.json()
    assert body["level"] == "county" and body["period"] == "2019"
    assert [row["key"] for row in body["items"]] == ["310104", "320500", "330102", "330602", "330603"]
    county = next(row for row in body["items"] if row["key"] == "330602")
    nc = county["indicators"]["nc_rate"]
    # 330602 at the end of 2019: (50 + 16) NC of (100 + 50) equipment
    assert nc["value"] == pytest.approx(66 / 150 * 100)
    assert nc["members"] == 2 and nc["included"] == 2 and nc["unit"] == "%"
    alone = next(row for row in body["items"] if row["key"] == "310104")["indicators"]["nc_rate"]
    assert alone["value"] is None and alone["members"] == 1 and alone["included"] == 0 and alone["rank"] is None
    for lang, cols in (("zh", ("区划代码", "指标代码", "数值", "基期值", "目标值", "排名", "企业数", "达标企业数")),
                       ("en", ("region", "indicator", "value", "baseline", "target", "rank", "members", "met count"))):
        r = api.get(f"/v1/indicators?level=county&period=2019&format=csv&lang={lang}")
        assert r.headers["content-type"].startswith("text/csv")
        assert r.headers["Content-Disposition"] == 'attachment; filename="fmc-indicators-county-2019.csv"'
        rows = parse_csv(r)
        assert len(rows) == len(body["items"]) * len(INDICATORS)  # long format: row × indicator
        region_col, ind_col, value_col, base_col, target_col, rank_col, members_col, met_col = cols
        for line in rows:
            item = next(i for i in body["items"] if i["region"] == line[region_col])
            v = item["indicators"][line[ind_col]]
            assert num(line[value_col]) == v["value"]  # repr round-trips exactly
            assert num(line[base_col]) == v["baseline"]
            assert num(line[target_col]) == v["target"]
            assert num(line[rank_col]) == v["rank"]
            assert num(line[members_col]) == v["members"]
            assert num(line[met_col]) == v["met_count"]


def test_enterprise_indicators_all_fields(api: Api) -> None:
    r = api.get("/v1/enterprises/91330602A1/indicators?period=2019")
    assert r.status_code == 200
    body = r.json()
    assert body["enterprise"]["name"] == "绍兴甲纺织有限公司" and body["period"] == "2019"
    ind = body["indicators"]
    assert set(ind) == set(INDICATORS)
    nc = ind["nc_rate"]
    assert nc["value"] == pytest.approx(50.0) and nc["baseline"] == pytest.approx(40.0)
    assert nc["target"] == pytest.approx(40 + 2 * 3)  # +2 points a year from 2016
    assert nc["status"] == "met" and nc["rank"] is None and nc["members"] is None
    assert nc["avg_annual"] == pytest.approx(10 / 3)
    # energy intensity: 8,000 kWh/day × 0.1229 kgce ÷ 1000 × 365 days ÷ 1,200 (10⁴ yuan)
    ei = ind["energy_intensity"]
    assert ei["value"] == pytest.approx(8_000 * 0.1229 / 1000 * 365 / 1200)
    assert ei["unit"] == "tce/10⁴ yuan"
    assert ind["water_intensity"]["value"] == pytest.approx(240 * 365 / 1200)
    assert ind["labour_productivity"]["value"] == pytest.approx(1200 / 200)
    assert ind["rd_intensity"]["value"] == pytest.approx(2.0)
    only = api.get("/v1/enterprises/91330602A1/indicators?period=2019&indicator=energy").json()
    assert list(only["indicators"]) == ["energy"]
    # known from the registry only: every indicator present, none with a value
    empty = api.get(f"/v1/enterprises/{REGISTRY_ONLY.enterprise}/indicators?period=2019").json()
    assert all(v["value"] is None and v["status"] == "insufficient_data" for v in empty["indicators"].values())
    rows = parse_csv(api.get("/v1/enterprises/91330602A1/indicators?period=2019&format=csv&lang=en"))
    assert {r["indicator"] for r in rows} == set(INDICATORS)
    assert all(r["rank"] == "" for r in rows)


def test_enterprise_level_ranks_and_pooled_extras(api: Api) -> None:
    body = api.get("/v1/indicators?level=enterprise&period=2019&region=33&indicator=nc_rate").json()
    ranks = {row["enterprise"]: row["indicators"]["nc_rate"]["rank"] for row in body["items"]}
    # NC rates 2019: A 50 %, B 32 %, C 30 %, D 55 %
    assert ranks == {"91330102D4": 1, "91330602A1": 2, "91330602B2": 3, "91330603C3": 4}
    assert all(list(row["indicators"]) == ["nc_rate"] for row in body["items"])
    assert body["filters"] == {"region": "33", "industry": None, "enterprise": None, "indicator": "nc_rate"}
    prov = api.get("/v1/indicators?level=province&period=2019").json()["items"]
    assert [row["key"] for row in prov] == ["31", "32", "33"]
    zj = prov[2]["indicators"]["nc_rate"]
    assert zj["members"] == 4 and zj["included"] == 4
    assert zj["assessed"] == 4 and zj["met_count"] + (zj["assessed"] - zj["met_count"]) == 4
    assert zj["met_share"] == pytest.approx(zj["met_count"] / zj["assessed"])
    ind = api.get("/v1/indicators?level=industry&period=2019&region=33").json()["items"]
    assert [(row["region"], row["industry"], row["name"]) for row in ind] == [
        ("33", "17", "纺织业"), ("33", "28", "化学纤维制造业")]


def test_pagination_headers_and_totals(api: Api) -> None:
    seen: list[str] = []
    page = 1
    while True:
        r = api.get(f"/v1/indicators?level=enterprise&period=2019&page={page}&page_size=2")
        body = r.json()
        assert body["total"] == 6 and r.headers["X-Total-Count"] == "6"
        assert len(body["items"]) <= 2
        seen += [row["key"] for row in body["items"]]
        links = r.headers["Link"]
        assert 'rel="last"' in links and "page=3&page_size=2" in links
        if 'rel="next"' not in links:
            break
        page += 1
    assert page == 3 and seen == sorted([*BY_ID, REGISTRY_ONLY.enterprise])
    r = api.get("/v1/indicators?level=enterprise&period=2019&page=9&page_size=2")
    assert r.status_code == 200 and r.json()["items"] == [] and r.json()["total"] == 6
    c = api.get("/v1/indicators?level=enterprise&period=2019&page=2&page_size=2&format=csv")
    assert c.headers["X-Total-Count"] == "6" and 'rel="next"' in c.headers["Link"]
    rows = parse_csv(c)
    assert sorted({r["企业编号"] for r in rows}) == seen[2:4]
    d = api.get("/v1/enterprises?page_size=4&page=2")
    assert d.json()["total"] == 6 and len(d.json()["items"]) == 2
    assert 'rel="prev"' in d.headers["Link"] and 'rel="next"' not in d.headers["Link"]


def links_of(header: str) -> dict[str, str]:
    """A ``Link`` header's URLs by relation."""
    out = {}
    for part in header.split(", "):
        url, rel = part.split("; ")
        out[rel.removeprefix('rel="').removesuffix('"')] = url.strip("<>")
    return out


def test_link_headers_keep_this_requests_format_also_from_the_rendered_bodies(api: Api) -> None:
    """docs/api.md: the links keep "all other parameters". The body a request rendered is kept by
    its ETag and reused; its links were the first request's: a client asking with ?format=csv after
    another asked with Accept: text/csv got a next link without format=csv (JSON, not page 2)."""
    url = "/v1/indicators?level=enterprise&period=2019&page_size=2"
    first = api.get(url, headers={"Accept": "text/csv"})
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/csv")
    b = api.get(f"{url}&format=csv")  # the same ETag: from the rendered bodies
    assert b.headers["content-type"].startswith("text/csv") and b.headers["ETag"] == first.headers["ETag"]
    nxt = links_of(b.headers["link"])["next"]
    assert "format=csv" in nxt, f"next link lost format=csv: {nxt}"
    assert api.get(nxt).headers["content-type"].startswith("text/csv")
    # a 304 carries the links of the request it answers too
    again = api.get(f"{url}&format=csv", headers={"If-None-Match": b.headers["ETag"]})
    assert again.status_code == 304 and links_of(again.headers["link"])["next"] == nxt
    assert again.headers["X-Total-Count"] == "6"


def test_link_headers_keep_this_requests_explicit_period(tmp_path: Path, seeded_template: Path) -> None:
    """A fixed year to date (2019-YTD-06-30) asked after the moving alias (2019-YTD, through
    yesterday: the same body today) had links saying period=2019-YTD: followed after midnight,
    page 2 was another period's."""
    store_file = tmp_path / "store.db"
    shutil.copy(seeded_template, store_file)
    keys = KeyStore(tmp_path / "keys.db")
    key = keys.create("province")[1]
    now = datetime(2019, 7, 1, 4, 0, tzinfo=UTC)  # 12:00 on 1 July in Asia/Shanghai
    service = IndicatorService(EmbeddedQueryStore(store_file), PLAN, registry=registry(), revalidate_s=3600,
                               now=lambda: now)
    cfg = ApiConfig(keys_file=tmp_path / "keys.db", page_size_max=PAGE_SIZE_MAX, page_size_default=100)
    h = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(service, keys, cfg)) as client:
        moving = client.get("/v1/indicators?level=enterprise&period=2019-YTD&page_size=2", headers=h)
        fixed = client.get("/v1/indicators?level=enterprise&period=2019-YTD-06-30&page_size=2", headers=h)
    keys.close()
    assert fixed.json()["period"] == "2019-YTD-06-30" and fixed.headers["ETag"] == moving.headers["ETag"]
    assert "period=2019-YTD&" in links_of(moving.headers["link"])["next"]
    nxt = links_of(fixed.headers["link"])["next"]
    assert "period=2019-YTD-06-30" in nxt, f"next link of a 2019-YTD-06-30 page: {nxt}"


def test_etag_and_304(api: Api) -> None:
    url = "/v1/indicators?level=city&period=2019"
    r = api.get(url)
    etag = r.headers["ETag"]
    assert r.headers["Cache-Control"] == "private, max-age=0, must-revalidate"
    assert r.headers["Vary"] == "Authorization, Accept, Accept-Encoding"
    again = api.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
    # another representation or page has another validator
    other = {api.get(u).headers["ETag"] for u in (url + "&format=csv", url + "&format=csv&lang=en",
                                                    url + "&page_size=1", url + "&indicator=energy")}
    assert etag not in other and len(other) == 4
    assert api.get(url, scope="region:33").headers["ETag"] != etag
    for u in ("/v1/enterprises", "/v1/enterprises/91330602A1", "/v1/targets",
              "/v1/enterprises/91330602A1/reports", "/v1/enterprises/91330602A1/indicators?period=2019"):
        first = api.get(u)
        assert first.status_code == 200 and first.headers["ETag"]
        assert api.get(u, headers={"If-None-Match": first.headers["ETag"]}).status_code == 304
    # new figures: a new ETag, the old one no longer gives 304
    before = api.get("/v1/indicators?level=county&period=2019")
    assert api.put("/v1/enterprises/91330602A1/reports/2019", {"value_added_comparable": 24e6}).status_code == 200
    after = api.get("/v1/indicators?level=county&period=2019", headers={"If-None-Match": before.headers["ETag"]})
    assert after.status_code == 200 and after.headers["ETag"] != before.headers["ETag"]


def test_gzip_for_clients_that_accept_it_fresh_and_from_the_rendered_bodies(api: Api) -> None:
    """A body of a KiB or more goes gzip-compressed to a client that accepts gzip, the first time
    (just rendered) and every time after (kept); the same JSON and CSV come out; without gzip in
    Accept-Encoding, or refused with q=0, the body goes as it is; 304 is unchanged."""
    import gzip as gzip_module

    for url in ("/v1/indicators?level=enterprise&period=2019", "/v1/indicators?level=county&period=2019&format=csv"):
        plain = api.get(url, headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in plain.headers and len(plain.content) >= api_responses.GZIP_MIN_BYTES
        for attempt in range(2):  # rendered now, then from the kept bodies
            raw = api.client.get(url, headers={"Authorization": f"Bearer {api.key['province']}",
                                               "Accept-Encoding": "gzip"})
            assert raw.headers["Content-Encoding"] == "gzip", attempt
            assert raw.content == plain.content  # httpx decodes: the same bytes
            assert raw.headers["ETag"] == plain.headers["ETag"]
        refused = api.get(url, headers={"Accept-Encoding": "gzip;q=0, deflate"})
        assert "Content-Encoding" not in refused.headers and refused.content == plain.content
        assert api.get(url, headers={"If-None-Match": plain.headers["ETag"]}).status_code == 304
    small = api.get("/v1/health", scope=None, headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers
    body = b'{"a":' + b"1" * 5000 + b"}"
    assert gzip_module.decompress(api_responses.gzipped(body) or b"") == body


def test_large_pages_built_off_the_loop_are_the_same(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    urls = ["/v1/indicators?level=enterprise&period=2019", "/v1/indicators?level=county&period=2019&format=csv",
            "/v1/enterprises?format=csv", "/v1/enterprises/91330602A1/reports"]
    inline = [api.get(u).content for u in urls]
    monkeypatch.setattr(api_responses, "OFF_LOOP_ROWS", 0)  # every page through the worker thread
    assert [api.get(u).content for u in urls] == inline


def test_put_report_stores_and_changes_the_figures(api: Api) -> None:
    before = api.get("/v1/enterprises/91330602A1/indicators?period=2019-03").json()["indicators"]
    assert before["labour_productivity"]["value"] is None  # no monthly report yet
    r = api.put("/v1/enterprises/91330602A1/reports/2019-03",
                {"value_added": 1_000_000, "value_added_comparable": 1_000_000, "employees_avg": 200})
    assert r.status_code == 200
    assert r.json() == {"enterprise": "91330602A1", "period": "2019-03",
                        "figures": {"value_added": 1e6, "value_added_comparable": 1e6, "employees_avg": 200.0}}
    after = api.get("/v1/enterprises/91330602A1/indicators?period=2019-03").json()["indicators"]
    assert after["labour_productivity"]["value"] == pytest.approx(100 / 200)  # 10⁴ yuan per person
    # a second write merges: figures not given keep their stored value
    r = api.put("/v1/enterprises/91330602A1/reports/2019-03", {"revenue": 4e6})
    assert r.json()["figures"] == {"value_added": 1e6, "value_added_comparable": 1e6, "employees_avg": 200.0,
                                   "revenue": 4e6}
    reports = api.get("/v1/enterprises/91330602A1/reports?year=2019").json()
    assert [x["period"] for x in reports["items"]] == ["2019", "2019-03"]
    rows = parse_csv(api.get("/v1/enterprises/91330602A1/reports?year=2019&format=csv"))
    assert rows[0]["工业增加值(元)"] == "12000000.0" and rows[1]["主营业务收入(元)"] == "4000000.0"
    assert rows[1]["研发费用(元)"] == ""  # not reported: an empty cell, not 0
    # the CSV reads back with `fmc reports import`'s reader
    from fmc.central.reports import parse_reports_text

    text = api.get("/v1/enterprises/91330602A1/reports?year=2019&format=csv").content.decode("utf-8-sig")
    back = parse_reports_text(text, path=Path("api.csv")).reports
    assert [(b.enterprise, b.period, b.revenue) for b in back] == [("91330602A1", "2019", 48e6),
                                                                   ("91330602A1", "2019-03", 4e6)]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "no figures"),
        ({"value_added": -1}, "value_added"),
        ({"value_added": "12 万元"}, "value_added"),
        ({"enterprise": "91330602B2", "value_added": 1}, "enterprise"),
        (b'{"value_added": 1e400}', "value_added"),
        (b'{"value_added": NaN}', "value_added"),
        (b'{"value_added": 1', "body"),
        (b"", "body"),
        ([1, 2], "body"),
    ],
)
def test_put_report_rejects_bad_bodies(api: Api, body: object, fragment: str) -> None:
    before = store_snapshot(api.store_path)
    r = api.put("/v1/enterprises/91330602A1/reports/2019-04", body)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]
    assert store_snapshot(api.store_path) == before


@pytest.mark.parametrize(
    ("body", "field", "limit"),
    [
        ({"value_added": 1.7e308}, "value_added", "10,000,000,000,000 yuan"),
        ({"employees_avg": 1e300, "revenue": 4e6}, "employees_avg", "2,000,000 persons"),
        ({"gross_output": 1.00001e13}, "gross_output", "10,000,000,000,000 yuan"),
    ],
)
def test_put_report_above_the_plausibility_ceiling_is_refused_naming_field_and_limit(
    api: Api, body: dict[str, float], field: str, limit: str
) -> None:
    # stored, 1.7e308 yuan made the county's pooled value added inf and its intensities 0
    before = store_snapshot(api.store_path)
    r = api.put("/v1/enterprises/91330602A1/reports/2019-04", body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert f"body field '{field}'" in detail and limit in detail, detail
    assert store_snapshot(api.store_path) == before
    # the ceilings themselves are figures
    r = api.put("/v1/enterprises/91330602A1/reports/2019-04", {field: 1e13 if field != "employees_avg" else 2e6})
    assert r.status_code == 200, r.text


def test_put_report_for_unknown_enterprise_is_404(api: Api) -> None:
    r = api.put("/v1/enterprises/91339999Z9/reports/2019", {"value_added": 1})
    assert r.status_code == 404 and "91339999Z9" in r.json()["detail"]


def test_errors_are_sentences(api: Api) -> None:
    r = api.get("/v1/indicators?level=county&period=2019-13")
    assert r.status_code == 422
    assert r.json()["detail"].startswith("query parameter 'period': a year (2019)")
    r = api.get("/v1/indicators?level=county")
    assert r.status_code == 422 and "'period': it is required" in r.json()["detail"]
    r = api.get("/v1/indicators?level=county&period=2019-YTD-02-30")
    assert r.status_code == 422 and "no such day" in r.json()["detail"]
    r = api.get("/v1/indicators?level=county&period=2019&regoin=3306")
    assert r.status_code == 422 and "unknown query parameter 'regoin'" in r.json()["detail"]
    r = api.get("/v1/indicators?level=county&period=2019&region=33&region=32")
    assert r.status_code == 422 and "more than once" in r.json()["detail"]
    r = api.get(f"/v1/indicators?level=county&period=2019&page_size={PAGE_SIZE_MAX + 1}")
    assert r.status_code == 422 and "page_size" in r.json()["detail"]
    r = api.get("/v1/indicators?level=province&period=2019&region=3306")
    assert r.status_code == 422 and "not that province's figure" in r.json()["detail"]
    r = api.get("/v1/indicators?level=county&period=2019&enterprise=91330602A1")
    assert r.status_code == 422 and "level=enterprise only" in r.json()["detail"]
    r = api.get("/v1/indicators?level=industry&period=2019&industry=1711")
    assert r.status_code == 422 and "divisions" in r.json()["detail"]
    r = api.get("/v1/nothing")
    assert r.status_code == 404 and "/docs" in r.json()["detail"]
    r = api.client.delete("/v1/enterprises/91330602A1")
    assert r.status_code == 405 and "DELETE" in r.json()["detail"] and r.headers["Allow"] == "GET, HEAD"


def test_head_is_answered_like_get_with_the_same_key_and_no_body(api: Api) -> None:
    """RFC 9110 9.1: a general-purpose server supports GET and HEAD. /v1/health is for load balancers
    and health checks, and monitors that probe with HEAD (curl -I, uptime checkers) saw a 405."""
    head = api.client.head("/v1/health")
    assert head.status_code == 200 and head.content == b"", (head.status_code, head.headers.get("allow"))
    auth = {"Authorization": f"Bearer {api.key['province']}"}
    for url in ("/v1/targets", "/v1/enterprises", "/v1/enterprises/91330602A1",
                "/v1/enterprises/91330602A1/indicators?period=2019", "/v1/indicators?level=county&period=2019",
                "/v1/enterprises/91330602A1/reports"):
        get = api.client.get(url, headers=auth)
        head = api.client.head(url, headers=auth)
        assert (head.status_code, head.content) == (200, b""), url
        assert {k: v for k, v in head.headers.items()} == {k: v for k, v in get.headers.items()}, url
        assert api.client.head(url, headers={**auth, "If-None-Match": get.headers["ETag"]}).status_code == 304
    assert api.client.head("/v1/enterprises").status_code == 401  # the same key as GET
    assert api.client.head("/v1/enterprises?regoin=33", headers=auth).status_code == 422
    own = {"Authorization": f"Bearer {api.key['enterprise:91330602A1']}"}
    assert api.client.head("/v1/enterprises/91330602B2", headers=own).status_code == 403
    put_only = api.client.head("/v1/enterprises/91330602A1/reports/2019", headers=auth)
    assert put_only.status_code == 405 and put_only.headers["Allow"] == "PUT"
    # the OpenAPI description lists each GET once, without a HEAD twin
    spec = api.client.get("/openapi.json").json()
    assert all("head" not in ops for ops in spec["paths"].values())


def test_missing_and_bad_keys_are_401(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic dXNlcjpwYXNz"},
                    {"Authorization": "Bearer fmc_000000000000_" + "x" * 43},
                    # the last character changed (never to itself: that would be the valid key)
                    {"Authorization": "Bearer " + api.key["province"][:-1]
                     + ("A" if not api.key["province"].endswith("A") else "B")}):
        r = api.client.get("/v1/enterprises", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.json()["detail"]


def test_openapi_and_docs_are_served(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {"/v1/health", "/v1/targets", "/v1/enterprises", "/v1/enterprises/{enterprise_id}",
            "/v1/enterprises/{enterprise_id}/indicators", "/v1/indicators",
            "/v1/enterprises/{enterprise_id}/reports", "/v1/enterprises/{enterprise_id}/reports/{period}"} <= paths
    params = {p["name"]: p for p in spec["paths"]["/v1/indicators"]["get"]["parameters"]}
    assert params["page_size"]["schema"]["maximum"] == PAGE_SIZE_MAX
    assert api.client.get("/docs").status_code == 200


def test_dependencies_and_endpoints_run_on_the_event_loop(api: Api) -> None:
    """FastAPI runs a plain ``def`` dependency or endpoint in a worker thread: a hop per request
    that costs more than a warm answer. Every one is ``async``."""

    def calls(dependant: Dependant) -> Iterator[Callable[..., object]]:
        if dependant.call is not None:
            yield dependant.call
        for sub in dependant.dependencies:
            yield from calls(sub)

    def api_routes(routes: list[BaseRoute]) -> Iterator[APIRoute]:
        for route in routes:
            if isinstance(route, APIRoute):
                yield route
            included = getattr(route, "original_router", None)  # FastAPI keeps an included router whole
            if included is not None:
                yield from api_routes(included.routes)

    routes = list(api_routes(api.client.app.routes))  # type: ignore[attr-defined]
    assert len(routes) == 8 + 7  # and a HEAD route for each GET one
    for route in routes:
        for call in calls(route.dependant):
            on_loop = inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__)
            assert on_loop, (route.path, call)


def test_two_apps_in_one_process_share_nothing(tmp_path: Path, seeded_template: Path) -> None:
    """Each app has its own service, keys, configuration and rendered bodies."""
    made = []
    for name, page_size_max in (("a", 500), ("b", 70)):
        (tmp_path / name).mkdir()
        shutil.copy(seeded_template, tmp_path / name / "store.db")
        keys = KeyStore(tmp_path / name / "keys.db")
        key = keys.create("province", name)[1]
        service = IndicatorService(EmbeddedQueryStore(tmp_path / name / "store.db"), PLAN, registry=registry(),
                                   revalidate_s=3600)
        cfg = ApiConfig(keys_file=tmp_path / name / "keys.db", page_size_default=page_size_max // 10,
                        page_size_max=page_size_max)
        made.append((create_app(service, keys, cfg), keys, {"Authorization": f"Bearer {key}"}))
    (app_a, keys_a, auth_a), (app_b, keys_b, auth_b) = made
    try:
        for app, page_size_max in ((app_a, 500), (app_b, 70)):
            params = {p["name"]: p for p in app.openapi()["paths"]["/v1/indicators"]["get"]["parameters"]}
            assert params["page_size"]["schema"]["maximum"] == page_size_max
            assert params["page_size"]["schema"]["default"] == page_size_max // 10
        with TestClient(app_a) as a, TestClient(app_b) as b:
            url = "/v1/indicators?level=county&period=2019"
            assert a.get(url, headers=auth_a).status_code == 200
            assert a.get(url, headers=auth_a).status_code == 200  # warm: from a's rendered bodies
            assert len(app_a.state.api.bodies) == 1 and len(app_b.state.api.bodies) == 0
            assert a.get(url, headers=auth_b).status_code == 401 and b.get(url, headers=auth_a).status_code == 401
            assert b.get(url + "&page_size=71", headers=auth_b).status_code == 422
            assert a.get(url + "&page_size=71", headers=auth_a).status_code == 200
    finally:
        keys_a.close()
        keys_b.close()


def test_a_page_size_default_above_page_size_max_is_refused_with_the_fix(tmp_path: Path) -> None:
    """An operator who lowers only page_size_max (to 500, the default page_size_default staying
    1000) would serve pages without page_size larger than "the largest page_size accepted", with
    Link headers the same server refuses (422). Refused when central.toml is loaded, and for an
    ApiConfig made directly."""
    with pytest.raises(ValueError, match="page_size_default"):
        ApiConfig(keys_file=tmp_path / "keys.db", page_size_max=4)
    (tmp_path / "central.toml").write_text(
        '[store]\ntype = "embedded"\npath = "store.db"\n[api]\npage_size_max = 500\n', encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_central_config(tmp_path / "central.toml")
    assert e.value.problems == [("api", "page_size_default (1000) is larger than page_size_max (500), the largest "
                                 "page_size accepted: set page_size_default = 500 or less (unset, it is 1000), "
                                 "or raise page_size_max", "")]
    assert ApiConfig(page_size_default=500, page_size_max=500).page_size_default == 500  # equal is fine


# --- serve() for real -------------------------------------------------------------------------------------------


RUN_API = textwrap.dedent(
    """
    import argparse, sys
    from fmc.cli import api, keys
    parser = argparse.ArgumentParser(prog="fmc")
    sub = parser.add_subparsers(dest="command")
    api.add_parser(sub)
    keys.add_parser(sub)
    args = parser.parse_args(sys.argv[1:])
    sys.exit(args.handler(args))
    """
)


def fmc(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUN_API, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_serve_for_real_and_stop_on_sigterm(tmp_path: Path, seeded_template: Path) -> None:
    shutil.copy(seeded_template, tmp_path / "store.db")
    port = free_port()
    (tmp_path / "central.toml").write_text(textwrap.dedent(
        f"""
        [store]
        type = "embedded"
        path = "store.db"
        [api]
        host = "127.0.0.1"
        port = {port}
        keys_file = "keys.db"
        [log]
        level = "warning"
        """
    ), encoding="utf-8")
    created = fmc("keys", "create", "-c", "central.toml", "--scope", "region:3306", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    proc = subprocess.Popen([sys.executable, "-c", RUN_API, "api", "-c", "central.toml"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "fmc api did not come up within 30 s"
            time.sleep(0.1)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            r = http.get("/v1/indicators", params={"level": "county", "period": "2019"})
            assert r.status_code == 200
            assert [row["key"] for row in r.json()["items"]] == ["330602", "330603"]
            assert "server" not in r.headers
            r = http.get("/v1/indicators", params={"level": "city", "period": "2019", "format": "csv"})
            assert r.content.startswith(b"\xef\xbb\xbf") and "3306" in r.text and "3301" not in r.text
            assert http.get("/v1/indicators", params={"level": "province", "period": "2019"}).status_code == 403
        assert httpx.get(f"{base}/v1/enterprises").status_code == 401
        # HEAD over the wire: the status and headers of a GET, no body bytes after them
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"HEAD /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := raw.recv(65536):
                answer += chunk
        head, _, after = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: " in head.lower() and after == b"", answer
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert key not in err and key not in out  # the key is never logged


def test_api_command_bad_config_and_busy_port(tmp_path: Path) -> None:
    r = fmc("api", "-c", "missing.toml", cwd=tmp_path)
    assert r.returncode == 2 and "missing.toml" in r.stderr and "Traceback" not in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "central.toml").write_text(
            f'[store]\ntype = "embedded"\npath = "store.db"\n[api]\nport = {port}\n', encoding="utf-8")
        r = fmc("api", "-c", "central.toml", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "could not start" in r.stderr and "Traceback" not in r.stderr


def test_module_import_stays_light() -> None:
    code = ("import sys, fmc.central.api.app, fmc.central.keys; "
            "print('fastapi' in sys.modules, 'uvicorn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_parser_registration() -> None:
    parser = argparse.ArgumentParser(prog="fmc")
    sub = parser.add_subparsers(dest="command")
    api_cli.add_parser(sub)
    args = parser.parse_args(["api", "-c", "central.toml", "--port", "9000"])
    assert args.handler is api_cli.api_main and args.port == 9000 and args.host is None


def test_the_reports_of_an_enterprise_that_moved_follow_the_period_end_like_its_indicators(
    tmp_path: Path, seeded_template: Path
) -> None:
    moved = "91330603M7"
    figures = dict(equipment=40, nc={2016: 8, 2019: 12, 2020: 12}, networked={2016: 4, 2019: 10, 2020: 10},
                   kwh={2016: 2_000.0, 2019: 2_100.0, 2020: 2_100.0}, water_m3={2016: 50.0, 2019: 49.0, 2020: 49.0},
                   value_added={2016: 2e6, 2019: 2.4e6, 2020: 2.4e6}, employees=50)
    before_move = Shape(moved, "越城迁移企业有限公司", "330603", "17", **figures)  # 2016-2019 in 330603
    after_move = Shape(moved, "越城迁移企业有限公司", "330602", "17", **figures)  # from 2020 in 330602
    store_file = tmp_path / "store.db"
    shutil.copy(seeded_template, store_file)
    writer = EmbeddedStore(store_file)
    try:
        pts = enterprise_points(before_move, (2016, 2019)) + enterprise_points(after_move, (2020,))
        assert writer.write_lines([encode(p) for p in pts]).refused == []
    finally:
        writer.close()
    client, keys, _ = make_api(tmp_path, store_file, (*ENTERPRISES, after_move))
    old_county = {"Authorization": f"Bearer {keys.create('region:330603', 'old county')[1]}"}
    new_county = {"Authorization": f"Bearer {keys.create('region:330602', 'new county')[1]}"}
    with client:
        # the documented rule: for 2019 the enterprise belongs to 330603 (the region of the period's end)
        assert client.get(f"/v1/enterprises/{moved}/indicators?period=2019", headers=old_county).status_code == 200
        assert client.get(f"/v1/enterprises/{moved}/indicators?period=2019", headers=new_county).status_code == 403
        # its 2019 reports too (they went to the county it moved to: its latest region)
        r = client.get(f"/v1/enterprises/{moved}/reports?year=2019", headers=new_county)
        old = client.get(f"/v1/enterprises/{moved}/reports?year=2019", headers=old_county)
        # and only the old county may rewrite the 2019 report its 2019 figures are made of
        put = client.put(f"/v1/enterprises/{moved}/reports/2019", json={"value_added": 1}, headers=new_county)
        # over all years each county reads the years the enterprise was its own
        everything_new = client.get(f"/v1/enterprises/{moved}/reports", headers=new_county)
        everything_old = client.get(f"/v1/enterprises/{moved}/reports", headers=old_county)
        put_old = client.put(f"/v1/enterprises/{moved}/reports/2019", json={"employees_avg": 51}, headers=old_county)
    keys.close()
    assert (r.status_code, old.status_code, put.status_code) == (403, 200, 403), (
        f"reports 2019: new county {r.status_code} {r.text[:160]}; old county {old.status_code}; "
        f"PUT 2019 by the new county {put.status_code}")
    assert [i["period"] for i in old.json()["items"]] == ["2019"]
    assert [i["period"] for i in everything_new.json()["items"]] == ["2020"]
    assert [i["period"] for i in everything_old.json()["items"]] == ["2016", "2019"]
    assert put_old.status_code == 200


@pytest.mark.parametrize(("before", "after", "stored_under"), [
    ("330603", "330602", "330603"),  # imported in 2019 (the region of the period's end); moved to a lower code
    ("330602", "330603", "330603"),  # imported after the move by a version that used the latest region
], ids=["stored-by-the-period-end", "stored-by-the-latest-region"])
async def test_a_report_corrected_after_the_enterprise_moved_is_the_one_stored_and_served(
    backend: Backend, tmp_path: Path, before: str, after: str, stored_under: str
) -> None:
    """Before: the correction was written under the latest region (a series beside the stored one), and
    the stores merged the two in series order, not in the order of writing (InfluxDB: by series key, so a
    move to a lower county code kept the old figure, and the PUT answered it)."""
    moved = "91330603M7"
    backend.ingest([
        daily_point(Site(moved, before, "17"), EnterpriseDay(date(2019, 12, 31), 10, 5, 0.0, 0.0, 5, 5)),
        daily_point(Site(moved, after, "17"), EnterpriseDay(date(2020, 6, 30), 10, 5, 0.0, 0.0, 5, 5)),
        *report_points([EnterpriseReport(enterprise=moved, period="2019", value_added=10e6, employees_avg=100)],
                       {moved: stored_under}, {moved: "17"}, tz=TZ),
    ])
    service = IndicatorService(backend.open_store(), PLAN, revalidate_s=3600,
                               now=lambda: datetime(2021, 3, 1, tzinfo=UTC))
    keys = KeyStore(tmp_path / "keys.db")
    headers = {"Authorization": f"Bearer {keys.create('province', 'statistics')[1]}"}

    def correct() -> tuple[httpx.Response, httpx.Response]:
        with TestClient(create_app(service, keys, ApiConfig(keys_file=tmp_path / "keys.db"))) as client:
            put = client.put(f"/v1/enterprises/{moved}/reports/2019", json={"value_added": 12e6}, headers=headers)
            return put, client.get(f"/v1/enterprises/{moved}/reports?year=2019", headers=headers)

    put, got = await asyncio.to_thread(correct)
    keys.close()
    assert put.status_code == 200, put.text
    assert put.json()["figures"] == {"value_added": 12e6, "employees_avg": 100.0}, f"PUT answered {put.json()}"
    assert got.json()["items"][0]["figures"]["value_added"] == 12e6, f"GET answered {got.json()}"
    # the correction is stored under the region of the period's end, where 2019 is pooled
    store = backend.open_store()
    try:
        stored = await store.report_points([moved], 2019, 2019)
    finally:
        await store.aclose()
    assert before in {tags["region"] for tags, _ in stored[(moved, "2019")]}

# --- the service's cached figures stay true to the store ---------------------------------------------------------


class GatedStore:
    """The embedded query store; once armed, the next reports() read waits, after reading, until released."""

    def __init__(self, inner: EmbeddedQueryStore) -> None:
        self.inner = inner
        self.timezone = inner.timezone
        self.armed = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def reports(self, *args, **kwargs):
        out = await self.inner.reports(*args, **kwargs)
        if self.armed:
            self.armed = False
            self.entered.set()
            await self.release.wait()
        return out


def _row(rows, key):
    return next(r for r in rows if r.key == key)


def _gated_service(tmp_path: Path, seeded_template: Path) -> tuple[Path, GatedStore, IndicatorService]:
    """A copy of the seeded store, gated, and a service on it."""
    store_file = tmp_path / "store.db"
    shutil.copy(seeded_template, store_file)
    store = GatedStore(EmbeddedQueryStore(store_file))
    return store_file, store, IndicatorService(store, PLAN, registry=registry(), revalidate_s=3600)  # type: ignore[arg-type]


async def _fresh_value(store_file: Path, level: Level, period: Period, key: str, indicator: str) -> float | None:
    """The figure a new service (nothing cached) gives."""
    fresh = IndicatorService(EmbeddedQueryStore(store_file), PLAN, registry=registry(), revalidate_s=3600)
    try:
        return _row((await fresh.indicators(level, period, Scope())).rows, key).results[indicator].value
    finally:
        await fresh.aclose()


async def test_a_report_put_during_a_computation_is_not_undone_by_it(tmp_path: Path, seeded_template: Path) -> None:
    store_file, store, service = _gated_service(tmp_path, seeded_template)
    period = service.parse_period("2019")
    store.armed = True
    reader = asyncio.create_task(service.indicators("enterprise", period, Scope()))  # a GET under way
    await store.entered.wait()  # it has read the reports, before the PUT below
    await service.put_report(EnterpriseReport(enterprise="91330602A1", period="2019", value_added=24e6,
                                              value_added_comparable=24e6))
    store.release.set()
    await reader
    # the PUT has returned: a GET now must see the new value added (12e6 -> 24e6, 200 employees)
    after = await service.indicators("enterprise", period, Scope())
    lp = _row(after.rows, "91330602A1").results["labour_productivity"].value
    want = await _fresh_value(store_file, "enterprise", period, "91330602A1", "labour_productivity")
    await service.aclose()
    assert want == pytest.approx(2400 / 200)
    assert lp == pytest.approx(want), f"after the PUT the service still serves {lp} (pre-PUT), not {want}"


async def test_a_report_put_during_a_revalidation_is_not_undone_by_it(tmp_path: Path, seeded_template: Path) -> None:
    _, store, service = _gated_service(tmp_path, seeded_template)
    period = service.parse_period("2019")
    await service.indicators("enterprise", period, Scope())
    store.armed = True
    reval = asyncio.create_task(service.revalidate())
    await store.entered.wait()
    await service.put_report(EnterpriseReport(enterprise="91330602A1", period="2019", value_added=24e6,
                                              value_added_comparable=24e6))
    mid = await service.indicators("enterprise", period, Scope())  # a GET after the PUT: the new figure
    mid_lp = _row(mid.rows, "91330602A1").results["labour_productivity"].value
    store.release.set()
    await reval
    after = await service.indicators("enterprise", period, Scope())
    lp = _row(after.rows, "91330602A1").results["labour_productivity"].value
    await service.aclose()
    assert mid_lp == pytest.approx(2400 / 200)
    assert lp == pytest.approx(2400 / 200), f"after revalidation the pre-PUT figure {lp} is back (was {mid_lp})"


async def test_revalidation_sees_a_revision_that_changes_only_a_group(
    tmp_path: Path, seeded_template: Path
) -> None:
    store_file = tmp_path / "store.db"
    shutil.copy(seeded_template, store_file)

    def write(report: EnterpriseReport) -> None:  # what `fmc reports import` (another process) does
        writer = EmbeddedStore(store_file)
        try:
            pts = report_points([report], {report.enterprise: "330602"}, {report.enterprise: "17"}, tz=TZ)
            assert writer.write_lines([encode(p) for p in pts]).refused == []
        finally:
            writer.close()

    write(EnterpriseReport(enterprise="91330602B2", period="2019", rd_expense=0.96e6))  # B2: 4 % of 24e6
    service = IndicatorService(EmbeddedQueryStore(store_file), PLAN, registry=registry(), revalidate_s=3600)
    period = service.parse_period("2019")
    before = await service.indicators("county", period, Scope())
    county_before = _row(before.rows, "330602").results["rd_intensity"].value
    # `fmc reports import` (another process): 91330602A1's 2019 revenue and R&D expense both revised x2
    # (revenue 48e6 -> 96e6, R&D 0.96e6 -> 1.92e6: its own R&D intensity stays 2 %)
    write(EnterpriseReport(enterprise="91330602A1", period="2019", revenue=96e6, rd_expense=1.92e6))
    await service.revalidate()  # "a report imported with fmc reports import shows up at the next revalidation"
    after = await service.indicators("county", period, Scope())
    county_after = _row(after.rows, "330602").results["rd_intensity"].value
    want = await _fresh_value(store_file, "county", period, "330602", "rd_intensity")
    await service.aclose()
    # (0.96 + 0.96) / (48 + 24) before; (1.92 + 0.96) / (96 + 24) after
    assert county_before == pytest.approx(100 * 1.92 / 72)
    assert want == pytest.approx(100 * 2.88 / 120)
    assert county_after == pytest.approx(want), (
        f"county 330602 still {county_after} after revalidation (etag same: {before.etag == after.etag}); "
        f"a fresh service says {want}")


async def test_one_computation_per_key_however_many_ask_and_its_lock_goes_after(
    tmp_path: Path, seeded_template: Path
) -> None:
    """Requests for one (period, scope) at once share one computation; a waiter that gives up
    (a client gone) takes nothing with it; once none holds or waits for the key, its lock is gone."""
    store_file = tmp_path / "store.db"
    shutil.copy(seeded_template, store_file)
    service = IndicatorService(EmbeddedQueryStore(store_file), PLAN, registry=registry(), revalidate_s=3600)
    computed: list[tuple[Period, Scope]] = []
    gate = asyncio.Event()
    compute = service._compute

    async def gated(period: Period, scope: Scope) -> object:
        computed.append((period, scope))
        await gate.wait()
        return await compute(period, scope)

    service._compute = gated  # type: ignore[method-assign]
    period, scope = service.parse_period("2019"), Scope(enterprises=("91330602A1",))
    asking = [asyncio.create_task(service.indicators("enterprise", period, scope)) for _ in range(5)]
    while not computed:
        await asyncio.sleep(0)
    for _ in range(5):  # the others reach the lock
        await asyncio.sleep(0)
    asking[-1].cancel()
    gate.set()
    answers = await asyncio.gather(*asking[:-1])
    assert computed == [(period, scope)] and len({a.etag for a in answers}) == 1
    assert service._locks == {}
    # asked again: from the figures kept, a lock for the while only
    assert (await service.indicators("enterprise", period, scope)).etag == answers[0].etag
    assert computed == [(period, scope)] and service._locks == {}
    await service.aclose()


def test_per_request_locks_stay_bounded_like_the_figures_they_guard(tmp_path: Path, seeded_template: Path) -> None:
    """One lock per (period, scope) ever asked for was kept while the figures it guards are bounded
    (max_entries): a key asking for a year to date through each day, × its enterprises, × filters,
    grew a long-running fmc api without bound."""
    store_file = tmp_path / "store.db"
    shutil.copy(seeded_template, store_file)
    keys = KeyStore(tmp_path / "keys.db")
    key = keys.create("enterprise:91330602A1")[1]
    service = IndicatorService(EmbeddedQueryStore(store_file), PLAN, registry=registry(), revalidate_s=3600,
                               max_entries=8)
    cfg = ApiConfig(keys_file=tmp_path / "keys.db", page_size_max=PAGE_SIZE_MAX, page_size_default=100)
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(service, keys, cfg)) as client:
        day = date(2019, 1, 31)
        for _ in range(120):
            r = client.get(f"/v1/enterprises/91330602A1/indicators?period=2019-YTD-{day:%m-%d}&indicator=energy",
                           headers=headers)
            assert r.status_code == 200, r.text
            day += timedelta(days=1)
        assert len(service._figures) <= 8
        assert len(service._locks) == 0, f"{len(service._locks)} locks kept for {len(service._figures)} entries"
    keys.close()
