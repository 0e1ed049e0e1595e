"""``fmc dlt645 scan`` and ``fmc dlt645 read``: commissioning a DL/T 645 bus from the command line.

``scan`` sends the broadcast "read address" (AAAAAAAAAAAA): exactly one meter on the bus answers
with its address. With several meters on the bus they all answer at once and garble each other
(a checksum error, or nothing), so broadcast only works with one meter connected; for a bus of
several, ``--address`` (or ``-c agent.toml``) names the addresses to try, one by one. ``read``
reads one data identifier from one address. The bus is ``--port DEVICE`` (with the serial
settings, 2400 8E1 by default) or ``--tcp HOST:PORT`` (a transparent converter), or a
``[[dlt645]]`` section of an agent file (``-c``, ``--source``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from fmc.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    dlt645 = subparsers.add_parser("dlt645", help="DL/T 645 meters: find their addresses, read one value")
    actions = dlt645.add_subparsers(dest="dlt645_command", metavar="ACTION", required=True)
    scan = actions.add_parser(
        "scan", help="broadcast read-address (one meter on the bus), or try the addresses given",
        description="Broadcast 'read address': only works with ONE meter on the bus (several answer at once "
        "and garble each other). With several, give the addresses to try with --address or -c.")
    scan.add_argument("--address", action="append", default=[], help="a 12-digit address to try (repeatable)")
    _bus_arguments(scan)
    read = actions.add_parser("read", help="read one data identifier from one meter")
    read.add_argument("address", help="the meter's 12-digit address, as on its nameplate")
    read.add_argument("identifier", nargs="?", default="00010000",
                      help="data identifier, e.g. 00010000 (forward active energy, the default), 02010100 (voltage A)")
    _bus_arguments(read)
    dlt645.set_defaults(handler=dlt645_main)
    return dlt645


def _bus_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial device, e.g. /dev/ttyUSB0")
    where.add_argument("--tcp", metavar="HOST:PORT", help="a transparent serial-to-Ethernet converter")
    where.add_argument("-c", "--config", help="take the bus (and, for scan, its addresses) from this agent file")
    p.add_argument("--source", help="with -c: the [[dlt645]] name (default: the first)")
    p.add_argument("--baudrate", type=int, default=2400)
    p.add_argument("--parity", choices=("even", "odd", "none"), default="even")
    p.add_argument("--data-bits", type=int, choices=(7, 8), default=8)
    p.add_argument("--stop-bits", type=int, choices=(1, 2), default=1)
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for each answer (default 1)")


def dlt645_main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    from pydantic import ValidationError

    from fmc.sources.dlt645.config import Dlt645Meter, known_identifier

    prog = f"fmc dlt645 {args.dlt645_command}"
    try:
        bus, configured = _bus(args)
        if args.dlt645_command == "read":
            address = Dlt645Meter.model_validate({"address": args.address, "meter": "x"}).address
            ident = known_identifier(args.identifier)
            return _read(bus, address, ident, args.timeout, out)
        addresses = [Dlt645Meter.model_validate({"address": a, "meter": "x"}).address for a in args.address]
        return _scan(bus, addresses or configured, args.timeout, out)
    except ValidationError as e:
        print(f"{prog}: " + "; ".join(x["msg"].removeprefix("Value error, ") for x in e.errors()), file=err)
        return EXIT_USAGE
    except ValueError as e:
        print(f"{prog}: {e}", file=err)
        return EXIT_USAGE
    except _Usage as e:
        print(f"{prog}: {e}", file=err)
        return EXIT_USAGE


class _Usage(Exception):
    pass


def _bus(args: argparse.Namespace):  # -> tuple[Dlt645Bus, list[str]]
    from fmc.sources.dlt645.config import Dlt645Bus

    if args.config:
        from fmc.cli.plugins import load_config

        cfg = load_config(args.config)  # a ConfigError is printed by fmc's main
        sections = [s for s in cfg.dlt645 if args.source in (None, s.name)]  # type: ignore[attr-defined]
        if not sections:
            raise _Usage(f"{args.config} has no [[dlt645]] section{' named ' + args.source if args.source else ''}")
        section = sections[0]
        return section, [m.address for m in section.meter]
    if args.tcp:
        host, sep, port = args.tcp.rpartition(":")
        if not sep or not port.isdigit():
            raise _Usage(f"--tcp {args.tcp!r}: write HOST:PORT, e.g. 192.168.1.200:4196")
        settings = {"transport": "tcp", "host": host.strip("[]"), "port": int(port)}
    else:
        settings = {"transport": "serial", "port": args.port, "baudrate": args.baudrate, "parity": args.parity,
                    "data_bits": args.data_bits, "stop_bits": args.stop_bits}
    return Dlt645Bus.model_validate(settings), []


def _describe(bus) -> str:  # bus: Dlt645Bus
    return f"{bus.where} ({bus.framing if bus.transport == 'serial' else 'tcp converter'})"


def _read(bus, address: str, ident, timeout: float, out: TextIO) -> int:
    from fmc.sources.dlt645.client import ERROR_FLAG, FIXES, Client, TransportError, make_transport
    from fmc.sources.dlt645.frame import error_fix

    transport = make_transport(bus)
    try:
        transport.open()
        r = Client(transport, bus.preamble).read(address, ident, timeout, 1)
    except TransportError as e:
        print(f"{e}; fix: {FIXES['io_error']}", file=out)
        return EXIT_FAILURE
    finally:
        transport.close()
    if r.value is not None:
        print(f"{address} {ident.text} ({ident.name}): {r.value:g} {ident.unit}", file=out)
        return EXIT_OK
    fix = error_fix(r.error_code or 0) if r.reason == ERROR_FLAG else FIXES.get(r.reason or "", "")
    label = "error flag" if r.reason == ERROR_FLAG else (r.reason or "timeout")
    print(f"{address} {ident.text} ({ident.name}) on {_describe(bus)}: {label}: {r.detail}; fix: {fix}", file=out)
    return EXIT_FAILURE


def _scan(bus, addresses: list[str], timeout: float, out: TextIO) -> int:
    from fmc.sources.dlt645.client import FIXES, Client, TransportError, make_transport
    from fmc.sources.dlt645.frame import IDENTIFIERS

    forward = IDENTIFIERS[0x00010000]
    transport = make_transport(bus)
    try:
        transport.open()
        client = Client(transport, bus.preamble)
        if not addresses:
            print(f"broadcast read address (AAAAAAAAAAAA) on {_describe(bus)} — answers only with ONE meter on the bus",
                  file=out)
            address, r = client.read_address(timeout, retries=1)
            if address is None:
                print(f"broadcast read address: {r.detail}", file=out)
                if r.reason in ("checksum", "bad_end"):
                    print("several meters answer a broadcast at once and garble each other: connect one meter at a "
                          "time, or give the addresses to try: fmc dlt645 scan … --address 000012345678 "
                          "--address …", file=out)
                else:
                    print(f"fix: {FIXES['timeout']}", file=out)
                return EXIT_FAILURE
            found = client.read(address, forward, timeout, 1)
            what = f"forward active energy {found.value:g} kWh" if found.value is not None else found.detail
            print(f"found {address} ({what})", file=out)
            print(f'\n[[dlt645.meter]]\naddress = "{address}"\nmeter = "<its [[meter]] id>"', file=out)
            return EXIT_OK
        answered = 0
        print(f"trying {len(addresses)} address(es) on {_describe(bus)}", file=out)
        for address in addresses:
            r = client.read(address, forward, timeout, 0)
            if r.value is not None:
                print(f"  {address}: answered (forward active energy {r.value:g} kWh)", file=out)
            elif r.answered:
                print(f"  {address}: answered (forward active energy: error flag — {r.detail})", file=out)
            else:
                print(f"  {address}: no answer ({r.reason}: {r.detail})", file=out)
                continue
            answered += 1
        print(f"{answered} of {len(addresses)} answered", file=out)
        return EXIT_OK if answered else EXIT_FAILURE
    except TransportError as e:
        print(f"{e}; fix: {FIXES['io_error']}", file=out)
        return EXIT_FAILURE
    finally:
        transport.close()
