"""The line-protocol encoder against influxdb-client's Point, and against injection."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from influxdb_client import Point as ClientPoint

from fmc.core.lineprotocol import LineProtocolError, encode, encode_series, parse, series_and_time
from fmc.core.points import Point

# Any unicode text, including the characters line protocol must escape.
names = st.text(min_size=1, max_size=30)
specials = st.text(alphabet=" ,=\"'\\\n\r\tabcé中", min_size=1, max_size=12)
any_name = st.one_of(names, specials)
field_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(max_size=40),
)


def _carriable(s: str) -> bool:
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in s) and "\\" not in s and len(s.encode()) <= 256


@settings(max_examples=400)
@given(
    measurement=any_name,
    tags=st.dictionaries(any_name, any_name, max_size=4),
    fields=st.dictionaries(any_name, field_values, min_size=1, max_size=4),
    ts=st.integers(min_value=0, max_value=2**62),
)
def test_same_bytes_as_influxdb_client_or_rejected(measurement, tags, fields, ts):
    point = Point(measurement, tags, fields, ts)
    names_ok = all(_carriable(n) for n in [measurement, *tags, *tags.values(), *fields])
    strings_ok = all("\n" not in v and "\r" not in v for v in fields.values() if isinstance(v, str))
    if not (names_ok and strings_ok) or measurement.startswith("#"):
        with pytest.raises(LineProtocolError) as info:
            encode(point)
        assert info.value.reason
        return
    line = encode(point)
    expected = ClientPoint(measurement)
    for k, v in tags.items():
        expected.tag(k, v)
    for k, v in fields.items():
        expected.field(k, v)
    expected.time(ts)
    assert line == expected.to_line_protocol()
    # a point the encoder accepts is exactly one line and parses back to itself
    assert "\n" not in line
    back = parse(line)
    assert (back.measurement, back.tags, back.ts_ns) == (measurement, tags, ts)
    # what a store keeps one point of (the spool's dead letters are matched by it)
    assert series_and_time(line) == (encode_series(measurement, tags), ts)
    for k, v in fields.items():
        assert type(back.fields[k]) is type(v)
        assert back.fields[k] == v


@given(value=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_rejected(value):
    with pytest.raises(LineProtocolError) as info:
        encode(Point("signal", {"equipment": "m1"}, {"value": value}, 1))
    assert info.value.reason == "value_not_finite"


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ({"equipment": "m1\nsignal,equipment=evil value=1 1"}, "name_control_char"),
        ({"equipment": "m1\r"}, "name_control_char"),
        ({"equipment": "a\\"}, "name_backslash"),
        ({"equipment": ""}, "name_empty"),
        ({"equipment": "x" * 300}, "name_too_long"),
    ],
)
def test_injection_through_a_tag_is_refused(tags, reason):
    with pytest.raises(LineProtocolError) as info:
        encode(Point("signal", tags, {"value": 1.0}, 1))
    assert info.value.reason == reason


def test_escaping_of_each_special_character():
    line = encode(Point("sig nal,x", {"a b": 'c,d=e "f"'}, {"k=1": 'say "hi" \\ there'}, 5))
    assert line == 'sig\\ nal\\,x,a\\ b=c\\,d\\=e\\ "f" k\\=1="say \\"hi\\" \\\\ there" 5'


def test_comment_measurement_and_empty_fields_refused():
    with pytest.raises(LineProtocolError):
        encode(Point("#signal", {}, {"v": 1.0}, 1))
    with pytest.raises(LineProtocolError) as info:
        encode(Point("signal", {}, {}, 1))
    assert info.value.reason == "no_fields"


def test_field_types_are_distinct_on_the_wire():
    line = encode(Point("m", {}, {"b": True, "f": 2.0, "i": 2, "s": "2"}, 7))
    assert line == 'm b=true,f=2,i=2i,s="2" 7'
    back = parse(line)
    # "2" (float written without ".0") reads back as a float, "2i" as an int
    assert back.fields == {"b": True, "f": 2.0, "i": 2, "s": "2"}
    assert isinstance(back.fields["f"], float)


@given(ts=st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_timestamps_are_exact_integers(ts):
    line = encode(Point("m", {}, {"v": 1.0}, ts))
    assert line.endswith(f" {ts}")
    assume(ts >= 0)
    assert parse(line).ts_ns == ts


@pytest.mark.parametrize("line", ["", "m", "m v=1", "m v 1", 'm v="open 1', "m,t v=1 x", "m v=1\nm v=2 3", "m v=abc 1"])
def test_parse_refuses_malformed_lines(line):
    with pytest.raises(LineProtocolError) as info:
        parse(line)
    assert info.value.reason == "parse"


@pytest.mark.parametrize("line", ["", "m", "m v=1", "m v=1 x", " v=1 1", "p2,seq=3 v=eee"])
def test_series_and_time_refuses_a_line_without_both(line):
    with pytest.raises(LineProtocolError) as info:
        series_and_time(line)
    assert info.value.reason == "parse"


def test_lone_surrogates_are_refused_with_a_reason():
    with pytest.raises(LineProtocolError) as info:
        encode(Point("signal", {"equipment": "m\ud800"}, {"value": 1.0}, 1))
    assert info.value.reason == "name_not_utf8"
    with pytest.raises(LineProtocolError) as info:
        encode(Point("signal", {"equipment": "m"}, {"text": "x\udfff"}, 1))
    assert info.value.reason == "value_not_utf8"
