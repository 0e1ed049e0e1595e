"""The central service's sums cache: the store's sums of each period, kept in a local SQLite file.

Why: on InfluxDB 1.x the sums of one year of a 20,000-enterprise province are 7.3 million daily rows
per measurement, and summing them takes InfluxDB about 45 s on two cores; one month costs nearly as
much as the year, because each series' year of daily rows is one compressed block that any range
decodes whole (docs/central.md, "The sums cache"). So the cache reads the province's sums of a period
once, in their pieces per gateway (``fmc.central.partials.Partials``), and keeps them with the tags of
every enterprise at the period's end; every scope (a county, an industry, one enterprise) is then
answered from the file, and a restarted service answers at once. A period whose months are all in the
file is added up from them (pieces of disjoint ranges add up exactly).

What it answers itself: ``period_sums`` and ``enterprises`` for periods that begin on a month's first
day (years, quarters, months, a year to date), as of any day, with the sums it keeps. A period that
ends inside a month (this year's year to date, and the same days of the years it is compared with) and
tags as of a day inside a month are kept too, but leave the file after ``PARTIAL_IDLE_S`` unused: the
next day asks for the next day's, which ``refresh`` reads ahead (``_next_day_piece``). Anything else
(sums it does not keep) goes to the store, which gives the same answer, only slower. Reports are read
from the store (they are few): a region's as the province's, kept for its members.

Freshness: ``refresh`` reads again every kept period that ends within the last ``recent_days`` days
(rollups still arrive for them: a gateway drains its spool after an outage) and, ``STALE_PER_REFRESH``
at a time, the longest unread first, every other one ``full_refresh_s`` after it was read (rollups
written later for an old period). A period nobody asked for in ``IDLE_S`` leaves the file. The service
calls it on each revalidation; a report written through the cache drops the kept tags (a tag read
under way meanwhile is read again, not kept).
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
from collections.abc import Callable, Collection, Iterator, Sequence, Set
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fmc.central.partials import CARRIER_FIELDS, LAST_FIELDS, LastRow, Partials, merge
from fmc.central.store import IndicatorStore, ReportPoint, Scope, StoreQueryError
from fmc.core.localtime import local_day_start_ns, zone
from fmc.core.points import Point
from fmc.indicators.sums import ALL_SUMS, DAILY_SUM_FIELDS, EnterpriseInfo, PeriodSums, StoredReport, SumsWanted

log = logging.getLogger("fmc.central.cache")

SCHEMA_VERSION = 5  # 4: days.networked_days; 5: spans per gateway
APPLICATION_ID = 0x666D6343  # "fmcC": refuse to add tables to some other SQLite file
LATEST = "latest"  # the tags key of "every enterprise's latest tags" (as of None)
STALE_PER_REFRESH = 2  # old periods read again per refresh: a province's year costs InfluxDB ~45 s
IDLE_S = 30 * 86_400.0  # a period nobody asked for in 30 days leaves the file
# a period ending inside a month, or tags as of a day inside one, nobody asked for in 2 days: a year to
# date moves on each day, and yesterday's is not asked for again
PARTIAL_IDLE_S = 2 * 86_400.0
TOUCH_S = 3_600.0  # how stale "last used" may get before a read writes it
LATEST_EVERY_S = 600.0  # every enterprise's latest tags (as of None): read again at most this often

_N_SUMS = 1 + len(DAILY_SUM_FIELDS)  # rows, then each field
_LAST_COLS = ", ".join(f"v{i}" for i in range(len(LAST_FIELDS)))

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pieces (
    piece TEXT PRIMARY KEY, last_day TEXT NOT NULL, read_at REAL NOT NULL, used_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS daily (
    piece TEXT NOT NULL, enterprise TEXT NOT NULL, gateway TEXT NOT NULL,
    has_sums INTEGER NOT NULL, {", ".join(f"s{i} REAL NOT NULL" for i in range(_N_SUMS))},
    last_ms INTEGER, {", ".join(f"v{i} REAL" for i in range(len(LAST_FIELDS)))},
    PRIMARY KEY (piece, enterprise, gateway)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS days (
    piece TEXT NOT NULL, enterprise TEXT NOT NULL, days INTEGER NOT NULL, networked_days INTEGER NOT NULL,
    PRIMARY KEY (piece, enterprise)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS spans (
    piece TEXT NOT NULL, enterprise TEXT NOT NULL, carrier TEXT NOT NULL, gateway TEXT NOT NULL,
    first_day TEXT NOT NULL, last_day TEXT NOT NULL, PRIMARY KEY (piece, enterprise, carrier, gateway)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS carriers (
    piece TEXT NOT NULL, enterprise TEXT NOT NULL, carrier TEXT NOT NULL, gateway TEXT NOT NULL,
    {", ".join(f"c{i} REAL NOT NULL" for i in range(len(CARRIER_FIELDS)))},
    PRIMARY KEY (piece, enterprise, carrier, gateway)) WITHOUT ROWID;
-- per day (the end of an as-of day, or 'latest'): each tag combination's latest point by then and
-- its first point after
CREATE TABLE IF NOT EXISTS tag_days (day TEXT PRIMARY KEY, read_at REAL NOT NULL, used_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tags (
    day TEXT NOT NULL, earliest INTEGER NOT NULL, enterprise TEXT NOT NULL, ts INTEGER NOT NULL,
    region TEXT NOT NULL, industry TEXT NOT NULL) ;
CREATE INDEX IF NOT EXISTS tags_day ON tags (day, earliest);
"""
_PIECE_TABLES = ("daily", "days", "spans", "carriers")
_ALL_TABLES = (*_PIECE_TABLES, "pieces", "tags", "tag_days", "meta")


@runtime_checkable
class PartialsStore(IndicatorStore, Protocol):
    """A store that gives the pieces of its sums (``fmc.stores.influxdb.query.InfluxQueryStore``).
    ``cache_source``: what identifies its data (address, database)."""

    cache_source: str

    async def partials(self, start: date, end: date, scope: Scope, wanted: SumsWanted) -> Partials: ...

    async def tag_points(self, before_ns: int | None, *, earliest: bool = False
                         ) -> list[tuple[str, int, str, str]]: ...


def month_pieces(start: date, end: date) -> list[str]:
    """The piece keys (``first..last`` day) of the months from the one of ``start`` to the one of ``end``."""
    out: list[str] = []
    year, month = start.year, start.month
    while (year, month) <= (end.year, end.month):
        out.append(f"{date(year, month, 1)}..{date(year, month, calendar.monthrange(year, month)[1])}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def whole_months(start: date, end: date) -> bool:
    """Whether ``start`` to ``end`` is a run of whole months."""
    return start.day == 1 and _month_end(end) and start <= end


def _delete_piece(db: sqlite3.Connection, piece: str) -> None:
    for table in (*_PIECE_TABLES, "pieces"):
        db.execute(f"DELETE FROM {table} WHERE piece = ?", (piece,))


def _delete_tag_day(db: sqlite3.Connection, day: str) -> None:
    db.execute("DELETE FROM tags WHERE day = ?", (day,))
    db.execute("DELETE FROM tag_days WHERE day = ?", (day,))


def _month_end(day: date) -> bool:
    return (day + timedelta(days=1)).day == 1


def _piece_days(piece: str) -> tuple[date, date]:
    first, last = piece.split("..")
    return date.fromisoformat(first), date.fromisoformat(last)


def _next_day_piece(piece: str, today: date) -> str | None:
    """The piece of today's year to date (through yesterday) that follows ``piece`` when ``piece`` is one
    of yesterday's: from 1 January to the day before yesterday's month and day, in whatever year (the
    service compares a year to date with the same days of other years)."""
    first, last = _piece_days(piece)
    was, end = today - timedelta(days=2), today - timedelta(days=1)
    if (first.month, first.day) != (1, 1) or (last.month, last.day) != (was.month, was.day) or was.year != end.year:
        return None  # not a year to date, not yesterday's, or the year turned (a whole year follows)
    try:
        return f"{first}..{last.replace(month=end.month, day=end.day)}"
    except ValueError:  # 29 February in a year without one
        return None


def _covers(kept: SumsWanted, wanted: SumsWanted) -> bool:
    return (wanted.daily <= kept.daily and (kept.amount or not wanted.amount)
            and (kept.last_networked or not wanted.last_networked) and (kept.valued or not wanted.valued))


def _wanted_text(wanted: SumsWanted) -> str:
    return repr((sorted(wanted.daily), wanted.amount, wanted.last_networked, wanted.valued))


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


class SumsCache:
    """``IndicatorStore`` over a ``PartialsStore``, with the province's sums of each period asked for in
    the SQLite file ``path``.

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
        self._reading: dict[str, asyncio.Lock] = {}  # one read from the store per piece or tag day at a time
        # counts the times the kept tags were dropped (a report written): a tag read that began before is
        # from before the report, and is read again instead of kept
        self._tags_dropped = 0
        self._db = self._open(path, {"schema": str(SCHEMA_VERSION), "source": source, "timezone": store.timezone,
                                     "wanted": _wanted_text(wanted)})

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
            db.execute("PRAGMA synchronous = NORMAL")  # a piece lost in a crash is read again, never wrong
            stored: dict[str, str] = {}
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
                stored = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if stored != identity:
                if stored:
                    log.info("sums cache %s was kept for other data or sums: emptied", path)
                for table in (*_ALL_TABLES, "months"):  # "months": schema 1
                    db.execute(f"DROP TABLE IF EXISTS {table}")
                db.executescript(_SCHEMA)
                db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", identity.items())
            return db
        except sqlite3.DatabaseError as e:
            raise StoreQueryError(f"sums cache {path}: {e}; delete the file (it is rebuilt from the store) "
                                  "or fix [cache] path") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The file's connection in one write transaction, under the lock; rolled back on any error."""
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _write_piece(self, piece: str, last_day: date, p: Partials, read_at: float,
                     used_at: float | None = None) -> None:
        """Keep a piece read at ``read_at``; last used: as kept before, else ``used_at`` (a piece read ahead
        takes its predecessor's, so that a chain nobody asks for ends), else now."""
        daily = []
        for key in p.daily.keys() | p.last.keys():
            sums, last = p.daily.get(key), p.last.get(key)
            values = last.values if last is not None else (math.nan,) * len(LAST_FIELDS)
            daily.append((piece, *key, 1 if sums is not None else 0, *(sums or [0.0] * _N_SUMS),
                          last.time_ms if last is not None else None,
                          *(None if math.isnan(v) else v for v in values)))
        with self._transaction() as db:
            used = db.execute("SELECT used_at FROM pieces WHERE piece = ?", (piece,)).fetchone()
            _delete_piece(db, piece)
            marks = ", ".join("?" * (5 + _N_SUMS + len(LAST_FIELDS)))
            db.executemany(f"INSERT INTO daily VALUES ({marks})", daily)
            db.executemany("INSERT INTO days VALUES (?, ?, ?, ?)",
                           [(piece, e, n, p.networked_days.get(e, 0)) for e, n in p.days.items()])
            db.executemany("INSERT INTO spans VALUES (?, ?, ?, ?, ?, ?)",
                           [(piece, *key, a.isoformat(), b.isoformat()) for key, (a, b) in p.spans.items()])
            marks = ", ".join("?" * (4 + len(CARRIER_FIELDS)))
            db.executemany(f"INSERT INTO carriers VALUES ({marks})",
                           [(piece, *key, *sums) for key, sums in p.carriers.items()])
            db.execute("INSERT INTO pieces VALUES (?, ?, ?, ?)",
                       (piece, last_day.isoformat(), read_at, used[0] if used else used_at or read_at))

    def _write_tags(self, day: str, latest: Sequence[tuple[str, int, str, str]],
                    earliest: Sequence[tuple[str, int, str, str]], read_at: float, dropped: int,
                    used_at: float | None = None) -> bool:
        """Keep a tag day read when the kept tags had been dropped ``dropped`` times; False (nothing
        kept) when they have been dropped since."""
        with self._transaction() as db:
            if self._tags_dropped != dropped:
                return False
            used = db.execute("SELECT used_at FROM tag_days WHERE day = ?", (day,)).fetchone()
            _delete_tag_day(db, day)
            db.executemany("INSERT INTO tags VALUES (?, 0, ?, ?, ?, ?)", [(day, *t) for t in latest])
            db.executemany("INSERT INTO tags VALUES (?, 1, ?, ?, ?, ?)", [(day, *t) for t in earliest])
            db.execute("INSERT INTO tag_days VALUES (?, ?, ?)", (day, read_at, used[0] if used else used_at or read_at))
        return True

    def _kept(self) -> tuple[dict[str, tuple[str, float, float]], dict[str, tuple[float, float]]]:
        """The pieces (piece -> its last day, when read, when last used) and the tag days (day -> when
        read, when last used) in the file."""
        with self._lock:
            pieces = {p: (d, r, u) for p, d, r, u in self._db.execute(
                "SELECT piece, last_day, read_at, used_at FROM pieces")}
            days = {d: (r, u) for d, r, u in self._db.execute("SELECT day, read_at, used_at FROM tag_days")}
        return pieces, days

    def _drop(self, pieces: Sequence[str], days: Sequence[str]) -> None:
        with self._transaction() as db:
            for piece in pieces:
                _delete_piece(db, piece)
            for day in days:
                _delete_tag_day(db, day)

    def _read_partials(self, pieces: Sequence[str]) -> Partials:
        """The pieces, combined (SQL adds them up)."""
        p = Partials()
        marks = ", ".join("?" * len(pieces))
        with self._lock:
            db = self._db
            # one max() in the query, max(last_ms): SQLite takes the other bare columns (the last row's fields)
            # from the row with the max only when there is a lone min() or max() (with two, which one decides is
            # not defined), so whether any piece has sums is their sum, not a second max()
            for row in db.execute(
                f"SELECT enterprise, gateway, sum(has_sums), {', '.join(f'sum(s{i})' for i in range(_N_SUMS))}, "
                f"max(last_ms), {_LAST_COLS} FROM daily WHERE piece IN ({marks}) GROUP BY enterprise, gateway",
                pieces,
            ):
                key = (row[0], row[1])
                if row[2]:
                    p.daily[key] = list(row[3 : 3 + _N_SUMS])  # REAL columns: floats already
                last_ms = row[3 + _N_SUMS]
                if last_ms is not None:
                    p.last[key] = LastRow(last_ms, tuple(map(_float, row[4 + _N_SUMS :])))
            for e, n, nw in db.execute(
                f"SELECT enterprise, sum(days), sum(networked_days) FROM days WHERE piece IN ({marks}) "
                "GROUP BY enterprise", pieces):
                p.days[e], p.networked_days[e] = int(n), int(nw)
            days: dict[str, date] = {}  # most spans share their first and last day: one date object each
            for e, c, g, a, b in db.execute(
                f"SELECT enterprise, carrier, gateway, min(first_day), max(last_day) FROM spans "
                f"WHERE piece IN ({marks}) GROUP BY enterprise, carrier, gateway", pieces):
                first, last = days.get(a), days.get(b)
                if first is None:
                    first = days[a] = date.fromisoformat(a)
                if last is None:
                    last = days[b] = date.fromisoformat(b)
                p.spans[(e, c, g)] = (first, last)
            for row in db.execute(
                f"SELECT enterprise, carrier, gateway, {', '.join(f'sum(c{i})' for i in range(len(CARRIER_FIELDS)))} "
                f"FROM carriers WHERE piece IN ({marks}) GROUP BY enterprise, carrier, gateway", pieces,
            ):
                p.carriers[(row[0], row[1], row[2])] = list(row[3:])
        return p

    def _read_tags(self, day: str, earliest: bool) -> list[tuple[str, int, str, str]]:
        with self._lock:
            return [(e, int(t), r, i) for e, t, r, i in self._db.execute(
                "SELECT enterprise, ts, region, industry FROM tags WHERE day = ? AND earliest = ?",
                (day, 1 if earliest else 0))]

    # --- reading from the store ---

    async def _read_piece(self, start: date, end: date, used_at: float | None = None) -> None:
        read_at = self._now().timestamp()  # before reading: a row written meanwhile is read again later
        p = await self.store.partials(start, end, Scope(), self.wanted)
        await asyncio.to_thread(self._write_piece, f"{start}..{end}", end, p, read_at, used_at)

    async def _read_tag_day(self, day: str, used_at: float | None = None) -> None:
        kept = False
        while not kept:  # again when a report was written while reading: the answer may predate it
            read_at, dropped = self._now().timestamp(), self._tags_dropped
            if day == LATEST:
                latest, earliest = await self.store.tag_points(None), []
            else:
                before_ns = local_day_start_ns(date.fromisoformat(day) + timedelta(days=1), self._tz)
                latest, earliest = await asyncio.gather(self.store.tag_points(before_ns),
                                                        self.store.tag_points(before_ns, earliest=True))
            kept = await asyncio.to_thread(self._write_tags, day, latest, earliest, read_at, dropped, used_at)

    async def _once(self, key: str, kept: Callable[[], bool], read: Callable[[], Any]) -> None:
        """``read()`` unless ``kept()``; one read per key however many ask at once."""
        lock = self._reading.setdefault(key, asyncio.Lock())
        async with lock:
            if not await asyncio.to_thread(kept):
                await read()

    def _has(self, table: str, key: str) -> bool:
        """Whether the piece or tag day is kept; marks it used (at most once an hour: a write)."""
        column = "piece" if table == "pieces" else "day"
        now = self._now().timestamp()
        with self._lock:
            row = self._db.execute(f"SELECT used_at FROM {table} WHERE {column} = ?", (key,)).fetchone()
            if row is not None and row[0] < now - TOUCH_S:
                self._db.execute(f"UPDATE {table} SET used_at = ? WHERE {column} = ?", (now, key))
        return row is not None

    def _has_piece(self, piece: str) -> bool:
        return self._has("pieces", piece)

    def _has_tag_day(self, day: str) -> bool:
        return self._has("tag_days", day)

    async def _pieces(self, start: date, end: date) -> list[str]:
        """The kept pieces that make up ``start`` to ``end``: the period's own, else its months when every
        one is kept, else the period's own read from the store now."""
        own = f"{start}..{end}"
        months = month_pieces(start, end) if whole_months(start, end) else []  # never a month past ``end``
        if len(months) > 1 and not await asyncio.to_thread(self._has_piece, own):
            kept, _ = await asyncio.to_thread(self._kept)
            if all(m in kept for m in months):
                for m in months:
                    await asyncio.to_thread(self._has_piece, m)  # used
                return months
        await self._once(own, lambda: self._has_piece(own), lambda: self._read_piece(start, end))
        return [own]

    async def _tags(self, day: str, *, earliest: bool = False) -> list[tuple[str, int, str, str]]:
        await self._once("tags " + day, lambda: self._has_tag_day(day), lambda: self._read_tag_day(day))
        return await asyncio.to_thread(self._read_tags, day, earliest)

    # --- keeping it fresh ---

    async def refresh(self) -> int:
        """Read again what may have changed (module docstring); the number of pieces and tag days read."""
        async with self._refresh_lock:
            started = time.perf_counter()
            pieces, days = await asyncio.to_thread(self._kept)
            today = self._now().astimezone(self._tz).date()
            recent = (today - timedelta(days=self._recent_days)).isoformat()
            now = self._now().timestamp()
            stale, idle, partial_idle = now - self._full_refresh_s, now - IDLE_S, now - PARTIAL_IDLE_S
            gone = [p for p, (_, _, used_at) in pieces.items()
                    if used_at < (idle if whole_months(*_piece_days(p)) else partial_idle)]
            gone_days = [d for d, (_, used_at) in days.items()
                         if used_at < (idle if d == LATEST or _month_end(date.fromisoformat(d)) else partial_idle)]
            if gone or gone_days:
                await asyncio.to_thread(self._drop, gone, gone_days)
            kept = {p: v for p, v in pieces.items() if p not in gone}
            # yesterday's year to date (and the same days of other years): today's is read now, before anyone
            # asks for it, and yesterday's is not read again (it leaves once idle; asked for by its own label
            # meanwhile, 2026-YTD-12-01, it is answered as last read)
            follow = {p: n for p in kept if (n := _next_day_piece(p, today)) is not None}
            ahead = {n: kept[p][2] for p, n in follow.items() if n not in kept}  # piece -> its used_at
            superseded = {p for p in follow if not whole_months(*_piece_days(p))}  # whole months: other uses
            todo = sorted(p for p, (last_day, _, _) in kept.items() if last_day >= recent and p not in superseded)
            # old periods a few at a time, the longest unread first: they become due together
            todo += sorted((p for p in kept if p not in todo and p not in superseded and kept[p][1] < stale),
                           key=lambda p: kept[p][1])[:STALE_PER_REFRESH]
            # the same for the tags as of yesterday (a month's end stays: the month's figures are as of it)
            before, yesterday = (today - timedelta(days=2)).isoformat(), (today - timedelta(days=1)).isoformat()
            follows = bool(follow) and before in days and before not in gone_days
            ahead_days = {yesterday: days[before][1]} if follows and yesterday not in days else {}
            superseded_day = before if follows and not _month_end(date.fromisoformat(before)) else None
            # every enterprise's latest tags change with each day's rollups, and cost a pass over every series:
            # read again every LATEST_EVERY_S, not on every revalidation
            tag_days = [d for d, (read_at, _) in sorted(days.items()) if d not in gone_days and d != superseded_day
                        and (read_at < now - LATEST_EVERY_S if d == LATEST else d >= recent or read_at < stale)]
            reads: list[tuple[str, float | None]] = [*ahead.items(), *((piece, None) for piece in todo)]
            for piece, used_at in reads:
                first, last = _piece_days(piece)
                await self._once(piece, lambda: False,
                                 lambda a=first, b=last, u=used_at: self._read_piece(a, b, u))
            for day, used_at in [*ahead_days.items(), *((d, None) for d in tag_days)]:
                await self._once("tags " + day, lambda: False,
                                 lambda d=day, u=used_at: self._read_tag_day(d, u))
            if ahead or ahead_days:
                log.info("sums cache: read %d period(s) and %d tag day(s) of today's year to date ahead", len(ahead),
                         len(ahead_days))
            if todo or tag_days:
                log.info("sums cache: read %d period(s) and %d tag day(s) again in %.1f s", len(todo),
                         len(tag_days), time.perf_counter() - started)
            return len(ahead) + len(ahead_days) + len(todo) + len(tag_days)

    def forget(self) -> None:
        """Empty the file: every answer reads the store again (after the store's data was replaced)."""
        with self._transaction() as db:
            self._tags_dropped += 1
            for table in _ALL_TABLES:
                if table != "meta":
                    db.execute(f"DELETE FROM {table}")

    def _forget_tags(self) -> None:
        with self._transaction() as db:
            self._tags_dropped += 1
            db.execute("DELETE FROM tags")
            db.execute("DELETE FROM tag_days")

    # --- the interface ---

    def _answers(self, start: date, end: date, wanted: SumsWanted) -> bool:
        return start.day == 1 and start <= end and _covers(self.wanted, wanted)

    async def _found_by(self, day: date | None) -> dict[str, list[tuple[int, str, str]]]:
        """enterprise -> (time in ms, region, industry) of the latest point of each of its tag combinations
        by the end of ``day`` (None: of all)."""
        found: dict[str, list[tuple[int, str, str]]] = {}
        for e, ts, region, industry in await self._tags(LATEST if day is None else day.isoformat()):
            found.setdefault(e, []).append((ts, region, industry))
        return found

    async def period_sums(
        self, start: date, end: date, scope: Scope, wanted: SumsWanted = ALL_SUMS, as_of: date | None = None
    ) -> dict[str, PeriodSums]:
        if not self._answers(start, end, wanted):
            return await self.store.period_sums(start, end, scope, wanted, as_of)
        pieces = await self._pieces(start, end)
        partials = await asyncio.to_thread(self._read_partials, pieces)
        if scope.region_prefix is not None or scope.industries:
            # an enterprise is in the scope by its tags at the end of the period (or of as_of), with all its rows
            found = await self._found_by(as_of or end)
            partials = partials.only({e for e, combos in found.items() if scope.admits(e, *max(combos)[1:])})
        elif scope.enterprises:
            partials = partials.only(set(scope.enterprises))
        return await asyncio.to_thread(merge, partials, wanted, self._tz)

    async def enterprises(self, scope: Scope, as_of: date | None = None) -> list[EnterpriseInfo]:
        tags = {e: max(combos)[1:] for e, combos in (await self._found_by(as_of)).items()}
        if as_of is not None:  # no point by then: the tags of its earliest point after
            first: dict[str, tuple[int, str, str]] = {}
            for e, ts, region, industry in await self._tags(as_of.isoformat(), earliest=True):
                if e not in tags and (e not in first or (ts, region, industry) < first[e]):
                    first[e] = (ts, region, industry)
            tags.update({e: v[1:] for e, v in first.items()})
        infos = [EnterpriseInfo(e, region, industry) for e, (region, industry) in sorted(tags.items())]
        return [i for i in infos if scope.admits(i.enterprise, i.region, i.industry)]

    async def reports(
        self, first_year: int, last_year: int, scope: Scope, as_of: date | None = None
    ) -> dict[str, list[StoredReport]]:
        """The store's reports; for a region or industry, the province's (one cheap statement), kept for the
        enterprises whose kept tags at the end of ``as_of`` (default: 31 December of ``last_year``) admit it."""
        day = as_of or date(last_year, 12, 31)
        if scope.region_prefix is None and not scope.industries:
            return await self.store.reports(first_year, last_year, scope, as_of)
        found, everyone = await asyncio.gather(self._found_by(day), self.store.reports(first_year, last_year, Scope()))
        members = {e for e, combos in found.items() if scope.admits(e, *max(combos)[1:])}
        return {e: r for e, r in everyone.items() if e in members}

    async def report_points(
        self, enterprises: Collection[str], first_year: int, last_year: int
    ) -> dict[tuple[str, str], list[ReportPoint]]:
        return await self.store.report_points(enterprises, first_year, last_year)

    async def write(self, points: Sequence[Point], *, replace: bool = False) -> None:
        try:
            await self.store.write(points, replace=replace)
        finally:  # a report is a point with tags: the kept tags may be out of date (even after a partial write)
            if any(p.measurement != "indicator" for p in points):
                await asyncio.to_thread(self._forget_tags)

    async def delete_indicators_except(
        self, period: str, ts_ns: int, keep: Set[bytes], enterprises: Set[str]
    ) -> int:
        # no sums read indicator points: nothing cached to forget
        return await self.store.delete_indicators_except(period, ts_ns, keep, enterprises)

    async def ping(self) -> None:
        await self.store.ping()

    async def aclose(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()
        await self.store.aclose()
