"""Helper process for the plant kill tests (``tests/test_plant_kill.py``, ``bench/kill_soak.py``).

    python -m tests.plant_child DIR --seed N [--snapshot-every-s S] [--synchronous full|normal]

One simulated plant day (a little over: from 22:00 the day before to 00:30 the day after, local
time) through the real ingest, spool and plant model, drained while it runs into an embedded
store: ``DIR/spool.db``, ``DIR/store.db``. The readings are a function of ``--seed`` only: CNC
machines and looms changing state, outages (equipment going offline), bad-quality samples, a
counter meter that rolls over and is swapped, a power meter, an interval meter, a water counter,
a virtual meter, equipment nobody listed.

Time is simulated and moves in rounds of two minutes: a round's readings are submitted as one
message, and its acknowledgement (in the ingest's writer thread, right after the commit) sets the
clock to the next round's time, so the writer ticks at that time before it sees the next round.
So the plant model gets the same calls in the same order whatever the process's speed, and an
uninterrupted run is the reference a killed one must equal.

The test SIGKILLs this process at any moment and starts it again on the same directory. Like a
broker that redelivers what was not acknowledged, a new process carries on with the first round
that is not committed: each round carries a ``sim_round`` marker point, looked up in the spool
and in the store. At the end it moves the clock 3 hours past the last round (the last day's
rollups become final), stops the ingest, drains the spool and prints ``done``.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from fmc.agent.ingest import Ingest, resume_plant
from fmc.agent.metrics import AgentMetrics
from fmc.agent.plugin import MapResult
from fmc.agent.spool import Spool
from fmc.core.lineprotocol import encode_series, parse
from fmc.core.points import Point, Priority
from fmc.plant.config import PlantSections
from fmc.plant.model import PlantModel
from fmc.plant.rollups import InventoryItem, Site
from fmc.stores.embedded.store import EmbeddedStore

S = 10**9
CST = timezone(timedelta(hours=8))
T_START = int(datetime(2026, 3, 1, 22, 0, tzinfo=CST).timestamp()) * S
ROUND_S = 120  # simulated seconds between rounds
ROUNDS = (26 * 3600 + 1800) // ROUND_S  # to 00:30 on 2026-03-03
T_FINAL = T_START + ROUNDS * ROUND_S * S + 3 * 3600 * S
ROUND_MEASUREMENT = "sim_round"
ROLLUPS = ("equipment_daily", "enterprise_daily", "meter_interval", "consumption_daily", "equipment_state")

SITE = Site("e-sim", "330602", "17", "Asia/Shanghai")
SECTIONS = PlantSections.model_validate({
    "plant": {"interval_minutes": 15, "offline_after_s": 600},
    "equipment_class": [
        {"name": "cnc", "rules": [{"type": "threshold", "signal": "spindle_speed", "on_above": 100,
                                   "off_below": 50, "off_state": "idle", "min_dwell_s": 90}]},
        {"name": "loom", "default_state": "idle",
         "rules": [{"type": "map", "signal": "state",
                    "states": {"0": "off", "1": "idle", "2": "running", "3": "down"}}]},
    ],
    "meter": [
        {"id": "main", "carrier": "electricity", "kind": "counter", "unit": "kWh", "rollover": 100_000,
         "max_rate_per_h": 2000, "enterprise_total": False},
        {"id": "tenant", "carrier": "electricity", "kind": "power", "unit": "kW", "max_rate_per_h": 500,
         "enterprise_total": False},
        {"id": "gas", "carrier": "natural_gas", "kind": "interval", "unit": "m3", "max_rate_per_h": 600},
        {"id": "water", "carrier": "water_intake", "kind": "counter", "unit": "m3", "max_rate_per_h": 200},
    ],
    "virtual_meter": [{"id": "own", "carrier": "electricity", "add": ["main"], "subtract": ["tenant"]}],
})
INVENTORY = [
    InventoryItem("cnc-1", True, 800_000.0, kind="cnc"),
    InventoryItem("cnc-2", True, 650_000.0, kind="cnc"),
    InventoryItem("loom-1", False, 120_000.0, kind="loom"),
    InventoryItem("loom-2", False, 120_000.0, kind="loom"),
    InventoryItem("press-1", False, 90_000.0, kind="press"),  # never connected: offline, still counted
]
MACHINES = ("cnc-1", "cnc-2", "loom-1", "loom-2", "stranger")  # "stranger" is not in the inventory
METERS = ("main", "tenant", "gas", "water")
CARRIERS = {"main": "electricity", "tenant": "electricity", "gas": "natural_gas", "water": "water_intake"}


def round_ns(n: int) -> int:
    return T_START + n * ROUND_S * S


def clock_of(n: int) -> int:
    """The clock while round ``n`` is submitted (after the last round: 3 hours after it)."""
    return round_ns(n) if n < ROUNDS else T_FINAL


def _signal(equipment: str, signal: str, value: float, ts: int, quality: int = 0) -> Point:
    tags = {"enterprise": SITE.enterprise, "equipment": equipment, "signal": signal}
    return Point("signal", tags, {"value": value, "quality": quality}, ts, Priority.RAW, encode_series("signal", tags))


def _reading(meter: str, value: float, ts: int) -> Point:
    tags = {"enterprise": SITE.enterprise, "meter": meter, "carrier": CARRIERS[meter]}
    return Point("meter_reading", tags, {"value": value, "quality": 0}, ts, Priority.RAW,
                 encode_series("meter_reading", tags))


def day_of_readings(seed: int) -> list[list[Point]]:
    """The readings of every round (a function of ``seed`` only), each round's marker last."""
    rng = random.Random(seed)
    silent_until = dict.fromkeys(MACHINES + METERS, -1)
    level = {m: rng.uniform(0, 3000) for m in MACHINES}
    register = {"main": 99_400.0 + rng.uniform(0, 100), "water": rng.uniform(0, 5000)}
    swap_at = rng.randrange(ROUNDS // 4, ROUNDS * 3 // 4)  # the main meter is replaced: it counts from 0 again
    rounds: list[list[Point]] = []
    for n in range(ROUNDS):
        t0 = round_ns(n)
        points: list[Point] = []
        for k, name in enumerate(MACHINES + METERS):
            if n < silent_until[name]:
                continue
            if rng.random() < 0.008:  # an outage of 4 to 60 minutes
                silent_until[name] = n + rng.randrange(2, 30)
                continue
            ts = t0 + k * 1_000_000 + rng.randrange(0, 500) * 1_000_000
            if name in MACHINES:
                if name.startswith("loom"):
                    if rng.random() < 0.05:
                        level[name] = rng.choice((0, 1, 2, 2, 2, 3))
                    points.append(_signal(name, "state", float(level[name]), ts))
                else:
                    if rng.random() < 0.08:
                        level[name] = rng.choice((0.0, 30.0, 75.0, 1200.0, 2400.0))
                    quality = 0x80000000 if rng.random() < 0.02 else 0
                    points.append(_signal(name, "spindle_speed", level[name] + rng.uniform(-5, 5), ts, quality))
                    points.append(_signal(name, "temperature", round(rng.uniform(30, 60), 2), ts))
            elif name == "main":
                register["main"] = (register["main"] + rng.uniform(0, 60)) % 100_000
                if n == swap_at:
                    register["main"] = rng.uniform(0, 5)
                points.append(_reading(name, round(register["main"], 3), ts))
            elif name == "water":
                register["water"] += rng.uniform(0, 4)
                points.append(_reading(name, round(register["water"], 4), ts))
            elif name == "tenant":
                points.append(_reading(name, round(rng.uniform(0, 400), 2), ts))
            else:  # gas: the amount since the last reading
                points.append(_reading(name, round(rng.uniform(0, 12), 3), ts))
        points.append(Point(ROUND_MEASUREMENT, {"run": "sim"}, {"n": n}, t0, Priority.RAW))
        rounds.append(points)
    return rounds


class Clock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


@dataclass
class Paths:
    spool: Path
    store: Path

    @classmethod
    def of(cls, directory: Path) -> Paths:
        return cls(directory / "spool.db", directory / "store.db")


def committed_rounds(paths: Paths) -> int:
    """Rounds committed so far (the markers in the spool and in the store)."""
    last = -1
    with sqlite3.connect(f"file:{paths.spool}?mode=ro", uri=True) as db:
        for (line,) in db.execute("SELECT line FROM spool WHERE line LIKE ?", (ROUND_MEASUREMENT + ",%",)):
            last = max(last, int(parse(line).fields["n"]))
    if paths.store.exists():
        with EmbeddedStore(paths.store) as store:
            for p in store.points(ROUND_MEASUREMENT):
                last = max(last, int(p.fields["n"]))
    return last + 1


def _drain(spool: Spool, store_path: Path, stop: threading.Event) -> None:
    with EmbeddedStore(store_path) as store:
        while True:
            batch = spool.read_batch(5000)
            if batch.ids:
                outcome = store.write_lines(batch.lines)
                spool.complete(batch, [(r.index, r.reason, r.status) for r in outcome.refused])
            elif stop.is_set():
                return
            time.sleep(0.05)  # a few dozen rounds a batch: the store's commit costs an fsync


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--snapshot-every-s", type=float, default=10.0)
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    args = parser.parse_args(argv)
    # rounds go in lock step between this thread and the ingest's writer thread: hand the GIL over
    # sooner than every 5 ms while the drain thread is busy writing the store
    sys.setswitchinterval(0.0005)
    paths = Paths.of(args.dir)
    rounds = day_of_readings(args.seed)

    spool = Spool(paths.spool, synchronous=args.synchronous)
    first = committed_rounds(paths)
    clock = Clock(clock_of(first))
    plant = PlantModel(SITE, SECTIONS, INVENTORY, start_ns=T_START)
    resume_plant(spool, plant)

    # cnc-2 is read through a live OPC UA subscription: vouched for every 10 simulated minutes (on
    # the clock, not on the process's timer, so a restart vouches when an uninterrupted run does)
    def alive() -> set[str]:
        return {"cnc-2"} if (clock.ns - T_START) // S % 600 == 0 else set()

    ingest = Ingest(spool, AgentMetrics(), max_series=10_000, commit_interval_ms=0, plant=plant, clock=clock,
                    snapshot_every_s=args.snapshot_every_s, alive_equipment=alive, alive_every_s=1)
    stop_drain = threading.Event()
    drain = threading.Thread(target=_drain, args=(spool, paths.store, stop_drain), daemon=True)
    drain.start()
    ingest.start()
    print(f"start {first}", flush=True)
    committed = threading.Event()

    def acked(next_clock_ns: int) -> None:
        # in the writer thread, right after the commit: its next tick sees the next round's time
        # before it sees the next round, in every run (ticking twice at one time changes nothing)
        clock.ns = next_clock_ns
        committed.set()

    # an empty first message: the writer ticks at this round's time before it sees its readings
    messages = [("start", MapResult([], []), clock_of(first))]
    messages += [(f"round {n}", MapResult(rounds[n], []), clock_of(n + 1)) for n in range(first, ROUNDS)]
    for topic, result, next_clock_ns in messages:
        committed.clear()
        ingest.submit("sim", topic, b"", result, functools.partial(acked, next_clock_ns))
        if not committed.wait(60):
            print(f"{topic} was not committed within 60 s", flush=True)
            return 1
    clock.ns = T_FINAL
    ingest.stop()  # the last tick: the last day's rollups
    while spool.stats().depth:
        time.sleep(0.01)
    stop_drain.set()
    drain.join(30)
    spool.close()
    print("done", flush=True)
    return 0


# --- the parent's side: run, kill, compare -------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
RollupKey = tuple[str, tuple[tuple[str, str], ...], int]


@dataclass
class Outcome:
    kills: int = 0  # SIGKILLs that hit a running process
    starts: list[int] = field(default_factory=list)  # the first round of each process


def run(directory: Path, seed: int, *, kill_after_s: list[float] = (), snapshot_every_s: float = 10.0,
        synchronous: str = "normal", timeout_s: float = 300.0) -> Outcome:
    """Run the child on ``directory`` until it prints ``done``; SIGKILL it ``kill_after_s[i]`` seconds
    after its i-th start (once it has printed ``start``)."""
    directory.mkdir(parents=True, exist_ok=True)
    outcome = Outcome()
    args = [sys.executable, "-m", "tests.plant_child", str(directory), "--seed", str(seed),
            "--snapshot-every-s", str(snapshot_every_s), "--synchronous", synchronous]
    delays = list(kill_after_s)
    deadline = time.monotonic() + timeout_s
    while True:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda p=proc, out=lines: out.extend(p.stdout), daemon=True)
        try:
            first = proc.stdout.readline()
            lines.append(first)
            reader.start()
            if first.startswith("start "):
                outcome.starts.append(int(first.split()[1]))
            if delays and first.startswith("start "):
                try:
                    proc.wait(delays.pop(0))
                except subprocess.TimeoutExpired:
                    proc.kill()  # SIGKILL: no cleanup, the spool as it is on disk
                    proc.wait(30)
                    outcome.kills += 1
                    continue
            proc.wait(max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
            if reader.is_alive():
                reader.join(10)
        text = "".join(lines)
        if proc.returncode != 0 or not text.rstrip().endswith("done"):
            raise AssertionError(f"plant_child exited with {proc.returncode}:\n{text[-4000:]}")
        return outcome


def rollups(directory: Path) -> dict[RollupKey, dict[str, object]]:
    """Every derived point in the store: (measurement, tags, ts) -> fields."""
    out: dict[RollupKey, dict[str, object]] = {}
    with EmbeddedStore(Paths.of(directory).store, readonly=True) as store:
        for measurement in ROLLUPS:
            for p in store.points(measurement):
                out[(measurement, tuple(sorted(p.tags.items())), p.ts_ns)] = dict(p.fields)
    return out


@dataclass
class Difference:
    missing: int = 0  # in the reference, not in the other
    extra: int = 0
    unequal: int = 0  # points whose fields differ
    largest: float = 0.0  # the largest absolute difference of a numeric field (kWh, s, tce, ...)
    examples: list[str] = field(default_factory=list)

    @property
    def none(self) -> bool:
        return not (self.missing or self.extra or self.unequal)


def compare(reference: dict[RollupKey, dict[str, object]], other: dict[RollupKey, dict[str, object]]) -> Difference:
    d = Difference()
    for key in reference.keys() - other.keys():
        d.missing += 1
        d.examples.append(f"missing {key}")
    for key in other.keys() - reference.keys():
        d.extra += 1
        d.examples.append(f"extra {key}: {other[key]}")
    for key in reference.keys() & other.keys():
        a, b = reference[key], other[key]
        if a == b:
            continue
        d.unequal += 1
        d.examples.append(f"{key[0]} {dict(key[1]).get('equipment') or dict(key[1]).get('meter') or ''} "
                          f"{key[2]}: {a} != {b}")
        for name in a.keys() | b.keys():
            x, y = a.get(name), b.get(name)
            if isinstance(x, int | float) and isinstance(y, int | float):
                d.largest = max(d.largest, abs(float(x) - float(y)))
            elif x != y:
                d.largest = max(d.largest, float("inf"))
    d.examples.sort()
    return d


if __name__ == "__main__":
    sys.exit(main())
