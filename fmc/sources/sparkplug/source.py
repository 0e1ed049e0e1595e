"""The Sparkplug B host application: paho-mqtt client, STATE, births and deaths, rebirth requests.

Connection (Sparkplug 3.0, primary host): a clean session (the specification requires it; a host
that comes back asks for births instead of relying on queued messages), the will
``spBv1.0/STATE/<host_id>`` ``{"online": false, "timestamp": t}`` retained at QoS 1, where ``t`` is
the time of that CONNECT; after the SUBACK the birth ``{"online": true, "timestamp": t}`` on the same
topic, retained, QoS 1. Subscriptions: ``spBv1.0/<group>/#`` per group and the host's own STATE
topic (another client's offline STATE on it is answered with the birth again).

Messages are handled in paho's network thread, which must never block: each is decoded, run through
the host's state machine (``session.HostSession``) and the mapping, then handed to the ingest with
``wait=False`` — a QoS 1 message is acknowledged (manual ack) only after its points are committed to
the spool, like the MQTT source. Rebirth requests (NCMD, QoS 0) are published from the same thread.

User documentation: ``fmc/sources/sparkplug/README.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fmc.agent.metrics import AgentMetrics
from fmc.agent.plugin import CheckResult, IngestPort, MapResult, Rejection
from fmc.core.backoff import backoff_delay
from fmc.sources.mqtt.broker import (
    check_handshake,
    client_options,
    describe_connect_error,
    describe_refusal,
    set_credentials,
)
from fmc.sources.sparkplug import config
from fmc.sources.sparkplug.mapping import Mapper
from fmc.sources.sparkplug.payload import NAMESPACE, decode, parse_state, rebirth_request, state_payload
from fmc.sources.sparkplug.session import DEVICE_KINDS, HostSession, Kind, Outcome

LOG_EVERY_S = 30.0
ACK_GRACE_MAX_S = 1.0
_KINDS = {k.value: k for k in Kind}
_BIRTHS_AND_DEATHS = frozenset({Kind.NBIRTH, Kind.DBIRTH, Kind.NDEATH, Kind.DDEATH})
_NOTHING_LIVE: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())


def state_topic(host_id: str) -> str:
    return f"{NAMESPACE}/STATE/{host_id}"


def parse_topic(topic: str) -> tuple[Kind, str, str, str | None] | None:
    """(kind, group, edge node, device) of a Sparkplug B topic, or None."""
    parts = topic.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
        return None
    kind = _KINDS.get(parts[2])
    if kind is None or (len(parts) == 5) != (kind in DEVICE_KINDS):
        return None
    return kind, parts[1], parts[3], parts[4] if len(parts) == 5 else None


def build_client(cfg: config.SparkplugSource, client_id: str, *, manual_ack: bool,
                 reconnect: bool = True) -> mqtt.Client:
    """A paho client with a clean session (Sparkplug hosts must), credentials and TLS; not connected."""
    client = mqtt.Client(**client_options(cfg, client_id, clean=True, manual_ack=manual_ack, reconnect=reconnect))
    set_credentials(client, cfg)
    return client


def connect_options(cfg: config.SparkplugSource) -> dict[str, Any]:
    """MQTT 5: clean start and a session that ends with the connection (Sparkplug 3.0)."""
    if cfg.protocol != "5":
        return {}
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    return {"clean_start": True, "properties": props}


class _Ack:
    """Acknowledges one QoS 1 message after its commit, on the connection it came on only."""

    __slots__ = ("generation", "mid", "owner")

    def __init__(self, owner: SparkplugHost, mid: int, generation: int) -> None:
        self.owner = owner
        self.mid = mid
        self.generation = generation

    def __call__(self) -> None:
        self.owner.ack(self)


class SparkplugHost:
    """One broker connection as a Sparkplug primary host application."""

    def __init__(self, cfg: config.SparkplugSource, mapper: Mapper, ingest: IngestPort, metrics: AgentMetrics,
                 logger: logging.Logger) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._mapper = mapper
        self._ingest = ingest
        self._log = logger
        self._metrics = metrics
        self._received = metrics.received.labels(cfg.name)
        self._connected_gauge = metrics.connected.labels(cfg.name)
        self._dropped = metrics.rejected.labels(cfg.name, "spool_busy")
        self._client_id = cfg.client_id or f"fmc-{cfg.name}-{secrets.token_hex(4)}"
        self._state_topic = state_topic(cfg.host_id)
        self._filters = [(f"{NAMESPACE}/{g}/#", cfg.qos) for g in cfg.group_ids] + [(self._state_topic, 1)]
        self.session = HostSession(rebirth_retry_s=cfg.rebirth_retry_s)
        # what the births in force feed, per node, and all of it (equipment, meters): kept by paho's
        # thread, read by the agent's (one reference swapped, so it reads either the old pair or the new)
        self._live_by_node: dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]] = {}
        self._ask_for_births: set[tuple[str, str]] = set()  # nodes known before a reconnect (_on_connect)
        self._live = _NOTHING_LIVE
        # counts of what the host saw, by event ("seq_gap", "rebirth_requested", "node_death", …)
        self.events: dict[str, int] = {}
        self._rng = random.Random()
        self._attempt = 0
        self._lock = threading.Lock()
        self._acks_done = threading.Condition(self._lock)
        self._generation = 0
        self._link_up = False
        self._unacked = 0
        self._stopping = False
        self._started = False
        self._connected = False
        self._online = False  # our STATE birth went out on this connection
        self._will_ms = 0
        self._pending_subscribe: int | None = None
        self._last_warning: dict[str, float] = {}
        self._problem = "not connected yet"
        self._client = build_client(cfg, self._client_id, manual_ack=True)
        self._set_will()
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._paho_log = logger.getChild("paho")
        self._client.on_log = self._on_log

    # --- the Source interface -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def online(self) -> bool:
        """Connected, subscribed, and the STATE birth published."""
        return self._online

    @property
    def problem(self) -> str:
        return self._problem

    def live_equipment(self) -> set[str]:
        """Equipment fed by the metrics of a node or device whose birth is in force, while connected.
        Sparkplug reports by exception (an edge node publishes a metric when it changes) and a death
        says when the last values stop holding: a machine standing still sends nothing, yet is
        online. Not after its NDEATH or DDEATH, nor while the host is away or until the node's first
        birth after the host's reconnect (``HostSession.forget_births``)."""
        if not self._connected:
            return set()
        return set(self._live[0])

    def live_meters(self) -> set[str]:
        """Meters fed by the births in force, likewise: an unchanged register is not sent again."""
        if not self._connected:
            return set()
        return set(self._live[1])

    def _update_live(self, group: str, node: str) -> None:
        """After a birth or a death of the node: what its births in force feed now."""
        equipment, meters = self._mapper.targets(group, node, self.session.born((group, node)))
        if equipment or meters:
            self._live_by_node[(group, node)] = (frozenset(equipment), frozenset(meters))
        else:
            self._live_by_node.pop((group, node), None)
        all_equipment: set[str] = set()
        all_meters: set[str] = set()
        for node_equipment, node_meters in self._live_by_node.values():
            all_equipment |= node_equipment
            all_meters |= node_meters
        self._live = (frozenset(all_equipment), frozenset(all_meters))

    def start(self) -> None:
        if self._started:
            raise RuntimeError(f"sparkplug source {self.name!r} was already started")
        self._started = True
        self._connected_gauge.set(0)
        self._client.reconnect_delay_set(self.cfg.reconnect_min_s, self.cfg.reconnect_min_s)  # type: ignore[arg-type]
        self._client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, **connect_options(self.cfg))
        self._client.loop_start()
        self._log.info("connecting to %s:%d as Sparkplug host %r (groups %s)", self.cfg.host, self.cfg.port,
                       self.cfg.host_id, ", ".join(self.cfg.group_ids))

    def stop(self, timeout: float = 5.0) -> None:
        """Publish the offline STATE, let pending acks go out, disconnect, end paho's thread."""
        if not self._started:
            return
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._acks_done.wait_for(lambda: self._unacked == 0, timeout=min(ACK_GRACE_MAX_S, timeout / 2))
            link_up = self._link_up
            self._link_up = False
        if link_up:
            # a host that leaves on purpose says so first (the will is only for an unplanned loss)
            info = self._client.publish(self._state_topic, state_payload(False, self._will_ms), qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # not queued: the will says it instead
                info.wait_for_publish(max(0.1, min(2.0, deadline - time.monotonic())))
        self._client.disconnect()
        stopper = threading.Thread(target=self._client.loop_stop, name=f"fmc-spb-stop-{self.name}", daemon=True)
        stopper.start()
        stopper.join(max(0.1, deadline - time.monotonic()))
        self._connected = False
        self._online = False
        self._connected_gauge.set(0)
        self._log.info("stopped")

    # --- acks -------------------------------------------------------------------------------------

    def ack(self, a: _Ack) -> None:
        # paho's ack() only queues the PUBACK for the network thread (thread-safe); never for a
        # message of an earlier connection, whose packet id the broker may have reused
        with self._lock:
            self._unacked -= 1
            if self._unacked == 0:
                self._acks_done.notify_all()
            if self._link_up and a.generation == self._generation:
                self._client.ack(a.mid, 1)

    # --- paho callbacks (network thread) ----------------------------------------------------------

    def _set_will(self) -> None:
        # the will's timestamp is the CONNECT's; the STATE birth repeats it (Sparkplug 3.0)
        self._will_ms = time.time_ns() // 1_000_000
        self._client.will_set(self._state_topic, state_payload(False, self._will_ms), qos=1, retain=True)

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and not self._stopping and not text.startswith("Client is not connected"):
            self._paho_log.warning("%s", text)
        else:
            self._paho_log.debug("%s", text)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode,
                    properties: Properties | None) -> None:
        if reason.is_failure:
            self._problem = describe_refusal(reason)
            self._log.warning("%s:%d: %s", self.cfg.host, self.cfg.port, self._problem)
            return
        with self._lock:
            self._generation += 1
            self._link_up = True
        # a clean session: nothing was kept for us while away, and a node may have died and been born
        # again with other aliases meanwhile; its next data asks for its births (HostSession), and the
        # nodes known until now are asked once subscribed: a node whose machines stand still sends no
        # data to ask with, and its equipment would go offline after offline_after_s
        self._ask_for_births = self.session.forget_births()
        self._live_by_node.clear()
        self._live = _NOTHING_LIVE
        self._problem = ""
        self._attempt = 0
        self._connected = True
        self._connected_gauge.set(1)
        self._log.info("connected to %s:%d", self.cfg.host, self.cfg.port)
        rc, mid = client.subscribe(self._filters)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            self._log.warning("could not send SUBSCRIBE (%s); it is sent again on the next connection", rc)
        self._pending_subscribe = mid

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      properties: Properties | None) -> None:
        if mid != self._pending_subscribe:
            return
        for (topic_filter, _), reason in zip(self._filters, reasons, strict=False):
            if reason.is_failure:
                self._log.error("the broker refused the subscription to %r (%s): check its ACL for this user",
                                topic_filter, reason)
        # subscribed: now the birth (a host publishes its STATE only once its subscriptions are in place)
        client.publish(self._state_topic, state_payload(True, self._will_ms), qos=1, retain=True)
        self._online = True
        self._log.info("online as primary host %r", self.cfg.host_id)
        known, self._ask_for_births = self._ask_for_births, set()
        for group, node in sorted(known):
            self.request_rebirth(group, node)
            self._count("rebirth_requested")
        if known:
            self._log.info("asked the %d edge node(s) known before the reconnect for their births", len(known))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags, reason: ReasonCode,
                       properties: Properties | None) -> None:
        with self._lock:
            self._link_up = False
            stopping = self._stopping
        was_connected = self._connected
        self._connected = False
        self._online = False
        self._connected_gauge.set(0)
        if stopping:
            return
        self._set_will()  # the next CONNECT registers a will with its own time
        delay = self._schedule_retry()
        if was_connected or not self._problem:
            self._problem = f"lost the connection to {self.cfg.host}:{self.cfg.port} ({reason})"
        self._log.warning("lost the connection to %s:%d (%s); reconnecting in %.1fs", self.cfg.host, self.cfg.port,
                          reason, delay)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        error = sys.exc_info()[1]  # paho calls this inside its `except OSError:`
        delay = self._schedule_retry()
        self._problem = describe_connect_error(error, self.cfg.host, self.cfg.port, "sparkplug")
        self._log.warning("%s; retrying in %.1fs", self._problem, delay)

    def _schedule_retry(self) -> float:
        delay = backoff_delay(self._attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)
        self._attempt += 1
        self._client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]
        return delay

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        received_ns = time.time_ns()
        self._received.inc()
        with self._lock:
            if self._stopping:
                return  # not acked: a clean session forgets it, the next start asks for births
            generation = self._generation
            if msg.qos > 0:
                self._unacked += 1
        ack = _Ack(self, msg.mid, generation) if msg.qos > 0 else None
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = "<topic is not valid UTF-8>"
            result = MapResult([], [Rejection("topic_not_utf8", "the topic is not valid UTF-8")])
        else:
            try:
                result = self._handle(topic, msg.payload, received_ns)
            except Exception as e:  # a bug must not end paho's thread: record it, keep the connection
                self._log.exception("handling a message on %r failed", topic)
                result = MapResult([], [Rejection("internal_error", f"{type(e).__name__}: {e}"[:200])])
        if result is None:  # our own STATE, a command: nothing to store
            if ack is not None:
                ack()
            return
        try:
            taken = self._ingest.submit(self.name, topic, msg.payload, result, ack, wait=False)
        except Exception as e:
            self._warn_now_and_then("ingest", "the ingest did not take a message on %r: %s: %s", topic,
                                    type(e).__name__, e, level=logging.ERROR)
            if ack is not None:
                with self._lock:
                    self._unacked -= 1
            return
        if not taken:
            self._dropped.inc()
            self._warn_now_and_then("qos0", "QoS 0 messages dropped: the spool cannot keep up "
                                    "(fmc_rejected_total{reason=\"spool_busy\"} counts them)")

    def _handle(self, topic: str, payload: bytes, received_ns: int) -> MapResult | None:
        if topic == self._state_topic:
            state = parse_state(payload)
            if state is not None and not state[0] and self._online and not self._stopping:
                # another client (or our own old will) says we are offline: we are not
                self._client.publish(self._state_topic, state_payload(True, self._will_ms), qos=1, retain=True)
                self._count("state_reasserted")
            return None
        if len(payload) > self.cfg.max_payload_bytes:
            return MapResult([], [Rejection("payload_too_large",
                                            f"{len(payload)} bytes, more than {self.cfg.max_payload_bytes}")])
        parsed = parse_topic(topic)
        if parsed is None:
            return MapResult([], [Rejection("topic_unmatched", f"{topic[:120]!r} is not a Sparkplug B topic")])
        kind, group, node, device = parsed
        if kind in (Kind.NCMD, Kind.DCMD):
            return None
        decoded = decode(payload)
        if isinstance(decoded, Rejection):
            return MapResult([], [decoded])
        outcome = self.session.handle(kind, group, node, device, decoded, time.monotonic())
        if kind in _BIRTHS_AND_DEATHS:
            self._update_live(group, node)
        self._after(outcome, group, node)
        points, rejections = self._mapper.points(group, node, device, outcome.metrics, decoded.timestamp_ms,
                                                 received_ns)
        if outcome.offline:
            # NDEATH: the host's own time (the will was written at CONNECT); DDEATH: its payload's,
            # unless the edge node's clock is off (a PLC without a clock at 1970, one in the future)
            ts_ns = received_ns
            if kind == Kind.DDEATH and decoded.timestamp_ms is not None:
                sent_ns = decoded.timestamp_ms * 1_000_000
                if self._mapper.plausible(sent_ns, received_ns):
                    ts_ns = min(sent_ns, received_ns)
            points.extend(self._mapper.offline_points(group, node, outcome.offline, ts_ns))
        return MapResult(points, outcome.rejections + rejections)

    def _after(self, outcome: Outcome, group: str, node: str) -> None:
        for event in outcome.events:
            self._count(event)
        if "seq_gap" in outcome.events or "alias_unknown" in outcome.events:
            self._warn_now_and_then(f"gap:{group}/{node}", "edge node %s/%s: %s; asking for its births again",
                                    group, node, ", ".join(outcome.events))
        if "node_death" in outcome.events:
            self._log.info("edge node %s/%s died (NDEATH): its equipment is offline", group, node)
        if outcome.rebirth:
            self.request_rebirth(group, node)

    def request_rebirth(self, group: str, node: str) -> None:
        """NCMD Node Control/Rebirth = true (QoS 0, not retained, as Sparkplug wants)."""
        self._client.publish(f"{NAMESPACE}/{group}/NCMD/{node}", rebirth_request(time.time_ns() // 1_000_000), qos=0)

    def _count(self, event: str) -> None:
        self.events[event] = self.events.get(event, 0) + 1
        self._metrics.source_events.labels(self.name, event).inc()

    def _warn_now_and_then(self, kind: str, message: str, *args: Any, level: int = logging.WARNING) -> bool:
        now = time.monotonic()
        if now - self._last_warning.get(kind, -LOG_EVERY_S) < LOG_EVERY_S:
            return False
        self._last_warning[kind] = now
        self._log.log(level, message, *args)
        return True


# --- fmc check --------------------------------------------------------------------------------------


CHECK_LISTEN_MAX_S = 3.0


async def check_sparkplug(cfg: config.SparkplugSource, timeout: float = 5.0) -> CheckResult:
    """Connect, subscribe, listen briefly: which edge nodes and devices are online.

    Uses a client id of its own and publishes no STATE (the agent is the primary host, not the
    check). A node heard without a birth is asked for one, so its devices show up within the window.
    """
    return await asyncio.to_thread(_check_blocking, cfg, timeout)


def _check_blocking(cfg: config.SparkplugSource, timeout: float) -> CheckResult:
    name = f"sparkplug:{cfg.name}"
    where = f"{cfg.host}:{cfg.port}"
    deadline = time.monotonic() + timeout
    try:
        client = build_client(cfg, f"fmc-check-{secrets.token_hex(6)}", manual_ack=False, reconnect=False)
    except (OSError, ValueError) as e:
        return CheckResult(name, False, f"TLS settings: {e}")
    session = HostSession(rebirth_retry_s=3600)
    state: dict[str, Any] = {}
    asked: list[str] = []
    lock = threading.Lock()

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == state_topic(cfg.host_id):
            state["host"] = parse_state(msg.payload)
            return
        parsed = parse_topic(msg.topic)
        if parsed is None or parsed[0] in (Kind.NCMD, Kind.DCMD):
            return
        decoded = decode(msg.payload)
        if isinstance(decoded, Rejection):
            return
        kind, group, node, device = parsed
        with lock:
            outcome = session.handle(kind, group, node, device, decoded, time.monotonic())
        if outcome.rebirth:
            asked.append(f"{group}/{node}")
            c.publish(f"{NAMESPACE}/{group}/NCMD/{node}", rebirth_request(time.time_ns() // 1_000_000), qos=0)

    client.on_message = on_message
    filters = [(f"{NAMESPACE}/{g}/#", cfg.qos) for g in cfg.group_ids] + [(state_topic(cfg.host_id), 1)]
    try:
        problem = check_handshake(client, cfg, "sparkplug", connect_options(cfg), filters, timeout)
        if problem is None:
            # listen: births, data (a node heard without a birth is asked for one)
            time.sleep(max(0.0, min(CHECK_LISTEN_MAX_S, deadline - time.monotonic() - 0.5)))
            with lock:
                online = session.online()
                waiting = session.waiting()
    finally:
        client.disconnect()
        client.loop_stop()
    if problem is not None:
        return CheckResult(name, False, problem)
    host = state.get("host")
    host_text = ("; the primary host is online (an agent runs)" if host and host[0] else "")
    groups = ", ".join(cfg.group_ids)
    if not online and not waiting:
        return CheckResult(name, False, undecided=True, detail=(
            f"connected to {where}, but no edge node of group(s) {groups} published within the listening time"
            f"{host_text}: edge nodes that report by exception, or wait for the primary host {cfg.host_id!r} to be "
            "online, stay silent until the agent runs; if `fmc run` sees none either, check group_ids and the "
            "edge nodes' broker and group settings"))
    parts = [f"{g}/{n}" + (f" ({', '.join(devices)})" if devices else "") for (g, n), devices in sorted(online.items())]
    parts += [f"{g}/{n} (rebirth requested, no birth yet)" for g, n in sorted(waiting)]
    return CheckResult(name, True, f"connected to {where}; {len(online) + len(waiting)} edge node(s) online: "
                                   f"{'; '.join(parts)}{host_text}")
