"""``GET /v1/targets``: the plan and policy the figures are measured against."""

from fastapi import APIRouter, Request, Response

from fmc.central.api.deps import PREFIX, Fmt, Key, LangQ, context, only
from fmc.central.api.errors import ERROR_RESPONSES
from fmc.central.api.models import TARGET_CSV_COLUMNS, TargetsOut, indicator_labels, status_labels
from fmc.central.api.responses import CSV_OK, labels, respond, wants_csv
from fmc.indicators.labels import INDICATOR_LABELS
from fmc.indicators.plan import INDICATORS

router = APIRouter(prefix=PREFIX, tags=["plan"])


@router.get("/targets", response_model=TargetsOut, responses={**CSV_OK, **ERROR_RESPONSES},
            dependencies=[only("format", "lang")])
async def targets(request: Request, key: Key, format: Fmt = None, lang: LangQ = "zh") -> Response:
    """The plan and policy the figures are measured against, with labels and units."""
    ctx = context(request)
    t = ctx.service.targets
    body = TargetsOut(targets=t, indicators=indicator_labels(), statuses=status_labels())
    rows = []
    for name in INDICATORS:
        zh, en, unit = INDICATOR_LABELS[name]
        target = t.indicators.get(name)  # type: ignore[call-overload]
        rows.append([t.plan.id, t.base_year, t.first_year, t.last_year, name, zh if lang == "zh" else en, unit,
                     target.kind if target else None, float(target.step) if target else None,
                     float(target.cap) if target and target.cap is not None else None,
                     target.status_basis if target else None])
    return await respond(request, ctx.bodies, json_body=body.model_dump(mode="json"),
                         csv_header=labels(lang, TARGET_CSV_COLUMNS), csv_rows=rows,
                         as_csv=wants_csv(format, request.headers.get("accept")),
                         filename=f"fmc-targets-{t.plan.id}.csv")
