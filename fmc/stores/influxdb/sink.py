"""The InfluxDB sink: line protocol over HTTP to InfluxDB 1.x (``/write``) or 2.x/3.x (``/api/v2/write``).

One ``write`` call is one logical attempt; the drain loop owns retries and backoff. How each answer
is handled, and why:

- 2xx: every line was stored.
- No answer (connection refused, reset, timeout), 5xx, 408, 429: the store cannot take data now,
  so ``SinkUnavailable`` (with ``Retry-After`` when the store sent one) and the spool keeps the lines.
- 401/403 (credentials), 407 (a proxy's credentials: httpx takes ``HTTP_PROXY``, ``HTTPS_PROXY``,
  ``ALL_PROXY`` and ``NO_PROXY`` from the environment), 404 (database, bucket or URL path not
  found), 3xx (a redirect we do not follow), and a 400/422 that is not InfluxDB's (below): also
  ``SinkUnavailable``. These are configuration faults, not bad data: the lines are fine and will be
  accepted once the operator fixes the setting, so they must stay in the spool rather than be
  dead-lettered. The reason says what to fix.
- 413 (body too large): the batch is split in halves and each half written, recursively; a single
  line that is still too large is refused.
- 400/422 from InfluxDB (bad points, such as a field type conflict): the batch is bisected until the
  offending lines are isolated; they are refused with the store's own message and all others count
  as written. InfluxDB 1.x answers a "partial write" 400 after it has ALREADY stored the good lines,
  so the bisection re-sends some good lines: harmless, since the same series and timestamp
  overwrite the same point. Cost: about 2·k·log2(n) requests for k bad lines in a batch of n.
  A 400 is InfluxDB's when it carries InfluxDB's error (``influxdb_refusal``); one that does not
  comes from something else at ``url`` (nginx's "plain HTTP request was sent to HTTPS port", Go's
  "Client sent an HTTP request to an HTTPS server" from an InfluxDB with TLS on): splitting it
  would refuse every line for good.
- Any other 4xx: the whole batch is refused with the store's reason.

Secrets (password, token) are sent in headers only, never in a URL, a message or a log line; a
``user:password@`` in the configured URL is turned into HTTP Basic auth and removed from the URL.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import logging
import math
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from fmc.agent.plugin import CheckResult, EquipmentClaim, GatewayHost, RefusedLine, SinkUnavailable, WriteOutcome
from fmc.core.config import redacted_url
from fmc.stores.influxdb.config import InfluxDBSink as InfluxDBSinkConfig

log = logging.getLogger("fmc.sink.influxdb")

MAX_REASON_CHARS = 500  # 1.x echoes whole offending lines in its errors; keep messages readable
# Level 1: a third of level 6's CPU on the agent's batches for 13 % more bytes (5000 bench lines: 42.6 KB
# against 37.8 KB, from 514 KB); line protocol still compresses ~12x for gateways on slow links
GZIP_LEVEL = 1
GZIP_IN_THREAD_BYTES = 256 * 1024  # compress big bodies off the event loop so ingest is not stalled
USER_AGENT = "fmc-agent"
PING_TIMEOUT_S = 2.0  # the drain's probe while the store is away: short, it is asked again soon

_PLAIN_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
# headers InfluxDB puts on its error answers: 1.x every answer's version and X-Influxdb-Error, 2.x
# every answer's version and X-Platform-Error-Code (3.x sends its version on /ping only)
INFLUXDB_ERROR_HEADERS = ("X-Influxdb-Version", "X-Influxdb-Error", "X-Platform-Error-Code")


CLAIMS_PER_QUERY = 200  # equipment ids per claims query: the statement stays well under any URL or body limit


def influxql_identifier(name: str) -> str:
    """``name`` as an InfluxQL identifier, double-quoted only when it has to be."""
    if _PLAIN_IDENTIFIER.match(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date; None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _json_body(response: httpx.Response) -> object:
    text = response.text.strip()
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def influxdb_refusal(response: httpx.Response) -> bool:
    """Whether an error answer is InfluxDB's own: its headers, or its error body (1.x and 3.x
    ``{"error": …}``, 2.x ``{"code": …, "message": …}``). A reverse proxy's or another server's
    page has neither."""
    if any(name in response.headers for name in INFLUXDB_ERROR_HEADERS):
        return True
    body = _json_body(response)
    return isinstance(body, dict) and (
        isinstance(body.get("error"), str)
        or (isinstance(body.get("code"), str) and isinstance(body.get("message"), str)))


def store_error_text(response: httpx.Response) -> str:
    """The store's own explanation: 1.x ``{"error": …}``, 2.x ``{"code": …, "message": …}``, an
    HTML page's title (a proxy's page) or the body."""
    text = response.text.strip()
    body = _json_body(response)
    if isinstance(body, dict):
        for key in ("error", "message"):
            if isinstance(body.get(key), str) and body[key]:
                text = body[key]
                break
    elif text.startswith("<") and (title := _HTML_TITLE.search(text)) is not None:
        text = " ".join(title.group(1).split()) or text
    if not text:
        text = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 1] + "…"
    return text


@dataclass(slots=True)
class _WriteProgress:
    """What one ``write`` call has learnt so far, across the requests of a split or bisection."""

    requests: int = 0
    refused: list[RefusedLine] = field(default_factory=list)


def tls_verify(cfg: InfluxDBSinkConfig) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for the [sink] / [store] TLS settings."""
    if cfg.insecure_skip_verify:
        return False
    if cfg.ca_file is not None:
        return ssl.create_default_context(cafile=str(cfg.ca_file))
    return True


class InfluxDBSink:
    """Writes line protocol to InfluxDB over one keep-alive ``httpx.AsyncClient``."""

    def __init__(self, cfg: InfluxDBSinkConfig, name: str = "influxdb") -> None:
        self.name = name
        self.cfg = cfg
        # The URL keeps any path prefix (InfluxDB behind a reverse proxy) but loses a user:password@
        # part: httpx logs request URLs, so credentials from there move into the auth header.
        self._base = redacted_url(cfg.url.rstrip("/"))
        url_user, url_password = urlsplit(cfg.url).username, urlsplit(cfg.url).password
        headers = {"User-Agent": USER_AGENT}
        auth: httpx.Auth | None = None
        if cfg.dialect == "v2":
            assert cfg.token is not None  # the config model requires it for v2
            headers["Authorization"] = f"Token {cfg.token.get_secret_value()}"
        elif cfg.username is not None or cfg.password is not None:
            # HTTP Basic rather than ?u=&p=: query strings end up in access logs and httpx's log.
            password = cfg.password.get_secret_value() if cfg.password is not None else ""
            auth = httpx.BasicAuth(cfg.username or "", password)
        elif url_user is not None:
            auth = httpx.BasicAuth(unquote(url_user), unquote(url_password or ""))
        self._client = httpx.AsyncClient(
            headers=headers,
            auth=auth,
            timeout=httpx.Timeout(cfg.timeout_s),
            verify=tls_verify(cfg),
            follow_redirects=False,  # a redirect would drop the body or credentials; report it instead
            trust_env=True,  # a proxy from HTTP_PROXY / HTTPS_PROXY / ALL_PROXY, except for NO_PROXY hosts
        )
        if cfg.dialect == "v1":
            self._write_url = f"{self._base}/write"
            self._write_params: dict[str, str] = {"db": cfg.database or "", "precision": "ns"}
            if cfg.retention_policy:
                self._write_params["rp"] = cfg.retention_policy
            self._target = f"database '{cfg.database}'"
        else:
            self._write_url = f"{self._base}/api/v2/write"
            self._write_params = {"org": cfg.org or "", "bucket": cfg.bucket or "", "precision": "ns"}
            self._target = f"bucket '{cfg.bucket}' in org '{cfg.org}'"


    # --- write --------------------------------------------------------------------------------

    async def write(self, lines: list[str]) -> WriteOutcome:
        if not lines:
            return WriteOutcome(written=0, requests=0)
        progress = _WriteProgress()
        await self._write_span(lines, 0, len(lines), progress)
        refused = sorted(progress.refused, key=lambda r: r.index)
        if refused:
            log.debug("store refused %d of %d line(s) in %d request(s)", len(refused), len(lines),
                      progress.requests)
        return WriteOutcome(written=len(lines) - len(refused), refused=refused, requests=progress.requests)

    async def _write_span(self, lines: list[str], start: int, stop: int, progress: _WriteProgress) -> None:
        """Write ``lines[start:stop]``; split on 413, bisect on InfluxDB's 400/422, raise when the store
        is unavailable."""
        response = await self._post_lines(lines[start:stop])
        progress.requests += 1
        status = response.status_code
        if 200 <= status < 300:
            return
        unavailable = self._unavailable(response)
        if unavailable is not None:
            raise unavailable
        if status in (400, 413, 422):  # a 413, or InfluxDB's own 400/422 (_unavailable took the others)
            reason = store_error_text(response)
            if status == 413:
                reason = f"line too large for the store (HTTP 413): {reason}"
            if stop - start == 1:
                progress.refused.append(RefusedLine(start, reason, status))
                return
            middle = (start + stop) // 2
            await self._write_span(lines, start, middle, progress)
            await self._write_span(lines, middle, stop, progress)
            return
        # any other 4xx: the store refuses this data for good, whatever we retry
        reason = store_error_text(response)
        progress.refused.extend(RefusedLine(i, reason, status) for i in range(start, stop))

    async def _post_lines(self, lines: list[str]) -> httpx.Response:
        body = "\n".join(lines).encode("utf-8")
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.cfg.gzip:
            if len(body) >= GZIP_IN_THREAD_BYTES:
                body = await asyncio.to_thread(gzip.compress, body, GZIP_LEVEL)
            else:
                body = gzip.compress(body, GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        try:
            return await self._client.post(self._write_url, params=self._write_params, content=body,
                                           headers=headers)
        except httpx.HTTPError as e:
            raise self._transport_failure(e) from e

    def _transport_failure(self, error: httpx.HTTPError) -> SinkUnavailable:
        if isinstance(error, httpx.TimeoutException):
            what = f"no answer within {self.cfg.timeout_s:g}s ({type(error).__name__})"
        elif isinstance(error, httpx.ProxyError):  # an https:// url through a proxy that refused CONNECT
            what = f"the proxy refused the connection ({error}); {self._proxy_fix()}"
        elif isinstance(error, httpx.ConnectError):
            what = f"cannot connect ({str(error) or type(error).__name__})"
        else:
            what = f"connection failed ({type(error).__name__}: {error})"
        # refused, reset or closed without an answer: nobody was there (a timeout may be a store too busy)
        absent = isinstance(error, httpx.ConnectError | httpx.RemoteProtocolError | httpx.ReadError) and not isinstance(
            error, httpx.ProxyError)
        return SinkUnavailable(f"InfluxDB at {self._base}: {what}", absent=absent)

    def _unavailable(self, response: httpx.Response) -> SinkUnavailable | None:
        """The SinkUnavailable for a retryable or configuration answer, or None if the data is at fault."""
        status = response.status_code
        text = store_error_text(response)
        if status in (401, 403):
            if self.cfg.dialect == "v2":
                fix = "check the token and that it may write to the bucket"
            else:
                fix = "check username/password and that the user may write to the database"
            kind = "authentication failed" if status == 401 else "not authorized"
            return SinkUnavailable(f"InfluxDB {kind} (HTTP {status}: {text}); {fix}", status=status)
        if status == 407:
            return SinkUnavailable(f"a proxy on the way to InfluxDB at {self._base} asks for credentials "
                                   f"(HTTP 407: {text}); {self._proxy_fix()}", status=status)
        if status in (400, 422) and not influxdb_refusal(response):
            # not InfluxDB judging the points: what answers at url is something else (a TLS port
            # spoken to in plain HTTP, another server, a proxy's own page)
            return SinkUnavailable(
                f"{self._base} answered HTTP {status} without InfluxDB's error, so not a verdict on the "
                f"points: {text}; check url: https:// for a TLS port, and the host, port "
                "and any path prefix of InfluxDB rather than of another server", status=status)
        if status == 404:
            return SinkUnavailable(self._not_found_reason(text), status=status)
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            return SinkUnavailable(
                f"InfluxDB at {self._base} redirects (HTTP {status}) to {redacted_url(location)}; "
                "set url to the final address", status=status)
        if status >= 500 or status in (408, 429):
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return SinkUnavailable(f"InfluxDB at {self._base} answered HTTP {status}: {text}",
                                   status=status, retry_after=retry_after)
        return None

    def _proxy_fix(self) -> str:
        variable = "HTTPS_PROXY" if self._base.lower().startswith("https:") else "HTTP_PROXY"
        return (f"the agent uses the proxy of {variable} (or ALL_PROXY) from its environment: give the "
                "proxy's credentials in that URL (http://user:password@proxy:3128), or list InfluxDB's host "
                "in NO_PROXY to reach it directly")

    def _not_found_reason(self, text: str) -> str:
        lowered = text.lower()
        if self.cfg.dialect == "v1" and "database not found" in lowered:
            return (f"{self._target} does not exist (create it: CREATE DATABASE "
                    f"{influxql_identifier(self.cfg.database or '')}); InfluxDB said: {text}")
        if self.cfg.dialect == "v2" and ("bucket" in lowered or "organization" in lowered):
            return f"{self._target} not found; create it or fix org/bucket; InfluxDB said: {text}"
        # a bare 404 page: the URL path is wrong, or the dialect does not match the server
        hint = "" if self.cfg.dialect == "v1" else "; dialect 'v2' needs InfluxDB 2.x or 3.x"
        return (f"{self._write_url} not found (HTTP 404: {text}); "
                f"check url (and any path prefix) and dialect{hint}")

    # --- check --------------------------------------------------------------------------------

    async def check(self) -> CheckResult:
        try:
            ping = await self._client.get(f"{self._base}/ping")
        except httpx.HTTPError as e:
            return CheckResult(self.name, False, self._transport_failure(e).reason)
        version = ping.headers.get("X-Influxdb-Version")
        server = f"InfluxDB {version}" if version else "InfluxDB (version not reported)"
        if ping.status_code in (401, 403):  # InfluxDB 3 asks for the token even on /ping
            return CheckResult(self.name, False, f"{server} at {self._base}: authentication failed "
                               f"(check {self._credentials_name()}): {store_error_text(ping)}")
        if ping.status_code not in (200, 204):
            return CheckResult(self.name, False, f"{self._base}/ping answered HTTP {ping.status_code}; "
                               "is url the address of an InfluxDB server?")
        note = ""
        try:
            if self.cfg.dialect == "v1":
                problem, note = await self._check_v1_database()
            else:
                problem, note = await self._check_v2_bucket(version)
        except httpx.HTTPError as e:
            return CheckResult(self.name, False, f"{server}: {self._transport_failure(e).reason}")
        if problem:
            return CheckResult(self.name, False, f"{server} at {self._base}: {problem}")
        return CheckResult(self.name, True, f"{server} at {self._base}: {self._target} {note or 'ready'}")

    # --- claims (fmc check) --------------------------------------------------------------------

    async def equipment_claims(self, enterprise: str, equipment: list[str]) -> list[EquipmentClaim]:
        """The gateways that counted these equipment ids of ``enterprise`` (``ClaimsSink``; InfluxQL
        over the v1 ``/query`` API: 1.x, and 2.x/3.x with a DBRP mapping). The agent's user must be
        allowed to read the database; otherwise the store cannot answer and this raises."""
        from fmc.stores.influxdb.query import quote_literal

        ids = sorted(set(equipment))
        daily = self._measurement("equipment_daily")
        where = f"WHERE enterprise = {quote_literal(enterprise)}"
        spans: dict[tuple[str, str], list[int]] = {}
        for first in range(0, len(ids), CLAIMS_PER_QUERY):
            chunk = " OR ".join(f"equipment = {quote_literal(e)}" for e in ids[first:first + CLAIMS_PER_QUERY])
            # first() and last() alone report the time of the row they picked: a statement each; only the
            # days the equipment was in that gateway's inventory
            for selector in ("first", "last"):
                query = (f"SELECT {selector}(in_inventory_s) FROM {daily} {where} AND ({chunk}) "
                         "AND in_inventory_s > 0 GROUP BY equipment, gateway")
                for tags, rows in await self._series(query):
                    if tags.get("equipment") and rows and isinstance(rows[0][0], int):
                        spans.setdefault((tags["equipment"], tags.get("gateway") or ""), []).append(rows[0][0])
        if not spans:
            return []
        latest = {tags.get("gateway") or "": rows[0][0]
                  for tags, rows in await self._series(f"SELECT last(online_s) FROM {daily} {where} GROUP BY gateway")
                  if rows and isinstance(rows[0][0], int)}
        return [EquipmentClaim(e, g, max(times), min(times), latest.get(g)) for (e, g), times in sorted(spans.items())]

    async def gateway_hosts(self, enterprise: str, since_ns: int) -> list[GatewayHost]:
        """The hosts that wrote ``agent`` points of ``enterprise`` since ``since_ns``, per gateway tag
        (InfluxQL over ``/query``, as ``equipment_claims``)."""
        from fmc.stores.influxdb.query import quote_literal

        query = (f"SELECT last(uptime_s) FROM {self._measurement('agent')} WHERE enterprise = "
                 f"{quote_literal(enterprise)} AND time >= {int(since_ns)} GROUP BY host, gateway")
        return [GatewayHost(tags["host"], tags.get("gateway") or "", rows[0][0])
                for tags, rows in await self._series(query)
                if tags.get("host") and rows and isinstance(rows[0][0], int)]

    def _measurement(self, name: str) -> str:
        # lazy: the query module builds on this one (quoting that refuses what InfluxQL cannot carry)
        from fmc.stores.influxdb.query import quote_ident

        if self.cfg.retention_policy:
            return f"{quote_ident(self.cfg.retention_policy)}.{quote_ident(name)}"
        return quote_ident(name)

    async def _series(self, query: str) -> list[tuple[dict[str, str], list[list[Any]]]]:
        """(tags, rows) of every series a read-only InfluxQL ``query`` answers; raises SinkUnavailable
        when the store cannot answer it (down, not allowed to read, an error)."""
        params = {"db": self.cfg.database or self.cfg.bucket or "", "epoch": "ns"}
        if self.cfg.retention_policy:
            params["rp"] = self.cfg.retention_policy
        try:
            response = await self._client.post(f"{self._base}/query", params=params, data={"q": query})
        except httpx.HTTPError as e:
            raise self._transport_failure(e) from None
        if response.status_code in (401, 403):
            raise SinkUnavailable(f"{self._target} may not be read with {self._credentials_name()} (HTTP "
                                  f"{response.status_code}: {store_error_text(response)}); the check needs "
                                  "read access", status=response.status_code)
        if response.status_code != 200:
            raise SinkUnavailable(f"{self._base}/query answered HTTP {response.status_code}: "
                                  f"{store_error_text(response)}", status=response.status_code)
        try:
            body = response.json()
        except ValueError:
            raise SinkUnavailable(f"{self._base}/query answered something that is not JSON") from None
        error = _query_error(body)
        if error:
            raise SinkUnavailable(f"{self._base}/query: {error}")
        out: list[tuple[dict[str, str], list[list[Any]]]] = []
        for result in body.get("results") or []:
            for series in (result.get("series") or []) if isinstance(result, dict) else []:
                out.append((series.get("tags") or {}, series.get("values") or []))
        return out

    async def ping(self) -> None:
        """``GET /ping``: InfluxDB answers it from memory, without touching data (1.x, 2.x, 3.x)."""
        try:
            response = await self._client.get(f"{self._base}/ping", timeout=PING_TIMEOUT_S)
        except httpx.HTTPError as e:
            raise self._transport_failure(e) from e
        if not 200 <= response.status_code < 300:
            raise SinkUnavailable(f"InfluxDB at {self._base}: /ping answered HTTP {response.status_code}",
                                  status=response.status_code)

    def _credentials_name(self) -> str:
        return "the token" if self.cfg.dialect == "v2" else "username/password"

    async def _check_v1_database(self) -> tuple[str | None, str]:
        """(problem or None, note for the detail) for the database, retention policy and credentials."""
        body, problem, _ = await self._v1_query("SHOW DATABASES")
        if problem:
            return problem, ""
        names = _first_column(body)
        database = self.cfg.database or ""
        if database not in names:
            problem = (f"database '{database}' does not exist (create it: CREATE DATABASE "
                       f"{influxql_identifier(database)})")
            if self.cfg.username:  # 1.x lists to a non-admin user only the databases it has rights on
                problem += (f", or user '{self.cfg.username}' has no rights on it (GRANT WRITE ON "
                            f"{influxql_identifier(database)} TO {influxql_identifier(self.cfg.username)})")
            return problem, ""
        rp = self.cfg.retention_policy
        if not rp:
            return None, ""
        body, problem, status = await self._v1_query(f"SHOW RETENTION POLICIES ON {influxql_identifier(database)}")
        if status == 403:
            # listing policies needs READ; a write-only user (what an agent needs) cannot, which is fine
            return None, f"ready (retention policy '{rp}' not checked: the user may not read the database)"
        if problem:
            return problem, ""
        if rp not in _first_column(body):
            return (f"retention policy '{rp}' does not exist on database '{database}' (create it: "
                    f"CREATE RETENTION POLICY {influxql_identifier(rp)} ON {influxql_identifier(database)} "
                    "DURATION INF REPLICATION 1)"), ""
        return None, ""

    async def _v1_query(self, query: str) -> tuple[dict[str, Any], str | None, int]:
        """(answer, problem or None, HTTP status) of a read-only InfluxQL query."""
        response = await self._client.get(f"{self._base}/query", params={"q": query})
        status = response.status_code
        if status == 401:
            return {}, f"authentication failed (check username/password): {store_error_text(response)}", status
        if status == 403:
            return {}, f"not authorized to run {query}: {store_error_text(response)}", status
        if status != 200:
            return {}, f"{query} answered HTTP {status}: {store_error_text(response)}", status
        try:
            body = response.json()
        except ValueError:
            return {}, f"{query} answered something that is not JSON: {store_error_text(response)}", status
        error = _query_error(body)
        if error:
            return {}, f"{query} failed: {error}", status
        return body, None, status

    async def _check_v2_bucket(self, version: str | None) -> tuple[str | None, str]:
        """(problem or None, note for the detail) for the org/bucket and the token."""
        response = await self._client.get(f"{self._base}/api/v2/buckets",
                                          params={"name": self.cfg.bucket or "", "org": self.cfg.org or ""})
        text = store_error_text(response)
        if response.status_code in (401, 403):
            return f"authentication failed (check the token): {text}", ""
        if response.status_code == 404 and (version or "").lstrip("v").startswith("3"):
            # InfluxDB 3 has no bucket API (and creates a database on its first write)
            return None, "not checked (InfluxDB 3 has no bucket API; the first write creates it)"
        if response.status_code == 404:
            return f"org '{self.cfg.org}' or its buckets not found ({text}); check org and dialect", ""
        if response.status_code != 200:
            return f"listing buckets answered HTTP {response.status_code}: {text}", ""
        try:
            buckets = response.json().get("buckets") or []
        except (ValueError, AttributeError):
            return f"listing buckets answered something unexpected: {text}", ""
        if not any(isinstance(b, dict) and b.get("name") == self.cfg.bucket for b in buckets):
            return (f"bucket '{self.cfg.bucket}' does not exist in org '{self.cfg.org}' "
                    f"(create it: influx bucket create --name {self.cfg.bucket} --org {self.cfg.org})"), ""
        return None, ""

    async def aclose(self) -> None:
        await self._client.aclose()


def _query_error(body: object) -> str | None:
    """The first error in a 1.x ``/query`` answer, if any."""
    if not isinstance(body, dict):
        return "unexpected answer"
    if isinstance(body.get("error"), str):
        return body["error"]
    for result in body.get("results") or []:
        if isinstance(result, dict) and isinstance(result.get("error"), str):
            return result["error"]
    return None


def _first_column(body: dict[str, Any]) -> set[str]:
    """Values of the first column of every series in a 1.x ``/query`` answer (names, for SHOW …)."""
    names: set[str] = set()
    for result in body.get("results") or []:
        for series in (result.get("series") or []) if isinstance(result, dict) else []:
            for row in series.get("values") or []:
                if row:
                    names.add(str(row[0]))
    return names
