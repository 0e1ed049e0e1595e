"""InfluxQueryStore on a real InfluxDB 1.6: quoting against hostile values, what goes over the wire,
errors (down, wrong database, credentials, 4xx/5xx, garbage) and retention policies. The contract
shared with the embedded store is in ``tests/test_store_contract.py``."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import date

import httpx
import pytest

from fmc.central.materialize import indicator_points
from fmc.central.store import Scope, StoreQueryError, series_digest
from fmc.core.lineprotocol import encode
from fmc.core.localtime import local_day_start_ns, zone
from fmc.core.points import Point
from fmc.indicators.engine import IndicatorResult, Period
from fmc.indicators.pooling import GroupRow
from fmc.plant.rollups import Site
from fmc.stores.influxdb.config import InfluxDBSink
from fmc.stores.influxdb.query import InfluxQueryStore, quote_ident, quote_literal, regex_prefixes
from tests.faultproxy import Close, FaultProxy, Forward, Respond, Stall
from tests.ports import free_port
from tests.servers.influxdb import InfluxDBServer

TZ = "Asia/Shanghai"
YEAR = (date(2019, 1, 1), date(2019, 12, 31))

# Strings an attacker (or a careless import) could put into an id, a tag or a name: quotes of both
# kinds, statement separators, comments, InfluxQL keywords, regex metacharacters, unicode.
HOSTILE = [
    "x' OR enterprise =~ /.*/ OR enterprise = 'y",
    "a'; DROP DATABASE fmc; --",
    'double "quoted" name',
    "semi;colon;/*comment*/",
    "SELECT * FROM enterprise_daily",
    ".*",
    "^(17|18)$[a-z]+?{2}\\d",
    "slash/in/the/middle/",
    "示范纺织厂 (绍兴) 有限公司",
    "emoji 🧵 and tab\tinside",
    "trailing backslash \\",
    "back\\'slash quote",
    "new\nline",
]
# what line protocol can carry as a tag value (no control characters, no backslash)
HOSTILE_TAGS = [h for h in HOSTILE if "\\" not in h and "\n" not in h and "\t" not in h]


def make_store(url: str, database: str, **settings: object) -> InfluxQueryStore:
    return InfluxQueryStore(InfluxDBSink(type="influxdb", url=url, database=database, **settings), timezone=TZ)


def write_points(server: InfluxDBServer, db: str, points: list[Point], rp: str | None = None) -> None:
    params = {"db": db, "precision": "ns"} | ({"rp": rp} if rp else {})
    response = httpx.post(f"{server.url}/write", params=params,
                          content="\n".join(encode(p) for p in points).encode(), timeout=10.0)
    assert response.status_code == 204, response.text


def daily(site: Site, day: date, total: int = 10, nc: int = 4) -> Point:
    fields = {"equipment_total": total, "equipment_nc": nc, "asset_value_total": 1.5, "asset_value_nc": 0.5,
              "equipment_networked": 3, "nc_equipment_networked": 2}
    return Point("enterprise_daily", site.tags(), fields, local_day_start_ns(day, zone(TZ)))


@pytest.fixture
async def store_db(
    influx_db: tuple[InfluxDBServer, str],
) -> AsyncIterator[tuple[InfluxQueryStore, InfluxDBServer, str]]:
    server, db = influx_db
    store = make_store(server.url, db)
    yield store, server, db
    await store.aclose()


@pytest.fixture
def proxy(influxdb: InfluxDBServer) -> Iterator[FaultProxy]:
    p = FaultProxy(influxdb.url).start()
    yield p
    p.stop()


def bypass(**values: object) -> Scope:
    """A Scope carrying values its validation would refuse: as if a bug let them past it."""
    scope = Scope()
    for name, value in values.items():
        object.__setattr__(scope, name, value)
    return scope


# --- quoting ------------------------------------------------------------------------------------------


def test_quoting_refuses_what_influxql_cannot_carry() -> None:
    assert quote_literal("it's") == "'it\\'s'"
    assert quote_literal("a\\b\nc") == "'a\\\\b\\nc'"
    assert quote_ident('say "hi"') == '"say \\"hi\\""'
    assert quote_ident("select") == '"select"'  # a keyword as a name stays a name
    for bad in ("nul\x00byte", "carriage\rreturn"):
        with pytest.raises(ValueError, match="cannot carry"):
            quote_literal(bad)
        with pytest.raises(ValueError, match="cannot carry"):
            quote_ident(bad)
        with pytest.raises(ValueError, match="cannot carry"):
            regex_prefixes([bad])
    assert regex_prefixes(["3306"]) == "/^(?:3306)/"
    assert "/" not in regex_prefixes(["a/b"])[1:-1]  # never a second delimiter


def test_quoted_values_round_trip_through_a_real_server(influx_db: tuple[InfluxDBServer, str]) -> None:
    """Every hostile string, stored, is found by exactly its own quoted literal, identifier or prefix."""
    server, db = influx_db
    points = [Point("probe", {"tag": h, "n": str(i)}, {"text": h, "i": i}, 1_000 + i)
              for i, h in enumerate(HOSTILE_TAGS)]
    # string fields carry backslashes and tabs too (not newlines: line protocol has no escape for them)
    carried = [h for h in HOSTILE if "\n" not in h]
    points += [Point("probe", {"tag": "plain", "n": f"f{i}"}, {"text": h, "i": 100 + i}, 5_000 + i)
               for i, h in enumerate(carried)]
    weird = 'measure "m"; DROP'
    points.append(Point(weird, {"tag": "x"}, {"i": 7}, 1))
    write_points(server, db, points)
    for i, h in enumerate(HOSTILE_TAGS):
        rows = server.select(db, f"SELECT i FROM probe WHERE \"tag\" = {quote_literal(h)}")
        assert [r["i"] for r in rows] == [i], h
        prefixed = server.select(db, f"SELECT i FROM probe WHERE \"tag\" =~ {regex_prefixes([h])}")
        assert {r["i"] for r in prefixed} == {j for j, other in enumerate(HOSTILE_TAGS) if other.startswith(h)}, h
    for i, h in enumerate(carried):
        rows = server.select(db, f"SELECT i FROM probe WHERE text = {quote_literal(h)} AND \"tag\" = 'plain'")
        assert [r["i"] for r in rows] == [100 + i], h
    # a newline in a literal parses (as \n) and matches nothing stored
    assert server.select(db, f"SELECT i FROM probe WHERE text = {quote_literal('new' + chr(10) + 'line')}") == []
    assert [r["i"] for r in server.select(db, f"SELECT i FROM {quote_ident(weird)}")] == [7]
    assert db in {r["name"] for r in server.select(db, "SHOW DATABASES")}


async def test_hostile_ids_and_tags_round_trip_through_the_store(
    store_db: tuple[InfluxQueryStore, InfluxDBServer, str],
) -> None:
    store, server, db = store_db
    sites = [Site(h, "330602", "1711") for h in HOSTILE_TAGS] + [Site("E-plain", "330602", "1711")]
    sites.append(Site("E-odd-tags", "33'06", "17|.*"))
    write_points(server, db, [daily(s, date(2019, 5, 1), total=i + 1) for i, s in enumerate(sites)])

    got = await store.period_sums(*YEAR, Scope())
    assert set(got) == {s.enterprise for s in sites}
    for i, s in enumerate(sites):
        assert got[s.enterprise].daily is not None and got[s.enterprise].daily.equipment_total == i + 1
    infos = await store.enterprises(Scope())
    assert [(i.enterprise, i.region, i.industry) for i in infos] == sorted(
        (s.enterprise, s.region, s.industry) for s in sites)

    # Past Scope's validation (a bug elsewhere): still only the exact value, never a widened query
    for h in HOSTILE_TAGS:
        only = await store.period_sums(*YEAR, bypass(enterprises=(h,)))
        assert set(only) == {h}, h
        assert [i.enterprise for i in await store.enterprises(bypass(enterprises=(h,)))] == [h]
    assert await store.period_sums(*YEAR, bypass(enterprises=("no such' OR 'a'='a",))) == {}
    assert await store.period_sums(*YEAR, bypass(region_prefix=".*")) == {}
    assert set(await store.period_sums(*YEAR, bypass(region_prefix="33'06"))) == {"E-odd-tags"}
    assert set(await store.period_sums(*YEAR, bypass(industries=("17|.*",)))) == {"E-odd-tags"}
    assert await store.period_sums(*YEAR, bypass(industries=("(",))) == {}
    assert await store.reports(2019, 2019, bypass(enterprises=("x'; DROP DATABASE x; --",))) == {}
    assert db in {r["name"] for r in server.select(db, "SHOW DATABASES")}


async def test_write_keeps_hostile_names_as_data(store_db: tuple[InfluxQueryStore, InfluxDBServer, str]) -> None:
    store, server, db = store_db
    measurement = 'indicator"; DROP MEASUREMENT enterprise_daily'
    write_points(server, db, [daily(Site("E-1", "330602", "1711"), date(2019, 1, 1))])
    await store.write([Point(measurement, {"enterprise": HOSTILE_TAGS[0]}, {"value": 1.5}, 10)])
    rows = server.select(db, f"SELECT value FROM {quote_ident(measurement)}")
    assert [r["value"] for r in rows] == [1.5]
    # the field type check quoted the name too: a conflicting second write is refused before writing
    with pytest.raises(StoreQueryError, match="type conflict"):
        await store.write([Point(measurement, {"enterprise": "E-2"}, {"value": "text"}, 20)])
    assert len(server.select(db, f"SELECT value FROM {quote_ident(measurement)}")) == 1
    assert (await store.period_sums(*YEAR, Scope()))["E-1"].daily is not None


# --- replacing writes (materialized indicators) -------------------------------------------------------


def _nc_rate_row(result: IndicatorResult, rank: int | None) -> GroupRow:
    return GroupRow("enterprise", "330602", "1711", "E-1", {"nc_rate": result},
                    {"nc_rate": rank} if rank is not None else {})


async def test_a_replacing_write_leaves_no_figure_of_the_earlier_point(
    store_db: tuple[InfluxQueryStore, InfluxDBServer, str],
) -> None:
    """InfluxDB merges the fields of a second write of a series and time: a re-materialized point
    without a value kept the earlier value, target, met and rank beside its insufficient_data."""
    store, server, db = store_db
    ytd = Period.of_year(2019)
    before = IndicatorResult("nc_rate", ytd, value=0.62, baseline=0.40, target=0.55, yoy=0.05, avg_annual=0.1,
                             coverage=0.9, status="met")
    # later the period has no value any more (coverage fell): no value, no target comparison, no rank
    after = IndicatorResult("nc_rate", ytd, value=None, baseline=None, target=None, yoy=None, avg_annual=None,
                            coverage=0.1, status="insufficient_data")
    await store.write(indicator_points([_nc_rate_row(before, 1)], TZ), replace=True)
    await store.write(indicator_points([_nc_rate_row(after, None)], TZ), replace=True)
    [row] = server.select(db, 'SELECT * FROM "indicator"')
    assert (row["status"], row["coverage"]) == ("insufficient_data", 0.1)
    stale = {k: row[k] for k in ("value", "target", "baseline", "yoy", "avg_annual", "met", "rank")
             if row.get(k) is not None}
    assert stale == {}, f"figures of the earlier write are still published: {stale}"


async def test_a_replacing_write_deletes_exactly_the_series_that_lost_a_field(
    influx_db: tuple[InfluxDBServer, str], proxy: FaultProxy
) -> None:
    server, db = influx_db
    ts = local_day_start_ns(date(2019, 1, 1), zone(TZ))
    county = {"level": "county", "region": "330602", "indicator": "nc_rate", "period": "2019"}
    hostile = {**county, "region": HOSTILE_TAGS[0], "industry": HOSTILE_TAGS[1]}
    energy = {**county, "indicator": "energy_intensity"}
    energy_17 = {**energy, "industry": "17"}
    write_points(server, db, [
        Point("indicator", county, {"value": 45.0, "status": "met", "met": 1}, ts),
        Point("indicator", {**county, "industry": "17"}, {"value": 50.0, "status": "met", "met": 1}, ts),
        Point("indicator", county, {"value": 40.0, "status": "met", "met": 1}, ts - 86_400 * 10**9),
        Point("indicator", hostile, {"value": 1.0, "rank": 3, "status": "met"}, ts),
        Point("indicator", energy, {"value": 0.5, "status": "met"}, ts),
        Point("indicator", energy_17, {"value": 0.6, "status": "met", "met": 1}, ts),
    ])
    store = make_store(proxy.url, db)
    try:
        await store.write([
            Point("indicator", county, {"status": "insufficient_data"}, ts),
            Point("indicator", hostile, {"value": 2.0, "status": "met"}, ts),
            Point("indicator", energy, {"value": 0.4, "status": "missed", "met": 0}, ts),  # loses no field
            Point("indicator", energy_17, {"status": "no_target"}, ts),
        ], replace=True)
    finally:
        await store.aclose()
    rows = {(r["industry"], r["region"], r["indicator"], r["time"]):
            {k: v for k, v in r.items() if v is not None and k not in ("level", "period")}
            for r in server.select(db, 'SELECT * FROM "indicator" GROUP BY *')}
    nc, ei, before = "nc_rate", "energy_intensity", ts - 86_400 * 10**9
    assert rows == {
        ("", "330602", nc, ts): {"region": "330602", "indicator": nc, "industry": "", "time": ts,
                                 "status": "insufficient_data"},
        # the same tags plus industry, and the same series at another time: untouched
        ("17", "330602", nc, ts): {"region": "330602", "indicator": nc, "industry": "17", "time": ts, "value": 50.0,
                                   "status": "met", "met": 1},
        ("", "330602", nc, before): {"region": "330602", "indicator": nc, "industry": "", "time": before,
                                     "value": 40.0, "status": "met", "met": 1},
        (HOSTILE_TAGS[1], HOSTILE_TAGS[0], nc, ts): {"region": HOSTILE_TAGS[0], "indicator": nc,
                                                     "industry": HOSTILE_TAGS[1], "time": ts, "value": 2.0,
                                                     "status": "met"},
        ("", "330602", ei, ts): {"region": "330602", "indicator": ei, "industry": "", "time": ts, "value": 0.4,
                                 "status": "missed", "met": 0},
        ("17", "330602", ei, ts): {"region": "330602", "indicator": ei, "industry": "17", "time": ts,
                                   "status": "no_target"},
    }
    # the field types, one read-back of the call's series, one request deleting the three that lost a field
    # by their exact tags (a condition on each tag's values would take the county's industry 17 too)
    queries = [dict(httpx.QueryParams(r.body.decode()))["q"] for r in proxy.requests if r.path == "/query"]
    assert len(queries) == 3 and queries[0].startswith("SHOW FIELD KEYS")
    assert queries[1].startswith('SELECT * FROM "indicator" WHERE time = ') and queries[1].endswith("GROUP BY *")
    assert queries[2].startswith("DELETE FROM") and queries[2].count("DELETE") == 1
    assert queries[2].count('("indicator" = ') == 3 and '"industry" = \'\'' in queries[2]
    assert [r.path for r in proxy.requests][-1] == "/write"


async def test_a_replacing_write_deletes_many_series_by_one_condition_when_it_matches_no_other(
    influx_db: tuple[InfluxDBServer, str], proxy: FaultProxy
) -> None:
    """Every point of the call lost a field (an upgrade, a plan without a target any more): one DELETE on
    each tag's values, instead of about 7 ms a series by exact tags. The year's points at the same time
    (period 2019 beside 2019-01) are not among its matches, and stay."""
    server, db = influx_db
    ts = local_day_start_ns(date(2019, 1, 1), zone(TZ))

    def tags(i: int, period: str) -> dict[str, str]:
        return {"level": "enterprise", "region": f"3306{i % 3:02d}", "industry": str(17 + i % 2),
                "enterprise": f"E-{i}", "indicator": "nc_rate", "period": period}

    write_points(server, db, [Point("indicator", tags(i, p), {"value": 1.0, "target": 2.0, "status": "missed"}, ts)
                              for i in range(300) for p in ("2019", "2019-01")])
    store = make_store(proxy.url, db)
    try:
        await store.write([Point("indicator", tags(i, "2019-01"), {"status": "insufficient_data"}, ts)
                           for i in range(300)], replace=True)
    finally:
        await store.aclose()
    got = {(r["period"], r["status"], r["value"]) for r in server.select(db, 'SELECT * FROM "indicator" GROUP BY *')}
    assert got == {("2019", "missed", 1.0), ("2019-01", "insufficient_data", None)}
    assert len(server.select(db, 'SELECT * FROM "indicator" GROUP BY *')) == 600
    queries = [dict(httpx.QueryParams(r.body.decode()))["q"] for r in proxy.requests if r.path == "/query"]
    [delete] = [q for q in queries if q.startswith("DELETE")]
    assert "\"period\" =~ /^(?:2019\\x{2D}01)$/" in delete and " OR " not in delete


async def test_deleting_the_indicators_a_pass_did_not_write_reads_one_indicator_at_a_time(
    influx_db: tuple[InfluxDBServer, str], proxy: FaultProxy
) -> None:
    """E-1 moved from 330603/17 to 330602/18 and E-2 from 330602/18 to 330604/18 (and a series with hostile
    tag values, and an industry row without members): the period's points are read back per indicator, and
    only the stale series are deleted, at that time only."""
    server, db = influx_db
    ts = local_day_start_ns(date(2020, 1, 1), zone(TZ))

    def ent(enterprise: str, region: str, industry: str, indicator: str = "nc_rate") -> dict[str, str]:
        return {"level": "enterprise", "enterprise": enterprise, "region": region, "industry": industry,
                "indicator": indicator, "period": "2020-YTD"}

    kept = [
        ent("E-1", "330602", "18"), ent("E-2", "330604", "18"), ent("E-1", "330602", "18", "energy_intensity"),
        {"level": "county", "region": "330603", "indicator": "nc_rate", "period": "2020-YTD"},  # no industry tag
    ]
    stale = [
        ent("E-1", "330603", "17"), ent("E-2", "330602", "18"), ent("E-1", HOSTILE_TAGS[0], HOSTILE_TAGS[1]),
        {"level": "industry", "region": "330603", "industry": "17", "indicator": "nc_rate", "period": "2020-YTD"},
        ent("E-1", "330603", "17", "energy_intensity"),
    ]
    earlier = ent("E-1", "330603", "17")  # the same series a second earlier: another time, untouched
    write_points(server, db, [Point("indicator", tags, {"value": 1.0, "status": "met"}, ts) for tags in kept + stale]
                 + [Point("indicator", earlier, {"value": 1.0, "status": "met"}, ts - 10**9)])
    store = make_store(proxy.url, db)
    keep = {series_digest(t) for t in kept}
    try:
        assert await store.delete_indicators_except("2020-YTD", ts, keep, {"E-1", "E-2"}) == len(stale)
        queries = [dict(httpx.QueryParams(r.body.decode()))["q"] for r in proxy.requests if r.path == "/query"]
        proxy.reset()
        assert await store.delete_indicators_except("2020-YTD", ts, keep, {"E-1", "E-2"}) == 0
        again = [dict(httpx.QueryParams(r.body.decode()))["q"] for r in proxy.requests if r.path == "/query"]
    finally:
        await store.aclose()
    left = {(frozenset((k, v) for k, v in r.items() if v and k not in ("time", "value", "status")), r["time"])
            for r in server.select(db, 'SELECT * FROM "indicator" GROUP BY *')}
    assert left == {*((frozenset(t.items()), ts) for t in kept), (frozenset(earlier.items()), ts - 10**9)}
    # the tag values, one read-back per indicator, then the deletes: energy_intensity's by one condition on
    # each tag's values, nc_rate's by their exact tags (each tag's values would match E-1's kept series too)
    assert queries[0].startswith('SHOW TAG VALUES FROM "indicator" WITH KEY = "indicator"')
    assert [q.split('"indicator" = ')[1].split(" ")[0] for q in queries[1:3]] == ["'energy_intensity'", "'nc_rate'"]
    assert all(q.startswith('SELECT "status" FROM "indicator" WHERE time = ') for q in queries[1:3])
    by_values, exact = queries[3:]
    assert '"region" =~ /^(?:330603)$/' in by_values and " OR " not in by_values and f"time = {ts}" in by_values
    assert exact.startswith('DELETE FROM "indicator" WHERE (("') and exact.count(") OR (") == 3
    assert exact.endswith(f")) AND time = {ts}")
    assert len(again) == 3  # nothing left to delete: reads only


async def test_deleting_indicators_where_influxql_has_no_delete_says_so_and_keeps_them(
    influx_db: tuple[InfluxDBServer, str], proxy: FaultProxy
) -> None:
    """InfluxDB 3 has no DELETE: a pass that must delete fails with a sentence, and its points stay."""
    server, db = influx_db
    ts = local_day_start_ns(date(2020, 1, 1), zone(TZ))
    tags = {"level": "county", "region": "330603", "indicator": "nc_rate", "period": "2020-YTD"}
    write_points(server, db, [Point("indicator", tags, {"value": 1.0, "status": "met"}, ts)])
    store = make_store(proxy.url, db)
    try:
        proxy.then(*([Forward()] * 2), Respond(400, body=b'{"error":"error parsing query: found DELETE"}'))
        with pytest.raises(StoreQueryError, match=r"0 of 1 request.*deleting the 2020-YTD indicator points.*DELETE "
                           r"needs InfluxDB 1\.x or 2\.x"):
            await store.delete_indicators_except("2020-YTD", ts, set(), set())
    finally:
        await store.aclose()
    assert len(server.select(db, 'SELECT * FROM "indicator"')) == 1


# --- what goes over the wire --------------------------------------------------------------------------


async def test_period_sums_sends_the_aggregation_and_scope_in_the_query(
    influx_db: tuple[InfluxDBServer, str], proxy: FaultProxy
) -> None:
    server, db = influx_db
    site = Site("E-1", "330602", "1711")
    ts = local_day_start_ns(date(2019, 12, 31), zone(TZ))
    write_points(server, db, [daily(site, date(2019, 12, 31))] + [
        Point("consumption_daily", site.tags(carrier=c), {"amount": 1.0, "coverage": 1.0}, ts)
        for c in ("electricity", "water_intake")
    ])
    store = make_store(proxy.url, db)
    try:
        scope = Scope(region_prefix="3306", industries=("17", "18"), enterprises=("E-1", "E-2"))
        got = await store.period_sums(*YEAR, scope)
    finally:
        await store.aclose()
    assert list(got) == ["E-1"] and set(got["E-1"].carriers) == {"electricity", "water_intake"}
    sent, tags = [], []
    for request in proxy.requests:
        assert (request.method, request.path) == ("POST", "/query")
        assert request.query == {"db": db, "epoch": "ms"}
        statements = dict(httpx.QueryParams(request.body.decode()))["q"].split("; ")
        if all("GROUP BY enterprise, region, industry" in q for q in statements):
            tags += statements  # who is in scope at the period's end: the tags of each enterprise's latest point
            continue
        [statement] = statements  # the sums: one per request
        sent.append(statement)
    # the carriers from the index first, then at once: sums, last, each carrier's first and last day, one
    # statement per carrier
    assert sent[0] == 'SHOW TAG VALUES FROM "consumption_daily" WITH KEY = "carrier"'
    statements = sorted(sent[1:], key=lambda q: ["AS days" in q, "last(equipment" in q, "first(coverage)" in q,
                                                 "last(coverage)" in q, "consumption_daily" in q].index(True))
    assert len(statements) == 6
    start = local_day_start_ns(date(2019, 1, 1), zone(TZ))
    end = local_day_start_ns(date(2020, 1, 1), zone(TZ))
    # the tags at the period's end: the scope's series first, then the candidates' series outside it
    assert len(tags) == 6 and all(f"time < {end}" in q and "ORDER BY time DESC LIMIT 1" in q for q in tags)
    assert all("region =~ /^(?:3306)/ AND industry =~ /^(?:17|18)/" in q for q in tags[:3])
    assert all("(enterprise = 'E-1') AND (region !~ /^(?:3306)/ OR industry !~ /^(?:17|18)/)" in q for q in tags[3:])
    assert start == 1_546_272_000 * 10**9  # 2018-12-31T16:00Z
    for statement in statements:
        assert f"time >= {start} AND time < {end}" in statement
        assert "region =~ /^(?:3306)/ AND industry =~ /^(?:17|18)/" in statement
        assert "(enterprise = 'E-1' OR enterprise = 'E-2')" in statement
    assert "sum(" in statements[0] and statements[0].endswith("GROUP BY enterprise, gateway")  # per gateway: cacheable
    assert statements[1].startswith('SELECT last(equipment_total)') and "sum(" not in statements[1]
    assert statements[1].endswith("GROUP BY enterprise, gateway")  # each gateway's last day
    for q in statements[2:4]:  # first() and last() alone, so that they report the time of their row
        assert q.startswith(("SELECT first(coverage) AS coverage FROM", "SELECT last(coverage) AS coverage FROM"))
        assert q.endswith("GROUP BY enterprise, carrier, gateway")  # per gateway: did its gateway go on after it
    assert statements[4].endswith("GROUP BY enterprise, carrier, gateway")
    assert {q.split("carrier = ")[1].split(" ")[0] for q in statements[4:]} == {"'electricity'", "'water_intake'"}
    for q in statements[4:]:  # each carrier asks only for what the engine reads of it
        water = "'water_intake'" in q
        assert ("sum(m3)" in q, "sum(tce)" in q) == (water, not water), q


async def test_v1_credentials_are_basic_auth_and_v2_a_token(
    influx_db: tuple[InfluxDBServer, str], proxy: FaultProxy
) -> None:
    _, db = influx_db
    v1 = make_store(proxy.url, db, username="reader", password="s3cret")
    try:
        await v1.enterprises(Scope())  # the test server has no auth: it ignores the credentials
    finally:
        await v1.aclose()
    assert proxy.requests[-1].headers["authorization"].startswith("Basic ")
    assert "s3cret" not in str(proxy.requests[-1].query) and "s3cret" not in proxy.requests[-1].body.decode()

    proxy.on_path("/api/v2/write", Respond(204))  # InfluxDB 1.6 has no v2 write API
    v2 = InfluxQueryStore(InfluxDBSink(type="influxdb", url=proxy.url, dialect="v2", org="acme", bucket=db,
                                       token="tok-123"), timezone=TZ)
    try:
        await v2.period_sums(*YEAR, Scope())
        await v2.write([Point("indicator", {"enterprise": "E-1"}, {"value": 1.0}, 1)])
    finally:
        await v2.aclose()
    query, _, write = proxy.requests[-3:]
    assert query.query["db"] == db  # the bucket's name, as a DBRP mapping would publish it
    assert query.headers["authorization"] == "Token tok-123"
    assert (write.path, write.query) == ("/api/v2/write", {"org": "acme", "bucket": db, "precision": "ns"})
    assert write.headers["authorization"] == "Token tok-123"
    assert write.lines == ["indicator,enterprise=E-1 value=1 1"]


async def test_a_given_client_is_used_and_left_open(influx_db: tuple[InfluxDBServer, str]) -> None:
    server, db = influx_db
    async with httpx.AsyncClient(timeout=5.0) as client:
        store = InfluxQueryStore(InfluxDBSink(type="influxdb", url=server.url, database=db), client=client)
        assert store.timezone == "Asia/Shanghai"
        assert await store.enterprises(Scope()) == []
        await store.aclose()
        assert not client.is_closed
    with pytest.raises(ValueError, match="time zone"):
        make_store(server.url, db, timeout_s=1.0).__class__(
            InfluxDBSink(type="influxdb", url=server.url, database=db), timezone="Nowhere/Special")


async def test_retention_policy_is_written_and_read(influx_db: tuple[InfluxDBServer, str]) -> None:
    server, db = influx_db
    server.query(f'CREATE RETENTION POLICY "rollups 10y" ON "{db}" DURATION 520w REPLICATION 1 SHARD DURATION 52w')
    store = make_store(server.url, db, retention_policy="rollups 10y")
    try:
        await store.write([daily(Site("E-rp", "330602", "1711"), date(2019, 3, 1))])
        assert list(await store.period_sums(*YEAR, Scope())) == ["E-rp"]
        assert [i.enterprise for i in await store.enterprises(Scope())] == ["E-rp"]
        # nothing went to the default policy
        assert server.select(db, "SELECT count(equipment_total) FROM enterprise_daily") == []
        missing = make_store(server.url, db, retention_policy="nope")
        with pytest.raises(StoreQueryError, match="retention_policy"):
            await missing.period_sums(*YEAR, Scope())
        await missing.aclose()
    finally:
        await store.aclose()


# --- errors ---------------------------------------------------------------------------------------------


async def test_nothing_listening_fails_fast_with_a_clear_message() -> None:
    store = make_store(f"http://127.0.0.1:{free_port()}", "fmc")
    started = time.monotonic()
    for call in (store.period_sums(*YEAR, Scope()), store.enterprises(Scope()), store.reports(2019, 2019, Scope()),
                 store.write([daily(Site("E-1", "330602", "1711"), YEAR[0])]),
                 store.ping()):
        with pytest.raises(StoreQueryError, match=r"cannot connect to InfluxDB at http://127\.0\.0\.1:\d+.*"
                                                  r"\[store\] url"):
            await call
    assert time.monotonic() - started < 5.0
    await store.aclose()


async def test_a_stopped_server(influxdb_private: InfluxDBServer) -> None:
    server = influxdb_private
    server.create_database("fmc")
    write_points(server, "fmc", [daily(Site("E-1", "330602", "1711"), date(2019, 6, 1))])
    store = make_store(server.url, "fmc", timeout_s=2.0)
    try:
        assert list(await store.period_sums(*YEAR, Scope())) == ["E-1"]
        await store.ping()
        server.stop()
        with pytest.raises(StoreQueryError, match=r"cannot connect|connection failed"):
            await store.ping()  # health checks ask the store itself, never a cache
        started = time.monotonic()
        with pytest.raises(StoreQueryError, match=r"cannot connect|connection failed") as caught:
            await store.period_sums(*YEAR, Scope())
        assert time.monotonic() - started < 3.0
        assert "Traceback" not in str(caught.value)
        server.start()  # the same store object works again once the server is back
        assert list(await store.period_sums(*YEAR, Scope())) == ["E-1"]
    finally:
        await store.aclose()


async def test_wrong_database(influxdb: InfluxDBServer) -> None:
    store = make_store(influxdb.url, "no_such_db")
    try:
        with pytest.raises(StoreQueryError, match=r"database 'no_such_db' not found.*CREATE DATABASE \"no_such_db\""
                           r".*\[store\] database"):
            await store.period_sums(*YEAR, Scope())
        with pytest.raises(StoreQueryError, match="not found"):
            await store.write([daily(Site("E-1", "330602", "1711"), YEAR[0])])
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (Respond(503, body=b"overloaded"), r"HTTP 503: overloaded"),
        (Respond(500, {"Content-Type": "application/json"}, b'{"error":"engine failure"}'),
         r"HTTP 500: engine failure"),
        (Respond(401, body=b'{"error":"authorization failed"}'),
         r"authentication failed.*\[store\] username and password"),
        (Respond(403, body=b'{"error":"forbidden"}'), r"not authorized.*\[store\] username and password"),
        (Respond(404, body=b"404 page not found"), r"not found.*\[store\] url"),
        (Respond(302, {"Location": "http://127.0.0.1:1/x"}), r"redirects .*\[store\] url"),
        (Respond(400, body=b'{"error":"error parsing query"}'), r"refused the query \(HTTP 400: error parsing query\)"),
        (Respond(200, body=b"<html>a login page</html>"), r"not JSON"),
        (Respond(200, body=b'{"results":[{"statement_id":0,"error":"shard failure"}]}'),
         r"could not run.*shard failure"),
        (Respond(200, body=b'{"results":[]}'), r"0 result\(s\) for 1 statement"),
        (Respond(200, body=json.dumps({"results": [{"statement_id": i, "partial": True} for i in range(3)]}).encode()),
         r"max-row-limit"),
        (Close(), r"connection failed|cannot connect"),
    ],
)
async def test_bad_answers_become_store_query_errors(
    influx_db: tuple[InfluxDBServer, str], proxy: FaultProxy, answer: object, message: str
) -> None:
    _, db = influx_db
    store = make_store(proxy.url, db)
    proxy.then(answer)  # type: ignore[arg-type]
    try:
        with pytest.raises(StoreQueryError, match=message) as caught:
            await store.period_sums(*YEAR, Scope())
        assert "Traceback" not in str(caught.value)
        assert await store.period_sums(*YEAR, Scope()) == {}  # the next request goes through
    finally:
        await store.aclose()


async def test_a_stalled_server_times_out(influx_db: tuple[InfluxDBServer, str], proxy: FaultProxy) -> None:
    _, db = influx_db
    store = make_store(proxy.url, db, timeout_s=0.5)
    proxy.then(Stall())
    started = time.monotonic()
    try:
        with pytest.raises(StoreQueryError, match=r"no answer within 0\.5s.*timeout_s"):
            await store.enterprises(Scope())
    finally:
        await store.aclose()
    assert time.monotonic() - started < 3.0


async def test_write_errors(influx_db: tuple[InfluxDBServer, str], proxy: FaultProxy) -> None:
    server, db = influx_db
    store = make_store(proxy.url, db)
    point = daily(Site("E-1", "330602", "1711"), date(2019, 2, 1))
    try:
        proxy.on_path("/write", Respond(503, body=b'{"error":"hinted handoff queue full"}'))
        with pytest.raises(StoreQueryError, match="HTTP 503: hinted handoff queue full"):
            await store.write([point])
        proxy.on_path("/write", Respond(400, body=b'{"error":"partial write: field type conflict"}'))
        with pytest.raises(StoreQueryError, match="partial write"):
            await store.write([point])
        proxy.on_path("/write", Respond(413, body=b'{"error":"Request Entity Too Large"}'))
        with pytest.raises(StoreQueryError, match="max-body-size"):
            await store.write([point])
        assert server.select(db, "SELECT count(equipment_total) FROM enterprise_daily") == []
    finally:
        await store.aclose()


async def test_credentials_on_a_server_with_auth(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = InfluxDBServer(tmp_path_factory.mktemp("influx-auth"), auth_enabled=True)
    server.start()
    try:
        server.query("CREATE USER admin WITH PASSWORD 'adm1n' WITH ALL PRIVILEGES")
        server.auth = ("admin", "adm1n")
        server.create_database("fmc")
        server.query("CREATE USER central WITH PASSWORD 'c3ntral'")
        server.query('GRANT ALL ON "fmc" TO central')
        good = make_store(server.url, "fmc", username="central", password="c3ntral")
        await good.write([daily(Site("E-1", "330602", "1711"), date(2019, 2, 1))])
        assert list(await good.period_sums(*YEAR, Scope())) == ["E-1"]
        # a replacing write's DELETE needs no more than the user's READ and WRITE on the database
        county = {"level": "county", "region": "330602", "indicator": "nc_rate", "period": "2019"}
        await good.write([Point("indicator", county, {"value": 45.0, "status": "met"}, 10)])
        await good.write([Point("indicator", county, {"status": "insufficient_data"}, 10)], replace=True)
        assert server.select("fmc", 'SELECT * FROM "indicator"') == [
            {**county, "time": 10, "status": "insufficient_data", "value": None}]
        await good.aclose()
        bad = make_store(server.url, "fmc", username="central", password="wrong")
        with pytest.raises(StoreQueryError, match=r"authentication failed.*\[store\] username and password") as e:
            await bad.enterprises(Scope())
        assert "wrong" not in str(e.value)
        await bad.aclose()
    finally:
        server.stop()


async def test_period_sums_asks_only_for_the_wanted_sums(
    influx_db: tuple[InfluxDBServer, str], proxy: FaultProxy
) -> None:
    import math

    from fmc.indicators.sums import SumsWanted

    server, db = influx_db
    site = Site("E-1", "330602", "17")
    ts = local_day_start_ns(date(2019, 6, 1), zone(TZ))
    write_points(server, db, [daily(site, date(2019, 6, 1), total=10, nc=4),
                              Point("consumption_daily", site.tags(carrier="water_intake"),
                                    {"amount": 5.0, "m3": 5.0, "coverage": 1.0}, ts)])
    store = make_store(proxy.url, db)
    try:
        got = await store.period_sums(*YEAR, Scope(), SumsWanted(frozenset({"equipment_nc"}), amount=False))
    finally:
        await store.aclose()
    sent = [dict(httpx.QueryParams(r.body.decode()))["q"] for r in proxy.requests]
    assert not any("sum(equipment_total)" in q or "sum(amount)" in q or "count(amount)" in q for q in sent)
    assert any("sum(equipment_nc)" in q for q in sent)
    d, water = got["E-1"].daily, got["E-1"].carriers["water_intake"]
    assert d is not None and d.days == 1 and d.equipment_nc == 4.0 and d.last_equipment_total == 10.0
    assert math.isnan(d.equipment_total) and math.isnan(d.nc_equipment_networked)  # not asked: NaN, never 0
    assert (water.rows, water.m3, water.m3_rows, water.coverage) == (1, 5.0, 1, 1.0) and math.isnan(water.amount)
