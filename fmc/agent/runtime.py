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

from fmc.agent.config import AgentSettings
from fmc.agent.ingest import Ingest, resume_plant
from fmc.agent.metrics import AgentMetrics
from fmc.agent.plugin import Sink, SinkUnavailable, Source, SourceContext
from fmc.agent.selfmetrics import INTERVAL_S as SELF_METRICS_INTERVAL_S
from fmc.agent.selfmetrics import SOURCE as SELF_METRICS_SOURCE
from fmc.agent.selfmetrics import agent_point, counters_from, own_points
from fmc.agent.spool import Spool
from fmc.core.backoff import backoff_delay
from fmc.plant.equipment import EquipmentItem
from fmc.plant.model import PlantModel
from fmc.plant.rollups import InventoryItem, Site

GAUGE_INTERVAL_S = 1.0
IDLE_POLL_S = 0.05
# While backing off after the store was unreachable, ask it this often whether it is back (the
# first write then follows its return within about this long, not after the rest of the backoff).
PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 2.0


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
        self._last_sink_error_log = 0.0
        self._started = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
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
        )
        sink = make_sink(cfg)
        self._start_metrics_server()
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
        try:
            for settings in cfg.sources():
                log = self.log.getChild(f"{settings.section}.{settings.name}")
                source = settings.open_source(SourceContext(cfg.enterprise, ingest, self.metrics, log))
                self.sources.append(source)
                source.start()
            # Everything made so far (modules, config, sources) lives as long as the process: keep
            # it out of the collector's scans, which otherwise cost a share of every message
            # (measured with make bench).
            gc.freeze()
            await stop.wait()
            self.log.info("agent stopping: flushing")
        finally:
            for source in self.sources:
                await asyncio.to_thread(source.stop)
            reporting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporting
            await self._submit_self_point(ingest, spool, up=False)  # the store sees a clean stop
            await asyncio.to_thread(ingest.stop)
            # give the drain loop a bounded time to empty the spool; what is left stays on disk
            deadline = time.monotonic() + self.shutdown_flush_s
            while time.monotonic() < deadline and not drain.done():
                if (await asyncio.to_thread(spool.stats)).depth == 0:
                    break
                await asyncio.sleep(IDLE_POLL_S)
            draining.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(drain, timeout=max(5.0, cfg.sink_settings().batching().batch_size / 1000))
            gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gauges
            await sink.aclose()
            left = spool.stats().depth
            spool.close()
            self._stop_metrics_server()
            self.log.info("agent stopped: %d points left in the spool for the next start", left)

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
            )
            # through the ingest like every other point; in a thread, as a full queue makes it wait
            await asyncio.to_thread(ingest.submit_points, SELF_METRICS_SOURCE, [point])
        except Exception as e:  # the agent's own health must never stop the agent
            self.log.warning("could not record the agent's self-metrics: %s", e)

    def _subscribed_equipment(self) -> set[str]:
        """Equipment read through a live subscription (subscriptions report changes only)."""
        out: set[str] = set()
        for source in self.sources:
            out.update(source.live_equipment())
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
        resume_plant(spool, plant, self.log)
        self.log.info("plant model: %d equipment in the inventory, %d meter(s), %d virtual",
                      len(items), len(cfg.meter), len(cfg.virtual_meter))
        return plant

    async def _drain(self, spool: Spool, sink: Sink, draining: asyncio.Event) -> None:
        b = self.cfg.sink_settings().batching()
        batch_size, max_age_s, retry_min, retry_max = b.batch_size, b.max_age_s, b.retry_min_s, b.retry_max_s
        attempt = 0
        while not draining.is_set():
            batch = await asyncio.to_thread(spool.read_batch, batch_size)
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
            except SinkUnavailable as e:
                self.metrics.sink_errors.labels(sink.name, _error_label(e)).inc()
                delay = max(e.retry_after or 0.0, backoff_delay(attempt, retry_min, retry_max))
                attempt += 1
                self._log_sink_error(e, delay)
                # probe only a store that may come back any moment, not one that said when (Retry-After)
                await self._wait_for_store(sink, delay, draining, probe=e.retry_after is None)
                continue
            attempt = 0
            refused = [(r.index, r.reason, r.status) for r in outcome.refused]
            await asyncio.to_thread(spool.complete, batch, refused)
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

    async def _wait_for_store(self, sink: Sink, delay: float, draining: asyncio.Event, *, probe: bool) -> None:
        """Wait out the backoff ``delay``; with ``probe``, ask the store every PROBE_INTERVAL_S
        whether it answers (``Sink.ping``), and end the wait as soon as it answers after it did not.

        A store that answers the first probe although the write failed (it answers /ping but not
        writes: overloaded, starting, bad credentials, a write that timed out) is not probed further:
        it waits out the whole backoff, so it is not sent a write every probe interval."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        if not probe:
            await _sleep_unless(draining, delay)
            return
        was_down = False
        while not draining.is_set():
            left = deadline - loop.time()
            if left <= 0:
                return
            await _sleep_unless(draining, min(PROBE_INTERVAL_S, left))
            if draining.is_set() or loop.time() >= deadline:
                return
            try:
                await asyncio.wait_for(sink.ping(), PROBE_TIMEOUT_S)
            except Exception:  # unreachable, an HTTP error, no answer in time
                was_down = True
                continue
            if was_down:
                self.log.info("the store answers again; sending")
                return
            await _sleep_unless(draining, deadline - loop.time())
            return

    def _log_sink_error(self, e: SinkUnavailable, delay: float) -> None:
        now = time.monotonic()
        if now - self._last_sink_error_log >= 30.0:  # one line per 30 s, not one per retry
            self._last_sink_error_log = now
            self.log.warning("store unavailable (%s); points stay in the spool; retrying in %.1fs", e.reason, delay)

    async def _update_gauges(self, spool: Spool) -> None:
        while True:
            stats = await asyncio.to_thread(spool.stats)
            self.metrics.spool_depth.set(stats.depth)
            self.metrics.spool_bytes.set(stats.bytes)
            oldest = stats.oldest_enqueued_ms
            self.metrics.oldest_age.set(0.0 if oldest is None else max(0.0, time.time() - oldest / 1000))
            if self.plant is not None:
                # read from another thread: plain int counters, a momentarily stale sum is fine
                for (part, kind), n in self.plant.event_counts().items():
                    self.metrics.plant_events.labels(part, kind).set(n)
            await asyncio.sleep(GAUGE_INTERVAL_S)

    def _start_metrics_server(self) -> None:
        if not self.cfg.metrics.enabled:
            return
        from prometheus_client import start_http_server

        host, port = self.cfg.metrics.host_port()
        self._metrics_server, _ = start_http_server(port, addr=host, registry=self.metrics.registry)
        self.log.info("metrics on http://%s/metrics", self.cfg.metrics.listen)

    def _stop_metrics_server(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None


def _error_label(e: SinkUnavailable) -> str:
    return f"http_{e.status}" if e.status else "unreachable"


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)
