"""``fmc check`` for a ``[[dlt645]]`` source: open the bus as the agent would and read each meter once.

One line for the bus, then one line per meter: answered (with what it read), timeout, checksum
error, error flag (the error byte in words), another meter answered, … — each with its fix. The
check is blocking I/O (``client.py``); ``config.py`` runs it in a worker thread. Every read gets
at most what is left of ``timeout`` (``fmc check --timeout``), so a bus of silent meters cannot
hold the check longer than that.
"""

from __future__ import annotations

import time

from fmc.agent.plugin import CheckResult
from fmc.sources.dlt645 import config as schema
from fmc.sources.dlt645.client import ERROR_FLAG, FIXES, IO_ERROR, Client, Reading, TransportError, make_transport
from fmc.sources.dlt645.frame import error_fix

INDENT = "      "


def check_bus(cfg: schema.Dlt645Source, timeout: float = 5.0) -> CheckResult:
    name = f"dlt645:{cfg.name}"
    line = cfg.framing if cfg.transport == "serial" else "tcp converter"
    transport = make_transport(cfg)
    try:
        transport.open()
    except TransportError as e:
        return CheckResult(name, False, f"{e}; fix: {FIXES[IO_ERROR]}")
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    answered = 0
    try:
        client = Client(transport, cfg.preamble)
        for m in cfg.meter:
            text, ok = _check_meter(client, cfg, m, deadline)
            answered += ok
            lines.append(f"{m.address} {_names(m)}: {text}")
    except TransportError as e:
        lines.append(f"the line failed: {e}; fix: {FIXES[IO_ERROR]}")
    finally:
        transport.close()
    head = f"{answered} of {len(cfg.meter)} meter(s) answered on {cfg.where} ({line})"
    return CheckResult(name, answered == len(cfg.meter), "\n".join([head, *(INDENT + t for t in lines)]))


def _names(m: schema.Dlt645Meter) -> str:
    parts = [f"meter {m.meter}" if m.meter else "", f"equipment {m.equipment}" if m.equipment else ""]
    return "(" + ", ".join(p for p in parts if p) + ")"


def _check_meter(client: Client, cfg: schema.Dlt645Source, m: schema.Dlt645Meter, deadline: float) -> tuple[str, bool]:
    """Read every identifier of the meter once; the first failure is the answer."""
    values = []
    for ident, signal in m.reads():
        left = deadline - time.monotonic()
        if left <= 0.05:
            return "not tried: the check ran out of time (fmc check --timeout SECONDS)", False
        r = client.read(m.address, ident, min(cfg.meter_timeout_s(m), left), 0)
        if r.value is None:
            return _failure(ident.text, ident.name, r), False
        values.append(f"{signal or 'energy'} {r.value:g} {ident.unit}")
    return "answered: " + ", ".join(values), True


def _failure(di: str, what: str, r: Reading) -> str:
    reason = r.reason or "timeout"
    if reason == ERROR_FLAG:
        fix = error_fix(r.error_code or 0)
        return f"error flag: {r.detail}; fix: {fix}"
    label = {"timeout": "timeout", "checksum": "checksum error", "bad_end": "broken frame",
             "wrong_address": "wrong address", "bad_reply": "unexpected reply", "bcd_invalid": "not BCD"}.get(reason,
                                                                                                         reason)
    return f"{label} reading {di} ({what}): {r.detail}; fix: {FIXES.get(reason, '')}"
