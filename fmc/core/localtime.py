"""Local calendar days in UTC nanoseconds: the periods every rollup and indicator is cut by. Pure."""

from __future__ import annotations

import calendar
from datetime import date, datetime, time
from functools import lru_cache
from zoneinfo import ZoneInfo

NS = 1_000_000_000


@lru_cache(maxsize=32)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_date(ts_ns: int, tz: ZoneInfo) -> date:
    """The local calendar date of a UTC timestamp (local midnights fall on whole seconds)."""
    return datetime.fromtimestamp(ts_ns // NS, tz).date()


def local_day_start_ns(day: date, tz: ZoneInfo) -> int:
    """UTC nanoseconds of the local midnight that starts ``day``.

    Where a DST change skips midnight, the day starts at the instant of the change.
    """
    local_midnight = datetime.combine(day, time(0), tzinfo=tz)
    return calendar.timegm(local_midnight.utctimetuple()) * NS


def local_day_bounds(day: date, tz: ZoneInfo) -> tuple[int, int]:
    """[start, end) of a local day in UTC nanoseconds (23 or 25 hours on DST change days)."""
    return local_day_start_ns(day, tz), local_day_start_ns(date.fromordinal(day.toordinal() + 1), tz)
