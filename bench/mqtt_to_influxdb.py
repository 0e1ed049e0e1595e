"""Benchmark: MQTT JSON → fmc agent (spool on) → InfluxDB, side by side with Node-RED and a bare paho subscriber.

The same Mosquitto, InfluxDB and publisher serve every contender. Before each round every
contender's persistent session (QoS 1, a client id of its own) is made, then one backlog of QoS 1
messages (500 equipment × 4 signals × n) is published once; the broker holds it for every session.
Each contender then starts, drains the backlog into a database of its own and is stopped; they
take turns (fmc, Node-RED, fmc, ...), so load on a shared machine falls on both alike.

- **fmc**: ``fmc run``: maps, commits to its SQLite spool (synchronous=full) before acknowledging,
  drains to InfluxDB.
- **Node-RED** 4.1 (``bench/nodered-flow.json``: mqtt in → function → join 1000 → influxdb
  batch), installed by ``scripts/bench`` into ``bench/.nodered/`` when ``node`` and ``npm`` are
  there; it keeps nothing on disk (mqtt.js acknowledges on receipt).
- **bare paho**: a subscriber that only counts messages (paho acknowledges at once), the ceiling
  of a Python MQTT client.

Figures per contender: points/s from its process start until InfluxDB counts every point (polled
4 times a second, a query InfluxDB answers: neither contender is asked anything meanwhile); CPU
per point, the process's user + system time (``/proc``) at that moment less what the same program
spends starting up with nothing to read (measured once per contender, before the rounds: started on
a session of its own with no backlog, until its CPU time stops growing), over the points; peak RSS
(VmHWM). Node-RED takes in the whole backlog before much reaches InfluxDB (it acknowledges at once
and queues in memory), so only the process's whole CPU time is comparable. For fmc, nothing lost
or doubled: InfluxDB holds every point and the agent accepted each message once.

Run: make bench   (or: .venv/bin/python -m bench.mqtt_to_influxdb [--small 100000 --repeat 3 --large 500000])
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from bench.publisher import messages, publish
from tests.agent_process import ROOT, AgentProcess, agent_config
from tests.ports import free_port
from tests.servers.influxdb import InfluxDBServer
from tests.servers.mosquitto import MosquittoServer

NODERED_DIR = ROOT / "bench" / ".nodered"
NODERED_MAIN = NODERED_DIR / "node_modules" / "node-red" / "red.js"
NODERED_FLOW = ROOT / "bench" / "nodered-flow.json"
POLL_S = 0.25
TIMEOUT_S = 1800.0
SIGNALS = 4


def make_session(port: int, client_id: str) -> None:
    """A persistent session subscribed to the bench topics at QoS 1, so the broker queues the backlog for it."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.connect("127.0.0.1", port)
    client.loop_start()
    done = threading.Event()
    client.on_subscribe = lambda *a: done.set()
    client.subscribe("plant/+/+", qos=1)
    assert done.wait(10), "no SUBACK"
    client.loop_stop()
    client.disconnect()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Run:
    who: str
    points: int
    rate: float  # points/s from the process start until every point was in InfluxDB
    cpu_s: float  # the process's CPU seconds until every point was in InfluxDB, start-up included
    rss_mb: float
    landed: int


def count_points(influx: InfluxDBServer, db: str) -> int:
    rows = influx.select(db, 'SELECT count("value") FROM "signal"')
    return int(rows[0]["count"]) if rows else 0


def watch(who: str, pid: int, alive: Callable[[], bool], influx: InfluxDBServer, db: str, expected: int,
          t0: float) -> Run:
    """Poll InfluxDB until ``expected`` points are in ``db``; the process's CPU time then."""
    deadline = t0 + TIMEOUT_S
    while True:
        landed = count_points(influx, db)
        now = time.perf_counter()
        cpu = cpu_seconds(pid)
        if landed >= expected:
            break
        if not alive():
            raise RuntimeError(f"{who} exited with {landed} of {expected} points in InfluxDB")
        if now > deadline:
            raise RuntimeError(f"{who}: {landed} of {expected} points in InfluxDB after {TIMEOUT_S:.0f}s")
        time.sleep(POLL_S)
    time.sleep(1.0)  # anything more (a doubled point would overwrite, not add) would be there now
    landed = count_points(influx, db)
    return Run(who, expected, expected / (now - t0), cpu, vm_hwm_mb(pid), landed)


def settled_cpu(pid: int, alive: Callable[[], bool]) -> float:
    """The process's CPU seconds once they stop growing (start-up done, nothing to read): three
    quiet seconds in a row, as a loaded machine can hold a process back for one."""
    time.sleep(2.0)
    last = cpu_seconds(pid)
    quiet = 0
    for _ in range(120):
        time.sleep(1.0)
        if not alive():
            raise RuntimeError("the contender exited while starting up")
        now = cpu_seconds(pid)
        quiet = quiet + 1 if now - last < 0.03 else 0
        last = now
        if quiet == 3:
            break
    return last


def run_fmc(tmp: Path, broker: MosquittoServer, influx: InfluxDBServer, name: str, expected: int) -> Run:
    """``expected`` 0: start up with nothing to read and measure only that (Run.cpu_s)."""
    influx.create_database(name)
    (tmp / name).mkdir()
    metrics_port = free_port()
    cfg = agent_config(tmp / name, mqtt_port=broker.port, influx_url=influx.url, database=name, client_id=name,
                       metrics_port=metrics_port)
    # the bench stream has no meters; keep the agent's log quiet
    cfg.write_text(cfg.read_text().replace('level = "debug"', 'level = "warning"'))
    t0 = time.perf_counter()
    agent = AgentProcess(cfg, metrics_port).start()
    assert agent.proc is not None
    proc = agent.proc
    try:
        if not expected:
            return Run("fmc", 0, 0.0, settled_cpu(proc.pid, lambda: proc.poll() is None), vm_hwm_mb(proc.pid), 0)
        run = watch("fmc", proc.pid, lambda: proc.poll() is None, influx, name, expected, t0)
        # asked once, at the end: every message accepted once (none doubled in the spool), all written
        accepted = agent.metric("fmc_points_accepted_total", source="plant")
        written = agent.metric("fmc_points_written_total", sink="influxdb")
    finally:
        agent.terminate()
    if accepted != expected or written < expected or run.landed != expected:
        raise RuntimeError(f"fmc lost or doubled points: {expected} published, {accepted:.0f} accepted, "
                           f"{written:.0f} written, {run.landed} in InfluxDB")
    return run


def nodered_unavailable() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not NODERED_MAIN.exists():
        return f"Node-RED is not installed in {NODERED_DIR.relative_to(ROOT)}/ (scripts/bench installs it with npm)"
    return None


def run_nodered(tmp: Path, broker: MosquittoServer, influx: InfluxDBServer, name: str, expected: int) -> Run:
    influx.create_database(name)
    user_dir = tmp / name
    user_dir.mkdir()
    settings = user_dir / "settings.js"
    port = free_port()
    # its own userDir and settings: loopback only, no editor, nothing of the user's ~/.node-red
    settings.write_text(
        "module.exports = {\n"
        f"  uiHost: '127.0.0.1', uiPort: {port}, httpAdminRoot: false, httpNodeRoot: false,\n"
        "  credentialSecret: false, flowFilePretty: false,\n"
        "  logging: { console: { level: 'warn', metrics: false, audit: false } },\n"
        "  contextStorage: { default: { module: 'memory' } },\n"
        "};\n", encoding="utf-8")
    env = {**os.environ, "FMC_BENCH_MQTT_PORT": str(broker.port), "FMC_BENCH_CLIENT_ID": name,
           "FMC_BENCH_INFLUX_PORT": str(influx.port), "FMC_BENCH_INFLUX_DB": name}
    log = open(user_dir / "node-red.log", "wb")  # noqa: SIM115 - handed to the child process
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["node", str(NODERED_MAIN), "--settings", str(settings), "--userDir", str(user_dir), str(NODERED_FLOW)],
        cwd=user_dir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    log.close()
    try:
        if not expected:
            return Run("Node-RED", 0, 0.0, settled_cpu(proc.pid, lambda: proc.poll() is None), vm_hwm_mb(proc.pid), 0)
        run = watch("Node-RED", proc.pid, lambda: proc.poll() is None, influx, name, expected, t0)
    except RuntimeError as e:
        raise RuntimeError(f"{e}\n{(user_dir / 'node-red.log').read_text(errors='replace')[-3000:]}") from None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if run.landed != expected:
        print(f"  Node-RED: {run.landed} of {expected} points in InfluxDB")
    return run


def bare_paho_rate(port: int, client_id: str, expected: int) -> tuple[float, float]:
    """Messages/s and CPU µs per message of a paho subscriber that only counts (in this process)."""
    count = 0
    done = threading.Event()
    started: list[tuple[float, float]] = []

    def on_connect(client, userdata, flags, reason_code, properties):  # type: ignore[no-untyped-def]
        started.append((time.perf_counter(), time.thread_time()))

    def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
        nonlocal count
        count += 1
        if count >= expected:
            started.append((time.perf_counter(), time.thread_time()))  # paho's network thread
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not done.wait(TIMEOUT_S):
        raise RuntimeError(f"bare subscriber got {count} of {expected}")
    client.loop_stop()
    client.disconnect()
    (w0, c0), (w1, c1) = started[0], started[-1]
    return expected / (w1 - w0), (c1 - c0) / expected * 1e6


def contenders(with_nodered: bool) -> list[tuple[str, Callable[..., Run]]]:
    out: list[tuple[str, Callable[..., Run]]] = [("fmc", run_fmc)]
    if with_nodered:
        out.append(("nodered", run_nodered))
    return out


def startup_cpu(tmp: Path, broker: MosquittoServer, influx: InfluxDBServer, with_nodered: bool) -> dict[str, float]:
    """Each contender's CPU seconds for starting up and settling with nothing to read."""
    out: dict[str, float] = {}
    for who, fn in contenders(with_nodered):
        name = f"{who}_startup"
        make_session(broker.port, name)
        out[who] = fn(tmp, broker, influx, name, 0).cpu_s
    print("start-up CPU (nothing to read), left out of CPU per point: "
          + ", ".join(f"{who} {cpu:.2f}s" for who, cpu in out.items()))
    return out


def cpu_us_per_point(run: Run, startup: dict[str, float]) -> float:
    return (run.cpu_s - startup[run_key(run)]) / run.points * 1e6


def run_key(run: Run) -> str:
    return "fmc" if run.who == "fmc" else "nodered"


def one_round(tmp: Path, broker: MosquittoServer, influx: InfluxDBServer, per_series: int, repeat: int,
              with_nodered: bool, bare: bool, startup: dict[str, float],
              ) -> tuple[dict[str, list[Run]], tuple[float, float] | None]:
    tag = f"n{per_series}"
    runs = [(f"{who}_{tag}_{r}", who, fn) for r in range(repeat) for who, fn in contenders(with_nodered)]
    for name, _, _ in runs:
        make_session(broker.port, name)
    if bare:
        make_session(broker.port, f"bare_{tag}")
    t0 = time.perf_counter()
    n = publish(broker.port, messages(500, SIGNALS, per_series))
    print(f"published {n:,} QoS 1 messages (500 equipment × {SIGNALS} signals) in {time.perf_counter() - t0:.1f}s; "
          f"the broker holds them for {len(runs) + bare} sessions   (load average {os.getloadavg()[0]:.1f})")
    bare_result = bare_paho_rate(broker.port, f"bare_{tag}", n) if bare else None
    results: dict[str, list[Run]] = {}
    for name, who, fn in runs:
        run = fn(tmp, broker, influx, name, n)
        results.setdefault(who, []).append(run)
        print(f"  {run.who:8s} {run.rate:9,.0f} points/s  {cpu_us_per_point(run, startup):6.1f} µs CPU/point  "
              f"RSS {run.rss_mb:4.0f} MB  "
              f"{run.landed:,} points in InfluxDB   (load average {os.getloadavg()[0]:.1f})")
    return results, bare_result


def summary(title: str, results: dict[str, list[Run]], startup: dict[str, float]) -> None:
    def med(who: str, attr: str) -> float:
        if attr == "cpu_us":
            return statistics.median(cpu_us_per_point(r, startup) for r in results[who])
        return statistics.median(getattr(r, attr) for r in results[who])

    fmc_rate, fmc_cpu = med("fmc", "rate"), med("fmc", "cpu_us")
    fmc_rss = max(r.rss_mb for r in results["fmc"])
    line = f"{title}: fmc {fmc_rate:,.0f} points/s, {fmc_cpu:.1f} µs CPU/point, peak RSS {fmc_rss:.0f} MB"
    if "nodered" in results:
        nr_rate, nr_cpu = med("nodered", "rate"), med("nodered", "cpu_us")
        nr_rss = max(r.rss_mb for r in results["nodered"])
        line += (f"; Node-RED {nr_rate:,.0f} points/s, {nr_cpu:.1f} µs CPU/point, peak RSS {nr_rss:.0f} MB; "
                 f"ratio fmc / Node-RED {fmc_rate / nr_rate:.2f} by rate, {nr_cpu / fmc_cpu:.2f} by CPU per point "
                 "(goal ≥ 1.2)")
    print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=100_000, help="messages of the repeated round (default 100000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each contender in that round; the median counts")
    ap.add_argument("--large", type=int, default=500_000, help="messages of the single long round (0: none)")
    ap.add_argument("--no-nodered", action="store_true", help="fmc and bare paho only")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress lines as they come
    with_nodered = not args.no_nodered
    if with_nodered and (why := nodered_unavailable()):
        print(f"Node-RED side-by-side skipped: {why}")
        with_nodered = False
    with tempfile.TemporaryDirectory(prefix="fmc-bench-") as tmpdir:
        tmp = Path(tmpdir)
        broker = MosquittoServer(tmp / "mosquitto", verbose_log=False)
        influx = InfluxDBServer(tmp / "influxdb")
        influx.start()
        try:
            startup = startup_cpu(tmp, broker, influx, with_nodered)
            small, bare = one_round(tmp, broker, influx, args.small // (500 * SIGNALS), args.repeat, with_nodered,
                                    bare=True, startup=startup)
            summary(f"{args.small:,} messages, median of {args.repeat}", small, startup)
            assert bare is not None
            fmc_rate = statistics.median(r.rate for r in small["fmc"])
            print(f"bare paho-mqtt subscriber (counts only): {bare[0]:,.0f} messages/s, {bare[1]:.1f} µs CPU/message "
                  f"(its network thread); ratio fmc / bare paho {fmc_rate / bare[0]:.2f} by rate")
            if args.large:
                large, _ = one_round(tmp, broker, influx, args.large // (500 * SIGNALS), 1, with_nodered, bare=False,
                                     startup=startup)
                summary(f"{args.large:,} messages", large, startup)
        finally:
            broker.stop()
            influx.stop()


if __name__ == "__main__":
    sys.exit(main())
