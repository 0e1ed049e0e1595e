"""Tonnes of standard coal equivalent (tce) from amounts of energy carriers. Pure.

Coefficients are kgce per canonical unit of the carrier (``fmc.plant.config.CANONICAL_UNIT``);
``tce = amount × coefficient / 1000``. The defaults are the reference values of GB/T 2589
practice (DESIGN §2); a site overrides them in ``[coefficients]`` (e.g. a measured calorific
value of its coal). Water is not energy by default: water carriers have no coefficient, so
their tce is ``None`` and they are counted in m³ instead — unless a site gives them one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fmc.core.carriers import CANONICAL_UNIT, equal_value_for
from fmc.plant.config import CoefficientsConfig

# 1 kgce = 7000 kcal = 29.3076 MJ, so 1 MJ = 0.03412 kgce and 1 GJ = 34.12 kgce.
KGCE_PER_MJ = 0.03412

# kgce per canonical unit (kWh, m³, kg, GJ).
DEFAULT_KGCE_PER_UNIT: Mapping[str, float] = MappingProxyType(
    {
        "electricity": 0.1229,  # per kWh, equivalent value 当量值 (860 kcal ÷ 7000)
        "natural_gas": 1.2143,  # per m³ (8500 kcal/m³ ÷ 7000)
        "coal": 0.7143,  # per kg of raw coal (5000 kcal/kg ÷ 7000)
        "diesel": 1.4571,  # per kg (10200 kcal/kg ÷ 7000)
        "gasoline": 1.4714,  # per kg (10300 kcal/kg ÷ 7000)
        "lpg": 1.7143,  # per kg (12000 kcal/kg ÷ 7000)
        "heat": 34.12,  # per GJ (1000 MJ × 0.03412)
        # per kg of low-pressure steam: 900 kcal/kg ÷ 7000 kcal/kgce. A measured enthalpy is better:
        # [coefficients] steam_enthalpy_mj_per_kg = h gives h × 0.03412 kgce/kg.
        "steam": 0.1286,
    }
)


@dataclass(frozen=True, slots=True)
class Coefficients:
    """A resolved table (one site, one year): carrier -> kgce per canonical unit."""

    kgce_per_unit: Mapping[str, float] = field(default_factory=lambda: DEFAULT_KGCE_PER_UNIT)

    def of(self, carrier: str) -> float | None:
        """kgce per canonical unit, or None when the carrier is not counted as energy."""
        return self.kgce_per_unit.get(carrier)


DEFAULT_COEFFICIENTS = Coefficients()


def coefficients_for(config: CoefficientsConfig | None = None, year: int | None = None) -> Coefficients:
    """The table for a site and a year: defaults, then the site's overrides.

    With ``electricity_basis = "equal"`` electricity uses the equal value 等价值 of ``year``, or of
    the latest earlier year configured (values are published late; the last one stands until then).
    """
    table = dict(DEFAULT_KGCE_PER_UNIT)
    if config is None:
        return Coefficients(MappingProxyType(table))
    table.update(config.kgce_per_unit)
    if config.steam_enthalpy_mj_per_kg is not None:
        table["steam"] = config.steam_enthalpy_mj_per_kg * KGCE_PER_MJ
    if config.electricity_basis == "equal":
        if year is None:
            raise ValueError("electricity_basis = \"equal\" depends on the year: pass the year of the amounts")
        value = equal_value_for(config.electricity_equal_value, year)
        if value is None:
            first = min(config.electricity_equal_value)
            raise ValueError(
                f"no electricity equal value for {year} or earlier (the first is {first}); add "
                f"[coefficients.electricity_equal_value] {year} = <kgce per kWh>"
            )
        table["electricity"] = value
    return Coefficients(MappingProxyType(table))


def tce(carrier: str, amount: float, coefficients: Coefficients = DEFAULT_COEFFICIENTS) -> float | None:
    """Tonnes of standard coal equivalent of ``amount`` (in the carrier's canonical unit).

    None when the carrier has no coefficient (water by default): not energy, not zero energy.
    """
    if carrier not in CANONICAL_UNIT:
        raise ValueError(f"unknown carrier {carrier!r}")
    kgce = coefficients.of(carrier)
    if kgce is None:
        return None
    return amount * kgce / 1000.0


