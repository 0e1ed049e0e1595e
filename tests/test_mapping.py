"""fmc.sources.mqtt.mapping: every rejection reason with a real payload, and names that cannot inject points."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmc.agent.plugin import MIN_TIMESTAMP_NS, MapResult, Rejection
from fmc.core import lineprotocol
from fmc.core.config import EnterpriseConfig
from fmc.core.jsondoc import load_json
from fmc.core.points import Point, Priority
from fmc.sources.mqtt.config import Subscription
from fmc.sources.mqtt.mapping import Mapper

ENTERPRISE = EnterpriseConfig(id="91330602MA2BXXXX1X", name="示范纺织", region="330602", industry="17")
NOW_NS = 1_764_000_000 * 10**9  # 2025-11-24T16:00:00Z, the "receive time" of every message here
TS_MS = 1_763_999_000_000  # 1000 s before NOW


def sub(**kw: Any) -> Subscription:
    kw.setdefault("topic", "plant/{equipment}/{signal}")
    return Subscription(**kw)


def mapper(*subs: Subscription, **kw: Any) -> Mapper:
    return Mapper(ENTERPRISE, list(subs) or [sub()], **kw)


def one_point(result: MapResult) -> Point:
    assert result.rejections == [], result.rejections
    assert len(result.points) == 1, result.points
    return result.points[0]


def reasons(result: MapResult) -> list[str]:
    return [r.reason for r in result.rejections]


def rejected(result: MapResult, reason: str) -> Rejection:
    assert result.points == [], result.points
    assert reasons(result) == [reason], result.rejections
    assert result.rejections[0].detail  # people get a detail, not just a label
    return result.rejections[0]


def js(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# --- topics and names ------------------------------------------------------------------------


def test_signal_point_from_json() -> None:
    p = one_point(mapper().map("plant/loom-07/spindle_speed", b'{"value": 412.5}', NOW_NS))
    assert p == Point(
        "signal",
        {"enterprise": ENTERPRISE.id, "equipment": "loom-07", "signal": "spindle_speed"},
        {"value": 412.5, "quality": 0},
        NOW_NS,
        Priority.RAW,
    )
    assert type(p.fields["value"]) is float and type(p.fields["quality"]) is int


def test_integer_json_value_becomes_float() -> None:
    p = one_point(mapper().map("plant/a/b", b'{"value": 3}', NOW_NS))
    assert p.fields["value"] == 3.0 and type(p.fields["value"]) is float


def test_literal_segments_plus_and_trailing_hash() -> None:
    m = mapper(
        sub(topic="site/+/{equipment}/fixed/{signal}/#"),
        sub(topic="other/{equipment}", signal="temp"),
    )
    p = one_point(m.map("site/hall-3/press-1/fixed/force", b'{"value": 1}', NOW_NS))  # '#' may match nothing
    assert (p.tags["equipment"], p.tags["signal"]) == ("press-1", "force")
    p = one_point(m.map("site/x/press-2/fixed/force/deep/er", b'{"value": 2}', NOW_NS))
    assert (p.tags["equipment"], p.tags["signal"]) == ("press-2", "force")
    assert one_point(m.map("other/pump", b'{"value": 3}', NOW_NS)).tags["signal"] == "temp"
    rejected(m.map("site/x/press-2/FIXED/force", b'{"value": 1}', NOW_NS), "topic_unmatched")
    rejected(m.map("other/pump/extra", b'{"value": 1}', NOW_NS), "topic_unmatched")
    rejected(m.map("site/x/press", b'{"value": 1}', NOW_NS), "topic_unmatched")


def test_first_matching_subscription_wins() -> None:
    m = mapper(sub(topic="plant/{equipment}/temp", signal="temperature", scale=10.0), sub())
    p = one_point(m.map("plant/oven/temp", b'{"value": 2}', NOW_NS))
    assert (p.tags["signal"], p.fields["value"]) == ("temperature", 20.0)
    p = one_point(m.map("plant/oven/power", b'{"value": 2}', NOW_NS))
    assert (p.tags["signal"], p.fields["value"]) == ("power", 2.0)


def test_name_templates_expand_captured_segments() -> None:
    m = mapper(sub(topic="line1/{no}/{signal}", equipment="loom-{no}"))
    p = one_point(m.map("line1/07/speed", b'{"value": 1}', NOW_NS))
    assert p.tags["equipment"] == "loom-07"


def test_topic_unmatched() -> None:
    rej = rejected(mapper().map("elsewhere/a/b", b'{"value": 1}', NOW_NS), "topic_unmatched")
    assert "elsewhere/a/b" in rej.detail


@pytest.mark.parametrize(
    ("equipment", "reason"),
    [
        ("bad\nline", "name_control_char"),
        ("tab\there", "name_control_char"),
        ("nul\x00", "name_control_char"),
        ("back\\slash", "name_backslash"),
        ("", "name_empty"),
        ("x" * 300, "name_too_long"),
        ("lone\ud800surrogate", "name_not_utf8"),
    ],
)
def test_unwritable_topic_segment_is_rejected(equipment: str, reason: str) -> None:
    rejected(mapper().map(f"plant/{equipment}/speed", b'{"value": 1}', NOW_NS), reason)


@pytest.mark.parametrize("equipment", ["loom 7", "a,b", "k=v", '"quoted"', "织机-07", "#hash", "emoji😀", "tail "])
def test_encodable_topic_segments_round_trip_exactly(equipment: str) -> None:
    p = one_point(mapper().map(f"plant/{equipment}/speed", b'{"value": 1.5}', NOW_NS))
    assert p.tags["equipment"] == equipment
    line = lineprotocol.encode(p)
    assert "\n" not in line
    back = lineprotocol.parse(line)
    assert (back.measurement, back.tags, back.fields, back.ts_ns) == (p.measurement, p.tags, p.fields, p.ts_ns)


def test_meter_point_and_carriers() -> None:
    m = mapper(
        sub(topic="meters/{carrier}/{meter}", kind="meter", value_path="d.kwh"),
        sub(topic="water/{meter}", kind="meter", carrier="water_intake", payload="number", scale=0.001),
    )
    p = one_point(m.map("meters/electricity/main", b'{"d": {"kwh": 1234.5}}', NOW_NS))
    assert p == Point(
        "meter_reading",
        {"enterprise": ENTERPRISE.id, "meter": "main", "carrier": "electricity"},
        {"value": 1234.5, "quality": 0},
        NOW_NS,
    )
    p = one_point(m.map("water/intake-1", b" 2500 \r\n", NOW_NS))
    assert (p.tags["carrier"], p.tags["meter"], p.fields["value"]) == ("water_intake", "intake-1", 2.5)
    rej = rejected(m.map("meters/crude_oil/main", b'{"d": {"kwh": 1}}', NOW_NS), "unknown_carrier")
    assert "crude_oil" in rej.detail


def test_mapper_refuses_unwritable_fixed_names_at_start() -> None:
    with pytest.raises(ValueError, match="backslash"):
        mapper(sub(equipment="a\\b"))
    with pytest.raises(ValueError, match="not one of"):
        mapper(sub(topic="m/{meter}", kind="meter", carrier="crude_oil"))
    with pytest.raises(ValueError, match="control"):
        mapper(sub(topic="p/{equipment}", values={"bad\nname": "v"}))


# --- payloads --------------------------------------------------------------------------------


def test_payload_too_large_is_checked_before_parsing() -> None:
    m = mapper(max_payload_bytes=64)
    rejected(m.map("plant/a/b", b"{" * 65, NOW_NS), "payload_too_large")
    one_point(m.map("plant/a/b", b'{"value": 1}' + b" " * 52, NOW_NS))  # exactly 64 bytes is fine


def test_payload_not_utf8_and_not_json() -> None:
    m = mapper()
    rejected(m.map("plant/a/b", b'{"value": "\xff"}', NOW_NS), "payload_not_utf8")
    rejected(m.map("plant/a/b", '{"value": 1}'.encode("utf-16"), NOW_NS), "payload_not_utf8")
    rejected(m.map("plant/a/b", b'{"value": 1', NOW_NS), "payload_not_json")
    rejected(m.map("plant/a/b", b"", NOW_NS), "payload_not_json")
    rejected(m.map("plant/a/b", b"value=1", NOW_NS), "payload_not_json")
    rejected(m.map("plant/a/b", b"[" * 200_000, NOW_NS), "payload_not_json")  # RecursionError, not a crash
    # a UTF-8 byte order mark is tolerated
    assert one_point(m.map("plant/a/b", b'\xef\xbb\xbf{"value": 1}', NOW_NS)).fields["value"] == 1.0


def _json_outcome(decode: Any, payload: bytes) -> tuple[str, str]:
    """What a decoder makes of ``payload``: the document's repr (it tells 1 from 1.0 and shows
    NaN, which is not equal to itself) or the error's type and words."""
    try:
        return "ok", repr(decode(payload))
    except (ValueError, RecursionError) as e:
        return type(e).__name__, str(e)


def _stdlib_json(payload: bytes) -> object:
    text = payload.decode("utf-8")
    return json.loads(text[1:] if text.startswith("\ufeff") else text)


_JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
                 | st.floats(allow_nan=True, allow_infinity=True) | st.text())
_JSON_DOCS = st.recursive(_JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(doc=_JSON_DOCS, ensure_ascii=st.booleans(), bom=st.booleans())
def test_load_json_gives_what_json_loads_gives(doc: Any, ensure_ascii: bool, bom: bool) -> None:
    """The fast decoder (msgspec) with json's fallback: the same document as json.loads, NaN,
    Infinity, big integers, lone surrogates (ensure_ascii writes them as escapes) and a BOM included."""
    try:
        text = json.dumps(doc, ensure_ascii=ensure_ascii)
        payload = (("\ufeff" if bom else "") + text).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate written raw: not UTF-8, cannot be a payload
        return
    assert _json_outcome(load_json, payload) == _json_outcome(_stdlib_json, payload)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=40) | st.text(alphabet='{}[]",:0123456789.eE+-tfnaulrsINFy\\ \ufeff',
                                                  max_size=30).map(str.encode))
def test_load_json_refuses_what_json_loads_refuses_in_its_words(payload: bytes) -> None:
    assert _json_outcome(load_json, payload) == _json_outcome(_stdlib_json, payload)


@pytest.mark.parametrize("payload", [
    b'{"value": 1e999}', b'{"value": -1e999}', b'{"value": 1' + b"0" * 400 + b"}", b'{"value": 18446744073709551616}',
    b'{"value": "\\ud800"}', "\ufeff{\"value\": 1}".encode(), b"[" * 5000 + b"]" * 5000, b'{"a": 1, "a": 2}',
    b'{"value": 1}x', b"", b"\xff", b'{"value": 0.1e-400}', b'{"value": 2.2250738585072014e-308}',
])
def test_load_json_on_what_the_fast_decoder_refuses_or_may_read_otherwise(payload: bytes) -> None:
    assert _json_outcome(load_json, payload) == _json_outcome(_stdlib_json, payload)


def test_value_path_missing_and_nested_paths() -> None:
    m = mapper(sub(value_path="d.values.1.v"))
    doc = {"d": {"values": [{"v": 1}, {"v": 2.5}]}}
    assert one_point(m.map("plant/a/b", js(doc), NOW_NS)).fields["value"] == 2.5
    rejected(m.map("plant/a/b", js({"d": {"values": [{"v": 1}]}}), NOW_NS), "value_path_missing")
    rejected(m.map("plant/a/b", js({"d": {"values": {"v": 1}}}), NOW_NS), "value_path_missing")
    rejected(m.map("plant/a/b", js({"d": 5}), NOW_NS), "value_path_missing")
    rejected(m.map("plant/a/b", js([1, 2]), NOW_NS), "value_path_missing")
    # a digit step also names a dict key
    assert one_point(m.map("plant/a/b", js({"d": {"values": {"1": {"v": 7}}}}), NOW_NS)).fields["value"] == 7.0


def test_empty_value_path_is_the_whole_document() -> None:
    assert one_point(mapper(sub(value_path="")).map("plant/a/b", b"21.5", NOW_NS)).fields["value"] == 21.5


@pytest.mark.parametrize("payload", [b'{"value": true}', b'{"value": "12.5"}', b'{"value": null}',
                                     b'{"value": {"v": 1}}', b'{"value": [1]}'])
def test_value_wrong_type(payload: bytes) -> None:
    rejected(mapper().map("plant/a/b", payload, NOW_NS), "value_wrong_type")


@pytest.mark.parametrize("payload", [b'{"value": NaN}', b'{"value": Infinity}', b'{"value": -Infinity}',
                                     b'{"value": 1e400}', b'{"value": 1' + b"0" * 400 + b"}"])
def test_value_not_finite_json(payload: bytes) -> None:
    rejected(mapper().map("plant/a/b", payload, NOW_NS), "value_not_finite")


def test_nan_in_a_field_nobody_reads_does_not_cost_the_message() -> None:
    assert one_point(mapper().map("plant/a/b", b'{"value": 1, "debug": NaN}', NOW_NS)).fields["value"] == 1.0


@pytest.mark.parametrize(
    ("payload", "value"),
    [(b"42", 42.0), (b"  -1.5e3\n", -1500.0), (b"+.5", 0.5), (b"7.", 7.0), (b"\t0\t", 0.0)],
)
def test_number_payload(payload: bytes, value: float) -> None:
    m = mapper(sub(payload="number"))
    assert one_point(m.map("plant/a/b", payload, NOW_NS)).fields == {"value": value, "quality": 0}


@pytest.mark.parametrize("payload", [b"", b"  ", b"abc", b"1_000", b"0x10", "١٢٣".encode(), b"1,5", b"1 2",
                                     b'{"value": 1}', b"\xff"])
def test_payload_not_number(payload: bytes) -> None:
    rejected(mapper(sub(payload="number")).map("plant/a/b", payload, NOW_NS), "payload_not_number")


@pytest.mark.parametrize("payload", [b"nan", b"NaN", b"inf", b"-Infinity", b"1e999"])
def test_number_payload_not_finite(payload: bytes) -> None:
    rejected(mapper(sub(payload="number")).map("plant/a/b", payload, NOW_NS), "value_not_finite")


def test_scale_and_offset() -> None:
    m = mapper(sub(scale=0.1, offset=-273.15))
    assert one_point(m.map("plant/a/b", b'{"value": 3000}', NOW_NS)).fields["value"] == pytest.approx(26.85)
    m = mapper(sub(payload="number", scale=2.0, offset=1.0))
    assert one_point(m.map("plant/a/b", b"20", NOW_NS)).fields["value"] == 41.0
    # the result overflows: finite input, infinite output
    rej = rejected(mapper(sub(scale=1e10)).map("plant/a/b", b'{"value": 1e300}', NOW_NS), "value_not_finite")
    assert "scale" in rej.detail


def test_text_values() -> None:
    m = mapper(sub(value_type="text", value_path="program"))
    p = one_point(m.map("plant/cnc-1/program", js({"program": 'O1234 "roughing" \\ 粗加工'}), NOW_NS))
    assert p.fields == {"text": 'O1234 "roughing" \\ 粗加工', "quality": 0}
    back = lineprotocol.parse(lineprotocol.encode(p))
    assert back.fields == p.fields
    rejected(m.map("plant/cnc-1/program", js({"program": 1234}), NOW_NS), "value_wrong_type")
    rejected(m.map("plant/cnc-1/program", js({"program": "a\nb"}), NOW_NS), "value_control_char")
    rejected(m.map("plant/cnc-1/program", b'{"program": "\\ud800"}', NOW_NS), "value_not_utf8")
    rejected(m.map("plant/cnc-1/program", js({"program": "x" * 70_000}), NOW_NS), "value_too_long")


# --- timestamps and quality -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "raw", "expected_ns"),
    [
        ("s", 1_763_999_000, 1_763_999_000 * 10**9),
        ("s", 1_763_999_000.25, 1_763_999_000_250_000_000),
        ("ms", TS_MS, TS_MS * 10**6),
        ("ms", 1_763_999_000_000.5, 1_763_999_000_000_500_000),
        ("us", 1_763_999_000_000_123, 1_763_999_000_000_123_000),
        ("ns", 1_763_999_000_000_123_456, 1_763_999_000_000_123_456),
    ],
)
def test_timestamp_units(unit: str, raw: float, expected_ns: int) -> None:
    m = mapper(sub(timestamp_path="t", timestamp_unit=unit))
    assert one_point(m.map("plant/a/b", js({"t": raw, "value": 1}), NOW_NS)).ts_ns == expected_ns


@pytest.mark.parametrize(
    ("text", "expected_ns"),
    [
        ("2025-11-24T15:00:00Z", 1_763_996_400 * 10**9),
        ("2025-11-24T23:00:00+08:00", 1_763_996_400 * 10**9),
        ("2025-11-24T23:00:00.123456789+08:00", 1_763_996_400 * 10**9 + 123_456_789),
        ("2025-11-24T15:00:00.5Z", 1_763_996_400 * 10**9 + 500_000_000),
        ("2025-11-24 15:00:00,25Z", 1_763_996_400 * 10**9 + 250_000_000),
        # ten digits: the nanoseconds kept (they were cut to microseconds), the rest dropped
        ("2025-11-24T15:00:00.1234567891Z", 1_763_996_400 * 10**9 + 123_456_789),
        ("20251124T150000.25Z", 1_763_996_400 * 10**9 + 250_000_000),  # the basic format
        # RFC 3339's lower-case t and z (its 5.6 allows both): every reading was refused as timestamp_invalid
        ("2025-11-24t15:00:00z", 1_763_996_400 * 10**9),
        ("2025-11-24T15:00:00.25z", 1_763_996_400 * 10**9 + 250_000_000),
    ],
)
def test_timestamp_iso8601(text: str, expected_ns: int) -> None:
    m = mapper(sub(timestamp_path="meta.t", timestamp_unit="iso8601"))
    assert one_point(m.map("plant/a/b", js({"meta": {"t": text}, "value": 1}), NOW_NS)).ts_ns == expected_ns


@pytest.mark.parametrize(
    ("unit", "raw"),
    [
        ("iso8601", "2025-11-24T15:00:00"),  # naive: which zone? refuse rather than guess
        ("iso8601", "2025-11-24"),
        ("iso8601", "yesterday"),
        # a fraction of the minutes or the hours (08:30.5 is 08:30:30): it was stored as 08:30:00.5
        ("iso8601", "2025-11-24T15:30.5Z"),
        ("iso8601", "2025-11-24T15.5Z"),
        ("iso8601", 1_763_999_000),
        ("ms", "1763999000000"),
        ("ms", True),
        ("ms", None),
        ("ms", float("nan")),
    ],
)
def test_timestamp_invalid(unit: str, raw: Any) -> None:
    m = mapper(sub(timestamp_path="t", timestamp_unit=unit))
    rejected(m.map("plant/a/b", js({"t": raw, "value": 1}), NOW_NS), "timestamp_invalid")


def test_timestamp_missing_is_invalid() -> None:
    m = mapper(sub(timestamp_path="t"))
    rejected(m.map("plant/a/b", js({"value": 1}), NOW_NS), "timestamp_invalid")


def test_timestamp_out_of_range() -> None:
    m = mapper(sub(timestamp_path="t", timestamp_unit="ns"), max_future_s=300)
    rejected(m.map("plant/a/b", js({"t": MIN_TIMESTAMP_NS - 1, "value": 1}), NOW_NS), "timestamp_out_of_range")
    rejected(m.map("plant/a/b", js({"t": 0, "value": 1}), NOW_NS), "timestamp_out_of_range")
    rejected(m.map("plant/a/b", js({"t": NOW_NS + 301 * 10**9, "value": 1}), NOW_NS), "timestamp_out_of_range")
    rejected(m.map("plant/a/b", js({"t": 10**40, "value": 1}), NOW_NS), "timestamp_out_of_range")
    assert one_point(m.map("plant/a/b", js({"t": MIN_TIMESTAMP_NS, "value": 1}), NOW_NS)).ts_ns == MIN_TIMESTAMP_NS
    edge = NOW_NS + 300 * 10**9
    assert one_point(m.map("plant/a/b", js({"t": edge, "value": 1}), NOW_NS)).ts_ns == edge
    m = mapper(sub(timestamp_path="t", timestamp_unit="iso8601"))
    rejected(m.map("plant/a/b", js({"t": "1999-12-31T23:59:59Z", "value": 1}), NOW_NS), "timestamp_out_of_range")


def test_without_timestamp_path_the_receive_time_is_used() -> None:
    assert one_point(mapper().map("plant/a/b", js({"value": 1, "ts": 5}), NOW_NS)).ts_ns == NOW_NS


def test_a_retained_message_without_a_timestamp_is_refused_not_stamped_now() -> None:
    """The broker sends a topic's retained message at every subscribe, however old: the receive
    time would make it a reading of now."""
    rejected(mapper().map("plant/a/b", js({"value": 1}), NOW_NS, retained=True), "retained_without_timestamp")
    number = sub(topic="water/{meter}", kind="meter", carrier="water_intake", payload="number")
    rejected(mapper(number).map("water/intake-1", b"2500", NOW_NS, retained=True), "retained_without_timestamp")
    assert one_point(mapper().map("plant/a/b", js({"value": 1}), NOW_NS)).ts_ns == NOW_NS  # not retained: live


def test_a_retained_message_is_stored_at_its_time_and_observed_only_when_recent() -> None:
    m = mapper(sub(topic="plant/{equipment}", timestamp_path="t", timestamp_unit="s", values={"x": "x", "y": "y"}),
               retained_max_age_s=600)
    month_old = one_point_each(m.map("plant/a", js({"t": NOW_NS // 10**9 - 30 * 86_400, "x": 1, "y": 2}), NOW_NS,
                                     retained=True))
    assert [p.ts_ns for p in month_old] == [NOW_NS - 30 * 86_400 * 10**9] * 2
    assert all(p.store_only for p in month_old)  # stored, but no state of now for the plant model
    recent = one_point_each(m.map("plant/a", js({"t": NOW_NS // 10**9 - 600, "x": 1, "y": 2}), NOW_NS,
                                  retained=True))
    assert not any(p.store_only for p in recent)  # within offline_after_s: as good as a live sample
    live = one_point_each(m.map("plant/a", js({"t": NOW_NS // 10**9 - 30 * 86_400, "x": 1, "y": 2}), NOW_NS))
    assert not any(p.store_only for p in live)  # a late live message is the plant model's business
    # a meter takes a reading at its own time (an old one is a baseline or out of order): observed
    meter = mapper(sub(topic="m/{meter}", kind="meter", carrier="electricity", timestamp_path="t", timestamp_unit="s"))
    reading = one_point(meter.map("m/main", js({"t": NOW_NS // 10**9 - 86_400, "value": 5}), NOW_NS, retained=True))
    assert reading.ts_ns == NOW_NS - 86_400 * 10**9 and not reading.store_only


def one_point_each(result: MapResult) -> list[Point]:
    assert result.rejections == [], result.rejections
    return result.points


@pytest.mark.parametrize(("raw", "quality"), [(0, 0), (2_153_644_032, 2_153_644_032), (2**32 - 1, 2**32 - 1),
                                              (192.0, 192)])
def test_quality(raw: Any, quality: int) -> None:
    p = one_point(mapper(sub(quality_path="q")).map("plant/a/b", js({"q": raw, "value": 1}), NOW_NS))
    assert p.fields["quality"] == quality and type(p.fields["quality"]) is int


def test_quality_missing_means_good() -> None:
    assert one_point(mapper(sub(quality_path="q")).map("plant/a/b", js({"value": 1}), NOW_NS)).fields["quality"] == 0


@pytest.mark.parametrize("raw", [-1, 2**32, 1.5, "good", True, None, [0]])
def test_quality_invalid(raw: Any) -> None:
    rejected(mapper(sub(quality_path="q")).map("plant/a/b", js({"q": raw, "value": 1}), NOW_NS), "quality_invalid")


# --- several values per message -------------------------------------------------------------------


def test_values_give_several_points_and_missing_ones_are_rejected_alone() -> None:
    m = mapper(
        sub(
            topic="plant/{equipment}",
            values={"speed": "d.speed", "power": "d.p.0", "temp": "d.temp", "state": "d.state"},
            timestamp_path="ts",
            quality_path="q",
        )
    )
    payload = js({"ts": TS_MS, "q": 1, "d": {"speed": 412, "p": [7.5], "state": "RUN"}})
    result = m.map("plant/loom-7", payload, NOW_NS)
    got = {p.tags["signal"]: p for p in result.points}
    assert sorted(got) == ["power", "speed"]
    assert got["speed"].fields == {"value": 412.0, "quality": 1}
    assert got["power"].fields == {"value": 7.5, "quality": 1}
    assert {p.ts_ns for p in result.points} == {TS_MS * 10**6}
    assert {p.tags["equipment"] for p in result.points} == {"loom-7"}
    assert sorted(reasons(result)) == ["value_path_missing", "value_wrong_type"]
    # points never share a tags dict: a consumer that edits one does not edit the other
    assert got["speed"].tags is not got["power"].tags


def test_bad_timestamp_rejects_the_whole_message_once() -> None:
    m = mapper(sub(topic="plant/{equipment}", values={"a": "a", "b": "b"}, timestamp_path="ts"))
    rejected(m.map("plant/x", js({"ts": "soon", "a": 1, "b": 2}), NOW_NS), "timestamp_invalid")


def test_cached_routes_do_not_leak_between_messages() -> None:
    m = mapper()
    first = one_point(m.map("plant/a/b", b'{"value": 1}', NOW_NS))
    first.tags["equipment"] = "changed"
    second = one_point(m.map("plant/a/b", b'{"value": 2}', NOW_NS + 1))
    assert second.tags["equipment"] == "a" and second.fields["value"] == 2.0 and second.ts_ns == NOW_NS + 1
    rejected(m.map("plant/a\\x/b", b'{"value": 1}', NOW_NS), "name_backslash")
    rejected(m.map("plant/a\\x/b", b'{"value": 1}', NOW_NS), "name_backslash")  # cached rejection


# --- properties: no name or text can inject a point -------------------------------------------------

# every code point except '/' (the topic separator), lone surrogates included
segments = st.text(st.characters(exclude_characters="/", exclude_categories=()), max_size=24)


def assert_round_trip(result: MapResult) -> None:
    if result.rejections:
        assert result.points == []
        assert all(r.reason and r.detail for r in result.rejections)
        return
    (p,) = result.points
    line = lineprotocol.encode(p)
    assert "\n" not in line and "\r" not in line
    back = lineprotocol.parse(line)
    assert (back.measurement, back.tags, back.fields, back.ts_ns) == (p.measurement, p.tags, p.fields, p.ts_ns)


@settings(max_examples=400, deadline=None)
@given(equipment=segments, signal=segments)
def test_any_topic_segment_is_rejected_or_carried_exactly(equipment: str, signal: str) -> None:
    result = mapper().map(f"plant/{equipment}/{signal}", b'{"value": 1.25}', NOW_NS)
    assert_round_trip(result)
    if result.points:
        assert result.points[0].tags == {"enterprise": ENTERPRISE.id, "equipment": equipment, "signal": signal}


@settings(max_examples=200, deadline=None)
@given(meter=segments, carrier=st.sampled_from(["electricity", "steam"]) | segments)
def test_any_meter_segment_is_rejected_or_carried_exactly(meter: str, carrier: str) -> None:
    m = mapper(sub(topic="m/{carrier}/{meter}", kind="meter"))
    result = m.map(f"m/{carrier}/{meter}", b'{"value": 2}', NOW_NS)
    assert_round_trip(result)
    if result.points:
        assert result.points[0].tags["meter"] == meter


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(exclude_categories=()), max_size=40))
def test_any_text_value_is_rejected_or_carried_exactly(text: str) -> None:
    m = mapper(sub(value_type="text"))
    payload = json.dumps({"value": text}).encode()  # ensure_ascii: surrogates survive as \\udxxx
    result = m.map("plant/a/b", payload, NOW_NS)
    assert_round_trip(result)
    if result.points:
        assert result.points[0].fields["text"] == text


@settings(max_examples=200, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True) | st.integers(), scale=st.floats(-1e6, 1e6),
       offset=st.floats(-1e6, 1e6))
def test_any_number_is_rejected_or_finite(value: float, scale: float, offset: float) -> None:
    m = mapper(sub(scale=scale, offset=offset))
    result = m.map("plant/a/b", json.dumps({"value": value}).encode(), NOW_NS)
    assert_round_trip(result)
    if result.points:
        assert result.points[0].fields["value"] == float(value) * scale + offset
    else:
        assert reasons(result) == ["value_not_finite"]
