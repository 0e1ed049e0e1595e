"""The embedded SQLite store: InfluxDB write semantics, queries, durability, and the Sink wrapper."""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401  (before as_reader's fork: nobody may not read the stdlib)
import json
import os
import select
import shutil
import signal
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path

import pytest

import fmc.stores.embedded.store as embedded
from fmc.agent.plugin import SinkUnavailable
from fmc.central.store import Scope, StoreQueryError
from fmc.core.lineprotocol import encode
from fmc.core.points import Point
from fmc.stores.embedded.config import EmbeddedSink as EmbeddedSinkConfig
from fmc.stores.embedded.store import EmbeddedQueryStore, EmbeddedSink, EmbeddedStore, StoredPoint, StoreError

T0 = 1_764_000_000_000_000_000  # 2025-11-24T16:00:00Z, in ns

AWKWARD_TAGS = {
    "enterprise": "示范纺织 Demo, Ltd.",
    "equipment": 'loom "07" a=b',
    "signal": "spindle speed, 主轴转速",
}
AWKWARD_FIELDS = {
    "value": 412.5,
    "count": 7,
    "big": 2**63 - 1,
    "text": 'say "hi", a=b \\ 你好',
    "ok": True,
    "bad": False,
    "whole_float": 3.0,
}


def line(measurement: str, tags: dict[str, str], fields: dict, ts: int) -> str:
    return encode(Point(measurement, tags, fields, ts))


@pytest.fixture
def store(tmp_path: Path) -> EmbeddedStore:
    s = EmbeddedStore(tmp_path / "store.db")
    yield s
    s.close()


def test_round_trip_keeps_awkward_names_and_every_type(store: EmbeddedStore) -> None:
    outcome = store.write_lines([line("signal", AWKWARD_TAGS, AWKWARD_FIELDS, T0)])
    assert outcome.written == 1 and outcome.refused == []

    [p] = store.points("signal")
    assert p == StoredPoint("signal", AWKWARD_TAGS, AWKWARD_FIELDS, T0)
    # the types themselves, not just equal values (3.0 == 3, True == 1 in Python)
    assert type(p.fields["whole_float"]) is float
    assert type(p.fields["count"]) is int
    assert p.fields["ok"] is True and p.fields["bad"] is False
    assert store.series("signal") == [AWKWARD_TAGS]
    assert store.points("signal", where_tags={"equipment": 'loom "07" a=b'})[0].tags == AWKWARD_TAGS


def test_same_series_and_time_is_one_point_with_merged_fields(store: EmbeddedStore) -> None:
    tags = {"equipment": "loom-01"}
    first = [line("signal", tags, {"value": 1.0, "quality": 192}, T0)]
    store.write_lines(first)
    store.write_lines([line("signal", tags, {"value": 2.5, "text": "running"}, T0)])

    assert store.count("signal") == 1
    [p] = store.points("signal")
    assert p.fields == {"value": 2.5, "quality": 192, "text": "running"}

    # re-sending a whole batch (spool delete lost in a crash) changes nothing
    batch = [line("signal", tags, {"value": float(i)}, T0 + i) for i in range(1, 6)]
    store.write_lines(batch)
    before = store.points("signal")
    assert store.write_lines(batch).written == 5
    assert store.points("signal") == before
    assert store.count("signal") == 6


def test_field_type_conflict_refuses_that_line_and_writes_the_others(store: EmbeddedStore) -> None:
    tags = {"equipment": "cnc-01"}
    outcome = store.write_lines(
        [
            line("signal", tags, {"value": 1.5}, T0),
            line("signal", tags, {"value": 2}, T0 + 1),  # integer after float: conflict in the same batch
            line("signal", tags, {"value": 3.5}, T0 + 2),
            line("other", tags, {"value": 4}, T0),  # the type is per measurement
        ]
    )
    assert outcome.written == 3
    assert [r.index for r in outcome.refused] == [1]
    assert outcome.refused[0].reason.startswith("field type conflict: ")
    assert "integer" in outcome.refused[0].reason and "float" in outcome.refused[0].reason

    # across calls too, and a conflicting line is refused whole (its good field is not written)
    later = store.write_lines([line("signal", tags, {"value": "text", "extra": 1.0}, T0 + 3)])
    assert later.written == 0 and later.refused[0].reason.startswith("field type conflict: ")
    assert [p.fields["value"] for p in store.points("signal")] == [1.5, 3.5]
    assert store.points("other")[0].fields == {"value": 4}


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        "signal,equipment=x value=1.0",  # no timestamp
        "signal,equipment=x value=nan 1764000000000000000",  # InfluxDB refuses NaN
        "signal,equipment=x value=1.0 not-a-time",
        "signal,equipment=x value=99999999999999999999i 1764000000000000000",  # beyond int64
    ],
)
def test_malformed_line_is_refused_and_the_others_written(store: EmbeddedStore, bad: str) -> None:
    good = [line("signal", {"equipment": "x"}, {"value": float(i)}, T0 + i) for i in range(2)]
    outcome = store.write_lines([good[0], bad, good[1]])
    assert outcome.written == 2
    assert [r.index for r in outcome.refused] == [1]
    assert outcome.refused[0].reason.startswith("unable to parse")
    assert [p.ts_ns for p in store.points("signal")] == [T0, T0 + 1]


def test_a_failed_call_keeps_nothing_not_even_field_types(store: EmbeddedStore) -> None:
    with pytest.raises(TypeError):
        store.write_lines([line("m", {"a": "1"}, {"v": 1.0}, T0), None])  # type: ignore[list-item]
    assert store.count("m") == 0
    assert store.series("m") == []
    # the rolled-back float type of "v" was not remembered
    assert store.write_lines([line("m", {"a": "1"}, {"v": "text"}, T0)]).refused == []


def test_queries_by_tags_time_range_and_fields(store: EmbeddedStore) -> None:
    lines = []
    for eq in ("loom-01", "loom-02", "cnc-01"):
        for sig in ("power_kw", "spindle_speed"):
            for i in range(10):
                tags = {"enterprise": "e1", "equipment": eq, "signal": sig}
                lines.append(line("signal", tags, {"value": i * 1.5, "quality": 192}, T0 + i * 10**9))
    assert store.write_lines(lines).written == 60

    assert len(store.series("signal")) == 6
    assert store.series("signal", {"equipment": "loom-02"}) == [
        {"enterprise": "e1", "equipment": "loom-02", "signal": "power_kw"},
        {"enterprise": "e1", "equipment": "loom-02", "signal": "spindle_speed"},
    ]
    assert store.count("signal", {"equipment": "cnc-01", "signal": "power_kw"}) == 10
    assert store.count("signal", {"equipment": "nope"}) == 0
    assert store.count("nothing") == 0
    # a tag value that would break string-built SQL is just a value that matches nothing
    assert store.series("signal", {"equipment": "x' OR '1'='1"}) == []
    assert store.count("signal", {"equipment') OR 1=1 --": "loom-01"}) == 0

    # start inclusive, end exclusive; ascending time, ties in series order
    window = store.points("signal", {"equipment": "loom-01"}, start_ns=T0 + 2 * 10**9, end_ns=T0 + 5 * 10**9)
    assert [p.ts_ns for p in window] == [T0 + k * 10**9 for k in (2, 2, 3, 3, 4, 4)]
    assert [p.tags["signal"] for p in window[:2]] == ["power_kw", "spindle_speed"]
    assert [p.fields["value"] for p in window[::2]] == [3.0, 4.5, 6.0]

    only_value = store.points("signal", {"equipment": "loom-01", "signal": "power_kw"}, fields=["value"])
    assert len(only_value) == 10 and all(p.fields.keys() == {"value"} for p in only_value)
    assert store.points("signal", fields=["missing"]) == []


def test_reopen_keeps_points_series_and_field_types(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with EmbeddedStore(path) as first:
        first.write_lines([line("signal", AWKWARD_TAGS, AWKWARD_FIELDS, T0)])
    with EmbeddedStore(path) as again:
        assert again.points("signal") == [StoredPoint("signal", AWKWARD_TAGS, AWKWARD_FIELDS, T0)]
        outcome = again.write_lines([line("signal", AWKWARD_TAGS, {"value": "now text"}, T0 + 1)])
        assert outcome.refused and outcome.refused[0].reason.startswith("field type conflict")
        # same series after reopening: a new point joins it instead of creating a second series
        again.write_lines([line("signal", AWKWARD_TAGS, {"value": 1.0}, T0 + 2)])
        assert again.series("signal") == [AWKWARD_TAGS]
        assert again.count("signal") == 2
    with EmbeddedStore(path, readonly=True) as reader:
        assert reader.count("signal") == 2
        assert type(reader.points("signal")[0].fields["whole_float"]) is float


def test_concurrent_writer_and_reader_see_whole_batches(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    writer = EmbeddedStore(path)
    reader = EmbeddedStore(path, readonly=True)
    batches, per_batch = 40, 100
    seen: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for b in range(batches):
                tags = {"equipment": f"m{b % 4}"}
                batch = [line("signal", tags, {"value": 1.0}, T0 + b * per_batch + i) for i in range(per_batch)]
                writer.write_lines(batch)
        except BaseException as e:  # reported by the main thread
            errors.append(e)
        finally:
            done.set()

    def read() -> None:
        try:
            while not done.is_set():
                seen.append(reader.count("signal"))
                reader.points("signal", {"equipment": "m1"}, fields=["value"])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(set(seen)) > 2, "the reader never ran while the writer did"
    assert all(n % per_batch == 0 for n in seen), "a reader saw part of a batch"
    assert seen == sorted(seen)
    assert reader.count("signal") == batches * per_batch
    writer.close()
    reader.close()


def test_a_foreign_sqlite_file_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE spool (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(StoreError, match="not an fmc store"):
        EmbeddedStore(path)
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    conn.close()
    assert tables == ["spool"]


def test_a_store_another_process_creates_meanwhile_is_not_called_foreign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two programs opening a new store at once (the agent and ``fmc api`` on a fresh install): the other
    one creates the store as the opener's statement reading ``sqlite_master`` starts -- once right between
    its look at the file's id and its look at the tables, which saw no fmc id but tables."""
    path = tmp_path / "fmc-store.db"
    real_connect = sqlite3.connect
    created = []

    def connect(*args, **kwargs):  # type: ignore[no-untyped-def]
        conn = real_connect(*args, **kwargs)

        def trace(sql: str) -> None:
            if not created and "sqlite_master" in sql:
                created.append(True)
                EmbeddedStore(path).close()  # the other process creates the store now

        conn.set_trace_callback(trace)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    store = EmbeddedStore(path)
    try:
        assert created
        assert store.write_lines(["m,a=b v=1 1"]).written == 1
    finally:
        store.close()


# --- the Sink -----------------------------------------------------------------------------------


def sink_at(path: Path) -> EmbeddedSink:
    return EmbeddedSink(EmbeddedSinkConfig(type="embedded", path=path))


async def test_sink_writes_reports_refusals_and_checks(tmp_path: Path) -> None:
    sink = sink_at(tmp_path / "store.db")
    assert sink.name == "embedded"
    check = await sink.check()
    assert check.ok, check.detail
    a = {"equipment": "a"}
    lines = [line("signal", a, {"value": 1.0}, T0), "broken line", line("signal", a, {"value": 2}, T0 + 1)]
    outcome = await sink.write(lines)
    assert outcome.written == 1
    reasons = [(r.index, r.reason.split(":")[0]) for r in outcome.refused]
    assert reasons == [(1, "unable to parse"), (2, "field type conflict")]
    await sink.aclose()
    with EmbeddedStore(tmp_path / "store.db", readonly=True) as store:
        assert store.count("signal") == 1


async def test_sink_unavailable_when_folder_is_missing_then_recovers(tmp_path: Path) -> None:
    folder = tmp_path / "not-yet"
    sink = sink_at(folder / "store.db")
    check = await sink.check()
    assert not check.ok and "does not exist" in check.detail
    with pytest.raises(SinkUnavailable):
        await sink.write([line("signal", {"equipment": "a"}, {"value": 1.0}, T0)])
    folder.mkdir()
    assert (await sink.write([line("signal", {"equipment": "a"}, {"value": 1.0}, T0)])).written == 1
    await sink.aclose()


async def test_sink_ping_answers_once_the_file_can_be_written(tmp_path: Path) -> None:
    folder = tmp_path / "later"
    sink = sink_at(folder / "store.db")
    with pytest.raises(SinkUnavailable, match="does not exist"):
        await sink.ping()
    folder.mkdir()
    await sink.ping()
    await sink.aclose()


async def test_sink_unavailable_while_another_writer_holds_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "store.db"
    EmbeddedStore(path).close()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    sink = sink_at(path)
    with pytest.raises(SinkUnavailable, match="locked"):
        await sink.write([line("signal", {"equipment": "a"}, {"value": 1.0}, T0)])
    blocker.execute("ROLLBACK")
    blocker.close()
    assert (await sink.write([line("signal", {"equipment": "a"}, {"value": 1.0}, T0)])).written == 1
    await sink.aclose()


# --- the central service's reads (EmbeddedQueryStore) ------------------------------------------------

DAILY_LINE = ("enterprise_daily,enterprise={e},gateway=main,industry=1711,region=330602 asset_value_nc=1,"
              "asset_value_total=1,equipment_networked=2i,equipment_nc=5i,equipment_total=10i,"
              "nc_equipment_networked=1i 1577808000000000000")  # 2020-01-01 00:00 Asia/Shanghai
JANUARY = (date(2020, 1, 1), date(2020, 1, 31))
# the file's mode: readable by all; on a non-root run the reader is this user, and read-only is the file's say
READ_ONLY = 0o644 if os.geteuid() == 0 else 0o444


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder another user can reach (a test's tmp_path is private to root) and read, not write."""
    folder = Path(tempfile.mkdtemp(prefix="fmc-test-ro-"))
    os.chmod(folder, 0o755)
    yield folder
    os.chmod(folder, 0o755)
    shutil.rmtree(folder, ignore_errors=True)


def as_reader(read: Callable[[], str], steps: Sequence[Callable[[], None]]) -> list[str]:
    """What ``read`` returns after each of ``steps`` (run by the store's owner), for a user who may read the
    store but not write it nor its folder. On root, who reads and writes every file, that user is nobody in
    a child process, forked before the steps: a child inherits SQLite's state of the files its parent has
    open, and would not read them as another process does. Otherwise it is this user (the caller's chmod)."""
    if os.geteuid() != 0:
        answers = []
        for step in steps:
            step()
            answers.append(read())
        return answers
    to_child, from_parent = os.pipe()
    from_child, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        try:
            os.close(from_parent)
            os.close(from_child)
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            while os.read(to_child, 1):
                try:
                    answer = read()
                except BaseException as e:  # told to the test
                    answer = f"reader failed: {type(e).__name__}: {e}"
                os.write(to_parent, (json.dumps(answer) + "\n").encode())
        finally:
            os._exit(0)
    os.close(to_child)
    os.close(to_parent)
    answers = []
    try:
        with os.fdopen(from_child) as replies, os.fdopen(from_parent, "wb", buffering=0) as go:
            for step in steps:
                step()
                go.write(b"x")
                if not select.select([replies], [], [], 60)[0]:
                    os.kill(pid, signal.SIGKILL)
                    pytest.fail("the reader did not answer within 60 s")
                answers.append(json.loads(replies.readline()))
    finally:
        os.waitpid(pid, 0)  # the closed pipe ends the child
    return answers


def january(store: EmbeddedQueryStore) -> str:
    """The enterprises with January 2020 sums, or the query's error."""
    try:
        return f"enterprises={sorted(asyncio.run(store.period_sums(*JANUARY, Scope())))}"
    except StoreQueryError as e:
        return f"StoreQueryError: {e}"


def test_query_store_reads_a_store_its_user_may_read_but_not_write(shared_folder: Path) -> None:
    """A statistician running ``fmc indicators`` beside the plant's agent, which owns the store, gets the
    figures; the indicator points it may not write are refused as such."""
    path = shared_folder / "fmc-store.db"
    agents: list[EmbeddedStore] = []

    def start_agent() -> None:
        agents.append(EmbeddedStore(path))  # running: its -wal and -shm files exist
        assert agents[0].write_lines([DAILY_LINE.format(e="E1")]).refused == []
        os.chmod(path, READ_ONLY)

    def read() -> str:
        store = EmbeddedQueryStore(path)
        try:
            figures = january(store)
            try:
                asyncio.run(store.write([Point("indicator", {"enterprise": "E1"}, {"value": 1.0}, 1)]))
                written = "written"
            except StoreQueryError as e:
                written = f"StoreQueryError: {e}"
            return f"{figures}\n{written}"
        finally:
            asyncio.run(store.aclose())

    try:
        [answer] = as_reader(read, [start_agent])
    finally:
        for agent in agents:
            agent.close()
    figures, _, written = answer.partition("\n")
    assert figures == "enterprises=['E1']"
    assert written.startswith("StoreQueryError: ") and "writable" in written and "readable" not in written


async def test_query_store_reads_the_last_commit_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    """WAL readers are never held up by a writer: a batch, a backup or a ``sqlite3`` shell holding the write
    lock for long does not make the central service's first query fail with "database is locked"."""
    path = tmp_path / "fmc-store.db"
    with EmbeddedStore(path) as agent:
        assert agent.write_lines([DAILY_LINE.format(e="E1")]).refused == []
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a write transaction in progress
    try:
        store = EmbeddedQueryStore(path)
        try:
            sums = await store.period_sums(*JANUARY, Scope())
        finally:
            await store.aclose()
        assert sorted(sums) == ["E1"]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_query_store_says_why_a_closed_store_in_a_folder_it_may_not_write_cannot_be_read(
    shared_folder: Path,
) -> None:
    """Once the last program closed the store, SQLite has removed its -wal and -shm files, and a reader
    must create them again to read a WAL file: one who may not write the folder cannot, however readable
    the file is (SQLite's own words: "attempt to write a readonly database")."""
    path = shared_folder / "fmc-store.db"

    def stopped_agent() -> None:
        with EmbeddedStore(path) as agent:
            assert agent.write_lines([DAILY_LINE.format(e="E1")]).refused == []
        assert sorted(p.name for p in shared_folder.iterdir()) == ["fmc-store.db"]
        os.chmod(path, READ_ONLY)
        if os.geteuid() != 0:
            os.chmod(shared_folder, 0o555)

    def read() -> str:
        store = EmbeddedQueryStore(path)
        try:
            return january(store)
        finally:
            asyncio.run(store.aclose())

    [answer] = as_reader(read, [stopped_agent])
    assert answer.startswith("StoreQueryError: ")
    assert f"may not write its folder {shared_folder}" in answer and "fmc-store.db-shm" in answer


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a second user: root runs the reader as nobody")
def test_query_store_of_a_user_who_may_not_write_reads_on_across_agent_restarts(shared_folder: Path) -> None:
    """The query store keeps its read-only connection: while it is open, the agent's stop leaves the -wal and
    -shm files in place, so the reader goes on reading, and it sees what the restarted agent writes."""
    path = shared_folder / "fmc-store.db"
    agents: list[EmbeddedStore] = []

    def start_agent(enterprise: str) -> Callable[[], None]:
        def start() -> None:
            agents.append(EmbeddedStore(path))
            assert agents[-1].write_lines([DAILY_LINE.format(e=enterprise)]).refused == []
            os.chmod(path, READ_ONLY)
        return start

    def stop_agent() -> None:
        agents.pop().close()

    store = EmbeddedQueryStore(path)
    try:
        assert as_reader(lambda: january(store), [start_agent("E1"), stop_agent, start_agent("E2")]) == [
            "enterprises=['E1']",
            "enterprises=['E1']",
            "enterprises=['E1', 'E2']",
        ]
    finally:
        for agent in agents:
            agent.close()
