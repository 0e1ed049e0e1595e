"""The ``[[mqtt]]`` section: one broker, its subscriptions and how their messages become samples.

Reference: ``fmc/sources/mqtt/README.md``; a section to copy: ``fmc/sources/mqtt/sample.toml``.
``MqttSource`` is the plugin's entry (``fmc.agent.plugin.SourceSettings``): it opens the running
source and checks the broker, importing paho only then.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from fmc.agent.plugin import CheckResult, Feeds, SourceContext
from fmc.core.carriers import CARRIERS
from fmc.core.config import ID_PATTERN, NAME_PATTERN, TEMPLATE_FIELD, EnterpriseConfig, TLSConfig, _Model

if TYPE_CHECKING:
    from fmc.sources.mqtt.source import MqttSource as RunningMqttSource


class Subscription(_Model):
    """One MQTT topic filter and how its messages become samples."""

    topic: str = Field(min_length=1, description="topic template, e.g. 'plant/{equipment}/{signal}'")
    qos: Literal[0, 1] = 1
    payload: Literal["json", "number"] = "json"
    kind: Literal["signal", "meter"] = "signal"
    # targets: templates over the topic's named segments, or fixed names
    equipment: str | None = None
    signal: str | None = None
    meter: str | None = None
    carrier: str | None = None
    value_type: Literal["number", "text"] = "number"
    value_path: str = "value"
    values: dict[str, str] | None = Field(
        default=None, description="several signals in one JSON message: signal name -> JSON path"
    )
    timestamp_path: str | None = None
    timestamp_unit: Literal["s", "ms", "us", "ns", "iso8601"] = "ms"
    quality_path: str | None = None
    scale: float = 1.0
    offset: float = 0.0

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        segments = v.split("/")
        names: list[str] = []
        for i, seg in enumerate(segments):
            if seg == "#":
                if i != len(segments) - 1:
                    raise ValueError("'#' may only be the last segment of a topic")
                continue
            if "#" in seg or ("+" in seg and seg != "+"):
                raise ValueError(f"segment {seg!r}: MQTT wildcards must fill a whole segment")
            m = re.fullmatch(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", seg)
            if m:
                names.append(m.group(1))
            elif "{" in seg or "}" in seg:
                raise ValueError(f"segment {seg!r}: a named segment is a whole segment like '{{equipment}}'")
        if len(names) != len(set(names)):
            raise ValueError("a segment name appears twice")
        return v

    @model_validator(mode="after")
    def _targets(self) -> Subscription:
        captured = set(TEMPLATE_FIELD.findall(self.topic))
        if self.kind == "signal":
            if self.equipment is None:
                object.__setattr__(self, "equipment", "{equipment}")
            if self.signal is None and self.values is None:
                object.__setattr__(self, "signal", "{signal}")
            wanted = {"equipment": self.equipment, "signal": self.signal}
        else:
            if self.meter is None:
                object.__setattr__(self, "meter", "{meter}")
            if self.carrier is None:
                object.__setattr__(self, "carrier", "{carrier}")
            wanted = {"meter": self.meter, "carrier": self.carrier}
            if self.values is not None:
                raise ValueError("'values' (several signals per message) is for kind = 'signal' only")
        if self.values is not None:
            for signal_name in self.values:
                if not re.fullmatch(NAME_PATTERN, signal_name):
                    raise ValueError(f"values: signal name {signal_name!r} has a control character or backslash")
        for key, template in wanted.items():
            if template is None:
                continue
            if not re.fullmatch(NAME_PATTERN, TEMPLATE_FIELD.sub("x", template)):
                raise ValueError(
                    f"{key} = {template!r}: names become tags in the store and may not hold control "
                    "characters or backslashes, nor be longer than 128 characters"
                )
            if key == "carrier" and not TEMPLATE_FIELD.search(template) and template not in CARRIERS:
                raise ValueError(f"carrier = {template!r} is not one of: {', '.join(CARRIERS)}")
            for name in TEMPLATE_FIELD.findall(template):
                if name not in captured:
                    raise ValueError(
                        f"{key} = {template!r} uses {{{name}}} but the topic {self.topic!r} has no such "
                        f"segment; name a segment '{{{name}}}' in the topic or write a fixed {key}"
                    )
        if self.payload == "number" and (self.values or self.timestamp_path or self.quality_path):
            raise ValueError("payload = 'number' has no JSON to take values, timestamps or quality from")
        if self.values is not None and not self.values:
            raise ValueError("'values' is empty")
        return self

    def mqtt_filter(self) -> str:
        """The topic filter to subscribe to: named segments become '+'."""
        return "/".join("+" if TEMPLATE_FIELD.fullmatch(s) else s for s in self.topic.split("/"))


class MqttSource(_Model):
    section: ClassVar[str] = "mqtt"

    name: str = Field(pattern=ID_PATTERN)
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    client_id: str | None = Field(default=None, min_length=1, max_length=64)
    username: str | None = None
    password: SecretStr | None = None
    tls: TLSConfig | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    clean_session: bool = False
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    max_payload_bytes: int = Field(default=256 * 1024, ge=16)
    subscribe: list[Subscription] = Field(min_length=1)

    @model_validator(mode="after")
    def _checks(self) -> MqttSource:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be smaller than reconnect_min_s")
        if not self.clean_session and self.client_id is None:
            raise ValueError(
                "a persistent session (clean_session = false) needs a fixed client_id, "
                "so the broker keeps unacknowledged messages for this agent across restarts"
            )
        return self

    @classmethod
    def check_group(cls, sources: Sequence[MqttSource]) -> None:
        """Rules over every [[mqtt]] entry: a broker drops one of two clients with the same id."""
        ids = [m.client_id for m in sources if m.client_id]
        dup = {n for n in ids if ids.count(n) > 1}
        if dup:
            raise ValueError(f"two MQTT sources use the same client_id {sorted(dup)}; a broker drops one of them")

    def open_source(self, ctx: SourceContext) -> RunningMqttSource:
        from fmc.sources.mqtt.mapping import Mapper
        from fmc.sources.mqtt.source import MqttSource as RunningMqttSource

        mapper = Mapper(ctx.enterprise, self.subscribe, max_payload_bytes=self.max_payload_bytes,
                        retained_max_age_s=ctx.offline_after_s)
        return RunningMqttSource(self, mapper, ctx.ingest, ctx.metrics, ctx.log)

    async def check(self, enterprise: EnterpriseConfig, timeout: float) -> CheckResult:
        from fmc.sources.mqtt.source import check_mqtt

        return await check_mqtt(self, timeout=timeout)

    def feeds(self) -> Feeds:
        return Feeds.of((sub.kind, sub.equipment if sub.kind == "signal" else sub.meter) for sub in self.subscribe)

    def relative_to(self, base: Path) -> Self:
        if self.tls is None:
            return self
        tls = self.tls.relative_to(base)
        return self if tls is self.tls else self.model_copy(update={"tls": tls})
