"""``GET /v1/health``: whether the service runs and its store answers (no key needed)."""

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from fmc.central.api.deps import PREFIX, context, only
from fmc.central.api.models import Health
from fmc.central.store import StoreQueryError

HEALTH_TIMEOUT_S = 10.0
log = logging.getLogger("fmc.api")

router = APIRouter(prefix=PREFIX, tags=["service"])


@router.get("/health", response_model=Health,
            responses={503: {"model": Health, "description": "the store is unreachable"}},
            dependencies=[only()])
async def health(request: Request) -> JSONResponse:
    """Whether the service runs and its store answers (no key needed)."""
    ctx = context(request)
    try:
        await asyncio.wait_for(ctx.service.check(), HEALTH_TIMEOUT_S)
    except (StoreQueryError, TimeoutError) as e:
        log.warning("health: store unreachable: %s", e)
        body = Health(status="unavailable", store="unreachable", detail="the store is unreachable")
        return JSONResponse(body.model_dump(mode="json"), status_code=503, headers={"Cache-Control": "no-store"})
    return JSONResponse(Health(status="ok", store="reachable").model_dump(mode="json"),
                        headers={"Cache-Control": "no-store"})
