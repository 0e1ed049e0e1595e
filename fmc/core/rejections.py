"""Every reason code the agent rejects a message or a value with.

A fixed set keeps the `agent` measurement's field set fixed (``rejected_<reason>``, DESIGN §4);
tests/test_selfmetrics.py fails when the code gains a reason that is not listed here."""

from __future__ import annotations

# Every reason code the agent rejects a message or value with (fmc.sources.mqtt.mapping, fmc.core.lineprotocol,
# fmc.sources.mqtt.source, fmc.sources.opcua.convert, the ingest's series limit). A fixed set keeps the field set fixed;
# tests/test_selfmetrics.py fails when the code gains a reason that is not listed here.
REJECTION_REASONS: tuple[str, ...] = (
    "internal_error",
    "name_backslash",
    "name_comment",
    "name_control_char",
    "name_empty",
    "name_not_utf8",
    "name_too_long",
    "name_type",
    "no_fields",
    "metric_unmatched",  # a Sparkplug metric no [[sparkplug.map]] matches (and no ignore_metrics pattern)
    "parse",
    "payload_not_json",
    "payload_not_number",
    "payload_not_protobuf",  # a Sparkplug B message whose payload does not decode
    "payload_not_utf8",
    "payload_too_large",
    "quality_invalid",
    "retained_without_timestamp",  # an MQTT retained message (of any age) whose subscription has no timestamp_path
    "series_limit",
    "sparkplug_alias_unknown",  # a data metric's alias is in no birth of its node: a rebirth is requested
    "sparkplug_birth_invalid",  # a birth metric without a name
    "sparkplug_datatype",  # a DataSet, Template, Bytes, File or array metric: not a number nor text
    "sparkplug_no_birth",  # data from an edge node or device before its birth: a rebirth is requested
    "spool_busy",  # a QoS 0 MQTT message dropped while the ingest's queue was full (counted, not stored)
    "timestamp_invalid",
    "timestamp_out_of_range",
    "timestamp_type",
    "topic_not_utf8",
    "topic_unmatched",
    "unknown_carrier",
    "value_control_char",
    "value_not_finite",
    "value_not_utf8",
    "value_out_of_range",  # a Modbus register outside its configured min/max
    "value_path_missing",
    "value_too_long",
    "value_type",
    "value_wrong_type",
)
