"""The drain loop on its own: batching by age, and a wall clock that was set back."""

from __future__ import annotations

import asyncio
import time

import pytest

from fmc.agent.runtime import Agent
from fmc.agent.spool import Spool
from fmc.cli.plugins import AgentConfig
from fmc.core.points import Priority
from fmc.stores.embedded.store import EmbeddedSink, EmbeddedStore
from tests.faultproxy import Close, FaultProxy, Forward


def make_config(tmp_path) -> AgentConfig:
    return AgentConfig.model_validate({
        "enterprise": {"id": "e1", "name": "n", "region": "330602", "industry": "17"},
        "sink": {"type": "embedded", "path": str(tmp_path / "store.db")},
        "spool": {"path": str(tmp_path / "spool.db")},
        "metrics": {"enabled": False},
    })


async def drain_for(agent: Agent, spool: Spool, seconds: float) -> None:
    sink = EmbeddedSink(agent.cfg.sink)
    draining = asyncio.Event()
    task = asyncio.create_task(agent._drain(spool, sink, draining))
    await asyncio.sleep(seconds)
    draining.set()
    await asyncio.wait_for(task, 5)
    await sink.aclose()


async def test_points_enqueued_in_the_future_are_sent_at_once(tmp_path):
    """The gateway's clock was set back an hour after these points were spooled."""
    cfg = make_config(tmp_path)
    agent = Agent(cfg)
    spool = Spool(cfg.spool.path)
    future_ms = int(time.time() * 1000) + 3_600_000
    spool.append([(f"signal,equipment=m1 value={i} {1_764_000_000_000_000_000 + i}", Priority.RAW)
                  for i in range(3)], now_ms=future_ms)
    await drain_for(agent, spool, 0.6)  # far less than the 0.5 s batch age + an hour
    assert spool.stats().depth == 0
    spool.close()
    store = EmbeddedStore(cfg.sink.path)
    assert store.count("signal") == 3
    store.close()
    assert agent.metrics.value("fmc_points_written_total", {"sink": "embedded"}) == 3


async def test_a_small_batch_waits_for_its_age_then_goes(tmp_path):
    cfg = make_config(tmp_path)
    agent = Agent(cfg)
    spool = Spool(cfg.spool.path)
    spool.append([("signal,equipment=m1 value=1 1764000000000000000", Priority.RAW)])
    await drain_for(agent, spool, 0.15)  # younger than the embedded sink's 0.5 s batch age
    assert spool.stats().depth == 1
    await drain_for(agent, spool, 0.8)
    assert spool.stats().depth == 0
    spool.close()


# --- a store that comes back -------------------------------------------------------------------------


async def test_after_an_outage_the_first_write_follows_the_store_s_return_within_a_second(
    tmp_path, influx_db, fault_proxy_for_drain
) -> None:
    """10 s without a store (no answer to anything: writes, /ping), then the store is back: with
    the default backoff (0.5 s doubling to 60 s) the next write attempt is about 5 s away (attempts
    at 0.5, 1.5, 3.5, 7.5, then 15.5 s); probing the store while backing off starts the drain
    within a second of its return."""
    server, db = influx_db
    proxy = fault_proxy_for_drain
    cfg = AgentConfig.model_validate({
        "enterprise": {"id": "e1", "name": "n", "region": "330602", "industry": "17"},
        "sink": {"type": "influxdb", "url": proxy.url, "database": db, "batch_max_age_s": 0.0, "timeout_s": 2.0},
        "spool": {"path": str(tmp_path / "spool.db")},
        "metrics": {"enabled": False},
    })
    agent = Agent(cfg)
    spool = Spool(cfg.spool.path)
    spool.append([(f"signal,equipment=m1 value={i} {1_764_000_000_000_000_000 + i}", Priority.RAW)
                  for i in range(100)])
    proxy.default = Close()  # down: the connection closes without an answer
    sink = cfg.sink_settings().open_sink()
    draining = asyncio.Event()
    task = asyncio.create_task(agent._drain(spool, sink, draining))
    try:
        await asyncio.sleep(10.0)
        assert spool.stats().depth == 100
        recovered = time.monotonic()
        proxy.default = Forward()
        deadline = time.monotonic() + 70
        while spool.stats().depth and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert spool.stats().depth == 0
    finally:
        draining.set()
        await asyncio.wait_for(task, 10)
        await sink.aclose()
        spool.close()
    writes = [r for r in proxy.requests if r.path == "/write"]
    first = min(r.at for r in writes if r.action == "forward")
    print(f"first write {first - recovered:.2f}s after the store came back; "
          f"{len(writes)} write attempt(s), {sum(r.path == '/ping' for r in proxy.requests)} ping(s)")
    assert first - recovered <= 1.5
    assert server.select(db, 'SELECT count("value") FROM "signal"')[0]["count"] == 100


def _drain_agent(tmp_path, url: str, db: str) -> tuple[Agent, Spool]:
    cfg = AgentConfig.model_validate({
        "enterprise": {"id": "e1", "name": "n", "region": "330602", "industry": "17"},
        # a first backoff of exactly 20 s (attempt 0 of full jitter is the minimum)
        "sink": {"type": "influxdb", "url": url, "database": db, "batch_max_age_s": 0.0, "timeout_s": 2.0,
                 "retry_min_s": 20.0, "retry_max_s": 60.0},
        "spool": {"path": str(tmp_path / "spool.db")},
        "metrics": {"enabled": False},
    })
    spool = Spool(cfg.spool.path)
    spool.append([(f"signal,equipment=m1 value={i} {1_764_000_000_000_000_000 + i}", Priority.RAW)
                  for i in range(10)])
    return Agent(cfg), spool


async def test_a_store_back_just_after_a_write_found_nobody_is_written_to_at_once(
    tmp_path, influx_db, fault_proxy_for_drain
) -> None:
    """The store comes back just after a write found nobody there (the connection closed without an
    answer): the first probe, 0.5 s later, answers. That is not a store answering pings but not writes
    (whose whole backoff is waited out): the drain writes at once, not 20 s later."""
    server, db = influx_db
    proxy = fault_proxy_for_drain.then(Close())  # the first request, the first write; then forwarded
    agent, spool = _drain_agent(tmp_path, proxy.url, db)
    sink = agent.cfg.sink_settings().open_sink()
    draining = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(agent._drain(spool, sink, draining))
    try:
        deadline = started + 8.0
        while spool.stats().depth and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        assert spool.stats().depth == 0, f"still {spool.stats().depth} in the spool after {took:.1f}s"
    finally:
        draining.set()
        await asyncio.wait_for(task, 10)
        await sink.aclose()
        spool.close()
    assert took < 5.0
    assert server.select(db, 'SELECT count("value") FROM "signal"')[0]["count"] == 10


async def test_a_store_that_answers_pings_but_drops_writes_is_not_written_to_every_probe(
    tmp_path, influx_db, fault_proxy_for_drain
) -> None:
    """Pings answered, every write's connection closed (a proxy in front of the store, say): the early
    end after a write that found nobody is taken once, then the backoff is waited out."""
    _, db = influx_db
    proxy = fault_proxy_for_drain.on_path("/write", Close())
    agent, spool = _drain_agent(tmp_path, proxy.url, db)
    sink = agent.cfg.sink_settings().open_sink()
    draining = asyncio.Event()
    task = asyncio.create_task(agent._drain(spool, sink, draining))
    try:
        await asyncio.sleep(4.0)
    finally:
        draining.set()
        await asyncio.wait_for(task, 10)
        await sink.aclose()
        depth = spool.stats().depth
        spool.close()
    writes = [r for r in proxy.requests if r.path == "/write"]
    assert depth == 10
    assert len(writes) == 2, [round(r.at, 2) for r in writes]  # the first, one at once, then a backoff of >= 20 s


@pytest.fixture
def fault_proxy_for_drain(influxdb):
    proxy = FaultProxy(influxdb.url).start()
    yield proxy
    proxy.stop()
