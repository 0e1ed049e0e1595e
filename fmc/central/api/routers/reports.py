"""``GET /v1/enterprises/{enterprise_id}/reports`` and ``PUT …/reports/{period}``: the figures an
enterprise reports (value added, employees, revenue, …), read and written."""

from collections.abc import Mapping, Sequence
from datetime import date, datetime
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
from fmc.central.keys import KeyScope
from fmc.central.service import IndicatorService, UnknownEnterprise, report_period
from fmc.central.store import Scope, StoredReport
from fmc.indicators.reports import REPORT_FIELDS, EnterpriseReport

router = APIRouter(prefix=PREFIX, tags=["reports"])


def finite_figures(figures: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in figures.items() if finite(v) is not None}


def this_year(timezone: str) -> int:
    return datetime.now(ZoneInfo(timezone)).year


async def reports_in_scope(service: IndicatorService, key: KeyScope, enterprise_id: str,
                           stored: Sequence[StoredReport]) -> list[StoredReport]:
    """The reports a key may read: a region key those of the periods whose end found the enterprise in
    its region (the rule of its figures: an enterprise that moved counties is the old county's for the
    periods before, the new one's after). The region is asked at each year's end, and at each
    period's end only in a year it changed: a few store look-ups, not one per report."""
    if key.kind != "region" or not stored:
        return list(stored)  # the province's key sees all; an enterprise's key its own
    years = {int(r.period[:4]) for r in stored}
    at_year_end = await service.regions_at(enterprise_id, [date(y + d, 12, 31) for y in years for d in (-1, 0)])
    moved = {y for y in years if at_year_end[date(y - 1, 12, 31)] != at_year_end[date(y, 12, 31)]}
    ends = {r.period: report_period(r.period).end for r in stored if int(r.period[:4]) in moved}
    at_end = await service.regions_at(enterprise_id, ends.values()) if ends else {}

    def region(r: StoredReport) -> str | None:
        return at_end[ends[r.period]] if r.period in ends else at_year_end[date(int(r.period[:4]), 12, 31)]

    return [r for r in stored if key.enterprise_access(enterprise_id, region(r)) == "ok"]


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
    base = ctx.service.targets.base_year
    first, last = (year, year) if year is not None else (base, max(this_year(ctx.service.timezone), base))
    if key.kind == "enterprise" and enterprise_id != key.enterprise:  # decided without a lookup
        raise HTTPException(403, "this enterprise is outside the key's scope")
    stored = [r for r in (await ctx.service.reports(Scope(enterprises=(enterprise_id,)), first, last)).get(
        enterprise_id, []) if r.enterprise == enterprise_id]
    visible = await reports_in_scope(ctx.service, key, enterprise_id, stored)
    if not visible:  # none of its periods in the key's scope: 403 or 404 as for the enterprise at the years' end
        end = date(last, 12, 31)
        await one_enterprise(ctx, key, enterprise_id, as_of=end if end < ctx.service.today() else None)
    items = sorted((ReportOut(enterprise=r.enterprise, period=r.period, figures=finite_figures(r.figures))
                    for r in visible), key=lambda r: r.period)
    body = ReportsOut(enterprise=enterprise_id, first_year=first, last_year=last, items=items)
    rows = [[r.enterprise, r.period, *(r.figures.get(f) for f in REPORT_FIELDS)] for r in items]
    return await respond(request, ctx.bodies, json_body=body.model_dump(mode="json"),
                         csv_header=labels(lang, REPORT_CSV_COLUMNS), csv_rows=rows,
                         as_csv=wants_csv(format, request.headers.get("accept")),
                         filename=f"fmc-reports-{enterprise_id}.csv")


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
    try:
        period_end: date | None = report_period(period).end
    except ValueError:
        period_end = None  # refused below, with the body's other errors
    if period_end is not None and (period_end >= ctx.service.today() or period_end.year < YEAR_MIN):
        period_end = None  # a period still running: the latest region (a year out of range: refused below)
    # by its region at the end of the report's period, as its figures of that period are pooled
    e = await one_enterprise(ctx, key, enterprise_id, as_of=period_end)
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
