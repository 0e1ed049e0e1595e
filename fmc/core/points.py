"""The unit of data that flows from adapters through the spool to a store."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

FieldValue = float | int | str | bool


class Priority(IntEnum):
    """What a full spool drops first: raw signals (lowest) before anything else."""

    RAW = 0
    EVENT = 1  # state changes
    ROLLUP = 2  # daily/interval rollups: never dropped


@dataclass(slots=True)
class Point:
    """One InfluxDB point: measurement, tags, fields, UTC timestamp in nanoseconds."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    ts_ns: int
    priority: Priority = field(default=Priority.RAW)
    # The escaped "measurement,tag=value,…" part of the line, when the producer already made it
    # (the MQTT mapper does, once per topic); the encoder then skips re-escaping the tags.
    series: str | None = field(default=None, compare=False)
    # A value of the past sent late (a Sparkplug historical metric, from an edge node's store and
    # forward): stored with its timestamp like any point, but not fed to the plant model, whose
    # trackers apply an old sample at their cursor, as if it held now (docs/plant-semantics.md)
    store_only: bool = False

    def series_key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return (self.measurement, tuple(sorted(self.tags.items())))
