"""The durable local spool: every accepted point is on disk before its message is acknowledged.

An SQLite database in WAL mode. The ingest writer thread ``append``s encoded line-protocol
lines in one transaction per group; the drain loop ``read_batch``es the oldest lines, sends them
and only then ``complete``s them (deleted, or moved to ``dead_letter`` when the store refused a
line for good). When the lines exceed ``max_bytes`` the oldest points of the lowest priority are
dropped (raw signals, then events; rollups never) and every drop is counted in the database.

Thread model: one writer thread calls ``append``; the drain loop calls ``read_batch``,
``complete`` and ``stats`` from varying threads (``asyncio.to_thread``). Each side has its own
connection and lock; SQLite serialises the two sides' write transactions (``busy_timeout``
makes the second one wait instead of failing). See ``docs/spool.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from fmc.core.lineprotocol import LineProtocolError, series_and_time
from fmc.core.points import Priority

# Written into the SQLite header so a spool is never confused with another database (and
# another database never gets spool tables added to it). "fmcS" in ASCII.
APPLICATION_ID = 0x666D6353
# PRAGMA user_version is the spool's format: what a reader must understand to use the file, and an fmc
# refuses a format it does not read. A change an older fmc can live with (a column it leaves NULL, an
# index, a table it never reads) keeps the format: the fmc that needs it looks for it in the file and adds
# what is missing at every open (_add_dead_letter_keys), so the fmc before it still opens a spool the
# newer one used, and an upgrade can be taken back (docs/spool.md, "Formats").
# 1: spool, dead_letter, rejected, counters, state; 2: the journal and recent_messages tables.
FORMAT = 2
# The highest format this fmc reads. 3 was written for a while for dead_letter's series, ts and
# superseded_by, before additive changes kept the format: read as 2 (it is 2 with those columns) and
# written back as 2. The next format an older fmc cannot read is 4.
READS_FORMAT = 3

PAYLOAD_EXCERPT_MAX = 512  # bytes of a rejected message kept for inspection
DETAIL_MAX = 1024  # characters of a rejection's detail: the ring is bounded in rows, so bound rows too
DROP_TARGET = 0.9  # drop down to this share of max_bytes, so a full spool does not drop on every append
DROP_CHUNK_MAX = 50_000  # rows deleted per statement when making room
BUSY_TIMEOUT_S = 60.0  # a write transaction waits this long for the other side's before failing
WAL_SIZE_LIMIT = 64 << 20  # truncate the WAL file back to this after a checkpoint
# Committed messages remembered per source to recognise a broker's redelivery (recent_messages):
# the newest this many. A redelivery is of a message committed at most a broker's in-flight window
# (MQTT 5: Receive Maximum, 1000 here; mosquitto: max_inflight_messages) before it.
RECENT_MESSAGES_KEEP = 10_000

# Priorities a full spool may drop, lowest (dropped first) to highest. Rollups are never dropped.
DROPPABLE = tuple(p for p in sorted(Priority) if p is not Priority.ROLLUP)

# Counter rows in the ``counters`` table. The queue totals are kept there, updated in the same
# transaction as the rows they count, so they are right after a crash, need no full-table SUM()
# on open (minutes on a gigabyte spool on an SD card), and stay right when another process (the
# ``fmc spool`` command) changes the spool while the agent runs.
QUEUED_POINTS = "queued_points"
QUEUED_BYTES = "queued_bytes"
LAST_ID = "last_id"  # highest id ever given out: ids are never reused, even after the spool empties
REJECTED_TOTAL = "rejected_total"


def _dropped_key(priority: Priority) -> str:
    return f"dropped.{priority.name}"


# One statement per string (executed one by one inside the creating transaction).
_SCHEMA = (
    f"""
    CREATE TABLE spool (
        -- INTEGER PRIMARY KEY is the rowid itself: rows are stored in id order, so appending is
        -- a write at the end of the b-tree and "oldest first" is a plain walk, no sort.
        id          INTEGER PRIMARY KEY,
        priority    INTEGER NOT NULL CHECK (priority BETWEEN {int(min(Priority))} AND {int(max(Priority))}),
        enqueued_ms INTEGER NOT NULL,
        nbytes      INTEGER NOT NULL,  -- UTF-8 length of line: byte accounting without length()
        line        TEXT    NOT NULL
    )""",
    # The drop query ("oldest rows of priority p") walks this index instead of scanning the
    # whole spool. Every index entry ends with the rowid, so it is ordered by (priority, id).
    "CREATE INDEX spool_by_priority ON spool (priority)",
    """
    CREATE TABLE dead_letter (
        id           INTEGER PRIMARY KEY,  -- the row's id in spool, kept when it is requeued
        priority     INTEGER NOT NULL,
        enqueued_ms  INTEGER NOT NULL,
        nbytes       INTEGER NOT NULL,
        line         TEXT    NOT NULL,
        reason       TEXT    NOT NULL,     -- the store's own words
        status       INTEGER,              -- HTTP status, when the store gave one
        failed_at_ms INTEGER NOT NULL,
        -- a ROLLUP line's series (measurement and tags, as in line) and timestamp: rollups are
        -- written again, whole, with the same series and time, and the store keeps the last one;
        -- superseded_by: the id of a later line of that series and time, so this one is not requeued
        series        TEXT,
        ts            INTEGER,
        superseded_by INTEGER
    )""",
    """
    CREATE TABLE rejected (
        id              INTEGER PRIMARY KEY,
        at_ms           INTEGER NOT NULL,
        source          TEXT    NOT NULL,
        topic           TEXT    NOT NULL,
        reason          TEXT    NOT NULL,
        detail          TEXT    NOT NULL,
        payload_excerpt BLOB    NOT NULL
    )""",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)
# Tables added by format 2, created when a spool of format 1 is opened.
_SCHEMA_SINCE_1 = (
    # Inputs of a part of the agent (the plant model, under its state key) committed since that
    # part last saved its state: the state plus these, in id order, is the part as it was at the
    # last commit. Saving the state (state_set) deletes them in the same transaction.
    """
    CREATE TABLE IF NOT EXISTS journal (
        id    INTEGER PRIMARY KEY,
        key   TEXT NOT NULL,
        entry TEXT NOT NULL
    )""",
    # The newest committed message of each (source, packet id), for recognising redeliveries; n
    # numbers a source's recorded messages (1, 2, ...): only the newest RECENT_MESSAGES_KEEP count.
    """
    CREATE TABLE IF NOT EXISTS recent_messages (
        source    TEXT    NOT NULL,
        packet_id INTEGER NOT NULL,
        digest    BLOB    NOT NULL,
        n         INTEGER NOT NULL,
        at_ms     INTEGER NOT NULL,
        PRIMARY KEY (source, packet_id)
    ) WITHOUT ROWID""",
)

# dead_letter's columns for superseded rollups (in _SCHEMA's table; additive, see FORMAT), added when a
# spool from before them is opened: (column, statement).
_DEAD_LETTER_KEY_COLUMNS = (
    ("series", "ALTER TABLE dead_letter ADD COLUMN series TEXT"),
    ("ts", "ALTER TABLE dead_letter ADD COLUMN ts INTEGER"),
    ("superseded_by", "ALTER TABLE dead_letter ADD COLUMN superseded_by INTEGER"),
)
# Partial indexes: the dead letters a later line can supersede are looked up on every complete
# without a scan of every dead letter; the rollup dead
# letters without their key (an older fmc's, see _add_dead_letter_keys) are found at open the same way.
_DEAD_LETTER_INDEXES = (
    "CREATE INDEX IF NOT EXISTS dead_letter_open_rollups ON dead_letter (series, ts) "
    "WHERE series IS NOT NULL AND superseded_by IS NULL",
    f"CREATE INDEX IF NOT EXISTS dead_letter_unkeyed_rollups ON dead_letter (id) "
    f"WHERE priority = {int(Priority.ROLLUP)} AND series IS NULL",
)
# the constant, not a parameter, so that SQLite uses dead_letter_unkeyed_rollups
_UNKEYED_ROLLUPS = f"SELECT id, line FROM dead_letter WHERE priority = {int(Priority.ROLLUP)} AND series IS NULL"

_COUNTER_NAMES = (QUEUED_POINTS, QUEUED_BYTES, LAST_ID, REJECTED_TOTAL, *map(_dropped_key, DROPPABLE))

# Statements are module constants: the sqlite3 module keeps a per-connection cache of prepared
# statements keyed by SQL text, so each is compiled once per connection, not once per call.
_ADD_COUNTER = "UPDATE counters SET value = value + ? WHERE name = ? RETURNING value"
_INSERT_POINT = "INSERT INTO spool (id, priority, enqueued_ms, nbytes, line) VALUES (?, ?, ?, ?, ?)"
_INSERT_REJECTION = (
    "INSERT INTO rejected (at_ms, source, topic, reason, detail, payload_excerpt) VALUES (?, ?, ?, ?, ?, ?)"
)
_TRIM_REJECTIONS = "DELETE FROM rejected WHERE id <= (SELECT max(id) FROM rejected) - ?"
_INSERT_JOURNAL = "INSERT INTO journal (key, entry) VALUES (?, ?)"
_RECORD_MESSAGE = (
    "INSERT INTO recent_messages (source, packet_id, digest, n, at_ms) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (source, packet_id) DO UPDATE SET digest = excluded.digest, n = excluded.n, at_ms = excluded.at_ms"
)
# The same for a whole group of one source in one statement: packet ids as a JSON array, digests
# as one blob of DIGEST_BYTES each, numbers from ?3 on. A group's rows bound one by one
# (executemany) cost twice as much as this (a bench group of 2000: 5.6 against 2.8 µs a row).
# A packet id twice in a group: the later row wins, as it would one by one.
DIGEST_BYTES = 16
_RECORD_MESSAGES = (
    "INSERT INTO recent_messages (source, packet_id, digest, n, at_ms) "
    f"SELECT ?1, m.value, substr(?2, m.key * {DIGEST_BYTES} + 1, {DIGEST_BYTES}), ?3 + m.key, ?4 "
    "FROM json_each(?5) AS m WHERE true "  # WHERE: SQLite's parser needs it before an upsert clause
    "ON CONFLICT (source, packet_id) DO UPDATE SET digest = excluded.digest, n = excluded.n, at_ms = excluded.at_ms"
)
_TRIM_MESSAGES = "DELETE FROM recent_messages WHERE source = ? AND n <= ?"
# Chunked: "the oldest n rows of this priority not in the batch being sent", via spool_by_priority.
_DROP_OLDEST = (
    "DELETE FROM spool WHERE id IN "
    "(SELECT id FROM spool WHERE priority = ? AND id > ? ORDER BY id LIMIT ?) RETURNING nbytes"
)
_READ_OLDEST = "SELECT id, nbytes, enqueued_ms, line FROM spool ORDER BY id LIMIT ?"
# series and ts are kept for ROLLUP lines only (see _supersede)
_MOVE_TO_DEAD_LETTER = (
    "INSERT OR REPLACE INTO dead_letter "
    "(id, priority, enqueued_ms, nbytes, line, reason, status, failed_at_ms, series, ts) "
    "SELECT id, priority, enqueued_ms, nbytes, line, ?1, ?2, ?3, "
    f"CASE WHEN priority = {int(Priority.ROLLUP)} THEN ?4 END, CASE WHEN priority = {int(Priority.ROLLUP)} THEN ?5 END "
    "FROM spool WHERE id = ?6"
)
_OPEN_ROLLUP_DEAD_LETTERS = (
    "SELECT id, series, ts FROM dead_letter WHERE series IS NOT NULL AND superseded_by IS NULL"
)
_SUPERSEDE = "UPDATE dead_letter SET superseded_by = ? WHERE id = ? AND superseded_by IS NULL"
# One statement for a whole batch (ids passed as a JSON array). The rows still there are counted
# first, in the same transaction, so a row already gone (completed twice) is not subtracted twice;
# counted in SQL rather than with RETURNING, which hands every row to Python (5000-row batches:
# 2.9 against 3.6 µs a point on the loaded bench machine).
_COUNT_IDS = "SELECT count(*), coalesce(sum(nbytes), 0) FROM spool WHERE id IN (SELECT value FROM json_each(?))"
_DELETE_IDS = "DELETE FROM spool WHERE id IN (SELECT value FROM json_each(?))"
_REQUEUE = (
    "INSERT OR IGNORE INTO spool (id, priority, enqueued_ms, nbytes, line) "
    "SELECT id, priority, enqueued_ms, nbytes, line FROM dead_letter WHERE superseded_by IS NULL "
    "ORDER BY id RETURNING nbytes"
)


# SQLite's primary result codes that mean "another connection holds the lock": it goes away by
# itself (``fmc spool requeue`` or a ``sqlite3`` shell in another process), so the caller retries.
_TRANSIENT_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SpoolError(Exception):
    """The spool file cannot be opened or used; the message names the file.

    ``transient`` is true when the cause goes away by itself (another process holds the
    database's lock longer than ``BUSY_TIMEOUT_S``): try again later. Anything else (disk full,
    read-only file, I/O error, a damaged file) needs someone to act on it.
    """

    def __init__(self, message: str, path: Path | None = None, *, transient: bool = False) -> None:
        super().__init__(message)
        self.path = path
        self.transient = transient


@dataclass(slots=True)
class SpoolBatch:
    ids: list[int]  # row ids, ascending
    lines: list[str]
    enqueued_ms: list[int]  # wall-clock ms when each was appended


@dataclass(slots=True)
class SpoolStats:
    depth: int  # points waiting
    bytes: int  # UTF-8 bytes of the lines waiting (the quantity max_bytes bounds)
    oldest_enqueued_ms: int | None
    dropped: dict[str, int]  # persisted drop counts by priority name, e.g. {"RAW": 12, "EVENT": 0}
    dead_letters: int
    rejected_total: int
    # The configured bound; bytes > max_bytes happens only when what is left cannot be dropped
    # (rollups, or the batch being sent).
    max_bytes: int = 0
    superseded_dead_letters: int = 0  # of dead_letters: kept, never requeued (DeadLetter.superseded_by)


@dataclass(slots=True)
class RejectionRecord:
    at_ms: int
    source: str
    topic: str
    reason: str
    detail: str
    payload_excerpt: bytes  # at most PAYLOAD_EXCERPT_MAX bytes are kept


@dataclass(slots=True)
class DeadLetter:
    id: int
    line: str
    reason: str
    status: int | None
    failed_at_ms: int
    priority: Priority = field(default=Priority.RAW)
    enqueued_ms: int = 0
    # id of a later line of the same series and time (a rollup written again) that was delivered,
    # refused too, or is queued: requeue leaves this one, whose line is the older version
    superseded_by: int | None = None


def _rollup_key(line: str) -> tuple[str | None, int | None]:
    """(series, timestamp) of a line, or (None, None) for one not written by fmc's encoder."""
    try:
        return series_and_time(line)
    except LineProtocolError:
        return None, None


def _refusal(app_id: int, version: int, tables: int) -> tuple[str, str] | None:
    """Why a database with this header cannot be this fmc's spool, and the fix; None when it can
    (an empty database becomes one)."""
    if app_id == 0 and tables == 0:
        return None
    if app_id != APPLICATION_ID:
        return "this file is not an fmc spool", "name another file, or move this one aside if it is not needed"
    if version > READS_FORMAT:
        return (f"written by a newer fmc (spool format {version}, this one reads up to {READS_FORMAT})",
                "upgrade fmc, or name another file")
    return None


def _add_dead_letter_keys(conn: sqlite3.Connection) -> None:
    """Add dead_letter's series, ts and superseded_by and their indexes where the file has none (a spool
    from before them), and give every rollup dead letter without one its key: those of such a spool, and
    those an fmc from before them dead-lettered since (an upgrade taken back, then made again). Whether a
    later line of theirs was delivered meanwhile is not known; requeue still sees one that is queued."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(dead_letter)")}
    for column, statement in _DEAD_LETTER_KEY_COLUMNS:
        if column not in have:
            conn.execute(statement)
    for statement in _DEAD_LETTER_INDEXES:
        conn.execute(statement)
    rollups = conn.execute(_UNKEYED_ROLLUPS).fetchall()
    if rollups:
        conn.executemany(
            "UPDATE dead_letter SET series = ?, ts = ? WHERE id = ?",
            [(*_rollup_key(line), row_id) for row_id, line in rollups],
        )


def _names(uid: int, gid: int) -> tuple[str, str]:
    """(user, group) by name; by number where the system has no name for one."""
    user, group = str(uid), str(gid)
    try:
        import grp
        import pwd
    except ImportError:  # not a Unix
        return user, group
    with contextlib.suppress(KeyError):
        user = pwd.getpwuid(uid).pw_name
    with contextlib.suppress(KeyError):
        group = grp.getgrgid(gid).gr_name
    return user, group


def check_spool_file(path: Path) -> tuple[str, str] | None:
    """Why ``Spool(path)`` would refuse ``path`` to this process's user, and the fix; None when it
    would open it (a missing file is created). Reads the file without changing it: ``fmc check`` asks
    this while the agent may be writing the spool."""
    me, my_group = _names(os.getuid(), os.getgid())
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError as e:  # a folder on the way it may not enter: /var/lib/fmc is 0750 fmc:fmc
        return (f"the user {me} may not look into {path.parent} ({e.strerror})",
                "run this as the user the agent runs as (with the systemd unit: sudo -u fmc …) or as root")
    if stat.S_ISDIR(st.st_mode):
        return "it is a folder", f"name a file, e.g. {path / 'spool.db'}"
    # The spool and the WAL files SQLite keeps beside it, which the agent writes too: a spool left by a
    # `sudo fmc run` (root:root 0644) opens read-only here, but the agent's first write fails.
    files = [f for f in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")) if f.exists()]
    refused = [f for f in files if not os.access(f, os.R_OK | os.W_OK)]
    if refused:
        first = refused[0].stat()
        owner = ":".join(_names(first.st_uid, first.st_gid))
        what = "write" if os.access(refused[0], os.R_OK) else "read or write"
        return (f"the user {me} may not {what} {' '.join(map(str, refused))} (owner {owner}, mode "
                f"{stat.S_IMODE(first.st_mode):04o})",
                f"chown {me}:{my_group} {' '.join(map(str, files))} if the agent runs as {me}, else run this as "
                "the agent's user")
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'table'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError as e:  # cannot open it (its mode, its owner) or a lock held too long
        return f"cannot read it ({e})", "fix its owner or mode"
    except sqlite3.DatabaseError as e:  # not SQLite at all ("file is not a database"), or damaged
        return (f"not an fmc spool, or a damaged one ({e})",
                "name another file, or move this one aside to start an empty spool")
    return _refusal(app_id, version, tables)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _is_transient(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _TRANSIENT_CODES


class Spool:
    def __init__(
        self,
        path: Path | str,
        max_bytes: int = 1 << 30,
        synchronous: str = "full",
        rejected_keep: int = 1000,
    ) -> None:
        """Open the spool at ``path`` (created with its parent directory when missing) and resume
        where the last process stopped. Raises SpoolError naming the file when it is unusable."""
        sync = synchronous.lower()
        if sync not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if rejected_keep < 0:
            raise ValueError("rejected_keep must not be negative")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.synchronous = sync
        self.rejected_keep = rejected_keep
        # writer side: append, requeue_dead_letters, state_set
        self._writer_lock = threading.Lock()
        self._write_serial = threading.Lock()
        # drain side: read_batch, complete, stats and the inspection queries
        self._reader_lock = threading.Lock()
        # Highest id of the batch the drain loop is sending: drops never take rows at or below it,
        # so a point is never both delivered and counted as dropped. Guarded by _inflight_lock,
        # which the writer holds from choosing rows to drop until the drop is committed.
        self._inflight_lock = threading.Lock()
        self._inflight_max_id = 0
        self._recent_n: dict[str, int] | None = None  # source -> its newest n in recent_messages (writer side)
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpoolError(f"spool {self.path}: cannot create its directory: {e}", self.path) from e
        self._writer = self._connect()
        try:
            with self._sqlite_errors("open"):
                self._prepare_schema(self._writer)
            self._reader = self._connect()
        except BaseException:
            self._writer.close()
            raise

    # --- opening ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        with self._sqlite_errors("open"):
            # isolation_level=None: the sqlite3 module opens no implicit transactions; every
            # transaction here is an explicit BEGIN IMMEDIATE ... COMMIT.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            try:
                # the first read of the file: a file that is not SQLite fails here
                conn.execute("PRAGMA schema_version").fetchone()
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise SpoolError(
                        f"spool {self.path}: cannot use WAL journal mode (got {mode!r}); "
                        "is it on a network or read-only file system?",
                        self.path,
                    )
                conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
                conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            except BaseException:
                conn.close()
                raise
        return conn

    def _prepare_schema(self, conn: sqlite3.Connection) -> None:
        with self._transaction(conn):
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'table'").fetchone()[0]
            refused = _refusal(app_id, version, tables)
            if refused is not None:
                raise SpoolError(f"spool {self.path}: {refused[0]}", self.path)
            if app_id == 0 and tables == 0:
                for statement in (*_SCHEMA, *_SCHEMA_SINCE_1, *_DEAD_LETTER_INDEXES):
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {FORMAT}")
            else:
                if version < 2:
                    for statement in _SCHEMA_SINCE_1:
                        conn.execute(statement)
                _add_dead_letter_keys(conn)
                if version != FORMAT:  # 1, or the 3 of dead_letter's columns (READS_FORMAT)
                    conn.execute(f"PRAGMA user_version = {FORMAT}")
            conn.executemany(
                "INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", [(n,) for n in _COUNTER_NAMES]
            )

    # --- helpers ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _sqlite_errors(self, operation: str) -> Iterator[None]:
        """Turn sqlite3's exceptions into SpoolError naming the file (a bare "file is not a
        database" does not tell an operator which file)."""
        if self._closed:
            raise SpoolError(f"spool {self.path}: {operation} after close", self.path)
        try:
            yield
        except sqlite3.DatabaseError as e:
            hint = ""
            if "not a database" in str(e) or "malformed" in str(e):
                hint = " (the file is damaged; move it aside to start an empty spool)"
            raise SpoolError(
                f"spool {self.path}: {operation} failed: {e}{hint}", self.path, transient=_is_transient(e)
            ) from e
        except sqlite3.Error as e:
            raise SpoolError(
                f"spool {self.path}: {operation} failed: {e}", self.path, transient=_is_transient(e)
            ) from e

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        # Write transactions of this process's two connections queue on a Python lock: left to
        # SQLite, the loser sleeps in its busy handler (up to 100 ms a try), which stalls ingest
        # behind the drain's deletes. IMMEDIATE takes SQLite's write lock up front, so another
        # process (`fmc spool requeue`) waits on busy_timeout instead of failing half-way.
        with self._write_serial:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _add_counter(conn: sqlite3.Connection, name: str, delta: int) -> int:
        row = conn.execute(_ADD_COUNTER, (delta, name)).fetchone()
        if row is None:
            raise sqlite3.DatabaseError(f"counter {name!r} is missing")
        return int(row[0])

    @staticmethod
    def _supersede(
        conn: sqlite3.Connection, open_letters: Sequence[tuple[int, str, int]], lines: Iterable[tuple[int, str]]
    ) -> None:
        """Inside a write transaction: mark each of ``open_letters`` (id, series, ts: ROLLUP dead
        letters not yet superseded) that one of ``lines`` (id, line) with a higher id has the series
        and timestamp of as superseded by it (by the highest such id).

        Ids follow the order the rollups were made in, so that line is a later version of the same
        day (fmc/plant/rollups.py writes a day again, whole) and the store must keep it: sending the
        dead letter again would replace it with the older one. Only rollups are written again; a raw
        or event line with the same series and time as another is the same reading sent again."""
        by_time: dict[str, list[tuple[int, str]]] = {}
        for dead_id, series, ts in open_letters:
            by_time.setdefault(str(ts), []).append((dead_id, series))
        newest: dict[int, int] = {}
        for row_id, line in lines:
            letters = by_time.get(line[line.rfind(" ") + 1 :])
            if letters is None:  # the usual line: not the timestamp of any open rollup dead letter
                continue
            series = _rollup_key(line)[0]
            for dead_id, dead_series in letters:
                if dead_id < row_id and dead_series == series and newest.get(dead_id, 0) < row_id:
                    newest[dead_id] = row_id
        if newest:
            conn.executemany(_SUPERSEDE, [(row_id, dead_id) for dead_id, row_id in newest.items()])

    # --- writer side -----------------------------------------------------------------------

    def append(
        self,
        items: Sequence[tuple[str, Priority]],
        rejections: Sequence[RejectionRecord] = (),
        *,
        journal: Sequence[tuple[str, str]] = (),
        messages: Sequence[tuple[str, int, bytes]] = (),
        now_ms: int | None = None,
    ) -> dict[str, int]:
        """Commit ``items`` (encoded line, priority), ``rejections``, ``journal`` entries (state
        key, entry: the inputs that made those items, see ``state_set``) and the ``messages`` they
        came from (source, packet id, digest: see ``committed_message``) in one transaction, then
        keep the spool within max_bytes. Returns the points dropped now, by priority name."""
        if not items and not rejections and not journal and not messages:
            return {}
        enqueued = _now_ms() if now_ms is None else now_ms
        conn = self._writer
        with (
            self._writer_lock,
            self._sqlite_errors("append"),
            contextlib.ExitStack() as held_until_commit,
            self._transaction(conn),
        ):
            drops: dict[str, int] = {}
            numbers = None
            if items:
                n = len(items)
                first_id = self._add_counter(conn, LAST_ID, n) - n + 1
                # an ASCII line's length is its UTF-8 length: no encoded copy for the usual line
                rows = [
                    (first_id + i, int(priority), enqueued, len(line) if line.isascii() else len(line.encode()), line)
                    for i, (line, priority) in enumerate(items)
                ]
                conn.executemany(_INSERT_POINT, rows)
                queued_points = self._add_counter(conn, QUEUED_POINTS, n)
                queued_bytes = self._add_counter(conn, QUEUED_BYTES, sum(r[3] for r in rows))
                if queued_bytes > self.max_bytes:
                    held_until_commit.enter_context(self._inflight_lock)
                    drops = self._drop_points(conn, queued_bytes, queued_points)
            if rejections:
                self._insert_rejections(conn, rejections)
            if journal:
                conn.executemany(_INSERT_JOURNAL, journal)
            if messages:
                numbers = self._record_messages(conn, messages, enqueued)
        if numbers is not None:  # committed
            self._recent_n = numbers
        return drops

    def _recent_numbers(self, conn: sqlite3.Connection) -> dict[str, int]:
        if self._recent_n is None:  # once per process: one pass over at most KEEP rows per source
            self._recent_n = dict(conn.execute("SELECT source, max(n) FROM recent_messages GROUP BY source"))
        return self._recent_n

    def _record_messages(self, conn: sqlite3.Connection, messages: Sequence[tuple[str, int, bytes]],
                         at_ms: int) -> dict[str, int]:
        numbers = dict(self._recent_numbers(conn))  # the caller keeps them once the transaction commits
        by_source: dict[str, tuple[list[int], list[bytes]]] = {}
        for source, packet_id, digest in messages:
            ids, digests = by_source.setdefault(source, ([], []))
            ids.append(packet_id)
            digests.append(digest)
        half = RECENT_MESSAGES_KEEP // 2
        for source, (ids, digests) in by_source.items():
            first = numbers.get(source, 0) + 1
            last = first + len(ids) - 1
            numbers[source] = last
            if all(len(d) == DIGEST_BYTES for d in digests):
                conn.execute(_RECORD_MESSAGES, (source, b"".join(digests), first, at_ms, json.dumps(ids)))
            else:  # digests of another size (not the MQTT source's): one row at a time
                rows = [(source, packet_id, digest, first + i, at_ms)
                        for i, (packet_id, digest) in enumerate(zip(ids, digests, strict=True))]
                conn.executemany(_RECORD_MESSAGE, rows)
            if last // half > (first - 1) // half:  # now and then: forget what is past the window
                conn.execute(_TRIM_MESSAGES, (source, last // half * half - RECENT_MESSAGES_KEEP))
        return numbers

    def message_session(self, source: str, *, new: bool) -> str:
        """The key ``source``'s committed messages are recorded under for one broker session (the
        records of ``committed_message``). A broker that starts a new session (MQTT's session present
        off: it lost its state, the session expired, a new client id) numbers packet ids afresh and
        never sends a message of the old session again: ``new`` starts the next session's key and
        forgets the records of the earlier ones, whose packet ids would match new messages. A resumed
        session keeps the key, across restarts (it is kept in the spool). Session 0 is ``source``
        itself, as records were kept before sessions were."""
        conn = self._writer
        state_key = f"message_session:{source}"
        with self._writer_lock:
            with self._sqlite_errors("message_session"), self._transaction(conn):
                row = conn.execute("SELECT value FROM state WHERE key = ?", (state_key,)).fetchone()
                number = int(row[0]) if row is not None else 0
                if new:
                    number += 1
                    conn.execute("INSERT INTO state (key, value) VALUES (?, ?) "
                                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (state_key, str(number)))
                    # this source's records of every earlier session: its own name, and name#k
                    conn.execute("DELETE FROM recent_messages WHERE source = ?1 "
                                 "OR substr(source, 1, length(?1) + 1) = ?1 || '#'", (source,))
            if new and self._recent_n is not None:  # committed: their numbers go with their rows
                self._recent_n = {k: v for k, v in self._recent_n.items()
                                  if k != source and not k.startswith(f"{source}#")}
        return source if number == 0 else f"{source}#{number}"

    def committed_message(self, source: str, packet_id: int, digest: bytes) -> bool:
        """Whether the newest committed message of ``source`` with ``packet_id`` had ``digest`` and
        is among the source's newest RECENT_MESSAGES_KEEP: then a message the broker marks as a
        redelivery (DUP) with that packet id and digest is that one again."""
        conn = self._writer
        with self._writer_lock, self._sqlite_errors("read recent messages"):
            row = conn.execute(
                "SELECT digest, n FROM recent_messages WHERE source = ? AND packet_id = ?", (source, packet_id)
            ).fetchone()
            if row is None or bytes(row[0]) != digest:
                return False
            return int(row[1]) > self._recent_numbers(conn).get(source, 0) - RECENT_MESSAGES_KEEP

    def _drop_points(self, conn: sqlite3.Connection, queued_bytes: int, queued_points: int) -> dict[str, int]:
        """Inside a write transaction, holding _inflight_lock until it commits: drop the oldest
        points of the lowest priority until the lines fit in DROP_TARGET * max_bytes or nothing
        droppable is left. Counters are updated in the same transaction; returns the drops."""
        before_points, before_bytes = queued_points, queued_bytes
        target = int(self.max_bytes * DROP_TARGET)
        keep_ids_up_to = self._inflight_max_id
        drops: dict[str, int] = {}
        for priority in DROPPABLE:
            while queued_bytes > target:
                # size each chunk from the average row, so a large excess takes a few statements
                # and a small one does not delete past the target
                avg = max(1, queued_bytes // max(1, queued_points))
                chunk = min(DROP_CHUNK_MAX, max(1, -(-(queued_bytes - target) // avg)))
                freed = conn.execute(_DROP_OLDEST, (int(priority), keep_ids_up_to, chunk)).fetchall()
                if not freed:
                    break
                queued_points -= len(freed)
                queued_bytes -= sum(r[0] for r in freed)
                drops[priority.name] = drops.get(priority.name, 0) + len(freed)
        if drops:
            self._add_counter(conn, QUEUED_POINTS, queued_points - before_points)
            self._add_counter(conn, QUEUED_BYTES, queued_bytes - before_bytes)
            for name, n in drops.items():
                self._add_counter(conn, _dropped_key(Priority[name]), n)
        return drops

    def _insert_rejections(self, conn: sqlite3.Connection, rejections: Sequence[RejectionRecord]) -> None:
        conn.executemany(
            _INSERT_REJECTION,
            [
                (
                    r.at_ms,
                    r.source,
                    r.topic,
                    r.reason,
                    r.detail[:DETAIL_MAX],
                    bytes(r.payload_excerpt[:PAYLOAD_EXCERPT_MAX]),
                )
                for r in rejections
            ],
        )
        self._add_counter(conn, REJECTED_TOTAL, len(rejections))
        conn.execute(_TRIM_REJECTIONS, (self.rejected_keep,))

    def requeue_dead_letters(self) -> int:
        """Move every dead letter back to the queue (the operator fixed the cause), in one
        transaction. They keep their ids, so they are sent first. Returns how many.

        Except the superseded ones: a rollup whose later version (same series and time, a higher
        id) was delivered or refused after it (``complete`` marked it) or is in the queue now, maybe
        being sent. Sent again, the older line would be the last the store got, and replace the
        newer. They stay in dead_letter, marked, for inspection.

        Safe while the agent runs in another process (``fmc spool requeue``): this drops nothing,
        even when the queue goes over max_bytes. Only the process that drains the spool knows
        which rows it is sending at that moment, and a drop from here could take rows that are
        being delivered (then counted both as delivered and as dropped). The agent's next append
        makes room, sparing what it is sending."""
        conn = self._writer
        with self._writer_lock, self._sqlite_errors("requeue dead letters"), self._transaction(conn):
            open_letters = conn.execute(_OPEN_ROLLUP_DEAD_LETTERS).fetchall()
            if open_letters:  # the queued rollups after the oldest of them (spool_by_priority)
                queued = conn.execute(
                    "SELECT id, line FROM spool WHERE priority = ? AND id > ?",
                    (int(Priority.ROLLUP), min(r[0] for r in open_letters)),
                )
                self._supersede(conn, open_letters, queued)
            moved = conn.execute(_REQUEUE).fetchall()
            conn.execute("DELETE FROM dead_letter WHERE superseded_by IS NULL")
            if not moved:
                return 0
            self._add_counter(conn, QUEUED_POINTS, len(moved))
            self._add_counter(conn, QUEUED_BYTES, sum(r[0] for r in moved))
        return len(moved)

    def state_set(self, key: str, value: str) -> None:
        """Save the state under ``key``; it holds every input journaled under ``key`` so far, so
        those journal entries are deleted in the same transaction."""
        conn = self._writer
        with self._writer_lock, self._sqlite_errors("state_set"), self._transaction(conn):
            conn.execute(
                "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
            conn.execute("DELETE FROM journal WHERE key = ?", (key,))

    def recount(self) -> SpoolStats:
        """Recompute the queue totals from the rows (a full scan). Only needed after the spool
        was edited by hand; the running totals are otherwise kept in the same transactions."""
        conn = self._writer
        with self._writer_lock, self._sqlite_errors("recount"), self._transaction(conn):
            points, nbytes = conn.execute("SELECT count(*), coalesce(sum(nbytes), 0) FROM spool").fetchone()
            max_id = conn.execute(
                "SELECT max(coalesce((SELECT max(id) FROM spool), 0), coalesce((SELECT max(id) FROM dead_letter), 0))"
            ).fetchone()[0]
            conn.executemany(
                "UPDATE counters SET value = ? WHERE name = ?",
                [(points, QUEUED_POINTS), (nbytes, QUEUED_BYTES)],
            )
            conn.execute("UPDATE counters SET value = max(value, ?) WHERE name = ?", (max_id, LAST_ID))
        return self.stats()

    # --- drain side ------------------------------------------------------------------------

    def read_batch(self, max_points: int, max_bytes: int | None = None) -> SpoolBatch:
        """The oldest points, at most ``max_points`` and (when given) ``max_bytes`` of lines, but
        always at least one point when any is waiting. Empty batch when the spool is empty."""
        if max_points < 1:
            raise ValueError("max_points must be at least 1")
        batch = SpoolBatch([], [], [])
        total = 0
        with self._reader_lock, self._sqlite_errors("read"), self._inflight_lock:
            cursor = self._reader.execute(_READ_OLDEST, (max_points,))
            try:
                for row_id, nbytes, enqueued_ms, line in cursor:
                    if max_bytes is not None and batch.ids and total + nbytes > max_bytes:
                        break
                    total += nbytes
                    batch.ids.append(row_id)
                    batch.lines.append(line)
                    batch.enqueued_ms.append(enqueued_ms)
            finally:
                cursor.close()  # ends the read snapshot even when the loop stopped early
            self._inflight_max_id = batch.ids[-1] if batch.ids else 0
        return batch

    def complete(
        self,
        batch: SpoolBatch,
        refused: Sequence[tuple[int, str, int | None]] = (),
        *,
        now_ms: int | None = None,
    ) -> None:
        """The store took ``batch``: in one transaction, move the rows at the ``refused`` batch
        indexes (index, reason, status) to dead_letter and delete all the other rows. A rollup dead
        letter (earlier, or of this batch) that a later line of the batch has the series and time
        of is marked superseded by it (see ``requeue_dead_letters``)."""
        if not batch.ids:
            return
        failed_at = _now_ms() if now_ms is None else now_ms
        moves = []
        for index, reason, status in refused:
            if not 0 <= index < len(batch.ids):
                raise ValueError(f"refused index {index} is outside the batch of {len(batch.ids)}")
            moves.append((reason, status, failed_at, *_rollup_key(batch.lines[index]), batch.ids[index]))
        conn = self._reader
        with self._reader_lock, self._sqlite_errors("complete"):
            with self._transaction(conn):
                if moves:
                    conn.executemany(_MOVE_TO_DEAD_LETTER, moves)
                # usually none (an index lookup): then no line of the batch is looked at
                open_letters = conn.execute(_OPEN_ROLLUP_DEAD_LETTERS).fetchall()
                if open_letters:
                    self._supersede(conn, open_letters, zip(batch.ids, batch.lines, strict=True))
                ids = json.dumps(batch.ids)
                gone, gone_bytes = conn.execute(_COUNT_IDS, (ids,)).fetchone()
                if gone:
                    conn.execute(_DELETE_IDS, (ids,))
                    self._add_counter(conn, QUEUED_POINTS, -gone)
                    self._add_counter(conn, QUEUED_BYTES, -gone_bytes)
            with self._inflight_lock:
                if self._inflight_max_id <= batch.ids[-1]:
                    self._inflight_max_id = 0

    def stats(self) -> SpoolStats:
        conn = self._reader
        with self._reader_lock, self._sqlite_errors("stats"):
            # one read transaction: the numbers come from the same snapshot
            conn.execute("BEGIN")
            try:
                counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
                oldest = conn.execute("SELECT enqueued_ms FROM spool ORDER BY id LIMIT 1").fetchone()
                dead, superseded = conn.execute("SELECT count(*), count(superseded_by) FROM dead_letter").fetchone()
            finally:
                conn.execute("COMMIT")
        return SpoolStats(
            depth=counters.get(QUEUED_POINTS, 0),
            bytes=counters.get(QUEUED_BYTES, 0),
            oldest_enqueued_ms=oldest[0] if oldest else None,
            dropped={p.name: counters.get(_dropped_key(p), 0) for p in DROPPABLE},
            dead_letters=dead,
            rejected_total=counters.get(REJECTED_TOTAL, 0),
            max_bytes=self.max_bytes,
            superseded_dead_letters=superseded,
        )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recently failed dead letters first (for ``fmc spool`` inspection)."""
        with self._reader_lock, self._sqlite_errors("read dead letters"):
            rows = self._reader.execute(
                "SELECT id, line, reason, status, failed_at_ms, priority, enqueued_ms, superseded_by FROM dead_letter "
                "ORDER BY failed_at_ms DESC, id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [DeadLetter(r[0], r[1], r[2], r[3], r[4], Priority(r[5]), r[6], r[7]) for r in rows]

    def recent_rejections(self, limit: int = 100) -> list[RejectionRecord]:
        """The newest rejected messages first."""
        with self._reader_lock, self._sqlite_errors("read rejections"):
            rows = self._reader.execute(
                "SELECT at_ms, source, topic, reason, detail, payload_excerpt FROM rejected ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [RejectionRecord(r[0], r[1], r[2], r[3], r[4], bytes(r[5])) for r in rows]

    def state_get(self, key: str) -> str | None:
        with self._reader_lock, self._sqlite_errors("state_get"):
            row = self._reader.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def journal(self, key: str) -> list[str]:
        """The entries journaled under ``key`` since its state was last saved, oldest first."""
        with self._reader_lock, self._sqlite_errors("read journal"):
            rows = self._reader.execute("SELECT entry FROM journal WHERE key = ? ORDER BY id", (key,)).fetchall()
        return [str(r[0]) for r in rows]

    # --- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close both connections (idempotent). Committed data is already on disk."""
        with self._writer_lock, self._reader_lock:
            if self._closed:
                return
            self._closed = True
            self._reader.close()
            self._writer.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
