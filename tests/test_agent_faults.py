"""The agent as a real process when a part of it fails: what it retries, when it exits and with
what reason, what ``/health`` says meanwhile, and that nothing acknowledged is lost.

Real mosquitto and influxd (``tests/servers``), a fault proxy in front of influxd where the store
must be slow, and faults in the agent itself put in by ``tests/agent_child.py``.
"""

from __future__ import annotations

import http.client
import json
import re
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fmc.agent.spool import Spool
from fmc.core.points import Priority
from fmc.stores.embedded.store import EmbeddedStore
from tests.agent_child import WRITER_FAULT
from tests.agent_process import ROOT, AgentProcess, agent_config
from tests.faultproxy import Delay, FaultProxy
from tests.ports import free_port
from tests.test_agent_e2e import BASE_NS, influx_count, publish_all, publisher, signal_messages, wait_for_count

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


def watch_health_until_exit(agent: AgentProcess, timeout: float = 60.0) -> list[tuple[int, dict]]:
    """Every /health answer from now until the process exits (as fast as it answers)."""
    answers: list[tuple[int, dict]] = []
    deadline = time.monotonic() + timeout
    assert agent.proc is not None
    while agent.proc.poll() is None and time.monotonic() < deadline:
        try:
            answers.append(agent.health())
        except (OSError, ValueError, http.client.HTTPException):
            time.sleep(0.01)  # the listener is gone or not answering: the process is about to end
    agent.proc.wait(max(1.0, deadline - time.monotonic()))
    down = [a for a in answers if a[0] == 503]
    print(f"/health: {len(answers)} answers until the exit, {len(down)} of them 503")
    return answers


def down_parts(answer: tuple[int, dict]) -> dict[str, str]:
    return {name: p.get("reason", "") for name, p in answer[1]["parts"].items() if p["status"] != "ok"}


class SteadyPublisher:
    """QoS 1 messages at a steady pace from a thread, each with its own device timestamp."""

    def __init__(self, port: int, per_second: int = 400) -> None:
        self.client = publisher(port, client_id=f"steady-{free_port()}")
        self.per_second = per_second
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SteadyPublisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        infos = []
        while not self._stop.is_set():
            for _ in range(self.per_second // 20):
                i = self.sent
                payload = json.dumps({"ts": BASE_NS + i * 1_000_000, "value": float(i)}).encode()
                infos.append(self.client.publish(f"plant/steady/s{i % 7}", payload, qos=1))
                self.sent += 1
            time.sleep(0.05)
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(60)
        self.client.loop_stop()
        self.client.disconnect()
        return self.sent


def prefilled_spool(path: Path, n: int) -> None:
    spool = Spool(path)
    spool.append([(f"signal,equipment=pre,signal=s value={i}.5 {BASE_NS + i}", Priority.RAW) for i in range(n)])
    spool.close()


# --- 4. each part, failing on purpose ---------------------------------------------------------------------


def test_a_taken_metrics_port_stops_the_start_naming_the_setting_before_any_source_connects(tmp_path, mosquitto):
    """Another process listens on the agent's [metrics] listen address: `fmc run` exits with
    code 1 and one line naming the address, the setting, the file and the fix; it does so before
    it connects to the broker or opens the spool, and prints no traceback."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        cfg = agent_config(tmp_path, mqtt_port=mosquitto.port, metrics_port=port, client_id="faults-port")
        done = subprocess.run([sys.executable, "-m", "fmc.cli.main", "run", "-c", str(cfg)], cwd=ROOT,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"fmc run: cannot listen on 127.0.0.1:{port} for metrics and health"), done.stderr
    assert f"([metrics] listen in {cfg.absolute()})" in last and "fix: set [metrics] listen to a free" in last, last
    assert "Traceback" not in done.stderr + done.stdout
    assert "connecting to" not in done.stderr + done.stdout  # no source was started
    assert not (tmp_path / "spool.db").exists()


def test_a_locked_spool_pauses_draining_and_draining_resumes(tmp_path, mosquitto, influx_db, store_proxy, agents):
    """Another process holds the spool's write lock for longer than the agent's busy timeout
    (like a long `fmc spool requeue`, a VACUUM, an open sqlite3 shell): the delivered batch cannot
    be deleted, /health says so, and once the lock is gone the same agent drains on."""
    server, db = influx_db
    port = free_port()
    cfg = agent_config(tmp_path, mqtt_port=mosquitto.port, influx_url=store_proxy.url, database=db,
                       metrics_port=port, client_id="faults-locked")
    prefilled_spool(tmp_path / "spool.db", 300)
    store_proxy.then(Delay(2.0))  # the first write is slow: the lock is taken while it is in flight
    agent = AgentProcess(cfg, port, faults={"busy_timeout_s": 0.5}).start()
    agents.append(agent)
    wait_until(lambda: any(r.action == "delay" for r in store_proxy.requests), "the first write in flight")
    blocker = sqlite3.connect(tmp_path / "spool.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        status, body = wait_until(lambda: (a := agent.health())[0] == 503 and "locked" in
                                  a[1]["parts"]["drain"].get("reason", "") and a, "/health to say the spool is locked")
        assert body["parts"]["spool"]["status"] == "down" and "locked" in body["parts"]["spool"]["reason"]
        assert body["status"] == "down"
        time.sleep(1.5)
        assert agent.proc.poll() is None, agent.log()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert wait_for_count(server, db, 300) == 300
    wait_until(lambda: agent.health()[0] == 200, "/health back to 200 once the lock is gone")
    # draining goes on: new data arrives through the same process
    more = signal_messages(4, ["after"], 25)
    publish_all(mosquitto.port, more)
    assert wait_for_count(server, db, 300 + len(more)) == 300 + len(more)
    status, body = agent.health()
    assert status == 200 and {p["status"] for p in body["parts"].values()} == {"ok"}
    assert set(body["parts"]) == {"spool", "ingest", "drain", "mqtt:plant"}
    assert agent.terminate() == 0
    assert "another process holds the spool's lock" in agent.log_path.read_text()


def test_the_writer_thread_failing_exits_nonzero_with_the_reason_and_loses_nothing_acknowledged(
    tmp_path, mosquitto, influx_db, agents
):
    server, db = influx_db
    port = free_port()
    cfg = agent_config(tmp_path, mqtt_port=mosquitto.port, influx_url=server.url, database=db,
                       metrics_port=port, client_id="faults-writer")
    agent = AgentProcess(cfg, port, faults={"writer_raises_after": 30}).start()
    agents.append(agent)
    agent.wait_metric("fmc_source_connected", 1, source="plant")
    steady = SteadyPublisher(mosquitto.port).start()
    try:
        answers = watch_health_until_exit(agent)
    finally:
        sent = steady.stop()
    assert agent.proc.returncode == 1, agent.log()
    log = agent.log_path.read_text()
    assert f"fmc run: the ingest writer failed: RuntimeError: {WRITER_FAULT}" in log
    seen = [down_parts(a) for a in answers if a[0] == 503]
    assert any(WRITER_FAULT in parts.get("ingest", "") for parts in seen), answers[-3:]
    assert all(a[0] == 200 or "ingest" in down_parts(a) for a in answers)  # only the writer went down
    # the same spool, the same session: what was acknowledged is in the spool, the rest is with the broker
    again = AgentProcess(cfg, port).start()
    agents.append(again)
    assert wait_for_count(server, db, sent) == sent
    time.sleep(1.0)
    assert influx_count(server, db) == sent
    assert again.terminate() == 0


def test_a_full_disk_exits_nonzero_with_the_reason(tmp_path, mosquitto, influx_db, agents):
    """No file may grow past 2 MiB (RLIMIT_FSIZE), the spool's WAL included: SQLite's writes fail
    as on a full disk. The agent exits with code 1 naming the spool; after the restart (the disk
    has room again) everything published is in the store."""
    server, db = influx_db
    port = free_port()
    cfg = agent_config(tmp_path, mqtt_port=mosquitto.port, influx_url=server.url, database=db,
                       metrics_port=port, client_id="faults-full")
    cfg.write_text(cfg.read_text().replace('level = "debug"', 'level = "info"'))  # the log is a file too
    agent = AgentProcess(cfg, port, file_size_limit=2 << 20).start()
    agents.append(agent)
    agent.wait_metric("fmc_source_connected", 1, source="plant")
    steady = SteadyPublisher(mosquitto.port, per_second=2000).start()
    try:
        answers = watch_health_until_exit(agent, timeout=120)
    finally:
        sent = steady.stop()
    assert agent.proc.returncode == 1, agent.log()
    # the writer's append or the drain's delete, whichever wrote first after the disk filled
    # (SQLite says "full" when a write stopped short, "I/O error" when not a byte could be written)
    failed = re.search(r"^fmc run: the (ingest writer|drain loop) failed: (spool .*)$", agent.log_path.read_text(),
                       re.MULTILINE)
    assert failed, agent.log()
    part, reason = {"ingest writer": "ingest", "drain loop": "drain"}[failed.group(1)], failed.group(2)
    assert re.search(r": (append|complete) failed: (database or disk is full|disk I/O error)$", reason), reason
    seen = [down_parts(a) for a in answers if a[0] == 503]
    assert any(parts.get("spool") and part in parts for parts in seen), answers[-3:]
    again = AgentProcess(cfg, port).start()
    agents.append(again)
    assert wait_for_count(server, db, sent, timeout=90) == sent
    assert again.terminate() == 0


def test_a_read_only_spool_while_draining_exits_nonzero_with_the_reason(tmp_path, mosquitto, influx_db, agents):
    server, db = influx_db
    port = free_port()
    cfg = agent_config(tmp_path, mqtt_port=mosquitto.port, influx_url=server.url, database=db,
                       metrics_port=port, client_id="faults-readonly")
    agent = AgentProcess(cfg, port, faults={"drain_readonly_after": 3}).start()
    agents.append(agent)
    agent.wait_metric("fmc_source_connected", 1, source="plant")
    steady = SteadyPublisher(mosquitto.port).start()
    try:
        answers = watch_health_until_exit(agent)
    finally:
        sent = steady.stop()
    assert agent.proc.returncode == 1, agent.log()
    assert "fmc run: the drain loop failed: spool " in agent.log()
    assert "attempt to write a readonly database" in agent.log().split("fmc run: the drain loop failed: ")[1]
    # the spool part goes down with the reason first; the drain part says it only in the last
    # moments before the exit, which a poll can miss: either one naming it is /health telling why
    seen = [down_parts(a) for a in answers if a[0] == 503]
    assert any("readonly" in parts.get("spool", "") + parts.get("drain", "") for parts in seen), answers[-3:]
    again = AgentProcess(cfg, port).start()
    agents.append(again)
    assert wait_for_count(server, db, sent) == sent
    assert again.terminate() == 0


# --- 6. the dead-letter hint, requeue while the agent runs ------------------------------------------------


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
