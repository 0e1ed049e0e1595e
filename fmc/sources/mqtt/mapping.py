"""MQTT messages -> points. Pure (no I/O, no clock): the adapter passes the receive time in.

Everything a message can get wrong is a ``Rejection`` with a short ``reason`` (a metric label)
and a ``detail`` for people; nothing raises. The work that depends only on the topic (which
subscription, which tags, are the names writable) is done once per topic and cached, so the
hot path per message is: one dict lookup, ``load_json``, a few dict lookups, one ``Point``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from fmc.agent.plugin import MIN_TIMESTAMP_NS, MapResult, Rejection
from fmc.core.carriers import CARRIERS
from fmc.core.config import TEMPLATE_FIELD, EnterpriseConfig
from fmc.core.jsondoc import load_json
from fmc.core.lineprotocol import MAX_STRING_FIELD_BYTES, LineProtocolError, check_name, encode_series
from fmc.core.points import FieldValue, Point, Priority
from fmc.sources.mqtt.config import Subscription

MAX_QUALITY = 2**32 - 1  # OPC UA StatusCode is a UInt32
# Topics are bounded by the plant's equipment (each becomes a series anyway); the cap only stops
# a misbehaving publisher with random topics from growing this cache without limit.
ROUTE_CACHE_MAX = 20_000
_DETAIL_MAX = 120
_TIMESTAMP_FACTORS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
# fromisoformat keeps only microseconds; the fraction of the seconds (after hh:mm:ss or hhmmss) is cut
# out first so nanoseconds survive (digits past the ninth are dropped); a fraction of the minutes or
# hours (08:30.5 is 08:30:30 in ISO 8601) is refused: Python's fromisoformat would read it as seconds
_ISO_FRACTION = re.compile(r"(?:(?<=:\d\d:\d\d)|(?<=[Tt ]\d{6}))[.,](\d+)(?=$|[Zz+\-])")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Missing:
    """Sentinel for 'no such path' (JSON null is a value, Python None is not a marker here)."""

    __slots__ = ()


_MISSING = _Missing()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"


class _Path:
    """A dotted JSON path ("d.values.0.v"); a digit step indexes a list or names a dict key."""

    __slots__ = ("single", "steps", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        # "" means the whole document (a bare JSON number or string)
        parts = text.split(".") if text else []
        self.steps: tuple[tuple[str, int | None], ...] = tuple(
            (p, int(p) if p.isdigit() else None) for p in parts
        )
        self.single = parts[0] if len(parts) == 1 else None

    def get(self, doc: object) -> object:
        if self.single is not None and type(doc) is dict:  # the common case: {"value": …}
            return doc.get(self.single, _MISSING)
        current = doc
        for key, index in self.steps:
            if type(current) is dict:
                current = current.get(key, _MISSING)
                if current is _MISSING:
                    return _MISSING
            elif type(current) is list and index is not None and index < len(current):
                current = current[index]
            else:
                return _MISSING
        return current


class _Template:
    """A name template such as "loom-{equipment}" over the topic's named segments."""

    __slots__ = ("fixed", "text")

    def __init__(self, text: str, setting: str) -> None:
        self.text = text
        self.fixed = TEMPLATE_FIELD.search(text) is None
        # Fail at start for literal text no topic could ever make writable (a backslash, a
        # control character): otherwise every message would be rejected at run time.
        try:
            check_name(setting, TEMPLATE_FIELD.sub("x", text))
        except (LineProtocolError, UnicodeEncodeError) as e:
            raise ValueError(f"{setting} = {text!r} cannot be written to the store: {e}") from None

    def expand(self, captures: dict[str, str]) -> str:
        if self.fixed:
            return self.text
        return TEMPLATE_FIELD.sub(lambda m: captures[m.group(1)], self.text)


class _TopicPattern:
    """A compiled topic template: literal segments, '+', '{name}' captures, a trailing '#'."""

    __slots__ = ("captures", "literals", "multi", "n_fixed")

    def __init__(self, template: str) -> None:
        segments = template.split("/")
        self.multi = segments[-1] == "#"
        if self.multi:
            segments = segments[:-1]
        self.n_fixed = len(segments)
        literals: list[tuple[int, str]] = []
        captures: list[tuple[int, str]] = []
        for i, seg in enumerate(segments):
            named = TEMPLATE_FIELD.fullmatch(seg)
            if named:
                captures.append((i, named.group(1)))
            elif seg != "+":
                literals.append((i, seg))
        self.literals = tuple(literals)
        self.captures = tuple(captures)

    def match(self, parts: list[str]) -> dict[str, str] | None:
        # MQTT: "a/#" also matches "a" itself, so '#' accepts zero or more further segments
        if len(parts) != self.n_fixed and not (self.multi and len(parts) >= self.n_fixed):
            return None
        for i, literal in self.literals:
            if parts[i] != literal:
                return None
        return {name: parts[i] for i, name in self.captures}


@dataclass(slots=True, frozen=True)
class _Route:
    """What one topic resolves to: its subscription and, per point, the tags and the value path."""

    sub: _CompiledSubscription
    targets: tuple[tuple[dict[str, str], _Path, str], ...]  # tags, value path, encoded series


class _CompiledSubscription:
    __slots__ = (
        "carrier",
        "carriers",
        "index",
        "is_json",
        "is_text",
        "kind",
        "measurement",
        "name_templates",
        "offset",
        "pattern",
        "quality_path",
        "scale",
        "scaled",
        "timestamp_factor",
        "timestamp_path",
        "topic",
        "value_path",
        "values",
    )

    def __init__(self, index: int, sub: Subscription, carriers: Collection[str]) -> None:
        where = f"subscribe[{index}] ({sub.topic})"
        self.index = index
        self.topic = sub.topic
        self.pattern = _TopicPattern(sub.topic)
        self.kind = sub.kind
        self.is_json = sub.payload == "json"
        self.is_text = sub.value_type == "text"
        self.value_path = _Path(sub.value_path)
        self.values: tuple[tuple[str, _Path], ...] | None = None
        self.carriers = carriers
        self.carrier: _Template | None = None
        if sub.kind == "signal":
            self.measurement = "signal"
            assert sub.equipment is not None  # filled in by the config's validator
            self.name_templates = {"equipment": _Template(sub.equipment, f"{where} equipment")}
            if sub.values is not None:
                for name in sub.values:
                    if TEMPLATE_FIELD.search(name):
                        raise ValueError(f"{where} values: signal names are fixed, got template {name!r}")
                    _Template(name, f"{where} values signal")  # same start-up check
                self.values = tuple((name, _Path(path)) for name, path in sub.values.items())
            else:
                assert sub.signal is not None
                self.name_templates["signal"] = _Template(sub.signal, f"{where} signal")
        else:
            self.measurement = "meter_reading"
            assert sub.meter is not None and sub.carrier is not None
            self.name_templates = {"meter": _Template(sub.meter, f"{where} meter")}
            self.carrier = _Template(sub.carrier, f"{where} carrier")
            if self.carrier.fixed and self.carrier.text not in carriers:
                raise ValueError(f"{where} carrier {self.carrier.text!r} is not one of {sorted(carriers)}")
        self.timestamp_path = _Path(sub.timestamp_path) if sub.timestamp_path is not None else None
        self.timestamp_factor = _TIMESTAMP_FACTORS.get(sub.timestamp_unit)  # None: ISO 8601 text
        self.quality_path = _Path(sub.quality_path) if sub.quality_path is not None else None
        self.scale = float(sub.scale)
        self.offset = float(sub.offset)
        self.scaled = self.scale != 1.0 or self.offset != 0.0

    def route(self, captures: dict[str, str], enterprise_id: str) -> _Route | Rejection:
        tags = {"enterprise": enterprise_id}
        try:
            for tag, template in self.name_templates.items():
                name = template.expand(captures)
                check_name(tag, name)
                tags[tag] = name
            if self.carrier is not None:
                carrier = self.carrier.expand(captures)
                if carrier not in self.carriers:
                    return Rejection("unknown_carrier", f"carrier {_short(carrier)} is not one of the known carriers")
                tags["carrier"] = carrier
        except LineProtocolError as e:
            return Rejection(e.reason, e.detail)
        except UnicodeEncodeError:  # a lone surrogate: not text any store can hold
            return Rejection("name_not_utf8", f"topic segment {_short(captures)} is not valid Unicode")
        if self.values is None:
            targets = [(tags, self.value_path)]
        else:
            targets = [({**tags, "signal": name}, path) for name, path in self.values]
        try:
            return _Route(self, tuple((t, path, encode_series(self.measurement, t)) for t, path in targets))
        except LineProtocolError as e:
            return Rejection(e.reason, e.detail)


class Mapper:
    """Turns one source's messages into points, by its subscriptions (first match wins)."""

    def __init__(
        self,
        enterprise: EnterpriseConfig,
        subscriptions: Sequence[Subscription],
        *,
        max_payload_bytes: int = 256 * 1024,
        max_future_s: float = 300.0,
        retained_max_age_s: float = 600.0,
        carriers: Collection[str] = CARRIERS,
    ) -> None:
        self._enterprise_id = enterprise.id
        self._subs = [_CompiledSubscription(i, s, frozenset(carriers)) for i, s in enumerate(subscriptions)]
        self._max_payload_bytes = max_payload_bytes
        self._max_future_ns = int(max_future_s * 1e9)
        # a retained signal older than this (the plant's offline_after_s) is stored, not observed
        self._retained_max_age_ns = int(retained_max_age_s * 1e9)
        self._routes: dict[str, _Route | Rejection] = {}

    def map(self, topic: str, payload: bytes, received_ns: int, retained: bool = False) -> MapResult:
        """``retained``: the broker's stored last message of the topic, sent because we subscribed
        (the PUBLISH's RETAIN flag), of any age. Without a device timestamp it is refused
        (``retained_without_timestamp``): the receive time would make an old value a reading of
        now. With one it is stored at its own time; a signal older than ``retained_max_age_s`` is
        marked ``store_only``: the plant model's trackers apply a late sample at their cursor, as
        the state of now. (A meter reading is not: meters take a reading at its own time, an old
        one as a baseline or as out of order, docs/plant-semantics.md.)"""
        if len(payload) > self._max_payload_bytes:
            return self.too_large(len(payload))
        route = self._routes.get(topic)
        if route is None:
            route = self._resolve(topic)
            if len(self._routes) >= ROUTE_CACHE_MAX:
                self._routes.clear()
            self._routes[topic] = route
        if type(route) is Rejection:
            return MapResult([], [route])
        assert isinstance(route, _Route)
        if retained and route.sub.timestamp_path is None:
            return _reject("retained_without_timestamp", "a retained message (the broker's last one on the topic, "
                           "sent at subscribe) without timestamp_path: its time is unknown")
        if route.sub.is_json:
            return self._map_json(route, payload, received_ns, retained)
        return self._map_plain(route, payload, received_ns)

    def too_large(self, size: int) -> MapResult:
        """The rejection of a payload of ``size`` bytes, more than max_payload_bytes (also for one
        the source did not read whole)."""
        return _reject("payload_too_large", f"{size} bytes, more than {self._max_payload_bytes}")

    def _resolve(self, topic: str) -> _Route | Rejection:
        parts = topic.split("/")
        for sub in self._subs:
            captures = sub.pattern.match(parts)
            if captures is not None:
                return sub.route(captures, self._enterprise_id)
        return Rejection("topic_unmatched", f"no subscription matches topic {_short(topic)}")

    # --- payloads ------------------------------------------------------------------------

    def _map_json(self, route: _Route, payload: bytes, received_ns: int, retained: bool) -> MapResult:
        sub = route.sub
        try:
            doc = load_json(payload)
        except UnicodeDecodeError as e:
            return _reject("payload_not_utf8", f"byte {e.start} is not UTF-8")
        except (ValueError, RecursionError) as e:
            return _reject("payload_not_json", str(e)[:_DETAIL_MAX])

        if sub.timestamp_path is None:
            ts_ns: int | Rejection = received_ns
        else:
            ts_ns = self._timestamp(sub, sub.timestamp_path.get(doc), received_ns)
            if type(ts_ns) is Rejection:
                return MapResult([], [ts_ns])
        quality: int | Rejection = 0
        if sub.quality_path is not None:
            quality = _quality(sub.quality_path, sub.quality_path.get(doc))
            if type(quality) is Rejection:
                return MapResult([], [quality])
        assert type(ts_ns) is int and type(quality) is int

        points: list[Point] = []
        rejections: list[Rejection] = []
        for tags, path, series in route.targets:
            raw = path.get(doc)
            if raw is _MISSING:
                rejections.append(Rejection("value_path_missing", f"no value at {path.text!r}"))
                continue
            field = _text_field(raw, path.text) if sub.is_text else _number_field(sub, raw, path.text)
            if type(field) is Rejection:
                rejections.append(field)
                continue
            fields: dict[str, FieldValue] = {"text" if sub.is_text else "value": field, "quality": quality}
            points.append(Point(sub.measurement, tags.copy(), fields, ts_ns, Priority.RAW, series))
        if retained and sub.kind == "signal" and ts_ns < received_ns - self._retained_max_age_ns:
            for point in points:  # a value of the past: stored, but no state of now
                point.store_only = True
        return MapResult(points, rejections)

    def _map_plain(self, route: _Route, payload: bytes, received_ns: int) -> MapResult:
        sub = route.sub
        tags, _, series = route.targets[0]
        if sub.is_text:
            try:
                text = payload.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                return _reject("payload_not_utf8", f"byte {e.start} is not UTF-8")
            field: float | str | Rejection = _text_field(text, "(payload)")
        else:
            # float() alone would also take "1_000" and non-ASCII digits; a meter's text is ASCII
            if not payload.isascii() or b"_" in payload:
                return _reject("payload_not_number", f"{_short(bytes(payload[:40]))} is not a decimal number")
            try:
                value = float(payload)
            except ValueError:
                return _reject("payload_not_number", f"{_short(bytes(payload[:40]))} is not a decimal number")
            field = _number_field(sub, value, "(payload)")
        if type(field) is Rejection:
            return MapResult([], [field])
        key = "text" if sub.is_text else "value"
        return MapResult([Point(sub.measurement, tags.copy(), {key: field, "quality": 0}, received_ns, Priority.RAW,
                                series)], [])

    def _timestamp(self, sub: _CompiledSubscription, raw: object, received_ns: int) -> int | Rejection:
        assert sub.timestamp_path is not None
        where = sub.timestamp_path.text
        if raw is _MISSING:
            return Rejection("timestamp_invalid", f"no timestamp at {where!r}")
        factor = sub.timestamp_factor
        if factor is None:
            if type(raw) is not str:
                return Rejection("timestamp_invalid", f"{where!r} is {_short(raw)}, not ISO 8601 text")
            ts_ns = _iso8601_ns(raw)
            if ts_ns is None:
                return Rejection(
                    "timestamp_invalid", f"{where!r} is {_short(raw)}: need ISO 8601 with a UTC offset or Z"
                )
        elif type(raw) is int:
            ts_ns = raw * factor
        elif type(raw) is float and math.isfinite(raw):
            whole = int(raw)  # split so seconds with a fraction keep their precision
            ts_ns = whole * factor + round((raw - whole) * factor)
        else:
            return Rejection("timestamp_invalid", f"{where!r} is {_short(raw)}, not a number")
        if ts_ns < MIN_TIMESTAMP_NS or ts_ns > received_ns + self._max_future_ns:
            return Rejection("timestamp_out_of_range", f"{where!r} = {_short(raw)} is before 2000 or in the future")
        return ts_ns


def _reject(reason: str, detail: str) -> MapResult:
    return MapResult([], [Rejection(reason, detail)])


def _number_field(sub: _CompiledSubscription, raw: object, where: str) -> float | Rejection:
    kind = type(raw)
    if kind is float:
        value: float = raw  # type: ignore[assignment]
    elif kind is int:
        try:
            value = float(raw)  # type: ignore[arg-type]
        except OverflowError:
            return Rejection("value_not_finite", f"{where!r} is too large for a float")
    else:  # bool, str, None, dict, list: a device sending "12.5" as text is a bug to see, not guess
        return Rejection("value_wrong_type", f"{where!r} is {_short(raw)}, not a JSON number")
    if not math.isfinite(value):
        return Rejection("value_not_finite", f"{where!r} is {value}")
    if sub.scaled:
        value = value * sub.scale + sub.offset
        if not math.isfinite(value):
            return Rejection("value_not_finite", f"{where!r} becomes {value} after scale and offset")
    return value


def _text_field(raw: object, where: str) -> str | Rejection:
    if type(raw) is not str:
        return Rejection("value_wrong_type", f"{where!r} is {_short(raw)}, not text")
    if "\n" in raw or "\r" in raw:  # line protocol cannot carry them in a string field
        return Rejection("value_control_char", f"{where!r} contains a line break")
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:  # "\ud800" escapes in JSON decode to lone surrogates
        return Rejection("value_not_utf8", f"{where!r} contains a lone surrogate")
    if size > MAX_STRING_FIELD_BYTES:
        return Rejection("value_too_long", f"{where!r} is {size} bytes, more than {MAX_STRING_FIELD_BYTES}")
    return raw


def _quality(path: _Path, raw: object) -> int | Rejection:
    if raw is _MISSING:
        return 0  # OPC UA JSON encodings leave StatusCode out when it is Good (0)
    if type(raw) is int and 0 <= raw <= MAX_QUALITY:
        return raw
    if type(raw) is float and raw.is_integer() and 0 <= raw <= MAX_QUALITY:
        return int(raw)
    return Rejection("quality_invalid", f"{path.text!r} is {_short(raw)}, not an integer 0..{MAX_QUALITY}")


def _iso8601_ns(text: str) -> int | None:
    """ISO 8601 with an offset or Z -> ns since the epoch (nanosecond fractions kept); naive -> None."""
    fraction_ns = 0
    m = _ISO_FRACTION.search(text)
    if m is not None:
        digits = m.group(1)[:9]
        fraction_ns = int(digits.ljust(9, "0"))
        text = text[: m.start()] + text[m.end() :]
    if "." in text or "," in text:  # a fraction of the minutes or hours, or a stray one
        return None
    if text.endswith("z"):  # RFC 3339 (5.6) allows a lower-case z, which fromisoformat refuses
        text = text[:-1] + "Z"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None or dt.utcoffset() is None:
        return None
    delta = dt - _EPOCH
    # microseconds are 0 when the fraction was cut out above; kept for forms the regex missed
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000 + fraction_ns
