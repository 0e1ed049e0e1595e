"""Modbus source: every device polled by a task of its own, every value to the ingest.

How it runs. ``start()`` starts a thread with an asyncio loop of its own (as the OPC UA source
does) and returns; ``stop(timeout)`` ends it. The loop runs ``run(stop_event)``, which may also be
awaited directly (tests, the benchmark).

Each device has its own task: it reads its requests (``plan.plan_blocks``) every
``poll_interval_s`` and hands the round's points and rejections to the ingest in one submission.
Devices on one link (a serial line, a converter, a shared TCP connection) take turns per request
(``link.Link``); TCP devices have a connection each, so a slow one never holds up another.

A device that does not answer a request after its retries (timeout, wrong unit id, CRC errors, no
connection, a gateway that cannot reach it) goes offline at once: one sample per signal with
quality ``BAD_NO_COMMUNICATION`` (``points.offline_points``), then a probe after a capped, jittered
backoff (``reconnect_min_s`` … ``reconnect_max_s``) until it answers again. An exception answer
(illegal address, busy, …) skips that request's values for the round and is logged once per change;
the device answered, so it stays online. Every failed attempt is counted on ``/metrics`` as
``fmc_source_errors_total{source, reason}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fmc.agent.metrics import AgentMetrics
from fmc.agent.plugin import IngestPort, MapResult, Rejection
from fmc.core.backoff import backoff_delay
from fmc.core.config import EnterpriseConfig
from fmc.core.loop_thread import LoopThread
from fmc.core.points import Point
from fmc.sources.modbus import config as schema
from fmc.sources.modbus.link import FIXES, Link, quiet_pymodbus
from fmc.sources.modbus.plan import Block, plan_blocks
from fmc.sources.modbus.points import ValuePlan, block_points, offline_points


def value_plans(cfg: schema.ModbusSource, index: int, enterprise_id: str) -> list[ValuePlan]:
    """The registers of device ``index``, ready for the hot path."""
    dev = cfg.device[index]
    return [
        ValuePlan.make(
            enterprise=enterprise_id, unit=dev.unit, function=r.function, address=r.address, count=r.count,
            data_type=r.type or "uint16", byte_order=r.byte_order or dev.byte_order,
            word_order=r.word_order or dev.word_order, scale=r.scale, offset=r.offset, minimum=r.min,
            maximum=r.max, equipment=dev.equipment_of(r) if not r.is_meter else None, signal=r.signal,
            meter=r.meter, carrier=r.carrier,
        )
        for r in dev.registers
    ]


@dataclass(slots=True)
class _Device:
    cfg: schema.ModbusDevice
    endpoint: str
    link: Link
    plans: list[ValuePlan]
    blocks: list[Block]
    online: bool | None = None  # None until the first poll
    refused: dict[int, str] = field(default_factory=dict)  # block index -> the exception it answers with
    polls: int = 0
    answered: int = 0
    last_error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.cfg.label} at {self.endpoint}"


class ModbusSource:
    """One ``[[modbus]]`` section: its links, a task per device, values to the ingest."""

    def __init__(
        self,
        cfg: schema.ModbusSource,
        enterprise: EnterpriseConfig,
        ingest: IngestPort,
        metrics: AgentMetrics,
        logger: logging.Logger,
        *,
        clock: Callable[[], int] = time.time_ns,  # a point's time in ns; tests move it across midnight
    ) -> None:
        self.cfg = cfg
        self._clock = clock
        self.name = cfg.name
        self.log = logger
        self._ingest = ingest
        self._enterprise_id = enterprise.id
        self._received = metrics.received.labels(cfg.name)
        self._connected_gauge = metrics.connected.labels(cfg.name)
        self._errors = metrics.source_errors
        self._rng = random.Random()
        self._thread = LoopThread(f"fmc-modbus-{self.name}", f"the Modbus source {self.name!r}", logger)
        self.devices: list[_Device] = []  # set up by run(), in the config's order

    @property
    def connected(self) -> bool:
        """True while at least one device answers."""
        return any(d.online for d in self.devices)

    @property
    def problem(self) -> str | None:
        """Why no device answers, for /health; None while one does."""
        if self.connected:
            return None
        silent = [f"{d.label}: {d.last_error}" for d in self.devices if d.last_error]
        if not silent:
            return "no device has answered yet"
        return "no device answers: " + "; ".join(silent[:3]) + (f"; and {len(silent) - 3} more" if len(silent) > 3
                                                               else "")

    def live_equipment(self) -> set[str]:
        return set()  # every poll delivers every value: nothing to confirm

    # --- thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Run the source in a thread of its own (own asyncio loop) and return at once."""
        if not self._thread.started:
            self._connected_gauge.set(0)
        self._thread.start(self.run)

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.started:
            self._thread.stop(timeout)
            self._connected_gauge.set(0)

    # --- main loop --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every device until ``stop`` is set."""
        quiet_pymodbus()
        cfg = self.cfg
        links: dict[tuple[object, ...], Link] = {}
        self.devices = []
        for i, dev in enumerate(cfg.device):
            key = cfg.link_key(i)
            link = links.get(key)
            if link is None:
                timeout = max(d.timeout_s for j, d in enumerate(cfg.device) if cfg.link_key(j) == key)
                link = links[key] = Link(
                    cfg.transport, host=dev.host or cfg.host, port=dev.port or cfg.port, serial_port=cfg.serial_port,
                    baudrate=cfg.baudrate, parity=cfg.parity, stopbits=cfg.stopbits, bytesize=cfg.bytesize,
                    timeout_s=timeout, on_failure=self._count,
                )
            blocks = plan_blocks(dev.spans(), dev.max_gap, dev.max_registers, dev.max_bits)
            self.devices.append(_Device(dev, cfg.endpoint(i), link, value_plans(cfg, i, self._enterprise_id), blocks))
        self.log.info("polling %d Modbus device(s) over %s (%d connection(s))", len(self.devices), cfg.transport,
                      len(links))
        tasks = [asyncio.create_task(self._poll_device(d, stop), name=f"fmc-modbus-{d.cfg.unit}")
                 for d in self.devices]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for link in links.values():
                link.close()
            self._connected_gauge.set(0)
            self.log.info("stopped")

    def _count(self, reason: str) -> None:
        self._errors.labels(self.name, reason).inc()

    async def _poll_device(self, dev: _Device, stop: asyncio.Event) -> None:
        interval = dev.cfg.poll_interval_s
        attempt = 0
        due = time.monotonic()
        while not stop.is_set():
            answered = await self.poll(dev)
            now = time.monotonic()
            if answered:
                attempt = 0
                due += interval
                if due < now:  # fell behind (a slow device): skip the missed rounds, do not burst
                    due = now + interval
            else:
                due = now + backoff_delay(attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)
                attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))

    async def poll(self, dev: _Device) -> bool:
        """One round: read every request of ``dev``, hand the values over. False when it did not answer."""
        cfg = dev.cfg
        dev.polls += 1
        points: list[Point] = []
        rejections: list[Rejection] = []
        answered = False
        silent_reason: str | None = None
        # a device known to be offline is probed once per request, not with all its retries
        retries = cfg.retries if dev.online is not False else 0
        for index, block in enumerate(dev.blocks):
            result = await dev.link.read(cfg.unit, block.function, block.address, block.count,
                                         timeout_s=cfg.timeout_s, retries=retries)
            if result.values is not None:
                answered = True
                if dev.refused.pop(index, None) is not None:
                    self.log.info("%s: %s %d-%d reads again", dev.label, block.function, block.address, block.end - 1)
                block_points(block, result.values, dev.plans, self._clock(), points, rejections)
                continue
            reason = result.reason or "timeout"
            if result.no_answer:
                silent_reason = f"{reason} after {len(result.failures)} attempt(s)"
                if not answered:
                    break  # silent from the first request: do not spend the other requests' timeouts
                continue
            answered = True  # an exception answer: the device is there
            if dev.refused.get(index) != reason:
                dev.refused[index] = reason
                self.log.warning("%s answers %s for %s %d-%d: its values are skipped (%s)", dev.label, reason,
                                 block.function, block.address, block.end - 1, FIXES.get(reason, "see the manual"))
        if answered:
            dev.answered += 1
            if dev.online is False:
                self.log.info("%s answers again", dev.label)
            dev.online = True
            self._deliver(dev, points, rejections)
        else:
            dev.last_error = silent_reason
            if dev.online is not False:
                self.log.warning("%s does not answer (%s): its equipment is offline until it does; %s", dev.label,
                                 silent_reason, FIXES.get((silent_reason or "timeout").split()[0], ""))
                self._deliver(dev, offline_points(dev.plans, self._clock()), [])
            dev.online = False
        self._connected_gauge.set(1 if self.connected else 0)
        return answered

    def _deliver(self, dev: _Device, points: list[Point], rejections: list[Rejection]) -> None:
        if not points and not rejections:
            return
        self._received.inc(len(points) + len(rejections))
        self._ingest.submit(self.name, f"{dev.cfg.label}: {len(points)} value(s)", b"", MapResult(points, rejections),
                            None)
