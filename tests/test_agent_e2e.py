"""The agent as a real process: MQTT (real Mosquitto) → spool → InfluxDB (real influxd)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import paho.mqtt.client as mqtt
import pytest

from fmc.agent.spool import Spool
from tests.agent_process import ROOT, AgentProcess, agent_config
from tests.ports import free_port

BASE_NS = 1_764_000_000_000_000_000  # 2025-11-24, a fixed instant: device timestamps
CST = timezone(timedelta(hours=8))


def publisher(port: int, client_id: str = "test-publisher") -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def publish_all(port: int, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
    client = publisher(port)
    try:
        infos = [client.publish(topic, payload, qos=qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


def signal_messages(n_equipment: int, signals: list[str], n: int, start: int = 0) -> list[tuple[str, bytes]]:
    out = []
    for i in range(start, start + n):
        for e in range(n_equipment):
            for s_index, s in enumerate(signals):
                ts = BASE_NS + i * 1_000_000_000 + e * 1000 + s_index
                payload = {"ts": ts, "value": expected_value(e, s_index, i)}
                out.append((f"plant/m{e:02d}/{s}", json.dumps(payload).encode()))
    return out


def expected_value(e: int, s_index: int, i: int) -> float:
    return e * 100 + s_index * 10 + i * 0.25  # exact in binary: sums compare exactly


def subscribe_session(port: int, client_id: str) -> None:
    """Create the agent's persistent session before anything is published (as a running agent would)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.connect("127.0.0.1", port)
    client.loop_start()
    result, _ = client.subscribe([("plant/+/+", 1), ("meters/+/+", 1)])
    assert result == mqtt.MQTT_ERR_SUCCESS
    time.sleep(0.3)
    client.loop_stop()
    client.disconnect()


def influx_count(server, db: str, measurement: str = "signal") -> int:
    rows = server.select(db, f'SELECT count("value") FROM "{measurement}"')
    return int(rows[0]["count"]) if rows else 0


def wait_for_count(server, db: str, expected: int, timeout: float = 60, measurement: str = "signal") -> int:
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n = influx_count(server, db, measurement)
        if n >= expected:
            return n
        time.sleep(0.2)
    return n


@pytest.fixture
def agent_cleanup():
    agents: list[AgentProcess] = []
    yield agents
    for a in agents:
        a.stop_quietly()


def test_mqtt_to_influxdb_exact_counts_and_values(tmp_path, mosquitto, influx_db, agent_cleanup):
    server, db = influx_db
    port = free_port()
    cfg = agent_config(tmp_path, mqtt_port=mosquitto.port, influx_url=server.url, database=db, metrics_port=port,
                       client_id="e2e-exact")
    agent = AgentProcess(cfg, port).start()
    agent_cleanup.append(agent)
    agent.wait_metric("fmc_source_connected", 1, source="plant")
    signals = ["spindle_speed", "power_kw", "good_count"]
    messages = signal_messages(10, signals, 30)
    meter_msgs = [
        (f"meters/electricity/main-{k}",
         json.dumps({"t": (datetime(2025, 11, 24, 8, 0, tzinfo=CST) + timedelta(minutes=i)).isoformat(),
                     "d": {"reading": 1000.0 + k * 500 + i * 1.5}}).encode())
        for k in range(2) for i in range(20)
    ]
    publish_all(mosquitto.port, messages + meter_msgs)
    assert wait_for_count(server, db, len(messages)) == len(messages)
    assert wait_for_count(server, db, len(meter_msgs), measurement="meter_reading") == len(meter_msgs)

    # per series: exact count and exact sum of values
    rows = server.select(db, 'SELECT count("value"), sum("value") FROM "signal" GROUP BY "equipment", "signal"')
    got = {(r["equipment"], r["signal"]): (r["count"], r["sum"]) for r in rows}
    assert len(got) == 30
    for e in range(10):
        for s_index, s in enumerate(signals):
            want_sum = sum(expected_value(e, s_index, i) for i in range(30))
            assert got[(f"m{e:02d}", s)] == (30, want_sum)
    # one series point by point, nanosecond timestamps included
    rows = server.select(db, "SELECT \"value\", \"quality\", \"enterprise\" FROM \"signal\" "
                             "WHERE \"equipment\" = 'm03' AND \"signal\" = 'power_kw'", epoch="ns")
    assert [(r["time"], r["value"], r["quality"], r["enterprise"]) for r in rows] == [
        (BASE_NS + i * 1_000_000_000 + 3 * 1000 + 1, expected_value(3, 1, i), 0, "e-330602-1") for i in range(30)
    ]
    rows = server.select(db, "SELECT last(\"value\") FROM \"meter_reading\" GROUP BY \"meter\", \"carrier\"")
    assert {(r["meter"], r["carrier"], r["last"]) for r in rows} == {
        ("main-0", "electricity", 1000.0 + 19 * 1.5), ("main-1", "electricity", 1500.0 + 19 * 1.5)}

    assert agent.metric("fmc_points_written_total", sink="influxdb") == len(messages) + len(meter_msgs)
    assert agent.metric("fmc_messages_received_total", source="plant") == len(messages) + len(meter_msgs)
    assert agent.terminate() == 0
    spool = Spool(tmp_path / "spool.db")
    try:
        assert spool.stats().depth == 0
    finally:
        spool.close()


def test_sigkill_during_qos1_stream_loses_nothing_and_doubles_nothing(tmp_path, mosquitto, influx_db, agent_cleanup):
    server, db = influx_db
    port = free_port()
    client_id = "e2e-sigkill"
    cfg = agent_config(tmp_path, mqtt_port=mosquitto.port, influx_url=server.url, database=db, metrics_port=port,
                       client_id=client_id)
    subscribe_session(mosquitto.port, client_id)
    messages = signal_messages(20, ["a", "b"], 150)  # 6000 messages
    done = threading.Event()

    def publish() -> None:
        publish_all(mosquitto.port, messages)
        done.set()

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    for kill_after in (800, 2500):
        agent = AgentProcess(cfg, port).start()
        agent_cleanup.append(agent)
        agent.wait_metric("fmc_points_accepted_total", 1, source="plant", timeout=30)
        accepted = agent.wait_metric("fmc_points_spooled_total", 1)
        deadline = time.monotonic() + 30
        while accepted < kill_after and time.monotonic() < deadline and not done.is_set():
            accepted = agent.metric("fmc_points_spooled_total")
            time.sleep(0.01)
        agent.kill()  # SIGKILL, mid-stream: spool commits and acks in flight
    thread.join(60)
    assert done.is_set()
    agent = AgentProcess(cfg, port).start()
    agent_cleanup.append(agent)
    assert wait_for_count(server, db, len(messages), timeout=90) == len(messages)
    time.sleep(1.0)  # anything redelivered late would show up as an extra point now
    rows = server.select(db, 'SELECT count("value"), sum("value") FROM "signal" GROUP BY "equipment", "signal"')
    assert len(rows) == 40
    for r in rows:
        e, s_index = int(r["equipment"][1:]), ["a", "b"].index(r["signal"])
        assert r["count"] == 150, r
        assert r["sum"] == sum(expected_value(e, s_index, i) for i in range(150))
    assert agent.terminate() == 0


def test_store_outage_is_absorbed_and_refused_points_are_dead_lettered(tmp_path, mosquitto, influxdb_private,
                                                                        agent_cleanup):
    server = influxdb_private
    db = "outage"
    server.create_database(db)
    # A string "value" already in meter_reading: every float meter reading conflicts (a real 400).
    server.query(f'CREATE DATABASE "{db}"')
    import urllib.request
    req = urllib.request.Request(f"{server.url}/write?db={db}&precision=ns",
                                 data=f'meter_reading,carrier=electricity,meter=x value="text" {BASE_NS}'.encode(),
                                 method="POST")
    assert urllib.request.urlopen(req, timeout=5).status == 204
    port = free_port()
    cfg = agent_config(tmp_path, mqtt_port=mosquitto.port, influx_url=server.url, database=db, metrics_port=port,
                       client_id="e2e-outage")
    agent = AgentProcess(cfg, port).start()
    agent_cleanup.append(agent)
    agent.wait_metric("fmc_source_connected", 1, source="plant")
    first = signal_messages(5, ["s"], 40)
    publish_all(mosquitto.port, first)
    assert wait_for_count(server, db, len(first)) == len(first)

    server.stop()
    second = signal_messages(5, ["s"], 60, start=40)
    publish_all(mosquitto.port, second)
    agent.wait_metric("fmc_points_spooled_total", len(first) + len(second))
    agent.wait_metric("fmc_sink_errors_total", 1, sink="influxdb", reason="unreachable")
    time.sleep(1.2)  # the gauge is refreshed each second
    assert agent.metric("fmc_spool_depth_points") == len(second)
    assert agent.metric("fmc_spool_oldest_point_age_seconds") > 0
    server.start()
    assert wait_for_count(server, db, len(first) + len(second), timeout=60) == len(first) + len(second)

    meters = [(f"meters/electricity/m{k}", json.dumps({"t": f"2025-11-24T08:{i:02d}:00+08:00",
                                                      "d": {"reading": 10.0 + i}}).encode())
              for k in range(2) for i in range(5)]
    publish_all(mosquitto.port, meters)
    agent.wait_metric("fmc_points_dead_lettered_total", len(meters), sink="influxdb", timeout=30)
    assert agent.terminate() == 0
    assert influx_count(server, db) == len(first) + len(second)
    spool = Spool(tmp_path / "spool.db")
    try:
        dead = spool.dead_letters(100)
        assert len(dead) == len(meters)
        assert all("conflict" in d.reason and d.status == 400 for d in dead)
        assert all(d.line.startswith("meter_reading,") for d in dead)
        assert spool.stats().depth == 0
    finally:
        spool.close()
    shown = subprocess.run([sys.executable, "-m", "fmc.cli.main", "spool", "show", "-c", str(cfg)],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert shown.returncode == 0
    assert f"dead letters: {len(meters)}" in shown.stdout and "conflict" in shown.stdout


BAD_MESSAGES = [
    ("plant/m01/speed", b"{not json", "payload_not_json"),
    ("plant/m01/speed", b'{"ts": 1764000000000000000, "value": "12.5"}', "value_wrong_type"),
    ("plant/m01/speed", b'{"ts": 1764000000000000000, "value": true}', "value_wrong_type"),
    ("plant/m01/speed", b'{"ts": 1764000000000000000, "value": NaN}', "value_not_finite"),
    ("plant/m01/speed", b'{"ts": 1764000000000000000}', "value_path_missing"),
    ("plant/m01/speed", b"\xff\xfe", "payload_not_utf8"),
    ("plant/m01/speed", b'{"ts": 1764000000000000000, "value": 1, "pad": "' + b"x" * 300_000 + b'"}',
     "payload_too_large"),
    ("meters/plutonium/m1", b'{"t": "2025-11-24T08:00:00+08:00", "d": {"reading": 1}}', "unknown_carrier"),
    ("plant/m01/speed", b'{"ts": "yesterday", "value": 1}', "timestamp_invalid"),
]


def test_bad_input_is_counted_by_reason_and_good_input_still_lands(tmp_path, mosquitto, influx_db, agent_cleanup):
    server, db = influx_db
    port = free_port()
    cfg = agent_config(tmp_path, mqtt_port=mosquitto.port, influx_url=server.url, database=db, metrics_port=port,
                       client_id="e2e-bad")
    agent = AgentProcess(cfg, port).start()
    agent_cleanup.append(agent)
    agent.wait_metric("fmc_source_connected", 1, source="plant")
    good = [
        ("plant/loom 7, hall=2/speed", b'{"ts": 1764000000000000001, "value": 1.5}'),  # spaces, comma, '='
        ('plant/"quoted"/speed', b'{"ts": 1764000000000000002, "value": 2.5}'),
        ("plant/织机-08/转速", b'{"ts": 1764000000000000003, "value": 3.5}'),
    ]
    publish_all(mosquitto.port, [(t, p) for t, p, _ in BAD_MESSAGES] + good)
    assert wait_for_count(server, db, len(good)) == len(good)
    for reason in {r for _, _, r in BAD_MESSAGES}:
        want = sum(1 for _, _, r in BAD_MESSAGES if r == reason)
        assert agent.wait_metric("fmc_rejected_total", want, source="plant", reason=reason, timeout=10) == want
    rows = server.select(db, 'SELECT "value" FROM "signal" GROUP BY "equipment", "signal"')
    assert {(r["equipment"], r["signal"], r["value"]) for r in rows} == {
        ("loom 7, hall=2", "speed", 1.5), ('"quoted"', "speed", 2.5), ("织机-08", "转速", 3.5)}
    assert agent.proc.poll() is None  # still running
    assert agent.terminate() == 0


def test_fmc_check_reports_each_connection(tmp_path, mosquitto, influx_db):
    server, db = influx_db
    cfg = agent_config(tmp_path, mqtt_port=mosquitto.port, influx_url=server.url, database=db)
    ok = subprocess.run([sys.executable, "-m", "fmc.cli.main", "check", "-c", str(cfg)],
                        capture_output=True, text=True, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "mqtt:plant" in ok.stdout and "all checks passed" in ok.stdout
    dead_port = free_port()
    bad = agent_config(tmp_path, mqtt_port=dead_port, influx_url=server.url, database="no_such_db")
    out = subprocess.run([sys.executable, "-m", "fmc.cli.main", "check", "-c", str(bad), "--timeout", "2"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 1
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  ")}
    assert "FAIL" in lines["mqtt:plant"] and "FAIL" in lines["sink:influxdb"], out.stdout
    assert "no_such_db" in lines["sink:influxdb"]
    assert "2 check(s) failed" in out.stdout


def test_json_logs_no_secrets_and_clean_sigint(tmp_path, mosquitto, agent_cleanup):
    """Embedded store, JSON logs: every line is an object, the password never appears, SIGINT flushes."""
    import os
    import signal as signals

    port = free_port()
    cfg = agent_config(tmp_path, mqtt_port=mosquitto.port, metrics_port=port, client_id="e2e-json")
    text = cfg.read_text().replace('level = "debug"', 'level = "debug"\nformat = "json"')
    text = text.replace('reconnect_min_s = 0.2', 'reconnect_min_s = 0.2\nusername = "gw"\npassword = "${FMC_E2E_PW}"')
    cfg.write_text(text)
    os.environ["FMC_E2E_PW"] = "correct-horse-battery-staple"
    try:
        agent = AgentProcess(cfg, port).start()
    finally:
        del os.environ["FMC_E2E_PW"]
    agent_cleanup.append(agent)
    agent.wait_metric("fmc_source_connected", 1, source="plant")
    publish_all(mosquitto.port, signal_messages(2, ["s"], 5))
    agent.wait_metric("fmc_points_written_total", 10, sink="embedded")
    agent.proc.send_signal(signals.SIGINT)
    assert agent.proc.wait(30) == 0
    lines = [line for line in agent.log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"ts", "level", "logger", "msg"} <= set(records[0])
    assert any("agent stopped" in r["msg"] for r in records)
    assert "correct-horse" not in agent.log_path.read_text()
    from fmc.stores.embedded.store import EmbeddedStore

    store = EmbeddedStore(tmp_path / "store.db")
    try:
        assert store.count("signal") == 10
    finally:
        store.close()
