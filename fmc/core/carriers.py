"""Energy and water carriers: their names, canonical units and which are water. Pure data.

One place for the carrier list: the plant schema, the meters, the tce table, the indicator engine
and the dashboards all read it from here (extensible by config where a section says so)."""

from __future__ import annotations

from collections.abc import Mapping

CARRIERS = (
    "electricity",
    "natural_gas",
    "coal",
    "diesel",
    "gasoline",
    "lpg",
    "steam",
    "heat",
    "water_intake",
    "water_reused",
    "wastewater",
)


# The unit every amount of a carrier is converted to; coefficients are per this unit.
CANONICAL_UNIT: dict[str, str] = {
    "electricity": "kWh",
    "natural_gas": "m3",
    "coal": "kg",
    "diesel": "kg",
    "gasoline": "kg",
    "lpg": "kg",
    "steam": "kg",
    "heat": "GJ",
    "water_intake": "m3",
    "water_reused": "m3",
    "wastewater": "m3",
}


WATER_CARRIERS = frozenset({"water_intake", "water_reused", "wastewater"})


def is_water(carrier: str) -> bool:
    """Water carriers are reported in m³ (the `m3` field), whatever their tce policy."""
    return carrier in WATER_CARRIERS


# energy is every carrier that is not water (fresh water and other media are not energy by default)
ENERGY_CARRIERS = tuple(c for c in CARRIERS if c not in WATER_CARRIERS)


def equal_value_for(values: Mapping[int, float], year: int) -> float | None:
    """The electricity equal value 等价值 (kgce per kWh) that holds in ``year``: the value of that
    year or of the latest earlier year given (values are published late; the last one stands until
    the next), None when every value given is for a later year. The plant's tce and the plan's
    policy both read it here."""
    known = [y for y in values if y <= year]
    return values[max(known)] if known else None
