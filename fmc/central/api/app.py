"""``fmc api``: the aggregated REST API (DESIGN §5, docs/api.md).

FastAPI on the indicator service (``fmc.central.service.IndicatorService``): every request is
authenticated with a scoped key (``fmc.central.keys``), its filters are narrowed to the key's scope
before anything is read, and the store is queried only with that scope. JSON by default, CSV
(UTF-8 with BOM, CRLF, Chinese or English headers, long format) on ``Accept: text/csv`` or
``?format=csv``; ``ETag`` / ``If-None-Match``; pagination with ``Link`` and ``X-Total-Count``.

The parts: ``routers/`` (one router per resource), ``deps`` (the app's context, keys, scope,
parameters), ``responses`` (JSON/CSV, ETags, the rendered-body cache), ``errors``. Module import
stays light (``fmc`` loads it to register the command): FastAPI and the parts are imported inside
``create_app``.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fmc.central.keys import KeyStore

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fmc.central.config import ApiConfig
    from fmc.central.service import IndicatorService


@asynccontextmanager
async def lifespan(app: "FastAPI") -> AsyncIterator[None]:
    """The app's service runs while the app does."""
    service = app.state.api.service
    await service.start()
    try:
        yield
    finally:
        await service.aclose()


def create_app(service: "IndicatorService", keys: KeyStore, api: "ApiConfig") -> "FastAPI":
    """The FastAPI app; its lifespan starts and closes the service. Its state is its own (one
    ``ApiContext`` on ``app.state``): apps made in one process share nothing."""
    from fastapi import FastAPI

    from fmc.central.api import errors
    from fmc.central.api.deps import API_VERSION, ApiContext
    from fmc.central.api.responses import RenderedBodies
    from fmc.central.api.routers import enterprises, health, indicators, reports, targets

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
    app.state.api = ApiContext(service=service, keys=keys, config=api, bodies=RenderedBodies())
    errors.register(app)
    # The routers' routes go onto the app's own router, in this order (the OpenAPI description's):
    # app.include_router() keeps each router whole and matches through it on every request, 8-10 %
    # more work for a warm answer (FastAPI 0.165). Each route carries its path, tags and
    # dependencies; app.dependency_overrides does not reach them (the tests use real servers).
    for router in (health.router, targets.router, enterprises.build(api), indicators.build(api), reports.router):
        app.router.routes.extend(router.routes)
    answer_head_like_get(app)
    return app


def answer_head_like_get(app: "FastAPI") -> None:
    """HEAD on every GET endpoint, answered as GET is (RFC 9110 9.1: a general-purpose server supports
    GET and HEAD; monitors probe /v1/health with HEAD): the same endpoint, key and parameter checks,
    status and headers. The body is left to the server: uvicorn (and the test client) send none for
    HEAD, keeping the GET's Content-Length. A route of its own after the GET routes, out of the
    OpenAPI description: a GET route that also took HEAD would list each operation twice there,
    under one operation id, and FastAPI picks that id from whichever method its set yields first."""
    from fastapi.routing import APIRoute

    for route in [r for r in app.router.routes if isinstance(r, APIRoute) and "GET" in r.methods]:
        app.router.add_api_route(route.path, route.endpoint, methods=["HEAD"], dependencies=route.dependencies,
                                 response_class=route.response_class, name=route.name, include_in_schema=False)
