"""The indicator engine and the plan file: golden cases computed by hand, arithmetic written out."""

from __future__ import annotations

import math
import tomllib
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmc.core.config import ConfigError
from fmc.indicators.engine import (
    ConsumptionDay,
    EnterpriseData,
    EnterpriseDay,
    IndicatorResult,
    Period,
    Report,
    compute,
    compute_all,
    pool,
    status_of,
)
from fmc.indicators.plan import INDICATORS, Policy, Targets, load_targets
from fmc.indicators.sums import PeriodSums

ROOT = Path(__file__).resolve().parents[1]
PLAN = load_targets(ROOT / "fmc" / "indicators" / "plans" / "zhejiang-2017-2020.toml")


def with_policy(**kw: object) -> Targets:
    return PLAN.model_copy(update={"policy": PLAN.policy.model_copy(update=kw)})


def days(start: date, end: date) -> list[date]:
    return [start + timedelta(n) for n in range((end - start).days + 1)]


def ent_days(start: date, end: date, total: int, nc: int, nc_net: int | None = None) -> list[EnterpriseDay]:
    net = nc if nc_net is None else nc_net
    return [EnterpriseDay(d, total, nc, equipment_networked=net, nc_equipment_networked=net) for d in days(start, end)]


def coal_year(year: int, tce: float) -> list[ConsumptionDay]:
    """A year of daily coal rows adding up to ``tce``."""
    span = days(date(year, 1, 1), date(year, 12, 31))
    return [ConsumptionDay(d, "coal", tce / len(span) / 0.7143 * 1000, tce / len(span)) for d in span]


def year_report(year: int, **kw: float) -> Report:
    return Report(Period.of_year(year), **kw)


# --- the plan file ------------------------------------------------------------------------------------------


def test_default_plan_has_the_plans_numbers() -> None:
    assert PLAN.plan.id == "zhejiang-2017-2020"
    assert (PLAN.base_year, list(PLAN.years)) == (2016, [2017, 2018, 2019, 2020])
    got = {k: (v.kind, v.step, v.cap) for k, v in PLAN.indicators.items()}
    assert got == {
        "nc_rate": ("points_per_year", 2.0, 100.0),
        "networking_rate": ("points_per_year", 2.0, 100.0),
        "energy_intensity": ("rate_per_year", -0.04, None),
        "water_intensity": ("rate_per_year", -0.05, None),
        "wastewater_intensity": ("rate_per_year", -0.02, None),
        "labour_productivity": ("rate_per_year", 0.07, None),
        "rd_intensity": ("floor", 1.5, None),
        "new_product_ratio": ("floor", 35.0, None),
    }
    assert PLAN.policy.nc_rate_basis == "period_end" and PLAN.policy.min_coverage == 0.95


def test_points_path_is_capped_at_100() -> None:
    assert PLAN.target_for("nc_rate", 2020, 95.0) == 100.0  # 95 + 2·4 = 103 -> 100
    assert PLAN.target_for("nc_rate", 2021, 95.0) is None  # outside the plan
    assert PLAN.target_for("rd_intensity", 2020, None) == 1.5  # a floor needs no baseline
    assert PLAN.target_for("rd_intensity", 2018, None) is None  # the plan sets it for 2020


def test_load_targets_reports_setting_and_fix(tmp_path: Path) -> None:
    bad = tmp_path / "plan.toml"
    bad.write_text(
        'base_year = 2016\nfirst_year = 2017\nlast_year = 2020\n[plan]\nid = "p"\nname = "p"\n'
        '[policy]\nmin_coverage = 1.5\nnc_rate_basis = "year_end"\n'
        '[indicators.energy_intensity]\nkind = "rate_per_year"\nstep = -4\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as e:
        load_targets(bad)
    settings = [p[0] for p in e.value.problems]
    assert "policy.min_coverage" in settings and "policy.nc_rate_basis" in settings
    assert "indicators.energy_intensity" in settings  # −4 is not a fraction
    assert all(fix for _, _, fix in e.value.problems)
    with pytest.raises(ConfigError, match="does not exist"):
        load_targets(tmp_path / "missing.toml")
    (tmp_path / "syntax.toml").write_text("base_year = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_targets(tmp_path / "syntax.toml")


def test_the_networked_minimum_is_set_in_one_place_the_agent(tmp_path: Path) -> None:
    """issue 10, defect 10: `networked_min_online_minutes` in the plan's policy was read by nothing; the
    agent's `[plant] networked_min_online_minutes` is what computes enterprise_daily. The plan has no such
    field, and a plan file that still sets it is told where the setting is."""
    assert "networked_min_online_minutes" not in Policy.model_fields
    builtin = tomllib.loads((ROOT / "fmc" / "indicators" / "plans" / "zhejiang-2017-2020.toml").read_text("utf-8"))
    assert "networked_min_online_minutes" not in builtin["policy"]
    old = tmp_path / "plan.toml"
    old.write_text(
        'base_year = 2016\nfirst_year = 2017\nlast_year = 2020\n[plan]\nid = "p"\nname = "p"\n'
        '[policy]\nnetworked_min_online_minutes = 5.0\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as e:
        load_targets(old)
    [(setting, wrong, fix)] = e.value.problems
    assert setting == "policy.networked_min_online_minutes"
    assert "agent" in wrong and "enterprise_daily" in wrong
    assert "[plant] networked_min_online_minutes" in fix and "agent.toml" in fix
    assert str(old) in e.value.render()


def test_the_agents_networked_minimum_decides_enterprise_daily() -> None:
    """A machine online 10 minutes on a day: networked under the default 1 minute, not under 15."""
    from fmc.core.points import Point
    from fmc.plant.config import PlantSections
    from fmc.plant.model import PlantModel
    from fmc.plant.rollups import InventoryItem, Site

    site = Site("e1", "330602", "17")
    start = 1_714_492_800 * 10**9  # 2024-05-01 00:00 +08:00
    networked = []
    for minimum in (1, 15):
        # sample_delay_s = 0: the clock below steps exactly to the day's end
        sections = PlantSections.model_validate({"plant": {"networked_min_online_minutes": minimum,
                                                            "offline_after_s": 600, "sample_delay_s": 0}})
        plant = PlantModel(site, sections, [InventoryItem("m1", True)], start_ns=start)
        tags = {"enterprise": "e1", "equipment": "m1", "signal": "speed"}
        out = plant.observe([Point("signal", tags, {"value": 1.0, "quality": 0}, start + 3600 * 10**9)],
                            start + 3600 * 10**9)
        out += plant.advance(start + 86_400 * 10**9)
        [daily] = [p for p in out if p.measurement == "enterprise_daily"]
        networked.append(daily.fields["nc_equipment_networked"])
    assert networked == [1, 0]


def test_a_three_week_spring_festival_stop_keeps_the_years_nc_rate_and_shows_in_networking_coverage() -> None:
    """A plant that switches everything off over the Spring Festival, the gateway too: off from 26 January
    to 16 February 2019, 21 days. Restored from its snapshot, the model closes 26 January (offline) and
    jumps over 27 January - 15 February (more than max_catch_up_days = 7): those 20 days get the ledger's
    counts alone. The year-end NC rate (年末数, the ledger's 2 NC of 3) needs no live data and is the
    ledger's; the networking rate's coverage counts only the 345 days with networked counts (0.945 <
    0.95): insufficient_data, the missing days shown. (Before, the 20 days had no row at all, and the NC
    rate was insufficient_data too: 345/365.)"""
    from datetime import UTC, datetime

    from fmc.core.points import Point
    from fmc.plant.config import PlantSections
    from fmc.plant.model import PlantModel
    from fmc.plant.rollups import InventoryItem, Site

    s, h = 10**9, 3600 * 10**9
    site = Site("e1", "330602", "17")
    sections = PlantSections.model_validate({"plant": {"sample_delay_s": 0}})
    inventory = [InventoryItem("loom-1", True), InventoryItem("loom-2", True), InventoryItem("press-1", False)]

    def local_ns(y: int, m: int, d: int) -> int:
        return int(datetime(y, m, d, tzinfo=UTC).timestamp()) * s - 8 * h  # Asia/Shanghai

    def run(model: PlantModel, start: int, end: int, out: list[Point]) -> None:
        """Each machine sends a value every 6 hours, the clock advances in 6-hour steps."""
        t = start
        while t < end:
            out += model.observe([Point("signal", {"enterprise": "e1", "equipment": i.id, "signal": "kw"},
                                        {"value": 1.0, "quality": 0}, t) for i in inventory], t)
            t += 6 * h
            out += model.advance(t)

    out: list[Point] = []
    first = PlantModel(site, sections, inventory, start_ns=local_ns(2019, 1, 1))
    run(first, local_ns(2019, 1, 1), local_ns(2019, 1, 26), out)  # the gateway is switched off on 26 January
    back = local_ns(2019, 2, 16)  # and on again after the festival (5 February)
    second = PlantModel(site, sections, inventory, start_ns=back)
    second.restore(first.snapshot())
    run(second, back, local_ns(2020, 1, 1) + 6 * h, out)

    def optional(value: object) -> int | None:
        return None if value is None else int(value)  # type: ignore[call-overload]

    rows = sorted((EnterpriseDay(datetime.fromtimestamp((p.ts_ns + 8 * h) // s, UTC).date(),
                                 int(p.fields["equipment_total"]), int(p.fields["equipment_nc"]),
                                 equipment_networked=optional(p.fields.get("equipment_networked")),
                                 nc_equipment_networked=optional(p.fields.get("nc_equipment_networked")))
                   for p in out if p.measurement == "enterprise_daily"), key=lambda r: r.day)
    assert [r.day for r in rows] == days(date(2019, 1, 1), date(2019, 12, 31))  # a row for every day
    assert all((r.equipment_total, r.equipment_nc) == (3, 2) for r in rows)
    unobserved = [r.day for r in rows if r.nc_equipment_networked is None]
    assert unobserved == days(date(2019, 1, 27), date(2019, 2, 15))
    assert next(r for r in rows if r.day == date(2019, 1, 26)).nc_equipment_networked == 0  # closed, offline
    data = EnterpriseData("e1", daily=rows, baseline_values={"nc_rate": 60.0})  # the 2016 survey: a status
    year = Period.of_year(2019)
    year_days = (year.start, year.end)
    nc = compute("nc_rate", year, data, PLAN)
    assert (nc.value, nc.coverage, nc.status) == (pytest.approx(200 / 3), 1.0, "met")  # target 60 + 3 · 2
    nc_days = compute("nc_rate", year, data, with_policy(nc_rate_basis="equipment_days"))
    assert (nc_days.value, nc_days.coverage) == (pytest.approx(200 / 3), 1.0)
    networking = compute("networking_rate", year, data, PLAN)
    assert (networking.value, networking.status) == (None, "insufficient_data")
    assert networking.coverage == pytest.approx(345 / 365)
    assert dict(networking.inputs)["enterprise_daily"] == pytest.approx(345 / 365)
    # a stop of 10 days passes the 0.95: its days count as days the NC looms were not networked, as the
    # offline days of a stop within max_catch_up_days do: 2 × 355 of the 2 × 365 NC-equipment-days
    stop = days(date(2019, 1, 27), date(2019, 2, 5))
    ten = [EnterpriseDay(d, 3, 2, equipment_networked=None, nc_equipment_networked=None) if d in stop
           else EnterpriseDay(d, 3, 2, equipment_networked=3, nc_equipment_networked=2) for d in days(*year_days)]
    short = compute("networking_rate", year, EnterpriseData("e1", daily=ten), PLAN)
    assert (short.value, short.coverage) == (pytest.approx(100 * 355 / 365), pytest.approx(355 / 365))


def test_a_period_end_networking_rate_needs_networked_counts_on_its_last_day() -> None:
    """The gateway off from 20 December to the year's end: the last days have the ledger's counts alone.
    The year-end NC rate is theirs; a year-end networking rate has no networked count to be (not 0 %)."""
    off = days(date(2019, 12, 20), date(2019, 12, 31))
    rows = [EnterpriseDay(d, 4, 2, equipment_networked=None, nc_equipment_networked=None) if d in off
            else EnterpriseDay(d, 4, 2, equipment_networked=4, nc_equipment_networked=2)
            for d in days(date(2019, 1, 1), date(2019, 12, 31))]
    data = EnterpriseData("e1", daily=rows)
    year = Period.of_year(2019)
    assert compute("nc_rate", year, data, PLAN).value == pytest.approx(50.0)
    r = compute("networking_rate", year, data, with_policy(networking_basis="period_end"))
    assert (r.value, r.status, dict(r.inputs)["period_end"]) == (None, "insufficient_data", 0.0)
    days_basis = compute("networking_rate", year, data, PLAN)
    assert days_basis.coverage == pytest.approx(353 / 365) and days_basis.value == pytest.approx(100 * 353 / 365)


def test_years_must_follow_the_base_year(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text('base_year = 2020\nfirst_year = 2017\nlast_year = 2020\n[plan]\nid = "p"\nname = "p"\n')
    with pytest.raises(ConfigError, match="base_year"):
        load_targets(f)


# --- golden: baseline 2016 and four plan years --------------------------------------------------------------


def test_nc_rate_baseline_and_four_plan_years() -> None:
    # year-end (period_end) NC equipment of 100: 2016 40, 2017 43, 2018 44, 2019 45, 2020 50
    nc = {2016: 40, 2017: 43, 2018: 44, 2019: 45, 2020: 50}
    rows = [r for y, n in nc.items() for r in ent_days(date(y, 1, 1), date(y, 12, 31), 100, n)]
    data = EnterpriseData("e1", daily=rows)
    expected = {
        # year: (value, target = 40 + 2·(y − 2016), status, yoy in points)
        2016: (40.0, None, "no_target", None),
        2017: (43.0, 42.0, "met", 3.0),
        2018: (44.0, 44.0, "met", 1.0),  # exactly on the path is met
        2019: (45.0, 46.0, "missed", 1.0),
        2020: (50.0, 48.0, "met", 5.0),
    }
    for y, (value, target, status, yoy) in expected.items():
        r = compute("nc_rate", Period.of_year(y), data, PLAN)
        assert r.value == pytest.approx(value)
        assert r.baseline == pytest.approx(40.0)
        assert r.target == (pytest.approx(target) if target is not None else None)
        assert r.status == status, y
        assert r.yoy == (pytest.approx(yoy) if yoy is not None else None)
        assert r.coverage == 1.0
    # average annual change 2016-2020 in points: (50 − 40) / 4 = 2.5
    assert compute("nc_rate", Period.of_year(2020), data, PLAN).avg_annual == pytest.approx(2.5)


def test_energy_intensity_baseline_and_four_plan_years() -> None:
    # energy (tce) and value added (10⁴ yuan, comparable prices reported) per year
    energy = {2016: 1000.0, 2017: 960.0, 2018: 960.0, 2019: 900.0, 2020: 850.0}
    va = {2016: 2000.0, 2017: 2000.0, 2018: 2000.0, 2019: 2100.0, 2020: 2100.0}
    data = EnterpriseData(
        "e1",
        consumption=[r for y, e in energy.items() for r in coal_year(y, e)],
        reports=[year_report(y, value_added=v * 1.1, value_added_comparable=v) for y, v in va.items()],
    )
    e0 = 1000 / 2000  # 0.5 tce per 10⁴ yuan
    expected = {
        # year: (value, target = 0.5 · 0.96^(y − 2016), status)
        2017: (960 / 2000, 0.5 * 0.96, "met"),  # 0.48 ≤ 0.48
        2018: (960 / 2000, 0.5 * 0.96**2, "missed"),  # 0.48 > 0.4608
        2019: (900 / 2100, 0.5 * 0.96**3, "met"),  # 0.428571 ≤ 0.442368
        2020: (850 / 2100, 0.5 * 0.96**4, "met"),  # 0.404762 ≤ 0.424673
    }
    for y, (value, target, status) in expected.items():
        r = compute("energy_intensity", Period.of_year(y), data, PLAN)
        assert r.value == pytest.approx(value)
        assert r.baseline == pytest.approx(e0)
        assert r.target == pytest.approx(target)
        assert r.status == status, y
    r17 = compute("energy_intensity", Period.of_year(2017), data, PLAN)
    assert r17.yoy == pytest.approx(0.48 / 0.5 - 1)  # −4 %
    r20 = compute("energy_intensity", Period.of_year(2020), data, PLAN)
    assert r20.yoy == pytest.approx((850 / 2100) / (900 / 2100) - 1)  # 850/900 − 1 = −5.56 %
    assert r20.avg_annual == pytest.approx(((850 / 2100) / 0.5) ** (1 / 4) - 1)  # 0.80952^(1/4) − 1 = −5.15 %
    assert compute("energy", Period.of_year(2020), data, PLAN).value == pytest.approx(850.0)


def test_reported_baseline_when_the_data_has_none() -> None:
    # connected in 2017; the 2016 survey gave an NC rate of 30 %: 2018 target 30 + 2·2 = 34
    data = EnterpriseData(
        "e1", daily=ent_days(date(2018, 1, 1), date(2018, 12, 31), 10, 3), baseline_values={"nc_rate": 30.0}
    )
    r = compute("nc_rate", Period.of_year(2018), data, PLAN)
    assert (r.value, r.baseline, r.target, r.status) == (30.0, 30.0, 34.0, "missed")
    assert r.avg_annual == pytest.approx(0.0)


# --- golden: leap year, partial year, equipment added mid-year -------------------------------------------------


def test_leap_year_equipment_days() -> None:
    # 10 machines all of 2020 (366 days); 4 NC to 30 June (182 days: 31+29+31+30+31+30), 6 NC from
    # 1 July (184 days: 31+31+30+31+30+31). NC equipment-days 4·182 + 6·184 = 728 + 1104 = 1832;
    # equipment-days 10·366 = 3660; rate 1832/3660 = 50.0546 %. Period end: 6/10 = 60 %.
    rows = ent_days(date(2020, 1, 1), date(2020, 6, 30), 10, 4) + ent_days(date(2020, 7, 1), date(2020, 12, 31), 10, 6)
    data = EnterpriseData("e1", daily=rows)
    p = Period.of_year(2020)
    assert p.days == 366
    r = compute("nc_rate", p, data, with_policy(nc_rate_basis="equipment_days"))
    assert (r.numerator, r.denominator, r.coverage) == (1832.0, 3660.0, 1.0)
    assert r.value == pytest.approx(100 * 1832 / 3660)
    assert compute("nc_rate", p, data, PLAN).value == pytest.approx(60.0)
    # by original value: NC machines worth 2, others 1 (10⁴ yuan) -> at the year end 6·2/(6·2 + 4·1) = 75 %
    by_value = [
        EnterpriseDay(d.day, 10, d.equipment_nc, 2.0 * d.equipment_nc + (10 - d.equipment_nc), 2.0 * d.equipment_nc,
                      equipment_valued=10)  # every machine has its 原值
        for d in rows
    ]
    r = compute("nc_rate", p, EnterpriseData("e1", daily=by_value), with_policy(nc_rate_weight="asset_value"))
    assert r.value == pytest.approx(75.0)


def test_partial_year() -> None:
    # data from 1 July 2019 only: the year has 184 of 365 days (0.504) -> insufficient, no number;
    # the third quarter is whole (92 of 92 days), and so is 2020 to 30 June (182 of 182 days)
    rows = ent_days(date(2019, 7, 1), date(2020, 6, 30), 20, 5)
    data = EnterpriseData("e1", daily=rows)
    year = compute("nc_rate", Period.of_year(2019), data, PLAN)
    assert (year.value, year.status) == (None, "insufficient_data")
    assert year.coverage == pytest.approx(184 / 365)
    q3 = compute("nc_rate", Period.of_quarter(2019, 3), data, PLAN)
    assert q3.value == pytest.approx(25.0) and q3.coverage == 1.0  # 5/20
    ytd = compute("nc_rate", Period.year_to_date(date(2020, 6, 30)), data, PLAN)
    assert ytd.value == pytest.approx(25.0) and ytd.coverage == 1.0
    assert ytd.period.days == 182
    assert ytd.yoy is None  # the first half of 2019 has no data


def test_equipment_added_mid_year_networking_rate() -> None:
    # 2018: 4 NC machines networked every day (4·365 = 1460 networked days of 1460);
    # 2 NC machines added 1 October (92 days each: 31+30+31), silent in October and networked
    # from 1 November (61 days each: 30+31). Networked 1460 + 2·61 = 1582 of 1460 + 2·92 = 1644.
    rows = (
        ent_days(date(2018, 1, 1), date(2018, 9, 30), 4, 4, 4)
        + ent_days(date(2018, 10, 1), date(2018, 10, 31), 6, 6, 4)
        + ent_days(date(2018, 11, 1), date(2018, 12, 31), 6, 6, 6)
    )
    r = compute("networking_rate", Period.of_year(2018), EnterpriseData("e1", daily=rows), PLAN)
    assert (r.numerator, r.denominator) == (1582.0, 1644.0)
    assert r.value == pytest.approx(100 * 1582 / 1644)  # 96.23 %, not the year-end 6/6 = 100 %
    october = compute("networking_rate", Period.of_month(2018, 10), EnterpriseData("e1", daily=rows), PLAN)
    assert october.value == pytest.approx(100 * (4 * 31) / (6 * 31))  # 66.67 %


def test_networking_over_all_equipment_days() -> None:
    # 10 machines, 4 NC all networked, 1 non-NC networked: NC basis 4/4; all-equipment basis 5/10
    rows = [
        EnterpriseDay(d, 10, 4, equipment_networked=5, nc_equipment_networked=4)
        for d in days(date(2019, 1, 1), date(2019, 1, 31))
    ]
    data = EnterpriseData("e1", daily=rows)
    p = Period.of_month(2019, 1)
    assert compute("networking_rate", p, data, PLAN).value == pytest.approx(100.0)
    policy = with_policy(networking_denominator="all_equipment_days")
    assert compute("networking_rate", p, data, policy).value == pytest.approx(50.0)


# --- golden: missing meter data -------------------------------------------------------------------------------


def test_a_month_of_missing_meter_data_is_insufficient_not_a_number() -> None:
    # 2019 coal every day except March (no rows); then April with rows but coverage 0 (meter down)
    rows = [r for r in coal_year(2019, 365.0) if r.day.month != 3]
    rows = [ConsumptionDay(r.day, r.carrier, 0.0, 0.0, None, 0.0) if r.day.month == 4 else r for r in rows]
    data = EnterpriseData(
        "e1",
        consumption=rows,
        reports=[year_report(2019, value_added=1000.0, value_added_comparable=1000.0)]
        + [Report(Period.of_month(2019, m), value_added=80.0, value_added_comparable=80.0) for m in range(1, 13)],
    )
    for month in (3, 4):
        p = Period.of_month(2019, month)
        for name in ("energy", "energy_intensity"):
            r = compute(name, p, data, PLAN)
            assert (r.value, r.status, r.coverage) == (None, "insufficient_data", 0.0), (name, month)
    may = compute("energy_intensity", Period.of_month(2019, 5), data, PLAN)
    assert may.value == pytest.approx(31 * 1.0 / 80.0)  # 31 tce / 80 (10⁴ yuan)
    # the year: 365 − 31 − 30 = 304 covered days of 365 (0.833) < 0.95 -> no number
    year = compute("energy_intensity", Period.of_year(2019), data, PLAN)
    assert (year.value, year.status) == (None, "insufficient_data")
    assert year.coverage == pytest.approx(304 / 365)
    # one missing month only (334/365 = 0.915) still fails the default 0.95; passes a 0.9 policy
    one = EnterpriseData(
        "e1", consumption=[r for r in coal_year(2019, 365.0) if r.day.month != 3], reports=data.reports
    )
    assert compute("energy", Period.of_year(2019), one, PLAN).value is None
    assert compute("energy", Period.of_year(2019), one, with_policy(min_coverage=0.9)).value == pytest.approx(334.0)


def test_no_water_meter_is_insufficient_not_zero() -> None:
    data = EnterpriseData("e1", consumption=coal_year(2019, 100.0), reports=[year_report(2019, value_added=50.0)])
    r = compute("water_intensity", Period.of_year(2019), data, PLAN)
    assert (r.value, r.status) == (None, "insufficient_data")


def test_water_and_wastewater_intensity() -> None:
    span = days(date(2017, 1, 1), date(2017, 12, 31))
    rows = [ConsumptionDay(d, "water_intake", 10.0, None, 10.0) for d in span]
    rows += [ConsumptionDay(d, "wastewater", 4.0, None, 4.0) for d in span]
    data = EnterpriseData(
        "e1",
        consumption=rows,
        reports=[year_report(2017, value_added=365.0, value_added_comparable=365.0)],
        baseline_values={"water_intensity": 11.0, "wastewater_intensity": 4.0},
    )
    w = compute("water_intensity", Period.of_year(2017), data, PLAN)
    assert w.value == pytest.approx(3650 / 365)  # 10 m³ per 10⁴ yuan
    assert w.target == pytest.approx(11.0 * 0.95) and w.status == "met"  # 10 ≤ 10.45
    ww = compute("wastewater_intensity", Period.of_year(2017), data, PLAN)
    assert ww.value == pytest.approx(4.0) and ww.target == pytest.approx(3.92) and ww.status == "missed"


def test_electricity_equal_value_and_deflator() -> None:
    # 1,000 kWh a day in 2018 = 365,000 kWh; equal value 0.3 kgce/kWh -> 109.5 tce (equivalent: 44.8585)
    rows = [
        ConsumptionDay(d, "electricity", 1000.0, 1000.0 * 0.1229 / 1000)
        for d in days(date(2018, 1, 1), date(2018, 12, 31))
    ]
    data = EnterpriseData("e1", consumption=rows, reports=[year_report(2018, value_added=219.0)])
    p = Period.of_year(2018)
    assert compute("energy", p, data, PLAN).value == pytest.approx(44.8585)
    equal = with_policy(electricity_basis="equal", electricity_equal_value={2017: 0.3})  # 2017's stands for 2018
    assert compute("energy", p, data, equal).value == pytest.approx(109.5)
    late = with_policy(electricity_basis="equal", electricity_equal_value={2019: 0.3})  # none for 2018 yet
    assert compute("energy", p, data, late).status == "insufficient_data"
    # deflator 1.095: comparable value added 219 / 1.095 = 200 -> 44.8585 / 200
    deflated = with_policy(deflator={2018: 1.095})
    assert compute("energy_intensity", p, data, deflated).value == pytest.approx(44.8585 / 200)
    assert compute("energy_intensity", p, data, with_policy(value_added_prices="current")).value == pytest.approx(
        44.8585 / 219
    )


# --- reports: productivity, R&D, new products -------------------------------------------------------------


def test_report_indicators_from_monthly_reports() -> None:
    def month(y: int, m: int, **kw: float) -> Report:
        return Report(Period.of_month(y, m), **kw)

    reps = [
        month(
            2016,
            m,
            value_added=10.0,
            employees_avg=100.0 + m,
            revenue=100.0,
            rd_expense=1.0,
            gross_output=50.0,
            new_product_output=15.0,
        )
        for m in range(1, 13)
    ]
    reps += [
        month(
            2017,
            m,
            value_added=11.0,
            value_added_comparable=11.0,
            employees_avg=100.0,
            revenue=100.0,
            rd_expense=2.0,
            gross_output=50.0,
            new_product_output=17.0,
        )
        for m in range(1, 12)
    ]  # December missing
    data = EnterpriseData("e1", reports=reps)
    lp16 = compute("labour_productivity", Period.of_year(2016), data, PLAN)
    assert lp16.value == pytest.approx(120 / 106.5)  # Σ VA 120 ÷ mean employees (101+…+112)/12 = 106.5
    assert compute("rd_intensity", Period.of_year(2016), data, PLAN).value == pytest.approx(1.0)  # 12/1200
    # 2017: December missing -> every report indicator of the year is insufficient, coverage 11/12
    for name in ("labour_productivity", "rd_intensity", "new_product_ratio"):
        r = compute(name, Period.of_year(2017), data, PLAN)
        assert (r.value, r.status) == (None, "insufficient_data") and r.coverage == pytest.approx(11 / 12)
    # the first quarter of 2017 is whole: R&D 6/300 = 2 % ≥ 1.5 met; new products 51/150 = 34 % < 35 missed
    q1 = Period.of_quarter(2017, 1)
    # (the plan sets the floors for 2020: here they apply in every plan year)
    floors = PLAN.model_copy(update={"indicators": {k: v.model_copy(update={"years": None})
                                                    for k, v in PLAN.indicators.items()}})
    rd = compute("rd_intensity", q1, data, floors)
    assert (rd.value, rd.target, rd.status) == (pytest.approx(2.0), 1.5, "met")
    assert rd.yoy == pytest.approx(1.0)  # 2 % − 1 % = 1 point
    npr = compute("new_product_ratio", q1, data, floors)
    assert (npr.value, npr.status) == (pytest.approx(34.0), "missed")
    # productivity Q1: 33/100 vs Q1 2016 30/102 (baseline of the same quarter); target × 1.07
    lp = compute("labour_productivity", q1, data, PLAN)
    assert lp.baseline == pytest.approx(30 / 102)
    assert lp.target == pytest.approx(30 / 102 * 1.07) and lp.status == "met"  # 0.33 ≥ 0.3147


def test_compute_all_names_every_indicator() -> None:
    out = compute_all(Period.of_year(2018), EnterpriseData("e1"), PLAN)
    assert set(out) == set(INDICATORS)
    assert all(r.value is None and r.status == "insufficient_data" for r in out.values())


# --- status direction ----------------------------------------------------------------------------------------


def test_status_direction() -> None:
    # intensities: lower is better
    assert status_of("energy_intensity", PLAN, 2018, 0.40, 0.46, None) == "met"
    assert status_of("energy_intensity", PLAN, 2018, 0.50, 0.46, None) == "missed"
    # rates and productivity: higher is better
    assert status_of("nc_rate", PLAN, 2018, 45.0, 44.0, None) == "met"
    assert status_of("nc_rate", PLAN, 2018, 43.0, 44.0, None) == "missed"
    assert status_of("labour_productivity", PLAN, 2018, 1.2, 1.1449, None) == "met"
    assert status_of("labour_productivity", PLAN, 2018, 1.1, 1.1449, None) == "missed"
    assert status_of("rd_intensity", PLAN, 2020, 1.4, 1.5, None) == "missed"
    # no value: insufficient; outside the plan or no target (energy): no_target
    assert status_of("nc_rate", PLAN, 2018, None, 44.0, None) == "insufficient_data"
    assert status_of("nc_rate", PLAN, 2021, 50.0, None, None) == "no_target"
    assert status_of("energy", PLAN, 2018, 10.0, None, None) == "no_target"


def test_status_year_on_year_basis() -> None:
    t = PLAN.indicators
    plan = PLAN.model_copy(
        update={
            "indicators": {
                k: v.model_copy(update={"status_basis": "year_on_year"}) if v.kind != "floor" else v
                for k, v in t.items()
            }
        }
    )
    assert status_of("energy_intensity", plan, 2018, 0.96, None, 1.0) == "met"  # −4 % exactly
    assert status_of("energy_intensity", plan, 2018, 0.97, None, 1.0) == "missed"  # −3 %
    assert status_of("labour_productivity", plan, 2018, 1.07, None, 1.0) == "met"
    assert status_of("labour_productivity", plan, 2018, 1.05, None, 1.0) == "missed"
    assert status_of("nc_rate", plan, 2018, 42.0, None, 40.0) == "met"  # +2 points
    assert status_of("nc_rate", plan, 2018, 41.0, None, 40.0) == "missed"
    assert status_of("nc_rate", plan, 2018, 100.0, None, 99.5) == "met"  # at the cap
    assert status_of("nc_rate", plan, 2018, 42.0, None, None) == "insufficient_data"


# --- pooling ------------------------------------------------------------------------------------------------


def test_pooled_county_from_three_enterprises() -> None:
    # tce / value added (10⁴ yuan):  2016            2020
    #   A                           120/200 = 0.6    100/200 = 0.5   target 0.6·0.96⁴ = 0.50961 met
    #   B                           360/1000 = 0.36  300/1000 = 0.3  target 0.30576 met
    #   C                           60/50 = 1.2      55/50 = 1.1     target 1.01922 missed
    # county 2016: 540/1250 = 0.432; 2020: 455/1250 = 0.364; target 0.432·0.96⁴ = 0.366918 -> met
    figures = {"A": (120, 100, 200, 40, 100), "B": (360, 300, 1000, 10, 20), "C": (60, 55, 50, 0, 5)}
    members = {
        k: EnterpriseData(
            k,
            daily=ent_days(date(2020, 12, 1), date(2020, 12, 31), total, nc),
            consumption=coal_year(2016, e16) + coal_year(2020, e20),
            reports=[year_report(2016, value_added=va), year_report(2020, value_added=va, value_added_comparable=va)],
        )
        for k, (e16, e20, va, nc, total) in figures.items()
    }
    now = [compute("energy_intensity", Period.of_year(2020), d, PLAN) for d in members.values()]
    base = [compute("energy_intensity", Period.of_year(2016), d, PLAN) for d in members.values()]
    assert [r.status for r in now] == ["met", "met", "missed"]
    county = pool(now, PLAN, baseline_results=base)
    assert county.value == pytest.approx(455 / 1250)
    assert county.baseline == pytest.approx(540 / 1250)
    assert county.target == pytest.approx(0.432 * 0.96**4)
    assert county.status == "met"
    assert (county.members, county.included, county.assessed, county.met_count) == (3, 3, 3, 2)
    assert county.met_share == pytest.approx(2 / 3)
    assert county.avg_annual == pytest.approx((0.364 / 0.432) ** 0.25 - 1)
    with pytest.raises(ValueError, match="not a group's"):  # a group's own base years are in its sums
        pool([county], PLAN, baseline_results=[county])
    # NC rate at the end of December 2020: (40 + 10 + 0) / (100 + 20 + 5) = 50/125 = 40 %, not the
    # mean of 40 %, 50 %, 0 %
    nc = pool([compute("nc_rate", Period.of_month(2020, 12), d, PLAN) for d in members.values()], PLAN)
    assert nc.value == pytest.approx(40.0)
    energy = pool([compute("energy", Period.of_year(2020), d, PLAN) for d in members.values()], PLAN)
    assert energy.value == pytest.approx(455.0)  # energy pools as a total


def test_pool_without_enough_members_is_insufficient() -> None:
    p = Period.of_year(2019)
    ok = IndicatorResult("nc_rate", p, 50.0, None, None, None, None, 1.0, "no_target", 5.0, 10.0, 100.0)
    gap = IndicatorResult("nc_rate", p, None, None, None, None, None, 0.2, "insufficient_data", scale=100.0)
    r = pool([ok, gap], PLAN)  # 1 of 2 members has a figure: 0.5 < 0.95
    assert (r.value, r.status, r.coverage, r.included) == (None, "insufficient_data", 0.5, 1)
    with pytest.raises(ValueError):
        pool([ok, IndicatorResult("energy", p, 1.0, None, None, None, None, 1.0, "no_target", 1.0, 1.0)], PLAN)


def test_a_member_without_nc_machines_is_pooled_not_missing() -> None:
    """Nine members with 10 NC machines of 20, 5 networked in 2016 and 8 in 2020, and E-PLAIN, whose 12
    in-scope machines are all conventional: its networking rate is 0 ÷ 0 over complete data (366 of 366 days).

    Before: ``pool`` counted it as a member without a figure (excluded, "insufficient_data"), so the county
    had 9 of 10 members, 0.9 < 0.95: its networking rate withheld although every member's data is complete.
    After: it adds 0 to both sums and is pooled; the county is 80 % against 50 + 2·4 = 58 %: met. Its own
    rate stays without a figure, its note saying it has no NC machines. The same for the NC rate of a member
    without in-scope equipment."""
    def rows(year: int, total: int, nc: int, networked: int) -> list[EnterpriseDay]:
        return ent_days(date(year, 1, 1), date(year, 12, 31), total, nc, networked)

    period = Period.of_year(2020)
    members = [EnterpriseData(f"E-{i}", daily=rows(2016, 20, 10, 5) + rows(2020, 20, 10, 8)) for i in range(9)]
    plain = EnterpriseData("E-PLAIN", daily=rows(2016, 12, 0, 0) + rows(2020, 12, 0, 0))
    results = [compute("networking_rate", period, m, PLAN) for m in (*members, plain)]
    own = results[-1]
    assert (own.value, own.coverage, own.status) == (None, 1.0, "insufficient_data")
    assert own.note is not None and "no NC equipment" in own.note
    county = pool(results, PLAN)
    assert county.excluded == () and county.without_baseline == (), dict(county.inputs)
    assert (county.value, county.baseline, county.status) == (80.0, 50.0, "met")
    assert (county.members, county.included, county.assessed, county.coverage) == (10, 10, 9, 1.0)
    assert "E-PLAIN" in county.pooled
    # a member without any in-scope equipment: no NC rate of its own, nothing in the county's
    empty = EnterpriseData("E-EMPTY", daily=rows(2016, 0, 0, 0) + rows(2020, 0, 0, 0))
    nc = pool([compute("nc_rate", period, m, PLAN) for m in (*members, empty)], PLAN)
    assert (nc.value, nc.excluded, nc.included) == (50.0, (), 10)
    # a member whose data is missing is still one without a figure
    half = ent_days(date(2020, 1, 1), date(2020, 6, 30), 12, 0)
    silent = EnterpriseData("E-SILENT", daily=rows(2016, 12, 0, 0) + half)
    gap = pool([*results[:-1], compute("networking_rate", period, silent, PLAN)], PLAN)
    assert (gap.value, gap.excluded) == (None, (("E-SILENT", "insufficient_data"),))


@given(
    st.lists(
        st.tuples(st.floats(0, 1e6, allow_nan=False), st.floats(1e-3, 1e6, allow_nan=False)), min_size=1, max_size=20
    ),
    st.sampled_from(["energy_intensity", "nc_rate", "labour_productivity"]),
)
def test_pooled_figure_lies_between_the_members(pairs: list[tuple[float, float]], name: str) -> None:
    p = Period.of_year(2019)
    scale = 100.0 if name == "nc_rate" else 1.0
    results = [
        IndicatorResult(name, p, n / d * scale, None, None, None, None, 1.0, "no_target", n, d, scale) for n, d in pairs
    ]
    r = pool(results, PLAN)
    values = [x.value for x in results]
    assert r.value is not None
    assert min(values) * (1 - 1e-9) - 1e-12 <= r.value <= max(values) * (1 + 1e-9) + 1e-12


def test_periods() -> None:
    assert Period.of_year(2020).days == 366 and Period.of_year(2019).days == 365
    assert Period.of_month(2020, 2).days == 29 and Period.of_month(2019, 2).days == 28
    assert Period.of_quarter(2019, 4).label == "2019-Q4"
    assert Period.year_to_date(date(2020, 2, 29)).in_year(2019).end == date(2019, 2, 28)
    # 1–2月累计 of a year after a leap year: to 29 February of the leap year, not the 28th
    assert Period.year_to_date(date(2017, 2, 28)).in_year(2016).end == date(2016, 2, 29)
    assert Period.year_to_date(date(2017, 2, 27)).in_year(2016).end == date(2016, 2, 27)
    assert Period.year_to_date(date(2017, 3, 31)).in_year(2016).end == date(2016, 3, 31)
    assert Period.year_to_date(date(2016, 2, 28)).in_year(2017).end == date(2017, 2, 28)  # not a month's end
    assert Period.of_quarter(2018, 2).months() == [(2018, 4), (2018, 5), (2018, 6)]


@pytest.mark.parametrize("reported", ["year_to_date", "months"])
def test_a_year_to_the_end_of_february_after_a_leap_base_year_has_its_baseline(reported: str) -> None:
    # 1–2月累计 2017 against 2016: coal at 1 tce a day, value added reported for 1–2月 (or per month).
    # The base year's period must run to 29 February 2016, where its report ends: a 28 February end
    # found no report and left the figure without a baseline (insufficient_data)
    cons = [ConsumptionDay(d, "coal", 1400.0, 1.0) for y in (2016, 2017) for d in days(date(y, 1, 1), date(y, 2, 28))]
    cons.append(ConsumptionDay(date(2016, 2, 29), "coal", 1400.0, 1.0))
    if reported == "year_to_date":
        reports = [Report(Period.year_to_date(date(2016, 2, 29)), value_added_comparable=600.0),
                   Report(Period.year_to_date(date(2017, 2, 28)), value_added_comparable=590.0)]
    else:
        reports = [Report(Period.of_month(y, m), value_added_comparable=v)
                   for y, v in ((2016, 300.0), (2017, 295.0)) for m in (1, 2)]
    r = compute("energy_intensity", Period.year_to_date(date(2017, 2, 28)),
                EnterpriseData("E", consumption=cons, reports=reports), PLAN)
    assert r.value == pytest.approx(59 / 590)
    assert r.baseline == pytest.approx(60 / 600)  # the 60 days of 2016's 1–2月
    assert r.target == pytest.approx(60 / 600 * 0.96) and r.status == "missed"


@pytest.mark.parametrize("with_targets", [True, False])
def test_ranks_put_the_lowest_intensity_and_energy_first_with_or_without_a_target(with_targets: bool) -> None:
    from fmc.indicators.pooling import GroupRow, rank

    plan = PLAN if with_targets else PLAN.model_copy(update={"indicators": {}})  # a plan file that sets none
    period = Period.of_year(2020)

    def row(region: str, value: float) -> GroupRow:
        results = {name: IndicatorResult(name, period, value, None, None, None, None, 1.0, "no_target")
                   for name in INDICATORS}
        return GroupRow("county", region, None, None, results)

    ranked = rank([row("330101", 0.5), row("330102", 0.2), row("330103", 0.9)], plan)
    by_region = {r.region: r.ranks for r in ranked}
    for name in ("energy", "energy_intensity", "water_intensity", "wastewater_intensity"):
        assert [by_region[c][name] for c in ("330101", "330102", "330103")] == [2, 1, 3], name
    for name in ("nc_rate", "networking_rate", "labour_productivity", "rd_intensity", "new_product_ratio"):
        assert [by_region[c][name] for c in ("330101", "330102", "330103")] == [2, 3, 1], name


# --- the sums a store need not compute ---------------------------------------------------------------------


@pytest.mark.parametrize("nc_basis", ["period_end", "equipment_days"])
@pytest.mark.parametrize("weight", ["count", "asset_value"])
@pytest.mark.parametrize("denominator", ["nc_equipment_days", "all_equipment_days"])
@pytest.mark.parametrize("electricity", ["equivalent", "equal"])
def test_the_engine_reads_only_the_sums_it_asks_for(nc_basis: str, weight: str, denominator: str,
                                                    electricity: str) -> None:
    """Sums left out by ``sums_wanted`` (NaN, as a store leaves them) change no figure of any policy."""
    import dataclasses
    import math

    from fmc.indicators.engine import summarize, sums_wanted

    targets = with_policy(nc_rate_basis=nc_basis, nc_rate_weight=weight, networking_denominator=denominator,
                          electricity_basis=electricity, electricity_equal_value={2016: 0.33, 2020: 0.30})
    rows = [EnterpriseDay(d, 40 + d.month, 12 + d.month % 5, 1e6 + d.day, 4e5 + d.month, 30 + d.day % 7,
                          9 + d.day % 3) for y in (2016, 2019, 2020) for d in days(date(y, 1, 1), date(y, 12, 31))]
    cons = [ConsumptionDay(d, c, 1000.0 + d.day, tce, m3, 1.0) for y in (2016, 2019, 2020)
            for d in days(date(y, 1, 1), date(y, 12, 31))
            for c, tce, m3 in (("electricity", 0.12 + d.day / 1000, None), ("water_intake", None, 30.0 + d.month))]
    reports = [year_report(y, value_added=900.0 + y, value_added_comparable=880.0 + y) for y in (2016, 2019, 2020)]
    wanted = sums_wanted(targets.policy)

    def pruned(period: Period) -> PeriodSums:
        s = summarize(period, rows, cons)
        daily = dataclasses.replace(s.daily, **{f: math.nan for f in (
            "equipment_total", "equipment_nc", "asset_value_total", "asset_value_nc", "equipment_networked",
            "nc_equipment_networked") if f not in wanted.daily})
        carriers = {k: c if wanted.amount else dataclasses.replace(c, amount=math.nan) for k, c in s.carriers.items()}
        return dataclasses.replace(s, daily=daily, carriers=carriers)

    for period in (Period.of_year(2020), Period.of_quarter(2020, 2), Period.of_month(2020, 2)):
        ps = [period, period.in_year(2019), period.in_year(2016)]
        full = compute_all(period, EnterpriseData("E", rows, cons, reports), targets)
        lean = compute_all(period, EnterpriseData("E", reports=reports, sums={(p.start, p.end): pruned(p)
                                                                              for p in ps}), targets)
        for name in INDICATORS:
            f, g = full[name], lean[name]
            assert f.status == g.status, (name, f, g)
            for attr in ("value", "baseline", "target", "yoy", "coverage"):
                fv, gv = getattr(f, attr), getattr(g, attr)
                assert (fv is None and gv is None) or math.isclose(fv, gv, rel_tol=1e-12), (name, attr, fv, gv)
    assert len(wanted.daily) <= 4  # what the saving is about: at most 4 of the 6 daily sums


# --- the engine's per-plan shortcuts give the plan's own answers ----------------------------------------


_YOY_PLAN = PLAN.model_copy(update={"indicators": {
    k: v.model_copy(update={"status_basis": "year_on_year"}) if v.kind != "floor" else v
    for k, v in PLAN.indicators.items()}})
_NO_CAP_PLAN = PLAN.model_copy(update={"indicators": {
    k: v.model_copy(update={"cap": None}) for k, v in PLAN.indicators.items()}})
_figure = st.one_of(st.none(), st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.sampled_from([0.0, -0.0]))


@given(
    plan=st.sampled_from([PLAN, _YOY_PLAN, _NO_CAP_PLAN]),
    indicator=st.sampled_from(sorted(INDICATORS)),
    year=st.integers(2010, 2030),
    baseline=_figure,
)
@settings(max_examples=3000, deadline=None)
def test_the_engines_rule_is_target_for_to_the_bit(plan, indicator, year, baseline) -> None:
    """The engine looks a plan's target arithmetic up once per indicator and year (``engine._Rule``, for a
    province's 20,000 enterprises): it must give ``Targets.target_for`` exactly. (Its ``status`` is
    ``status_of`` itself, tested above.)"""
    from fmc.indicators.engine import _Rule

    target = plan.target_for(indicator, year, baseline)
    got = _Rule(plan, indicator, year).target(baseline)
    assert (got is None) == (target is None)
    if target is not None:
        assert got is not None and math.copysign(1.0, got) == math.copysign(1.0, target) and got == target
