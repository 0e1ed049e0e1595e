"""Equipment state tracker: rules, offline, local days in Asia/Shanghai, restarts, clock faults."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmc.core.points import Priority
from fmc.core.quality import BAD_NO_COMMUNICATION, BAD_NOT_CONNECTED
from fmc.plant.config import EquipmentClassConfig, PlantConfig
from fmc.plant.rollups import InventoryItem, Site
from fmc.plant.states import STATE_CODES, EquipmentDay, EquipmentTracker, StateChange

S = 10**9
MIN = 60 * S
H = 3600 * S
SITE = Site("e1", "330602", "17", "Asia/Shanghai")
# 2024-05-01 00:00 in Shanghai (UTC+8) is 2024-04-30 16:00 UTC
D0 = int(datetime(2024, 4, 30, 16, tzinfo=UTC).timestamp()) * S
DAY = 24 * H

CNC = EquipmentClassConfig.model_validate(
    {
        "name": "cnc",
        "rules": [
            {"type": "threshold", "signal": "spindle", "on_above": 100, "off_below": 50},
            {"type": "map", "signal": "program", "states": {"0": "off", "1": "idle", "2": "running", "3": "down"}},
        ],
    }
)


def tracker(cls: EquipmentClassConfig = CNC, start: int = D0, **kw) -> EquipmentTracker:
    return EquipmentTracker("m1", cls, start_ns=start, site=SITE, **kw)


def changes(events) -> list[tuple[int, str]]:
    return [((e.ts_ns - D0) // S, e.state) for e in events if isinstance(e, StateChange)]


def days(events) -> list[EquipmentDay]:
    return [e for e in events if isinstance(e, EquipmentDay)]


def run(t: EquipmentTracker, samples, until: int) -> list:
    events = []
    for signal, value, quality, ts in samples:
        events += t.observe(signal, value, quality, ts)
    return events + t.advance(until)


# --- a day by hand ----------------------------------------------------------------------------


def test_a_day_by_hand() -> None:
    samples = [
        ("program", 1, 0, D0 + 8 * H),  # 08:00 idle
        ("spindle", 800, 0, D0 + 8 * H + 5 * MIN),  # 08:05 running
        ("spindle", 800, 0, D0 + 8 * H + 10 * MIN),
        ("spindle", 0, 0, D0 + 8 * H + 15 * MIN),  # 08:15 below off_below: spindle says nothing -> idle
        ("program", 3, 0, D0 + 8 * H + 20 * MIN),  # 08:20 down
        ("program", 1, 0, D0 + 8 * H + 25 * MIN),  # 08:25 idle; last good sample
    ]
    t = tracker()
    events = run(t, samples, D0 + DAY)
    assert changes(events) == [
        (8 * 3600, "idle"),
        (8 * 3600 + 300, "running"),
        (8 * 3600 + 900, "idle"),
        (8 * 3600 + 1200, "down"),
        (8 * 3600 + 1500, "idle"),
        (8 * 3600 + 1500 + 600, "offline"),  # 600 s after the last good sample
    ]
    [d] = days(events)
    assert d.day == date(2024, 5, 1)
    # idle: 08:00-08:05 (300) + 08:15-08:20 (300) + 08:25-08:35 (600) = 1200 s
    assert d.idle_ns == 1200 * S
    assert d.running_ns == 600 * S  # 08:05-08:15
    assert d.down_ns == 300 * S  # 08:20-08:25
    assert d.off_ns == 0
    assert d.online_ns == 2100 * S  # 08:00-08:35
    assert d.offline_ns == DAY - 2100 * S
    assert d.good_samples == 6


def test_hysteresis_keeps_the_state_inside_the_band() -> None:
    cls = EquipmentClassConfig.model_validate(
        {"name": "loom", "rules": [{"type": "threshold", "signal": "kw", "on_above": 5, "off_below": 2,
                                   "off_state": "idle"}]}
    )
    t = tracker(cls)
    seq = [(10, "running"), (3, "running"), (1, "idle"), (3, "idle"), (6, "running")]
    for i, (value, expected) in enumerate(seq):
        t.observe("kw", value, 0, D0 + i * MIN)
        assert t.state == expected, (i, value)


def test_first_value_inside_the_band_is_off() -> None:
    cls = EquipmentClassConfig.model_validate(
        {"name": "x", "rules": [{"type": "threshold", "signal": "kw", "on_above": 5, "off_below": 2,
                                "off_state": "off"}]}
    )
    t = tracker(cls)
    t.observe("kw", 3, 0, D0)
    assert t.state == "off"


def test_dwell_ignores_a_blip_and_accepts_a_lasting_change_at_start_plus_dwell() -> None:
    cls = EquipmentClassConfig.model_validate(
        {"name": "x", "rules": [{"type": "threshold", "signal": "kw", "on_above": 5, "off_state": "idle",
                                "min_dwell_s": 30}]}
    )
    t = tracker(cls)
    ev = t.observe("kw", 1, 0, D0)  # first opinion after silence: accepted at once
    ev += t.observe("kw", 9, 0, D0 + 10 * S)  # blip up ...
    ev += t.observe("kw", 1, 0, D0 + 20 * S)  # ... back within 30 s: ignored
    ev += t.observe("kw", 9, 0, D0 + 100 * S)  # lasting change from 100 s
    ev += t.observe("kw", 9, 0, D0 + 110 * S)
    ev += t.advance(D0 + 200 * S)
    assert changes(ev) == [(0, "idle"), (130, "running")]  # accepted at 100 + 30, by time alone


def test_priority_down_beats_running_beats_idle_beats_off() -> None:
    t = tracker()
    t.observe("program", 0, 0, D0)
    assert t.state == "off"
    t.observe("spindle", 500, 0, D0 + S)
    assert t.state == "running"  # running beats off
    t.observe("program", 3, 0, D0 + 2 * S)
    assert t.state == "down"  # down beats running
    t.observe("program", 1, 0, D0 + 3 * S)
    assert t.state == "running"


def test_default_state_when_no_rule_has_an_opinion() -> None:
    t = tracker()
    t.observe("temperature", 41.5, 0, D0)
    assert t.state == "idle"
    cls = EquipmentClassConfig(name="x", default_state="off")
    t = tracker(cls)
    t.observe("anything", 1, 0, D0)
    assert t.state == "off"


@pytest.mark.parametrize(
    ("rule", "values"),
    [
        ("opcua_machinery_item_state",
         [(0, "off"), (1, "down"), (2, "idle"), (3, "running"), ("NotAvailable", "off"), ("OutOfService", "down"),
          ("NotExecuting", "idle"), ("Executing", "running")]),
        ("opcua_channel_state",
         [(0, "running"), (1, "down"), (2, "idle"), ("Active", "running"), ("Interrupted", "down"),
          ("Reset", "idle")]),
        ("packml_state",
         [(6, "running"), ("Execute", "running"), (4, "idle"), ("Idle", "idle"), (3, "idle"), (17, "idle"),
          (5, "idle"), ("Suspended", "idle"), (11, "down"), ("Held", "down"), (9, "down"), ("Aborted", "down"),
          (2, "off"), ("Stopped", "off"), (7, "off")]),
        ("opcua_machinery_operation_mode",
         [(1, "down"), ("Maintenance", "down"), (2, "idle"), ("Setup", "idle"), (3, "idle"), (0, "idle")]),
    ],
)
def test_builtin_mappings(rule: str, values: list) -> None:
    # the class's default state (idle) shows when the rule has no opinion (Processing, None)
    cls = EquipmentClassConfig.model_validate({"name": "x", "rules": [{"type": rule, "signal": "s"}]})
    t = tracker(cls)
    for i, (value, expected) in enumerate(values):
        t.observe("s", value, 0, D0 + i * S)
        assert t.state == expected, (value, expected)


def test_operation_mode_maintenance_overrides_an_executing_item_state() -> None:
    cls = EquipmentClassConfig.model_validate(
        {"name": "x", "rules": [{"type": "opcua_machinery_item_state", "signal": "item"},
                                {"type": "opcua_machinery_operation_mode", "signal": "mode"}]}
    )
    t = tracker(cls)
    t.observe("item", "Executing", 0, D0)
    t.observe("mode", "Processing", 0, D0 + S)
    assert t.state == "running"
    t.observe("mode", "Maintenance", 0, D0 + 2 * S)
    assert t.state == "down"


def test_bad_quality_is_not_good_data() -> None:
    t = tracker()
    ev = t.observe("program", 2, 0, D0)
    for k in range(1, 20):  # bad values every minute: do not keep it online, do not change state
        ev += t.observe("program", 3, 0x80000000, D0 + k * MIN)
        ev += t.observe("spindle", float("nan"), 0, D0 + k * MIN)
    ev += t.advance(D0 + DAY)
    assert changes(ev) == [(0, "running"), (600, "offline")]
    [d] = days(ev)
    assert d.good_samples == 1
    assert d.running_ns == 600 * S
    assert t.counts["bad_samples"] == 38


def test_a_lost_contact_takes_it_offline_at_once_and_a_good_sample_brings_it_back() -> None:
    # a Sparkplug death / a Modbus device past its retries: offline at the lost-contact sample's
    # time, not offline_after_s (600 s) later; an ordinary Bad status still waits
    t = tracker()
    ev = t.observe("spindle", 900, 0, D0)
    ev += t.observe("program", None, 0x80000000, D0 + 60 * S)  # Bad: not a lost contact
    assert t.state == "running"
    ev += t.observe("program", None, BAD_NO_COMMUNICATION, D0 + 120 * S)
    assert t.state == "offline"
    ev += t.observe("program", None, BAD_NOT_CONNECTED | 0x1234, D0 + 180 * S)  # already offline: no event
    ev += t.observe("program", 1, 0, D0 + 300 * S)  # back: the spindle value before is forgotten
    ev += t.advance(D0 + DAY)
    assert changes(ev) == [(0, "running"), (120, "offline"), (300, "idle"), (900, "offline")]
    [d] = days(ev)
    assert d.running_ns == 120 * S
    assert t.counts["contact_lost"] == 2
    assert t.counts["bad_samples"] == 3


def test_offline_forgets_stale_values() -> None:
    t = tracker()
    t.observe("spindle", 900, 0, D0)
    assert t.state == "running"
    t.advance(D0 + 20 * MIN)
    assert t.state == "offline"
    t.observe("program", 1, 0, D0 + 30 * MIN)  # back: the old spindle value no longer counts
    assert t.state == "idle"


def test_sample_exactly_at_the_deadline_keeps_it_online() -> None:
    t = tracker()
    ev = t.observe("program", 2, 0, D0)
    ev += t.observe("program", 2, 0, D0 + 600 * S)
    assert changes(ev) == [(0, "running")]


# --- days ------------------------------------------------------------------------------------------


def test_durations_split_exactly_at_shanghai_midnight() -> None:
    t = tracker(start=D0 + 23 * H)
    ev = []
    for k in range(0, 31, 5):  # 23:50 … 00:20 local, every 5 minutes
        ev += t.observe("spindle", 500, 0, D0 + 23 * H + 50 * MIN + k * MIN)
    ev += t.advance(D0 + 2 * DAY)
    d1, d2 = days(ev)
    assert (d1.day, d2.day) == (date(2024, 5, 1), date(2024, 5, 2))
    assert d1.end_ns == d2.start_ns == D0 + DAY
    # 2024-05-02 00:00 +08:00 is 2024-05-01 16:00 UTC
    assert d2.start_ns == int(datetime(2024, 5, 1, 16, tzinfo=UTC).timestamp()) * S
    assert d1.covered_from_ns == D0 + 23 * H  # the tracker started at 23:00
    assert d1.running_ns == 10 * MIN  # 23:50-24:00
    assert d1.offline_ns == 50 * MIN  # 23:00-23:50
    assert d2.running_ns == 30 * MIN  # 00:00-00:20 + 10 min after the last sample
    assert d2.offline_ns == DAY - 30 * MIN


def test_equipment_daily_point_and_inventory_tags() -> None:
    inv = InventoryItem("m1", nc=True, asset_value=500_000.0, kind="cnc_lathe")
    t = tracker(inventory=inv)
    ev = run(t, [("spindle", 500, 0, D0 + H)], D0 + DAY)
    [d] = days(ev)
    p = d.to_point(SITE)
    assert p.measurement == "equipment_daily"
    assert p.tags == {"enterprise": "e1", "region": "330602", "industry": "17", "equipment": "m1",
                      "nc": "true", "kind": "cnc_lathe"}
    assert p.fields == {"online_s": 600.0, "running_s": 600.0, "idle_s": 0.0, "down_s": 0.0,
                        "good_samples": 1, "in_inventory_s": 86400.0}
    assert p.ts_ns == D0
    assert p.priority == Priority.ROLLUP
    [c] = [e for e in ev if isinstance(e, StateChange) and e.state == "running"]
    sp = c.to_point(SITE)
    assert (sp.measurement, sp.tags, sp.fields, sp.ts_ns, sp.priority) == (
        "equipment_state", {"enterprise": "e1", "equipment": "m1"}, {"state": "running", "code": 3}, D0 + H,
        Priority.EVENT)


def test_state_codes() -> None:
    assert STATE_CODES == {"offline": 0, "off": 1, "idle": 2, "running": 3, "down": 4}


def test_not_in_scope_on_a_day_means_no_inventory_seconds() -> None:
    inv = InventoryItem("m1", nc=False, commissioned=date(2024, 5, 2))
    [d1, d2] = days(tracker(inventory=inv).advance(D0 + 2 * DAY))
    assert (d1.in_inventory_s, d2.in_inventory_s) == (0.0, 86400.0)
    [d] = days(tracker().advance(D0 + DAY))
    assert (d.nc, d.kind, d.in_inventory_s) == ("unknown", "unlisted", 0.0)


# --- clocks ---------------------------------------------------------------------------------------------


def test_late_sample_is_applied_at_the_cursor() -> None:
    t = tracker()
    ev = t.observe("program", 2, 0, D0 + H)
    ev += t.observe("program", 3, 0, D0 + H - 30 * MIN)  # 30 min older than the cursor
    assert changes(ev) == [(3600, "running"), (3600, "down")]
    assert t.counts["late_samples"] == 1


def test_future_timestamp_is_taken_at_the_receive_time() -> None:
    t = tracker()
    ev = t.observe("program", 2, 0, D0 + 400 * DAY, received_ns=D0 + H)
    assert changes(ev) == [(3600, "running")]
    assert t.counts["future_samples"] == 1
    # within the skew the device's own timestamp is used
    ev = t.observe("program", 3, 0, D0 + H + 60 * S, received_ns=D0 + H)
    assert changes(ev) == [(3660, "down")]


def test_clock_stepping_back_is_ignored() -> None:
    t = tracker()
    t.observe("program", 2, 0, D0 + H)
    assert t.advance(D0) == []
    assert t.cursor_ns == D0 + H


def test_jump_far_forward_skips_empty_days() -> None:
    t = tracker(plant=PlantConfig(max_catch_up_days=3))
    ev = t.observe("program", 2, 0, D0 + H)
    ev += t.advance(D0 + 10 * DAY + H)  # 10 midnights later
    [d] = days(ev)  # the open day is closed; nothing for the 9 days between
    assert d.day == date(2024, 5, 1) and d.running_ns == 600 * S
    assert t.counts["skipped_days"] == 9
    # the days jumped over, for the plant model's ledger-only rollups; taken once
    assert t.take_skipped_days() == [date(2024, 5, d) for d in range(2, 11)]
    assert t.take_skipped_days() == []
    ev = t.advance(D0 + 11 * DAY)
    [d] = days(ev)
    assert d.day == date(2024, 5, 11)
    assert d.covered_from_ns == D0 + 10 * DAY + H and d.offline_ns == 23 * H
    # a step within the limit emits every day
    t = tracker(plant=PlantConfig(max_catch_up_days=3))
    assert len(days(t.advance(D0 + 3 * DAY))) == 3


# --- restart ------------------------------------------------------------------------------------------------


def test_restart_mid_day_resumes_the_accumulated_seconds() -> None:
    t = tracker()
    t.observe("spindle", 500, 0, D0 + 8 * H)
    t.observe("spindle", 500, 0, D0 + 8 * H + 5 * MIN)
    saved = json.loads(json.dumps(t.snapshot()))
    # the agent is down from 08:05 to 09:00; a new tracker resumes from the snapshot
    t2 = tracker(start=D0 + 9 * H)
    t2.restore(saved)
    ev = t2.observe("spindle", 500, 0, D0 + 9 * H)
    ev += t2.advance(D0 + DAY)
    [d] = days(ev)
    # running 08:00-08:15 (the last sample at 08:05 holds 10 min), offline 08:15-09:00, running 09:00-09:10
    assert d.running_ns == 25 * MIN
    assert d.offline_ns == DAY - 25 * MIN
    assert d.good_samples == 3


def test_restore_rejects_another_equipment() -> None:
    t = tracker()
    snap = t.snapshot()
    other = EquipmentTracker("m2", CNC, start_ns=D0, site=SITE)
    with pytest.raises(ValueError, match="m1"):
        other.restore(snap)


# --- properties ------------------------------------------------------------------------------------------

PROPERTY_CLASS = EquipmentClassConfig.model_validate(
    {
        "name": "p",
        "rules": [
            {"type": "threshold", "signal": "spindle", "on_above": 100, "off_below": 50, "min_dwell_s": 45},
            {"type": "map", "signal": "program", "states": {"0": "off", "1": "idle", "2": "running", "3": "down"},
             "min_dwell_s": 20},
            {"type": "packml_state", "signal": "packml"},
        ],
    }
)
PLANT = PlantConfig(offline_after_s=600, max_catch_up_days=3)

signal_sample = st.tuples(
    st.just("obs"),
    st.sampled_from(["spindle", "program", "packml", "temperature"]),
    st.one_of(st.integers(-5, 1000), st.floats(-10, 2000), st.just(float("nan")),
              st.sampled_from(["Execute", "Held", "x"])),
    st.sampled_from([0, 0, 0, 0x80000000]),
    # mostly forward, sometimes backwards (out of order), sometimes far ahead (hours, days, a clock jump)
    st.one_of(st.integers(0, 900 * S), st.integers(-3600 * S, 0), st.integers(0, 3 * DAY),
              st.integers(4 * DAY, 40 * DAY)),
)
advance_step = st.tuples(st.just("adv"), st.integers(0, 2 * DAY))
operations = st.lists(st.one_of(signal_sample, signal_sample, signal_sample, advance_step), max_size=60)
# any start instant in 2024 (any nanosecond), so midnights fall anywhere relative to the samples
start_instants = st.integers(int(datetime(2024, 1, 1, tzinfo=UTC).timestamp()) * S,
                             int(datetime(2024, 12, 31, tzinfo=UTC).timestamp()) * S)


def play(t: EquipmentTracker, ops, start: int, clock: int | None = None) -> tuple[list, int]:
    """Apply ops; time offsets accumulate from ``start`` (a sample's offset may point backwards)."""
    events = []
    now = start if clock is None else clock
    for op in ops:
        if op[0] == "obs":
            _, signal, value, quality, dt = op
            ts = now + dt
            events += t.observe(signal, value, quality, ts)
            now = max(now, ts)
        else:
            now += op[1]
            events += t.advance(now)
    return events, now


def check_partition(t: EquipmentTracker, events, start: int, end: int) -> None:
    ds = days(events)
    for d in ds:
        parts = [d.offline_ns, d.off_ns, d.idle_ns, d.running_ns, d.down_ns]
        assert all(p >= 0 for p in parts)
        assert sum(parts) == d.covered_ns  # the five states partition the covered time exactly
        assert d.start_ns <= d.covered_from_ns < d.end_ns
        # Shanghai days are 24 h long and start at 16:00 UTC (00:00 +08:00)
        assert d.end_ns - d.start_ns == DAY
        assert (d.start_ns // S + 8 * 3600) % 86400 == 0 and d.start_ns % S == 0
    skipped = 0
    for a, b in pairwise(ds):
        if b.start_ns == a.end_ns:
            assert b.covered_from_ns == b.start_ns  # consecutive: nothing lost, nothing counted twice
        else:
            assert b.start_ns > a.end_ns  # only a jump leaves out days, and it says how many
            skipped += (b.start_ns - a.end_ns) // DAY
    assert skipped == t.counts["skipped_days"]
    if ds:
        assert ds[0].covered_from_ns == start
        assert ds[-1].end_ns <= end
    cs = [e for e in events if isinstance(e, StateChange)]
    assert all(a.ts_ns <= b.ts_ns for a, b in pairwise(cs))
    assert all(a.state == b.previous and a.state != b.state for a, b in pairwise(cs))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations, start_instants)
def test_property_states_partition_each_day_exactly(ops, start) -> None:
    t = EquipmentTracker("m1", PROPERTY_CLASS, start_ns=start, site=SITE, plant=PLANT)
    events, now = play(t, ops, start)
    final = now + 2 * DAY
    events += t.advance(final)
    check_partition(t, events, start, final)
    # the open day so far is partitioned too
    open_day = t.open_day_totals()
    assert open_day.offline_ns + open_day.online_ns == open_day.covered_ns


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations, st.data(), start_instants)
def test_property_snapshot_restore_equals_an_uninterrupted_run(ops, data, start) -> None:
    k = data.draw(st.integers(0, len(ops)))
    straight = EquipmentTracker("m1", PROPERTY_CLASS, start_ns=start, site=SITE, plant=PLANT)
    events_a, now_a = play(straight, ops, start)
    events_a += straight.advance(now_a + 2 * DAY)

    first = EquipmentTracker("m1", PROPERTY_CLASS, start_ns=start, site=SITE, plant=PLANT)
    events_b, now_b = play(first, ops[:k], start)
    saved = json.loads(json.dumps(first.snapshot()))
    resumed = EquipmentTracker("m1", PROPERTY_CLASS, start_ns=now_b, site=SITE, plant=PLANT)
    resumed.restore(saved)
    more, now_b = play(resumed, ops[k:], start, clock=now_b)
    events_b += more + resumed.advance(now_b + 2 * DAY)
    assert events_b == events_a
    assert resumed.counts == straight.counts


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 3 * H), min_size=1, max_size=30), st.integers(1, 30))
def test_property_backward_timestamps_never_make_negative_time(gaps, back_minutes) -> None:
    # every other sample claims to be back_minutes older than the one before it
    t = tracker()
    now, events = D0, []
    for i, g in enumerate(gaps):
        now += g
        ts = now - back_minutes * MIN if i % 2 else now
        events += t.observe("program", i % 4, 0, ts)
    events += t.advance(now + 2 * DAY)
    check_partition(t, events, D0, now + 2 * DAY)


# --- config and time zones ------------------------------------------------------------------------------


def test_class_config_errors_say_what_to_fix() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="hysteresis needs off_below ≤ on_above"):
        EquipmentClassConfig.model_validate(
            {"name": "x", "rules": [{"type": "threshold", "signal": "s", "on_above": 3, "off_below": 5}]})
    with pytest.raises(ValidationError, match="could never change state"):
        EquipmentClassConfig.model_validate(
            {"name": "x", "rules": [{"type": "threshold", "signal": "s", "on_above": 3, "off_state": "running"}]})
    with pytest.raises(ValidationError, match="with different states"):
        EquipmentClassConfig.model_validate(
            {"name": "x", "rules": [{"type": "map", "signal": "s", "states": {"2": "running", "2.0": "idle"}}]})
    with pytest.raises(ValidationError, match="not a class name"):
        EquipmentClassConfig(name="two words")
    assert EquipmentClassConfig(name="织机").name == "织机"  # a Chinese inventory kind names its class
    # offline is never configured: it comes from silence
    with pytest.raises(ValidationError):
        EquipmentClassConfig.model_validate({"name": "x", "default_state": "offline"})


def test_map_keys_match_numbers_and_names_alike() -> None:
    cls = EquipmentClassConfig.model_validate(
        {"name": "x", "rules": [{"type": "map", "signal": "mode", "states": {"2": "running", "Auto": "idle"}}]})
    t = tracker(cls)
    for i, (value, expected) in enumerate([(2.0, "running"), ("AUTO", "idle"), ("2", "running"), (True, "idle")]):
        t.observe("mode", value, 0, D0 + i * S)
        assert t.state == expected, value  # True is 1: unmapped, so no opinion -> default idle


def test_a_dst_day_is_23_hours_and_still_partitioned() -> None:
    berlin = Site("e1", "330602", "17", "Europe/Berlin")
    # 2024-03-31 00:00 CET = 2024-03-30 23:00 UTC; clocks jump 02:00 -> 03:00
    start = int(datetime(2024, 3, 30, 23, tzinfo=UTC).timestamp()) * S
    t = EquipmentTracker("m1", CNC, start_ns=start, site=berlin)
    ev = t.observe("spindle", 500, 0, start + H)
    ev += t.advance(start + 2 * DAY)
    d1, d2 = days(ev)
    assert d1.day == date(2024, 3, 31) and d1.end_ns - d1.start_ns == 23 * H
    assert d1.covered_ns == 23 * H and d1.running_ns == 600 * S and d1.in_inventory_s == 0.0
    assert d2.start_ns == d1.end_ns and d2.end_ns - d2.start_ns == DAY
