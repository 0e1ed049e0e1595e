"""InfluxDB line protocol: an encoder that never lets a name inject a second point, and a parser.

Written by hand rather than calling ``influxdb_client.Point`` because the agent encodes every
accepted point on its hot path, and because the library's ``Point`` *alters* names it cannot
carry: it turns a newline into the two characters ``\\n``, appends a space to a trailing
backslash, and a backslash before a comma or space shifts where InfluxDB ends the name. We
reject those instead, with a reason. For every name line protocol can carry, the output is
identical to ``influxdb_client``'s; ``tests/test_lineprotocol.py`` checks that with hypothesis.
"""

from __future__ import annotations

import functools
import math
import re

from fmc.core.points import FieldValue, Point

_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ "})
_ESCAPE_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_ESCAPE_STRING = str.maketrans({'"': r"\"", "\\": r"\\"})

# Control characters (newline above all) cannot be carried by line protocol: a newline would
# end the point and start another one written by whoever controls the name.
_UNCARRIABLE = re.compile(r"[\x00-\x1f\x7f]")

MAX_NAME_BYTES = 256  # InfluxDB rejects longer keys in practice; names come from config or topics
MAX_STRING_FIELD_BYTES = 64 * 1024


class LineProtocolError(ValueError):
    """A point that line protocol cannot carry faithfully. ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_name(kind: str, name: str) -> None:
    """Raise LineProtocolError unless ``name`` can be written as a measurement, key or tag value."""
    if not isinstance(name, str):
        raise LineProtocolError("name_type", f"{kind} must be text, got {type(name).__name__}")
    if name == "":
        raise LineProtocolError("name_empty", f"{kind} is empty")
    if _UNCARRIABLE.search(name):
        raise LineProtocolError("name_control_char", f"{kind} {name!r} contains a newline or control character")
    if "\\" in name:
        # A backslash escapes the next character in InfluxDB's scanner, so "a\\" before a comma
        # or space would shift where the name ends; rare in real names, so refused outright.
        raise LineProtocolError("name_backslash", f"{kind} {name!r} contains a backslash")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 form, so nothing a store can hold
        raise LineProtocolError("name_not_utf8", f"{kind} {name!r} is not valid unicode") from None
    if size > MAX_NAME_BYTES:
        raise LineProtocolError("name_too_long", f"{kind} is longer than {MAX_NAME_BYTES} bytes")


def _field_value(key: str, value: FieldValue) -> str:
    # bool before int: bool is a subclass of int
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError("value_not_finite", f"field {key!r} is {value}")
        s = repr(value)
        return s[:-2] if s.endswith(".0") else s
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise LineProtocolError("value_control_char", f"string field {key!r} contains a newline")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise LineProtocolError("value_not_utf8", f"string field {key!r} is not valid unicode") from None
        if size > MAX_STRING_FIELD_BYTES:
            raise LineProtocolError("value_too_long", f"string field {key!r} is too long")
        return '"' + value.translate(_ESCAPE_STRING) + '"'
    raise LineProtocolError("value_type", f"field {key!r} has unsupported type {type(value).__name__}")


def encode_series(measurement: str, tags: dict[str, str]) -> str:
    """The series part of a line: escaped measurement and sorted, escaped tags."""
    check_name("measurement", measurement)
    if measurement.startswith("#"):
        raise LineProtocolError("name_comment", "measurement starts with '#' (a comment)")
    parts = [measurement.translate(_ESCAPE_MEASUREMENT)]
    for key in sorted(tags):
        value = tags[key]
        check_name("tag key", key)
        check_name(f"tag {key!r}", value)
        parts.append(f",{key.translate(_ESCAPE_KEY)}={value.translate(_ESCAPE_KEY)}")
    return "".join(parts)


@functools.lru_cache(maxsize=4096)
def _field_key(key: str) -> str:
    # field keys come from code and config, a handful of them: check and escape each once
    check_name("field key", key)
    return key.translate(_ESCAPE_KEY)


def field_type(value: FieldValue) -> str:
    """InfluxDB's name for the type of a field value."""
    if isinstance(value, bool):  # before int: bool is a subclass of int
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"


def encode(point: Point) -> str:
    """One line of line protocol (no trailing newline), nanosecond precision."""
    series = point.series if point.series is not None else encode_series(point.measurement, point.tags)
    if not point.fields:
        raise LineProtocolError("no_fields", "point has no fields")
    fields = point.fields
    parts = []
    for k in sorted(fields):
        value = fields[k]
        # the usual field (a finite float) without _field_value's chain of isinstance checks
        if type(value) is float and value - value == 0.0:  # finite: inf - inf and nan - nan are nan
            text = repr(value)
            parts.append(f"{_field_key(k)}={text[:-2] if text.endswith('.0') else text}")
        else:
            parts.append(f"{_field_key(k)}={_field_value(k, value)}")
    body = ",".join(parts)
    ts = point.ts_ns
    if type(ts) is not int:
        raise LineProtocolError("timestamp_type", "timestamp is not an integer")
    return f"{series} {body} {ts}"


# --- parser ------------------------------------------------------------------------------------
# Used by the embedded store, which receives the same lines the InfluxDB sink sends. It parses
# what ``encode`` writes (the subset of line protocol fmc produces), nothing more.


def _split_unescaped(s: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split on ``sep`` where it is not escaped by a backslash (measurement, tag and field keys)."""
    out: list[str] = []
    buf: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            buf.append(s[i : i + 2])
            i += 2
            continue
        if c == sep and (maxsplit < 0 or len(out) < maxsplit):
            out.append("".join(buf))
            buf = []
        else:
            buf.append(c)
        i += 1
    out.append("".join(buf))
    return out


def _unescape(s: str) -> str:
    return re.sub(r"\\([, =])", r"\1", s)


def _parse_fields(s: str) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {}
    i, n = 0, len(s)
    while i < n:
        # key: up to the first unescaped '='
        j = i
        while s[j] != "=":
            j += 2 if s[j] == "\\" else 1
        key = _unescape(s[i:j])
        j += 1
        if j < n and s[j] == '"':
            k = j + 1
            while s[k] != '"':
                k += 2 if s[k] == "\\" else 1
            fields[key] = re.sub(r'\\(["\\])', r"\1", s[j + 1 : k])
            i = k + 2  # past the closing quote and the comma
        else:
            k = s.find(",", j)
            k = n if k < 0 else k
            fields[key] = _parse_scalar(s[j:k])
            i = k + 1
    return fields


def _parse_scalar(raw: str) -> FieldValue:
    if raw in ("true", "t", "T", "True", "TRUE"):
        return True
    if raw in ("false", "f", "F", "False", "FALSE"):
        return False
    if raw.endswith("i"):
        return int(raw[:-1])
    return float(raw)


def parse(line: str) -> Point:
    """Parse one line written by :func:`encode` (always with a timestamp) back into a Point.

    Raises LineProtocolError("parse", …) for anything else.
    """
    try:
        return _parse(line)
    except (ValueError, IndexError) as e:
        raise LineProtocolError("parse", f"not a line fmc writes: {line[:80]!r}") from e


def _parse(line: str) -> Point:
    if "\n" in line:
        raise ValueError("newline")
    rest, ts = line.rsplit(" ", 1)
    head, fields_raw = _split_unescaped(rest, " ", 1)
    key_parts = _split_unescaped(head, ",")
    tags: dict[str, str] = {}
    for kv in key_parts[1:]:
        k, v = _split_unescaped(kv, "=", 1)
        tags[_unescape(k)] = _unescape(v)
    return Point(_unescape(key_parts[0]), tags, _parse_fields(fields_raw), int(ts))


def series_and_time(line: str) -> tuple[str, int]:
    """The series (measurement and tags, escaped as in the line) and the timestamp of a line
    :func:`encode` wrote: a store keeps one point per series and timestamp, the last one written.

    Raises LineProtocolError("parse", …) for a line without both.
    """
    try:
        end = line.index(" ")
        # an escaped space inside a name; names never hold a backslash, so a backslash is an escape
        while end > 0 and line[end - 1] == "\\":
            end = line.index(" ", end + 1)
        if end == 0:
            raise ValueError("no measurement")
        return line[:end], int(line[line.rindex(" ") + 1 :])
    except ValueError as e:
        raise LineProtocolError("parse", f"not a line fmc writes: {line[:80]!r}") from e
