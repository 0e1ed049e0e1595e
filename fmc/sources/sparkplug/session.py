"""The host's view of every edge node: births, aliases, ``seq`` and ``bdSeq``. Pure: no I/O, no clock
(the caller passes the time), so every rule is tested with plain values (tests/test_sparkplug_session.py).

Rules (Sparkplug 3.0, host application):

- An **NBIRTH** starts the node's session: its ``bdSeq`` metric, its metrics by name and alias, and
  its ``seq`` (0–255; an absent one is 0, protobuf's default). Every later NDATA, DBIRTH, DDATA and
  DDEATH of the node carries the next ``seq`` (255 is followed by 0). An NBIRTH forgets the node's
  devices: each sends its DBIRTH again.
- A **gap** in ``seq``, a data message before its birth (the host just started, or a birth was
  lost) or an alias no birth defined: the host asks the node for its births again (an NCMD
  ``Node Control/Rebirth`` = true), at most once per ``rebirth_retry_s``. The metrics of a
  message after a gap are still taken with the aliases of the birth in force: a gap is almost
  always a lost QoS 0 message, and the node's aliases do not change within its session; the
  births that answer the request replace them. A message before a birth cannot be resolved and
  is refused (``sparkplug_no_birth``).
- An **NDEATH** counts only when its ``bdSeq`` is the current birth's: the broker publishes the
  will of an old connection late, after the node already came back with a new birth. A death
  that counts takes the node and all its devices offline at once; a stale one is ignored. (A
  birth without ``bdSeq`` cannot tell them apart: then every NDEATH counts.)
- A **DDEATH** takes its device offline at once.
- The host's own **reconnect** to the broker (``forget_births``) ends every birth in force: with a
  clean session it heard nothing while away, and a node may have died and come back meanwhile with
  other aliases. The first data of each node is then data before a birth: refused, with a rebirth
  request (resolving it with the old aliases could store a value under another metric's name).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from fmc.agent.plugin import Rejection
from fmc.sources.sparkplug.payload import BDSEQ, Metric, Payload

SEQ_MODULUS = 256


class Kind(StrEnum):
    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    NDATA = "NDATA"
    NCMD = "NCMD"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"
    DDATA = "DDATA"
    DCMD = "DCMD"


DEVICE_KINDS = frozenset({Kind.DBIRTH, Kind.DDEATH, Kind.DDATA, Kind.DCMD})


@dataclass(frozen=True, slots=True)
class Resolved:
    """A data metric with its name and datatype from the birth that defined it."""

    name: str
    datatype: int | None
    metric: Metric


@dataclass(slots=True)
class Outcome:
    """What one message means for the host."""

    metrics: list[Resolved] = field(default_factory=list)  # values to map (births carry values too)
    offline: dict[str | None, tuple[str, ...]] = field(default_factory=dict)  # device (None: the node) -> metric names
    rebirth: bool = False  # send a rebirth request to this node now
    events: list[str] = field(default_factory=list)  # what happened, for counters: "seq_gap", "stale_death", …
    rejections: list[Rejection] = field(default_factory=list)


@dataclass(slots=True)
class _Metrics:
    """The metrics one birth defined: name -> datatype, alias -> name."""

    datatypes: dict[str, int | None] = field(default_factory=dict)
    aliases: dict[int, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Node:
    bd_seq: int | None = None
    next_seq: int | None = None  # None: no birth in force (never born, dead, or waiting for a rebirth)
    metrics: _Metrics = field(default_factory=_Metrics)
    devices: dict[str, _Metrics] = field(default_factory=dict)
    rebirth_at: float | None = None  # when the last rebirth request went out (caller's seconds)
    asked: bool = False  # a rebirth request is out and no NBIRTH came since


NodeKey = tuple[str, str]  # (group, edge node)


class HostSession:
    """Every edge node this host has heard of, and what each message does to it."""

    def __init__(self, rebirth_retry_s: float = 5.0) -> None:
        self.rebirth_retry_s = rebirth_retry_s
        self._nodes: dict[NodeKey, _Node] = {}

    # --- what is online, for fmc check and /health -------------------------------------------------

    def online(self) -> dict[NodeKey, list[str]]:
        """Edge nodes with a birth in force, and their devices with one."""
        return {k: sorted(n.devices) for k, n in self._nodes.items() if n.next_seq is not None}

    def born(self, key: NodeKey) -> dict[str | None, tuple[str, ...]]:
        """The metric names of a node's births in force: device (None: the node's own) -> names;
        empty when the node has no birth in force."""
        node = self._nodes.get(key)
        if node is None or node.next_seq is None:
            return {}
        return {None: tuple(node.metrics.datatypes)} | {d: tuple(m.datatypes) for d, m in node.devices.items()}

    def waiting(self) -> list[NodeKey]:
        """Edge nodes heard without a birth in force: asked for a rebirth, no NBIRTH yet."""
        return [k for k, n in self._nodes.items() if n.next_seq is None and n.asked]

    def forget_births(self) -> set[tuple[str, str]]:
        """No birth is in force any more, for any node: the host (re)connected to the broker.
        Returns the (group, node) pairs known until now, to be asked for their births again."""
        known = set(self._nodes)
        self._nodes.clear()
        return known

    # --- messages ---------------------------------------------------------------------------------

    def handle(self, kind: Kind, group: str, node_id: str, device: str | None, payload: Payload,
               now_s: float) -> Outcome:
        key = (group, node_id)
        node = self._nodes.get(key)
        out = Outcome()
        if kind in (Kind.NCMD, Kind.DCMD):
            return out  # commands to the node (ours or another host's): nothing to read
        if kind == Kind.NBIRTH:
            # a new session; the time of the last rebirth request stays, so that a node whose births
            # are always followed by a gap is not asked again and again without pause
            node = self._nodes[key] = _Node(rebirth_at=node.rebirth_at if node is not None else None)
            self._birth(node.metrics, payload, out)
            bd = payload.metric(BDSEQ)
            node.bd_seq = _int(bd.value) if bd is not None else None
            seq = payload.seq
            if not 0 <= seq < SEQ_MODULUS:
                # without a valid seq nothing later can be checked: take the values, ask again
                out.events.append("seq_invalid")
                self._ask(node, now_s, out)
                return out
            node.next_seq = (seq + 1) % SEQ_MODULUS
            return out
        if kind == Kind.NDEATH:
            bd = payload.metric(BDSEQ)
            bd_seq = _int(bd.value) if bd is not None else None
            if node is None or node.next_seq is None:
                out.events.append("death_unborn")  # nothing of it is online
                return out
            # a birth without bdSeq (an edge node before Sparkplug 2.2) cannot tell deaths apart: any counts
            if node.bd_seq is not None and bd_seq != node.bd_seq:
                out.events.append("stale_death")
                return out
            out.offline[None] = tuple(node.metrics.datatypes)
            for name, metrics in node.devices.items():
                out.offline[name] = tuple(metrics.datatypes)
            node.next_seq = None
            node.asked = False  # dead, not waiting for a rebirth
            node.devices.clear()
            out.events.append("node_death")
            return out

        # NDATA, DBIRTH, DDATA, DDEATH: in the node's sequence
        if node is None or node.next_seq is None:
            node = self._nodes.setdefault(key, _Node())
            out.events.append("no_birth")
            self._ask(node, now_s, out)
            if kind != Kind.DDEATH:
                where = f"{group}/{node_id}" + (f"/{device}" if device else "")
                out.rejections.append(Rejection(
                    "sparkplug_no_birth", f"{kind} from {where} before its NBIRTH: a rebirth is requested"))
            return out
        seq = payload.seq
        if seq != node.next_seq:
            out.events.append("seq_gap")
            self._ask(node, now_s, out)
        if 0 <= seq < SEQ_MODULUS:
            node.next_seq = (seq + 1) % SEQ_MODULUS
        assert device is not None or kind == Kind.NDATA
        if kind == Kind.DBIRTH:
            assert device is not None
            metrics = node.devices[device] = _Metrics()
            self._birth(metrics, payload, out)
        elif kind == Kind.DDEATH:
            assert device is not None
            gone = node.devices.pop(device, None)
            if gone is None:
                out.events.append("death_unborn")
            else:
                out.offline[device] = tuple(gone.datatypes)
                out.events.append("device_death")
        else:
            metrics_or_none = node.metrics if kind == Kind.NDATA else node.devices.get(device or "")
            if metrics_or_none is None:
                out.events.append("no_birth")
                self._ask(node, now_s, out)
                out.rejections.append(Rejection(
                    "sparkplug_no_birth", f"DDATA from {group}/{node_id}/{device} before its DBIRTH: "
                    "a rebirth is requested"))
                return out
            self._data(metrics_or_none, payload.metrics, node, now_s, out)
        return out

    # --- parts ------------------------------------------------------------------------------------

    def _birth(self, into: _Metrics, payload: Payload, out: Outcome) -> None:
        for m in payload.metrics:
            if m.name is None:
                out.rejections.append(Rejection("sparkplug_birth_invalid",
                                                f"a birth metric without a name (alias {m.alias})"))
                continue
            into.datatypes[m.name] = m.datatype
            if m.alias is not None:
                into.aliases[m.alias] = m.name
            out.metrics.append(Resolved(m.name, m.datatype, m))

    def _data(self, defined: _Metrics, metrics: Sequence[Metric], node: _Node, now_s: float, out: Outcome) -> None:
        for m in metrics:
            name = m.name
            if name is None:
                name = defined.aliases.get(m.alias) if m.alias is not None else None
                if name is None:
                    out.rejections.append(Rejection(
                        "sparkplug_alias_unknown",
                        f"alias {m.alias} is in no birth of this node: a rebirth is requested"))
                    out.events.append("alias_unknown")
                    self._ask(node, now_s, out)
                    continue
            datatype = m.datatype if m.datatype is not None else defined.datatypes.get(name)
            out.metrics.append(Resolved(name, datatype, m))

    def _ask(self, node: _Node, now_s: float, out: Outcome) -> None:
        """Ask for a rebirth unless one was asked for within rebirth_retry_s."""
        if out.rebirth:
            return
        if node.rebirth_at is not None and now_s - node.rebirth_at < self.rebirth_retry_s:
            return
        node.rebirth_at = now_s
        node.asked = True
        out.rebirth = True
        out.events.append("rebirth_requested")


def _int(value: object) -> int | None:
    return value if type(value) is int else None
