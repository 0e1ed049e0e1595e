"""The agent's configuration: one TOML file, validated by pydantic at start.

Every error names the file, the setting and the fix (``ConfigError``); the CLI prints it and
exits with code 2. Secrets are written as ``${ENV_NAME}`` and held as ``SecretStr`` so they are
never logged or printed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar, Union

from pydantic import (
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from fmc.agent.plugin import SinkSettings, SourceSettings
from fmc.core.config import (
    ConfigError,
    EnterpriseConfig,
    Location,
    _Model,
    problems_from,
    read_toml,
)
from fmc.core.logs import LogConfig
from fmc.plant.config import PlantSections, check_interval_alignment
from fmc.plant.equipment import EquipmentItem, InventoryConfig


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

    @field_validator("listen")
    @classmethod
    def _port(cls, v: str) -> str:
        # the pattern lets 65536-99999 through, which bind() refuses only when `fmc run` starts
        port = int(v.rpartition(":")[2])
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range; use a port from 1 to 65535, e.g. \"127.0.0.1:9273\"")
        return v

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class LimitsConfig(_Model):
    max_series: int = Field(default=100_000, ge=1, description="new series beyond this are rejected")


class AgentSettings(PlantSections):
    """The agent file without its plugins. The plant sections (`[plant]`, `[[equipment_class]]`,
    `[[meter]]`, `[[virtual_meter]]`, `[coefficients]`) come from ``PlantSections``; the source
    sections (`[[mqtt]]`, `[[opcua]]`, …) and the `[sink]` are added by ``agent_config_model`` from
    the plugins a composition root names (``fmc.cli.plugins.AgentConfig``)."""

    # the names of the source sections (set by agent_config_model)
    source_sections: ClassVar[tuple[str, ...]] = ()

    enterprise: EnterpriseConfig
    spool: SpoolConfig = SpoolConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    limits: LimitsConfig = LimitsConfig()
    equipment: list[EquipmentItem] = Field(default_factory=list)
    inventory: InventoryConfig = InventoryConfig()

    def sources(self) -> list[SourceSettings]:
        """Every configured source, section by section in the order of ``source_sections``."""
        return [s for section in self.source_sections for s in getattr(self, section)]

    def sink_settings(self) -> SinkSettings:
        sink: SinkSettings = getattr(self, "sink")  # noqa: B009 - a field of the assembled model
        return sink

    @model_validator(mode="after")
    def _unique(self) -> Self:
        check_interval_alignment(self.plant.interval_minutes, self.enterprise.timezone)
        names = [s.name for s in self.sources()]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            sections = " and ".join(f"[[{s}]]" for s in self.source_sections)
            raise ValueError(f"source names ({sections}) must be unique; repeated: {sorted(dup)}")
        for section in self.source_sections:
            group = getattr(self, section)
            check_group = getattr(type(group[0]), "check_group", None) if group else None
            if check_group is not None:
                check_group(group)  # a section's own rule over all its entries (e.g. MQTT client ids)
        # Each section refuses two of its entries writing one meter; across sections too: two
        # counters interleaved into one [[meter]] are taken as glitches of one, and one meter's
        # consumption is lost. (Two sources writing one equipment's different signals are fine.)
        fed_by: dict[str, str] = {}
        for source in self.sources():
            where = f"[[{source.section}]] {source.name!r}"
            for meter in sorted(source.feeds().meters):
                if meter in fed_by and fed_by[meter] != where:
                    raise ValueError(f"{fed_by[meter]} and {where} both write meter {meter!r}: two sources of "
                                     "one meter would mix their readings; give each its own meter id (and [[meter]])")
                fed_by[meter] = where
        return self


C = TypeVar("C", bound=AgentSettings)


def agent_config_model(
    sources: Mapping[str, type[SourceSettings]], stores: Mapping[str, type[SinkSettings]]
) -> type[AgentSettings]:
    """The agent file's model with these plugins: one list field per source section
    (``sources["mqtt"]`` validates ``[[mqtt]]``), and ``sink`` tagged by ``type`` over the stores."""
    if not stores:
        raise ValueError("an agent needs at least one store plugin")
    store_types = tuple(stores.values())
    sink_type: Any = store_types[0] if len(store_types) == 1 else Union[store_types]  # noqa: UP007
    fields: dict[str, Any] = {
        section: (list[model], Field(default_factory=list)) for section, model in sources.items()  # type: ignore[valid-type]
    }
    fields["sink"] = (Annotated[sink_type, Field(discriminator="type")], ...)
    model = create_model("AgentConfig", __base__=AgentSettings, __module__=__name__, **fields)
    model.source_sections = tuple(sources)
    model.__doc__ = AgentSettings.__doc__
    return model


def load_config(path: str | os.PathLike[str], model: type[C]) -> C:
    """Read, substitute ``${ENV}`` and validate with ``model`` (an ``agent_config_model``);
    relative paths are taken from the file's folder."""
    path = Path(path)
    from_env: set[Location] = set()
    data = read_toml(path, from_env=from_env)
    try:
        cfg = model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(path, problems_from(e, from_env)) from None
    # absolute: a path resolved here is final, so a loader that resolves relative paths again
    # (the inventory's) does not prefix the folder twice (runA/runA/inventory.csv)
    return _resolve_paths(cfg, path.parent.absolute())


def _resolve_paths(cfg: C, base: Path) -> C:
    def rel(p: Path) -> Path:
        return p if p.is_absolute() else (base / p)

    update: dict[str, Any] = {
        "spool": cfg.spool.model_copy(update={"path": rel(cfg.spool.path)}),
        "sink": cfg.sink_settings().relative_to(base),
    }
    if cfg.inventory.csv is not None:
        update["inventory"] = cfg.inventory.model_copy(update={"csv": rel(cfg.inventory.csv)})
    for section in cfg.source_sections:
        update[section] = [s.relative_to(base) for s in getattr(cfg, section)]
    return cfg.model_copy(update=update)
