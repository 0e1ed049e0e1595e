"""``fmc modbus read``: read one value from a Modbus device, for commissioning — the settings a
``[[modbus.device.register]]`` takes, on the command line, and the value it would store."""

from __future__ import annotations

import argparse
import asyncio
import sys

from fmc.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    modbus = sub.add_parser("modbus", help="Modbus tools: read one value from a device (commissioning)")
    msub = modbus.add_subparsers(dest="modbus_command", metavar="ACTION", required=True)
    read = msub.add_parser("read", help="read one register (or coil) and print its raw words and its value")
    where = read.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="Modbus TCP device or converter address")
    where.add_argument("--serial", metavar="PORT", help="serial line (RTU), e.g. /dev/ttyUSB0")
    read.add_argument("--port", type=int, default=502, help="TCP port (default 502)")
    read.add_argument("--rtu-over-tcp", action="store_true", help="RTU frames over TCP (a transparent converter)")
    read.add_argument("--baudrate", type=int, default=9600)
    read.add_argument("--parity", choices=["N", "E", "O"], default="E")
    read.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    read.add_argument("--bytesize", type=int, choices=[7, 8], default=8)
    read.add_argument("--unit", type=int, default=1, help="unit id (slave address), default 1")
    read.add_argument("--function", choices=["coil", "discrete_input", "holding", "input"], default="holding")
    read.add_argument("--address", type=int, required=True, help="0-based address (the manual's 40001 is holding 0)")
    read.add_argument("--type", default=None, help="bool, int16, uint16 (default), int32, uint32, float32, int64, "
                      "uint64, float64")
    read.add_argument("--byte-order", choices=["big", "little"], default="big")
    read.add_argument("--word-order", choices=["big", "little"], default="big")
    read.add_argument("--scale", type=float, default=1.0)
    read.add_argument("--offset", type=float, default=0.0)
    read.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    read.add_argument("--retries", type=int, default=1)
    read.set_defaults(handler=read_main)


def read_main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from fmc.core.config import problems_from
    from fmc.sources.modbus.config import ModbusSource

    transport = "rtu" if args.serial else ("rtu_over_tcp" if args.rtu_over_tcp else "tcp")
    register: dict[str, object] = {"function": args.function, "address": args.address, "signal": "value",
                                   "scale": args.scale, "offset": args.offset}
    if args.type is not None:
        register["type"] = args.type
    if args.function in ("holding", "input"):
        register.update(byte_order=args.byte_order, word_order=args.word_order)
    section: dict[str, object] = {
        "name": "read", "transport": transport, "port": args.port,
        "device": [{"unit": args.unit, "equipment": "read", "timeout_s": args.timeout, "retries": args.retries,
                    "register": [register]}],
    }
    if args.serial:
        section.update(serial_port=args.serial, baudrate=args.baudrate, parity=args.parity, stopbits=args.stopbits,
                       bytesize=args.bytesize)
    else:
        section["host"] = args.host
    try:
        cfg = ModbusSource.model_validate(section)
    except ValidationError as e:
        for setting, wrong, fix in problems_from(e):
            name = setting.rsplit(".", 1)[-1]
            print(f"fmc modbus read: {name}: {wrong}" + (f" ({fix})" if fix else ""), file=sys.stderr)
        return EXIT_USAGE
    code, text = asyncio.run(_read(cfg))
    print(text, file=sys.stdout if code == EXIT_OK else sys.stderr)
    return code


async def _read(cfg: object) -> tuple[int, str]:
    from fmc.sources.modbus.config import ModbusSource
    from fmc.sources.modbus.link import FIXES, Link, quiet_pymodbus
    from fmc.sources.modbus.plan import plan_blocks
    from fmc.sources.modbus.points import block_points
    from fmc.sources.modbus.source import value_plans

    assert isinstance(cfg, ModbusSource)
    quiet_pymodbus()
    dev = cfg.device[0]
    reg = dev.registers[0]
    link = Link(cfg.transport, host=cfg.host, port=cfg.port, serial_port=cfg.serial_port, baudrate=cfg.baudrate,
                parity=cfg.parity, stopbits=cfg.stopbits, bytesize=cfg.bytesize, timeout_s=dev.timeout_s)
    try:
        [block] = plan_blocks(dev.spans(), 0)
        result = await link.read(dev.unit, block.function, block.address, block.count, timeout_s=dev.timeout_s,
                                 retries=dev.retries)
    finally:
        link.close()
    where = f"unit {dev.unit} {reg.function} {reg.address} at {cfg.endpoint(0)}"
    if result.values is None:
        reason = result.reason or "timeout"
        return EXIT_FAILURE, (f"fmc modbus read: {where}: {reason.replace('_', ' ')} "
                              f"({len(result.failures)} attempt(s)): {FIXES.get(reason, 'see the device manual')}")
    points, rejections = [], []  # type: ignore[var-annotated]
    block_points(block, result.values, value_plans(cfg, 0, "read"), 0, points, rejections)
    raw = " ".join(f"{w:04x}" if not isinstance(w, bool) else str(int(w)) for w in result.values)
    if rejections:
        return EXIT_FAILURE, f"fmc modbus read: {where}: raw {raw}: {rejections[0].detail} (not a storable value)"
    value = points[0].fields["value"]
    order = "" if reg.type == "bool" else (f", byte_order {reg.byte_order or dev.byte_order}, word_order "
                                           f"{reg.word_order or dev.word_order}")
    return EXIT_OK, f"{where}: raw {raw} -> {reg.type}{order}: {value:.10g}"
