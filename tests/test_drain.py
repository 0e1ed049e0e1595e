"""The drain loop on its own: batching by age, and a wall clock that was set back."""

from __future__ import annotations

import asyncio
import time

from fmc.agent.runtime import Agent
from fmc.agent.spool import Spool
from fmc.cli.plugins import AgentConfig
from fmc.core.points import Priority
from fmc.stores.embedded.store import EmbeddedSink, EmbeddedStore


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
