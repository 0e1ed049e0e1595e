"""``fmc check``: does another gateway already write data for this agent's equipment?

Each agent of an enterprise has its own gateway id (``[enterprise] gateway``) and its own machines.
Two agents that both list a machine would both count it in their ``enterprise_daily`` (the central
sums add the gateways) and write its ``equipment_daily`` twice. The check asks the store (the sink's
optional ``equipment_claims``) which gateways wrote ``equipment_daily`` for this agent's equipment ids
and fails naming each equipment and the other gateway. Rows without a gateway tag (an fmc before
gateway ids) are read as gateway ``main``, as the central sums read them. A store that cannot
answer makes the check "cannot tell", never ok.
"""

from __future__ import annotations

from collections.abc import Iterable

from fmc.agent.plugin import CheckResult, EquipmentClaim, Sink, SinkUnavailable
from fmc.core.config import DEFAULT_GATEWAY, EnterpriseConfig
from fmc.core.localtime import local_date, zone

NAME = "claims"
SHOWN = 5  # equipment named in the message; the count says how many more


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
