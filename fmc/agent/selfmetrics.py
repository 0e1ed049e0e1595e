"""The agent's own health as ``agent`` points (DESIGN §4), for the gateway health dashboard. Pure.

The agent writes one point at start, one every ``INTERVAL_S`` and one when it stops cleanly
(``up`` = 0), through the ingest like every other point (priority EVENT), so it reaches the store
the same way the data does: a gateway whose points stop arriving is down or cut off.

- tags: ``enterprise`` (the configured id), ``gateway`` (``[enterprise] gateway``), ``host`` (the
  gateway's host name, ``host_tag``: at most 64 letters, digits, ``_ . -``; anything else becomes
  ``_``); ``fmc check`` warns when another host writes as the same gateway (``fmc.agent.claims``);
- fields, all integers except the two ``_s`` durations (floats), all present in every point so
  the schema never changes and a field type never conflicts:

  ========================  ======================================================================
  ``up``                    1 while running; 0 in the last point of a clean stop
  ``uptime_s``              seconds since the agent started (float)
  ``spool_depth``           points waiting in the spool
  ``spool_bytes``           bytes of those points
  ``oldest_unsent_s``       age of the oldest point waiting, 0 when the spool is empty (float)
  ``dead_letters``          points the store refused for good, kept in the dead-letter table
  ``received``              messages received from the sources ┐
  ``accepted``              points accepted into the spool     │ counters since the agent started:
  ``written``               points the store confirmed         │ /metrics counters summed over
  ``dead_lettered``         points moved to the dead letters   │ their labels; they restart from
  ``dropped``               points dropped from a full spool   │ 0 with the agent (``uptime_s``
  ``sink_errors``           failed write attempts to the store ┘ says when)
  ``sources``               configured sources (MQTT brokers, OPC UA servers)
  ``sources_connected``     sources connected now
  ``rejected``              messages or values rejected, all reasons
  ``rejected_<reason>``     rejected for one reason of ``REJECTION_REASONS`` (every one, 0 when none)
  ``rejected_other``        rejected for a reason not in that list
  ========================  ======================================================================

``accepted`` counts the points committed through the ingest, including those the plant model
derives; ``accepted`` and ``written`` leave out these ``agent`` points themselves (so does
``fmc_points_written_total`` on /metrics; ``fmc_points_accepted_total`` has them under
``source="agent"``), so they count the data the agent delivers.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat

from fmc.agent.metrics import AgentMetrics
from fmc.agent.spool import SpoolStats
from fmc.core.config import DEFAULT_GATEWAY
from fmc.core.points import FieldValue, Point, Priority
from fmc.core.rejections import REJECTION_REASONS

MEASUREMENT = "agent"
SOURCE = "agent"  # the ingest source name of these points (a label of fmc_points_accepted)
LINE_PREFIX = MEASUREMENT + ","  # an encoded agent point: the measurement, then its tags
INTERVAL_S = 60.0
HOST_MAX_CHARS = 64
NS = 1_000_000_000

FLOAT_FIELDS: tuple[str, ...] = ("uptime_s", "oldest_unsent_s")
COUNTER_FIELDS: tuple[str, ...] = ("received", "accepted", "written", "dead_lettered", "dropped", "sink_errors")
INTEGER_FIELDS: tuple[str, ...] = (
    "up",
    "spool_depth",
    "spool_bytes",
    "dead_letters",
    *COUNTER_FIELDS,
    "sources",
    "sources_connected",
    "rejected",
    *(f"rejected_{reason}" for reason in REJECTION_REASONS),
    "rejected_other",
)
FIELDS: dict[str, type] = {**dict.fromkeys(INTEGER_FIELDS, int), **dict.fromkeys(FLOAT_FIELDS, float)}
TAGS: tuple[str, ...] = ("enterprise", "host")

# Prometheus counter families of AgentMetrics behind each counter field.
_COUNTER_FAMILIES: Mapping[str, str] = {
    "received": "fmc_messages_received",
    "accepted": "fmc_points_accepted",
    "written": "fmc_points_written",
    "dead_lettered": "fmc_points_dead_lettered",
    "dropped": "fmc_points_dropped",
    "sink_errors": "fmc_sink_errors",
}
_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True, slots=True)
class AgentCounters:
    """The agent's counters since it started, summed over their labels."""

    received: int = 0
    accepted: int = 0
    written: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    sink_errors: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)  # reason -> count


def host_tag(hostname: str) -> str:
    """The ``host`` tag: a bounded, line-protocol-safe form of the host name (``unknown`` when empty)."""
    safe = _HOST_UNSAFE.sub("_", hostname.strip())[:HOST_MAX_CHARS]
    return safe or "unknown"


def counters_from(metrics: AgentMetrics) -> AgentCounters:
    """Current totals of the agent's Prometheus counters (read under their locks; no I/O)."""
    totals: dict[str, float] = {}
    rejected: dict[str, float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue  # the _created timestamps of each label set
            if family.name == "fmc_points_accepted" and sample.labels.get("source") == SOURCE:
                continue  # the agent points themselves are not data
            if family.name == "fmc_rejected":
                reason = sample.labels.get("reason", "")
                rejected[reason] = rejected.get(reason, 0.0) + sample.value
            else:
                totals[family.name] = totals.get(family.name, 0.0) + sample.value
    counts = {name: int(totals.get(family, 0.0)) for name, family in _COUNTER_FAMILIES.items()}
    return AgentCounters(**counts, rejected={reason: int(n) for reason, n in rejected.items()})


def own_points(lines: Sequence[str], refused: Collection[int] = ()) -> int:
    """How many of the encoded ``lines`` (not at a ``refused`` index) are ``agent`` points."""
    if not refused:  # the drain loop's usual case: ~50 ns a line
        return sum(map(str.startswith, lines, repeat(LINE_PREFIX, len(lines))))
    return sum(1 for i, line in enumerate(lines) if line.startswith(LINE_PREFIX) and i not in refused)


def rejected_fields(rejected: Mapping[str, int]) -> dict[str, int]:
    """``rejected``, ``rejected_<reason>`` for every known reason, and ``rejected_other``."""
    fields = {f"rejected_{reason}": 0 for reason in REJECTION_REASONS}
    other = 0
    for reason, n in rejected.items():
        key = f"rejected_{reason}"
        if key in fields:
            fields[key] += int(n)
        else:
            other += int(n)
    return {"rejected": sum(int(n) for n in rejected.values()), **fields, "rejected_other": other}


def agent_point(
    enterprise: str,
    host: str,
    now_ns: int,
    *,
    up: bool,
    uptime_s: float,
    spool: SpoolStats,
    counters: AgentCounters,
    sources: Iterable[bool] = (),
    gateway: str = DEFAULT_GATEWAY,
) -> Point:
    """The ``agent`` point at ``now_ns``. ``sources``: one flag per configured source, True while it
    is connected."""
    connected = list(sources)
    oldest_s = 0.0
    if spool.oldest_enqueued_ms is not None:
        oldest_s = max(0.0, now_ns / NS - spool.oldest_enqueued_ms / 1000.0)
    fields: dict[str, FieldValue] = {
        "up": 1 if up else 0,
        "uptime_s": float(max(0.0, uptime_s)),
        "spool_depth": int(spool.depth),
        "spool_bytes": int(spool.bytes),
        "oldest_unsent_s": float(oldest_s),
        # those waiting for `fmc spool requeue`: a superseded one is kept for inspection only
        "dead_letters": int(spool.dead_letters - spool.superseded_dead_letters),
        **{name: int(getattr(counters, name)) for name in COUNTER_FIELDS},
        "sources": len(connected),
        "sources_connected": sum(1 for c in connected if c),
        **rejected_fields(counters.rejected),
    }
    return Point(
        MEASUREMENT,
        {"enterprise": enterprise, "gateway": gateway, "host": host_tag(host)},
        fields,
        now_ns,  # to the nanosecond: the stop point never lands on (and replaces) a running one
        Priority.EVENT,
    )
