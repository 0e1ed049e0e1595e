"""The central indicator service: the store's sums → the engine → levels, cached (DESIGN §3).

``fmc api``, ``fmc indicators`` and the materializer all go through ``IndicatorService``. It
reads through the narrow ``fmc.central.store.IndicatorStore`` interface only; the engine
(``fmc.indicators.engine``) and the aggregation (``fmc.indicators.pooling``) are pure.

Caching: the expensive step is an enterprise's figures for a period (three periods of sums and
the reports). They are cached per (period, scope); a request whose scope is narrower than a
cached wider entry is served by filtering that entry. A background task recomputes every cached
entry each ``revalidate_s`` (so new data for a period shows up within that time) and drops
entries nobody asked for in a while; a report written through the service drops the entries it
affects at once. A level's rows carry an ETag derived from their content, so an unchanged
recomputation keeps the ETag (and clients' 304s).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import gc
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from fmc.central.config import CentralSettings, MaterializeConfig, load_config_plan
from fmc.central.materialize import indicator_points, period_start_ns, period_tag
from fmc.central.provenance import policy_text
from fmc.central.registry import RegistryEntry
from fmc.central.store import IndicatorStore, Scope, StoreQueryError, series_digest
from fmc.central.sums_cache import PartialsStore, SumsCache
from fmc.core.config import ConfigError, InventoryProblem
from fmc.core.points import Point
from fmc.indicators.engine import EnterpriseData, Period, Report, sums_wanted
from fmc.indicators.plan import INDICATORS, Targets
from fmc.indicators.pooling import LEVELS, EnterpriseFigures, GroupRow, Level, enterprise_figures, group_rows
from fmc.indicators.reports import MONEY_FIELDS, EnterpriseReport, ReportsError, period_months
from fmc.indicators.sums import EnterpriseInfo, PeriodSums, StoredReport

log = logging.getLogger("fmc.central")

_YUAN_PER_WAN = 10_000.0  # reports are stored in yuan; the engine takes 10⁴ yuan (万元)
# materialization turns this many rows into points at a time, not a whole period's (181,500 points at
# province scale) at once
ROWS_PER_BATCH = 500


class UnknownEnterprise(KeyError):
    """No rollup, report or registry entry names this enterprise."""


@dataclass(frozen=True, slots=True)
class Enterprise:
    enterprise: str
    name: str | None
    region: str
    industry: str


@dataclass(frozen=True, slots=True)
class Computed:
    level: Level
    period: Period
    rows: list[GroupRow]
    etag: str
    computed_at: datetime


@dataclass(slots=True)
class _Figures:
    period: Period
    scope: Scope
    members: list[EnterpriseFigures]
    digest: str
    computed_at: datetime
    last_used: float = field(default_factory=time.monotonic)
    _by_id: dict[str, EnterpriseFigures] | None = None

    def select(self, scope: Scope) -> list[EnterpriseFigures]:
        """The members in ``scope``; by id lookup when the scope names enterprises only."""
        if scope == self.scope:
            return self.members
        if scope.enterprises and scope.region_prefix is None and not scope.industries:
            if self._by_id is None:
                self._by_id = {f.info.enterprise: f for f in self.members}
            return [self._by_id[e] for e in sorted(set(scope.enterprises)) if e in self._by_id]
        return [f for f in self.members if scope.admits(f.info.enterprise, f.info.region, f.info.industry)]


@dataclass(slots=True)
class _KeyLock:
    """The lock of one (period, scope) and how many requests hold it or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


# --- periods ---------------------------------------------------------------------------------------------

_PERIOD_FORMS = "2019, 2019-Q2, 2019-03, 2019-YTD or 2019-YTD-06-30"


def parse_period(text: str, today: date) -> Period:
    """A period from its label; ``YYYY-YTD`` runs through yesterday (local) or the year's end."""
    m = re.fullmatch(r"([0-9]{4})(?:-(Q[1-4]|0[1-9]|1[0-2]|YTD(?:-([0-9]{2})-([0-9]{2}))?))?", text)
    if m is None:
        raise ValueError(f"period {text!r}: write {_PERIOD_FORMS}")
    year = int(m.group(1))
    if not 1990 <= year <= 2100:
        raise ValueError(f"period {text!r}: the year must lie between 1990 and 2100")
    part = m.group(2)
    if part is None:
        return Period.of_year(year)
    if part.startswith("Q"):
        return Period.of_quarter(year, int(part[1]))
    if part.startswith("YTD"):
        if m.group(3) is not None:
            try:
                through = date(year, int(m.group(3)), int(m.group(4)))
            except ValueError:
                raise ValueError(f"period {text!r}: no such day") from None
            return Period.year_to_date(through)
        through = min(today - timedelta(days=1), date(year, 12, 31))
        if through.year != year:
            raise ValueError(f"period {text!r}: no day of {year} has ended yet")
        return Period.year_to_date(through)
    return Period.of_month(year, int(part))


# --- the service -----------------------------------------------------------------------------------------


def report_period(label: str) -> Period:
    """The engine's period of a stored report's period tag (2019, 2019-03, 2019-Q2, 2019-YTD-06)."""
    year, first, last = period_months(label)
    if first == 1 and last == 12:
        return Period.of_year(year)
    if first == last:
        return Period.of_month(year, first)
    if first == 1 and "YTD" in label:
        return Period.year_to_date(date(year, last, calendar.monthrange(year, last)[1]))
    return Period.of_quarter(year, last // 3)


def _report_of(stored: StoredReport) -> Report:
    period = report_period(stored.period)
    figures = {
        name: (value / _YUAN_PER_WAN if name in MONEY_FIELDS else value) for name, value in stored.figures.items()
    }
    return Report(period=period, **figures)


def _digest(members: Iterable[EnterpriseFigures]) -> str:
    """What the figures and every group pooled from them depend on: each member's results with the
    parts pooling adds up, and where it is pooled (region, industry, populations)."""
    h = hashlib.sha256()
    for f in members:
        info = f.info
        h.update(repr((info.enterprise, info.region, info.industry,
                       None if info.populations is None else sorted(info.populations))).encode())
        for name in INDICATORS:
            r = f.results[name]
            h.update(repr((r.value, r.target, r.baseline, r.previous, r.coverage, r.status, r.baseline_source,
                           r.inputs, r.numerator, r.denominator, r.base_numerator, r.base_denominator,
                           r.prev_numerator, r.prev_denominator, r.size, r.scale)).encode())
    return h.hexdigest()[:32]


def _rows_etag(level: Level, period: Period, scope: Scope, digest: str, rows: Sequence[GroupRow]) -> str:
    h = hashlib.sha256(repr((level, period.label, period.end, scope, digest)).encode())
    if level != "enterprise":  # pooled rows depend only on the members' figures, but cheap to include
        for row in rows:
            h.update(row.key.encode())
    return h.hexdigest()[:32]


class IndicatorService:
    """Figures per enterprise and level for any period, from one store and one plan."""

    def __init__(
        self,
        store: IndicatorStore,
        targets: Targets,
        *,
        registry: Mapping[str, RegistryEntry] | None = None,
        revalidate_s: float = 60.0,
        max_entries: int = 64,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        materialize: MaterializeConfig | None = None,
    ) -> None:
        self.store = store
        self.targets = targets
        self.timezone = targets.policy.timezone
        self._tz = ZoneInfo(self.timezone)
        self._registry = dict(registry or {})
        self._warned: set[tuple[str, str, date]] = set()  # retired gateways found writing (_check_retirements)
        self._revalidate_s = revalidate_s
        self._max_entries = max_entries
        self._max_rows = 50 * max_entries
        self._now = now
        self._figures: dict[tuple[Period, Scope], _Figures] = {}
        self._rows: dict[tuple[Level, Period, Scope], tuple[str, Computed]] = {}
        self._locks: dict[tuple[Period, Scope], _KeyLock] = {}  # the keys being computed or waited for
        self._generation = 0  # counts invalidations (report writes through the service)
        self._year_invalidated: dict[int, int] = {}  # year -> the generation of its last invalidation
        # per as-of day (None: latest): (when read, enterprises, by id)
        self._enterprises: dict[date | None, tuple[float, list[Enterprise], dict[str, Enterprise]]] = {}
        self._enterprises_lock = asyncio.Lock()
        self._materialize = materialize
        self._wanted = sums_wanted(targets.policy)  # only the sums this plan's policy reads
        # whom each indicator's groups pool: the plan's population where the registry has its flag column
        flags = {p for p in ("backbone", "above_designated_size")
                 if any(getattr(e, p) is not None for e in self._registry.values())}
        self.populations = {name: (p if p in flags else "all") for name in INDICATORS
                            for p in [targets.policy.populations.get(name, "all")]}
        self._reported_years: set[int] = set()  # years a report PUT changed since the last materialization
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_config(cls, cfg: CentralSettings) -> IndicatorService:
        from fmc.central.registry import read_registry

        targets = load_config_plan(cfg)
        registry = read_registry(cfg.registry.csv) if cfg.registry.csv is not None else {}
        store = make_store(cfg, targets.policy.timezone)
        if cfg.cache.path is not None:
            if isinstance(store, PartialsStore):
                try:
                    store = SumsCache(store, cfg.cache.path, sums_wanted(targets.policy), source=store.cache_source,
                                      recent_days=cfg.cache.recent_days,
                                      full_refresh_s=cfg.cache.full_refresh_h * 3600)
                except StoreQueryError as e:  # not a cache, unreadable: a setting to fix, not a failure
                    raise ConfigError(cfg.cache.path, [("cache.path", str(e), "set [cache] path to a file of "
                                                        "its own, or delete the file: it is rebuilt")]) from None
            else:
                log.info("[cache] path: the %s store sums its own rows; no cache is used",
                         getattr(cfg.store_settings(), "type", "?"))
        return cls(store, targets, registry=registry, revalidate_s=cfg.api.revalidate_s, materialize=cfg.materialize)

    # --- lifecycle ---

    async def start(self) -> None:
        """Background work of a long-running service: the sums cache brought up to date, revalidation, and
        materialization when enabled."""
        if not self._tasks:
            if isinstance(self.store, SumsCache):
                self._tasks.append(asyncio.create_task(self._sync_quietly(), name="fmc-sums-cache"))
            self._tasks.append(asyncio.create_task(self._revalidate_loop(), name="fmc-revalidate"))
            if self._materialize is not None and self._materialize.enabled:
                self._tasks.append(asyncio.create_task(self._materialize_loop(self._materialize),
                                                       name="fmc-materialize"))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.store.aclose()

    async def sync(self) -> None:
        """Bring the sums cache up to date with the store (nothing without a cache): a one-shot command
        calls it first; a running service on each revalidation."""
        if isinstance(self.store, SumsCache):
            await self.store.refresh()

    async def _sync_quietly(self) -> None:
        try:
            await self.sync()
        except Exception as e:  # the store may be down at start: the cache answers, the next revalidation tries
            log.warning("sums cache: bringing it up to date failed: %s", e)

    # --- queries ---

    async def check(self) -> None:
        """StoreQueryError unless the store answers now (not from the cache)."""
        await self.store.ping()

    def today(self) -> date:
        return self._now().astimezone(self._tz).date()

    def parse_period(self, text: str) -> Period:
        return parse_period(text, self.today())

    async def enterprises(self, scope: Scope, as_of: date | None = None) -> list[Enterprise]:
        """Enterprises in scope: those the store knows (its tags) and those of the registry. ``as_of``: by
        their region and industry at the end of that day (docs/indicators.md, "Enterprises that move");
        None: their latest."""
        everyone, by_id = await self._all_enterprises(as_of)
        if scope.enterprises and scope.region_prefix is None and not scope.industries:
            return [by_id[e] for e in sorted(set(scope.enterprises)) if e in by_id]
        return [e for e in everyone if scope.admits(e.enterprise, e.region, e.industry)]

    async def enterprise(self, enterprise_id: str, as_of: date | None = None) -> Enterprise | None:
        """One enterprise, with its region and industry at the end of ``as_of`` (None: its latest)."""
        return (await self._all_enterprises(as_of))[1].get(enterprise_id)

    async def regions_at(self, enterprise_id: str, days: Iterable[date]) -> dict[date, str | None]:
        """One enterprise's region at the end of each day (its latest tags by then, as for a period's
        figures), from the store by its id alone: cheap for a few days, however large the province."""
        wanted = sorted(set(days))
        scope = Scope(enterprises=(enterprise_id,))
        today = self.today()  # a day still to come: its latest tags
        found = await asyncio.gather(*(self.store.enterprises(scope, as_of=d if d < today else None) for d in wanted))
        entry = self._registry.get(enterprise_id)
        out: dict[date, str | None] = {}
        for day, infos in zip(wanted, found, strict=True):
            info = next((i for i in infos if i.enterprise == enterprise_id), None)
            out[day] = info.region if info is not None else entry.region if entry is not None else None
        return out

    async def _all_enterprises(self, as_of: date | None = None) -> tuple[list[Enterprise], dict[str, Enterprise]]:
        async with self._enterprises_lock:
            cached = self._enterprises.get(as_of)
            if cached is not None and time.monotonic() - cached[0] < self._revalidate_s:
                return cached[1], cached[2]
            stored = await self.store.enterprises(Scope(), as_of=as_of)
            merged: dict[str, Enterprise] = {}
            for info in stored:
                entry = self._registry.get(info.enterprise)
                merged[info.enterprise] = Enterprise(info.enterprise, entry.name if entry else None, info.region,
                                                     info.industry)
            for entry in self._registry.values():
                if entry.enterprise not in merged:
                    merged[entry.enterprise] = Enterprise(entry.enterprise, entry.name, entry.region, entry.industry)
                elif as_of is None and (merged[entry.enterprise].region, merged[entry.enterprise].industry) != (
                    entry.region, entry.industry
                ):
                    # the data's tags decide where its figures are pooled; say when the registry disagrees
                    log.warning("enterprise %s: registry says region %s industry %s, its data %s %s",
                                entry.enterprise, entry.region, entry.industry,
                                merged[entry.enterprise].region, merged[entry.enterprise].industry)
            result = sorted(merged.values(), key=lambda e: e.enterprise)
            if len(self._enterprises) >= 4 * self._max_entries:
                self._enterprises.clear()
            self._enterprises[as_of] = (time.monotonic(), result, merged)
            return result, merged

    async def indicators(self, level: Level, period: Period, scope: Scope) -> Computed:
        """The rows of ``level`` for ``period`` over the enterprises in ``scope`` (cached)."""
        if level not in LEVELS:
            raise ValueError(f"level {level!r}: one of {', '.join(LEVELS)}")
        figures = await self._figures_for(period, scope)
        key = (level, period, scope)
        cached = self._rows.get(key)
        if cached is not None and cached[0] == figures.digest:
            return cached[1]
        members = figures.select(scope)
        if len(members) > 64:  # pooling thousands of members: keep the event loop serving meanwhile
            rows = await asyncio.to_thread(group_rows, level, members, self.targets, region_scope=scope.region_prefix,
                                           populations=self.populations)
        else:
            rows = group_rows(level, members, self.targets, region_scope=scope.region_prefix,
                              populations=self.populations)
        computed = Computed(level, period, rows, _rows_etag(level, period, scope, figures.digest, rows),
                            figures.computed_at)
        self._rows[key] = (figures.digest, computed)
        if len(self._rows) > self._max_rows:  # one entry per enterprise asked for: bounded, oldest first out
            for old in list(self._rows)[: len(self._rows) - self._max_rows]:
                del self._rows[old]
        return computed

    async def reports(self, scope: Scope, first_year: int, last_year: int) -> dict[str, list[StoredReport]]:
        return await self.store.reports(first_year, last_year, scope)

    async def put_report(self, report: EnterpriseReport) -> None:
        """Write one report (atomically) and drop the cached figures it changes."""
        if await self.enterprise(report.enterprise, as_of=self._report_as_of(report)) is None:
            raise UnknownEnterprise(report.enterprise)
        await self.store.write(await self.report_points([report]))
        self.invalidate_year(int(report.period[:4]))
        self._reported_years.add(int(report.period[:4]))

    def _report_as_of(self, report: EnterpriseReport) -> date | None:
        """The day whose end gives a report's tags: its period's last day (None: a period still running)."""
        end = report_period(report.period).end
        return end if end < self.today() else None

    async def report_points(self, reports: Sequence[EnterpriseReport]) -> list[Point]:
        """The points that store ``reports`` (``fmc reports import``, a report ``PUT``). Each goes under
        the tags of its enterprise at the end of its period, the region and industry its figures of the
        period are pooled by (docs/indicators.md, "Enterprises that move"), and onto every point that
        already holds the same report under other tags or at another time (written by a version that
        used the latest region, or before later data placed the enterprise elsewhere): the stores merge
        a report's points in an order that is not the order of writing, so the new figures must be on
        all of them to be the ones read. ``ReportsError`` names every unknown enterprise; no points then."""
        from fmc.central.reports import report_points

        by_end: dict[date | None, list[EnterpriseReport]] = {}
        for report in reports:
            by_end.setdefault(self._report_as_of(report), []).append(report)
        points: list[Point] = []
        problems: list[InventoryProblem] = []
        for as_of, group in by_end.items():  # one enterprise list per period end: a few per import
            known = (await self._all_enterprises(as_of))[1]
            found = {r.enterprise: known[r.enterprise] for r in group if r.enterprise in known}
            try:
                points += report_points(group, {e: k.region for e, k in found.items()},
                                        {e: k.industry for e, k in found.items()}, tz=self.timezone)
            except ReportsError as e:
                problems += e.report_problems
        if problems:  # an unknown enterprise with reports of several period ends is named once
            raise ReportsError("<reports>", list(dict.fromkeys(problems)))
        if not points:
            return points
        years = [int(r.period[:4]) for r in reports]
        stored = await self.store.report_points({r.enterprise for r in reports}, min(years), max(years))
        written = {(p.series_key(), p.ts_ns) for p in points}
        also: list[Point] = []
        for point in points:
            for tags, ts_ns in stored.get((point.tags["enterprise"], point.tags["period"]), ()):
                other = Point(point.measurement, tags, point.fields, ts_ns, point.priority)
                if (other.series_key(), ts_ns) not in written:
                    written.add((other.series_key(), ts_ns))
                    also.append(other)
        return points + also

    def invalidate_year(self, year: int) -> None:
        """Drop cached figures that read ``year``: its own periods, the next year's (year on year),
        and every period when it is the base year. A computation already under way that reads it is
        not kept either (``_invalidated_since``)."""
        self._generation += 1
        self._year_invalidated[year] = self._generation
        for key in list(self._figures):
            p = key[0]
            if year == self.targets.base_year or p.year in (year, year + 1):
                del self._figures[key]
        self._rows = {k: v for k, v in self._rows.items() if (k[1], k[2]) in self._figures}

    def _invalidated_since(self, generation: int, period: Period) -> bool:
        """Whether a year ``period``'s figures read was invalidated after ``generation``."""
        return any(g > generation for y, g in self._year_invalidated.items()
                   if y == self.targets.base_year or period.year in (y, y + 1))

    # --- figures and their cache ---

    async def _figures_for(self, period: Period, scope: Scope) -> _Figures:
        wide = self._figures.get((period, Scope()))
        if wide is not None:
            wide.last_used = time.monotonic()
            return wide
        key = (period, scope)
        # A key's lock lives while requests hold it or wait for it; the last one out drops it (kept
        # for every key ever asked, the locks outgrew the max_entries figures they guard: a client
        # looping over days × enterprises). Nothing is awaited between finding the lock and counting
        # oneself in, nor between the last count out and the drop: a request that comes while the
        # lock is held joins it, so there is still one computation per key.
        held = self._locks.get(key)
        if held is None:
            held = self._locks[key] = _KeyLock()
        held.users += 1
        try:
            async with held.lock:  # one computation per key, however many clients ask at once
                cached = self._figures.get(key)
                if cached is not None:
                    cached.last_used = time.monotonic()
                    return cached
                for _ in range(3):
                    generation = self._generation
                    entry = await self._compute(period, scope)
                    if not self._invalidated_since(generation, period):
                        self._store_entry(key, entry)
                        return entry
                    # a report written meanwhile (a PUT): what was read before it is not kept
                return entry  # written to again and again: answered as read, kept by none
        finally:
            held.users -= 1
            if held.users == 0:
                del self._locks[key]

    def _store_entry(self, key: tuple[Period, Scope], entry: _Figures) -> None:
        self._figures[key] = entry
        # Hundreds of thousands of long-lived result objects: keep them out of the cyclic GC's full
        # passes, which would otherwise stall every request for tens of ms (they hold no cycles,
        # so reference counting still frees them when the entry goes).
        gc.freeze()
        while len(self._figures) > self._max_entries:
            oldest = min(self._figures, key=lambda k: self._figures[k].last_used)
            del self._figures[oldest]
        self._rows = {k: v for k, v in self._rows.items() if (k[1], k[2]) in self._figures}

    async def _compute(self, period: Period, scope: Scope) -> _Figures:
        started = time.perf_counter()
        periods = list(dict.fromkeys([period, period.in_year(period.year - 1), period.in_year(self.targets.base_year)]))
        first_year = min(p.year for p in periods)
        # an enterprise belongs to the region of the period's end, with all of its data (the stores and
        # the enterprise list apply the same rule): every period's sums and the reports are read as of then
        sums_list, reports, infos = await asyncio.gather(
            asyncio.gather(*(self.store.period_sums(p.start, p.end, scope, self._wanted, as_of=period.end)
                             for p in periods)),
            self.store.reports(first_year, period.year, scope, as_of=period.end),
            self.enterprises(scope, as_of=period.end),
        )
        members = await asyncio.to_thread(self._members, period, periods, list(sums_list), reports, infos)
        digest = await asyncio.to_thread(_digest, members)
        log.info("computed %s for %d enterprise(s) in %.2f s", period.label, len(members),
                 time.perf_counter() - started)
        return _Figures(period, scope, members, digest, self._now())

    def _members(
        self,
        period: Period,
        periods: list[Period],
        sums_list: list[dict[str, PeriodSums]],
        reports: Mapping[str, list[StoredReport]],
        infos: list[Enterprise],
    ) -> list[EnterpriseFigures]:
        members = []
        for info in infos:
            entry = self._registry.get(info.enterprise)
            if entry is not None and entry.closed_on is not None and period.start > entry.closed_on:
                # closed before the period began: not a member (it would be one without a figure for ever,
                # its size from earlier years keeping its county insufficient_data). Rollups in the period
                # say it still existed: the date is wrong, and its data is not dropped
                if info.enterprise not in sums_list[0]:
                    continue
                log.warning("enterprise %s: the registry says it closed on %s, but it has data in %s; counted as "
                            "a member: fix its closing date", info.enterprise, entry.closed_on, period.label)
            sums = {(p.start, p.end): s[info.enterprise] for p, s in zip(periods, sums_list, strict=True)
                    if info.enterprise in s}
            if entry is not None and entry.retired_gateways:
                self._check_retirements(info.enterprise, entry.retired_gateways, sums.get((period.start, period.end)))
            data = EnterpriseData(
                enterprise=info.enterprise,
                reports=[_report_of(r) for r in reports.get(info.enterprise, ())],
                baseline_values=entry.baseline_values if entry else {},
                sums=sums,
                retired_gateways=entry.retired_gateways if entry else {},
                commissioned_gateways=entry.commissioned_gateways if entry else {},
            )
            populations = None if entry is None else frozenset(
                p for p in ("backbone", "above_designated_size") if getattr(entry, p) is not False)
            if entry is None and any(p != "all" for p in self.populations.values()):
                populations = frozenset()  # flags are kept in the registry: an enterprise missing there has none
            members.append(enterprise_figures(EnterpriseInfo(info.enterprise, info.region, info.industry, populations),
                                              period, data, self.targets))
        return members

    def _check_retirements(self, enterprise: str, retired: Mapping[str, date], sums: PeriodSums | None) -> None:
        """Warn, once per gateway and day, of a gateway the registry declares retired that wrote rows after
        that day: the declaration or the gateway id is wrong (its rows still count, and it weighs at least
        the days it covered)."""
        if sums is None:
            return
        for gateway, last_day in sorted(retired.items()):
            wrote = sums.gateway_last_days.get(gateway)
            if wrote is not None and wrote > last_day and (enterprise, gateway, wrote) not in self._warned:
                self._warned.add((enterprise, gateway, wrote))
                log.warning("enterprise %s: the registry says gateway %s was retired on %s, but it wrote rows until "
                            "%s; they are counted: fix its retirement day or the gateway id (registry column "
                            "退役网关 / retired_gateways)", enterprise, gateway, last_day, wrote)

    async def _revalidate_loop(self) -> None:
        while True:
            await asyncio.sleep(self._revalidate_s)
            try:
                await self.revalidate()
            except Exception as e:  # the store may be down for a while: serve what is cached, try later
                log.warning("revalidation failed: %s", e)

    async def revalidate(self) -> None:
        """Bring the sums cache up to date, then recompute every cached entry; drop those unused for ten
        revalidation periods."""
        await self.sync()
        self._enterprises = {}
        idle_limit = max(10 * self._revalidate_s, 900.0)
        for key, entry in list(self._figures.items()):
            if time.monotonic() - entry.last_used > idle_limit:
                self._figures.pop(key, None)
                continue
            generation = self._generation
            fresh = await self._compute(*key)
            current = self._figures.get(key)
            if current is None or self._invalidated_since(generation, key[0]):
                continue  # dropped or invalidated meanwhile: the next request computes it anew
            fresh.last_used = current.last_used
            self._figures[key] = fresh if fresh.digest != current.digest else current
        self._rows = {k: v for k, v in self._rows.items() if (k[1], k[2]) in self._figures}

    # --- materialization ---

    async def _materialize_loop(self, cfg: MaterializeConfig) -> None:
        """Every year once at start; then each interval the years data can still arrive for (this
        year and the last) and the years whose reports changed: written through the service, or by
        another process (``fmc reports import``), which a digest of each year's stored reports, taken
        at every pass, shows. A province costs tens of seconds per period, so past years are not
        recomputed every hour; its reports are one row per enterprise and period, far less to read."""
        base = self.targets.base_year
        # every year a materialized period reads: from the year before the first (year on year), the base year
        first_read = min(base, (cfg.first_year or base) - 1)
        seen: dict[int, str] | None = None  # per year, its reports' digest when the last pass that succeeded began
        while True:
            try:
                periods = self.materialize_periods(cfg.first_year, cfg.months)
                reported = set(self._reported_years)
                digests = await self._report_digests(first_read, self.today().year)
                if seen is not None:
                    changed = {y for y in digests.keys() | seen.keys() if digests.get(y) != seen.get(y)}
                    for year in sorted(changed - reported):
                        # written by another process: the cached figures that read it go, as on a PUT
                        log.info("reports of %d changed in the store: recomputing the figures that read them", year)
                        self.invalidate_year(year)
                    periods = stale_periods(periods, self.today().year, reported | changed, base)
                started = time.perf_counter()
                written = await self.materialize(periods)
                seen = digests
                self._reported_years -= reported  # a report PUT meanwhile is materialized on the next pass
                log.info("materialized %d indicator point(s) for %d period(s) in %.1f s", written, len(periods),
                         time.perf_counter() - started)
            except Exception as e:  # the store may be down: try again soon, the API keeps serving
                log.warning("materialization failed (trying again within a minute): %s", e)
                await asyncio.sleep(min(cfg.interval_s, 60.0))
                continue
            await asyncio.sleep(cfg.interval_s)

    async def _report_digests(self, first_year: int, last_year: int) -> dict[int, str]:
        """Per year, a digest of every report stored for it (all enterprises, each figure as read): one
        year at a time, so no more than a year's reports are held at once."""
        out: dict[int, str] = {}
        for year in range(first_year, last_year + 1):
            h = hashlib.sha256()
            for enterprise, stored in sorted((await self.store.reports(year, year, Scope())).items()):
                for r in sorted(stored, key=lambda r: r.period):
                    h.update(repr((enterprise, r.period, sorted(r.figures.items()))).encode())
            out[year] = h.hexdigest()[:32]
        return out

    async def materialize(self, periods: Sequence[Period], *, chunk: int = 20_000) -> int:
        """Write ``indicator`` points of every level for the periods; returns the number written.
        Industry rows are written pooled within the province, each city and each county.

        One period at a time, ``chunk`` points a write; what the period's figures and rows added to the
        service's caches leaves them once its rows are made (what clients had asked for stays): a
        province's figures of every period held at once took 0.9 GB for four periods.

        Once a period is written, its points under any other tags are deleted: an enterprise that moved
        county or changed industry (or whose registry entry was corrected) would otherwise stay listed
        under the old ones with an old figure beside its new point, and a group left without members
        would keep its last row. The series written are kept as digests meanwhile (``series_digest``)."""
        written = 0
        policy = policy_text(self.targets)
        for period in periods:
            label, start_ns = period_tag(period), period_start_ns(period, self.timezone)
            produced: set[bytes] = set()
            enterprises: set[str] = set()
            had = {k for k in self._figures if k[0] == period}
            had_rows = {k for k in self._rows if k[1] == period}
            computed = await self.indicators("enterprise", period, Scope())
            figures = await self._figures_for(period, Scope())
            rows: list[GroupRow] = list(computed.rows)
            for level in ("county", "city", "province", "industry"):
                rows += (await self.indicators(level, period, Scope())).rows
            for region in sorted({f.info.region[:n] for f in figures.members for n in (4, 6)}):
                members = [f for f in figures.members if f.info.region.startswith(region)]
                rows += group_rows("industry", members, self.targets, region_scope=region,
                                   populations=self.populations)
            del computed, figures
            for key in [k for k in self._figures if k[0] == period and k not in had]:
                del self._figures[key]
            self._rows = {k: v for k, v in self._rows.items() if k[1] != period or k in had_rows}
            batch: list[Point] = []
            for first in range(0, len(rows), ROWS_PER_BATCH):
                batch += indicator_points(rows[first:first + ROWS_PER_BATCH], self.timezone, policy)
                if len(batch) >= chunk or first + ROWS_PER_BATCH >= len(rows):
                    # replace, not merge: a figure gone since the last materialization (no value any
                    # more, no rank) must not stay in the store beside the new status
                    await self.store.write(batch, replace=True)
                    written += len(batch)
                    for p in batch:
                        if p.tags["period"] == label:
                            produced.add(series_digest(p.tags))
                            if "enterprise" in p.tags:
                                enterprises.add(p.tags["enterprise"])
                    batch = []
            # only after every batch of the period was written: a failed pass deletes nothing, nor one that
            # computed no enterprise (a store that answers nothing would otherwise lose every published row)
            if not enterprises:
                continue
            try:
                deleted = await self.store.delete_indicators_except(label, start_ns, produced, enterprises)
            except StoreQueryError as e:  # InfluxDB 3 (no DELETE): the other periods are still written
                log.warning("%s: the %s points under tags no longer computed stay (an enterprise that moved is "
                            "listed under its old tags too); delete them by hand or use InfluxDB 1.x/2.x", e, label)
                continue
            if deleted:
                log.info("deleted %d indicator point(s) of %s under tags no longer computed (an enterprise that "
                         "moved, a group without members)", deleted, label)
        return written

    def materialize_periods(self, first_year: int | None, months: bool) -> list[Period]:
        """Years from ``first_year`` (default the base year) to this year (year to date), and their
        months that have begun."""
        today = self.today()
        out: list[Period] = []
        for year in range(first_year or self.targets.base_year, today.year + 1):
            if year < today.year:
                out.append(Period.of_year(year))
            elif today > date(year, 1, 1):
                out.append(Period.year_to_date(today - timedelta(days=1)))
            if months:
                out += [Period.of_month(year, m) for m in range(1, 13) if date(year, m, 1) <= today]
        return out


def stale_periods(periods: Sequence[Period], this_year: int, reported: set[int], base_year: int) -> list[Period]:
    """The periods whose figures may have changed since the last materialization: this year's and
    last year's (data still arrives), those of a year a report changed and of the year after it
    (its year-on-year change), and all when the base year's reports changed (every target)."""
    if base_year in reported:
        return list(periods)
    years = {this_year, this_year - 1} | reported | {y + 1 for y in reported}
    return [p for p in periods if p.year in years]


def make_store(cfg: CentralSettings, timezone: str) -> IndicatorStore:
    """The store a central config names (its plugin opens it)."""
    return cfg.store_settings().open_query_store(timezone)
