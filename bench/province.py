"""Benchmark: the central API on a synthetic province (issue 4).

20,000 enterprises in 90 counties of 11 cities, in the plan's ten key industries; one year of
daily rollups (``enterprise_daily`` and ``consumption_daily`` for electricity and water intake,
the agents' shapes) plus annual reports, written to a real InfluxDB; a registry CSV with the
enterprises' reported base-year figures. Then ``fmc api`` runs as its own process and the
benchmark prints:

- cold: the time of the first county-level annual request (store queries + engine + pooling;
  ``--period``: of another period, such as a year to date through mid-month), on the first start
  (the sums cache reads the year, the year before and the base year from InfluxDB) and after a
  restart (the sums from the cache file); with ``--without-cache``, summed by InfluxDB without a
  cache (the reference);
- warm: latency p50/p95/p99 of the county endpoint and of the enterprise endpoint under 50
  concurrent clients;
- the API process's peak RSS (VmHWM).

Goal: cold ≤ 10 s, warm p95 ≤ 50 ms, API RSS ≤ 250 MB.

Run: make bench   (or: .venv/bin/python -m bench.province --enterprises 20000)
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from tests.ports import free_port
from tests.servers.influxdb import InfluxDBServer

KEY_INDUSTRIES = ("13", "14", "15", "17", "18", "19", "22", "26", "28", "29", "30", "32")
TZ = ZoneInfo("Asia/Shanghai")
DB = "fmc"


def regions(n_counties: int, n_cities: int) -> list[str]:
    """County codes 33CCKK: the counties spread over the cities."""
    out = []
    for i in range(n_counties):
        city = 1 + i % n_cities
        county = 2 + i // n_cities
        out.append(f"33{city:02d}{county:02d}")
    return out


def enterprises(n: int, counties: list[str], seed: int) -> list[tuple[str, str, str, dict[str, float]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        total = rng.randint(20, 400)
        nc = int(total * rng.uniform(0.2, 0.8))
        out.append((f"E{i:06d}", rng.choice(counties), rng.choice(KEY_INDUSTRIES),
                    {"total": total, "nc": nc, "net": rng.uniform(0.3, 0.9), "kwh": total * rng.uniform(80, 400),
                     "water": total * rng.uniform(0.5, 4), "va": total * rng.uniform(3e4, 2e5)}))
    return out


def series_lines(ent: tuple[str, str, str, dict[str, float]], days: list[date], rng: random.Random) -> list[str]:
    """One enterprise's rollups for ``days``: its three series, each day after day."""
    name, region, industry, p = ent
    tags = f"enterprise={name},industry={industry},region={region}"
    stamps = [int(datetime(d.year, d.month, d.day, tzinfo=TZ).timestamp()) * 1_000_000_000 for d in days]
    total, nc = int(p["total"]), int(p["nc"])
    net = int(nc * p["net"])
    daily = (f"enterprise_daily,{tags} asset_value_nc=0,asset_value_total=0,equipment_nc={nc}i,"
             f"equipment_networked={net}i,equipment_total={total}i,nc_equipment_networked={net}i")
    lines = [f"{daily} {ts}" for ts in stamps]
    for ts in stamps:
        kwh = p["kwh"] * rng.uniform(0.8, 1.2)
        lines.append(f"consumption_daily,carrier=electricity,{tags} amount={kwh:.3f},coverage=1,"
                     f"tce={kwh * 0.1229 / 1000:.6f} {ts}")
    for ts in stamps:
        water = p["water"] * rng.uniform(0.8, 1.2)
        lines.append(f"consumption_daily,carrier=water_intake,{tags} amount={water:.3f},coverage=1,m3={water:.3f} {ts}")
    return lines


def post(client: httpx.Client, url: str, lines: list[str]) -> None:
    body = gzip.compress("\n".join(lines).encode(), 1)
    for attempt in range(60):
        r = client.post(f"{url}/write", params={"db": DB, "precision": "ns"}, content=body,
                        headers={"Content-Encoding": "gzip"})
        if r.status_code == 204:
            return
        if r.status_code >= 500 and attempt < 59:  # cache full while it snapshots: wait and retry
            time.sleep(0.5)
            continue
        raise RuntimeError(f"write failed: {r.status_code} {r.text[:200]}")


def seed(server: InfluxDBServer, ents, year: int, workers: int) -> int:
    """The year's rollups, written series by series (each series' days in one request, the requests
    in enterprise order): InfluxDB 1.x then cuts full blocks per series. Day by day (every series
    one point per request, the agents' order) a 20,000-enterprise year had not got past March after
    38 minutes on this 2-core machine, its cache snapshots and compactions taking ever longer."""
    days = [date(year, 1, 1) + timedelta(days=i) for i in range((date(year + 1, 1, 1) - date(year, 1, 1)).days)]
    per_request = max(1, 30_000 // (3 * len(days)))  # enterprises per request: about 30,000 lines
    chunks = [ents[i : i + per_request] for i in range(0, len(ents), per_request)]
    written = 0
    lock = threading.Lock()
    clients = threading.local()

    def write_chunk(chunk: list[tuple[str, str, str, dict[str, float]]]) -> None:
        nonlocal written
        if not hasattr(clients, "c"):
            clients.c = httpx.Client(timeout=120)
        lines = [line for ent in chunk for line in series_lines(ent, days, random.Random(ent[0]))]
        post(clients.c, server.url, lines)
        with lock:
            written += len(lines)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(write_chunk, chunks))
    # annual reports (yuan) of the year
    start = int(datetime(year, 1, 1, tzinfo=TZ).timestamp()) * 1_000_000_000
    reports = [
        f"enterprise_report,enterprise={e},industry={ind},period={year},region={reg} "
        f"employees_avg={max(10, int(p['total'] * 1.5))},value_added={p['va'] * 1e4:.2f},"
        f"value_added_comparable={p['va'] * 1e4:.2f} {start}"
        for e, reg, ind, p in ents
    ]
    with httpx.Client(timeout=120) as c:
        post(c, server.url, reports)
    return written + len(reports)


def write_registry(path: Path, ents, seed_: int) -> None:
    rng = random.Random(seed_)
    with path.open("w", encoding="utf-8") as f:
        f.write("enterprise,name,region,industry,baseline_nc_rate,baseline_networking_rate,"
                "baseline_energy_intensity,baseline_water_intensity,baseline_labour_productivity\n")
        for e, reg, ind, p in ents:
            nc = 100 * p["nc"] / p["total"]
            kwh_year = p["kwh"] * 365 * 0.1229 / 1000
            f.write(f"{e},企业{e},{reg},{ind},{nc - rng.uniform(0, 12):.2f},{100 * p['net'] - rng.uniform(0, 15):.2f},"
                    f"{kwh_year / p['va'] * rng.uniform(1.0, 1.3):.5f},{p['water'] * 365 / p['va'] * 1.2:.5f},"
                    f"{p['va'] / (p['total'] * 1.5) * rng.uniform(0.7, 1.0):.3f}\n")


def settle(server: InfluxDBServer, idle_cpu_percent: float = 5.0, quiet_s: int = 5, limit_s: float = 900) -> None:
    """Wait until influxd has used under ``idle_cpu_percent`` of a core for ``quiet_s`` seconds running."""
    import psutil

    proc = psutil.Process(server._process.pid)  # type: ignore[union-attr]
    quiet, deadline = 0, time.monotonic() + limit_s
    while quiet < quiet_s and time.monotonic() < deadline:
        quiet = quiet + 1 if proc.cpu_percent(interval=1.0) < idle_cpu_percent else 0


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One keep-alive GET on an open connection; the status code (the body is read and dropped)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def load(url: str, key: str, paths: list[str], clients: int, seconds: float) -> list[float]:
    """``clients`` connections, each sending its next request when the last answer is in.

    A minimal HTTP/1.1 keep-alive client rather than httpx: on a 2-core machine shared with the API,
    httpx's own CPU time per request (about a millisecond) would be most of what is measured.
    """
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    # Accept-Encoding as Grafana, browsers and httpx send it; the body is read, not decompressed
    requests = {p: (f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
                    "Accept-Encoding: gzip\r\n\r\n").encode()
                for p in paths}

    async def worker(i: int) -> None:
        rng = random.Random(i)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                path = rng.choice(paths)
                t0 = time.perf_counter()
                status = await _get(reader, writer, requests[path])
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    raise RuntimeError(f"{path}: HTTP {status}")
        finally:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(clients)))
    return latencies


def start_api(tmpdir: Path, url: str) -> subprocess.Popen[bytes]:
    fmc = Path(sys.executable).with_name("fmc")
    proc = subprocess.Popen([str(fmc), "api", "-c", str(tmpdir / "central.toml")], cwd=tmpdir,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for _ in range(300):
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code in (200, 503):
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_api(proc)
    raise RuntimeError("fmc api did not come up")


def stop_api(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--enterprises", type=int, default=20_000)
    ap.add_argument("--counties", type=int, default=90)
    ap.add_argument("--cities", type=int, default=11)
    ap.add_argument("--year", type=int, default=2020)
    ap.add_argument("--period", default=None,
                    help="the period the requests ask for (default: --year); 2020-YTD-06-15 is a year to date "
                         "through mid-month, as this year's default dashboards ask for")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of each warm run")
    ap.add_argument("--write-workers", type=int, default=3)
    ap.add_argument("--without-cache", action="store_true",
                    help="no [cache]: every cold figure summed by InfluxDB (the reference)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="keep InfluxDB's data here and reuse it on the next run (same --enterprises and --year)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="fmc-bench-province-") as tmp:
        tmpdir = Path(tmp)
        data_dir = args.data_dir or tmpdir / "influxdb"
        reuse = (data_dir / "seeded").exists()
        server = InfluxDBServer(data_dir)
        server.start()
        api_proc: subprocess.Popen[bytes] | None = None
        try:
            counties = regions(args.counties, args.cities)
            ents = enterprises(args.enterprises, counties, 42)
            if reuse:
                print(f"reusing the data seeded in {data_dir}", flush=True)
            else:
                # one shard for the year, as docs/central.md recommends for the central rollups database
                server.query(f"CREATE DATABASE {DB} WITH SHARD DURATION 52w")
                t0 = time.perf_counter()
                n = seed(server, ents, args.year, args.write_workers)
                print(f"seeded {n:,} points ({len(ents):,} enterprises × the days of {args.year} × 3 rollups + "
                      f"reports) in {time.perf_counter() - t0:.0f} s", flush=True)
                (data_dir / "seeded").write_text(f"{args.enterprises} {args.year}\n")
            # A store that has held a year of rollups has compacted them long ago; measure that,
            # not the minutes of compaction right after a bulk load.
            t0 = time.perf_counter()
            settle(server)
            print(f"InfluxDB settled (compaction done) after {time.perf_counter() - t0:.0f} s", flush=True)
            write_registry(tmpdir / "enterprises.csv", ents, 7)
            port = free_port()
            cache = "" if args.without_cache else '[cache]\npath = "sums-cache.db"\n'
            (tmpdir / "central.toml").write_text(
                f'[store]\ntype = "influxdb"\nurl = "{server.url}"\ndatabase = "{DB}"\ntimeout_s = 120\n'
                f'[registry]\ncsv = "enterprises.csv"\n{cache}'
                f'[api]\nhost = "127.0.0.1"\nport = {port}\nkeys_file = "keys.db"\nrevalidate_s = 3600\n'
                f'[log]\nlevel = "warning"\n', encoding="utf-8")
            from fmc.central.keys import KeyStore

            with KeyStore(tmpdir / "keys.db") as keys:
                _, key = keys.create("province", "bench")
            url = f"http://127.0.0.1:{port}"
            auth = {"Authorization": f"Bearer {key}"}
            period = args.period or str(args.year)
            county_path = f"/v1/indicators?level=county&period={period}"

            def cold_request(label: str) -> None:
                t0 = time.perf_counter()
                r = httpx.get(url + county_path, headers=auth, timeout=900)
                cold = time.perf_counter() - t0
                r.raise_for_status()
                body = r.json()
                rows = body.get("items", body)
                print(f"{label}: county-level {period} indicators of {len(ents):,} enterprises: {cold:.2f} s "
                      f"({len(rows)} counties; {len(r.content) / 1e6:.1f} MB of JSON, "
                      f"{r.num_bytes_downloaded / 1e6:.2f} MB gzip-compressed)", flush=True)

            api_proc = start_api(tmpdir, url)
            if args.without_cache:
                cold_request("cold, sums from InfluxDB (no [cache])  goal ≤ 10 s")
            else:
                # the first start reads every month into the cache file; a restart answers from the file
                cold_request("cold, first start (the sums cache reads the periods from InfluxDB)")
                print(f"  sums cache file: {(tmpdir / 'sums-cache.db').stat().st_size / 1e6:.0f} MB; "
                      f"fmc api peak RSS {peak_rss_mb(api_proc.pid):.0f} MB", flush=True)
                stop_api(api_proc)
                api_proc = start_api(tmpdir, url)
                cold_request("cold, after a restart (sums from the cache file)  goal ≤ 10 s")
            sample = random.Random(3).sample([e[0] for e in ents], min(2000, len(ents)))
            enterprise_paths = [f"/v1/enterprises/{e}/indicators?period={period}" for e in sample]
            for label, paths in (("county", [county_path]), ("enterprise", enterprise_paths)):
                lat = asyncio.run(load(url, key, paths, args.clients, args.seconds))
                ms = [1000 * x for x in lat]
                print(f"warm {label:10s} {args.clients} clients: {len(ms):,} requests, "
                      f"{len(ms) / args.seconds:,.0f}/s  p50 {statistics.median(ms):.1f} ms  "
                      f"p95 {pct(ms, 95):.1f} ms  p99 {pct(ms, 99):.1f} ms  goal p95 ≤ 50 ms", flush=True)
            print(f"fmc api peak RSS: {peak_rss_mb(api_proc.pid):.0f} MB  goal ≤ 250 MB")
        finally:
            if api_proc is not None:
                stop_api(api_proc)
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
