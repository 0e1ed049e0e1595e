"""The embedded store: one SQLite file that keeps points with InfluxDB's write semantics.

It serves ``fmc demo`` and a single plant without a server. It takes the same line-protocol
lines the InfluxDB sink sends, so the agent, the spool and the drain loop do not care which
store is behind the sink, and it answers a small typed query API (``series``, ``points``,
``count``) that the indicator engine reads through. See ``adapters/embedded.md``.

InfluxDB semantics kept here:
- a point is identified by (measurement, tag set, timestamp); writing it again merges the
  given fields into the stored ones, so re-sending a batch (after a crash between the store's
  commit and the spool's delete) changes nothing;
- a field keeps the type it was first written with, per (measurement, field key); a line with
  another type for it is refused for good ("field type conflict: …") and the others are written.

Schema (why not one ``points`` table keyed by the tags' JSON): the tag set of a series is
stored once in ``series`` and the points refer to it by an integer id, so a point row costs a
few bytes of key instead of the whole tag JSON, and ``series_tags`` (one row per tag) gives
an index for "every series with equipment = loom-01" without parsing JSON in SQL.

    series(id, measurement, tags)             tags = canonical JSON (sorted keys) of the tag set
    series_tags(series_id, key, value)        one row per tag, indexed by (key, value)
    points(series_id, ts, fields)             PRIMARY KEY (series_id, ts); fields = JSON object
    field_types(measurement, field, type)     float | integer | string | boolean
    meta(key, value)                          schema_version

Every SQL statement is a constant text with ``?`` parameters: nothing a caller passes (tag
keys and values, measurement names, field names) is ever put into SQL text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from collector.lineprotocol import LineProtocolError, parse
from collector.sink import CheckResult, RefusedLine, SinkUnavailable, WriteOutcome
from schemas.config import EmbeddedSink as EmbeddedSinkConfig
from schemas.points import FieldValue, Point

SCHEMA_VERSION = 1
# PRAGMA application_id marks the file as an fmc store, so pointing the store at another
# SQLite file (the spool, say) is refused instead of adding tables to it.
APPLICATION_ID = 0x666D6353  # "fmcS"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
BUSY_TIMEOUT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
    id          INTEGER PRIMARY KEY,
    measurement TEXT NOT NULL,
    tags        TEXT NOT NULL,
    UNIQUE (measurement, tags)
);
CREATE TABLE IF NOT EXISTS series_tags (
    series_id INTEGER NOT NULL REFERENCES series(id),
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (series_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS series_tags_by_value ON series_tags (key, value, series_id);
CREATE TABLE IF NOT EXISTS points (
    series_id INTEGER NOT NULL REFERENCES series(id),
    ts        INTEGER NOT NULL,
    fields    TEXT NOT NULL,
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS field_types (
    measurement TEXT NOT NULL,
    field       TEXT NOT NULL,
    type        TEXT NOT NULL,
    PRIMARY KEY (measurement, field)
) WITHOUT ROWID;
"""

# One EXISTS per tag condition; the text is constant, only the number of copies depends on
# how many conditions the caller gave, and every key and value is a bound parameter.
_TAG_CONDITION = " AND EXISTS (SELECT 1 FROM series_tags t WHERE t.series_id = s.id AND t.key = ? AND t.value = ?)"

_UPSERT_POINT = (
    "INSERT INTO points (series_id, ts, fields) VALUES (?, ?, ?) "
    # field-wise merge, as InfluxDB does for a second write of the same series and time
    "ON CONFLICT (series_id, ts) DO UPDATE SET fields = json_patch(points.fields, excluded.fields)"
)


class StoreError(Exception):
    """The file cannot serve as an fmc store (another program's database, a newer schema)."""


@dataclass(frozen=True, slots=True)
class StoredPoint:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    ts_ns: int


def field_type(value: FieldValue) -> str:
    """InfluxDB's name for the type of a field value."""
    if isinstance(value, bool):  # before int: bool is a subclass of int
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"


def _canonical_tags(tags: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(tags.items())), ensure_ascii=False, separators=(",", ":"))


def _invalid(point: Point) -> str | None:
    """Why InfluxDB would refuse this parsed point, or None."""
    if not point.measurement:
        return "missing measurement"
    for key, value in point.tags.items():
        if not key or not value:
            return "missing tag key or value"
    if not point.fields:
        return "missing fields"
    for key, value in point.fields.items():
        if not key:
            return "missing field key"
        if isinstance(value, float) and not math.isfinite(value):
            return f"invalid number: field {key!r} is {value}"
        if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            return f"value out of range: field {key!r}"
    if not INT64_MIN <= point.ts_ns <= INT64_MAX:
        return "time outside range"
    return None


class EmbeddedStore:
    """A SQLite store of points (WAL). Thread-safe: one connection, calls serialised by a lock.

    ``readonly=True`` opens an existing store for queries only (several readers and one writer
    may use the same file at once: WAL lets readers see the last committed state).
    Raises ``sqlite3.Error`` when the file cannot be opened and ``StoreError`` when it is not
    an fmc store.
    """

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        # Caches of committed state; additions made inside a transaction go here only after COMMIT.
        self._series_ids: dict[tuple[str, str], int] = {}
        self._field_types: dict[tuple[str, str], str] = {}
        if readonly:
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self._conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
            )
        else:
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
            )
        try:
            self._prepare()
        except BaseException:
            self._conn.close()
            raise

    def _prepare(self) -> None:
        conn = self._conn
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        has_tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
        if app_id != APPLICATION_ID and (app_id != 0 or has_tables):
            raise StoreError(f"{self.path} is another program's SQLite database, not an fmc store")
        if self.readonly:
            if not has_tables:
                raise StoreError(f"{self.path} holds no fmc store yet")
        else:
            # WAL: readers (dashboards, the summary) never block the writer nor see half a batch.
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot use WAL (got {mode!r}); a network or read-only file system?")
            # FULL, not NORMAL: once this commit returns the spool deletes the points, so a
            # power cut must not take back a committed batch.
            conn.execute("PRAGMA synchronous=FULL")
            self._create_schema()
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else None
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has store schema version {version}; this fmc reads version {SCHEMA_VERSION}"
            )
        self._field_types = {
            (m, f): t for m, f, t in conn.execute("SELECT measurement, field, type FROM field_types")
        }

    def _create_schema(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")  # a constant of this module
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # --- writing -------------------------------------------------------------------------------

    def write_lines(self, lines: Sequence[str]) -> WriteOutcome:
        """Parse and upsert every line in one transaction; unparsable or conflicting lines are
        refused (with the store's reason) and the others written. sqlite3 errors propagate and
        nothing of the call is kept."""
        refused: list[RefusedLine] = []
        written = 0
        with self._lock:
            conn = self._conn
            new_series: dict[tuple[str, str], int] = {}
            new_types: dict[tuple[str, str], str] = {}
            conn.execute("BEGIN IMMEDIATE")
            try:
                for index, line in enumerate(lines):
                    reason = self._write_one(conn, line, new_series, new_types)
                    if reason is None:
                        written += 1
                    else:
                        refused.append(RefusedLine(index=index, reason=reason))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._series_ids.update(new_series)
            self._field_types.update(new_types)
        return WriteOutcome(written=written, refused=refused)

    def _write_one(
        self,
        conn: sqlite3.Connection,
        line: str,
        new_series: dict[tuple[str, str], int],
        new_types: dict[tuple[str, str], str],
    ) -> str | None:
        """Write one line inside the open transaction; return why it was refused, or None."""
        try:
            point = parse(line)
        except LineProtocolError as e:
            return f"unable to parse: {e.detail}"
        invalid = _invalid(point)
        if invalid is not None:
            return f"unable to parse: {invalid}"
        m = point.measurement
        types = {key: field_type(value) for key, value in point.fields.items()}
        for key, kind in types.items():
            known = self._known_type(conn, m, key, new_types)
            if known is not None and known != kind:
                return (
                    f"field type conflict: input field {key!r} on measurement {m!r} is type {kind}, "
                    f"already exists as type {known}"
                )
        for key, kind in types.items():
            if self._known_type(conn, m, key, new_types) is None:
                conn.execute("INSERT INTO field_types (measurement, field, type) VALUES (?, ?, ?)", (m, key, kind))
                new_types[(m, key)] = kind
        series_id = self._series_id(conn, m, point.tags, new_series)
        fields_json = json.dumps(point.fields, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        conn.execute(_UPSERT_POINT, (series_id, point.ts_ns, fields_json))
        return None

    def _known_type(
        self, conn: sqlite3.Connection, measurement: str, key: str, new_types: dict[tuple[str, str], str]
    ) -> str | None:
        known = self._field_types.get((measurement, key)) or new_types.get((measurement, key))
        if known is None:
            # Another writer on the same file may have fixed the type since this store opened;
            # inside BEGIN IMMEDIATE the table is current.
            row = conn.execute(
                "SELECT type FROM field_types WHERE measurement = ? AND field = ?", (measurement, key)
            ).fetchone()
            if row is not None:
                known = new_types[(measurement, key)] = str(row[0])
        return known

    def _series_id(
        self,
        conn: sqlite3.Connection,
        measurement: str,
        tags: Mapping[str, str],
        new_series: dict[tuple[str, str], int],
    ) -> int:
        key = (measurement, _canonical_tags(tags))
        cached = self._series_ids.get(key) or new_series.get(key)
        if cached is not None:
            return cached
        row = conn.execute("SELECT id FROM series WHERE measurement = ? AND tags = ?", key).fetchone()
        if row is not None:
            new_series[key] = row[0]
            return int(row[0])
        cur = conn.execute("INSERT INTO series (measurement, tags) VALUES (?, ?)", key)
        series_id = int(cur.lastrowid or 0)
        conn.executemany(
            "INSERT INTO series_tags (series_id, key, value) VALUES (?, ?, ?)",
            [(series_id, k, v) for k, v in tags.items()],
        )
        new_series[key] = series_id
        return series_id

    def check_writable(self) -> None:
        """Raise sqlite3.Error unless this store can take the write lock now."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("ROLLBACK")

    # --- queries -------------------------------------------------------------------------------

    def series(self, measurement: str, where_tags: Mapping[str, str] | None = None) -> list[dict[str, str]]:
        """Tag sets of the measurement's series that carry every tag in ``where_tags``."""
        sql, params = self._series_filter("SELECT s.tags FROM series s", measurement, where_tags)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY s.tags", params).fetchall()
        return [json.loads(tags) for (tags,) in rows]

    def points(
        self,
        measurement: str,
        where_tags: Mapping[str, str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[StoredPoint]:
        """Points with ``start_ns <= ts < end_ns`` (InfluxQL's usual range), ts ascending.

        ``fields`` keeps only those fields; a point holding none of them is left out (as
        ``SELECT a, b`` in InfluxQL returns no row where every selected field is null).
        """
        lower = INT64_MIN if start_ns is None else start_ns
        upper = INT64_MAX if end_ns is None else end_ns - 1
        sql, params = self._series_filter(
            "SELECT s.tags, p.ts, p.fields FROM points p JOIN series s ON s.id = p.series_id",
            measurement,
            where_tags,
        )
        sql += " AND p.ts >= ? AND p.ts <= ? ORDER BY p.ts, s.tags"
        with self._lock:
            # one snapshot for both reads, so the types match the points even while a writer runs
            self._conn.execute("BEGIN")
            try:
                rows = self._conn.execute(sql, [*params, lower, upper]).fetchall()
                types = dict(
                    self._conn.execute("SELECT field, type FROM field_types WHERE measurement = ?", (measurement,))
                )
            finally:
                self._conn.execute("COMMIT")
        wanted = None if fields is None else set(fields)
        out: list[StoredPoint] = []
        for tags_json, ts, fields_json in rows:
            values = self._decode_fields(json.loads(fields_json), types, wanted)
            if values:
                out.append(StoredPoint(measurement, json.loads(tags_json), values, int(ts)))
        return out

    def count(self, measurement: str, where_tags: Mapping[str, str] | None = None) -> int:
        """Number of points (distinct series and timestamp) of the measurement."""
        sql, params = self._series_filter(
            "SELECT count(*) FROM points p JOIN series s ON s.id = p.series_id", measurement, where_tags
        )
        with self._lock:
            return int(self._conn.execute(sql, params).fetchone()[0])

    @staticmethod
    def _series_filter(
        select: str, measurement: str, where_tags: Mapping[str, str] | None
    ) -> tuple[str, list[str]]:
        # ``select`` is always one of this class's constant strings, never caller input.
        sql = select + " WHERE s.measurement = ?"
        params = [measurement]
        for key, value in sorted((where_tags or {}).items()):
            sql += _TAG_CONDITION
            params += [key, value]
        return sql, params

    @staticmethod
    def _decode_fields(
        raw: dict[str, object],
        types: Mapping[str, str],
        wanted: set[str] | None,
    ) -> dict[str, FieldValue]:
        # JSON keeps 1.0 and 1 apart already; the recorded type makes that independent of how
        # a JSON library prints numbers.
        out: dict[str, FieldValue] = {}
        for key, value in raw.items():
            if wanted is not None and key not in wanted:
                continue
            kind = types.get(key)
            if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = float(value)
            elif kind == "integer" and isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = int(value)
            elif isinstance(value, bool | int | float | str):
                out[key] = value
        return out

    # --- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EmbeddedStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EmbeddedSink:
    """The Sink protocol over an EmbeddedStore: SQLite work runs in a worker thread.

    The store is opened on first use, so a missing folder or a locked file at start is a
    retryable ``SinkUnavailable`` for the drain loop rather than a crash of the agent.
    """

    def __init__(self, cfg: EmbeddedSinkConfig, name: str = "embedded") -> None:
        self.name = name
        self.path = cfg.path
        self._store: EmbeddedStore | None = None
        self._open_lock = threading.Lock()

    def _opened(self) -> EmbeddedStore:
        with self._open_lock:
            if self._store is None:
                self._store = EmbeddedStore(self.path)
            return self._store

    def _forget_store(self) -> None:
        # After an error that may have left the connection unusable (corrupt file), the next
        # attempt opens the file again.
        with self._open_lock:
            store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(sqlite3.Error):
                store.close()

    def _write(self, lines: list[str]) -> WriteOutcome:
        return self._opened().write_lines(lines)

    async def write(self, lines: list[str]) -> WriteOutcome:
        try:
            return await asyncio.to_thread(self._write, lines)
        except sqlite3.OperationalError as e:  # locked, disk full, I/O error, cannot open
            raise SinkUnavailable(f"embedded store {self.path}: {e}") from e
        except (sqlite3.DatabaseError, StoreError, OSError) as e:
            await asyncio.to_thread(self._forget_store)
            raise SinkUnavailable(f"embedded store {self.path}: {e}") from e

    def _check(self) -> str:
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise StoreError(f"folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise StoreError(f"folder {folder} is not writable (SQLite needs it for the WAL files)")
        self._opened().check_writable()
        return f"{self.path}: writable, schema v{SCHEMA_VERSION}"

    async def check(self) -> CheckResult:
        try:
            detail = await asyncio.to_thread(self._check)
        except (sqlite3.Error, StoreError, OSError) as e:
            return CheckResult(self.name, False, f"embedded store {self.path}: {e}")
        return CheckResult(self.name, True, detail)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._forget_store)
