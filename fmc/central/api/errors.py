"""The API's errors: ``{"detail": "<one sentence>"}``, never a traceback (docs/api.md, "Errors").

``register`` installs the handlers on an app; ``describe_errors`` turns validation errors into the
sentence (the report body's own validation uses it too); ``ERROR_RESPONSES`` documents them in
the OpenAPI description.
"""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from fmc.central.api.models import PARAMETER_HINTS, Problem
from fmc.central.store import StoreQueryError
from fmc.indicators.reports import REPORT_FIELDS

log = logging.getLogger("fmc.api")

# OpenAPI: the errors every endpoint with a key can answer
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no key, or an invalid or revoked key"},
    403: {"model": Problem, "description": "outside the key's scope"},
    422: {"model": Problem, "description": "a parameter is invalid"},
    503: {"model": Problem, "description": "the store is unreachable"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "no such enterprise"}}


def problem(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    if not detail.endswith((".", "?", "!")):
        detail += "."  # every detail reads as a sentence
    return JSONResponse({"detail": detail}, status_code=status,
                        headers={"Cache-Control": "no-store", **(headers or {})})


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """One sentence for a list of pydantic/FastAPI validation errors, naming each parameter,
    what it takes and (briefly) what was sent."""
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


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return problem(422, describe_errors(exc.errors()))


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
        allow = (exc.headers or {}).get("Allow", "")
        if "GET" in allow.split(", ") and "HEAD" not in allow:  # HEAD is a route of its own (app.py)
            return problem(405, detail, {**(exc.headers or {}), "Allow": f"{allow}, HEAD"})
    return problem(exc.status_code, detail, exc.headers)


async def _store_down(request: Request, exc: StoreQueryError) -> JSONResponse:
    log.warning("store query failed: %s", exc)  # the detail (URLs, files) stays in the server log
    return problem(503, "the store is unreachable or cannot answer right now; try again later",
                   {"Retry-After": "30"})


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal error; the server log has the details")


def register(app: FastAPI) -> None:
    """Every error the app answers, as one sentence."""
    # the decorator form: it takes handlers typed with their own exception class
    app.exception_handler(RequestValidationError)(_invalid)
    app.exception_handler(HTTPException)(_http)
    app.exception_handler(StoreQueryError)(_store_down)
    app.exception_handler(Exception)(_bug)
