"""Group commit: points from every source go through one writer thread into the spool.

Sources call ``submit`` from their own threads (paho's network thread, an asyncio loop). The
writer thread encodes the points, commits a whole group in one SQLite transaction (one fsync
for hundreds of messages instead of one each) and only then calls each message's ``ack``, so
an MQTT QoS 1 message is acknowledged to the broker only once its points are on disk.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fmc.agent import health as parts
from fmc.agent.health import Health, describe
from fmc.agent.metrics import AgentMetrics
from fmc.agent.plugin import Delivery, IngestStopped, MapResult, Rejection
from fmc.agent.spool import RejectionRecord, Spool, SpoolError
from fmc.core.lineprotocol import LineProtocolError, encode, encode_series
from fmc.core.points import Point, Priority
from fmc.plant.model import PlantModel

MAX_GROUP_POINTS = 5000
# while gathering a group, how often the writer looks whether more messages came, and the group
# that is committed as soon as none did (see Ingest._gather)
GATHER_STEP_S = 0.002
GATHER_EARLY_MIN = 100
PLANT_STATE_KEY = "plant"
PAYLOAD_EXCERPT_BYTES = 512


@dataclass(slots=True)
class _Submission:
    source: str
    topic: str
    payload: bytes
    points: Sequence[Point]
    rejections: Sequence[Rejection]
    ack: Callable[[], None] | None
    delivery: Delivery | None = None


class Ingest:
    def __init__(
        self,
        spool: Spool,
        metrics: AgentMetrics,
        *,
        max_series: int,
        commit_interval_ms: int = 20,
        queue_max: int = 5_000,
        logger: logging.Logger | None = None,
        plant: PlantModel | None = None,
        snapshot_every_s: float = 10.0,
        clock: Callable[[], int] = time.time_ns,
        alive_equipment: Callable[[], Iterable[str]] | None = None,
        alive_every_s: float = 60.0,
        alive_meters: Callable[[], Iterable[str]] | None = None,
        health: Health | None = None,
    ) -> None:
        # equipment behind a live OPC UA subscription or a Sparkplug birth in force (which report
        # changes only); vouched for to the plant model every alive_every_s, well within its offline_after_s
        self._alive_equipment = alive_equipment
        self._alive_meters = alive_meters  # meters read from a live OPC UA session or Sparkplug birth, likewise
        self._alive_every_ns = int(alive_every_s * 1e9)
        self._last_alive_ns = 0
        self._clock = clock  # wall clock in ns for the plant model; tests move it across midnight
        self._spool = spool
        # The plant model sees every raw point this thread commits and the passing time; what it
        # derives (states, intervals, daily rollups) is committed with the points that caused it,
        # and so is a journal entry of the call (its inputs): the last snapshot plus the journal is
        # the model as of the last commit (resume_plant). Calls with nothing to commit (most
        # advance() ticks) wait in _journal for the next commit, ahead of what comes after them.
        self._plant = plant
        self._journal: list[dict[str, Any]] = []
        self._snapshot_every_ns = int(snapshot_every_s * 1e9)
        self._last_tick_ns = 0
        self._last_snapshot_ns = time.monotonic_ns()
        self._metrics = metrics
        self._max_series = max_series
        self._interval = commit_interval_ms / 1000.0
        # A deque rather than queue.Queue: sources append without taking a lock the writer holds
        # (under load, Queue's mutex made the MQTT thread wait on the writer at every message).
        # Bounded: when the disk is slower than the sources, submit() waits and the broker holds
        # the messages (TCP backpressure) instead of this process growing without limit.
        self._pending: deque[_Submission] = deque()
        self._queue_max = queue_max
        self._has_work = threading.Event()
        self._writer_waiting = False
        self._room = threading.Condition()
        self._stop_requested = False
        self._series: set[str] = set()  # encoded series keys seen, for limits.max_series
        # (source, connection) -> the key its messages are recorded under (Spool.message_session)
        self._message_sessions: dict[tuple[str, int], str] = {}
        self._log = logger or logging.getLogger("fmc.ingest")
        self._health = health or Health()
        self._thread = threading.Thread(target=self._guarded_run, name="fmc-ingest", daemon=True)
        self._stopped = threading.Event()
        self.commits = 0
        # Why the writer thread ended, when it ended on an error (read by the agent, which exits
        # then: nothing would commit the queue any more, or acknowledge a message).
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(
        self,
        source: str,
        topic: str,
        payload: bytes,
        result: MapResult,
        ack: Callable[[], None] | None,
        *,
        wait: bool = True,
    ) -> bool:
        """Queue a mapped message; ``ack`` runs after its points are committed. A message recognised
        as a redelivery of a committed one (``result.delivery``) is acknowledged with its group and
        nothing of it is stored again.

        When the queue is full this waits for room, unless ``wait=False``: then a message with an
        ``ack`` is queued at once, past the bound (its upstream holds it until the ack, so the
        upstream's window bounds how many there can be: MQTT QoS 1), and one without is dropped
        and False returned. Raises IngestStopped once the writer thread has ended on an error."""
        sub = _Submission(source, topic, payload, result.points, result.rejections, ack, result.delivery)
        if not wait and ack is None and len(self._pending) >= self._queue_max:
            self._check_running()
            return False
        self._put(sub, wait)
        return True

    def submit_many(
        self, source: str, messages: Sequence[tuple[str, bytes, MapResult, Callable[[], None] | None]],
    ) -> int:
        """``submit`` with ``wait=False`` for a run of messages (topic, payload, result, ack) of one
        source, queued in one go, in order; returns how many of those without an ``ack`` were
        dropped because the queue was full. Raises IngestStopped once the writer thread has ended
        on an error (then none is queued)."""
        self._check_running()
        room = self._queue_max - len(self._pending)
        subs: list[_Submission] = []
        dropped = 0
        for topic, payload, result, ack in messages:
            if ack is None and room <= 0:
                dropped += 1
                continue
            subs.append(_Submission(source, topic, payload, result.points, result.rejections, ack, result.delivery))
            room -= 1
        self._pending.extend(subs)
        if self._writer_waiting:
            self._has_work.set()
        return dropped

    def submit_points(self, source: str, points: Sequence[Point]) -> None:
        """Points made inside the agent (state changes, rollups): committed like any message."""
        self._put(_Submission(source, "", b"", points, (), None))

    def _put(self, sub: _Submission, wait: bool = True) -> None:
        if wait and len(self._pending) >= self._queue_max:
            with self._room:
                while len(self._pending) >= self._queue_max and self._thread.is_alive():
                    self._room.wait(0.05)
        self._check_running()
        self._pending.append(sub)
        if self._writer_waiting:  # set() only when the writer sleeps: an Event costs a lock
            self._has_work.set()

    def _check_running(self) -> None:
        # without a writer thread nothing is committed any more: refuse rather than queue (the
        # message stays with its upstream) and let memory grow
        if self.failure is not None or (self._thread.ident is not None and not self._thread.is_alive()
                                        and not self._stop_requested):
            raise IngestStopped(f"the ingest writer thread has stopped: {describe(self.failure)}")

    def stop(self, timeout: float = 30.0) -> None:
        """Commit everything queued, then end the writer thread."""
        self._stop_requested = True
        self._has_work.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._stopped.set()

    # --- writer thread ---------------------------------------------------------------------

    def _guarded_run(self) -> None:
        try:
            self._run()
        except BaseException as e:
            # What is queued is not acknowledged, so it is still upstream (the broker resends it,
            # OPC UA values are read again); what was acknowledged is on disk.
            self.failure = e
            self._health.down(parts.INGEST, f"the writer thread stopped: {describe(e)}")
            self._log.critical("the ingest writer thread stopped: %s", describe(e), exc_info=True)
            with self._room:
                self._room.notify_all()  # submitters waiting for room raise IngestStopped now

    def _wait_for_work(self) -> None:
        self._writer_waiting = True
        # checked again after announcing the wait: a submit() in between either sees the flag
        # (and sets the event) or put its item where this check finds it
        if not self._pending and not self._stop_requested:
            self._has_work.wait(0.5)
        self._writer_waiting = False
        self._has_work.clear()

    def _take_group(self) -> list[_Submission]:
        group: list[_Submission] = []
        count = 0
        pending = self._pending
        while pending and count < MAX_GROUP_POINTS:
            sub = pending.popleft()
            group.append(sub)
            count += len(sub.points) or 1
        with self._room:
            self._room.notify_all()
        return group

    def _run(self) -> None:
        while True:
            if not self._pending:
                # time moves on for the plant model only once what arrived before now is in it
                self._tick()
                if self._stop_requested:
                    self._tick(final=True)
                    return
                self._wait_for_work()
                continue
            if len(self._pending) < MAX_GROUP_POINTS and self._interval > 0 and not self._stop_requested:
                self._gather()
            self._commit(self._take_group())
            self._tick()

    def _gather(self) -> None:
        """Wait up to the commit interval for more messages: one fsync for many. A group of
        GATHER_EARLY_MIN messages or more is committed as soon as no more come for a look
        (GATHER_STEP_S): an upstream whose window of unacknowledged messages is full (an MQTT
        broker's in-flight limit, QoS 1) sends nothing until this commit acknowledges some, so
        waiting out the interval then would only cap its rate at a window per interval (the bench's
        1000-message window and 20 ms: about 20,000 messages a second, whatever the CPU). A
        smaller group waits out the interval as before: a trickle gets no more fsyncs than that."""
        pending = self._pending
        deadline = time.monotonic() + self._interval
        seen = len(pending)
        while not self._stop_requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(GATHER_STEP_S, left))
            now = len(pending)
            if now >= MAX_GROUP_POINTS or (now == seen and now >= GATHER_EARLY_MIN):
                return
            seen = now

    def _tick(self, final: bool = False) -> None:
        """Once a second: let the plant model see time pass; now and then, save its state."""
        if self._plant is None:
            return
        now_ns = self._clock()
        if not final and abs(now_ns - self._last_tick_ns) < 1_000_000_000:
            return
        self._last_tick_ns = now_ns
        derived = self._plant.advance(now_ns)
        if self._journal and "advance" in self._journal[-1]:
            # advance(t1) then advance(t2) is advance(t2) when t1 committed nothing: keep one
            self._journal[-1] = {"advance": now_ns}
        else:
            self._journal.append({"advance": now_ns})
        if self._alive_equipment is not None and now_ns - self._last_alive_ns >= self._alive_every_ns:
            self._last_alive_ns = now_ns
            alive = sorted(self._alive_equipment())
            meters = sorted(self._alive_meters()) if self._alive_meters is not None else []
            if alive or meters:
                derived += self._plant.confirm_alive(alive, now_ns, meters)
                self._journal.append({"confirm_alive": alive, "now_ns": now_ns, "meters": meters})
        if derived:
            self._commit([_Submission("plant", "", b"", derived, (), None)], observe=False)
        if final or time.monotonic_ns() - self._last_snapshot_ns >= self._snapshot_every_ns:
            self._last_snapshot_ns = time.monotonic_ns()
            try:
                # deletes the journal in the same transaction: the snapshot holds all of it
                self._spool.state_set(PLANT_STATE_KEY, json.dumps(self._plant.snapshot(), separators=(",", ":")))
                self._journal.clear()
            except Exception as e:  # the journal in the spool still has every committed input
                self._log.error("could not save the plant state: %s", e)

    def begin_session(self, source: str, connection: int, *, resumed: bool) -> None:
        """``source``'s upstream opened ``connection`` (its count of connections in this process) and
        did or did not resume the session before it (MQTT: session present). Called before the
        connection's first message, and kept in the spool at once: an agent killed before it commits
        anything of a new session must not take that session's messages, sent again after its restart
        into the resumed session, for the redeliveries of an earlier session's (their packet ids start
        again at 1). When the spool cannot say, the connection's messages are recorded under a key of
        their own: a DUP of them is then stored again (at least once), never dropped."""
        try:
            session = self._spool.message_session(source, new=not resumed)
        except Exception as e:
            self._log.warning("could not record the broker session of %s (its redeliveries may be stored "
                              "twice): %s", source, e)
            session = f"{source}#unrecorded-{connection}-{time.time_ns()}"
        self._message_sessions[(source, connection)] = session

    def _is_redelivery(self, sub: _Submission, recorded: dict[tuple[str, int], bytes]) -> bool:
        """A message the broker flagged DUP whose packet id and digest are those of a recently
        committed message of the same source and broker session (in this group, or in the spool's
        record). A message without the flag is never one: two equal payloads on a topic are two
        readings; nor is one of a new session (a broker that lost its state numbers from 1 again)."""
        d = sub.delivery
        if d is None:
            return False
        session = self._message_sessions.get((sub.source, d.connection))
        if session is None:  # a source that does not call begin_session: decided at its first message
            self.begin_session(sub.source, d.connection, resumed=d.resumed)
            session = self._message_sessions[(sub.source, d.connection)]
        key = (session, d.packet_id)
        if d.dup:
            if key in recorded:
                if recorded[key] == d.digest:
                    return True
            else:
                try:
                    if self._spool.committed_message(session, d.packet_id, d.digest):
                        return True
                except Exception as e:  # cannot tell: store it (at least once), as without the record
                    self._log.warning("could not look up a redelivered message on %s: %s", sub.topic, e)
        recorded[key] = d.digest  # committed with this group: the newest message with this packet id
        return False

    def _commit(self, group: list[_Submission], observe: bool = True) -> None:
        now_ms = time.time_ns() // 1_000_000
        items: list[tuple[str, Priority]] = []
        records: list[RejectionRecord] = []
        accepted_by_source: dict[str, int] = {}
        accepted: list[Point] = []
        rejected: list[tuple[str, str]] = []
        recorded: dict[tuple[str, int], bytes] = {}
        redelivered: dict[str, int] = {}
        for sub in group:
            if self._is_redelivery(sub, recorded):
                # committed before, its PUBACK lost: acknowledged with the group, stored no second time
                redelivered[sub.source] = redelivered.get(sub.source, 0) + 1
                continue
            for rej in sub.rejections:
                rejected.append((sub.source, rej.reason))
                records.append(self._record(now_ms, sub, rej.reason, rej.detail))
            for point in sub.points:
                try:
                    if point.series is None:
                        point.series = encode_series(point.measurement, point.tags)
                    line = encode(point)
                except LineProtocolError as e:
                    rejected.append((sub.source, e.reason))
                    records.append(self._record(now_ms, sub, e.reason, e.detail))
                    continue
                key = point.series
                if key not in self._series:
                    if len(self._series) >= self._max_series:
                        rejected.append((sub.source, "series_limit"))
                        records.append(
                            self._record(now_ms, sub, "series_limit", f"more than {self._max_series} series")
                        )
                        continue
                    self._series.add(key)
                items.append((line, point.priority))
                accepted.append(point)
                accepted_by_source[sub.source] = accepted_by_source.get(sub.source, 0) + 1
        if observe and self._plant is not None:
            received_ns = self._clock()
            inputs = self._plant.inputs(accepted)
            if inputs:
                self._journal.append({"observe": inputs, "received_ns": received_ns})
            for point in self._plant.observe(accepted, received_ns):
                try:
                    items.append((encode(point), point.priority))
                except LineProtocolError as e:  # names come from config and inventory: a bug if so
                    self._log.error("derived point not encodable: %s", e)
        journal = [(PLANT_STATE_KEY, json.dumps(e, separators=(",", ":"))) for e in self._journal]
        messages = [(source, packet_id, digest) for (source, packet_id), digest in recorded.items()]
        drops = self._append_until_committed(items, records, journal, messages)
        self._journal.clear()
        self.commits += 1
        for source, n in accepted_by_source.items():
            self._metrics.accepted.labels(source).inc(n)
        for source, n in redelivered.items():
            self._metrics.redeliveries.labels(source).inc(n)
        self._metrics.spooled.inc(len(items))
        for source, reason in rejected:
            self._metrics.rejected.labels(source, reason).inc()
        for priority, n in drops.items():
            self._metrics.dropped.labels(priority).inc(n)
        self._ack(group)

    def _ack(self, group: list[_Submission]) -> None:
        # A source that can acknowledge a whole group at once (one write to the broker instead of
        # one per message) marks its acks with ``owner.ack_many``; other acks are called singly.
        by_owner: dict[int, tuple[Any, list[Any]]] = {}
        for sub in group:
            ack = sub.ack
            if ack is None:
                continue
            owner = getattr(ack, "owner", None)
            if owner is not None and hasattr(owner, "ack_many"):
                by_owner.setdefault(id(owner), (owner, []))[1].append(ack)
                continue
            try:
                ack()
            except Exception:  # a lost connection: the broker redelivers, the store dedupes
                self._log.debug("ack failed for a message on %s", sub.topic, exc_info=True)
        for owner, acks in by_owner.values():
            try:
                owner.ack_many(acks)
            except Exception:
                self._log.debug("acks failed for %d message(s)", len(acks), exc_info=True)

    def _append_until_committed(
        self,
        items: list[tuple[str, Priority]],
        records: list[RejectionRecord],
        journal: list[tuple[str, str]],
        messages: list[tuple[str, int, bytes]],
    ) -> dict[str, int]:
        # Nothing is acknowledged before it is on disk. When the spool is locked by another
        # process, keep the group and try again (the queue fills and sources slow down). Any other
        # failure (disk full, read-only or damaged file, a bug) ends this thread: the agent exits
        # with the reason and the service manager restarts it.
        delay = 0.1
        failing = False
        while True:
            try:
                drops = self._spool.append(items, records, journal=journal, messages=messages)
            except SpoolError as e:
                if not e.transient:
                    self._health.down(parts.SPOOL, str(e))
                    raise
                failing = True
                self._health.down(parts.SPOOL, str(e))
                self._health.down(parts.INGEST, f"waiting for the spool ({len(self._pending)} queued): {e}")
                self._log.warning("spool commit failed, retrying in %.1fs: %s", delay, e)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if failing:
                self._health.ok(parts.SPOOL)
                self._health.ok(parts.INGEST)
                self._log.info("spool commits again")
            return drops

    @staticmethod
    def _record(now_ms: int, sub: _Submission, reason: str, detail: str) -> RejectionRecord:
        return RejectionRecord(
            at_ms=now_ms,
            source=sub.source,
            topic=sub.topic,
            reason=reason,
            detail=detail[:500],
            payload_excerpt=bytes(sub.payload[:PAYLOAD_EXCERPT_BYTES]),
        )


def resume_plant(spool: Spool, plant: PlantModel, log: logging.Logger | None = None) -> None:
    """Bring a new ``plant`` model to where the last process's last commit left it: its saved
    snapshot, then every call journaled after that snapshot (each committed in the transaction of
    the points it derived, so their points are already in the spool or the store). Then save the
    result as the new snapshot, which also empties the journal. A fresh model stays as it is when
    nothing was saved; when the snapshot cannot be read it starts afresh, journal dropped."""
    log = log or logging.getLogger("fmc.ingest")
    saved = spool.state_get(PLANT_STATE_KEY)
    entries = spool.journal(PLANT_STATE_KEY)
    if saved:
        try:
            plant.restore(json.loads(saved))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("could not resume the saved plant state (%s); starting afresh", e)
            entries = []
    replayed = 0
    for entry in entries:
        try:
            plant.replay(json.loads(entry))
            replayed += 1
        except (ValueError, KeyError, TypeError) as e:  # a bug if ever: skip the entry, keep the rest
            log.error("could not replay a plant journal entry (%s): %.200s", e, entry)
    if saved or entries:
        log.info("resumed the plant state saved in the spool and %d call(s) committed after it "
                 "(today's seconds are kept)", replayed)
    # from here on the journal holds only what this process commits
    spool.state_set(PLANT_STATE_KEY, json.dumps(plant.snapshot(), separators=(",", ":")))
