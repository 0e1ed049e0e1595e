"""Kill soak: the plant model's rollups when the agent is SIGKILLed at random moments.

    .venv/bin/python -m bench.kill_soak [--runs 10] [--kills 10] [--seed 1] [--snapshot-every-s 0.25]

Each run simulates one plant day (``tests/plant_child.py``: real ingest, spool and plant model,
drained into a real embedded store while it runs) twice with the run's seed: once without
interruption, once SIGKILLed ``--kills`` times at random moments and started again on the same
files. It compares every rollup point (``equipment_daily``, ``enterprise_daily``,
``meter_interval``, ``consumption_daily``, ``equipment_state``) of the two stores and prints
the points missing, extra and unequal and the largest difference of a field (seconds, kWh, m³,
tce). The goal is 0 everywhere. ``tests/test_plant_kill.py`` is the short version in the suite.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

from tests.plant_child import compare, rollups, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs per run")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first run (data and kill moments)")
    parser.add_argument("--snapshot-every-s", type=float, default=0.25,
                        help="how often the plant state is saved (real time; a run takes a few seconds)")
    parser.add_argument("--max-delay-s", type=float, default=0.8, help="a kill comes 0..this after a start")
    args = parser.parse_args()

    total_kills = total_points = total_missing = total_extra = total_unequal = 0
    largest = 0.0
    started = time.monotonic()
    print(f"kill soak: {args.runs} runs × {args.kills} SIGKILLs, plant state saved every {args.snapshot_every_s} s")
    for i in range(args.runs):
        seed = args.seed + i
        rng = random.Random(seed)
        work = Path(tempfile.mkdtemp(prefix="fmc-kill-soak-"))
        try:
            run(work / "reference", seed, snapshot_every_s=args.snapshot_every_s)
            outcome = run(work / "killed", seed, snapshot_every_s=args.snapshot_every_s,
                          kill_after_s=[rng.uniform(0.02, args.max_delay_s) for _ in range(args.kills)])
            want = rollups(work / "reference")
            d = compare(want, rollups(work / "killed"))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        total_kills += outcome.kills
        total_points += len(want)
        total_missing += d.missing
        total_extra += d.extra
        total_unequal += d.unequal
        largest = max(largest, d.largest)
        print(f"run {i + 1:3d}  seed {seed:6d}  kills {outcome.kills:2d}  restarts at rounds {outcome.starts}  "
              f"points {len(want)}  missing {d.missing}  extra {d.extra}  unequal {d.unequal}  "
              f"largest difference {d.largest:g}", flush=True)
        for example in d.examples[:3]:
            print(f"      {example}")
    print(f"runs {args.runs}  kills {total_kills}  rollup points compared {total_points}  missing {total_missing}  "
          f"extra {total_extra}  unequal {total_unequal}  largest rollup difference {largest:g}  "
          f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
