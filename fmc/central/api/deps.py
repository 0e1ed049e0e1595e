"""What the routers share: the app's context, the key and its scope, the query-parameter guard,
period parsing, the enterprise a key may use, and the parameter types.

Per-app state is one ``ApiContext`` on ``app.state`` (``create_app`` puts it there), reached with
``context(request)``: nothing here is a module-level variable an app could change, so two apps in
one process share nothing. ``context`` is a plain call, not a dependency: a dependency is one more
solve per request (about 75 Python calls, an eighth of a warm /v1/health). Dependencies are
``async def``: FastAPI runs a plain ``def`` in a worker thread, a hop that cost more than the work
itself (a key look-up is microseconds of SQLite).
"""

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator
from starlette.exceptions import HTTPException

from fmc.central.api.models import (
    ENTERPRISE_ID_PATTERN,
    PAGE_MAX,
    PERIOD_QUERY_PATTERN,
    Format,
    Lang,
    whole_number,
)
from fmc.central.api.responses import RenderedBodies
from fmc.central.config import ApiConfig
from fmc.central.keys import KeyScope, KeyStore
from fmc.central.service import Enterprise, IndicatorService
from fmc.core.regions import INDUSTRY_CODE_PATTERN, REGION_PREFIX_PATTERN

if TYPE_CHECKING:
    from fmc.indicators.engine import Period


API_VERSION = "1"
PREFIX = f"/v{API_VERSION}"  # every route's path starts with the API's version


@dataclass(frozen=True, slots=True)
class ApiContext:
    """Everything one app's endpoints use besides the request."""

    service: IndicatorService
    keys: KeyStore
    config: ApiConfig
    bodies: RenderedBodies  # rendered bodies by ETag, this app's only


def context(request: Request) -> ApiContext:
    """The context of the app that serves the request."""
    ctx: ApiContext = request.app.state.api
    return ctx


# --- authentication and scope ---

bearer = HTTPBearer(auto_error=False, description="an fmc API key: fmc_<id>_<secret> (fmc keys create)")


async def authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> KeyScope:
    if credentials is None:
        raise HTTPException(401, "an API key is required: send Authorization: Bearer <key> "
                            "(fmc keys create makes one)", headers={"WWW-Authenticate": "Bearer"})
    scope = context(request).keys.authenticate(credentials.credentials)
    if scope is None:
        raise HTTPException(401, "the API key is not valid (unknown, malformed or revoked)",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return scope


Key = Annotated[KeyScope, Depends(authenticated)]


def forbidden(e: Exception) -> HTTPException:
    return HTTPException(403, str(e))


async def one_enterprise(ctx: ApiContext, key: KeyScope, enterprise_id: str, as_of: date | None = None) -> Enterprise:
    """The enterprise if the key may use it; 403 alike for out-of-scope ids that exist and
    that do not; 404 only where the key could see the enterprise if it existed. ``as_of``: by its
    region at the end of that day (a period's figures: the region of the period's end).

    A helper the endpoints call, not a dependency: a dependency would answer 403/404 before the
    endpoint's own parameters are validated, where the API answers 422 first."""
    if key.kind == "enterprise" and enterprise_id != key.enterprise:  # decided without a lookup
        raise HTTPException(403, "this enterprise is outside the key's scope")
    known = await ctx.service.enterprise(enterprise_id, as_of)
    decision = key.enterprise_access(enterprise_id, known.region if known else None)
    if decision == "forbidden":
        raise HTTPException(403, "this enterprise is outside the key's scope")
    if decision == "not_found" or known is None:
        raise HTTPException(404, f"no enterprise {enterprise_id} is known (no data, report or registry entry)")
    return known


# --- parameters ---


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


def parse_period(ctx: ApiContext, text: str) -> "Period":
    """The ``period`` query parameter as a period of the service's time zone. Called by the
    endpoints (not a dependency) so that ``period`` keeps its place among their parameters, in
    the OpenAPI description and in the order of 422 messages."""
    try:
        return ctx.service.parse_period(text)
    except ValueError as e:
        raise HTTPException(422, f"query parameter 'period': {e}") from None


PeriodQ = Annotated[str, Query(pattern=PERIOD_QUERY_PATTERN, max_length=20,
                              description="2019, 2019-Q2, 2019-03, 2019-YTD or 2019-YTD-06-30 (local time)")]
Region = Annotated[str | None, Query(pattern=REGION_PREFIX_PATTERN, max_length=6,
                                     description="GB/T 2260 code prefix: 33, 3306 or 330602")]
Industry = Annotated[str | None, Query(pattern=INDUSTRY_CODE_PATTERN, max_length=4,
                                       description="GB/T 4754 code of 2 to 4 digits, e.g. 17")]
EnterpriseId = Annotated[str, Path(pattern=ENTERPRISE_ID_PATTERN, max_length=64, description="enterprise id")]
# Query before the validator: so the bounds reach the OpenAPI schema as minimum/maximum
PageNo = Annotated[int, Query(ge=1, le=PAGE_MAX, description="page number, from 1"), BeforeValidator(whole_number)]
Fmt = Annotated[Format | None, Query(description="json or csv (instead of the Accept header)")]
LangQ = Annotated[Lang, Query(description="language of CSV headers and labels")]


def page_size_type(config: ApiConfig) -> Any:
    """The ``page_size`` parameter's type for one app: its maximum is configuration, and it is in
    the OpenAPI description, so routers with pages are built per app (``build(config)``)."""
    return Annotated[int, Query(ge=1, le=config.page_size_max,
                                description=f"rows per page, at most {config.page_size_max}"),
                     BeforeValidator(whole_number)]
