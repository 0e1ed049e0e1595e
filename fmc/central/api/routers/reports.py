"""``GET /v1/enterprises/{enterprise_id}/reports`` and ``PUT …/reports/{period}``: the figures an
enterprise reports (value added, employees, revenue, …), read and written."""

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator, ValidationError
from starlette.exceptions import HTTPException

from fmc.central.api.deps import PREFIX, EnterpriseId, Fmt, Key, LangQ, context, one_enterprise, only
from fmc.central.api.errors import ERROR_RESPONSES, NOT_FOUND, describe_errors
from fmc.central.api.models import (
    REPORT_CSV_COLUMNS,
    REPORT_PERIOD_PATTERN,
    YEAR_MAX,
    YEAR_MIN,
    ReportFigures,
    ReportOut,
    ReportsOut,
    whole_number,
)
from fmc.central.api.responses import CSV_OK, finite, labels, respond, wants_csv
from fmc.central.service import UnknownEnterprise
from fmc.central.store import Scope
from fmc.indicators.reports import REPORT_FIELDS, EnterpriseReport

router = APIRouter(prefix=PREFIX, tags=["reports"])


def finite_figures(figures: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in figures.items() if finite(v) is not None}


def this_year(timezone: str) -> int:
    return datetime.now(ZoneInfo(timezone)).year


@router.get("/enterprises/{enterprise_id}/reports", response_model=ReportsOut,
            responses={**CSV_OK, **ERROR_RESPONSES, **NOT_FOUND}, dependencies=[only("year", "format", "lang")])
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
    """The enterprise's reports (annual, quarterly, year-to-date and monthly), money in yuan."""
    ctx = context(request)
    e = await one_enterprise(ctx, key, enterprise_id)
    base = ctx.service.targets.base_year
    first, last = (year, year) if year is not None else (base, max(this_year(ctx.service.timezone), base))
    stored = (await ctx.service.reports(Scope(enterprises=(e.enterprise,)), first, last)).get(e.enterprise, [])
    items = sorted((ReportOut(enterprise=r.enterprise, period=r.period, figures=finite_figures(r.figures))
                    for r in stored if r.enterprise == e.enterprise), key=lambda r: r.period)
    body = ReportsOut(enterprise=e.enterprise, first_year=first, last_year=last, items=items)
    rows = [[r.enterprise, r.period, *(r.figures.get(f) for f in REPORT_FIELDS)] for r in items]
    return await respond(request, ctx.bodies, json_body=body.model_dump(mode="json"),
                         csv_header=labels(lang, REPORT_CSV_COLUMNS), csv_rows=rows,
                         as_csv=wants_csv(format, request.headers.get("accept")),
                         filename=f"fmc-reports-{e.enterprise}.csv")


@router.put("/enterprises/{enterprise_id}/reports/{period}", response_model=ReportOut,
            responses={**ERROR_RESPONSES, **NOT_FOUND}, dependencies=[only()])
async def put_report(
    request: Request,
    key: Key,
    enterprise_id: EnterpriseId,
    period: Annotated[str, Path(pattern=REPORT_PERIOD_PATTERN, max_length=11,
                                description="a year (2019), a month (2019-03), a quarter (2019-Q2) or a year "
                                "to date (2019-YTD-06)")],
    figures: ReportFigures,
) -> JSONResponse:
    """Store the enterprise's figures for a year, a month, a quarter or a year to date (money in
    yuan, employees in persons); figures not given keep their stored value. Returns the report as stored."""
    ctx = context(request)
    e = await one_enterprise(ctx, key, enterprise_id)
    try:
        report = EnterpriseReport(enterprise=e.enterprise, period=period, **figures.model_dump(exclude_none=True))
    except ValidationError as err:
        raise HTTPException(422, describe_errors([{**x, "loc": ("body", *x["loc"])} for x in err.errors()])
                            ) from None
    try:
        await ctx.service.put_report(report)
    except UnknownEnterprise:
        raise HTTPException(404, f"no enterprise {enterprise_id} is known") from None
    year = int(report.period[:4])
    stored = (await ctx.service.reports(Scope(enterprises=(e.enterprise,)), year, year)).get(e.enterprise, [])
    match = next((r for r in stored if r.period == report.period), None)
    out = ReportOut(enterprise=e.enterprise, period=report.period,
                    figures=finite_figures(match.figures if match else report.figures()))
    return JSONResponse(out.model_dump(mode="json"), headers={"Cache-Control": "no-store"})
