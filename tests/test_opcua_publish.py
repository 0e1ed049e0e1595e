"""The hand-written PublishResponse decoder (fmc.sources.opcua.publish) against asyncua's.

Responses are encoded with asyncua's encoder and decoded by both; the points and rejections made
from each decoding must be identical. The running source goes through the hand decoder in every
OPC UA test against a real server (test_opcua_adapter, test_plant_e2e, ...).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary
from hypothesis import given
from hypothesis import strategies as st

from fmc.agent.plugin import Rejection
from fmc.core.points import Point
from fmc.sources.opcua import config as schema
from fmc.sources.opcua.convert import _datetime_ns, _NodePlan, change_to_point, data_value_to_point
from fmc.sources.opcua.publish import DataChanges, decode_publish_response, ticks_ns

NOW = datetime.now(UTC).replace(microsecond=123456)
V = ua.VariantType


def _value(value: Any, vtype: ua.VariantType | None = None, **kw: Any) -> ua.DataValue:
    variant = ua.Variant(value, vtype) if vtype is not None else ua.Variant(value)
    return ua.DataValue(variant, **kw)


VALUES: list[ua.DataValue] = [
    _value(21.5, V.Double, SourceTimestamp=NOW, ServerTimestamp=NOW),
    _value(float("nan"), V.Double, SourceTimestamp=NOW, ServerTimestamp=NOW),
    _value(float("inf"), V.Double, SourceTimestamp=NOW),
    _value(1.25, V.Float, ServerTimestamp=NOW),
    _value(-7, V.Int32, SourceTimestamp=NOW, ServerTimestamp=NOW),
    _value(2**63 - 1, V.Int64, SourceTimestamp=NOW),
    _value(2**64 - 1, V.UInt64, SourceTimestamp=NOW),
    _value(-3, V.SByte, SourceTimestamp=NOW), _value(200, V.Byte, SourceTimestamp=NOW),
    _value(-300, V.Int16, SourceTimestamp=NOW), _value(60000, V.UInt16, SourceTimestamp=NOW),
    _value(4_000_000_000, V.UInt32, SourceTimestamp=NOW),
    _value(True, V.Boolean, SourceTimestamp=NOW), _value(False, V.Boolean, SourceTimestamp=NOW),
    _value("Running", V.String, SourceTimestamp=NOW), _value("织机 ✓", V.String, SourceTimestamp=NOW),
    _value("", V.String, SourceTimestamp=NOW), _value(None, V.String, SourceTimestamp=NOW),
    _value("line\nbreak", V.String, SourceTimestamp=NOW),
    _value(ua.LocalizedText("Idle", "en"), V.LocalizedText, SourceTimestamp=NOW),
    _value(NOW, V.DateTime, SourceTimestamp=NOW),
    _value([1.0, 2.0], V.Double, SourceTimestamp=NOW),
    _value(b"\x01\x02", V.ByteString, SourceTimestamp=NOW),
    _value(None, SourceTimestamp=NOW),
    ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadNoCommunication), SourceTimestamp=NOW),
    _value(3.0, V.Double, StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue | 0x480),
           SourceTimestamp=NOW),
    _value(3.0, V.Double, StatusCode=ua.StatusCode(0x480), SourceTimestamp=NOW),  # Good with info bits
    _value(4.0, V.Double),  # no timestamps: the receive time
    _value(5.0, V.Double, SourceTimestamp=datetime(1601, 1, 1, tzinfo=UTC), ServerTimestamp=NOW),  # "no time"
    _value(6.0, V.Double, SourceTimestamp=datetime(1999, 12, 31, tzinfo=UTC), ServerTimestamp=NOW),  # clock fault
    _value(7.0, V.Double, SourceTimestamp=NOW + timedelta(days=1), ServerTimestamp=NOW),  # in the future
    _value(8.0, V.Double, SourceTimestamp=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    _value(9.0, V.Double, SourceTimestamp=NOW, SourcePicoseconds=500, ServerTimestamp=NOW, ServerPicoseconds=7),
]


def _response(values: list[ua.DataValue]) -> bytes:
    response = ua.PublishResponse()
    result = response.Parameters
    result.SubscriptionId = 7
    result.AvailableSequenceNumbers = [3, 4]
    result.MoreNotifications = False
    result.NotificationMessage.SequenceNumber = 4
    result.NotificationMessage.PublishTime = NOW
    result.NotificationMessage.NotificationData = [
        ua.DataChangeNotification(MonitoredItems=[ua.MonitoredItemNotification(ClientHandle=i + 1, Value=dv)
                                                  for i, dv in enumerate(values)]),
        ua.StatusChangeNotification(Status=ua.StatusCode(ua.StatusCodes.BadTimeout)),
        ua.DataChangeNotification(MonitoredItems=[]),
    ]
    result.Results = [ua.StatusCode(0)]
    return struct_to_binary(response)


def _plan(value_type: str = "number", scale: float = 1.0) -> _NodePlan:
    node = schema.OpcUaNode(equipment="loom1", signal="speed", node_id="ns=2;s=x", value_type=value_type,
                            scale=scale)  # type: ignore[arg-type]
    return _NodePlan(node, "ent1")


def _same(a: object, b: object) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_decoded_like_asyncua() -> None:
    raw = _response(VALUES)
    theirs = struct_from_binary(ua.PublishResponse, Buffer(raw))
    ours = decode_publish_response(Buffer(raw))
    assert ours.TypeId == theirs.TypeId
    assert ours.ResponseHeader == theirs.ResponseHeader
    p, q = ours.Parameters, theirs.Parameters
    assert (p.SubscriptionId, p.AvailableSequenceNumbers, p.MoreNotifications, p.Results, p.DiagnosticInfos) == (
        q.SubscriptionId, q.AvailableSequenceNumbers, q.MoreNotifications, q.Results, q.DiagnosticInfos)
    m, n = p.NotificationMessage, q.NotificationMessage
    assert (m.SequenceNumber, m.PublishTime) == (n.SequenceNumber, n.PublishTime)
    assert len(m.NotificationData) == 3
    assert m.NotificationData[1] == n.NotificationData[1]  # not a data change: asyncua's own object
    assert isinstance(m.NotificationData[2], DataChanges) and m.NotificationData[2].changes == []
    changes = m.NotificationData[0].changes
    items = n.NotificationData[0].MonitoredItems
    assert len(changes) == len(items) == len(VALUES)
    for (handle, value, status, source, server), item in zip(changes, items, strict=True):
        dv = item.Value
        assert handle == item.ClientHandle
        assert _same(value, dv.Value.Value if dv.Value is not None else None), (value, dv)
        assert type(value) is type(dv.Value.Value if dv.Value is not None else None)
        assert status == (dv.StatusCode.value if dv.StatusCode is not None else 0)
        for ticks, dt in ((source, dv.SourceTimestamp), (server, dv.ServerTimestamp)):
            assert (ticks is None) == (dt is None)
            if ticks is not None:
                assert ticks_ns(ticks) == _datetime_ns(dt)


def test_points_like_asyncua() -> None:
    raw = _response(VALUES)
    items = struct_from_binary(ua.PublishResponse, Buffer(raw)).Parameters.NotificationMessage.NotificationData[0]
    changes = decode_publish_response(Buffer(raw)).Parameters.NotificationMessage.NotificationData[0].changes
    received_ns = _datetime_ns(NOW) + 5_000_000
    for value_type, scale in (("number", 1.0), ("number", 2.5), ("text", 1.0), ("state", 1.0)):
        for prefer_source in (True, False):
            out: list[tuple[list[Point], list[tuple[str, Rejection]], list[str]]] = []
            for use_changes in (False, True):
                plan = _plan(value_type, scale)
                points: list[Point] = []
                rejected: list[tuple[str, Rejection]] = []
                faults: list[_NodePlan] = []
                for change, item in zip(changes, items.MonitoredItems, strict=True):
                    if use_changes:
                        change_to_point(plan, "t", change, received_ns, prefer_source, points, rejected, faults)
                    else:
                        data_value_to_point(plan, "t", item.Value, received_ns, prefer_source, points, rejected,
                                            faults)
                out.append((points, rejected, [f.where for f in faults]))
            (p1, r1, f1), (p2, r2, f2) = out
            assert [(p.fields.keys(), p.ts_ns, p.tags, p.series) for p in p1] == [
                (p.fields.keys(), p.ts_ns, p.tags, p.series) for p in p2]
            assert all(_same(a.fields.get(k), b.fields.get(k)) for a, b in zip(p1, p2, strict=True) for k in a.fields)
            assert r1 == r2 and f1 == f2


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_ticks_like_asyncua(ticks: int) -> None:
    assert ticks_ns(ticks) == _datetime_ns(ua.win_epoch_to_datetime(ticks))


def test_unusual_notification_bodies_go_to_asyncua() -> None:
    """A DataChangeNotification whose TypeId is not the usual four-byte form is asyncua's object."""
    raw = bytearray(_response(VALUES[:2]))
    four_byte = b"\x01\x00" + (811).to_bytes(2, "little") + b"\x01"
    at = raw.index(four_byte)
    numeric = b"\x02\x00\x00" + (811).to_bytes(4, "little") + b"\x01"
    raw[at : at + len(four_byte)] = numeric
    ours = decode_publish_response(Buffer(bytes(raw)))
    first = ours.Parameters.NotificationMessage.NotificationData[0]
    assert type(first) is ua.DataChangeNotification and first.MonitoredItems[0].Value.Value.Value == 21.5
