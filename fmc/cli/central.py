"""``fmc indicators`` and ``fmc reports import``: the central figures in the terminal, and reports
into the central store. Module import stays light; the handlers import what they use."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from fmc.central.tables import level_table, result_table
from fmc.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    pass



def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ind = sub.add_parser(
        "indicators",
        help="the plan's indicators for a year (or another period) in the terminal, with targets and status",
    )
    ind.add_argument("-c", "--config", required=True, help="central TOML file (deploy/examples/central.toml)")
    ind.add_argument("--year", type=int, help="calendar year, e.g. 2020")
    ind.add_argument("--period", help="instead of --year: 2020-Q2, 2020-03, 2020-YTD or 2020-YTD-06-30")
    ind.add_argument("--region", help="GB/T 2260 code prefix: 33 province, 3306 city, 330602 county")
    ind.add_argument("--industry", help="GB/T 4754 code prefix, e.g. 17 (textiles)")
    ind.add_argument("--enterprise", help="one enterprise's figures")
    ind.add_argument("--by", choices=["enterprise", "county", "city", "industry"],
                     help="also list the rows of this level, one column per indicator")
    ind.add_argument("--lang", choices=["zh", "en"], default="zh")
    ind.add_argument("--materialize", action="store_true",
                     help="write `indicator` points for the dashboards (every level; the years of [materialize])")
    ind.set_defaults(handler=indicators_main)

    reports = sub.add_parser("reports", help="enterprise reports: value added, employees, revenue, R&D, output")
    rsub = reports.add_subparsers(dest="reports_command", metavar="ACTION", required=True)
    imp = rsub.add_parser("import", help="check a reports CSV and write it to the central store: all rows or none")
    imp.add_argument("file", type=Path, help="CSV, Chinese or English headers (docs/reports.md)")
    imp.add_argument("-c", "--config", help="central TOML file; without it the file is only checked")
    imp.add_argument("--dry-run", action="store_true", help="check and show what would be written, write nothing")
    imp.set_defaults(handler=reports_import_handler)


# --- rendering -------------------------------------------------------------------------------------------




# --- fmc indicators --------------------------------------------------------------------------------------


def indicators_main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from fmc.central.service import IndicatorService
    from fmc.central.store import Scope, StoreQueryError
    from fmc.cli.plugins import load_central_config

    out = out or sys.stdout
    cfg = load_central_config(args.config)
    if args.materialize:
        return asyncio.run(_materialize(cfg, out))
    if (args.year is None) == (args.period is None):
        print("fmc indicators: give --year YYYY or --period (not both)", file=sys.stderr)
        return EXIT_USAGE
    try:
        scope = Scope(
            region_prefix=args.region,
            industries=(args.industry,) if args.industry else (),
            enterprises=(args.enterprise,) if args.enterprise else (),
        )
    except ValueError as e:
        print(f"fmc indicators: {e}", file=sys.stderr)
        return EXIT_USAGE

    async def run() -> int:
        service = IndicatorService.from_config(cfg)
        try:
            try:
                period = service.parse_period(args.period or str(args.year))
            except ValueError as e:
                print(f"fmc indicators: {e}", file=sys.stderr)
                return EXIT_USAGE
            await service.sync()
            return await _print_indicators(service, period, scope, args, out)
        except StoreQueryError as e:
            print(f"fmc indicators: {e}", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            await service.aclose()

    return asyncio.run(run())


async def _print_indicators(service, period, scope, args, out: TextIO) -> int:  # type: ignore[no-untyped-def]
    from fmc.indicators.labels import industry_label
    from fmc.indicators.pooling import REGION_DIGITS

    zh = args.lang == "zh"
    plan = service.targets.plan
    names = {e.enterprise: e.name for e in await service.enterprises(scope)}
    if args.enterprise:
        computed = await service.indicators("enterprise", period, scope)
        if not computed.rows:
            print(f"fmc indicators: no enterprise {args.enterprise!r} in the store or the registry", file=sys.stderr)
            return EXIT_FAILURE
        row = computed.rows[0]
        title = f"{row.enterprise} {names.get(row.enterprise) or ''}".strip()
        title += f" · {row.region} · {industry_label(row.industry or '', args.lang)}"
    else:
        if args.industry:
            level = "industry"
        else:
            level = {2: "province", 4: "city", 6: "county"}[len(args.region)] if args.region else "province"
        computed = await service.indicators(level, period, scope)  # type: ignore[arg-type]
        if not computed.rows:
            print("fmc indicators: no enterprise in that scope", file=sys.stderr)
            return EXIT_FAILURE
        if len(computed.rows) > 1:  # a province-wide query over enterprises of several provinces
            print("fmc indicators: the scope spans several groups; narrow it with --region", file=sys.stderr)
            return EXIT_USAGE
        row = computed.rows[0]
        region = args.region or row.region[: REGION_DIGITS["province"]]
        title = (f"{'地区' if zh else 'region'} {region}"
                 + (f" · {industry_label(args.industry, args.lang)}" if args.industry else "")
                 + f" · {len(names)} {'家企业' if zh else 'enterprise(s)'}")
    out.write(f"{title} — {period.label} ({period.start} … {period.end})\n")
    out.write(f"{'规划' if zh else 'plan'}: {plan.name} ({service.targets.base_year} "
              f"{'基期' if zh else 'base year'})\n")
    out.write("\n".join(result_table(row.results, service.targets, args.lang)) + "\n")
    if args.by:
        rows = (await service.indicators(args.by, period, scope)).rows
        out.write("\n" + "\n".join(level_table(rows, names, args.lang)) + "\n")
        out.write("value (target) ✓ met  ✗ missed  ? insufficient data\n" if not zh else
                  "数值 (目标值) ✓ 达标  ✗ 未达标  ? 数据不足\n")
    return EXIT_OK


async def _materialize(cfg, out: TextIO) -> int:  # type: ignore[no-untyped-def]
    from fmc.central.service import IndicatorService
    from fmc.central.store import StoreQueryError

    service = IndicatorService.from_config(cfg)
    try:
        periods = service.materialize_periods(cfg.materialize.first_year, cfg.materialize.months)
        await service.sync()
        written = await service.materialize(periods)
    except StoreQueryError as e:
        print(f"fmc indicators --materialize: {e}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await service.aclose()
    out.write(f"wrote {written} indicator point(s) for {len(periods)} period(s)\n")
    return EXIT_OK


# --- fmc reports import ----------------------------------------------------------------------------------


def reports_import_handler(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from fmc.central.reports import reports_import_main

    out = out or sys.stdout
    status = reports_import_main(args.file, out)
    if status != EXIT_OK or args.config is None:
        return status
    from fmc.cli.plugins import load_central_config

    cfg = load_central_config(args.config)
    return asyncio.run(_write_reports(cfg, args.file, args.dry_run, out))


async def _write_reports(cfg, path: Path, dry_run: bool, out: TextIO) -> int:  # type: ignore[no-untyped-def]
    from fmc.central.reports import read_reports_csv
    from fmc.central.service import IndicatorService
    from fmc.central.store import StoreQueryError
    from fmc.indicators.reports import ReportsError

    service = IndicatorService.from_config(cfg)
    try:
        reports = read_reports_csv(path)
        try:
            # each report under its enterprise's tags at its period's end, and onto the points already
            # holding it (IndicatorService.report_points)
            points = await service.report_points(reports)
        except ReportsError as e:
            print(e.render().replace("<reports>", str(path)), file=sys.stderr)
            print("fix: add the enterprises to [registry] csv, or correct their ids; nothing was written",
                  file=sys.stderr)
            return EXIT_USAGE
        if dry_run:
            out.write(f"dry run: would write {len(reports)} report(s); nothing written\n")
            return EXIT_OK
        await service.store.write(points)
    except StoreQueryError as e:
        print(f"fmc reports import: nothing written: {e}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await service.aclose()
    out.write(f"wrote {len(reports)} report(s) to the central store\n")
    return EXIT_OK
