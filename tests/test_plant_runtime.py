"""The plant model wired into the ingest: raw points in, states and daily rollups committed with them,
and the day's seconds kept across a restart (saved in the spool)."""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from fmc.agent.ingest import PLANT_STATE_KEY, Ingest
from fmc.agent.metrics import AgentMetrics
from fmc.agent.spool import Spool
from fmc.core.lineprotocol import encode_series, parse
from fmc.core.points import Point, Priority
from fmc.plant.config import PlantSections
from fmc.plant.model import PlantModel
from fmc.plant.rollups import InventoryItem, Site

CST = timezone(timedelta(hours=8))
SITE = Site("e1", "330602", "17", "Asia/Shanghai")
# the fake clocks below step exactly to the instants the tests look at: no in-flight delay
SECTIONS = PlantSections.model_validate({
    "plant": {"sample_delay_s": 0},
    "equipment_class": [{"name": "cnc", "rules": [
        {"type": "threshold", "signal": "spindle_speed", "on_above": 100, "off_below": 50, "off_state": "idle"}]}],
})
INVENTORY = [
    InventoryItem("m1", True, 100_000.0, kind="cnc"),
    InventoryItem("m2", True, 50_000.0, kind="cnc"),
    InventoryItem("m3", False, 20_000.0, kind="loom"),  # never connected: offline all day, still counted
]
# 2026-03-01 23:00 local = 15:00 UTC; the local day 2026-03-01 ends at 16:00 UTC
T0 = int(datetime(2026, 3, 1, 23, 0, tzinfo=CST).timestamp()) * 10**9
S = 10**9


class Clock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


def signal(equipment: str, value: float, ts: int) -> Point:
    tags = {"enterprise": "e1", "equipment": equipment, "signal": "spindle_speed"}
    return Point("signal", tags, {"value": value, "quality": 0}, ts, Priority.RAW, encode_series("signal", tags))


def committed(spool: Spool) -> list[Point]:
    batch = spool.read_batch(100_000)
    return [parse(line) for line in batch.lines]


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def make_ingest(spool: Spool, plant: PlantModel, clock: Clock) -> Ingest:
    ingest = Ingest(spool, AgentMetrics(), max_series=1000, commit_interval_ms=0, plant=plant, clock=clock,
                    snapshot_every_s=0.0)
    ingest.start()
    return ingest


def test_states_and_daily_rollups_are_committed_with_the_raw_points(tmp_path):
    spool = Spool(tmp_path / "spool.db")
    clock = Clock(T0)
    plant = PlantModel(SITE, SECTIONS, INVENTORY, start_ns=T0)
    ingest = make_ingest(spool, plant, clock)
    # m1 runs from 23:00 to midnight; m2 sends one idle value at 23:30 and goes offline at 23:40
    ingest.submit_points("plant", [signal("m1", 1500.0, T0)])
    for minute in range(5, 60, 5):
        clock.ns = T0 + minute * 60 * S
        ingest.submit_points("plant", [signal("m1", 1500.0, clock.ns)])
        if minute == 30:
            ingest.submit_points("plant", [signal("m2", 10.0, clock.ns)])
    wait_until(lambda: any(p.measurement == "signal" and p.ts_ns == clock.ns for p in committed(spool)))
    clock.ns = T0 + 3600 * S + 5 * S  # 00:00:05 the next local day
    wait_until(lambda: any(p.measurement == "enterprise_daily" for p in committed(spool)))
    ingest.stop()
    points = committed(spool)
    states = [(p.tags["equipment"], p.fields["state"]) for p in points if p.measurement == "equipment_state"]
    assert ("m1", "running") in states and ("m2", "idle") in states and ("m2", "offline") in states
    days = {p.tags["equipment"]: p for p in points if p.measurement == "equipment_daily"}
    assert set(days) == {"m1", "m2", "m3"}
    assert days["m1"].ts_ns == int(datetime(2026, 3, 1, tzinfo=CST).timestamp()) * S
    # the tracker started at 23:00, so m1's day holds 3600 s of running, with good data all along
    assert days["m1"].fields["running_s"] == 3600.0 and days["m1"].fields["online_s"] == 3600.0
    assert days["m1"].fields["good_samples"] == 12
    # m2: online from 23:30 for offline_after_s (600 s), idle
    assert days["m2"].fields["online_s"] == 600.0 and days["m2"].fields["idle_s"] == 600.0
    assert days["m3"].fields["online_s"] == 0.0 and days["m3"].fields["in_inventory_s"] == 86_400.0
    assert days["m1"].tags == {"enterprise": "e1", "region": "330602", "industry": "17", "equipment": "m1",
                               "nc": "true", "kind": "cnc"}
    (daily,) = [p for p in points if p.measurement == "enterprise_daily"]
    assert daily.fields["equipment_total"] == 3 and daily.fields["equipment_nc"] == 2
    assert daily.fields["asset_value_total"] == 170_000.0 and daily.fields["asset_value_nc"] == 150_000.0
    # networked on a day: good data for at least 1 minute that day — m1 and m2, both NC
    assert daily.fields["equipment_networked"] == 2 and daily.fields["nc_equipment_networked"] == 2
    assert daily.ts_ns == days["m1"].ts_ns
    spool.close()
    # rollups are spooled with the priority a full spool never drops
    import sqlite3

    with sqlite3.connect(tmp_path / "spool.db") as db:
        priorities = dict(db.execute("SELECT substr(line, 1, instr(line, ',') - 1), max(priority) FROM spool "
                                     "GROUP BY 1").fetchall())
    assert priorities == {"signal": Priority.RAW, "equipment_state": Priority.EVENT,
                          "equipment_daily": Priority.ROLLUP, "enterprise_daily": Priority.ROLLUP}


def test_a_restart_mid_day_keeps_the_days_seconds(tmp_path):
    """Run 23:00-23:30, stop (state saved in the spool), start again at 23:30 and run to midnight:
    the day's totals equal an uninterrupted run's."""

    def run(path, stop_at: int | None) -> dict[str, dict]:
        spool = Spool(path)
        clock = Clock(T0)
        plant = PlantModel(SITE, SECTIONS, INVENTORY, start_ns=T0)
        ingest = make_ingest(spool, plant, clock)
        minute = 0
        while minute < 60:
            clock.ns = T0 + minute * 60 * S
            ingest.submit_points("plant", [signal("m1", 1500.0 if minute < 45 else 10.0, clock.ns)])
            minute += 1
            if stop_at is not None and minute == stop_at:
                time.sleep(0.05)
                ingest.stop()  # saves the plant state in the spool
                saved = json.loads(spool.state_get(PLANT_STATE_KEY))
                plant = PlantModel(SITE, SECTIONS, INVENTORY, start_ns=clock.ns)
                plant.restore(saved)
                ingest = make_ingest(spool, plant, clock)
                stop_at = None
        last = T0 + 59 * 60 * S
        wait_until(lambda: any(p.measurement == "signal" and p.ts_ns == last for p in committed(spool)))
        clock.ns = T0 + 3600 * S + 5 * S
        wait_until(lambda: any(p.measurement == "enterprise_daily" for p in committed(spool)))
        ingest.stop()
        out = {p.tags["equipment"]: p.fields for p in committed(spool) if p.measurement == "equipment_daily"}
        spool.close()
        return out

    straight = run(tmp_path / "a.db", None)
    restarted = run(tmp_path / "b.db", 30)
    assert straight == restarted
    assert straight["m1"]["running_s"] == 45 * 60.0 and straight["m1"]["idle_s"] == 15 * 60.0


def test_equipment_not_in_the_inventory_is_stored_but_not_counted(tmp_path):
    spool = Spool(tmp_path / "spool.db")
    clock = Clock(T0)
    plant = PlantModel(SITE, SECTIONS, INVENTORY, start_ns=T0)
    ingest = make_ingest(spool, plant, clock)
    ingest.submit_points("plant", [signal("stranger", 1.0, T0)])
    wait_until(lambda: any(p.tags.get("equipment") == "stranger" for p in committed(spool)))
    ingest.stop()
    assert plant.counts["unknown_equipment"] == 1
    assert not any(p.measurement == "equipment_state" and p.tags["equipment"] == "stranger"
                   for p in committed(spool))
    spool.close()


def test_day_boundary_is_local_midnight():
    assert datetime.fromtimestamp((T0 + 3600 * S) / S, UTC) == datetime(2026, 3, 1, 16, 0, tzinfo=UTC)
    assert date(2026, 3, 1) == datetime.fromtimestamp(T0 / S, CST).date()


METER_SECTIONS = PlantSections.model_validate({
    "plant": {"interval_minutes": 15},
    "meter": [{"id": "main", "carrier": "electricity", "kind": "counter", "unit": "kWh", "max_rate_per_h": 1000,
               "max_gap_s": 1800}],
})


def reading(meter: str, value: float, ts: int) -> Point:
    tags = {"enterprise": "e1", "meter": meter, "carrier": "electricity"}
    return Point("meter_reading", tags, {"value": value, "quality": 0}, ts, Priority.RAW,
                 encode_series("meter_reading", tags))


def test_meter_intervals_and_daily_consumption_with_a_reset(tmp_path):
    """A counter read every 5 minutes from 23:00, reset to 0 at 23:30 (a meter swap): 15-minute
    intervals and the day's consumption count every true kWh once and none twice."""
    spool = Spool(tmp_path / "spool.db")
    clock = Clock(T0)
    plant = PlantModel(SITE, METER_SECTIONS, [], start_ns=T0)
    ingest = make_ingest(spool, plant, clock)
    # 10 kWh per 5 minutes; at 23:30 the register was replaced and reads 10 (it counted from 0)
    values = [1000, 1010, 1020, 1030, 1040, 1050, 10, 20, 30, 40, 50, 60, 70]
    for k, v in enumerate(values):
        clock.ns = T0 + k * 300 * S
        ingest.submit_points("plant", [reading("main", float(v), clock.ns)])
    wait_until(lambda: any(p.measurement == "meter_reading" and p.ts_ns == clock.ns for p in committed(spool)))
    clock.ns = T0 + 3600 * S + 1800 * S + 16 * 60 * S  # past midnight + max_gap_s + one interval
    wait_until(lambda: any(p.measurement == "consumption_daily" for p in committed(spool)))
    ingest.stop()
    points = committed(spool)
    intervals = sorted((p.ts_ns, p.fields["amount"], p.fields["coverage"]) for p in points
                       if p.measurement == "meter_interval")
    # 23:00-23:15, 23:15-23:30, 23:30-23:45, 23:45-24:00: 30 kWh each, fully covered
    assert [(ts - T0) // S for ts, _, _ in intervals[:4]] == [0, 900, 1800, 2700]
    assert [round(a, 9) for _, a, _ in intervals[:4]] == [30.0, 30.0, 30.0, 30.0]
    assert all(c == 1.0 for _, _, c in intervals[:4])
    (daily,) = [p for p in points if p.measurement == "consumption_daily"]
    assert daily.tags["carrier"] == "electricity"
    assert plant.event_counts()[("meter", "reset_counted")] == 1  # exported as fmc_plant_events
    assert round(daily.fields["amount"], 9) == 120.0
    assert round(daily.fields["tce"], 9) == round(120.0 * 0.1229 / 1000, 9)  # kWh × kgce/kWh ÷ 1000
    # the tracker covered one hour of the day's 24: coverage says so
    assert abs(daily.fields["coverage"] - 1 / 24) < 1e-9
    spool.close()


def test_a_live_subscription_keeps_a_machine_that_stands_still_online():
    """m1 reports speed 0 once (idle) and never changes: an OPC UA subscription sends nothing more.
    While its session lives the agent vouches for it, so m1 is idle, not offline, the whole hour.
    m2's last sample was Bad (the PLC link behind the server is down): no vouching, offline."""
    plant = PlantModel(SITE, SECTIONS, INVENTORY, start_ns=T0)
    bad = signal("m2", 0.0, T0 + S)
    bad.fields["quality"] = 0x80000000  # Bad
    out = plant.observe([signal("m1", 0.0, T0), signal("m2", 10.0, T0), bad], T0 + S)
    for second in range(60, 3600 + 60, 60):  # the ingest vouches every 60 s (offline_after_s / 3 at most)
        out += plant.confirm_alive({"m1", "m2"}, T0 + second * S)
    out += plant.advance(T0 + 3600 * S + 5 * S)
    days = {p.tags["equipment"]: p.fields for p in out if p.measurement == "equipment_daily"}
    assert days["m1"]["idle_s"] == 3600.0 and days["m1"]["online_s"] == 3600.0
    assert days["m1"]["good_samples"] == 1  # vouching is not a sample
    assert days["m2"]["online_s"] == 600.0  # its good value at T0 held for offline_after_s, then offline
    states = [(p.tags["equipment"], p.fields["state"]) for p in out if p.measurement == "equipment_state"]
    assert ("m1", "offline") not in states and ("m2", "offline") in states


# --- issue 10, defect 7: a machine that stands still under a live subscription is networked ---------------

STILL_INVENTORY = [
    InventoryItem("still", True, kind="cnc"),  # read once, then unchanged: the subscription vouches
    InventoryItem("bad", True, kind="cnc"),  # its last sample was Bad: nobody vouches for it
    InventoryItem("cut", True, kind="cnc"),  # its OPC UA session dropped: no longer vouched for
    InventoryItem("late", True, kind="cnc"),  # MQTT: one sample at 23:59, nothing after
]


def stand_still(start: int, hours: int, *, cut_at: int | None = None) -> list[Point]:
    """The plant model over ``hours`` from ``start``: one speed-0 sample of each machine, then only
    what the ingest does each minute (advance, confirm_alive for the live subscriptions)."""
    plant = PlantModel(SITE, SECTIONS, STILL_INVENTORY, start_ns=start)
    bad = signal("bad", 0.0, start + S)
    bad.fields["quality"] = 0x80000000  # Bad: the PLC behind the OPC UA server went away
    out = plant.observe([signal("still", 0.0, start), signal("bad", 0.0, start), bad,
                         signal("cut", 0.0, start)], start + S)
    midnight = int(datetime.fromtimestamp(start / S, CST).replace(hour=0, minute=0).timestamp()) * S + 24 * 3600 * S
    out += plant.observe([signal("late", 0.0, midnight - 60 * S)], midnight - 60 * S)  # 23:59 on day 1
    for minute in range(1, hours * 60 + 1):
        now = start + minute * 60 * S
        out += plant.advance(now)
        alive = {"still", "bad"} | ({"cut"} if cut_at is None or now < cut_at else set())
        out += plant.confirm_alive(alive, now)
    out += plant.advance(start + hours * 3600 * S + 5 * S)
    return out


def daily(out: list[Point], measurement: str = "enterprise_daily") -> dict[date, Point]:
    return {datetime.fromtimestamp(p.ts_ns / S, CST).date(): p for p in out if p.measurement == measurement}


def test_a_machine_standing_still_for_26_hours_is_networked_on_day_2():
    """Read once at 22:00 and unchanged for 26 h: online all of day 2 under a live subscription, so
    networked on day 2. Not: the machine whose last sample was Bad, the one whose session dropped
    (at 23:00 on day 1), the one whose only sample was at 23:59 on day 1 (its online hold runs 9 min
    into day 2, with no data of day 2)."""
    start = int(datetime(2026, 3, 1, 22, 0, tzinfo=CST).timestamp()) * S
    out = stand_still(start, 26, cut_at=start + 3600 * S)
    day2 = date(2026, 3, 2)
    equipment = {p.tags["equipment"]: p.fields for p in out if p.measurement == "equipment_daily"
                 and datetime.fromtimestamp(p.ts_ns / S, CST).date() == day2}
    assert equipment["still"]["online_s"] == 86_400.0 and equipment["still"]["idle_s"] == 86_400.0
    assert equipment["bad"]["online_s"] == 0.0 and equipment["cut"]["online_s"] == 0.0
    assert equipment["late"]["online_s"] == 540.0 and equipment["late"]["good_samples"] == 0
    fields = daily(out)[day2].fields
    assert fields["equipment_total"] == 4
    assert (fields["equipment_networked"], fields["nc_equipment_networked"]) == (1, 1)  # "still" only
    # day 1 (from 22:00): all four delivered good data that day
    assert daily(out)[date(2026, 3, 1)].fields["nc_equipment_networked"] == 4


def test_a_spring_festival_week_of_standing_still_keeps_the_networking_rate():
    """春节: machines stand still from the last shift (Feb 14, 18:00) for a week. The one under a live
    subscription is networked every day; the one whose session dropped on Feb 18 at 12:00 is
    networked up to that day and not after."""
    start = int(datetime(2026, 2, 14, 18, 0, tzinfo=CST).timestamp()) * S
    cut_at = int(datetime(2026, 2, 18, 12, 0, tzinfo=CST).timestamp()) * S
    out = stand_still(start, 7 * 24 + 6, cut_at=cut_at)  # to Feb 22, 00:00
    days = daily(out)
    week = [date(2026, 2, d) for d in range(15, 22)]
    assert [days[d].fields["nc_equipment_networked"] for d in week] == [2, 2, 2, 2, 1, 1, 1]
    equipment = [p for p in out if p.measurement == "equipment_daily" and p.tags["equipment"] == "still"]
    assert all(p.fields["online_s"] == 86_400.0 for p in equipment[1:])


def test_samples_on_their_way_are_not_late_when_the_trackers_run_behind_the_clock():
    """What made fmc_plant_events{kind="late_samples"} grow by ~100 per machine in minutes: the ingest
    advances the model to the agent's clock every second, while a subscription's values arrive up to
    a publishing interval (plus the network and the commit) after their source timestamp. With the
    trackers at the clock itself, nearly every such sample was older than the cursor: "late", and
    applied at the cursor instead of its own time. With sample_delay_s (default 10 s) they are not."""
    def run(delay_s: float) -> tuple[int, list[tuple[str, int]]]:
        sections = PlantSections.model_validate({**SECTIONS.model_dump(), "plant": {"sample_delay_s": delay_s}})
        plant = PlantModel(SITE, sections, INVENTORY[:1], start_ns=T0)
        out: list[Point] = []
        for k in range(120):  # a change every 2 s, stamped at the source, delivered 1.5 s later
            ts = T0 + k * 2 * S
            out += plant.advance(ts + S)  # the ingest's tick: the clock is ahead of what is in flight
            out += plant.observe([signal("m1", 1500.0 if k % 10 < 5 else 0.0, ts)], ts + S + S // 2)
        out += plant.advance(T0 + 600 * S)
        changes = [(p.fields["state"], p.ts_ns) for p in out if p.measurement == "equipment_state"]
        return plant.event_counts()[("equipment", "late_samples")], changes

    late, changes = run(10.0)
    assert late == 0
    # each state change at the source timestamp of the sample that made it: running at 0 s, idle at 10 s, …
    assert changes[:3] == [("running", T0), ("idle", T0 + 10 * S), ("running", T0 + 20 * S)]
    late_before, changes_before = run(0.0)
    assert late_before == 120  # every sample: the old behaviour, each applied up to 1 s after its time
    assert changes_before[1] == ("idle", T0 + 11 * S)


def meter_sections(kind: str, unit: str, **meter: object) -> PlantSections:
    return PlantSections.model_validate({
        "plant": {"interval_minutes": 15, "sample_delay_s": 0},
        "meter": [{"id": "main", "carrier": "electricity", "kind": kind, "unit": unit, "max_gap_s": 1800, **meter}],
    })


def intervals_of(out: list[Point]) -> list[tuple[int, float, float]]:
    return sorted(((p.ts_ns - T0) // S, round(p.fields["amount"], 9), p.fields["coverage"]) for p in out
                  if p.measurement == "meter_interval")


def test_a_live_session_carries_an_unchanged_counter_and_a_steady_power_on():
    """A subscription does not send a register again while it stands still. Without the meter's
    confirmations a counter unchanged for an hour leaves its intervals uncovered (a gap longer than
    max_gap_s: the consumption lumps into the reading's interval, coverage 0 before), and a steady
    40 kW between changes an hour apart is lost (nothing is integrated across a gap)."""
    def run(kind: str, unit: str, values: list[tuple[int, float]], confirm: bool) -> list[tuple[int, float, float]]:
        plant = PlantModel(SITE, meter_sections(kind, unit), [], start_ns=T0)
        out: list[Point] = []
        changes = dict(values)
        for second in range(0, 3601, 60):
            if second in changes:
                out += plant.observe([reading("main", changes[second], T0 + second * S)], T0 + second * S)
            elif confirm:
                out += plant.confirm_alive([], T0 + second * S, ["main"])
            out += plant.advance(T0 + second * S)
        out += plant.advance(T0 + 3600 * S + 1800 * S + 1)
        return intervals_of(out)

    counter = [(0, 1000.0), (3600, 1060.0)]  # unchanged for 59 minutes, then 60 kWh in the last one
    held = run("counter", "kWh", counter, confirm=True)
    assert [c for _, _, c in held] == [1.0, 1.0, 1.0, 1.0]  # the hour covered
    assert round(sum(a for _, a, _ in held), 9) == 60.0 and held[3][1] == 60.0
    silent = run("counter", "kWh", counter, confirm=False)
    assert round(sum(a for _, a, _ in silent), 9) == 60.0  # the total is right either way …
    assert [c for _, _, c in silent][:4] == [0.0, 0.0, 0.0, 0.0]  # … but the hour looked unmeasured

    power = [(0, 40.0), (3600, 40.0)]
    assert round(sum(a for _, a, _ in run("power", "kW", power, confirm=True)), 9) == 40.0  # 40 kW for 1 h
    assert sum(a for _, a, _ in run("power", "kW", power, confirm=False)) == 0.0  # lost across the gap

    interval = [(0, 5.0), (900, 5.0), (1800, 5.0)]  # an interval meter is never repeated: 10 kWh after the first
    assert round(sum(a for _, a, _ in run("interval", "kWh", interval, confirm=True)), 9) == 15.0


def _live_session(sections: PlantSections, changes: dict[int, float], seconds: int = 1200) -> list[Point]:
    """A counter read over a live session: its changes, and the confirmations of each other minute."""
    plant = PlantModel(SITE, sections, [], start_ns=T0)
    out: list[Point] = []
    for second in range(0, seconds + 1, 60):
        now = T0 + second * S
        if second in changes:
            out += plant.observe([reading("main", changes[second], now)], now)
        else:
            out += plant.confirm_alive([], now, ["main"])
        out += plant.advance(now)
    return out + plant.advance(T0 + 7200 * S)


@pytest.mark.parametrize("rate", [None, 100.0])
def test_a_glitch_to_zero_on_a_live_session_stays_a_glitch(rate: float | None) -> None:
    # plant-semantics §2: 123456, 123457, 0, 123459 is 3 kWh with or without a rate. The confirmation
    # between the 0 and the return repeated the 0 (the last reading received): two zeros, a reset,
    # 123460 kWh without a rate (the whole register) and 1 kWh with one
    sections = meter_sections("counter", "kWh", **({} if rate is None else {"max_rate_per_h": rate}))
    out = _live_session(sections, {0: 123456.0, 300: 123457.0, 360: 0.0, 540: 123459.0})
    assert round(sum(a for _, a, _ in intervals_of(out)), 9) == 3.0


def test_a_spike_on_a_live_session_does_not_become_the_meters_new_level() -> None:
    # an increase beyond max_rate_per_h waits for a next reading that agrees; the confirmation repeated
    # the spike, which agreed with it: re-based at 999999, the real 1003 then looked like a reset
    sections = meter_sections("counter", "kWh", max_rate_per_h=100.0)
    out = _live_session(sections, {0: 1000.0, 300: 1001.0, 360: 999999.0, 540: 1003.0, 600: 1004.0, 900: 1005.0})
    assert round(sum(a for _, a, _ in intervals_of(out)), 9) == 5.0


def test_own_consumption_over_a_gap_in_the_main_meter_is_main_less_tenant() -> None:
    # own = main − tenant; main misses its readings at 60, 75 and 90 min: its hour comes lumped with the
    # next reading, and the tenant's 7.5 kWh of those intervals were dropped from own (277.5, not 270)
    sections = PlantSections.model_validate({
        "plant": {"interval_minutes": 15, "sample_delay_s": 0},
        "meter": [{"id": "main", "carrier": "electricity", "max_gap_s": 1800, "enterprise_total": False},
                  {"id": "tenant", "carrier": "electricity", "max_gap_s": 1800, "enterprise_total": False}],
        "virtual_meter": [{"id": "own", "carrier": "electricity", "add": ["main"], "subtract": ["tenant"]}],
    })
    start = T0 - 22 * 3600 * S  # 01:00 of the day
    plant = PlantModel(SITE, sections, [], start_ns=start)
    out: list[Point] = []
    for minute in range(0, 181, 15):
        now = start + minute * 60 * S
        points = [reading("tenant", 700 + 10 * minute / 60, now)]
        if minute not in (60, 75, 90):
            points.append(reading("main", 50_000 + 100 * minute / 60, now))
        out += plant.observe(points, now) + plant.advance(now)
    out += plant.advance(start + 30 * 3600 * S)
    [day] = [p for p in out if p.measurement == "consumption_daily"]
    assert round(day.fields["amount"], 6) == 270.0


def test_a_meter_whose_last_reading_was_bad_is_not_carried_on():
    plant = PlantModel(SITE, meter_sections("counter", "kWh"), [], start_ns=T0)
    bad = reading("main", 1000.0, T0 + 60 * S)
    bad.fields["quality"] = 0x80000000  # Bad
    plant.observe([reading("main", 1000.0, T0), bad], T0 + 60 * S)
    out = []
    for second in range(120, 3601, 60):
        out += plant.confirm_alive([], T0 + second * S, ["main"])
        out += plant.advance(T0 + second * S)
    assert all(c == 0.0 for _, _, c in intervals_of(out))
    assert plant.snapshot()["last_reading"] == {"main": None}


def test_the_ingest_vouches_for_live_meters_and_journals_it(tmp_path):
    """The ingest asks for the live meters (the agent: every source's live_meters()) each alive_every_s
    and journals the call: a restart replays the same confirmations, so the model resumes exactly."""
    spool = Spool(tmp_path / "spool.db")
    clock = Clock(T0)
    sections = meter_sections("counter", "kWh")
    plant = PlantModel(SITE, sections, [], start_ns=T0)
    ingest = Ingest(spool, AgentMetrics(), max_series=1000, commit_interval_ms=0, plant=plant, clock=clock,
                    snapshot_every_s=3600.0, alive_equipment=lambda: set(), alive_meters=lambda: {"main"},
                    alive_every_s=600.0)
    ingest.start()
    ingest.submit_points("plant", [reading("main", 1000.0, T0)])
    wait_until(lambda: any(p.measurement == "meter_reading" for p in committed(spool)))
    for second in range(600, 3601, 600):  # the register stands still for an hour
        clock.ns = T0 + second * S
        wait_until(lambda: plant.meters["main"].snapshot()["last_ts_ns"] == clock.ns)
    def confirmed() -> list[dict]:  # read before stop() saves a snapshot (and clears the journal)
        return [json.loads(e) for e in spool.journal(PLANT_STATE_KEY)]

    # journaled with the intervals they made final (a call that made nothing waits for the next commit)
    wait_until(lambda: any("confirm_alive" in e for e in confirmed()))
    journal = confirmed()
    ingest.stop()
    intervals = intervals_of(committed(spool))
    assert [c for _, _, c in intervals] == [1.0, 1.0, 1.0, 1.0]  # the hour covered, without consumption
    assert all(a == 0.0 for _, a, _ in intervals)
    confirmations = [e for e in journal if "confirm_alive" in e]
    assert confirmations and all(e["meters"] == ["main"] for e in confirmations)
    # a restart replays them after the last snapshot: the same confirmations, the same meter
    replayed = PlantModel(SITE, sections, [], start_ns=T0)
    replayed.observe([reading("main", 1000.0, T0)], T0)
    for entry in confirmations:
        replayed.replay(entry)
    last = confirmations[-1]["now_ns"]
    assert replayed.meters["main"].snapshot()["last_ts_ns"] == last and last >= T0 + 900 * S
    spool.close()
