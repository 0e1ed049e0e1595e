"""Configuration of plant semantics: equipment classes (state rules), meters, coefficients.

These models are sections of the agent's TOML file. ``PlantSections`` holds all of them with
the checks that span sections (a virtual meter's parts exist, nothing is counted twice); the
agent's ``AgentConfig`` can inherit it, or take its fields and call ``check_plant_sections``.

Units and carriers live here too, because a config is only valid when its units are known:
``CANONICAL_UNIT`` (what every amount is converted to), ``AMOUNT_UNITS`` (what a meter may read),
``POWER_UNITS_KW`` (what a power meter may read) and ``LIQUID_VOLUME_L`` (volumes of liquid
fuels, which need a density).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from fmc.core.carriers import CANONICAL_UNIT, CARRIERS
from fmc.core.config import ID_PATTERN, NAME_PATTERN, _Model, equal_values_by_year

# --- carriers and units --------------------------------------------------------------------------

LIQUID_FUELS = frozenset({"diesel", "gasoline", "lpg"})

# carrier -> unit a meter may read -> factor to the canonical unit
AMOUNT_UNITS: dict[str, dict[str, float]] = {
    "electricity": {"kWh": 1.0, "Wh": 1e-3, "MWh": 1e3},
    "natural_gas": {"m3": 1.0},
    "coal": {"kg": 1.0, "t": 1e3},
    "diesel": {"kg": 1.0, "t": 1e3},
    "gasoline": {"kg": 1.0, "t": 1e3},
    "lpg": {"kg": 1.0, "t": 1e3},
    "steam": {"kg": 1.0, "t": 1e3},
    "heat": {"GJ": 1.0, "MJ": 1e-3, "kWh": 3.6e-3, "MWh": 3.6},
    # water meters in China often read in tonnes (吨); 1 t of water is taken as 1 m³
    "water_intake": {"m3": 1.0, "L": 1e-3, "t": 1.0},
    "water_reused": {"m3": 1.0, "L": 1e-3, "t": 1.0},
    "wastewater": {"m3": 1.0, "L": 1e-3, "t": 1.0},
}
# Volumes of liquid fuels, in litres; kg = litres × density_kg_per_l.
LIQUID_VOLUME_L: dict[str, float] = {"L": 1.0, "m3": 1e3}
# A power meter reads one of these; it is integrated into kWh, so its carrier must accept kWh.
POWER_UNITS_KW: dict[str, float] = {"W": 1e-3, "kW": 1.0, "MW": 1e3}
_UNIT_ALIASES = {"m³": "m3", "kwh": "kWh", "KWH": "kWh", "kw": "kW", "KW": "kW", "l": "L"}


def normalize_unit(unit: str) -> str:
    return _UNIT_ALIASES.get(unit.strip(), unit.strip())


def native_to_canonical(carrier: str, unit: str, density_kg_per_l: float | None = None) -> float:
    """Factor from a meter's amount unit to the carrier's canonical unit (raises ValueError)."""
    unit = normalize_unit(unit)
    table = AMOUNT_UNITS.get(carrier)
    if table is None:
        raise ValueError(f"unknown carrier {carrier!r}; use one of: {', '.join(CARRIERS)}")
    if unit in table:
        return table[unit]
    if carrier in LIQUID_FUELS and unit in LIQUID_VOLUME_L:
        if density_kg_per_l is None:
            raise ValueError(
                f"a {carrier} meter in {unit} measures volume, and {carrier} is counted in kg: "
                "set density_kg_per_l (e.g. 0.84 for diesel) or configure the meter in kg"
            )
        return LIQUID_VOLUME_L[unit] * density_kg_per_l
    allowed = sorted(table) + (sorted(LIQUID_VOLUME_L) if carrier in LIQUID_FUELS else [])
    raise ValueError(f"unit {unit!r} is not a unit of {carrier}; use one of: {', '.join(allowed)}")


def known_carrier(v: str) -> str:
    if v not in CARRIERS:
        raise ValueError(f"carrier {v!r} is not one of: {', '.join(CARRIERS)}")
    return v


class _PlantModel(_Model):
    """The plant sections' base (like every config model, it refuses nan and inf)."""


# --- equipment classes: state rules --------------------------------------------------------------

# `offline` is never configured: it comes from silence (no good data for offline_after_s).
EquipmentState = Literal["off", "idle", "running", "down"]
BUILTIN_RULES = (
    "opcua_machinery_item_state",
    "opcua_machinery_operation_mode",
    "opcua_channel_state",
    "packml_state",
)


class _RuleBase(_PlantModel):
    signal: str = Field(pattern=NAME_PATTERN, description="the signal name the rule reads")
    min_dwell_s: float = Field(
        default=0.0, ge=0, le=86_400, description="a changed opinion must hold this long before it is accepted"
    )


class ThresholdRule(_RuleBase):
    """A number with hysteresis: on above `on_above`, off below `off_below`, unchanged between."""

    type: Literal["threshold"]
    on_above: float
    off_below: float | None = Field(default=None, description="default: on_above (no hysteresis band)")
    on_state: EquipmentState = "running"
    # None: below the threshold this rule has no opinion and other rules (or default_state) decide
    off_state: EquipmentState | None = None

    @model_validator(mode="after")
    def _band(self) -> ThresholdRule:
        if self.off_below is not None and self.off_below > self.on_above:
            raise ValueError(
                f"off_below ({self.off_below}) is above on_above ({self.on_above}): hysteresis needs "
                "off_below ≤ on_above; lower off_below or raise on_above"
            )
        if self.off_state == self.on_state:
            raise ValueError(f"on_state and off_state are both {self.on_state!r}; the rule could never change state")
        return self


def normalize_key(value: float | int | str | bool) -> str:
    """The lookup key of a signal value in a state map: 2, 2.0 and "2" are the same key."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        f = float(value)
        return str(int(f)) if f.is_integer() else repr(f)
    text = value.strip()
    try:
        f = float(text)
    except ValueError:
        return text.casefold()
    return str(int(f)) if f.is_integer() else repr(f)


class MapRule(_RuleBase):
    """A value-to-state table, e.g. program_state {0: off, 1: idle, 2: running, 3: down}."""

    type: Literal["map"]
    states: dict[str, EquipmentState] = Field(min_length=1, description="signal value -> state; others: no opinion")

    @field_validator("states")
    @classmethod
    def _keys(cls, v: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, state in v.items():
            k = normalize_key(key)
            if k in out and out[k] != state:
                raise ValueError(f"keys {key!r} and another key mean the same value {k!r} with different states")
            out[k] = state
        return out


class BuiltinRule(_RuleBase):
    """A companion-spec state variable with a built-in table (docs/plant-semantics.md)."""

    type: Literal[
        "opcua_machinery_item_state",
        "opcua_machinery_operation_mode",
        "opcua_channel_state",
        "packml_state",
    ]


StateRule = Annotated[ThresholdRule | MapRule | BuiltinRule, Field(discriminator="type")]


# A class name is what an inventory item's `kind` names: one "word" of Unicode letters, digits, '_'
# or '-' (织机 is fine), the same form as fmc/plant/equipment.py's KIND_PATTERN; checked with Python's re.
CLASS_NAME = re.compile(r"^[^\W_][\w\-]{0,63}$")


class EquipmentClassConfig(_PlantModel):
    """`[[equipment_class]]`: how a kind of equipment's signals become its state.

    Equipment uses the class its inventory `kind` names.
    """

    name: str
    rules: list[StateRule] = Field(default_factory=list)
    # the state of equipment that delivers good data while no rule has an opinion
    default_state: EquipmentState = "idle"
    offline_after_s: float | None = Field(default=None, gt=0, description="default: [plant] offline_after_s")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not CLASS_NAME.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a class name: one word of letters, digits, '_' or '-' (e.g. loom, cnc_lathe, 织机), "
                "at most 64 characters"
            )
        return v


# --- meters ------------------------------------------------------------------------------------------


class MeterConfig(_PlantModel):
    """`[[meter]]`: one physical meter and how its readings become consumption."""

    id: str = Field(pattern=ID_PATTERN)
    carrier: str
    kind: Literal["counter", "interval", "power"] = "counter"
    unit: str | None = Field(default=None, description="the unit of a reading after scale; default: canonical (kW)")
    scale: float = Field(default=1.0, gt=0, description="reading × scale = amount in `unit`")
    density_kg_per_l: float | None = Field(default=None, gt=0, le=2)
    # the value at which the register wraps back to 0, in `unit` (1000000 for 000000.0-999999.9)
    rollover: float | None = Field(default=None, gt=0)
    max_rate_per_h: float | None = Field(default=None, gt=0, description="in `unit` per hour (power: kW)")
    max_gap_s: float = Field(default=1800.0, gt=0, le=7 * 86_400)
    max_jitter: float = Field(default=0.0, ge=0, description="a counter decrease this small is noise, not a reset")
    source: str | None = Field(default=None, pattern=NAME_PATTERN, description="`meter` tag of its readings")
    enterprise_total: bool = Field(default=True, description="counted in the enterprise's consumption_daily")

    _carrier = field_validator("carrier")(lambda cls, v: known_carrier(v))

    @model_validator(mode="after")
    def _units(self) -> MeterConfig:
        if self.unit is None:
            object.__setattr__(self, "unit", "kW" if self.kind == "power" else CANONICAL_UNIT[self.carrier])
        assert self.unit is not None
        object.__setattr__(self, "unit", normalize_unit(self.unit))
        if self.kind == "power":
            if self.unit not in POWER_UNITS_KW:
                raise ValueError(f"a power meter reads W, kW or MW, not {self.unit!r}; set unit = \"kW\"")
            if "kWh" not in AMOUNT_UNITS[self.carrier]:
                raise ValueError(
                    f"power is integrated into kWh, which is not a unit of {self.carrier}; "
                    "use kind = \"counter\" or \"interval\" for this meter"
                )
        else:
            native_to_canonical(self.carrier, self.unit, self.density_kg_per_l)
        if self.rollover is not None and self.kind != "counter":
            raise ValueError("rollover applies to kind = \"counter\" only; remove it")
        return self

    @property
    def reads(self) -> str:
        """The `meter` tag of the readings this meter takes."""
        return self.source or self.id


DEFAULT_MAX_WAIT_S = 3600.0  # a virtual meter's wait when no part needs longer


class VirtualMeterConfig(_PlantModel):
    """`[[virtual_meter]]`: a sum or difference of meters, e.g. main minus a tenant's sub-meter."""

    id: str = Field(pattern=ID_PATTERN)
    carrier: str
    add: list[str] = Field(min_length=1)
    subtract: list[str] = Field(default_factory=list)
    enterprise_total: bool = True
    # unset: DEFAULT_MAX_WAIT_S, or the longest max_gap_s of its parts when that is longer (PlantSections
    # sets it); set: at least that longest max_gap_s, else a part's intervals would come too late
    max_wait_s: float = Field(
        default=DEFAULT_MAX_WAIT_S, gt=0, description="how long after an interval's end to wait for all its parts"
    )

    _carrier = field_validator("carrier")(lambda cls, v: known_carrier(v))

    @model_validator(mode="after")
    def _parts(self) -> VirtualMeterConfig:
        both = set(self.add) & set(self.subtract)
        if both:
            raise ValueError(f"meters {sorted(both)} are both added and subtracted; keep each on one side")
        parts = self.add + self.subtract
        if len(parts) != len(set(parts)):
            raise ValueError("a meter appears twice in add/subtract; list each once")
        return self


# --- coefficients -------------------------------------------------------------------------------------


class CoefficientsConfig(_PlantModel):
    """`[coefficients]`: per-site overrides of the kgce-per-unit table (fmc/plant/tce.py has the defaults)."""

    kgce_per_unit: dict[str, float] = Field(
        default_factory=dict, description="carrier -> kgce per canonical unit, e.g. a measured calorific value"
    )
    electricity_basis: Literal["equivalent", "equal"] = "equivalent"
    electricity_equal_value: dict[int, float] = Field(
        default_factory=dict, description="year -> kgce/kWh (等价值), as published for that year"
    )
    steam_enthalpy_mj_per_kg: float | None = Field(default=None, gt=0, le=5)

    @field_validator("kgce_per_unit")
    @classmethod
    def _carriers(cls, v: dict[str, float]) -> dict[str, float]:
        for carrier, value in v.items():
            if carrier not in CARRIERS:
                raise ValueError(f"{carrier!r} is not a carrier; use one of: {', '.join(CARRIERS)}")
            if not value >= 0:
                raise ValueError(f"{carrier} = {value}: a coefficient is a positive number of kgce per unit")
        return v

    _years = field_validator("electricity_equal_value")(lambda cls, v: equal_values_by_year(v))

    @model_validator(mode="after")
    def _choices(self) -> CoefficientsConfig:
        if self.electricity_basis == "equal" and not self.electricity_equal_value:
            raise ValueError(
                "electricity_basis = \"equal\" needs the published value for each year: add "
                "[coefficients.electricity_equal_value] with lines like 2020 = <kgce per kWh>"
            )
        if self.electricity_basis == "equal" and "electricity" in self.kgce_per_unit:
            raise ValueError(
                "kgce_per_unit.electricity and electricity_basis = \"equal\" contradict each other; keep one"
            )
        if self.steam_enthalpy_mj_per_kg is not None and "steam" in self.kgce_per_unit:
            raise ValueError("steam has both a fixed kgce_per_unit and steam_enthalpy_mj_per_kg; keep one")
        return self


# --- plant-wide settings ------------------------------------------------------------------------------


class PlantConfig(_PlantModel):
    """`[plant]`: plant-wide settings of state tracking, meters and daily rollups."""

    interval_minutes: int = Field(default=15, ge=1, le=1440)
    offline_after_s: float = Field(default=600.0, gt=0, le=86_400)
    networked_min_online_minutes: float = Field(default=1.0, ge=0, le=1440)
    # a timestamp this far ahead of the receive time is a device clock fault: the receive time is used
    max_clock_skew_s: float = Field(default=300.0, ge=0)
    # a step forward in time longer than this emits no empty days or intervals for the span (each of its
    # days gets an enterprise_daily of the ledger's counts alone: docs/plant-semantics.md §4)
    max_catch_up_days: int = Field(default=7, ge=1, le=366)
    # how long a sample may be on its way (a subscription's publishing interval, the network, the
    # commit): the state trackers run this far behind the agent's clock, so a sample stamped at the
    # source is applied at its own time instead of being counted late (`late_samples`)
    sample_delay_s: float = Field(default=10.0, ge=0, le=300)

    @field_validator("interval_minutes")
    @classmethod
    def _divides_day(cls, v: int) -> int:
        if 1440 % v:
            raise ValueError(f"{v} minutes do not divide a day; use 1, 5, 10, 15, 30 or 60")
        return v


def check_interval_alignment(interval_minutes: int, timezone: str) -> None:
    """Raise ValueError when the zone's UTC offset is not a whole number of intervals.

    Intervals are aligned to UTC; they are also aligned to local midnight only when every
    offset the zone uses is a multiple of the interval (China, +08:00: any interval ≤ 60 min
    that divides a day; India, +05:30: at most 30 min).
    """
    tz = ZoneInfo(timezone)
    offsets: set[int] = set()
    for year in range(2000, 2041):
        for month in (1, 4, 7, 10):
            off = datetime(year, month, 1, tzinfo=UTC).astimezone(tz).utcoffset() or timedelta(0)
            offsets.add(int(off.total_seconds()))
    bad = sorted(o for o in offsets if o % (interval_minutes * 60))
    if bad:
        shown = ", ".join(f"{o / 3600:+g} h" for o in bad)
        raise ValueError(
            f"interval_minutes = {interval_minutes} does not align with local midnight in {timezone} "
            f"(UTC offset {shown}); choose an interval that divides the offset, e.g. 15"
        )


# --- all plant sections together ------------------------------------------------------------------------


def _repeated(values: list[str]) -> list[str]:
    return sorted({v for v in values if values.count(v) > 1})


def _check_classes(equipment_class: list[EquipmentClassConfig]) -> None:
    dup = _repeated([c.name for c in equipment_class])
    if dup:
        raise ValueError(f"equipment_class names must be unique; repeated: {dup}")


def _check_meters(meter: list[MeterConfig]) -> None:
    dup = _repeated([m.id for m in meter])
    if dup:
        raise ValueError(f"meter ids must be unique; repeated: {dup}")
    dup = _repeated([m.reads for m in meter])
    if dup:
        raise ValueError(
            f"two meters read the same readings {dup} and would count them twice; give each its own source"
        )


def _setting_error(loc: tuple[str | int, ...], message: str, value: object) -> ValidationError:
    """An error at a setting inside a list entry (``virtual_meter[0].max_wait_s``), raised by a section's
    validator: pydantic prefixes the section, so the ConfigError names the setting itself."""
    return ValidationError.from_exception_data("PlantSections", [InitErrorDetails(
        type=PydanticCustomError("value_error", message), loc=loc, input=value)])


def _virtual_waits(virtual_meter: list[VirtualMeterConfig], meter: list[MeterConfig]) -> list[VirtualMeterConfig]:
    """Each virtual meter waits at least as long as its slowest part may take to deliver an interval.

    A part's interval is final at the latest ``max_gap_s`` after its end (a meter read every 2 h needs
    ``max_gap_s`` ≥ 7200, and delivers an interval up to 2 h after it ends); a virtual meter that
    stops waiting earlier emits the interval without that part. An unset ``max_wait_s`` becomes the
    longest ``max_gap_s`` of the parts (at least DEFAULT_MAX_WAIT_S); a shorter one set is an error.
    """
    gaps = {m.id: m.max_gap_s for m in meter}
    out = []
    for i, vm in enumerate(virtual_meter):
        slowest = max(vm.add + vm.subtract, key=lambda m: gaps.get(m, 0.0))
        need = gaps.get(slowest, 0.0)
        if "max_wait_s" in vm.model_fields_set:
            if vm.max_wait_s < need:
                raise _setting_error((i, "max_wait_s"), (
                    f"is {vm.max_wait_s:g} s, shorter than max_gap_s = {need:g} s of its part {slowest!r}: an "
                    f"interval of {slowest!r} can be final up to {need:g} s after it ends, and {vm.id!r} would "
                    f"be emitted without it; remove max_wait_s (it then waits for the slowest part) or set it to "
                    f"at least {need:g}"), vm.max_wait_s)
        elif need > vm.max_wait_s:
            vm = vm.model_copy(update={"max_wait_s": need})
        out.append(vm)
    return out


def _check_virtual(virtual_meter: list[VirtualMeterConfig], meter: list[MeterConfig]) -> None:
    by_id = {m.id: m for m in meter}
    dup = _repeated([v.id for v in virtual_meter] + list(by_id))
    if dup:
        raise ValueError(f"meter and virtual_meter ids must be unique; repeated: {dup}")
    virtual_ids = {v.id for v in virtual_meter}
    for i, vm in enumerate(virtual_meter):
        for part in vm.add + vm.subtract:
            if part not in by_id:
                known = "a virtual meter cannot be a part" if part in virtual_ids else f"known: {sorted(by_id)}"
                raise ValueError(f"[{i}] ({vm.id}) uses {part!r}, which is not a [[meter]]; {known}")
            if by_id[part].carrier != vm.carrier:
                raise ValueError(
                    f"[{i}] ({vm.id}) is {vm.carrier} but its part {part!r} is {by_id[part].carrier}; "
                    "a virtual meter combines meters of one carrier"
                )
            if vm.enterprise_total and by_id[part].enterprise_total:
                raise ValueError(
                    f"[{i}] ({vm.id}): meter {part!r} is counted in the enterprise total and also through this "
                    "virtual meter, so its consumption would count twice; set enterprise_total = false on one"
                )


def check_plant_sections(
    equipment_class: list[EquipmentClassConfig],
    meter: list[MeterConfig],
    virtual_meter: list[VirtualMeterConfig],
) -> None:
    """The checks that span entries and sections; raises ValueError naming the setting and the fix
    (a virtual meter's ``max_wait_s`` shorter than a part's ``max_gap_s``: ValidationError)."""
    _check_classes(equipment_class)
    _check_meters(meter)
    _check_virtual(virtual_meter, meter)
    _virtual_waits(virtual_meter, meter)


class PlantSections(_PlantModel):
    """The plant sections of the agent config: `[plant]`, `[[equipment_class]]`, `[[meter]]`,
    `[[virtual_meter]]`, `[coefficients]`. AgentConfig may inherit this model (its checks come along;
    `meter` must stay declared before `virtual_meter`)."""

    plant: PlantConfig = PlantConfig()
    equipment_class: list[EquipmentClassConfig] = Field(default_factory=list)
    meter: list[MeterConfig] = Field(default_factory=list)
    virtual_meter: list[VirtualMeterConfig] = Field(default_factory=list)
    coefficients: CoefficientsConfig = CoefficientsConfig()

    # field validators, so that an error names its section (`meter`, `virtual_meter`, …)
    @field_validator("equipment_class")
    @classmethod
    def _classes(cls, v: list[EquipmentClassConfig]) -> list[EquipmentClassConfig]:
        _check_classes(v)
        return v

    @field_validator("meter")
    @classmethod
    def _meters(cls, v: list[MeterConfig]) -> list[MeterConfig]:
        _check_meters(v)
        return v

    @field_validator("virtual_meter")
    @classmethod
    def _virtual(cls, v: list[VirtualMeterConfig], info: ValidationInfo) -> list[VirtualMeterConfig]:
        if "meter" in info.data:  # when [[meter]] itself is wrong, that error is the one to fix first
            _check_virtual(v, info.data["meter"])
            v = _virtual_waits(v, info.data["meter"])
        return v
