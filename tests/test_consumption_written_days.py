"""A day's consumption_daily, once written, is only ever written again whole.

The store keeps one row per enterprise, carrier and day (the same series and timestamp overwrite).
An interval of a day that was already written (a meter added to the config overnight, whose
retained MQTT reading is timestamped last night) used to start a second rollup of that day made
of the late interval alone, which replaced the day's row: 240 kWh became 0.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fmc.core.points import Point
from fmc.plant.config import PlantSections
from fmc.plant.meters import MeterInterval
from fmc.plant.model import WRITTEN_DAYS_KEPT, PlantModel
from fmc.plant.rollups import Site, add_to_day_total, consumption_daily, consumption_daily_of, meter_day_totals

S = 10**9
MIN = 60 * S
H = 3600 * S
SITE = Site("e1", "330602", "17", "Asia/Shanghai")
MAY1 = date(2024, 5, 1)
D0 = int(datetime(2024, 4, 30, 16, tzinfo=UTC).timestamp()) * S  # 2024-05-01 00:00 +08:00


def reading(meter: str, value: float, ts: int) -> Point:
    return Point("meter_reading", {"enterprise": "e1", "meter": meter, "carrier": "electricity"},
                 {"value": value, "quality": 0}, ts)


def sections(*meters: str) -> PlantSections:
    return PlantSections.model_validate(
        {"meter": [{"id": m, "carrier": "electricity", "max_gap_s": 1800} for m in meters]})


def run_main(plant: PlantModel, from_min: int, to_min: int) -> list[Point]:
    """``main`` read every 15 min (10 kWh/h), the clock ticking every 5 min."""
    out: list[Point] = []
    for m in range(from_min, to_min, 5):
        now = D0 + m * MIN
        points = [reading("main", 1000 + 10 * m / 60, now)] if m % 15 == 0 else []
        out += plant.observe(points, now)
        out += plant.advance(now)
    return out


def daily_rows(out: list[Point], day_start_ns: int = D0) -> list[dict[str, float]]:
    return [p.fields for p in out if p.measurement == "consumption_daily" and p.ts_ns == day_start_ns]


def test_a_meter_added_overnight_does_not_overwrite_the_day_already_written() -> None:
    plant = PlantModel(SITE, sections("main"), [], start_ns=D0)
    out = run_main(plant, 0, 26 * 60)  # 1 May, and 2 May to 02:00: 1 May is written at 00:45
    [first] = daily_rows(out)
    assert first["amount"] == pytest.approx(240.0) and first["coverage"] == 1.0
    saved = plant.snapshot()

    # 2 May 08:00: the agent restarts with a second meter; the broker hands it hall's retained
    # reading of 1 May 23:50, then hall's live readings
    restarted = PlantModel(SITE, sections("main", "hall"), [], start_ns=D0 + 32 * H)
    restarted.restore(saved)
    now = D0 + 32 * H
    out = restarted.observe([reading("hall", 500.0, D0 + 23 * H + 50 * MIN)], now) + restarted.advance(now)
    for m in range(32 * 60 + 15, 50 * 60, 15):
        now = D0 + m * MIN
        out += restarted.observe([reading("hall", 500.0 + (m - 32 * 60) / 60, now)], now) + restarted.advance(now)
    assert any(p.measurement == "meter_interval" and p.tags["meter"] == "hall" and p.ts_ns < D0 + 24 * H
               for p in out), "hall's intervals of 1 May are still written as meter_interval"
    # 1 May keeps its one row (nothing of hall measured that day); 2 May has both meters
    assert daily_rows(out) == []
    [may2] = daily_rows(out, D0 + 24 * H)
    # main 00:00-01:45 (7 intervals, 17.5 kWh); hall from 08:15 (63 intervals, 15.75 kWh, and the 0.25
    # kWh since its reading of 1 May, uncovered: a gap)
    assert (may2["amount"], may2["coverage"]) == (pytest.approx(33.5), pytest.approx(70 / 192))
    assert restarted.event_counts()[("plant", "consumption_too_late")] == 0


def test_after_an_upgrade_from_a_snapshot_without_totals_an_earlier_day_is_not_overwritten() -> None:
    plant = PlantModel(SITE, sections("main"), [], start_ns=D0)
    run_main(plant, 0, 26 * 60)
    saved = plant.snapshot()
    for key in ("written", "forgotten_until"):  # what an agent before this change saved
        del saved[key]
    restarted = PlantModel(SITE, sections("main", "hall"), [], start_ns=D0 + 26 * H)
    restarted.restore(saved)
    out: list[Point] = []
    restarted._intervals_out([interval("hall", 23 * 60 + 45, 4.0, 15)], out)  # 1 May, written before the upgrade
    restarted._intervals_out([interval("hall", 24 * 60 + 60, 1.0, 15)], out)  # 2 May, still waiting: kept
    out += restarted.advance(D0 + 50 * H)
    assert daily_rows(out) == []
    assert restarted.event_counts()[("plant", "consumption_too_late")] == 1
    [may2] = daily_rows(out, D0 + 24 * H)
    assert may2["amount"] == pytest.approx(17.5 + 1.0)  # main 00:00-01:45 of 2 May, and hall's interval


def interval(meter: str, start_min: int, amount: float, covered_min: int) -> MeterInterval:
    return MeterInterval(meter, "electricity", D0 + start_min * MIN, D0 + (start_min + 15) * MIN, amount, amount,
                         None, None, covered_min * MIN)


def test_an_interval_that_still_measures_something_rewrites_the_whole_day() -> None:
    plant = PlantModel(SITE, sections("main", "hall"), [], start_ns=D0)
    out = run_main(plant, 0, 26 * 60)
    [first] = daily_rows(out)
    assert first["amount"] == pytest.approx(240.0) and first["coverage"] == 0.5  # hall sent nothing
    # what a meter never gives today, but a source or a future meter kind could: a complete interval
    # of 1 May that comes on 2 May (through the same path as the meters' intervals)
    late = interval("hall", 23 * 60 + 45, 4.0, 15)
    out = []
    plant._intervals_out([late, late], out)  # twice: the second is a redelivery
    out += plant.advance(D0 + 27 * H)
    [again] = daily_rows(out)
    assert again["amount"] == pytest.approx(244.0)
    assert again["coverage"] == pytest.approx((96 + 1) / (2 * 96))
    assert plant.event_counts()[("plant", "consumption_rewritten")] == 1
    out = plant.advance(D0 + 28 * H)
    assert daily_rows(out) == [], "written again once, not at every tick"


def test_a_day_older_than_the_kept_ones_is_not_written_again_and_the_interval_is_counted() -> None:
    plant = PlantModel(SITE, sections("main"), [], start_ns=D0)
    end = D0 + (WRITTEN_DAYS_KEPT + 2) * 24 * H
    run_main(plant, 0, (WRITTEN_DAYS_KEPT + 2) * 24 * 60)
    out: list[Point] = []
    plant._intervals_out([interval("main", 12 * 60, 3.0, 15)], out)  # 1 May, no longer kept
    out += plant.advance(end)
    assert daily_rows(out) == []
    assert [p.measurement for p in out] == ["meter_interval"]  # still stored as what it is
    assert plant.event_counts()[("plant", "consumption_too_late")] == 1
    # the kept days and the forgotten one survive a restart
    restored = PlantModel(SITE, sections("main", "hall"), [], start_ns=end)
    restored.restore(plant.snapshot())
    out = []
    restored._intervals_out([interval("main", 12 * 60, 3.0, 15)], out)
    assert daily_rows(restored.advance(end)) == []
    assert restored.event_counts()[("plant", "consumption_too_late")] == 1
    kept_day = D0 + 3 * 24 * H
    # main's own intervals of a kept day were all counted: one again is a redelivery
    restored._intervals_out([interval("main", 3 * 24 * 60 + 30, 1.0, 15)], out)
    assert daily_rows(restored.advance(end), kept_day) == []
    # a meter added since, with a lump of that day: joins the restored day's total
    late = MeterInterval("hall", "electricity", kept_day + 30 * MIN, kept_day + 45 * MIN, 1.0, 1.0, None, None, 0)
    restored._intervals_out([late], out)
    [row] = daily_rows(restored.advance(end), kept_day)
    assert (row["amount"], row["coverage"]) == (pytest.approx(241.0), 0.5)


# --- the pure parts: whatever comes late, the day's last row is the rollup of all its intervals ----------


@st.composite
def day_of_intervals(draw: st.DrawFn) -> tuple[list[MeterInterval], list[MeterInterval]]:
    """(on time, late): each meter's intervals of 1 May in order, cut at a random point; the late
    part with redeliveries of intervals already counted mixed in."""
    on_time: list[MeterInterval] = []
    late: list[MeterInterval] = []
    for meter in draw(st.lists(st.sampled_from(["main", "hall", "w"]), min_size=1, max_size=3, unique=True)):
        slots = sorted(draw(st.sets(st.integers(0, 95), min_size=1, max_size=12)))
        ivs = [interval(meter, 15 * s, draw(st.floats(0, 50, allow_nan=False)), draw(st.integers(0, 15)))
               for s in slots]
        cut = draw(st.integers(0, len(ivs)))
        on_time += ivs[:cut]
        late += ivs[cut:]
        late += draw(st.lists(st.sampled_from(ivs[: cut + 1]), max_size=3))  # redeliveries, or the next one
    return on_time, late


@given(day_of_intervals())
def test_property_the_last_row_of_a_day_is_the_rollup_of_all_its_intervals(story) -> None:
    on_time, late = story
    meters = {"main": "electricity", "hall": "electricity", "w": "electricity", "idle": "electricity"}
    totals = meter_day_totals(MAY1, SITE, on_time, meters)
    for iv in sorted(late, key=lambda iv: iv.start_ns):  # a meter's intervals come in order
        add_to_day_total(totals[iv.meter], iv)
    [row] = consumption_daily_of(MAY1, SITE, totals)
    [whole] = consumption_daily(MAY1, SITE, on_time + late, meters)
    assert row.fields["amount"] == pytest.approx(whole.fields["amount"], rel=1e-12, abs=1e-9)
    assert row.fields["coverage"] == whole.fields["coverage"]
    assert math.isclose(row.fields["tce"], whole.fields["tce"], rel_tol=1e-12, abs_tol=1e-12)


def test_an_interval_of_another_day_or_meter_is_not_counted() -> None:
    meters = {"main": "electricity"}
    totals = meter_day_totals(MAY1, SITE, [interval("main", -15, 5.0, 15), interval("other", 0, 5.0, 15),
                                           interval("main", 24 * 60, 5.0, 15)], meters)
    [row] = consumption_daily_of(MAY1, SITE, totals)
    assert row.fields == {"amount": 0.0, "tce": 0.0, "coverage": 0.0}
