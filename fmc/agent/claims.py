"""``fmc check``: does another gateway already write data for this agent's equipment, and does
another host write as this agent's gateway?

Each agent of an enterprise has its own gateway id (``[enterprise] gateway``) and its own machines.
Two agents that both list a machine would both count it in their ``enterprise_daily`` (the central
sums add the gateways) and write its ``equipment_daily`` twice. The check asks the store (the sink's
optional ``equipment_claims``) which gateways wrote ``equipment_daily`` for this agent's equipment ids
and fails naming each equipment and the other gateway. Rows without a gateway tag (an fmc before
gateway ids) are read as gateway ``main``, as the central sums read them. A store that cannot
answer makes the check "cannot tell", never ok.

Two agents given one gateway id (both left at the default ``main``) write the same
``enterprise_daily`` and ``consumption_daily`` series: each day's row is whichever came last, and
the central sums count one gateway instead of both. The second check asks the store (``gateway_hosts``)
which hosts wrote ``agent`` points (one a minute) as this gateway in the last ``GATEWAY_RECENT_S`` and
warns naming each other host. A warning, not a failure: a gateway that replaces another one keeps its
id (as the first check tells it to), and the host it replaces shows until its last point is that old.
Two hosts with one host name cannot be told apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from fmc.agent.plugin import CheckResult, EquipmentClaim, GatewayHost, Sink, SinkUnavailable
from fmc.core.config import DEFAULT_GATEWAY, EnterpriseConfig
from fmc.core.localtime import local_date, zone

NAME = "claims"
GATEWAY_NAME = "gateway"
SHOWN = 5  # equipment named in the message; the count says how many more
# a running agent writes an `agent` point every minute: a host silent this long has stopped
GATEWAY_RECENT_S = 2 * 86_400


def claims_result(
    gateway: str, equipment: Iterable[str], claims: Iterable[EquipmentClaim], timezone: str = "Asia/Shanghai"
) -> CheckResult:
    """The check's verdict for the agent of ``gateway`` listing ``equipment``, given the store's claims
    (their last days shown in ``timezone``)."""
    ids = set(equipment)
    others: dict[str, list[tuple[str, int]]] = {}
    for c in claims:
        claimed_by = c.gateway or DEFAULT_GATEWAY
        if c.equipment in ids and claimed_by != gateway:
            label = f"'{claimed_by}'" + (" (rows without a gateway tag)" if not c.gateway else "")
            others.setdefault(c.equipment, []).append((label, c.last_ns))
    if not others:
        return CheckResult(NAME, True, f"no other gateway wrote equipment_daily for the {len(ids)} equipment of "
                                       f"gateway '{gateway}'")
    tz = zone(timezone)
    parts = []
    for equipment in sorted(others)[:SHOWN]:
        by = ", ".join(f"gateway {label} (last day {local_date(ns, tz)})" for label, ns in sorted(others[equipment]))
        parts.append(f"{equipment} by {by}")
    more = f" and {len(others) - SHOWN} more" if len(others) > SHOWN else ""
    return CheckResult(NAME, False, (
        f"{len(others)} equipment of this agent (gateway '{gateway}') already written by another gateway: "
        f"{'; '.join(parts)}{more}. An equipment belongs to one gateway: remove it from one inventory, or, "
        "when this agent took over that gateway's place, give it the same [enterprise] gateway"
    ))


async def check_claims(sink: Sink, enterprise: EnterpriseConfig, equipment: list[str]) -> CheckResult:
    ask = getattr(sink, "equipment_claims", None)
    if ask is None:
        return CheckResult(NAME, False, f"cannot tell: sink {sink.name} cannot list which gateways wrote data for "
                                        "equipment", undecided=True)
    if not equipment:
        return CheckResult(NAME, True, "no equipment in the inventory")
    try:
        claims = await ask(enterprise.id, equipment)
    except SinkUnavailable as e:
        return CheckResult(NAME, False, f"cannot tell: {e.reason}", undecided=True)
    return claims_result(enterprise.gateway, equipment, claims, enterprise.timezone)


def gateway_hosts_result(
    gateway: str, host: str, rows: Iterable[GatewayHost], timezone: str = "Asia/Shanghai"
) -> CheckResult:
    """The check's verdict for the agent of ``gateway`` on ``host`` (its ``host`` tag), given the store's
    ``agent`` points of the enterprise (their times shown in ``timezone``)."""
    latest: dict[str, int] = {}
    for r in rows:
        if (r.gateway or DEFAULT_GATEWAY) == gateway and r.host != host:
            latest[r.host] = max(r.last_ns, latest.get(r.host, r.last_ns))
    days = GATEWAY_RECENT_S // 86_400
    if not latest:
        return CheckResult(GATEWAY_NAME, True, f"no other host wrote as gateway '{gateway}' in the last {days} days")
    tz = zone(timezone)
    shown = sorted(latest.items(), key=lambda item: -item[1])
    named = ", ".join(
        f"'{h}' (last {datetime.fromtimestamp(ns / 1e9, tz):%Y-%m-%d %H:%M})" for h, ns in shown[:SHOWN])
    more = f" and {len(shown) - SHOWN} more" if len(shown) > SHOWN else ""
    return CheckResult(GATEWAY_NAME, True, (
        f"{len(shown)} other host(s) wrote as gateway '{gateway}' in the last {days} days: {named}{more}. Two agents "
        "with one gateway id overwrite each other's enterprise_daily and consumption_daily: give each its own "
        f"[enterprise] gateway. If this host replaces that one, this ends {days} days after its last point"
    ), warning=True)


async def check_gateway_hosts(sink: Sink, enterprise: EnterpriseConfig, host: str, now_ns: int) -> CheckResult:
    ask = getattr(sink, "gateway_hosts", None)
    if ask is None:
        return CheckResult(GATEWAY_NAME, False, f"cannot tell: sink {sink.name} cannot list which hosts wrote as "
                                                "a gateway", undecided=True)
    try:
        rows = await ask(enterprise.id, now_ns - GATEWAY_RECENT_S * 1_000_000_000)
    except SinkUnavailable as e:
        return CheckResult(GATEWAY_NAME, False, f"cannot tell: {e.reason}", undecided=True)
    return gateway_hosts_result(enterprise.gateway, host, rows, enterprise.timezone)
