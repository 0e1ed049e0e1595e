"""The ``fmc`` command. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad configuration."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shlex
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

from fmc.agent.config import AgentSettings
from fmc.central.grafana import push as grafana
from fmc.cli import api, extras, keys
from fmc.cli import central as central_cli
from fmc.cli import dlt645 as dlt645_cli
from fmc.cli import modbus as modbus_cli
from fmc.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from fmc.cli.plugins import central_timezone, load_config
from fmc.core.config import ConfigError
from fmc.plant.equipment import EquipmentItem
from fmc.plant.ledger import inventory_check_main, load_inventory


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fmc",
        description="fmc — factory metrics collector: NC rate, networking rate, energy and water for "
        "Zhejiang's plan to upgrade traditional manufacturing.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the edge agent")
    run.add_argument("-c", "--config", required=True, help="agent TOML file")

    check = sub.add_parser("check", help="validate the config and try every connection, then exit")
    check.add_argument("-c", "--config", required=True, help="agent TOML file")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds per connection attempt")

    demo = sub.add_parser("demo", help="simulated plant + agent + embedded store, no server needed")
    demo.add_argument("--duration", type=float, default=20.0, help="seconds to run (default 20)")
    demo.add_argument("--workdir", type=Path, default=None, help="where the store and spool go")

    opcua = sub.add_parser("opcua", help="OPC UA tools: a client certificate, browsing a server for machines")
    opcua_sub = opcua.add_subparsers(dest="opcua_command", metavar="ACTION", required=True)
    cert = opcua_sub.add_parser("cert", help="make a client certificate and key whose application URI fmc announces")
    cert.add_argument("--out", type=Path, required=True, help="folder for client-cert.der and client-key.pem")
    cert.add_argument("--application-uri", default=None,
                      help="default: urn:fmc:<hostname>:client (must equal [[opcua]] application_uri)")
    cert.add_argument("--common-name", default="fmc agent")
    cert.add_argument("--days", type=int, default=3650)
    browse = opcua_sub.add_parser("browse", help="list the machines a server exposes, as ready-to-paste TOML")
    browse.add_argument("endpoint", help="opc.tcp://host:4840")
    browse.add_argument("--max-depth", type=int, default=8)
    browse.add_argument("--timeout", type=float, default=10.0)

    inventory = sub.add_parser("inventory", help="check an equipment ledger CSV (设备台账) and summarise it")
    inventory_sub = inventory.add_subparsers(dest="inventory_command", metavar="ACTION", required=True)
    inventory_check = inventory_sub.add_parser("check", help="validate FILE; every bad row is named by line")
    inventory_check.add_argument("file", help="CSV file, Chinese or English headers")

    spool = sub.add_parser("spool", help="inspect the agent's spool (works while the agent runs)")
    spool_sub = spool.add_subparsers(dest="spool_command", metavar="ACTION", required=True)
    show = spool_sub.add_parser("show", help="depth, drops, dead letters and recent rejections")
    show.add_argument("-c", "--config", required=True)
    show.add_argument("--limit", type=int, default=20)
    requeue = spool_sub.add_parser("requeue", help="send dead-lettered points again (after fixing the cause)")
    requeue.add_argument("-c", "--config", required=True)

    # Commands defined next to what they run; each sets `handler` and imports its heavy parts lazily.
    central_cli.add_parser(sub)
    api.add_parser(sub)
    keys.add_parser(sub)
    grafana.add_parser(sub, central_timezone=central_timezone)
    dlt645_cli.add_parser(sub)
    modbus_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version

        print(f"fmc {version('fmc')}")
        return EXIT_OK
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    prog = " ".join(filter(None, ("fmc", args.command, getattr(args, f"{args.command}_command", None))))
    refused = extras.refusal(args.command, prog)
    if refused:  # a gateway install (pip install fmc) without the extra this command needs
        print(refused, file=sys.stderr)
        return EXIT_USAGE
    try:
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args))
        if args.command == "run":
            cfg = load_config(args.config)
            return _run(cfg, load_inventory(args.config, cfg.equipment, cfg.inventory), Path(args.config))
        if args.command == "check":
            if not (math.isfinite(args.timeout) and args.timeout > 0):  # nan passes a "> 0" test as False
                print(f"fmc check: --timeout must be a positive number of seconds, not {args.timeout}", file=sys.stderr)
                return EXIT_USAGE
            cfg = load_config(args.config)
            return _check(cfg, load_inventory(args.config, cfg.equipment, cfg.inventory), args.timeout,
                          Path(args.config))
        if args.command == "opcua":
            return _opcua(args)
        if args.command == "inventory":
            return inventory_check_main(Path(args.file), sys.stdout)
        if args.command == "demo":
            return _demo(args.duration, args.workdir)
        if args.command == "spool":
            return _spool(load_config(args.config), args)
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


def _run(cfg: AgentSettings, inventory: list[EquipmentItem], config_path: Path) -> int:
    from fmc.agent.runtime import Agent, AgentFailed
    from fmc.core.logs import setup_logging

    log = setup_logging(cfg.log)
    agent = Agent(cfg, logger=log, inventory=inventory, config_path=config_path.absolute())

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await agent.run(stop)

    try:
        asyncio.run(main())
    except AgentFailed as e:  # a part failed for good: the reason is the message (the log has it too)
        print(f"fmc run: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as e:  # a runtime failure: one clear line, the detail in the debug log
        log.debug("agent failed", exc_info=True)
        print(f"fmc run: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _check(cfg: AgentSettings, inventory: list[EquipmentItem], timeout: float, config_path: Path) -> int:
    from fmc.agent.claims import check_claims, check_gateway_hosts
    from fmc.agent.feeds import check_classes, check_feeds
    from fmc.agent.plugin import CheckResult
    from fmc.agent.runtime import make_sink
    from fmc.agent.selfmetrics import host_tag

    async def checks() -> list[CheckResult]:
        async def bounded(kind: str, name: str, check: Awaitable[CheckResult]) -> CheckResult:
            try:
                r = await asyncio.wait_for(check, timeout + 2)
            except TimeoutError:
                return CheckResult(f"{kind}:{name}", False, f"no answer within {timeout:.0f}s")
            return CheckResult(_prefixed(kind, r.name), r.ok, r.detail, r.undecided, r.warning)

        async def asked(name: str, check: Awaitable[CheckResult]) -> CheckResult:
            """A question to the store: no answer in time is "cannot tell", not a failure."""
            try:
                r = await asyncio.wait_for(check, timeout + 2)
            except TimeoutError:
                return CheckResult(name, False, f"cannot tell: no answer within {timeout:.0f}s", undecided=True)
            return CheckResult(_prefixed("sink", r.name), r.ok, r.detail, r.undecided, r.warning)

        results = [_check_spool(cfg), *check_feeds(
            cfg.sources(), [m.reads for m in cfg.meter], [e.id for e in inventory],
            [m.reads for m in cfg.meter if m.kind == "counter" and m.rollover is None])]
        if inventory:
            results.append(check_classes(cfg, inventory, config_path))
        results += [await bounded(s.section, s.name, s.check(cfg.enterprise, timeout)) for s in cfg.sources()]
        sink = make_sink(cfg)
        try:
            try:
                r = await asyncio.wait_for(sink.check(), timeout + 2)
                results.append(CheckResult(_prefixed("sink", r.name), r.ok, r.detail))
            except TimeoutError:
                results.append(CheckResult(f"sink:{cfg.sink_settings().type}", False,
                                           f"no answer within {timeout:.0f}s"))
            # another gateway of the enterprise already writing this agent's equipment?
            results.append(await asked("sink:claims", check_claims(sink, cfg.enterprise, inventory)))
            # another host writing as this gateway (two agents left at the default id)?
            results.append(await asked("sink:gateway", check_gateway_hosts(
                sink, cfg.enterprise, host_tag(socket.gethostname()), time.time_ns())))
        finally:
            await sink.aclose()
        return results

    results = asyncio.run(checks())
    width = max(len(r.name) for r in results)
    print(f"config ok: enterprise {cfg.enterprise.id} ({cfg.enterprise.name}), region {cfg.enterprise.region}, "
          f"industry {cfg.enterprise.industry}, gateway {cfg.enterprise.gateway}")
    if inventory:
        nc = sum(1 for e in inventory if e.nc)
        print(f"inventory: {len(inventory)} equipment ({nc} NC), {len(cfg.meter)} meter(s)")
    for r in results:
        status = ("warn" if r.warning else "ok  ") if r.ok else "??  " if r.undecided else "FAIL"
        print(f"  {r.name.ljust(width)}  {status}  {r.detail}")
    failed = sum(not r.ok and not r.undecided for r in results)
    undecided = sum(r.undecided for r in results)
    warned = sum(r.ok and r.warning for r in results)
    told = (f"; {undecided} could not tell" if undecided else "") + (f"; {warned} warning(s)" if warned else "")
    print(f"all checks passed{told}" if not failed else f"{failed} check(s) failed{told}")
    return EXIT_OK if not failed else EXIT_FAILURE


def _opcua(args: argparse.Namespace) -> int:
    import socket

    from fmc.sources.opcua.config import DEFAULT_APPLICATION_URI
    from fmc.sources.opcua.tools import browse_machines, make_client_certificate

    if args.opcua_command == "cert":
        uri = args.application_uri or DEFAULT_APPLICATION_URI.format(hostname=socket.gethostname())
        args.out.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = args.out / "client-cert.der", args.out / "client-key.pem"
        if cert_path.exists() or key_path.exists():
            print(f"fmc opcua cert: {cert_path} or {key_path} exists already; move it away first", file=sys.stderr)
            return EXIT_USAGE
        make_client_certificate(cert_path, key_path, uri, args.common_name, days=args.days)
        print(f"wrote {cert_path} and {key_path} (application URI {uri})")
        print(f'in [[opcua]]: certificate = "{cert_path}", private_key = "{key_path}", application_uri = "{uri}"')
        print("then make the server trust the certificate (copy it into the server's trusted folder)")
        return EXIT_OK
    try:
        report = asyncio.run(browse_machines(args.endpoint, max_depth=args.max_depth, timeout=args.timeout))
    except ValueError as e:  # the endpoint or an option is wrong: one sentence naming it
        print(f"fmc opcua browse: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # a clear sentence, not a trace: the endpoint is the user's input
        print(f"fmc opcua browse: {e}", file=sys.stderr)
        return EXIT_FAILURE
    print(report.render_toml())
    return EXIT_OK


def _prefixed(kind: str, name: str) -> str:
    return name if name.startswith(f"{kind}:") else f"{kind}:{name}"


def _check_spool(cfg: AgentSettings):  # -> CheckResult
    from fmc.agent.plugin import CheckResult
    from fmc.agent.spool import check_spool_file

    path = cfg.spool.path
    folder = path.parent
    name = "spool"
    # a folder, a file that is not a spool, one this user may not write, a folder it may not enter: `fmc run`
    # would stop
    refused = check_spool_file(path)
    if refused is not None:
        wrong, fix = refused
        return CheckResult(name, False, f"[spool] path {path}: {wrong}; fix: {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fmc-check-"):
            pass
    except OSError as e:
        return CheckResult(name, False, f"cannot write in {folder}: {e.strerror}; create it or fix its owner")
    free = _free_bytes(folder)
    if free is not None and free < cfg.spool.max_bytes:
        limit_mib = cfg.spool.max_bytes / 2**20
        return CheckResult(name, True, f"{path} (warning: {free / 2**20:.0f} MiB free < max_bytes {limit_mib:.0f} MiB)")
    return CheckResult(name, True, f"{path} writable")


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _demo(duration: float, workdir: Path | None) -> int:
    from fmc.demo.run import run_demo

    if not (math.isfinite(duration) and duration > 0):  # argparse's float() takes "nan" and "inf"
        print(f"fmc demo: --duration must be a positive number of seconds, not {duration}", file=sys.stderr)
        return EXIT_USAGE
    if workdir is not None:
        if workdir.exists() and not workdir.is_dir():
            print(f"fmc demo: --workdir {workdir} is a file; name a folder (it is created when missing)",
                  file=sys.stderr)
            return EXIT_USAGE
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # no permission, or a file where a parent folder should be
            print(f"fmc demo: --workdir {workdir}: cannot create it ({e.strerror}); name a folder you can write in",
                  file=sys.stderr)
            return EXIT_USAGE
    return asyncio.run(run_demo(duration_s=duration, workdir=workdir))


def _spool(cfg: AgentSettings, args: argparse.Namespace) -> int:
    from fmc.agent.spool import Spool, SpoolError, check_spool_file

    # what Spool() would refuse, as one sentence: a state folder this user may not enter (an engineer's own
    # login, /var/lib/fmc being 0750 fmc:fmc), a spool file it may not write, a newer fmc's
    refused = check_spool_file(cfg.spool.path)
    if refused is not None:
        wrong, fix = refused
        print(f"fmc spool: [spool] path {cfg.spool.path}: {wrong}; fix: {fix}", file=sys.stderr)
        return EXIT_FAILURE
    if not cfg.spool.path.exists():
        print(f"no spool at {cfg.spool.path} (the agent has not run with this config yet)", file=sys.stderr)
        return EXIT_FAILURE
    try:
        spool = Spool(cfg.spool.path, max_bytes=cfg.spool.max_bytes, synchronous=cfg.spool.synchronous)
    except SpoolError as e:
        print(f"fmc spool: {e}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        if args.spool_command == "requeue":
            n = spool.requeue_dead_letters()
            print(f"{n} dead-lettered point(s) queued again")
            kept = spool.stats().superseded_dead_letters
            if kept:
                print(f"{kept} superseded dead letter(s) kept, not sent (a later version of the same series and "
                      f"time was delivered or is queued): `fmc spool show -c {shlex.quote(args.config)}` lists them")
            return EXIT_OK
        s = spool.stats()
        age = "-" if s.oldest_enqueued_ms is None else f"{time.time() - s.oldest_enqueued_ms / 1000:.0f}s"
        print(f"spool {cfg.spool.path}")
        print(f"  waiting: {s.depth} points, {s.bytes} bytes, oldest {age}")
        print(f"  dropped (spool full): {dict(s.dropped) or 0}")
        superseded = f" ({s.superseded_dead_letters} superseded, not requeued)" if s.superseded_dead_letters else ""
        print(f"  dead letters: {s.dead_letters}{superseded}   rejected messages (all time): {s.rejected_total}")
        dead = spool.dead_letters(args.limit)
        if dead:
            print("dead letters (newest first):")
            for d in dead:
                note = "" if d.superseded_by is None else f" [superseded by #{d.superseded_by}: not requeued]"
                print(f"  #{d.id} status={d.status} {d.reason[:120]}{note}\n      {d.line[:160]}")
        rejections = spool.recent_rejections(args.limit)
        if rejections:
            print("recent rejections (newest first):")
            for r in rejections:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.at_ms / 1000))
                excerpt = r.payload_excerpt[:80].decode("utf-8", "replace")
                print(f"  {when} {r.source} {r.topic!r}: {r.reason} — {r.detail[:100]}\n      payload: {excerpt!r}")
        return EXIT_OK
    finally:
        spool.close()


if __name__ == "__main__":
    sys.exit(main())
