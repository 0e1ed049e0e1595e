"""``fmc check`` for a ``[[modbus]]`` source: ask every device for each of its requests once and say,
one line per device, whether it answered, and if not why and what to do."""

from __future__ import annotations

import asyncio
import time

from fmc.agent.plugin import CheckResult
from fmc.sources.modbus import config as schema
from fmc.sources.modbus.link import FIXES, NO_ANSWER, Link, failed_attempt_s, quiet_pymodbus
from fmc.sources.modbus.plan import plan_blocks


async def check_modbus(cfg: schema.ModbusSource, timeout: float = 5.0) -> CheckResult:
    """Read each device's requests once (with its timeout, and as many of its retries as fit in
    ``timeout``, within ``timeout`` overall)."""
    quiet_pymodbus()
    links: dict[tuple[object, ...], Link] = {}
    lines: list[str] = []
    failed = 0
    try:
        for i, dev in enumerate(cfg.device):
            key = cfg.link_key(i)
            if key not in links:
                longest = max(d.timeout_s for j, d in enumerate(cfg.device) if cfg.link_key(j) == key)
                links[key] = Link(cfg.transport, host=dev.host or cfg.host, port=dev.port or cfg.port,
                                  serial_port=cfg.serial_port, baudrate=cfg.baudrate, parity=cfg.parity,
                                  stopbits=cfg.stopbits, bytesize=cfg.bytesize, timeout_s=longest)
        results = await asyncio.gather(*(
            asyncio.wait_for(_check_device(cfg, i, links[cfg.link_key(i)], timeout), timeout)
            for i in range(len(cfg.device))
        ), return_exceptions=True)
    finally:
        for link in links.values():
            link.close()
    for i, result in enumerate(results):
        dev = cfg.device[i]
        where = f"{dev.label} at {cfg.endpoint(i)}"
        if isinstance(result, BaseException):
            late = isinstance(result, TimeoutError)
            ok, detail = False, (f"no answer within {timeout:g}s: {FIXES['timeout']}" if late
                                 else f"{type(result).__name__}: {result}")
        else:
            ok, detail = result
        failed += not ok
        lines.append(f"{where}: {detail}")
    answered = len(cfg.device) - failed
    head = f"{answered} of {len(cfg.device)} device(s) answered over {cfg.transport}"
    return CheckResult(f"modbus:{cfg.name}", failed == 0, "\n      ".join([head, *lines]))


async def _check_device(cfg: schema.ModbusSource, index: int, link: Link, timeout: float) -> tuple[bool, str]:
    dev = cfg.device[index]
    # the attempts that fit in the time given, so that the answer says why (a late answer, say)
    # rather than only that the time ran out
    retries = max(0, min(dev.retries, int(timeout // failed_attempt_s(cfg.transport, dev.timeout_s)) - 1))
    blocks = plan_blocks(dev.spans(), dev.max_gap, dev.max_registers, dev.max_bits)
    began = time.monotonic()
    refused: list[str] = []
    for block in blocks:
        result = await link.read(dev.unit, block.function, block.address, block.count, timeout_s=dev.timeout_s,
                                 retries=retries)
        if result.values is not None:
            continue
        reason = result.reason or "timeout"
        if reason in NO_ANSWER:
            tries = len(result.failures)
            return False, f"{reason.replace('_', ' ')} ({tries} attempt(s) of {dev.timeout_s:g}s): {FIXES[reason]}"
        refused.append(f"{reason.replace('_', ' ')} for {block.function} {block.address}-{block.end - 1} "
                       f"({FIXES.get(reason, 'see the device manual')})")
    took = time.monotonic() - began
    if refused:
        return False, f"answered, but with an exception: {'; '.join(refused)}"
    values = len(dev.registers)
    return True, f"answered: {values} value(s) in {len(blocks)} request(s), {took * 1000:.0f} ms"
