"""The one narrow interface the central service reads the store through (DESIGN §3).

Two implementations sit behind it: ``fmc.stores.influxdb.query.InfluxQueryStore`` (InfluxQL over
``/query``, the aggregation pushed into the query) and ``fmc.stores.embedded.store.EmbeddedQueryStore``
(the embedded SQLite store). ``tests/test_store_contract.py`` runs the same contract on both.

What the indicator engine needs is small: per enterprise and period, the sums of
``enterprise_daily`` and ``consumption_daily`` and the period's last ``enterprise_daily`` row,
and the enterprise's reports. The store computes the sums; only one row per enterprise (per
carrier) crosses the wire, whatever the number of days. An enterprise with several gateways (tag
``gateway``) is the sum of its gateways: Σ of every row, ``days`` the distinct local days, the
last day's stocks Σ over gateways of each one's last day, coverage ÷ the gateways; rows without
the tag are gateway ``main`` (docs/design.md §4).

Periods are local calendar days ``start`` to ``end`` inclusive: the store turns them into UTC
bounds ``[local midnight of start, local midnight after end)`` with its time zone (the policy's).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Protocol, Self

from fmc.core.config import ID_PATTERN
from fmc.core.lineprotocol import LineProtocolError, encode
from fmc.core.points import Point
from fmc.core.regions import INDUSTRY_CODE_PATTERN, REGION_PREFIX_PATTERN
from fmc.indicators.reports import REPORT_FIELDS
from fmc.indicators.sums import ALL_SUMS, EnterpriseInfo, PeriodSums, StoredReport, SumsWanted

__all__ = ["REPORT_FIELDS"]  # the figures of `enterprise_report`, for the stores

# Where one report is stored: the tags and the timestamp (UTC ns) of a point that holds it.
ReportPoint = tuple[dict[str, str], int]

INDICATOR = "indicator"  # the materialized figures' measurement (fmc.central.materialize)


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
            if not re.fullmatch(INDUSTRY_CODE_PATTERN, code):
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


def series_digest(tags: Mapping[str, str]) -> bytes:
    """A compact key of a series' tag set: 16 bytes of BLAKE2b over its sorted tags, a tag with an empty
    value left out (InfluxDB answers "" for a tag a series lacks). What a caller of
    ``IndicatorStore.delete_indicators_except`` keeps of each series it wrote: a province's period has
    about 180,000 indicator series, about 17 MB as digests against 100 MB as tag tuples. Two series with
    one digest (odds of about 2^-128 a pair) could only keep a stale series, never delete a written one."""
    present = sorted((k, v) for k, v in tags.items() if v)
    return hashlib.blake2b(json.dumps(present, ensure_ascii=False).encode("utf-8"), digest_size=16).digest()


class IndicatorStore(Protocol):
    """The store as the central service sees it. Every method raises ``StoreQueryError`` when the
    store cannot answer; none returns partial data silently."""

    timezone: str

    async def enterprises(self, scope: Scope, as_of: date | None = None) -> list[EnterpriseInfo]:
        """Every enterprise with a rollup or a report whose tags admit the scope, sorted by id, with its
        tags at the end of the local day ``as_of``: those of its latest point by then (an enterprise
        without a point by then: of its earliest point). ``as_of`` None: its latest point."""
        ...

    async def period_sums(
        self, start: date, end: date, scope: Scope, wanted: SumsWanted = ALL_SUMS, as_of: date | None = None
    ) -> dict[str, PeriodSums]:
        """Per enterprise with data in ``[start, end]`` whose tags at the end of ``as_of`` (default:
        ``end``; ``enterprises(scope, as_of)``) admit the scope: its sums over **all** its rows in the
        period, whatever tags they were recorded under (an enterprise belongs to the region of the
        period's end; the same period of an earlier year is read for the members of the later one)."""
        ...

    async def reports(
        self, first_year: int, last_year: int, scope: Scope, as_of: date | None = None
    ) -> dict[str, list[StoredReport]]:
        """Per enterprise whose tags at the end of ``as_of`` (default: 31 December of ``last_year``) admit
        the scope: all its reports (annual, quarterly, year-to-date and monthly) in those years."""
        ...

    async def report_points(
        self, enterprises: Collection[str], first_year: int, last_year: int
    ) -> dict[tuple[str, str], list[ReportPoint]]:
        """Where the reports of ``enterprises`` in those years are stored: (enterprise, period) -> the
        tags and timestamp of every point holding that report, whatever its tags. ``reports`` merges a
        report's points field by field in an order that is not the order they were written in, so a
        writer writes its figures onto all of them (``IndicatorService.report_points``). Several
        points: the report was written under other tags (an enterprise that moved, by a version that
        wrote reports under its latest region) or at another time zone's period start."""
        ...

    async def write(self, points: Sequence[Point], *, replace: bool = False) -> None:
        """Write points all together: either every point is stored or the call raises and none
        is (reports import, indicator points). A point of a series and time already stored merges
        its fields into the stored ones, as InfluxDB does; ``replace``: it replaces the stored point
        whole, so a field it lacks is gone (materialized indicators: a figure that disappeared must
        not stay beside the new status). One point per series and time in a call.

        InfluxDB has no replace: the stored points that would keep a field are deleted just before
        the write, so should the write then fail, those series have no point at that time (never a
        mix of two computations) until the next write."""
        ...

    async def delete_indicators_except(
        self, period: str, ts_ns: int, keep: Set[bytes], enterprises: Set[str]
    ) -> int:
        """Delete the ``indicator`` points at ``ts_ns`` with the ``period`` tag ``period`` whose series
        (``series_digest`` of its tags) is not in ``keep`` and that are either an enterprise's in
        ``enterprises`` or a group's (no ``enterprise`` tag); the number of points deleted.
        Materialization calls it once a period is written, with every series it wrote for it and the
        enterprises it wrote: a point of that period under tags the pass no longer produces (an
        enterprise's former county or industry, a group with no member left) would otherwise stay on the
        dashboards beside the new one. An enterprise the pass did not compute at all (closed, its data
        past the store's retention) keeps its published points.

        InfluxDB: the period's points are read back one ``indicator`` tag value at a time and only the
        others are deleted (InfluxQL ``DELETE``, which InfluxDB 3 lacks: there a call that must delete
        raises ``StoreQueryError``); the embedded store deletes them in one transaction."""
        ...

    async def ping(self) -> None:
        """Raise StoreQueryError unless the store answers a query that reads no data (health checks)."""
        ...

    async def aclose(self) -> None: ...


class QueryStoreSettings(Protocol):
    """A store plugin's configuration model as the central service's ``[store]``."""

    type: str

    def open_query_store(self, timezone: str) -> IndicatorStore: ...

    def relative_to(self, base: Path) -> Self: ...
