"""The central store query interface (``fmc.central.store.IndicatorStore``): one contract, run on both stores.

Every test runs on the embedded SQLite store (``EmbeddedQueryStore``) and on a real InfluxDB 1.6
(``InfluxQueryStore``) seeded with the same points, written the way agents write them (line
protocol through the store's ingest path) and made by the project's own writers or in their exact
format (``fmc.plant.rollups``, ``fmc.central.reports.report_points``). Expected values are worked out by
hand in the comments, and the randomized test checks the stores against ``indicators.summarize``.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest

from fmc.central.reports import report_points
from fmc.central.store import Scope, StoreQueryError, series_digest
from fmc.core.lineprotocol import encode
from fmc.core.localtime import local_day_start_ns, zone
from fmc.core.points import Point, Priority
from fmc.indicators.engine import ConsumptionDay, EnterpriseDay, Period, summarize
from fmc.indicators.reports import EnterpriseReport
from fmc.indicators.sums import CarrierSums, DailySums, EnterpriseInfo, PeriodSums, StoredReport
from fmc.plant.rollups import InventoryItem, Site, consumption_daily, enterprise_daily, enterprise_daily_unobserved
from fmc.stores.embedded.store import EmbeddedQueryStore, EmbeddedStore
from tests.store_backends import TZ, Backend, consumption_point, daily_point


def day(text: str) -> date:
    return date.fromisoformat(text)


def days(first: str, last: str) -> tuple[date, date]:
    return day(first), day(last)


def ed(d: str, total: int, nc: int, value_total: float, value_nc: float, networked: int, nc_networked: int):
    return EnterpriseDay(day(d), total, nc, value_total, value_nc, networked, nc_networked)


A = Site("E-A", "330602", "1711")
B = Site("E-B", "330603", "1810")
C = Site("E-C", "330702", "2611")
D = Site("E-D", "330602", "1751")  # consumption only, no enterprise_daily
M_OLD = Site("E-M", "330602", "1711")
M_NEW = Site("E-M", "330781", "1712")  # moved: its latest series has these tags
N_OLD = Site("E-N", "330602", "1711")
N_NEW = Site("E-N", "330604", "1713")  # its latest point is a report, with these tags

A_FIRST_WRITE = ed("2019-01-01", 10, 4, 1000.0, 400.0, 6, 3)  # overwritten below: the same day again
A_ROWS = [
    ed("2019-01-01", 10, 5, 1000.0, 500.0, 7, 4),
    ed("2019-12-30", 12, 6, 1200.5, 600.25, 8, 5),
    ed("2019-12-31", 12, 7, 1200.5, 700.25, 9, 6),  # last local day of 2019: 2019-12-30T16:00Z
    ed("2020-01-01", 14, 8, 1400.0, 800.0, 10, 7),  # first of 2020: stamped exactly at the bound
]
B_ROWS = [
    ed("2020-02-28", 20, 10, 0.0, 0.0, 12, 8),
    ed("2020-02-29", 20, 11, 0.0, 0.0, 13, 9),  # leap day
    ed("2020-03-01", 21, 11, 0.0, 0.0, 14, 10),
]
B_CONSUMPTION = [
    ConsumptionDay(day("2020-02-28"), "electricity", 1000.0, tce=0.125, coverage=1.0),
    ConsumptionDay(day("2020-02-29"), "electricity", 500.0, tce=0.0625, coverage=0.5),
    ConsumptionDay(day("2020-02-29"), "water_intake", 30.0, m3=30.0, coverage=1.0),
    ConsumptionDay(day("2020-03-01"), "electricity", 800.0, tce=0.1, coverage=1.0),
]
C_ROWS = [ed("2019-06-15", 5, 1, 50.0, 10.0, 2, 1)]
D_CONSUMPTION = [
    ConsumptionDay(day("2019-03-10"), "natural_gas", 100.0, tce=0.25, coverage=1.0),
    ConsumptionDay(day("2019-03-11"), "natural_gas", 50.0, tce=0.125, coverage=0.75),
    ConsumptionDay(day("2019-03-10"), "steam", 2.0, tce=0.5, coverage=1.0),
    ConsumptionDay(day("2019-03-11"), "steam", 3.0, tce=None, coverage=1.0),  # no tce that day
]
M_OLD_ROWS = [ed("2021-01-05", 3, 1, 0.0, 0.0, 1, 1)]
M_NEW_ROWS = [ed("2021-06-01", 4, 2, 0.0, 0.0, 2, 2)]
N_ROWS = [ed("2019-05-01", 6, 3, 0.0, 0.0, 3, 3)]

REPORTS_OLD_TAGS = [
    EnterpriseReport(enterprise="E-A", period="2019", value_added=5_000_000.0, employees_avg=120.0,
                     revenue=20_000_000.0, rd_expense=400_000.0),
    EnterpriseReport(enterprise="E-A", period="2019-03", value_added=400_000.0),
    EnterpriseReport(enterprise="E-A", period="2020", value_added=5_500_000.0, employees_avg=118.0),
    EnterpriseReport(enterprise="E-B", period="2020-02", value_added=300_000.0),
    EnterpriseReport(enterprise="E-D", period="2018", value_added=1_000_000.0),
    EnterpriseReport(enterprise="E-M", period="2020", value_added=2_000_000.0),
]
REPORTS_NEW_TAGS = [EnterpriseReport(enterprise="E-N", period="2020", value_added=3_000_000.0, employees_avg=30.0)]
SITES = {s.enterprise: s for s in (A, B, C, D, M_OLD)}


def seed_points() -> list[Point]:
    points = [daily_point(A, A_FIRST_WRITE)]
    points += [daily_point(A, r) for r in A_ROWS]
    points += [daily_point(B, r) for r in B_ROWS] + [consumption_point(B, r) for r in B_CONSUMPTION]
    points += [daily_point(C, r) for r in C_ROWS] + [consumption_point(D, r) for r in D_CONSUMPTION]
    points += [daily_point(M_OLD, r) for r in M_OLD_ROWS] + [daily_point(M_NEW, r) for r in M_NEW_ROWS]
    points += [daily_point(N_OLD, r) for r in N_ROWS]
    points += report_points(
        REPORTS_OLD_TAGS, {e: s.region for e, s in SITES.items()}, {e: s.industry for e, s in SITES.items()}, tz=TZ
    )
    points += report_points(REPORTS_NEW_TAGS, {"E-N": N_NEW.region}, {"E-N": N_NEW.industry}, tz=TZ)
    return points


@pytest.fixture
async def seeded(backend: Backend) -> Backend:
    backend.ingest(seed_points())  # A's 2019-01-01 twice: its second write must win
    return backend


def assert_sums_equal(got: PeriodSums | None, want: PeriodSums | None, *, rel: float = 0.0) -> None:
    """Field by field; floats within ``rel`` (sums of floats may differ in the last bits with the order)."""
    assert (got is None) == (want is None), (got, want)
    if got is None or want is None:
        return
    assert (got.daily is None) == (want.daily is None), (got.daily, want.daily)
    pairs = [(got.daily, want.daily)] if got.daily is not None else []
    assert set(got.carriers) == set(want.carriers)
    pairs += [(got.carriers[c], want.carriers[c]) for c in want.carriers]
    if want.daily is not None and math.isnan(want.daily.networked_days):  # every day has the networked counts
        pairs[0] = (got.daily, dataclasses.replace(want.daily, networked_days=float(want.daily.days)))
    if want.gateway_last_days:  # rows made without gateways (``summarize``) do not say
        assert got.gateway_last_days == want.gateway_last_days
    for g, w in pairs:
        for f in dataclasses.fields(w):  # type: ignore[arg-type]
            gv, wv = getattr(g, f.name), getattr(w, f.name)
            if f.name == "last_gateways" and not wv:  # not told: rows made without gateways
                continue
            if isinstance(wv, float):
                if math.isnan(wv):  # a field the rows do not carry
                    assert math.isnan(gv), (f.name, gv, wv)
                    continue
                assert math.isclose(gv, wv, rel_tol=rel, abs_tol=1e-9 if rel else 0.0), (f.name, gv, wv)
            else:
                assert gv == wv, (f.name, gv, wv)
                assert type(gv) is type(wv), (f.name, type(gv), type(wv))


# --- the writers' format -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _EquipmentDay:
    equipment: str
    day: date
    good_samples: int
    online_s: float


@dataclass(frozen=True)
class _Interval:
    meter: str
    carrier: str
    start_ns: int
    end_ns: int
    amount: float
    covered_ns: int


def test_helpers_match_the_rollup_writers() -> None:
    """The hand-built seed has the measurement, tags, field names and types of the real writers."""
    d = day("2019-12-31")
    inventory = [
        InventoryItem("m1", nc=True, asset_value=700.25),
        InventoryItem("m2", nc=False, asset_value=500.25),
        InventoryItem("m3", nc=True),
    ]
    written = enterprise_daily(d, A, inventory, [_EquipmentDay("m1", d, 10, 3600.0)])
    mine = daily_point(A, dataclasses.replace(ed("2019-12-31", 3, 2, 1200.5, 700.25, 1, 1), equipment_valued=2))
    assert written == mine
    assert {k: type(v) for k, v in written.fields.items()} == {k: type(v) for k, v in mine.fields.items()}

    start = local_day_start_ns(d, zone(TZ))
    quarter = 900 * 10**9
    intervals = [_Interval("e1", "electricity", start + i * quarter, start + (i + 1) * quarter, 10.0, quarter)
                 for i in range(96)]
    [written_c] = consumption_daily(d, A, intervals, {"e1": "electricity"})
    mine_c = consumption_point(A, ConsumptionDay(d, "electricity", 960.0, tce=written_c.fields["tce"], coverage=1.0))
    assert written_c == mine_c


# --- period sums -------------------------------------------------------------------------------------


async def test_year_sums_days_and_last_row(seeded: Backend) -> None:
    got = await seeded.store.period_sums(day("2019-01-01"), day("2019-12-31"), Scope())
    # A in 2019: 01-01 (second write), 12-30, 12-31; not 2020-01-01 (stamped at the upper bound)
    assert_sums_equal(got["E-A"], PeriodSums(DailySums(
        days=3, equipment_total=34.0, equipment_nc=18.0, asset_value_total=3401.0, asset_value_nc=1800.5,
        equipment_networked=24.0, nc_equipment_networked=15.0, last_day=day("2019-12-31"),
        last_equipment_total=12.0, last_equipment_nc=7.0, last_asset_value_total=1200.5, last_asset_value_nc=700.25,
        last_equipment_networked=9.0, last_nc_equipment_networked=6.0,  # no 原值 count in the rollup: NaN
    )))
    assert_sums_equal(got["E-C"], PeriodSums(DailySums(1, 5.0, 1.0, 50.0, 10.0, 2.0, 1.0, day("2019-06-15"),
                                                       5.0, 1.0, 50.0, 10.0, 2.0, 1.0)))
    # consumption without any enterprise_daily: the carriers only; steam lacks tce on one day
    assert_sums_equal(got["E-D"], PeriodSums(None, {
        "natural_gas": CarrierSums("natural_gas", 2, 150.0, 0.375, 2, 0.0, 0, 1.75, *days("2019-03-10", "2019-03-11")),
        "steam": CarrierSums("steam", 2, 5.0, 0.5, 1, 0.0, 0, 2.0, *days("2019-03-10", "2019-03-11")),
    }))
    assert set(got) == {"E-A", "E-C", "E-D", "E-N"}  # B starts in 2020, M in 2021


async def test_local_midnight_bounds_first_and_last_day_of_a_year(seeded: Backend) -> None:
    store = seeded.store
    last = await store.period_sums(day("2019-12-31"), day("2019-12-31"), Scope())
    assert last["E-A"].daily is not None
    assert (last["E-A"].daily.days, last["E-A"].daily.equipment_nc, last["E-A"].daily.last_day) == (
        1, 7.0, day("2019-12-31"))
    first = await store.period_sums(day("2020-01-01"), day("2020-01-01"), Scope())
    assert first["E-A"].daily is not None
    assert (first["E-A"].daily.days, first["E-A"].daily.equipment_nc) == (1, 8.0)
    new_year = await store.period_sums(day("2019-01-01"), day("2019-01-01"), Scope())
    assert new_year["E-A"].daily is not None and new_year["E-A"].daily.days == 1
    span = await store.period_sums(day("2019-12-30"), day("2020-01-01"), Scope())
    assert span["E-A"].daily is not None
    assert (span["E-A"].daily.days, span["E-A"].daily.equipment_total, span["E-A"].daily.last_day) == (
        3, 38.0, day("2020-01-01"))


async def test_leap_day_and_february(seeded: Backend) -> None:
    store = seeded.store
    leap = await store.period_sums(day("2020-02-29"), day("2020-02-29"), Scope())
    assert_sums_equal(leap["E-B"], PeriodSums(
        DailySums(1, 20.0, 11.0, 0.0, 0.0, 13.0, 9.0, day("2020-02-29"), 20.0, 11.0, 0.0, 0.0, 13.0, 9.0),
        {"electricity": CarrierSums("electricity", 1, 500.0, 0.0625, 1, 0.0, 0, 0.5, *days("2020-02-29", "2020-02-29")),
         "water_intake": CarrierSums("water_intake", 1, 30.0, 0.0, 0, 30.0, 1, 1.0, *days("2020-02-29", "2020-02-29"))},
    ))
    feb = await store.period_sums(day("2020-02-01"), day("2020-02-29"), Scope())
    assert_sums_equal(feb["E-B"], PeriodSums(
        DailySums(2, 40.0, 21.0, 0.0, 0.0, 25.0, 17.0, day("2020-02-29"), 20.0, 11.0, 0.0, 0.0, 13.0, 9.0),
        {"electricity": CarrierSums("electricity", 2, 1500.0, 0.1875, 2, 0.0, 0, 1.5,
                                    *days("2020-02-28", "2020-02-29")),
         "water_intake": CarrierSums("water_intake", 1, 30.0, 0.0, 0, 30.0, 1, 1.0, *days("2020-02-29", "2020-02-29"))},
    ))
    assert set(feb) == {"E-B"}


async def test_the_last_days_networked_and_valued_equipment(backend: Backend) -> None:
    """The last day's networked counts, and its in-scope equipment with a 原值 when the rollup carries
    ``equipment_valued`` (an asset-value NC rate's coverage); NaN where it does not."""
    valued = daily_point(A, ed("2019-12-31", 12, 7, 1200.5, 700.25, 9, 6))
    valued.fields["equipment_valued"] = 11
    backend.ingest([daily_point(A, ed("2019-12-30", 12, 6, 1200.5, 600.25, 8, 5)), valued,
                    daily_point(B, ed("2019-12-31", 3, 1, 0.0, 0.0, 2, 1))])
    got = await backend.store.period_sums(day("2019-12-01"), day("2019-12-31"), Scope())
    a, b = got["E-A"].daily, got["E-B"].daily
    assert a is not None and b is not None
    assert (a.last_equipment_networked, a.last_nc_equipment_networked, a.last_equipment_valued) == (9.0, 6.0, 11.0)
    assert (b.last_equipment_networked, b.last_nc_equipment_networked) == (2.0, 1.0)
    assert math.isnan(b.last_equipment_valued)


async def test_a_day_written_twice_counts_once_with_the_last_values(seeded: Backend) -> None:
    got = await seeded.store.period_sums(day("2019-01-01"), day("2019-01-31"), Scope())
    daily = got["E-A"].daily
    assert daily is not None
    assert (daily.days, daily.equipment_nc, daily.asset_value_nc, daily.equipment_networked) == (1, 5.0, 500.0, 7.0)


async def test_an_empty_period(seeded: Backend) -> None:
    assert await seeded.store.period_sums(day("2015-01-01"), day("2015-12-31"), Scope()) == {}
    assert await seeded.store.period_sums(day("2019-12-31"), day("2019-12-31"), Scope(enterprises=("E-B",))) == {}


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        (Scope(), {"E-A", "E-B", "E-C", "E-D", "E-N"}),
        (Scope(region_prefix="33"), {"E-A", "E-B", "E-C", "E-D", "E-N"}),
        (Scope(region_prefix="3306"), {"E-A", "E-B", "E-D", "E-N"}),
        # E-N's 2019 rollup was recorded in 330602, but at the period's end (its 2020 report) it is in 330604
        (Scope(region_prefix="330602"), {"E-A", "E-D"}),
        (Scope(region_prefix="3307"), {"E-C"}),
        (Scope(region_prefix="34"), set()),
        (Scope(industries=("17",)), {"E-A", "E-D", "E-N"}),
        (Scope(industries=("1751",)), {"E-D"}),
        (Scope(industries=("18", "26")), {"E-B", "E-C"}),
        (Scope(industries=("175",)), {"E-D"}),
        (Scope(enterprises=("E-B", "E-D")), {"E-B", "E-D"}),
        (Scope(enterprises=("E-Z",)), set()),
        (Scope(region_prefix="3306", industries=("17",)), {"E-A", "E-D", "E-N"}),
        (Scope(region_prefix="3306", industries=("17",), enterprises=("E-D", "E-B")), {"E-D"}),
        (Scope(region_prefix="3306", enterprises=("E-C",)), set()),
    ],
)
async def test_scope_in_the_query(seeded: Backend, scope: Scope, expected: set[str]) -> None:
    got = await seeded.store.period_sums(day("2019-01-01"), day("2020-12-31"), scope)
    assert set(got) == expected
    if "E-A" in expected:
        # scoped sums are the enterprise's whole sums, not a part of them
        assert got["E-A"].daily is not None and got["E-A"].daily.days == 4


# --- enterprises and reports -------------------------------------------------------------------------


async def test_enterprises_sorted_with_the_latest_tags(seeded: Backend) -> None:
    assert await seeded.store.enterprises(Scope()) == [
        EnterpriseInfo("E-A", "330602", "1711"),
        EnterpriseInfo("E-B", "330603", "1810"),
        EnterpriseInfo("E-C", "330702", "2611"),
        EnterpriseInfo("E-D", "330602", "1751"),  # consumption only
        EnterpriseInfo("E-M", "330781", "1712"),  # its 2021-06 rollup beats its 2021-01 one and its 2020 report
        EnterpriseInfo("E-N", "330604", "1713"),  # its 2020 report beats its 2019 rollup
    ]
    store = seeded.store
    # scope applies to the latest tags: E-M is no longer in 330602, E-N not in 1711
    assert [e.enterprise for e in await store.enterprises(Scope(region_prefix="330602"))] == ["E-A", "E-D"]
    assert [e.enterprise for e in await store.enterprises(Scope(industries=("1711",)))] == ["E-A"]
    assert [e.enterprise for e in await store.enterprises(Scope(region_prefix="3307"))] == ["E-C", "E-M"]
    assert [e.enterprise for e in await store.enterprises(Scope(enterprises=("E-M", "E-B")))] == ["E-B", "E-M"]
    assert await store.enterprises(Scope(region_prefix="3306", industries=("26",))) == []


@pytest.mark.parametrize("ids_per_condition", [None, 0], ids=["ids", "no-ids"])
async def test_an_enterprise_is_where_its_latest_point_by_the_period_end_says(
    seeded: Backend, ids_per_condition: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E-M: a 2020 report and a 2021-01-05 rollup in 330602/1711, a 2021-06-01 rollup in 330781/1712.
    E-N: a 2019-05-01 rollup in 330602/1711, its 2020 report in 330604/1713.

    ``no-ids``: InfluxDB finds the candidates' points under other tags without a condition on their ids
    (what it does beyond IDS_PER_CONDITION candidates, a city or a province)."""
    if ids_per_condition is not None:
        monkeypatch.setattr("fmc.stores.influxdb.query.IDS_PER_CONDITION", ids_per_condition)
    store = seeded.store
    tags = {e.enterprise: (e.region, e.industry) for e in await store.enterprises(Scope(), as_of=day("2021-03-31"))}
    assert tags["E-M"] == ("330602", "1711") and tags["E-N"] == ("330604", "1713")
    at_2019 = {e.enterprise: (e.region, e.industry) for e in await store.enterprises(Scope(), as_of=day("2019-12-31"))}
    assert at_2019["E-N"] == ("330602", "1711")
    assert at_2019["E-M"] == ("330602", "1711")  # no point by then: its earliest point's tags (the 2020 report)
    assert at_2019["E-B"] == ("330603", "1810")  # B starts in 2020
    assert [e.enterprise for e in await store.enterprises(Scope(region_prefix="330602"), as_of=day("2019-12-31"))] \
        == ["E-A", "E-D", "E-M", "E-N"]
    # 2021: M's year-end region is 330781, with both of its rows, the one recorded in 330602 too
    year = (day("2021-01-01"), day("2021-12-31"))
    moved = await store.period_sums(*year, Scope(region_prefix="3307"))
    assert moved["E-M"].daily is not None and moved["E-M"].daily.days == 2
    assert "E-M" not in await store.period_sums(*year, Scope(region_prefix="330602"))
    # the first quarter of 2021 ends before the move; with as_of the year's end it is read for the year's members
    q1 = (day("2021-01-01"), day("2021-03-31"))
    assert set(await store.period_sums(*q1, Scope(region_prefix="330602"))) == {"E-M"}
    assert await store.period_sums(*q1, Scope(region_prefix="330602"), as_of=day("2021-12-31")) == {}
    assert set(await store.period_sums(*q1, Scope(region_prefix="3307"), as_of=day("2021-12-31"))) == {"E-M"}
    # reports: as of the end of their last year, or of the day given
    assert list(await store.reports(2020, 2020, Scope(region_prefix="330602"))) == ["E-A", "E-M"]
    assert list(await store.reports(2020, 2020, Scope(region_prefix="330602"), as_of=day("2021-12-31"))) == ["E-A"]
    assert list(await store.reports(2020, 2020, Scope(region_prefix="3307"), as_of=day("2021-12-31"))) == ["E-M"]


async def test_reports_by_years_annual_and_monthly(seeded: Backend) -> None:
    store = seeded.store
    got = await store.reports(2019, 2020, Scope())
    assert got == {
        "E-A": [
            StoredReport("E-A", "2019", {"value_added": 5_000_000.0, "employees_avg": 120.0,
                                         "revenue": 20_000_000.0, "rd_expense": 400_000.0}),
            StoredReport("E-A", "2019-03", {"value_added": 400_000.0}),
            StoredReport("E-A", "2020", {"value_added": 5_500_000.0, "employees_avg": 118.0}),
        ],
        "E-B": [StoredReport("E-B", "2020-02", {"value_added": 300_000.0})],  # absent figures are absent
        "E-M": [StoredReport("E-M", "2020", {"value_added": 2_000_000.0})],
        "E-N": [StoredReport("E-N", "2020", {"value_added": 3_000_000.0, "employees_avg": 30.0})],
    }
    assert all(type(v) is float for reports in got.values() for r in reports for v in r.figures.values())
    assert await store.reports(2018, 2018, Scope()) == {
        "E-D": [StoredReport("E-D", "2018", {"value_added": 1_000_000.0})]
    }
    assert list(await store.reports(2019, 2019, Scope())) == ["E-A"]
    assert list(await store.reports(2020, 2020, Scope(region_prefix="330603"))) == ["E-B"]
    assert list(await store.reports(2018, 2020, Scope(industries=("17",)))) == ["E-A", "E-D", "E-M", "E-N"]
    assert list(await store.reports(2018, 2020, Scope(enterprises=("E-D",)))) == ["E-D"]
    assert await store.reports(2021, 2030, Scope()) == {}


# --- write ---------------------------------------------------------------------------------------------


def report_point(enterprise: str, period: str, ts_day: str, **figures: float) -> Point:
    site = SITES[enterprise]
    return Point("enterprise_report", site.tags(period=period), dict(figures),
                 local_day_start_ns(day(ts_day), zone(TZ)), Priority.ROLLUP)


async def test_write_stores_every_point(seeded: Backend) -> None:
    store = seeded.store
    await store.write([
        report_point("E-A", "2022", "2022-01-01", value_added=1.5, revenue=3.0),
        report_point("E-B", "2022-05", "2022-05-01", value_added=2.5),
        daily_point(B, ed("2022-05-02", 1, 1, 0.0, 0.0, 1, 1)),
    ])
    assert await store.reports(2022, 2022, Scope()) == {
        "E-A": [StoredReport("E-A", "2022", {"value_added": 1.5, "revenue": 3.0})],
        "E-B": [StoredReport("E-B", "2022-05", {"value_added": 2.5})],
    }
    got = await store.period_sums(day("2022-05-02"), day("2022-05-02"), Scope())
    assert got["E-B"].daily is not None and got["E-B"].daily.days == 1
    await store.write([])  # nothing to do


async def test_a_second_write_merges_its_fields_and_a_replacing_one_replaces_the_point(seeded: Backend) -> None:
    store = seeded.store
    await store.write([report_point("E-A", "2022", "2022-01-01", value_added=1.5, revenue=3.0)])
    await store.write([report_point("E-A", "2022", "2022-01-01", value_added=2.0)])
    assert await store.reports(2022, 2022, Scope()) == {
        "E-A": [StoredReport("E-A", "2022", {"value_added": 2.0, "revenue": 3.0})]}
    await store.write([report_point("E-A", "2022", "2022-01-01", value_added=2.5),
                       report_point("E-B", "2022", "2022-01-01", revenue=1.0)], replace=True)
    assert await store.reports(2022, 2022, Scope()) == {
        "E-A": [StoredReport("E-A", "2022", {"value_added": 2.5})],
        "E-B": [StoredReport("E-B", "2022", {"revenue": 1.0})],
    }
    # a refused replacing call removes nothing either (InfluxDB: nothing is deleted before the checks)
    conflicting = report_point("E-A", "2022", "2022-01-01")
    conflicting.fields["value_added"] = "much"
    with pytest.raises(StoreQueryError, match="type conflict"):
        await store.write([report_point("E-B", "2022", "2022-01-01", value_added=1.0), conflicting], replace=True)
    assert (await store.reports(2022, 2022, Scope()))["E-B"] == [StoredReport("E-B", "2022", {"revenue": 1.0})]


def indicator_point(period: str, ts_ns: int, indicator: str = "nc_rate", **tags: str) -> Point:
    return Point("indicator", {**tags, "indicator": indicator, "period": period},
                 {"value": 1.0, "coverage": 1.0, "status": "met"}, ts_ns, Priority.ROLLUP)


async def test_deleting_the_indicator_points_a_pass_did_not_write_deletes_exactly_those(seeded: Backend) -> None:
    """E-M moved from 330602/1711 to 330781/1712: its points under the old tags, the 330602 industry 17
    row and the row of county 330603 (no member left) go; every point written under current tags stays,
    and so do the points of another period tag or another time."""
    store = seeded.store
    ts = local_day_start_ns(day("2022-01-01"), zone(TZ))
    kept = [
        indicator_point("2022-YTD", ts, level="enterprise", enterprise="E-M", region="330781", industry="1712"),
        indicator_point("2022-YTD", ts, "energy_intensity", level="enterprise", enterprise="E-M", region="330781",
                        industry="1712"),
        indicator_point("2022-YTD", ts, level="county", region="330602"),  # no industry tag
        indicator_point("2022-YTD", ts, level="industry", region="330602", industry="18"),
    ]
    stale = [
        indicator_point("2022-YTD", ts, level="enterprise", enterprise="E-M", region="330602", industry="1711"),
        # alone in its indicator: InfluxDB deletes it by each tag's values, the others by their exact tags
        indicator_point("2022-YTD", ts, "energy_intensity", level="enterprise", enterprise="E-M", region="330602",
                        industry="1711"),
        indicator_point("2022-YTD", ts, level="industry", region="330602", industry="17"),
        indicator_point("2022-YTD", ts, level="county", region="330603"),
    ]
    other_period = indicator_point("2022", ts, level="county", region="330603")
    other_time = indicator_point("2022-YTD", ts + 3600 * 10**9, level="county", region="330603")
    # an enterprise the pass did not compute (closed, its rows past retention): its points stay
    uncomputed = indicator_point("2022-YTD", ts, level="enterprise", enterprise="E-Z", region="330602",
                                 industry="1711")
    await store.write([*kept, *stale, other_period, other_time, uncomputed])
    keep, computed = {series_digest(p.tags) for p in kept}, {"E-M"}
    assert await store.delete_indicators_except("2022-YTD", ts, keep, computed) == len(stale)
    # what is left of the period is in ``keep`` or not computed (nothing more to delete)
    assert await store.delete_indicators_except("2022-YTD", ts, keep, computed) == 0
    assert await store.delete_indicators_except("2022-YTD", ts, set(), computed) == len(kept)
    assert await store.delete_indicators_except("2022-YTD", ts, set(), {"E-Z"}) == 1
    assert await store.delete_indicators_except("2022", ts, set(), computed) == 1
    assert await store.delete_indicators_except("2022-YTD", other_time.ts_ns, set(), computed) == 1
    assert await store.delete_indicators_except("2023-YTD", ts, set(), computed) == 0  # nothing stored
    # the reports and rollups are not indicator points
    assert (await store.reports(2020, 2020, Scope()))["E-M"] == [StoredReport("E-M", "2020", {"value_added": 2e6})]


async def test_write_is_all_or_nothing_on_a_type_conflict(seeded: Backend) -> None:
    store = seeded.store
    year = (day("2022-01-01"), day("2022-12-31"))
    before = (await store.period_sums(*year, Scope()), await store.reports(2022, 2022, Scope()))
    good = report_point("E-A", "2022", "2022-01-01", value_added=1.0)
    # equipment_total is stored as an integer: a string (or a float) for it conflicts
    conflicting = daily_point(A, ed("2022-01-02", 1, 1, 0.0, 0.0, 1, 1))
    conflicting.fields["equipment_total"] = "many"
    with pytest.raises(StoreQueryError, match="type conflict"):
        await store.write([good, conflicting])
    as_float = daily_point(A, ed("2022-01-03", 1, 1, 0.0, 0.0, 1, 1))
    as_float.fields["equipment_nc"] = 1.0
    with pytest.raises(StoreQueryError, match="type conflict"):
        await store.write([good, as_float])
    assert await store.reports(2022, 2022, Scope()) == {}
    assert await store.period_sums(day("2022-01-01"), day("2022-12-31"), Scope()) == {}
    assert (await store.period_sums(*year, Scope()), await store.reports(2022, 2022, Scope())) == before


async def test_write_is_all_or_nothing_within_the_call(seeded: Backend) -> None:
    """Two points of one call that disagree on a new field's type: neither is written."""
    store = seeded.store
    first = Point("indicator", {"enterprise": "E-A", "indicator": "nc_rate", "period": "2022"}, {"value": 1.5},
                  local_day_start_ns(day("2022-01-01"), zone(TZ)))
    second = Point("indicator", {"enterprise": "E-B", "indicator": "nc_rate", "period": "2022"}, {"value": "high"},
                   local_day_start_ns(day("2022-01-01"), zone(TZ)))
    with pytest.raises(StoreQueryError):
        await store.write([first, second])
    # the same field written alone afterwards as a string: accepted only if the float never landed
    await store.write([dataclasses.replace(second)])


async def test_write_refuses_a_point_line_protocol_cannot_carry(seeded: Backend) -> None:
    store = seeded.store
    good = report_point("E-A", "2022", "2022-01-01", value_added=1.0)
    bad = report_point("E-A", "2023", "2023-01-01", value_added=1.0)
    bad.tags["enterprise"] = "E-A\nenterprise_report,enterprise=X value_added=9"
    with pytest.raises(StoreQueryError, match="nothing was written"):
        await store.write([good, bad])
    nan = report_point("E-A", "2023", "2023-01-01", value_added=float("nan"))
    with pytest.raises(StoreQueryError):
        await store.write([good, nan])
    assert await store.reports(2022, 2023, Scope()) == {}


# --- the same answers as indicators.summarize --------------------------------------------------------


def random_rows(rng: random.Random) -> tuple[dict[str, list[EnterpriseDay]], dict[str, list[ConsumptionDay]]]:
    """A few enterprises over 2019-12 .. 2020-03 (a year end and a leap day), with some days written twice."""
    first = day("2019-12-01")
    daily: dict[str, list[EnterpriseDay]] = {}
    consumption: dict[str, list[ConsumptionDay]] = {}
    for site in (A, B, C):
        rows: list[EnterpriseDay] = []
        cons: list[ConsumptionDay] = []
        for offset in sorted(rng.sample(range(122), 50)):
            d = first + timedelta(days=offset)
            unobserved = rng.random() < 0.2  # the ledger's counts alone: a day the agent was off (fixed per day)
            for _ in range(rng.choice((1, 1, 1, 2))):  # a day sometimes delivered twice
                total = rng.randint(0, 40)
                nc = rng.randint(0, total)
                rows.append(EnterpriseDay(d, total, nc, rng.uniform(0, 1e6), rng.uniform(0, 1e5),
                                          None if unobserved else rng.randint(0, total),
                                          None if unobserved else rng.randint(0, nc)))
            for carrier in ("electricity", "water_intake", "steam"):
                if rng.random() < 0.7:
                    # which fields a carrier has is fixed per day, so a second delivery has the same ones
                    has_tce = carrier == "electricity" or (carrier == "steam" and d.day % 3 != 0)
                    for _ in range(rng.choice((1, 1, 2))):
                        amount = rng.uniform(0, 5000)
                        cons.append(ConsumptionDay(d, carrier, amount,
                                                   tce=amount * 0.1229 / 1000 if has_tce else None,
                                                   m3=amount if carrier == "water_intake" else None,
                                                   coverage=rng.random()))
        daily[site.enterprise], consumption[site.enterprise] = rows, cons
    return daily, consumption


async def test_sums_equal_summarize_of_the_same_rows(backend: Backend) -> None:
    rng = random.Random(20170101)
    daily, consumption = random_rows(rng)
    sites = {s.enterprise: s for s in (A, B, C)}
    backend.ingest([daily_point(sites[e], r) for e, rows in daily.items() for r in rows]
                   + [consumption_point(sites[e], r) for e, rows in consumption.items() for r in rows])
    periods = [
        Period.of_year(2020), Period.of_month(2020, 2), Period.of_month(2019, 12), Period.of_quarter(2020, 1),
        Period.year_to_date(day("2020-02-29")), Period("month", *days("2020-02-29", "2020-02-29")),
        Period.of_year(2019),
    ]
    for period in periods:
        got = await backend.store.period_sums(period.start, period.end, Scope())
        for e in sites:
            want = summarize(period, daily[e], consumption[e])
            if want.daily is None and not want.carriers:
                assert e not in got
                continue
            assert_sums_equal(got[e], want, rel=1e-12)


# --- several gateways of one enterprise ------------------------------------------------------------------
# Each gateway has its own machines and meters and writes its own rollups (tag ``gateway``); the store sums
# them per enterprise and day (docs/design.md §4, docs/scale.md).

G_A = Site("E-G", "330602", "1711", TZ, "hall-a")
G_B = Site("E-G", "330602", "1711", TZ, "hall-b")
G_A_INVENTORY = [InventoryItem("a1", nc=True, asset_value=100.0), InventoryItem("a2", nc=True, asset_value=200.0),
                 InventoryItem("a3", nc=False, asset_value=50.0)]
G_B_INVENTORY = [InventoryItem("b1", nc=True, asset_value=300.0), InventoryItem("b2", nc=False, asset_value=80.0),
                 InventoryItem("b3", nc=False, asset_value=20.0)]  # b3: never connected
PLAN_FILE = Path(__file__).resolve().parents[1] / "fmc" / "indicators" / "plans" / "zhejiang-2017-2020.toml"


def gateway_day(site: Site, inventory: list[InventoryItem], online: Sequence[str], meter: str, kwh_per_quarter: float,
                d: date) -> list[Point]:
    """One gateway's ``enterprise_daily`` and ``consumption_daily`` of day ``d``, made by the real writers."""
    start = local_day_start_ns(d, zone(TZ))
    quarter = 900 * 10**9
    days = [_EquipmentDay(e, d, 100, 8 * 3600.0) for e in online]
    intervals = [_Interval(meter, "electricity", start + i * quarter, start + (i + 1) * quarter, kwh_per_quarter,
                           quarter) for i in range(96)]
    return [enterprise_daily(d, site, inventory, days), *consumption_daily(d, site, intervals, {meter: "electricity"})]


async def test_two_gateways_of_one_enterprise_add_up(backend: Backend) -> None:
    from fmc.indicators.engine import EnterpriseData, measure
    from fmc.indicators.plan import load_targets

    d = day("2019-12-31")
    # hall-a: a1 (NC) online, a2 (NC) offline, a3; meter ea 10 kWh a quarter hour = 960 kWh
    # hall-b: b1 (NC) online, b2, b3; meter eb 5 kWh a quarter hour = 480 kWh; same day, same enterprise
    backend.ingest(gateway_day(G_A, G_A_INVENTORY, ["a1", "a3"], "ea", 10.0, d)
                   + gateway_day(G_B, G_B_INVENTORY, ["b1"], "eb", 5.0, d))
    period = Period("month", d, d)
    got = await backend.store.period_sums(d, d, Scope())
    # by hand: 6 equipment, 3 NC (a1, a2, b1), 2 NC networked (a1, b1), 3 networked (a1, a3, b1)
    assert_sums_equal(PeriodSums(got["E-G"].daily), PeriodSums(DailySums(
        days=1, equipment_total=6.0, equipment_nc=3.0, asset_value_total=750.0, asset_value_nc=600.0,
        equipment_networked=3.0, nc_equipment_networked=2.0, last_day=d,
        last_equipment_total=6.0, last_equipment_nc=3.0, last_asset_value_total=750.0, last_asset_value_nc=600.0,
        last_equipment_networked=3.0, last_nc_equipment_networked=2.0,
        last_equipment_valued=6.0,  # Σ over gateways: every machine of both halls has a 原值
    )))
    electricity = got["E-G"].carriers["electricity"]
    assert (electricity.rows, electricity.amount, electricity.coverage) == (2, 1440.0, 1.0)
    data = EnterpriseData("E-G", sums={(d, d): got["E-G"]})
    plan = load_targets(PLAN_FILE)
    nc = measure("nc_rate", period, data, plan)
    networking = measure("networking_rate", period, data, plan)
    energy = measure("energy", period, data, plan)
    assert nc.value(1.0) == pytest.approx(50.0)  # 3 / 6
    assert networking.value(1.0) == pytest.approx(200.0 / 3)  # 2 NC networked / 3 NC
    assert energy.value(1.0) == pytest.approx(1440.0 * 0.1229 / 1000)  # 0.176976 tce
    assert (nc.coverage, networking.coverage, energy.coverage) == (1.0, 1.0, 1.0)


async def test_a_gateway_that_stopped_keeps_its_last_stocks(backend: Backend) -> None:
    """The stocks at period end are Σ over gateways of each gateway's last day in the period: hall-b
    stopped after 12-30, its equipment still counts at the year's end; days are local days, not rows."""
    backend.ingest(gateway_day(G_A, G_A_INVENTORY, ["a1"], "ea", 10.0, day("2019-12-30"))
                   + gateway_day(G_B, G_B_INVENTORY, ["b1"], "eb", 5.0, day("2019-12-30"))
                   + gateway_day(G_A, G_A_INVENTORY[:2], ["a1"], "ea", 10.0, day("2019-12-31")))  # a3 retired
    got = (await backend.store.period_sums(day("2019-01-01"), day("2019-12-31"), Scope()))["E-G"]
    assert got.daily is not None
    assert (got.daily.days, got.daily.last_day) == (2, day("2019-12-31"))
    # hall-a's 12-31 (a1, a2: 2 NC, 300 yuan) + hall-b's 12-30 (b1 NC, b2, b3: 400 yuan)
    assert (got.daily.last_equipment_total, got.daily.last_equipment_nc) == (5.0, 3.0)
    assert (got.daily.last_asset_value_total, got.daily.last_asset_value_nc) == (700.0, 600.0)
    # networked on each gateway's last day: a1 (NC) on 12-31, b1 (NC) on 12-30
    assert (got.daily.last_equipment_networked, got.daily.last_nc_equipment_networked) == (2.0, 2.0)
    assert (got.daily.equipment_total, got.daily.equipment_nc) == (3 + 3 + 2, 2 + 1 + 2)
    # electricity: 960 + 480 + 960 kWh; hall-b measured one of the two days: coverage 1 + 0.5
    electricity = got.carriers["electricity"]
    assert (electricity.rows, electricity.amount, electricity.coverage) == (3, 2400.0, 1.5)
    assert (electricity.first_day, electricity.last_day) == (day("2019-12-30"), day("2019-12-31"))


async def test_a_carriers_first_and_last_day_span_its_gateways(backend: Backend) -> None:
    """A carrier's first day is the earliest over the gateways that measure it, its last the latest."""
    backend.ingest(gateway_day(G_A, G_A_INVENTORY, ["a1"], "ea", 10.0, day("2019-12-29"))
                   + gateway_day(G_A, G_A_INVENTORY, ["a1"], "ea", 10.0, day("2019-12-30"))
                   + gateway_day(G_B, G_B_INVENTORY, ["b1"], "eb", 5.0, day("2019-12-30"))
                   + gateway_day(G_B, G_B_INVENTORY, ["b1"], "eb", 5.0, day("2019-12-31")))
    got = (await backend.store.period_sums(day("2019-12-01"), day("2019-12-31"), Scope()))["E-G"]
    electricity = got.carriers["electricity"]
    assert (electricity.first_day, electricity.last_day) == (day("2019-12-29"), day("2019-12-31"))
    assert (electricity.rows, electricity.coverage) == (4, 2.0)
    assert got.daily is not None and (got.daily.days, got.daily.last_day) == (3, day("2019-12-31"))
    # the gateway of its last row, and each gateway's last row (whether a carrier's gateway went on after it)
    assert electricity.last_gateways == ("hall-b",)
    assert got.gateway_last_days == {"hall-a": day("2019-12-30"), "hall-b": day("2019-12-31")}


async def test_each_gateways_last_day_counts_its_rollups_and_its_carriers(backend: Backend) -> None:
    """A gateway's last day is its latest row of either measurement; a carrier's last day names every gateway
    with a row of it on that day."""
    backend.ingest(gateway_day(G_A, G_A_INVENTORY, ["a1"], "ea", 10.0, day("2019-12-30"))
                   + gateway_day(G_B, G_B_INVENTORY, ["b1"], "eb", 5.0, day("2019-12-30"))
                   + [enterprise_daily(day("2019-12-31"), G_A, G_A_INVENTORY, [])]  # hall-a: its meter gone
                   + [consumption_point(G_B, ConsumptionDay(day("2019-12-31"), "natural_gas", 10.0, tce=0.01))])
    got = (await backend.store.period_sums(day("2019-12-01"), day("2019-12-31"), Scope()))["E-G"]
    assert (got.carriers["electricity"].last_day, got.carriers["electricity"].last_gateways) == (
        day("2019-12-30"), ("hall-a", "hall-b"))
    assert got.carriers["natural_gas"].last_gateways == ("hall-b",)
    assert got.gateway_last_days == {"hall-a": day("2019-12-31"), "hall-b": day("2019-12-31")}


async def test_rows_without_a_gateway_tag_are_gateway_main(backend: Backend) -> None:
    """Rows an fmc before gateway ids wrote (no tag) and the same agent's later rows (``main``) are one
    gateway: its last day is the later one, its stocks are not counted twice."""
    legacy, main = Site("E-G", "330602", "1711", TZ), Site("E-G", "330602", "1711", TZ, "main")
    backend.ingest(gateway_day(legacy, G_A_INVENTORY, ["a1"], "ea", 10.0, day("2019-12-30"))
                   + gateway_day(main, G_A_INVENTORY, ["a1"], "ea", 10.0, day("2019-12-31")))
    got = (await backend.store.period_sums(day("2019-12-01"), day("2019-12-31"), Scope()))["E-G"]
    assert got.daily is not None
    assert (got.daily.days, got.daily.last_day, got.daily.last_equipment_total) == (2, day("2019-12-31"), 3.0)
    assert got.daily.equipment_total == 6.0
    assert got.carriers["electricity"].coverage == 2.0  # two whole days of one gateway
    assert got.carriers["electricity"].last_gateways == ("main",)
    assert got.gateway_last_days == {"main": day("2019-12-31")}


async def test_a_ledger_only_day_counts_in_days_not_in_networked_days(backend: Backend) -> None:
    """A day the agent was off for longer than it catches up has the ledger's counts alone
    (``enterprise_daily_unobserved``): it is a day of the NC rate, not of the networking rate; a last
    day without networked counts leaves them unknown (NaN), never 0. With several gateways, a day is
    a networked day when any of them has the counts."""
    d1, d2, d3 = day("2019-12-29"), day("2019-12-30"), day("2019-12-31")
    backend.ingest([
        *gateway_day(G_A, G_A_INVENTORY, ["a1"], "ea", 10.0, d1),
        enterprise_daily_unobserved(d2, G_A, G_A_INVENTORY),
        enterprise_daily_unobserved(d3, G_A, G_A_INVENTORY),
        *gateway_day(G_B, G_B_INVENTORY, ["b1"], "eb", 5.0, d2),
    ])
    got = (await backend.store.period_sums(d1, d3, Scope()))["E-G"].daily
    assert got is not None
    assert (got.days, got.networked_days, got.last_day) == (3, 2.0, d3)
    # the ledger rows add their stocks: hall-a 3 a day (2 NC), hall-b 3 (1 NC) on 12-30
    assert (got.equipment_total, got.equipment_nc) == (3 * 3 + 3, 3 * 2 + 1)
    assert (got.equipment_networked, got.nc_equipment_networked) == (1 + 1, 1 + 1)  # a1 on 12-29, b1 on 12-30
    assert (got.last_equipment_total, got.last_equipment_nc) == (6.0, 3.0)  # hall-a's 12-31 + hall-b's 12-30
    assert math.isnan(got.last_equipment_networked) and math.isnan(got.last_nc_equipment_networked)
    one = (await backend.store.period_sums(d2, d3, Scope(enterprises=("E-G",))))["E-G"].daily
    assert one is not None and (one.days, one.networked_days) == (2, 1.0)
    alone = (await backend.store.period_sums(d3, d3, Scope()))["E-G"].daily
    assert alone is not None and (alone.days, alone.networked_days, alone.last_equipment_total) == (1, 0.0, 3.0)
    assert math.isnan(alone.last_nc_equipment_networked)


# --- errors -----------------------------------------------------------------------------------------------


async def test_timezone_is_public_and_bounds_follow_it(tmp_path: Path) -> None:
    raw = EmbeddedStore(tmp_path / "s.db")
    raw.write_lines([encode(daily_point(A, ed("2019-12-31", 1, 1, 0.0, 0.0, 1, 1)))])  # 2019-12-30T16:00Z
    utc = EmbeddedQueryStore(raw, timezone="UTC")
    assert utc.timezone == "UTC"
    # in UTC that point belongs to 2019-12-30
    got = await utc.period_sums(day("2019-12-30"), day("2019-12-30"), Scope())
    assert got["E-A"].daily is not None and got["E-A"].daily.last_day == day("2019-12-30")
    raw.close()
    with pytest.raises(ValueError, match="time zone"):
        EmbeddedQueryStore(tmp_path / "s.db", timezone="Mars/Olympus")


async def test_ping_answers_without_reading_data(seeded: Backend) -> None:
    await seeded.store.ping()


async def test_embedded_missing_or_corrupt_file(tmp_path: Path) -> None:
    missing = EmbeddedQueryStore(tmp_path / "nothing-here.db")
    with pytest.raises(StoreQueryError, match="does not exist"):
        await missing.enterprises(Scope())
    with pytest.raises(StoreQueryError, match="does not exist"):
        await missing.ping()
    assert not (tmp_path / "nothing-here.db").exists()  # a query never creates an empty store
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 1000)
    store = EmbeddedQueryStore(corrupt)
    for call in (store.enterprises(Scope()), store.period_sums(day("2019-01-01"), day("2019-12-31"), Scope()),
                 store.ping()):
        with pytest.raises(StoreQueryError, match=r"corrupt\.db"):
            await call
    await store.aclose()
