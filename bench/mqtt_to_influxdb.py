"""Benchmark: MQTT JSON → agent (spool on) → InfluxDB, against a bare paho-mqtt subscriber.

Both consume the same backlog: 200,000 QoS 1 messages (500 equipment × 4 signals × 100) queued
by a real Mosquitto for two persistent sessions made before publishing. The bare subscriber
only counts messages (paho acknowledges at once); the agent maps, commits to its SQLite spool
(synchronous=full) before acknowledging, and drains to a real InfluxDB. The agent's rate is
points confirmed by InfluxDB per second from its start; its peak RSS is VmHWM of the process.

Run: make bench   (or: .venv/bin/python -m bench.mqtt_to_influxdb --messages 200000)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.agent_process import AgentProcess, agent_config, free_port
from tests.servers.influxdb import InfluxDBServer
from tests.servers.mosquitto import MosquittoServer

BASE_NS = 1_764_000_000_000_000_000


def make_session(port: int, client_id: str) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.connect("127.0.0.1", port)
    client.loop_start()
    done = threading.Event()
    client.on_subscribe = lambda *a: done.set()
    client.subscribe("plant/+/+", qos=1)
    assert done.wait(10), "no SUBACK"
    client.loop_stop()
    client.disconnect()


def publish_backlog(port: int, n_equipment: int, n_signals: int, per_series: int) -> int:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    # paho's message ids wrap at 65535: keep fewer than that outstanding
    outstanding: deque[mqtt.MQTTMessageInfo] = deque()
    n = 0
    for i in range(per_series):
        for e in range(n_equipment):
            for s in range(n_signals):
                ts = BASE_NS + i * 1_000_000_000 + e * 1000 + s
                payload = json.dumps({"ts": ts, "value": round(e + s * 0.5 + i * 0.01, 3)})
                outstanding.append(client.publish(f"plant/eq{e:04d}/sig{s}", payload, qos=1))
                n += 1
                if len(outstanding) > 20_000:
                    outstanding.popleft().wait_for_publish(120)
    for info in outstanding:
        info.wait_for_publish(120)
    client.loop_stop()
    client.disconnect()
    return n


def bare_subscriber_rate(port: int, client_id: str, expected: int) -> float:
    count = 0
    done = threading.Event()
    started: list[float] = []

    def on_connect(client, userdata, flags, reason_code, properties):
        started.append(time.perf_counter())

    def on_message(client, userdata, msg):
        nonlocal count
        count += 1
        if count >= expected:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not done.wait(600):
        raise RuntimeError(f"bare subscriber got {count} of {expected}")
    elapsed = time.perf_counter() - started[0]
    client.loop_stop()
    client.disconnect()
    return expected / elapsed


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def agent_rate(tmp: Path, mqtt_port: int, influx: InfluxDBServer, db: str, client_id: str,
               expected: int) -> tuple[float, float, int]:
    metrics_port = free_port()
    cfg = agent_config(tmp, mqtt_port=mqtt_port, influx_url=influx.url, database=db, client_id=client_id,
                       metrics_port=metrics_port)
    # the bench stream has no meters; keep the agent's log quiet
    cfg.write_text(cfg.read_text().replace('level = "debug"', 'level = "warning"'))
    t0 = time.perf_counter()
    agent = AgentProcess(cfg, metrics_port).start()
    try:
        # polled ten times a second: finer would cost the agent CPU (each scrape), coarser would overstate its time
        written = agent.wait_metric("fmc_points_written_total", expected, timeout=900, poll_s=0.1, sink="influxdb")
        elapsed = time.perf_counter() - t0
        rss = vm_hwm_mb(agent.proc.pid)
    finally:
        agent.terminate()
    rows = influx.select(db, 'SELECT count("value") FROM "signal"')
    landed = int(rows[0]["count"]) if rows else 0
    assert written >= expected
    return expected / elapsed, rss, landed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--equipment", type=int, default=500)
    ap.add_argument("--signals", type=int, default=4)
    ap.add_argument("--per-series", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fmc-bench-") as tmpdir:
        tmp = Path(tmpdir)
        broker = MosquittoServer(tmp / "mosquitto", verbose_log=False)
        influx = InfluxDBServer(tmp / "influxdb")
        influx.start()
        db = "bench"
        influx.create_database(db)
        try:
            make_session(broker.port, "bench-bare")
            make_session(broker.port, "bench-agent")
            t0 = time.perf_counter()
            n = publish_backlog(broker.port, args.equipment, args.signals, args.per_series)
            print(f"published {n} QoS 1 messages ({args.equipment} equipment × {args.signals} signals) "
                  f"in {time.perf_counter() - t0:.1f}s; the broker holds them for both sessions")
            bare = bare_subscriber_rate(broker.port, "bench-bare", n)
            print(f"bare paho-mqtt subscriber (counts only): {bare:,.0f} messages/s")
            (tmp / "agent").mkdir()
            rate, rss, landed = agent_rate(tmp / "agent", broker.port, influx, db, "bench-agent", n)
            print(f"fmc agent, spool on (synchronous=full), into InfluxDB: {rate:,.0f} points/s "
                  f"({landed} points in InfluxDB)")
            print(f"ratio agent / bare subscriber: {rate / bare:.2f}   (goal ≥ 0.6)")
            print(f"agent peak RSS: {rss:.0f} MB   (goal ≤ 100 MB)")
        finally:
            broker.stop()
            influx.stop()


if __name__ == "__main__":
    main()
