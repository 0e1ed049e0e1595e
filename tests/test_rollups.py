"""Daily enterprise rollups: golden days computed by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from fmc.core.localtime import local_day_bounds, zone
from fmc.core.points import Priority
from fmc.plant.config import EquipmentClassConfig, MeterConfig, PlantSections, check_interval_alignment
from fmc.plant.meters import MeterAccumulator
from fmc.plant.rollups import (
    InventoryItem,
    Site,
    consumption_daily,
    counted_meters,
    enterprise_daily,
    enterprise_daily_unobserved,
)
from fmc.plant.states import EquipmentDay, EquipmentTracker

S = 10**9
MIN = 60 * S
H = 3600 * S
DAY = 24 * H
SITE = Site("e1", "330602", "17", "Asia/Shanghai")
MAY1 = date(2024, 5, 1)
D0 = int(datetime(2024, 4, 30, 16, tzinfo=UTC).timestamp()) * S  # 2024-05-01 00:00 +08:00
CLS = EquipmentClassConfig.model_validate(
    {"name": "m", "rules": [{"type": "threshold", "signal": "kw", "on_above": 1, "off_state": "idle"}]}
)

INVENTORY = [
    InventoryItem("cnc-1", nc=True, asset_value=800_000.0, kind="cnc"),
    InventoryItem("cnc-2", nc=True, asset_value=600_000.0, kind="cnc"),
    InventoryItem("cnc-3", nc=True, asset_value=700_000.0, kind="cnc"),  # never connected
    InventoryItem("loom-1", nc=False, asset_value=None, kind="loom"),  # asset value unknown
    InventoryItem("loom-2", nc=False, asset_value=100_000.0, commissioned=MAY1, kind="loom"),
    InventoryItem("old-1", nc=True, asset_value=50_000.0, decommissioned=MAY1, kind="cnc"),
    InventoryItem("forklift", nc=False, asset_value=90_000.0, in_scope=False, kind="vehicle"),
]


def day_records(equipment: str, samples_at: list[int], start: int = D0, until: int = D0 + 2 * DAY):
    """The equipment_daily records a tracker makes for samples (kW = 5) at these times."""
    t = EquipmentTracker(equipment, CLS, start_ns=start, site=SITE,
                         inventory=next((i for i in INVENTORY if i.id == equipment), None))
    events = []
    for ts in samples_at:
        events += t.observe("kw", 5.0, 0, ts)
    events += t.advance(until)
    return [e for e in events if isinstance(e, EquipmentDay)]


@pytest.fixture(scope="module")
def equipment_days() -> list[EquipmentDay]:
    every_5_min = [D0 + 8 * H + k * 5 * MIN for k in range(96)]  # 08:00-15:55
    days = []
    days += day_records("cnc-1", every_5_min)
    days += day_records("cnc-2", [D0 + DAY - 30 * S])  # one sample at 23:59:30: 30 s online on May 1
    days += day_records("loom-1", every_5_min)
    # commissioned on May 1, the agent started tracking it at 14:00
    days += day_records("loom-2", [D0 + 14 * H + k * MIN for k in range(3)], start=D0 + 14 * H)
    days += day_records("old-1", every_5_min)  # decommissioned: no longer in the population
    days += day_records("forklift", every_5_min)  # not production equipment
    days += day_records("mystery", every_5_min)  # not in the inventory
    return days


def test_enterprise_daily_golden_day(equipment_days) -> None:
    p = enterprise_daily(MAY1, SITE, INVENTORY, equipment_days)
    assert p.measurement == "enterprise_daily"
    assert p.tags == {"enterprise": "e1", "region": "330602", "industry": "17"}
    assert p.ts_ns == D0 and p.priority == Priority.ROLLUP
    # in scope on May 1: cnc-1, cnc-2, cnc-3, loom-1, loom-2 (commissioned that day) = 5, of which 3 NC.
    # networked: cnc-1 and loom-1 (8 h online), loom-2 (14:00-14:12 online);
    # not: cnc-2 (30 s < 1 min), cnc-3 (never connected)
    assert p.fields == {
        "equipment_total": 5,
        "equipment_nc": 3,
        "asset_value_total": 800_000.0 + 600_000.0 + 700_000.0 + 0.0 + 100_000.0,
        "asset_value_nc": 800_000.0 + 600_000.0 + 700_000.0,
        "equipment_networked": 3,
        "nc_equipment_networked": 1,
        "equipment_valued": 4,  # loom-1's 原值 is blank: the asset-value sums cover 4 of the 5
    }


def test_the_day_after_a_late_sample_is_not_networked(equipment_days) -> None:
    # cnc-2 stays online 9.5 min into May 2 (the hold after its 23:59:30 sample) but sent nothing that day
    [may2] = [d for d in equipment_days if d.equipment == "cnc-2" and d.day == date(2024, 5, 2)]
    assert may2.online_s == 570.0 and may2.good_samples == 0
    p = enterprise_daily(date(2024, 5, 2), SITE, INVENTORY, equipment_days)
    assert p.fields["nc_equipment_networked"] == 0
    assert p.fields["equipment_networked"] == 0
    assert p.ts_ns == D0 + DAY


def test_population_the_day_before_commissioning() -> None:
    # April 30: loom-2 is not commissioned yet, old-1 is still in service (decommissioned May 1)
    p = enterprise_daily(date(2024, 4, 30), SITE, INVENTORY, [])
    assert p.fields == {
        "equipment_total": 5,  # cnc-1, cnc-2, cnc-3, loom-1, old-1
        "equipment_nc": 4,
        "asset_value_total": 800_000.0 + 600_000.0 + 700_000.0 + 50_000.0,
        "asset_value_nc": 800_000.0 + 600_000.0 + 700_000.0 + 50_000.0,
        "equipment_networked": 0,
        "nc_equipment_networked": 0,
        "equipment_valued": 4,  # loom-1 has no 原值
    }
    assert p.ts_ns == D0 - DAY


def test_a_day_without_data_has_the_ledgers_counts_and_no_networked_counts() -> None:
    """A day the agent was off for longer than max_catch_up_days: the ledger's counts are known, the
    networked counts are not (absent, never 0)."""
    p = enterprise_daily_unobserved(MAY1, SITE, INVENTORY)
    assert p.fields == {
        "equipment_total": 5,
        "equipment_nc": 3,
        "asset_value_total": 800_000.0 + 600_000.0 + 700_000.0 + 0.0 + 100_000.0,
        "asset_value_nc": 800_000.0 + 600_000.0 + 700_000.0,
        "equipment_valued": 4,
    }
    assert (p.tags, p.ts_ns, p.priority) == ({"enterprise": "e1", "region": "330602", "industry": "17"}, D0,
                                             Priority.ROLLUP)


def test_a_stop_longer_than_the_catch_up_writes_ledger_days_a_short_one_offline_days() -> None:
    """The plant model across a restart from an old snapshot: beyond max_catch_up_days (3 here) the
    trackers skip the days between, and each of them gets the ledger's counts alone; within it, each
    day is an offline day (networked 0), as before. One row per day, whatever the number of machines."""
    from fmc.core.points import Point
    from fmc.plant.model import MAX_UNOBSERVED_DAYS, PlantModel

    sections = PlantSections.model_validate({"plant": {"sample_delay_s": 0, "max_catch_up_days": 3}})
    inventory = [InventoryItem("m1", True), InventoryItem("m2", False, commissioned=date(2024, 5, 6))]

    def restart_after(days: int) -> dict[date, dict[str, object]]:
        model = PlantModel(SITE, sections, inventory, start_ns=D0)
        sample = Point("signal", {"enterprise": "e1", "equipment": "m1", "signal": "kw"}, {"value": 5.0, "quality": 0},
                       D0 + H)
        model.observe([sample], D0 + H)
        model.advance(D0 + 2 * H)
        back = D0 + days * DAY + H
        again = PlantModel(SITE, sections, inventory, start_ns=back)
        again.restore(model.snapshot())
        out = again.observe([Point("signal", sample.tags, sample.fields, back)], back)
        out += again.advance(back + DAY)
        return {datetime.fromtimestamp((p.ts_ns + 8 * H) // S, UTC).date(): p.fields
                for p in out if p.measurement == "enterprise_daily"}

    far = restart_after(10)  # back on May 11
    assert sorted(far) == [date(2024, 5, d) for d in range(1, 12)]
    assert far[MAY1]["nc_equipment_networked"] == 1  # m1 sent data that morning
    for d in range(2, 11):
        fields = far[date(2024, 5, d)]
        assert "nc_equipment_networked" not in fields and "equipment_networked" not in fields, d
        assert (fields["equipment_total"], fields["equipment_nc"]) == ((1, 1) if d < 6 else (2, 1)), d
    assert far[date(2024, 5, 11)]["nc_equipment_networked"] == 1
    near = restart_after(3)  # back on May 4: May 2 and 3 caught up as offline days
    assert sorted(near) == [date(2024, 5, d) for d in range(1, 5)]
    assert (near[date(2024, 5, 2)]["equipment_networked"], near[date(2024, 5, 3)]["nc_equipment_networked"]) == (0, 0)
    # a clock stepping years ahead writes at most a year of them, the latest
    years = restart_after(1000)
    ledger_only = sorted(d for d, fields in years.items() if "equipment_networked" not in fields)
    assert len(ledger_only) == MAX_UNOBSERVED_DAYS == 366
    assert ledger_only[-1] == date(2024, 5, 1) + timedelta(days=999)


def test_networked_threshold_is_a_setting(equipment_days) -> None:
    # loom-2 was online 14:00-14:12 (last sample 14:02 + 10 min): 12 min
    p = enterprise_daily(MAY1, SITE, INVENTORY, equipment_days, networked_min_online_minutes=15)
    assert p.fields["equipment_networked"] == 2


def readings_every_15_min(skip: range = range(0)) -> list[tuple[float, int]]:
    """(value, ts) of a counter going up 10 per 15 min over May 1, 00:00 to 24:00, minus some slots."""
    return [(1000.0 + 10 * k, D0 + k * 15 * MIN) for k in range(97) if k not in skip]


def intervals_of(cfg: MeterConfig, readings) -> list:
    acc = MeterAccumulator(cfg)
    out = []
    for value, ts in readings:
        out += acc.observe(value, 0, ts)
    return out


def test_consumption_daily_with_a_gap() -> None:
    main = MeterConfig(id="main", carrier="electricity", max_gap_s=1800)
    # no readings from 10:15 to 11:45 (slots 41-47): 10:00 -> 12:00 is a 2 h gap, longer than 30 min
    elec = intervals_of(main, readings_every_15_min(skip=range(41, 48)))
    tenant = MeterConfig(id="tenant", carrier="electricity", enterprise_total=False)
    sub = intervals_of(tenant, readings_every_15_min())
    water = MeterConfig(id="w", carrier="water_intake")
    wat = intervals_of(water, [(v / 20, ts) for v, ts in readings_every_15_min()])  # 0.5 m³ per 15 min
    meters = {"main": "electricity", "w": "water_intake", "gas": "natural_gas"}  # the gas meter sent nothing
    points = consumption_daily(MAY1, SITE, elec + sub + wat, meters)
    by_carrier = {p.tags["carrier"]: p for p in points}
    assert sorted(by_carrier) == ["electricity", "natural_gas", "water_intake"]
    e = by_carrier["electricity"]
    assert e.tags == {"enterprise": "e1", "region": "330602", "industry": "17", "carrier": "electricity"}
    assert (e.ts_ns, e.priority) == (D0, Priority.ROLLUP)
    # 96 × 10 kWh = 960 kWh: the 80 kWh of 10:00-12:00 are real and counted, in the 11:45 interval, uncovered.
    # 960 × 0.1229 = 117.984 kgce = 0.117984 tce. Uncovered: 10:00-12:00 = 8 of 96 intervals.
    assert e.fields == {"amount": pytest.approx(960.0), "tce": pytest.approx(0.117984),
                        "coverage": pytest.approx(88 / 96)}
    w = by_carrier["water_intake"]
    assert w.fields == {"amount": pytest.approx(48.0), "m3": pytest.approx(48.0), "coverage": 1.0}
    g = by_carrier["natural_gas"]
    assert g.fields == {"amount": 0.0, "tce": 0.0, "coverage": 0.0}


def test_consumption_daily_counts_a_redelivered_interval_once() -> None:
    main = MeterConfig(id="main", carrier="electricity")
    ivs = intervals_of(main, readings_every_15_min())
    [p] = consumption_daily(MAY1, SITE, ivs + ivs[:10], {"main": "electricity"})
    assert p.fields["amount"] == pytest.approx(960.0) and p.fields["coverage"] == 1.0


def test_counted_meters() -> None:
    sections = PlantSections.model_validate({
        "meter": [{"id": "main", "carrier": "electricity", "enterprise_total": False},
                  {"id": "tenant", "carrier": "electricity", "enterprise_total": False},
                  {"id": "w", "carrier": "water_intake"}],
        "virtual_meter": [{"id": "own", "carrier": "electricity", "add": ["main"], "subtract": ["tenant"]}],
    })
    assert counted_meters(sections) == {"w": "water_intake", "own": "electricity"}


def test_local_days_and_alignment() -> None:
    start, end = local_day_bounds(MAY1, zone("Asia/Shanghai"))
    assert (start, end) == (D0, D0 + DAY)
    # a DST day in Berlin (2024-03-31) is 23 h long
    s, e = local_day_bounds(date(2024, 3, 31), zone("Europe/Berlin"))
    assert e - s == 23 * H
    check_interval_alignment(15, "Asia/Shanghai")
    check_interval_alignment(60, "Asia/Shanghai")
    check_interval_alignment(30, "Asia/Kolkata")
    with pytest.raises(ValueError, match="does not align with local midnight in Asia/Kolkata"):
        check_interval_alignment(60, "Asia/Kolkata")


def test_inventory_scope_dates() -> None:
    item = InventoryItem("x", nc=True, commissioned=date(2024, 5, 1), decommissioned=date(2024, 5, 3))
    assert [item.in_scope_on(date(2024, 5, d)) for d in (1, 2, 3)] == [True, True, False]
    assert not item.in_scope_on(date(2024, 4, 30))
