"""``GET /v1/enterprises/{enterprise_id}/indicators`` and ``GET /v1/indicators``: the indicators of
one enterprise, and the rows of a level (enterprises or pooled groups) with ranks.

Both check the ETag before building anything: a warm request costs the figures' look-up and a hash.
"""

import logging
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.exceptions import HTTPException

from fmc.central.api.deps import (
    PREFIX,
    EnterpriseId,
    Fmt,
    Industry,
    Key,
    LangQ,
    PageNo,
    PeriodQ,
    Region,
    context,
    forbidden,
    one_enterprise,
    only,
    page_size_type,
    parse_period,
)
from fmc.central.api.errors import ERROR_RESPONSES, NOT_FOUND
from fmc.central.api.models import (
    ENTERPRISE_ID_PATTERN,
    INDICATOR_CSV_COLUMNS,
    EnterpriseIndicators,
    Filters,
    IndicatorName,
    IndicatorPage,
    IndicatorValue,
    LevelName,
    Row,
)
from fmc.central.api.responses import (
    CSV_OK,
    finite,
    labels,
    make_etag,
    not_modified,
    off_loop,
    page_bounds,
    respond,
    wants_csv,
)
from fmc.central.api.routers.enterprises import enterprise_out
from fmc.central.config import ApiConfig
from fmc.central.keys import AccessDenied, BadCombination
from fmc.central.provenance import PROVENANCE_CSV_COLUMNS, provenance, provenance_cells
from fmc.central.store import Scope
from fmc.indicators.engine import IndicatorResult, Period, PooledResult
from fmc.indicators.labels import INDICATOR_LABELS, STATUS_LABELS, industry_label
from fmc.indicators.plan import INDICATORS, Targets
from fmc.indicators.pooling import GroupRow

log = logging.getLogger("fmc.api")


def indicator_value(
    result: IndicatorResult, rank: int | None, *, unit: str, with_rank: bool = True, targets: Targets | None = None
) -> IndicatorValue:
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
        provenance=provenance(result, targets) if targets is not None else None,
    )


def values_of(row: GroupRow, wanted: Sequence[str], *, with_rank: bool, targets: Targets) -> dict[str, IndicatorValue]:
    return {
        name: indicator_value(row.results[name], row.ranks.get(name), unit=INDICATOR_LABELS[name][2],
                              with_rank=with_rank, targets=targets)
        for name in wanted
        if name in row.results
    }


def indicator_cells(identity: Sequence[object], value: IndicatorValue, lang: str) -> list[object]:
    zh, en, _ = INDICATOR_LABELS[value.indicator]
    status = STATUS_LABELS.get(value.status, (value.status, value.status))
    return [
        *identity, value.indicator, zh if lang == "zh" else en, value.unit, value.period, value.value,
        value.baseline, value.target, value.yoy, value.avg_annual, value.coverage, value.status,
        status[0] if lang == "zh" else status[1], value.rank, value.members, value.included, value.assessed,
        value.met_count, value.met_share,
        *(provenance_cells(value.provenance.model_dump()) if value.provenance is not None
          else [None] * len(PROVENANCE_CSV_COLUMNS)),
    ]


def empty_result(indicator: str, period: Period, targets: Targets) -> IndicatorResult:
    """The result of an enterprise without any data for the period: no value, insufficient data."""
    target = targets.target_for(indicator, period.year, None)
    return IndicatorResult(indicator, period, None, None, target, None, None, 0.0, "insufficient_data")


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
    ctx = context(request)
    p = parse_period(ctx, period)
    e = await one_enterprise(ctx, key, enterprise_id, p.end)  # where it was at the period's end
    computed = await ctx.service.indicators("enterprise", p, Scope(enterprises=(e.enterprise,)))
    wanted = [indicator] if indicator else list(INDICATORS)
    as_csv = wants_csv(format, request.headers.get("accept"))
    etag = make_etag(computed.etag, "enterprise-indicators", e, tuple(wanted), as_csv, lang)
    cached = not_modified(request, ctx.bodies, etag)
    if cached is not None:
        return cached
    row = next((r for r in computed.rows if r.enterprise == e.enterprise), None)
    if row is not None:
        values = values_of(row, wanted, with_rank=False, targets=ctx.service.targets)
    else:  # known (registry) but without any data for the period: say so, never invent a 0
        values = {
            name: indicator_value(empty_result(name, p, ctx.service.targets), None,
                                  unit=INDICATOR_LABELS[name][2], with_rank=False, targets=ctx.service.targets)
            for name in wanted
        }
    body = EnterpriseIndicators(enterprise=enterprise_out(e), period=p.label, computed_at=computed.computed_at,
                                indicators=values)
    identity = ["enterprise", e.region, e.industry, e.enterprise, e.name]
    return await respond(request, ctx.bodies, json_body=body.model_dump(mode="json"),
                         csv_header=labels(lang, INDICATOR_CSV_COLUMNS),
                         csv_rows=[indicator_cells(identity, v, lang) for v in values.values()], as_csv=as_csv,
                         filename=f"fmc-indicators-{e.enterprise}-{p.label}.csv", etag=etag)


def build(config: ApiConfig) -> APIRouter:
    """The router for one app: the page size's default and maximum are its configuration."""
    router = APIRouter(prefix=PREFIX, tags=["indicators"])
    PageSize = page_size_type(config)

    # the same function in every app, before the levels (the order of the OpenAPI description)
    router.add_api_route("/enterprises/{enterprise_id}/indicators", enterprise_indicators,
                         response_model=EnterpriseIndicators, responses={**CSV_OK, **ERROR_RESPONSES, **NOT_FOUND},
                         dependencies=[only("period", "indicator", "format", "lang")])

    @router.get("/indicators", response_model=IndicatorPage, responses={**CSV_OK, **ERROR_RESPONSES},
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
        page_size: PageSize = config.page_size_default,
        format: Fmt = None,
        lang: LangQ = "zh",
    ) -> Response:
        """The rows of a level in the key's scope, each with its indicators, ranks and (for groups)
        members, assessed, met_count and met_share. Groups are pooled from the enterprises in scope."""
        ctx = context(request)
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
        p = parse_period(ctx, period)
        scope = Scope(region_prefix, industries, only_ids)
        computed = await ctx.service.indicators(level, p, scope)
        rows = [r for r in computed.rows if key.row_visible(level, r.region, r.enterprise)]
        if len(rows) != len(computed.rows):  # never expected: the scope went into the query
            log.error("dropped %d row(s) outside the key's scope %s", len(computed.rows) - len(rows), key.text)
        start, end = page_bounds(page, page_size, len(rows))
        items = rows[start:end]
        as_csv = wants_csv(format, request.headers.get("accept"))
        names: dict[str, str | None] = {}
        if level == "enterprise" and items:
            ids = tuple(r.enterprise for r in items if r.enterprise)
            names = {e.enterprise: e.name for e in await ctx.service.enterprises(Scope(enterprises=ids))}
        filters = Filters(region=region, industry=industry, enterprise=enterprise, indicator=indicator)
        etag = make_etag(computed.etag, "indicators", key.text, level, p.label, filters.model_dump_json(), page,
                         page_size, as_csv, lang, sorted(names.items(), key=lambda kv: kv[0]))
        cached = not_modified(request, ctx.bodies, etag, (page, page_size, len(rows)))
        if cached is not None:
            return cached
        wanted = [indicator] if indicator else list(INDICATORS)

        def build_page() -> tuple[Any, list[list[object]]]:
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
                values = values_of(r, wanted, with_rank=True, targets=ctx.service.targets)
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
            # encoded here by pydantic's serializer, not dumped to a tree of dicts first: a county level of
            # 20,000 pooled ids is 5 MB of JSON, and the tree cost ~25 MB more at its peak
            return body.__pydantic_serializer__.to_json(body), csv_rows

        json_body, csv_rows = await off_loop(build_page, len(items) * len(wanted))
        return await respond(request, ctx.bodies, json_body=json_body, csv_header=labels(lang, INDICATOR_CSV_COLUMNS),
                             csv_rows=csv_rows, as_csv=as_csv, filename=f"fmc-indicators-{level}-{p.label}.csv",
                             etag=etag, paging=(page, page_size, len(rows)), size=len(items) * len(wanted))

    return router
