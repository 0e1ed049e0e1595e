"""Daily enterprise rollups (`enterprise_daily`, `consumption_daily`) and local-day arithmetic. Pure.

The central indicator engine needs nothing else from an agent (DESIGN §4): the NC rate and the
networking rate are pooled from ``enterprise_daily`` (equipment-days), energy and water from
``consumption_daily``. Both are written once per local day, stamped at that day's local
midnight (in UTC nanoseconds), with priority ROLLUP (never dropped from a full spool); a
``consumption_daily`` is written again, whole, when an interval of its day comes after it
(``meter_day_totals``, ``add_to_day_total``; the plant model keeps the totals).

Also here, because the tracker, the meters and the rollups share them: ``Site`` (the tags of
the enterprise), ``InventoryItem`` (the minimal equipment ledger entry the rollups need) and the
local-day helpers (days are cut at local midnight in the enterprise's time zone).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo

from fmc.core.carriers import is_water
from fmc.core.localtime import local_day_bounds, local_day_start_ns, zone
from fmc.core.points import Point, Priority
from fmc.plant.tce import DEFAULT_COEFFICIENTS, Coefficients
from fmc.plant.tce import tce as tce_of

if TYPE_CHECKING:
    from fmc.core.config import EnterpriseConfig
    from fmc.plant.config import PlantSections


# --- site and inventory -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Site:
    """The enterprise a point belongs to: its tags and its time zone."""

    enterprise: str
    region: str
    industry: str
    timezone: str = "Asia/Shanghai"
    # the `gateway` tag of the rollups (None: no tag, as an fmc before gateway ids wrote them)
    gateway: str | None = None

    @classmethod
    def from_enterprise(cls, enterprise: EnterpriseConfig) -> Site:
        return cls(enterprise.id, enterprise.region, enterprise.industry, enterprise.timezone, enterprise.gateway)

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)

    def tags(self, **extra: str) -> dict[str, str]:
        tags = {"enterprise": self.enterprise, "region": self.region, "industry": self.industry, **extra}
        if self.gateway is not None:
            tags["gateway"] = self.gateway
        return tags


@dataclass(frozen=True, slots=True)
class InventoryItem:
    """One line of the equipment ledger (设备台账), as the rollups need it.

    The inventory loader converts its richer records to this. Equipment that is never
    connected is still an item: it counts in the denominators.
    """

    id: str
    nc: bool
    asset_value: float | None = None  # original value 原值, yuan
    commissioned: date | None = None
    decommissioned: date | None = None
    in_scope: bool = True  # production equipment the indicators count
    kind: str = "production"

    def in_scope_on(self, day: date) -> bool:
        """In scope on the commissioning day (a whole day) up to the day before decommissioning."""
        if not self.in_scope:
            return False
        if self.commissioned is not None and day < self.commissioned:
            return False
        return not (self.decommissioned is not None and day >= self.decommissioned)


# --- local days -----------------------------------------------------------------------------------------


# --- inputs the rollups read (EquipmentDay and MeterInterval fit these) ---------------------------------


class EquipmentDayLike(Protocol):
    """May also carry ``alive_confirmations`` (``EquipmentDay`` does): good data of the day without a sample."""

    @property
    def equipment(self) -> str: ...
    @property
    def day(self) -> date: ...
    @property
    def good_samples(self) -> int: ...
    @property
    def online_s(self) -> float: ...


class IntervalLike(Protocol):
    @property
    def meter(self) -> str: ...
    @property
    def carrier(self) -> str: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...
    @property
    def amount(self) -> float: ...  # canonical unit
    @property
    def covered_ns(self) -> int: ...


# --- enterprise_daily -------------------------------------------------------------------------------------


def is_networked(good_samples: int, online_s: float, min_online_minutes: float) -> bool:
    """Networked on a day: it delivered good data that day, for at least the minimum online time.

    Both are required: online time runs on for up to offline_after_s after a sample, so a sample
    at 23:59 would otherwise make the next day "networked" without any data on it. Good data of a
    day (``good_samples``) is its good samples plus the times a live subscription confirmed that
    day that the last good values still hold (``EquipmentDay.alive_confirmations``).
    """
    return good_samples >= 1 and online_s >= min_online_minutes * 60.0


def enterprise_daily(
    day: date,
    site: Site,
    inventory: Iterable[InventoryItem],
    equipment_days: Iterable[EquipmentDayLike],
    *,
    networked_min_online_minutes: float = 1.0,
) -> Point:
    """The `enterprise_daily` point of one local day.

    The population is the inventory: items in scope that day (``InventoryItem.in_scope_on``),
    connected or not. Days of equipment not in the inventory are ignored (they are in no
    denominator). Several records of one equipment for the day are added up (disjoint parts of
    the day from successive agent runs). An unknown asset value counts as 0 in the sums, and
    ``equipment_valued`` counts the items that have one, so the asset-value NC rate can say how much
    of the ledger its sums cover (docs/indicators.md).
    """
    online: dict[str, float] = defaultdict(float)
    samples: dict[str, int] = defaultdict(int)
    for rec in equipment_days:
        if rec.day == day:
            online[rec.equipment] += rec.online_s
            # a live subscription confirming unchanged good values is good data of that day
            samples[rec.equipment] += rec.good_samples + getattr(rec, "alive_confirmations", 0)
    total = nc = networked = nc_networked = valued = 0
    value_total = value_nc = 0.0
    seen: set[str] = set()
    for item in inventory:
        if item.id in seen or not item.in_scope_on(day):
            continue  # a ledger listing an id twice must not count it twice
        seen.add(item.id)
        value = item.asset_value or 0.0
        valued += int(item.asset_value is not None)
        on = is_networked(samples.get(item.id, 0), online.get(item.id, 0.0), networked_min_online_minutes)
        total += 1
        value_total += value
        networked += int(on)
        if item.nc:
            nc += 1
            value_nc += value
            nc_networked += int(on)
    return Point(
        "enterprise_daily",
        site.tags(),
        {
            "equipment_total": total,
            "equipment_nc": nc,
            "asset_value_total": float(value_total),
            "asset_value_nc": float(value_nc),
            "equipment_networked": networked,
            "nc_equipment_networked": nc_networked,
            "equipment_valued": valued,
        },
        local_day_start_ns(day, site.tz),
        Priority.ROLLUP,
    )


# the fields of ``enterprise_daily`` measured from live data (the rest is the ledger's)
NETWORKED_FIELDS = ("equipment_networked", "nc_equipment_networked")


def enterprise_daily_unobserved(day: date, site: Site, inventory: Iterable[InventoryItem]) -> Point:
    """The `enterprise_daily` point of a local day the agent has no data of (it was off for more
    than ``max_catch_up_days``; the trackers skip such days): the ledger's counts and asset values,
    which need no data, and no networked counts, which are not known. The NC rate counts the day;
    the networking rate's coverage does not (docs/indicators.md)."""
    point = enterprise_daily(day, site, inventory, ())
    for name in NETWORKED_FIELDS:
        del point.fields[name]
    return point


# --- consumption_daily ------------------------------------------------------------------------------------


def counted_meters(sections: PlantSections) -> dict[str, str]:
    """meter id -> carrier of the meters and virtual meters that make up the enterprise's consumption."""
    out = {m.id: m.carrier for m in sections.meter if m.enterprise_total}
    out.update({v.id: v.carrier for v in sections.virtual_meter if v.enterprise_total})
    return out


@dataclass(slots=True)
class MeterDayTotal:
    """What one counted meter's intervals of a local day add up to in its `consumption_daily`."""

    carrier: str
    amount: float = 0.0
    covered_ns: int = 0
    # the start of the latest interval counted: a meter emits its intervals in order, so one that
    # starts at or before it was counted already (delivered twice)
    last_start_ns: int = -1


def meter_day_totals(
    day: date, site: Site, intervals: Iterable[IntervalLike], meters: Mapping[str, str]
) -> dict[str, MeterDayTotal]:
    """meter id -> its total of the day, for every one of the counted ``meters`` (a meter without
    intervals: zero); an interval delivered twice counts once (the one with more covered time),
    intervals of other meters and other days are ignored."""
    start, end = local_day_bounds(day, site.tz)
    best: dict[tuple[str, int], IntervalLike] = {}
    for iv in intervals:
        if iv.meter in meters and start <= iv.start_ns < end:
            key = (iv.meter, iv.start_ns)
            if key not in best or iv.covered_ns > best[key].covered_ns:
                best[key] = iv
    totals = {meter: MeterDayTotal(carrier) for meter, carrier in meters.items()}
    for iv in sorted(best.values(), key=lambda iv: iv.start_ns):
        add_to_day_total(totals[iv.meter], iv)
    return totals


def add_to_day_total(total: MeterDayTotal, iv: IntervalLike) -> bool:
    """Count ``iv`` in its meter's day ``total``; whether the amount or the covered time changed. An
    interval at or before the latest one counted was counted already: it changes nothing."""
    if iv.start_ns <= total.last_start_ns:
        return False
    total.last_start_ns = iv.start_ns
    covered = min(iv.covered_ns, iv.end_ns - iv.start_ns)
    total.amount += iv.amount
    total.covered_ns += covered
    return iv.amount != 0 or covered != 0


def consumption_daily(
    day: date,
    site: Site,
    intervals: Iterable[IntervalLike],
    meters: Mapping[str, str],
    *,
    coefficients: Coefficients = DEFAULT_COEFFICIENTS,
) -> list[Point]:
    """`consumption_daily` points of one local day, one per carrier of ``meters``.

    ``meters``: the meters counted in the enterprise's consumption (meter id -> carrier; see
    ``counted_meters``); intervals of other meters are ignored. An interval belongs to the day
    its start falls in. amount is in the carrier's canonical unit; tce is written for carriers
    with a coefficient, m3 for water carriers. coverage = covered time of the counted meters'
    intervals ÷ (number of meters × length of the day): the share of expected intervals that were
    complete, when each interval is complete or empty; a missing interval counts as empty.
    """
    return consumption_daily_of(day, site, meter_day_totals(day, site, intervals, meters), coefficients=coefficients)


def consumption_daily_of(
    day: date, site: Site, totals: Mapping[str, MeterDayTotal], *, coefficients: Coefficients = DEFAULT_COEFFICIENTS
) -> list[Point]:
    """`consumption_daily` points of one local day from its meters' totals (``meter_day_totals``):
    one per carrier, its coverage over the meters of that carrier in ``totals``."""
    start, end = local_day_bounds(day, site.tz)
    amount: dict[str, float] = defaultdict(float)
    covered: dict[str, int] = defaultdict(int)
    n_meters: dict[str, int] = defaultdict(int)
    for total in totals.values():
        n_meters[total.carrier] += 1
        amount[total.carrier] += total.amount
        covered[total.carrier] += total.covered_ns
    points = []
    for carrier in sorted(n_meters):
        fields: dict[str, float] = {"amount": amount[carrier]}
        t = tce_of(carrier, amount[carrier], coefficients)
        if t is not None:
            fields["tce"] = t
        if is_water(carrier):
            fields["m3"] = amount[carrier]
        fields["coverage"] = covered[carrier] / (n_meters[carrier] * (end - start))
        points.append(Point("consumption_daily", site.tags(carrier=carrier), dict(fields), start, Priority.ROLLUP))
    return points
