"""Benchmark: DL/T 645 reads per second — fmc's client against the ``dlt645`` package's, and the codec alone.

A bus of ten simulated meters (``fmc.sources.dlt645.simulator``) answers read-data requests for
forward active energy, in this process:

- over TCP on 127.0.0.1 (a transparent converter): fmc's ``Client`` (the source's request with its
  checks), then the ``dlt645`` package's ``MeterClientService`` (3.2.0) reading the same register —
  the bare client the agent's figure is put against;
- over a socat pty pair (needs socat): fmc's ``Client`` on the serial transport (pyserial);
- the codec alone: ``scan`` + ``decode_value`` of a reply frame.

A real bus is far slower than any of these: at 2400 baud a request with its preamble (20 bytes)
and a reply (22 bytes) take 0.19 s on the wire, plus the meter's turn-around (20-500 ms by the
standard), so about 2-4 reads per second per bus. The figures say the agent is never the limit.

Run: .venv/bin/python -m bench.dlt645_reads [--reads 2000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from fmc.sources.dlt645 import frame as f
from fmc.sources.dlt645.client import Client, make_transport
from fmc.sources.dlt645.config import Dlt645Bus
from fmc.sources.dlt645.simulator import MeterBus, SerialMeterServer, SimulatedMeter, TcpMeterServer

FORWARD = f.IDENTIFIERS[0x00010000]
ADDRESSES = [f"{i:012d}" for i in range(1, 11)]


def fmc_reads(bus: Dlt645Bus, n: int) -> float:
    transport = make_transport(bus)
    transport.open()
    client = Client(transport)
    try:
        began = time.perf_counter()
        for k in range(n):
            r = client.read(ADDRESSES[k % len(ADDRESSES)], FORWARD, 1.0, 0)
            assert r.value is not None, r
        return n / (time.perf_counter() - began)
    finally:
        transport.close()


def package_reads(port: int, n: int) -> float:
    from dlt645 import MeterClientService

    service = MeterClientService.new_tcp_client("127.0.0.1", port, timeout=1.0)
    service.connect()
    try:
        # the package sends its address string in wire order: the nameplate's digits low byte first
        clients = [f.encode_address(address).hex() for address in ADDRESSES]
        began = time.perf_counter()
        for k in range(n):
            service.set_address(clients[k % len(clients)])
            item = service.read_00(0x00010000)
            assert item is not None
        return n / (time.perf_counter() - began)
    finally:
        service.disconnect()


def codec_decodes(n: int) -> float:
    raw = f.encode_frame(ADDRESSES[0], 0x91, f.read_reply_data(FORWARD.di, f.encode_value(FORWARD, 123456.78)), 2)
    began = time.perf_counter()
    for _ in range(n):
        s = f.scan(raw)
        assert s.frame is not None
        f.decode_value(FORWARD, s.frame.data[4:])
    return n / (time.perf_counter() - began)


def pty_reads(bus: MeterBus, n: int) -> float | None:
    socat = shutil.which("socat")
    if socat is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        agent, meters = str(Path(folder) / "agent"), str(Path(folder) / "meters")
        proc = subprocess.Popen([socat, f"pty,raw,echo=0,link={agent}", f"pty,raw,echo=0,link={meters}"])
        try:
            deadline = time.monotonic() + 10
            while not (Path(agent).exists() and Path(meters).exists()) and time.monotonic() < deadline:
                time.sleep(0.01)
            with SerialMeterServer(bus, meters):
                return fmc_reads(Dlt645Bus(port=agent), n)
        finally:
            proc.terminate()
            proc.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()
    bus = MeterBus([SimulatedMeter(a, {FORWARD.di: 1000.0 + i}) for i, a in enumerate(ADDRESSES)])
    with TcpMeterServer(bus) as server:
        ours = fmc_reads(Dlt645Bus(transport="tcp", host="127.0.0.1", port=server.port), args.reads)
        theirs = package_reads(server.port, args.reads)
    serial = pty_reads(bus, args.reads)
    decodes = codec_decodes(100_000)
    print(f"DL/T 645 reads/s, {len(ADDRESSES)} simulated meters, {args.reads} reads (the simulator in this process)")
    print(f"  tcp 127.0.0.1, fmc client:          {ours:8.0f}")
    print(f"  tcp 127.0.0.1, dlt645 3.2.0 client: {theirs:8.0f}   fmc / package = {ours / theirs:.2f}")
    print(f"  pty pair (socat), fmc client:       {serial:8.0f}" if serial else "  pty pair: socat not installed")
    print(f"  codec alone (scan + decode):        {decodes:8.0f} frames/s")
    print("  a real bus at 2400 baud: ~0.19 s on the wire per read, 2-4 reads/s")


if __name__ == "__main__":
    main()
