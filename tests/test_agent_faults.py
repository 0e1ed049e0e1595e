"""The agent as a real process around its spool: what its warnings tell users to run, and
`fmc spool requeue` from another process while it sends.

Real mosquitto and influxd (``tests/servers``), a fault proxy in front of influxd where the store
must be slow.
"""

from __future__ import annotations

import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmc.agent.spool import Spool
from fmc.core.points import Priority
from fmc.stores.embedded.store import EmbeddedStore
from tests.agent_process import ROOT, AgentProcess, agent_config, free_port
from tests.faultproxy import Delay, FaultProxy
from tests.test_agent_e2e import BASE_NS, influx_count, publish_all, signal_messages

pytestmark = pytest.mark.slow


@pytest.fixture
def agents():
    started: list[AgentProcess] = []
    yield started
    for a in started:
        a.stop_quietly()


@pytest.fixture
def store_proxy(influxdb):
    proxy = FaultProxy(influxdb.url).start()
    yield proxy
    proxy.stop()


def wait_until(predicate, what: str, timeout: float = 30.0, poll_s: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for: {what}")


# --- the dead-letter hint, requeue while the agent runs --------------------------------------------------


def test_the_dead_letter_hint_names_commands_that_run(tmp_path, mosquitto, agents):
    # the store already has `signal` values as text: a number for it is refused for good
    with EmbeddedStore(tmp_path / "store.db") as store:
        store.write_lines([f'signal,enterprise=e-330602-1,equipment=m0,signal=s text="x" {BASE_NS}',
                           f'signal,enterprise=e-330602-1,equipment=m0,signal=s value="text" {BASE_NS + 1}'])
    port = free_port()
    cfg = agent_config(tmp_path, mqtt_port=mosquitto.port, metrics_port=port, client_id="faults-hint")
    agent = AgentProcess(cfg, port).start()
    agents.append(agent)
    agent.wait_metric("fmc_source_connected", 1, source="plant")
    publish_all(mosquitto.port, signal_messages(1, ["s"], 1))
    agent.wait_metric("fmc_points_dead_lettered_total", 1, sink="embedded")
    line = wait_until(lambda: next((x for x in agent.log().splitlines() if "dead-letter table" in x), None),
                      "the dead-letter warning")
    commands = [c for c in line.split("`")[1::2] if c.startswith("fmc ")]
    assert [c.split()[:3] for c in commands] == [["fmc", "spool", "show"], ["fmc", "spool", "requeue"]], line
    outputs = []
    for command in commands:
        argv = shlex.split(command)
        done = subprocess.run([sys.executable, "-m", "fmc.cli.main", *argv[1:]], capture_output=True, text=True,
                              cwd=tmp_path.parent, timeout=60)  # another folder: the path must be absolute
        assert done.returncode == 0, (command, done.stderr)
        outputs.append(done.stdout)
    assert "dead letters: 1" in outputs[0] and "field type conflict" in outputs[0]
    assert outputs[1].startswith("1 dead-lettered point(s) queued again")
    assert agent.terminate() == 0


def test_requeue_while_the_agent_sends_drops_nothing_being_sent(tmp_path, mosquitto, influx_db, store_proxy, agents):
    """The spool is nearly full, the agent is sending its oldest points (the store is slow) and
    `fmc spool requeue` runs in another process: every point ends up delivered, dropped or
    queued, and no point is both delivered and counted as dropped."""
    server, db = influx_db
    max_bytes = 1 << 16
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=max_bytes)
    dead = [(f"signal,equipment=dl,signal=s value={i}.25 {BASE_NS + 10**6 + i}", Priority.RAW) for i in range(40)]
    spool.append(dead)
    batch = spool.read_batch(100)
    spool.complete(batch, [(i, "refused by an earlier store", 400) for i in range(len(dead))])
    queued = []
    while spool.stats().bytes < 0.985 * max_bytes:
        i = len(queued)
        queued.append(f"signal,equipment=q,signal=s value={i}.5 {BASE_NS + i}")
        spool.append([(queued[-1], Priority.RAW)])
    stats = spool.stats()
    assert (stats.dead_letters, stats.depth) == (len(dead), len(queued))
    spool.close()
    port = free_port()
    cfg = agent_config(tmp_path, mqtt_port=mosquitto.port, influx_url=store_proxy.url, database=db,
                       metrics_port=port, client_id="faults-requeue", spool_extra=f"max_bytes = {max_bytes}")
    store_proxy.then(Delay(4.0))
    agent = AgentProcess(cfg, port).start()
    agents.append(agent)
    wait_until(lambda: any(r.action == "delay" for r in store_proxy.requests), "the first batch in flight")
    done = subprocess.run([sys.executable, "-m", "fmc.cli.main", "spool", "requeue", "-c", str(cfg)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{len(dead)} dead-lettered point(s) queued again")
    total = len(dead) + len(queued)
    wait_until(lambda: spool_counters(path)["queued_points"] == 0, "the spool to be empty", timeout=60)
    time.sleep(1.0)
    assert agent.terminate() == 0
    counters = spool_counters(path)
    delivered = influx_count(server, db)
    print(f"delivered {delivered}, dropped {counters['dropped.RAW']}, left {counters['queued_points']} of {total}")
    assert delivered + counters["dropped.RAW"] + counters["queued_points"] == total
    assert delivered == total  # nothing had to be dropped: requeue made the queue longer than max_bytes for a moment


def spool_counters(path: Path) -> dict[str, int]:
    """The spool's persistent counters, read without opening it as a Spool (no write lock)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT name, value FROM counters").fetchall())
    finally:
        conn.close()
