"""SIGKILL at random moments over a simulated plant day: every rollup equals an uninterrupted run's.

The child process (``tests/plant_child.py``) runs the real ingest, spool and plant model on a
simulated clock and drains into a real embedded store while it runs, so points (raw and derived)
are already delivered and deleted from the spool when it is killed. A new process on the same
files carries on with the first round that is not committed, as a broker redelivers what was not
acknowledged. The plant model's state is saved every ``SNAPSHOT_EVERY_S`` of real time: kills land
between snapshots. ``bench/kill_soak.py`` runs the same for longer.
"""

from __future__ import annotations

import random

from tests.plant_child import compare, rollups, run

SEED = 20261202
SNAPSHOT_EVERY_S = 0.25  # well within a run, so kills land both before and after snapshots


def test_rollups_after_kills_equal_an_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    run(reference, SEED, snapshot_every_s=SNAPSHOT_EVERY_S)
    want = rollups(reference)
    measurements = {key[0] for key in want}
    assert measurements == {"equipment_daily", "enterprise_daily", "meter_interval", "consumption_daily",
                            "equipment_state"}
    assert sum(1 for key in want if key[0] == "consumption_daily") == 6  # 2 local days × 3 carriers

    rng = random.Random(SEED)
    killed = tmp_path / "killed"
    # after each start; up to 0.6 s, so that at least three land before a fast machine finishes the day
    # (with up to 1 s, a run that got 500 rounds in twice could finish the rest before its third kill)
    kill_after_s = [rng.uniform(0.05, 0.6) for _ in range(8)]
    outcome = run(killed, SEED, snapshot_every_s=SNAPSHOT_EVERY_S, kill_after_s=kill_after_s)
    assert outcome.kills >= 3, outcome
    d = compare(want, rollups(killed))
    print(f"{outcome.kills} kills, restarts at rounds {outcome.starts}: {len(want)} rollup points; "
          f"missing {d.missing}, extra {d.extra}, unequal {d.unequal}, largest difference {d.largest}")
    assert d.none, "\n".join(d.examples[:20])
