"""tce from amounts: defaults of DESIGN §2, site overrides, the electricity equal value by year."""

from __future__ import annotations

import pytest

from fmc.plant.config import CoefficientsConfig
from fmc.plant.tce import DEFAULT_COEFFICIENTS, KGCE_PER_MJ, coefficients_for, tce


@pytest.mark.parametrize(
    ("carrier", "amount", "expected"),
    [
        # 1000 kWh × 0.1229 kgce/kWh = 122.9 kgce = 0.1229 tce
        ("electricity", 1000.0, 0.1229),
        # 500 m³ × 1.2143 = 607.15 kgce = 0.60715 tce
        ("natural_gas", 500.0, 0.60715),
        # 2000 kg raw coal × 0.7143 = 1428.6 kgce = 1.4286 tce
        ("coal", 2000.0, 1.4286),
        # 100 kg diesel × 1.4571 = 145.71 kgce = 0.14571 tce
        ("diesel", 100.0, 0.14571),
        # 100 kg gasoline × 1.4714 = 147.14 kgce
        ("gasoline", 100.0, 0.14714),
        # 10 kg LPG × 1.7143 = 17.143 kgce
        ("lpg", 10.0, 0.017143),
        # 5 GJ × 34.12 = 170.6 kgce
        ("heat", 5.0, 0.1706),
        # 1000 kg low-pressure steam × 0.1286 = 128.6 kgce
        ("steam", 1000.0, 0.1286),
    ],
)
def test_default_coefficients(carrier: str, amount: float, expected: float) -> None:
    assert tce(carrier, amount) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("carrier", ["water_intake", "water_reused", "wastewater"])
def test_water_is_not_energy_by_default(carrier: str) -> None:
    assert tce(carrier, 123.0) is None
    assert DEFAULT_COEFFICIENTS.of(carrier) is None


def test_unknown_carrier_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown carrier"):
        tce("uranium", 1.0)


def test_site_override_measured_calorific_value() -> None:
    # this site's coal is measured at 5500 kcal/kg: 5500 / 7000 = 0.785714… kgce/kg
    cfg = CoefficientsConfig(kgce_per_unit={"coal": 5500 / 7000})
    c = coefficients_for(cfg)
    # 7000 kg × 5500/7000 = 5500 kgce = 5.5 tce
    assert tce("coal", 7000.0, c) == pytest.approx(5.5, rel=1e-12)
    # the other carriers keep their defaults: 1000 kWh -> 0.1229 tce
    assert tce("electricity", 1000.0, c) == pytest.approx(0.1229)


def test_water_gets_a_coefficient_only_by_policy() -> None:
    # a site counting fresh water as an energy-carrying medium: 0.0857 kgce/m³ (GB/T 2589 新水)
    c = coefficients_for(CoefficientsConfig(kgce_per_unit={"water_intake": 0.0857}))
    # 1000 m³ × 0.0857 = 85.7 kgce = 0.0857 tce
    assert tce("water_intake", 1000.0, c) == pytest.approx(0.0857)
    assert tce("wastewater", 1000.0, c) is None


def test_steam_by_enthalpy() -> None:
    # 2.8 MJ/kg × 0.03412 kgce/MJ = 0.095536 kgce/kg; 10 t = 10000 kg -> 955.36 kgce = 0.95536 tce
    c = coefficients_for(CoefficientsConfig(steam_enthalpy_mj_per_kg=2.8))
    assert c.of("steam") == pytest.approx(2.8 * KGCE_PER_MJ)
    assert tce("steam", 10_000.0, c) == pytest.approx(0.95536, rel=1e-12)


def test_electricity_equal_value_by_year() -> None:
    cfg = CoefficientsConfig(electricity_basis="equal", electricity_equal_value={2019: 0.306, 2020: 0.3055})
    # 2020: 1000 kWh × 0.3055 = 305.5 kgce = 0.3055 tce
    assert tce("electricity", 1000.0, coefficients_for(cfg, 2020)) == pytest.approx(0.3055)
    # 2019: 0.306
    assert tce("electricity", 1000.0, coefficients_for(cfg, 2019)) == pytest.approx(0.306)
    # 2021 not yet published: the latest earlier value (2020) stands
    assert coefficients_for(cfg, 2021).of("electricity") == 0.3055
    with pytest.raises(ValueError, match="no electricity equal value for 2018"):
        coefficients_for(cfg, 2018)
    with pytest.raises(ValueError, match="depends on the year"):
        coefficients_for(cfg)


def test_config_rejects_contradictions_with_a_fix() -> None:
    with pytest.raises(ValueError, match="needs the published value"):
        CoefficientsConfig(electricity_basis="equal")
    with pytest.raises(ValueError, match="keep one"):
        CoefficientsConfig(kgce_per_unit={"steam": 0.12}, steam_enthalpy_mj_per_kg=2.8)
    with pytest.raises(ValueError, match="is not a carrier"):
        CoefficientsConfig(kgce_per_unit={"wood": 0.5})


def test_one_carrier_list_and_one_equal_value_rule() -> None:
    """The carriers every part reads, and the equal value the plant and the plan both look up."""
    from fmc.core.carriers import CANONICAL_UNIT, CARRIERS, ENERGY_CARRIERS, WATER_CARRIERS, equal_value_for
    from fmc.indicators.plan import Policy

    assert set(CANONICAL_UNIT) == set(CARRIERS)
    assert set(ENERGY_CARRIERS) | WATER_CARRIERS == set(CARRIERS) and not set(ENERGY_CARRIERS) & WATER_CARRIERS
    assert ENERGY_CARRIERS == ("electricity", "natural_gas", "coal", "diesel", "gasoline", "lpg", "steam", "heat")
    values = {2017: 0.30, 2019: 0.29}
    assert [equal_value_for(values, y) for y in (2016, 2017, 2018, 2019, 2025)] == [None, 0.30, 0.30, 0.29, 0.29]
    policy = Policy(electricity_basis="equal", electricity_equal_value=values)
    assert [policy.electricity_kgce(y) for y in (2016, 2018, 2020)] == [None, 0.30, 0.29]
