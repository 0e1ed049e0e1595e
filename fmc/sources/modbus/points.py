"""A request's answer to points: each configured register becomes one ``signal`` or ``meter_reading``
point, or a rejection. Pure (the caller passes the time); the series of each register is encoded
once, when the source is set up.

A device that stopped answering becomes, at once, one sample per signal register with the quality
``BAD_NO_COMMUNICATION`` and no value (``offline_points``): the plant takes its equipment offline at
that time. Meters get nothing: a meter reading is a counter, and silence is all the accumulator needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fmc.agent.plugin import Rejection
from fmc.core.lineprotocol import encode_series
from fmc.core.points import FieldValue, Point, Priority
from fmc.core.quality import BAD_NO_COMMUNICATION
from fmc.sources.modbus.decode import FLOAT_TYPES, decode_words
from fmc.sources.modbus.plan import Block


@dataclass(frozen=True, slots=True)
class ValuePlan:
    """One configured register, as the hot path needs it."""

    function: str
    address: int
    count: int
    data_type: str
    byte_order: str
    word_order: str
    scale: float
    offset: float
    minimum: float | None
    maximum: float | None
    measurement: str  # "signal" or "meter_reading"
    tags: dict[str, str]
    series: str
    where: str  # for people: "pump-1/speed (holding 10, unit 3)"

    @classmethod
    def make(
        cls, *, enterprise: str, unit: int, function: str, address: int, count: int, data_type: str,
        byte_order: str, word_order: str, scale: float = 1.0, offset: float = 0.0, minimum: float | None = None,
        maximum: float | None = None, equipment: str | None = None, signal: str | None = None,
        meter: str | None = None, carrier: str | None = None,
    ) -> ValuePlan:
        if meter is not None:
            measurement, tags = "meter_reading", {"enterprise": enterprise, "meter": meter, "carrier": carrier or ""}
            name = f"meter {meter}"
        else:
            measurement = "signal"
            tags = {"enterprise": enterprise, "equipment": equipment or "", "signal": signal or ""}
            name = f"{equipment}/{signal}"
        return cls(function, address, count, data_type, byte_order, word_order, float(scale), float(offset), minimum,
                   maximum, measurement, tags, encode_series(measurement, tags),
                   f"{name} ({function} {address}, unit {unit})")


def block_points(
    block: Block, values: Sequence[int] | Sequence[bool], plans: Sequence[ValuePlan], ts_ns: int,
    points: list[Point], rejections: list[Rejection],
) -> None:
    """Append the point of every register ``block`` serves, from the words (bits) it read, or the
    rejection of a value that cannot be stored: not a finite number, or outside min/max."""
    for i in block.members:
        plan = plans[i]
        start = plan.address - block.address
        if plan.data_type == "bool":
            value = 1.0 if values[start] else 0.0
        else:
            number = decode_words([int(w) for w in values[start : start + plan.count]], plan.data_type,
                                  plan.byte_order, plan.word_order)
            if plan.data_type in FLOAT_TYPES and not math.isfinite(number):
                rejections.append(Rejection("value_not_finite", f"{plan.where} is {number}"))
                continue
            value = float(number)
            if plan.scale != 1.0 or plan.offset != 0.0:
                value = value * plan.scale + plan.offset
                if not math.isfinite(value):
                    rejections.append(Rejection("value_not_finite", f"{plan.where} becomes {value} after scale/offset"))
                    continue
        if (plan.minimum is not None and value < plan.minimum) or (plan.maximum is not None and value > plan.maximum):
            rejections.append(Rejection("value_out_of_range", f"{plan.where} is {value:g}, outside "
                                        f"[{_bound(plan.minimum)}, {_bound(plan.maximum)}]"))
            continue
        fields: dict[str, FieldValue] = {"value": value, "quality": 0}
        points.append(Point(plan.measurement, plan.tags.copy(), fields, ts_ns, Priority.RAW, plan.series))


def offline_points(plans: Sequence[ValuePlan], ts_ns: int) -> list[Point]:
    """The samples that take a silent device's equipment offline now: one per signal, no value."""
    return [
        Point("signal", p.tags.copy(), {"quality": BAD_NO_COMMUNICATION}, ts_ns, Priority.RAW, p.series)
        for p in plans if p.measurement == "signal"
    ]


def _bound(limit: float | None) -> str:
    return "…" if limit is None else f"{limit:g}"
