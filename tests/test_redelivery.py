"""Redeliveries of messages without a timestamp: committed once, counted in fmc_redeliveries_total.

A message without ``timestamp_path`` takes its receive time, so a broker's redelivery of a message
that was committed but whose PUBACK was lost would be a second point, and an ``interval`` meter
would count that consumption twice. Real agent processes, a real mosquitto; a TCP relay between
them loses the agent's PUBACKs on purpose (``tests/tcprelay.py``), so the broker redelivers
exactly the messages it was sent while they were lost, with the DUP flag.
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from fmc.agent.ingest import PLANT_STATE_KEY
from fmc.agent.spool import Spool
from fmc.stores.embedded.store import EmbeddedStore
from tests.agent_process import AgentProcess, agent_config
from tests.ports import free_port
from tests.servers.mosquitto import MosquittoServer
from tests.tcprelay import TcpRelay

TOPIC = "interval/natural_gas/gas1"
# an interval meter: each message is the gas used since the previous one, and has no timestamp
METER = """
  [[mqtt.subscribe]]
  topic = "interval/{carrier}/{meter}"
  kind = "meter"
  qos = 1
  value_path = "amount"
"""
PLANT = """
[[meter]]
id = "gas1"
carrier = "natural_gas"
kind = "interval"
unit = "m3"
"""


def amounts(n: int, seed: int) -> list[float]:
    """Few distinct values (quarters, exact in binary): many messages are identical to another."""
    rng = random.Random(seed)
    return [rng.choice((0.25, 0.5, 1.0, 1.0, 2.0)) for _ in range(n)]


def publish(port: int, values: list[float], per_second: float | None = None) -> None:
    """Publish ``values`` at QoS 1, all at once or ``per_second`` (in steps of 50 messages)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{secrets.token_hex(4)}")
    client.max_inflight_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = []
        for i, v in enumerate(values):
            infos.append(client.publish(TOPIC, json.dumps({"amount": v}).encode(), qos=1))
            if per_second and i % 50 == 49:
                time.sleep(50 / per_second)
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def relay(mosquitto_private: MosquittoServer) -> Iterator[TcpRelay]:
    r = TcpRelay(mosquitto_private.host, mosquitto_private.port)
    yield r
    r.close()


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for a in started:
        a.stop_quietly()


def start_agent(tmp_path: Path, mqtt_port: int, agents: list[AgentProcess], metrics_port: int) -> AgentProcess:
    """An agent with the interval meter, connected to the broker (or the relay) at ``mqtt_port``."""
    cfg = agent_config(tmp_path, mqtt_port=mqtt_port, client_id="redelivery", metrics_port=metrics_port,
                       extra_subscriptions=METER)
    cfg.write_text(cfg.read_text() + PLANT)
    agent = AgentProcess(cfg, metrics_port).start()
    agents.append(agent)
    agent.wait_metric("fmc_source_connected", 1, source="plant")
    return agent


def wait_accepted(agent: AgentProcess, n: int) -> None:
    agent.wait_metric("fmc_points_accepted_total", n, source="plant")


def counted(tmp_path: Path) -> tuple[float, list[float]]:
    """After a clean stop: the interval meter's consumption (the intervals in the store plus the
    open ones in the plant state) and the values of the raw meter_reading points in the store."""
    with Spool(tmp_path / "spool.db") as spool:
        assert spool.stats().depth == 0, "the agent did not drain its spool"
        state = json.loads(spool.state_get(PLANT_STATE_KEY) or "{}")
    open_amount = sum(row[1] for row in state["meters"]["gas1"]["open"])
    with EmbeddedStore(tmp_path / "store.db", readonly=True) as store:
        closed = sum(p.fields["amount"] for p in store.points("meter_interval", {"meter": "gas1"}))
        readings = [p.fields["value"] for p in store.points("meter_reading", {"meter": "gas1"})]
    return open_amount + closed, readings


def assert_counted_once(tmp_path: Path, sent: list[float]) -> None:
    consumption, readings = counted(tmp_path)
    print(f"{len(sent)} messages, {sum(sent)} m³ sent; stored {len(readings)} readings, {sum(readings)} m³; "
          f"the interval meter counted {consumption} m³")
    assert sorted(readings) == sorted(sent)  # every message once: identical payloads included
    assert consumption == pytest.approx(sum(sent), abs=1e-9)


def test_redeliveries_after_a_sigkill_are_committed_once(tmp_path, mosquitto_private, relay, agents):
    port = free_port()
    first, lost_acks, while_down = amounts(1, 1), amounts(40, 2), amounts(25, 3)
    agent = start_agent(tmp_path, relay.port, agents, port)
    publish(mosquitto_private.port, first)
    wait_accepted(agent, 1)
    # the agent commits these and acknowledges them, but the PUBACKs never reach the broker
    relay.swallow_upstream()
    publish(mosquitto_private.port, lost_acks)
    wait_accepted(agent, 1 + len(lost_acks))
    agent.kill()
    relay.forward()
    publish(mosquitto_private.port, while_down)  # queued in the session: new, no DUP flag

    agent = start_agent(tmp_path, relay.port, agents, port)
    agent.wait_metric("fmc_messages_received_total", len(lost_acks) + len(while_down), source="plant")
    wait_accepted(agent, len(while_down))
    assert agent.wait_metric("fmc_redeliveries_total", len(lost_acks), source="plant") == len(lost_acks)
    time.sleep(0.5)  # anything counted twice would show now
    assert agent.metric("fmc_points_accepted_total", source="plant") == len(while_down)
    assert agent.metric("fmc_redeliveries_total", source="plant") == len(lost_acks)
    assert agent.terminate() == 0
    assert_counted_once(tmp_path, first + lost_acks + while_down)


def test_redeliveries_after_a_broker_restart_are_committed_once(tmp_path, mosquitto_private, relay, agents):
    port = free_port()
    first, lost_acks, after = amounts(1, 4), amounts(30, 5), amounts(20, 6)
    agent = start_agent(tmp_path, relay.port, agents, port)
    publish(mosquitto_private.port, first)
    wait_accepted(agent, 1)
    relay.swallow_upstream()
    publish(mosquitto_private.port, lost_acks)
    wait_accepted(agent, 1 + len(lost_acks))
    mosquitto_private.stop()  # SIGTERM: the broker saves the session, these messages unacknowledged
    relay.forward()
    mosquitto_private.start()
    # the same agent process reconnects and gets them again, flagged DUP
    assert agent.wait_metric("fmc_redeliveries_total", len(lost_acks), source="plant") == len(lost_acks)
    publish(mosquitto_private.port, after)
    wait_accepted(agent, 1 + len(lost_acks) + len(after))
    time.sleep(0.5)
    assert agent.metric("fmc_points_accepted_total", source="plant") == 1 + len(lost_acks) + len(after)
    assert agent.metric("fmc_redeliveries_total", source="plant") == len(lost_acks)
    assert agent.terminate() == 0
    assert_counted_once(tmp_path, first + lost_acks + after)


def test_sigkills_at_random_moments_of_a_stream_count_each_message_once(tmp_path, mosquitto_private, agents):
    """No relay: the PUBACKs in flight when the agent dies are what the broker redelivers."""
    port = free_port()
    sent = amounts(3000, 7)
    rng = random.Random(7)
    cfg = agent_config(tmp_path, mqtt_port=mosquitto_private.port, client_id="redelivery", metrics_port=port,
                       extra_subscriptions=METER)
    cfg.write_text(cfg.read_text() + PLANT)
    agent = AgentProcess(cfg, port).start()
    agents.append(agent)
    agent.wait_metric("fmc_source_connected", 1, source="plant")
    time.sleep(0.3)  # subscribed
    # paced: the stream must outlast the three kills and restarts (about 1.5 s each), however fast
    # an agent drains the broker's queue
    publisher = threading.Thread(target=publish, args=(mosquitto_private.port, sent, 400.0), daemon=True)
    publisher.start()
    recognised = 0.0
    for _ in range(3):
        agent.wait_metric("fmc_points_accepted_total", 1, source="plant", poll_s=0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        recognised += agent.metric("fmc_redeliveries_total", source="plant")
        agent.kill()
        agent = AgentProcess(cfg, port).start()
        agents.append(agent)
    publisher.join(60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if agent.metric("fmc_messages_received_total", source="plant") and _all_stored(tmp_path, len(sent)):
            break
        time.sleep(0.2)
    time.sleep(0.5)
    recognised += agent.metric("fmc_redeliveries_total", source="plant")
    assert agent.terminate() == 0
    assert_counted_once(tmp_path, sent)
    print(f"{recognised:.0f} redeliveries recognised over 3 SIGKILLs")


def _all_stored(tmp_path: Path, n: int) -> bool:
    try:
        with EmbeddedStore(tmp_path / "store.db", readonly=True) as store:
            return store.count("meter_reading", {"meter": "gas1"}) >= n
    except Exception:
        return False


def test_a_new_message_after_the_broker_lost_its_state_is_not_taken_for_a_redelivery(
        tmp_path, mosquitto_private, agents):
    """mosquitto killed (no persistence saved): the agent's next connection is a new session, whose packet
    ids start again at 1. Its first message (the same payload as the old session's packet 1) reaches an
    agent that dies before committing it; the restarted agent resumes the session and gets it again with
    DUP. It was taken for a redelivery of the old session's packet 1 and dropped: a reading lost."""
    port = free_port()
    agent = start_agent(tmp_path, mosquitto_private.port, agents, port)

    def subscribed() -> int:
        return mosquitto_private.log().count("Received SUBSCRIBE from redelivery")

    deadline = time.monotonic() + 10
    while not subscribed():
        assert time.monotonic() < deadline, "the agent did not subscribe"
        time.sleep(0.02)
    publish(mosquitto_private.port, [1.0])  # packet id 1, committed and recorded
    wait_accepted(agent, 1)
    before = subscribed()
    mosquitto_private.kill()
    mosquitto_private.start()
    deadline = time.monotonic() + 20
    while subscribed() <= before:  # the agent is back, in a new session
        assert time.monotonic() < deadline, "the agent did not reconnect"
        time.sleep(0.02)
    # the spool locked by another process: the agent cannot commit what it gets now
    lock = sqlite3.connect(tmp_path / "spool.db", timeout=30)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        publish(mosquitto_private.port, [1.0])  # packet id 1 again, a new reading
        agent.wait_metric("fmc_messages_received_total", 2, source="plant")
        agent.kill()
    finally:
        lock.rollback()
        lock.close()
    agent = AgentProcess(agent.config, port).start()
    agents.append(agent)
    wait_accepted(agent, 1)  # sent again with DUP into the resumed session, and stored
    time.sleep(0.5)
    assert agent.metric("fmc_redeliveries_total", source="plant") == 0
    assert agent.terminate() == 0
    assert_counted_once(tmp_path, [1.0, 1.0])
