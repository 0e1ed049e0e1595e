"""The embedded store: one SQLite file that keeps points with InfluxDB's write semantics.

It serves ``fmc demo`` and a single plant without a server. It takes the same line-protocol
lines the InfluxDB sink sends, so the agent, the spool and the drain loop do not care which
store is behind the sink, and it answers a small typed query API (``series``, ``points``,
``count``) that the indicator engine reads through. See ``fmc/stores/embedded/README.md``.

InfluxDB semantics kept here:
- a point is identified by (measurement, tag set, timestamp); writing it again merges the
  given fields into the stored ones, so re-sending a batch (after a crash between the store's
  commit and the spool's delete) changes nothing (``write_lines(replace=True)``, for the central
  service's materialized indicators: the new point replaces the stored one whole; ``delete_points``
  removes the points of a time that a materialization no longer writes);
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

``EmbeddedQueryStore`` (at the end) is the central service's ``fmc.central.store.IndicatorStore``
over such a file: the same answers as ``fmc.stores.influxdb.query.InfluxQueryStore``, computed in
SQL (``tests/test_store_contract.py`` runs one contract on both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fmc.agent.plugin import CheckResult, EquipmentClaim, GatewayHost, RefusedLine, SinkUnavailable, WriteOutcome
from fmc.central.store import (
    INDICATOR,
    REPORT_FIELDS,
    ReportPoint,
    Scope,
    StoreQueryError,
    encode_points,
    series_digest,
)
from fmc.core.config import DEFAULT_GATEWAY
from fmc.core.lineprotocol import LineProtocolError, field_type, parse
from fmc.core.localtime import local_date, local_day_start_ns
from fmc.core.points import FieldValue, Point
from fmc.indicators.sums import (
    ALL_SUMS,
    DAILY_SUM_FIELDS,
    LAST_DAY_FIELDS,
    CarrierSums,
    DailySums,
    EnterpriseInfo,
    PeriodSums,
    StoredReport,
    SumsWanted,
)
from fmc.stores.embedded.config import EmbeddedSink as EmbeddedSinkConfig

SCHEMA_VERSION = 1
# PRAGMA application_id marks the file as an fmc store, so pointing the store at another
# SQLite file (the spool, say) is refused instead of adding tables to it.
APPLICATION_ID = 0x666D6353  # "fmcS"
# The file's application id and how many schema objects it has, as of one snapshot.
_FILE_KIND_SQL = "SELECT (SELECT application_id FROM pragma_application_id), (SELECT count(*) FROM sqlite_master)"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
BUSY_TIMEOUT_S = 5.0
_T = TypeVar("_T")

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
# a replacing write (materialized indicators): the new fields only, a field the point lacks is gone
_REPLACE_POINT = (
    "INSERT INTO points (series_id, ts, fields) VALUES (?, ?, ?) "
    "ON CONFLICT (series_id, ts) DO UPDATE SET fields = excluded.fields"
)


class StoreError(Exception):
    """The file cannot serve as an fmc store (another program's database, a newer schema)."""


@dataclass(frozen=True, slots=True)
class StoredPoint:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    ts_ns: int


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
        # One statement, so one snapshot: read in two, a store another program created between them
        # (the agent and ``fmc api`` starting at once on a new file) had no fmc id yet but tables.
        app_id, tables = conn.execute(_FILE_KIND_SQL).fetchone()
        has_tables = tables > 0
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

    def write_lines(
        self, lines: Sequence[str], *, all_or_nothing: bool = False, replace: bool = False
    ) -> WriteOutcome:
        """Parse and upsert every line in one transaction; unparsable or conflicting lines are
        refused (with the store's reason) and the others written. sqlite3 errors propagate and
        nothing of the call is kept. ``all_or_nothing``: one refused line rolls the whole call
        back (``written`` is then 0 and ``refused`` says why). ``replace``: a line replaces the
        stored point of its series and time whole instead of merging its fields into it."""
        refused: list[RefusedLine] = []
        written = 0
        with self._lock:
            conn = self._conn
            new_series: dict[tuple[str, str], int] = {}
            new_types: dict[tuple[str, str], str] = {}
            conn.execute("BEGIN IMMEDIATE")
            try:
                for index, line in enumerate(lines):
                    reason = self._write_one(conn, line, new_series, new_types, replace)
                    if reason is None:
                        written += 1
                    else:
                        refused.append(RefusedLine(index=index, reason=reason))
                if all_or_nothing and refused:
                    conn.execute("ROLLBACK")
                    return WriteOutcome(written=0, refused=refused)
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
        replace: bool = False,
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
        conn.execute(_REPLACE_POINT if replace else _UPSERT_POINT, (series_id, point.ts_ns, fields_json))
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

    def delete_points(
        self,
        measurement: str,
        ts_ns: int,
        where_tags: Mapping[str, str] | None,
        stale: Callable[[dict[str, str]], bool],
    ) -> int:
        """Delete, in one transaction, the points of the measurement at ``ts_ns`` whose series carries every
        tag in ``where_tags`` and whose tags ``stale`` accepts; the number deleted. The series stay (as in
        InfluxDB, which keeps a series whose points at one time are deleted)."""
        sql, params = self._series_filter(
            "SELECT s.id, s.tags FROM points p JOIN series s ON s.id = p.series_id", measurement, where_tags)
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = conn.execute(sql + " AND p.ts = ?", [*params, ts_ns]).fetchall()
                gone = [(series_id, ts_ns) for series_id, tags in found if stale(json.loads(tags))]
                conn.executemany("DELETE FROM points WHERE series_id = ? AND ts = ?", gone)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return len(gone)

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


# (equipment, gateway or "", time of the first and of the latest row) of one enterprise's equipment_daily
# for some ids, the rows of days the equipment was in that gateway's inventory only
_CLAIMS_SQL = (
    "SELECT json_extract(s.tags, '$.equipment') AS e, coalesce(json_extract(s.tags, '$.gateway'), '') AS g, "
    "min(p.ts), max(p.ts) FROM series s JOIN points p ON p.series_id = s.id "
    "WHERE s.measurement = 'equipment_daily' AND json_extract(s.tags, '$.enterprise') = ? "
    "AND json_extract(s.tags, '$.equipment') IN (SELECT value FROM json_each(?)) "
    "AND json_extract(p.fields, '$.in_inventory_s') > 0 GROUP BY e, g ORDER BY e, g"
)
# (gateway or "", time of its latest equipment_daily row of any equipment) of one enterprise; the primary
# key makes max(ts) per series an index lookup
_GATEWAY_LAST_SQL = (
    "SELECT g, max(m) FROM (SELECT coalesce(json_extract(s.tags, '$.gateway'), '') AS g, "
    "(SELECT max(ts) FROM points WHERE series_id = s.id) AS m FROM series s "
    "WHERE s.measurement = 'equipment_daily' AND json_extract(s.tags, '$.enterprise') = ?) "
    "WHERE m IS NOT NULL GROUP BY g"
)

_GATEWAY_HOSTS_SQL = (
    "SELECT json_extract(s.tags, '$.host') AS h, coalesce(json_extract(s.tags, '$.gateway'), '') AS g, "
    "max(p.ts) FROM series s JOIN points p ON p.series_id = s.id "
    "WHERE s.measurement = 'agent' AND json_extract(s.tags, '$.enterprise') = ? AND p.ts >= ? "
    "AND h IS NOT NULL GROUP BY h, g ORDER BY h, g"
)


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

    def _claims(self, enterprise: str, equipment: list[str]) -> list[EquipmentClaim]:
        store = self._opened()
        with store._lock:
            rows = store._conn.execute(_CLAIMS_SQL, (enterprise, json.dumps(sorted(set(equipment))))).fetchall()
            latest = dict(store._conn.execute(_GATEWAY_LAST_SQL, (enterprise,)).fetchall()) if rows else {}
        return [EquipmentClaim(str(e), str(g), int(last), int(first), int(latest[g]) if g in latest else None)
                for e, g, first, last in rows]

    async def equipment_claims(self, enterprise: str, equipment: list[str]) -> list[EquipmentClaim]:
        """The gateways that counted these equipment ids of ``enterprise`` (``ClaimsSink``)."""
        try:
            return await asyncio.to_thread(self._claims, enterprise, equipment)
        except (sqlite3.Error, StoreError, OSError) as e:
            raise SinkUnavailable(f"embedded store {self.path}: {e}") from e

    def _gateway_hosts(self, enterprise: str, since_ns: int) -> list[GatewayHost]:
        store = self._opened()
        with store._lock:
            rows = store._conn.execute(_GATEWAY_HOSTS_SQL, (enterprise, since_ns)).fetchall()
        return [GatewayHost(str(h), str(g), int(ts)) for h, g, ts in rows]

    async def gateway_hosts(self, enterprise: str, since_ns: int) -> list[GatewayHost]:
        """The hosts that wrote ``agent`` points of ``enterprise`` since ``since_ns``, per gateway tag."""
        try:
            return await asyncio.to_thread(self._gateway_hosts, enterprise, since_ns)
        except (sqlite3.Error, StoreError, OSError) as e:
            raise SinkUnavailable(f"embedded store {self.path}: {e}") from e

    async def ping(self) -> None:
        """The file can be opened and its write lock taken now (no data read or written)."""
        try:
            await asyncio.to_thread(self._check)
        except (sqlite3.Error, StoreError, OSError) as e:
            raise SinkUnavailable(f"embedded store {self.path}: {e}") from e

    async def aclose(self) -> None:
        await asyncio.to_thread(self._forget_store)


# --- the central store query interface (fmc.central.store.IndicatorStore) over this file -------------------

_ROLLUP_MEASUREMENTS = ("enterprise_daily", "consumption_daily", "enterprise_report")
REPORT_MARGIN_NS = 2 * 86_400 * 1_000_000_000  # reports stamped in another time zone still fall inside


def _json_field(name: str) -> str:
    # ``name`` is always one of this module's constant field names, never caller input
    return f"json_extract(p.fields, '$.{name}')"


# The series of one measurement with their tags as columns; the scope as one constant condition whose
# values are bound parameters (:region, :industries, :enterprises as JSON arrays).
_SCOPED_SERIES = """
WITH sel AS (
    SELECT id,
           json_extract(tags, '$.enterprise') AS enterprise,
           json_extract(tags, '$.region') AS region,
           json_extract(tags, '$.industry') AS industry,
           json_extract(tags, '$.carrier') AS carrier,
           json_extract(tags, '$.period') AS period
    FROM series
    WHERE measurement = :measurement
)
"""
_IN_SCOPE = (
    "sel.enterprise IS NOT NULL"
    " AND (:region IS NULL OR substr(sel.region, 1, length(:region)) = :region)"
    " AND (:industry_count = 0 OR EXISTS (SELECT 1 FROM json_each(:industries) j"
    " WHERE substr(sel.industry, 1, length(j.value)) = j.value))"
    " AND (:enterprise_count = 0 OR sel.enterprise IN (SELECT value FROM json_each(:enterprises)))"
)
_IN_PERIOD = "p.ts >= :start AND p.ts < :end"

# One row per enterprise: the local days present (rows stamped at local midnight; the day buckets'
# edges lie at local noon, :day_shift), those of them with the networked counts (a day the agent was off
# for long has a row of the ledger's counts alone), and the sums over every row (Σ days Σ gateways).
_DAILY_SUMS_SQL = (
    _SCOPED_SERIES
    + "SELECT sel.enterprise, count(DISTINCT CASE WHEN "
    + _json_field("equipment_total")
    + " IS NOT NULL THEN (p.ts - :day_shift) / 86400000000000 END), count(DISTINCT CASE WHEN "
    + _json_field("nc_equipment_networked")
    + " IS NOT NULL THEN (p.ts - :day_shift) / 86400000000000 END), "
    + ", ".join(f"total({_json_field(f)})" for f in DAILY_SUM_FIELDS)
    + f" FROM sel JOIN points p ON p.series_id = sel.id WHERE {_IN_PERIOD} AND {_IN_SCOPE} GROUP BY sel.enterprise"
)
# One row per enterprise and gateway (a series without the tag is gateway "main"'s): (SQLite's
# documented rule for a lone max()) the fields of the row with the latest timestamp as bare columns.
_LAST_DAYS_SQL = (
    _SCOPED_SERIES
    + f"SELECT sel.enterprise, coalesce(json_extract(s2.tags, '$.gateway'), '{DEFAULT_GATEWAY}') AS gw, max(p.ts), "
    + ", ".join(_json_field(f) for f in (*LAST_DAY_FIELDS, "equipment_networked", "nc_equipment_networked",
                                         "equipment_valued"))
    + f" FROM sel JOIN series s2 ON s2.id = sel.id JOIN points p ON p.series_id = sel.id WHERE {_IN_PERIOD}"
    + f" AND {_IN_SCOPE} AND {_json_field('equipment_total')} IS NOT NULL GROUP BY sel.enterprise, gw"
)
_CARRIER_SUMS_SQL = (
    _SCOPED_SERIES
    + "SELECT sel.enterprise, sel.carrier, "
    + f"coalesce(json_extract(s2.tags, '$.gateway'), '{DEFAULT_GATEWAY}') AS gw, "
    + f"count({_json_field('amount')}), total({_json_field('amount')}), "
    + f"total({_json_field('tce')}), count({_json_field('tce')}), "
    + f"total({_json_field('m3')}), count({_json_field('m3')}), total({_json_field('coverage')}), "
    + "min(p.ts), max(p.ts)"
    + f" FROM sel JOIN series s2 ON s2.id = sel.id JOIN points p ON p.series_id = sel.id WHERE {_IN_PERIOD}"
    + f" AND {_IN_SCOPE} AND sel.carrier IS NOT NULL GROUP BY sel.enterprise, sel.carrier, gw"
)
# a report's period of the years :first_year to :last_year (2019, 2019-03, 2019-Q2, 2019-YTD-06)
_REPORT_YEARS = (
    " AND sel.period IS NOT NULL AND (length(sel.period) = 4 OR substr(sel.period, 5, 1) = '-')"
    " AND CAST(substr(sel.period, 1, 4) AS INTEGER) BETWEEN :first_year AND :last_year"
)
_REPORTS_SQL = (
    _SCOPED_SERIES
    + "SELECT sel.enterprise, sel.period, p.ts, p.fields"
    + f" FROM sel JOIN points p ON p.series_id = sel.id WHERE {_IN_PERIOD} AND {_IN_SCOPE}"
    + _REPORT_YEARS
    + " ORDER BY sel.enterprise, p.ts, sel.id"
)
# Every point of the enterprises' reports in the years, whatever its tags (the series' tags as written).
_REPORT_POINTS_SQL = (
    _SCOPED_SERIES
    + "SELECT sel.enterprise, sel.period, s.tags, p.ts"
    + " FROM sel JOIN series s ON s.id = sel.id JOIN points p ON p.series_id = sel.id"
    + f" WHERE {_IN_PERIOD} AND {_IN_SCOPE}"
    + _REPORT_YEARS
)
# An enterprise's tags at a time (the region of the period's end, docs/indicators.md "Enterprises that
# move"): those of its latest point before :as_of (over the three measurements; the primary key makes
# max(ts) per series an index lookup), else of its earliest point from then on. One row per enterprise
# (SQLite's documented rule: a lone max() or min() picks the bare columns of its row).
_AS_OF_SQL = """
WITH sel AS (
    SELECT id,
           json_extract(tags, '$.enterprise') AS enterprise,
           coalesce(json_extract(tags, '$.region'), '') AS region,
           coalesce(json_extract(tags, '$.industry'), '') AS industry
    FROM series
    WHERE measurement IN ('enterprise_daily', 'consumption_daily', 'enterprise_report')
),
spans AS (
    SELECT sel.enterprise, sel.region, sel.industry,
           (SELECT max(ts) FROM points WHERE series_id = sel.id AND ts < :as_of) AS before,
           (SELECT min(ts) FROM points WHERE series_id = sel.id AND ts >= :as_of) AS after
    FROM sel
    WHERE sel.enterprise IS NOT NULL
      AND (:enterprise_count = 0 OR sel.enterprise IN (SELECT value FROM json_each(:enterprises)))
),
latest AS (
    SELECT enterprise, region, industry, max(before) FROM spans WHERE before IS NOT NULL GROUP BY enterprise
),
earliest AS (
    SELECT enterprise, region, industry, min(after) FROM spans
    WHERE after IS NOT NULL AND enterprise NOT IN (SELECT enterprise FROM latest) GROUP BY enterprise
)
SELECT enterprise, region, industry FROM latest
UNION ALL SELECT enterprise, region, industry FROM earliest
ORDER BY 1
"""


def _scope_params(scope: Scope) -> dict[str, object]:
    return {
        "region": scope.region_prefix,
        "industry_count": len(scope.industries),
        "industries": json.dumps(list(scope.industries)),
        "enterprise_count": len(scope.enterprises),
        "enterprises": json.dumps(list(scope.enterprises)),
    }


def _time_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"time zone {name!r} is unknown: use an IANA name such as 'Asia/Shanghai'") from None


def _period_bounds_ns(start: date, end: date, tz: ZoneInfo) -> tuple[int, int]:
    """[local midnight of start, local midnight after end) in UTC ns."""
    if end < start:
        raise ValueError(f"period ends ({end}) before it starts ({start})")
    return local_day_start_ns(start, tz), local_day_start_ns(end + timedelta(days=1), tz)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _known_sum(values: Iterable[object]) -> float:
    """Σ of numbers, NaN when one is missing (not known, rather than 0)."""
    numbers = list(values)
    if any(v is None for v in numbers):
        return math.nan
    return math.fsum(_number(v) for v in numbers)


def _report_figures(fields: Mapping[str, object]) -> dict[str, float]:
    """The figures present (a missing one stays absent, never 0)."""
    return {
        name: float(value)
        for name in REPORT_FIELDS
        if isinstance(value := fields.get(name), int | float) and not isinstance(value, bool)
    }


class EmbeddedQueryStore:
    """``fmc.central.store.IndicatorStore`` in SQL over an embedded store file.

    An enterprise is in a scope by its tags at the end of the period asked for (``_AS_OF_SQL``), and then
    with all of its rows and reports, whatever tags they were recorded under.

    ``store``: an open ``EmbeddedStore`` (shared: its lock serialises the calls) or the path of a
    store file (a missing file is an error, not a new empty store): the reads open it read-only, so a
    user who may read it but not write it gets figures, and a writer holding the write lock holds no
    read up (WAL); the first ``write`` opens it for writing too. Every call runs in a worker thread;
    a missing, locked or corrupt file raises ``StoreQueryError``.
    """

    def __init__(self, store: EmbeddedStore | str | Path, *, timezone: str = "Asia/Shanghai") -> None:
        self.timezone = timezone
        self._tz = _time_zone(timezone)
        self._open_lock = threading.Lock()
        if isinstance(store, EmbeddedStore):
            self.path = store.path
            self._shared: EmbeddedStore | None = store
        else:
            self.path = Path(store)
            self._shared = None
        # the path's file, opened on first use: read-only for the reads, for writing by the first write
        self._stores: dict[bool, EmbeddedStore] = {}

    # --- plumbing ------------------------------------------------------------------------------

    def _opened(self, *, readonly: bool) -> EmbeddedStore:
        """The store to read (``readonly``) or to write: the shared one, or the path's file, kept open (while
        a connection is, SQLite keeps the -wal and -shm files that a reader who may not write the folder
        could not create again)."""
        if self._shared is not None:
            return self._shared
        with self._open_lock:
            if readonly not in self._stores:
                if not self.path.is_file():
                    raise StoreQueryError(
                        f"embedded store {self.path} does not exist: fix [store] path, or let an agent "
                        "(or fmc demo) create it first"
                    )
                self._stores[readonly] = EmbeddedStore(self.path, readonly=readonly)
            return self._stores[readonly]

    def _forget(self) -> None:
        # a corrupt or replaced file: open it again on the next call
        with self._open_lock:
            stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            with contextlib.suppress(sqlite3.Error):
                store.close()

    def _read(self, statements: Sequence[tuple[str, Mapping[str, object]]]) -> list[list[tuple[Any, ...]]]:
        """Rows of each statement, all from one snapshot of the file."""
        return self._snapshot(lambda conn: [conn.execute(sql, params).fetchall() for sql, params in statements])

    def _snapshot(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work`` on the connection, inside one read transaction (one snapshot of the file)."""
        store = self._opened(readonly=True)
        with store._lock:
            conn = store._conn
            conn.execute("BEGIN")
            try:
                return work(conn)
            finally:
                conn.execute("COMMIT")

    def _as_of(self, conn: sqlite3.Connection, as_of_ns: int, scope: Scope) -> list[EnterpriseInfo]:
        """The enterprises whose tags at ``as_of_ns`` admit the scope, with those tags."""
        params = {"as_of": as_of_ns, **_scope_params(scope)}
        infos = [EnterpriseInfo(str(e), str(r), str(i)) for e, r, i in conn.execute(_AS_OF_SQL, params)]
        return [x for x in infos if scope.admits(x.enterprise, x.region, x.industry)]

    def _member_params(self, conn: sqlite3.Connection, as_of_ns: int, scope: Scope) -> dict[str, object] | None:
        """Scope parameters that select the scope's members at ``as_of_ns`` by id (None: nobody)."""
        if scope.region_prefix is None and not scope.industries:
            return _scope_params(scope)  # ids only: an enterprise's id does not move
        members = [x.enterprise for x in self._as_of(conn, as_of_ns, scope)]
        if not members:
            return None
        return {"region": None, "industry_count": 0, "industries": "[]", "enterprise_count": len(members),
                "enterprises": json.dumps(members)}

    async def _call(self, fn: Callable[[], _T], *, access: Literal["readable", "writable"] = "readable") -> _T:
        """``fn`` in a worker thread, its errors as ``StoreQueryError``; ``access``: what ``fn`` needs of the file."""
        try:
            return await asyncio.to_thread(fn)
        except StoreQueryError:
            raise
        except sqlite3.OperationalError as e:  # locked, I/O error, cannot open
            raise StoreQueryError(f"embedded store {self.path}: {self._advice(e, access)}") from e
        except (sqlite3.DatabaseError, StoreError) as e:
            self._forget()
            raise StoreQueryError(
                f"embedded store {self.path} cannot be read ({e}); fix [store] path or restore the file"
            ) from e
        except OSError as e:
            raise StoreQueryError(f"embedded store {self.path}: {e.strerror or e}") from e

    def _advice(self, e: sqlite3.OperationalError, access: Literal["readable", "writable"]) -> str:
        if access == "readable" and e.sqlite_errorname == "SQLITE_READONLY_DIRECTORY":
            # SQLite reads a WAL file through its -wal and -shm files, removes them when the last program
            # closes the store, and a reader must create them again. Not worked around with immutable=1
            # (which reads without them): that promises SQLite the file never changes, and an agent starting
            # meanwhile would change it under the reader -- wrong figures or "malformed" errors, unannounced.
            name = self.path.name
            return (
                f"cannot be read while no program has it open, as this user may not write its folder "
                f"{self.path.parent}: SQLite must then create {name}-wal and {name}-shm there (it removes them "
                "when the last program closes the store); run this as the user that owns the store, or while "
                "the agent has it open"
            )
        if access == "writable":
            return f"{e}; check that the file and its folder are writable"
        return f"{e}; check that the file is readable"

    def _params(self, measurement: str, start_ns: int, end_ns: int, scope: Mapping[str, object]) -> dict[str, object]:
        return {"measurement": measurement, "start": start_ns, "end": end_ns, **scope}

    # --- the interface ---------------------------------------------------------------------------

    async def enterprises(self, scope: Scope, as_of: date | None = None) -> list[EnterpriseInfo]:
        as_of_ns = INT64_MAX if as_of is None else local_day_start_ns(as_of + timedelta(days=1), self._tz)
        return await self._call(lambda: self._snapshot(lambda conn: self._as_of(conn, as_of_ns, scope)))

    async def period_sums(
        self, start: date, end: date, scope: Scope, wanted: SumsWanted = ALL_SUMS, as_of: date | None = None
    ) -> dict[str, PeriodSums]:
        """Every sum, whatever ``wanted`` says: in SQL they come in one pass."""
        start_ns, end_ns = _period_bounds_ns(start, end, self._tz)
        as_of_ns = end_ns if as_of is None else local_day_start_ns(as_of + timedelta(days=1), self._tz)

        def work(conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], ...]:
            members = self._member_params(conn, as_of_ns, scope)
            if members is None:
                return [], [], []
            daily_params = self._params("enterprise_daily", start_ns, end_ns, members)
            # the day buckets' edges at local noon of the first day, as on InfluxDB
            daily_params["day_shift"] = start_ns - 12 * 3600 * 1_000_000_000
            daily_rows = conn.execute(_DAILY_SUMS_SQL, daily_params).fetchall()
            last_rows = conn.execute(_LAST_DAYS_SQL, daily_params).fetchall()
            carrier = conn.execute(_CARRIER_SUMS_SQL, self._params("consumption_daily", start_ns, end_ns, members))
            return daily_rows, last_rows, carrier.fetchall()

        def run() -> dict[str, PeriodSums]:
            daily_rows, last_rows, carrier_rows = self._snapshot(work)
            lasts: dict[str, list[tuple[Any, ...]]] = {}
            # each gateway's last day with a row, enterprise_daily or a carrier's (a carrier removed from a
            # gateway that went on writing, versus a gateway gone silent: engine.silent_carriers)
            gateway_last: dict[str, dict[str, int]] = {}
            for enterprise, gateway, last_ts, *last in last_rows:
                lasts.setdefault(str(enterprise), []).append((int(last_ts), *last))
                gateway_last.setdefault(str(enterprise), {})[str(gateway)] = int(last_ts)
            daily: dict[str, DailySums] = {}
            for enterprise, days, networked_days, *sums in daily_rows:
                gateways = lasts.get(str(enterprise))
                if not days or not gateways:
                    continue
                # the stocks at period end: Σ over gateways of each gateway's last day in the period
                # (the asset value: over the gateways whose last day has it; none has it: unknown; the
                # networked counts: unknown when a gateway's last day lacks them, a ledger-only day)
                n = len(LAST_DAY_FIELDS)
                valued = [g[n + 3] for g in gateways if g[n + 3] is not None]
                daily[str(enterprise)] = DailySums(
                    int(days),
                    *(_number(v) for v in sums),
                    local_date(max(g[0] for g in gateways), self._tz),
                    *(math.fsum(_number(g[1 + i]) for g in gateways) for i in range(n)),
                    last_equipment_networked=_known_sum(g[n + 1] for g in gateways),
                    last_nc_equipment_networked=_known_sum(g[n + 2] for g in gateways),
                    last_equipment_valued=math.fsum(_number(v) for v in valued) if valued else math.nan,
                    networked_days=float(networked_days),
                )
            parts: dict[tuple[str, str], list[tuple[str, list[float | int]]]] = {}
            for enterprise, carrier, gateway, *figures in carrier_rows:
                if figures[0]:
                    parts.setdefault((str(enterprise), str(carrier)), []).append(
                        (str(gateway), [*(_number(v) for v in figures[:7]), *(int(t) for t in figures[7:])])
                    )
                    known = gateway_last.setdefault(str(enterprise), {})
                    known[str(gateway)] = max(known.get(str(gateway), 0), int(figures[8]))
            carriers: dict[str, dict[str, CarrierSums]] = {}
            for (enterprise, carrier), gateways in parts.items():
                rows, amount, tce, tce_rows, m3, m3_rows, coverage = (
                    math.fsum(g[i] for _, g in gateways) for i in range(7)
                )
                # coverage: Σ daily coverage ÷ the gateways measuring the carrier (as on InfluxDB); the
                # carrier's first and last day: the earliest and the latest over its gateways, and the
                # gateways with a row on its last day
                first = min(g[7] for _, g in gateways)
                last_days = {gw: local_date(int(g[8]), self._tz) for gw, g in gateways}
                last = max(last_days.values())
                carriers.setdefault(enterprise, {})[carrier] = CarrierSums(
                    carrier, int(rows), amount, tce, int(tce_rows), m3, int(m3_rows), coverage / len(gateways),
                    local_date(int(first), self._tz), last,
                    tuple(sorted(gw for gw, d in last_days.items() if d == last)),
                    tuple(sorted((gw, g[6]) for gw, g in gateways)) if len(gateways) > 1 else (),
                )
            return {
                e: PeriodSums(daily.get(e), carriers.get(e, {}),
                              {gw: local_date(ts, self._tz) for gw, ts in gateway_last.get(e, {}).items()})
                for e in sorted(daily.keys() | carriers.keys())
            }

        return await self._call(run)

    async def reports(
        self, first_year: int, last_year: int, scope: Scope, as_of: date | None = None
    ) -> dict[str, list[StoredReport]]:
        start_ns, end_ns = _period_bounds_ns(date(first_year, 1, 1), date(last_year, 12, 31), self._tz)
        as_of_ns = end_ns if as_of is None else local_day_start_ns(as_of + timedelta(days=1), self._tz)

        def work(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            members = self._member_params(conn, as_of_ns, scope)
            if members is None:
                return []
            params = self._params("enterprise_report", start_ns - REPORT_MARGIN_NS, end_ns + REPORT_MARGIN_NS,
                                  members)
            params.update(first_year=first_year, last_year=last_year)
            return conn.execute(_REPORTS_SQL, params).fetchall()

        def run() -> dict[str, list[StoredReport]]:
            rows = self._snapshot(work)
            merged: dict[tuple[str, str], dict[str, float]] = {}
            for enterprise, period, _ts, fields_json in rows:
                figures = _report_figures(json.loads(fields_json))
                # the same report under other tags too (the enterprise moved), in series order, not the order
                # of writing: a writer writes its figures onto every one of them (IndicatorService.report_points)
                merged.setdefault((str(enterprise), str(period)), {}).update(figures)
            out: dict[str, list[StoredReport]] = {}
            for (enterprise, period), figures in sorted(merged.items()):
                if figures:
                    out.setdefault(enterprise, []).append(StoredReport(enterprise, period, figures))
            return out

        return await self._call(run)

    async def report_points(
        self, enterprises: Collection[str], first_year: int, last_year: int
    ) -> dict[tuple[str, str], list[ReportPoint]]:
        start_ns, end_ns = _period_bounds_ns(date(first_year, 1, 1), date(last_year, 12, 31), self._tz)
        params = self._params("enterprise_report", start_ns - REPORT_MARGIN_NS, end_ns + REPORT_MARGIN_NS,
                              _scope_params(Scope(enterprises=tuple(sorted(set(enterprises))))))
        params.update(first_year=first_year, last_year=last_year)

        def run() -> dict[tuple[str, str], list[ReportPoint]]:
            out: dict[tuple[str, str], list[ReportPoint]] = {}
            if enterprises:
                for enterprise, period, tags, ts in self._read([(_REPORT_POINTS_SQL, params)])[0]:
                    out.setdefault((str(enterprise), str(period)), []).append((json.loads(tags), int(ts)))
            return out

        return await self._call(run)

    async def write(self, points: Sequence[Point], *, replace: bool = False) -> None:
        lines = encode_points(points)
        if not lines:
            return

        def run() -> None:
            outcome = self._opened(readonly=False).write_lines(lines, all_or_nothing=True, replace=replace)
            if outcome.refused:
                first = outcome.refused[0]
                raise StoreQueryError(
                    f"the store refused {len(outcome.refused)} of {len(lines)} point(s), so nothing was written; "
                    f"point {first.index} ({points[first.index].measurement}): {first.reason}"
                )

        await self._call(run, access="writable")

    async def delete_indicators_except(
        self, period: str, ts_ns: int, keep: Set[bytes], enterprises: Set[str]
    ) -> int:
        def stale(tags: Mapping[str, str]) -> bool:
            return series_digest(tags) not in keep and (tags.get("enterprise") or "") in {"", *enterprises}

        def run() -> int:
            return self._opened(readonly=False).delete_points(INDICATOR, ts_ns, {"period": period}, stale)

        return await self._call(run, access="writable")

    async def ping(self) -> None:
        """The file opens as an fmc store and answers a query."""
        await self._call(lambda: self._read([("SELECT 1", {})]))

    async def aclose(self) -> None:
        await asyncio.to_thread(self._forget)
