"""What the indicator engine reads of the store: per enterprise and period, the sums of the daily
rollups and the reports (the store interface, ``fmc.central.store``, returns these)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date


@dataclass(frozen=True, slots=True)
class EnterpriseInfo:
    """An enterprise as the store knows it (the tags of its rollups)."""

    enterprise: str
    region: str
    industry: str
    # the plan populations it belongs to ("backbone", "above_designated_size"; from the registry);
    # None: not known, so it counts in every population
    populations: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class DailySums:
    """``enterprise_daily`` of one enterprise over one period: Σ of each field over the days
    present, the number of days present, and the fields of the period's last day present. A field a
    store was not asked for (``SumsWanted``) is NaN, never 0.

    A day the agent was off for longer than it catches up has a row of the ledger's counts without
    the networked counts (``fmc.plant.rollups.enterprise_daily_unobserved``): it is one of ``days``,
    not of ``networked_days``, and adds nothing to the networked sums."""

    days: int
    equipment_total: float
    equipment_nc: float
    asset_value_total: float
    asset_value_nc: float
    equipment_networked: float
    nc_equipment_networked: float
    last_day: date
    last_equipment_total: float
    last_equipment_nc: float
    last_asset_value_total: float
    last_asset_value_nc: float
    # the last day's networked counts (a networking rate at the period's end)
    last_equipment_networked: float = math.nan
    last_nc_equipment_networked: float = math.nan
    # the last day's in-scope equipment with an original value (原值) in the ledger (NaN: the rollup does
    # not carry it): how much of an asset-value NC rate is weighed, not taken as 0
    last_equipment_valued: float = math.nan
    # the days present with the networked counts (the networking rate's coverage; NaN: not told, taken
    # as ``days``). The last day's networked counts are NaN when that day has none
    networked_days: float = math.nan


@dataclass(frozen=True, slots=True)
class CarrierSums:
    """``consumption_daily`` of one enterprise and carrier over one period.

    ``rows``: day rows present; ``tce_rows`` / ``m3_rows``: rows that carry that field (a sum is
    only whole when it equals ``rows``); ``coverage``: Σ of the daily coverage fields;
    ``first_day`` / ``last_day``: the first and last local day with a row (None: not known, the
    period's bounds are assumed) — which carriers an enterprise has when is read from these;
    ``last_gateways``: the gateways with a row of the carrier on ``last_day`` (empty: not known), whose
    rows after it (``PeriodSums.gateway_last_days``) tell a carrier removed from a gateway gone silent;
    ``gateway_coverage``: with several gateways measuring the carrier, each one's Σ of daily coverage
    (``coverage`` is then their mean; empty: one gateway, or not known), which a gateway retired within
    the period weighs by its days in service (``engine.coverage_in_service``)."""

    carrier: str
    rows: int
    amount: float
    tce: float
    tce_rows: int
    m3: float
    m3_rows: int
    coverage: float
    first_day: date | None = None
    last_day: date | None = None
    last_gateways: tuple[str, ...] = ()
    gateway_coverage: tuple[tuple[str, float], ...] = ()


DAILY_SUM_FIELDS = (
    "equipment_total",
    "equipment_nc",
    "asset_value_total",
    "asset_value_nc",
    "equipment_networked",
    "nc_equipment_networked",
)
# the stocks of the period's last day (equipment and asset value at period end, 年末数)
LAST_DAY_FIELDS = DAILY_SUM_FIELDS[:4]
# the fields of ``consumption_daily`` a period sums
CARRIER_SUM_FIELDS = ("amount", "tce", "m3", "coverage")


@dataclass(frozen=True, slots=True)
class SumsWanted:
    """Which sums ``period_sums`` must compute: the ``enterprise_daily`` fields to sum, and whether
    Σ amount of consumption is needed. A store may compute more; a sum it was not asked for and did
    not compute is NaN (never 0). The day count, the last day and the consumption's tce, m3 and
    coverage are always computed. On InfluxDB each sum costs a pass over every series, so asking for
    what the policy uses only roughly halves a province's query (``indicators.sums_wanted``)."""

    daily: frozenset[str] = frozenset(DAILY_SUM_FIELDS)
    amount: bool = True
    last_networked: bool = True  # the last day's networked counts
    valued: bool = True  # the last day's equipment with an original value (equipment_valued)


ALL_SUMS = SumsWanted()


@dataclass(frozen=True, slots=True)
class PeriodSums:
    """What the engine needs of one enterprise for one period. ``gateway_last_days``: each gateway's last
    local day with a row (``enterprise_daily`` or ``consumption_daily``) in the period; empty: not known."""

    daily: DailySums | None = None
    carriers: Mapping[str, CarrierSums] = field(default_factory=dict)
    gateway_last_days: Mapping[str, date] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredReport:
    """One ``enterprise_report`` as stored: the period label (``2019`` or ``2019-03``) and the
    figures present, money in yuan."""

    enterprise: str
    period: str
    figures: Mapping[str, float]
