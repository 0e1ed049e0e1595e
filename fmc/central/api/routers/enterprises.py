"""``GET /v1/enterprises`` and ``GET /v1/enterprises/{enterprise_id}``: the enterprises in the key's
scope, and one of them."""

from fastapi import APIRouter, Request, Response

from fmc.central.api.deps import (
    PREFIX,
    EnterpriseId,
    Fmt,
    Industry,
    Key,
    LangQ,
    PageNo,
    Region,
    context,
    forbidden,
    one_enterprise,
    only,
    page_size_type,
)
from fmc.central.api.errors import ERROR_RESPONSES, NOT_FOUND
from fmc.central.api.models import ENTERPRISE_CSV_COLUMNS, EnterpriseOut, EnterprisePage
from fmc.central.api.responses import CSV_OK, labels, page_bounds, respond, wants_csv
from fmc.central.config import ApiConfig
from fmc.central.keys import AccessDenied
from fmc.central.service import Enterprise
from fmc.central.store import Scope
from fmc.indicators.labels import industry_label


def enterprise_out(e: Enterprise) -> EnterpriseOut:
    return EnterpriseOut(enterprise=e.enterprise, name=e.name, region=e.region, industry=e.industry)


def enterprise_cells(e: Enterprise, lang: str) -> list[object]:
    return [e.enterprise, e.name, e.region, e.industry, industry_label(e.industry[:2], lang)]


async def enterprise(
    request: Request, key: Key, enterprise_id: EnterpriseId, format: Fmt = None, lang: LangQ = "zh"
) -> Response:
    """One enterprise: id, name, region, industry."""
    ctx = context(request)
    e = await one_enterprise(ctx, key, enterprise_id)
    return await respond(request, ctx.bodies, json_body=enterprise_out(e).model_dump(mode="json"),
                         csv_header=labels(lang, ENTERPRISE_CSV_COLUMNS), csv_rows=[enterprise_cells(e, lang)],
                         as_csv=wants_csv(format, request.headers.get("accept")),
                         filename=f"fmc-enterprise-{e.enterprise}.csv")


def build(config: ApiConfig) -> APIRouter:
    """The router for one app: the page size's default and maximum are its configuration."""
    router = APIRouter(prefix=PREFIX, tags=["enterprises"])
    PageSize = page_size_type(config)

    @router.get("/enterprises", response_model=EnterprisePage, responses={**CSV_OK, **ERROR_RESPONSES},
                dependencies=[only("region", "industry", "page", "page_size", "format", "lang")])
    async def enterprises(
        request: Request,
            key: Key,
        region: Region = None,
        industry: Industry = None,
        page: PageNo = 1,
        page_size: PageSize = config.page_size_default,
        format: Fmt = None,
        lang: LangQ = "zh",
    ) -> Response:
        """The enterprises in the key's scope, narrowed by the filters."""
        ctx = context(request)
        try:
            region_prefix, industries, only_ids = key.scope_parts(region, industry)
        except AccessDenied as e:
            raise forbidden(e) from None
        found = await ctx.service.enterprises(Scope(region_prefix, industries, only_ids))
        found = [e for e in found if key.row_visible("enterprise", e.region, e.enterprise)]
        start, end = page_bounds(page, page_size, len(found))
        items = found[start:end]
        body = EnterprisePage(items=[enterprise_out(e) for e in items], page=page, page_size=page_size,
                              total=len(found))
        return await respond(request, ctx.bodies, json_body=body.model_dump(mode="json"),
                             csv_header=labels(lang, ENTERPRISE_CSV_COLUMNS),
                             csv_rows=[enterprise_cells(e, lang) for e in items],
                             as_csv=wants_csv(format, request.headers.get("accept")), filename="fmc-enterprises.csv",
                             paging=(page, page_size, len(found)))

    # the same function in every app, after the list (the order of the OpenAPI description)
    router.add_api_route("/enterprises/{enterprise_id}", enterprise, response_model=EnterpriseOut,
                         responses={**CSV_OK, **ERROR_RESPONSES, **NOT_FOUND}, dependencies=[only("format", "lang")])
    return router
