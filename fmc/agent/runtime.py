"""The edge agent runtime: sources → ingest (group commit) → spool → drain loop → sink."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import shlex
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fmc.agent import health as parts
from fmc.agent.config import AgentSettings
from fmc.agent.feeds import check_classes
from fmc.agent.health import Health, describe
from fmc.agent.ingest import Ingest, resume_plant
from fmc.agent.metrics import AgentMetrics
from fmc.agent.plugin import Sink, SinkUnavailable, Source, SourceContext
from fmc.agent.selfmetrics import INTERVAL_S as SELF_METRICS_INTERVAL_S
from fmc.agent.selfmetrics import SOURCE as SELF_METRICS_SOURCE
from fmc.agent.selfmetrics import agent_point, counters_from, own_points
from fmc.agent.spool import Spool, SpoolError
from fmc.core.backoff import backoff_delay
from fmc.plant.equipment import EquipmentItem
from fmc.plant.model import PlantModel
from fmc.plant.rollups import InventoryItem, Site

GAUGE_INTERVAL_S = 1.0
IDLE_POLL_S = 0.05
SUPERVISE_S = 0.2  # how often the agent looks whether a part has failed for good
# While backing off after the store was unreachable, ask it this often whether it is back (the
# first write then follows its return within about this long, not after the rest of the backoff).
PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 2.0
SPOOL_RETRY_MIN_S, SPOOL_RETRY_MAX_S = 0.2, 5.0  # the drain's retries while the spool is locked


class AgentFailed(Exception):
    """A part of the agent failed and cannot come back by itself (the spool's disk is full or
    read-only, the ingest writer died): the agent stopped, and ``fmc run`` exits with code 1 so
    that the service manager starts it again."""


def make_sink(cfg: AgentSettings) -> Sink:
    """The sink the ``[sink]`` section names (its plugin opens it)."""
    return cfg.sink_settings().open_sink()


class Agent:
    """One agent per gateway. ``run(stop)`` until ``stop`` is set; then flush and return."""

    def __init__(
        self,
        cfg: AgentSettings,
        *,
        logger: logging.Logger | None = None,
        metrics: AgentMetrics | None = None,
        shutdown_flush_s: float = 10.0,
        inventory: Sequence[EquipmentItem] | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.cfg = cfg
        # the file given to `fmc run -c`: log lines name commands to run with it
        self.config_path = config_path
        # the equipment ledger: [[equipment]] plus the [inventory] csv (loaded by the caller, which
        # reports a bad file as a configuration error)
        self.inventory = list(inventory) if inventory is not None else list(cfg.equipment)
        self.plant: PlantModel | None = None  # made in run() when there is an inventory or a meter
        self.log = logger or logging.getLogger("fmc")
        self.metrics = metrics or AgentMetrics()
        self.shutdown_flush_s = shutdown_flush_s
        self.spool: Spool | None = None
        self.sources: list[Source] = []
        self._metrics_server: Any = None
        self._metrics_serving = False
        self._last_sink_error_log = 0.0
        self._last_spool_error_log = 0.0
        self._started = time.monotonic()
        # each part's state, served on /health (fmc.agent.health)
        self.health = Health()

    async def run(self, stop: asyncio.Event) -> None:
        self._bind_metrics_listener()  # a taken port fails here, before anything connects
        try:
            await self._run(stop)
        finally:
            self._stop_metrics_server()

    async def _run(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        self.spool = spool = Spool(
            cfg.spool.path,
            max_bytes=cfg.spool.max_bytes,
            synchronous=cfg.spool.synchronous,
            rejected_keep=cfg.spool.rejected_keep,
        )
        self.plant = plant = self._plant_model(spool)
        ingest = Ingest(
            spool,
            self.metrics,
            max_series=cfg.limits.max_series,
            commit_interval_ms=cfg.spool.commit_interval_ms,
            logger=self.log.getChild("ingest"),
            plant=plant,
            alive_equipment=self._subscribed_equipment,
            alive_every_s=min(60.0, cfg.plant.offline_after_s / 3),
            alive_meters=self._live_meters,
            health=self.health,
        )
        sink = make_sink(cfg)
        stats = spool.stats()
        self.log.info(
            "agent starting: enterprise=%s sources=%d sink=%s spool=%s (%d points waiting)",
            cfg.enterprise.id, len(cfg.sources()), cfg.sink_settings().type, cfg.spool.path, stats.depth,
        )
        ingest.start()
        draining = asyncio.Event()  # set when the drain loop should stop at the next chance
        drain = asyncio.create_task(self._drain(spool, sink, draining), name="fmc-drain")
        gauges = asyncio.create_task(self._update_gauges(spool), name="fmc-gauges")
        self._started = time.monotonic()
        reporting = asyncio.create_task(self._report_self(ingest, spool), name="fmc-selfmetrics")
        failure: str | None = None
        offline_after_s = min([cfg.plant.offline_after_s] + [
            c.offline_after_s for c in cfg.equipment_class if c.offline_after_s is not None])
        try:
            for settings in cfg.sources():
                log = self.log.getChild(f"{settings.section}.{settings.name}")
                source = settings.open_source(SourceContext(cfg.enterprise, ingest, self.metrics, log, offline_after_s))
                self.sources.append(source)
                self.health.watch(f"{settings.section}:{settings.name}", _source_probe(source))
                source.start()
            # only now: the first answer of /metrics and /health already has every source
            self._start_metrics_server()
            # Everything made so far (modules, config, sources) lives as long as the process: keep
            # it out of the collector's scans, which otherwise cost a share of every message
            # (measured with make bench).
            gc.freeze()
            failure = await self._supervise(stop, ingest, drain)
            if failure is None:
                self.log.info("agent stopping: flushing")
            else:
                self.log.critical("agent stopping: %s; exiting with code 1 so that the service manager "
                                  "restarts it", failure)
        finally:
            for source in self.sources:
                await asyncio.to_thread(source.stop)
            reporting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporting
            if ingest.failure is None:
                await self._submit_self_point(ingest, spool, up=False)  # the store sees a clean stop
            await asyncio.to_thread(ingest.stop)
            # give the drain loop a bounded time to empty the spool; what is left stays on disk
            deadline = time.monotonic() + self.shutdown_flush_s
            while time.monotonic() < deadline and not drain.done():
                try:
                    if (await asyncio.to_thread(spool.stats)).depth == 0:
                        break
                except SpoolError:
                    break
                await asyncio.sleep(IDLE_POLL_S)
            draining.set()
            await self._end_drain(drain, max(5.0, cfg.sink_settings().batching().batch_size / 1000))
            gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gauges
            await sink.aclose()
            try:
                left: int | str = spool.stats().depth
            except SpoolError as e:
                left = f"? ({e})"
            spool.close()
            self.log.info("agent stopped: %s points left in the spool for the next start", left)
        if failure is not None:
            raise AgentFailed(failure)

    async def _supervise(self, stop: asyncio.Event, ingest: Ingest, drain: asyncio.Task[None]) -> str | None:
        """Until ``stop``: None. Earlier, the reason when a part has failed for good (the ingest
        writer thread ended, the drain loop met a spool error that is not a lock)."""
        while not stop.is_set():
            if ingest.failure is not None:
                return f"the ingest writer failed: {describe(ingest.failure)}"
            if drain.done():
                error = None if drain.cancelled() else drain.exception()
                reason = f"the drain loop failed: {describe(error)}" if error else "the drain loop ended"
                self.health.down(parts.DRAIN, reason)
                return reason
            await _sleep_unless(stop, SUPERVISE_S)
        return None

    async def _end_drain(self, drain: asyncio.Task[None], timeout: float) -> None:
        if drain.done():
            if not drain.cancelled() and drain.exception() is not None:
                self.log.debug("drain loop error", exc_info=drain.exception())
            return
        try:
            await asyncio.wait_for(drain, timeout=timeout)
        except asyncio.CancelledError:
            pass
        except TimeoutError:  # a write hanging at shutdown: its points stay in the spool
            self.log.warning("the drain loop did not end within %.0fs; what it was sending is sent again "
                             "at the next start", timeout)
        except Exception as e:
            self.log.error("the drain loop failed while stopping: %s", describe(e))

    async def _report_self(self, ingest: Ingest, spool: Spool) -> None:
        """An ``agent`` point (fmc.agent.selfmetrics) at start and every minute."""
        while True:
            await self._submit_self_point(ingest, spool, up=True)
            await asyncio.sleep(SELF_METRICS_INTERVAL_S)

    async def _submit_self_point(self, ingest: Ingest, spool: Spool, *, up: bool) -> None:
        try:
            stats = await asyncio.to_thread(spool.stats)
            point = agent_point(
                self.cfg.enterprise.id, socket.gethostname(), time.time_ns(), up=up,
                uptime_s=time.monotonic() - self._started, spool=stats, counters=counters_from(self.metrics),
                sources=[bool(getattr(s, "connected", False)) for s in self.sources],
                gateway=self.cfg.enterprise.gateway,
            )
            # through the ingest like every other point; in a thread, as a full queue makes it wait
            await asyncio.to_thread(ingest.submit_points, SELF_METRICS_SOURCE, [point])
        except Exception as e:  # the agent's own health must never stop the agent
            self.log.warning("could not record the agent's self-metrics: %s", e)

    def _subscribed_equipment(self) -> set[str]:
        """Equipment read through a live subscription or a Sparkplug birth in force (they report
        changes only)."""
        out: set[str] = set()
        for source in self.sources:
            out.update(source.live_equipment())
        return out

    def _live_meters(self) -> set[str]:
        """Meters read from a live OPC UA session or a Sparkplug birth in force (an optional method:
        only such sources have it)."""
        out: set[str] = set()
        for source in self.sources:
            live = getattr(source, "live_meters", None)
            if live is not None:
                out.update(live())
        return out

    def _plant_model(self, spool: Spool) -> PlantModel | None:
        """States, meter intervals and daily rollups, when there is an inventory or a meter."""
        cfg = self.cfg
        if not (self.inventory or cfg.meter):
            return None
        items = [
            InventoryItem(e.id, e.nc, e.asset_value, e.commissioned, e.decommissioned, e.in_scope, e.kind)
            for e in self.inventory
        ]
        plant = PlantModel(Site.from_enterprise(cfg.enterprise), cfg, items, start_ns=time.time_ns())
        classes = check_classes(cfg, self.inventory, self.config_path or "the agent config")
        if classes.warning:  # what fmc check says: states of such equipment are online/offline only
            self.log.warning("%s", classes.detail)
        resume_plant(spool, plant, self.log)
        self.log.info("plant model: %d equipment in the inventory, %d meter(s), %d virtual",
                      len(items), len(cfg.meter), len(cfg.virtual_meter))
        return plant

    async def _drain(self, spool: Spool, sink: Sink, draining: asyncio.Event) -> None:
        """Send the spool to the sink, oldest first, until ``draining`` is set. A store that cannot
        take data and a locked spool are waited out; any other spool error ends this task with it
        (the agent then exits: ``_supervise``)."""
        b = self.cfg.sink_settings().batching()
        batch_size, max_age_s, retry_min, retry_max = b.batch_size, b.max_age_s, b.retry_min_s, b.retry_max_s
        attempt = 0
        came_back = False  # the last wait ended at a probe's answer after a write that found nobody there
        while not draining.is_set():
            try:
                batch = await asyncio.to_thread(spool.read_batch, batch_size)
            except SpoolError as e:
                if not e.transient:
                    self.health.down(parts.SPOOL, str(e))
                    raise
                await self._spool_locked(e, 0, draining)
                continue
            if not batch.ids:
                await _sleep_unless(draining, IDLE_POLL_S)
                continue
            if len(batch.ids) < batch_size and not draining.is_set():
                age = time.time() - batch.enqueued_ms[0] / 1000.0
                # a negative age means the wall clock was set back (NTP, RTC reset on a gateway):
                # send now rather than hold points until the clock catches up
                if 0 <= age < max_age_s:
                    # wait for a fuller batch, but never hold a point longer than max_age_s
                    await _sleep_unless(draining, min(max_age_s - age, IDLE_POLL_S * 2))
                    continue
            try:
                outcome = await sink.write(batch.lines)
            except Exception as error:  # the store's plugin failed: the points stay, retried like an outage
                if isinstance(error, SinkUnavailable):
                    e, label = error, _error_label(error)
                else:
                    e, label = _unexpected(sink, error, self.log), "error"
                self.metrics.sink_errors.labels(sink.name, label).inc()
                delay = max(e.retry_after or 0.0, backoff_delay(attempt, retry_min, retry_max))
                attempt += 1
                self._log_sink_error(e, delay)
                self.health.down(parts.DRAIN, f"store unavailable (points stay in the spool): {e.reason}")
                # probe only a store that may come back any moment: not one that said when (Retry-After),
                # nor a plugin that failed in itself
                # a store that answers pings but refuses the writes' connections (a proxy) must not be
                # written to every probe interval: the early end is taken once, then the whole backoff
                came_back = await self._wait_for_store(
                    sink, delay, draining, probe=label != "error" and e.retry_after is None,
                    absent=getattr(e, "absent", False) and not came_back)
                continue
            attempt, came_back = 0, False
            refused = [(r.index, r.reason, r.status) for r in outcome.refused]
            if not await self._complete(spool, batch, refused, draining):
                break  # stopping while the spool is locked: the batch is sent again at the next start
            self.health.ok(parts.DRAIN)
            # the agent's own `agent` points are not data delivered: written counts the data only
            own = own_points(batch.lines, {r[0] for r in refused})
            self.metrics.written.labels(sink.name).inc(len(batch.ids) - len(refused) - own)
            if refused:
                self.metrics.dead_lettered.labels(sink.name).inc(len(refused))
                config = shlex.quote(str(self.config_path)) if self.config_path else "<agent.toml>"
                self.log.warning(
                    "store refused %d point(s) for good; kept in the dead-letter table (list them: "
                    "`fmc spool show -c %s`; once the cause is fixed, send them again: `fmc spool requeue -c %s`): %s",
                    len(refused), config, config, refused[0][1],
                )

    async def _complete(
        self, spool: Spool, batch: Any, refused: list[tuple[int, str, int | None]], draining: asyncio.Event
    ) -> bool:
        """Delete the delivered batch from the spool, waiting out a lock held by another process;
        False when asked to stop first (the batch stays and is sent again: the store overwrites)."""
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(spool.complete, batch, refused)
            except SpoolError as e:
                if not e.transient:
                    self.health.down(parts.SPOOL, str(e))
                    raise
                await self._spool_locked(e, attempt, draining)
                attempt += 1
                if draining.is_set():
                    return False
                continue
            if attempt:
                self.health.ok(parts.SPOOL)
                self.log.info("the spool is writable again; draining resumes")
            return True

    async def _spool_locked(self, e: SpoolError, attempt: int, draining: asyncio.Event) -> None:
        delay = backoff_delay(attempt, SPOOL_RETRY_MIN_S, SPOOL_RETRY_MAX_S)
        self.health.down(parts.SPOOL, str(e))
        self.health.down(parts.DRAIN, f"waiting for the spool, retrying in {delay:.1f}s: {e}")
        now = time.monotonic()
        if now - self._last_spool_error_log >= 30.0:
            self._last_spool_error_log = now
            self.log.warning("%s; another process holds the spool's lock; the drain retries in %.1fs", e, delay)
        await _sleep_unless(draining, delay)

    async def _wait_for_store(
        self, sink: Sink, delay: float, draining: asyncio.Event, *, probe: bool, absent: bool = False
    ) -> bool:
        """Wait out the backoff ``delay``; with ``probe``, ask the store every PROBE_INTERVAL_S
        whether it answers (``Sink.ping``), and end the wait as soon as it answers after it did not.

        A store that answers the first probe although the write failed (it answers /ping but not
        writes: overloaded, starting, bad credentials, a write that timed out) is not probed further:
        it waits out the whole backoff, so it is not sent a write every probe interval. Unless the write
        found nobody there (``absent``: refused, or closed without an answer): then the store came back
        between the write and the probe, and the drain goes on at once instead of after the backoff.
        True when the wait ended that way (at the first probe, after such a write)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        if not probe:
            await _sleep_unless(draining, delay)
            return False
        was_down, first = absent, True
        while not draining.is_set():
            left = deadline - loop.time()
            if left <= 0:
                return False
            await _sleep_unless(draining, min(PROBE_INTERVAL_S, left))
            if draining.is_set() or loop.time() >= deadline:
                return False
            try:
                await asyncio.wait_for(sink.ping(), PROBE_TIMEOUT_S)
            except Exception:  # unreachable, an HTTP error, no answer in time
                was_down, first = True, False
                continue
            if was_down:
                self.log.info("the store answers again; sending")
                return first
            await _sleep_unless(draining, deadline - loop.time())
            return False
        return False

    def _log_sink_error(self, e: SinkUnavailable, delay: float) -> None:
        now = time.monotonic()
        if now - self._last_sink_error_log >= 30.0:  # one line per 30 s, not one per retry
            self._last_sink_error_log = now
            self.log.warning("store unavailable (%s); points stay in the spool; retrying in %.1fs", e.reason, delay)

    async def _update_gauges(self, spool: Spool) -> None:
        while True:
            try:
                stats = await asyncio.to_thread(spool.stats)
            except SpoolError as e:  # the parts that write report it; the gauges wait for the next second
                self.log.debug("spool stats: %s", e)
                await asyncio.sleep(GAUGE_INTERVAL_S)
                continue
            self.metrics.spool_depth.set(stats.depth)
            self.metrics.spool_bytes.set(stats.bytes)
            oldest = stats.oldest_enqueued_ms
            self.metrics.oldest_age.set(0.0 if oldest is None else max(0.0, time.time() - oldest / 1000))
            if self.plant is not None:
                # read from another thread: plain int counters, a momentarily stale sum is fine
                for (part, kind), n in self.plant.event_counts().items():
                    self.metrics.plant_events.labels(part, kind).set(n)
            await asyncio.sleep(GAUGE_INTERVAL_S)

    def _bind_metrics_listener(self) -> None:
        if not self.cfg.metrics.enabled:
            return
        host, port = self.cfg.metrics.host_port()
        try:
            self._metrics_server = parts.listen(host, port, self.metrics.registry, self.health)
        except OSError as e:
            where = f" in {self.config_path}" if self.config_path else ""
            reason = (
                f"cannot listen on {self.cfg.metrics.listen} for metrics and health ([metrics] listen{where}):"
                f" {e.strerror or e}; fix: set [metrics] listen to a free address:port, stop what"
                f" holds that port, or set [metrics] enabled = false"
            )
            self.log.critical("agent not starting: %s", reason)
            raise AgentFailed(reason) from None

    def _start_metrics_server(self) -> None:
        if self._metrics_server is None:
            return
        parts.serve_in_thread(self._metrics_server)
        self._metrics_serving = True
        self.log.info("metrics on http://%s/metrics, health on http://%s/health", self.cfg.metrics.listen,
                      self.cfg.metrics.listen)

    def _stop_metrics_server(self) -> None:
        if self._metrics_server is not None:
            if self._metrics_serving:  # shutdown() waits for serve_forever, which may never have run
                self._metrics_server.shutdown()
                self._metrics_serving = False
            self._metrics_server.server_close()
            self._metrics_server = None


def _error_label(e: SinkUnavailable) -> str:
    return f"http_{e.status}" if e.status else "unreachable"


def _unexpected(sink: Sink, error: Exception, log: logging.Logger) -> SinkUnavailable:
    """A sink raised something else than SinkUnavailable (a bug in its plugin): the points stay in
    the spool and the write is retried like after an outage; the trace goes to the debug log."""
    log.debug("the %s sink failed", sink.name, exc_info=error)
    return SinkUnavailable(f"the {sink.name} sink failed: {type(error).__name__}: {error}")


def _source_probe(source: Source) -> Any:
    def probe() -> tuple[bool, str]:
        if source.connected:
            return True, ""
        return False, getattr(source, "problem", None) or "not connected"

    return probe


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)
