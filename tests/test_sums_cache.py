"""The central service's sums cache (``fmc.central.sums_cache``) on a real InfluxDB.

The store contract (``tests/test_store_contract.py``, backend ``influxdb-cached``) already checks that
its answers are the store's. Here: what only a cache has — a restart answers from the file without the
store, periods added up from kept months, late rows shown after ``refresh`` (recent periods at once,
old ones after ``full_refresh_s``), the kept tags dropped by a report, and files it must not use.
Every expected answer is the InfluxDB store's own answer to the same question.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from fmc.central.partials import LAST_FIELDS, LastRow, Partials
from fmc.central.reports import report_points
from fmc.central.store import Scope, StoreQueryError
from fmc.central.sums_cache import SumsCache, _next_day_piece
from fmc.core.points import Point
from fmc.indicators.engine import ConsumptionDay, EnterpriseDay
from fmc.indicators.reports import EnterpriseReport
from fmc.indicators.sums import ALL_SUMS, DAILY_SUM_FIELDS, PeriodSums
from fmc.plant.rollups import Site
from fmc.stores.influxdb.config import InfluxDBSink
from fmc.stores.influxdb.query import InfluxQueryStore
from tests.ports import free_port
from tests.store_backends import TZ, _influx_ingest, consumption_point, daily_point

A = Site("E-A", "330602", "1711")
B_HALL_1 = Site("E-B", "330603", "1810", gateway="hall-1")  # one enterprise, two gateways
B_HALL_2 = Site("E-B", "330603", "1810", gateway="hall-2")
N = Site("E-N", "330602", "1711")
N_MOVED = "330604"

YEAR = (date(2020, 1, 1), date(2020, 12, 31))
Q2 = (date(2020, 4, 1), date(2020, 6, 30))
MAY = (date(2020, 5, 1), date(2020, 5, 31))
JANUARY = (date(2020, 1, 1), date(2020, 1, 31))


def day_points(site: Site, d: date, total: int, nc: int, kwh: float, *, observed: bool = True) -> list[Point]:
    """``observed=False``: the ledger's counts alone, a day the agent was off for long (no networked counts)."""
    row = EnterpriseDay(d, total, nc, 100.0 * total, 100.0 * nc, total - 1 if observed else None,
                        nc if observed else None, equipment_valued=total)
    return [daily_point(site, row),
            consumption_point(site, ConsumptionDay(d, "electricity", kwh, tce=kwh * 1.229e-4, coverage=1.0))]


def seed() -> list[Point]:
    points: list[Point] = []
    d = date(2020, 1, 1)
    while d <= date(2020, 12, 31):
        # A's gateway was off over the Spring Festival: ledger-only days, in a month and a quarter kept
        points += day_points(A, d, 10 + d.month, 4 + d.month // 3, 100.0 + d.day,
                             observed=not date(2020, 1, 20) <= d <= date(2020, 2, 12))
        if date(2020, 3, 1) <= d <= date(2020, 6, 10):  # hall-2 stops in June: its last stocks still count
            points += day_points(B_HALL_2, d, 3, 1, 20.0)
        if d.day % 2 == 0:
            points += day_points(B_HALL_1, d, 5, 2, 50.0)
        if d.month <= 3:
            points += day_points(N, d, 4, 1, 10.0)
        d += timedelta(days=1)
    return points


def assert_same_sums(got: dict[str, PeriodSums], want: dict[str, PeriodSums]) -> None:
    """Equal field by field; floats to 1e-12 (InfluxDB itself sums in another order for another query)."""
    assert set(got) == set(want)
    for enterprise, w in want.items():
        g = got[enterprise]
        assert (g.daily is None) == (w.daily is None) and set(g.carriers) == set(w.carriers), enterprise
        pairs = [(g.carriers[c], w.carriers[c]) for c in w.carriers]
        for a, b in ([(g.daily, w.daily)] if w.daily is not None else []) + pairs:
            for f in dataclasses.fields(b):  # type: ignore[arg-type]
                x, y = getattr(a, f.name), getattr(b, f.name)
                if isinstance(y, float) and not math.isnan(y):
                    assert x == pytest.approx(y, rel=1e-12), (enterprise, f.name)
                else:
                    assert x == y or (isinstance(y, float) and math.isnan(x)), (enterprise, f.name, x, y)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def influx(influx_db) -> tuple[str, str, Callable[[Sequence[Point]], None]]:
    server, db = influx_db
    ingest = _influx_ingest(server.url, db)
    ingest(seed())
    return server.url, db, ingest


def raw_store(url: str, db: str) -> InfluxQueryStore:
    return InfluxQueryStore(InfluxDBSink(type="influxdb", url=url, database=db), timezone=TZ)


def cache_over(url: str, db: str, path: Path, clock: Clock | None = None, source: str | None = None) -> SumsCache:
    return SumsCache(raw_store(url, db), path, ALL_SUMS, source=source or f"test {db}",
                     now=clock or Clock(datetime(2026, 1, 1, tzinfo=UTC)))


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: any read of the store fails


async def test_a_restarted_cache_answers_from_its_file_without_the_store(influx, tmp_path: Path) -> None:
    url, db, _ = influx
    store = raw_store(url, db)
    want = await store.period_sums(*YEAR, Scope(region_prefix="3306"), as_of=YEAR[1])
    want_b = await store.period_sums(*YEAR, Scope(enterprises=("E-B",)))
    want_enterprises = await store.enterprises(Scope(), as_of=YEAR[1])
    await store.aclose()
    assert set(want) == {"E-A", "E-B", "E-N"} and want["E-B"].daily is not None

    first = cache_over(url, db, tmp_path / "cache.db")
    assert await first.period_sums(*YEAR, Scope(region_prefix="3306"), as_of=YEAR[1]) == want
    assert await first.enterprises(Scope(), as_of=YEAR[1]) == want_enterprises
    await first.aclose()

    # the same file after a restart, the store unreachable: every answer from the file
    restarted = cache_over(dead_url(), db, tmp_path / "cache.db", source=f"test {db}")
    assert await restarted.period_sums(*YEAR, Scope(region_prefix="3306"), as_of=YEAR[1]) == want
    assert await restarted.period_sums(*YEAR, Scope(enterprises=("E-B",))) == want_b
    assert await restarted.period_sums(*YEAR, Scope(region_prefix="330603"), as_of=YEAR[1]) == {"E-B": want["E-B"]}
    assert await restarted.enterprises(Scope(region_prefix="330602"), as_of=YEAR[1]) == [
        e for e in want_enterprises if e.region.startswith("330602")]
    with pytest.raises(StoreQueryError, match="cannot connect"):  # a period it does not keep: the store
        await restarted.period_sums(*Q2, Scope())
    await restarted.aclose()


async def test_a_quarter_is_added_up_from_its_kept_months(influx, tmp_path: Path) -> None:
    url, db, _ = influx
    store = raw_store(url, db)
    want = await store.period_sums(*Q2, Scope())
    await store.aclose()
    # E-B: two gateways, hall-2 stopping on 10 June; days are local days of either gateway: 1 April to
    # 10 June (hall-2's), then the even days (hall-1's)
    assert want["E-B"].daily is not None and want["E-B"].daily.days == 71 + 10
    assert want["E-B"].daily.last_day == date(2020, 6, 30)

    cache = cache_over(url, db, tmp_path / "cache.db")
    for month in (4, 5, 6):
        start = date(2020, month, 1)
        await cache.period_sums(start, (start + timedelta(days=32)).replace(day=1) - timedelta(days=1), Scope())
    await cache.aclose()
    restarted = cache_over(dead_url(), db, tmp_path / "cache.db", source=f"test {db}")
    got = await restarted.period_sums(*Q2, Scope())
    await restarted.aclose()
    assert_same_sums(got, want)  # three months' sums added instead of one sum: the last bits may differ


async def test_late_rows_show_after_refresh_recent_periods_at_once_old_ones_after_a_full_refresh(
    influx, tmp_path: Path
) -> None:
    url, db, ingest = influx
    clock = Clock(datetime(2020, 6, 20, 12, tzinfo=UTC))
    cache = SumsCache(raw_store(url, db), tmp_path / "cache.db", ALL_SUMS, source="test", now=clock,
                      recent_days=45, full_refresh_s=86_400)
    before_may = await cache.period_sums(*MAY, Scope())
    before_january = await cache.period_sums(*JANUARY, Scope())
    # a gateway drains its spool late: E-B's hall-1 days of May and January it had missed (odd days)
    late = [p for d in (date(2020, 5, 3), date(2020, 1, 5)) for p in day_points(B_HALL_1, d, 5, 2, 50.0)]
    ingest(late)
    assert await cache.period_sums(*MAY, Scope()) == before_may  # kept: not read again before a refresh

    assert await cache.refresh() == 1  # May ends within 45 days of 20 June: read again; January is not
    store = raw_store(url, db)
    may, january = await store.period_sums(*MAY, Scope()), await store.period_sums(*JANUARY, Scope())
    assert may != before_may and january != before_january
    assert await cache.period_sums(*MAY, Scope()) == may
    assert await cache.period_sums(*JANUARY, Scope()) == before_january

    clock.at += timedelta(days=1, seconds=1)  # a day after January was read: every kept period again
    assert await cache.refresh() == 2
    assert await cache.period_sums(*JANUARY, Scope()) == january
    await store.aclose()
    await cache.aclose()


async def test_old_periods_are_read_again_a_few_at_a_time_and_idle_ones_leave(influx, tmp_path: Path) -> None:
    url, db, _ = influx
    clock = Clock(datetime(2021, 6, 1, tzinfo=UTC))
    cache = SumsCache(raw_store(url, db), tmp_path / "cache.db", ALL_SUMS, source="test", now=clock,
                      full_refresh_s=86_400)
    months = [(date(2020, m, 1), date(2020, m + 1, 1) - timedelta(days=1)) for m in range(1, 6)]
    for start, end in months:
        await cache.period_sums(start, end, Scope())
        clock.at += timedelta(minutes=1)  # read one after another: January longest ago
    clock.at += timedelta(days=1)
    assert await cache.refresh() == 2  # all five are due; two per refresh, the longest unread first
    read_at = {p: r for p, (_, r, _) in (await asyncio.to_thread(cache._kept))[0].items()}
    assert sorted(read_at, key=read_at.__getitem__)[-2:] == [f"{a}..{b}" for a, b in months[:2]]
    clock.at += timedelta(days=29)  # January and February were used at their reading: idle for 30 days
    await cache.period_sums(*months[4], Scope())  # May is asked for again
    clock.at += timedelta(days=1, minutes=10)
    await cache.refresh()
    kept, _ = await asyncio.to_thread(cache._kept)
    assert sorted(kept) == [f"{a}..{b}" for a, b in months[4:]]
    await cache.aclose()


async def test_a_report_written_through_the_cache_moves_its_enterprise(influx, tmp_path: Path) -> None:
    url, db, _ = influx
    cache = cache_over(url, db, tmp_path / "cache.db")
    assert [e.region for e in await cache.enterprises(Scope(enterprises=("E-N",)))] == ["330602"]
    assert "E-N" in await cache.period_sums(*YEAR, Scope(region_prefix="330602"), as_of=YEAR[1])
    # its latest point becomes a report under the region it moved to
    report = EnterpriseReport(enterprise="E-N", period="2020-06", value_added=300_000.0)
    await cache.write(report_points([report], {"E-N": N_MOVED}, {"E-N": N.industry}, tz=TZ))
    store = raw_store(url, db)
    for as_of in (None, YEAR[1]):
        assert await cache.enterprises(Scope(), as_of=as_of) == await store.enterprises(Scope(), as_of=as_of)
    assert [e.region for e in await cache.enterprises(Scope(enterprises=("E-N",)))] == [N_MOVED]
    moved = await cache.period_sums(*YEAR, Scope(region_prefix=N_MOVED), as_of=YEAR[1])
    direct = await store.period_sums(*YEAR, Scope(region_prefix=N_MOVED), as_of=YEAR[1])
    assert_same_sums(moved, direct)
    assert set(moved) == {"E-N"}
    # every enterprise's latest tags are read again every 10 minutes, not on every refresh
    assert await cache.refresh() == 0
    cache._now.at += timedelta(minutes=11)  # type: ignore[attr-defined]
    assert await cache.refresh() == 1
    await store.aclose()
    await cache.aclose()


async def test_tags_read_while_a_report_is_written_are_not_kept(influx, tmp_path: Path) -> None:
    """A read of every enterprise's tags is in flight when a report moves an enterprise: what that read
    found is from before the report, so it is read again instead of kept until the next tag refresh."""
    url, db, _ = influx
    cache = cache_over(url, db, tmp_path / "cache.db")
    read_tags = cache.store.tag_points
    answered, go_on = asyncio.Event(), asyncio.Event()
    reads = 0

    async def slow_tag_points(before_ns: int | None, *, earliest: bool = False) -> list[tuple[str, int, str, str]]:
        nonlocal reads
        reads += 1
        found = await read_tags(before_ns, earliest=earliest)
        if reads == 1:  # the first read has its answer, then waits while the report is written
            answered.set()
            await go_on.wait()
        return found

    cache.store.tag_points = slow_tag_points  # type: ignore[method-assign]
    listing = asyncio.create_task(cache.enterprises(Scope(enterprises=("E-N",))))
    await asyncio.wait_for(answered.wait(), 30)
    report = EnterpriseReport(enterprise="E-N", period="2020-06", value_added=300_000.0)
    await cache.write(report_points([report], {"E-N": N_MOVED}, {"E-N": N.industry}, tz=TZ))
    go_on.set()
    assert [e.region for e in await listing] == [N_MOVED]
    assert reads == 2
    assert [e.region for e in await cache.enterprises(Scope(enterprises=("E-N",)))] == [N_MOVED]  # as kept
    assert reads == 2
    await cache.aclose()


async def test_a_year_to_date_through_mid_month_is_kept_and_leaves_once_the_days_move_on(
    influx, tmp_path: Path
) -> None:
    """This year's year to date ends yesterday, inside a month: kept as it is (a restart answers it from
    the file), never made of whole months that run past its end, and gone two days after its last use,
    while whole months stay."""
    url, db, _ = influx
    clock = Clock(datetime(2020, 6, 16, 2, tzinfo=UTC))
    cache = cache_over(url, db, tmp_path / "cache.db", clock)
    store = raw_store(url, db)
    mid_june = (date(2020, 1, 1), date(2020, 6, 15))  # E-B's second gateway stops on 10 June
    for month in range(1, 7):  # every month of it kept whole: June's runs past 15 June
        await cache.period_sums(date(2020, month, 1), date(2020, month + 1, 1) - timedelta(days=1), Scope())
    scopes = (Scope(), Scope(region_prefix="330602"), Scope(enterprises=("E-B",)), Scope(industries=("1810",)))
    want = {scope: await store.period_sums(*mid_june, scope, as_of=mid_june[1]) for scope in scopes}
    for scope in scopes:
        assert_same_sums(await cache.period_sums(*mid_june, scope, as_of=mid_june[1]), want[scope])
    assert want[Scope()]["E-B"].daily is not None and set(want[Scope(region_prefix="330602")]) == {"E-A", "E-N"}
    as_of = date(2020, 2, 14)  # as of a day inside a month
    january_33 = await store.period_sums(*JANUARY, Scope(region_prefix="33"), as_of=as_of)
    assert_same_sums(await cache.period_sums(*JANUARY, Scope(region_prefix="33"), as_of=as_of), january_33)
    enterprises_then = await store.enterprises(Scope(), as_of=as_of)
    assert await cache.enterprises(Scope(), as_of=as_of) == enterprises_then
    assert (await cache.reports(2020, 2020, Scope(region_prefix="3306"), as_of=as_of)
            == await store.reports(2020, 2020, Scope(region_prefix="3306"), as_of=as_of))
    await cache.aclose()
    pieces, days = await asyncio.to_thread(lambda: cache_over(dead_url(), db, tmp_path / "cache.db", clock)._kept())
    assert "2020-01-01..2020-06-15" in pieces and {"2020-06-15", "2020-02-14"} <= set(days)

    # a restart, the store unreachable: the year to date and the figures as of 14 February from the file
    restarted = cache_over(dead_url(), db, tmp_path / "cache.db", clock)
    for scope in scopes:
        assert_same_sums(await restarted.period_sums(*mid_june, scope, as_of=mid_june[1]), want[scope])
    assert await restarted.enterprises(Scope(), as_of=as_of) == enterprises_then
    await restarted.aclose()

    # two days on, nobody asked for them again: they leave; the whole months stay
    clock.at += timedelta(days=2, minutes=1)
    cache = cache_over(url, db, tmp_path / "cache.db", clock)
    await cache.refresh()
    pieces, days = await asyncio.to_thread(cache._kept)
    assert sorted(pieces) == [f"2020-{m:02d}-01..{date(2020, m + 1, 1) - timedelta(days=1)}" for m in range(1, 7)]
    assert not {"2020-06-15", "2020-02-14"} & set(days)
    await store.aclose()
    await cache.aclose()


async def test_the_next_days_year_to_date_is_read_ahead_while_it_is_in_use(influx, tmp_path: Path) -> None:
    """The day after a year to date through yesterday was asked for, a refresh reads today's (and the tags
    as of yesterday) before anyone asks, and does not read yesterday's again; once nobody has asked for
    two days, nothing more is read ahead."""
    url, db, _ = influx
    clock = Clock(datetime(2020, 6, 16, 2, tzinfo=UTC))  # 10:00 on 16 June in Asia/Shanghai
    cache = cache_over(url, db, tmp_path / "cache.db", clock)
    store = raw_store(url, db)
    county = Scope(region_prefix="3306")
    await cache.period_sums(date(2020, 1, 1), date(2020, 6, 15), county, as_of=date(2020, 6, 15))
    await cache.period_sums(date(2019, 1, 1), date(2019, 6, 15), county, as_of=date(2020, 6, 15))  # a year before
    read_at = (await asyncio.to_thread(cache._kept))[0]["2020-01-01..2020-06-15"][1]

    clock.at += timedelta(days=1)
    assert await cache.refresh() == 3  # two periods through 16 June and the tags as of 16 June
    pieces, days = await asyncio.to_thread(cache._kept)
    assert {"2020-01-01..2020-06-16", "2019-01-01..2019-06-16"} <= set(pieces) and "2020-06-16" in days
    assert pieces["2020-01-01..2020-06-15"][1] == read_at  # yesterday's: not read again
    await cache.aclose()
    restarted = cache_over(dead_url(), db, tmp_path / "cache.db", clock)  # today's answers from the file
    for start, end in ((date(2020, 1, 1), date(2020, 6, 16)), (date(2019, 1, 1), date(2019, 6, 16))):
        assert_same_sums(await restarted.period_sums(start, end, county, as_of=date(2020, 6, 16)),
                         await store.period_sums(start, end, county, as_of=date(2020, 6, 16)))
    assert (await restarted.enterprises(county, as_of=date(2020, 6, 16))
            == await store.enterprises(county, as_of=date(2020, 6, 16)))
    await restarted.aclose()

    clock.at += timedelta(days=1, minutes=1)  # 16 June's were asked for (above): 17 June's are read ahead
    cache = cache_over(url, db, tmp_path / "cache.db", clock)
    await cache.refresh()
    pieces, days = await asyncio.to_thread(cache._kept)
    assert sorted(pieces) == ["2019-01-01..2019-06-16", "2019-01-01..2019-06-17",
                              "2020-01-01..2020-06-16", "2020-01-01..2020-06-17"]
    clock.at += timedelta(days=1)  # nobody asked on 18 June or since 17 June: the chain ends
    await cache.refresh()
    pieces, days = await asyncio.to_thread(cache._kept)
    assert pieces == {} and not {"2020-06-15", "2020-06-16", "2020-06-17"} & set(days)
    await store.aclose()
    await cache.aclose()


@pytest.mark.parametrize(("piece", "today", "follows"), [
    ("2020-01-01..2020-06-15", date(2020, 6, 17), "2020-01-01..2020-06-16"),
    ("2016-01-01..2016-06-15", date(2020, 6, 17), "2016-01-01..2016-06-16"),  # the same days of another year
    ("2020-01-01..2020-06-15", date(2020, 6, 16), None),  # today's already
    ("2020-01-01..2020-06-30", date(2020, 7, 2), "2020-01-01..2020-07-01"),  # whole months too
    ("2020-04-01..2020-06-15", date(2020, 6, 17), None),  # not from 1 January: not a year to date
    ("2020-06-01..2020-06-30", date(2020, 7, 2), None),
    ("2020-01-01..2020-06-29", date(2020, 7, 1), "2020-01-01..2020-06-30"),  # becomes whole months
    ("2020-01-01..2020-12-30", date(2021, 1, 1), "2020-01-01..2020-12-31"),  # 1 January: last year's whole
    ("2020-01-01..2020-12-31", date(2021, 1, 2), None),
    ("2023-01-01..2023-02-28", date(2024, 3, 1), None),  # 29 February: not in 2023
    ("2024-01-01..2024-02-28", date(2024, 3, 1), "2024-01-01..2024-02-29"),
    ("2024-01-01..2024-02-29", date(2024, 3, 2), "2024-01-01..2024-03-01"),
])
def test_which_piece_follows_yesterdays_year_to_date(piece: str, today: date, follows: str | None) -> None:
    assert _next_day_piece(piece, today) == follows


async def test_a_file_kept_for_other_data_is_emptied(influx, tmp_path: Path) -> None:
    url, db, _ = influx
    cache = cache_over(url, db, tmp_path / "cache.db", source="one store")
    await cache.period_sums(*YEAR, Scope())
    await cache.aclose()
    other = cache_over(dead_url(), db, tmp_path / "cache.db", source="another store")
    with pytest.raises(StoreQueryError, match="cannot connect"):  # nothing kept for this one: read, and fail
        await other.period_sums(*YEAR, Scope())
    await other.aclose()


async def test_kept_pieces_combine_to_the_latest_last_row(tmp_path: Path) -> None:
    """The pieces read back together keep each gateway's latest last row, whichever piece holds it and
    whatever the other columns' aggregates: SQLite takes a row's bare columns from the row of a lone
    max() only, so the read has one (with two, which row they come from is not defined)."""
    cache = cache_over(dead_url(), "fmc", tmp_path / "cache.db")
    key, n = ("E-A", ""), len(LAST_FIELDS)
    # January: the latest last row, without sums (a piece may hold one without the other); February and
    # March: sums, with earlier last rows
    pieces = {"2020-01-01..2020-01-31": (None, LastRow(300, (3.0,) * n)),
              "2020-02-01..2020-02-29": ([1.0] * (1 + len(DAILY_SUM_FIELDS)), LastRow(100, (1.0,) * n)),
              "2020-03-01..2020-03-31": ([2.0] * (1 + len(DAILY_SUM_FIELDS)), LastRow(200, (2.0,) * n))}
    for piece, (sums, last) in pieces.items():
        cache._write_piece(piece, date(2020, 3, 31), Partials(daily={key: sums} if sums else {}, last={key: last}),
                           0.0)
    got = cache._read_partials(list(pieces))
    assert got.last == {key: LastRow(300, (3.0,) * n)}
    assert got.daily == {key: [3.0] * (1 + len(DAILY_SUM_FIELDS))}
    await cache.aclose()


def test_a_file_that_is_not_a_sums_cache_is_refused(tmp_path: Path) -> None:
    spool = tmp_path / "spool.db"
    with sqlite3.connect(spool) as db:
        db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY)")
    with pytest.raises(StoreQueryError, match=r"not an fmc sums cache.*\[cache\] path"):
        cache_over(dead_url(), "fmc", spool)
    with sqlite3.connect(spool) as db:  # untouched
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["messages"]
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreQueryError, match="delete the file"):
        cache_over(dead_url(), "fmc", garbage)


def test_the_central_config_turns_the_cache_on_for_influxdb(tmp_path: Path) -> None:
    from fmc.central.service import IndicatorService
    from fmc.cli.plugins import load_central_config

    (tmp_path / "central.toml").write_text(
        '[store]\ntype = "influxdb"\nurl = "http://127.0.0.1:8086"\ndatabase = "fmc"\n'
        '[cache]\npath = "cache/sums.db"\nrecent_days = 10\n', encoding="utf-8")
    service = IndicatorService.from_config(load_central_config(tmp_path / "central.toml"))
    assert isinstance(service.store, SumsCache)
    assert service.store.path == tmp_path / "cache" / "sums.db" and service.store.path.exists()
    (tmp_path / "embedded.toml").write_text(
        '[store]\ntype = "embedded"\npath = "store.db"\n[cache]\npath = "sums.db"\n', encoding="utf-8")
    embedded = IndicatorService.from_config(load_central_config(tmp_path / "embedded.toml"))
    assert not isinstance(embedded.store, SumsCache)  # SQLite sums its own rows
    spool = tmp_path / "spool.db"
    with sqlite3.connect(spool) as db:
        db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY)")
    (tmp_path / "wrong.toml").write_text(
        '[store]\ntype = "influxdb"\nurl = "http://127.0.0.1:8086"\ndatabase = "fmc"\n[cache]\npath = "spool.db"\n',
        encoding="utf-8")
    from fmc.core.config import ConfigError

    with pytest.raises(ConfigError) as refused:  # a message naming the file, the setting and the fix
        IndicatorService.from_config(load_central_config(tmp_path / "wrong.toml"))
    assert "cache.path" in refused.value.render() and "not an fmc sums cache" in refused.value.render()
    (tmp_path / "bad.toml").write_text('[store]\ntype = "embedded"\npath = "s.db"\n[cache]\nrecent_days = -1\n',
                                       encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cache\.recent_days"):
        load_central_config(tmp_path / "bad.toml")
