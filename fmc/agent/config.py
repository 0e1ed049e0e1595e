"""The agent's configuration: one TOML file, validated by pydantic at start.

Every error names the file, the setting and the fix (``ConfigError``); the CLI prints it and
exits with code 2. Secrets are written as ``${ENV_NAME}`` and held as ``SecretStr`` so they are
never logged or printed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from fmc.core.config import (
    CARRIERS,
    ID_PATTERN,
    NAME_PATTERN,
    TEMPLATE_FIELD,
    ConfigError,
    _Model,
    known_timezone,
    problems_from,
    read_toml,
)
from fmc.plant.config import PlantSections, check_interval_alignment
from fmc.plant.equipment import EquipmentItem, InventoryConfig
from fmc.sources.opcua.config import OpcUaSource


def parse_size(value: Any) -> int:
    """'512MiB', '1 GB', 1048576 -> bytes."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or text like '512MiB'")
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", str(value), re.IGNORECASE)
    if not m:
        raise ValueError(f"{value!r} is not a size; write bytes as a number or text like '512MiB'")
    number, unit = float(m.group(1)), (m.group(2) or "B").upper()
    factor = {
        "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
        "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
    }[unit]
    return int(number * factor)


class EnterpriseConfig(_Model):
    id: str = Field(pattern=ID_PATTERN, description="stable enterprise id, e.g. a unified social credit code")
    name: str = Field(min_length=1, max_length=200)
    region: str = Field(pattern=r"^[0-9]{6}$", description="6-digit administrative division code (GB/T 2260)")
    industry: str = Field(pattern=r"^[0-9]{2}([0-9]{1,2})?$", description="GB/T 4754-2017 division, e.g. '17'")
    timezone: str = "Asia/Shanghai"

    _tz = field_validator("timezone")(lambda cls, v: known_timezone(v))


class TLSConfig(_Model):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both for a client certificate, or neither")
        return self


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


class InfluxDBSink(_Model):
    type: Literal["influxdb"]
    url: str = Field(pattern=r"^https?://[^\s/]+(/.*)?$")
    dialect: Literal["v1", "v2"] = "v1"
    database: str | None = None
    retention_policy: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    org: str | None = None
    bucket: str | None = None
    token: SecretStr | None = None
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    batch_max_age_s: float = Field(default=1.0, ge=0)
    gzip: bool = True
    timeout_s: float = Field(default=10.0, gt=0)
    retry_min_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=60.0, gt=0)
    ca_file: Path | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _dialect(self) -> InfluxDBSink:
        if self.dialect == "v1" and not self.database:
            raise ValueError("dialect 'v1' writes to a database: set database = \"fmc\"")
        if self.dialect == "v2" and not (self.org and self.bucket):
            raise ValueError("dialect 'v2' writes to an org and a bucket: set org = \"…\" and bucket = \"…\"")
        if self.dialect == "v2" and self.token is None:
            raise ValueError("dialect 'v2' needs an API token: token = \"${INFLUX_TOKEN}\"")
        return self


class EmbeddedSink(_Model):
    type: Literal["embedded"]
    path: Path = Path("fmc-store.db")


SinkConfig = Annotated[InfluxDBSink | EmbeddedSink, Field(discriminator="type")]


class SpoolConfig(_Model):
    path: Path = Path("spool.db")
    max_bytes: int = Field(default=1 << 30, ge=1 << 16)
    synchronous: Literal["full", "normal"] = "full"
    commit_interval_ms: int = Field(default=20, ge=0, le=5000)
    rejected_keep: int = Field(default=1000, ge=0, description="recent rejected messages kept for inspection")

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, v: Any) -> int:
        return parse_size(v)


class MetricsConfig(_Model):
    enabled: bool = True
    listen: str = Field(default="127.0.0.1:9273", pattern=r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$")

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class LimitsConfig(_Model):
    max_series: int = Field(default=100_000, ge=1, description="new series beyond this are rejected")


class AgentConfig(PlantSections):
    """The whole agent file. The plant sections (`[plant]`, `[[equipment_class]]`, `[[meter]]`,
    `[[virtual_meter]]`, `[coefficients]`) come from ``PlantSections``."""

    enterprise: EnterpriseConfig
    mqtt: list[MqttSource] = Field(default_factory=list)
    opcua: list[OpcUaSource] = Field(default_factory=list)
    sink: SinkConfig
    spool: SpoolConfig = SpoolConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    limits: LimitsConfig = LimitsConfig()
    equipment: list[EquipmentItem] = Field(default_factory=list)
    inventory: InventoryConfig = InventoryConfig()

    @model_validator(mode="after")
    def _unique(self) -> AgentConfig:
        check_interval_alignment(self.plant.interval_minutes, self.enterprise.timezone)
        names = [m.name for m in self.mqtt] + [o.name for o in self.opcua]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names ([[mqtt]] and [[opcua]]) must be unique; repeated: {sorted(dup)}")
        ids = [m.client_id for m in self.mqtt if m.client_id]
        dup = {n for n in ids if ids.count(n) > 1}
        if dup:
            raise ValueError(f"two MQTT sources use the same client_id {sorted(dup)}; a broker drops one of them")
        return self


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read, substitute ``${ENV}`` and validate; relative paths are taken from the file's folder."""
    path = Path(path)
    data = read_toml(path)
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(path, problems_from(e)) from None
    return _resolve_paths(cfg, path.parent)


def _resolve_paths(cfg: AgentConfig, base: Path) -> AgentConfig:
    def rel(p: Path) -> Path:
        return p if p.is_absolute() else (base / p)

    spool = cfg.spool.model_copy(update={"path": rel(cfg.spool.path)})
    sink = cfg.sink
    if isinstance(sink, EmbeddedSink):
        sink = sink.model_copy(update={"path": rel(sink.path)})
    inventory = cfg.inventory
    if inventory.csv is not None:
        inventory = inventory.model_copy(update={"csv": rel(inventory.csv)})
    opcua = [o.relative_to(base) for o in cfg.opcua]
    return cfg.model_copy(update={"spool": spool, "sink": sink, "inventory": inventory, "opcua": opcua})
