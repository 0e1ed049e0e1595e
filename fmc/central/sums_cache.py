"""The central service's sums cache: each month's pieces of the store's sums, kept in a local SQLite file.

Why: on InfluxDB 1.x, the sums of one year of a 20,000-enterprise province are 7.3 million daily rows
per measurement, and aggregating them takes InfluxDB about 45 s on two cores whatever the query
(docs/central.md, "Sums cache"). A day's rollups are written once and rarely change, so the cache reads
every month once (each gateway's sums and last row, each carrier's sums and span, the local days, the
tag combinations: ``fmc.central.partials.Partials``), keeps them in a file, and answers a year from its
twelve months: the pieces of disjoint ranges add up exactly. A restarted service answers from the
file at once.

What it answers itself: ``period_sums`` and ``enterprises`` for periods of whole months (years,
quarters, months, a year to a month's end) as of a month's end, with the sums it keeps. Anything
else (a year to date through mid-month, as of another day, sums it does not keep) goes to the store,
which gives the same answer, only slower. Reports are always read from the store (they are few).

Freshness: ``refresh`` re-reads every month the store has rollups for that is not in the file yet,
every month that touches the last ``recent_days`` days (rollups still arrive for them: a gateway
drains its spool after an outage) and every other month once ``full_refresh_s`` after it was read
(rollups written later for an old month). The service calls it on each revalidation.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from fmc.central.partials import CARRIER_FIELDS, LAST_FIELDS, MS, LastRow, Partials, merge
from fmc.central.store import IndicatorStore, Scope, StoreQueryError
from fmc.core.localtime import local_day_start_ns, zone
from fmc.core.points import Point
from fmc.indicators.sums import ALL_SUMS, DAILY_SUM_FIELDS, EnterpriseInfo, PeriodSums, StoredReport, SumsWanted

log = logging.getLogger("fmc.central.cache")

SCHEMA_VERSION = 1
APPLICATION_ID = 0x666D6343  # "fmcC": refuse to add tables to some other SQLite file
MONTHS_AT_ONCE = 2  # each month is already several statements in parallel

_N_SUMS = 1 + len(DAILY_SUM_FIELDS)  # rows, then each field
_SUM_COLS = ", ".join(f"s{i}" for i in range(_N_SUMS))
_LAST_COLS = ", ".join(f"v{i}" for i in range(len(LAST_FIELDS)))
_CARRIER_COLS = ", ".join(f"c{i}" for i in range(len(CARRIER_FIELDS)))

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS months (month TEXT PRIMARY KEY, read_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS daily (
    month TEXT NOT NULL, enterprise TEXT NOT NULL, gateway TEXT NOT NULL,
    has_sums INTEGER NOT NULL, {", ".join(f"s{i} REAL NOT NULL" for i in range(_N_SUMS))},
    last_ms INTEGER, {", ".join(f"v{i} REAL" for i in range(len(LAST_FIELDS)))},
    PRIMARY KEY (month, enterprise, gateway)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS days (
    month TEXT NOT NULL, enterprise TEXT NOT NULL, days INTEGER NOT NULL,
    PRIMARY KEY (month, enterprise)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS spans (
    month TEXT NOT NULL, enterprise TEXT NOT NULL, carrier TEXT NOT NULL, first_day TEXT NOT NULL,
    last_day TEXT NOT NULL, PRIMARY KEY (month, enterprise, carrier)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS carriers (
    month TEXT NOT NULL, enterprise TEXT NOT NULL, carrier TEXT NOT NULL, gateway TEXT NOT NULL,
    {", ".join(f"c{i} REAL NOT NULL" for i in range(len(CARRIER_FIELDS)))},
    PRIMARY KEY (month, enterprise, carrier, gateway)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tags (
    month TEXT NOT NULL, enterprise TEXT NOT NULL, region TEXT NOT NULL, industry TEXT NOT NULL,
    first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,
    PRIMARY KEY (month, enterprise, region, industry)) WITHOUT ROWID;
"""
_TABLES = ("daily", "days", "spans", "carriers", "tags")


class PartialsStore(IndicatorStore, Protocol):
    """A store that gives the pieces of its sums (``fmc.stores.influxdb.query.InfluxQueryStore``)."""

    async def partials(self, start: date, end: date, scope: Scope, wanted: SumsWanted) -> Partials: ...

    async def tag_spans(self, start: date, end: date) -> list[tuple[str, str, str, int, int]]: ...

    async def rollup_span(self) -> tuple[date, date] | None: ...

    async def report_tags(self, before_ns: int | None = None, *, earliest: bool = False
                          ) -> list[tuple[str, int, str, str]]: ...


def month_label(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def month_bounds(label: str) -> tuple[date, date]:
    year, month = int(label[:4]), int(label[5:7])
    return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])


def months_between(first: date, last: date) -> list[str]:
    """The labels of the months from the one of ``first`` to the one of ``last``."""
    out: list[str] = []
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def whole_months(start: date, end: date) -> bool:
    """Whether ``start`` to ``end`` is a run of whole months."""
    return start.day == 1 and (end + timedelta(days=1)).day == 1 and start <= end


def _covers(kept: SumsWanted, wanted: SumsWanted) -> bool:
    return (wanted.daily <= kept.daily and (kept.amount or not wanted.amount)
            and (kept.last_networked or not wanted.last_networked) and (kept.valued or not wanted.valued))


def _wanted_text(wanted: SumsWanted) -> str:
    return repr((sorted(wanted.daily), wanted.amount, wanted.last_networked, wanted.valued))


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


class SumsCache:
    """``IndicatorStore`` over a ``PartialsStore``, with the months' pieces in the SQLite file ``path``.

    ``source``: what identifies the store's data (its URL, database, retention policy): a file kept
    for another source, time zone or set of sums is emptied, never mixed. ``wanted``: the sums kept
    (the plan's, ``indicators.sums_wanted``)."""

    def __init__(
        self,
        store: PartialsStore,
        path: Path,
        wanted: SumsWanted,
        *,
        source: str,
        recent_days: int = 45,
        full_refresh_s: float = 86_400.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.timezone = store.timezone
        self._tz = zone(store.timezone)
        self.path = path
        self.wanted = wanted
        self._recent_days = recent_days
        self._full_refresh_s = full_refresh_s
        self._now = now
        self._lock = threading.Lock()  # one connection, used from worker threads one at a time
        self._refresh_lock = asyncio.Lock()
        self._db = self._open(path, {"schema": str(SCHEMA_VERSION), "source": source, "timezone": store.timezone,
                                     "wanted": _wanted_text(wanted)})
        self._filled = self._meta("filled") == "1"

    # --- the file ---

    @staticmethod
    def _open(path: Path, identity: dict[str, str]) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables):
                db.close()
                raise StoreQueryError(f"{path} is not an fmc sums cache (another SQLite file); set [cache] path "
                                      "to a file of its own")
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # a lost month is read again, never wrong
            db.executescript(_SCHEMA)
            stored = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if any(stored.get(k) != v for k, v in identity.items()):
                if stored:
                    log.info("sums cache %s was kept for other data or sums: emptied", path)
                db.execute("BEGIN")
                for table in (*_TABLES, "months", "meta"):
                    db.execute(f"DELETE FROM {table}")
                db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", identity.items())
                db.execute("COMMIT")
            return db
        except sqlite3.DatabaseError as e:
            raise StoreQueryError(f"sums cache {path}: {e}; delete the file (it is rebuilt from the store) "
                                  "or fix [cache] path") from None

    def _meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _read_months(self) -> dict[str, float]:
        with self._lock:
            return dict(self._db.execute("SELECT month, read_at FROM months").fetchall())

    def _write_month(self, month: str, p: Partials, tags: Sequence[tuple[str, str, str, int, int]]) -> None:
        daily = []
        for key in p.daily.keys() | p.last.keys():
            sums, last = p.daily.get(key), p.last.get(key)
            daily.append((month, *key, 1 if sums is not None else 0, *(sums or [0.0] * _N_SUMS),
                          last.time_ms if last else None,
                          *(None if last is None or math.isnan(v) else v
                            for v in (last.values if last else [math.nan] * len(LAST_FIELDS)))))
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                for table in _TABLES:
                    db.execute(f"DELETE FROM {table} WHERE month = ?", (month,))
                marks = ", ".join("?" * (5 + _N_SUMS + len(LAST_FIELDS)))
                db.executemany(f"INSERT INTO daily VALUES ({marks})", daily)
                db.executemany("INSERT INTO days VALUES (?, ?, ?)", [(month, e, n) for e, n in p.days.items()])
                db.executemany("INSERT INTO spans VALUES (?, ?, ?, ?, ?)",
                               [(month, e, c, a.isoformat(), b.isoformat()) for (e, c), (a, b) in p.spans.items()])
                marks = ", ".join("?" * (4 + len(CARRIER_FIELDS)))
                db.executemany(f"INSERT INTO carriers VALUES ({marks})",
                               [(month, *key, *sums) for key, sums in p.carriers.items()])
                db.executemany("INSERT INTO tags VALUES (?, ?, ?, ?, ?, ?)", [(month, *t) for t in tags])
                db.execute("INSERT OR REPLACE INTO months VALUES (?, ?)", (month, time.time()))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _drop_months(self, months: Sequence[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            for month in months:
                for table in (*_TABLES, "months"):
                    self._db.execute(f"DELETE FROM {table} WHERE month = ?", (month,))
            self._db.execute("COMMIT")

    def _set_filled(self) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('filled', '1')")

    def _read_partials(self, first: str, last: str) -> Partials:
        """The pieces of the months ``first`` to ``last``, combined (SQL adds the months up)."""
        p = Partials()
        between = (first, last)
        with self._lock:
            db = self._db
            # one max() in the query: SQLite takes the row's other bare columns from the row with the max
            for row in db.execute(
                f"SELECT enterprise, gateway, max(has_sums), {', '.join(f'sum(s{i})' for i in range(_N_SUMS))}, "
                f"max(last_ms), {_LAST_COLS} FROM daily WHERE month BETWEEN ? AND ? GROUP BY enterprise, gateway",
                between,
            ):
                key = (row[0], row[1])
                if row[2]:
                    p.daily[key] = [float(v) for v in row[3 : 3 + _N_SUMS]]
                last_ms = row[3 + _N_SUMS]
                if last_ms is not None:
                    p.last[key] = LastRow(int(last_ms), tuple(_float(v) for v in row[4 + _N_SUMS :]))
            p.days = {e: int(n) for e, n in db.execute(
                "SELECT enterprise, sum(days) FROM days WHERE month BETWEEN ? AND ? GROUP BY enterprise", between)}
            p.spans = {(e, c): (date.fromisoformat(a), date.fromisoformat(b)) for e, c, a, b in db.execute(
                "SELECT enterprise, carrier, min(first_day), max(last_day) FROM spans WHERE month BETWEEN ? AND ? "
                "GROUP BY enterprise, carrier", between)}
            for row in db.execute(
                f"SELECT enterprise, carrier, gateway, {', '.join(f'sum(c{i})' for i in range(len(CARRIER_FIELDS)))} "
                "FROM carriers WHERE month BETWEEN ? AND ? GROUP BY enterprise, carrier, gateway", between,
            ):
                p.carriers[(row[0], row[1], row[2])] = [float(v) for v in row[3:]]
        return p

    def _read_tags(self, before: str | None, *, earliest: bool = False) -> list[tuple[str, int, str, str]]:
        """(enterprise, time in ms, region, industry) of each tag combination's latest point in the months
        before ``before`` (``earliest``: its first point in the months from ``before`` on; None: all months)."""
        if earliest:
            sql = ("SELECT enterprise, min(first_ms), region, industry FROM tags WHERE month >= ? "
                   "GROUP BY enterprise, region, industry")
        else:
            sql = ("SELECT enterprise, max(last_ms), region, industry FROM tags WHERE month < ? "
                   "GROUP BY enterprise, region, industry")
        with self._lock:
            return [(e, int(t), r, i) for e, t, r, i in self._db.execute(sql, (before or "9999-99",))]

    # --- keeping it fresh ---

    async def refresh(self) -> int:
        """Read again the months that may have changed (module docstring); the number read."""
        async with self._refresh_lock:
            started = time.perf_counter()
            span = await self.store.rollup_span()
            months = months_between(*span) if span is not None else []
            kept = await asyncio.to_thread(self._read_months)
            today = self._now().astimezone(self._tz).date()
            recent = month_label(today - timedelta(days=self._recent_days))
            stale = time.time() - self._full_refresh_s
            todo = [m for m in months if m not in kept or m >= recent or kept[m] < stale]
            for i in range(0, len(todo), MONTHS_AT_ONCE):
                await asyncio.gather(*(self._fetch(m) for m in todo[i : i + MONTHS_AT_ONCE]))
            gone = sorted(set(kept) - set(months))
            if gone:
                await asyncio.to_thread(self._drop_months, gone)
            if not self._filled:
                await asyncio.to_thread(self._set_filled)
                self._filled = True
            if todo:
                log.info("sums cache: read %d month(s) of %d in %.1f s", len(todo), len(months),
                         time.perf_counter() - started)
            return len(todo)

    def forget(self) -> None:
        """Empty the file: the next answer reads every month again (after the store's data was replaced)."""
        with self._lock:
            self._db.execute("BEGIN")
            for table in (*_TABLES, "months"):
                self._db.execute(f"DELETE FROM {table}")
            self._db.execute("DELETE FROM meta WHERE key = 'filled'")
            self._db.execute("COMMIT")
        self._filled = False

    async def _fetch(self, month: str) -> None:
        start, end = month_bounds(month)
        p, tags = await asyncio.gather(self.store.partials(start, end, Scope(), self.wanted),
                                       self.store.tag_spans(start, end))
        await asyncio.to_thread(self._write_month, month, p, tags)

    async def _ready(self) -> None:
        if not self._filled:
            await self.refresh()

    # --- the interface ---

    def _answers(self, start: date, end: date, as_of: date | None, wanted: SumsWanted) -> bool:
        return (whole_months(start, end) and _covers(self.wanted, wanted)
                and (as_of is None or (as_of + timedelta(days=1)).day == 1))

    def _before_ms(self, day: date) -> int:
        return local_day_start_ns(day + timedelta(days=1), self._tz) // MS

    async def _found_before(self, as_of: date | None) -> dict[str, list[tuple[int, str, str]]]:
        """enterprise -> (time in ms, region, industry) of the latest point of each of its tag combinations by
        the end of ``as_of`` (a month's last day; None: of all)."""
        before = None if as_of is None else month_label(as_of + timedelta(days=1))
        before_ns = None if as_of is None else self._before_ms(as_of) * MS
        cached, reported = await asyncio.gather(asyncio.to_thread(self._read_tags, before),
                                                self.store.report_tags(before_ns))
        found: dict[str, list[tuple[int, str, str]]] = {}
        for e, ts, region, industry in (*cached, *reported):
            found.setdefault(e, []).append((ts, region, industry))
        return found

    async def period_sums(
        self, start: date, end: date, scope: Scope, wanted: SumsWanted = ALL_SUMS, as_of: date | None = None
    ) -> dict[str, PeriodSums]:
        if not self._answers(start, end, as_of, wanted):
            return await self.store.period_sums(start, end, scope, wanted, as_of)
        await self._ready()
        partials = await asyncio.to_thread(self._read_partials, month_label(start), month_label(end))
        if scope.region_prefix is not None or scope.industries:
            # an enterprise is in the scope by its tags at the end of the period (or of as_of), with all its rows
            found = await self._found_before(as_of or end)
            members = {e for e, combos in found.items() if scope.admits(e, *max(combos)[1:])}
            partials = partials.only(members)
        elif scope.enterprises:
            partials = partials.only(set(scope.enterprises))
        return await asyncio.to_thread(merge, partials, wanted, self._tz)

    async def enterprises(self, scope: Scope, as_of: date | None = None) -> list[EnterpriseInfo]:
        if as_of is not None and (as_of + timedelta(days=1)).day != 1:
            return await self.store.enterprises(scope, as_of)
        await self._ready()
        tags = {e: max(combos)[1:] for e, combos in (await self._found_before(as_of)).items()}
        if as_of is not None:
            # no point by then: the tags of its earliest point after
            after = month_label(as_of + timedelta(days=1))
            cached, reported = await asyncio.gather(
                asyncio.to_thread(self._read_tags, after, earliest=True),
                self.store.report_tags(self._before_ms(as_of) * MS, earliest=True))
            first: dict[str, tuple[int, str, str]] = {}
            for e, ts, region, industry in (*cached, *reported):
                if e not in tags and (e not in first or (ts, region, industry) < first[e]):
                    first[e] = (ts, region, industry)
            tags.update({e: v[1:] for e, v in first.items()})
        infos = [EnterpriseInfo(e, region, industry) for e, (region, industry) in sorted(tags.items())]
        return [i for i in infos if scope.admits(i.enterprise, i.region, i.industry)]

    async def reports(
        self, first_year: int, last_year: int, scope: Scope, as_of: date | None = None
    ) -> dict[str, list[StoredReport]]:
        return await self.store.reports(first_year, last_year, scope, as_of)

    async def write(self, points: Sequence[Point]) -> None:
        await self.store.write(points)

    async def ping(self) -> None:
        await self.store.ping()

    async def aclose(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()
        await self.store.aclose()

