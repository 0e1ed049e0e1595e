"""The spool: ordering, byte accounting, drop policy, dead letters, threads, SIGKILL, corruption."""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fmc.agent.spool import (
    PAYLOAD_EXCERPT_MAX,
    RECENT_MESSAGES_KEEP,
    RejectionRecord,
    Spool,
    SpoolBatch,
    SpoolError,
    check_spool_file,
)
from fmc.cli.main import main as cli_main
from fmc.core.lineprotocol import encode, series_and_time
from fmc.core.localtime import local_day_start_ns, zone
from fmc.core.points import Point, Priority
from fmc.plant.rollups import Site
from fmc.stores.influxdb.config import InfluxDBSink as InfluxDBSinkConfig
from fmc.stores.influxdb.sink import InfluxDBSink
from tests.agent_process import agent_config
from tests.servers.influxdb import InfluxDBServer
from tests.spool_child import make_line, priority_of

CHILD = Path(__file__).with_name("spool_child.py")
RAW, EVENT, ROLLUP = Priority.RAW, Priority.EVENT, Priority.ROLLUP


def line_of(tag: str, size: int) -> str:
    """A line of exactly ``size`` UTF-8 bytes that starts with ``tag``."""
    assert size >= len(tag) + 1
    return tag + " " + "x" * (size - len(tag) - 1)


def all_rows(path: Path) -> list[tuple[int, int, str]]:
    """(id, priority, line) of every queued row, read with a connection of the test's own."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, priority, line FROM spool ORDER BY id").fetchall()
    finally:
        conn.close()


def utf8_len(lines: list[str]) -> int:
    return sum(len(x.encode()) for x in lines)


# --- append / read / complete ------------------------------------------------------------------


def test_append_read_complete_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "nested" / "dir" / "spool.db")  # parent directories are created
    first = [(f"m v={i}i {i}", RAW) for i in range(5)]
    second = [(f"m v={i}i {i}", EVENT) for i in range(5, 8)]
    assert spool.append(first, now_ms=1000) == {}
    assert spool.append(second, now_ms=2000) == {}

    batch = spool.read_batch(4)
    assert batch.lines == [f"m v={i}i {i}" for i in range(4)]
    assert batch.ids == sorted(batch.ids) and len(set(batch.ids)) == 4
    assert batch.enqueued_ms == [1000] * 4
    # reading again without completing gives the same oldest rows
    assert spool.read_batch(4).ids == batch.ids
    spool.complete(batch)

    rest = spool.read_batch(100)
    assert rest.lines == [f"m v={i}i {i}" for i in range(4, 8)]
    assert rest.enqueued_ms == [1000, 2000, 2000, 2000]
    assert rest.ids[0] > batch.ids[-1]
    assert spool.stats().oldest_enqueued_ms == 1000
    spool.complete(rest)

    assert spool.read_batch(10) == SpoolBatch([], [], [])
    stats = spool.stats()
    assert (stats.depth, stats.bytes, stats.oldest_enqueued_ms) == (0, 0, None)
    spool.close()


def test_read_batch_byte_limit_keeps_at_least_one(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        spool.append([(line_of(f"l{i}", 100), RAW) for i in range(5)])
        assert len(spool.read_batch(10, max_bytes=250).ids) == 2
        assert len(spool.read_batch(10, max_bytes=300).ids) == 3
        # a line larger than the limit still goes out, alone, rather than blocking the spool
        assert spool.read_batch(10, max_bytes=10).lines == [line_of("l0", 100)]
        assert len(spool.read_batch(2, max_bytes=10_000).ids) == 2
        with pytest.raises(ValueError):
            spool.read_batch(0)


def test_byte_accounting_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    lines = ["m,tag=Grüße v=1i 1", "m,tag=温度 v=2i 2", "plain v=3i 3"]
    with Spool(path) as spool:
        spool.append([(x, RAW) for x in lines], now_ms=5)
        assert spool.stats().bytes == utf8_len(lines) > sum(map(len, lines))
    with Spool(path) as spool:
        stats = spool.stats()
        assert (stats.depth, stats.bytes, stats.oldest_enqueued_ms) == (3, utf8_len(lines), 5)
        spool.complete(spool.read_batch(1))
        assert spool.stats().bytes == utf8_len(lines[1:])
    with Spool(path) as spool:
        assert (spool.stats().depth, spool.stats().bytes) == (2, utf8_len(lines[1:]))
        assert spool.read_batch(10).lines == lines[1:]


def test_ids_are_never_reused_after_the_spool_empties(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path) as spool:
        spool.append([("a v=1i 1", RAW), ("b v=1i 1", RAW)])
        batch = spool.read_batch(10)
        spool.complete(batch)
    with Spool(path) as spool:
        spool.append([("c v=1i 1", RAW)])
        assert spool.read_batch(10).ids[0] > batch.ids[-1]


def test_complete_twice_does_not_corrupt_totals(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        spool.append([(line_of(f"l{i}", 50), RAW) for i in range(4)])
        batch = spool.read_batch(2)
        spool.complete(batch)
        spool.complete(batch)  # a retry after an unclear outcome: the rows are gone already
        stats = spool.stats()
        assert (stats.depth, stats.bytes) == (2, 100)


def test_append_is_one_transaction(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        spool.append([("keep v=1i 1", RAW)])
        bad_priority = 7  # refused by the table's CHECK constraint, after the first row was inserted
        rejection = RejectionRecord(1, "src", "t", "bad_json", "detail", b"{")
        with pytest.raises(SpoolError, match="append failed"):
            spool.append([("new v=1i 1", RAW), ("bad v=1i 1", bad_priority)], [rejection])  # type: ignore[list-item]
        stats = spool.stats()
        assert (stats.depth, stats.bytes, stats.rejected_total) == (1, len("keep v=1i 1"), 0)
        assert spool.read_batch(10).lines == ["keep v=1i 1"]
        assert spool.recent_rejections() == []
        # and the spool is still usable
        spool.append([("after v=1i 1", RAW)])
        assert spool.stats().depth == 2


# --- dead letters ------------------------------------------------------------------------------


def test_refused_rows_go_to_dead_letter_and_can_be_requeued(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    lines = [f"m v={i}i {i}" for i in range(6)]
    with Spool(path) as spool:
        spool.append([(x, EVENT if i == 1 else RAW) for i, x in enumerate(lines)], now_ms=100)
        batch = spool.read_batch(4)
        spool.complete(batch, [(1, "field type conflict", 400), (3, "bad timestamp", None)], now_ms=777)

        stats = spool.stats()
        assert (stats.depth, stats.dead_letters) == (2, 2)
        assert stats.bytes == utf8_len(lines[4:])
        assert spool.read_batch(10).lines == lines[4:]

    with Spool(path) as spool:  # dead letters are persistent
        dead = spool.dead_letters()
        assert sorted((d.id, d.line, d.reason, d.status, d.failed_at_ms) for d in dead) == [
            (batch.ids[1], lines[1], "field type conflict", 400, 777),
            (batch.ids[3], lines[3], "bad timestamp", None, 777),
        ]
        assert {d.id: d.priority for d in dead} == {batch.ids[1]: EVENT, batch.ids[3]: RAW}
        assert spool.dead_letters(limit=1)[0].id in {batch.ids[1], batch.ids[3]}

        assert spool.requeue_dead_letters() == 2
        assert spool.dead_letters() == []
        stats = spool.stats()
        assert (stats.depth, stats.dead_letters, stats.bytes) == (4, 0, utf8_len([lines[1], lines[3], *lines[4:]]))
        # they keep their ids, so they are the oldest again and go out first, with their priority
        again = spool.read_batch(10)
        assert again.ids == [batch.ids[1], batch.ids[3], *again.ids[2:]]
        assert again.lines == [lines[1], lines[3], lines[4], lines[5]]
        assert again.enqueued_ms == [100] * 4
        spool.complete(again)
        assert spool.stats().depth == 0
        assert spool.requeue_dead_letters() == 0


def rollup(amount: float, ts: int = 1_559_318_400_000_000_000, carrier: str = "electricity") -> str:
    """A consumption_daily line: a day's rollup, written again, whole, when late intervals come."""
    return encode(Point("consumption_daily", {"enterprise": "E 1", "carrier": carrier}, {"amount": amount}, ts))


def test_a_dead_rollup_whose_later_version_was_delivered_is_kept_but_not_requeued(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path) as spool:
        spool.append([(rollup(100.0), ROLLUP), (rollup(5.0, carrier="water"), ROLLUP)])
        first = spool.read_batch(10)
        spool.complete(first, [(0, "partial write: max-series-per-database limit exceeded", 400)], now_ms=5)
        # the day written again, whole, and delivered; and a raw point of the same time
        spool.append([(rollup(240.0), ROLLUP), ("signal,equipment=m1 value=1 1559318400000000000", RAW)])
        later = spool.read_batch(10)
        spool.complete(later)

        [dead] = spool.dead_letters()
        assert (dead.id, dead.line, dead.superseded_by) == (first.ids[0], rollup(100.0), later.ids[0])
        stats = spool.stats()
        assert (stats.dead_letters, stats.superseded_dead_letters) == (1, 1)
        assert spool.requeue_dead_letters() == 0  # sent again, 100 would replace 240 in the store
        assert spool.stats().depth == 0
    with Spool(path) as spool:  # kept, for inspection, and still not requeued
        assert [d.superseded_by for d in spool.dead_letters()] == [later.ids[0]]
        assert spool.requeue_dead_letters() == 0 and spool.stats().depth == 0


def test_a_dead_rollup_followed_by_its_later_version_in_the_same_batch_is_superseded(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        spool.append([(rollup(100.0), ROLLUP), (rollup(240.0), ROLLUP), (rollup(1.0, ts=7), ROLLUP)])
        batch = spool.read_batch(10)
        # both versions refused: only the later one is sent again; the one of another day too
        spool.complete(batch, [(0, "refused", 400), (1, "refused", 400), (2, "refused", 400)])
        assert {d.id: d.superseded_by for d in spool.dead_letters()} == {
            batch.ids[0]: batch.ids[1], batch.ids[1]: None, batch.ids[2]: None}
        assert spool.requeue_dead_letters() == 2
        assert spool.read_batch(10).lines == [rollup(240.0), rollup(1.0, ts=7)]
        assert [d.id for d in spool.dead_letters()] == [batch.ids[0]]


def test_a_dead_rollup_is_not_requeued_behind_its_later_version_being_sent(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        spool.append([(rollup(100.0), ROLLUP)])
        first = spool.read_batch(10)
        spool.complete(first, [(0, "refused", 400)])
        spool.append([(rollup(240.0), ROLLUP), (rollup(3.0, carrier="water"), ROLLUP)])
        sending = spool.read_batch(10)  # the later version is on its way when the operator requeues
        assert spool.requeue_dead_letters() == 0
        assert [d.superseded_by for d in spool.dead_letters()] == [sending.ids[0]]
        spool.complete(sending)
        assert spool.read_batch(10).ids == []  # nothing older is sent after it


def test_requeue_sends_every_dead_letter_no_later_line_supersedes(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        ts = 1_559_318_400_000_000_000
        refused = [
            (rollup(100.0), ROLLUP),
            (f"signal,equipment=m1 value=1 {ts}", RAW),  # raw and event lines are never written again
            (f"equipment_state,equipment=m1 state=\"running\" {ts}", EVENT),
            ("not line protocol", ROLLUP),
        ]
        spool.append(refused)
        batch = spool.read_batch(10)
        spool.complete(batch, [(i, "refused", 400) for i in range(len(refused))])
        spool.append([  # the same series and times again, other series, other times
            (f"signal,equipment=m1 value=2 {ts}", RAW), (f"equipment_state,equipment=m1 state=\"idle\" {ts}", EVENT),
            (rollup(240.0, carrier="water"), ROLLUP), (rollup(240.0, ts=ts + 1), ROLLUP),
            (encode(Point("consumption_daily", {"enterprise": "E 1"}, {"amount": 1.0}, ts)), ROLLUP),
        ])
        spool.complete(spool.read_batch(10))
        assert [d.superseded_by for d in spool.dead_letters()] == [None] * 4
        assert spool.requeue_dead_letters() == 4
        assert spool.read_batch(10).lines == [line for line, _ in refused]


def test_fmc_spool_show_and_requeue_tell_the_superseded_dead_letters(tmp_path: Path, capsys) -> None:
    config = agent_config(tmp_path, mqtt_port=1)  # its spool: spool.db next to it
    with Spool(tmp_path / "spool.db") as spool:
        spool.append([(rollup(100.0), ROLLUP), ("signal v=1 7", RAW)])
        spool.complete(spool.read_batch(10), [(0, "refused", 400), (1, "refused", 400)])
        spool.append([(rollup(240.0), ROLLUP)])
        later = spool.read_batch(10)
        spool.complete(later)
    assert cli_main(["spool", "show", "-c", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "dead letters: 2 (1 superseded, not requeued)" in shown
    assert f"[superseded by #{later.ids[0]}: not requeued]" in shown
    assert cli_main(["spool", "requeue", "-c", str(config)]) == 0
    assert capsys.readouterr().out.startswith(
        "1 dead-lettered point(s) queued again\n1 superseded dead letter(s) kept, not sent")


class LimitedInfluxDB(InfluxDBServer):
    """influxd with a ``max-series-per-database`` the test can raise (and restart the server)."""

    max_series = 2

    def _config_text(self) -> str:
        return super()._config_text().replace("[data]\n", f"[data]\n  max-series-per-database = {self.max_series}\n")


async def drain_once(spool: Spool, sink: InfluxDBSink) -> None:
    """One turn of the agent's drain loop (fmc.agent.runtime.Agent._drain): read, write, complete."""
    batch = spool.read_batch(5000)
    if not batch.ids:
        return
    outcome = await sink.write(batch.lines)
    spool.complete(batch, [(r.index, r.reason, r.status) for r in outcome.refused])


async def test_a_requeued_daily_rollup_does_not_replace_its_later_version_in_influxdb(tmp_path: Path) -> None:
    """InfluxDB keeps the last version of a series and time it got. The day's first rollup was refused
    (the series limit), its complete version delivered once the limit was raised; the operator then
    does what the agent's warning says, `fmc spool requeue`: the old version must not be sent after."""
    server = LimitedInfluxDB(tmp_path / "influx")
    server.start()
    spool = Spool(tmp_path / "spool.db")
    sink = None
    try:
        server.create_database("fmc")
        # the database is at its series limit already (other enterprises' series)
        other = [encode(Point("enterprise_daily", {"enterprise": f"E-{i}"}, {"equipment_total": 1}, 1_000 + i))
                 for i in range(2)]
        sink = InfluxDBSink(InfluxDBSinkConfig(type="influxdb", url=server.url, database="fmc", timeout_s=5.0))
        assert (await sink.write(other)).refused == []

        site = Site("91330602MA2BXXXX1X", "330602", "1711")
        day = local_day_start_ns(date(2019, 6, 1), zone("Asia/Shanghai"))
        series_tags = site.tags(carrier="electricity")
        # 1) the day's first version (half the day's intervals had arrived): refused, series limit
        spool.append([(encode(Point("consumption_daily", series_tags,
                                    {"amount": 100.0, "tce": 0.01229, "coverage": 0.5}, day)), ROLLUP)])
        await drain_once(spool, sink)
        dead = spool.dead_letters()
        assert len(dead) == 1 and "max-series-per-database" in dead[0].reason, dead

        # 2) the operator raises the limit (influxdb.conf, restart)
        server.stop()
        server.max_series = 0  # unlimited
        server.start()

        # 3) the late intervals come: the day is written again, whole, and the store takes it
        spool.append([(encode(Point("consumption_daily", series_tags,
                                    {"amount": 240.0, "tce": 0.029496, "coverage": 1.0}, day)), ROLLUP)])
        await drain_once(spool, sink)
        assert server.select("fmc", "SELECT amount FROM consumption_daily")[0]["amount"] == 240.0

        # 4) the cause is fixed, so the operator follows the agent's advice: the old version stays
        assert spool.requeue_dead_letters() == 0
        [kept] = spool.dead_letters()
        assert (kept.id, kept.superseded_by is not None) == (dead[0].id, True)
        await drain_once(spool, sink)
        assert spool.stats().depth == 0

        [row] = server.select("fmc", "SELECT amount, coverage FROM consumption_daily")
        assert (row["amount"], row["coverage"]) == (240.0, 1.0), (
            f"the requeued old version replaced the day's complete figure: {row}")
    finally:
        if sink is not None:
            await sink.aclose()
        spool.close()
        server.stop()


def test_complete_rejects_an_index_outside_the_batch(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        spool.append([("a v=1i 1", RAW), ("b v=1i 1", RAW)])
        batch = spool.read_batch(2)
        with pytest.raises(ValueError, match="outside the batch"):
            spool.complete(batch, [(2, "x", 400)])
        assert spool.stats().depth == 2
        spool.complete(SpoolBatch([], [], []))  # empty batch: nothing to do
        assert spool.stats().depth == 2


# --- rejections ring, state --------------------------------------------------------------------


def test_rejections_ring_keeps_newest_and_counts_all(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    records = [RejectionRecord(i, "mqtt-a", f"t/{i}", "bad_json", f"detail {i}", bytes([i]) * 1000) for i in range(5)]
    with Spool(path, rejected_keep=3) as spool:
        spool.append([], records[:2])  # rejections alone are committed too
        spool.append([("m v=1i 1", RAW)], records[2:])
        recent = spool.recent_rejections()
        assert [r.topic for r in recent] == ["t/4", "t/3", "t/2"]  # newest first
        assert recent[0] == RejectionRecord(
            4, "mqtt-a", "t/4", "bad_json", "detail 4", bytes([4]) * PAYLOAD_EXCERPT_MAX
        )
        assert [r.at_ms for r in spool.recent_rejections(limit=1)] == [4]
        assert spool.stats().rejected_total == 5
    with Spool(path, rejected_keep=0) as spool:
        assert spool.stats().rejected_total == 5
        spool.append([], records[:1])
        assert spool.recent_rejections() == []
        assert spool.stats().rejected_total == 6


def test_state_kv_persists(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path) as spool:
        assert spool.state_get("tracker") is None
        spool.state_set("tracker", '{"a": 1}')
        spool.state_set("tracker", '{"a": 2}')
        spool.state_set("other", "x")
    with Spool(path) as spool:
        assert spool.state_get("tracker") == '{"a": 2}'
        assert spool.state_get("other") == "x"


def test_journal_entries_commit_with_the_points_and_end_with_the_next_state(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path) as spool:
        spool.state_set("plant", "s0")
        spool.append([(line_of("a", 20), RAW)], journal=[("plant", "e1"), ("other", "x1")])
        spool.append([], journal=[("plant", "e2")])  # a journal entry alone is a commit too
        assert spool.journal("plant") == ["e1", "e2"]
    with Spool(path) as spool:  # committed means on disk
        assert spool.journal("plant") == ["e1", "e2"]
        assert spool.stats().depth == 1
        spool.state_set("plant", "s1")  # the state holds what the journal had
        assert spool.journal("plant") == []
        assert spool.journal("other") == ["x1"]
        spool.append([(line_of("b", 20), RAW)], journal=[("plant", "e3")])
        assert (spool.state_get("plant"), spool.journal("plant")) == ("s1", ["e3"])


def test_committed_messages_are_remembered_per_source_for_a_bounded_window(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    a, b = b"a" * 16, b"b" * 16
    with Spool(path) as spool:
        assert not spool.committed_message("plant", 7, a)
        spool.append([(line_of("x", 20), RAW)], messages=[("plant", 7, a), ("hall", 7, b)])
        assert spool.committed_message("plant", 7, a)
        assert not spool.committed_message("plant", 7, b)  # same packet id, another message
        assert not spool.committed_message("hall", 7, a)  # another source
        spool.append([], messages=[("hall", 7, a)])  # the packet id's newest message wins
        assert spool.committed_message("hall", 7, a) and not spool.committed_message("hall", 7, b)
    with Spool(path) as spool:  # on disk
        assert spool.committed_message("plant", 7, a)
        # RECENT_MESSAGES_KEEP newer messages later, packet id 7's is out of the window (after a
        # wrap of packet ids, an equal payload on packet id 7 is not taken for that old message)
        newer = [("plant", 100 + i % 60_000, b"c" * 16) for i in range(RECENT_MESSAGES_KEEP - 1)]
        spool.append([], messages=newer)
        assert spool.committed_message("plant", 7, a)
        spool.append([], messages=[("plant", 99, b)])
        assert not spool.committed_message("plant", 7, a)
        assert spool.committed_message("hall", 7, a)
        # the rows past the window are deleted every RECENT_MESSAGES_KEEP / 2 messages of a source
        more = [("plant", 20_000 + i, b"c" * 16) for i in range(RECENT_MESSAGES_KEEP // 2 - 1)]
        spool.append([], messages=more)
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT count(*), min(n), max(n) FROM recent_messages WHERE source = 'plant'").fetchone()
    db.close()
    assert rows == (RECENT_MESSAGES_KEEP, RECENT_MESSAGES_KEEP // 2 + 1, RECENT_MESSAGES_KEEP * 3 // 2)


def test_a_new_broker_session_forgets_the_records_of_the_earlier_ones_and_a_resumed_one_keeps_them(
        tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    a = b"a" * 16
    with Spool(path) as spool:
        first = spool.message_session("plant_1", new=False)
        assert first == "plant_1"  # session 0: the key records were kept under before sessions
        spool.append([], messages=[(first, 1, a), ("plantX1", 1, a), ("plant_1x", 1, a)])
        assert spool.message_session("plant_1", new=False) == first and spool.committed_message(first, 1, a)
        second = spool.message_session("plant_1", new=True)  # the broker lost the session
        assert second == "plant_1#1"
        assert not spool.committed_message(first, 1, a) and not spool.committed_message(second, 1, a)
        # other sources keep theirs ("_" in a name is not a LIKE wildcard here)
        assert spool.committed_message("plantX1", 1, a) and spool.committed_message("plant_1x", 1, a)
        spool.append([], messages=[(second, 1, a)])
    with Spool(path) as spool:  # a restarted agent whose broker resumes the session
        assert spool.message_session("plant_1", new=False) == "plant_1#1"
        assert spool.committed_message("plant_1#1", 1, a)
        assert spool.message_session("plant_1", new=True) == "plant_1#2"
        assert not spool.committed_message("plant_1#1", 1, a)


def test_a_group_of_messages_is_recorded_as_one_by_one(tmp_path: Path) -> None:
    """A group's record is written in one statement per source: the rows are those of recording its
    messages one after the other (the newest message of a packet id wins, also within a group; each
    source numbers its own), and digests of another size take the row-by-row way to the same end."""
    rng = random.Random(5)
    expected: dict[tuple[str, int], tuple[bytes, int]] = {}
    numbers: dict[str, int] = {}
    with Spool(tmp_path / "s.db") as spool:
        for group in range(40):
            size = 8 if group % 10 == 3 else 16
            messages = [(rng.choice(["plant", "hall"]), rng.randrange(1, 400), rng.randbytes(size))
                        for _ in range(rng.randrange(1, 300))]
            spool.append([], messages=messages)
            for source, packet_id, digest in messages:
                numbers[source] = numbers.get(source, 0) + 1
                expected[(source, packet_id)] = (digest, numbers[source])
        for (source, packet_id), (digest, _) in expected.items():
            assert spool.committed_message(source, packet_id, digest)
    with sqlite3.connect(tmp_path / "s.db") as db:
        rows = db.execute("SELECT source, packet_id, digest, n FROM recent_messages").fetchall()
    db.close()
    assert {(s, p): (bytes(d), n) for s, p, d, n in rows} == expected


def as_schema_2(db: sqlite3.Connection) -> None:
    """Make a spool's dead_letter what schema 2 had (no series, ts, superseded_by), keeping its rows."""
    columns = "id, priority, enqueued_ms, nbytes, line, reason, status, failed_at_ms"
    db.execute("""
        CREATE TABLE dead_letter_2 (
            id           INTEGER PRIMARY KEY,  -- the row's id in spool, kept when it is requeued
            priority     INTEGER NOT NULL,
            enqueued_ms  INTEGER NOT NULL,
            nbytes       INTEGER NOT NULL,
            line         TEXT    NOT NULL,
            reason       TEXT    NOT NULL,     -- the store's own words
            status       INTEGER,              -- HTTP status, when the store gave one
            failed_at_ms INTEGER NOT NULL
        )""")
    db.execute(f"INSERT INTO dead_letter_2 ({columns}) SELECT {columns} FROM dead_letter")
    db.execute("DROP TABLE dead_letter")  # and its indexes
    db.execute("ALTER TABLE dead_letter_2 RENAME TO dead_letter")
    db.execute("PRAGMA user_version = 2")


def test_a_schema_1_spool_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path) as spool:
        spool.append([(line_of("old", 30), ROLLUP)])
        spool.state_set("plant", "s0")
    with sqlite3.connect(path) as db:  # what schema 1 had: no journal, no recent_messages
        as_schema_2(db)
        db.execute("DROP TABLE journal")
        db.execute("DROP TABLE recent_messages")
        db.execute("PRAGMA user_version = 1")
    db.close()
    with Spool(path) as spool:
        assert spool.stats().depth == 1 and spool.state_get("plant") == "s0"
        spool.append([], journal=[("plant", "e1")], messages=[("plant", 1, b"d" * 16)])
        assert spool.journal("plant") == ["e1"] and spool.committed_message("plant", 1, b"d" * 16)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2  # the format, which the fmc before reads
    db.close()


def test_a_schema_2_spool_keeps_its_dead_letters_and_its_rollups_can_be_superseded(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path) as spool:
        spool.append([(rollup(100.0), ROLLUP), (rollup(1.0, ts=7), ROLLUP), ("signal v=1 7", RAW)])
        batch = spool.read_batch(10)
        spool.complete(batch, [(0, "refused", 400), (1, "refused", 400), (2, "refused", 400)], now_ms=5)
        spool.append([(rollup(240.0), ROLLUP)])  # the day's later version, still queued
    with sqlite3.connect(path) as db:
        as_schema_2(db)
    db.close()
    with Spool(path) as spool:
        dead = spool.dead_letters()
        assert sorted((d.id, d.line, d.reason, d.failed_at_ms, d.superseded_by) for d in dead) == [
            (batch.ids[0], rollup(100.0), "refused", 5, None),
            (batch.ids[1], rollup(1.0, ts=7), "refused", 5, None),
            (batch.ids[2], "signal v=1 7", "refused", 5, None),
        ]
        assert spool.requeue_dead_letters() == 2  # the old version of the queued day stays
        assert spool.read_batch(10).lines == [rollup(1.0, ts=7), "signal v=1 7", rollup(240.0)]
        assert [d.id for d in spool.dead_letters()] == [batch.ids[0]]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2  # the format, which the fmc before reads
    db.close()


def _format(path: Path) -> tuple[int, int, set[str]]:
    """(application_id, user_version, dead_letter's columns) of a spool file."""
    with sqlite3.connect(path) as db:
        header = db.execute("SELECT * FROM pragma_application_id, pragma_user_version").fetchone()
        columns = {row[1] for row in db.execute("PRAGMA table_info(dead_letter)")}
    db.close()
    return (*header, columns)


def test_dead_letter_keys_keep_the_format_the_fmc_before_them_reads(tmp_path: Path) -> None:
    """series, ts and superseded_by are additive: a spool with them stays format 2, which the fmc before
    them reads, so an upgrade can be taken back (docs/deploy.md). A spool of format 3, as fmc wrote it for
    a while for these columns, is format 2 again once opened."""
    keys = {"series", "ts", "superseded_by"}
    new = tmp_path / "new.db"
    Spool(new).close()
    assert _format(new) == (0x666D6353, 2, _format(new)[2]) and keys <= _format(new)[2]
    older = tmp_path / "older.db"
    with Spool(older) as spool:
        spool.append([(rollup(100.0), ROLLUP)])
        spool.complete(spool.read_batch(10), [(0, "refused", 400)], now_ms=5)
    with sqlite3.connect(older) as db:
        as_schema_2(db)
    db.close()
    assert _format(older)[1:] == (2, _format(older)[2]) and not keys & _format(older)[2]
    with Spool(older) as spool:  # the columns are added, the format stays
        [dead] = spool.dead_letters()
    assert _format(older)[1] == 2 and keys <= _format(older)[2]
    with sqlite3.connect(older) as db:
        assert db.execute("SELECT series, ts FROM dead_letter").fetchone() == series_and_time(rollup(100.0))
        db.execute("PRAGMA user_version = 3")
    db.close()
    with Spool(older) as spool:
        assert [d.id for d in spool.dead_letters()] == [dead.id]
    assert _format(older)[1] == 2


# the commit before dead_letter's series, ts and superseded_by: its fmc reads format 2 and knows none of them
BEFORE_DEAD_LETTER_KEYS = "e88a4f6^"
_OLDER_PROBE = """
import json, sys
import fmc
assert fmc.__file__.startswith(sys.argv[2]), fmc.__file__
from fmc.agent.spool import Spool
spool = Spool(sys.argv[1])
if sys.argv[3] == "use":
    batch = spool.read_batch(10)
    spool.complete(batch)  # delivered
    spool.append([(sys.argv[4], 2)])  # a rollup the store then refuses
    spool.complete(spool.read_batch(10), [(0, "refused", 400)], now_ms=9)
    print(json.dumps({"sent": batch.lines, "dead_letters": spool.stats().dead_letters}))
else:
    print(json.dumps({"requeued": spool.requeue_dead_letters(), "queued": spool.read_batch(10).lines}))
spool.close()
"""


def test_the_fmc_before_the_dead_letter_keys_uses_and_requeues_a_spool_this_one_used(tmp_path: Path) -> None:
    archive = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent.parent), "archive", "--format=tar",
                              BEFORE_DEAD_LETTER_KEYS, "fmc"], capture_output=True, timeout=60)
    if archive.returncode != 0:
        pytest.skip(f"no git history here: {archive.stderr.decode(errors='replace').strip()[-200:]}")
    older = tmp_path / "older"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(older, filter="data")

    def the_older_fmc(*args: str) -> dict[str, object]:
        env = {**os.environ, "PYTHONPATH": str(older)}
        result = subprocess.run([sys.executable, "-c", _OLDER_PROBE, str(path), str(older), *args],
                                capture_output=True, text=True, env=env, timeout=60, cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    path = tmp_path / "spool.db"
    with Spool(path) as spool:  # this fmc ran, and was stopped with a point waiting
        spool.append([(rollup(100.0), ROLLUP)])
        spool.complete(spool.read_batch(10), [(0, "refused", 400)], now_ms=5)
        spool.append([(rollup(240.0), ROLLUP)])
        spool.complete(spool.read_batch(10), now_ms=6)  # the day's later version: the dead one is superseded
        spool.append([("signal v=1 7", RAW)])
    # the upgrade taken back: the older fmc sends what waits and dead-letters a rollup of its own
    assert the_older_fmc("use", rollup(1.0, ts=7)) == {"sent": ["signal v=1 7"], "dead_letters": 2}
    with Spool(path) as spool:  # upgraded again: the older fmc's rollup dead letter gets its key
        assert spool.stats().superseded_dead_letters == 1
        with sqlite3.connect(path) as db:
            keys = db.execute("SELECT line, series, ts FROM dead_letter WHERE superseded_by IS NULL").fetchall()
        db.close()
        assert keys == [(rollup(1.0, ts=7), *series_and_time(rollup(1.0, ts=7)))]
    # and taken back again: the older fmc requeues as it always did, the superseded dead letter too (it
    # does not know the mark: docs/deploy.md says to delete those first)
    assert the_older_fmc("requeue") == {"requeued": 2, "queued": [rollup(100.0), rollup(1.0, ts=7)]}


# --- drop policy -------------------------------------------------------------------------------


def test_drop_policy_raw_then_event_oldest_first_never_rollups(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path, max_bytes=1000) as spool:  # drops down to 900
        spool.append([(line_of(f"raw{i}", 100), RAW) for i in range(4)])
        spool.append([(line_of(f"event{i}", 100), EVENT) for i in range(4)])
        assert spool.append([(line_of(f"rollup{i}", 100), ROLLUP) for i in range(2)]) == {}  # exactly 1000
        # 1100 bytes: the two oldest raw points go
        assert spool.append([(line_of("raw4", 100), RAW)]) == {"RAW": 2}
        assert [x.split()[0] for x in all_lines(spool)] == [
            "raw2", "raw3", "event0", "event1", "event2", "event3", "rollup0", "rollup1", "raw4",
        ]  # fmt: skip
        # 900 + 400 of events: the 3 raw left go first (newest raw4 included), then the oldest event
        assert spool.append([(line_of(f"event{i}", 100), EVENT) for i in range(4, 8)]) == {"RAW": 3, "EVENT": 1}
        assert [x.split()[0] for x in all_lines(spool)] == [
            "event1", "event2", "event3", "rollup0", "rollup1", "event4", "event5", "event6", "event7",
        ]  # fmt: skip
        # rollups beyond the bound: every event goes, no rollup does, and the spool stays over
        drops = spool.append([(line_of(f"rollup{i}", 100), ROLLUP) for i in range(2, 12)])
        assert drops == {"EVENT": 7}
        stats = spool.stats()
        assert (stats.depth, stats.bytes, stats.max_bytes) == (12, 1200, 1000)
        assert stats.dropped == {"RAW": 5, "EVENT": 8}
        # a raw point arriving now is dropped at once
        assert spool.append([(line_of("late", 100), RAW)]) == {"RAW": 1}
        assert {p for _, p, _ in all_rows(path)} == {int(ROLLUP)}
    with Spool(path, max_bytes=1000) as spool:  # drop counters are persisted
        assert spool.stats().dropped == {"RAW": 6, "EVENT": 8}
        assert spool.stats().depth == 12


def test_drops_leave_the_batch_being_sent_alone(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_bytes=1000) as spool:
        spool.append([(line_of(f"old{i}", 100), RAW) for i in range(5)])
        sending = spool.read_batch(2)
        assert spool.append([(line_of(f"new{i}", 100), RAW) for i in range(8)]) == {"RAW": 4}
        # old0, old1 are in flight: the oldest others (old2..4, new0) went instead
        assert [x.split()[0] for x in all_lines(spool)] == ["old0", "old1", *(f"new{i}" for i in range(1, 8))]
        spool.complete(sending)
        assert spool.stats().depth == 7
        # once completed, the guard is lifted: the oldest rows are droppable again
        assert spool.append([(line_of(f"more{i}", 100), RAW) for i in range(4)]) == {"RAW": 2}
        expected = [*(f"new{i}" for i in range(3, 8)), *(f"more{i}" for i in range(4))]
        assert [x.split()[0] for x in all_lines(spool)] == expected


def all_lines(spool: Spool) -> list[str]:
    """Every queued line, via a fresh Spool-independent read (does not touch the in-flight mark)."""
    return [line for _, _, line in all_rows(spool.path)]


class SpoolModel(RuleBasedStateMachine):
    """Random appends (random priorities and sizes, some non-ASCII), reads, completes with refused
    lines, requeues and reopens, against a model of where every point must be."""

    MAX_BYTES = 3000

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="spool-model-"))
        self.path = self.dir / "s.db"
        self.spool = Spool(self.path, max_bytes=self.MAX_BYTES, synchronous="normal")
        self.next_seq = 0
        self.priority_of: dict[int, Priority] = {}
        self.completed: set[int] = set()
        self.batch: SpoolBatch | None = None

    @initialize()
    def start(self) -> None:
        assert self.spool.stats().depth == 0

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def seq_of(line: str) -> int:
        match = re.match(r"p\d,seq=(\d+) ", line)
        assert match, line
        return int(match.group(1))

    def queued(self) -> dict[int, int]:
        return {self.seq_of(line): row_id for row_id, _, line in all_rows(self.path)}

    def dead(self) -> set[int]:
        return {self.seq_of(d.line) for d in self.spool.dead_letters(limit=1_000_000)}

    def inflight_max_id(self) -> int:
        return self.batch.ids[-1] if self.batch and self.batch.ids else 0

    @rule(points=st.lists(st.tuples(st.sampled_from(list(Priority)), st.integers(20, 400), st.booleans()), max_size=25))
    def append(self, points: list[tuple[Priority, int, bool]]) -> None:
        items = []
        for priority, size, wide in points:
            seq = self.next_seq
            self.next_seq += 1
            self.priority_of[seq] = priority
            head = f"p{int(priority)},seq={seq} v="
            items.append((head + ("é" if wide else "e") * (size - len(head)), priority))
        before_ids = self.queued()
        before = self.spool.stats().dropped
        drops = self.spool.append(items)
        after = self.spool.stats()
        # what append reports is what it counted
        assert {k: after.dropped[k] - before[k] for k in before if after.dropped[k] != before[k]} == drops
        assert "ROLLUP" not in drops
        now = self.queued()
        new_seqs = range(self.next_seq - len(items), self.next_seq)
        dropped = [s for s in [*before_ids, *new_seqs] if s not in now]
        assert Counter(self.priority_of[s].name for s in dropped) == Counter(drops)
        # oldest first within a priority: all dropped are older than all left (ids follow seqs)
        guard = self.inflight_max_id()
        for priority in (RAW, EVENT):
            left = [s for s, i in now.items() if self.priority_of[s] is priority and i > guard]
            lost = [s for s in dropped if self.priority_of[s] is priority]
            if left and lost:
                assert max(lost) < min(left)
        if drops.get("EVENT"):  # events go only when no droppable raw point is left
            assert not [s for s, i in now.items() if self.priority_of[s] is RAW and i > guard]
        # over the bound only with nothing droppable left (the bound is kept by appending points;
        # an append of nothing, e.g. right after a restart freed the in-flight rows, changes nothing)
        if points and after.bytes > self.MAX_BYTES:
            assert all(self.priority_of[s] is ROLLUP or i <= guard for s, i in now.items())

    @precondition(lambda self: self.batch is None)
    @rule(max_points=st.integers(1, 30), max_bytes=st.none() | st.integers(1, 2000))
    def read(self, max_points: int, max_bytes: int | None) -> None:
        self.batch = self.spool.read_batch(max_points, max_bytes)
        queued = sorted(self.queued().values())
        assert self.batch.ids == queued[: len(self.batch.ids)]  # the oldest, in order
        if queued:
            assert self.batch.ids

    @precondition(lambda self: self.batch is not None)
    @rule(refuse=st.lists(st.booleans(), max_size=30))
    def complete(self, refuse: list[bool]) -> None:
        assert self.batch is not None
        refused = [(i, "refused", 400) for i, r in enumerate(refuse[: len(self.batch.ids)]) if r]
        self.spool.complete(self.batch, refused)
        refused_indexes = {i for i, _, _ in refused}
        for i, line in enumerate(self.batch.lines):
            if i not in refused_indexes:
                self.completed.add(self.seq_of(line))
        self.batch = None

    @rule()
    def requeue(self) -> None:
        dead = len(self.dead())
        assert self.spool.requeue_dead_letters() == dead

    @rule()
    def reopen(self) -> None:
        self.spool.close()
        self.spool = Spool(self.path, max_bytes=self.MAX_BYTES, synchronous="normal")
        self.batch = None  # the process that was sending it is gone

    @invariant()
    def every_point_is_accounted_for(self) -> None:
        queued, dead, completed = set(self.queued()), self.dead(), self.completed
        assert not (queued & dead) and not (queued & completed) and not (dead & completed)
        lost = set(self.priority_of) - queued - dead - completed
        stats = self.spool.stats()
        assert not [s for s in lost if self.priority_of[s] is ROLLUP]  # rollups are never lost
        by_priority = Counter(self.priority_of[s].name for s in lost)
        assert stats.dropped == {"RAW": by_priority["RAW"], "EVENT": by_priority["EVENT"]}
        lines = [line for _, _, line in all_rows(self.path)]
        assert (stats.depth, stats.bytes, stats.dead_letters) == (len(lines), utf8_len(lines), len(dead))


TestSpoolModel = SpoolModel.TestCase
TestSpoolModel.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.sampled_from([0, 1, None]),  # a day to write a version of, or none
                                st.sampled_from(["drain", "read", "complete", "requeue"]),
                                st.lists(st.booleans(), max_size=6)), max_size=20))
# day 0's first version refused, then its second delivered (before the requeue), or on its way during it
@example(steps=[(0, "drain", [True]), (0, "drain", []), (None, "requeue", [])])
@example(steps=[(0, "drain", [True]), (0, "read", []), (None, "requeue", []), (None, "complete", [])])
def test_the_store_ends_with_each_day_s_newest_rollup_whatever_was_refused_and_requeued(
    steps: list[tuple[int | None, str, list[bool]]],
) -> None:
    """Days written again and again, some versions refused, requeues at any moment (a batch on its way
    too): once everything left is requeued and delivered, the store (the last write of a series and
    time wins) has each day's newest version, and every line was delivered or superseded by a later one."""
    with tempfile.TemporaryDirectory() as tmp, Spool(Path(tmp) / "s.db") as spool:
        version = 0
        newest: dict[int, float] = {}  # day -> amount of its newest version
        store: dict[tuple[str, int], str] = {}
        delivered: set[str] = set()
        batch: SpoolBatch | None = None

        def deliver(b: SpoolBatch, refuse: list[bool]) -> None:
            refused = [i for i in range(len(b.ids)) if i < len(refuse) and refuse[i]]
            for i, line in enumerate(b.lines):
                if i not in refused:
                    store[series_and_time(line)] = line
                    delivered.add(line)
            spool.complete(b, [(i, "refused", 400) for i in refused])

        for day, action, refuse in steps:  # a step writes a version of a day (or none), then does action
            if day is not None:
                version += 1
                newest[day] = float(version)
                spool.append([(rollup(float(version), ts=day), ROLLUP), (f"signal v={version} {version}", RAW)])
            if action == "drain" and batch is None:
                deliver(spool.read_batch(len(refuse) + 1), refuse)
            elif action == "read" and batch is None:
                batch = spool.read_batch(len(refuse) + 1)
            elif action == "complete" and batch is not None:
                deliver(batch, refuse)
                batch = None
            elif action == "requeue":
                spool.requeue_dead_letters()
        if batch is not None:
            deliver(batch, [])
        spool.requeue_dead_letters()
        while (rest := spool.read_batch(100)).ids:
            deliver(rest, [])

        assert {ts: store[series_and_time(rollup(0.0, ts=ts))] for ts in newest} == {
            ts: rollup(amount, ts=ts) for ts, amount in newest.items()}
        superseded = {d.line for d in spool.dead_letters(limit=1000)}
        assert all(d.superseded_by is not None for d in spool.dead_letters(limit=1000))
        assert len(delivered) + len(superseded) == 2 * version and not delivered & superseded


# --- threads -----------------------------------------------------------------------------------


def run_writer_and_drain(
    spool: Spool, batches: list[list[tuple[str, Priority]]], send_s: float = 0.0
) -> list[SpoolBatch]:
    """Append ``batches`` from one thread while a drain loop reads and completes from a pool of
    threads (like asyncio.to_thread), taking ``send_s`` to "send" each batch; returns the
    completed batches in completion order."""
    writer_done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for batch in batches:
                spool.append(batch)
                time.sleep(0.001)  # paced like real traffic, so the drain runs between appends
        except BaseException as e:
            errors.append(e)
        finally:
            writer_done.set()

    writer = threading.Thread(target=write)
    writer.start()
    completed: list[SpoolBatch] = []
    completed_while_writing = 0
    rng = random.Random(7)
    with ThreadPoolExecutor(max_workers=4) as pool:
        while True:
            finished = writer_done.is_set()  # read before the batch: an empty read after it means done
            batch = pool.submit(spool.read_batch, rng.randint(1, 100)).result()
            if not batch.ids:
                if finished:
                    break
                time.sleep(0.001)
                continue
            time.sleep(send_s)  # the store's round trip, while the writer keeps appending
            pool.submit(spool.complete, batch).result()
            completed.append(batch)
            completed_while_writing += not finished
    writer.join()
    assert not errors
    # the two sides really did run at the same time
    assert completed_while_writing >= len(batches) // 4
    return completed


def test_concurrent_append_and_drain_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", synchronous="normal")
    n_batches, size = 150, 40
    batches = [[(f"m seq={b * size + i}i 1", RAW) for i in range(size)] for b in range(n_batches)]
    completed = run_writer_and_drain(spool, batches)
    ids = [i for b in completed for i in b.ids]
    lines = [x for b in completed for x in b.lines]
    assert lines == [x for batch in batches for x, _ in batch]  # all of them, once, in order
    assert ids == sorted(set(ids))
    stats = spool.stats()
    assert (stats.depth, stats.bytes) == (0, 0)
    spool.close()


def test_concurrent_append_and_drain_with_drops_conserve_points(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool(path, max_bytes=20_000, synchronous="normal")
    n_batches, size = 150, 50
    batches = [
        [(line_of(f"seq={b * size + i}", 80), ROLLUP if i % 25 == 0 else RAW) for i in range(size)]
        for b in range(n_batches)
    ]
    completed = run_writer_and_drain(spool, batches, send_s=0.004)  # slower than the writer
    sent = [x.split()[0] for b in completed for x in b.lines]
    assert len(sent) == len(set(sent))
    assert sent == sorted(sent, key=lambda tag: int(tag.removeprefix("seq=")))  # oldest first
    stats = spool.stats()
    assert stats.depth == 0 and stats.dropped["RAW"] > 0
    # a point sent was never also counted as dropped: sent + dropped is exactly what was appended
    assert len(sent) + stats.dropped["RAW"] + stats.dropped["EVENT"] == n_batches * size
    rollups = {f"seq={b * size + i}" for b in range(n_batches) for i in range(0, size, 25)}
    assert rollups <= set(sent)
    spool.close()


# --- SIGKILL -----------------------------------------------------------------------------------


def kill_child_while_writing(path: Path, start: int, batch: int, synchronous: str, max_bytes: int) -> list[int]:
    """Run spool_child.py, SIGKILL it after it reported a few commits; return what it reported."""
    args = [sys.executable, str(CHILD), str(path), "--start", str(start), "--batch", str(batch)]
    args += ["--synchronous", synchronous, "--max-bytes", str(max_bytes)]
    err_path = path.with_name("child.err")
    with err_path.open("w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
    reported: list[int] = []
    try:
        assert proc.stdout is not None
        wanted = random.randint(3, 15)
        while len(reported) < wanted:
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=10)
                pytest.fail(f"spool_child exited early ({proc.returncode}): {err_path.read_text()}")
            reported.append(int(line))
        time.sleep(random.uniform(0, 0.02))  # land anywhere in the next appends
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # through the same reader: readline() may already hold the next lines in its buffer
        reported += [int(x) for x in proc.stdout.read().split()]
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return reported


@pytest.mark.parametrize("synchronous, rounds", [("full", 3), ("normal", 2)])
def test_sigkill_mid_write_loses_no_committed_batch(tmp_path: Path, synchronous: str, rounds: int) -> None:
    path, batch = tmp_path / "s.db", 150
    committed = 0
    for _ in range(rounds):
        reported = kill_child_while_writing(path, committed + 1, batch, synchronous, 1 << 30)
        assert reported == list(range(committed + batch, reported[-1] + 1, batch))

        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()
        with Spool(path, synchronous=synchronous) as spool:
            found = spool.read_batch(10**9)
            stats = spool.stats()
        # everything reported is there, intact and in order; at most one more batch committed
        # before its number was printed; never a part of a batch
        n = len(found.lines)
        assert n - reported[-1] in (0, batch)
        assert found.lines == [make_line(s) for s in range(1, n + 1)]
        assert found.ids == sorted(set(found.ids))
        assert (stats.depth, stats.bytes) == (n, utf8_len(found.lines))
        committed = n


def test_sigkill_while_dropping_keeps_counters_and_rollups(tmp_path: Path) -> None:
    path, batch = tmp_path / "s.db", 100
    committed = 0
    for _ in range(2):
        reported = kill_child_while_writing(path, committed + 1, batch, "full", 30_000)
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()
        with Spool(path, max_bytes=30_000) as spool:
            found = spool.read_batch(10**9)
            stats = spool.stats()
        seqs = [int(re.search(r"seq=(\d+)i", x).group(1)) for x in found.lines]  # type: ignore[union-attr]
        committed = max(seqs)
        assert committed - reported[-1] in (0, batch)
        assert found.lines == [make_line(s) for s in seqs]
        assert seqs == sorted(seqs)
        assert [s for s in range(10, committed + 1, 10) if s not in seqs] == []  # every rollup
        # the persisted totals agree with the rows, and every missing point was counted
        assert (stats.depth, stats.bytes) == (len(seqs), utf8_len(found.lines))
        assert stats.dropped["RAW"] + stats.dropped["EVENT"] == committed - len(seqs)
        missing = Counter(priority_of(s).name for s in set(range(1, committed + 1)) - set(seqs))
        assert stats.dropped == {"RAW": missing["RAW"], "EVENT": missing["EVENT"]}


# --- bad files and settings --------------------------------------------------------------------


def test_garbage_file_raises_spool_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not an sqlite database at all\n" * 200)
    with pytest.raises(SpoolError) as info:
        Spool(path)
    assert str(path) in str(info.value)
    assert "damaged" in str(info.value)
    assert info.value.path == path


def test_damaged_pages_raise_spool_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        spool.append([(line_of(f"l{i}", 90), RAW) for i in range(5000)])
    data = bytearray(path.read_bytes())
    rng = random.Random(1)
    for page in (3, 20, 60):
        data[page * 4096 : (page + 1) * 4096] = rng.randbytes(4096)
    path.write_bytes(bytes(data))
    # opening reads little; using the spool hits the damage
    with pytest.raises(SpoolError) as info, Spool(path) as spool:
        spool.stats()
        spool.read_batch(10**6)
    assert str(path) in str(info.value)


def test_other_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE readings (x)")
    conn.commit()
    conn.close()
    with pytest.raises(SpoolError, match="not an fmc spool") as info:
        Spool(path)
    assert str(path) in str(info.value)
    conn = sqlite3.connect(path)  # and nothing was added to it
    assert conn.execute("SELECT name FROM sqlite_schema").fetchall() == [("readings",)]
    conn.close()


def test_directory_as_path_raises_spool_error(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match=re.escape(str(tmp_path))):
        Spool(tmp_path)


def test_check_spool_file_says_what_spool_would_refuse_without_changing_it(tmp_path: Path) -> None:
    """``fmc check`` asks it: a folder, a file that is not a spool, another SQLite database or a
    newer fmc's spool fail as Spool() would; a missing, empty or real spool passes."""
    assert check_spool_file(tmp_path / "new.db") is None and not (tmp_path / "new.db").exists()
    (tmp_path / "empty.db").touch()
    assert check_spool_file(tmp_path / "empty.db") is None
    with Spool(tmp_path / "spool.db") as spool:
        spool.append([("m v=1i 1", RAW)])
        assert check_spool_file(tmp_path / "spool.db") is None  # while the agent has it open
    assert check_spool_file(tmp_path) == ("it is a folder", f"name a file, e.g. {tmp_path / 'spool.db'}")
    notes = tmp_path / "notes.txt"
    notes.write_text("these are notes, not a spool\n", encoding="utf-8")
    refused = check_spool_file(notes)
    assert refused is not None and "not an fmc spool" in refused[0] and "move this one aside" in refused[1]
    assert notes.read_text(encoding="utf-8") == "these are notes, not a spool\n"
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE readings (x)")
    conn.close()
    assert check_spool_file(other) == (
        "this file is not an fmc spool", "name another file, or move this one aside if it is not needed")
    with sqlite3.connect(tmp_path / "spool.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    refused = check_spool_file(tmp_path / "spool.db")
    assert refused is not None and "newer fmc (spool format 99" in refused[0]
    for path in (tmp_path, notes, other, tmp_path / "spool.db"):  # each is what Spool refuses
        with pytest.raises(SpoolError):
            Spool(path)


def test_settings_are_applied_and_checked(tmp_path: Path) -> None:
    for synchronous, level in (("full", 2), ("normal", 1), ("NORMAL", 1)):
        with Spool(tmp_path / f"{synchronous}.db", synchronous=synchronous) as spool:
            assert spool._writer.execute("PRAGMA synchronous").fetchone()[0] == level
            assert spool._reader.execute("PRAGMA synchronous").fetchone()[0] == level
            assert spool._writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ValueError):
        Spool(tmp_path / "x.db", synchronous="off")
    with pytest.raises(ValueError):
        Spool(tmp_path / "x.db", max_bytes=0)
    spool = Spool(tmp_path / "closed.db")
    spool.close()
    spool.close()  # idempotent
    with pytest.raises(SpoolError, match="after close"):
        spool.append([("m v=1i 1", RAW)])
