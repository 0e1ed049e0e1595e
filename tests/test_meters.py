"""Meter accumulator: counters (resets, rollovers, jumps), interval readings, power, units, virtual meters."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fmc.core.points import Point, Priority
from fmc.plant.config import MeterConfig, PlantSections, VirtualMeterConfig
from fmc.plant.meters import MeterAccumulator, MeterInterval, VirtualMeter
from fmc.plant.model import PlantModel
from fmc.plant.rollups import Site

S = 10**9
MIN = 60 * S
H = 3600 * S
IV = 15 * MIN
SITE = Site("e1", "330602", "17")
# 2024-05-01 00:00 Shanghai = 2024-04-30 16:00 UTC, a multiple of 15 min
D0 = int(datetime(2024, 4, 30, 16, tzinfo=UTC).timestamp()) * S
assert D0 % IV == 0


def meter(**kw) -> MeterConfig:
    return MeterConfig.model_validate({"id": "main", "carrier": "electricity", **kw})


def feed(acc: MeterAccumulator, readings, advance_to: int | None = None) -> list[MeterInterval]:
    out = []
    for value, minutes in readings:
        out += acc.observe(value, 0, D0 + round(minutes * MIN))
    if advance_to is not None:
        out += acc.advance(advance_to)
    return out


def by_start(intervals) -> dict[int, MeterInterval]:
    """Minutes after D0 -> interval."""
    return {(iv.start_ns - D0) // MIN: iv for iv in intervals}


# --- counters -------------------------------------------------------------------------------------


def test_counter_is_spread_by_time_share_and_emitted_when_final() -> None:
    acc = MeterAccumulator(meter())
    [first] = feed(acc, [(100.0, 10), (110.0, 20)])  # a reading after 00:15 makes [00:00, 00:15) final
    # 100 -> 110 over 00:10-00:20: 5 in each interval; covered 00:10-00:15
    assert (first.start_ns, first.amount, first.covered_ns) == (D0, pytest.approx(5.0), 5 * MIN)
    [second] = feed(acc, [(130.0, 40)])
    # 5 + 110 -> 130 over 00:20-00:40: 10 in 00:20-00:30
    assert second.start_ns == D0 + 15 * MIN
    assert second.amount == pytest.approx(15.0) and second.complete
    # the clock 30 min (max_gap) past 00:45 makes [00:30, 00:45) final: 10 over 00:30-00:40
    [last] = acc.advance(D0 + 75 * MIN)
    assert (last.start_ns - D0) // MIN == 30
    assert last.amount == pytest.approx(10.0) and last.coverage == pytest.approx(10 / 15)
    # 10 kWh × 0.1229 kgce/kWh = 1.229 kgce = 0.001229 tce
    assert last.tce == pytest.approx(0.001229) and last.m3 is None


def test_interval_is_held_until_a_reading_after_its_end() -> None:
    acc = MeterAccumulator(meter())
    assert feed(acc, [(100.0, 10), (110.0, 14)]) == []
    assert acc.advance(D0 + 20 * MIN) == []  # the reading for 00:14-00:16 may still come
    [iv] = feed(acc, [(112.0, 16)])
    # 110 -> 112 over 00:14-00:16: 1 before 00:15. 10 + 1 = 11 in [00:00, 00:15)
    assert iv.amount == pytest.approx(11.0) and iv.covered_ns == 5 * MIN


def test_rollover_counts_the_wrap() -> None:
    acc = MeterAccumulator(meter(rollover=1_000_000))
    out = feed(acc, [(999_990.0, 0), (10.0, 5), (10.0, 15)])
    # 1 000 000 - 999 990 + 10 = 20
    assert sum(iv.amount for iv in out) == pytest.approx(20.0)
    assert acc.counts["rollover"] == 1


def test_reset_counts_from_zero_when_plausible() -> None:
    acc = MeterAccumulator(meter(max_rate_per_h=100))
    out = feed(acc, [(5000.0, 0), (3.0, 15), (3.0, 16)])  # a drop is believed when the next reading confirms it
    # 15 min at most 100 kWh/h allows 25 kWh: reading 3 after a reset to 0 is 3 kWh
    [iv] = out
    assert iv.amount == pytest.approx(3.0) and iv.complete
    assert acc.counts["reset_counted"] == 1


def test_reset_to_an_implausible_value_counts_nothing_and_leaves_the_span_uncovered() -> None:
    acc = MeterAccumulator(meter(max_rate_per_h=100))
    out = by_start(feed(acc, [(5000.0, 0), (4000.0, 15), (4010.0, 30)]))
    assert out[0].amount == 0.0 and out[0].coverage == 0.0  # a replaced meter: unknown, not invented
    assert out[15].amount == pytest.approx(10.0) and out[15].complete  # counts on from the new meter
    assert acc.counts["reset_uncounted"] == 1


def test_reset_without_max_rate_is_not_counted() -> None:
    acc = MeterAccumulator(meter())
    [iv] = feed(acc, [(5000.0, 0), (3.0, 15), (3.0, 16)])  # the next reading confirms the drop
    assert iv.amount == 0.0 and iv.coverage == 0.0
    assert acc.counts["reset_uncounted"] == 1


def test_implausible_jump_is_rejected_and_the_baseline_kept() -> None:
    acc = MeterAccumulator(meter(max_rate_per_h=100))
    [iv] = feed(acc, [(100.0, 0), (99_999.0, 5), (105.0, 10), (105.0, 15)])
    # 99 999 within 5 min is far beyond 100 kWh/h; 105 is measured against the kept 100
    assert iv.amount == pytest.approx(5.0) and iv.complete
    assert acc.counts["implausible"] == 1


def test_a_confirmed_new_level_becomes_the_baseline_without_counting_the_jump() -> None:
    acc = MeterAccumulator(meter(max_rate_per_h=100))
    [iv] = feed(acc, [(100.0, 0), (50_000.0, 5), (50_004.0, 10), (50_004.0, 15)])
    # 00:00-00:05 unknown (a meter change); 50 000 -> 50 004 over 00:05-00:10 counts
    assert iv.amount == pytest.approx(4.0)
    assert iv.covered_ns == 10 * MIN
    assert (acc.counts["implausible"], acc.counts["rebaseline"]) == (1, 1)


def test_jitter_is_noise_and_never_counts_twice() -> None:
    acc = MeterAccumulator(meter(max_jitter=0.05))
    [iv] = feed(acc, [(100.0, 0), (99.98, 5), (100.1, 10), (100.1, 15)])
    # the dip to 99.98 is ignored: 100.0 -> 100.1 is 0.1, not 0.12
    assert iv.amount == pytest.approx(0.1) and iv.complete
    assert acc.counts["jitter"] == 1


def test_long_gap_consumption_goes_uncovered_to_the_later_reading() -> None:
    acc = MeterAccumulator(meter(max_gap_s=1800))
    out = by_start(feed(acc, [(100.0, 0), (200.0, 190), (201.0, 200), (201.0, 240)]))
    # 00:00-03:10 is longer than 30 min: nothing is spread, the 100 kWh lands in [03:00, 03:15)
    assert all(out[m].amount == 0.0 and out[m].coverage == 0.0 for m in range(0, 180, 15))
    assert out[180].amount == pytest.approx(100.5)  # + 0.5 of 200 -> 201 over 03:10-03:20
    assert out[180].lump == pytest.approx(100.0)
    assert out[180].covered_ns == 5 * MIN
    assert sum(iv.amount for iv in out.values()) == pytest.approx(101.0)


def test_consumption_for_an_emitted_interval_goes_to_the_first_open_one() -> None:
    acc = MeterAccumulator(meter())
    out = feed(acc, [(100.0, 0), (101.0, 10)], advance_to=D0 + 50 * MIN)
    [first] = out
    assert first.amount == pytest.approx(1.0) and first.covered_ns == 10 * MIN
    # a delayed reading from 00:12 arrives after [00:00, 00:15) was emitted
    out = feed(acc, [(103.0, 12), (104.0, 30)])
    [second] = out
    assert (second.start_ns - D0) // MIN == 15
    # 101 -> 103 (00:10-00:12) and 3/18 of 103 -> 104 (00:12-00:15) belong to the emitted interval:
    # they come here uncovered; 15/18 of 103 -> 104 (00:15-00:30) is this interval's own
    assert second.amount == pytest.approx(3.0)
    assert second.lump == pytest.approx(2.0 + 3 / 18)
    assert second.covered_ns == 15 * MIN
    assert acc.counts["late_data"] == 2


def test_out_of_order_duplicate_and_bad_readings_are_dropped() -> None:
    acc = MeterAccumulator(meter())
    out = acc.observe(100.0, 0, D0)
    out += acc.observe(101.0, 0, D0 + 5 * MIN)
    out += acc.observe(101.0, 0, D0 + 5 * MIN)  # MQTT redelivery
    out += acc.observe(100.5, 0, D0 + 3 * MIN)  # an old reading sent again
    out += acc.observe(9e9, 0x80000000, D0 + 6 * MIN)  # bad quality
    out += acc.observe(float("nan"), 0, D0 + 7 * MIN)
    out += acc.observe(-4.0, 0, D0 + 8 * MIN)
    out += acc.observe(102.0, 0, D0 + 15 * MIN)
    assert [round(iv.amount, 9) for iv in out] == [2.0]
    c = acc.counts
    assert (c["out_of_order"], c["bad_quality"], c["not_finite"], c["negative"]) == (2, 1, 1, 1)


def test_future_timestamp_is_taken_at_the_receive_time() -> None:
    acc = MeterAccumulator(meter())
    acc.observe(100.0, 0, D0)
    out = acc.observe(101.0, 0, D0 + 400 * 24 * H, received_ns=D0 + 10 * MIN)
    out += acc.observe(102.0, 0, D0 + 20 * MIN)
    assert acc.counts["future_timestamp"] == 1
    [iv] = out
    assert iv.amount == pytest.approx(1.5)  # 100 -> 101 at 00:10, half of 101 -> 102 before 00:15


# --- interval readings and power --------------------------------------------------------------------------


def test_interval_readings() -> None:
    acc = MeterAccumulator(meter(kind="interval"))
    out = by_start(feed(acc, [(5.0, 5), (3.0, 20), (0.0, 30)]))
    # the first reading's period is unknown: 5 uncovered in [00:00, 00:15);
    # 3 over 00:05-00:20: 2 before 00:15, 1 after
    assert out[0].amount == pytest.approx(7.0) and out[0].lump == pytest.approx(5.0)
    assert out[0].covered_ns == 10 * MIN
    assert out[15].amount == pytest.approx(1.0) and out[15].complete


def test_power_trapezoid() -> None:
    acc = MeterAccumulator(meter(kind="power", max_gap_s=1800))
    out = by_start(feed(acc, [(0.0, 10), (10.0, 20), (10.0, 30)], advance_to=D0 + 2 * H))
    # 0 -> 10 kW over 00:10-00:20 = 5 kW × 1/6 h = 0.8333 kWh: 00:10-00:15 averages 2.5 kW (0.2083),
    # 00:15-00:20 averages 7.5 kW (0.625); 00:20-00:30 at 10 kW = 1.6667 kWh
    assert out[0].amount == pytest.approx(2.5 * 5 / 60)
    assert out[15].amount == pytest.approx(7.5 * 5 / 60 + 10 * 10 / 60)
    assert out[15].complete and out[0].covered_ns == 5 * MIN


def test_power_is_not_integrated_across_a_gap() -> None:
    acc = MeterAccumulator(meter(kind="power", unit="W", max_gap_s=900))
    out = by_start(feed(acc, [(4000.0, 0), (4000.0, 15), (4000.0, 60), (4000.0, 75)]))
    # 4000 W = 4 kW; 15 min -> 1 kWh. 00:15-01:00 is a 45 min gap: nothing
    assert out[0].amount == pytest.approx(1.0) and out[0].complete
    assert all(out[m].amount == 0.0 and out[m].coverage == 0.0 for m in (15, 30, 45))
    assert out[60].amount == pytest.approx(1.0) and out[60].complete
    assert acc.counts["gap"] == 1


# --- units and points ------------------------------------------------------------------------------------


def test_units_to_canonical_and_tce() -> None:
    diesel = MeterAccumulator(MeterConfig(id="d", carrier="diesel", kind="interval", unit="L", density_kg_per_l=0.84))
    [iv] = feed(diesel, [(0.0, 0), (100.0, 15), (0.0, 30)])[:1]
    # 100 L × 0.84 kg/L = 84 kg; 84 × 1.4571 = 122.3964 kgce = 0.1223964 tce
    assert iv.amount_native == pytest.approx(100.0) and iv.amount == pytest.approx(84.0)
    assert iv.tce == pytest.approx(0.1223964)

    heat = MeterAccumulator(MeterConfig(id="h", carrier="heat", unit="MJ"))
    [iv] = feed(heat, [(0.0, 0), (2000.0, 15)])
    # 2000 MJ = 2 GJ; 2 × 34.12 = 68.24 kgce
    assert iv.amount == pytest.approx(2.0) and iv.tce == pytest.approx(0.06824)

    pulses = MeterAccumulator(meter(scale=0.01))  # 100 pulses per kWh
    [iv] = feed(pulses, [(0.0, 0), (1000.0, 15)])
    assert iv.amount == pytest.approx(10.0)


def test_water_interval_point() -> None:
    acc = MeterAccumulator(MeterConfig(id="w1", carrier="water_intake", unit="L"))
    [iv] = feed(acc, [(0.0, 0), (1500.0, 15)])
    assert (iv.amount, iv.m3, iv.tce) == (pytest.approx(1.5), pytest.approx(1.5), None)
    p = iv.to_point(SITE)
    assert p.measurement == "meter_interval"
    assert p.tags == {"enterprise": "e1", "region": "330602", "industry": "17", "meter": "w1",
                      "carrier": "water_intake"}
    assert p.fields == {"amount": 1500.0, "m3": pytest.approx(1.5), "coverage": 1.0}  # amount: native (L)
    assert (p.ts_ns, p.priority) == (D0, Priority.ROLLUP)


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(ValidationError, match="density_kg_per_l"):
        MeterConfig(id="d", carrier="diesel", unit="L")
    with pytest.raises(ValidationError, match="not a unit of natural_gas"):
        MeterConfig(id="g", carrier="natural_gas", unit="kg")
    with pytest.raises(ValidationError, match="power meter reads W, kW or MW"):
        MeterConfig(id="p", carrier="electricity", kind="power", unit="kWh")
    with pytest.raises(ValidationError, match="kind = \"counter\" only"):
        MeterConfig(id="p", carrier="electricity", kind="interval", rollover=1e6)
    with pytest.raises(ValidationError, match="not one of"):
        MeterConfig(id="p", carrier="uranium")


def test_plant_sections_cross_checks() -> None:
    main = {"id": "main", "carrier": "electricity", "enterprise_total": False}
    tenant = {"id": "tenant", "carrier": "electricity", "enterprise_total": False}
    own = {"id": "own", "carrier": "electricity", "add": ["main"], "subtract": ["tenant"]}
    PlantSections.model_validate({"meter": [main, tenant], "virtual_meter": [own]})
    with pytest.raises(ValidationError, match="would count twice"):
        PlantSections.model_validate({"meter": [{**main, "enterprise_total": True}, tenant], "virtual_meter": [own]})
    with pytest.raises(ValidationError, match="not a \\[\\[meter\\]\\]"):
        PlantSections.model_validate({"meter": [main], "virtual_meter": [own]})
    with pytest.raises(ValidationError, match="one carrier"):
        PlantSections.model_validate({"meter": [main, {**tenant, "carrier": "natural_gas"}], "virtual_meter": [own]})
    with pytest.raises(ValidationError, match="same readings"):
        PlantSections.model_validate({"meter": [main, {**tenant, "source": "main"}]})


# --- virtual meters ---------------------------------------------------------------------------------------


def part(meter_id: str, start_min: int, amount: float, covered_min: int = 15) -> MeterInterval:
    return MeterInterval(meter_id, "electricity", D0 + start_min * MIN, D0 + (start_min + 15) * MIN, amount, amount,
                         None, None, covered_min * MIN)


def test_virtual_meter_main_minus_tenant() -> None:
    vm = VirtualMeter(VirtualMeterConfig(id="own", carrier="electricity", add=["main"], subtract=["tenant"]))
    assert vm.add(part("main", 0, 100.0)) == []
    [iv] = vm.add(part("tenant", 0, 30.0, covered_min=10))
    # 100 - 30 = 70 kWh; coverage is the least of the parts' (10 of 15 min)
    assert (iv.meter, iv.amount, iv.covered_ns, iv.clamped) == ("own", 70.0, 10 * MIN, False)
    assert iv.tce == pytest.approx(70 * 0.1229 / 1000)


def test_virtual_meter_never_negative() -> None:
    vm = VirtualMeter(VirtualMeterConfig(id="own", carrier="electricity", add=["main"], subtract=["tenant"]))
    vm.add(part("main", 0, 100.0))
    [iv] = vm.add(part("tenant", 0, 120.0))
    assert (iv.amount, iv.covered_ns, iv.clamped) == (0.0, 0, True)
    assert vm.counts["clamped"] == 1
    vm.add(part("main", 15, 0.1 + 0.2))
    [iv] = vm.add(part("tenant", 15, 0.30000000000000004 + 1e-17))  # rounding, not a contradiction
    assert (iv.amount, iv.clamped, iv.complete) == (0.0, False, True)


def test_a_gap_in_the_main_meter_defers_what_the_tenant_used_meanwhile() -> None:
    # main did not measure 15-45 (a gap: its consumption comes, lumped, with its next reading), the
    # tenant used 2.5 kWh in each: own is 0 there, and those 5 kWh are subtracted from what follows —
    # they were dropped (own 47.5 where main − tenant is 50 − 7.5)
    vm = VirtualMeter(VirtualMeterConfig(id="own", carrier="electricity", add=["main"], subtract=["tenant"]))
    out = []
    for start, main, covered in ((15, 0.0, 0), (30, 0.0, 0), (45, 50.0, 15)):
        out += vm.add(part("main", start, main, covered_min=covered))
        out += vm.add(part("tenant", start, 2.5))
    assert [iv.amount for iv in out] == [0.0, 0.0, 42.5]
    assert (vm.counts["deferred"], vm.counts["clamped"]) == (2, 0)


def test_virtual_meter_with_a_missing_part_is_incomplete_after_max_wait() -> None:
    vm = VirtualMeter(VirtualMeterConfig(id="own", carrier="electricity", add=["main"], subtract=["tenant"],
                                         max_wait_s=3600))
    vm.add(part("main", 0, 100.0))
    assert vm.advance(D0 + 15 * MIN + H - 1) == []
    [iv] = vm.advance(D0 + 15 * MIN + H)
    assert (iv.amount, iv.coverage) == (100.0, 0.0)
    assert vm.add(part("tenant", 0, 30.0)) == []  # too late: already emitted
    assert vm.counts["late_parts"] == 1


def test_virtual_meter_snapshot() -> None:
    cfg = VirtualMeterConfig(id="own", carrier="electricity", add=["a", "b"])
    vm = VirtualMeter(cfg)
    vm.add(part("a", 0, 1.0))
    vm2 = VirtualMeter(cfg)
    vm2.restore(json.loads(json.dumps(vm.snapshot())))
    [iv] = vm2.add(part("b", 0, 2.0))
    assert iv.amount == 3.0


# --- properties -------------------------------------------------------------------------------------------


def check_intervals(out: list[MeterInterval], contiguous: bool = True) -> None:
    for iv in out:
        assert iv.amount >= 0 and iv.amount_native >= 0
        assert iv.start_ns % IV == 0 and iv.end_ns - iv.start_ns == IV
        assert 0 <= iv.covered_ns <= IV
        assert 0.0 <= iv.coverage <= 1.0
    for a, b in pairwise(out):
        if contiguous:
            assert b.start_ns == a.end_ns  # intervals partition time: no overlap, no hole
        else:
            assert b.start_ns >= a.end_ns


R = 100_000  # register range
RATE = 3600.0  # at most 1 kWh per second


@st.composite
def counter_story(draw):
    """A true consumption story and the readings a counter shows for it, with resets and rollovers."""
    register = draw(st.one_of(st.integers(0, R - 1), st.integers(R - 20_000, R - 1)))
    t = draw(st.integers(0, 10**6)) * S
    readings = [(float(register), 0, t)]  # (value, quality, ts)
    truth = 0
    for _ in range(draw(st.integers(1, 40))):
        dt = draw(st.one_of(st.integers(1, 1800), st.integers(1800, 20_000)))
        # within RATE, and less than a tenth of the range: a bigger wrap cannot be told from a reset
        inc = draw(st.integers(0, min(dt, R // 10 - 1)))
        event = draw(st.sampled_from(["none"] * 6 + ["reset", "dup", "stale", "bad"]))
        reset = event == "reset" and inc < register <= 0.9 * R - 1
        # a reset sets it to 0 right after the last reading, then it counts up by inc; else it rolls over past R
        register = inc if reset else (register + inc) % R
        truth += inc
        t += dt * S
        readings.append((float(register), 0, t))
        if event == "dup":
            readings.append((float(register), 0, t))
        elif event == "stale" and len(readings) > 2:
            readings.append(readings[-3])
        elif event == "bad":
            readings.append((draw(st.floats(0, 1e9)), 0x80000000, t + S))
    return readings, truth


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counter_story())
def test_property_resets_and_rollovers_never_double_count(story) -> None:
    readings, truth = story
    acc = MeterAccumulator(meter(rollover=R, max_rate_per_h=RATE, max_gap_s=1800))
    out = []
    for value, quality, ts in readings:
        out += acc.observe(value, quality, ts)
    out += acc.advance(max(ts for _, _, ts in readings) + 2 * H)
    check_intervals(out)
    assert math.fsum(iv.amount for iv in out) == pytest.approx(truth, rel=1e-9, abs=1e-6)
    assert acc.counts["implausible"] == 0 and acc.counts["reset_uncounted"] == 0


garbage = st.lists(
    st.tuples(
        st.one_of(st.floats(-10, 1e6), st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 10**7)),
        st.sampled_from([0, 0, 0, 1]),
        st.one_of(st.integers(-2 * H, 0), st.integers(0, 30 * MIN), st.integers(0, 3 * 24 * H)),
        st.booleans(),  # also advance the clock to this time
    ),
    max_size=50,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage, st.sampled_from(["counter", "interval", "power"]))
def test_property_consumption_never_negative_whatever_arrives(ops, kind) -> None:
    cfg = meter(kind=kind, max_gap_s=1800, max_rate_per_h=5000.0, **({"rollover": 1e6} if kind == "counter" else {}))
    acc = MeterAccumulator(cfg, max_catch_up_days=2)
    out, now = [], D0
    for value, quality, dt, tick in ops:
        ts = now + dt
        out += acc.observe(value, quality, ts)
        now = max(now, ts)
        if tick:
            out += acc.advance(now)
    out += acc.advance(now + 3 * 24 * H)
    check_intervals(out, contiguous=acc.counts["skipped_intervals"] == 0)


@settings(max_examples=250, deadline=None)
@given(st.floats(0, 5000), st.lists(st.integers(1, 1800), min_size=1, max_size=60), st.integers(0, 10**6))
def test_property_constant_power_integrates_to_p_times_t(p, gaps, offset_s) -> None:
    acc = MeterAccumulator(meter(kind="power", max_gap_s=1800))
    t0 = D0 + offset_s * S
    t, out = t0, acc.observe(p, 0, t0)
    for g in gaps:
        t += g * S
        out += acc.observe(p, 0, t)
    out += acc.advance(t + 2 * H)
    check_intervals(out)
    hours = (t - t0) / H
    assert math.fsum(iv.amount for iv in out) == pytest.approx(p * hours, rel=1e-9, abs=1e-9)
    for iv in out:  # an interval wholly inside the sampled time holds exactly P × 15 min
        if t0 <= iv.start_ns and iv.end_ns <= t:
            assert iv.complete and iv.amount == pytest.approx(p / 4, rel=1e-9, abs=1e-9)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage, st.data())
def test_property_snapshot_restore_equals_an_uninterrupted_run(ops, data) -> None:
    cfg = meter(rollover=1e6, max_rate_per_h=5000.0, max_gap_s=1800)
    k = data.draw(st.integers(0, len(ops)))

    def play(acc, ops, now):
        out = []
        for value, quality, dt, tick in ops:
            ts = now + dt
            out += acc.observe(value, quality, ts)
            now = max(now, ts)
            if tick:
                out += acc.advance(now)
        return out, now

    straight = MeterAccumulator(cfg)
    a, now = play(straight, ops, D0)
    a += straight.advance(now + 3 * 24 * H)
    first = MeterAccumulator(cfg)
    b, now = play(first, ops[:k], D0)
    resumed = MeterAccumulator(cfg)
    resumed.restore(json.loads(json.dumps(first.snapshot())))
    more, now = play(resumed, ops[k:], now)
    b += more + resumed.advance(now + 3 * 24 * H)
    assert b == a
    assert resumed.counts == straight.counts


@settings(max_examples=250, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1e4), st.floats(0, 1e4), st.integers(0, IV // S - 1)), min_size=1,
                max_size=20))
def test_property_over_gaps_of_the_main_meter_the_total_is_main_less_tenant(parts) -> None:
    # main never measures a whole interval: nothing is clamped, what cannot be subtracted yet waits
    vm = VirtualMeter(VirtualMeterConfig(id="own", carrier="electricity", add=["main"], subtract=["tenant"]))
    out = []
    for n, (main, tenant, covered_s) in enumerate(parts):
        out += vm.add(MeterInterval("main", "electricity", D0 + 15 * n * MIN, D0 + 15 * (n + 1) * MIN, main, main,
                                    None, None, covered_s * S))
        out += vm.add(part("tenant", 15 * n, tenant))
    assert all(iv.amount >= 0 and not iv.clamped for iv in out)
    main_total, tenant_total = sum(p[0] for p in parts), sum(p[1] for p in parts)
    assert sum(iv.amount for iv in out) + vm.snapshot()["late"] == pytest.approx(main_total - tenant_total, abs=1e-6)
    assert vm.snapshot()["late"] <= 0


@settings(max_examples=250, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1e4), st.floats(0, 1e4), st.integers(0, IV // S)), min_size=1, max_size=20))
def test_property_virtual_difference_never_negative(parts) -> None:
    vm = VirtualMeter(VirtualMeterConfig(id="own", carrier="electricity", add=["main"], subtract=["tenant"]))
    out = []
    for n, (main, tenant, covered_s) in enumerate(parts):
        out += vm.add(part("main", 15 * n, main))
        out += vm.add(MeterInterval("tenant", "electricity", D0 + 15 * n * MIN, D0 + 15 * (n + 1) * MIN, tenant,
                                    tenant, None, None, covered_s * S))
    assert len(out) == len(parts)
    for iv, (main, tenant, covered_s) in zip(out, parts, strict=True):
        assert iv.amount >= 0
        if main - tenant >= 1e-9 * (main + tenant):
            assert iv.amount == pytest.approx(main - tenant) and iv.covered_ns == covered_s * S
        elif iv.clamped:
            assert iv.covered_ns == 0


# --- issue 10, defect 8: one bad reading below the register is a glitch, not a reset ------------------


def test_a_single_zero_reading_is_a_glitch_not_a_reset() -> None:
    """No max_rate_per_h: 123456, 123457, 0, 123459 is 3 kWh (it was 123 460: the 0 re-based the counter
    and the return booked the whole register)."""
    acc = MeterAccumulator(meter())
    out = feed(acc, [(123_456.0, 0), (123_457.0, 5), (0.0, 10), (123_459.0, 15)], advance_to=D0 + 2 * H)
    check_intervals(out)
    assert math.fsum(iv.amount for iv in out) == pytest.approx(3.0)
    assert by_start(out)[0].complete  # 00:00-00:15 measured throughout: the glitch takes no time away
    assert acc.counts["glitch"] == 1
    assert acc.counts["reset_uncounted"] == acc.counts["reset_counted"] == acc.counts["rollover"] == 0


@pytest.mark.parametrize("cfg", [{}, {"max_rate_per_h": 100.0}, {"rollover": 1_000_000}, {"max_jitter": 0.5}])
def test_any_single_low_reading_followed_by_a_return_is_a_glitch(cfg) -> None:
    acc = MeterAccumulator(meter(**cfg))
    # near the top of a rolling register a drop to 0 looks like a wrap: the return shows it was not
    out = feed(acc, [(950_000.0, 0), (950_001.0, 5), (17.0, 10), (950_003.0, 15), (950_004.0, 20)],
               advance_to=D0 + 2 * H)
    assert math.fsum(iv.amount for iv in out) == pytest.approx(4.0)
    assert acc.counts["glitch"] == 1 and acc.counts["rollover"] == 0


@pytest.mark.parametrize(("cfg", "readings", "expected", "event"), [
    # meter replaced: the new register reads 3 and counts on; with a rate the 3 are counted too
    ({"max_rate_per_h": 100.0}, [(5000.0, 0), (3.0, 15), (8.0, 30)], 8.0, "reset_counted"),
    ({}, [(5000.0, 0), (3.0, 15), (8.0, 30)], 5.0, "reset_uncounted"),  # no rate: the 3 are not invented
    # a configured rollover wraps: 1 000 000 - 999 990 + 10 = 20, then 20 more
    ({"rollover": 1_000_000}, [(999_990.0, 0), (10.0, 5), (30.0, 10)], 40.0, "rollover"),
    ({"rollover": 1_000_000, "max_rate_per_h": 1000.0}, [(999_990.0, 0), (10.0, 5), (30.0, 10)], 40.0, "rollover"),
    # a reset with nothing after it within max_gap_s is taken as real when the clock says so
    ({"max_rate_per_h": 100.0}, [(5000.0, 0), (3.0, 15)], 3.0, "reset_counted"),
])
def test_genuine_resets_and_rollovers_still_count(cfg, readings, expected, event) -> None:
    acc = MeterAccumulator(meter(**cfg))
    out = feed(acc, readings, advance_to=D0 + 3 * H)
    check_intervals(out)
    assert math.fsum(iv.amount for iv in out) == pytest.approx(expected)
    assert acc.counts[event] == 1 and acc.counts["glitch"] == 0


@pytest.mark.parametrize("cfg", [{}, {"max_rate_per_h": 1000.0}])
def test_a_zero_reading_before_a_long_silence_is_still_found_out_by_the_return(cfg) -> None:
    """A 0, then 3 h without readings (the gateway failed). Without a rate the drop waits for the next
    reading; with one it is taken as a reset after max_gap_s (booking at most the rate: here 0). Either
    way the return after the silence shows it was a glitch, and the register is not booked."""
    acc = MeterAccumulator(meter(**cfg))
    out = feed(acc, [(123_456.0, 0), (0.0, 5)], advance_to=D0 + 2 * H)
    out += feed(acc, [(123_466.0, 180), (123_467.0, 185)], advance_to=D0 + 6 * H)
    check_intervals(out)
    assert math.fsum(iv.amount for iv in out) == pytest.approx(11.0)
    assert acc.counts["glitch"] == 1
    assert acc.counts["reset_counted"] == (1 if cfg else 0)  # with the rate it was a reset until the return


@pytest.mark.parametrize("cfg", [{}, {"max_rate_per_h": 500.0}])
def test_a_flickering_last_digit_counts_nothing_with_or_without_a_rate(cfg) -> None:
    # a still register reading 1000.0 and 999.9 by turns (max_jitter left at 0): with a rate, each dip
    # and return was a reset (the return within the rate) and counted its 0.1 kWh: 4.8 kWh a day of
    # nothing, its intervals half uncovered. A register reset to 0 could not read 999.9 after 15 min
    # at 500 kWh/h: the dip is the old register's, a glitch
    acc = MeterAccumulator(meter(**cfg))
    out = feed(acc, [(1000.0 if n % 2 == 0 else 999.9, 15 * n) for n in range(97)], advance_to=D0 + 27 * H)
    assert math.fsum(iv.amount for iv in out) == pytest.approx(0.0)
    assert acc.counts["glitch"] == 48 and acc.counts["reset_uncounted"] == acc.counts["reset_counted"] == 0


def test_a_decrease_taken_as_real_in_an_older_snapshot_is_still_decided_by_the_return() -> None:
    cfg = meter(max_rate_per_h=1000.0)
    acc = MeterAccumulator(cfg)
    feed(acc, [(123_456.0, 0), (0.0, 5)], advance_to=D0 + 2 * H)  # the 0 taken as a reset after max_gap_s
    snapshot = acc.snapshot()
    assert snapshot["before_drop"] is not None and len(snapshot["before_drop"]) == 3
    snapshot["before_drop"] = snapshot["before_drop"][:2]  # an agent from before the level's time was kept
    resumed = MeterAccumulator(cfg)
    resumed.restore(json.loads(json.dumps(snapshot)))
    feed(resumed, [(123_466.0, 180)], advance_to=D0 + 6 * H)
    assert resumed.counts["glitch"] == 1


def test_a_glitch_is_an_event_the_plant_model_exports() -> None:
    sections = PlantSections.model_validate({"meter": [{"id": "main", "carrier": "electricity"}]})
    plant = PlantModel(SITE, sections, [], start_ns=D0)
    tags = {"enterprise": "e1", "meter": "main", "carrier": "electricity"}
    out = []
    for value, minutes in [(123_456.0, 0), (123_457.0, 5), (0.0, 10), (123_459.0, 15)]:
        ts = D0 + minutes * MIN
        out += plant.observe([Point("meter_reading", tags, {"value": value, "quality": 0}, ts)], ts)
    out += plant.advance(D0 + 26 * H)
    assert plant.event_counts()[("meter", "glitch")] == 1  # fmc_plant_events{part="meter",kind="glitch"}
    [day] = [p for p in out if p.measurement == "consumption_daily"]
    assert day.fields["amount"] == pytest.approx(3.0)


@st.composite
def readings_with_zero_glitches(draw, low: bool = False):
    """Monotone readings (a register that only counts up) with single-reading glitches between them:
    a 0 (or, with ``low``, any value below the register) in place of one reading."""
    value = draw(st.floats(0, 900_000))
    t = D0 + draw(st.integers(0, 10**6)) * S
    true = [(value, t)]
    out = [(value, t)]
    for _ in range(draw(st.integers(1, 30))):
        dt = draw(st.one_of(st.integers(2, 1800), st.integers(1800, 20_000)))
        if draw(st.integers(0, 3)) == 0 and value > 0:  # a glitch between this reading and the next
            bad = draw(st.floats(0, value, exclude_max=True)) if low else 0.0
            out.append((bad, t + dt // 2 * S))
        value = min(value + draw(st.floats(0, dt / 3.6)), 999_999.0)  # up to 1 kWh/s... / 1000
        t += dt * S
        true.append((value, t))
        out.append((value, t))
    if draw(st.booleans()) and value > 0:
        out.append((0.0, t + 60 * S))  # the very last reading is a glitch: it is never believed
    return out, true[-1][0] - true[0][0]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings_with_zero_glitches(), st.sampled_from([{}, {"rollover": 1_000_000}, {"max_jitter": 0.01}]))
def test_property_single_zero_glitches_never_change_the_total(story, cfg) -> None:
    readings, truth = story
    acc = MeterAccumulator(meter(**cfg))
    out = []
    for value, ts in readings:
        out += acc.observe(value, 0, ts)
    out += acc.advance(max(ts for _, ts in readings) + 6 * H)
    check_intervals(out)
    assert math.fsum(iv.amount for iv in out) == pytest.approx(truth, rel=1e-9, abs=1e-6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings_with_zero_glitches(low=True), st.sampled_from([{}, {"rollover": 1_000_000}]))
def test_property_single_low_glitches_never_change_the_total(story, cfg) -> None:
    readings, truth = story
    acc = MeterAccumulator(meter(**cfg))
    out = []
    for value, ts in readings:
        out += acc.observe(value, 0, ts)
    out += acc.advance(max(ts for _, ts in readings) + 6 * H)
    assert math.fsum(iv.amount for iv in out) == pytest.approx(truth, rel=1e-9, abs=1e-6)


# --- issue 10, defect 9: a virtual meter never drops a slow part's consumption ----------------------------


def test_a_part_read_every_2_hours_reaches_the_virtual_meter() -> None:
    """own = main − tenant over 12 h. main is read every 2 h (max_gap_s 10800): 100 kWh/h; the tenant's
    sub-meter every 15 min: 10 kWh/h. own must be 12 × 90 = 1 080 kWh (it was 675: with the old default
    max_wait_s of 3600 the virtual meter gave up on main's intervals before they came, and dropped them)."""
    sections = PlantSections.model_validate({
        "meter": [{"id": "main", "carrier": "electricity", "max_gap_s": 10800, "enterprise_total": False},
                  {"id": "tenant", "carrier": "electricity", "enterprise_total": False}],
        "virtual_meter": [{"id": "own", "carrier": "electricity", "add": ["main"], "subtract": ["tenant"]}],
    })
    plant = PlantModel(SITE, sections, [], start_ns=D0)
    out = []
    for minute in range(0, 12 * 60 + 1):  # the ingest lets time pass each minute (here: each second)
        now = D0 + minute * MIN
        readings = []
        if minute % 120 == 0:
            readings.append(("main", 50_000 + 100 * minute / 60))
        if minute % 15 == 0:
            readings.append(("tenant", 700 + 10 * minute / 60))
        points = [Point("meter_reading", {"enterprise": "e1", "meter": m, "carrier": "electricity"},
                        {"value": v, "quality": 0}, now) for m, v in readings]
        out += plant.observe(points, now)
        out += plant.advance(now)
    out += plant.advance(D0 + 30 * H)

    def total(meter_id: str) -> float:
        return math.fsum(p.fields["amount"] for p in out if p.measurement == "meter_interval"
                         and p.tags["meter"] == meter_id)

    assert (total("main"), total("tenant")) == (pytest.approx(1200.0), pytest.approx(120.0))
    assert total("own") == pytest.approx(1080.0)
    [day] = [p for p in out if p.measurement == "consumption_daily"]
    assert day.fields["amount"] == pytest.approx(1080.0) and day.fields["coverage"] == pytest.approx(0.5)
    assert plant.event_counts()[("virtual_meter", "late_parts")] == 0


def test_a_late_part_is_counted_and_its_consumption_still_arrives() -> None:
    """When a part's interval comes after the virtual interval was emitted without it, it is counted
    (late_parts) and its consumption goes, uncovered, into the next interval emitted: never dropped."""
    vm = VirtualMeter(VirtualMeterConfig(id="own", carrier="electricity", add=["main", "hall"], subtract=["tenant"],
                                         max_wait_s=3600))
    out = vm.add(part("main", 0, 100.0)) + vm.add(part("tenant", 0, 30.0))
    out += vm.advance(D0 + 15 * MIN + H)  # emitted without hall: 70, incomplete
    out += vm.add(part("hall", 0, 50.0))  # too late for [00:00, 00:15)
    assert vm.counts["late_parts"] == 1
    out += vm.add(part("main", 15, 100.0)) + vm.add(part("tenant", 15, 30.0)) + vm.add(part("hall", 15, 50.0))
    first, second = out
    assert (first.amount, first.coverage) == (70.0, 0.0)
    assert second.amount == pytest.approx(120.0 + 50.0) and second.lump == pytest.approx(50.0)
    assert second.complete  # its own parts all came; the late 50 kWh are the lump
    assert math.fsum(iv.amount for iv in out) == pytest.approx(2 * (100.0 + 50.0 - 30.0))
    # a late subtracted part lowers what comes next (never below 0), so nothing is counted twice
    vm = VirtualMeter(VirtualMeterConfig(id="own", carrier="electricity", add=["main"], subtract=["tenant"]))
    out = vm.add(part("main", 0, 100.0)) + vm.advance(D0 + 15 * MIN + H)
    out += vm.add(part("tenant", 0, 30.0))
    for n in (1, 2):
        out += vm.add(part("main", 15 * n, 20.0)) + vm.add(part("tenant", 15 * n, 0.0))
    assert [iv.amount for iv in out] == [100.0, 0.0, 10.0]
    assert math.fsum(iv.amount for iv in out) == pytest.approx(140.0 - 30.0)
    vm2 = VirtualMeter(vm.config)
    vm2.restore(json.loads(json.dumps(vm.snapshot())))
    assert vm2.snapshot() == vm.snapshot()
