"""Benchmark: Modbus TCP polls → agent (Modbus source → Ingest → SQLite spool), against a bare pymodbus client.

Three processes, on one machine:

- the server: one pymodbus TCP server (``ModbusTcpServer``) with ``--devices`` unit ids of
  ``--registers`` holding registers each, every read answered from memory: the load is the protocol.
- the bare client: one ``AsyncModbusTcpClient`` connection per device (as the agent has), each reading
  its registers in one request every ``--interval`` seconds, counting the answers.
- the agent: ``fmc.sources.modbus.source.ModbusSource`` in its thread with one device per unit id and
  one uint16 signal per register (so one request per device and round, like the bare client), feeding
  a real ``Ingest`` and ``Spool`` (synchronous=full, the default): every poll commits ``--registers``
  points.

The bare client and the agent run one after the other against the same server. Each counts the
polls answered in a window of ``--seconds`` after a warm-up, and the CPU seconds its process used in
that window (user + system, ``time.process_time``), so the report gives polls per second, the
agent's ratio to the bare client, and CPU seconds per poll for both.

Run: .venv/bin/python -m bench.modbus_polls                (50 devices × 100 registers at 1 s)
     .venv/bin/python -m bench.modbus_polls --devices 100 --interval 0.5 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.ports import free_port

HOST = "127.0.0.1"


# --- the server process ---------------------------------------------------------------------------------

async def serve(port: int, devices: int, registers: int) -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    units = [SimDevice(id=u, simdata=[SimData(0, count=registers, values=u, datatype=DataType.REGISTERS)])
             for u in range(1, devices + 1)]
    server = ModbusTcpServer(units, address=(HOST, port))
    await server.serve_forever(background=True)
    print("ready", flush=True)
    await asyncio.Event().wait()


# --- the bare client -------------------------------------------------------------------------------------

async def bare(port: int, devices: int, registers: int, interval: float, seconds: float, warmup: float
               ) -> dict[str, Any]:
    from pymodbus.client import AsyncModbusTcpClient

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    clients = [AsyncModbusTcpClient(HOST, port=port, timeout=2, retries=0, reconnect_delay=0) for _ in range(devices)]
    for client in clients:
        await client.connect()
    start = time.monotonic() + warmup
    end = start + seconds
    counted = [0]

    async def poll(unit: int, client: AsyncModbusTcpClient) -> None:
        due = time.monotonic()
        while time.monotonic() < end:
            response = await client.read_holding_registers(0, count=registers, device_id=unit)
            if not response.isError() and len(response.registers) == registers and start <= time.monotonic() < end:
                counted[0] += 1
            due += interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    tasks = [asyncio.create_task(poll(u, c)) for u, c in enumerate(clients, start=1)]
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    cpu = time.process_time() - cpu0
    await asyncio.gather(*tasks)
    for client in clients:
        client.close()
    return {"polls": counted[0], "cpu_s": cpu}


# --- the agent -------------------------------------------------------------------------------------------

def agent(port: int, devices: int, registers: int, interval: float, seconds: float, warmup: float, folder: Path
          ) -> dict[str, Any]:
    from fmc.agent.ingest import Ingest
    from fmc.agent.metrics import AgentMetrics
    from fmc.agent.spool import Spool
    from fmc.core.config import EnterpriseConfig
    from fmc.sources.modbus.config import ModbusSource as Settings
    from fmc.sources.modbus.source import ModbusSource

    cfg = Settings.model_validate({
        "name": "bench", "host": HOST, "port": port,
        "device": [{"unit": u, "equipment": f"m{u:03d}", "poll_interval_s": interval, "timeout_s": 2.0,
                    "retries": 0, "register": [{"address": a, "signal": f"r{a:03d}"} for a in range(registers)]}
                   for u in range(1, devices + 1)],
    })
    enterprise = EnterpriseConfig(id="bench", name="bench", region="330602", industry="17")
    metrics = AgentMetrics()
    log = logging.getLogger("bench.modbus")
    with Spool(folder / "spool.db", max_bytes=8 << 30) as spool:
        ingest = Ingest(spool, metrics, max_series=devices * registers + 10, logger=log)
        ingest.start()
        source = ModbusSource(cfg, enterprise, ingest, metrics, log)
        source.start()
        time.sleep(warmup)
        answered0 = sum(d.answered for d in source.devices)
        cpu0 = time.process_time()
        time.sleep(seconds)
        answered = sum(d.answered for d in source.devices) - answered0
        cpu = time.process_time() - cpu0
        errors = {s.labels["reason"]: s.value for m in metrics.registry.collect() if m.name == "fmc_source_errors"
                  for s in m.samples if s.name.endswith("_total")}
        late = sum(d.polls for d in source.devices) - sum(d.answered for d in source.devices)
        source.stop()
        ingest.stop()
        spooled = spool.stats().depth
    return {"polls": answered, "cpu_s": cpu, "points_spooled": spooled, "errors": errors, "unanswered": late}


# --- the parent --------------------------------------------------------------------------------------------

def _child(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "bench.modbus_polls", *args], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["server"]:
        asyncio.run(serve(int(argv[1]), int(argv[2]), int(argv[3])))
        return
    if argv[:1] == ["bare"]:
        port, devices, registers, interval, seconds, warmup = argv[1:7]
        print(json.dumps(asyncio.run(bare(int(port), int(devices), int(registers), float(interval), float(seconds),
                                          float(warmup)))))
        return
    if argv[:1] == ["agent"]:
        port, devices, registers, interval, seconds, warmup, folder = argv[1:8]
        print(json.dumps(agent(int(port), int(devices), int(registers), float(interval), float(seconds),
                               float(warmup), Path(folder))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args(argv)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.modbus_polls", "server", str(port), str(args.devices),
                               str(args.registers)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        common = [str(port), str(args.devices), str(args.registers), str(args.interval), str(args.seconds),
                  str(args.warmup)]
        print(f"running {args.devices} devices × {args.registers} registers every {args.interval:g} s, "
              f"{args.seconds:g} s each ...", flush=True)
        bare_result = _child("bare", *common)
        with tempfile.TemporaryDirectory(prefix="fmc-bench-modbus-") as folder:
            agent_result = _child("agent", *common, folder)
    finally:
        server.terminate()
        server.wait(10)
    offered = args.devices / args.interval
    rows = [("bare pymodbus", bare_result), ("agent", agent_result)]
    print()
    print(f"{'client':>14} {'offered/s':>10} {'polls/s':>9} {'ratio':>6} {'CPU s/poll':>11} {'CPU share':>10}")
    bare_rate = bare_result["polls"] / args.seconds
    for name, r in rows:
        rate = r["polls"] / args.seconds
        per_poll = r["cpu_s"] / r["polls"] if r["polls"] else float("nan")
        print(f"{name:>14} {offered:>10,.1f} {rate:>9,.1f} {rate / bare_rate if bare_rate else 0:>6.2f} "
              f"{per_poll:>11.5f} {r['cpu_s'] / args.seconds:>9.0%}")
    if agent_result.get("errors"):
        print(f"agent: failed requests by reason {agent_result['errors']}")
    print()
    print(f"polls/s: requests of {args.registers} holding registers answered per second in the window; the agent's")
    print("also decoded and committed to the spool (one uint16 signal point per register); ratio = agent ÷ bare.")
    print("CPU s/poll: CPU seconds (user + system) of that process per answered poll; CPU share: of one core.")
    print(f"(python {sys.version.split()[0]}, {os.cpu_count()} CPU(s))")


if __name__ == "__main__":
    main()
