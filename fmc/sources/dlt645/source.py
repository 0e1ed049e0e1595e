"""DL/T 645 source: one bus, its meters polled in turn, every reading to the ingest.

How it runs. ``start()`` starts a thread of its own (the bus is blocking I/O, one request at a
time: ``client.py``) and returns; ``stop(timeout)`` ends it. The thread runs ``run(stop_event)``:
open the port (or connect to the converter), then poll: the meter whose turn is next is read —
its energy register, then its signals — and the readings of that poll go to the ingest together;
the next meter waits until its interval is due. A line that fails (a USB adapter pulled, the
converter's connection closed) is closed and opened again after a capped, jittered backoff.

What becomes of a poll:
- the energy register -> a ``meter_reading`` point (meter, carrier "electricity", cumulative kWh),
  which the plant's meter accumulator takes like an MQTT meter's (rollover: docs in README.md);
- each signal (voltage, current, power) -> a ``signal`` point of the meter's equipment;
- a meter that does not answer after its retries: nothing for its meter (the accumulator sees a
  gap, never a zero), and a sample with quality ``BAD_NO_COMMUNICATION`` for each of its signals,
  which takes its equipment offline at once. While it stays silent it is tried once per interval
  (no retries), so a dead meter costs the bus one timeout per interval;
- an error reply (the meter has not got the identifier, …) and every failed attempt are counted in
  ``fmc_source_errors_total{source,reason}``; a value that is not BCD is a rejection
  (``payload_not_number``) too, inspectable with ``fmc spool show``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field

from fmc.agent.metrics import AgentMetrics
from fmc.agent.plugin import IngestPort, IngestStopped, MapResult, Rejection
from fmc.core.backoff import backoff_delay
from fmc.core.config import EnterpriseConfig
from fmc.core.lineprotocol import LineProtocolError, encode_series
from fmc.core.points import Point, Priority
from fmc.core.quality import BAD_NO_COMMUNICATION
from fmc.sources.dlt645 import config as schema
from fmc.sources.dlt645 import frame as f
from fmc.sources.dlt645.client import (
    BCD_INVALID,
    ERROR_FLAG,
    FIXES,
    IO_ERROR,
    NOISE,
    Client,
    TransportError,
    make_transport,
)

STABLE_LINE_S = 10.0  # a line that stayed up this long resets the reconnect backoff


@dataclass(slots=True)
class _Read:
    ident: f.Identifier
    signal: str | None  # None: the meter reading
    measurement: str
    tags: dict[str, str]
    series: str


@dataclass(slots=True)
class _MeterPlan:
    cfg: schema.Dlt645Meter
    reads: list[_Read]
    interval_s: float
    timeout_s: float
    retries: int
    next_due: float = 0.0
    answering: bool | None = None  # None until the first poll
    told: set[tuple[int, str]] = field(default_factory=set)  # (identifier, reason) already logged

    @property
    def where(self) -> str:
        names = [n for n in (self.cfg.meter, self.cfg.equipment) if n]
        return f"meter {self.cfg.address}" + (f" ({', '.join(names)})" if names else "")


class Dlt645Source:
    """One bus: one request at a time, every meter in turn, reconnects forever."""

    def __init__(
        self,
        cfg: schema.Dlt645Source,
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
        self._errors = metrics.source_errors
        try:
            self._plans = [self._plan(m, enterprise.id) for m in cfg.meter]
        except LineProtocolError as e:
            raise ValueError(f"dlt645 source {cfg.name!r}: {e.detail}") from None
        self._rng = random.Random()
        self._connected = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # observable state (tests, the demo)
        self.polls = 0
        self.last_error: str | None = None

    def _plan(self, m: schema.Dlt645Meter, enterprise_id: str) -> _MeterPlan:
        reads = []
        for ident, signal in m.reads():
            if signal is None:
                assert m.meter is not None
                tags = {"enterprise": enterprise_id, "meter": m.meter, "carrier": schema.CARRIER}
                measurement = "meter_reading"
            else:
                assert m.equipment is not None
                tags = {"enterprise": enterprise_id, "equipment": m.equipment, "signal": signal}
                measurement = "signal"
            reads.append(_Read(ident, signal, measurement, tags, encode_series(measurement, tags)))
        cfg = self.cfg
        return _MeterPlan(m, reads, cfg.meter_poll_interval_s(m), cfg.meter_timeout_s(m), cfg.meter_retries(m))

    @property
    def connected(self) -> bool:
        """True while the port is open (or the converter connected)."""
        return self._connected

    def live_equipment(self) -> set[str]:
        return set()  # every value is read again each interval: nothing to confirm

    def meter_answering(self, address: str) -> bool | None:
        """Whether the meter answered its last poll (None before its first), for tests and the demo."""
        return next((p.answering for p in self._plans if p.cfg.address == address), None)

    # --- thread ----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"dlt645 source {self.name!r} was already started")
        self._connected_gauge.set(0)
        self._thread = threading.Thread(target=self._main, name=f"fmc-dlt645-{self.name}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.run(self._stop)
        except Exception:
            self.log.exception("the DL/T 645 source stopped on an unexpected error")

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread: it stops after the request on the line (at most timeout_s)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self.log.warning("the DL/T 645 thread did not end within %.1fs; leaving it behind", timeout)
        self._set_connected(False)

    # --- main loop ---------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Open the line, poll, reopen after a failure with backoff, until ``stop`` is set."""
        cfg = self.cfg
        self.log.info("polling %d DL/T 645 meter(s) on %s (%s)", len(self._plans), cfg.where,
                      cfg.framing if cfg.transport == "serial" else "tcp converter")
        attempt = 0
        try:
            while not stop.is_set():
                began = time.monotonic()
                transport = make_transport(cfg)
                try:
                    transport.open()
                    self._set_connected(True)
                    if self.last_error is not None:
                        self.log.info("%s is open again", cfg.where)
                    self._serve(Client(transport, cfg.preamble), stop)
                except IngestStopped:
                    raise
                except Exception as e:  # a TransportError; anything else is a bug, and the bus still goes on
                    if not isinstance(e, TransportError):
                        self.log.exception("unexpected error on %s", cfg.where)
                    self._errors.labels(self.name, IO_ERROR).inc()
                    self.last_error = str(e)
                    self._set_connected(False)
                    self._all_lost()
                    if time.monotonic() - began >= STABLE_LINE_S:
                        attempt = 0
                    delay = backoff_delay(attempt, cfg.reconnect_min_s, cfg.reconnect_max_s, self._rng)
                    attempt += 1
                    self.log.warning("%s; %s; retrying in %.1fs", e, FIXES[IO_ERROR], delay)
                    stop.wait(delay)
                finally:
                    transport.close()
                    self._set_connected(False)
        except IngestStopped:
            self.log.info("the agent's ingest stopped; stopping")
        finally:
            self.log.info("stopped")

    def _serve(self, client: Client, stop: threading.Event) -> None:
        now = time.monotonic()
        for plan in self._plans:
            plan.next_due = min(plan.next_due, now) if plan.next_due else now
        while not stop.is_set():
            plan = min(self._plans, key=lambda p: p.next_due)
            wait = plan.next_due - time.monotonic()
            if wait > 0 and stop.wait(wait):
                return
            self._poll(client, plan, stop)
            # keep the cadence; a poll that overran its interval does not make a burst of catch-up polls
            plan.next_due = max(plan.next_due + plan.interval_s, time.monotonic())

    def _poll(self, client: Client, plan: _MeterPlan, stop: threading.Event) -> None:
        points: list[Point] = []
        rejections: list[Rejection] = []
        address = plan.cfg.address
        retries = plan.retries if plan.answering is not False else 0  # a silent meter: one try per interval
        lost: str | None = None  # why the meter did not answer
        lost_reason = ""
        replies = 0
        for read in plan.reads:
            if stop.is_set():
                break  # what was read so far still goes to the ingest
            r = client.read(address, read.ident, plan.timeout_s, retries)
            for reason in r.failures:
                self._errors.labels(self.name, reason).inc()
            if r.noise:
                self._errors.labels(self.name, NOISE).inc()
            if r.value is not None:
                replies += 1
                points.append(Point(read.measurement, read.tags.copy(), {"value": r.value, "quality": 0},
                                    time.time_ns(), Priority.RAW, read.series))
                continue
            if r.answered:  # an error reply, or a value that is not BCD: the meter is there
                replies += 1
                self._tell(plan, read, r.reason or "", r.detail, r.error_code)
                if r.reason == BCD_INVALID:
                    rejections.append(Rejection("payload_not_number", f"{plan.where} {read.ident.text}: {r.detail}"))
                continue
            lost, lost_reason = r.detail, r.reason or ""
            break
        self.polls += 1
        if replies:
            self._received.inc(replies)
        if lost is None:
            if plan.answering is False:
                self.log.info("%s answers again", plan.where)
            plan.answering = True
        else:
            if plan.answering is not False:
                self.log.warning("%s does not answer: %s; its signals are offline until it does (fix: %s)",
                                 plan.where, lost, FIXES.get(lost_reason, ""))
            plan.answering = False
            self.last_error = f"{plan.where}: {lost} ({lost_reason})"
            points += self._lost_points(plan, done={p.tags.get("signal") for p in points})
        self._submit(f"meter {address}", points, rejections)

    def _lost_points(self, plan: _MeterPlan, done: set[str | None] | None = None) -> list[Point]:
        """A contact-lost sample for each signal of the meter not read in this poll (none for its kWh)."""
        now = time.time_ns()
        done = done or set()
        return [Point("signal", r.tags.copy(), {"quality": BAD_NO_COMMUNICATION}, now, Priority.RAW, r.series)
                for r in plan.reads if r.signal is not None and r.signal not in done]

    def _all_lost(self) -> None:
        """The line failed: every meter on it is out of reach."""
        for plan in self._plans:
            if plan.answering is not False:
                plan.answering = False
                self._submit(f"meter {plan.cfg.address}", self._lost_points(plan), [])

    def _submit(self, topic: str, points: list[Point], rejections: list[Rejection]) -> None:
        if points or rejections:
            self._ingest.submit(self.name, topic, b"", MapResult(points, rejections), None)

    def _tell(self, plan: _MeterPlan, read: _Read, reason: str, detail: str, code: int | None) -> None:
        """Log an answer without a value once per (identifier, reason) at warning, then at debug."""
        key = (read.ident.di, reason)
        fix = f.error_fix(code) if reason == ERROR_FLAG and code is not None else FIXES.get(reason, "")
        level = logging.DEBUG if key in plan.told else logging.WARNING
        plan.told.add(key)
        self.log.log(level, "%s: %s (fix: %s)", plan.where, detail, fix)

    def _set_connected(self, up: bool) -> None:
        self._connected = up
        self._connected_gauge.set(1 if up else 0)
