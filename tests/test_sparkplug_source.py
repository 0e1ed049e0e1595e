"""fmc.sources.sparkplug against the real Mosquitto and a real edge node (tests/sparkplug_edge.py):
births, aliased data, a seq gap and the rebirth it asks for, NDEATH (the will) and a stale one,
DDEATH, STATE and its will, a host restart, bad input, ``fmc check``; and the agent's ingest, plant
model, spool and embedded store behind it."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from fmc.agent.ingest import Ingest
from fmc.agent.metrics import AgentMetrics
from fmc.agent.plugin import MapResult, SourceContext
from fmc.agent.runtime import Agent
from fmc.agent.spool import Spool
from fmc.cli.plugins import AgentConfig
from fmc.core.config import ConfigError, EnterpriseConfig
from fmc.core.lineprotocol import parse
from fmc.core.points import Point
from fmc.core.quality import BAD, BAD_NO_COMMUNICATION
from fmc.plant.config import PlantSections
from fmc.plant.model import PlantModel
from fmc.plant.rollups import Site
from fmc.sources.sparkplug import payload as spb
from fmc.sources.sparkplug.config import SparkplugSource
from fmc.sources.sparkplug.source import SparkplugHost, check_sparkplug, state_topic
from fmc.stores.embedded.config import EmbeddedSink as EmbeddedSinkConfig
from fmc.stores.embedded.store import EmbeddedSink, EmbeddedStore
from tests.ports import free_port
from tests.sparkplug_edge import HOST, Def, EdgeNode, encode

ENTERPRISE = EnterpriseConfig(id="e-330602-1", name="测试纺织", region="330602", industry="17")
WAIT_S = 5.0
LOOM = [Def("Inputs/Spindle Speed", 1, spb.DOUBLE, 0.0), Def("Status/Program", 2, spb.STRING, "O1000"),
        Def("Counts/Parts", 3, spb.INT32, -3), Def("Blob", 4, 17, "x")]
NODE = [Def("Energy/Total kWh", 10, spb.DOUBLE, 1000.0), Def("Misc/Thing", 11, spb.DOUBLE, 1.0),
        Def("Properties/Hardware", 12, spb.STRING, "arm")]


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@dataclass
class Submission:
    topic: str
    result: MapResult

    def reasons(self) -> list[str]:
        return [r.reason for r in self.result.rejections]


@dataclass
class RecordingIngest:
    """Takes every submission and acks it at once from a thread of its own, as the ingest's writer does."""

    submissions: list[Submission] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, source: str, topic: str, payload: bytes, result: MapResult, ack: Callable[[], None] | None,
               *, wait: bool = True) -> bool:
        assert not wait, "paho's network thread must not wait for the spool"
        with self.lock:
            self.submissions.append(Submission(topic, result))
        if ack is not None:
            threading.Thread(target=ack, daemon=True).start()
        return True

    def points(self, measurement: str | None = None) -> list[Point]:
        with self.lock:
            return [p for s in self.submissions for p in s.result.points
                    if measurement is None or p.measurement == measurement]

    def reasons(self) -> list[str]:
        with self.lock:
            return [r for s in self.submissions for r in s.reasons()]

    def on(self, kind: str) -> list[Submission]:
        with self.lock:
            return [s for s in self.submissions if f"/{kind}/" in s.topic]


def settings(port: int, group: str, host_id: str, **extra: Any) -> SparkplugSource:
    return SparkplugSource.model_validate({
        "name": "edge", "port": port, "group_ids": [group], "host_id": host_id, "keepalive_s": 5,
        "reconnect_min_s": 0.2, "reconnect_max_s": 0.5, "rebirth_retry_s": 0.5,
        "ignore_metrics": ["Properties/*"],
        "metric": [
            {"path": f"{group}/+/{{equipment}}/{{signal*}}"},
            {"path": f"{group}/{{meter}}/Energy/Total kWh", "level": "node", "kind": "meter",
             "carrier": "electricity"},
        ],
        **extra,
    })


@pytest.fixture
def ids() -> tuple[str, str]:
    """A group and a host id of this test's own on the shared broker."""
    tag = secrets.token_hex(3)
    return f"G{tag}", f"fmc-{tag}"


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], None]]]:
    todo: list[Callable[[], None]] = []
    yield todo
    for f in reversed(todo):
        f()


def start_host(cfg: SparkplugSource, ingest: Any, cleanup: list[Callable[[], None]],
               metrics: AgentMetrics | None = None) -> SparkplugHost:
    host = cfg.open_source(SourceContext(ENTERPRISE, ingest, metrics or AgentMetrics(), logging.getLogger("spb")))
    assert isinstance(host, SparkplugHost)
    host.start()
    cleanup.append(host.stop)
    wait_until(lambda: host.online, what="the host's STATE birth")
    return host


def edge(port: int, group: str, cleanup: list[Callable[[], None]], **kw: Any) -> EdgeNode:
    node = EdgeNode(port, group, kw.pop("node", "line-2"), {"loom-1": LOOM}, NODE, **kw).connect()
    cleanup.append(node.close)
    return node


class StateWatcher:
    """Every message on a host's STATE topic, retained ones included."""

    def __init__(self, port: int, host_id: str) -> None:
        self.messages: list[tuple[tuple[bool, int] | None, bool]] = []  # (parsed, retained)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{secrets.token_hex(3)}")
        self.client.on_message = lambda c, u, msg: self.messages.append((spb.parse_state(msg.payload), msg.retain))
        self.client.connect(HOST, port)
        self.client.subscribe(state_topic(host_id), qos=1)
        self.client.loop_start()

    def last(self) -> tuple[bool, int] | None:
        return self.messages[-1][0] if self.messages else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def signal_values(ingest: RecordingIngest, equipment: str, signal: str) -> list[Any]:
    return [p.fields.get("value", p.fields.get("text")) for p in ingest.points("signal")
            if p.tags["equipment"] == equipment and p.tags["signal"] == signal]


# --- births, data, bad input --------------------------------------------------------------------


def test_births_and_aliased_data_become_samples_and_bad_input_is_counted(mosquitto, ids, cleanup):
    group, host_id = ids
    ingest = RecordingIngest()
    host = start_host(settings(mosquitto.port, group, host_id, max_payload_bytes=4096), ingest, cleanup)
    node = edge(mosquitto.port, group, cleanup)
    wait_until(lambda: ingest.on("DBIRTH"), what="the DBIRTH")
    # the births' values are samples; metric names keep their slashes
    assert signal_values(ingest, "loom-1", "Inputs/Spindle Speed") == [0.0]
    assert signal_values(ingest, "loom-1", "Status/Program") == ["O1000"]
    assert signal_values(ingest, "loom-1", "Counts/Parts") == [-3.0]  # Int32 two's complement
    (reading,) = ingest.points("meter_reading")
    assert reading.tags == {"enterprise": ENTERPRISE.id, "meter": "line-2", "carrier": "electricity"}
    assert reading.fields == {"value": 1000.0, "quality": 0}
    # a Bytes metric is refused; an unmatched node metric is counted; bdSeq, Node Control and ignored ones are not
    assert sorted(ingest.reasons()) == ["metric_unmatched", "sparkplug_datatype"]

    ts_ms = int(time.time() * 1000) - 1000
    node.ddata("loom-1", {1: 412.5, 2: "O1234"}, timestamp_ms=ts_ms)
    wait_until(lambda: len(signal_values(ingest, "loom-1", "Inputs/Spindle Speed")) == 2, what="the DDATA")
    speed = [p for p in ingest.points("signal") if p.tags["signal"] == "Inputs/Spindle Speed"][-1]
    assert speed.fields == {"value": 412.5, "quality": 0} and speed.ts_ns == ts_ms * 1_000_000
    assert signal_values(ingest, "loom-1", "Status/Program")[-1] == "O1234"

    # a Sparkplug quality other than 192 is Bad; NaN, garbage, oversized and non-Sparkplug topics are counted
    topic = node.topic("DDATA", "loom-1")
    with node._lock:
        node.client.publish(topic, encode(node._next(), [(None, 1, None, 5.0)], quality={0: 500})).wait_for_publish(5)
    wait_until(lambda: len(signal_values(ingest, "loom-1", "Inputs/Spindle Speed")) == 3)
    assert [p for p in ingest.points("signal") if p.tags["signal"] == "Inputs/Spindle Speed"][-1].fields == \
        {"value": 5.0, "quality": BAD}
    node.ddata("loom-1", {1: math.nan})
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bad-{secrets.token_hex(3)}")
    publisher.connect(HOST, mosquitto.port)
    publisher.loop_start()
    cleanup.append(publisher.loop_stop)
    for t, data in [(topic, b"\xff\xfe not protobuf"), (topic, b"\x00" * 5000), (f"spBv1.0/{group}/NOPE/x", b"")]:
        publisher.publish(t, data, qos=1).wait_for_publish(5)
    wait_until(lambda: len(ingest.reasons()) >= 6, what="the rejections")
    assert sorted(ingest.reasons()) == ["metric_unmatched", "payload_not_protobuf", "payload_too_large",
                                        "sparkplug_datatype", "topic_unmatched", "value_not_finite"]
    assert host.events == {}  # no gap: the garbage was not in the node's sequence


def test_a_metric_name_that_is_not_utf8_is_refused_alone_and_the_other_metrics_of_its_message_kept(
        mosquitto, ids, cleanup):
    """A GBK tag name (an edge node set to the Windows code page) comes as bytes out of protobuf: it was a
    TypeError in the mapper, and the whole message, good metrics too, was lost as internal_error."""
    group, host_id = ids
    ingest = RecordingIngest()
    start_host(settings(mosquitto.port, group, host_id), ingest, cleanup)
    node = edge(mosquitto.port, group, cleanup)
    wait_until(lambda: ingest.on("DBIRTH"), what="the DBIRTH")
    n_before = len(ingest.submissions)
    # a DDATA with a good metric (alias 1, Inputs/Spindle Speed) and one by name whose name is GBK
    placeholder = "Inputs/XXXXXX"
    gbk = "Inputs/温度".encode("gbk")  # b"Inputs/\xce\xc2\xb6\xc8": not UTF-8
    with node._lock:
        data = encode(node._next(), [(None, 1, None, 412.5), (placeholder, None, spb.DOUBLE, 21.5)],
                      value_types={1: spb.DOUBLE})
        raw = data.replace(placeholder.encode(), gbk.ljust(len(placeholder), b"_"))
        node.client.publish(node.topic("DDATA", "loom-1"), raw, qos=0).wait_for_publish(5)
    wait_until(lambda: len(ingest.submissions) > n_before, what="the DDATA")
    time.sleep(0.2)
    (sub,) = ingest.submissions[n_before:]
    assert sub.reasons() == ["name_not_utf8"], sub.result.rejections
    assert "not valid UTF-8" in sub.result.rejections[0].detail
    assert 412.5 in signal_values(ingest, "loom-1", "Inputs/Spindle Speed")


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_seq_gap_asks_for_a_rebirth_and_the_edge_node_births_again(mosquitto, ids, cleanup, protocol):
    group, host_id = ids
    ingest = RecordingIngest()
    metrics = AgentMetrics()
    host = start_host(settings(mosquitto.port, group, host_id, protocol=protocol), ingest, cleanup, metrics)
    node = edge(mosquitto.port, group, cleanup)
    wait_until(lambda: ingest.on("DBIRTH"))
    node.ddata("loom-1", {1: 10.0}, skip=3)  # three messages lost
    node.wait_rebirths(1)
    wait_until(lambda: len(ingest.on("DBIRTH")) == 2, what="the births that answer the request")
    assert host.events == {"seq_gap": 1, "rebirth_requested": 1}
    assert metrics.value("fmc_source_events_total", {"source": "edge", "event": "rebirth_requested"}) == 1
    assert 10.0 in signal_values(ingest, "loom-1", "Inputs/Spindle Speed")  # the message after the gap counts
    node.ddata("loom-1", {1: 11.0})
    wait_until(lambda: 11.0 in signal_values(ingest, "loom-1", "Inputs/Spindle Speed"))
    assert host.events == {"seq_gap": 1, "rebirth_requested": 1} and node.rebirths == 1


class Proto3Edge(EdgeNode):
    """An edge node whose encoder leaves out fields equal to their default: seq 0 is not on the wire."""

    def _next(self) -> int | None:  # type: ignore[override]
        seq = super()._next()
        return None if seq == 0 else seq


def test_an_nbirth_whose_seq_0_is_left_out_is_a_birth(mosquitto, ids, cleanup):
    """Encoders that skip default values leave out seq 0, on every NBIRTH: fmc took it as seq_invalid,
    so the node never had a birth in force and all its data was sparkplug_no_birth, rebirth after rebirth."""
    group, host_id = ids
    ingest = RecordingIngest()
    host = start_host(settings(mosquitto.port, group, host_id), ingest, cleanup)
    node = Proto3Edge(mosquitto.port, group, "line-2", {"loom-1": LOOM}, NODE).connect()
    cleanup.append(node.close)
    wait_until(lambda: ingest.on("DBIRTH"), what="the DBIRTH")
    node.ddata("loom-1", {1: 412.5})
    wait_until(lambda: ingest.on("DDATA"), what="the DDATA")
    time.sleep(0.3)
    assert "sparkplug_no_birth" not in ingest.reasons(), ingest.reasons()
    assert 412.5 in signal_values(ingest, "loom-1", "Inputs/Spindle Speed")
    assert host.events == {} and host.session.online() == {(group, "line-2"): ["loom-1"]}


def test_ndeath_takes_the_equipment_offline_at_once_and_a_stale_ndeath_is_ignored(mosquitto, ids, cleanup):
    group, host_id = ids
    ingest = RecordingIngest()
    host = start_host(settings(mosquitto.port, group, host_id), ingest, cleanup)
    old = edge(mosquitto.port, group, cleanup, bd_seq=0, client_id=f"old-{group}")
    wait_until(lambda: len(ingest.on("DBIRTH")) == 1)
    # the edge node came back on a new connection (bdSeq 1) before the broker noticed the old one died
    new = edge(mosquitto.port, group, cleanup, bd_seq=1, client_id=f"new-{group}")
    wait_until(lambda: len(ingest.on("DBIRTH")) == 2)
    old.kill()
    wait_until(lambda: host.events.get("stale_death") == 1, what="the old connection's will")
    assert not [p for p in ingest.points("signal") if p.fields["quality"] == BAD_NO_COMMUNICATION]
    new.ddata("loom-1", {1: 20.0})
    wait_until(lambda: 20.0 in signal_values(ingest, "loom-1", "Inputs/Spindle Speed"))
    assert "seq_gap" not in host.events  # the sequence of the live session goes on
    before = time.time_ns()
    new.kill()
    wait_until(lambda: host.events.get("node_death") == 1, what="the NDEATH will")
    offline = [p for p in ingest.points("signal") if p.fields == {"quality": BAD_NO_COMMUNICATION}]
    # every signal of the node's devices, once each, at the host's time of the death
    assert sorted(p.tags["signal"] for p in offline) == ["Blob", "Counts/Parts", "Inputs/Spindle Speed",
                                                         "Status/Program"]
    assert all(p.tags["equipment"] == "loom-1" and before <= p.ts_ns <= time.time_ns() for p in offline)
    assert host.session.online() == {}


def test_ddeath_takes_its_device_offline_at_the_payloads_time(mosquitto, ids, cleanup):
    group, host_id = ids
    ingest = RecordingIngest()
    host = start_host(settings(mosquitto.port, group, host_id), ingest, cleanup)
    node = EdgeNode(mosquitto.port, group, "line-3", {"loom-1": LOOM, "loom-2": LOOM[:1]}).connect()
    cleanup.append(node.close)
    wait_until(lambda: len(ingest.on("DBIRTH")) == 2)
    node.ddeath("loom-2")
    wait_until(lambda: host.events.get("device_death") == 1)
    offline = [p for p in ingest.points("signal") if p.fields == {"quality": BAD_NO_COMMUNICATION}]
    assert [(p.tags["equipment"], p.tags["signal"]) for p in offline] == [("loom-2", "Inputs/Spindle Speed")]
    assert host.session.online() == {(group, "line-3"): ["loom-1"]}


def test_a_ddeath_stamped_1970_by_a_clockless_plc_takes_the_device_offline_at_its_receipt(mosquitto, ids, cleanup):
    """A DDEATH's time gets the range check of values: a PLC without an RTC battery boots at 1970, and
    its device's "no communication" samples were stored dated 1970-01-01."""
    group, host_id = ids
    ingest = RecordingIngest()
    host = start_host(settings(mosquitto.port, group, host_id), ingest, cleanup)
    node = EdgeNode(mosquitto.port, group, "line-3", {"loom-1": LOOM}).connect()
    cleanup.append(node.close)
    wait_until(lambda: ingest.on("DBIRTH"))
    before = time.time_ns()
    with node._lock:
        node._publish(node.topic("DDEATH", "loom-1"), encode(node._next(), [], timestamp_ms=3_600_000))  # 1970, 01:00Z
    wait_until(lambda: host.events.get("device_death") == 1)
    offline = [p for p in ingest.points("signal") if p.fields == {"quality": BAD_NO_COMMUNICATION}]
    assert offline and all(before <= p.ts_ns <= time.time_ns() for p in offline), sorted({p.ts_ns for p in offline})


def test_what_the_births_in_force_feed_is_live_until_a_death_or_the_hosts_reconnect(mosquitto, ids, cleanup):
    """Sparkplug reports by exception: the equipment and meters of a birth in force are live (the agent
    confirms them to the plant model), not after their death, while the host is away, nor after its
    reconnect until the node is born again."""
    group, host_id = ids
    ingest = RecordingIngest()
    host = start_host(settings(mosquitto.port, group, host_id, reconnect_min_s=1.0, reconnect_max_s=1.0),
                      ingest, cleanup)
    assert host.live_equipment() == set() and host.live_meters() == set()
    node = EdgeNode(mosquitto.port, group, "line-2", {"loom-1": LOOM, "loom-2": LOOM[:1]}, NODE).connect()
    cleanup.append(node.close)
    wait_until(lambda: host.live_equipment() == {"loom-1", "loom-2"}, what="the births")
    assert host.live_meters() == {"line-2"}  # the node's Energy/Total kWh
    node.ddeath("loom-2")
    wait_until(lambda: host.live_equipment() == {"loom-1"}, what="the DDEATH")
    assert host.live_meters() == {"line-2"}
    sock = host._client.socket()  # the host's link drops: nothing is live while it is away ...
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)
    wait_until(lambda: not host.connected, what="the host's disconnect")
    assert host.live_equipment() == set() and host.live_meters() == set()
    rebirths = node.rebirths
    wait_until(lambda: host.online, timeout=10, what="the host's reconnect")
    # ... nor after, until the node is born again: the host asks the nodes it knew for their births at
    # once, since a node whose machines stand still sends no data to ask with
    node.wait_rebirths(rebirths + 1)
    wait_until(lambda: host.live_equipment() == {"loom-1", "loom-2"}, what="the births after the reconnect")
    node.kill()
    wait_until(lambda: host.events.get("node_death") == 1, what="the NDEATH")
    assert host.live_equipment() == set() and host.live_meters() == set()


# --- STATE, restarts ---------------------------------------------------------------------------


def test_state_is_retained_repeated_when_contradicted_and_replaced_by_the_will(mosquitto, ids, cleanup):
    group, host_id = ids
    ingest = RecordingIngest()
    host = start_host(settings(mosquitto.port, group, host_id), ingest, cleanup)
    watcher = StateWatcher(mosquitto.port, host_id)
    cleanup.append(watcher.close)
    wait_until(lambda: watcher.messages, what="the retained STATE")
    online, birth_ts = watcher.last()  # type: ignore[misc]
    assert online is True and watcher.messages[0][1] is True  # retained
    assert abs(birth_ts - time.time() * 1000) < 60_000
    # someone says we are offline: the host says it is online again
    watcher.client.publish(state_topic(host_id), spb.state_payload(False, 1), qos=1, retain=True)
    wait_until(lambda: host.events.get("state_reasserted") == 1 and watcher.last() == (True, birth_ts))
    # the host's connection dies without a DISCONNECT: the broker publishes its will, with the birth's time
    sock = host._client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)
    wait_until(lambda: watcher.last() == (False, birth_ts), what="the will")
    # paho reconnects: a new CONNECT, a new will time, a new birth
    wait_until(lambda: host.online and watcher.last() is not None and watcher.last()[0] is True, timeout=10)
    assert watcher.last()[1] >= birth_ts  # type: ignore[index]


def test_a_host_restart_says_offline_then_asks_for_births_again(mosquitto, ids, cleanup):
    group, host_id = ids
    cfg = settings(mosquitto.port, group, host_id)
    first = RecordingIngest()
    host = start_host(cfg, first, cleanup)
    node = edge(mosquitto.port, group, cleanup)
    wait_until(lambda: first.on("DBIRTH"))
    watcher = StateWatcher(mosquitto.port, host_id)
    cleanup.append(watcher.close)
    host.stop()
    wait_until(lambda: watcher.last() is not None and watcher.last()[0] is False, what="the offline STATE")
    node.ddata("loom-1", {1: 1.0})  # while no host listens: gone (QoS 0, clean session)
    second = RecordingIngest()
    restarted = start_host(cfg, second, cleanup)
    wait_until(lambda: watcher.last() is not None and watcher.last()[0] is True)
    node.ddata("loom-1", {1: 2.0})  # the new host has no birth for it: asks for one
    node.wait_rebirths(1)
    wait_until(lambda: second.on("DBIRTH"), what="the births after the restart")
    assert second.reasons() == ["sparkplug_no_birth", "metric_unmatched", "sparkplug_datatype"]
    node.ddata("loom-1", {1: 3.0})
    wait_until(lambda: 3.0 in signal_values(second, "loom-1", "Inputs/Spindle Speed"))
    # the retained offline STATE of the first run reaches the new host as it subscribes: it answers online
    assert restarted.events == {"no_birth": 1, "rebirth_requested": 1, "state_reasserted": 1}
    assert watcher.last() is not None and watcher.last()[0] is True


def test_data_of_a_session_the_host_missed_while_reconnecting_is_not_resolved_with_the_old_aliases(
        mosquitto, ids, cleanup):
    """The host's link drops (clean session: nothing is queued for it); meanwhile the edge node dies and
    comes back with a new bdSeq and new aliases. Its next DDATA was taken as a gap in the old session
    and resolved with the old aliases: a feed rate stored as the spindle speed."""
    group, host_id = ids
    ingest = RecordingIngest()
    host = start_host(settings(mosquitto.port, group, host_id, reconnect_min_s=2.0, reconnect_max_s=2.0),
                      ingest, cleanup)
    old = EdgeNode(mosquitto.port, group, "line-2", {"loom-1": LOOM}, bd_seq=0, client_id=f"a-{group}").connect()
    cleanup.append(old.close)
    wait_until(lambda: ingest.on("DBIRTH"), what="the first session's births")
    sock = host._client.socket()  # the host's link drops (it reconnects in 2 s) ...
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)
    wait_until(lambda: not host.connected, what="the host's disconnect")
    # ... meanwhile the edge node dies (NDEATH will) and comes back, re-configured: new bdSeq, new aliases
    old.kill()
    new_loom = [Def("Inputs/Feed Rate", 1, spb.DOUBLE, 0.0), Def("Inputs/Spindle Speed", 7, spb.DOUBLE, 0.0)]
    new = EdgeNode(mosquitto.port, group, "line-2", {"loom-1": new_loom}, bd_seq=1, client_id=f"b-{group}").connect()
    cleanup.append(new.close)
    assert not host.connected, "the test needs the births to happen while the host is away"
    wait_until(lambda: host.online, timeout=10, what="the host's reconnect")
    new.ddata("loom-1", {1: 77.0})  # Inputs/Feed Rate = 77 in the new session
    new.wait_rebirths(1)  # the host asks the nodes it knew for their births; before them, data is refused
    wait_until(lambda: len(ingest.on("DBIRTH")) >= 2 and ingest.on("DDATA"), what="the births and the data")
    # before the new births the data is refused; after them it is the feed rate: never the spindle speed
    assert 77.0 not in signal_values(ingest, "loom-1", "Inputs/Spindle Speed")
    assert ("sparkplug_no_birth" in ingest.on("DDATA")[0].reasons()
            or 77.0 in signal_values(ingest, "loom-1", "Inputs/Feed Rate"))
    new.ddata("loom-1", {1: 78.0})
    wait_until(lambda: 78.0 in signal_values(ingest, "loom-1", "Inputs/Feed Rate"))


# --- fmc check -----------------------------------------------------------------------------------


def test_check_lists_the_edge_nodes_online_and_says_what_to_do_when_none(mosquitto, ids, cleanup):
    group, host_id = ids
    cfg = settings(mosquitto.port, group, host_id)
    silent = asyncio.run(check_sparkplug(cfg, timeout=1.0))
    assert not silent.ok and silent.undecided and "check group_ids" in silent.detail
    node = edge(mosquitto.port, group, cleanup)
    stop = threading.Event()

    def keep_publishing() -> None:  # report by exception: a value now and then
        while not stop.wait(0.1):
            node.ddata("loom-1", {1: 1.0})

    threading.Thread(target=keep_publishing, daemon=True).start()
    cleanup.append(stop.set)
    heard = asyncio.run(check_sparkplug(cfg, timeout=2.0))
    assert heard.ok, heard.detail
    assert f"1 edge node(s) online: {group}/line-2 (loom-1)" in heard.detail  # asked for its births, got them
    refused = asyncio.run(check_sparkplug(settings(free_port(), group, host_id), timeout=1.0))
    assert not refused.ok and not refused.undecided and "connection refused" in refused.detail
    with socket.socket() as quiet:  # accepts TCP (the kernel does), never speaks MQTT: a TLS port, say
        quiet.bind(("127.0.0.1", 0))
        quiet.listen()
        began = time.monotonic()
        mute = asyncio.run(check_sparkplug(settings(quiet.getsockname()[1], group, host_id), timeout=0.5))
        assert time.monotonic() - began < 3
    assert not mute.ok and "no CONNACK" in mute.detail and "[sparkplug.tls]" in mute.detail, mute.detail


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "setting", "says"), [
    ({"group_ids": ["Plant/1"]}, "sparkplug[0].group_ids", "without '+', '/' or '#'"),
    ({"host_id": "a/b"}, "sparkplug[0].host_id", "write the primary host id the edge nodes are set up with"),
    ({"metric": [{"path": "G/+/{equipment}/{sig*}"}]}, "sparkplug[0].metric[0]",
     "the path 'G/+/{equipment}/{sig*}' captures no such level; name a level '{signal}' in the path"),
    ({"metric": [{"path": "G/{meter}/kWh", "kind": "meter", "carrier": "coal_gas"}]}, "sparkplug[0].metric[0]",
     "is not one of"),
    ({"metric": [{"path": "G/{x*}/y"}]}, "sparkplug[0].metric[0].path", "must be the last level"),
    ({"group_ids": []}, "sparkplug[0].group_ids", "at least 1"),
])
def test_bad_settings_name_the_file_the_setting_and_the_fix(tmp_path, change, setting, says):
    from fmc.cli.plugins import load_config

    section = {"name": "edge", "group_ids": ["G"], "host_id": "fmc-1",
               "metric": [{"path": "G/+/{equipment}/{signal*}"}], **change}
    lines = [f"{k} = {_toml(v)}" for k, v in section.items() if k != "metric"]
    maps = "".join("\n[[sparkplug.metric]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in m.items())
                   for m in section["metric"])
    path = tmp_path / "agent.toml"
    path.write_text('[enterprise]\nid = "e1"\nname = "n"\nregion = "330602"\nindustry = "17"\n'
                    '[sink]\ntype = "embedded"\n[[sparkplug]]\n' + "\n".join(lines) + maps, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    text = e.value.render()
    assert str(path) in text and f"setting `{setting}`" in text and says in text, text
    assert "Traceback" not in text


def _toml(v: Any) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


# --- through the agent -------------------------------------------------------------------------------

CST = timezone(timedelta(hours=8))
S = 10**9


class Clock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


def test_a_meter_metric_reaches_consumption_daily_in_the_embedded_store(mosquitto, ids, cleanup, tmp_path):
    """The host into the agent's ingest, plant model and spool, drained by the embedded store's sink:
    a kWh counter on the edge node, one NDATA every 5 minutes of simulated time across a local midnight."""
    group, host_id = ids
    t0 = int(datetime(2026, 3, 1, 23, 0, tzinfo=CST).timestamp()) * S
    sections = PlantSections.model_validate({
        "plant": {"interval_minutes": 15},
        "meter": [{"id": "line-2", "carrier": "electricity", "kind": "counter", "unit": "kWh",
                   "max_rate_per_h": 1000, "max_gap_s": 600}],
    })
    clock = Clock(t0)
    spool = Spool(tmp_path / "spool.db")
    cleanup.append(spool.close)
    plant = PlantModel(Site(ENTERPRISE.id, "330602", "17", "Asia/Shanghai"), sections, [], start_ns=t0)
    ingest = Ingest(spool, AgentMetrics(), max_series=1000, commit_interval_ms=0, plant=plant, clock=clock,
                    snapshot_every_s=0.0)
    ingest.start()
    cleanup.append(ingest.stop)
    start_host(settings(mosquitto.port, group, host_id), ingest, cleanup)
    node = EdgeNode(mosquitto.port, group, "line-2", {}, [Def("Energy/Total kWh", 10, spb.DOUBLE, None)]).connect()
    cleanup.append(node.close)

    def committed() -> list[Point]:
        return [parse(line) for line in spool.read_batch(100_000).lines]

    for k in range(13):  # 23:00 … 24:00, 10 kWh per 5 minutes
        ts = t0 + k * 300 * S
        clock.ns = ts
        node.ndata({10: 5000.0 + 10 * k}, timestamp_ms=ts // 1_000_000)
        wait_until(lambda ts=ts: any(p.measurement == "meter_reading" and p.ts_ns == ts for p in committed()))
    clock.ns = t0 + 3600 * S + 600 * S + 16 * 60 * S  # past midnight + max_gap_s + one interval
    wait_until(lambda: any(p.measurement == "consumption_daily" for p in committed()), what="consumption_daily")
    ingest.stop()
    batch = spool.read_batch(100_000)
    sink = EmbeddedSink(EmbeddedSinkConfig(type="embedded", path=tmp_path / "store.db"))
    outcome = asyncio.run(sink.write(batch.lines))
    asyncio.run(sink.aclose())
    assert outcome.written == len(batch.lines) and not outcome.refused
    store = EmbeddedStore(tmp_path / "store.db")
    cleanup.append(store.close)
    (daily,) = store.points("consumption_daily")
    assert daily.tags["carrier"] == "electricity"
    assert round(daily.fields["amount"], 9) == 120.0  # 12 steps of 10 kWh, the birth's null counts nothing
    assert round(daily.fields["tce"], 9) == round(120.0 * 0.1229 / 1000, 9)


def loom_agent(tmp_path: Path, port: int, group: str, host_id: str, **sections: Any) -> Agent:
    """An agent with the embedded store, one Sparkplug source and the NC loom ``loom-1``."""
    return Agent(AgentConfig.model_validate({
        "enterprise": {"id": ENTERPRISE.id, "name": "n", "region": "330602", "industry": "17"},
        "sink": {"type": "embedded", "path": str(tmp_path / "store.db")},
        "spool": {"path": str(tmp_path / "spool.db"), "commit_interval_ms": 5},
        "metrics": {"enabled": False},
        "sparkplug": [settings(port, group, host_id).model_dump(mode="json")],
        "equipment": [{"id": "loom-1", "nc": True, "kind": "loom"}],
        **sections,
    }), shutdown_flush_s=5.0)


async def test_a_born_device_that_reports_by_exception_stays_online(mosquitto, ids, tmp_path):
    """A machine standing still (speed 0 over a night) sends nothing: its device, born and not dead,
    went offline after offline_after_s, and its networked time and the NC figures with it."""
    group, host_id = ids
    agent = loom_agent(tmp_path, mosquitto.port, group, host_id,
                       plant={"offline_after_s": 3, "sample_delay_s": 0})
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    node: EdgeNode | None = None
    try:
        await asyncio.to_thread(wait_until, lambda: agent.sources and agent.sources[0].online)  # type: ignore[attr-defined]
        node = await asyncio.to_thread(lambda: EdgeNode(mosquitto.port, group, "line-2", {"loom-1": LOOM}).connect())
        await asyncio.to_thread(wait_until, lambda: agent.plant.trackers["loom-1"].state != "offline")
        # nothing changes, so the edge node publishes nothing; it stays connected, its device born
        await asyncio.sleep(6.0)  # twice offline_after_s
        assert agent.sources[0].session.online() == {(group, "line-2"): ["loom-1"]}  # type: ignore[attr-defined]
        still = agent.plant.trackers["loom-1"].state
        await asyncio.to_thread(node.ddeath, "loom-1")  # its death still takes it offline at once
        await asyncio.to_thread(wait_until, lambda: agent.plant.trackers["loom-1"].state == "offline")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        if node is not None:
            node.close()
    assert still != "offline", "a device with its birth in force and no death was taken offline"


async def test_the_agent_stores_sparkplug_signals_and_takes_the_equipment_offline_at_a_death(mosquitto, ids,
                                                                                                tmp_path):
    group, host_id = ids
    agent = loom_agent(tmp_path, mosquitto.port, group, host_id)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    node: EdgeNode | None = None
    try:
        await asyncio.to_thread(wait_until, lambda: agent.sources and agent.sources[0].online)  # type: ignore[attr-defined]
        node = await asyncio.to_thread(lambda: EdgeNode(mosquitto.port, group, "line-2", {"loom-1": LOOM}).connect())
        await asyncio.to_thread(node.ddata, "loom-1", {1: 300.0})
        await asyncio.sleep(0.3)
        await asyncio.to_thread(node.kill)
        await asyncio.to_thread(wait_until, lambda: agent.sources[0].events.get("node_death") == 1)  # type: ignore[attr-defined]
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        if node is not None:
            node.client.loop_stop()
    store = EmbeddedStore(tmp_path / "store.db")
    try:
        speeds = [p.fields.get("value") for p in store.points("signal")
                  if p.tags.get("signal") == "Inputs/Spindle Speed"]
        states = [p.fields["state"] for p in store.points("equipment_state") if p.tags["equipment"] == "loom-1"]
    finally:
        store.close()
    assert 300.0 in speeds and speeds[-1] is None  # the value, then the death's "no communication"
    assert states[0] != "offline" and states[-1] == "offline"  # at once, not after offline_after_s
