"""Benchmark: the indicator engine and pooling on a synthetic province, without any store.

The steps the central service runs once a province's sums are read (``IndicatorService._compute``):
each enterprise's figures (``IndicatorService._members`` -> ``pooling.enterprise_figures``), their
digest (``service._digest``), then the county and province rows (``pooling.group_rows``). Inputs are
built the way the store and the registry give them: ``PeriodSums`` (``DailySums`` and
``CarrierSums`` for electricity, natural gas or coal, and water intake) for the year, nothing for
the year before and the base year, ``StoredReport``s in yuan (annual, some quarterly, some
incomplete), and a registry with survey baselines and population flags for part of the
enterprises.

It prints the CPU and wall time of each step, what holding the figures costs (tracemalloc and RSS
growth), and a SHA-256 of every field of every output: the same digest before and after a change
proves the results identical.

Run: .venv/bin/python -m bench.engine_province --enterprises 20000
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import math
import random
import time
import tracemalloc
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, TypeVar, cast

from fmc.central.config import load_plan
from fmc.central.registry import RegistryEntry
from fmc.central.service import Enterprise, IndicatorService, _digest
from fmc.central.store import IndicatorStore
from fmc.indicators.engine import Period
from fmc.indicators.pooling import EnterpriseFigures, GroupRow, group_rows
from fmc.indicators.sums import CarrierSums, DailySums, PeriodSums, StoredReport

T = TypeVar("T")
# as bench/province.py seeds them (copied: that module imports the InfluxDB test server)
KEY_INDUSTRIES = ("13", "14", "15", "17", "18", "19", "22", "26", "28", "29", "30", "32")
EQUIVALENT = 0.1229  # kgce per kWh (当量值)
GAS_KGCE = 1.2143  # kgce per m³ of natural gas
COAL_KGCE = 0.7143  # kgce per kg of raw coal


def regions(n_counties: int, n_cities: int) -> list[str]:
    """County codes 33CCKK: the counties spread over the cities (bench/province.py)."""
    return [f"33{1 + i % n_cities:02d}{2 + i // n_cities:02d}" for i in range(n_counties)]


def build_inputs(
    n: int, year: int, seed: int
) -> tuple[list[Enterprise], list[dict[str, PeriodSums]], dict[str, list[StoredReport]], dict[str, RegistryEntry]]:
    """(enterprises, sums per period [year, year before, base year], reports, registry)."""
    rng = random.Random(seed)
    counties = regions(90, 11)
    p = Period.of_year(year)
    infos: list[Enterprise] = []
    sums: dict[str, PeriodSums] = {}
    reports: dict[str, list[StoredReport]] = {}
    registry: dict[str, RegistryEntry] = {}
    for i in range(n):
        e = f"E{i:06d}"
        region, industry = rng.choice(counties), rng.choice(KEY_INDUSTRIES)
        infos.append(Enterprise(e, None, region, industry))
        total = rng.randint(20, 400)
        nc = int(total * rng.uniform(0.2, 0.8))
        net = int(nc * rng.uniform(0.3, 0.9))
        # most report every day; some lose a month, a few stop before the year's end
        days = p.days if rng.random() < 0.85 else rng.choice([p.days - 31, p.days - 3, 200])
        last_day = p.end if days != 200 else date(year, 7, 18)
        daily = DailySums(days, float(total * days), float(nc * days), 0.0, 0.0, float(net * days),
                          float(net * days), last_day, float(total), float(nc), 0.0, 0.0, math.nan, math.nan,
                          math.nan)
        carriers: dict[str, CarrierSums] = {}
        kwh = total * rng.uniform(80, 400) * days
        carriers["electricity"] = CarrierSums("electricity", days, math.nan, kwh * EQUIVALENT / 1000, days, 0.0, 0,
                                              days - rng.choice([0.0, 0.0, 0.5, 20.0]), p.start, last_day)
        fuel = rng.random()
        if fuel < 0.3:  # natural gas, some from mid-year (a carrier added)
            first = p.start if rng.random() < 0.7 else date(year, 6, 1)
            rows = (last_day - first).days + 1
            m3 = total * rng.uniform(5, 50) * rows
            carriers["natural_gas"] = CarrierSums("natural_gas", rows, math.nan, m3 * GAS_KGCE / 1000, rows, 0.0, 0,
                                                  float(rows), first, last_day)
        elif fuel < 0.4:  # coal, the meter removed in autumn for some
            last = last_day if rng.random() < 0.6 else date(year, 9, 30)
            rows = (last - p.start).days + 1
            kg = total * rng.uniform(10, 80) * rows
            carriers["coal"] = CarrierSums("coal", rows, math.nan, kg * COAL_KGCE / 1000, rows, 0.0, 0, float(rows),
                                           p.start, last)
        water = total * rng.uniform(0.5, 4) * days
        carriers["water_intake"] = CarrierSums("water_intake", days, math.nan, 0.0, 0, water, days, float(days),
                                               p.start, last_day)
        if rng.random() < 0.97:  # a few enterprises without any rollup
            sums[e] = PeriodSums(daily, carriers)
        va = total * rng.uniform(3e4, 2e5)  # 10⁴ yuan… in yuan below
        figures = {"value_added": va * 1e4 * 1.03, "value_added_comparable": va * 1e4,
                   "employees_avg": float(max(10, int(total * 1.5))), "revenue": va * 4e4,
                   "rd_expense": va * 4e4 * rng.uniform(0.005, 0.03), "gross_output": va * 3.5e4,
                   "new_product_output": va * 3.5e4 * rng.uniform(0.1, 0.6)}
        kind = rng.random()
        if kind < 0.8:
            reports[e] = [StoredReport(e, f"{year}", figures)]
        elif kind < 0.9:  # quarterly reports: the year is composed of them
            reports[e] = [StoredReport(e, f"{year}-Q{q}", {k: v / 4 for k, v in figures.items()}) for q in (1, 2, 3, 4)]
        elif kind < 0.95:  # three quarters only: no year figure
            reports[e] = [StoredReport(e, f"{year}-Q{q}", {k: v / 4 for k, v in figures.items()}) for q in (1, 2, 3)]
        # else: no report
        if rng.random() < 0.8:
            baseline: dict[str, float] = {}
            if rng.random() < 0.7:
                baseline = {"nc_rate": 100 * nc / total - rng.uniform(0, 12),
                            "networking_rate": 100 * net / max(nc, 1) - rng.uniform(0, 15),
                            "energy_intensity": kwh * EQUIVALENT / 1000 / va * rng.uniform(1.0, 1.3),
                            "water_intensity": water / va * 1.2,
                            "labour_productivity": va / (total * 1.5) * rng.uniform(0.7, 1.0)}
            registry[e] = RegistryEntry(e, f"企业{e}", region, industry, baseline,
                                        backbone=rng.random() < 0.3, above_designated_size=rng.random() < 0.8)
    infos.sort(key=lambda x: x.enterprise)
    return infos, [sums, {}, {}], reports, registry


def _canon(h: Any, x: object) -> None:
    """Feed every field of ``x`` (dataclasses, mappings, sequences, scalars) to ``h``, with types."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        h.update(type(x).__name__.encode())
        for f in dataclasses.fields(x):
            h.update(f.name.encode())
            _canon(h, getattr(x, f.name))
    elif isinstance(x, dict) or hasattr(x, "items"):
        h.update(b"{")
        for k, v in cast(dict[object, object], x).items():
            _canon(h, k)
            _canon(h, v)
        h.update(b"}")
    elif type(x) is tuple and all(type(v) is str for v in x):  # member ids: one repr (fast), as exact
        h.update(f"strs:{x!r};".encode())
    elif isinstance(x, list | tuple | frozenset | set):
        h.update(b"(" if not isinstance(x, frozenset | set) else b"<")
        for v in (sorted(x) if isinstance(x, frozenset | set) else x):  # type: ignore[type-var]
            _canon(h, v)
        h.update(b")")
    else:
        h.update(f"{type(x).__name__}:{x!r};".encode())


def output_digest(members: list[EnterpriseFigures], digest: str, rows: dict[str, list[GroupRow]]) -> str:
    h = hashlib.sha256(digest.encode())
    for f in members:
        _canon(h, f)
    for level, rs in rows.items():
        h.update(level.encode())
        for r in rs:
            _canon(h, r)
    return h.hexdigest()[:32]


def timed(label: str, fn: Callable[[], T]) -> T:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    print(f"  {label:14s} cpu {time.process_time() - c0:6.2f} s   wall {time.perf_counter() - w0:6.2f} s", flush=True)
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--enterprises", type=int, default=20_000)
    ap.add_argument("--year", type=int, default=2020)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--profile", type=Path, default=None, help="write a cProfile of the members step here")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time the steps this many times and print the fastest too (a busy machine is noisy)")
    args = ap.parse_args()

    targets = load_plan()
    infos, sums_list, reports, registry = build_inputs(args.enterprises, args.year, args.seed)
    service = IndicatorService(cast(IndicatorStore, None), targets, registry=registry)
    period = Period.of_year(args.year)
    periods = list(dict.fromkeys([period, period.in_year(period.year - 1), period.in_year(targets.base_year)]))
    print(f"{args.enterprises:,} enterprises, {period.label}; {sum(len(r) for r in reports.values()):,} reports, "
          f"{len(registry):,} registry entries; populations {sorted(set(service.populations.values()))}", flush=True)

    def members_step() -> list[EnterpriseFigures]:
        return service._members(period, periods, sums_list, reports, infos)

    # 1. time (no tracemalloc: it slows allocation several-fold) and RSS growth
    gc.collect()
    rss0 = rss_mb()
    members = timed("members", members_step)
    gc.collect()
    rss1 = rss_mb()
    digest = timed("digest", lambda: _digest(members))
    county = timed("county rows", lambda: group_rows("county", members, targets, populations=service.populations))
    province = timed("province rows", lambda: group_rows("province", members, targets,
                                                         populations=service.populations))
    industry = timed("industry rows", lambda: group_rows("industry", members, targets,
                                                         populations=service.populations))
    out = output_digest(members, digest, {"county": county, "province": province, "industry": industry})
    print(f"  RSS growth of holding the figures: {rss1 - rss0:.1f} MB (RSS {rss1:.0f} MB)")
    del members, county, province, industry

    # with --repeat: the fastest of more runs, each run's figures dropped before the next (the garbage
    # collector of a later run would otherwise also walk the earlier figures)
    best: dict[str, float] = {}
    for _ in range(args.repeat - 1):
        gc.collect()
        c0 = time.process_time()
        again = members_step()
        c1 = time.process_time()
        _digest(again)
        c2 = time.process_time()
        group_rows("county", again, targets, populations=service.populations)
        c3 = time.process_time()
        del again
        for label, took in (("members", c1 - c0), ("digest", c2 - c1), ("county rows", c3 - c2)):
            best[label] = min(best.get(label, math.inf), took)
    if best:
        print("  fastest of {} more runs: {}; members + digest + county {:.2f} s".format(
            args.repeat - 1, ", ".join(f"{k} {v:.2f} s" for k, v in best.items()), sum(best.values())))

    # 2. what the figures keep allocated (tracemalloc), in a second run
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    t0 = tracemalloc.get_traced_memory()[0]
    members = members_step()
    gc.collect()
    t1, peak = tracemalloc.get_traced_memory()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    print(f"  tracemalloc: figures hold {(t1 - t0) / 1e6:.1f} MB (peak while building {(peak - t0) / 1e6:.1f} MB)")
    for stat in after.compare_to(before, "lineno")[:6]:
        print(f"    {stat.size_diff / 1e6:7.1f} MB {stat.count_diff:9,d} blocks  {stat.traceback[0]}")
    print(f"  figures digest (_digest): {digest}")
    print(f"  output digest (every field of figures and rows): {out}")

    if args.profile is not None:
        import cProfile

        del members
        gc.collect()
        cProfile.runctx("members_step()", globals(), {"members_step": members_step}, str(args.profile))
        print(f"  profile of the members step: {args.profile}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
