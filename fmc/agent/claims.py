"""``fmc check``: does another gateway already write data for this agent's equipment, and does
another host write as this agent's gateway?

Each agent of an enterprise has its own gateway id (``[enterprise] gateway``) and its own machines.
Two agents that both list a machine would both count it in their ``enterprise_daily`` (the central
sums add the gateways) and write its ``equipment_daily`` twice. The check asks the store (the sink's
optional ``equipment_claims``) which gateways counted this agent's equipment ids — ``equipment_daily``
rows with ``in_inventory_s > 0``, the days it was in that gateway's inventory — and when:

- another gateway that still counts it (its latest row of any equipment is its last day counting
  this one: it has not written a day without it) while this agent counts it today: **fails**, naming
  the equipment and the other gateway;
- … while this agent counts it only from a later day (启用日期 ahead): a **warning**, to end it in the
  other inventory by then;
- another gateway counted it on days this agent counted it too, and no longer does: a **warning**
  (those days count it twice);
- otherwise it was **handed over** (moved with 停用日期 in one ledger and 启用日期 in the other, or its
  row deleted there): ok, named in the detail. This agent "counts it today" unless its ledger ends it
  (停用日期 on or before today) or puts it out of scope.

Rows without a gateway tag (an fmc before gateway ids) are read as gateway ``main``, as the central
sums read them. A store that cannot answer makes the check "cannot tell", never ok.

Two agents given one gateway id (both left at the default ``main``) write the same
``enterprise_daily`` and ``consumption_daily`` series: each day's row is whichever came last, and
the central sums count one gateway instead of both. The second check asks the store (``gateway_hosts``)
which hosts wrote ``agent`` points (one a minute) as this gateway in the last ``GATEWAY_RECENT_S`` and
warns naming each other host. A warning, not a failure: a gateway that replaces another one keeps its
id (as the first check tells it to), and the host it replaces shows until its last point is that old.
Two hosts with one host name cannot be told apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from fmc.agent.plugin import CheckResult, EquipmentClaim, GatewayHost, Sink, SinkUnavailable
from fmc.core.config import DEFAULT_GATEWAY, EnterpriseConfig
from fmc.core.localtime import local_date, zone
from fmc.plant.equipment import EquipmentItem

NAME = "claims"
GATEWAY_NAME = "gateway"
SHOWN = 5  # equipment named in the message; the count says how many more
# a running agent writes an `agent` point every minute: a host silent this long has stopped
GATEWAY_RECENT_S = 2 * 86_400


@dataclass(slots=True)
class _Span:
    """One gateway's days counting one equipment, over its tagged and untagged rows alike."""

    untagged: bool  # only rows without a gateway tag
    first_ns: int | None  # None: not told
    last_ns: int
    gateway_last_ns: int | None  # its latest row of any equipment; None: not told

    @property
    def still(self) -> bool:
        """Still counting it: the gateway has written no day without it since (or cannot say)."""
        return self.gateway_last_ns is None or self.gateway_last_ns <= self.last_ns


def _spans(claims: Iterable[EquipmentClaim], ids: set[str]) -> dict[tuple[str, str], _Span]:
    """(equipment, gateway) -> its span; rows without a gateway tag are gateway ``main``'s."""
    spans: dict[tuple[str, str], _Span] = {}
    for c in claims:
        if c.equipment not in ids:
            continue
        key = (c.equipment, c.gateway or DEFAULT_GATEWAY)
        known = spans.get(key)
        if known is None:
            spans[key] = _Span(not c.gateway, c.first_ns, c.last_ns, c.gateway_last_ns)
            continue
        known.untagged = known.untagged and not c.gateway
        known.first_ns = None if known.first_ns is None or c.first_ns is None else min(known.first_ns, c.first_ns)
        known.last_ns = max(known.last_ns, c.last_ns)
        known.gateway_last_ns = (None if known.gateway_last_ns is None or c.gateway_last_ns is None
                                 else max(known.gateway_last_ns, c.gateway_last_ns))
    return spans


def _counts_from(item: str | EquipmentItem, today: date) -> date | None:
    """The first day from ``today`` on that this agent counts the equipment (a bare id: today), None when
    it no longer will: out of scope, or 停用日期 on or before today."""
    if isinstance(item, str):
        return today
    if not item.in_scope or (item.decommissioned is not None and item.decommissioned <= today):
        return None
    return max(today, item.commissioned or today)


def claims_result(
    gateway: str,
    equipment: Iterable[str | EquipmentItem],
    claims: Iterable[EquipmentClaim],
    timezone: str = "Asia/Shanghai",
    today: date | None = None,
) -> CheckResult:
    """The check's verdict for the agent of ``gateway`` listing ``equipment`` (ids, or its ledger's items,
    whose dates say from when it counts each), given the store's claims (days in ``timezone``;
    ``today``: the enterprise's local date now)."""
    tz = zone(timezone)
    today = today or datetime.now(tz).date()
    counts_from = {(e if isinstance(e, str) else e.id): _counts_from(e, today) for e in equipment}
    spans = _spans(claims, set(counts_from))
    conflicts: list[str] = []  # both count it today
    clashing: set[str] = set()
    warnings: list[str] = []
    handovers: list[str] = []
    for (equipment_id, claimed_by), span in sorted(spans.items()):
        if claimed_by == gateway:
            continue
        by = f"gateway '{claimed_by}'" + (" (rows without a gateway tag)" if span.untagged else "")
        last = local_date(span.last_ns, tz)
        own = spans.get((equipment_id, gateway))
        start = counts_from[equipment_id]
        if span.still and start is not None and start <= today:
            conflicts.append(f"{equipment_id} by {by} (last day {last})")
            clashing.add(equipment_id)
        elif span.still and start is not None:
            warnings.append(f"{equipment_id} still counted by {by} (last day {last}) and by this agent from "
                            f"{start}: end it in that inventory by then (停用日期 {start}), or both count it")
        elif own is not None and (span.first_ns is None or span.first_ns <= own.last_ns) and (
                own.first_ns is None or own.first_ns <= span.last_ns):
            both = local_date(min(span.last_ns, own.last_ns), tz)
            warnings.append(f"{equipment_id} counted by {by} and by this agent on the same days, up to {both}: "
                            "the rates of those days count it twice")
        elif start is not None:
            handovers.append(f"{equipment_id} from {by} (its last day {last})")
        else:
            handovers.append(f"{equipment_id} to {by}")
    handed = f"; handed over: {_shown(handovers)}" if handovers else ""
    if conflicts:
        return CheckResult(NAME, False, (
            f"{len(clashing)} equipment of this agent (gateway '{gateway}') still counted by another gateway: "
            f"{_shown(conflicts)}. An equipment belongs to one gateway: remove it from one inventory or end it "
            "there (停用日期 in one ledger, 启用日期 in the other: this check passes once that gateway has "
            "written a day without it), or, when this agent took over that gateway's place, give it the same "
            "[enterprise] gateway"
        ))
    if warnings:
        return CheckResult(NAME, True, f"{_shown(warnings)}{handed}", warning=True)
    return CheckResult(NAME, True, f"no other gateway counts the {len(counts_from)} equipment of gateway "
                                   f"'{gateway}'{handed}")


def _shown(items: Sequence[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return "; ".join(items[:SHOWN]) + more


async def check_claims(
    sink: Sink, enterprise: EnterpriseConfig, equipment: Sequence[str | EquipmentItem], today: date | None = None
) -> CheckResult:
    """``sink:claims`` for the agent's ``equipment``: its ledger's items (their dates say from when it
    counts each), or bare ids (counted from today on)."""
    ask = getattr(sink, "equipment_claims", None)
    if ask is None:
        return CheckResult(NAME, False, f"cannot tell: sink {sink.name} cannot list which gateways wrote data for "
                                        "equipment", undecided=True)
    if not equipment:
        return CheckResult(NAME, True, "no equipment in the inventory")
    ids = [e if isinstance(e, str) else e.id for e in equipment]
    try:
        claims = await ask(enterprise.id, ids)
    except SinkUnavailable as e:
        return CheckResult(NAME, False, f"cannot tell: {e.reason}", undecided=True)
    return claims_result(enterprise.gateway, equipment, claims, enterprise.timezone, today)


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
