"""Properties of pooling (hypothesis): a group of one is its member; the order of members changes nothing;
a city pooled from the pooled halves of a county is the city pooled from the members; a member with no
data never turns insufficient_data into a number.

Members are whole enterprises computed by the engine (``compute_all``) from random period sums (what a
store gives for 2020, 2019 and the base year 2016), random reports and random survey baselines.
"""

from __future__ import annotations

import math
from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from fmc.central.config import load_plan
from fmc.indicators.engine import (
    EnterpriseData,
    IndicatorResult,
    Period,
    PooledResult,
    Report,
    compute_all,
    pool,
)
from fmc.indicators.plan import INDICATORS
from fmc.indicators.sums import CarrierSums, DailySums, PeriodSums

PLAN = load_plan()
YEAR = Period.of_year(2020)
YEARS = (2016, 2019, 2020)


@st.composite
def period_sums(draw: st.DrawFn, year: int) -> PeriodSums:
    p = Period.of_year(year)
    daily = None
    if draw(st.booleans()):
        days = draw(st.sampled_from([p.days, p.days, p.days - 5, p.days - 30]))
        total = draw(st.integers(1, 200))
        nc = draw(st.integers(0, total))
        net = draw(st.integers(0, nc))
        daily = DailySums(days, float(total * days), float(nc * days), 0.0, 0.0, float(net * days),
                          float(net * days), p.end, float(total), float(nc), 0.0, 0.0, float(net), float(net))
    carriers = {}
    if draw(st.booleans()):
        rows = draw(st.sampled_from([p.days, p.days, p.days - 40]))
        tce = draw(st.floats(0.0, 1e5, allow_nan=False))
        carriers["electricity"] = CarrierSums("electricity", rows, tce * 8000, tce, rows, 0.0, 0, float(rows),
                                              p.start, p.end)
    return PeriodSums(daily, carriers)


@st.composite
def members(draw: st.DrawFn, name: str) -> EnterpriseData:
    sums = {(Period.of_year(y).start, Period.of_year(y).end): draw(period_sums(y)) for y in YEARS}
    reports = [Report(Period.of_year(y), value_added_comparable=draw(st.floats(1.0, 1e6)),
                      employees_avg=draw(st.floats(1.0, 5e3)), revenue=draw(st.floats(1.0, 1e7)),
                      rd_expense=draw(st.floats(0.0, 1e5)), gross_output=draw(st.floats(1.0, 1e7)),
                      new_product_output=draw(st.floats(0.0, 1e6)))
               for y in YEARS if draw(st.booleans())]
    survey = draw(st.dictionaries(st.sampled_from(["nc_rate", "energy_intensity", "labour_productivity"]),
                                  st.floats(0.1, 100.0), max_size=3))
    return EnterpriseData(name, reports=reports, baseline_values=survey, sums=sums)


def group(size_min: int = 1, size_max: int = 8) -> st.SearchStrategy[list[dict[str, IndicatorResult]]]:
    return st.integers(size_min, size_max).flatmap(
        lambda n: st.tuples(*(members(f"E{i:02d}") for i in range(n))).map(
            lambda ms: [compute_all(YEAR, m, PLAN) for m in ms]))


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


FIGURES = ("value", "baseline", "target", "previous", "yoy", "avg_annual")


@settings(max_examples=80, deadline=None)
@given(group(1, 1))
def test_a_group_of_one_is_its_member(ms: list[dict[str, IndicatorResult]]) -> None:
    [m] = ms
    for name in INDICATORS:
        r, g = m[name], pool([m[name]], PLAN)
        if r.value is None:
            assert (g.value, g.status) == (None, "insufficient_data"), name
            continue
        for f in FIGURES:
            assert close(getattr(g, f), getattr(r, f)), (name, f, getattr(g, f), getattr(r, f))
        assert g.status == r.status, (name, g.status, r.status)
        assert g.pooled == (r.enterprise,) and g.baseline_sources == (
            ((r.baseline_source, 1),) if r.baseline_source else ())
        assert (g.members, g.included, g.assessed, g.met_count) == (1, 1, int(r.status in ("met", "missed")),
                                                                     int(r.status == "met"))


@settings(max_examples=60, deadline=None)
@given(group(2, 8), st.randoms(use_true_random=False))
def test_the_order_of_members_changes_nothing(ms: list[dict[str, IndicatorResult]], rnd) -> None:
    shuffled = list(ms)
    rnd.shuffle(shuffled)
    for name in INDICATORS:
        a, b = pool([m[name] for m in ms], PLAN), pool([m[name] for m in shuffled], PLAN)
        assert a == b, name  # exactly: sums are math.fsum over the members, ids sorted


@settings(max_examples=60, deadline=None)
@given(group(2, 10), st.data())
def test_a_city_from_split_counties_is_the_city_from_its_members(ms: list[dict[str, IndicatorResult]],
                                                                  data: st.DataObject) -> None:
    cut = data.draw(st.integers(1, len(ms) - 1))
    other = data.draw(st.lists(st.sampled_from(range(len(ms))), unique=True))  # a second county split off
    east = [m for i, m in enumerate(ms) if i < cut and i not in other]
    west = [m for i, m in enumerate(ms) if i >= cut and i not in other]
    north = [m for i, m in enumerate(ms) if i in other]
    for name in INDICATORS:
        city = pool([m[name] for m in ms], PLAN)
        counties = [pool([m[name] for m in part], PLAN) for part in (east, west, north) if part]
        again = pool(counties, PLAN)
        assert isinstance(again, PooledResult)
        for f in FIGURES:
            assert close(getattr(again, f), getattr(city, f)), (name, f, getattr(again, f), getattr(city, f))
        assert (again.members, again.included, again.assessed, again.met_count, again.pooled, again.excluded) == (
            city.members, city.included, city.assessed, city.met_count, city.pooled, city.excluded)
        if city.target is None or city.value is None or not math.isclose(city.value, city.target, rel_tol=1e-6):
            assert again.status == city.status, name


@settings(max_examples=60, deadline=None)
@given(group(1, 8), st.booleans())
def test_a_member_without_data_never_turns_insufficient_into_a_number(ms: list[dict[str, IndicatorResult]],
                                                                      with_base_year: bool) -> None:
    base = Period.of_year(2016)
    silent = EnterpriseData("Z-silent")
    if with_base_year:  # known in the base year, silent since
        silent = EnterpriseData("Z-silent", sums={(base.start, base.end): PeriodSums(
            DailySums(366, 3660.0, 366.0, 0.0, 0.0, 0.0, 0.0, date(2016, 12, 31), 10.0, 1.0, 0.0, 0.0, 0.0, 0.0),
            {"electricity": CarrierSums("electricity", 366, 8e5, 100.0, 366, 0.0, 0, 366.0)})},
            reports=[Report(base, value_added_comparable=100.0, employees_avg=10.0)])
    extra = compute_all(YEAR, silent, PLAN)
    for name in INDICATORS:
        before = pool([m[name] for m in ms], PLAN)
        after = pool([*(m[name] for m in ms), extra[name]], PLAN)
        if before.value is None:
            assert after.value is None, name
        if before.status == "insufficient_data":
            assert after.status == "insufficient_data", name
        assert after.coverage <= before.coverage + 1e-12, name
