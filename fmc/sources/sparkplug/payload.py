"""Sparkplug B payloads: the protobuf schema, decoding to plain values, and the few payloads a host sends.

Why ``protobuf`` and not pysparkplug or mqtt-spb-wrapper: both pin paho-mqtt 1.x (the agent runs on
paho 2.x) and mqtt-spb-wrapper pins protobuf 3.20 as well; both bring an MQTT client of their own
that the host would not use. The schema is small and fixed by the Sparkplug 3.0 specification
(Annex "Sparkplug B protobuf schema"), so it is declared here field by field and built at import
into a private descriptor pool: no generated ``_pb2`` file, no protoc, and no clash with another
library that registers the Tahu messages in protobuf's default pool. ``protobuf`` itself is one
wheel (upb, in C) with a pure-Python fallback for any gateway CPU.

Only the fields a host reads are declared. Data sets, templates and metadata (fields 8, 17, 18, 19
of a metric) are skipped by the parser as unknown fields; such metrics are refused by datatype
(``sparkplug_datatype``), never a crash.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from fmc.agent.plugin import Rejection
from fmc.core.quality import BAD, GOOD

NAMESPACE = "spBv1.0"
BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
SPARKPLUG_GOOD = 192  # the Quality property: 0 bad, 192 good, 500 stale

# Sparkplug 3.0 datatypes (the enum of the schema)
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT, UUID = 9, 10, 11, 12, 13, 14, 15
DATATYPE_NAMES = {
    0: "Unknown", 1: "Int8", 2: "Int16", 3: "Int32", 4: "Int64", 5: "UInt8", 6: "UInt16", 7: "UInt32",
    8: "UInt64", 9: "Float", 10: "Double", 11: "Boolean", 12: "String", 13: "DateTime", 14: "Text", 15: "UUID",
    16: "DataSet", 17: "Bytes", 18: "File", 19: "Template", 20: "PropertySet", 21: "PropertySetList",
}
_SIGNED_BITS = {INT8: 8, INT16: 16, INT32: 32, INT64: 64}
_INTEGERS = frozenset({INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64, DATETIME})
_TEXTS = frozenset({STRING, TEXT, UUID})
_STORABLE = _INTEGERS | _TEXTS | {FLOAT, DOUBLE, BOOLEAN}

# --- the schema ----------------------------------------------------------------------------------

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_PACKAGE = "fmc.sparkplug_b"


def _message(parent: Any, name: str, fields: list[tuple[str, int, int, int, str | None, bool]]) -> Any:
    """Add a message: fields are (name, number, type, label, message type name, in the 'value' oneof)."""
    msg = parent.add(name=name)
    if any(in_oneof for *_, in_oneof in fields):
        msg.oneof_decl.add(name="value")
    for field_name, number, kind, label, type_name, in_oneof in fields:
        f = msg.field.add(name=field_name, number=number, type=kind, label=label)
        if type_name is not None:
            f.type_name = f".{_PACKAGE}.Payload.{type_name}"
        if in_oneof:
            f.oneof_index = 0
    return msg


def _schema() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="fmc/sparkplug_b.proto", package=_PACKAGE, syntax="proto2")
    o, r = _OPTIONAL, _REPEATED
    payload = _message(file.message_type, "Payload", [
        ("timestamp", 1, _F.TYPE_UINT64, o, None, False),
        ("metrics", 2, _F.TYPE_MESSAGE, r, "Metric", False),
        ("seq", 3, _F.TYPE_UINT64, o, None, False),
        ("uuid", 4, _F.TYPE_STRING, o, None, False),
        ("body", 5, _F.TYPE_BYTES, o, None, False),
    ])
    _message(payload.nested_type, "PropertyValue", [
        ("type", 1, _F.TYPE_UINT32, o, None, False),
        ("is_null", 2, _F.TYPE_BOOL, o, None, False),
        ("int_value", 3, _F.TYPE_UINT32, o, None, True),
        ("long_value", 4, _F.TYPE_UINT64, o, None, True),
        ("float_value", 5, _F.TYPE_FLOAT, o, None, True),
        ("double_value", 6, _F.TYPE_DOUBLE, o, None, True),
        ("boolean_value", 7, _F.TYPE_BOOL, o, None, True),
        ("string_value", 8, _F.TYPE_STRING, o, None, True),
    ])
    _message(payload.nested_type, "PropertySet", [
        ("keys", 1, _F.TYPE_STRING, r, None, False),
        ("values", 2, _F.TYPE_MESSAGE, r, "PropertyValue", False),
    ])
    _message(payload.nested_type, "Metric", [
        ("name", 1, _F.TYPE_STRING, o, None, False),
        ("alias", 2, _F.TYPE_UINT64, o, None, False),
        ("timestamp", 3, _F.TYPE_UINT64, o, None, False),
        ("datatype", 4, _F.TYPE_UINT32, o, None, False),
        ("is_historical", 5, _F.TYPE_BOOL, o, None, False),
        ("is_transient", 6, _F.TYPE_BOOL, o, None, False),
        ("is_null", 7, _F.TYPE_BOOL, o, None, False),
        ("properties", 9, _F.TYPE_MESSAGE, o, "PropertySet", False),
        ("int_value", 10, _F.TYPE_UINT32, o, None, True),
        ("long_value", 11, _F.TYPE_UINT64, o, None, True),
        ("float_value", 12, _F.TYPE_FLOAT, o, None, True),
        ("double_value", 13, _F.TYPE_DOUBLE, o, None, True),
        ("boolean_value", 14, _F.TYPE_BOOL, o, None, True),
        ("string_value", 15, _F.TYPE_STRING, o, None, True),
        ("bytes_value", 16, _F.TYPE_BYTES, o, None, True),
    ])
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_schema())
ProtoPayload: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.Payload"))

# --- decoded payloads ----------------------------------------------------------------------------

RawValue = int | float | bool | str | bytes | None


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric as sent: a birth names it, data messages may give only its alias."""

    name: str | None  # a name sent in another encoding than UTF-8 has its bytes escaped: see ``raw_name``
    alias: int | None
    timestamp_ms: int | None
    datatype: int | None
    value: RawValue  # the oneof's value, None when absent or is_null
    value_field: str | None  # which oneof field carried it ("int_value", …)
    is_null: bool = False
    quality: int | None = None  # the Quality property (192 good), when sent
    is_historical: bool = False  # a value of the past (store and forward), not the metric's current one


@dataclass(frozen=True, slots=True)
class Payload:
    timestamp_ms: int | None
    seq: int  # 0 when absent (protobuf's default): encoders that skip default values leave seq 0 out
    metrics: tuple[Metric, ...]

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)


def decode(data: bytes) -> Payload | Rejection:
    """A Sparkplug B payload, or why not (``payload_not_protobuf``)."""
    msg = ProtoPayload()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError) as e:
        return Rejection("payload_not_protobuf", f"not a Sparkplug B payload: {e}"[:120])
    metrics = tuple(_metric(m) for m in msg.metrics)
    # an absent seq reads as 0, protobuf's default for an absent scalar: encoders that leave out
    # default values (proto3-compiled Tahu schemas) send every NBIRTH, and the 0 after 255, without it
    return Payload(msg.timestamp if msg.HasField("timestamp") else None, msg.seq, metrics)


def _metric(m: Any) -> Metric:
    field = m.WhichOneof("value")
    quality: int | None = None
    if m.HasField("properties"):
        props = m.properties
        for key, value in zip(props.keys, props.values, strict=False):
            if key == "Quality":
                kind = value.WhichOneof("value")
                raw = getattr(value, kind) if kind in ("int_value", "long_value") else None
                # Int32 on the wire is an unsigned field: a negative code arrives as 2**32 - n
                quality = raw if isinstance(raw, int) else -1
    name = m.name if m.HasField("name") else None
    if type(name) is bytes:
        # upb does not check UTF-8 in a proto2 string: a name from an edge node set to a local code
        # page (GBK) arrives as bytes. It is kept as text with its bad bytes escaped (lossless), so a
        # birth still defines its alias and the mapper refuses this metric alone (name_not_utf8)
        name = name.decode("utf-8", "surrogateescape")
    return Metric(
        name,
        m.alias if m.HasField("alias") else None,
        m.timestamp if m.HasField("timestamp") else None,
        m.datatype if m.HasField("datatype") else None,
        None if m.is_null or field is None else getattr(m, field),
        None if m.is_null else field,
        bool(m.is_null),
        quality,
        bool(m.is_historical),
    )


def raw_name(name: str) -> bytes | None:
    """The bytes of a metric name that was not valid UTF-8 (``decode`` escaped them), else None."""
    if name.isascii():
        return None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape")
    return None


def fmc_quality(sparkplug_quality: int | None) -> int:
    """Sparkplug's Quality property -> fmc's (an OPC UA status code): 192 or absent is Good, else Bad."""
    return GOOD if sparkplug_quality is None or sparkplug_quality == SPARKPLUG_GOOD else BAD


def value_of(datatype: int | None, metric: Metric) -> float | str | Rejection | None:
    """A metric's value as fmc stores it: a number (integers, floats, booleans as 0/1, DateTime in
    ms), text (String, Text, UUID), None (is_null), or why not."""
    if metric.is_null:
        return None
    raw, field = metric.value, metric.value_field
    where = metric.name if metric.name is not None else f"alias {metric.alias}"
    if datatype is None:
        return Rejection("sparkplug_datatype", f"{where!r}: no datatype (neither in the birth nor the metric)")
    if datatype not in _STORABLE:
        name = DATATYPE_NAMES.get(datatype, f"datatype {datatype}")
        return Rejection("sparkplug_datatype",
                         f"{where!r} is a {name}: fmc stores numbers, booleans and text only")
    if field is None:
        return Rejection("value_wrong_type", f"{where!r}: no value")
    if datatype in _INTEGERS:
        # integers travel in int_value (32 bits) or long_value (64); signed ones as two's complement,
        # which some encoders sign-extend to 32 bits and others do not: masking reads both
        if field not in ("int_value", "long_value") or type(raw) is not int:
            return _wrong(where, datatype, field)
        bits = _SIGNED_BITS.get(datatype)
        if bits is not None:
            raw &= (1 << bits) - 1
            if raw >= 1 << (bits - 1):
                raw -= 1 << bits
        return float(raw)
    if datatype in (FLOAT, DOUBLE):
        if field not in ("float_value", "double_value") or type(raw) is not float:
            return _wrong(where, datatype, field)
        if not math.isfinite(raw):
            return Rejection("value_not_finite", f"{where!r} is {raw}")
        return raw
    if datatype == BOOLEAN:
        if field != "boolean_value":
            return _wrong(where, datatype, field)
        return 1.0 if raw else 0.0
    if field == "string_value" and type(raw) is bytes:  # upb does not check UTF-8 either
        return Rejection("value_not_utf8", f"{where!r}: the text {_short_bytes(raw)} is not valid UTF-8")
    if field != "string_value" or type(raw) is not str:  # String, Text, UUID
        return _wrong(where, datatype, field)
    return raw


def _short_bytes(raw: bytes) -> str:
    return repr(raw) if len(raw) <= 40 else repr(raw[:40])[:-1] + "…'"


def _wrong(where: str, datatype: int, field: str) -> Rejection:
    return Rejection("value_wrong_type",
                     f"{where!r}: a {DATATYPE_NAMES.get(datatype, datatype)} metric carries {field}")


# --- what a host sends ---------------------------------------------------------------------------


def rebirth_request(timestamp_ms: int) -> bytes:
    """The NCMD payload that asks an edge node for its births again: Node Control/Rebirth = true."""
    msg = ProtoPayload(timestamp=timestamp_ms)
    msg.metrics.add(name=REBIRTH, timestamp=timestamp_ms, datatype=BOOLEAN, boolean_value=True)
    return bytes(msg.SerializeToString())


def state_payload(online: bool, timestamp_ms: int) -> bytes:
    """A primary host's STATE (Sparkplug 3.0): UTF-8 JSON, retained, QoS 1."""
    return json.dumps({"online": online, "timestamp": timestamp_ms}, separators=(",", ":")).encode()


def parse_state(data: bytes) -> tuple[bool, int] | None:
    """(online, timestamp) of a STATE payload, or None when it is not one."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or type(doc.get("online")) is not bool or type(doc.get("timestamp")) is not int:
        return None
    return doc["online"], doc["timestamp"]
