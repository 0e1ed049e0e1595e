"""The one narrow interface the central service reads the store through (DESIGN §3).

Two implementations sit behind it: ``fmc.stores.influxdb.query.InfluxQueryStore`` (InfluxQL over
``/query``, the aggregation pushed into the query) and ``fmc.stores.embedded.store.EmbeddedQueryStore``
(the embedded SQLite store). ``tests/test_store_contract.py`` runs the same contract on both.

What the indicator engine needs is small: per enterprise and period, the sums of
``enterprise_daily`` and ``consumption_daily`` and the period's last ``enterprise_daily`` row,
and the enterprise's reports. The store computes the sums; only one row per enterprise (per
carrier) crosses the wire, whatever the number of days.

Periods are local calendar days ``start`` to ``end`` inclusive: the store turns them into UTC
bounds ``[local midnight of start, local midnight after end)`` with its time zone (the policy's).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Protocol

from fmc.core.config import ID_PATTERN
from fmc.core.lineprotocol import LineProtocolError, encode
from fmc.core.points import Point
from fmc.indicators.reports import REPORT_FIELDS

__all__ = ["REPORT_FIELDS"]  # the figures of `enterprise_report`, for the stores

# [0-9], not \d: Python's \d also matches other scripts' digits (３, ٣), which are not codes
REGION_PREFIX_PATTERN = r"^[0-9]{2}([0-9]{2}){0,2}$"  # 33 province, 3306 city, 330602 county
INDUSTRY_PREFIX_PATTERN = r"^[0-9]{2}([0-9]{1,2})?$"  # GB/T 4754: 17 division, 171 group, 1711 class


class StoreQueryError(Exception):
    """The store could not answer (down, refused the query, answered garbage). The message says
    what and how to fix it; the API maps it to 503."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Which enterprises a query reads: pushed into the query, never applied after the fact.

    ``region_prefix``: a GB/T 2260 code prefix (2, 4 or 6 digits); ``industries``: GB/T 4754 code
    prefixes (an enterprise matches when its industry code starts with one of them);
    ``enterprises``: exact ids. Empty means no restriction. Values are validated on
    construction, so a Scope can be put into a query only in its validated form.
    """

    region_prefix: str | None = None
    industries: tuple[str, ...] = ()
    enterprises: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.region_prefix is not None and not re.fullmatch(REGION_PREFIX_PATTERN, self.region_prefix):
            raise ValueError(f"region prefix {self.region_prefix!r}: 2, 4 or 6 digits (33, 3306, 330602)")
        for code in self.industries:
            if not re.fullmatch(INDUSTRY_PREFIX_PATTERN, code):
                raise ValueError(f"industry {code!r}: a GB/T 4754 code of 2 to 4 digits such as 17")
        for e in self.enterprises:
            if not re.fullmatch(ID_PATTERN, e):
                raise ValueError(f"enterprise {e!r}: letters, digits, '_', '.', '-' (at most 64)")

    def admits(self, enterprise: str, region: str, industry: str) -> bool:
        """The same filter in Python (for the embedded store and for checks)."""
        if self.region_prefix is not None and not region.startswith(self.region_prefix):
            return False
        if self.industries and not any(industry.startswith(p) for p in self.industries):
            return False
        return not self.enterprises or enterprise in self.enterprises


@dataclass(frozen=True, slots=True)
class EnterpriseInfo:
    """An enterprise as the store knows it (the tags of its rollups)."""

    enterprise: str
    region: str
    industry: str


@dataclass(frozen=True, slots=True)
class DailySums:
    """``enterprise_daily`` of one enterprise over one period: Σ of each field over the days
    present, the number of days present, and the fields of the period's last day present."""

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


@dataclass(frozen=True, slots=True)
class CarrierSums:
    """``consumption_daily`` of one enterprise and carrier over one period.

    ``rows``: day rows present; ``tce_rows`` / ``m3_rows``: rows that carry that field (a sum is
    only whole when it equals ``rows``); ``coverage``: Σ of the daily coverage fields."""

    carrier: str
    rows: int
    amount: float
    tce: float
    tce_rows: int
    m3: float
    m3_rows: int
    coverage: float


DAILY_SUM_FIELDS = (
    "equipment_total",
    "equipment_nc",
    "asset_value_total",
    "asset_value_nc",
    "equipment_networked",
    "nc_equipment_networked",
)


@dataclass(frozen=True, slots=True)
class SumsWanted:
    """Which sums ``period_sums`` must compute: the ``enterprise_daily`` fields to sum, and whether
    Σ amount of consumption is needed. A store may compute more; a sum it was not asked for and did
    not compute is NaN (never 0). The day count, the last day and the consumption's tce, m3 and
    coverage are always computed. On InfluxDB each sum costs a pass over every series, so asking for
    what the policy uses only roughly halves a province's query (``indicators.sums_wanted``)."""

    daily: frozenset[str] = frozenset(DAILY_SUM_FIELDS)
    amount: bool = True


ALL_SUMS = SumsWanted()


@dataclass(frozen=True, slots=True)
class PeriodSums:
    """What the engine needs of one enterprise for one period."""

    daily: DailySums | None = None
    carriers: Mapping[str, CarrierSums] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredReport:
    """One ``enterprise_report`` as stored: the period label (``2019`` or ``2019-03``) and the
    figures present, money in yuan."""

    enterprise: str
    period: str
    figures: Mapping[str, float]


def encode_points(points: Sequence[Point]) -> list[str]:
    """Line protocol of every point; StoreQueryError naming the first one that cannot be stored."""
    lines: list[str] = []
    for index, point in enumerate(points):
        try:
            lines.append(encode(point))
        except LineProtocolError as e:
            raise StoreQueryError(
                f"point {index} ({point.measurement}) cannot be stored: {e.detail}; nothing was written"
            ) from None
    return lines


class IndicatorStore(Protocol):
    """The store as the central service sees it. Every method raises ``StoreQueryError`` when the
    store cannot answer; none returns partial data silently."""

    timezone: str

    async def enterprises(self, scope: Scope) -> list[EnterpriseInfo]:
        """Every enterprise in scope with a rollup or a report, sorted by id (the latest tags win
        when an enterprise's region or industry changed)."""
        ...

    async def period_sums(
        self, start: date, end: date, scope: Scope, wanted: SumsWanted = ALL_SUMS
    ) -> dict[str, PeriodSums]:
        """Per enterprise in scope with data in ``[start, end]``: its sums for that period."""
        ...

    async def reports(self, first_year: int, last_year: int, scope: Scope) -> dict[str, list[StoredReport]]:
        """Per enterprise in scope: its reports (annual and monthly) for periods in those years."""
        ...

    async def write(self, points: Sequence[Point]) -> None:
        """Write points all together: either every point is stored or the call raises and none
        is (reports import, indicator points)."""
        ...

    async def fingerprint(self, start: date, end: date, scope: Scope) -> tuple[float, ...]:
        """A cheap summary of the rollups and reports in the period that changes whenever data
        for it is added or overwritten with other values (cache validation)."""
        ...

    async def ping(self) -> None:
        """Raise StoreQueryError unless the store answers a query that reads no data (health checks)."""
        ...

    async def aclose(self) -> None: ...
