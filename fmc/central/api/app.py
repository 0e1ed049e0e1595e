"""``fmc api``: the aggregated REST API (DESIGN §5, docs/api.md).

FastAPI on the indicator service (``fmc.central.service.IndicatorService``): every request is
authenticated with a scoped key (``fmc.central.keys``), its filters are narrowed to the key's scope
before anything is read, and the store is queried only with that scope. JSON by default, CSV
(UTF-8 with BOM, CRLF, Chinese or English headers, long format) on ``Accept: text/csv`` or
``?format=csv``; ``ETag`` / ``If-None-Match``; pagination with ``Link`` and ``X-Total-Count``.

Module import stays light (``fmc`` loads it to register the command): FastAPI and the service are
imported inside ``create_app`` and ``serve``. No ``from __future__ import annotations`` here:
FastAPI reads the endpoint annotations, which name classes imported inside ``create_app``.
"""

import csv
import hashlib
import io
import logging
import math
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fmc.central.keys import AccessDenied, BadCombination, KeyScope, KeyStore

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fmc.central.api.models import IndicatorValue
    from fmc.central.config import ApiConfig
    from fmc.central.service import Enterprise, IndicatorService
    from fmc.indicators.engine import IndicatorResult, Period
    from fmc.indicators.plan import Targets
    from fmc.indicators.pooling import GroupRow

log = logging.getLogger("fmc.api")

API_VERSION = "1"
CACHE_CONTROL = "private, max-age=0, must-revalidate"
VARY = "Authorization, Accept"
HEALTH_TIMEOUT_S = 10.0
OFF_LOOP_ROWS = 500  # pages with more lines than this are built in a worker thread
RENDERED_MAX_BODY = 4 << 20  # bodies kept for reuse by ETag: each at most 4 MiB …
RENDERED_MAX_BYTES = 64 << 20  # … and 64 MiB in all, least recently used out first
T = TypeVar("T")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_MEDIA_RANGE = re.compile(r"\s*([^;,\s]+)\s*((?:;[^,]*)?)")


# --- pure helpers: cells, CSV, negotiation, ETags, pagination ----------------------------------------------------


def finite(value: float | None) -> float | None:
    """A float for JSON and CSV; None for a missing or non-finite figure (never NaN or ±inf)."""
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def csv_cell(value: object) -> str:
    """A CSV cell: '' for None, shortest round-trip text for numbers (no thousands separators),
    text with a leading apostrophe when Excel would read it as a formula (= + - @ tab CR)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        v = finite(value)
        return "" if v is None else repr(v)
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    """UTF-8 with BOM (Excel then reads Chinese headers right), CRLF line ends."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([csv_cell(h) for h in header])
    for row in rows:
        writer.writerow([csv_cell(c) for c in row])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def wants_csv(fmt: str | None, accept: str | None) -> bool:
    """``?format=`` decides; else CSV when Accept names text/csv at least as high as JSON."""
    if fmt is not None:
        return fmt == "csv"
    csv_q = json_q = 0.0
    for m in _MEDIA_RANGE.finditer(accept or ""):
        media, params = m.group(1).lower(), m.group(2)
        q = 1.0
        qm = re.search(r";\s*q\s*=\s*([0-9.]+)", params)
        if qm:
            try:
                q = float(qm.group(1))
            except ValueError:
                q = 0.0
        if media == "text/csv":
            csv_q = max(csv_q, q)
        elif media in ("application/json", "application/*"):
            json_q = max(json_q, q)
    return csv_q > 0 and csv_q >= json_q


def make_etag(*parts: object) -> str:
    """A weak validator from the figures' version and everything that shapes the representation."""
    return 'W/"' + hashlib.sha256(repr(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison against an ``If-None-Match`` list (or ``*``)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == opaque for t in if_none_match.split(","))


def page_bounds(page: int, page_size: int, total: int) -> tuple[int, int]:
    start = min((page - 1) * page_size, total)
    return start, min(start + page_size, total)


def last_page(page_size: int, total: int) -> int:
    return max(1, -(-total // page_size))


def link_header(path: str, query: Sequence[tuple[str, str]], page: int, page_size: int, total: int) -> str:
    """RFC 8288 links (relative references, right behind a proxy too): first, prev, next, last."""
    from urllib.parse import urlencode

    def url(p: int) -> str:
        params = [(k, v) for k, v in query if k not in ("page", "page_size")]
        params += [("page", str(p)), ("page_size", str(page_size))]
        return f"<{path}?{urlencode(params)}>"

    last = last_page(page_size, total)
    links = [f'{url(1)}; rel="first"']
    if page > 1:
        links.append(f'{url(min(page - 1, last))}; rel="prev"')
    if page < last:
        links.append(f'{url(page + 1)}; rel="next"')
    links.append(f'{url(last)}; rel="last"')
    return ", ".join(links)


def indicator_value(
    result: "IndicatorResult", rank: int | None, *, unit: str, with_rank: bool = True
) -> "IndicatorValue":
    from fmc.central.api.models import IndicatorValue
    from fmc.indicators.engine import PooledResult

    pooled = isinstance(result, PooledResult)
    return IndicatorValue(
        indicator=result.indicator,  # type: ignore[arg-type]
        unit=unit,
        period=result.period.label,
        value=finite(result.value),
        baseline=finite(result.baseline),
        target=finite(result.target),
        yoy=finite(result.yoy),
        avg_annual=finite(result.avg_annual),
        coverage=finite(result.coverage) or 0.0,
        status=result.status,
        rank=rank if with_rank else None,
        members=result.members if pooled else None,
        included=result.included if pooled else None,
        assessed=result.assessed if pooled else None,
        met_count=result.met_count if pooled else None,
        met_share=finite(result.met_share) if pooled else None,
    )


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """One sentence for a list of pydantic/FastAPI validation errors, naming each parameter,
    what it takes and (briefly) what was sent."""
    from fmc.central.api.models import PARAMETER_HINTS
    from fmc.indicators.reports import REPORT_FIELDS

    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        where, name = (loc[0], loc[-1]) if loc else ("", "")
        if where == "body":
            field = ".".join(loc[1:])
            what = f"body field '{field}'" if field else "the body"
            hint = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                hint = "not a report figure; the figures are " + ", ".join(REPORT_FIELDS)
            if err.get("type") == "missing" and not field:
                hint = "send a JSON object of figures, e.g. {\"value_added\": 12000000}"
        else:
            what = f"{where} parameter '{name}'" if where in ("query", "path", "header") else f"'{name}'"
            key = "report_period" if (where, name) == ("path", "period") else name
            hint = PARAMETER_HINTS.get(key, err.get("msg", "invalid"))
            if err.get("type") == "missing":
                hint = f"it is required: {hint}"
        given = err.get("input")
        shown = ""
        if isinstance(given, str | int | float) and err.get("type") != "missing":
            text = repr(given)
            shown = f" (got {text[:40]}{'…' if len(text) > 40 else ''})"
        parts.append(f"{what}: {hint}{shown}")
    return "; ".join(parts) + "." if parts else "invalid request."


# --- the app ---------------------------------------------------------------------------------------------------------


def create_app(service: "IndicatorService", keys: KeyStore, api: "ApiConfig") -> "FastAPI":
    """The FastAPI app; its lifespan starts and closes the service."""
    from fastapi import Depends, FastAPI, Path, Query, Request, Response
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from pydantic import BeforeValidator, ValidationError
    from starlette.exceptions import HTTPException

    from fmc.central.api.models import (
        ENTERPRISE_CSV_COLUMNS,
        ENTERPRISE_ID_PATTERN,
        INDICATOR_CSV_COLUMNS,
        INDUSTRY_QUERY_PATTERN,
        PAGE_MAX,
        PERIOD_QUERY_PATTERN,
        REGION_QUERY_PATTERN,
        REPORT_CSV_COLUMNS,
        REPORT_PERIOD_PATTERN,
        TARGET_CSV_COLUMNS,
        YEAR_MAX,
        YEAR_MIN,
        EnterpriseIndicators,
        EnterpriseOut,
        EnterprisePage,
        Filters,
        Format,
        Health,
        IndicatorName,
        IndicatorPage,
        Lang,
        LevelName,
        Problem,
        ReportFigures,
        ReportOut,
        ReportsOut,
        Row,
        TargetsOut,
        indicator_labels,
        status_labels,
        whole_number,
    )
    from fmc.central.service import UnknownEnterprise
    from fmc.central.store import Scope, StoreQueryError
    from fmc.indicators.labels import INDICATOR_LABELS, STATUS_LABELS, industry_label
    from fmc.indicators.plan import INDICATORS
    from fmc.indicators.reports import REPORT_FIELDS, EnterpriseReport

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.aclose()

    app = FastAPI(
        title="fmc API",
        version=API_VERSION,
        summary="The indicators of Zhejiang's 2017-2020 plan per enterprise, county, city, province and industry",
        description="Every endpoint but /v1/health needs `Authorization: Bearer <key>` (keys: `fmc keys create`). "
        "JSON by default; CSV with `Accept: text/csv` or `?format=csv`. See docs/api.md.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        redirect_slashes=False,  # /v1/enterprises/ is no endpoint: a 404, not a redirect elsewhere
    )

    # --- errors: one sentence each, never a traceback ---

    def problem(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
        if not detail.endswith((".", "?", "!")):
            detail += "."  # every detail reads as a sentence
        return JSONResponse({"detail": detail}, status_code=status,
                            headers={"Cache-Control": "no-store", **(headers or {})})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, describe_errors(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400 and detail.startswith("There was an error parsing the body"):
            # FastAPI's answer to a body that is not UTF-8 text; malformed JSON is a 422 already
            return problem(422, "the body is not JSON text (UTF-8): send a JSON object of figures, "
                           'e.g. {"value_added": 12000000}')
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such endpoint; the endpoints are listed at /docs"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on this endpoint; see /docs"
        return problem(exc.status_code, detail, exc.headers)

    @app.exception_handler(StoreQueryError)
    async def _store_down(request: Request, exc: StoreQueryError) -> JSONResponse:
        log.warning("store query failed: %s", exc)  # the detail (URLs, files) stays in the server log
        return problem(503, "the store is unreachable or cannot answer right now; try again later",
                       {"Retry-After": "30"})

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem(500, "internal error; the server log has the details")

    # --- authentication and parameters ---

    bearer = HTTPBearer(auto_error=False, description="an fmc API key: fmc_<id>_<secret> (fmc keys create)")

    # Dependencies are `async def`: FastAPI runs a plain `def` in a worker thread, a hop that cost
    # more than the work itself (a key look-up is microseconds of SQLite).
    async def authenticated(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> KeyScope:
        if credentials is None:
            raise HTTPException(401, "an API key is required: send Authorization: Bearer <key> "
                                "(fmc keys create makes one)", headers={"WWW-Authenticate": "Bearer"})
        scope = keys.authenticate(credentials.credentials)
        if scope is None:
            raise HTTPException(401, "the API key is not valid (unknown, malformed or revoked)",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return scope

    Key = Annotated[KeyScope, Depends(authenticated)]

    def only(*allowed: str) -> Any:
        """Refuse unknown and repeated query parameters: a typo such as ?regoin=3306 must not
        silently widen the answer to the key's whole scope."""

        async def check(request: Request) -> None:
            seen: set[str] = set()
            for name, _ in request.query_params.multi_items():
                if name not in allowed:
                    listed = ", ".join(allowed) if allowed else "none"
                    raise HTTPException(422, f"unknown query parameter {name[:40]!r}; this endpoint takes: {listed}.")
                if name in seen:
                    raise HTTPException(422, f"query parameter {name!r} is given more than once; give it once.")
                seen.add(name)

        return Depends(check)

    PeriodQ = Annotated[str, Query(pattern=PERIOD_QUERY_PATTERN, max_length=20,
                                  description="2019, 2019-Q2, 2019-03, 2019-YTD or 2019-YTD-06-30 (local time)")]
    Region = Annotated[str | None, Query(pattern=REGION_QUERY_PATTERN, max_length=6,
                                         description="GB/T 2260 code prefix: 33, 3306 or 330602")]
    Industry = Annotated[str | None, Query(pattern=INDUSTRY_QUERY_PATTERN, max_length=4,
                                           description="GB/T 4754 code of 2 to 4 digits, e.g. 17")]
    EnterpriseId = Annotated[str, Path(pattern=ENTERPRISE_ID_PATTERN, max_length=64, description="enterprise id")]
    # Query before the validator: so the bounds reach the OpenAPI schema as minimum/maximum
    PageNo = Annotated[int, Query(ge=1, le=PAGE_MAX, description="page number, from 1"),
                       BeforeValidator(whole_number)]
    PageSize = Annotated[int, Query(ge=1, le=api.page_size_max,
                                    description=f"rows per page, at most {api.page_size_max}"),
                         BeforeValidator(whole_number)]
    Fmt = Annotated[Format | None, Query(description="json or csv (instead of the Accept header)")]
    LangQ = Annotated[Lang, Query(description="language of CSV headers and labels")]

    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": "no key, or an invalid or revoked key"},
        403: {"model": Problem, "description": "outside the key's scope"},
        422: {"model": Problem, "description": "a parameter is invalid"},
        503: {"model": Problem, "description": "the store is unreachable"},
    }
    csv_ok: dict[int | str, dict[str, Any]] = {
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "JSON, or CSV on request"},
        304: {"description": "not modified (If-None-Match)"},
    }

    def parse_period(text: str) -> "Period":
        try:
            return service.parse_period(text)
        except ValueError as e:
            raise HTTPException(422, f"query parameter 'period': {e}") from None

    def forbidden(e: Exception) -> HTTPException:
        return HTTPException(403, str(e))

    def headers_for(etag: str) -> dict[str, str]:
        return {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": VARY}

    # Bodies already rendered, by ETag: a warm request is a look-up, not a rebuild (bounded in bytes).
    rendered: OrderedDict[str, tuple[bytes, str, dict[str, str]]] = OrderedDict()
    rendered_bytes = 0

    def remember(etag: str, body: bytes, media: str, headers: dict[str, str]) -> None:
        nonlocal rendered_bytes
        if len(body) > RENDERED_MAX_BODY or etag in rendered:
            return
        rendered[etag] = (body, media, dict(headers))
        rendered_bytes += len(body)
        while rendered_bytes > RENDERED_MAX_BYTES:
            _, (old, _, _) = rendered.popitem(last=False)
            rendered_bytes -= len(old)

    def not_modified(request: Request, etag: str) -> Response | None:
        """304 when the client has this ETag; the rendered body when this process made it before."""
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers_for(etag))
        hit = rendered.get(etag)
        if hit is not None:
            rendered.move_to_end(etag)
            body, media, headers = hit
            return Response(body, media_type=media, headers=dict(headers))
        return None

    async def respond(
        request: Request,
        *,
        json_body: Any,
        csv_header: Sequence[str],
        csv_rows: Sequence[Sequence[object]],
        as_csv: bool,
        filename: str,
        etag: str | None = None,
        paging: tuple[int, int, int] | None = None,
        size: int | None = None,
    ) -> Response:
        """200 in the format asked for, with validators, caching headers and pagination headers.
        Without an ``etag`` the body's own hash is the validator."""
        import json

        def encode() -> bytes:
            if as_csv:
                return csv_bytes(csv_header, csv_rows)
            return json.dumps(json_body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

        body = await off_loop(encode, size if size is not None else len(csv_rows))
        media = "text/csv; charset=utf-8" if as_csv else "application/json"
        tag = etag or make_etag(hashlib.sha256(body).hexdigest(), as_csv)
        cached = not_modified(request, tag)
        if cached is not None:
            return cached
        headers = headers_for(tag)
        if as_csv:
            headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        if paging is not None:
            page, page_size, total = paging
            headers["X-Total-Count"] = str(total)
            headers["Link"] = link_header(request.url.path, request.query_params.multi_items(), page, page_size,
                                          total)
        if etag is not None:  # a validator that names the representation: the body can be reused
            remember(tag, body, media, headers)
        return Response(body, media_type=media, headers=headers)

    async def off_loop(work: Callable[[], T], size: int) -> T:
        """Large pages are built and encoded in a worker thread, so one bulk download does not hold
        up every other request for seconds."""
        import asyncio

        return await asyncio.to_thread(work) if size > OFF_LOOP_ROWS else work()

    def labels(lang: str, columns: Sequence[tuple[str, str, str]]) -> list[str]:
        return [zh if lang == "zh" else en for _, zh, en in columns]

    async def one_enterprise(key: KeyScope, enterprise_id: str) -> "Enterprise":
        """The enterprise if the key may use it; 403 alike for out-of-scope ids that exist and
        that do not; 404 only where the key could see the enterprise if it existed."""
        if key.kind == "enterprise" and enterprise_id != key.enterprise:  # decided without a lookup
            raise HTTPException(403, "this enterprise is outside the key's scope")
        known = await service.enterprise(enterprise_id)
        decision = key.enterprise_access(enterprise_id, known.region if known else None)
        if decision == "forbidden":
            raise HTTPException(403, "this enterprise is outside the key's scope")
        if decision == "not_found" or known is None:
            raise HTTPException(404, f"no enterprise {enterprise_id} is known (no data, report or registry entry)")
        return known

    def enterprise_out(e: "Enterprise") -> EnterpriseOut:
        return EnterpriseOut(enterprise=e.enterprise, name=e.name, region=e.region, industry=e.industry)

    def enterprise_cells(e: "Enterprise", lang: str) -> list[object]:
        return [e.enterprise, e.name, e.region, e.industry, industry_label(e.industry[:2], lang)]

    def indicator_cells(identity: Sequence[object], value: "IndicatorValue", lang: str) -> list[object]:
        zh, en, _ = INDICATOR_LABELS[value.indicator]
        status = STATUS_LABELS.get(value.status, (value.status, value.status))
        return [
            *identity, value.indicator, zh if lang == "zh" else en, value.unit, value.period, value.value,
            value.baseline, value.target, value.yoy, value.avg_annual, value.coverage, value.status,
            status[0] if lang == "zh" else status[1], value.rank, value.members, value.included, value.assessed,
            value.met_count, value.met_share,
        ]

    def values_of(row: "GroupRow", wanted: Sequence[str], *, with_rank: bool) -> dict[str, "IndicatorValue"]:
        return {
            name: indicator_value(row.results[name], row.ranks.get(name), unit=INDICATOR_LABELS[name][2],
                                  with_rank=with_rank)
            for name in wanted
            if name in row.results
        }

    # --- endpoints ---

    @app.get("/v1/health", response_model=Health, tags=["service"],
             responses={503: {"model": Health, "description": "the store is unreachable"}},
             dependencies=[only()])
    async def health() -> Response:
        """Whether the service runs and its store answers (no key needed)."""
        import asyncio

        try:
            await asyncio.wait_for(service.check(), HEALTH_TIMEOUT_S)
        except (StoreQueryError, TimeoutError) as e:
            log.warning("health: store unreachable: %s", e)
            body = Health(status="unavailable", store="unreachable", detail="the store is unreachable")
            return JSONResponse(body.model_dump(mode="json"), status_code=503, headers={"Cache-Control": "no-store"})
        return JSONResponse(Health(status="ok", store="reachable").model_dump(mode="json"),
                            headers={"Cache-Control": "no-store"})

    @app.get("/v1/targets", response_model=TargetsOut, tags=["plan"], responses={**csv_ok, **errors},
             dependencies=[only("format", "lang")])
    async def targets(request: Request, key: Key, format: Fmt = None, lang: LangQ = "zh") -> Response:
        """The plan and policy the figures are measured against, with labels and units."""
        t = service.targets
        body = TargetsOut(targets=t, indicators=indicator_labels(), statuses=status_labels())
        rows = []
        for name in INDICATORS:
            zh, en, unit = INDICATOR_LABELS[name]
            target = t.indicators.get(name)  # type: ignore[call-overload]
            rows.append([t.plan.id, t.base_year, t.first_year, t.last_year, name, zh if lang == "zh" else en, unit,
                         target.kind if target else None, float(target.step) if target else None,
                         float(target.cap) if target and target.cap is not None else None,
                         target.status_basis if target else None])
        return await respond(request, json_body=body.model_dump(mode="json"),
                             csv_header=labels(lang, TARGET_CSV_COLUMNS), csv_rows=rows,
                             as_csv=wants_csv(format, request.headers.get("accept")),
                             filename=f"fmc-targets-{t.plan.id}.csv")

    @app.get("/v1/enterprises", response_model=EnterprisePage, tags=["enterprises"], responses={**csv_ok, **errors},
             dependencies=[only("region", "industry", "page", "page_size", "format", "lang")])
    async def enterprises(
        request: Request,
        key: Key,
        region: Region = None,
        industry: Industry = None,
        page: PageNo = 1,
        page_size: PageSize = api.page_size_default,
        format: Fmt = None,
        lang: LangQ = "zh",
    ) -> Response:
        """The enterprises in the key's scope, narrowed by the filters."""
        try:
            region_prefix, industries, only_ids = key.scope_parts(region, industry)
        except AccessDenied as e:
            raise forbidden(e) from None
        found = await service.enterprises(Scope(region_prefix, industries, only_ids))
        found = [e for e in found if key.row_visible("enterprise", e.region, e.enterprise)]
        start, end = page_bounds(page, page_size, len(found))
        items = found[start:end]
        body = EnterprisePage(items=[enterprise_out(e) for e in items], page=page, page_size=page_size,
                              total=len(found))
        return await respond(request, json_body=body.model_dump(mode="json"),
                             csv_header=labels(lang, ENTERPRISE_CSV_COLUMNS),
                             csv_rows=[enterprise_cells(e, lang) for e in items],
                             as_csv=wants_csv(format, request.headers.get("accept")), filename="fmc-enterprises.csv",
                             paging=(page, page_size, len(found)))

    @app.get("/v1/enterprises/{enterprise_id}", response_model=EnterpriseOut, tags=["enterprises"],
             responses={**csv_ok, **errors, 404: {"model": Problem, "description": "no such enterprise"}},
             dependencies=[only("format", "lang")])
    async def enterprise(
        request: Request, key: Key, enterprise_id: EnterpriseId, format: Fmt = None, lang: LangQ = "zh"
    ) -> Response:
        """One enterprise: id, name, region, industry."""
        e = await one_enterprise(key, enterprise_id)
        return await respond(request, json_body=enterprise_out(e).model_dump(mode="json"),
                             csv_header=labels(lang, ENTERPRISE_CSV_COLUMNS), csv_rows=[enterprise_cells(e, lang)],
                             as_csv=wants_csv(format, request.headers.get("accept")),
                             filename=f"fmc-enterprise-{e.enterprise}.csv")

    @app.get("/v1/enterprises/{enterprise_id}/indicators", response_model=EnterpriseIndicators,
             tags=["indicators"],
             responses={**csv_ok, **errors, 404: {"model": Problem, "description": "no such enterprise"}},
             dependencies=[only("period", "indicator", "format", "lang")])
    async def enterprise_indicators(
        request: Request,
        key: Key,
        enterprise_id: EnterpriseId,
        period: PeriodQ,
        indicator: IndicatorName | None = None,
        format: Fmt = None,
        lang: LangQ = "zh",
    ) -> Response:
        """Every indicator of one enterprise for a period: value, unit, baseline, target, changes,
        coverage and status (no rank: see /v1/indicators?level=enterprise)."""
        e = await one_enterprise(key, enterprise_id)
        p = parse_period(period)
        computed = await service.indicators("enterprise", p, Scope(enterprises=(e.enterprise,)))
        wanted = [indicator] if indicator else list(INDICATORS)
        as_csv = wants_csv(format, request.headers.get("accept"))
        etag = make_etag(computed.etag, "enterprise-indicators", e, tuple(wanted), as_csv, lang)
        cached = not_modified(request, etag)
        if cached is not None:
            return cached
        row = next((r for r in computed.rows if r.enterprise == e.enterprise), None)
        if row is not None:
            values = values_of(row, wanted, with_rank=False)
        else:  # known (registry) but without any data for the period: say so, never invent a 0
            values = {
                name: indicator_value(_empty_result(name, p, service.targets), None,
                                      unit=INDICATOR_LABELS[name][2], with_rank=False)
                for name in wanted
            }
        body = EnterpriseIndicators(enterprise=enterprise_out(e), period=p.label, computed_at=computed.computed_at,
                                    indicators=values)
        identity = ["enterprise", e.region, e.industry, e.enterprise, e.name]
        return await respond(request, json_body=body.model_dump(mode="json"),
                             csv_header=labels(lang, INDICATOR_CSV_COLUMNS),
                             csv_rows=[indicator_cells(identity, v, lang) for v in values.values()], as_csv=as_csv,
                             filename=f"fmc-indicators-{e.enterprise}-{p.label}.csv", etag=etag)

    @app.get("/v1/indicators", response_model=IndicatorPage, tags=["indicators"], responses={**csv_ok, **errors},
             dependencies=[only("level", "period", "region", "industry", "enterprise", "indicator", "page",
                                "page_size", "format", "lang")])
    async def indicators(
        request: Request,
        key: Key,
        level: Annotated[LevelName, Query(description="enterprise, county, city, province or industry")],
        period: PeriodQ,
        region: Region = None,
        industry: Industry = None,
        enterprise: Annotated[str | None, Query(pattern=ENTERPRISE_ID_PATTERN, max_length=64,
                                                description="one enterprise (level enterprise only)")] = None,
        indicator: IndicatorName | None = None,
        page: PageNo = 1,
        page_size: PageSize = api.page_size_default,
        format: Fmt = None,
        lang: LangQ = "zh",
    ) -> Response:
        """The rows of a level in the key's scope, each with its indicators, ranks and (for groups)
        members, assessed, met_count and met_share. Groups are pooled from the enterprises in scope."""
        try:
            key.level_allowed(level, region)
            region_prefix, industries, only_ids = key.scope_parts(region, industry, enterprise)
        except AccessDenied as e:
            raise forbidden(e) from None
        except BadCombination as e:
            raise HTTPException(422, str(e)) from None
        if enterprise is not None and level != "enterprise":
            raise HTTPException(422, "query parameter 'enterprise' goes with level=enterprise only; a group "
                                "pooled from one enterprise is not the group's figure")
        if level == "industry" and industry is not None and len(industry) > 2:
            raise HTTPException(422, f"level industry with industry={industry}: industry rows are GB/T 4754 "
                                "divisions (2 digits); give a 2-digit industry or level enterprise")
        p = parse_period(period)
        scope = Scope(region_prefix, industries, only_ids)
        computed = await service.indicators(level, p, scope)
        rows = [r for r in computed.rows if key.row_visible(level, r.region, r.enterprise)]
        if len(rows) != len(computed.rows):  # never expected: the scope went into the query
            log.error("dropped %d row(s) outside the key's scope %s", len(computed.rows) - len(rows), key.text)
        start, end = page_bounds(page, page_size, len(rows))
        items = rows[start:end]
        as_csv = wants_csv(format, request.headers.get("accept"))
        names: dict[str, str | None] = {}
        if level == "enterprise" and items:
            ids = tuple(r.enterprise for r in items if r.enterprise)
            names = {e.enterprise: e.name for e in await service.enterprises(Scope(enterprises=ids))}
        filters = Filters(region=region, industry=industry, enterprise=enterprise, indicator=indicator)
        etag = make_etag(computed.etag, "indicators", key.text, level, p.label, filters.model_dump_json(), page,
                         page_size, as_csv, lang, sorted(names.items(), key=lambda kv: kv[0]))
        cached = not_modified(request, etag)
        if cached is not None:
            return cached
        wanted = [indicator] if indicator else list(INDICATORS)

        def build() -> tuple[Any, list[list[object]]]:
            out_rows = []
            csv_rows: list[list[object]] = []
            for r in items:
                # a group row of a level filtered by industry is that industry's part of the group: say so
                row_industry = r.industry if r.industry is not None else industry
                if r.level == "enterprise":
                    name = names.get(r.enterprise or "")
                elif r.level == "industry" and r.industry:
                    name = industry_label(r.industry, lang)
                else:
                    name = None
                values = values_of(r, wanted, with_rank=True)
                if as_csv:
                    identity = [r.level, r.region, row_industry, r.enterprise, name]
                    csv_rows.extend(indicator_cells(identity, v, lang) for v in values.values())
                else:
                    out_rows.append(Row(level=r.level, key=r.key, region=r.region, industry=row_industry,
                                        enterprise=r.enterprise, name=name, indicators=values))
            if as_csv:
                return None, csv_rows
            body = IndicatorPage(items=out_rows, page=page, page_size=page_size, total=len(rows), level=level,
                                 period=p.label, filters=filters, computed_at=computed.computed_at)
            return body.model_dump(mode="json"), csv_rows

        json_body, csv_rows = await off_loop(build, len(items) * len(wanted))
        return await respond(request, json_body=json_body, csv_header=labels(lang, INDICATOR_CSV_COLUMNS),
                             csv_rows=csv_rows, as_csv=as_csv, filename=f"fmc-indicators-{level}-{p.label}.csv",
                             etag=etag, paging=(page, page_size, len(rows)), size=len(items) * len(wanted))

    @app.get("/v1/enterprises/{enterprise_id}/reports", response_model=ReportsOut, tags=["reports"],
             responses={**csv_ok, **errors, 404: {"model": Problem, "description": "no such enterprise"}},
             dependencies=[only("year", "format", "lang")])
    async def enterprise_reports(
        request: Request,
        key: Key,
        enterprise_id: EnterpriseId,
        year: Annotated[int | None, Query(ge=YEAR_MIN, le=YEAR_MAX,
                                          description="one year; default: the plan's base year to this year"),
                        BeforeValidator(whole_number)] = None,
        format: Fmt = None,
        lang: LangQ = "zh",
    ) -> Response:
        """The enterprise's reports (annual and monthly), money in yuan."""
        e = await one_enterprise(key, enterprise_id)
        base = service.targets.base_year
        first, last = (year, year) if year is not None else (base, max(_this_year(service.timezone), base))
        stored = (await service.reports(Scope(enterprises=(e.enterprise,)), first, last)).get(e.enterprise, [])
        items = sorted((ReportOut(enterprise=r.enterprise, period=r.period, figures=_finite_figures(r.figures))
                        for r in stored if r.enterprise == e.enterprise), key=lambda r: r.period)
        body = ReportsOut(enterprise=e.enterprise, first_year=first, last_year=last, items=items)
        rows = [[r.enterprise, r.period, *(r.figures.get(f) for f in REPORT_FIELDS)] for r in items]
        return await respond(request, json_body=body.model_dump(mode="json"),
                             csv_header=labels(lang, REPORT_CSV_COLUMNS), csv_rows=rows,
                             as_csv=wants_csv(format, request.headers.get("accept")),
                             filename=f"fmc-reports-{e.enterprise}.csv")

    @app.put("/v1/enterprises/{enterprise_id}/reports/{period}", response_model=ReportOut, tags=["reports"],
             responses={**errors, 404: {"model": Problem, "description": "no such enterprise"}},
             dependencies=[only()])
    async def put_report(
        key: Key,
        enterprise_id: EnterpriseId,
        period: Annotated[str, Path(pattern=REPORT_PERIOD_PATTERN, max_length=7,
                                    description="a year (2019) or a month (2019-03)")],
        figures: ReportFigures,
    ) -> JSONResponse:
        """Store the enterprise's figures for a year or a month (money in yuan, employees in
        persons); figures not given keep their stored value. Returns the report as stored."""
        e = await one_enterprise(key, enterprise_id)
        try:
            report = EnterpriseReport(enterprise=e.enterprise, period=period, **figures.model_dump(exclude_none=True))
        except ValidationError as err:
            raise HTTPException(422, describe_errors([{**x, "loc": ("body", *x["loc"])} for x in err.errors()])
                                ) from None
        try:
            await service.put_report(report)
        except UnknownEnterprise:
            raise HTTPException(404, f"no enterprise {enterprise_id} is known") from None
        year = int(report.period[:4])
        stored = (await service.reports(Scope(enterprises=(e.enterprise,)), year, year)).get(e.enterprise, [])
        match = next((r for r in stored if r.period == report.period), None)
        out = ReportOut(enterprise=e.enterprise, period=report.period,
                        figures=_finite_figures(match.figures if match else report.figures()))
        return JSONResponse(out.model_dump(mode="json"), headers={"Cache-Control": "no-store"})

    return app


def _finite_figures(figures: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in figures.items() if finite(v) is not None}


def _this_year(timezone: str) -> int:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo(timezone)).year


def _empty_result(indicator: str, period: "Period", targets: "Targets") -> "IndicatorResult":
    """The result of an enterprise without any data for the period: no value, insufficient data."""
    from fmc.indicators.engine import IndicatorResult

    target = targets.target_for(indicator, period.year, None)
    return IndicatorResult(indicator, period, None, None, target, None, None, 0.0, "insufficient_data")


# --- serving ---------------------------------------------------------------------------------------------------------


