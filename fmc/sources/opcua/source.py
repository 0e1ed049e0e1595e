"""OPC UA source: one session per server, subscriptions and polling, every value to the ingest.

How it runs. ``start()`` starts a thread with an asyncio loop of its own (as paho's network thread
does for MQTT) and returns; ``stop(timeout)`` ends it. The loop runs ``run(stop_event)``, which
may also be awaited directly in any loop (tests, the benchmark). The thread keeps asyncua's
decoding and a blocking ``ingest.submit()`` (full queue: backpressure) off the agent's loop.

One session at a time. ``run`` connects, sets the session up, watches it, closes it, waits a
capped, jittered backoff and starts over: there is never a second session to the same endpoint,
however often the link drops, and each session asks the server to forget it after
``session_timeout_s`` if we vanish without closing it.

Every (re)connect: GetEndpoints, pick the endpoint with our policy and mode (or say what the
server offers), verify the server certificate against the pin or the trusted folder, open the
session, read the NamespaceArray and resolve every namespace alias by URI (a restarted server may
number them differently), resolve NodeIds and browse paths, then create one subscription per
(sampling interval, queue size) with monitored items in batches. Nodes the server will not
monitor (BadTooManyMonitoredItems, BadNotSupported, ...) and ``mode = "poll"`` nodes are read
with Read requests in batches instead.

The watchdog ends a session that is open but silent: no publish response (data or keep-alive)
for ``watchdog_s`` while subscriptions exist, the server's CurrentTime not advancing for
``watchdog_s``, or a CurrentTime read left unanswered. While no session is up, nothing is
emitted (the state tracker sees the silence) and ``fmc_source_connected{source}`` is 0.

The hot path (``_Session.on_publish``) works on asyncua's raw ``PublishResult`` rather than
its ``Subscription`` objects, which create a task and a ``Node`` per notification, and the
session's publish loop decodes the data changes itself (``publish.py``: one tuple a change, not
asyncua's five objects); the tags and the encoded series of each node are made once per
configuration.

Where the rest lives (all in ``fmc/sources/opcua/``): ``connection.py`` (failures named for a
person, certificates, endpoint choice, opening and closing the client), ``nodes.py`` (namespaces,
NodeIds, browse paths, resolution), ``publish.py`` (PublishResponses decoded by hand),
``convert.py`` (values to points, the hot path),
``session.py`` (``_Session``), ``check.py`` (``fmc check``), ``tools.py`` (``fmc opcua cert`` and
``fmc opcua browse``), ``config.py`` (the settings, and the plugin's entry).

User documentation: ``fmc/sources/opcua/README.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from fmc.agent.metrics import AgentMetrics
from fmc.agent.plugin import IngestPort, MapResult, Rejection
from fmc.core.backoff import backoff_delay
from fmc.core.config import EnterpriseConfig
from fmc.core.lineprotocol import LineProtocolError
from fmc.core.loop_thread import LoopThread
from fmc.core.points import Point
from fmc.sources.opcua import config as schema
from fmc.sources.opcua.connection import _NEEDS_A_PERSON, OpcUaError, describe_failure, open_client
from fmc.sources.opcua.convert import _NodePlan
from fmc.sources.opcua.session import _Session

STABLE_SESSION_S = 10.0  # a session that lasted this long resets the reconnect backoff
T = TypeVar("T")


class OpcUaSource:
    """One OPC UA server: one session at a time, values to the ingest, reconnects forever."""

    def __init__(
        self,
        cfg: schema.OpcUaSource,
        enterprise: EnterpriseConfig,
        ingest: IngestPort,
        metrics: AgentMetrics,
        logger: logging.Logger,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.log = logger
        self._ingest = ingest
        self._received = metrics.received.labels(cfg.name)
        self._connected_gauge = metrics.connected.labels(cfg.name)
        try:
            self._plans = {id(node): _NodePlan(node, enterprise.id) for node in cfg.node}
        except LineProtocolError as e:
            raise ValueError(f"opcua source {cfg.name!r}: {e.detail}") from None
        self._rng = random.Random()
        self._connected = False
        self._live: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        self._thread = LoopThread(f"fmc-opcua-{self.name}", f"the OPC UA source {self.name!r}", logger)
        self._namespace_indexes: dict[str, int] = {}
        self._kept: _Session | None = None  # a session whose connection broke, to take over again
        # observable state (tests, the demo, fmc check)
        self.sessions_opened = 0  # new sessions
        self.sessions_resumed = 0  # sessions taken over again after a broken connection
        self.messages_republished = 0  # notification messages lost in flight, asked for again on resuming
        self.last_error: str | None = None
        self.subscribed_nodes = 0
        self.polled_nodes = 0

    @property
    def connected(self) -> bool:
        """True while a session is set up (subscriptions created, polling started)."""
        return self._connected

    def live_equipment(self) -> set[str]:
        """Equipment read through a live subscription: it reports changes only, so an unchanged
        value is still good data while the session stands. Only equipment a node of the session
        reads now: not one whose node the server no longer has, nor a polled one resting."""
        if not self._connected:
            return set()
        return set(self._live[0])

    def live_meters(self) -> set[str]:
        """Meters read from this server while the session stands: a subscription reports changes
        only, and a poll of an unchanged register returns its old source timestamp, so an
        unchanged reading still holds now (the plant model carries it on: fmc.plant.model). Only
        meters a node of the session reads now."""
        if not self._connected:
            return set()
        return set(self._live[1])

    def set_live(self, equipment: frozenset[str], meters: frozenset[str]) -> None:
        """What the current session reads (``_Session.publish_live``, in the source's loop thread; one
        reference swapped, so the agent's thread reads either the old pair or the new)."""
        self._live = (equipment, meters)

    @property
    def namespace_indexes(self) -> dict[str, int]:
        """alias -> namespace index on the server, as resolved for the current session."""
        return dict(self._namespace_indexes)

    def plan_of(self, node: schema.OpcUaNode) -> _NodePlan:
        return self._plans[id(node)]

    # --- thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Run the source in a thread of its own (own asyncio loop) and return at once."""
        if not self._thread.started:
            self._connected_gauge.set(0)
        self._thread.start(self.run)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the session (the server deletes our subscriptions) and end the thread."""
        if self._thread.started:
            self._thread.stop(timeout)
            self._set_connected(False)

    # --- main loop --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect with capped jittered backoff, until ``stop`` is set."""
        cfg = self.cfg
        self.log.info("connecting to %s (%s/%s, %s identity, %d node(s))", cfg.endpoint, cfg.security_policy,
                      cfg.security_mode, cfg.identity, len(cfg.node))
        attempt = 0
        try:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    session = await _unless_stopped(stop, self._session())
                except OpcUaError as e:
                    self.last_error = e.message
                    delay = self._next_delay(attempt)
                    attempt += 1
                    level = logging.ERROR if e.cause in _NEEDS_A_PERSON else logging.WARNING
                    self.log.log(level, "no session with %s: %s; retrying in %.1fs", cfg.endpoint, e.message, delay)
                    await _sleep_unless(stop, delay)
                    continue
                except Exception as e:  # not foreseen (a bug, asyncua's): retry rather than end the source
                    self.last_error = f"{type(e).__name__}: {e}"
                    delay = self._next_delay(attempt)
                    attempt += 1
                    self.log.exception("no session with %s (unexpected error); retrying in %.1fs", cfg.endpoint,
                                       delay)
                    await _sleep_unless(stop, delay)
                    continue
                if session is None:  # stopped while connecting
                    break
                self._set_connected(True)
                try:
                    reason = await session.supervise(stop)
                except Exception as e:  # not foreseen: a new session rather than the end of the source
                    self.log.exception("watching the session with %s failed", cfg.endpoint)
                    reason, session.resumable = f"watching the session failed: {type(e).__name__}: {e}", False
                self._set_connected(False)
                if reason is None:  # stopping
                    await session.close()
                    break
                self.last_error = reason
                if session.resumable:
                    await session.suspend()
                    self._kept = session
                else:
                    await session.close()
                if time.monotonic() - began >= STABLE_SESSION_S:
                    attempt = 0  # a flapping link keeps its growing backoff; a stable session resets it
                delay = self._next_delay(attempt)
                attempt += 1
                self.log.warning("lost the session with %s: %s; reconnecting in %.1fs", cfg.endpoint, reason, delay)
                await _sleep_unless(stop, delay)
        finally:
            self._set_connected(False)
            kept, self._kept = self._kept, None
            if kept is not None:
                await kept.close()
            self.log.info("stopped")

    def _next_delay(self, attempt: int) -> float:
        return backoff_delay(attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)

    async def _session(self) -> _Session:
        """The kept session taken over again, or else a new one, set up; OpcUaError on failure."""
        previous, self._kept = self._kept, None
        if previous is not None:
            try:
                if await previous.resume():
                    self.sessions_resumed += 1
                    self.log.info("session with %s re-activated: %d node(s) subscribed, %d polled",
                                  self.cfg.endpoint, previous.subscribed, len(previous.polled))
                    return previous
            except OpcUaError as e:
                if e.cause in ("no_server", "timeout", "connection_closed"):
                    self._kept = previous  # the server is away: try to take the session over next time
                    raise
                self.log.info("could not re-activate the session (%s); opening a new one", e.message)
            except BaseException:
                self._kept = previous
                raise
            await previous.close()
        connected = await open_client(self.cfg, session_name=f"fmc {self.name}")
        if connected.warning:
            self.log.warning("%s", connected.warning)
        session = _Session(self, connected)
        try:
            await session.setup()
        except BaseException as e:
            await session.close()
            if isinstance(e, asyncio.CancelledError | OpcUaError):
                raise
            raise describe_failure(e, self.cfg) from e
        self.sessions_opened += 1
        moved = {a: i for a, i in session.indexes.items() if self._namespace_indexes.get(a, i) != i}
        if moved:
            self.log.info("namespace indexes changed since the last session: %s",
                          ", ".join(f"{a} {self._namespace_indexes[a]} -> {i}" for a, i in moved.items()))
        self._namespace_indexes = dict(session.indexes)
        self.subscribed_nodes, self.polled_nodes = session.subscribed, len(session.polled)
        self.log.info(
            "session with %s up: %d node(s) subscribed in %d subscription(s), %d polled, %d not found",
            self.cfg.endpoint, session.subscribed, len(session.subscription_ids), len(session.polled),
            session.unresolved,
        )
        return session

    def _set_connected(self, up: bool) -> None:
        self._connected = up
        self._connected_gauge.set(1 if up else 0)

    def deliver(self, points: list[Point], rejected: list[tuple[str, Rejection]], changes: int) -> None:
        """Hand one publish response's (or poll round's) points to the ingest; rejections by node."""
        if changes:
            self._received.inc(changes)
        if points:
            self._ingest.submit(self.name, f"{len(points)} node value(s)", b"", MapResult(points, []), None)
        for topic, rejection in rejected:
            self._ingest.submit(self.name, topic, b"", MapResult([], [rejection]), None)


async def _unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """Run ``work`` until it finishes or ``stop`` is set (then cancel it and return None)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)
