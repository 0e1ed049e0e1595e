"""The central store query interface (``fmc.central.store.IndicatorStore``) over InfluxDB's InfluxQL ``/query``.

InfluxQL over ``/query`` is the one query language InfluxDB 1.x, 2.x (v1 compatibility API, token
auth, a DBRP mapping) and 3.x all speak; see ``fmc/stores/influxdb/README.md`` (reads).

The aggregation is pushed into the query: ``period_sums`` sends one request of three statements
(the sums of ``enterprise_daily`` per enterprise, its last row per enterprise, the sums of
``consumption_daily`` per enterprise and carrier), so one row per enterprise (per carrier) crosses
the wire whatever the number of days. The scope is pushed into the ``WHERE`` clause.

Nothing from outside reaches a query unescaped: every string goes through ``quote_literal``,
``quote_ident``, ``regex_prefixes`` or ``regex_exact``, which refuse what InfluxQL cannot carry rather
than pass it, even for values a ``Scope`` has already validated.

``write(points, replace=True)`` (the materialized indicators) deletes, before writing, the stored points
that have a field their new point lacks: InfluxDB merges the fields of a second write.
``delete_indicators_except`` deletes a materialized period's points under tags its pass did not write.
"""

from __future__ import annotations

import asyncio
import gzip
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence, Set
from datetime import date, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from fmc.central.partials import CARRIER_FIELDS, LAST_FIELDS, LastRow, Partials, as_partials, merge
from fmc.central.store import (
    INDICATOR,
    REPORT_FIELDS,
    ReportPoint,
    Scope,
    StoreQueryError,
    encode_points,
    series_digest,
)
from fmc.core.carriers import is_water
from fmc.core.config import redacted_url
from fmc.core.jsondoc import load_json
from fmc.core.lineprotocol import field_type
from fmc.core.localtime import NS, local_date, local_day_start_ns
from fmc.core.points import Point
from fmc.indicators.sums import (
    ALL_SUMS,
    DAILY_SUM_FIELDS,
    LAST_DAY_FIELDS,
    EnterpriseInfo,
    PeriodSums,
    StoredReport,
    SumsWanted,
)
from fmc.stores.influxdb.config import InfluxDBSink as InfluxDBSinkConfig
from fmc.stores.influxdb.sink import store_error_text, tls_verify

USER_AGENT = "fmc-central"
MS = 1_000_000  # ns per ms: answers come with epoch=ms
JSON_IN_THREAD_BYTES = 512 * 1024  # parse big answers off the event loop, so the API keeps serving
GZIP_LEVEL = 6  # as the sink: line protocol shrinks about tenfold
GZIP_IN_THREAD_BYTES = 256 * 1024
REPORT_MARGIN_NS = 2 * 86_400 * NS  # reports stamped in another time zone still fall inside

DAILY = "enterprise_daily"
NETWORKED = "nc_equipment_networked"  # a row has the networked counts (not a ledger-only day) when it has this
CONSUMPTION = "consumption_daily"
REPORT = "enterprise_report"
DAYS_PER_STATEMENT = 100  # enterprises per statement counting local days (those with several gateways)
# a replacing write: series read back per request (the answer's size), and series deleted by their exact
# tags per statement (InfluxDB 1.6 takes about 7 ms a series that way: well within a request's timeout)
READBACK_SERIES = 5_000
SERIES_PER_DELETE = 100
IDS_PER_CONDITION = 500  # beyond, a condition on enterprise ids costs more than reading the tags' series


# --- quoting: the only ways a value gets into InfluxQL ----------------------------------------------------


def _carriable(kind: str, text: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{kind} must be text, got {type(text).__name__}")
    # A NUL ends InfluxQL's scanner input and a carriage return becomes a newline there; neither can
    # be written inside a quoted string (nor stored by line protocol), so refuse rather than mangle.
    if "\x00" in text or "\r" in text:
        raise ValueError(f"{kind} {text!r} contains a NUL or carriage return, which InfluxQL cannot carry")
    return text


def quote_literal(text: str) -> str:
    """``text`` as an InfluxQL string literal: single quotes, with ``\\``, ``'`` and newlines escaped."""
    text = _carriable("string", text)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def quote_ident(name: str) -> str:
    """``name`` as an InfluxQL identifier: always double-quoted (a bare word could be a keyword), with
    ``\\``, ``"`` and newlines escaped."""
    name = _carriable("identifier", name)
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _regex_text(text: str) -> str:
    # Inside /…/ InfluxQL only unescapes \/ and passes everything else to Go's RE2. ASCII letters and
    # digits stand for themselves; every other ASCII character (metacharacters, '/', '\', newline)
    # becomes \x{..}, which RE2 reads as that exact character and InfluxQL never sees as a delimiter.
    # Other characters are never regex syntax.
    return "".join(
        c if (c.isascii() and c.isalnum()) or not c.isascii() else f"\\x{{{ord(c):02X}}}" for c in text
    )


def regex_prefixes(prefixes: Iterable[str]) -> str:
    """A regex literal matching a value that starts with one of ``prefixes`` (exactly as written)."""
    parts = [_regex_text(_carriable("prefix", p)) for p in prefixes]
    if not parts:
        raise ValueError("regex_prefixes needs at least one prefix")
    return "/^(?:" + "|".join(parts) + ")/"


def regex_exact(values: Iterable[str]) -> str:
    """A regex literal matching a value equal to one of ``values`` (exactly as written); an empty value
    among them also matches a series without the tag, as ``tag = ''`` does."""
    parts = [_regex_text(_carriable("value", v)) for v in values]
    if not parts:
        raise ValueError("regex_exact needs at least one value")
    return "/^(?:" + "|".join(parts) + ")$/"


def scope_condition(scope: Scope) -> str:
    """The scope as an InfluxQL condition (``true``-less: empty when there is no restriction)."""
    parts: list[str] = []
    if scope.region_prefix is not None:
        parts.append(f"region =~ {regex_prefixes([scope.region_prefix])}")
    if scope.industries:
        parts.append(f"industry =~ {regex_prefixes(scope.industries)}")
    if scope.enterprises:
        parts.append(_enterprise_condition(scope.enterprises))
    return " AND ".join(parts)


def _enterprise_condition(enterprises: Iterable[str]) -> str:
    return "(" + " OR ".join(f"enterprise = {quote_literal(e)}" for e in sorted(enterprises)) + ")"


def _outside(scope: Scope) -> list[str]:
    """Conditions of which one holds for tags outside the scope's region or industries."""
    outside = [f"region !~ {regex_prefixes([scope.region_prefix])}"] if scope.region_prefix is not None else []
    if scope.industries:
        outside.append(f"industry !~ {regex_prefixes(scope.industries)}")
    return outside


def _all_of(*conditions: str) -> str:
    return " AND ".join(c for c in conditions if c)


# --- answers ---------------------------------------------------------------------------------------------


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _series(result: Mapping[str, Any]) -> list[tuple[dict[str, str], list[str], list[list[Any]]]]:
    """(tags, columns, rows) of each series of one statement's result."""
    out = []
    for s in result.get("series") or ():
        if isinstance(s, dict):
            out.append((s.get("tags") or {}, s.get("columns") or [], s.get("values") or []))
    return out


def _tag_values(tag_sets: Sequence[Mapping[str, str]]) -> dict[str, set[str]]:
    """Each tag key of the series (sorted) with the values they have ("": a series without the tag)."""
    keys = sorted({key for tags in tag_sets for key in tags})
    return {key: {tags.get(key, "") for tags in tag_sets} for key in keys}


def _values_condition(values: Mapping[str, set[str]]) -> str:
    """One condition on each tag's values: it matches every combination of them (a superset of the series)."""
    return " AND ".join(f"{quote_ident(key)} =~ {regex_exact(sorted(v))}" for key, v in values.items())


def _delete_statements(
    measurement: str, ts: int, stale: Sequence[Mapping[str, str]], stored: Sequence[Mapping[str, str]],
    losing: set[frozenset[tuple[str, str]]],
) -> list[str]:
    """DELETE statements for the points at ``ts`` of the ``stale`` series (each with every tag key of the
    measurement, "" where it has none), and of no series outside ``losing`` (those of the call that lose
    a field). ``stored``: the read-back that found ``stale``, every series its condition matches, which
    holds every series a condition on the values of ``stale``'s tags can match.

    One condition on each tag's values (``region =~ /^(?:…)$/ AND …``) costs InfluxDB 1.6 a fraction of
    a second for thousands of series, but matches every combination of those values: it is used when
    ``stored`` shows it matches only series that lose a field (all the points of a call losing one, or
    one indicator's). Otherwise each series by its exact tags (``industry = ''`` where it has none),
    ``SERIES_PER_DELETE`` of them OR-ed a statement: about 7 ms a series. DELETE cannot name a
    retention policy: InfluxDB deletes them in every policy of the database."""
    if not stale:
        return []
    values = _tag_values(stale)
    matched = [tags for tags in stored if all(tags.get(key, "") in v for key, v in values.items())]
    if all(frozenset(tags.items()) in losing for tags in matched):
        condition = _values_condition(values)
        return [f"DELETE FROM {quote_ident(measurement)} WHERE {condition} AND time = {int(ts)}"]
    statements = []
    for first in range(0, len(stale), SERIES_PER_DELETE):
        exact = " OR ".join(
            "(" + " AND ".join(f"{quote_ident(k)} = {quote_literal(v)}" for k, v in sorted(tags.items())) + ")"
            for tags in stale[first:first + SERIES_PER_DELETE]
        )
        statements.append(f"DELETE FROM {quote_ident(measurement)} WHERE ({exact}) AND time = {int(ts)}")
    return statements


def _time_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"time zone {name!r} is unknown: use an IANA name such as 'Asia/Shanghai'") from None


class InfluxQueryStore:
    """``IndicatorStore`` over InfluxQL ``/query`` (and ``/write`` for ``write``).

    ``cfg``: the same model as the agent's InfluxDB sink (url, dialect, database, retention_policy,
    username/password or token, timeout_s, TLS settings). With dialect ``v2`` the queries go to
    ``database`` (else the bucket's name) through the v1 compatibility API, which needs a DBRP
    mapping. ``client``: an ``httpx.AsyncClient`` to use (not closed by ``aclose``); credentials are
    sent with every request either way.
    """

    def __init__(
        self,
        cfg: InfluxDBSinkConfig,
        *,
        timezone: str = "Asia/Shanghai",
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.cfg = cfg
        self.timezone = timezone
        self._tz = _time_zone(timezone)
        self._base = redacted_url(cfg.url.rstrip("/"))
        self._headers = {"User-Agent": USER_AGENT}
        self._auth: httpx.Auth | None = None
        url = urlsplit(cfg.url)
        if cfg.dialect == "v2":
            assert cfg.token is not None  # the config model requires it for v2
            self._headers["Authorization"] = f"Token {cfg.token.get_secret_value()}"
        elif cfg.username is not None or cfg.password is not None:
            # HTTP Basic rather than u=/p= in the URL: URLs end up in access logs and httpx's log
            password = cfg.password.get_secret_value() if cfg.password is not None else ""
            self._auth = httpx.BasicAuth(cfg.username or "", password)
        elif url.username is not None:
            self._auth = httpx.BasicAuth(unquote(url.username), unquote(url.password or ""))
        self.database = cfg.database or cfg.bucket or ""
        # what a sums cache of this store's data is kept for (fmc.central.sums_cache)
        self.cache_source = f"{self._base} db={self.database} rp={cfg.retention_policy or ''}"
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(cfg.timeout_s),
            verify=tls_verify(cfg),
            follow_redirects=False,  # a redirect would drop the body or the credentials; report it
        )
        self._query_params = {"db": self.database, "epoch": "ms"}
        if cfg.retention_policy:
            self._query_params["rp"] = cfg.retention_policy  # read by 2.x's compatibility API
        if cfg.dialect == "v1":
            self._write_url = f"{self._base}/write"
            self._write_params = {"db": self.database, "precision": "ns"}
            if cfg.retention_policy:
                self._write_params["rp"] = cfg.retention_policy
        else:
            self._write_url = f"{self._base}/api/v2/write"
            self._write_params = {"org": cfg.org or "", "bucket": cfg.bucket or "", "precision": "ns"}

    # --- statements ------------------------------------------------------------------------------

    def _from(self, measurement: str) -> str:
        if self.cfg.retention_policy:
            return f"{quote_ident(self.cfg.retention_policy)}.{quote_ident(measurement)}"
        return quote_ident(measurement)

    def _bounds(self, start: date, end: date) -> tuple[int, int]:
        if end < start:
            raise ValueError(f"period ends ({end}) before it starts ({start})")
        return local_day_start_ns(start, self._tz), local_day_start_ns(end + timedelta(days=1), self._tz)

    @staticmethod
    def _where(start_ns: int, end_ns: int, scope: Scope, *extra: str) -> str:
        parts = [f"time >= {int(start_ns)}", f"time < {int(end_ns)}", *extra]
        condition = scope_condition(scope)
        if condition:
            parts.append(condition)
        return " WHERE " + " AND ".join(parts)

    def period_sums_statements(
        self, start: date, end: date, scope: Scope, carriers: Sequence[str] | None = None,
        wanted: SumsWanted = ALL_SUMS,
    ) -> list[str]:
        """The statements ``period_sums`` sends, each in its own request, all at once: the daily sums,
        the last day, each carrier's first and last day, and the consumption sums — one statement per
        carrier when ``carriers`` are given (smaller pieces keep every core busy), else one for all."""
        bounds = self._bounds(start, end)
        where = self._where(*bounds, scope)
        # every aggregate is a pass over every series: only the sums the policy uses
        sums = "".join(f", sum({f}) AS {f}" for f in DAILY_SUM_FIELDS if f in wanted.daily)
        # last() alone (with plain fields beside it) reports the time of the row it picked; mixed
        # with sum() it would report the start of the range instead, so it is a statement of its own
        networked = ("equipment_networked", "nc_equipment_networked") if wanted.last_networked else ()
        last_fields = [*LAST_DAY_FIELDS[1:], *networked, *(("equipment_valued",) if wanted.valued else ())]
        last = f"last({LAST_DAY_FIELDS[0]}) AS {LAST_DAY_FIELDS[0]}, " + ", ".join(last_fields)
        rows = "count(amount) AS n_rows, sum(amount) AS amount" if wanted.amount else "count(coverage) AS n_rows"
        tce = "sum(tce) AS tce, count(tce) AS tce_rows"
        m3 = "sum(m3) AS m3, count(m3) AS m3_rows"
        if carriers is None:
            per_carrier = [f"SELECT {rows}, {tce}, {m3}, sum(coverage) AS coverage FROM {self._from(CONSUMPTION)}"
                           f"{where} GROUP BY enterprise, carrier, gateway"]
        else:
            # the engine reads m³ of water carriers and tce of the others: an aggregate of a field a
            # series lacks still costs a pass over every series, so each carrier asks for its own
            per_carrier = [
                f"SELECT {rows}, {m3 if is_water(c) else tce}, sum(coverage) AS coverage "
                f"FROM {self._from(CONSUMPTION)}{self._where(*bounds, scope, 'carrier = ' + quote_literal(c))} "
                "GROUP BY enterprise, carrier, gateway"
                for c in carriers
            ]
        # first() and last() alone report the time of the row they picked: each carrier's first and
        # last day in the period on each gateway (which carriers an enterprise had when; across its
        # gateways, the earliest first and the latest last day, and whether its gateway went on after it)
        spans = [f"SELECT {f}(coverage) AS coverage FROM {self._from(CONSUMPTION)}{where} "
                 "GROUP BY enterprise, carrier, gateway" for f in ("first", "last")]
        # Several gateways of one enterprise write one row each per day (tag ``gateway``): the sums run
        # over every row (Σ days Σ gateways), per gateway so that the cache can keep them; ``days`` is
        # the row count, which ``partials`` replaces by the count of local days (``days_statements``)
        # for an enterprise with several gateways; ``networked_days`` alike, the rows with the networked
        # counts (a day the agent was off for long has a row of the ledger's counts alone)
        return [
            f"SELECT count({DAILY_SUM_FIELDS[0]}) AS days, count({NETWORKED}) AS networked_days{sums} "
            f"FROM {self._from(DAILY)}{where} GROUP BY enterprise, gateway",
            # each gateway's last row in the period (rows without the tag group as one more gateway)
            f"SELECT {last} FROM {self._from(DAILY)}{where} GROUP BY enterprise, gateway",
            *spans,
            *per_carrier,
        ]

    def days_statements(self, start: date, end: date, scope: Scope, enterprises: Sequence[str]) -> list[str]:
        """Statements that give one row per local day with an ``enterprise_daily`` row of any gateway,
        per enterprise (``enterprises`` in pieces), with ``n`` its rows and ``nw`` those with the
        networked counts: buckets of a day whose edges lie at local noon, so a
        row stamped at local midnight lies well inside its day's bucket whatever the DST shift.
        Asked only for the enterprises with several gateways: a row per day crosses the wire."""
        bounds = self._bounds(start, end)
        group = f"GROUP BY time(1d, {self._day_offset_s(bounds[0])}s), enterprise fill(none)"
        names = sorted(enterprises)
        return [
            f"SELECT count({DAILY_SUM_FIELDS[0]}) AS n, count({NETWORKED}) AS nw FROM {self._from(DAILY)}"
            f"{self._where(*bounds, scope, _enterprise_condition(names[i:i + DAYS_PER_STATEMENT]))} {group}"
            for i in range(0, len(names), DAYS_PER_STATEMENT)
        ]

    @staticmethod
    def _day_offset_s(start_ns: int) -> int:
        """The ``GROUP BY time(1d, offset)`` offset that puts the day buckets' edges at local noon of
        the period's first day (its local midnight is ``start_ns``)."""
        return ((start_ns // NS) - 12 * 3600) % 86_400

    async def carriers(self) -> list[str]:
        """The carriers ``consumption_daily`` holds (from the index: no data is read)."""
        [result] = await self._query([f"SHOW TAG VALUES FROM {quote_ident(CONSUMPTION)} WITH KEY = \"carrier\""])
        return sorted({str(row[columns.index("value")]) for _, columns, rows in _series(result) for row in rows
                       if "value" in columns})

    # --- the interface -----------------------------------------------------------------------------

    async def _period_sums(
        self, start: date, end: date, scope: Scope, wanted: SumsWanted = ALL_SUMS
    ) -> dict[str, PeriodSums]:
        """The sums of the rows recorded under tags in scope."""
        return merge(await self.partials(start, end, scope, wanted), wanted, self._tz)

    async def partials(self, start: date, end: date, scope: Scope, wanted: SumsWanted = ALL_SUMS) -> Partials:
        """The gateways' pieces of the sums of the rows recorded under tags in scope (``merge`` of them is
        ``period_sums``; the central service's sums cache keeps them per period)."""
        out = Partials()

        def spans(result: Mapping[str, Any]) -> None:
            for tags, columns, rows in _series(result):
                if rows and "time" in columns and tags.get("enterprise") and tags.get("carrier"):
                    day = local_date(_count(rows[0][columns.index("time")]) * MS, self._tz)
                    key = (tags["enterprise"], tags["carrier"], tags.get("gateway") or "")
                    span = out.spans.get(key)
                    out.spans[key] = (day, day) if span is None else (min(span[0], day), max(span[1], day))

        sum_names = ("days", *DAILY_SUM_FIELDS)

        networked_rows: dict[str, int] = {}

        def sums(result: Mapping[str, Any]) -> None:
            for tags, columns, rows in _series(result):
                enterprise = tags.get("enterprise")
                if rows and enterprise:
                    row = dict(zip(columns, rows[0], strict=False))
                    out.daily[(enterprise, tags.get("gateway") or "")] = as_partials(row, sum_names)
                    networked_rows[enterprise] = networked_rows.get(enterprise, 0) + _count(row.get("networked_days"))

        def lasts(result: Mapping[str, Any]) -> None:
            for tags, columns, rows in _series(result):
                enterprise = tags.get("enterprise")
                if enterprise and rows:
                    last = dict(zip(columns, rows[0], strict=False))
                    out.last[(enterprise, tags.get("gateway") or "")] = LastRow(
                        _count(last.get("time")),
                        tuple(float(v) if isinstance(v := last.get(f), int | float) and not isinstance(v, bool)
                              else math.nan for f in LAST_FIELDS))

        def carriers(result: Mapping[str, Any]) -> None:
            for tags, columns, rows in _series(result):
                enterprise, carrier = tags.get("enterprise"), tags.get("carrier")
                if not rows or not enterprise or not carrier:  # a series without the tag groups under ""
                    continue
                r = dict(zip(columns, rows[0], strict=False))
                if _count(r.get("n_rows")):
                    key = (enterprise, carrier, tags.get("gateway") or "")
                    got = out.carriers.setdefault(key, [0.0] * len(CARRIER_FIELDS))
                    for i, v in enumerate(as_partials(r, CARRIER_FIELDS)):
                        got[i] += v

        # One request per statement, sent at once: InfluxDB runs the statements of one request one
        # after another on one core, and separate requests in parallel (docs/central.md has figures).
        # Each answer is reduced to its pieces as it arrives: a province's six answers held decoded
        # together cost the API about 100 MB more at its peak.
        statements = self.period_sums_statements(start, end, scope, await self.carriers(), wanted)
        readers = [sums, lasts, spans, spans] + [carriers] * (len(statements) - 4)
        await asyncio.gather(*(self._query_into(s, read) for s, read in zip(statements, readers, strict=True)))
        groups: dict[str, int] = {}  # gateway groups per enterprise as stored ("" and "main" are two)
        for enterprise, _ in out.last:
            groups[enterprise] = groups.get(enterprise, 0) + 1
        for (enterprise, _), row_sums in out.daily.items():
            out.days[enterprise] = out.days.get(enterprise, 0) + int(row_sums[0])
        out.networked_days.update((e, networked_rows.get(e, 0)) for e in out.days)
        # several gateways (or tagged and untagged rows): count the local days, not the rows
        several = [e for e, n in groups.items() if n > 1 and e in out.days]
        if several:
            local_days = dict.fromkeys(several, 0)
            networked_days = dict.fromkeys(several, 0)

            def days(result: Mapping[str, Any]) -> None:
                for tags, columns, rows in _series(result):
                    enterprise = tags.get("enterprise")
                    if enterprise in local_days and "n" in columns:
                        n = columns.index("n")
                        local_days[enterprise] += sum(1 for row in rows if _count(row[n]))
                        if "nw" in columns:
                            nw = columns.index("nw")
                            networked_days[enterprise] += sum(1 for row in rows if _count(row[nw]))

            await asyncio.gather(*(self._query_into(s, days) for s in self.days_statements(start, end, scope, several)))
            out.days.update(local_days)
            out.networked_days.update(networked_days)
        return out

    async def _query_into(self, statement: str, read: Callable[[Mapping[str, Any]], None]) -> None:
        """Send one statement and hand its result to ``read`` as soon as it is decoded."""
        [result] = await self._query([statement])
        read(result)

    # --- the region of the period's end -------------------------------------------------------------
    #
    # An enterprise is in a scope by its tags at the end of the period asked for (those of its latest point
    # by then), and then with all of its rows and reports, whatever tags they were recorded under. The
    # scope is still pushed into each query: the rows recorded under tags in scope, plus, for the few
    # members that also have rows under other tags in the period (movers), their rows by id.

    async def _combos(self, condition: str, *, earliest: bool = False) -> list[tuple[str, int, str, str]]:
        """(enterprise, time in ms, region, industry) of the latest (``earliest``: first) point of each
        tag combination matching ``condition``, in each of the three measurements."""
        where = f" WHERE {condition}" if condition else ""
        order = "ASC" if earliest else "DESC"
        # one field is enough where every point has it, a report may have any of its fields
        statements = [
            f"SELECT {columns} FROM {self._from(m)}{where} GROUP BY enterprise, region, industry "
            f"ORDER BY time {order} LIMIT 1"
            for m, columns in ((DAILY, DAILY_SUM_FIELDS[0]), (CONSUMPTION, "amount"), (REPORT, "*"))
        ]
        out: list[tuple[str, int, str, str]] = []

        def read(result: Mapping[str, Any]) -> None:
            for tags, columns, rows in _series(result):
                enterprise = tags.get("enterprise")
                if rows and enterprise and "time" in columns:
                    out.append((enterprise, _count(rows[0][columns.index("time")]), tags.get("region") or "",
                                tags.get("industry") or ""))

        # separate requests run in parallel (one request's statements run one after another), each answer
        # reduced as it arrives
        await asyncio.gather(*(self._query_into(s, read) for s in statements))
        return out

    async def tag_points(self, before_ns: int | None, *, earliest: bool = False) -> list[tuple[str, int, str, str]]:
        """(enterprise, time in ms, region, industry) of each tag combination's latest point before
        ``before_ns`` (None: of all; ``earliest``: its first point at or after ``before_ns``), every
        enterprise's: what the sums cache keeps to know where each enterprise is at a period's end."""
        if before_ns is None:
            return await self._combos("", earliest=earliest)
        return await self._combos(f"time {'>=' if earliest else '<'} {int(before_ns)}", earliest=earliest)

    async def _tags_before(self, before_ns: int | None, scope: Scope) -> dict[str, list[tuple[int, str, str]]]:
        """enterprise -> (time in ms of its latest point before ``before_ns``, region, industry) of each of
        its tag combinations, for every enterprise with a point under tags in scope before then."""
        time = [f"time < {int(before_ns)}"] if before_ns is not None else []
        found: dict[str, list[tuple[int, str, str]]] = {}
        for e, ts, region, industry in await self._combos(_all_of(scope_condition(scope), *time)):
            found.setdefault(e, []).append((ts, region, industry))
        outside = _outside(scope)
        if found and outside:
            # the candidates' points under other tags: by id for a few, else every point outside the scope,
            # kept for the candidates (an OR of 20,000 ids took InfluxDB 300 s; the tags' index answers fast)
            ids = [_enterprise_condition(found)] if len(found) <= IDS_PER_CONDITION else []
            condition = _all_of(*ids, "(" + " OR ".join(outside) + ")", *time)
            for e, ts, region, industry in await self._combos(condition):
                if e in found:
                    found[e].append((ts, region, industry))
        return found

    @staticmethod
    def _members(found: Mapping[str, list[tuple[int, str, str]]], scope: Scope, since_ns: int
                 ) -> tuple[set[str], set[str]]:
        """(the enterprises whose latest tags admit the scope, those of them with a point under other
        tags at or after ``since_ns``: their rows are read by id)."""
        members: set[str] = set()
        movers: set[str] = set()
        for e, combos in found.items():
            _, region, industry = max(combos)
            if not scope.admits(e, region, industry):
                continue
            members.add(e)
            if any(ts * MS >= since_ns and not scope.admits(e, r, i) for ts, r, i in combos):
                movers.add(e)
        return members, movers

    async def enterprises(self, scope: Scope, as_of: date | None = None) -> list[EnterpriseInfo]:
        before = None if as_of is None else local_day_start_ns(as_of + timedelta(days=1), self._tz)
        found = await self._tags_before(before, scope)
        tags = {e: max(combos)[1:] for e, combos in found.items()}
        if before is not None:
            # in scope only with points after as_of: the tags of the earliest point from then on
            later = {e for e, *_ in await self._combos(_all_of(scope_condition(scope), f"time >= {before}"),
                                                       earliest=True) if e not in tags}
            if later:
                first: dict[str, tuple[int, str, str]] = {}
                condition = _all_of(_enterprise_condition(later), f"time >= {before}")
                for e, ts, region, industry in await self._combos(condition, earliest=True):
                    if e not in first or (ts, region, industry) < first[e]:  # the answers arrive in any order
                        first[e] = (ts, region, industry)
                tags.update({e: v[1:] for e, v in first.items()})
        infos = [EnterpriseInfo(e, region, industry) for e, (region, industry) in sorted(tags.items())]
        return [i for i in infos if scope.admits(i.enterprise, i.region, i.industry)]

    async def period_sums(
        self, start: date, end: date, scope: Scope, wanted: SumsWanted = ALL_SUMS, as_of: date | None = None
    ) -> dict[str, PeriodSums]:
        if scope.region_prefix is None and not scope.industries:
            return await self._period_sums(start, end, scope, wanted)  # ids only: an id does not move
        start_ns, end_ns = self._bounds(start, end)
        if as_of is not None:
            end_ns = local_day_start_ns(as_of + timedelta(days=1), self._tz)
        found, inside = await asyncio.gather(self._tags_before(end_ns, scope),
                                             self._period_sums(start, end, scope, wanted))
        members, movers = self._members(found, scope, start_ns)
        out = {e: v for e, v in inside.items() if e in members and e not in movers}
        if movers:
            out.update(await self._period_sums(start, end, Scope(enterprises=tuple(sorted(movers))), wanted))
        return dict(sorted(out.items()))

    async def reports(
        self, first_year: int, last_year: int, scope: Scope, as_of: date | None = None
    ) -> dict[str, list[StoredReport]]:
        if scope.region_prefix is None and not scope.industries:
            return await self._reports(first_year, last_year, scope)
        start_ns, end_ns = self._bounds(date(first_year, 1, 1), date(last_year, 12, 31))
        before = end_ns if as_of is None else local_day_start_ns(as_of + timedelta(days=1), self._tz)
        found, inside = await asyncio.gather(self._tags_before(before, scope),
                                             self._reports(first_year, last_year, scope))
        members, movers = self._members(found, scope, start_ns - REPORT_MARGIN_NS)
        out = {e: v for e, v in inside.items() if e in members and e not in movers}
        if movers:
            out.update(await self._reports(first_year, last_year, Scope(enterprises=tuple(sorted(movers)))))
        return dict(sorted(out.items()))

    def _reports_where(self, first_year: int, last_year: int, scope: Scope) -> str:
        start_ns, end_ns = self._bounds(date(first_year, 1, 1), date(last_year, 12, 31))
        years = "|".join(_regex_text(f"{y:04d}") for y in range(first_year, last_year + 1))
        period = f"period =~ /^(?:{years})(?:-|$)/"
        return self._where(start_ns - REPORT_MARGIN_NS, end_ns + REPORT_MARGIN_NS, scope, period)

    async def report_points(
        self, enterprises: Collection[str], first_year: int, last_year: int
    ) -> dict[tuple[str, str], list[ReportPoint]]:
        wanted = set(enterprises)
        if not wanted:
            return {}
        # by id for a few; a province's import reads every report of the years (the tags' index answers fast)
        scope = Scope(enterprises=tuple(sorted(wanted))) if len(wanted) <= IDS_PER_CONDITION else Scope()
        where = self._reports_where(first_year, last_year, scope)
        [result] = await self._query([f"SELECT {', '.join(REPORT_FIELDS)} FROM {self._from(REPORT)}{where} GROUP BY *"])
        out: dict[tuple[str, str], list[ReportPoint]] = {}
        for tags, columns, rows in _series(result):
            enterprise, label = tags.get("enterprise"), tags.get("period")
            if enterprise not in wanted or not label or "time" not in columns:
                continue
            stored = {k: v for k, v in tags.items() if v}  # GROUP BY * gives "" for a tag the series lacks
            t = columns.index("time")
            out.setdefault((enterprise, label), []).extend((stored, _count(row[t]) * MS) for row in rows)
        return out

    async def _reports(self, first_year: int, last_year: int, scope: Scope) -> dict[str, list[StoredReport]]:
        where = self._reports_where(first_year, last_year, scope)
        query = f"SELECT {', '.join(REPORT_FIELDS)} FROM {self._from(REPORT)}{where} GROUP BY enterprise, period"
        [result] = await self._query([query])
        merged: dict[tuple[str, str], dict[str, float]] = {}
        for tags, columns, rows in _series(result):
            enterprise, label = tags.get("enterprise"), tags.get("period")
            if not enterprise or not label:
                continue
            figures = merged.setdefault((enterprise, label), {})
            # several rows: the report under other tags too, in series-key order (not the order of writing);
            # a writer writes its figures onto every one of them (IndicatorService.report_points)
            for row in rows:
                for name, value in zip(columns, row, strict=False):
                    if name in REPORT_FIELDS and isinstance(value, int | float) and not isinstance(value, bool):
                        figures[name] = float(value)
        out: dict[str, list[StoredReport]] = {}
        for (enterprise, label), figures in sorted(merged.items()):
            if figures:
                out.setdefault(enterprise, []).append(StoredReport(enterprise, label, figures))
        return out

    async def write(self, points: Sequence[Point], *, replace: bool = False) -> None:
        lines = encode_points(points)
        if not lines:
            return
        await self._check_field_types(points)
        if replace:
            await self._delete_lost_fields(points)
        body = "\n".join(lines).encode("utf-8")
        headers = {**self._headers, "Content-Type": "text/plain; charset=utf-8"}
        if self.cfg.gzip:
            if len(body) > GZIP_IN_THREAD_BYTES:
                body = await asyncio.to_thread(gzip.compress, body, GZIP_LEVEL)
            else:
                body = gzip.compress(body, GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        response = await self._send("POST", self._write_url, params=self._write_params, content=body,
                                    headers=headers)
        if not 200 <= response.status_code < 300:
            text = store_error_text(response)
            if response.status_code == 413:
                raise StoreQueryError(
                    f"InfluxDB refused {len(lines)} point(s) as too large (HTTP 413: {text}); write fewer "
                    "points per call or raise [http] max-body-size in influxdb.conf"
                )
            detail = self._http_problem(response, text)
            if response.status_code in (400, 422):
                detail += "; InfluxDB may have stored the other points of the call (a partial write)"
            raise StoreQueryError(detail)

    async def delete_indicators_except(
        self, period: str, ts_ns: int, keep: Set[bytes], enterprises: Set[str]
    ) -> int:
        """The period's points are read back one ``indicator`` tag value at a time (the values from the
        index), so an answer holds one indicator's series of a province's period, not all ~180,000; only
        ``status``, which every materialized point has. The series not in ``keep`` are deleted at ``ts_ns``
        only, as a replacing write deletes (``_delete_statements``: by each tag's values where the read-back
        shows that matches none kept, else by their exact tags)."""
        label = quote_literal(period)
        [names] = await self._query(
            [f'SHOW TAG VALUES FROM {quote_ident(INDICATOR)} WITH KEY = "indicator" WHERE "period" = {label}'])
        deletes: list[str] = []
        deleted = 0
        for name in sorted({str(row[c.index("value")]) for _, c, rows in _series(names) for row in rows
                            if "value" in c}):
            where = f'time = {int(ts_ns)} AND "period" = {label} AND "indicator" = {quote_literal(name)}'
            [result] = await self._query(
                [f'SELECT "status" FROM {self._from(INDICATOR)} WHERE {where} GROUP BY *'])
            stored = [tags for tags, _, rows in _series(result) if rows]
            # GROUP BY * gives "" for a tag the series lacks: a group row
            stale = [tags for tags in stored if series_digest(tags) not in keep
                     and (not tags.get("enterprise") or tags["enterprise"] in enterprises)]
            deleted += len(stale)
            deletes += _delete_statements(INDICATOR, ts_ns, stale, stored, {frozenset(t.items()) for t in stale})
        await self._run_deletes(deletes, f"deleting the {period} indicator points no longer computed had run")
        return deleted

    async def _run_deletes(self, deletes: Sequence[str], what: str, before: str = "") -> None:
        """Send the DELETE statements one a request; a failure says how many had run (``what``)."""
        for done, statement in enumerate(deletes):
            try:
                await self._query([statement])
            except StoreQueryError as e:
                raise StoreQueryError(
                    f"{e}; {before}{done} of {len(deletes)} request(s) {what}; InfluxQL DELETE needs InfluxDB 1.x "
                    "or 2.x and a user that may write"
                ) from None

    async def _delete_lost_fields(self, points: Sequence[Point]) -> None:
        """Delete the stored point of each series and time of ``points`` that has a field its new point
        lacks: InfluxDB has no replace, it merges a second write's fields into the stored point, so a
        figure that is gone (a value, a rank) would stay beside the new status.

        The stored points are read back per measurement and time, ``READBACK_SERIES`` series a request,
        narrowed to those series by each tag's values (a superset: the exact series are matched here).
        The usual call, where no field disappeared, costs those reads and no delete. Only the series that
        lose a field are deleted, at that time only (``_delete_statements``)."""
        groups: dict[tuple[str, int], dict[frozenset[tuple[str, str]], Point]] = {}
        for point in points:
            groups.setdefault((point.measurement, point.ts_ns), {})[frozenset(point.tags.items())] = point
        deletes: list[str] = []
        for (measurement, ts), series in groups.items():
            keys = list(series)
            pieces = [{key: series[key] for key in keys[i:i + READBACK_SERIES]}
                      for i in range(0, len(keys), READBACK_SERIES)]
            # separate requests run in parallel (one request's statements one after another)
            found = await asyncio.gather(*(self._lost_a_field(measurement, ts, piece) for piece in pieces))
            losing = {frozenset(tags.items()) for _, stale in found for tags in stale}
            for stored, stale in found:
                deletes += _delete_statements(measurement, ts, stale, stored, losing)
        await self._run_deletes(deletes, "deleting the stored points that lose a field had run",
                                before="nothing of the call was written: ")

    async def _lost_a_field(
        self, measurement: str, ts: int, series: Mapping[frozenset[tuple[str, str]], Point]
    ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """(every series stored at ``ts`` that the read-back's condition on the tags of ``series`` matches,
        those of ``series`` whose stored point has a field its new point lacks): each as its tags, every tag
        key of the measurement with "" where the series has none (what ``GROUP BY *`` answers)."""
        condition = _values_condition(_tag_values([dict(tags) for tags in series]))
        [result] = await self._query(
            [f"SELECT * FROM {self._from(measurement)} WHERE time = {int(ts)} AND {condition} GROUP BY *"])
        stored: list[dict[str, str]] = []
        stale: list[dict[str, str]] = []
        for tags, columns, rows in _series(result):
            stored.append(tags)
            point = series.get(frozenset((k, v) for k, v in tags.items() if v != ""))
            if point is not None and rows:
                fields = {c for c, v in zip(columns, rows[0], strict=False) if c != "time" and v is not None}
                if fields - point.fields.keys():
                    stale.append(tags)
        return stored, stale

    async def _check_field_types(self, points: Sequence[Point]) -> None:
        """Refuse the call before writing when a field's type differs from the stored one or between
        two points of the call: InfluxDB would store the others and refuse only those (partial write)."""
        wanted: dict[str, dict[str, tuple[str, int]]] = {}
        for index, point in enumerate(points):
            fields = wanted.setdefault(point.measurement, {})
            for key, value in point.fields.items():
                kind = field_type(value)
                seen = fields.setdefault(key, (kind, index))
                if seen[0] != kind:
                    raise StoreQueryError(
                        f"field type conflict: points {seen[1]} and {index} of the call give field {key!r} on "
                        f"measurement {point.measurement!r} the types {seen[0]} and {kind}; nothing was written"
                    )
        measurements = sorted(wanted)
        statements = [f"SHOW FIELD KEYS FROM {self._from(m)}" for m in measurements]
        results = await self._query(statements)
        for measurement, result in zip(measurements, results, strict=True):
            stored: dict[str, set[str]] = {}
            for _, columns, rows in _series(result):
                if "fieldKey" in columns and "fieldType" in columns:
                    k, t = columns.index("fieldKey"), columns.index("fieldType")
                    for row in rows:
                        stored.setdefault(str(row[k]), set()).add(str(row[t]))
            for key, (kind, index) in wanted[measurement].items():
                known = stored.get(key, set()) - {kind}
                if known:
                    raise StoreQueryError(
                        f"field type conflict: input field {key!r} on measurement {measurement!r} (point {index}) "
                        f"is type {kind}, already exists as type {sorted(known)[0]}; nothing was written"
                    )

    async def ping(self) -> None:
        """A query that reads no data: the server answers, the credentials and the database are right."""
        await self._query(["SHOW MEASUREMENTS LIMIT 1"])

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # --- HTTP ---------------------------------------------------------------------------------------

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", self._headers)
        try:
            return await self._client.request(method, url, auth=self._auth or httpx.USE_CLIENT_DEFAULT, **kwargs)
        except httpx.TimeoutException as e:
            raise StoreQueryError(
                f"InfluxDB at {self._base} gave no answer within {self.cfg.timeout_s:g}s ({type(e).__name__}); "
                "check that it is running and not overloaded, or raise [store] timeout_s"
            ) from None
        except httpx.ConnectError as e:
            raise StoreQueryError(
                f"cannot connect to InfluxDB at {self._base} ({e or type(e).__name__}); "
                "check [store] url and that InfluxDB is running"
            ) from None
        except httpx.HTTPError as e:
            raise StoreQueryError(
                f"InfluxDB at {self._base}: the connection failed ({type(e).__name__}: {e}); check [store] url"
            ) from None

    def _credentials(self) -> str:
        return "[store] token" if self.cfg.dialect == "v2" else "[store] username and password"

    def _http_problem(self, response: httpx.Response, text: str) -> str:
        status = response.status_code
        if status == 401:
            return f"InfluxDB at {self._base}: authentication failed (HTTP 401: {text}); check {self._credentials()}"
        if status == 403:
            return (f"InfluxDB at {self._base}: not authorized (HTTP 403: {text}); check {self._credentials()} and "
                    f"that the user may read and write database '{self.database}'")
        if status == 404:
            hint = "; dialect 'v2' needs InfluxDB 2.x or 3.x" if self.cfg.dialect == "v2" else ""
            if "database not found" in text.lower() or "bucket" in text.lower():
                return self._missing_database(text)
            return (f"{response.request.url.copy_with(query=None)} not found (HTTP 404: {text}); "
                    f"check [store] url (and any path prefix) and dialect{hint}")
        if 300 <= status < 400:
            return (f"InfluxDB at {self._base} redirects (HTTP {status}) to "
                    f"{redacted_url(response.headers.get('Location', '?'))}; set [store] url to the final address")
        if status >= 500:
            return f"InfluxDB at {self._base} failed (HTTP {status}: {text}); try again, or check its log"
        return f"InfluxDB at {self._base} refused the request (HTTP {status}: {text})"

    def _missing_database(self, text: str) -> str:
        if self.cfg.dialect == "v2":
            return (f"database '{self.database}' not found ({text}): InfluxDB 2.x/3.x answer InfluxQL only for a "
                    "database with a DBRP mapping to the bucket (influx v1 dbrp create); create one or fix "
                    "[store] database")
        return (f"database '{self.database}' not found ({text}): create it (CREATE DATABASE "
                f"{quote_ident(self.database)}) or fix [store] database")

    async def _query(self, statements: Sequence[str]) -> list[dict[str, Any]]:
        """The results of the statements, sent in one ``/query`` request, each checked for errors."""
        query = "; ".join(statements)
        response = await self._send("POST", f"{self._base}/query", params=self._query_params, data={"q": query})
        if response.status_code != 200:
            text = store_error_text(response)
            if response.status_code == 400:
                raise StoreQueryError(
                    f"InfluxDB at {self._base} refused the query (HTTP 400: {text}); is it InfluxDB with the "
                    "v1 /query API (1.x, or 2.x/3.x with [store] dialect = \"v2\")?"
                )
            raise StoreQueryError(self._http_problem(response, text))
        content = response.content
        try:
            # msgspec's decoder where it can: a 20,000-series answer (4.6 MB) in 71 against 113 ms
            body = (
                await asyncio.to_thread(load_json, content) if len(content) > JSON_IN_THREAD_BYTES
                else load_json(content)
            )
        except (ValueError, RecursionError):
            raise StoreQueryError(
                f"InfluxDB at {self._base} answered the query with something that is not JSON "
                f"({content[:200]!r}); check [store] url points at InfluxDB"
            ) from None
        if not isinstance(body, dict):
            raise StoreQueryError(f"InfluxDB at {self._base} answered the query with unexpected JSON")
        if isinstance(body.get("error"), str):
            raise StoreQueryError(f"InfluxDB at {self._base} could not run the query: {body['error']}")
        results = body.get("results")
        if not isinstance(results, list):
            results = []
        for result in results:
            if not isinstance(result, dict):
                raise StoreQueryError(f"InfluxDB at {self._base} answered the query with unexpected JSON")
            error = result.get("error")
            if error == "not executed" and len(statements) > 1:
                # InfluxDB 1.x drops the reason when it refuses a request of several statements (a
                # missing database, say): the first statement alone says why
                await self._query(statements[:1])
            if isinstance(error, str):
                if error.startswith("database not found"):
                    raise StoreQueryError(self._missing_database(error))
                if "retention policy not found" in error:
                    raise StoreQueryError(
                        f"{error}: create it on database '{self.database}' or fix [store] retention_policy"
                    )
                raise StoreQueryError(f"InfluxDB at {self._base} could not run the query: {error}")
            if result.get("partial"):
                raise StoreQueryError(
                    f"InfluxDB at {self._base} cut the answer short (max-row-limit); set [http] max-row-limit = 0 "
                    "in influxdb.conf"
                )
            for s in result.get("series") or ():
                if isinstance(s, dict) and s.get("partial"):
                    raise StoreQueryError(
                        f"InfluxDB at {self._base} cut the answer short (max-row-limit); set [http] "
                        "max-row-limit = 0 in influxdb.conf"
                    )
        if len(results) != len(statements):
            raise StoreQueryError(
                f"InfluxDB at {self._base} answered {len(results)} result(s) for {len(statements)} statement(s); "
                "check [store] url points at InfluxDB"
            )
        return results

