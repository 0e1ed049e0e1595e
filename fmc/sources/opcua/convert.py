"""Values to points, the hot path: one OPC UA DataValue becomes one ``signal`` point (a meter node:
one ``meter_reading`` point, tags enterprise, meter, carrier, as MQTT meters make them) or a rejection.

``_NodePlan`` holds what does not change between values of one configured node (its tags, its
encoded series, scale and offset), made once per configuration; ``data_value_to_point`` is
called for every value a subscription or a poll delivers, and keeps the common case (a Good,
finite, unscaled Double) short. Quality is the StatusCode without its info bits; a timestamp
before 2000 or in the future is a clock fault, logged once per node by the session.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from asyncua import ua

from fmc.agent.plugin import MIN_TIMESTAMP_NS, Rejection
from fmc.core.lineprotocol import MAX_STRING_FIELD_BYTES, encode_series
from fmc.core.points import FieldValue, Point, Priority
from fmc.sources.opcua import config as schema
from fmc.sources.opcua.publish import _MAX_TICKS, TICKS_1970, Change, ticks_ns

MAX_FUTURE_NS = 300 * 10**9  # a timestamp further ahead than this is a clock fault
_NULL_TIME_NS = -11_644_473_600 * 10**9  # 1601-01-01, OPC UA's "no timestamp": not a clock fault
# StatusCode bits 31..16 are severity and sub-code; bits 15..0 are info bits (overflow, limits).
# Quality keeps the former, so a Good value is exactly 0 even when the server flagged a queue
# overflow on it; a Good status with a sub-code (severity bits 00: GoodLocalOverride, a value forced
# at the PLC, GoodClamped) is Good data too: quality 0.
QUALITY_MASK = 0xFFFF0000
_DETAIL_MAX = 120
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TICKS_1970_NS = TICKS_1970 * 100


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"


_NUMBER, _TEXT, _STATE = 0, 1, 2
_KINDS = {"number": _NUMBER, "text": _TEXT, "state": _STATE}


class _NodePlan:
    """Everything about one configured node that does not change between values."""

    __slots__ = ("address", "clock_fault", "config", "kind", "measurement", "offset", "plain_number", "scale", "scaled",
                 "series", "tags", "where")

    def __init__(self, config: schema.OpcUaNode, enterprise_id: str) -> None:
        self.config = config
        tags: dict[str, str] = {"enterprise": enterprise_id}
        if config.kind == "meter":
            assert config.meter is not None and config.carrier is not None  # the config's validator says so
            self.measurement = "meter_reading"
            tags |= {"meter": config.meter, "carrier": config.carrier}
        else:
            assert config.equipment is not None and config.signal is not None
            self.measurement = "signal"
            tags |= {"equipment": config.equipment, "signal": config.signal}
        self.tags = tags
        self.series = encode_series(self.measurement, self.tags)  # raises LineProtocolError for unwritable names
        self.kind = _KINDS[config.value_type]
        self.scale = float(config.scale)
        self.offset = float(config.offset)
        self.scaled = self.scale != 1.0 or self.offset != 0.0
        self.plain_number = self.kind == _NUMBER and not self.scaled
        self.address = config.address()
        self.where = config.where
        self.clock_fault = False  # a wrong device clock is logged once per node and source


def _datetime_ns(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    d = dt - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000


def _timestamp_ns(
    plan: _NodePlan, dv: ua.DataValue, received_ns: int, prefer_source: bool, clock_faults: list[_NodePlan]
) -> int:
    """The preferred timestamp, else the other one, else the receive time; a wrong clock is noted once."""
    first, second = (dv.SourceTimestamp, dv.ServerTimestamp) if prefer_source else (dv.ServerTimestamp,
                                                                                       dv.SourceTimestamp)
    for dt in (first, second):
        if dt is None:
            continue
        ns = _datetime_ns(dt)
        if MIN_TIMESTAMP_NS <= ns <= received_ns + MAX_FUTURE_NS:
            return ns
        if ns > _NULL_TIME_NS and not plan.clock_fault:
            plan.clock_fault = True
            clock_faults.append(plan)
    return received_ns


def _text(plan: _NodePlan, raw: object) -> tuple[str, FieldValue] | Rejection:
    if type(raw) is ua.LocalizedText:
        raw = raw.Text or ""  # type: ignore[union-attr]
    if type(raw) is not str:
        return Rejection("value_wrong_type", f"{plan.where} ({plan.address}) is {_short(raw)}, not text")
    if "\n" in raw or "\r" in raw:
        return Rejection("value_control_char", f"{plan.where} ({plan.address}) contains a line break")
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        return Rejection("value_not_utf8", f"{plan.where} ({plan.address}) contains a lone surrogate")
    if size > MAX_STRING_FIELD_BYTES:
        return Rejection("value_too_long", f"{plan.where} ({plan.address}) is {size} bytes of text")
    return ("text", raw)


def _number(plan: _NodePlan, raw: object, scaled: bool) -> tuple[str, FieldValue] | Rejection:
    if type(raw) is float:
        value: float = raw  # type: ignore[assignment]
    elif isinstance(raw, int):  # int, bool (0/1) and enumerations (IntEnum)
        try:
            value = float(raw)
        except OverflowError:
            return Rejection("value_not_finite", f"{plan.where} ({plan.address}) is too large for a float")
    elif isinstance(raw, float):
        value = float(raw)
    else:
        return Rejection("value_wrong_type", f"{plan.where} ({plan.address}) is {_short(raw)}, not a number")
    if not math.isfinite(value):
        return Rejection("value_not_finite", f"{plan.where} ({plan.address}) is {value}")
    if scaled:
        value = value * plan.scale + plan.offset
        if not math.isfinite(value):
            return Rejection("value_not_finite", f"{plan.where} ({plan.address}) becomes {value} after scale/offset")
    return ("value", value)


def _field(plan: _NodePlan, raw: object) -> tuple[str, FieldValue] | Rejection:
    kind = plan.kind
    if kind == _NUMBER:
        return _number(plan, raw, plan.scaled)
    if kind == _TEXT:
        return _text(plan, raw)
    if type(raw) is str or type(raw) is ua.LocalizedText:  # state: names stay text, codes stay numbers
        return _text(plan, raw)
    return _number(plan, raw, False)


def _fields(
    plan: _NodePlan, topic: str, quality: int, raw: object, rejected: list[tuple[str, Rejection]]
) -> dict[str, FieldValue] | None:
    """The fields of a value other than a Good finite unscaled Double; None when it was rejected."""
    fields: dict[str, FieldValue] = {"quality": quality}
    if raw is not None:
        converted = _field(plan, raw)
        if type(converted) is Rejection:
            if quality == 0:
                rejected.append((topic, converted))  # type: ignore[arg-type]
                return None
            # Bad or Uncertain with a value we cannot store: the quality alone still tells the story
        else:
            key, value = converted  # type: ignore[misc]
            fields[key] = value
    elif quality == 0:
        rejected.append((topic, Rejection("value_wrong_type", f"{plan.where} ({plan.address}): Good status, "
                                                              "no value")))
        return None
    return fields


def data_value_to_point(
    plan: _NodePlan, topic: str, dv: ua.DataValue, received_ns: int, prefer_source: bool,
    points: list[Point], rejected: list[tuple[str, Rejection]], clock_faults: list[_NodePlan],
) -> None:
    """Append the point for one DataValue, or (topic, rejection) when a Good value cannot be stored."""
    status = dv.StatusCode
    # a Good status (severity bits 00) is Good data whatever its sub-code (GoodLocalOverride, GoodClamped)
    quality = status.value & QUALITY_MASK if status is not None and status.value >> 30 else 0
    variant = dv.Value
    raw = variant.Value if variant is not None else None
    fields: dict[str, FieldValue] | None
    if quality == 0 and plan.plain_number and type(raw) is float and raw - raw == 0.0:  # x - x is nan for inf, nan
        fields = {"value": raw, "quality": 0}  # the common case, kept short: a Good finite Double, unscaled
    else:
        fields = _fields(plan, topic, quality, raw, rejected)
        if fields is None:
            return
    ts = dv.SourceTimestamp if prefer_source else dv.ServerTimestamp
    ts_ns = -1
    if ts is not None and ts.tzinfo is not None:
        d = ts - _EPOCH
        ts_ns = (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000
    if not MIN_TIMESTAMP_NS <= ts_ns <= received_ns + MAX_FUTURE_NS:
        ts_ns = _timestamp_ns(plan, dv, received_ns, prefer_source, clock_faults)
    points.append(Point(plan.measurement, plan.tags.copy(), fields, ts_ns, Priority.RAW, plan.series))


def change_to_point(
    plan: _NodePlan, topic: str, change: Change, received_ns: int, prefer_source: bool,
    points: list[Point], rejected: list[tuple[str, Rejection]], clock_faults: list[_NodePlan],
) -> None:
    """``data_value_to_point`` for a change decoded by ``publish.decode_publish_response``: the
    same point or rejection, from the raw status code and timestamps (no DataValue, no datetime)."""
    _, raw, status, source, server = change
    quality = status & QUALITY_MASK if status >> 30 else 0  # any Good status is quality 0, as above
    fields: dict[str, FieldValue] | None
    if quality == 0 and plan.plain_number and type(raw) is float and raw - raw == 0.0:  # x - x is nan for inf, nan
        fields = {"value": raw, "quality": 0}  # the common case, kept short: a Good finite Double, unscaled
    else:
        fields = _fields(plan, topic, quality, raw, rejected)
        if fields is None:
            return
    first, second = (source, server) if prefer_source else (server, source)
    ts_ns = -1
    if first is not None and 0 <= first < _MAX_TICKS:
        ts_ns = (first // 10) * 1000 - _TICKS_1970_NS
    if not MIN_TIMESTAMP_NS <= ts_ns <= received_ns + MAX_FUTURE_NS:
        ts_ns = _ticks_timestamp_ns(plan, first, second, received_ns, clock_faults)
    points.append(Point(plan.measurement, plan.tags.copy(), fields, ts_ns, Priority.RAW, plan.series))


def _ticks_timestamp_ns(
    plan: _NodePlan, first: int | None, second: int | None, received_ns: int, clock_faults: list[_NodePlan]
) -> int:
    """``_timestamp_ns`` for OPC UA ticks."""
    for ticks in (first, second):
        if ticks is None:
            continue
        ns = ticks_ns(ticks)
        if MIN_TIMESTAMP_NS <= ns <= received_ns + MAX_FUTURE_NS:
            return ns
        if ns > _NULL_TIME_NS and not plan.clock_fault:
            plan.clock_fault = True
            clock_faults.append(plan)
    return received_ns
