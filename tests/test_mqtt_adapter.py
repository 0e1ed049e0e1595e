"""fmc.sources.mqtt against the real mosquitto: mapping, manual acks, redelivery, restarts, auth, TLS, bad input."""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fmc.agent.ingest import Ingest
from fmc.agent.metrics import AgentMetrics
from fmc.agent.plugin import MapResult
from fmc.agent.spool import Spool
from fmc.core import lineprotocol
from fmc.core.config import EnterpriseConfig
from fmc.core.localtime import local_day_bounds
from fmc.plant.config import PlantSections
from fmc.plant.model import PlantModel
from fmc.plant.rollups import InventoryItem, Site
from fmc.sources.mqtt import config
from fmc.sources.mqtt import source as source_module
from fmc.sources.mqtt.mapping import Mapper
from fmc.sources.mqtt.source import RECEIVE_MAXIMUM, SESSION_EXPIRY_S, MqttSource, _connect_options, check_mqtt
from tests.ports import free_port
from tests.servers.mosquitto import MosquittoServer

ENTERPRISE = EnterpriseConfig(id="91330602MA2BXXXX1X", name="示范纺织", region="330602", industry="17")
WAIT_S = 10.0
PROTOCOLS = ["3.1.1", "5"]


# --- a recording ingest ------------------------------------------------------------------------------


@dataclass
class Submission:
    source: str
    topic: str
    payload: bytes
    result: MapResult
    has_ack: bool
    acked: threading.Event = field(default_factory=threading.Event)

    def reasons(self) -> list[str]:
        return [r.reason for r in self.result.rejections]


class RecordingIngest:
    """Stores every submission. Acks run in a thread of their own, as the real ingest's writer
    thread does, after ``ack_delay_s``; with ``ack=False`` they never run (an agent that died
    before its commit)."""

    def __init__(self, *, ack: bool = True, ack_delay_s: float = 0.0, fail_first: int = 0) -> None:
        self.ack = ack
        self.ack_delay_s = ack_delay_s
        self.fail_first = fail_first  # the first n calls (submit or submit_many) raise, like an ingest that broke
        self.submissions: list[Submission] = []
        self._cond = threading.Condition()
        self._acks: queue.Queue[tuple[float, Submission, Callable[[], None]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run_acks, daemon=True)
        self._thread.start()

    def submit(
        self, source: str, topic: str, payload: bytes, result: MapResult, ack: Callable[[], None] | None,
        *, wait: bool = True,
    ) -> bool:
        with self._cond:
            if self.fail_first > 0:
                self.fail_first -= 1
                raise RuntimeError("ingest broken on purpose")
            sub = Submission(source, topic, bytes(payload), result, ack is not None)
            self.submissions.append(sub)
            self._cond.notify_all()
        if ack is not None and self.ack:
            self._acks.put((time.monotonic() + self.ack_delay_s, sub, ack))
        return True

    def submit_many(
        self, source: str, messages: Sequence[tuple[str, bytes, MapResult, Callable[[], None] | None]],
    ) -> int:
        with self._cond:
            if self.fail_first > 0:
                self.fail_first -= 1
                raise RuntimeError("ingest broken on purpose")
        for topic, payload, result, ack in messages:
            self.submit(source, topic, payload, result, ack, wait=False)
        return 0

    def _run_acks(self) -> None:
        while (item := self._acks.get()) is not None:
            due, sub, ack = item
            time.sleep(max(0.0, due - time.monotonic()))
            ack()
            sub.acked.set()

    def wait_for(self, count: int, timeout: float = WAIT_S) -> list[Submission]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.submissions) >= count, timeout)
            assert ok, f"expected {count} submissions, got {len(self.submissions)}: {self.topics()}"
            return list(self.submissions)

    def topics(self) -> list[str]:
        return [s.topic for s in self.submissions]

    def close(self) -> None:
        self._acks.put(None)
        self._thread.join(5)


# --- helpers ----------------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own on the shared broker."""
    return f"t{secrets.token_hex(4)}"


def source_config(server: MosquittoServer, prefix: str, **kw: Any) -> config.MqttSource:
    kw.setdefault("name", "plant")
    kw.setdefault("client_id", f"fmc-{prefix}")
    kw.setdefault("reconnect_min_s", 0.05)
    kw.setdefault("reconnect_max_s", 0.3)
    kw.setdefault("subscribe", [{"topic": f"{prefix}/{{equipment}}/{{signal}}", "qos": 1, "timestamp_path": "ts"}])
    return config.MqttSource(host=server.host, port=server.port, **kw)


def make_source(
    cfg: config.MqttSource, ingest: RecordingIngest, metrics: AgentMetrics | None = None, log_name: str = "test.mqtt"
) -> MqttSource:
    mapper = Mapper(ENTERPRISE, cfg.subscribe, max_payload_bytes=cfg.max_payload_bytes)
    return MqttSource(cfg, mapper, ingest, metrics or AgentMetrics(), logging.getLogger(log_name))


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def running(source: MqttSource, stop_timeout: float = 2.0) -> Iterator[MqttSource]:
    source.start()
    try:
        wait_until(lambda: source.subscribed, "the source to connect and subscribe")
        yield source
    finally:
        source.stop(stop_timeout)


def publish(
    server: MosquittoServer | Listener,
    messages: list[tuple[str, bytes, int]],
    *,
    username: str | None = None,
    password: str | None = None,
    wait_s: float = WAIT_S,
    retain: bool = False,
) -> None:
    """Publish and wait until the broker has every QoS 1 message (PUBACK)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{secrets.token_hex(4)}")
    client.max_inflight_messages_set(0)
    if username is not None:
        client.username_pw_set(username, password)
    client.connect(server.host, server.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos, retain) for topic, payload, qos in messages]
        for info in infos:
            info.wait_for_publish(wait_s)
            assert info.is_published(), "the broker did not take a message"
    finally:
        client.disconnect()
        client.loop_stop()


def ts_ms() -> int:
    return time.time_ns() // 1_000_000


# --- mapping and submission ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_qos1_and_qos0_messages_are_mapped_and_submitted(
    mosquitto: MosquittoServer, prefix: str, protocol: str
) -> None:
    cfg = source_config(
        mosquitto, prefix, protocol=protocol,
        subscribe=[
            {"topic": f"{prefix}/q1/{{equipment}}/{{signal}}", "qos": 1, "timestamp_path": "ts"},
            {"topic": f"{prefix}/q0/{{meter}}", "qos": 0, "kind": "meter", "carrier": "electricity",
             "payload": "number", "scale": 0.5},
        ],
    )
    ingest, metrics = RecordingIngest(), AgentMetrics()
    source = make_source(cfg, ingest, metrics)
    t = ts_ms()
    with running(source):
        assert metrics.value("fmc_source_connected", {"source": "plant"}) == 1
        publish(mosquitto, [
            (f"{prefix}/q1/loom-07/spindle_speed", json.dumps({"ts": t, "value": 412.5}).encode(), 1),
            (f"{prefix}/q0/main", b" 1000 ", 1),  # delivered at the subscription's QoS 0
        ])
        by_topic = {s.topic: s for s in ingest.wait_for(2)}
        q1 = by_topic[f"{prefix}/q1/loom-07/spindle_speed"]
        (p,) = q1.result.points
        assert (p.measurement, p.tags, p.fields, p.ts_ns) == (
            "signal",
            {"enterprise": ENTERPRISE.id, "equipment": "loom-07", "signal": "spindle_speed"},
            {"value": 412.5, "quality": 0},
            t * 1_000_000,
        )
        assert q1.has_ack and q1.source == "plant"
        assert q1.acked.wait(WAIT_S)
        q0 = by_topic[f"{prefix}/q0/main"]
        (p,) = q0.result.points
        assert (p.measurement, p.tags["meter"], p.tags["carrier"], p.fields["value"]) == (
            "meter_reading", "main", "electricity", 500.0)
        assert not q0.has_ack  # QoS 0: nothing to acknowledge
        assert metrics.value("fmc_messages_received_total", {"source": "plant"}) == 2
    assert not source.connected
    assert metrics.value("fmc_source_connected", {"source": "plant"}) == 0
    ingest.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_many_unacknowledged_messages_flow_at_once(mosquitto: MosquittoServer, prefix: str, protocol: str) -> None:
    """Acks wait for a group commit; a window of 20 in-flight messages would stall the source."""
    ingest = RecordingIngest(ack=False)
    source = make_source(source_config(mosquitto, prefix, protocol=protocol, clean_session=True), ingest)
    with running(source, stop_timeout=0.2):
        publish(mosquitto, [(f"{prefix}/m/s", json.dumps({"ts": ts_ms(), "value": i}).encode(), 1)
                            for i in range(300)])
        subs = ingest.wait_for(300)
        assert sorted(s.result.points[0].fields["value"] for s in subs) == [float(i) for i in range(300)]
    ingest.close()


def test_mqtt5_connect_properties() -> None:
    cfg = config.MqttSource(name="p", protocol="5", client_id="gw", subscribe=[{"topic": "a/{equipment}/{signal}"}])
    opts = _connect_options(cfg, persistent=True)
    assert opts["clean_start"] is False
    assert opts["properties"].SessionExpiryInterval == SESSION_EXPIRY_S
    assert opts["properties"].ReceiveMaximum == RECEIVE_MAXIMUM
    assert _connect_options(cfg.model_copy(update={"protocol": "3.1.1"}), persistent=True) == {}


# --- manual ack: crash safety ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unacknowledged_messages_come_again_acknowledged_ones_do_not(
    mosquitto: MosquittoServer, prefix: str, protocol: str
) -> None:
    cfg = source_config(mosquitto, prefix, protocol=protocol)
    sent = [(f"{prefix}/loom-{i}/speed", json.dumps({"ts": ts_ms(), "value": i}).encode(), 1) for i in range(5)]

    # 1. the spool never commits: nothing is acknowledged
    never = RecordingIngest(ack=False)
    with running(make_source(cfg, never), stop_timeout=0.4):
        publish(mosquitto, sent)
        assert sorted((s.topic, s.payload) for s in never.wait_for(5)) == sorted((t, p) for t, p, _ in sent)
    # while the agent is away, more messages queue in its session
    queued = [(f"{prefix}/loom-9/speed", json.dumps({"ts": ts_ms(), "value": 9}).encode(), 1)]
    publish(mosquitto, queued)

    # 2. the next start (same client id) gets all of them again, and acknowledges them
    acking = RecordingIngest()
    with running(make_source(cfg, acking)):
        subs = acking.wait_for(6)
        assert sorted((s.topic, s.payload) for s in subs) == sorted((t, p) for t, p, _ in sent + queued)
        assert all(s.acked.wait(WAIT_S) for s in subs)

    # 3. and the start after that gets nothing old: only what is new
    fresh = RecordingIngest()
    with running(make_source(cfg, fresh)):
        publish(mosquitto, [(f"{prefix}/marker/speed", json.dumps({"ts": ts_ms(), "value": 0}).encode(), 1)])
        fresh.wait_for(1)
        time.sleep(0.1)
        assert fresh.topics() == [f"{prefix}/marker/speed"]
    for ingest in (never, acking, fresh):
        ingest.close()


_CHILD = r"""
import json, logging, sys, time
from fmc.sources.mqtt.source import MqttSource
from fmc.sources.mqtt.mapping import Mapper
from fmc.agent.metrics import AgentMetrics
from fmc.sources.mqtt.config import MqttSource as SourceConfig
from fmc.core.config import EnterpriseConfig

cfg = SourceConfig.model_validate_json(sys.argv[1])
enterprise = EnterpriseConfig.model_validate_json(sys.argv[2])

class SpoolThatNeverCommits:
    def submit(self, source, topic, payload, result, ack, wait=True):
        print("got", topic, flush=True)
        return True

    def submit_many(self, source, messages):
        for topic, payload, result, ack in messages:
            self.submit(source, topic, payload, result, ack)
        return 0

source = MqttSource(cfg, Mapper(enterprise, cfg.subscribe), SpoolThatNeverCommits(), AgentMetrics(),
                    logging.getLogger("child"))
source.start()
while not source.subscribed:
    time.sleep(0.01)
print("ready", flush=True)
time.sleep(60)
"""


def test_a_killed_agent_gets_its_unacknowledged_messages_after_restart(
    mosquitto: MosquittoServer, prefix: str
) -> None:
    cfg = source_config(mosquitto, prefix)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, cfg.model_dump_json(), ENTERPRISE.model_dump_json()],
        stdout=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line.strip()) for line in child.stdout or []], daemon=True)
    reader.start()
    try:
        assert lines.get(timeout=WAIT_S) == "ready"
        sent = [(f"{prefix}/press-{i}/force", json.dumps({"ts": ts_ms(), "value": i}).encode(), 1) for i in range(3)]
        publish(mosquitto, sent)
        assert sorted(lines.get(timeout=WAIT_S) for _ in sent) == sorted(f"got {t}" for t, _, _ in sent)
    finally:
        child.send_signal(signal.SIGKILL)  # no DISCONNECT, no cleanup: a power cut
        child.wait(WAIT_S)
    ingest = RecordingIngest()
    with running(make_source(cfg, ingest)):
        subs = ingest.wait_for(3)
        assert sorted((s.topic, s.payload) for s in subs) == sorted((t, p) for t, p, _ in sent)
        assert [p.fields["value"] for s in sorted(subs, key=lambda s: s.topic) for p in s.result.points] == [
            0.0, 1.0, 2.0]
    ingest.close()


def test_a_late_ack_after_reconnect_is_not_sent_on_the_new_connection(mosquitto_private: MosquittoServer) -> None:
    """An ack of the previous connection is dropped (the broker resends that message anyway, and
    may have given its packet id to another one); the broker's own log shows what reached it."""
    cfg = source_config(mosquitto_private, "late")
    ingest = RecordingIngest(ack=False)
    acks: list[Callable[[], None]] = []
    real_submit = ingest.submit

    def keep_ack(source_name: str, topic: str, payload: bytes, result: MapResult, ack: Any, **kw: Any) -> bool:
        acks.append(ack)
        return real_submit(source_name, topic, payload, result, ack, **kw)

    ingest.submit = keep_ack  # type: ignore[method-assign]
    pubacks = f"Received PUBACK from {cfg.client_id}"
    with running(make_source(cfg, ingest)) as source:
        publish(mosquitto_private, [("late/a/b", json.dumps({"ts": ts_ms(), "value": 1}).encode(), 1)])
        ingest.wait_for(1)
        mosquitto_private.stop()
        wait_until(lambda: not source.connected, "the source to notice the broker is gone")
        mosquitto_private.start()
        subs = ingest.wait_for(2)  # the persistent session resends the unacknowledged message
        assert subs[0].payload == subs[1].payload
        acks[0]()  # the first connection's ack, late
        time.sleep(0.3)
        assert mosquitto_private.log().count(pubacks) == 0
        acks[1]()
        wait_until(lambda: mosquitto_private.log().count(pubacks) == 1, "the current connection's PUBACK")
    ingest.close()


# --- reconnects ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["stop", "kill"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_broker_restart_reconnects_and_resubscribes(
    mosquitto_private: MosquittoServer, protocol: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """'stop' (SIGTERM) saves the broker's sessions, 'kill' loses them; messages flow again either way."""
    cfg = source_config(mosquitto_private, "rs", protocol=protocol)
    ingest, metrics = RecordingIngest(), AgentMetrics()
    source = make_source(cfg, ingest, metrics)
    with caplog.at_level(logging.INFO, logger="test.mqtt"), running(source):
        publish(mosquitto_private, [("rs/a/before", json.dumps({"ts": ts_ms(), "value": 1}).encode(), 1)])
        ingest.wait_for(1)
        getattr(mosquitto_private, how)()
        wait_until(lambda: not source.connected, "the source to notice the broker is gone")
        assert metrics.value("fmc_source_connected", {"source": "plant"}) == 0
        time.sleep(0.3)  # a few failed attempts while the broker is down
        mosquitto_private.start()
        wait_until(lambda: source.subscribed, "reconnect and resubscribe")
        assert metrics.value("fmc_source_connected", {"source": "plant"}) == 1
        publish(mosquitto_private, [("rs/a/after", json.dumps({"ts": ts_ms(), "value": 2}).encode(), 1)])
        subs = ingest.wait_for(2)
        assert [s.topic for s in subs] == ["rs/a/before", "rs/a/after"]
        assert subs[1].acked.wait(WAIT_S)
    text = caplog.text
    assert "lost the connection" in text
    assert "connection refused" in text  # the attempts while it was down, with the reason
    assert ("resumed session" if how == "stop" else "new session") in text.split("lost the connection")[1]
    ingest.close()


def test_start_returns_at_once_and_retries_an_unreachable_broker(
    mosquitto_private: MosquittoServer, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = source_config(mosquitto_private, "late-broker")
    mosquitto_private.stop()
    ingest = RecordingIngest()
    source = make_source(cfg, ingest)
    with caplog.at_level(logging.WARNING, logger="test.mqtt"):
        began = time.monotonic()
        source.start()
        assert time.monotonic() - began < 0.5
        try:
            wait_until(lambda: "connection refused" in caplog.text, "a logged failed attempt")
            assert not source.connected
            mosquitto_private.start()
            wait_until(lambda: source.subscribed, "connect once the broker is up")
        finally:
            source.stop(1.0)
    ingest.close()


# --- credentials, check_mqtt ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path_factory.mktemp("auth"), users={"fmc": "s3cret-pw"})
    yield server
    server.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_check_mqtt_with_right_and_wrong_credentials(auth_broker: MosquittoServer, protocol: str) -> None:
    def cfg(**kw: Any) -> config.MqttSource:
        return source_config(auth_broker, "auth", protocol=protocol, **kw)

    ok = await check_mqtt(cfg(username="fmc", password="s3cret-pw"), timeout=3)
    assert ok.ok, ok.detail
    assert ok.name == "mqtt:plant" and "1 subscription(s) accepted" in ok.detail
    for wrong in (cfg(username="fmc", password="wrong-pw"), cfg(username="nobody", password="x"), cfg()):
        result = await check_mqtt(wrong, timeout=3)
        assert not result.ok
        assert "refused the connection" in result.detail
        assert "not authorised" in result.detail or "bad username or password" in result.detail, result.detail
        assert "wrong-pw" not in result.detail


def test_source_with_credentials(auth_broker: MosquittoServer, caplog: pytest.LogCaptureFixture) -> None:
    ingest = RecordingIngest()
    good = make_source(source_config(auth_broker, "cred", username="fmc", password="s3cret-pw"), ingest)
    with running(good):
        publish(auth_broker, [("cred/a/b", b'{"value": 1, "ts": %d}' % ts_ms(), 1)],
                username="fmc", password="s3cret-pw")
        assert ingest.wait_for(1)[0].result.points[0].fields["value"] == 1.0
    bad = make_source(source_config(auth_broker, "cred2", username="fmc", password="wrong-pw"), ingest)
    with caplog.at_level(logging.INFO, logger="test.mqtt"):
        bad.start()
        try:
            wait_until(lambda: "refused the connection" in caplog.text, "the refusal in the log")
            assert not bad.connected
        finally:
            bad.stop(1.0)
    assert "not authorised" in caplog.text
    assert "wrong-pw" not in caplog.text and "s3cret" not in caplog.text
    ingest.close()


async def test_check_mqtt_unreachable_and_silent_ports() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    cfg = config.MqttSource(name="x", host="127.0.0.1", port=port, clean_session=True,
                            subscribe=[{"topic": "a/{equipment}/{signal}"}])
    result = await check_mqtt(cfg, timeout=2)
    assert not result.ok and "connection refused" in result.detail and str(port) in result.detail

    dns = await check_mqtt(cfg.model_copy(update={"host": "no-such-broker.invalid"}), timeout=2)
    assert not dns.ok and "cannot resolve the host name 'no-such-broker.invalid'" in dns.detail

    with socket.socket() as silent:  # accepts TCP (the kernel does), never speaks MQTT
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        began = time.monotonic()
        result = await check_mqtt(cfg.model_copy(update={"port": silent.getsockname()[1]}), timeout=0.5)
        assert time.monotonic() - began < 3
    assert not result.ok and "no CONNACK" in result.detail


class SubscriptionRefusingBroker:
    """Accepts the connection and refuses every subscription (SUBACK 0x80), as a broker whose ACL
    forbids a filter does. mosquitto 2.0 grants such subscriptions and filters silently, so this
    tiny MQTT 3.1.1 responder stands in for brokers that answer 0x80."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            with conn:
                while True:
                    kind, body = self._read_packet(conn)
                    if kind == 0x10:  # CONNECT
                        conn.sendall(b"\x20\x02\x00\x00")
                    elif kind == 0x82:  # SUBSCRIBE: packet id, then (length, filter, qos) entries
                        count, pos = 0, 2
                        while pos < len(body):
                            pos += 2 + int.from_bytes(body[pos : pos + 2], "big") + 1
                            count += 1
                        conn.sendall(bytes([0x90, 2 + count]) + body[:2] + b"\x80" * count)
                    elif kind == 0xC0:  # PINGREQ
                        conn.sendall(b"\xd0\x00")
                    elif kind in (0xE0, None):
                        return

    @staticmethod
    def _read_packet(conn: socket.socket) -> tuple[int | None, bytes]:
        head = conn.recv(1)
        if not head:
            return None, b""
        length, shift = 0, 0
        while True:
            byte = conn.recv(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = b""
        while len(body) < length:
            chunk = conn.recv(length - len(body))
            if not chunk:
                return None, b""
            body += chunk
        return head[0], body


async def test_check_mqtt_reports_refused_subscriptions() -> None:
    broker = SubscriptionRefusingBroker()
    cfg = config.MqttSource(
        name="acl", port=broker.port, clean_session=True,
        subscribe=[{"topic": "secret/{equipment}/{signal}"}, {"topic": "other/#", "signal": "x", "equipment": "y"}],
    )
    result = await check_mqtt(cfg, timeout=3)
    assert not result.ok
    assert "refused 2 subscription(s)" in result.detail
    assert "'secret/+/+'" in result.detail and "'other/#'" in result.detail
    broker.sock.close()


@dataclass
class Listener:
    """Another listener of a broker: what ``publish`` needs of it."""

    host: str
    port: int


@pytest.fixture
def qos0_broker(tmp_path: Path) -> Iterator[tuple[MosquittoServer, Listener]]:
    """A broker that grants at most QoS 0 on the agent's listener (mosquitto's max_qos 0, as EMQX's
    max_qos_allowed or a cloud broker's limit), and a second listener of it for the gateways:
    mosquitto disconnects a client that publishes above its listener's max_qos."""
    gateway = Listener("127.0.0.1", free_port())
    server = MosquittoServer(tmp_path / "broker", f"max_qos 0\nlistener {gateway.port} {gateway.host}\n")
    yield server, gateway
    server.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_check_mqtt_fails_a_subscription_granted_below_the_asked_qos(
    qos0_broker: tuple[MosquittoServer, Listener], prefix: str, protocol: str
) -> None:
    result = await check_mqtt(source_config(qos0_broker[0], prefix, protocol=protocol), timeout=5)
    assert not result.ok, result.detail
    assert f"granted QoS 0 for '{prefix}/+/+', not the QoS 1 asked" in result.detail
    assert "max_qos" in result.detail and "ACL" in result.detail
    if protocol == "5":  # MQTT 5 says why in the CONNACK already
        assert "Maximum QoS 0" in result.detail


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_subscription_granted_below_the_asked_qos_is_warned_about_at_each_connection(
    qos0_broker: tuple[MosquittoServer, Listener], prefix: str, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With QoS 0 granted for a qos = 1 subscription, what the gateways publish while the agent is
    away is lost (nothing is queued for it): the source says so once per connection."""
    broker, gateway = qos0_broker
    cfg = source_config(broker, prefix, protocol=protocol)
    caplog.set_level(logging.WARNING, logger="test.mqtt")

    def downgrades() -> list[str]:
        return [r.getMessage() for r in caplog.records if "granted QoS 0" in r.getMessage()]

    ingest = RecordingIngest()
    with running(make_source(cfg, ingest)):
        wait_until(lambda: len(downgrades()) == 1, "the warning of the first connection")
    # the agent restarts; meanwhile the loom publishes at QoS 1, nothing of it is kept for the agent
    publish(gateway, [(f"{prefix}/loom-07/speed", json.dumps({"ts": ts_ms(), "value": i}).encode(), 1)
                      for i in range(5)])
    with running(make_source(cfg, ingest)):
        wait_until(lambda: len(downgrades()) == 2, "the warning of the second connection")
        time.sleep(0.5)
    ingest.close()
    assert ingest.submissions == []  # QoS 0: nothing was kept for the agent while it was away
    assert len(downgrades()) == 2, downgrades()
    assert f"'{prefix}/+/+', not the QoS 1 asked" in downgrades()[0] and "max_qos" in downgrades()[0]


# --- TLS --------------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MosquittoServer, Path]]:
    """A broker with a TLS listener, its certificate signed by a CA made here for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make test certificates: install Debian's `openssl` package")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=fmc test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    server = MosquittoServer(d / "broker", f"cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key")
    yield server, d
    server.stop()


async def test_tls_check_and_messages(tls_broker: tuple[MosquittoServer, Path]) -> None:
    server, d = tls_broker
    good = source_config(server, "tls", tls={"ca_file": d / "ca.pem"})
    result = await check_mqtt(good, timeout=3)
    assert result.ok and "TLS" in result.detail, result.detail

    untrusted = await check_mqtt(source_config(server, "tls", tls={}), timeout=3)  # system CAs only
    assert not untrusted.ok and "not trusted" in untrusted.detail and "ca_file" in untrusted.detail

    insecure = await check_mqtt(source_config(server, "tls", tls={"insecure_skip_verify": True}), timeout=3)
    assert insecure.ok, insecure.detail

    plain = await check_mqtt(source_config(server, "tls"), timeout=1)  # TLS port, no [mqtt.tls]
    assert not plain.ok and "[mqtt.tls]" in plain.detail, plain.detail

    missing = await check_mqtt(source_config(server, "tls", tls={"ca_file": d / "nope.pem"}), timeout=1)
    assert not missing.ok and "TLS settings" in missing.detail


def test_tls_source_receives(tls_broker: tuple[MosquittoServer, Path]) -> None:
    server, d = tls_broker
    ingest = RecordingIngest()
    with running(make_source(source_config(server, "tls", tls={"ca_file": d / "ca.pem"}), ingest)):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
        client.tls_set_context(ssl.create_default_context(cafile=str(d / "ca.pem")))
        client.connect(server.host, server.port)
        client.loop_start()
        client.publish("tls/a/b", b'{"value": 3, "ts": %d}' % ts_ms(), 1).wait_for_publish(WAIT_S)
        client.disconnect()
        client.loop_stop()
        assert ingest.wait_for(1)[0].result.points[0].fields["value"] == 3.0
    ingest.close()


# --- bad input through the real broker ---------------------------------------------------------------------


def test_bad_input_is_rejected_with_a_reason_and_the_source_keeps_running(
    mosquitto: MosquittoServer, prefix: str
) -> None:
    cfg = source_config(
        mosquitto, prefix, max_payload_bytes=1024,
        subscribe=[
            {"topic": f"{prefix}/num/{{meter}}", "kind": "meter", "carrier": "water_intake", "payload": "number"},
            {"topic": f"{prefix}/{{equipment}}/{{signal}}"},
        ],
    )
    ingest = RecordingIngest()
    p = prefix
    cases: list[tuple[str, bytes, list[str]]] = [
        (f"{p}/loom-1/speed", b'{"value": ', ["payload_not_json"]),
        (f"{p}/loom-1/speed", b'{"value": "fast"}', ["value_wrong_type"]),
        (f"{p}/loom-1/speed", b'{"value": NaN}', ["value_not_finite"]),
        (f"{p}/loom-1/speed", b'{"value": 1, "pad": "' + b"x" * 2000 + b'"}', ["payload_too_large"]),
        (f"{p}/loom-1/speed", b"\xff\xfe{}", ["payload_not_utf8"]),
        (f"{p}/loom-1/speed", b'{"speed": 1}', ["value_path_missing"]),
        (f"{p}/num/m1", b"12,5", ["payload_not_number"]),
        (f"{p}/num/m1", b"inf", ["value_not_finite"]),
        (f"{p}/back\\slash/speed", b'{"value": 1}', ["name_backslash"]),
        # writable names: carried exactly
        (f"{p}/loom 1/spindle speed", b'{"value": 1}', []),
        (f'{p}/a,b=c/"quoted"', b'{"value": 2}', []),
        (f"{p}/织机-07/转速", b'{"value": 3}', []),
        (f"{p}/loom-1/speed", b'{"value": 4}', []),
    ]
    with running(make_source(cfg, ingest)) as source:
        publish(mosquitto, [(topic, payload, 1) for topic, payload, _ in cases])
        subs = ingest.wait_for(len(cases))
        assert [(s.topic, s.payload) for s in subs] == [(t, pl) for t, pl, _ in cases]  # QoS 1 keeps order
        for sub, (topic, _, want) in zip(subs, cases, strict=True):
            assert sub.reasons() == want, (topic, sub.result.rejections)
            if not want:
                (point,) = sub.result.points
                equipment, signal_name = topic.split("/")[1:]
                assert point.tags["equipment"] == equipment and point.tags["signal"] == signal_name
                back = lineprotocol.parse(lineprotocol.encode(point))
                assert (back.tags, back.fields) == (point.tags, point.fields)
        # rejected messages are acknowledged too: they will never become valid by being resent
        assert all(s.acked.wait(WAIT_S) for s in subs)
        assert Counter(r for s in subs for r in s.reasons())["payload_too_large"] == 1

        # A topic with a control character: mosquitto drops such a publisher; whatever a broker
        # lets through must be rejected, never written. The source carries on either way.
        with contextlib.suppress(Exception):
            publish(mosquitto, [(f"{p}/bad\nname/speed", b'{"value": 1}', 1)], wait_s=0.5)
        publish(mosquitto, [(f"{p}/after/speed", b'{"value": 5}', 1)])
        wait_until(lambda: ingest.topics()[-1] == f"{p}/after/speed", "the message after the bad one")
        for sub in ingest.submissions[len(cases):-1]:
            assert sub.result.points == [] and sub.reasons() == ["name_control_char"]
        assert source.connected


@pytest.mark.parametrize("with_timestamp", [True, False], ids=["device-timestamp", "receive-time"])
def test_a_month_old_retained_message_does_not_make_a_dead_machine_online(
    tmp_path: Path, mosquitto: MosquittoServer, prefix: str, with_timestamp: bool
) -> None:
    """The loom's last message, retained on the broker, is a month old: the loom died since. The
    broker sends it at every subscribe (each start and reconnect). With a device timestamp it is
    stored at its time but not fed to the plant model; without one it is refused, not stored as
    a reading of now. Either way the loom is neither online nor networked today."""
    s = 10**9
    month_ago_ms = (time.time_ns() - 30 * 86_400 * s) // 1_000_000
    payload = (f'{{"ts": {month_ago_ms}, "value": 412.5}}' if with_timestamp else '{"value": 412.5}').encode()
    publish(mosquitto, [(f"{prefix}/loom-07/spindle_speed", payload, 1)], retain=True)
    sub: dict[str, Any] = {"topic": f"{prefix}/{{equipment}}/{{signal}}", "qos": 1}
    if with_timestamp:
        sub["timestamp_path"] = "ts"
    cfg = source_config(mosquitto, prefix, subscribe=[sub])
    site = Site.from_enterprise(ENTERPRISE)
    sections = PlantSections.model_validate({
        "plant": {"sample_delay_s": 0},
        "equipment_class": [{"name": "loom", "rules": [
            {"type": "threshold", "signal": "spindle_speed", "on_above": 100}]}],
    })
    now = time.time_ns()
    plant = PlantModel(site, sections, [InventoryItem("loom-07", True, 100_000.0, kind="loom")],
                       start_ns=now - 3600 * s)
    spool = Spool(tmp_path / "spool.db")
    metrics = AgentMetrics()
    ingest = Ingest(spool, metrics, max_series=1000, commit_interval_ms=0, plant=plant, clock=lambda: now,
                    snapshot_every_s=3600.0)
    ingest.start()
    source = make_source(cfg, ingest, metrics)  # type: ignore[arg-type]
    source.start()
    try:
        if with_timestamp:
            wait_until(lambda: any(x.startswith("signal,") for x in spool.read_batch(1000).lines),
                       "the retained message to be spooled")
        else:
            wait_until(lambda: bool(spool.recent_rejections()), "the retained message to be rejected")
    finally:
        source.stop(2.0)
        ingest.stop()
    lines = spool.read_batch(1000).lines
    rejections = [r.reason for r in spool.recent_rejections()]
    spool.close()
    stored = [lineprotocol.parse(x) for x in lines if x.startswith("signal,")]
    if with_timestamp:
        assert [p.ts_ns for p in stored] == [month_ago_ms * 1_000_000] and rejections == []
    else:
        assert stored == [] and rejections == ["retained_without_timestamp"]
        assert metrics.rejected.labels("plant", "retained_without_timestamp")._value.get() == 1
    # the rest of the (local) day passes without a message from the dead loom
    end_of_day = local_day_bounds(datetime.fromtimestamp(now / s, site.tz).date(), site.tz)[1]
    out = plant.advance(end_of_day + 3600 * s)
    (eq_day,) = [p for p in out if p.measurement == "equipment_daily"]
    (day,) = [p for p in out if p.measurement == "enterprise_daily"]
    assert eq_day.fields["online_s"] == 0.0, eq_day.fields
    assert day.fields["equipment_networked"] == 0, day.fields


def test_config_changes_with_a_persistent_session(mosquitto: MosquittoServer, prefix: str) -> None:
    """The broker resumes the session (session present) with the *previous* config's filters:
    a new subscription works only because fmc subscribes on every connect, and a removed one
    (fmc never unsubscribes: it does not know it) is rejected as topic_unmatched and acknowledged."""
    keep = {"topic": f"{prefix}/{{equipment}}/{{signal}}"}
    old = source_config(mosquitto, prefix, subscribe=[keep, {"topic": f"{prefix}-old/{{equipment}}/{{signal}}"}])
    ingest = RecordingIngest()
    with running(make_source(old, ingest)):
        pass
    new = source_config(mosquitto, prefix, subscribe=[keep, {"topic": f"{prefix}-new/{{equipment}}/{{signal}}"}])
    with running(make_source(new, ingest)):
        publish(mosquitto, [(f"{prefix}-old/a/b", b'{"value": 1}', 1), (f"{prefix}/a/b", b'{"value": 2}', 1),
                            (f"{prefix}-new/a/b", b'{"value": 3}', 1)])
        removed, kept, added = ingest.wait_for(3)
        assert removed.reasons() == ["topic_unmatched"] and removed.acked.wait(WAIT_S)
        assert kept.result.points[0].fields["value"] == 2.0
        assert added.result.points[0].fields["value"] == 3.0
    ingest.close()


def test_an_ingest_error_leaves_the_message_unacknowledged_and_the_source_running(
    mosquitto: MosquittoServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    ingest = RecordingIngest(fail_first=1)
    cfg = source_config(mosquitto, prefix)
    with caplog.at_level(logging.ERROR, logger="test.mqtt"), running(make_source(cfg, ingest)) as source:
        publish(mosquitto, [(f"{prefix}/a/b", b'{"value": 1}', 1)])
        wait_until(lambda: "did not take 1 message(s)" in caplog.text, "the ingest's error logged")
        publish(mosquitto, [(f"{prefix}/a/c", b'{"value": 2}', 1)])
        (sub,) = ingest.wait_for(1)
        assert sub.topic == f"{prefix}/a/c" and sub.acked.wait(WAIT_S)
        assert source.connected and source._unacked == 0
    # the one that failed was never acknowledged: the next start gets it again
    again = RecordingIngest()
    with running(make_source(cfg, again)):
        assert again.wait_for(1)[0].topic == f"{prefix}/a/b"
    ingest.close()
    again.close()


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_each_failed_reconnect_logs_one_warning_and_every_line_is_well_formed(
    mosquitto_private: MosquittoServer, caplog: pytest.LogCaptureFixture
) -> None:
    """While the broker is away, each failed attempt is one warning that says why and when the next
    one is; paho's own words for the same event stay at debug level."""
    cfg = source_config(mosquitto_private, "rl", reconnect_min_s=0.2, reconnect_max_s=0.2)
    ingest = RecordingIngest()
    source = make_source(cfg, ingest)
    with caplog.at_level(logging.DEBUG, logger="test.mqtt"), running(source):
        mosquitto_private.stop()
        wait_until(lambda: not source.connected, "the source to notice the broker is gone")
        time.sleep(1.5)  # several failed attempts
        mosquitto_private.start()
        wait_until(lambda: source.subscribed, "reconnect and resubscribe")
    ingest.close()
    warnings = [r.getMessage() for r in caplog.records
                if r.name.startswith("test.mqtt") and r.levelno >= logging.WARNING]
    failed = [m for m in warnings if "connection refused" in m and "retrying in" in m]
    lost = [m for m in warnings if m.startswith("lost the connection")]
    assert len(failed) >= 3, warnings
    assert len(lost) == 1, warnings
    assert len(warnings) == len(failed) + len(lost), "\n".join(warnings)
    unbalanced = [m for m in warnings if not _balanced(m)]
    assert not unbalanced, unbalanced


# --- backpressure: a spool that cannot keep up ----------------------------------------------------------


@dataclass
class Sampled:
    """What a test saw every 0.1 s while the spool was stalled."""

    connected: list[float] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)
    unacked: list[int] = field(default_factory=list)


def stall_spool_and_publish(
    server: MosquittoServer, source: MqttSource, ingest: Ingest, metrics: AgentMetrics, spool_path: Path,
    messages: list[tuple[str, bytes, int]], stall_s: float,
) -> Sampled:
    """Hold the spool's write lock from another connection for ``stall_s`` (the ingest's append
    waits in SQLite's busy handler meanwhile) while ``messages`` are published, sampling the
    source's state; then let go."""
    blocker = sqlite3.connect(spool_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    publisher = threading.Thread(target=publish, args=(server, messages), kwargs={"wait_s": 60.0}, daemon=True)
    sampled = Sampled()
    try:
        publisher.start()
        deadline = time.monotonic() + stall_s
        while time.monotonic() < deadline:
            sampled.connected.append(metrics.value("fmc_source_connected", {"source": "plant"}))
            sampled.queued.append(len(ingest._pending))
            sampled.unacked.append(source._unacked)
            time.sleep(0.1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    publisher.join(60)
    assert not publisher.is_alive()
    return sampled


def spooled_lines(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("SELECT line FROM spool WHERE line LIKE 'signal,%' ORDER BY id")]
    finally:
        conn.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_stalled_spool_keeps_the_session_up_and_loses_or_doubles_nothing(
    mosquitto_private: MosquittoServer, protocol: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The spool cannot commit for 9 s (more than the 1.5 keepalives of 5 s after which mosquitto drops a
    silent client) while 3000 QoS 1 messages
    arrive through the real ingest, whose queue holds 200. paho's network thread must keep
    answering the broker meanwhile: the session stays up, and when the spool commits again every
    message is in it exactly once. Memory stays bounded by the broker's in-flight window."""
    spool = Spool(tmp_path / "spool.db")
    metrics = AgentMetrics()
    ingest = Ingest(spool, metrics, max_series=10_000, queue_max=200, logger=logging.getLogger("test.ingest"))
    ingest.start()
    cfg = source_config(mosquitto_private, "bp", protocol=protocol, keepalive_s=5)
    source = MqttSource(cfg, Mapper(ENTERPRISE, cfg.subscribe, max_payload_bytes=cfg.max_payload_bytes), ingest,
                        metrics, logging.getLogger("test.mqtt"))
    t0 = ts_ms()
    messages = [(f"bp/m{i % 10}/s", json.dumps({"ts": t0 + i, "value": i}).encode(), 1) for i in range(3000)]
    try:
        with caplog.at_level(logging.INFO, logger="test.mqtt"), running(source):
            sampled = stall_spool_and_publish(mosquitto_private, source, ingest, metrics, tmp_path / "spool.db",
                                              messages, stall_s=9.0)
            wait_until(lambda: len(spooled_lines(tmp_path / "spool.db")) >= len(messages), "every message spooled",
                       timeout=30)
            wait_until(lambda: source._unacked == 0, "every message acknowledged")
            time.sleep(0.5)  # anything sent again would be here by now
            assert source.connected
    finally:
        ingest.stop()
        spool.close()
    lines = spooled_lines(tmp_path / "spool.db")
    print(f"MQTT {protocol}: connected min {min(sampled.connected)}, ingest queue max {max(sampled.queued)}, "
          f"unacknowledged max {max(sampled.unacked)}; {len(lines)} spooled, {len(set(lines))} distinct; "
          f"broker timeouts: {mosquitto_private.log().count('exceeded timeout')}")
    assert "lost the connection" not in caplog.text
    assert "exceeded timeout" not in mosquitto_private.log()
    assert min(sampled.connected) == 1
    assert len(lines) == len(messages) and len(set(lines)) == len(messages)  # none lost, none twice
    assert max(sampled.unacked) <= RECEIVE_MAXIMUM  # the broker's window bounds what is held
    assert max(sampled.queued) <= RECEIVE_MAXIMUM + 200


def test_a_broker_without_an_in_flight_limit_is_read_no_further_than_the_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MQTT 3.1.1 has no Receive Maximum: a broker configured without an in-flight limit sends
    everything it has. The source stops reading at its own bound (here 300 messages handed over
    and not committed) while the spool is stalled, and goes on writing (acks, pings)."""
    monkeypatch.setattr(source_module, "MAX_IN_FLIGHT", 300)
    server = MosquittoServer(tmp_path / "broker", "max_inflight_messages 0")
    spool = Spool(tmp_path / "spool.db")
    metrics = AgentMetrics()
    ingest = Ingest(spool, metrics, max_series=10_000, queue_max=200, logger=logging.getLogger("test.ingest"))
    ingest.start()
    cfg = source_config(server, "nl", keepalive_s=5)
    source = MqttSource(cfg, Mapper(ENTERPRISE, cfg.subscribe, max_payload_bytes=cfg.max_payload_bytes), ingest,
                        metrics, logging.getLogger("test.mqtt"))
    t0 = ts_ms()
    messages = [(f"nl/m{i % 10}/s", json.dumps({"ts": t0 + i, "value": i}).encode(), 1) for i in range(3000)]
    try:
        with caplog.at_level(logging.INFO, logger="test.mqtt"), running(source):
            sampled = stall_spool_and_publish(server, source, ingest, metrics, tmp_path / "spool.db", messages,
                                              stall_s=3.0)
            wait_until(lambda: len(spooled_lines(tmp_path / "spool.db")) >= len(messages), "every message spooled",
                       timeout=30)
            wait_until(lambda: source._unacked == 0, "every message acknowledged")
            assert source.connected
    finally:
        ingest.stop()
        spool.close()
        server.stop()
    print(f"no broker limit: unacknowledged max {max(sampled.unacked)}, ingest queue max {max(sampled.queued)}")
    assert min(sampled.connected) == 1 and "lost the connection" not in caplog.text
    assert 300 <= max(sampled.unacked) <= 300 + 5  # read up to the bound, then paused
    lines = spooled_lines(tmp_path / "spool.db")
    assert len(lines) == len(messages) and len(set(lines)) == len(messages)
    assert "pausing reads from the broker" in caplog.text


# --- the network thread's own reading: chunked socket reads, PUBLISH decoder -----------------------------


def _publish_packet(topic: bytes, payload: bytes, *, qos: int, mid: int = 0, dup: bool = False,
                    retain: bool = False, properties: bytes | None = None) -> tuple[int, bytearray]:
    """(fixed header byte, the rest after the remaining length), as paho keeps a packet it read."""
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    if properties is not None:  # MQTT 5: properties' length as a variable byte integer, then them
        n, length = len(properties), b""
        while True:
            n, byte = n >> 7, n & 0x7F
            length += bytes([byte | (0x80 if n else 0)])
            if not n:
                break
        body += length + properties
    return 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0), bytearray(body + payload)


def _decoded(decode: Callable[[Any], Any], protocol: MQTTProtocolVersion, header: int,
             packet: bytearray) -> tuple[Any, ...]:
    client = source_module._Client(CallbackAPIVersion.VERSION2, protocol=protocol, manual_ack=True)
    seen: list[mqtt.MQTTMessage] = []
    client.on_message = lambda c, u, m: seen.append(m)
    client._in_packet["command"], client._in_packet["packet"] = header, bytearray(packet)
    try:
        rc = decode(client)
    except Exception as e:  # paho's MalformedPacket: both must raise it alike
        return (type(e).__name__,)
    fields = [(m._topic, bytes(m.payload), type(m.payload), m.qos, m.mid, m.dup, m.retain) for m in seen]
    return (rc, fields)


USER_PROPERTY = b"\x26" + b"\x00\x03key" + b"\x00\x96" + b"v" * 150  # > 127 bytes: a 2-byte length


@pytest.mark.parametrize(("protocol", "properties"), [
    (MQTTProtocolVersion.MQTTv311, None),  # properties exist in MQTT 5 only, and always there
    (MQTTProtocolVersion.MQTTv5, b"\x01\x01"),
    (MQTTProtocolVersion.MQTTv5, USER_PROPERTY),
])
@pytest.mark.parametrize("case", [
    dict(topic=b"plant/eq0001/sig1", payload=b'{"ts": 1, "value": 2.5}', qos=1, mid=7),
    dict(topic=b"plant/eq0001/sig1", payload=b"1000", qos=0),
    dict(topic=b"a/b", payload=b"", qos=1, mid=65535, dup=True, retain=True),
    dict(topic="纺织/机/速度".encode(), payload=b"x" * 70_000, qos=1, mid=1),
    dict(topic=b"bad/\xff\xfe", payload=b"1", qos=1, mid=3),  # invalid UTF-8: raised when the topic is read
    dict(topic=b"", payload=b"1", qos=1, mid=3),  # empty topic: paho's own handling
    dict(topic=b"q2/t", payload=b"1", qos=2, mid=9),  # QoS 2: paho's own handling
])
def test_the_publish_decoder_gives_what_paho_gives(protocol: MQTTProtocolVersion, properties: bytes | None,
                                                   case: dict[str, Any]) -> None:
    header, packet = _publish_packet(properties=properties, **case)
    ours = _decoded(lambda c: c._handle_publish(), protocol, header, packet)
    paho = _decoded(lambda c: mqtt.Client._handle_publish(c), protocol, header, packet)
    assert ours == paho


@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv311, MQTTProtocolVersion.MQTTv5])
@pytest.mark.parametrize("cut", [0, 1, 2, 3, 5])
def test_a_publish_that_does_not_add_up_is_refused_as_paho_refuses_it(protocol: MQTTProtocolVersion,
                                                                       cut: int) -> None:
    properties = USER_PROPERTY if protocol == MQTTProtocolVersion.MQTTv5 else None
    header, packet = _publish_packet(b"plant/eq1/s", b"", qos=1, mid=5, properties=properties)
    packet = packet[: cut if cut < 5 else 20]  # cut in the topic length, topic, packet id, properties
    ours = _decoded(lambda c: c._handle_publish(), protocol, header, packet)
    paho = _decoded(lambda c: mqtt.Client._handle_publish(c), protocol, header, packet)
    assert ours == paho


def test_the_chunked_socket_gives_the_byte_stream_as_it_came() -> None:
    """paho reads 1 byte, 1 byte, then n: served from one recv() of the socket, in any split."""
    left, right = socket.socketpair()
    try:
        buffered = source_module._BufferedSocket(left)
        stream = bytes(range(256)) * 2000  # 512 000 bytes: several chunks
        right.sendall(stream[:10])
        assert buffered.recv(1) == stream[:1] and buffered.buffered() == 9 and buffered.pending() == 9
        assert buffered.recv(20) == stream[1:10] and buffered.buffered() == 0
        sender = threading.Thread(target=right.sendall, args=(stream[10:],))
        sender.start()
        got = bytearray(stream[:10])
        sizes = [1, 1, 3, 70_000, 7, 64 * 1024, 2]
        while len(got) < len(stream):
            got += buffered.recv(sizes[len(got) % len(sizes)])
        sender.join()
        assert bytes(got) == stream
        left.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing buffered, nothing in the socket: as a socket says
            buffered.recv(1)
        right.close()
        assert buffered.recv(1) == b""  # the peer closed
    finally:
        left.close()
        right.close()


def test_whole_packets_come_out_of_the_chunked_socket_however_the_bytes_arrive() -> None:
    """read_packet against a stream split at every byte, then at random: each packet whole, None (and
    nothing pending) while one is incomplete, EOF and an over-long remaining length refused."""
    packets = [_publish_packet(b"t/%d" % i, b"v" * size, qos=1, mid=i + 1)
               for i, size in enumerate([0, 1, 120, 127, 128, 16_383, 16_384, 70_000, 5])]
    wire = b"".join(bytes([h]) + _remaining_length(len(body)) + body for h, body in packets)
    rng = random.Random(3)
    for splits in ([1] * 300 + [len(wire)], [rng.randrange(1, 9000) for _ in range(200)]):
        left, right = socket.socketpair()
        left.setblocking(False)
        buffered = source_module._BufferedSocket(left)
        got: list[tuple[int, bytes]] = []
        sent = 0
        for size in splits:
            if sent >= len(wire):
                break
            right.sendall(wire[sent:sent + size])
            sent += size
            while True:
                try:
                    packet = buffered.read_packet()
                except BlockingIOError:
                    assert buffered.pending() == 0  # an incomplete packet is not "pending"
                    break
                if packet is not None:  # None: part of a packet came, not all of it
                    assert type(packet[1]) is bytearray  # no limit: whole
                    got.append((packet[0], bytes(packet[1])))
        assert got == [(h, bytes(body)) for h, body in packets]
        right.close()
        with pytest.raises(EOFError):
            buffered.read_packet()
        left.close()
    left, right = socket.socketpair()
    right.sendall(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(ValueError):
        source_module._BufferedSocket(left).read_packet()
    left.close()
    right.close()


def _remaining_length(n: int) -> bytes:
    out = b""
    while True:
        n, byte = n >> 7, n & 0x7F
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


class ChunkedSocket:
    """A socket whose kernel buffer holds one 64 KiB chunk at a time (as a TCP read from a broker)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def recv(self, n: int) -> bytes:
        if self.pos >= len(self.data):
            raise BlockingIOError
        out = self.data[self.pos:self.pos + min(n, source_module.READ_CHUNK_BYTES)]
        self.pos += len(out)
        return out


def _read_all(sock: source_module._BufferedSocket) -> list[tuple[int, bytearray]]:
    packets = []
    while True:
        try:
            packet = sock.read_packet()
        except BlockingIOError:
            return packets
        if packet is not None:
            packets.append(packet)


def test_a_large_publish_is_read_in_linear_time() -> None:
    """A packet longer than one read grows by appending; concatenating the buffer at each 64 KiB
    read (as before) made 32 MiB cost seconds, past the keepalive: the broker sent it again, forever."""

    def seconds(size: int) -> float:
        header, body = _publish_packet(b"a/b", b"x" * size, qos=0)
        sock = source_module._BufferedSocket(ChunkedSocket(bytes([header]) + _remaining_length(len(body)) + body))
        began = time.monotonic()
        (packet,) = _read_all(sock)
        assert packet[1] == body
        return time.monotonic() - began

    small, large = seconds(4 * 2**20), seconds(32 * 2**20)  # 8 times the bytes
    # linear: about 8x (allow 4x more for noise); quadratic: about 64x and more
    assert large < max(32 * small, 1.0), f"8x the bytes took {large / small:.0f}x the time ({large:.1f}s)"


def test_a_publish_over_the_limit_is_discarded_as_it_arrives() -> None:
    """Past max_publish_bytes a PUBLISH keeps only its first PUBLISH_HEAD_BYTES (topic, packet id,
    the start of the payload); the rest is read and dropped, and the packets after it come whole."""
    big = _publish_packet(b"plant/a/b", b'{"value": "' + b"x" * 5 * 2**20 + b'"}', qos=1, mid=7)
    packets = [_publish_packet(b"t/1", b"1", qos=1, mid=6), big, _publish_packet(b"t/2", b"2", qos=0),
               (0x90, bytearray(b"\x00\x01\x01"))]  # a SUBACK after it
    wire = b"".join(bytes([h]) + _remaining_length(len(body)) + body for h, body in packets)
    got = _read_all(source_module._BufferedSocket(ChunkedSocket(wire), max_publish_bytes=300_000))
    assert [(h, bytes(body)) for h, body in got[:1] + got[2:]] == [(h, bytes(b)) for h, b in packets[:1] + packets[2:]]
    head = got[1][1]
    assert type(head) is source_module._Head and head.length == len(big[1])
    assert len(head) == source_module.PUBLISH_HEAD_BYTES and head == big[1][:len(head)]
    publish = source_module._decode_cut_publish(big[0], head, False)
    assert publish is not None and (publish[0], publish[2], publish[3]) == (b"plant/a/b", 7, 1)
    payload = publish[1]
    assert type(payload) is source_module._Cut and payload.size == 5 * 2**20 + 13
    assert payload.startswith(b'{"value": "x')


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_message_over_max_payload_bytes_is_rejected_unbuffered_and_acknowledged(
    mosquitto: MosquittoServer, prefix: str, protocol: str
) -> None:
    """Rejected as payload_too_large with its size, acknowledged (not sent again), the messages after it whole."""
    ingest = RecordingIngest()
    cfg = source_config(mosquitto, prefix, protocol=protocol, clean_session=True, max_payload_bytes=1024)
    t = ts_ms()
    big = json.dumps({"ts": t, "value": 1, "pad": "x" * 4 * 2**20}).encode()
    with running(make_source(cfg, ingest)):
        publish(mosquitto, [(f"{prefix}/m/s", json.dumps({"ts": t, "value": 0}).encode(), 1), (f"{prefix}/m/s", big, 1),
                            (f"{prefix}/m/s", json.dumps({"ts": t + 1, "value": 2}).encode(), 1)])
        subs = ingest.wait_for(3)
        assert [s.reasons() for s in subs] == [[], ["payload_too_large"], []]
        assert subs[1].result.rejections[0].detail == f"{len(big)} bytes, more than 1024"
        assert subs[1].payload.startswith(b'{"ts": ') and len(subs[1].payload) <= source_module.PUBLISH_HEAD_BYTES
        assert all(s.acked.wait(WAIT_S) for s in subs)
        time.sleep(0.5)
    assert len(ingest.submissions) == 3  # nothing sent again
    ingest.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_large_and_small_messages_interleaved_arrive_whole(mosquitto: MosquittoServer, prefix: str,
                                                           protocol: str) -> None:
    """Messages larger than one socket read (64 KiB) among small ones: each arrives whole, in order."""
    ingest = RecordingIngest()
    cfg = source_config(mosquitto, prefix, protocol=protocol, clean_session=True, subscribe=[
        {"topic": f"{prefix}/{{equipment}}/{{signal}}", "qos": 1, "value_type": "text", "timestamp_path": "ts"}])
    source = make_source(cfg, ingest)
    t = ts_ms()
    texts = [("x" * 60_000 if i % 50 == 7 else f"s{i}") for i in range(400)]
    with running(source):
        publish(mosquitto, [(f"{prefix}/m/s", json.dumps({"ts": t + i, "value": text}).encode(), 1)
                            for i, text in enumerate(texts)])
        subs = ingest.wait_for(len(texts))
    assert [s.result.points[0].fields["text"] for s in subs] == texts
    ingest.close()


def test_runs_of_publishes_keep_the_stream_order_around_other_packets() -> None:
    """The network thread hands consecutive PUBLISHes on as one run, at most ``run_room()`` long; a
    packet of another kind (here a PINGRESP) ends the run before it and is handled in its turn; a
    packet that does not add up ends the read as paho's reader would (a protocol error)."""
    left, right = socket.socketpair()
    left.setblocking(False)
    client = source_module._Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311,
                                   manual_ack=True)
    events: list[tuple[Any, ...]] = []
    client.on_publishes = lambda run: events.append(("run", list(run)))
    client.run_room = lambda: 3
    client._handle_pingresp = lambda: events.append(("pingresp",)) or mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    client._sock = source_module._BufferedSocket(left)

    def packet(topic: bytes, payload: bytes, *, qos: int, mid: int = 0, dup: bool = False,
               retain: bool = False) -> bytes:
        header, body = _publish_packet(topic, payload, qos=qos, mid=mid, dup=dup, retain=retain)
        assert len(body) < 128
        return bytes([header, len(body)]) + body

    right.sendall(packet(b"t/a", b"1", qos=1, mid=1) + packet(b"t/b", b"2", qos=0, retain=True)
                  + packet(b"t/c", b"3", qos=1, mid=2, dup=True) + packet(b"t/d", b"4", qos=1, mid=3)
                  + b"\xd0\x00"  # PINGRESP
                  + packet(b"t/e", b"5", qos=1, mid=4))
    try:
        assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        assert events == [
            ("run", [(b"t/a", b"1", 1, 1, False, False), (b"t/b", b"2", 0, 0, False, True),
                     (b"t/c", b"3", 2, 1, True, False)]),
            ("run", [(b"t/d", b"4", 3, 1, False, False)]),
            ("pingresp",),
            ("run", [(b"t/e", b"5", 4, 1, False, False)]),
        ]
        # a PUBLISH whose topic length runs past its end goes to paho's decoder, which refuses it
        events.clear()
        right.sendall(packet(b"t/f", b"6", qos=1, mid=5) + bytes([0x32, 3, 0, 9, 0x41]))
        assert client.loop_read() != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        assert events == [("run", [(b"t/f", b"6", 5, 1, False, False)])]
    finally:
        left.close()
        right.close()


def test_submit_many_drops_only_qos0_messages_past_the_queue_bound(tmp_path: Path) -> None:
    """A run handed to a full ingest: QoS 0 messages past the bound are dropped and counted by the
    caller; a message with an ack (QoS 1) is queued anyway, its broker holds it until the ack."""
    spool = Spool(tmp_path / "spool.db")
    ingest = Ingest(spool, AgentMetrics(), max_series=100, queue_max=2)  # not started: nothing drains
    mapper = Mapper(ENTERPRISE, [config.Subscription(topic="p/{equipment}/{signal}")])
    acks: list[int] = []

    def message(i: int, qos: int) -> tuple[str, bytes, MapResult, Callable[[], None] | None]:
        payload = json.dumps({"value": i}).encode()
        return (f"p/m/s{i}", payload, mapper.map(f"p/m/s{i}", payload, time.time_ns()),
                (lambda: acks.append(i)) if qos else None)

    try:
        run = [message(0, 0), message(1, 1), message(2, 0), message(3, 0), message(4, 1)]
        assert ingest.submit_many("p", run) == 2  # 2 and 3: the queue held 0 and 1 by then
        assert [sub.topic for sub in ingest._pending] == ["p/m/s0", "p/m/s1", "p/m/s4"]
        ingest.start()
        ingest.stop()
        assert sorted(acks) == [1, 4] and spool.stats().depth == 3
    finally:
        spool.close()


@pytest.mark.parametrize(("messages", "early"), [(150, True), (5, False)])
def test_a_large_group_commits_once_no_more_come_a_small_one_waits_the_interval(
    tmp_path: Path, messages: int, early: bool
) -> None:
    """commit_interval_ms 1000: 150 messages at once (a broker's full window) are committed as soon
    as a look finds no more, well within the second; 5 (a trickle) wait the whole second, so a
    trickle costs no more fsyncs than one per interval."""
    spool = Spool(tmp_path / "spool.db")
    ingest = Ingest(spool, AgentMetrics(), max_series=1000, commit_interval_ms=1000)
    mapper = Mapper(ENTERPRISE, [config.Subscription(topic="p/{equipment}/{signal}")])
    acked = threading.Event()
    run = []
    for i in range(messages):
        payload = json.dumps({"value": i}).encode()
        last = i == messages - 1
        run.append((f"p/m/s{i}", payload, mapper.map(f"p/m/s{i}", payload, time.time_ns()),
                    acked.set if last else (lambda: None)))
    ingest.start()
    try:
        t0 = time.monotonic()
        ingest.submit_many("p", run)
        assert acked.wait(5)
        waited = time.monotonic() - t0
    finally:
        ingest.stop()
        spool.close()
    assert (waited < 0.5) if early else (waited >= 0.9), waited
