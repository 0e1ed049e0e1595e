"""Sparkplug metrics -> points, by path templates. Pure (no I/O, no clock).

A metric's **path** is ``group/node/device/metric name`` (``level = "device"``) or
``group/node/metric name`` (``level = "node"``); a metric name's own ``/`` separate further levels,
so ``Inputs/Spindle Speed`` is two. A template matches level by level: literal text, ``+`` (any one
level), ``{name}`` (one level, captured), and as the last segment ``{name*}`` (one level or more,
captured with their slashes) or ``#`` (any further levels, none included). The first
``[[sparkplug.metric]]`` whose template matches wins; what it resolves to is cached per path.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from fmc.agent.plugin import MIN_TIMESTAMP_NS, Rejection
from fmc.core.carriers import CARRIERS
from fmc.core.lineprotocol import MAX_STRING_FIELD_BYTES, LineProtocolError, check_name, encode_series
from fmc.core.points import FieldValue, Point, Priority
from fmc.core.quality import BAD, BAD_NO_COMMUNICATION
from fmc.sources.sparkplug.config import MetricMap
from fmc.sources.sparkplug.paths import PathTemplate
from fmc.sources.sparkplug.payload import BDSEQ, fmc_quality, raw_name, value_of
from fmc.sources.sparkplug.session import Resolved

NAME_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# the protocol's own metrics: never data, never a rejection
PROTOCOL_METRICS = (BDSEQ, "Node Control/*", "Device Control/*")
ROUTE_CACHE_MAX = 20_000  # paths are bounded by the plant's metrics; the cap only bounds a misbehaving node
_DETAIL_MAX = 120


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"


class _Template:
    """A target name such as "loom-{equipment}" over a path's captures."""

    __slots__ = ("fixed", "text")

    def __init__(self, text: str, setting: str) -> None:
        self.text = text
        self.fixed = NAME_FIELD.search(text) is None
        try:
            check_name(setting, NAME_FIELD.sub("x", text))
        except (LineProtocolError, UnicodeEncodeError) as e:
            raise ValueError(f"{setting} = {text!r} cannot be written to the store: {e}") from None

    def expand(self, captures: dict[str, str]) -> str:
        return self.text if self.fixed else NAME_FIELD.sub(lambda m: captures[m.group(1)], self.text)


@dataclass(frozen=True, slots=True)
class _Route:
    measurement: str
    tags: dict[str, str]
    series: str
    scale: float
    offset: float

    @property
    def is_signal(self) -> bool:
        return self.measurement == "signal"


class _Compiled:
    __slots__ = ("carrier", "kind", "level", "measurement", "names", "offset", "pattern", "scale")

    def __init__(self, index: int, spec: MetricMap, carriers: Collection[str]) -> None:
        where = f"metric[{index}] ({spec.path})"
        self.pattern = PathTemplate(spec.path)
        self.level = spec.level
        self.kind = spec.kind
        self.carrier: _Template | None = None
        if spec.kind == "signal":
            self.measurement = "signal"
            assert spec.equipment is not None and spec.signal is not None
            self.names = {"equipment": _Template(spec.equipment, f"{where} equipment"),
                          "signal": _Template(spec.signal, f"{where} signal")}
        else:
            self.measurement = "meter_reading"
            assert spec.meter is not None and spec.carrier is not None
            self.names = {"meter": _Template(spec.meter, f"{where} meter")}
            self.carrier = _Template(spec.carrier, f"{where} carrier")
            if self.carrier.fixed and self.carrier.text not in carriers:
                raise ValueError(f"{where} carrier {self.carrier.text!r} is not one of {sorted(carriers)}")
        self.scale = float(spec.scale)
        self.offset = float(spec.offset)

    def route(self, captures: dict[str, str], enterprise_id: str, carriers: Collection[str]) -> _Route | Rejection:
        tags = {"enterprise": enterprise_id}
        try:
            for tag, template in self.names.items():
                name = template.expand(captures)
                check_name(tag, name)
                tags[tag] = name
            if self.carrier is not None:
                carrier = self.carrier.expand(captures)
                if carrier not in carriers:
                    return Rejection("unknown_carrier", f"carrier {_short(carrier)} is not one of the known carriers")
                tags["carrier"] = carrier
            return _Route(self.measurement, tags, encode_series(self.measurement, tags), self.scale, self.offset)
        except LineProtocolError as e:
            return Rejection(e.reason, e.detail)
        except UnicodeEncodeError:
            return Rejection("name_not_utf8", f"{_short(captures)} is not valid Unicode")


class Mapper:
    """One source's metrics to points, by its maps (first match wins)."""

    def __init__(self, enterprise_id: str, maps: Sequence[MetricMap], *, ignore: Sequence[str] = (),
                 max_future_s: float = 300.0, carriers: Collection[str] = CARRIERS) -> None:
        self._enterprise_id = enterprise_id
        self._carriers = frozenset(carriers)
        self._maps = [_Compiled(i, m, self._carriers) for i, m in enumerate(maps)]
        self._ignore = tuple(ignore)
        self._max_future_ns = int(max_future_s * 1e9)
        self._routes: dict[tuple[str, str, str | None, str], _Route | Rejection | None] = {}

    def route(self, group: str, node: str, device: str | None, metric: str) -> _Route | Rejection | None:
        """Where a metric goes; None: a metric to ignore (the protocol's own, or ``ignore_metrics``)."""
        key = (group, node, device, metric)
        found = self._routes.get(key, False)
        if found is not False:
            return found  # type: ignore[return-value]
        route = self._resolve(group, node, device, metric)
        if len(self._routes) >= ROUTE_CACHE_MAX:
            self._routes.clear()
        self._routes[key] = route
        return route

    def _resolve(self, group: str, node: str, device: str | None, metric: str) -> _Route | Rejection | None:
        raw = raw_name(metric)
        if raw is not None:  # no template can be matched against it, nor a tag written from it
            return Rejection("name_not_utf8", f"the metric name {_short(raw)} is not valid UTF-8 "
                                              "(Sparkplug names are UTF-8: the edge node sends another encoding)")
        if any(fnmatch.fnmatchcase(metric, pattern) for pattern in PROTOCOL_METRICS):
            return None  # even under a catch-all map: bdSeq and Node Control/Rebirth are no plant data
        level = "node" if device is None else "device"
        levels = [group, node] + ([] if device is None else [device]) + metric.split("/")
        for m in self._maps:
            if m.level != level:
                continue
            captures = m.pattern.match(levels)
            if captures is not None:
                return m.route(captures, self._enterprise_id, self._carriers)
        if any(fnmatch.fnmatchcase(metric, pattern) for pattern in self._ignore):
            return None
        path = "/".join(levels)
        return Rejection("metric_unmatched", f"no [[sparkplug.metric]] matches the {level} metric {_short(path)}")

    def plausible(self, ts_ns: int, received_ns: int) -> bool:
        """A device's timestamp fmc takes: from 2000 on, at most ``max_future_s`` ahead of receipt."""
        return MIN_TIMESTAMP_NS <= ts_ns <= received_ns + self._max_future_ns

    def points(self, group: str, node: str, device: str | None, metrics: Sequence[Resolved],
               payload_ts_ms: int | None, received_ns: int) -> tuple[list[Point], list[Rejection]]:
        points: list[Point] = []
        rejections: list[Rejection] = []
        for r in metrics:
            route = self.route(group, node, device, r.name)
            if route is None:
                continue
            if type(route) is Rejection:
                rejections.append(route)
                continue
            assert isinstance(route, _Route)
            m = r.metric
            ts_ms = m.timestamp_ms if m.timestamp_ms is not None else payload_ts_ms
            if ts_ms is None:
                ts_ns = received_ns
            else:
                ts_ns = ts_ms * 1_000_000
                if not self.plausible(ts_ns, received_ns):
                    rejections.append(Rejection("timestamp_out_of_range",
                                                f"{r.name!r}: timestamp {ts_ms} ms is before 2000 or in the future"))
                    continue
            value = value_of(r.datatype, m)
            if type(value) is Rejection:
                rejections.append(value)
                continue
            quality = fmc_quality(m.quality)
            fields: dict[str, FieldValue]
            if value is None:  # is_null: heard, without a value
                fields = {"quality": BAD if quality == 0 else quality}
            elif isinstance(value, str):
                if not route.is_signal:
                    rejections.append(Rejection("value_wrong_type", f"{r.name!r}: a meter reading must be a number"))
                    continue
                problem = _text_problem(r.name, value)
                if problem is not None:
                    rejections.append(problem)
                    continue
                fields = {"text": value, "quality": quality}
            else:
                number = float(value)
                if route.scale != 1.0 or route.offset != 0.0:
                    number = number * route.scale + route.offset
                if number - number != 0.0:  # inf or nan after scaling
                    rejections.append(Rejection("value_not_finite", f"{r.name!r} becomes {number} after scale"))
                    continue
                fields = {"value": number, "quality": quality}
            # a historical metric is stored, not fed to the plant model: the births that come before
            # it carry the current values, which an old one would override (Point.store_only)
            points.append(Point(route.measurement, dict(route.tags), fields, ts_ns, Priority.RAW, route.series,
                                store_only=m.is_historical))
        return points, rejections

    def targets(self, group: str, node: str, born: dict[str | None, tuple[str, ...]]) -> tuple[set[str], set[str]]:
        """The equipment and the meters that the metrics of a node's births (device -> names) feed."""
        equipment: set[str] = set()
        meters: set[str] = set()
        for device, names in born.items():
            for name in names:
                route = self.route(group, node, device, name)
                if type(route) is _Route:
                    if route.is_signal:
                        equipment.add(route.tags["equipment"])
                    else:
                        meters.add(route.tags["meter"])
        return equipment, meters

    def offline_points(self, group: str, node: str, offline: dict[str | None, tuple[str, ...]],
                       ts_ns: int) -> list[Point]:
        """One sample per signal of the dead node's or device's equipment, saying contact is lost
        (``BAD_NO_COMMUNICATION``): the plant model takes the equipment offline at ``ts_ns``."""
        out: list[Point] = []
        seen: set[str] = set()
        for device, names in offline.items():
            for name in names:
                route = self.route(group, node, device, name)
                if type(route) is not _Route or not route.is_signal or route.series in seen:
                    continue  # meters do not go offline: their next reading tells what was used
                seen.add(route.series)
                out.append(Point("signal", dict(route.tags), {"quality": BAD_NO_COMMUNICATION}, ts_ns,
                                 Priority.RAW, route.series))
        return out


def _text_problem(name: str, value: str) -> Rejection | None:
    if "\n" in value or "\r" in value:
        return Rejection("value_control_char", f"{name!r} contains a line break")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return Rejection("value_not_utf8", f"{name!r} contains a lone surrogate")
    if size > MAX_STRING_FIELD_BYTES:
        return Rejection("value_too_long", f"{name!r} is {size} bytes, more than {MAX_STRING_FIELD_BYTES}")
    return None
