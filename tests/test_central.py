"""The central indicator service on a real embedded store: golden pooled figures computed by hand,
scopes, the cache and its invalidation, periods, the registry, and the CLI commands on top."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from fmc.central.config import load_plan
from fmc.central.materialize import indicator_points
from fmc.central.provenance import policy_text
from fmc.central.registry import RegistryEntry, read_registry
from fmc.central.service import IndicatorService, UnknownEnterprise, parse_period
from fmc.central.store import Scope
from fmc.cli import main as cli
from fmc.core.config import ConfigError
from fmc.core.lineprotocol import encode
from fmc.core.localtime import local_day_start_ns, zone
from fmc.core.points import Point, Priority
from fmc.indicators.engine import ConsumptionDay, EnterpriseData, EnterpriseDay, Period, compute_all
from fmc.indicators.reports import EnterpriseReport
from fmc.stores.embedded.store import EmbeddedQueryStore, EmbeddedStore

PLAN = load_plan()
TZ = zone("Asia/Shanghai")


def days_of(year: int) -> list[date]:
    d, out = date(year, 1, 1), []
    while d.year == year:
        out.append(d)
        d += timedelta(days=1)
    return out


def daily(ent: str, region: str, industry: str, day: date, total: int, nc: int, nc_net: int) -> Point:
    return Point(
        "enterprise_daily",
        {"enterprise": ent, "region": region, "industry": industry},
        {"equipment_total": total, "equipment_nc": nc, "asset_value_total": 0.0, "asset_value_nc": 0.0,
         "equipment_networked": nc_net, "nc_equipment_networked": nc_net},
        local_day_start_ns(day, TZ),
        Priority.ROLLUP,
    )


def electricity(ent: str, region: str, industry: str, day: date, kwh: float, coverage: float = 1.0) -> Point:
    return Point(
        "consumption_daily",
        {"enterprise": ent, "region": region, "industry": industry, "carrier": "electricity"},
        {"amount": kwh, "tce": kwh * 0.1229 / 1000, "coverage": coverage},
        local_day_start_ns(day, TZ),
        Priority.ROLLUP,
    )


def report(ent: str, region: str, industry: str, year: int, value_added_yuan: float) -> Point:
    start = datetime(year, 1, 1, tzinfo=TZ)
    return Point(
        "enterprise_report",
        {"enterprise": ent, "region": region, "industry": industry, "period": str(year)},
        {"value_added": value_added_yuan, "value_added_comparable": value_added_yuan},
        int(start.timestamp()) * 1_000_000_000,
        Priority.ROLLUP,
    )


# A county (330602) of three enterprises and one enterprise in the next county (330603).
# NC equipment per day (total, nc, networked nc) in 2016 / 2019 / 2020:
#   A 330602/17: (100, 40, 20) / (100, 46, 20) / (100, 48, 30), and on 2020-12-31 nc = 50
#   B 330602/17: (50, 10, 5)   / (50, 13, 5)    / (50, 15, 15)
#   C 330602/28: (50, 20, 10)  / (50, 23, 10)   / (50, 25, 10)
#   D 330603/17: (10, 9, 9) every year
# Electricity per day: A 10,000 kWh in 2016, 8,000 kWh in 2020; B 5,000 kWh both years; C, D none.
# Value added (annual reports, yuan): A 10,000,000 (2016), 12,000,000 (2020); B 5,000,000, 6,000,000.
SHAPE = {
    "A": ("330602", "17", {2016: (100, 40, 20), 2019: (100, 46, 20), 2020: (100, 48, 30)}),
    "B": ("330602", "17", {2016: (50, 10, 5), 2019: (50, 13, 5), 2020: (50, 15, 15)}),
    "C": ("330602", "28", {2016: (50, 20, 10), 2019: (50, 23, 10), 2020: (50, 25, 10)}),
    "D": ("330603", "17", {2016: (10, 9, 9), 2019: (10, 9, 9), 2020: (10, 9, 9)}),
}


def seed_points() -> list[Point]:
    points: list[Point] = []
    for ent, (region, industry, years) in SHAPE.items():
        for year, (total, nc, net) in years.items():
            for day in days_of(year):
                n = 50 if (ent == "A" and day == date(2020, 12, 31)) else nc
                points.append(daily(ent, region, industry, day, total, n, net))
    for year, kwh_a, va_a, va_b in ((2016, 10_000.0, 10_000_000.0, 5_000_000.0), (2020, 8_000.0, 12e6, 6e6)):
        for day in days_of(year):
            points.append(electricity("A", "330602", "17", day, kwh_a))
            points.append(electricity("B", "330602", "17", day, 5_000.0))
        points.append(report("A", "330602", "17", year, va_a))
        points.append(report("B", "330602", "17", year, va_b))
    return points


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "central.db"
    store = EmbeddedStore(path)
    outcome = store.write_lines([encode(p) for p in seed_points()])
    assert outcome.refused == []
    store.close()
    return path


@pytest.fixture
async def service(store_path: Path):
    s = IndicatorService(EmbeddedQueryStore(store_path), PLAN, revalidate_s=3600)
    yield s
    await s.aclose()


def row_of(rows, key):
    return next(r for r in rows if r.key == key)


async def test_county_pooled_nc_rate_golden(service: IndicatorService) -> None:
    computed = await service.indicators("county", Period.of_year(2020), Scope(region_prefix="3306"))
    county = row_of(computed.rows, "330602").results["nc_rate"]
    # period end (2020-12-31): (50 + 15 + 25) / (100 + 50 + 50) = 90/200 = 45 %
    assert county.value == pytest.approx(45.0)
    # base year 2016 at its end: (40 + 10 + 20) / 200 = 35 %; target 35 + 2·(2020-2016) = 43 %
    assert county.baseline == pytest.approx(35.0)
    assert county.target == pytest.approx(43.0)
    assert county.status == "met"
    # 2019: (46 + 13 + 23) / 200 = 41 % -> +4 points
    assert county.yoy == pytest.approx(4.0)
    # each enterprise against its own path: A 50 ≥ 40+8, B 30 ≥ 20+8, C 50 ≥ 40+8
    assert (county.members, county.assessed, county.met_count) == (3, 3, 3)
    # D is in the other county, not in this pool
    assert {r.key for r in computed.rows} == {"330602", "330603"}
    assert row_of(computed.rows, "330603").results["nc_rate"].value == pytest.approx(90.0)


async def test_county_pooled_networking_and_energy_golden(service: IndicatorService) -> None:
    rows = (await service.indicators("county", Period.of_year(2020), Scope(region_prefix="330602"))).rows
    assert [r.key for r in rows] == ["330602"]
    net = rows[0].results["networking_rate"]
    # networked NC-equipment-days ÷ NC-equipment-days, 2020 has 366 days:
    # A 30·366 / (48·365 + 50), B 15·366 / 15·366, C 10·366 / 25·366
    num = 30 * 366 + 15 * 366 + 10 * 366
    den = 48 * 365 + 50 + 15 * 366 + 25 * 366
    assert net.value == pytest.approx(100.0 * num / den)  # 62.496…
    # 2016: (20 + 5 + 10)·366 / (40 + 10 + 20)·366 = 50 % -> target 58 %
    assert net.target == pytest.approx(58.0)
    assert net.status == "met"
    # A 62.5 ≥ 58 met, B 100 ≥ 58 met, C 40 < 50+8 missed
    assert (net.assessed, net.met_count) == (3, 2)
    assert net.met_share == pytest.approx(2 / 3)
    energy = rows[0].results["energy_intensity"]
    # only A and B have meters: 2 of 3 members < min_coverage 0.95 -> no county figure
    assert energy.value is None and energy.status == "insufficient_data"
    assert (energy.members, energy.included) == (3, 2)


async def test_enterprise_energy_intensity_golden(service: IndicatorService) -> None:
    rows = (await service.indicators("enterprise", Period.of_year(2020), Scope(enterprises=("A",)))).rows
    a = rows[0].results["energy_intensity"]
    # 2020: 8000 kWh · 0.1229 kgce/kWh / 1000 · 366 days = 359.8512 tce over 1200 10⁴ yuan
    assert a.value == pytest.approx(8000 * 0.1229 / 1000 * 366 / 1200)
    # 2016: 10000 · 0.1229 / 1000 · 366 / 1000 = 0.449814; target × 0.96⁴
    assert a.baseline == pytest.approx(10000 * 0.1229 / 1000 * 366 / 1000)
    assert a.target == pytest.approx(a.baseline * 0.96**4)
    assert a.status == "met"
    assert a.avg_annual == pytest.approx((a.value / a.baseline) ** 0.25 - 1)


async def test_service_equals_engine_on_rows(service: IndicatorService) -> None:
    """The store's sums through the service give what the engine gives on the raw rows."""
    years = SHAPE["A"][2]
    rows = [EnterpriseDay(day, t, 50 if day == date(2020, 12, 31) else n, 0.0, 0.0, net, net)
            for year, (t, n, net) in years.items() for day in days_of(year)]
    cons = [ConsumptionDay(day, "electricity", kwh, kwh * 0.1229 / 1000, None, 1.0)
            for year, kwh in ((2016, 10_000.0), (2020, 8_000.0)) for day in days_of(year)]
    from fmc.indicators.engine import Report

    reports = [Report(Period.of_year(2016), value_added=1000.0, value_added_comparable=1000.0),
               Report(Period.of_year(2020), value_added=1200.0, value_added_comparable=1200.0)]
    for period in (Period.of_year(2020), Period.of_quarter(2020, 4), Period.of_month(2020, 2)):
        expected = compute_all(period, EnterpriseData("A", rows, cons, reports), PLAN)
        got = (await service.indicators("enterprise", period, Scope(enterprises=("A",)))).rows[0].results
        for name, e in expected.items():
            g = got[name]
            assert (g.status, g.target is None) == (e.status, e.target is None), name
            for attr in ("value", "baseline", "target", "yoy", "coverage"):
                ev, gv = getattr(e, attr), getattr(g, attr)
                assert (ev is None and gv is None) or math.isclose(ev, gv, rel_tol=1e-12), (name, attr, ev, gv)


async def test_scope_is_applied_before_pooling(service: IndicatorService) -> None:
    province = (await service.indicators("province", Period.of_year(2020), Scope())).rows
    assert [r.key for r in province] == ["33"]
    # (50 + 15 + 25 + 9) / (100 + 50 + 50 + 10) = 99/210
    assert province[0].results["nc_rate"].value == pytest.approx(100 * 99 / 210)
    industry = (await service.indicators("industry", Period.of_year(2020), Scope(region_prefix="330602"))).rows
    # within 330602: textiles are A and B only (D is outside the scope)
    assert {r.key: r.results["nc_rate"].value for r in industry} == pytest.approx(
        {"330602/17": 100 * 65 / 150, "330602/28": 50.0}
    )
    ranked = (await service.indicators("enterprise", Period.of_year(2020), Scope(region_prefix="330602"))).rows
    assert {r.key: r.ranks["nc_rate"] for r in ranked} == {"A": 1, "C": 1, "B": 3}


async def test_cache_serves_narrow_scopes_and_keeps_etag(service: IndicatorService, store_path: Path) -> None:
    calls = 0
    original = service.store.period_sums

    async def counting(*args, **kwargs):  # count the store's work, answered by the real store
        nonlocal calls
        calls += 1
        return await original(*args, **kwargs)

    service.store.period_sums = counting  # type: ignore[method-assign]
    first = await service.indicators("county", Period.of_year(2020), Scope())
    assert calls == 3  # the year, the year before, the base year
    again = await service.indicators("county", Period.of_year(2020), Scope())
    narrow = await service.indicators("enterprise", Period.of_year(2020), Scope(enterprises=("B",)))
    assert calls == 3 and again.etag == first.etag
    assert [r.key for r in narrow.rows] == ["B"]
    await service.revalidate()  # nothing changed: same figures, same ETag
    assert (await service.indicators("county", Period.of_year(2020), Scope())).etag == first.etag
    # new data for the period: an extra NC machine at D on the last day
    writer = EmbeddedStore(store_path)
    writer.write_lines([encode(daily("D", "330603", "17", date(2020, 12, 31), 10, 10, 9))])
    writer.close()
    await service.revalidate()
    changed = await service.indicators("county", Period.of_year(2020), Scope())
    assert changed.etag != first.etag
    assert row_of(changed.rows, "330603").results["nc_rate"].value == pytest.approx(100.0)


async def test_put_report_invalidates_at_once(service: IndicatorService) -> None:
    before = (await service.indicators("enterprise", Period.of_year(2020), Scope(enterprises=("C",)))).rows[0]
    assert before.results["labour_productivity"].status == "insufficient_data"
    await service.put_report(EnterpriseReport(enterprise="C", period="2020", value_added=3_000_000.0,
                                              value_added_comparable=3_000_000.0, employees_avg=100.0))
    after = (await service.indicators("enterprise", Period.of_year(2020), Scope(enterprises=("C",)))).rows[0]
    # 300 10⁴ yuan ÷ 100 persons
    assert after.results["labour_productivity"].value == pytest.approx(3.0)
    with pytest.raises(UnknownEnterprise):
        await service.put_report(EnterpriseReport(enterprise="nobody", period="2020", value_added=1.0))


async def test_registry_enterprise_without_data_counts_as_missing(store_path: Path) -> None:
    registry = {"E": RegistryEntry("E", "新厂", "330602", "17", {"nc_rate": 30.0})}
    s = IndicatorService(EmbeddedQueryStore(store_path), PLAN, registry=registry)
    try:
        rows = (await s.indicators("county", Period.of_year(2020), Scope(region_prefix="330602"))).rows
        nc = rows[0].results["nc_rate"]
        # 3 of 4 members have a figure: 0.75 < 0.95 -> no county figure, never one from silence
        assert (nc.members, nc.included, nc.value, nc.status) == (4, 3, None, "insufficient_data")
        e = (await s.indicators("enterprise", Period.of_year(2020), Scope(enterprises=("E",)))).rows[0]
        assert e.results["nc_rate"].baseline == 30.0 and e.results["nc_rate"].status == "insufficient_data"
        assert (await s.enterprise("E")).name == "新厂"  # type: ignore[union-attr]
    finally:
        await s.aclose()


async def test_materialized_points_round_trip(service: IndicatorService, store_path: Path) -> None:
    written = await service.materialize([Period.of_year(2020)])
    reader = EmbeddedStore(store_path, readonly=True)
    try:
        points = reader.points("indicator")
    finally:
        reader.close()
    assert len(points) == written
    county = [p for p in points if p.tags.get("level") == "county" and p.tags["region"] == "330602"
              and p.tags["indicator"] == "nc_rate"]
    assert len(county) == 1
    assert county[0].fields["value"] == pytest.approx(45.0)
    assert county[0].fields["met_count"] == 3 and county[0].fields["status"] == "met"
    industry_in_city = [p for p in points if p.tags.get("level") == "industry" and p.tags["region"] == "3306"]
    assert {p.tags["industry"] for p in industry_in_city} == {"17", "28"}
    in_county = {p.tags["industry"]: p.fields.get("value") for p in points if p.tags.get("level") == "industry"
                 and p.tags["region"] == "330602" and p.tags["indicator"] == "nc_rate"}
    assert in_county == pytest.approx({"17": 100 * 65 / 150, "28": 50.0})  # A+B: (50+15)/(100+50); C: 25/50


async def test_materialization_writes_in_chunks_and_keeps_only_what_clients_asked_for(
    service: IndicatorService, store_path: Path
) -> None:
    asked = await service.indicators("county", Period.of_year(2020), Scope())  # a client's request
    written = await service.materialize([Period.of_year(2019), Period.of_year(2020)], chunk=7)
    reader = EmbeddedStore(store_path, readonly=True)
    try:
        points = reader.points("indicator")
    finally:
        reader.close()
    assert len(points) == written and {p.tags["period"] for p in points} == {"2019", "2020"}
    # the province's figures of every materialized period are not kept in memory (0.9 GB for four periods
    # of 20,000 enterprises), but what a client asked for is
    assert {key[0] for key in service._figures} == {Period.of_year(2020)}
    assert (await service.indicators("county", Period.of_year(2020), Scope())) is asked
    again = await service.materialize([Period.of_year(2019), Period.of_year(2020)])
    assert again == written


def _materialized(store: Path, enterprise: str, indicator: str, period: str) -> float | None:
    reader = EmbeddedStore(store, readonly=True)
    try:
        points = reader.points("indicator")
    finally:
        reader.close()
    return next((p.fields.get("value") for p in points if (p.tags.get("level"), p.tags.get("enterprise"),
                 p.tags.get("indicator"), p.tags.get("period")) == ("enterprise", enterprise, indicator, period)), None)


async def test_the_materialize_loop_rewrites_a_past_year_whose_reports_another_process_changed(tmp_path: Path) -> None:
    """Before: the loop recomputed this year, last year and the years of reports PUT through the service
    only: a past year's correction loaded with `fmc reports import` never reached the dashboards'
    ``indicator`` points while `fmc api` ran (the API itself answered the new figure)."""
    import asyncio
    import time

    from fmc.central.config import MaterializeConfig
    from fmc.central.reports import report_points

    store = tmp_path / "store.db"
    raw = EmbeddedStore(store)
    reports = [EnterpriseReport(enterprise="A", period=str(y), value_added=10e6, value_added_comparable=10e6,
                                employees_avg=100) for y in (2016, 2019, 2020, 2021)]
    points = report_points(reports, {"A": "330602"}, {"A": "17"})
    assert raw.write_lines([encode(p) for p in points]).refused == []
    raw.close()
    cfg = _central_toml(tmp_path, store)
    service = IndicatorService(EmbeddedQueryStore(store), PLAN, revalidate_s=3600,
                               now=lambda: datetime(2022, 3, 1, tzinfo=UTC),
                               materialize=MaterializeConfig(enabled=True, interval_s=10, first_year=2019,
                                                             months=False))

    async def materialized(want: float | None) -> float | None:
        deadline = time.monotonic() + 30
        while (got := _materialized(store, "A", "labour_productivity", "2019")) != want and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return got

    await service.start()
    try:
        assert await materialized(10.0) == pytest.approx(10.0)  # 1000 万元 / 100 persons
        await service.indicators("county", Period.of_year(2019), Scope())  # a client's, kept in the cache
        # the statistics bureau corrects the 2019 value added with `fmc reports import` (another process)
        (tmp_path / "fix.csv").write_text("企业编号,期间,工业增加值(万元),可比价工业增加值(万元)\nA,2019,2000,2000\n",
                                          encoding="utf-8")
        assert await asyncio.to_thread(cli.main, ["reports", "import", str(tmp_path / "fix.csv"), "-c", str(cfg)]) == 0
        after = await materialized(20.0)  # within an interval (10 s)
    finally:
        await service.aclose()
    assert after == pytest.approx(20.0), f"the dashboards' 2019 labour productivity is still {after}"


def county_nc_rate_2020(path: Path) -> dict:
    reader = EmbeddedStore(path, readonly=True)
    try:
        [point] = reader.points("indicator", {"level": "county", "region": "330602", "indicator": "nc_rate",
                                              "period": "2020"})
    finally:
        reader.close()
    return point.fields


async def test_rematerialized_point_keeps_no_figure_the_new_computation_lacks(
    service: IndicatorService, store_path: Path
) -> None:
    """The store merges the fields of a second write of a series and time (as InfluxDB does), so
    materialization replaces its points: a county figure that became insufficient_data was still
    published as 45 % and met beside the new status."""
    await service.materialize([Period.of_year(2020)])
    before = county_nc_rate_2020(store_path)
    assert (before["status"], before["value"], before["met"]) == ("met", 45.0, 1)
    # a fourth enterprise of the county without data: no county figure any more
    registry = {"E": RegistryEntry("E", "新厂", "330602", "17", {"nc_rate": 30.0})}
    s = IndicatorService(EmbeddedQueryStore(store_path), PLAN, registry=registry, revalidate_s=3600)
    try:
        rows = (await s.indicators("county", Period.of_year(2020), Scope(region_prefix="330602"))).rows
        assert (rows[0].results["nc_rate"].value, rows[0].results["nc_rate"].status) == (None, "insufficient_data")
        [now] = [p for p in indicator_points(rows, s.timezone, policy_text(PLAN)) if p.tags["indicator"] == "nc_rate"]
        await s.materialize([Period.of_year(2020)])
    finally:
        await s.aclose()
    after = county_nc_rate_2020(store_path)
    assert "value" not in now.fields and "met" not in now.fields
    assert after == now.fields  # the new computation's point, with none of the earlier one's figures


async def test_an_enterprise_that_moved_county_leaves_no_point_under_its_old_tags(tmp_path: Path) -> None:
    """The year to date materialized on 1 February with X in county 330603 (industry 28), then on 1 April
    after it moved to 330602 and industry 17 in February: the same period tag and time, new tags. Its
    January series stayed beside the new one (the old county's dashboard listed X with January's
    figure, X's own stat had two rows), and so did county 330603's row and the industry rows pooled
    within it, which have no member any more."""
    path = tmp_path / "store.db"
    points = [daily("X", "330603" if d.month == 1 else "330602", "28" if d.month == 1 else "17", d, 10,
                    5 if d.month == 1 else 3, 3) for d in days_of(2020) if d.month <= 3]
    points += [daily("Y", "330602", "17", d, 10, 4, 4) for d in days_of(2020) if d.month <= 3]
    raw = EmbeddedStore(path)
    assert raw.write_lines([encode(p) for p in points]).refused == []
    raw.close()

    def ytd_points() -> list:
        reader = EmbeddedStore(path, readonly=True)
        try:
            return [p for p in reader.points("indicator") if p.tags["period"] == "2020-YTD"]
        finally:
            reader.close()

    s = IndicatorService(EmbeddedQueryStore(path), PLAN, revalidate_s=3600)
    try:
        await s.materialize([Period.year_to_date(date(2020, 1, 31))])
        before = ytd_points()
        assert {p.tags["region"] for p in before if p.tags.get("enterprise") == "X"} == {"330603"}
        written = await s.materialize([Period.year_to_date(date(2020, 3, 31))])
    finally:
        await s.aclose()
    after = ytd_points()
    assert len(after) == written  # the pass's points and nothing else
    x = [p for p in after if p.tags.get("enterprise") == "X"]
    assert {(p.tags["region"], p.tags["industry"]) for p in x} == {("330602", "17")}
    assert len(x) == len({p.tags["indicator"] for p in x})  # one point per indicator
    assert not [p.tags for p in after if p.tags["region"] == "330603" or p.tags.get("industry") == "28"]
    assert {(p.tags["level"], p.tags["region"]) for p in after} == {
        ("enterprise", "330602"), ("county", "330602"), ("city", "3306"), ("province", "33"),
        ("industry", "330602"), ("industry", "3306"), ("industry", "33"),
    }


async def test_an_enterprise_no_longer_computed_keeps_its_published_points(tmp_path: Path) -> None:
    """Z's daily rows left the store (past its retention, or a store pointed at by mistake that holds
    none of them): a pass that computes no Z deletes none of Z's published points, only what it computes
    anew under other tags; a pass that computes no enterprise at all deletes nothing."""
    path = tmp_path / "store.db"
    points = [daily(e, "330602", "17", d, 10, 4, 4) for e in ("Y", "Z") for d in days_of(2020) if d.month <= 3]
    raw = EmbeddedStore(path)
    assert raw.write_lines([encode(p) for p in points]).refused == []
    raw.close()
    period = Period.year_to_date(date(2020, 3, 31))

    def indicator_tags() -> list[dict[str, str]]:
        reader = EmbeddedStore(path, readonly=True)
        try:
            return [p.tags for p in reader.points("indicator") if p.tags["period"] == "2020-YTD"]
        finally:
            reader.close()

    def forget(enterprises: set[str]) -> None:
        store = EmbeddedStore(path)
        try:
            for d in days_of(2020):
                store.delete_points("enterprise_daily", local_day_start_ns(d, TZ), None,
                                    lambda tags: tags.get("enterprise") in enterprises)
        finally:
            store.close()

    s = IndicatorService(EmbeddedQueryStore(path), PLAN, revalidate_s=3600)
    try:
        await s.materialize([period])
    finally:
        await s.aclose()
    published = indicator_tags()
    z = [t for t in published if t.get("enterprise") == "Z"]
    assert z
    for gone in ({"Z"}, {"Y", "Z"}):
        forget(gone)
        s = IndicatorService(EmbeddedQueryStore(path), PLAN, revalidate_s=3600)
        try:
            await s.materialize([period])
        finally:
            await s.aclose()
        assert [t for t in indicator_tags() if t.get("enterprise") == "Z"] == z
    assert sorted(map(sorted, map(dict.items, indicator_tags()))) == sorted(map(sorted, map(dict.items, published)))


def test_parse_period_forms() -> None:
    today = date(2021, 3, 15)
    assert parse_period("2020", today) == Period.of_year(2020)
    assert parse_period("2020-Q3", today) == Period.of_quarter(2020, 3)
    assert parse_period("2020-02", today) == Period.of_month(2020, 2)
    assert parse_period("2021-YTD", today) == Period.year_to_date(date(2021, 3, 14))
    assert parse_period("2020-YTD", today) == Period.year_to_date(date(2020, 12, 31))
    assert parse_period("2020-YTD-02-29", today).end == date(2020, 2, 29)
    for bad in ("2020-13", "2020-Q5", "20", "2019-YTD-02-29", "1900", "2020 ", "2020;DROP", "２０２０", "2022-YTD"):
        with pytest.raises(ValueError):
            parse_period(bad, today)
    with pytest.raises(ValueError, match="no day of 2021"):
        parse_period("2021-YTD", date(2021, 1, 1))


def test_registry_reports_every_bad_line(tmp_path: Path) -> None:
    f = tmp_path / "enterprises.csv"
    f.write_text("企业编号,企业名称,行政区划代码,行业代码,基期装备数控化率\n"
                 "A,甲,330602,17,38.5\nB b,乙,3306,17,x\nA,丙,330602,1,\n", encoding="utf-8-sig")
    with pytest.raises(ConfigError) as e:
        read_registry(f)
    text = e.value.render()
    for expected in ("line 3, column enterprise", "line 3, column region", "line 3, column nc_rate",
                     "line 4, column enterprise", "line 4, column industry"):
        assert expected in text
    f.write_text("enterprise,region,industry,colour\nA,330602,17,red\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown header 'colour'"):
        read_registry(f)


def test_a_registry_closing_date_is_a_day_and_a_bad_one_is_named(tmp_path: Path) -> None:
    f = tmp_path / "enterprises.csv"
    f.write_text("企业编号,行政区划代码,行业代码,停产日期\nA,330602,17,2018/6/30\nB,330602,17,\n"
                 "C,330602,17,2018-02-30\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        read_registry(f)
    assert [where for where, _, _ in e.value.problems] == ["line 4, column closed_on"]
    assert str(f) in e.value.render() and "'2018-02-30' is not a date" in e.value.render()
    f.write_text("enterprise,region,industry,closed_on\nA,330602,17,2018/6/30\nB,330602,17,\n", encoding="utf-8")
    got = read_registry(f)
    assert (got["A"].closed_on, got["B"].closed_on) == (date(2018, 6, 30), None)


def test_registry_retired_gateways_are_read_and_a_bad_one_is_named(tmp_path: Path) -> None:
    f = tmp_path / "enterprises.csv"
    f.write_text("企业编号,行政区划代码,行业代码,退役网关\n"
                 "A,330602,17,boiler:2020-09-30； hall-b ：2021/3/31\n"
                 "B,330602,17,\n"
                 "C,330602,17,boiler 2020-09-30\n"
                 "D,330602,17,boiler:2020-02-30\n"
                 "E,330602,17,boiler:2020-09-30;boiler:2021-01-01\n"
                 "F,330602,17,锅炉 房:2020-09-30\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        read_registry(f)
    assert [where for where, _, _ in e.value.problems] == [f"line {n}, column retired_gateways" for n in (4, 5, 6, 7)]
    text = e.value.render()
    for expected in (str(f), "'boiler 2020-09-30' has no ':'", "'2020-02-30' is not a date", "'boiler' is named twice",
                     "'锅炉 房' in '锅炉 房:2020-09-30' is not a gateway id", "e.g. boiler:2020-09-30"):
        assert expected in text, expected
    f.write_text("enterprise,region,industry,retired_gateways\nA,330602,17,\"boiler:2020-09-30;hall-b:2021-03\"\n"
                 "B,330602,17,\n", encoding="utf-8")
    got = read_registry(f)
    assert got["A"].retired_gateways == {"boiler": date(2020, 9, 30), "hall-b": date(2021, 3, 1)}
    assert got["B"].retired_gateways == {}
    f.write_text("enterprise,region,industry,退役网关,投运网关\nA,330602,17,hall-b:2021-03-31,hall-b:2020-07-01\n"
                 "B,330602,17,hall-b:2020-03-31,hall-b:2020-07-01\nC,330602,17,,hall-c 2020-07-01\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        read_registry(f)
    assert [where for where, _, _ in e.value.problems] == ["line 3, column retired_gateways",
                                                          "line 4, column commissioned_gateways"]
    assert "retired on 2020-03-31, before it was commissioned on 2020-07-01" in e.value.render()
    assert "its first day in service" in e.value.render()
    f.write_text("enterprise,region,industry,启用网关\nA,330602,17,hall-b:2020-07-01\n", encoding="utf-8")
    assert read_registry(f)["A"].commissioned_gateways == {"hall-b": date(2020, 7, 1)}


def test_a_registry_row_longer_than_the_header_is_refused_by_line_not_cut(tmp_path: Path) -> None:
    f = tmp_path / "registry.csv"
    # a survey baseline 1,234 unquoted: read as 1 under baseline_labour_productivity, the rest dropped
    f.write_text("enterprise,name,region,industry,baseline_labour_productivity\n"
                 "91330602A1,绍兴甲纺织有限公司,330602,17,1,234\n91330602B2,绍兴乙纺织有限公司,330602,17,\"1,234\",,\n",
                 encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        read_registry(f)
    assert [where for where, _, _ in e.value.problems] == ["line 2"]
    assert "'234' right of the last one" in e.value.render() and "thousands separator" in e.value.render()
    f.write_text("enterprise,region,industry,baseline_labour_productivity\n91330602B2,330602,17,\"1,234\",,\n",
                 encoding="utf-8")
    assert read_registry(f)["91330602B2"].baseline_values == {"labour_productivity": 1234.0}


def _central_toml(tmp_path: Path, store_path: Path, registry: str = "") -> Path:
    cfg = tmp_path / "central.toml"
    cfg.write_text(f'[store]\ntype = "embedded"\npath = "{store_path.name}"\n{registry}', encoding="utf-8")
    return cfg


def test_fmc_indicators_table(tmp_path: Path, store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _central_toml(store_path.parent, store_path)
    assert cli.main(["indicators", "-c", str(cfg), "--year", "2020", "--region", "330602", "--by", "enterprise"]) == 0
    out = capsys.readouterr().out
    assert "装备数控化率" in out and "45.00" in out and "43.00" in out and "达标" in out
    assert "3/3" in out  # met / assessed
    assert cli.main(["indicators", "-c", str(cfg), "--year", "2020", "--enterprise", "A", "--lang", "en"]) == 0
    out = capsys.readouterr().out
    assert "equipment NC rate" in out and "50.00" in out and "met" in out
    assert cli.main(["indicators", "-c", str(cfg), "--year", "2020", "--region", "33'; DROP"]) == 2
    assert "region prefix" in capsys.readouterr().err


def test_fmc_reports_import_writes_all_or_nothing(
    tmp_path: Path, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _central_toml(store_path.parent, store_path)
    good = tmp_path / "good.csv"
    good.write_text("enterprise,period,value_added,employees_avg\nC,2020,3000000,100\nA,2020-03,900000,80\n",
                    encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_text("enterprise,period,value_added\nC,2019,100\nnobody,2019,5\n", encoding="utf-8")
    assert cli.main(["reports", "import", str(bad), "-c", str(cfg)]) == 2
    assert "nobody" in capsys.readouterr().err
    reader = EmbeddedStore(store_path, readonly=True)
    assert not [p for p in reader.points("enterprise_report") if p.tags["period"] == "2019"]
    reader.close()
    assert cli.main(["reports", "import", str(good), "-c", str(cfg), "--dry-run"]) == 0
    assert cli.main(["reports", "import", str(good), "-c", str(cfg)]) == 0
    assert "wrote 2 report(s)" in capsys.readouterr().out
    reader = EmbeddedStore(store_path, readonly=True)
    stored = {(p.tags["enterprise"], p.tags["period"]): p.fields for p in reader.points("enterprise_report")}
    reader.close()
    assert stored[("C", "2020")] == {"value_added": 3_000_000.0, "employees_avg": 100.0}
    assert ("A", "2020-03") in stored


def test_fmc_reports_import_corrects_a_report_of_an_enterprise_that_moved_where_it_is_read(
    tmp_path: Path, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # M: 330603 through 2019, 330602 from 2020; its 2019 report was imported in 2020 under its latest region
    # (as earlier versions did), then revised through the service under the region of 2019's end
    writer = EmbeddedStore(store_path)
    points = [daily("M", "330603", "17", date(2019, 12, 31), 10, 5, 5), daily("M", "330602", "17", date(2020, 6, 30),
                                                                               10, 5, 5),
              report("M", "330602", "17", 2019, 10e6), report("M", "330603", "17", 2019, 10e6)]
    assert writer.write_lines([encode(p) for p in points]).refused == []
    writer.close()
    fix = tmp_path / "fix.csv"
    fix.write_text("enterprise,period,value_added\nM,2019,12000000\nM,2019-12,1000000\nM,2020-06,1000000\n",
                   encoding="utf-8")
    assert cli.main(["reports", "import", str(fix), "-c", str(_central_toml(store_path.parent, store_path))]) == 0
    assert "wrote 3 report(s)" in capsys.readouterr().out
    reader = EmbeddedStore(store_path, readonly=True)
    stored = {(p.tags["period"], p.tags["region"]): p.fields["value_added"] for p in reader.points("enterprise_report")
              if p.tags["enterprise"] == "M"}
    reader.close()
    # a new report under the region of its period's end; the correction onto both points of 2019 (the stores
    # merge them in series order, not in the order of writing)
    assert stored == {("2019", "330602"): 12e6, ("2019", "330603"): 12e6, ("2019-12", "330603"): 1e6,
                      ("2020-06", "330602"): 1e6}


def test_central_config_errors_name_setting_and_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "central.toml"
    cfg.write_text('targets = "no-such-plan"\n[store]\ntype = "embedded"\n', encoding="utf-8")
    assert cli.main(["indicators", "-c", str(cfg), "--year", "2020"]) == 2
    err = capsys.readouterr().err
    assert "`targets`" in err and "zhejiang-2017-2020" in err and "Traceback" not in err
    cfg.write_text('[store]\ntype = "embedded"\n[api]\nport = 0\n', encoding="utf-8")
    assert cli.main(["indicators", "-c", str(cfg), "--year", "2020"]) == 2
    assert "api.port" in capsys.readouterr().err


def test_now_is_local() -> None:
    s = IndicatorService.__new__(IndicatorService)  # only the clock: no store needed
    s._tz = TZ
    s._now = lambda: datetime(2020, 12, 31, 17, 0, tzinfo=UTC)  # 01:00 on 1 January in Shanghai
    assert s.today() == date(2021, 1, 1)


@pytest.mark.parametrize(
    "kwargs",
    [{"region_prefix": "３３"}, {"region_prefix": "330"}, {"region_prefix": "33/.*/"}, {"industries": ("1",)},
     {"industries": ("17|18",)}, {"enterprises": ("a' OR '1'='1",)}, {"enterprises": ("x\ny",)},
     {"region_prefix": "٣٣"}],
)
def test_scope_refuses_what_is_not_a_code(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Scope(**kwargs)


def test_rematerialized_periods_are_the_ones_that_can_have_changed() -> None:
    from fmc.central.service import stale_periods

    periods = [Period.of_year(y) for y in range(2016, 2027)] + [Period.of_month(2019, 3)]
    years = lambda ps: sorted({p.year for p in ps})  # noqa: E731
    assert years(stale_periods(periods, 2026, set(), 2016)) == [2025, 2026]
    # a 2019 report changes 2019 (and its months) and 2020's year-on-year change
    chosen = stale_periods(periods, 2026, {2019}, 2016)
    assert years(chosen) == [2019, 2020, 2025, 2026] and Period.of_month(2019, 3) in chosen
    assert stale_periods(periods, 2026, {2016}, 2016) == periods  # the base year moves every target
