"""``fmc demo``: a simulated pilot plant — a textile mill whose ~20 machines speak OPC UA and whose
utility meters publish over MQTT — collected by the real agent into the embedded store, in one
process and without any server; then a summary of what the agent measured.

Parts, kept apart so each can change alone:

- ``fmc.demo.plant`` — the plant: ``PlantSimulator`` (machines with shifts, idle spells,
  faults and a flaky link; meters, one of which is reset mid-run; deliberately bad messages),
  ``OpcUaPlantServer`` (asyncua on a free 127.0.0.1 port) and the equipment ledger (CSV).
- ``DemoBroker`` / ``MqttPublisher`` — the meters' transport: amqtt on a free 127.0.0.1 port and a
  paho client publishing with QoS 1.
- ``fmc.demo.dlt645_meter`` — a DL/T 645 electricity meter on a simulated TCP converter, read by a
  ``[[dlt645]]`` source; its register wraps at 999999.99 kWh early in the run.
- the agent — ``fmc.agent.runtime.Agent``, exactly what ``fmc run`` starts, with an ``[[opcua]]``
  source for the machines, an ``[[mqtt]]`` source for the meters, the ledger as its inventory, and
  the embedded store as its sink (``demo_config``).
- ``fmc.demo.summary`` — ``summarise`` / ``render_summary``: per equipment and per enterprise
  figures read from the store, the agent's plant model (today so far) and its metrics, checked
  against what the simulator reports; plain-text tables that stay aligned with Chinese text. The
  same figures go to ``demo-summary.json`` in the work dir.
- ``fmc.demo.settings`` — the names and settings both share (the enterprise, source names, files).

This module runs it all: starts the servers and the agent, drives the plant's clock, and decides
the exit code (``_checks``).

Everything printed is labelled SIMULATED DATA: these figures describe no real plant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from fmc.cli.plugins import AgentConfig
from fmc.demo.dlt645_meter import DLT645_SOURCE, DemoDlt645Meter
from fmc.demo.history import HISTORY_YEARS, SHOWN_YEAR, DemoApi, indicator_table, write_history
from fmc.demo.modbus_meter import MODBUS_METER, ModbusWaterMeter, modbus_section
from fmc.demo.plant import (
    DEMO_MACHINES,
    DEMO_METERS,
    METER_PERIOD_S,
    NAMESPACES,
    MachineSpec,
    MeterSpec,
    OpcUaPlantServer,
    PlantSimulator,
    SimMessage,
    equipment_classes,
    free_port,
    meter_configs,
    opcua_meter_configs,
    opcua_meter_nodes,
    opcua_meter_specs,
    opcua_nodes,
    write_ledger_csv,
)
from fmc.demo.settings import (
    DEMO_ENTERPRISE,
    DEMO_PLANT,
    LEDGER_FILE,
    MQTT_SOURCE,
    OPCUA_SOURCE,
    SPOOL_FILE,
    STORE_FILE,
    SUMMARY_FILE,
)
from fmc.demo.summary import DemoSummary, render_summary, summarise

if TYPE_CHECKING:  # typing only: the agent is imported when the demo runs
    from fmc.agent.runtime import Agent

# --- transport: broker and publisher --------------------------------------------------------------


class DemoBroker:
    """amqtt inside this process: one TCP listener on 127.0.0.1, anonymous, no $SYS topics."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._broker: Any = None

    @staticmethod
    def broker_config(host: str, port: int) -> dict[str, Any]:
        # amqtt 0.12 format: listeners by name ("default" is required) and plugins by dotted
        # class path. Leaving out BrokerSysPlugin means no $SYS interval; leaving out the logging
        # plugins keeps its packet log quiet.
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    async def start(self, attempts: int = 5) -> int:
        from amqtt.broker import Broker
        from amqtt.errors import BrokerError

        last: Exception | None = None
        for _ in range(attempts):  # a free port can be taken between the probe and the bind
            port = free_port(self.host)
            broker = Broker(self.broker_config(self.host, port))
            try:
                await broker.start()
            except BrokerError as e:
                last = e
                continue
            self._broker, self.port = broker, port
            return port
        raise RuntimeError(f"cannot start the demo MQTT broker on {self.host}: {last}")

    def has_subscriptions(self, filters: Sequence[str]) -> bool:
        subscriptions = self._broker.subscriptions if self._broker is not None else {}
        return all(subscriptions.get(f) for f in filters)

    async def stop(self) -> None:
        if self._broker is not None:
            broker, self._broker = self._broker, None
            await broker.shutdown()


class MqttPublisher:
    """The plant's side of MQTT: a paho client publishing with QoS 1 from its own thread."""

    def __init__(self, host: str, port: int, client_id: str = "plant-sim-publisher") -> None:
        import paho.mqtt.client as mqtt

        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.max_inflight_messages_set(1000)  # a tick publishes ~60 messages at once
        self._host, self._port = host, port
        self._pending: list[Any] = []
        self.published = 0

    async def connect(self, timeout_s: float = 10.0) -> None:
        await asyncio.to_thread(self._client.connect, self._host, self._port)
        self._client.loop_start()
        deadline = time.monotonic() + timeout_s
        while not self._client.is_connected():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulator could not connect to the demo broker on port {self._port}")
            await asyncio.sleep(0.02)

    def publish(self, messages: Sequence[SimMessage]) -> None:
        for m in messages:
            self._pending.append(self._client.publish(m.topic, m.payload, qos=1))
        self.published += len(messages)

    async def flush(self, timeout_s: float = 15.0) -> bool:
        """Wait until the broker acknowledged every message; False if it did not in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(info.is_published() for info in self._pending):
                self._pending.clear()
                return True
            await asyncio.sleep(0.02)
        return False

    async def close(self) -> None:
        await asyncio.to_thread(self._client.disconnect)
        self._client.loop_stop()


# --- the agent's configuration ---------------------------------------------------------------------

SETTLE_S = 1.5  # after the last tick: one publishing interval (0.5 s) and one poll round (1 s)


def demo_config(
    opcua_endpoint: str,
    broker_port: int,
    workdir: Path,
    metrics_port: int | None,
    machines: Sequence[MachineSpec] = DEMO_MACHINES,
    meters: Sequence[MeterSpec] = DEMO_METERS,
    dlt645: DemoDlt645Meter | None = None,
    modbus_port: int | None = None,  # the Modbus water meter (fmc.demo.modbus_meter), when it runs
) -> AgentConfig:
    """The agent configuration ``fmc demo`` runs with; the same shape as deploy/examples/agent.toml."""
    return AgentConfig.model_validate(
        {
            "enterprise": DEMO_ENTERPRISE,
            "opcua": [
                {
                    "name": OPCUA_SOURCE,
                    "endpoint": opcua_endpoint,
                    "security_policy": "None",  # a loopback demo; a plant uses Basic256Sha256
                    "timestamp": "source",
                    "reconnect_min_s": 0.2,
                    "reconnect_max_s": 2.0,
                    "namespaces": NAMESPACES,
                    "node": opcua_nodes(machines) + opcua_meter_nodes(),
                }
            ],
            "mqtt": [
                {
                    "name": MQTT_SOURCE,
                    "host": "127.0.0.1",
                    "port": broker_port,
                    "client_id": "fmc-demo",
                    "clean_session": False,  # persistent session: the broker keeps QoS 1 messages for us
                    "reconnect_min_s": 0.2,
                    "reconnect_max_s": 2.0,
                    "subscribe": [
                        {
                            "topic": "meters/{carrier}/{meter}",
                            "qos": 1,
                            "kind": "meter",
                            "value_path": "d.reading",
                            "timestamp_path": "t",
                            "timestamp_unit": "iso8601",
                        },
                    ],
                }
            ],
            **({"dlt645": [dlt645.source_config()]} if dlt645 else {}),  # the DL/T 645 meter (dlt645_meter.py)
            **({"modbus": [modbus_section(modbus_port)]} if modbus_port else {}),  # the water meter (modbus_meter.py)
            "plant": DEMO_PLANT,
            "equipment_class": equipment_classes(machines),
            "meter": meter_configs(meters) + opcua_meter_configs() + ([dlt645.meter_config()] if dlt645 else [])
            + (meter_configs([MODBUS_METER]) if modbus_port else []),
            "sink": {"type": "embedded", "path": str(workdir / STORE_FILE)},
            "spool": {"path": str(workdir / SPOOL_FILE)},
            "metrics": (
                {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"} if metrics_port else {"enabled": False}
            ),
            "log": {"level": "warning"},
        }
    )

@contextlib.contextmanager
def _quiet_loggers(names: Sequence[str], level: int) -> Iterator[None]:
    """Raise these libraries' log levels for the demo, and put them back afterwards."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, before, strict=True):
            lg.setLevel(old)


@contextlib.contextmanager
def _agent_logger(name: str = "fmc.demo.agent") -> Iterator[logging.Logger]:
    """The agent's warnings and errors on stderr, formatted as ``fmc run`` prints them; the
    summary on ``out`` stays clean. The handler is removed afterwards."""
    from fmc.core.logs import TextFormatter

    logger = logging.getLogger(name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter())
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


async def _wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


def _received(agent: Agent, source: str) -> float:
    return float(agent.metrics.value("fmc_messages_received_total", {"source": source}))


def _connected(agent: Agent, source: str) -> bool:
    return agent.metrics.value("fmc_source_connected", {"source": source}) >= 1


def _fresh_workdir(workdir: Path) -> None:
    """A demo starts afresh: an earlier demo's spool and store in the same work dir are replaced
    (its plant state would resume, and its meters would see this run's registers start over)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in (STORE_FILE, SPOOL_FILE):
        for suffix in ("", "-wal", "-shm", "-journal"):
            (workdir / f"{name}{suffix}").unlink(missing_ok=True)


@dataclass(slots=True)
class _Run:
    """The demo's live parts, for ``_simulate``."""

    sim: PlantSimulator
    server: OpcUaPlantServer
    broker: DemoBroker
    agent: Agent
    agent_task: asyncio.Task[None]
    cfg: AgentConfig
    water: ModbusWaterMeter | None = None
    first_tick_ms: int = 0
    last_tick_ms: int = 0
    dlt645: DemoDlt645Meter | None = None


async def _simulate(run: _Run, ticks: int, say: Callable[[str], None]) -> list[str]:
    """Run ``ticks`` seconds of plant and wait until the agent has what was sent.
    Returns the problems seen (empty when all went well)."""
    sim, agent, task = run.sim, run.agent, run.agent_task
    # start the plant's clock only once the agent listens on both sources, or its first seconds would be lost
    filters = [sub.mqtt_filter() for sub in run.cfg.mqtt[0].subscribe]
    ready = await _wait_until(
        lambda: task.done() or (run.broker.has_subscriptions(filters) and _connected(agent, OPCUA_SOURCE)
                                and (run.dlt645 is None or _connected(agent, DLT645_SOURCE))), 20.0
    )
    if task.done():
        return ["the agent stopped before it was connected to the simulated plant"]
    if not ready:
        missing = "the OPC UA server" if not _connected(agent, OPCUA_SOURCE) else "the MQTT broker"
        return [f"the agent did not connect to {missing} within 20 s"]
    publisher = MqttPublisher("127.0.0.1", run.broker.port)
    await publisher.connect()
    written = 0
    try:
        say(f"simulating {len(sim.machines)} machines and {len(sim.meters)} meters for {ticks} s …")
        t0 = time.monotonic()
        for k in range(ticks):
            await asyncio.sleep(max(0.0, t0 + k - time.monotonic()))  # one tick per wall-clock second
            if task.done():
                return ["the agent stopped while the plant was running"]
            now_ms = time.time_ns() // 1_000_000
            run.first_tick_ms = run.first_tick_ms or now_ms
            run.last_tick_ms = now_ms
            tick = sim.tick(now_ms)
            if run.dlt645 is not None:
                run.dlt645.tick()
            if run.water is not None:
                run.water.tick()
            written += await run.server.write(tick)
            publisher.publish(tick.messages)
            if k and k % 5 == 0:
                say(f"  {k:>3} s: OPC UA {written} values written, {_received(agent, OPCUA_SOURCE):.0f} received; "
                    f"MQTT {publisher.published} messages published, {_received(agent, MQTT_SOURCE):.0f} received")
        if not await publisher.flush():
            return ["the broker did not acknowledge every published message"]
    finally:
        await publisher.close()
    if run.dlt645 is not None:
        await run.dlt645.settle()  # its last value read, and a wrap just before it confirmed
    problems: list[str] = []
    sent = sim.report.mqtt_total
    if not await _wait_until(lambda: task.done() or _received(agent, MQTT_SOURCE) >= sent, 15.0):
        problems.append(f"the agent received {_received(agent, MQTT_SOURCE):.0f} of {sent} MQTT messages within 15 s")
    await asyncio.sleep(SETTLE_S)  # OPC UA: the last changes come with the next publish or poll
    return problems


async def run_demo(
    duration_s: float = 20.0,
    workdir: Path | None = None,
    out: TextIO = sys.stdout,
    seed: int = 2017,
) -> int:
    """Run the simulated plant through the real agent into the embedded store; print a summary.

    Returns the exit code: 0 when every MQTT message reached the agent, every connected machine
    delivered data, the meters' consumption matches the simulator's registers and the spool was
    empty at the end; 1 otherwise (the output says what went wrong).
    """
    from fmc.plant.ledger import load_inventory_csv

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="fmc-demo-"))
    _fresh_workdir(workdir)
    ticks = max(1, math.ceil(duration_s))
    say("fmc demo — SIMULATED DATA: a simulated textile plant (OPC UA machines, MQTT meters), the real agent, "
        "an embedded store")
    say(f"work dir: {workdir} (kept after the demo; an earlier demo's spool and store there are replaced)")
    ledger = write_ledger_csv(workdir / LEDGER_FILE)
    inventory = load_inventory_csv(ledger)
    say(f"equipment ledger 设备台账: {ledger.name}, {len(inventory)} rows ({len(DEMO_MACHINES)} connected machines, "
        f"{len(inventory) - len(DEMO_MACHINES)} on the ledger only)")
    history = write_history(workdir / STORE_FILE, len(inventory))
    say(f"SIMULATED HISTORY: {history} daily rollups and annual reports of {HISTORY_YEARS[0]}-{HISTORY_YEARS[-1]} "
        "written to the store, so the plan's targets can be shown")
    api = DemoApi(workdir, workdir / STORE_FILE)
    try:
        await api.start()
        say(f"API (fmc api, while the demo runs): {api.url}/docs  key (scope province): {api.key}")
        say(f"  curl -H 'Authorization: Bearer {api.key}' '{api.url}/v1/indicators?level=enterprise"
            f"&period={SHOWN_YEAR}&format=csv'")
    except Exception as e:  # the demo goes on without its API; say why
        say(f"PROBLEM: the API did not start: {type(e).__name__}: {e}")
    try:
        return await _run_plant(workdir, ticks, seed, inventory, say)
    finally:
        await api.stop()


async def _run_plant(workdir: Path, ticks: int, seed: int, inventory: Any, say: Callable[[str], None]) -> int:
    from fmc.agent.runtime import Agent
    from fmc.agent.spool import Spool

    problems: list[str] = []
    # the register is reset mid-run, early enough for a reading after the drop to confirm it (a lone
    # low reading may be a glitch: docs/plant-semantics.md §2)
    sim = PlantSimulator(seed, reset_at_tick=max(0, ticks // 2 - METER_PERIOD_S))
    with _quiet_loggers(("amqtt", "transitions", "asyncua"), logging.ERROR), _agent_logger() as agent_log:
        server, broker, dlt645 = OpcUaPlantServer(), DemoBroker(), DemoDlt645Meter(seed)
        water = ModbusWaterMeter(seed)
        try:
            endpoint = await server.start(sim.initial_values())
            await broker.start()
            dlt645.start()
            await water.start()
        except (RuntimeError, OSError) as e:
            await broker.stop()
            await server.stop()
            dlt645.stop()
            say(f"PROBLEM: {e}")
            return 1
        try:
            metrics_port = free_port()
            try:
                cfg = demo_config(endpoint, broker.port, workdir, metrics_port, dlt645=dlt645, modbus_port=water.port)
                agent = Agent(cfg, logger=agent_log, inventory=inventory)
            except Exception as e:  # the demo's own config is wrong: say so plainly (the finally stops the servers)
                say(f"PROBLEM: cannot set up the agent: {type(e).__name__}: {e}")
                return 1
            say(f"OPC UA server (asyncua, security None): {endpoint}  {len(DEMO_MACHINES)} machines under "
                "Objects/Machines, the dyehouse's energy counter under Objects/Meters (a meter node)")
            say(f"MQTT broker (amqtt): 127.0.0.1:{broker.port}  {len(DEMO_METERS)} meters;  "
                f"agent metrics while it runs: http://127.0.0.1:{metrics_port}/metrics")
            say(f"Modbus TCP water meter (pymodbus): 127.0.0.1:{water.port} unit 1, input register 0 (uint32 litres)")
            say(f"demo settings: [plant] interval_minutes = {DEMO_PLANT['interval_minutes']} (default 15) so meter "
                f"intervals complete in a short run; offline_after_s = {DEMO_PLANT['offline_after_s']:g} "
                "(default 600) so a lost link shows")
            say(f"DL/T 645 meter (simulated converter): 127.0.0.1:{dlt645.port}  address {dlt645.meter.address}, "
                f"{dlt645.spec.meter}; its register wraps at 999999.99 kWh (rollover = 1000000)")
            started_ms = time.time_ns() // 1_000_000
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop), name="fmc-demo-agent")
            run = _Run(sim, server, broker, agent, task, cfg, dlt645=dlt645, water=water)
            try:
                problems += await _simulate(run, ticks, say)
            except Exception as e:  # reported below; the agent and the servers still stop cleanly
                problems.append(f"{type(e).__name__}: {e}")
            finally:
                stop.set()  # the agent flushes its spool into the store before it returns
                try:
                    await task
                except Exception as e:
                    problems.append(f"the agent failed: {type(e).__name__}: {e}")
        finally:
            await water.stop()
            await broker.stop()
            await server.stop()
            dlt645.stop()

    store_path = workdir / STORE_FILE
    if getattr(agent, "plant", None) is None or not run.first_tick_ms or not store_path.exists():
        for p in [*problems, f"the run produced no data to summarise (work dir {workdir})"]:
            say(f"PROBLEM: {p}")
        return 1
    with Spool(cfg.spool.path, max_bytes=cfg.spool.max_bytes) as spool:
        spool_depth = spool.stats().depth
    if (increments := dlt645.increments_kwh) is not None:
        sim.report.meter_increments[dlt645.spec.meter] = increments
    if water.increments is not None:
        sim.report.meter_increments[MODBUS_METER.meter] = water.increments
    summary = summarise(agent, sim.report, workdir=workdir, spool_depth=spool_depth, started_ms=started_ms,
                        first_tick_ms=run.first_tick_ms, last_tick_ms=run.last_tick_ms,
                        meters=(*DEMO_METERS, *opcua_meter_specs(), dlt645.spec, MODBUS_METER))
    problems += _checks(summary)
    summary.problems = problems
    (workdir / SUMMARY_FILE).write_text(json.dumps(summary.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
    say(render_summary(summary))
    table, table_problems = await indicator_table(workdir / STORE_FILE)
    say(table)
    problems += table_problems
    return 0 if not problems else 1


def _checks(s: DemoSummary) -> list[str]:
    """What must hold after a good run; each failure is printed as a PROBLEM and makes the exit code 1."""
    problems: list[str] = []
    if s.mqtt_received < s.report.mqtt_total:
        problems.append(f"the agent received {s.mqtt_received} of {s.report.mqtt_total} MQTT messages")
    silent = [e.equipment for e in s.equipment if e.connected and (e.values == 0 or e.state_changes == 0)]
    if silent:
        problems.append(f"no values or no states in the store for connected machine(s): {', '.join(silent)}")
    for m in s.meters:
        if m.sim_increments is not None and abs(m.consumption - m.sim_increments) > 1e-6 * max(1.0, m.sim_increments):
            problems.append(f"meter {m.meter}: the agent counted {m.consumption:.6f} {m.unit}, the register moved "
                            f"{m.sim_increments:.6f} {m.unit}")
    if s.spool_depth != 0:
        problems.append(f"{s.spool_depth} points were left in the spool (they go to the store on the next start)")
    return problems
