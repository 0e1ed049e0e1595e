"""Benchmark: OPC UA data changes → agent (OPC UA source → Ingest → SQLite spool), against a bare asyncua client.

Three processes per setting, on one machine:

- the server: an asyncua server with N Double variables (100 per machine object) that writes
  every variable `hz` times a second, spread over the period in ten slices, with SourceTimestamp
  = time of the write. asyncua's server deep-copies each DataValue once per monitored item,
  which alone costs more than a CPU core at 20,000 changes/s; this load generator replaces that
  copy with a reference (it never changes a DataValue after writing it). What goes over the wire
  is unchanged; only the generator gets cheaper, so it can offer the load.
- the bare client: asyncua's UaClient with one subscription over all N variables and a publish
  callback that only counts notifications whose SourceTimestamp is at most 2 s old.
- the agent: ``fmc.sources.opcua.source.OpcUaSource`` in its thread, feeding a real ``Ingest`` and ``Spool``
  (synchronous=full, the default). A change counts as handled when its point was committed to the
  spool at most 2 s after its SourceTimestamp (the spool records each row's commit time).

The bare client and the agent run one after the other against the same server (two clients at
once would halve what the server can offer each). Each counts the changes whose SourceTimestamp
falls in a window of ``--seconds`` after a warm-up. Peak RSS is the agent process's VmHWM.

On a small machine the pure-Python server is the limit (about 20,000 changes/s on one core), so
both clients usually take all it offers; the report therefore also gives each client's CPU share
and the changes per second per core it used (its capacity if the server offered more).
``--gc-freeze`` calls ``gc.freeze()`` in the agent process after start-up, which spares the
cyclic garbage collector from scanning the configuration and per-node plans again and again.

Run: .venv/bin/python -m bench.opcua_changes            (5,000 × 1/s and 20,000 × 1/s)
     .venv/bin/python -m bench.opcua_changes --settings 10000x2 --seconds 20 --gc-freeze
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.ports import free_port

HOST = "127.0.0.1"
BENCH_URI = "http://example.com/fmc-bench/"
LAG_LIMIT_S = 2.0
PER_MACHINE = 100
SLICES = 10  # writes per period are spread over this many slices


def variable_name(i: int) -> str:
    return f"M{i // PER_MACHINE:04d}.V{i % PER_MACHINE:02d}"


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the server process --------------------------------------------------------------------------------


async def serve(port: int, variables: int, hz: float) -> None:
    from asyncua import Server, ua
    from asyncua.server import monitored_item_service

    def keep_reference(self: Any, value: Any) -> None:  # see the module docstring
        self.old_dvalue = self.current_dvalue
        self.current_dvalue = value

    monitored_item_service.MonitoredItemValues.set_current_datavalue = keep_reference  # type: ignore[method-assign]
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://{HOST}:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace(BENCH_URI)
    folder = await server.nodes.objects.add_folder(ua.NodeId("Bench", ns), ua.QualifiedName("Bench", ns))
    node_ids: list[Any] = []
    machine = None
    for i in range(variables):
        if i % PER_MACHINE == 0:
            name = f"M{i // PER_MACHINE:04d}"
            machine = await folder.add_object(ua.NodeId(name, ns), ua.QualifiedName(name, ns))
        var = await machine.add_variable(ua.NodeId(variable_name(i), ns), ua.QualifiedName(f"V{i % 100:02d}", ns),
                                         0.0)
        node_ids.append(var.nodeid)
    aspace = server.iserver.aspace
    async with server:
        print("ready", flush=True)
        period = 1.0 / hz
        slices = [node_ids[k::SLICES] for k in range(SLICES)]
        due = time.monotonic()
        round_ = 0
        behind = 0
        while True:
            round_ += 1
            for part in slices:
                now = datetime.now(UTC)
                for j, node_id in enumerate(part):
                    dv = ua.DataValue(ua.Variant(float(round_ * 1000 + j), ua.VariantType.Double),
                                      SourceTimestamp=now, ServerTimestamp=now)
                    await aspace.write_attribute_value(node_id, ua.AttributeIds.Value, dv)
                due += period / SLICES
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    behind += 1
                    if behind % 50 == 1:
                        print(f"server behind schedule by {-delay:.2f}s", file=sys.stderr, flush=True)
                    await asyncio.sleep(0)


# --- the bare client process ------------------------------------------------------------------------------


async def bare(port: int, variables: int, hz: float, seconds: float, warmup: float) -> dict[str, Any]:
    from asyncua import Client, ua

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    # asyncua's supervisor probes the server every watchdog interval and drops the connection when
    # a probe takes over a second, which a loaded machine's busy server does while items are created
    client = Client(f"opc.tcp://{HOST}:{port}/", timeout=60, watchdog_intervall=30.0)
    await client.connect()
    ns = await client.get_namespace_index(BENCH_URI)
    window: tuple[float, float] | None = None  # count changes whose SourceTimestamp falls in it
    total = within = 0
    limit = LAG_LIMIT_S

    def on_publish(result: Any) -> None:
        nonlocal total, within
        if window is None:
            return
        now = time.time()
        start, end = window
        for notification in result.NotificationMessage.NotificationData or ():
            if isinstance(notification, ua.DataChangeNotification):
                for item in notification.MonitoredItems:
                    ts = item.Value.SourceTimestamp.timestamp()
                    if start <= ts < end:
                        total += 1
                        if now - ts <= limit:
                            within += 1

    interval = 1000.0 / hz
    params = ua.CreateSubscriptionParameters(RequestedPublishingInterval=interval, RequestedLifetimeCount=600,
                                             RequestedMaxKeepAliveCount=10, MaxNotificationsPerPublish=10_000,
                                             PublishingEnabled=True, Priority=0)
    sub = await client.uaclient.create_subscription(params, on_publish)
    for start in range(0, variables, 1000):
        items = [ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=ua.NodeId(variable_name(i), ns), AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(ClientHandle=i + 1, SamplingInterval=interval, QueueSize=1,
                                                        DiscardOldest=True))
            for i in range(start, min(variables, start + 1000))]
        await client.uaclient.create_monitored_items(ua.CreateMonitoredItemsParameters(
            SubscriptionId=sub.SubscriptionId, TimestampsToReturn=ua.TimestampsToReturn.Both, ItemsToCreate=items))
    await asyncio.sleep(warmup)
    cpu0, t0 = time.process_time(), time.monotonic()
    start = time.time()
    window = (start, start + seconds)
    await asyncio.sleep(seconds + LAG_LIMIT_S + 0.5)  # changes of the window's end may arrive up to the limit late
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    await client.disconnect()
    return {"changes": total, "within_lag": within, "seconds": seconds, "cpu_s": cpu, "cpu_seconds": elapsed,
            "peak_rss_mb": peak_rss_mb()}


# --- the agent process ---------------------------------------------------------------------------------


def agent(port: int, variables: int, hz: float, seconds: float, warmup: float, directory: Path,
          gc_freeze: bool) -> dict[str, Any]:
    from fmc.agent.ingest import Ingest
    from fmc.agent.metrics import AgentMetrics
    from fmc.agent.spool import Spool
    from fmc.core import lineprotocol
    from fmc.core.config import EnterpriseConfig
    from fmc.sources.opcua import config as schema
    from fmc.sources.opcua.source import OpcUaSource

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    enterprise = EnterpriseConfig(id="bench", name="bench", region="330602", industry="17")
    cfg = schema.OpcUaSource(
        name="bench", endpoint=f"opc.tcp://{HOST}:{port}/", namespaces={"bench": BENCH_URI}, timeout_s=60,
        node=[{"equipment": f"m{i // PER_MACHINE:04d}", "signal": f"v{i % PER_MACHINE:02d}",
               "node_id": f"ns=bench;s={variable_name(i)}", "sampling_interval_ms": 1000.0 / hz}
              for i in range(variables)],
    )
    spool = Spool(directory / "spool.db")
    metrics = AgentMetrics()
    ingest = Ingest(spool, metrics, max_series=1_000_000)
    ingest.start()
    source = OpcUaSource(cfg, enterprise, ingest, metrics, logging.getLogger("bench.agent"))
    source.start()
    deadline = time.monotonic() + 120
    while not source.connected:
        if time.monotonic() > deadline:
            raise SystemExit("the agent did not connect within 120 s")
        time.sleep(0.05)
    time.sleep(warmup)
    if gc_freeze:
        gc.freeze()  # what the agent would do after start-up: its config and plans are never garbage
    cpu0, t0 = time.process_time(), time.monotonic()
    start_ns = time.time_ns()
    end_ns = start_ns + int(seconds * 1e9)
    time.sleep(seconds + LAG_LIMIT_S + 0.5)  # changes of the window's end may be committed up to the limit late
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    source.stop()
    ingest.stop()
    changes = within = 0
    limit_ns = int(LAG_LIMIT_S * 1e9)
    while True:  # the whole spool, oldest first, in batches; delete what was read
        batch = spool.read_batch(100_000)
        if not batch.ids:
            break
        for line, at_ms in zip(batch.lines, batch.enqueued_ms, strict=True):
            ts_ns = lineprotocol.parse(line).ts_ns
            if start_ns <= ts_ns < end_ns:
                changes += 1
                if at_ms * 1_000_000 - ts_ns <= limit_ns:
                    within += 1
        spool.complete(batch)
    spool.close()
    return {"changes": changes, "within_lag": within, "seconds": seconds, "cpu_s": cpu, "cpu_seconds": elapsed,
            "peak_rss_mb": peak_rss_mb()}


# --- the run --------------------------------------------------------------------------------------------


def child(args: list[str], timeout: float) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "bench.opcua_changes", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parent.parent, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_setting(variables: int, hz: float, seconds: float, warmup: float, gc_freeze: bool) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.opcua_changes", "serve", str(port), str(variables),
                               str(hz)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the benchmark server did not start")
        common = [str(port), str(variables), str(hz), str(seconds), str(warmup)]
        bare_result = child(["bare", *common], timeout=seconds + warmup + 300)
        with tempfile.TemporaryDirectory(prefix="fmc-bench-opcua-") as tmp:
            agent_result = child(["agent", *common, tmp, "freeze" if gc_freeze else "-"],
                                 timeout=seconds + warmup + 300)
    finally:
        server.terminate()
        server.wait(10)
    return {"variables": variables, "hz": hz, "offered": variables * hz, "bare": bare_result, "agent": agent_result}


def report(results: list[dict[str, Any]]) -> None:
    print()
    print(f"{'setting':>16} {'offered/s':>10} {'bare/s':>9} {'agent/s':>9} {'ratio':>6} {'agent RSS':>10} "
          f"{'agent CPU':>10} {'bare CPU':>9} {'agent cap.':>11} {'bare cap.':>10} {'cap. ratio':>10}")
    for r in results:
        bare, agent = r["bare"], r["agent"]
        bare_rate = bare["within_lag"] / bare["seconds"]
        agent_rate = agent["within_lag"] / agent["seconds"]
        bare_cpu = bare["cpu_s"] / bare["cpu_seconds"]
        agent_cpu = agent["cpu_s"] / agent["cpu_seconds"]
        # changes per second of one whole core: what each could take if the server offered more
        bare_cap = (bare["changes"] / bare["seconds"]) / bare_cpu
        agent_cap = (agent["changes"] / agent["seconds"]) / agent_cpu
        print(f"{r['variables']:>8,} × {r['hz']:g}/s {r['offered']:>10,.0f} {bare_rate:>9,.0f} {agent_rate:>9,.0f} "
              f"{agent_rate / bare_rate if bare_rate else float('nan'):>6.2f} {agent['peak_rss_mb']:>7.0f} MB "
              f"{100 * agent_cpu:>9.0f}% {100 * bare_cpu:>8.0f}% {agent_cap:>11,.0f} {bare_cap:>10,.0f} "
              f"{agent_cap / bare_cap:>10.2f}")
    print()
    print("bare/s, agent/s: data changes per second (by SourceTimestamp in the window) delivered within 2 s")
    print("(bare: received; agent: committed to the spool); ratio = agent/s ÷ bare/s in the same run.")
    print("CPU: share of one core used by that process; cap. = changes per second per core used")
    print("(an estimate of the most each could take when the server is not the limit).")
    print("Goal: >= 10,000 changes/s, ratio >= 0.6, RSS <= 150 MB at 5,000 items.")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        asyncio.run(serve(int(argv[1]), int(argv[2]), float(argv[3])))
        return
    if argv and argv[0] == "bare":
        port, variables, hz, seconds, warmup = int(argv[1]), int(argv[2]), float(argv[3]), float(argv[4]), \
            float(argv[5])
        print(json.dumps(asyncio.run(bare(port, variables, hz, seconds, warmup))))
        return
    if argv and argv[0] == "agent":
        port, variables, hz, seconds, warmup = int(argv[1]), int(argv[2]), float(argv[3]), float(argv[4]), \
            float(argv[5])
        print(json.dumps(agent(port, variables, hz, seconds, warmup, Path(argv[6]), argv[7] == "freeze")))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="5000x1,20000x1",
                        help="comma-separated VARIABLESxHZ, e.g. 5000x1,20000x1,10000x2")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per client")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after subscribing before measuring")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="call gc.freeze() in the agent process after start-up (see the closing note)")
    args = parser.parse_args(argv)
    results = []
    for setting in args.settings.split(","):
        variables, hz = setting.lower().split("x")
        print(f"running {int(variables):,} variables × {float(hz):g}/s ...", flush=True)
        results.append(run_setting(int(variables), float(hz), args.seconds, args.warmup, args.gc_freeze))
    report(results)
    print(f"(python {sys.version.split()[0]}, {os.cpu_count()} CPU(s))")


if __name__ == "__main__":
    main()
