"""The central side of ``fmc demo``: SIMULATED history, the API while the demo runs, the indicator table.

History: five years (2016-2020) of daily rollups and annual reports of the demo enterprise, so the
demo can show its indicators against the plan's targets.

The live run covers only minutes of today; the plan's years are long past. These points are made
up (deterministic, from a seed) and are labelled as such wherever they are shown. They have the
exact shape the agent's rollups (``fmc.plant.rollups``) and the reports import
(``fmc.central.reports.report_points``) write, so the central service reads them like real data.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import date, timedelta
from pathlib import Path

from fmc.central.reports import report_points
from fmc.core.carriers import is_water
from fmc.core.config import DEFAULT_GATEWAY
from fmc.core.localtime import local_day_start_ns, zone
from fmc.core.points import Point, Priority
from fmc.indicators.reports import EnterpriseReport
from fmc.plant.tce import DEFAULT_COEFFICIENTS
from fmc.plant.tce import tce as tce_of

HISTORY_YEARS = range(2016, 2021)
SHOWN_YEAR = 2020
DEMO_ENTERPRISE_ID = "demo-330602-0001"
DEMO_REGION, DEMO_INDUSTRY = "330602", "17"


def _days(year: int) -> list[date]:
    d, out = date(year, 1, 1), []
    while d.year == year:
        out.append(d)
        d += timedelta(days=1)
    return out


def history_points(enterprise: str, region: str, industry: str, *, equipment_total: int, seed: int = 7,
                   tz: str = "Asia/Shanghai") -> list[Point]:
    """Daily ``enterprise_daily`` and ``consumption_daily`` for 2016-2020 and annual ``enterprise_report``s.

    The story: the mill replaces a loom with an NC one each year (from 40 % of the equipment) and
    networks them; it saves energy (about 5 % a year per unit of value added) and water, and grows.
    """
    rng = random.Random(seed)
    zone_ = zone(tz)
    tags = {"enterprise": enterprise, "region": region, "industry": industry, "gateway": DEFAULT_GATEWAY}
    points: list[Point] = []
    reports: list[EnterpriseReport] = []
    for k, year in enumerate(HISTORY_YEARS):
        nc = min(equipment_total, round(0.40 * equipment_total) + k)
        networked_share = min(1.0, 0.45 + 0.06 * k)
        growth = 1.08**k
        for day in _days(year):
            ts = local_day_start_ns(day, zone_)
            working = day.weekday() < 6 and not (day.month == 2 and day.day <= 7)  # Sundays and Spring Festival off
            nc_net = round(nc * networked_share) if working else round(nc * networked_share * 0.3)
            points.append(Point("enterprise_daily", dict(tags), {
                "equipment_total": equipment_total, "equipment_nc": nc, "asset_value_total": 0.0,
                "asset_value_nc": 0.0, "equipment_networked": nc_net, "nc_equipment_networked": nc_net,
            }, ts, Priority.ROLLUP))
            load = (1.0 if working else 0.25) * rng.uniform(0.9, 1.1)
            daily_amounts = {
                "electricity": 42_000.0 * growth * 0.95**k * load,  # kWh
                "natural_gas": 1_800.0 * growth * 0.94**k * load,  # m³
                "water_intake": 900.0 * growth * 0.93**k * load,  # m³
                "wastewater": 700.0 * growth * 0.97**k * load,  # m³
            }
            for carrier, amount in daily_amounts.items():
                fields: dict[str, float] = {"amount": round(amount, 3)}
                t = tce_of(carrier, fields["amount"], DEFAULT_COEFFICIENTS)
                if t is not None:
                    fields["tce"] = t
                if is_water(carrier):
                    fields["m3"] = fields["amount"]
                fields["coverage"] = 1.0
                points.append(Point("consumption_daily", {**tags, "carrier": carrier}, fields, ts, Priority.ROLLUP))
        value_added = 96_000_000.0 * growth  # yuan
        revenue = value_added * 4.1
        reports.append(EnterpriseReport(
            enterprise=enterprise, period=str(year), value_added=round(value_added, 2),
            value_added_comparable=round(value_added / 1.015**k, 2), employees_avg=float(420 - 6 * k),
            revenue=round(revenue, 2), rd_expense=round(revenue * (0.011 + 0.0015 * k), 2),
            gross_output=round(revenue * 1.05, 2), new_product_output=round(revenue * 1.05 * (0.28 + 0.02 * k), 2),
        ))
    points += report_points(reports, {enterprise: region}, {enterprise: industry}, tz=tz)
    return points


def write_history(store_path: Path, equipment_total: int) -> int:
    """Write the history into the embedded store (created if missing); the number of points."""
    from fmc.core.lineprotocol import encode
    from fmc.stores.embedded.store import EmbeddedStore

    points = history_points(DEMO_ENTERPRISE_ID, DEMO_REGION, DEMO_INDUSTRY, equipment_total=equipment_total)
    store = EmbeddedStore(store_path)
    try:
        outcome = store.write_lines([encode(p) for p in points])
    finally:
        store.close()
    if outcome.refused:
        raise RuntimeError(f"the store refused {len(outcome.refused)} history point(s): {outcome.refused[0].reason}")
    return len(points)


async def indicator_table(store_path: Path) -> tuple[str, list[str]]:
    """The demo enterprise's indicators for SHOWN_YEAR against the plan, from the store through the
    central service (exactly what `fmc indicators` and the API compute); and any problems."""
    from fmc.central.config import load_plan
    from fmc.central.service import IndicatorService
    from fmc.central.store import Scope
    from fmc.central.tables import result_table
    from fmc.indicators.engine import Period
    from fmc.stores.embedded.store import EmbeddedQueryStore

    service = IndicatorService(EmbeddedQueryStore(store_path), load_plan())
    try:
        computed = await service.indicators("enterprise", Period.of_year(SHOWN_YEAR),
                                            Scope(enterprises=(DEMO_ENTERPRISE_ID,)))
    except Exception as e:  # reported as a problem: the demo's exit code says it
        return "", [f"indicators: {type(e).__name__}: {e}"]
    finally:
        await service.aclose()
    if not computed.rows:
        return "", ["indicators: the demo enterprise has no figures"]
    plan = service.targets.plan
    lines = [
        "",
        f"INDICATORS {SHOWN_YEAR} — SIMULATED HISTORY AND REPORTS (not measured by this run) — {DEMO_ENTERPRISE_ID}",
        f"plan 规划: {plan.name}, base year 基期 {service.targets.base_year}",
        *result_table(computed.rows[0].results, service.targets, "zh"),
        "same figures: fmc indicators -c central.toml --year 2020 --enterprise … ; the API's "
        "/v1/enterprises/{id}/indicators?period=2020",
    ]
    problems = [] if computed.rows[0].results["nc_rate"].value is not None else ["indicators: no NC rate for 2020"]
    return "\n".join(lines), problems


class DemoApi:
    """`fmc api` on the demo's embedded store, on a free 127.0.0.1 port, with one province key."""

    def __init__(self, workdir: Path, store_path: Path) -> None:
        self.workdir = workdir
        self.store_path = store_path
        self.url = ""
        self.key = ""
        self._server: object | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import uvicorn

        from fmc.central.api.app import create_app
        from fmc.central.config import ApiConfig, load_plan
        from fmc.central.keys import KeyStore
        from fmc.central.service import IndicatorService
        from fmc.demo.plant import free_port
        from fmc.stores.embedded.store import EmbeddedQueryStore

        keys_path = self.workdir / "keys.db"
        keys_path.unlink(missing_ok=True)
        keys = KeyStore(keys_path)
        _, self.key = keys.create("province", "fmc demo")
        port = free_port()
        api = ApiConfig(port=port, keys_file=keys_path)
        service = IndicatorService(EmbeddedQueryStore(self.store_path), load_plan())
        app = create_app(service, keys, api)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(), name="fmc-demo-api")
        for _ in range(200):  # up to 10 s
            if server.started or self._task.done():
                break
            await asyncio.sleep(0.05)
        if not server.started:
            await self.stop()
            raise RuntimeError("uvicorn did not start")
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True  # type: ignore[attr-defined]
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10)
            self._task = None
