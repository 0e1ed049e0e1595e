"""Rendering the API's answers: JSON or CSV (UTF-8 with BOM, CRLF), content negotiation, ETags and
``304 Not Modified``, pagination headers (``Link``, ``X-Total-Count``), gzip for clients that accept
it and the rendered-body cache.

The cache is per app (``RenderedBodies`` on the app's context, ``fmc.central.api.deps``): two apps in
one process share no bodies. The pure helpers at the top need no framework.
"""

import asyncio
import csv
import gzip
import hashlib
import io
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

CACHE_CONTROL = "private, max-age=0, must-revalidate"
VARY = "Authorization, Accept, Accept-Encoding"
OFF_LOOP_ROWS = 500  # pages with more lines than this are built in a worker thread
# bodies kept for reuse by ETag: each at most 16 MiB (a 20,000-enterprise county level is 5.4 MB) …
RENDERED_MAX_BODY = 16 << 20
RENDERED_MAX_BYTES = 64 << 20  # … and 64 MiB in all, least recently used out first
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Bodies from this size on go gzip-compressed to clients that accept it (Grafana, browsers, httpx,
# requests and curl --compressed all do). A county level of a 20,000-enterprise province is 5.4 MB
# of pooled ids, 0.26 MB compressed; compressed once per body (level 6), kept with it.
GZIP_MIN_BYTES = 1024
GZIP_LEVEL = 6
_MEDIA_RANGE = re.compile(r"\s*([^;,\s]+)\s*((?:;[^,]*)?)")
T = TypeVar("T")

# OpenAPI: the 200 of an endpoint that also answers in CSV, and its 304
CSV_OK: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "JSON, or CSV on request"},
    304: {"description": "not modified (If-None-Match)"},
}


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


def labels(lang: str, columns: Sequence[tuple[str, str, str]]) -> list[str]:
    """CSV headers in the language asked for, from ``(field, zh, en)`` columns."""
    return [zh if lang == "zh" else en for _, zh, en in columns]


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header admits gzip (RFC 9110 12.5.3: ``gzip`` or ``*`` with
    a q-value above 0; an explicit ``gzip`` entry wins over ``*``)."""
    if not accept_encoding:
        return False
    star: bool | None = None
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if coding in ("gzip", "x-gzip"):
            return q > 0
        if coding == "*":
            star = q > 0
    return bool(star)


def gzipped(body: bytes) -> bytes | None:
    """The body gzip-compressed, when it is large enough to be worth it."""
    return gzip.compress(body, GZIP_LEVEL, mtime=0) if len(body) >= GZIP_MIN_BYTES else None


def headers_for(etag: str) -> dict[str, str]:
    return {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": VARY}


def paging_headers(request: Request, paging: tuple[int, int, int] | None) -> dict[str, str]:
    """``X-Total-Count`` and ``Link`` of this request (``paging``: page, page size, total rows). Built
    for each request, never kept with a body: the links repeat the request's own query, which the
    ETag does not fix (``?format=csv`` or ``Accept: text/csv``, ``2019-YTD`` or ``2019-YTD-06-30``
    give the same body)."""
    if paging is None:
        return {}
    page, page_size, total = paging
    return {"X-Total-Count": str(total),
            "Link": link_header(request.url.path, request.query_params.multi_items(), page, page_size, total)}


# --- the rendered-body cache and the answers --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered body, its gzip-compressed form (None when too small to be worth it), media type
    and the headers the body fixes (none that depend on the request: see ``paging_headers``)."""

    body: bytes
    gzipped: bytes | None
    media: str
    headers: dict[str, str]

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzipped or b"")

    def response(self, request: Request, extra: Mapping[str, str] | None = None) -> Response:
        """200 with the body, gzip-compressed when the client accepts that; ``extra``: this
        request's own headers."""
        headers = {**self.headers, **(extra or {})}
        if self.gzipped is not None and accepts_gzip(request.headers.get("accept-encoding")):
            headers["Content-Encoding"] = "gzip"
            return Response(self.gzipped, media_type=self.media, headers=headers)
        return Response(self.body, media_type=self.media, headers=headers)


class RenderedBodies:
    """Bodies already rendered, by ETag: a warm request is a look-up, not a rebuild. Bounded in
    bytes (a body and its gzip form), least recently used out first; one per app."""

    def __init__(self, max_body: int = RENDERED_MAX_BODY, max_bytes: int = RENDERED_MAX_BYTES) -> None:
        self._bodies: OrderedDict[str, Rendered] = OrderedDict()
        self._bytes = 0
        self._max_body = max_body
        self._max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._bodies)

    def get(self, etag: str) -> Rendered | None:
        hit = self._bodies.get(etag)
        if hit is not None:
            self._bodies.move_to_end(etag)
        return hit

    def remember(self, etag: str, rendered: Rendered) -> None:
        if len(rendered.body) > self._max_body or etag in self._bodies:
            return
        self._bodies[etag] = rendered
        self._bytes += rendered.size
        while self._bytes > self._max_bytes:
            _, old = self._bodies.popitem(last=False)
            self._bytes -= old.size


def not_modified(request: Request, bodies: RenderedBodies, etag: str,
                 paging: tuple[int, int, int] | None = None) -> Response | None:
    """304 when the client has this ETag; the rendered body when this app made it before. Either
    with this request's pagination headers (``paging``: page, page size, total rows)."""
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={**headers_for(etag), **paging_headers(request, paging)})
    hit = bodies.get(etag)
    return hit.response(request, paging_headers(request, paging)) if hit is not None else None


async def off_loop(work: Callable[[], T], size: int) -> T:
    """Large pages are built and encoded in a worker thread, so one bulk download does not hold
    up every other request for seconds."""
    return await asyncio.to_thread(work) if size > OFF_LOOP_ROWS else work()


async def respond(
    request: Request,
    bodies: RenderedBodies,
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
    ``json_body``: what to encode, or the JSON already encoded (bytes). Without an ``etag`` the body's
    own hash is the validator."""

    # compressed when this client takes gzip, or when the body is kept for the next ones
    compress = etag is not None or accepts_gzip(request.headers.get("accept-encoding"))

    def encode() -> tuple[bytes, bytes | None]:
        if as_csv:
            body = csv_bytes(csv_header, csv_rows)
        elif isinstance(json_body, bytes):  # encoded already (by the model's serializer)
            body = json_body
        else:
            body = json.dumps(json_body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return body, gzipped(body) if compress else None

    body, compressed = await off_loop(encode, size if size is not None else len(csv_rows))
    media = "text/csv; charset=utf-8" if as_csv else "application/json"
    tag = etag or make_etag(hashlib.sha256(body).hexdigest(), as_csv)
    cached = not_modified(request, bodies, tag, paging)
    if cached is not None:
        return cached
    headers = headers_for(tag)
    if as_csv:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    rendered = Rendered(body, compressed, media, headers)
    if etag is not None:  # a validator that names the representation: the body can be reused
        bodies.remember(tag, rendered)
    return rendered.response(request, paging_headers(request, paging))
