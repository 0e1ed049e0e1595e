"""``fmc check`` for an ``[[opcua]]`` source: connect as the agent would, resolve and read every node once.

The check opens a session of its own (``connection.open_client``), resolves namespaces and
nodes as a session does (``nodes.py``), reads each node once, and reports one line: the
security used, how many nodes are readable, namespaces the server lacks, and why the others
are not readable.
"""

from __future__ import annotations

import asyncio

from fmc.agent.plugin import CheckResult
from fmc.sources.opcua import config as schema
from fmc.sources.opcua.connection import OpcUaError, _status_name, close_client, describe_failure, open_client
from fmc.sources.opcua.nodes import (
    _NODE_UNUSABLE,
    _read_params,
    read_namespace_array,
    read_operation_limits,
    resolve_aliases,
    resolve_nodes,
)

_BAD = 0x80000000  # the severity bit of a StatusCode: Bad


async def check_opcua(cfg: schema.OpcUaSource, timeout: float = 10.0) -> CheckResult:
    """Connect as the agent would, resolve every node, read each once, report, disconnect."""
    name = f"opcua:{cfg.name}"
    try:
        return await asyncio.wait_for(_check(cfg, name), timeout)
    except OpcUaError as e:
        return CheckResult(name, False, e.message)
    except TimeoutError:
        return CheckResult(name, False, f"{cfg.endpoint} did not complete the check within {timeout:g}s")
    except Exception as e:
        return CheckResult(name, False, describe_failure(e, cfg).message)


async def _check(cfg: schema.OpcUaSource, name: str) -> CheckResult:
    connected = await open_client(cfg, session_name=f"fmc check {cfg.name}")
    client = connected.client
    try:
        namespace_array = await read_namespace_array(client)
        indexes, missing = resolve_aliases(cfg.namespace_uris(), namespace_array)
        limits = await read_operation_limits(client)
        resolved = await resolve_nodes(client, cfg.node, indexes, namespace_array, limits["paths"])
        problems = [f"{n.where} ({n.address()}): {why}" for n, why in resolved.failures]
        bad: list[str] = []
        step = max(1, limits["read"])
        for start in range(0, len(resolved.nodes), step):
            chunk = resolved.nodes[start : start + step]
            values = await client.uaclient.read(_read_params([node_id for _, node_id in chunk]))
            for (node, node_id), dv in zip(chunk, values, strict=True):
                code = dv.StatusCode.value if dv.StatusCode is not None else 0
                if code in _NODE_UNUSABLE:
                    problems.append(f"{node.where} ({node_id.to_string()}): {_status_name(code)}")
                elif code & _BAD:
                    # it exists, but what it delivers now is not good data: the agent would store only
                    # its status (a sensor fault, a PLC the server cannot reach). Not readable, but not a
                    # configuration error either: a warning, as it may heal by itself
                    bad.append(f"{node.where} ({node_id.to_string()}): {_status_name(code)}")
    finally:
        await close_client(client)
    security = f"{cfg.security_policy}/{cfg.security_mode}, identity {cfg.identity}"
    parts = [f"connected to {cfg.endpoint} ({security})",
             f"{len(cfg.node) - len(problems) - len(bad)} of {len(cfg.node)} node(s) readable"]
    if missing:
        parts.append("namespaces not on the server: " + ", ".join(f"{a} = {u!r}" for a, u in missing.items()))
    if problems:
        parts.append(f"not readable: {_first(problems)}")
    if bad:
        parts.append(f"Bad status now (no good data): {_first(bad)}")
    if connected.warning:
        parts.append(f"warning: {connected.warning}")
    ok = not problems and not missing
    return CheckResult(name, ok, "; ".join(parts), warning=ok and bool(bad or connected.warning))


def _first(items: list[str], shown: int = 5) -> str:
    return "; ".join(items[:shown]) + (f"; and {len(items) - shown} more" if len(items) > shown else "")
