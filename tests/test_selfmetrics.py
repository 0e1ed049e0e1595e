"""The agent's ``agent`` self-metrics point: fields and types as documented, bounded tags, every
rejection reason of the code a field, and the point reaching the store from a running agent."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path

import pytest

from fmc.agent import selfmetrics
from fmc.agent.metrics import AgentMetrics
from fmc.agent.runtime import Agent
from fmc.agent.selfmetrics import FIELDS, AgentCounters, agent_point, counters_from, host_tag, rejected_fields
from fmc.agent.spool import SpoolStats
from fmc.cli.plugins import AgentConfig
from fmc.core.lineprotocol import encode, parse
from fmc.core.points import Priority
from fmc.core.rejections import REJECTION_REASONS
from fmc.stores.embedded.store import EmbeddedStore

ROOT = Path(__file__).resolve().parent.parent
NOW_NS = 1_764_000_000_123_456_789


def stats(depth: int = 0, oldest_ms: int | None = None) -> SpoolStats:
    return SpoolStats(depth=depth, bytes=depth * 100, oldest_enqueued_ms=oldest_ms, dropped={"RAW": 3},
                      dead_letters=2, rejected_total=7, max_bytes=1 << 20)


def test_the_point_has_every_documented_field_with_its_type_and_only_three_tags():
    counters = AgentCounters(received=10, accepted=9, written=8, dead_lettered=1, dropped=4, sink_errors=2,
                             rejected={"payload_not_json": 3, "value_not_finite": 1})
    point = agent_point("e1", "gw-01", NOW_NS, up=True, uptime_s=12.5, spool=stats(5, NOW_NS // 10**6 - 90_000),
                        counters=counters, sources=[True, False, True], gateway="hall-b")
    assert point.measurement == "agent"
    assert point.tags == {"enterprise": "e1", "gateway": "hall-b", "host": "gw-01"}
    assert point.priority is Priority.EVENT
    assert point.ts_ns == NOW_NS
    assert set(point.fields) == set(FIELDS)
    for name, value in point.fields.items():
        assert type(value) is FIELDS[name], name  # bool is not int here: type(), not isinstance()
    f = point.fields
    assert (f["up"], f["uptime_s"], f["spool_depth"], f["spool_bytes"], f["dead_letters"]) == (1, 12.5, 5, 500, 2)
    assert f["oldest_unsent_s"] == pytest.approx(90.0, abs=1e-3)
    assert (f["received"], f["accepted"], f["written"], f["dead_lettered"], f["dropped"], f["sink_errors"]) == (
        10, 9, 8, 1, 4, 2)
    assert (f["sources"], f["sources_connected"]) == (3, 2)
    assert (f["rejected"], f["rejected_payload_not_json"], f["rejected_value_not_finite"], f["rejected_other"]) == (
        4, 3, 1, 0)
    # line protocol carries it faithfully: integers stay integers (no field type conflict later)
    line = encode(point)
    assert "up=1i" in line and "uptime_s=12.5" in line
    assert parse(line).fields == point.fields


def test_a_stopped_agent_and_an_empty_spool():
    point = agent_point("e1", "gw", NOW_NS, up=False, uptime_s=-1.0, spool=stats(), counters=AgentCounters())
    assert point.fields["up"] == 0
    assert point.fields["uptime_s"] == 0.0 and point.fields["oldest_unsent_s"] == 0.0
    assert type(point.fields["oldest_unsent_s"]) is float
    assert point.fields["sources"] == 0 and point.fields["rejected"] == 0


def test_a_clock_set_back_never_gives_a_negative_age():
    point = agent_point("e1", "gw", NOW_NS, up=True, uptime_s=1.0, spool=stats(1, NOW_NS // 10**6 + 3_600_000),
                        counters=AgentCounters())
    assert point.fields["oldest_unsent_s"] == 0.0


def test_an_unknown_reason_is_counted_as_other_and_in_the_total():
    fields = rejected_fields({"value_too_long": 2, "something_new": 5, "also\nodd": 1})
    assert fields["rejected"] == 8
    assert fields["rejected_value_too_long"] == 2
    assert fields["rejected_other"] == 6
    assert set(fields) == {"rejected", "rejected_other", *(f"rejected_{r}" for r in REJECTION_REASONS)}


@pytest.mark.parametrize("hostname", [
    "gw-01.plant.local", "", "   ", "a\nb", "tab\there", "comma,eq=space x", "back\\slash", 'quote"\'',
    "网关一号", "x" * 500, "DROP DATABASE fmc;", "\x00\x1f\x7f", "ünï", "/^.*$/",
])
def test_the_host_tag_is_bounded_and_always_encodable(hostname):
    tag = host_tag(hostname)
    assert 1 <= len(tag) <= selfmetrics.HOST_MAX_CHARS
    assert re.fullmatch(r"[A-Za-z0-9_.\-]+", tag)
    point = agent_point("e1", hostname, NOW_NS, up=True, uptime_s=1.0, spool=stats(), counters=AgentCounters())
    assert parse(encode(point)).tags["host"] == tag
    if hostname.strip() == "":
        assert tag == "unknown"


def test_an_ordinary_host_name_is_kept_as_is():
    assert host_tag("gw-01.plant.local") == "gw-01.plant.local"
    assert host_tag(socket.gethostname()) == re.sub(r"[^A-Za-z0-9_.\-]", "_", socket.gethostname())[:64] or "unknown"


def test_counters_are_summed_over_their_labels():
    metrics = AgentMetrics()
    metrics.received.labels("plant").inc(5)
    metrics.received.labels("meters").inc(2)
    metrics.accepted.labels("plant").inc(4)
    metrics.written.labels("influxdb").inc(3)
    metrics.dead_lettered.labels("influxdb").inc(1)
    metrics.dropped.labels("RAW").inc(6)
    metrics.sink_errors.labels("influxdb", "unreachable").inc(2)
    metrics.sink_errors.labels("influxdb", "http_503").inc(1)
    metrics.rejected.labels("plant", "payload_not_json").inc(2)
    metrics.rejected.labels("meters", "payload_not_json").inc(1)
    metrics.rejected.labels("meters", "series_limit").inc(4)
    metrics.spool_depth.set(99)  # a gauge: not a counter field
    c = counters_from(metrics)
    assert (c.received, c.accepted, c.written, c.dead_lettered, c.dropped, c.sink_errors) == (7, 4, 3, 1, 6, 3)
    assert c.rejected == {"payload_not_json": 3, "series_limit": 4}
    assert counters_from(AgentMetrics()) == AgentCounters()


def test_own_points_are_the_encoded_agent_points_not_refused():
    lines = [
        'agent,enterprise=e1,host=gw up=1i 1',
        'signal,enterprise=e1,equipment=agent,signal=agent value=1 1',
        'agents,enterprise=e1 x=1 1',
        'agent,enterprise=e2,host=gw up=0i 2',
    ]
    assert selfmetrics.own_points(lines) == 2
    assert selfmetrics.own_points(lines, {3}) == 1
    assert selfmetrics.own_points([]) == 0
    point = agent_point("e1", "gw", NOW_NS, up=True, uptime_s=1.0, spool=stats(), counters=AgentCounters())
    assert selfmetrics.own_points([encode(point)]) == 1


def test_the_agent_source_is_not_counted_as_data():
    metrics = AgentMetrics()
    metrics.accepted.labels("plant").inc(4)
    metrics.accepted.labels(selfmetrics.SOURCE).inc(9)
    metrics.rejected.labels(selfmetrics.SOURCE, "series_limit").inc(1)
    c = counters_from(metrics)
    assert c.accepted == 4 and c.rejected == {"series_limit": 1}  # a rejection is a rejection


def _reason_literals() -> set[str]:
    """Every reason code the code rejects with: Rejection("…"), LineProtocolError("…"), _reject("…")
    and the ingest's own ("series_limit")."""
    pattern = re.compile(r'(?:Rejection|LineProtocolError|_reject)\(\s*"([a-z0-9_]+)"')
    ingest_pattern = re.compile(r'rejected\.append\(\(sub\.source, "([a-z0-9_]+)"\)\)')
    found: set[str] = set()
    for folder in ("fmc",):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            found.update(pattern.findall(text))
            found.update(ingest_pattern.findall(text))
    return found


def test_every_rejection_reason_in_the_code_has_its_own_field():
    found = _reason_literals()
    assert len(found) >= 25  # the scan itself works
    missing = found - set(REJECTION_REASONS)
    assert not missing, f"add these reasons to fmc.agent.selfmetrics.REJECTION_REASONS: {sorted(missing)}"
    assert len(set(REJECTION_REASONS)) == len(REJECTION_REASONS)


def test_the_fields_are_documented_in_the_module_and_the_grafana_readme():
    doc = selfmetrics.__doc__ or ""
    readme = (ROOT / "grafana" / "README.md").read_text(encoding="utf-8")
    for name in FIELDS:
        documented = name if not name.startswith("rejected_") or name == "rejected_other" else "rejected_<reason>"
        assert f"``{documented}``" in doc, name
        assert f"`{documented}`" in readme, name


def agent_config(tmp_path: Path) -> AgentConfig:
    return AgentConfig.model_validate({
        "enterprise": {"id": "e-1.x", "name": "n", "region": "330602", "industry": "17"},
        "sink": {"type": "embedded", "path": str(tmp_path / "store.db")},
        "spool": {"path": str(tmp_path / "spool.db")},
        "metrics": {"enabled": False},
    })


async def test_a_running_agent_writes_a_point_at_start_and_a_stopped_one_at_the_end(tmp_path):
    cfg = agent_config(tmp_path)
    agent = Agent(cfg, shutdown_flush_s=5.0)
    stop = asyncio.Event()
    started = time.time_ns()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(1.0)  # the start point is committed and sent (embedded sink: 0.5 s batch age)
    stop.set()
    await asyncio.wait_for(task, 20)
    store = EmbeddedStore(cfg.sink.path)
    try:
        points = store.points("agent")
    finally:
        store.close()
    assert [p.fields["up"] for p in points] == [1, 0]
    tags = {"enterprise": "e-1.x", "gateway": "main", "host": host_tag(socket.gethostname())}
    assert all(p.tags == tags for p in points)
    first, last = points
    assert started <= first.ts_ns < last.ts_ns <= time.time_ns()
    assert set(first.fields) == set(FIELDS)
    assert first.fields["sources"] == 0 and first.fields["dead_letters"] == 0
    assert 0.0 <= first.fields["uptime_s"] < last.fields["uptime_s"] < 20.0
    # no source, so no data: the agent points themselves are not counted as accepted or written data
    assert (last.fields["accepted"], last.fields["written"], last.fields["received"]) == (0, 0, 0)
    assert agent.metrics.value("fmc_points_accepted_total", {"source": "agent"}) == 2
    assert agent.metrics.value("fmc_points_written_total", {"sink": "embedded"}) == 0


def test_dead_letters_are_those_waiting_for_requeue_not_the_superseded_ones():
    """A dead-lettered rollup whose later version reached the store is kept for inspection but is
    never requeued: the dashboard's dead letters (lines waiting for someone to act) leave it out."""
    spool = SpoolStats(depth=0, bytes=0, oldest_enqueued_ms=None, dropped={}, dead_letters=3, rejected_total=3,
                       max_bytes=1 << 20, superseded_dead_letters=2)
    point = agent_point("e1", "gw-01", NOW_NS, up=True, uptime_s=1.0, spool=spool, counters=AgentCounters(),
                        sources=[], gateway="hall-b")
    assert point.fields["dead_letters"] == 1
