"""What a source or a store plugin implements, and what the agent hands it (DESIGN §3).

A plugin is a folder under ``fmc/sources/<protocol>/`` or ``fmc/stores/<store>/``, like a Telegraf
plugin: its code, its ``README.md`` and its ``sample.toml``. Its configuration model is the plugin's
entry: a ``[[mqtt]]`` section validates into ``fmc.sources.mqtt.config.MqttSource``, which knows how
to open its source (``open_source``) and check its connection (``check``); a ``[sink]`` with
``type = "influxdb"`` validates into the InfluxDB store's model, which opens its sink. The agent
never names a concrete plugin: the composition roots (``fmc.cli.plugins``) list them by name.

The drain loop (``fmc.agent.runtime``) owns retries and backoff, so every sink behaves alike: a
sink either takes the lines (reporting any line the store refused for good), or raises
``SinkUnavailable`` and nothing is deleted from the spool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, Self

from fmc.core.config import TEMPLATE_FIELD, EnterpriseConfig
from fmc.core.points import Point

if TYPE_CHECKING:
    from fmc.agent.metrics import AgentMetrics


class SinkUnavailable(Exception):
    """The store cannot take data now (down, 5xx, 429, auth or missing database). Retry later.

    ``absent``: nothing answered at all (connection refused, or closed before any answer), so a store
    that answers a moment later has come back, rather than answering pings but not writes."""

    def __init__(
        self, reason: str, *, status: int | None = None, retry_after: float | None = None, absent: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.absent = absent


@dataclass(slots=True)
class RefusedLine:
    index: int  # position in the list given to ``write``
    reason: str  # the store's own words
    status: int | None = None


@dataclass(slots=True)
class WriteOutcome:
    written: int
    refused: list[RefusedLine] = field(default_factory=list)
    requests: int = 1


@dataclass(slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    # the check could not decide (``ok`` is then False too): ``fmc check`` shows "cannot tell", not a failure
    undecided: bool = False
    # ok, but something a person should look at (``fmc check`` shows "warn"; not a failure)
    warning: bool = False


class Sink(Protocol):
    name: str

    async def write(self, lines: list[str]) -> WriteOutcome:
        """Write line-protocol lines (ns precision). Lines the store refuses for good (4xx for that
        line) are reported in ``refused``; anything retryable raises ``SinkUnavailable``."""
        ...

    async def check(self) -> CheckResult: ...

    async def ping(self) -> None:
        """Return when the store answers a request that costs it next to nothing (InfluxDB's
        ``/ping``); raise ``SinkUnavailable`` otherwise. The drain loop asks while it backs off
        after the store was unreachable, so the first write follows the store's return."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class EquipmentClaim:
    """A gateway counted an equipment id of the enterprise: it wrote ``equipment_daily`` rows for it
    with ``in_inventory_s > 0`` (the equipment in that gateway's inventory that day)."""

    equipment: str
    gateway: str  # "" when the rows carry no gateway tag (an fmc before gateway ids)
    last_ns: int  # the time of its latest such row
    first_ns: int | None = None  # the time of its first such row (None: not told)
    # the time of that gateway's latest equipment_daily row of any equipment, in the inventory or not
    # (None: not told). Later than ``last_ns``: the gateway runs on without counting the equipment
    gateway_last_ns: int | None = None


@dataclass(frozen=True, slots=True)
class GatewayHost:
    """A host wrote ``agent`` points as a gateway of the enterprise."""

    host: str
    gateway: str  # "" when the points carry no gateway tag (an fmc before the tag)
    last_ns: int  # the time of its latest such point


class ClaimsSink(Protocol):
    """Optional beside ``Sink``: a store that can say which gateways already wrote data for equipment
    (``fmc check`` refuses two agents that claim the same equipment). A sink without the method, or
    one that raises, makes the check "cannot tell", never ok."""

    async def equipment_claims(self, enterprise: str, equipment: list[str]) -> list[EquipmentClaim]:
        """Every (equipment, gateway) of ``equipment_daily`` rows of ``enterprise`` for these ids with
        ``in_inventory_s > 0``, at any time, with the first and last such row and the gateway's latest
        row. Raises ``SinkUnavailable`` when the store cannot answer (down, not allowed to read)."""
        ...

    async def gateway_hosts(self, enterprise: str, since_ns: int) -> list[GatewayHost]:
        """Every (host, gateway) of ``agent`` points of ``enterprise`` at or after ``since_ns``, with the
        latest point's time. Raises ``SinkUnavailable`` when the store cannot answer."""
        ...


MIN_TIMESTAMP_NS = 946_684_800 * 10**9  # 2000-01-01T00:00:00Z: anything older is a device clock fault


@dataclass(slots=True, frozen=True)
class Rejection:
    reason: str  # short, stable: a metric label such as "value_not_finite"
    detail: str  # for people: what and where


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a source's protocol identifies a message it may deliver again (an MQTT QoS 1 PUBLISH):
    the packet id the broker gave it, a digest of its topic and payload, and whether the broker
    marked it as sent before (MQTT's DUP flag). The ingest records the committed ones and commits
    a DUP message matching a recent record only once (docs/spool.md, "Redeliveries")."""

    packet_id: int
    digest: bytes
    dup: bool
    # which connection of the source's (counted from 1 in each process) it came on, and whether the
    # broker resumed the session of the connection before it (MQTT: session present); a message of a
    # new session is never the redelivery of one committed before it, whatever its packet id
    connection: int = 0
    resumed: bool = True


@dataclass(slots=True)
class MapResult:
    points: list[Point]
    rejections: list[Rejection]
    delivery: Delivery | None = None  # set by sources whose messages can come again (MQTT QoS 1)


class IngestStopped(Exception):
    """The agent's ingest takes nothing any more (its writer thread failed; the agent is exiting).
    The message stays with its upstream: unacknowledged, it is sent again after the restart."""


class IngestPort(Protocol):
    """What a source hands its values to (``fmc.agent.ingest.Ingest``): it commits the points
    durably, then calls ``ack`` (when given) so the source can acknowledge upstream.

    ``submit`` waits while the ingest's queue is full. A source that must not wait (it runs in a
    network thread that also answers keepalives) passes ``wait=False``: a message with an ``ack``
    is then queued at once (its upstream holds it until the ack, which bounds how many can be
    outstanding), one without an ``ack`` is dropped when the queue is full and False returned.
    Raises ``IngestStopped`` when the ingest has failed.

    A source whose upstream numbers its messages per session (MQTT packet ids) may call
    ``begin_session(source, connection, resumed=…)`` when a connection opens, before its first
    message, if the ingest has it (``fmc.agent.ingest.Ingest`` does): see ``Delivery``."""

    def submit(
        self, source: str, topic: str, payload: bytes, result: MapResult, ack: Callable[[], None] | None,
        *, wait: bool = True,
    ) -> bool: ...

    def submit_many(
        self, source: str, messages: Sequence[tuple[str, bytes, MapResult, Callable[[], None] | None]],
    ) -> int:
        """``submit(..., wait=False)`` for each of a run of messages (topic, payload, result,
        ack), queued in order in one go; returns how many without an ``ack`` were dropped."""
        ...


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What the agent hands a source it opens."""

    enterprise: EnterpriseConfig
    ingest: IngestPort
    metrics: AgentMetrics
    log: logging.Logger
    # the shortest offline_after_s of [plant] and the [[equipment_class]]es: a value older than this
    # when it arrives tells nothing about now (an MQTT retained message is stored, not observed)
    offline_after_s: float = 600.0


class Source(Protocol):
    """A running source: started and stopped by the agent, read-only otherwise."""

    name: str

    @property
    def connected(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def live_equipment(self) -> set[str]:
        """Equipment whose unchanged values still arrive as confirmations (a live OPC UA
        subscription, a Sparkplug B birth in force: they report changes only); empty for sources
        that deliver every value.
        A source may also have ``live_meters() -> set[str]``, the same for meter ids (optional:
        the agent asks only sources that have it)."""
        ...


@dataclass(frozen=True, slots=True)
class Feeds:
    """What a source's configuration says it writes (``fmc check`` compares it with the ledger and
    the ``[[meter]]`` list): the equipment and meter ids it names, and whether a template (an MQTT
    topic's ``{meter}`` segment) can name others at run time, which no check can know beforehand."""

    equipment: frozenset[str] = frozenset()
    meters: frozenset[str] = frozenset()
    any_equipment: bool = False  # a template names equipment at run time
    any_meter: bool = False  # a template names meters at run time
    # meter id -> where its cumulative register wraps back to 0 (None: it wraps where the meter's
    # manual says), for the meters whose source knows the register (a DL/T 645 energy register)
    wraps: Mapping[str, float | None] = field(default_factory=dict)

    @classmethod
    def of(cls, targets: Iterable[tuple[str, str | None]]) -> Feeds:
        """From ``(kind, name)`` pairs (kind ``"signal"``: the name is equipment; ``"meter"``: a meter),
        where a name with a ``{field}`` template names others at run time."""
        equipment: set[str] = set()
        meters: set[str] = set()
        any_equipment = any_meter = False
        for kind, name in targets:
            if name is None:  # the section's validator fills it in: a source's bug if not (python -O drops asserts)
                raise ValueError(f"a {kind} target of the source has no name")
            fixed = not TEMPLATE_FIELD.search(name)
            if kind == "signal":
                any_equipment |= not fixed
                if fixed:
                    equipment.add(name)
            else:
                any_meter |= not fixed
                if fixed:
                    meters.add(name)
        return cls(frozenset(equipment), frozenset(meters), any_equipment, any_meter)


class SourceSettings(Protocol):
    """A source's configuration model (one entry of ``[[<section>]]``)."""

    section: ClassVar[str]  # the TOML section: "mqtt" for [[mqtt]]
    name: str

    def open_source(self, ctx: SourceContext) -> Source: ...

    async def check(self, enterprise: EnterpriseConfig, timeout: float) -> CheckResult:
        """Try the connection once (``fmc check``)."""
        ...

    def relative_to(self, base: Path) -> Self:
        """The same settings with relative file paths taken from ``base`` (the config's folder)."""
        ...

    def feeds(self) -> Feeds:
        """The equipment and meters this source writes, as far as its configuration tells."""
        ...


@dataclass(frozen=True, slots=True)
class Batching:
    """How the drain loop feeds a sink: batch size, how long a partial batch may wait, and the
    retry backoff bounds."""

    batch_size: int
    max_age_s: float
    retry_min_s: float
    retry_max_s: float


class SinkSettings(Protocol):
    """A store's configuration model as the agent's ``[sink]``."""

    type: str

    def open_sink(self) -> Sink: ...

    def batching(self) -> Batching: ...

    def relative_to(self, base: Path) -> Self: ...
