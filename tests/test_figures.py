"""Issue 10, "figures a bureau can publish": every defect with its exact input, on both stores.

Each test seeds a real store (the embedded SQLite store and a real InfluxDB 1.6, the ``backend``
fixture of ``tests/test_store_contract.py``) with points in the writers' format, runs the central
service on it, and checks the figure a bureau would publish. Expected values are worked out in the
comments.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from datetime import date, timedelta
from pathlib import Path

import pytest

from fmc.central.config import load_plan
from fmc.central.registry import RegistryEntry
from fmc.central.reports import report_points
from fmc.central.service import IndicatorService
from fmc.central.store import Scope
from fmc.core.points import Point
from fmc.indicators.engine import ConsumptionDay, EnterpriseDay, Period
from fmc.indicators.reports import EnterpriseReport
from fmc.plant.rollups import Site
from tests.store_backends import Backend, consumption_point, daily_point

PLAN = load_plan()


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(n) for n in range((last - first).days + 1)]


def days_of(*years: int) -> list[date]:
    return [d for y in years for d in days_between(date(y, 1, 1), date(y, 12, 31))]


def equipment(site: Site, days: Iterable[date], total: int, nc: int, networked: int | None = None) -> list[Point]:
    net = nc if networked is None else networked
    return [daily_point(site, EnterpriseDay(d, total, nc, 0.0, 0.0, net, net)) for d in days]


def carrier(site: Site, name: str, days: Iterable[date], tce_per_day: float, coverage: float = 1.0) -> list[Point]:
    """Daily rows of an energy carrier: ``tce_per_day`` a day (amount in the carrier's unit, made up)."""
    return [consumption_point(site, ConsumptionDay(d, name, tce_per_day * 1000.0, tce=tce_per_day,
                                                   coverage=coverage)) for d in days]


def reports(site: Site, *items: EnterpriseReport) -> list[Point]:
    return report_points(items, {site.enterprise: site.region}, {site.enterprise: site.industry})


def annual(enterprise: str, year: int, **figures: float) -> EnterpriseReport:
    return EnterpriseReport(enterprise=enterprise, period=str(year), **figures)


def service_on(backend: Backend, registry: dict[str, RegistryEntry] | None = None) -> IndicatorService:
    return IndicatorService(backend.store, PLAN, registry=registry or {}, revalidate_s=3600)


async def county_row(service: IndicatorService, period: Period, county: str):
    rows = (await service.indicators("county", period, Scope(region_prefix=county))).rows
    [row] = [r for r in rows if r.key == county]
    return row


# --- 1. group rows use the survey baselines -----------------------------------------------------------------


async def test_county_row_uses_the_survey_baselines(backend: Backend) -> None:
    """Two enterprises with 2019-20 data, no 2016 sensor data, survey NC rates 30 % and 10 %.

    A: 20 machines, 8 NC all of 2019-20 (40 %); its survey baseline 30 % -> 2020 target 30 + 2·4 = 38: met.
    B: 10 machines, 2 NC (20 %); survey 10 % -> target 18: met.
    County 2020 value (8 + 2) / (20 + 10) = 33.33 %. Its baseline is the members' baselines pooled with
    the weight of their denominators (the survey gives a rate, not its parts, so each member's
    current denominator): (30·20 + 10·10) / 30 = 23.33 % -> target 31.33 %: met, 2 of 2 members met.
    Before: the county's baseline came from measured 2016 data only -> target None, insufficient_data.
    """
    a, b = Site("E-A", "330602", "1711"), Site("E-B", "330602", "1711")
    backend.ingest(equipment(a, days_of(2019, 2020), 20, 8) + equipment(b, days_of(2019, 2020), 10, 2))
    registry = {
        "E-A": RegistryEntry("E-A", "甲", "330602", "1711", {"nc_rate": 30.0}),
        "E-B": RegistryEntry("E-B", "乙", "330602", "1711", {"nc_rate": 10.0}),
    }
    service = service_on(backend, registry)
    members = (await service.indicators("enterprise", Period.of_year(2020), Scope(region_prefix="330602"))).rows
    assert [(r.results["nc_rate"].baseline, r.results["nc_rate"].status) for r in members] == [
        (30.0, "met"), (10.0, "met")]
    nc = (await county_row(service, Period.of_year(2020), "330602")).results["nc_rate"]
    assert nc.value == pytest.approx(100 * 10 / 30)
    assert nc.baseline == pytest.approx((30 * 20 + 10 * 10) / 30)
    assert nc.target == pytest.approx((30 * 20 + 10 * 10) / 30 + 8)
    assert nc.status == "met"
    assert (nc.members, nc.included, nc.assessed, nc.met_count) == (2, 2, 2, 2)


# --- 2. the pooled baseline comes from the members of the pooled value -----------------------------------


async def test_county_baseline_is_pooled_over_the_members_of_the_value(backend: Backend) -> None:
    """20 members with equal value added (100 10⁴ yuan a year, comparable prices); 19 use 0.1 tce a day
    in 2016 and in 2020 (both leap years: 36.6 tce, intensity 0.366, flat); H uses 10 tce a day in 2016
    (intensity 36.6) and its 2020 meter failed on 1 November (the agent writes rows with coverage 0).

    H's 2020 energy is insufficient (305 of 366 days), so the county value is the 19 flat members:
    19·36.6 / 1900 = 0.366. Before: the baseline pooled all 20 members' 2016 figures,
    (19·36.6 + 3660) / 2000 = 2.178 -> 0.366 is −36 %/yr against it, "met" while no member improved.
    After: the baseline over the same 19 members, 19·36.6 / 1900 = 0.366 -> 0 %/yr: missed.
    """
    sites = [Site(f"E-{i:02d}", "330602", "1711") for i in range(19)]
    heavy = Site("E-H", "330602", "1711")
    points: list[Point] = []
    for s in sites:
        points += carrier(s, "electricity", days_of(2016, 2020), 0.1)
        points += reports(s, annual(s.enterprise, 2016, value_added=1e6, value_added_comparable=1e6),
                          annual(s.enterprise, 2020, value_added=1e6, value_added_comparable=1e6))
    points += carrier(heavy, "electricity", days_of(2016), 10.0)
    points += carrier(heavy, "electricity", days_between(date(2020, 1, 1), date(2020, 10, 31)), 10.0)
    points += carrier(heavy, "electricity", days_between(date(2020, 11, 1), date(2020, 12, 31)), 0.0, coverage=0.0)
    points += reports(heavy, annual("E-H", 2016, value_added=1e6, value_added_comparable=1e6),
                      annual("E-H", 2020, value_added=1e6, value_added_comparable=1e6))
    backend.ingest(points)
    service = service_on(backend)
    ei = (await county_row(service, Period.of_year(2020), "330602")).results["energy_intensity"]
    assert (ei.members, ei.included) == (20, 19)
    assert ei.value == pytest.approx(19 * 36.6 / 1900)
    assert ei.baseline == pytest.approx(19 * 36.6 / 1900)
    assert ei.avg_annual == pytest.approx(0.0, abs=1e-12)
    assert ei.status == "missed"
    # the row says which members it holds, and which it left out and why
    assert ei.pooled == tuple(s.enterprise for s in sites)
    assert ei.excluded == (("E-H", "insufficient_data"),)


# --- 3. coverage per energy carrier ---------------------------------------------------------------------------


async def enterprise_result(service: IndicatorService, period: Period, enterprise: str, indicator: str):
    rows = (await service.indicators("enterprise", period, Scope(enterprises=(enterprise,)))).rows
    return rows[0].results[indicator]


async def test_a_carrier_missing_a_month_makes_the_year_insufficient(backend: Backend) -> None:
    """Electricity 0.7 tce and natural gas 0.3 tce a day in 2016 and 2017, water every day; value added
    365 (10⁴ yuan, comparable) both years. February 2017's electricity is missing (no rows).

    Before: coverage averaged over the carriers, (337 + 365) / 730 = 0.9616 ≥ 0.95, so energy was
    337·0.7 + 365·0.3 = 345.4 tce, 5.4 % below the real 365, and the intensity 0.946 "met" its
    2017 target 0.96 (flat use really misses it). After: each carrier's coverage, electricity
    337/365 = 0.923, gas 1.0; the figure's coverage is the smallest -> insufficient_data.
    """
    e = Site("E-F", "330602", "1711")
    days = [d for d in days_of(2016, 2017) if not (d.year == 2017 and d.month == 2)]
    water = [consumption_point(e, ConsumptionDay(d, "water_intake", 10.0, m3=10.0)) for d in days_of(2016, 2017)]
    backend.ingest(carrier(e, "electricity", days, 0.7) + carrier(e, "natural_gas", days_of(2016, 2017), 0.3) + water
                   + reports(e, annual("E-F", 2016, value_added=3.65e6, value_added_comparable=3.65e6),
                             annual("E-F", 2017, value_added=3.65e6, value_added_comparable=3.65e6)))
    service = service_on(backend)
    for name in ("energy", "energy_intensity"):
        r = await enterprise_result(service, Period.of_year(2017), "E-F", name)
        assert (r.value, r.status) == (None, "insufficient_data"), name
        assert r.coverage == pytest.approx(337 / 365)
        assert dict(r.inputs)["electricity"] == pytest.approx(337 / 365)
        assert dict(r.inputs)["natural_gas"] == 1.0
    # the months without a gap are whole; the water intensity has its one carrier complete
    march = await enterprise_result(service, Period.of_month(2017, 3), "E-F", "energy")
    assert march.value == pytest.approx(31.0) and march.coverage == 1.0
    water = await enterprise_result(service, Period.of_year(2017), "E-F", "water_intensity")
    assert water.value == pytest.approx(3650 / 365)


# --- 4. fuel switching (煤改气) ----------------------------------------------------------------------------------


async def test_fuel_switching_expects_each_carrier_only_where_it_exists(backend: Backend) -> None:
    """Electricity 0.5 tce a day throughout; coal 1.0 tce a day in 2016; the coal meter removed and natural
    gas 0.6 tce a day from 2019 (煤改气). Value added 500 (10⁴ yuan, comparable) in 2016 and 2020.

    Before: every carrier ever seen was expected, so 2020 had (366 + 0 + 366) / (3·366) = 0.667 -> energy
    insufficient for good. After: a carrier is expected from its first to its last day present, where
    the enterprise's other carriers went on without it: coal until 2016-12-31, gas from 2019-01-01.
    2020: 366·(0.5 + 0.6) = 402.6 tce, coverage 1; 2016: 366·1.5 = 549 tce, coverage 1;
    intensity 0.8052 against the baseline 1.098 and its target 1.098·0.96⁴ = 0.9326: met.

    A second enterprise, G, whose whole gateway went silent on 1 November 2020 (every carrier's rows
    stop): its carriers did not end, its data did -> 2020 coverage 305/366, insufficient.
    """
    e, g = Site("E-S", "330602", "1711"), Site("E-G", "330602", "1711")
    backend.ingest(
        carrier(e, "electricity", days_of(2016, 2019, 2020), 0.5) + carrier(e, "coal", days_of(2016), 1.0)
        + carrier(e, "natural_gas", days_of(2019, 2020), 0.6)
        + reports(e, annual("E-S", 2016, value_added=5e6, value_added_comparable=5e6),
                  annual("E-S", 2020, value_added=5e6, value_added_comparable=5e6))
        + carrier(g, "electricity", days_of(2019) + days_between(date(2020, 1, 1), date(2020, 10, 31)), 0.5)
        + carrier(g, "natural_gas", days_of(2019) + days_between(date(2020, 1, 1), date(2020, 10, 31)), 0.5)
    )
    service = service_on(backend)
    energy = await enterprise_result(service, Period.of_year(2020), "E-S", "energy")
    assert energy.value == pytest.approx(366 * 1.1) and energy.coverage == 1.0
    assert dict(energy.inputs) == {"electricity": 1.0, "natural_gas": 1.0}
    base = await enterprise_result(service, Period.of_year(2016), "E-S", "energy")
    assert base.value == pytest.approx(366 * 1.5) and dict(base.inputs) == {"coal": 1.0, "electricity": 1.0}
    ei = await enterprise_result(service, Period.of_year(2020), "E-S", "energy_intensity")
    assert ei.value == pytest.approx(366 * 1.1 / 500) and ei.baseline == pytest.approx(366 * 1.5 / 500)
    assert (ei.status, ei.baseline_source) == ("met", "measured")
    silent = await enterprise_result(service, Period.of_year(2020), "E-G", "energy")
    assert (silent.value, silent.status) == (None, "insufficient_data")
    assert silent.coverage == pytest.approx(305 / 366)


async def test_a_dead_gateways_carrier_stays_expected(backend: Backend) -> None:
    """E-D has two gateways: ``hall`` (its machines and the electricity meter, 0.5 tce a day) and ``boiler``
    (the coal meter, 1.0 tce a day, and its own enterprise_daily rows). The boiler gateway dies on
    30 September 2020: from 1 October none of its rows arrive; the hall goes on. Nothing was taken out of a
    configuration, so coal did not end: its gateway's data did.

    Before: electricity went on after coal's last row, so coal was taken as removed (煤改气) on 30 September:
    2020 energy 366·0.5 + 274·1.0 = 457 tce at coverage 1.0 (the real use 549 tce). After: a carrier ends
    only where the gateway that measured it kept writing; coal is expected all year, 274/366 -> insufficient.
    """
    hall, boiler = Site("E-D", "330602", "1711", gateway="hall"), Site("E-D", "330602", "1711", gateway="boiler")
    boiler_alive = days_of(2016) + days_between(date(2020, 1, 1), date(2020, 9, 30))
    backend.ingest(
        carrier(hall, "electricity", days_of(2016, 2020), 0.5) + equipment(hall, days_of(2016, 2020), 10, 5)
        + carrier(boiler, "coal", boiler_alive, 1.0) + equipment(boiler, boiler_alive, 1, 0)
        + reports(hall, annual("E-D", 2016, value_added=5e6, value_added_comparable=5e6),
                  annual("E-D", 2020, value_added=5e6, value_added_comparable=5e6))
    )
    service = service_on(backend)
    energy = await enterprise_result(service, Period.of_year(2020), "E-D", "energy")
    assert (energy.value, energy.status) == (None, "insufficient_data"), (
        f"published {energy.value} tce at coverage {energy.coverage} with inputs {dict(energy.inputs)}")
    assert dict(energy.inputs) == pytest.approx({"coal": 274 / 366, "electricity": 1.0})
    ei = await enterprise_result(service, Period.of_year(2020), "E-D", "energy_intensity")
    assert (ei.value, ei.status) == (None, "insufficient_data")
    # E-R: the same, but the boiler gateway goes on writing its rollups after coal's last row (the coal meter
    # taken out of its configuration): coal ended on 30 September, 2020 is 457 tce, whole
    removed = ("E-R", "330602", "1711")
    hall, boiler = Site(*removed, gateway="hall"), Site(*removed, gateway="boiler")
    backend.ingest(carrier(hall, "electricity", days_of(2016, 2020), 0.5) + carrier(boiler, "coal", boiler_alive, 1.0)
                   + equipment(boiler, days_of(2016, 2020), 1, 0))
    energy = await enterprise_result(service_on(backend), Period.of_year(2020), "E-R", "energy")
    assert (energy.value, energy.coverage) == (pytest.approx(366 * 0.5 + 274 * 1.0), 1.0)
    assert dict(energy.inputs) == {"coal": 1.0, "electricity": 1.0}


async def test_a_retired_gateways_carrier_ends_at_its_retirement(backend: Backend) -> None:
    """煤改气 with the boiler house pulled down: E-S's boiler gateway (the coal meter) writes its last rows on
    30 September 2020 and the registry declares it retired that day (``retired_gateways``); the hall's
    electricity goes on into 2021. E-T's boiler gateway died on 31 July and was declared retired on
    30 September: coal existed until then, and its last two months are missing.

    Without the declaration both are E-D of the test before (coal expected for good: 2020 and 2021
    insufficient_data, with no way to say the coal had ended). With it: E-S's 2020 is 366·0.5 + 274·1.0 tce,
    whole, and 2021 is the electricity alone; E-T's 2020 lacks coal's August and September (213/274 of its
    expected days), and 2021 is whole again."""
    registry = {}
    for enterprise, boiler_last in (("E-S", date(2020, 9, 30)), ("E-T", date(2020, 7, 31))):
        hall, boiler = (Site(enterprise, "330602", "1711", gateway=g) for g in ("hall", "boiler"))
        boiler_alive = days_of(2016) + days_between(date(2020, 1, 1), boiler_last)
        backend.ingest(
            carrier(hall, "electricity", days_of(2016, 2020, 2021), 0.5)
            + equipment(hall, days_of(2016, 2020, 2021), 10, 5)
            + carrier(boiler, "coal", boiler_alive, 1.0) + equipment(boiler, boiler_alive, 1, 0)
        )
        registry[enterprise] = RegistryEntry(enterprise, None, "330602", "1711",
                                             retired_gateways={"boiler": date(2020, 9, 30)})
    undeclared = service_on(backend)
    for enterprise in ("E-S", "E-T"):
        for year in (2020, 2021):
            energy = await enterprise_result(undeclared, Period.of_year(year), enterprise, "energy")
            assert energy.status == "insufficient_data", (enterprise, year, energy.value, dict(energy.inputs))
    service = service_on(backend, registry)
    energy = await enterprise_result(service, Period.of_year(2020), "E-S", "energy")
    assert (energy.value, energy.coverage) == (pytest.approx(366 * 0.5 + 274 * 1.0), 1.0), dict(energy.inputs)
    energy = await enterprise_result(service, Period.of_year(2021), "E-S", "energy")
    assert (energy.value, dict(energy.inputs)) == (pytest.approx(365 * 0.5), {"electricity": 1.0})
    energy = await enterprise_result(service, Period.of_year(2020), "E-T", "energy")
    assert (energy.value, energy.status) == (None, "insufficient_data")
    assert dict(energy.inputs) == pytest.approx({"coal": 213 / 274, "electricity": 1.0})
    energy = await enterprise_result(service, Period.of_year(2021), "E-T", "energy")
    assert (energy.value, dict(energy.inputs)) == (pytest.approx(365 * 0.5), {"electricity": 1.0})


async def test_a_gateway_writing_after_its_declared_retirement_is_warned_of_once(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """The registry says E-W's boiler gateway was retired on 30 June, but it wrote until 30 September (a
    wrong day, or another gateway's id): its rows count, and the service says so once, not at every
    recomputation."""
    hall, boiler = (Site("E-W", "330602", "1711", gateway=g) for g in ("hall", "boiler"))
    alive = days_between(date(2020, 1, 1), date(2020, 9, 30))
    backend.ingest(carrier(hall, "electricity", days_of(2020), 0.5) + equipment(hall, days_of(2020), 10, 5)
                   + carrier(boiler, "coal", alive, 1.0) + equipment(boiler, alive, 1, 0))
    registry = {"E-W": RegistryEntry("E-W", None, "330602", "1711", retired_gateways={"boiler": date(2020, 6, 30)})}
    service = service_on(backend, registry)
    with caplog.at_level(logging.WARNING, logger="fmc.central"):
        energy = await enterprise_result(service, Period.of_year(2020), "E-W", "energy")
        await service.revalidate()
    assert (energy.value, energy.coverage) == (pytest.approx(366 * 0.5 + 274 * 1.0), 1.0), dict(energy.inputs)
    said = [r.getMessage() for r in caplog.records if "retired on" in r.getMessage()]
    assert said == ["enterprise E-W: the registry says gateway boiler was retired on 2020-06-30, but it wrote rows "
                    "until 2020-09-30; they are counted: fix its retirement day or the gateway id (registry column "
                    "退役网关 / retired_gateways)"]


async def test_a_hall_retired_mid_year_beside_another_leaves_its_carrier_whole(backend: Backend) -> None:
    """E-H has two halls, each with its gateway and electricity meter: hall-a all of 2020 (0.5 tce a day),
    hall-b until 30 September (0.25 tce a day), when the hall is closed and its gateway declared retired.
    E-K is the same but hall-b's gateway died on 31 July, two months before its declared retirement.

    Before: a carrier's coverage is Σ daily coverage ÷ the gateways measuring it, over the whole year:
    (366 + 274) ÷ 2 = 320 of 366 days, 0.87, and E-H's energy insufficient_data although no day of a
    hall in service went unmeasured. After: each gateway-day in service counts once, 640 of 640 for E-H,
    579 of 640 for E-K (insufficient: two months of a hall are missing); undeclared, both stay as before."""
    registry = {}
    for enterprise, hall_b_last in (("E-H", date(2020, 9, 30)), ("E-K", date(2020, 7, 31))):
        hall_a, hall_b = (Site(enterprise, "330602", "1711", gateway=g) for g in ("hall-a", "hall-b"))
        alive = days_between(date(2020, 1, 1), hall_b_last)
        backend.ingest(carrier(hall_a, "electricity", days_of(2020), 0.5) + equipment(hall_a, days_of(2020), 10, 5)
                       + carrier(hall_b, "electricity", alive, 0.25) + equipment(hall_b, alive, 4, 2))
        registry[enterprise] = RegistryEntry(enterprise, None, "330602", "1711",
                                             retired_gateways={"hall-b": date(2020, 9, 30)})
    undeclared = service_on(backend)
    for enterprise, covered in (("E-H", 366 + 274), ("E-K", 366 + 213)):
        energy = await enterprise_result(undeclared, Period.of_year(2020), enterprise, "energy")
        assert (energy.status, dict(energy.inputs)) == (
            "insufficient_data", pytest.approx({"electricity": covered / 2 / 366})), enterprise
    service = service_on(backend, registry)
    energy = await enterprise_result(service, Period.of_year(2020), "E-H", "energy")
    assert (energy.value, energy.coverage) == (pytest.approx(366 * 0.5 + 274 * 0.25), 1.0), dict(energy.inputs)
    energy = await enterprise_result(service, Period.of_year(2020), "E-K", "energy")
    assert (energy.value, energy.status) == (None, "insufficient_data")
    assert dict(energy.inputs) == pytest.approx({"electricity": (366 + 213) / (366 + 274)})


async def test_a_hall_commissioned_mid_year_beside_another_leaves_its_carrier_whole(backend: Backend) -> None:
    """E-N opens hall-b on 1 July 2020 with its own gateway and electricity meter (0.25 tce a day) beside
    hall-a (0.5 a day, all year). Undeclared, hall-b's first half year counts as missing, as for a gateway
    installed late in a hall that was there: (366 + 184) ÷ 2 of 366 days, 0.75, insufficient_data.
    Declared commissioned that day (``commissioned_gateways``), the year is whole: 366·0.5 + 184·0.25 tce."""
    hall_a, hall_b = (Site("E-N", "330602", "1711", gateway=g) for g in ("hall-a", "hall-b"))
    opened = days_between(date(2020, 7, 1), date(2020, 12, 31))
    backend.ingest(carrier(hall_a, "electricity", days_of(2020), 0.5) + equipment(hall_a, days_of(2020), 10, 5)
                   + carrier(hall_b, "electricity", opened, 0.25) + equipment(hall_b, opened, 4, 2))
    energy = await enterprise_result(service_on(backend), Period.of_year(2020), "E-N", "energy")
    assert (energy.status, dict(energy.inputs)) == ("insufficient_data", pytest.approx({"electricity": 550 / 732}))
    registry = {"E-N": RegistryEntry("E-N", None, "330602", "1711", commissioned_gateways={"hall-b": date(2020, 7, 1)})}
    energy = await enterprise_result(service_on(backend, registry), Period.of_year(2020), "E-N", "energy")
    assert (energy.value, energy.coverage) == (pytest.approx(366 * 0.5 + 184 * 0.25), 1.0), dict(energy.inputs)


def test_coverage_in_service_on_plain_sums() -> None:
    """The weighing alone: one gateway, no declaration, or a retirement after the period change nothing."""
    from fmc.indicators.engine import coverage_in_service
    from fmc.indicators.sums import CarrierSums

    year = Period.of_year(2020)
    two = CarrierSums("electricity", 640, 0.0, 251.5, 640, 0.0, 0, 320.0,
                      gateway_coverage=(("hall-a", 366.0), ("hall-b", 274.0)))
    one = CarrierSums("coal", 366, 0.0, 366.0, 366, 0.0, 0, 366.0)
    carriers = {"electricity": two, "coal": one}
    assert coverage_in_service(year, carriers, {}) is carriers
    assert coverage_in_service(year, carriers, {"hall-b": date(2020, 12, 31)}) is carriers
    assert coverage_in_service(year, carriers, {"hall-b": date(2021, 3, 31)}) is carriers
    got = coverage_in_service(year, carriers, {"hall-b": date(2020, 9, 30)})
    assert got["electricity"].coverage == pytest.approx(366.0) and got["coal"] is one
    # retired before the period yet writing in it: the days it covered count, never more than whole
    got = coverage_in_service(year, carriers, {"hall-b": date(2019, 12, 31)})
    assert got["electricity"].coverage == pytest.approx(366.0)
    # both retired on 30 June: the half year in service is the whole of what was expected of them
    half = CarrierSums("electricity", 364, 0.0, 0.0, 364, 0.0, 0, 182.0,
                       gateway_coverage=(("hall-a", 182.0), ("hall-b", 182.0)))
    got = coverage_in_service(year, {"electricity": half}, {"hall-a": date(2020, 6, 30), "hall-b": date(2020, 6, 30)})
    assert got["electricity"].coverage == pytest.approx(366.0)
    # commissioned on 1 July: hall-b's 184 days in service; commissioned on the period's first day: nothing
    late = CarrierSums("electricity", 550, 0.0, 0.0, 550, 0.0, 0, 275.0,
                       gateway_coverage=(("hall-a", 366.0), ("hall-b", 184.0)))
    got = coverage_in_service(year, {"electricity": late}, {}, {"hall-b": date(2020, 7, 1)})
    assert got["electricity"].coverage == pytest.approx(366.0)
    assert coverage_in_service(year, carriers, {}, {"hall-b": date(2020, 1, 1)}) is carriers
    # in service from 1 July to 30 September, and covering only August of it: 31 of its 92 days
    brief = CarrierSums("electricity", 397, 0.0, 0.0, 397, 0.0, 0, 198.5,
                        gateway_coverage=(("hall-a", 366.0), ("hall-b", 31.0)))
    got = coverage_in_service(year, {"electricity": brief}, {"hall-b": date(2020, 9, 30)}, {"hall-b": date(2020, 7, 1)})
    assert got["electricity"].coverage == pytest.approx(397 * 366 / 458)


def test_expected_carrier_windows() -> None:
    """The rule on plain spans: a carrier added or removed while another went on, versus the whole
    enterprise starting or stopping (its silence then counts as missing data)."""
    from fmc.indicators.engine import expected_days, expected_windows

    d = date.fromisoformat
    switch = expected_windows({"electricity": (d("2016-01-01"), d("2020-12-31")),
                               "coal": (d("2016-01-01"), d("2016-12-31")),
                               "natural_gas": (d("2019-01-01"), d("2020-12-31"))})
    assert switch == {"electricity": (None, None), "coal": (None, d("2016-12-31")),
                      "natural_gas": (d("2019-01-01"), None)}
    assert expected_days(Period.of_year(2020), switch["coal"]) == 0
    assert expected_days(Period.of_year(2019), switch["natural_gas"]) == 365
    assert expected_days(Period.of_year(2016), switch["natural_gas"]) == 0
    # a gateway installed in March 2019: every carrier starts together -> all of 2019 is expected
    together = expected_windows({"electricity": (d("2019-03-01"), d("2020-12-31")),
                                 "natural_gas": (d("2019-03-01"), d("2020-12-31"))})
    assert together == {"electricity": (None, None), "natural_gas": (None, None)}
    assert expected_days(Period.of_year(2019), together["electricity"]) == 365
    # a lone carrier is never trimmed
    assert expected_windows({"coal": (d("2019-06-01"), d("2019-06-30"))}) == {"coal": (None, None)}
    # coal's gateway wrote nothing after coal's last row (``silent_carriers``): its gateway died, coal did not end
    dead = expected_windows({"electricity": (d("2016-01-01"), d("2020-12-31")),
                             "coal": (d("2016-01-01"), d("2020-09-30"))}, silent={"coal"})
    assert dead == {"electricity": (None, None), "coal": (None, None)}


# --- 5. the report rule is per field ---------------------------------------------------------------------------


async def test_a_field_the_annual_report_leaves_empty_comes_from_the_months(backend: Backend) -> None:
    """2020: the annual report gives value added only (12,000,000 yuan, comparable); twelve monthly reports
    give employees only (100, 102, …, 122: mean 111). Labour productivity = 1200 (10⁴ yuan) ÷ 111 persons
    = 10.81. Before: the annual report hid the months of every field -> insufficient_data."""
    e = Site("E-R", "330602", "1711")
    months = [EnterpriseReport(enterprise="E-R", period=f"2020-{m:02d}", employees_avg=98.0 + 2 * m)
              for m in range(1, 13)]
    backend.ingest(reports(e, annual("E-R", 2020, value_added=12e6, value_added_comparable=12e6), *months))
    service = service_on(backend)
    lp = await enterprise_result(service, Period.of_year(2020), "E-R", "labour_productivity")
    assert lp.value == pytest.approx(1200 / 111)
    assert dict(lp.inputs) == {"value_added": 1.0, "employees_avg": 1.0}
    # the annual figure wins where both are given: an annual employees figure replaces the months'
    backend.ingest(reports(e, annual("E-R", 2020, employees_avg=120.0)))
    service = service_on(backend)
    lp = await enterprise_result(service, Period.of_year(2020), "E-R", "labour_productivity")
    assert lp.value == pytest.approx(1200 / 120)


# --- 6. an enterprise that moves belongs to the region of the period's end --------------------------------------


MOVER_KEYS = ("province", "region:3306", "region:3307", "enterprise:E-M")


def mover_points() -> list[Point]:
    """S stays in 330602 (Shaoxing), T in 330781 (Jinhua); M is in 330602 until 30 June 2020 and in 330781
    from 1 July 2020 (its rows and its 2020 report carry the new tags). 10 machines each; NC: S 4,
    T 2, M 4 before the move and 6 after."""
    s, t = Site("E-S", "330602", "1711"), Site("E-T", "330781", "1711")
    m_old, m_new = Site("E-M", "330602", "1711"), Site("E-M", "330781", "1711")
    before, after = days_between(date(2019, 1, 1), date(2020, 6, 30)), days_between(date(2020, 7, 1),
                                                                                   date(2020, 12, 31))
    return (equipment(s, days_of(2019, 2020), 10, 4) + equipment(t, days_of(2019, 2020), 10, 2)
            + equipment(m_old, before, 10, 4) + equipment(m_new, after, 10, 6)
            + reports(m_old, annual("E-M", 2019, value_added=1e6, value_added_comparable=1e6, employees_avg=10))
            + reports(m_new, annual("E-M", 2020, value_added=1e6, value_added_comparable=1e6, employees_avg=10)))


def mover_answers(backend: Backend, tmp_path, order: tuple[str, ...], urls: list[str]) -> dict:
    from fastapi.testclient import TestClient

    from fmc.central.api.app import create_app
    from fmc.central.config import ApiConfig
    from fmc.central.keys import KeyStore

    keys = KeyStore(tmp_path / f"keys-{'-'.join(order).replace(':', '')}.db")
    key = {scope: keys.create(scope, scope)[1] for scope in MOVER_KEYS}
    service = IndicatorService(backend.open_store(), PLAN, revalidate_s=3600)
    answers: dict = {}
    with TestClient(create_app(service, keys, ApiConfig(keys_file=tmp_path / "k.db"))) as client:
        for scope in order:
            for url in urls:
                r = client.get(url, headers={"Authorization": f"Bearer {key[scope]}"})
                body = r.json()
                if isinstance(body, dict):
                    body.pop("computed_at", None)
                answers[(scope, url)] = (r.status_code, body)
    keys.close()
    return answers


async def test_a_mover_gets_the_same_answer_whoever_asked_first(backend: Backend, tmp_path) -> None:
    """The same URL with the same key gives the same answer in any order of keys: M belongs to 330602 in
    2019 and to 330781 in 2020 (the region of the period's end), with all of its rows and reports.

    Before: the stores filtered rows by the region they were recorded under, the service by the latest
    region: asked by a 3307 key first, M's 2020 was its second half-year only (coverage 0.50,
    insufficient); asked after a province key, the whole year from the province's cached figures."""
    import asyncio

    backend.ingest(mover_points())
    urls = [f"/v1/indicators?level={lv}&period={year}" for year in (2019, 2020) for lv in ("enterprise", "county")]
    urls += [f"/v1/enterprises/E-M/indicators?period={year}" for year in (2019, 2020)]
    forward = await asyncio.to_thread(mover_answers, backend, tmp_path, MOVER_KEYS, urls)
    backward = await asyncio.to_thread(mover_answers, backend, tmp_path, tuple(reversed(MOVER_KEYS)), urls)
    for k in forward:
        assert forward[k] == backward[k], k

    def items(scope: str, url: str) -> dict[str, dict]:
        status, body = forward[(scope, url)]
        assert status == 200, (scope, url, body)
        return {row["key"]: row for row in body["items"]}

    e2020, e2019 = "/v1/indicators?level=enterprise&period=2020", "/v1/indicators?level=enterprise&period=2019"
    assert sorted(items("region:3307", e2020)) == ["E-M", "E-T"]
    assert sorted(items("region:3306", e2020)) == ["E-S"]
    assert sorted(items("region:3306", e2019)) == ["E-M", "E-S"]
    assert sorted(items("region:3307", e2019)) == ["E-T"]
    m2020 = items("region:3307", e2020)["E-M"]
    assert m2020["region"] == "330781"
    assert m2020["indicators"]["nc_rate"]["coverage"] == 1.0 and m2020["indicators"]["nc_rate"]["value"] == 60.0
    assert items("province", e2020)["E-M"] == m2020 | {"indicators": {
        k: v | {"rank": items("province", e2020)["E-M"]["indicators"][k]["rank"]}
        for k, v in m2020["indicators"].items()}}
    assert items("region:3306", e2019)["E-M"]["region"] == "330602"
    # the county rows: M in 330781 in 2020 (its whole year), in 330602 in 2019
    c2020 = items("province", "/v1/indicators?level=county&period=2020")
    assert (c2020["330781"]["indicators"]["nc_rate"]["members"], c2020["330602"]["indicators"]["nc_rate"]["members"]) \
        == (2, 1)
    c2019 = items("province", "/v1/indicators?level=county&period=2019")
    assert (c2019["330781"]["indicators"]["nc_rate"]["members"], c2019["330602"]["indicators"]["nc_rate"]["members"]) \
        == (1, 2)
    # one enterprise's page follows the same rule: a key sees the periods M spent in its region
    one = "/v1/enterprises/E-M/indicators?period="
    assert [forward[(k, one + "2020")][0] for k in MOVER_KEYS] == [200, 403, 200, 200]
    assert [forward[(k, one + "2019")][0] for k in MOVER_KEYS] == [200, 200, 403, 200]
    by_key = {forward[(k, one + "2020")][1]["indicators"]["nc_rate"]["coverage"] for k in ("province", "region:3307")}
    assert by_key == {1.0}


# --- traps: decided, documented (docs/indicators.md), each with a test ----------------------------------------


def rows_of(first: date, last: date, total: int, nc: int, networked: int | None = None) -> list[EnterpriseDay]:
    net = nc if networked is None else networked
    return [EnterpriseDay(d, total, nc, 0.0, 0.0, net, net) for d in days_between(first, last)]


def coal(first: date, last: date, tce_per_day: float) -> list[ConsumptionDay]:
    return [ConsumptionDay(d, "coal", tce_per_day / 0.7143 * 1000, tce_per_day) for d in days_between(first, last)]


def test_trap_survey_baselines_serve_whole_years_only() -> None:
    """A survey gives annual (year-end) figures: the baseline of a month, a quarter or a year to date is
    the same period of the base year measured, never the annual survey figure."""
    from fmc.indicators.engine import EnterpriseData, Report, compute

    data = EnterpriseData("E", daily=rows_of(date(2019, 1, 1), date(2019, 12, 31), 10, 4),
                          reports=[Report(Period.of_year(2019), value_added_comparable=100.0, employees_avg=10.0)],
                          baseline_values={"nc_rate": 30.0, "labour_productivity": 8.0})
    year = compute("nc_rate", Period.of_year(2019), data, PLAN)
    assert (year.baseline, year.baseline_source, year.target, year.status) == (30.0, "survey", 36.0, "met")
    whole = compute("nc_rate", Period.year_to_date(date(2019, 12, 31)), data, PLAN)
    assert whole.baseline == 30.0  # 1 January to 31 December is the whole year
    for period in (Period.of_month(2019, 12), Period.of_quarter(2019, 4), Period.year_to_date(date(2019, 6, 30))):
        r = compute("nc_rate", period, data, PLAN)
        assert (r.value, r.baseline, r.target, r.status) == (40.0, None, None, "insufficient_data"), period
    assert compute("labour_productivity", Period.of_year(2019), data, PLAN).baseline == 8.0


def test_trap_comparable_prices_never_fall_back_to_current_prices() -> None:
    """value_added_prices = "comparable": the reported comparable value added, else current ÷ the year's
    deflator; in the base year current prices are the comparable ones. A year with neither is
    insufficient_data (it used to take current prices silently: 5 % inflation then passes for +5 %)."""
    from fmc.indicators.engine import EnterpriseData, Report, compute

    reports = [Report(Period.of_year(2016), value_added=1000.0, employees_avg=100.0),
               Report(Period.of_year(2018), value_added=1102.5, employees_avg=100.0)]
    data = EnterpriseData("E", reports=reports)
    base = compute("labour_productivity", Period.of_year(2016), data, PLAN)
    assert base.value == pytest.approx(10.0)  # base year: current prices are the base year's prices
    r = compute("labour_productivity", Period.of_year(2018), data, PLAN)
    assert (r.value, r.status) == (None, "insufficient_data") and dict(r.inputs)["value_added"] == 0.0
    deflated = PLAN.model_copy(update={"policy": PLAN.policy.model_copy(update={"deflator": {2018: 1.1025}})})
    r = compute("labour_productivity", Period.of_year(2018), data, deflated)
    assert r.value == pytest.approx(10.0) and r.status == "missed"  # real productivity flat: +0 %, not +5 %/yr
    current = PLAN.model_copy(update={"policy": PLAN.policy.model_copy(update={"value_added_prices": "current"})})
    assert compute("labour_productivity", Period.of_year(2018), data, current).value == pytest.approx(11.025)


def test_trap_rd_and_new_product_floors_are_for_2020() -> None:
    """提高到1.5%以上，新产品产值率达到35%: levels the plan sets for its end (2020), not floors for every year."""
    from fmc.indicators.engine import EnterpriseData, Report, compute

    reports = [Report(Period.of_year(y), revenue=1000.0, rd_expense=12.0, gross_output=100.0,
                      new_product_output=30.0) for y in (2018, 2020)]
    data = EnterpriseData("E", reports=reports)
    for name in ("rd_intensity", "new_product_ratio"):
        early = compute(name, Period.of_year(2018), data, PLAN)
        assert (early.target, early.status) == (None, "no_target"), name
        late = compute(name, Period.of_year(2020), data, PLAN)
        assert (late.target, late.status) == ({"rd_intensity": 1.5, "new_product_ratio": 35.0}[name], "missed")
    assert PLAN.indicators["rd_intensity"].years == [2020]


def test_trap_group_coverage_weighs_members_by_size() -> None:
    """A county of 19 small members (value added 10 each) and one large one (1000) whose 2020 meter data is
    missing: 19 of 20 members have a figure (0.95 ≥ min_coverage), but they hold 190 of the 1190 of
    value added the county had in 2019 (0.16). Coverage is the smaller share: insufficient_data."""
    from fmc.indicators.engine import EnterpriseData, Report, compute, pool

    def member(name: str, va: float, meter_2020: bool) -> EnterpriseData:
        cons = coal(date(2019, 1, 1), date(2019, 12, 31), va / 365)
        if meter_2020:
            cons += coal(date(2020, 1, 1), date(2020, 12, 31), va / 366)
        reports = [Report(Period.of_year(y), value_added_comparable=va) for y in (2019, 2020)]
        return EnterpriseData(name, consumption=cons, reports=reports)

    members = [member(f"S{i}", 10.0, True) for i in range(19)] + [member("BIG", 1000.0, False)]
    results = [compute("energy_intensity", Period.of_year(2020), m, PLAN) for m in members]
    county = pool(results, PLAN)
    assert county.included == 19 and dict(county.inputs) == pytest.approx({"members": 0.95, "size": 190 / 1190})
    assert (county.coverage, county.value, county.status) == (pytest.approx(190 / 1190), None, "insufficient_data")
    one_small = compute("energy_intensity", Period.of_year(2020), member("S19", 10.0, False), PLAN)
    small = pool([*results[:19], one_small], PLAN)
    assert small.coverage == pytest.approx(0.95) and small.value is not None  # a small member missing: 0.95


def test_trap_the_period_end_figure_is_that_of_the_periods_last_days() -> None:
    """nc_rate_basis = "period_end" takes the period's last day, or the latest day within
    period_end_within_days (7) before it; data that stopped on 15 December gives no year-end figure
    (it used to take whatever day came last: 350/365 days = 0.96 coverage, the 15 December figure)."""
    from fmc.indicators.engine import EnterpriseData, compute

    late = EnterpriseData("E", daily=rows_of(date(2019, 1, 1), date(2019, 12, 26), 10, 4))
    r = compute("nc_rate", Period.of_year(2019), late, PLAN)
    assert r.value == 40.0  # 26 December: 5 days before the end
    stopped = EnterpriseData("E", daily=rows_of(date(2019, 1, 1), date(2019, 12, 15), 10, 4))
    r = compute("nc_rate", Period.of_year(2019), stopped, PLAN)
    assert (r.value, r.status, r.coverage) == (None, "insufficient_data", 0.0)
    assert dict(r.inputs) == {"enterprise_daily": pytest.approx(349 / 365), "period_end": 0.0}
    days = PLAN.model_copy(update={"policy": PLAN.policy.model_copy(update={"nc_rate_basis": "equipment_days"})})
    assert compute("nc_rate", Period.of_year(2019), stopped, days).value == 40.0  # equipment-days: 349/365


def test_trap_networking_basis_and_the_year_end_survey_figure() -> None:
    """The survey's 基期机器联网率 is a year-end figure (年末数). 10 NC machines in 2019; 5 networked to 30
    June (181 days), 9 from 1 July (184 days): over equipment-days (905 + 1656) / 3650 = 70.16 %, at the
    year's end 90 %. Default (equipment_days): the survey's 60 % is not comparable, so no baseline and no
    target (it used to be compared: 70.16 against 60 + 6 = 66 "met", a different quantity). With
    networking_basis = "period_end": 90 % against 66: met."""
    from fmc.indicators.engine import EnterpriseData, compute

    rows = rows_of(date(2019, 1, 1), date(2019, 6, 30), 10, 10, 5) + rows_of(date(2019, 7, 1), date(2019, 12, 31),
                                                                             10, 10, 9)
    data = EnterpriseData("E", daily=rows, baseline_values={"networking_rate": 60.0, "nc_rate": 100.0})
    r = compute("networking_rate", Period.of_year(2019), data, PLAN)
    assert r.value == pytest.approx(100 * (5 * 181 + 9 * 184) / 3650)
    assert (r.baseline, r.target, r.status) == (None, None, "insufficient_data")
    assert "year-end" in (r.note or "")
    year_end = PLAN.model_copy(update={"policy": PLAN.policy.model_copy(update={"networking_basis": "period_end"})})
    r = compute("networking_rate", Period.of_year(2019), data, year_end)
    assert (r.value, r.baseline, r.baseline_source, r.target, r.status) == (90.0, 60.0, "survey", 66.0, "met")
    # an NC rate over equipment-days is not compared with the year-end survey figure either
    days = PLAN.model_copy(update={"policy": PLAN.policy.model_copy(update={"nc_rate_basis": "equipment_days"})})
    assert compute("nc_rate", Period.of_year(2019), data, days).baseline is None
    assert compute("nc_rate", Period.of_year(2019), data, PLAN).baseline == 100.0


def test_trap_a_blank_original_value_is_not_weighed_as_zero() -> None:
    """nc_rate_weight = "asset_value": a machine without 原值 counts 0 in the rollup's sums, so the rate's
    coverage is the share of in-scope equipment with one (``equipment_valued`` on the last day); a rollup
    that does not carry it weighs nothing. 10 machines, 4 NC worth 2 each, 6 others worth 1 -> 8/14."""
    from fmc.indicators.engine import EnterpriseData, compute

    asset = PLAN.model_copy(update={"policy": PLAN.policy.model_copy(update={"nc_rate_weight": "asset_value"})})
    span = days_between(date(2019, 1, 1), date(2019, 12, 31))

    def year(valued: int | None, value_total: float) -> EnterpriseData:
        return EnterpriseData("E", daily=[EnterpriseDay(d, 10, 4, value_total, 8.0, 4, 4, equipment_valued=valued)
                                          for d in span])

    r = compute("nc_rate", Period.of_year(2019), year(10, 14.0), asset)
    assert r.value == pytest.approx(100 * 8 / 14) and dict(r.inputs)["asset_value"] == 1.0
    # one non-NC machine's 原值 is blank: 8/13 would overstate the rate; 9 of 10 valued < 0.95
    r = compute("nc_rate", Period.of_year(2019), year(9, 13.0), asset)
    assert (r.value, r.status, r.coverage) == (None, "insufficient_data", 0.9)
    r = compute("nc_rate", Period.of_year(2019), year(None, 14.0), asset)
    assert (r.value, dict(r.inputs)["asset_value"]) == (None, 0.0)


# --- (a) the population each target is about ---------------------------------------------------------------


async def test_groups_pool_the_population_each_target_is_about(backend: Backend, tmp_path) -> None:
    """一(二): NC and networking rates +2 points a year for 骨干企业 (backbone enterprises); the intensities,
    productivity, R&D and new products for 规模以上 enterprises. County 330602: B1 backbone and above
    designated size (10 machines, 6 NC), B2 above designated size only (10, 2), B3 neither (10, 0).
    The county's NC rate pools the backbone enterprises, B1: 60 %; its energy intensity pools B1 and B2."""
    from fmc.central.registry import read_registry

    sites = {e: Site(e, "330602", "1711") for e in ("B1", "B2", "B3")}
    points: list[Point] = []
    for e, nc in (("B1", 6), ("B2", 2), ("B3", 0)):
        points += equipment(sites[e], days_of(2020), 10, nc) + carrier(sites[e], "electricity", days_of(2020), 1.0)
        points += reports(sites[e], annual(e, 2020, value_added=1e6, value_added_comparable=1e6))
    backend.ingest(points)
    csv = tmp_path / "enterprises.csv"
    csv.write_text("企业编号,企业名称,行政区划代码,行业代码,骨干企业,规上企业\n"
                   "B1,甲,330602,1711,是,是\nB2,乙,330602,1711,否,是\nB3,丙,330602,1711,,\n", encoding="utf-8")
    registry = read_registry(csv)
    assert (registry["B1"].backbone, registry["B2"].backbone, registry["B3"].above_designated_size) == (
        True, False, False)
    service = service_on(backend, registry)
    row = await county_row(service, Period.of_year(2020), "330602")
    nc = row.results["nc_rate"]
    assert (nc.population, nc.members, nc.pooled, nc.value) == ("backbone", 1, ("B1",), 60.0)
    ei = row.results["energy_intensity"]
    assert (ei.population, ei.members, ei.pooled) == ("above_designated_size", 2, ("B1", "B2"))
    assert ei.value == pytest.approx(366 * 2 / 200)
    # without flags (no registry, or no such column) every member counts, and the row says so
    plain = await county_row(service_on(backend), Period.of_year(2020), "330602")
    assert (plain.results["nc_rate"].population, plain.results["nc_rate"].members) == ("all", 3)


def test_registry_population_flags_are_yes_or_no(tmp_path) -> None:
    from fmc.central.registry import read_registry
    from fmc.core.config import ConfigError

    csv = tmp_path / "enterprises.csv"
    csv.write_text("enterprise,region,industry,backbone,above_designated_size\nA,330602,17,Y,1\nB,330602,17,maybe,\n",
                   encoding="utf-8")
    with pytest.raises(ConfigError, match="line 3, column backbone"):
        read_registry(csv)
    csv.write_text("enterprise,region,industry,backbone\nA,330602,17,Y\nB,330602,17,\n", encoding="utf-8")
    got = read_registry(csv)
    assert (got["A"].backbone, got["B"].backbone, got["A"].above_designated_size) == (True, False, None)


async def test_an_enterprise_closed_on_a_day_is_a_member_only_of_the_periods_that_start_by_then(
        backend: Backend, tmp_path) -> None:
    """The plan retires enterprises (一(三) 有序退出; 三(十) 每年淘汰整治"低小散"企业10000家以上). E-X closed on
    30 June 2018: nothing of it arrives after that day. Without a closing date it stays a member of 330602
    in 2019, 2020, … with no figure, its size known from 2016: members and size 9/10 < 0.95, every
    indicator of the county insufficient_data although the nine that exist have complete data. The
    registry's 注销日期 says when it closed: it is a member of the periods that start by then only."""
    from fmc.central.registry import read_registry

    county = "330602"
    points: list[Point] = []
    for i in range(9):
        site = Site(f"E-{i}", county, "1711")
        points += [daily_point(site, EnterpriseDay(d, 10, 5, 0.0, 0.0, 5, 5)) for d in days_of(2016, 2017)]
        points += [daily_point(site, EnterpriseDay(d, 10, 7, 0.0, 0.0, 7, 7)) for d in days_of(2020)]
    closed = Site("E-X", county, "1711")
    points += [daily_point(closed, EnterpriseDay(d, 10, 5, 0.0, 0.0, 5, 5))
               for d in days_of(2016, 2017) + days_between(date(2018, 1, 1), date(2018, 6, 30))]
    backend.ingest(points)
    csv = tmp_path / "enterprises.csv"
    csv.write_text("企业编号,行政区划代码,行业代码,注销日期\nE-X,330602,1711,2018年6月30日\n", encoding="utf-8")
    registry = read_registry(csv)
    assert registry["E-X"].closed_on == date(2018, 6, 30)
    # without the date: a member of 2020 for ever, without a figure
    nc = (await county_row(service_on(backend), Period.of_year(2020), county)).results["nc_rate"]
    assert (nc.members, nc.value, nc.status) == (10, None, "insufficient_data")
    service = service_on(backend, registry)
    nc = (await county_row(service, Period.of_year(2020), county)).results["nc_rate"]
    # the nine enterprises of 2020: 70 % against 50 % + 4·2 = 58 %
    assert (nc.members, nc.value, nc.status) == (9, 70.0, "met"), (
        f"members {nc.members}, excluded {nc.excluded}, coverage {dict(nc.inputs)}: {nc.value} {nc.status}")
    # the periods that start by 30 June 2018 keep it, as published before: 2017 pools all ten
    before = (await county_row(service, Period.of_year(2017), county)).results["nc_rate"]
    plain = (await county_row(service_on(backend), Period.of_year(2017), county)).results["nc_rate"]
    assert (before.members, before.value, before.coverage) == (plain.members, plain.value, plain.coverage) == (
        10, 50.0, 1.0)
    assert (await county_row(service, Period.of_month(2018, 6), county)).results["nc_rate"].members == 10
    assert (await county_row(service, Period.of_month(2018, 7), county)).results["nc_rate"].members == 9
    # data after the closing date says the date is wrong: still a member, its rollups not dropped
    early = {"E-X": dataclasses.replace(registry["E-X"], closed_on=date(2018, 3, 31))}
    q2 = (await county_row(service_on(backend, early), Period.of_quarter(2018, 2), county)).results["nc_rate"]
    assert "E-X" in q2.pooled


# --- (b) provenance on every figure ---------------------------------------------------------------------------


def provenance_answers(backend: Backend, tmp_path, registry: dict[str, RegistryEntry]) -> dict:
    from fastapi.testclient import TestClient

    from fmc.central.api.app import create_app
    from fmc.central.config import ApiConfig
    from fmc.central.keys import KeyStore

    keys = KeyStore(tmp_path / "keys.db")
    _, key = keys.create("province", "province")
    service = IndicatorService(backend.open_store(), PLAN, registry=registry, revalidate_s=3600)
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(service, keys, ApiConfig(keys_file=tmp_path / "keys.db"))) as client:
        out = {
            "county": client.get("/v1/indicators?level=county&period=2020&indicator=nc_rate", headers=headers).json(),
            "enterprise": client.get("/v1/enterprises/E-A/indicators?period=2020", headers=headers).json(),
            "csv": client.get("/v1/indicators?level=county&period=2020&format=csv&lang=en", headers=headers).text,
        }
    keys.close()
    return out


async def test_every_figure_says_where_it_comes_from(backend: Backend, tmp_path) -> None:
    """The seed of defect 1 plus C, without data: JSON, CSV and the ``indicator`` points name the policy
    file and version, the coverage of each input, the baselines' source, whom a group pooled and left out."""
    import asyncio
    import csv
    import io

    from fmc.central.materialize import indicator_points
    from fmc.central.provenance import members_digest, policy_text

    a, b = Site("E-A", "330602", "1711"), Site("E-B", "330602", "1711")
    backend.ingest(equipment(a, days_of(2019, 2020), 20, 8) + equipment(b, days_of(2019, 2020), 10, 2))
    registry = {
        "E-A": RegistryEntry("E-A", "甲", "330602", "1711", {"nc_rate": 30.0}),
        "E-B": RegistryEntry("E-B", "乙", "330602", "1711", {"nc_rate": 10.0}),
        "E-C": RegistryEntry("E-C", "丙", "330602", "1711"),
    }
    got = await asyncio.to_thread(provenance_answers, backend, tmp_path, registry)
    [county] = got["county"]["items"]
    p = county["indicators"]["nc_rate"]["provenance"]
    policy = {"file": "zhejiang-2017-2020.toml", "plan": "zhejiang-2017-2020", "version": "2", "digest": PLAN.digest}
    assert p == {"policy": policy, "inputs": {"members": pytest.approx(2 / 3), "size": 1.0},
                 "baseline_source": None, "population": "all", "pooled": ["E-A", "E-B"],
                 "pooled_digest": members_digest(["E-A", "E-B"]),
                 "excluded": [{"enterprise": "E-C", "reason": "insufficient_data"}], "without_baseline": [],
                 "baseline_sources": {"survey": 2}, "note": None}
    e = got["enterprise"]["indicators"]
    assert e["nc_rate"]["provenance"]["baseline_source"] == "survey"
    assert e["nc_rate"]["provenance"]["inputs"] == {"enterprise_daily": 1.0}
    assert e["energy"]["provenance"]["inputs"] == {} and e["energy"]["provenance"]["policy"] == policy
    rows = list(csv.DictReader(io.StringIO(got["csv"].lstrip("\ufeff"), newline="")))
    nc = next(r for r in rows if r["indicator"] == "nc_rate")
    assert (nc["population"], nc["baseline source"], nc["members left out"]) == ("all", "survey=2",
                                                                                   "E-C:insufficient_data")
    assert nc["coverage per input"] == f"members={2 / 3!r};size=1.0"
    assert nc["pooled members digest"] == members_digest(["E-A", "E-B"]) and nc["policy file"] == policy_text(PLAN)
    # the indicator points carry the same
    service = service_on(backend, registry)
    rows_ = (await service.indicators("county", Period.of_year(2020), Scope())).rows
    rows_ += (await service.indicators("enterprise", Period.of_year(2020), Scope())).rows
    points = indicator_points(rows_, "Asia/Shanghai", policy_text(PLAN))
    county_nc = next(x for x in points if x.tags["level"] == "county" and x.tags["indicator"] == "nc_rate")
    assert {k: county_nc.fields[k] for k in ("policy", "population", "included", "excluded", "baseline_survey",
                                              "baseline_measured", "pooled_digest", "coverage_members")} == {
        "policy": policy_text(PLAN), "population": "all", "included": 2, "excluded": 1, "baseline_survey": 2,
        "baseline_measured": 0, "pooled_digest": members_digest(["E-A", "E-B"]), "coverage_members": 2 / 3}
    a_nc = next(x for x in points if x.tags.get("enterprise") == "E-A" and x.tags["indicator"] == "nc_rate")
    assert (a_nc.fields["baseline_source"], a_nc.fields["coverage_enterprise_daily"]) == ("survey", 1.0)


# --- (c) quarterly and year-to-date reports -------------------------------------------------------------------


REPORTS_CSV = """企业编号,报告期,可比价工业增加值（万元）,从业人员平均人数（人）
E-Q,2020年,1200,
E-Q,2020年第一季度,,100
E-Q,2020年第二季度,,110
E-Q,2020Q3,,120
E-Q,2020-Q4,,130
E-Y,2020年1-3月,250,100
E-Y,2020年1-6月累计,600,104
"""


async def test_quarterly_and_year_to_date_reports(backend: Backend, tmp_path) -> None:
    """E-Q: the annual report gives value added only, the quarters the employees (mean 115): productivity
    2020 = 1200 ÷ 115, per field. E-Y: 1–3月 and 1–6月累计 (cumulative): the second quarter is their
    difference, value added 600 − 250 = 350, employees (6·104 − 3·100) ÷ 3 = 108 -> 350 ÷ 108; 1–6月 is
    its own report: 600 ÷ 104."""
    from fmc.central.reports import read_reports_file

    f = tmp_path / "reports.csv"
    f.write_text(REPORTS_CSV, encoding="utf-8")
    imported = read_reports_file(f)
    assert sorted((r.enterprise, r.period) for r in imported.reports) == [
        ("E-Q", "2020"), ("E-Q", "2020-Q1"), ("E-Q", "2020-Q2"), ("E-Q", "2020-Q3"), ("E-Q", "2020-Q4"),
        ("E-Y", "2020-Q1"), ("E-Y", "2020-YTD-06")]  # 1–3月 is the first quarter
    backend.ingest(report_points(imported.reports, {"E-Q": "330602", "E-Y": "330602"},
                                 {"E-Q": "1711", "E-Y": "1711"}))
    service = service_on(backend)
    lp = await enterprise_result(service, Period.of_year(2020), "E-Q", "labour_productivity")
    assert lp.value == pytest.approx(1200 / 115)
    q2 = await enterprise_result(service, Period.of_quarter(2020, 2), "E-Y", "labour_productivity")
    assert q2.value == pytest.approx(350 / 108)
    h1 = await enterprise_result(service, Period.year_to_date(date(2020, 6, 30)), "E-Y", "labour_productivity")
    assert h1.value == pytest.approx(600 / 104)
    # a month cannot be had from these reports; neither can a year to date through the middle of a month
    assert (await enterprise_result(service, Period.of_month(2020, 5), "E-Y", "labour_productivity")).value is None
    assert (await enterprise_result(service, Period.year_to_date(date(2020, 6, 15)), "E-Y",
                                    "labour_productivity")).value is None


def test_report_periods_compose_from_the_fewest_reports() -> None:
    from fmc.indicators.engine import EnterpriseData, Report, compute

    def va(period: Period, v: float) -> Report:
        return Report(period, value_added_comparable=v, employees_avg=10.0)

    ytd = Period.year_to_date
    data = EnterpriseData("E", reports=[va(Period.of_year(2020), 1000.0), va(ytd(date(2020, 9, 30)), 700.0),
                                        *(va(Period.of_month(2020, m), 80.0) for m in range(1, 13))])
    # Q4 = the year − 1–9月 (2 reports) rather than three months (3 reports): 300, not 240
    assert compute("labour_productivity", Period.of_quarter(2020, 4), data, PLAN).value == pytest.approx(30.0)
    assert compute("labour_productivity", Period.of_year(2020), data, PLAN).value == pytest.approx(100.0)
    # contradicting reports (1–9月 larger than the year) give no figure, never a negative one
    bad = EnterpriseData("E", reports=[va(Period.of_year(2020), 600.0), va(ytd(date(2020, 9, 30)), 700.0)])
    assert compute("labour_productivity", Period.of_quarter(2020, 4), bad, PLAN).value is None


def test_fmc_reports_import_and_the_api_take_quarters_and_years_to_date(tmp_path, capsys) -> None:
    from fastapi.testclient import TestClient

    from fmc.central.api.app import create_app
    from fmc.central.config import ApiConfig
    from fmc.central.keys import KeyStore
    from fmc.cli import main as cli
    from fmc.core.lineprotocol import encode
    from fmc.stores.embedded.store import EmbeddedQueryStore, EmbeddedStore

    store = tmp_path / "store.db"
    raw = EmbeddedStore(store)
    raw.write_lines([encode(p) for p in equipment(Site("E-Q", "330602", "1711"), days_of(2020)[:3], 1, 1)
                     + equipment(Site("E-Y", "330602", "1711"), days_of(2020)[:3], 1, 1)])
    raw.close()
    cfg = tmp_path / "central.toml"
    cfg.write_text('[store]\ntype = "embedded"\npath = "store.db"\n', encoding="utf-8")
    f = tmp_path / "reports.csv"
    f.write_text(REPORTS_CSV, encoding="utf-8")
    assert cli.main(["reports", "import", str(f), "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "quarterly: 5 (2020-Q1, 2020-Q2, 2020-Q3, 2020-Q4)" in out and "year to date (1–N月累计): 1" in out
    assert "wrote 7 report(s)" in out
    keys = KeyStore(tmp_path / "keys.db")
    _, key = keys.create("province", "p")
    service = IndicatorService(EmbeddedQueryStore(store), PLAN)
    with TestClient(create_app(service, keys, ApiConfig(keys_file=tmp_path / "keys.db"))) as client:
        h = {"Authorization": f"Bearer {key}"}
        for period in ("2020-Q3", "2020-YTD-09"):
            r = client.put(f"/v1/enterprises/E-Y/reports/{period}", json={"value_added_comparable": 9e6}, headers=h)
            assert (r.status_code, r.json()["period"]) == (200, period)
        assert client.put("/v1/enterprises/E-Y/reports/2020-Q5", json={"value_added": 1}, headers=h).status_code == 422
        periods = [x["period"] for x in client.get("/v1/enterprises/E-Y/reports?year=2020", headers=h).json()["items"]]
        assert periods == ["2020-Q1", "2020-Q3", "2020-YTD-06", "2020-YTD-09"]
    keys.close()


# --- the examples: `fmc indicators --by county` on deploy/examples -----------------------------------------------


EXAMPLES = Path(__file__).resolve().parents[1] / "deploy" / "examples"
# What the agents of the example enterprises write for 2020 (the plan's last year): machines and NC
# machines in the ledger, tce of electricity and natural gas a day, m³ of water a day.
EXAMPLE_PLANTS = {
    "91330602MA2BXXXX1X": ("330602", "17", 120, 60, 367.5, 18375.0),
    "91330602MA2BX1234K": ("330602", "17", 80, 38, 243.2, 12160.0),
    "91330602MA2C5678QX": ("330602", "17", 20, 2, 30.0, 900.0),
    "SXJN-002": ("330603", "17", 60, 24, 696.0, 45600.0),
    "91330603MA2D9012RX": ("330603", "28", 50, 20, 1122.0, 20400.0),
}


def example_rollups() -> list[Point]:
    points: list[Point] = []
    for enterprise, (region, industry, total, nc, tce_2020, water_2020) in EXAMPLE_PLANTS.items():
        site = Site(enterprise, region, industry)
        points += equipment(site, days_of(2020), total, nc, networked=nc * 3 // 4)
        points += carrier(site, "electricity", days_of(2020), 0.7 * tce_2020 / 366)
        points += carrier(site, "natural_gas", days_of(2020), 0.3 * tce_2020 / 366)
        points += [consumption_point(site, ConsumptionDay(d, "water_intake", water_2020 / 366, m3=water_2020 / 366))
                   for d in days_of(2020)]
    return points


def test_fmc_indicators_by_county_on_the_examples(influx_db, tmp_path, capsys) -> None:
    """``fmc reports import reports.csv -c central.toml`` then ``fmc indicators -c central.toml --year 2020 --by
    county`` with deploy/examples (central.toml pointed at the test's InfluxDB), after the agents' 2020 rollups.

    NC rate of the backbone enterprises, 330602: (60 + 38) / 200 = 49 %, the survey baselines weighed by
    machines (38.5·120 + 41·80) / 200 = 39.5 -> target 47.5: met. Energy intensity of the enterprises above
    designated size, 330603: (696 + 1122) / (2400 + 3400) = 0.3134, the survey intensities weighed by 2016
    value added (0.35·1900 + 0.42·3000) / 4900 = 0.3929 -> target 0.3929·0.96⁴ = 0.3337: met."""
    from fmc.cli import main as cli
    from tests.store_backends import _influx_ingest

    server, db = influx_db
    for name in ("central.toml", "enterprises.csv", "reports.csv"):
        (tmp_path / name).write_bytes((EXAMPLES / name).read_bytes())
    toml = (tmp_path / "central.toml").read_text(encoding="utf-8")
    assert 'url = "http://127.0.0.1:8086"' in toml and 'database = "fmc"' in toml
    toml = toml.replace('url = "http://127.0.0.1:8086"', f'url = "{server.url}"').replace(
        'database = "fmc"', f'database = "{db}"')
    (tmp_path / "central.toml").write_text(toml, encoding="utf-8")
    _influx_ingest(server.url, db)(example_rollups())
    cfg = str(tmp_path / "central.toml")
    assert cli.main(["reports", "import", str(tmp_path / "reports.csv"), "-c", cfg]) == 0
    capsys.readouterr()
    assert cli.main(["indicators", "-c", cfg, "--year", "2020", "--by", "county"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip().startswith(("330602", "330603"))}
    assert set(lines) == {"330602", "330603"}
    assert "49.00 (47.50) ✓" in lines["330602"]
    assert "0.3134 (0.3337) ✓" in lines["330603"]
    for line in lines.values():  # targets and statuses on every county row
        assert line.count("(") >= 5 and ("✓" in line or "✗" in line)
