"""The ``[[sparkplug]]`` section: one broker, the Sparkplug groups to host, and how metrics become samples.

Reference: ``fmc/sources/sparkplug/README.md``; a section to copy: ``fmc/sources/sparkplug/sample.toml``.
``SparkplugSource`` is the plugin's entry (``fmc.agent.plugin.SourceSettings``): it opens the running
host application and checks the broker, importing paho and protobuf only then.
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
    from fmc.sources.sparkplug.source import SparkplugHost

# a Sparkplug id (group, edge node, device, host): a UTF-8 topic level without MQTT's '+', '/', '#'
SPARKPLUG_ID = r"^[^+/#\x00-\x1f\x7f]{1,128}$"
_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\*?)\}")


class MetricMap(_Model):
    """One path template over ``group/node/device/metric`` and the equipment signal or meter it feeds."""

    path: str = Field(min_length=1, description="e.g. 'Plant1/+/{equipment}/{signal*}'")
    level: Literal["device", "node"] = "device"
    kind: Literal["signal", "meter"] = "signal"
    equipment: str | None = None
    signal: str | None = None
    meter: str | None = None
    carrier: str | None = None
    scale: float = 1.0
    offset: float = 0.0

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        from fmc.sources.sparkplug.paths import validate_template

        validate_template(v)
        return v

    @model_validator(mode="after")
    def _targets(self) -> MetricMap:
        captured = {m.group(1) for m in _CAPTURE.finditer(self.path)}
        if self.kind == "signal":
            if self.equipment is None:
                object.__setattr__(self, "equipment", "{equipment}")
            if self.signal is None:
                object.__setattr__(self, "signal", "{signal}")
            wanted = {"equipment": self.equipment, "signal": self.signal}
        else:
            if self.meter is None:
                object.__setattr__(self, "meter", "{meter}")
            if self.carrier is None:
                object.__setattr__(self, "carrier", "{carrier}")
            wanted = {"meter": self.meter, "carrier": self.carrier}
        for key, template in wanted.items():
            assert template is not None
            if not re.fullmatch(NAME_PATTERN, TEMPLATE_FIELD.sub("x", template)):
                raise ValueError(f"{key} = {template!r}: names become tags in the store and may not hold control "
                                 "characters or backslashes, nor be longer than 128 characters")
            if key == "carrier" and not TEMPLATE_FIELD.search(template) and template not in CARRIERS:
                raise ValueError(f"carrier = {template!r} is not one of: {', '.join(CARRIERS)}")
            for name in TEMPLATE_FIELD.findall(template):
                if name not in captured:
                    raise ValueError(
                        f"{key} = {template!r} uses {{{name}}} but the path {self.path!r} captures no such level; "
                        f"name a level '{{{name}}}' in the path or write a fixed {key}")
        return self


class SparkplugSource(_Model):
    section: ClassVar[str] = "sparkplug"

    name: str = Field(pattern=ID_PATTERN)
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    client_id: str | None = Field(default=None, min_length=1, max_length=64)
    username: str | None = None
    password: SecretStr | None = None
    tls: TLSConfig | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    max_payload_bytes: int = Field(default=256 * 1024, ge=16)
    group_ids: list[str] = Field(min_length=1)
    host_id: str
    qos: Literal[0, 1] = 1
    rebirth_retry_s: float = Field(default=5.0, ge=0.1, le=3600)
    ignore_metrics: list[str] = Field(default_factory=list)
    metric: list[MetricMap] = Field(min_length=1)

    @field_validator("group_ids")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for group in v:
            if not re.fullmatch(SPARKPLUG_ID, group):
                raise ValueError(f"group id {group!r}: a Sparkplug group id is one topic level, without '+', '/' "
                                 "or '#': write the group exactly as the edge nodes publish it")
        if len(v) != len(set(v)):
            raise ValueError("a group id is listed twice")
        return v

    @field_validator("host_id")
    @classmethod
    def _host_id(cls, v: str) -> str:
        if not re.fullmatch(SPARKPLUG_ID, v):
            raise ValueError(f"host_id {v!r}: a Sparkplug host id is one topic level, without '+', '/' or '#', "
                             "at most 128 characters: write the primary host id the edge nodes are set up with")
        return v

    @model_validator(mode="after")
    def _checks(self) -> SparkplugSource:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be smaller than reconnect_min_s")
        return self

    @classmethod
    def check_group(cls, sources: Sequence[SparkplugSource]) -> None:
        """Two hosts with one host_id on a broker overwrite each other's STATE; one client id drops the other."""
        ids = [s.client_id for s in sources if s.client_id]
        dup = {n for n in ids if ids.count(n) > 1}
        if dup:
            raise ValueError(f"two Sparkplug sources use the same client_id {sorted(dup)}; a broker drops one of them")
        hosts = [(s.host, s.port, s.host_id) for s in sources]
        dup_hosts = {h[2] for h in hosts if hosts.count(h) > 1}
        if dup_hosts:
            raise ValueError(f"two Sparkplug sources on one broker use the same host_id {sorted(dup_hosts)}; "
                             "give each its own host_id")

    def open_source(self, ctx: SourceContext) -> SparkplugHost:
        from fmc.sources.sparkplug.mapping import Mapper
        from fmc.sources.sparkplug.source import SparkplugHost

        mapper = Mapper(ctx.enterprise.id, self.metric, ignore=self.ignore_metrics)
        return SparkplugHost(self, mapper, ctx.ingest, ctx.metrics, ctx.log)

    async def check(self, enterprise: EnterpriseConfig, timeout: float) -> CheckResult:
        from fmc.sources.sparkplug.source import check_sparkplug

        return await check_sparkplug(self, timeout=timeout)

    def feeds(self) -> Feeds:
        return Feeds.of((m.kind, m.equipment if m.kind == "signal" else m.meter) for m in self.metric)

    def relative_to(self, base: Path) -> Self:
        if self.tls is None:
            return self
        tls = self.tls.relative_to(base)
        return self if tls is self.tls else self.model_copy(update={"tls": tls})
