"""PublishResponses decoded by hand: the data changes of a subscription as plain tuples.

asyncua decodes every MonitoredItemNotification into a ``MonitoredItemNotification``, a
``DataValue``, a ``Variant``, a ``StatusCode`` and two ``datetime`` objects, through generic
per-field deserializers: about 25 µs a change, more than everything else the agent does with it.
The agent needs only the client handle, the value, the status code and the two timestamps, so
``decode_publish_response`` reads them straight from the bytes into a ``DataChanges`` (one
tuple a change: handle, value, status code, source and server time in OPC UA ticks or None).
Written by hand for speed only: anything it does not read itself (other notification types,
a scalar other than the numbers and strings, arrays, picoseconds, the response header) is
decoded by asyncua's own functions at that position, so the values are asyncua's.
``tests/test_opcua_publish.py`` checks the result against asyncua's decoding.

``install`` makes one asyncua session's publish loop use it; the session's ``on_publish``
handles ``DataChanges`` (and asyncua's ``DataChangeNotification``, should anything else send one).
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua import uatypes
from asyncua.ua.ua_binary import (
    extensionobject_from_binary,
    get_string_encoding,
    nodeid_from_binary,
    struct_from_binary,
    variant_from_binary,
)
from asyncua.ua.uaerrors import UaStructParsingError

# OPC UA DateTime: 100-ns ticks since 1601-01-01 UTC
TICKS_1970 = 116_444_736_000_000_000
_MAX_TICKS = uatypes.MAX_OPC_FILETIME
_MAX_DATETIME_NS = (uatypes.MAX_FILETIME_EPOCH_AS_UTC_DATETIME - datetime(1970, 1, 1, tzinfo=UTC)) \
    // timedelta(microseconds=1) * 1000
_NULL_NS = -TICKS_1970 * 100

_DATA_CHANGE_TYPE_ID = b"\x01\x00" + struct.pack("<H", ua.ObjectIds.DataChangeNotification_Encoding_DefaultBinary)
_HANDLE = struct.Struct("<IB")  # ClientHandle, then the DataValue's encoding mask
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_SEQ_TIME = struct.Struct("<Iq")
# scalar Variant types read here (the rest go to asyncua): type id -> (struct, size)
_SCALARS: dict[int, tuple[struct.Struct, int]] = {
    vt.value: (struct.Struct("<" + fmt), struct.calcsize("<" + fmt))
    for vt, fmt in ((ua.VariantType.Boolean, "?"), (ua.VariantType.SByte, "b"), (ua.VariantType.Byte, "B"),
                    (ua.VariantType.Int16, "h"), (ua.VariantType.UInt16, "H"), (ua.VariantType.Int32, "i"),
                    (ua.VariantType.UInt32, "I"), (ua.VariantType.Int64, "q"), (ua.VariantType.UInt64, "Q"),
                    (ua.VariantType.Float, "f"), (ua.VariantType.Double, "d"))
}
_DOUBLE = ua.VariantType.Double.value
_STRING = ua.VariantType.String.value
_NULL_VARIANT = ua.VariantType.Null.value

# one change: client handle, value, status code (int), source ticks, server ticks (None: absent)
Change = tuple[int, Any, int, int | None, int | None]


class DataChanges:
    """The MonitoredItems of one DataChangeNotification, decoded by ``decode_publish_response``."""

    __slots__ = ("changes",)

    def __init__(self, changes: list[Change]) -> None:
        self.changes = changes


def ticks_ns(ticks: int) -> int:
    """Nanoseconds since 1970 of an OPC UA DateTime, as asyncua's datetime of it gives them
    (whole microseconds; before 1601 is 1601, after 9999 is its end of 9999)."""
    if ticks >= _MAX_TICKS:
        return _MAX_DATETIME_NS
    if ticks < 0:
        return _NULL_NS
    return (ticks // 10) * 1000 - TICKS_1970 * 100


def _data_changes(raw: bytes, pos: int, end: int, encoding: str) -> DataChanges:
    """The body of one DataChangeNotification, raw[pos:end]."""
    (count,) = _I32.unpack_from(raw, pos)
    pos += 4
    changes: list[Change] = []
    append = changes.append
    handle_unpack, i64_unpack, u32_unpack = _HANDLE.unpack_from, _I64.unpack_from, _U32.unpack_from
    scalars = _SCALARS
    double = _SCALARS[_DOUBLE][0].unpack_from
    for _ in range(count):
        handle, mask = handle_unpack(raw, pos)
        pos += 5
        if mask & 0x30:  # picoseconds (rare): asyncua's own decoding of the DataValue
            buf = Buffer(raw, pos - 1, end - pos + 1)
            dv = struct_from_binary(ua.DataValue, buf)
            pos = buf.cur_pos
            append((handle, dv.Value.Value if dv.Value is not None else None,
                    dv.StatusCode.value if dv.StatusCode is not None else 0,
                    None if dv.SourceTimestamp is None else uatypes.datetime_to_win_epoch(dv.SourceTimestamp),
                    None if dv.ServerTimestamp is None else uatypes.datetime_to_win_epoch(dv.ServerTimestamp)))
            continue
        value: Any = None
        if mask & 1:
            vtype = raw[pos]
            if vtype == _DOUBLE:
                (value,) = double(raw, pos + 1)
                pos += 9
            elif vtype in scalars:
                st, size = scalars[vtype]
                (value,) = st.unpack_from(raw, pos + 1)
                pos += 1 + size
            elif vtype == _STRING:
                (length,) = _I32.unpack_from(raw, pos + 1)
                pos += 5
                if length != -1:
                    value = raw[pos : pos + length].decode(encoding, errors="surrogateescape")
                    pos += length
            elif vtype == _NULL_VARIANT:
                pos += 1
            else:  # arrays, dimensions and every other type: asyncua's own decoding
                buf = Buffer(raw, pos, end - pos)
                value = variant_from_binary(buf).Value
                pos = buf.cur_pos
        status = 0
        if mask & 2:
            (status,) = u32_unpack(raw, pos)
            pos += 4
        source = server = None
        if mask & 4:
            (source,) = i64_unpack(raw, pos)
            pos += 8
        if mask & 8:
            (server,) = i64_unpack(raw, pos)
            pos += 8
        append((handle, value, status, source, server))
    if pos > end:
        raise ua.UaError("DataChangeNotification longer than its ExtensionObject")
    # DiagnosticInfos follow; the agent does not use them (asyncua's callbacks do not either)
    return DataChanges(changes)


def decode_publish_response(data: Buffer) -> ua.PublishResponse:
    """A PublishResponse whose DataChangeNotifications are ``DataChanges``; the rest is asyncua's."""
    raw = data.read(len(data))
    buf = Buffer(raw)
    response = ua.PublishResponse()
    response.TypeId = nodeid_from_binary(buf)
    response.ResponseHeader = struct_from_binary(ua.ResponseHeader, buf)
    result = response.Parameters
    (result.SubscriptionId,) = _U32.unpack(buf.read(4))
    (n,) = _I32.unpack(buf.read(4))
    result.AvailableSequenceNumbers = list(struct.unpack(f"<{n}I", buf.read(4 * n))) if n > 0 else []
    result.MoreNotifications = buf.read(1) != b"\x00"
    message = result.NotificationMessage
    message.SequenceNumber, ticks = _SEQ_TIME.unpack(buf.read(12))
    message.PublishTime = ua.win_epoch_to_datetime(ticks)
    (n,) = _I32.unpack(buf.read(4))
    notifications: list[Any] = []
    encoding = get_string_encoding()
    for _ in range(max(n, 0)):
        pos = buf.cur_pos
        if raw[pos : pos + 4] == _DATA_CHANGE_TYPE_ID and raw[pos + 4] == 1:
            (length,) = _I32.unpack_from(raw, pos + 5)
            if length >= 4:
                body = pos + 9
                notifications.append(_data_changes(raw, body, body + length, encoding))
                buf.skip(9 + length)
                continue
        notifications.append(extensionobject_from_binary(buf))
    message.NotificationData = notifications
    (n,) = _I32.unpack(buf.read(4))
    result.Results = [ua.StatusCode(v) for v in struct.unpack(f"<{n}I", buf.read(4 * n))] if n > 0 else []
    (n,) = _I32.unpack(buf.read(4))
    result.DiagnosticInfos = [struct_from_binary(ua.DiagnosticInfo, buf) for _ in range(max(n, 0))]
    return response


def install(session: Any) -> None:
    """Make this asyncua ``UaSession``'s publish loop decode its responses with ``decode_publish_response``.

    Its ``publish`` is replaced on the instance only (other clients in the process keep asyncua's);
    the request is the one asyncua's ``publish`` sends."""
    if getattr(session, "_fmc_fast_publish", False):
        return
    later: list[ua.SubscriptionAcknowledgement] = []
    session._fmc_acks = later

    async def publish(acks: list[ua.SubscriptionAcknowledgement]) -> ua.PublishResponse:
        request = ua.PublishRequest()
        if later:  # acknowledge_later's, sent with the next request
            acks = [*later, *acks]
            later.clear()
        request.Parameters.SubscriptionAcknowledgements = acks if acks else []
        data = await session._send_request(request, timeout=0)
        try:
            return decode_publish_response(data)
        except Exception as ex:
            session.logger.exception("Error parsing notification from server")
            raise UaStructParsingError from ex

    session.publish = publish
    session._fmc_fast_publish = True


def acknowledge_later(session: Any, subscription_id: int, sequence_number: int) -> None:
    """Acknowledge a notification message with the next PublishRequest of this ``install``ed session:
    one received through Republish, or the last one before the connection broke (asyncua's loop
    keeps its pending acknowledgements in the task it was cancelled in), so the server can drop it."""
    session._fmc_acks.append(ua.SubscriptionAcknowledgement(SubscriptionId=subscription_id,
                                                            SequenceNumber=sequence_number))
