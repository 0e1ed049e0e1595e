"""Indicator figures as ``indicator`` points for the dashboards (DESIGN §4). Pure.

One point per row, indicator and period:

- tags: ``level`` (enterprise, county, city, province, industry), ``region`` (the enterprise's
  county code, or the group's region code; for an industry row the region it is pooled within),
  ``industry`` (the enterprise's code or the industry row's 2-digit division; absent on region
  rows), ``enterprise`` (enterprise rows only), ``indicator``, ``period`` (``2019``,
  ``2019-Q2``, ``2019-03``, ``2019-YTD``);
- fields: ``value``, ``target``, ``baseline``, ``yoy``, ``avg_annual`` (floats, each absent when
  there is no such figure: never 0 for silence), ``coverage`` (float), ``status`` (string: met,
  missed, insufficient_data, no_target), ``met`` (integer 1/0, only when the status is met or
  missed), ``rank`` (integer, when ranked); on group rows also ``members``, ``assessed``,
  ``met_count`` (integers) and ``met_share`` (float, when any member was assessed);
- provenance fields (``fmc.central.provenance.provenance_fields``): ``policy`` (string), ``coverage_<input>``
  (float per input); enterprise rows ``baseline_source`` (measured / survey); group rows ``population``,
  ``included``, ``excluded``, ``without_baseline``, ``baseline_measured``, ``baseline_survey`` (integers) and
  ``pooled_digest`` (string);
- time: local midnight of the period's first day.

A point is written again with the same series and time when a figure changes, and that write
replaces the stored point whole (``IndicatorStore.write(points, replace=True)``): the store keeps the
latest figures of each period and none of an earlier computation's. Both stores merge the fields of a
second write by default, so a figure that went away (the value of a period that became
insufficient_data, a lost rank, a year-on-year change) would otherwise stay beside the new status.
A point of the period under tags the new pass does not write (the enterprise's former region or
industry: it belongs to the region of each period's end; a county or industry group left without
members) is deleted once the period is written (``IndicatorStore.delete_indicators_except``), so a
period has one point per enterprise and indicator, under its current tags.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

from fmc.central.provenance import provenance_fields
from fmc.central.store import INDICATOR
from fmc.core.points import FieldValue, Point, Priority
from fmc.indicators.engine import IndicatorResult, Period, PooledResult
from fmc.indicators.pooling import GroupRow

MEASUREMENT = INDICATOR


def period_tag(period: Period) -> str:
    """The ``period`` tag: the period's label, a year-to-date figure as ``YYYY-YTD`` (one series
    per year, overwritten as the year advances)."""
    return f"{period.year}-YTD" if period.kind == "ytd" else period.label


def period_start_ns(period: Period, tz: str) -> int:
    start = datetime(period.start.year, period.start.month, period.start.day, tzinfo=ZoneInfo(tz))
    return int(start.timestamp()) * 1_000_000_000


def result_fields(result: IndicatorResult, rank: int | None) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {}
    for name in ("value", "target", "baseline", "yoy", "avg_annual"):
        v = getattr(result, name)
        if v is not None:
            fields[name] = float(v)
    fields["coverage"] = float(result.coverage)
    fields["status"] = result.status
    if result.status in ("met", "missed"):
        fields["met"] = 1 if result.status == "met" else 0
    if rank is not None:
        fields["rank"] = int(rank)
    if isinstance(result, PooledResult):
        fields["members"] = int(result.members)
        fields["assessed"] = int(result.assessed)
        fields["met_count"] = int(result.met_count)
        if result.met_share is not None:
            fields["met_share"] = float(result.met_share)
    return fields


def indicator_points(rows: Iterable[GroupRow], tz: str, policy: str | None = None) -> list[Point]:
    """``indicator`` points of the rows (one period's rows; any levels); ``policy``: the policy file's
    ``provenance.policy_text``, written on every point."""
    points: list[Point] = []
    for row in rows:
        base_tags = {"level": row.level, "region": row.region}
        if row.industry is not None:
            base_tags["industry"] = row.industry
        if row.enterprise is not None:
            base_tags["enterprise"] = row.enterprise
        for name, result in row.results.items():
            tags = {**base_tags, "indicator": name, "period": period_tag(result.period)}
            points.append(
                Point(
                    MEASUREMENT,
                    tags,
                    {**result_fields(result, row.ranks.get(name)), **provenance_fields(result, policy)},
                    period_start_ns(result.period, tz),
                    Priority.ROLLUP,
                )
            )
    return points
