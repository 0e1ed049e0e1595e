"""The central service's configuration (``central.toml``): store, plan, registry, API, materialization.

Example: ``deploy/examples/central.toml``; reference: ``docs/central.md``. Loaded like the agent's
file: ``${ENV}`` references substituted (secrets stay SecretStr), relative paths taken from the
file's folder, every problem a ``ConfigError`` naming file, setting and fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from fmc.central.store import QueryStoreSettings
from fmc.core.config import ConfigError, Location, _Model, problems_from, read_toml
from fmc.core.logs import LogConfig
from fmc.indicators.plan import PLANS_DIR, Targets, load_targets

DEFAULT_PLAN = "zhejiang-2017-2020"
EXAMPLE = "deploy/examples/central.toml"

class ApiConfig(_Model):
    host: str = Field(default="127.0.0.1", min_length=1, description="address `fmc api` listens on")
    port: int = Field(default=8080, ge=1, le=65535)
    keys_file: Path = Field(default=Path("keys.db"), description="SQLite file of the hashed API keys")
    revalidate_s: float = Field(
        default=60.0, ge=1, le=86400, description="how often cached figures are checked against the store"
    )
    page_size_default: int = Field(default=1000, ge=1, le=100_000)
    page_size_max: int = Field(default=50_000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _page_sizes(self) -> ApiConfig:
        # On the model, so that every ApiConfig holds a consistent pair: central.toml's and one an
        # app is made with directly (create_app). A larger default answers pages larger than any
        # page_size accepted, and their Link headers carry a page_size the same server refuses (422).
        if self.page_size_default > self.page_size_max:
            raise ValueError(
                f"page_size_default ({self.page_size_default}) is larger than page_size_max ({self.page_size_max}), "
                f"the largest page_size accepted: set page_size_default = {self.page_size_max} or less (unset, it "
                "is 1000), or raise page_size_max"
            )
        return self


class RegistryConfig(_Model):
    csv: Path | None = Field(
        default=None,
        description="enterprises CSV: id, name, region, industry and optional reported base-year figures",
    )


class MaterializeConfig(_Model):
    enabled: bool = Field(default=False, description="write `indicator` points for the dashboards")
    interval_s: float = Field(default=3600.0, ge=10)
    first_year: int | None = Field(default=None, ge=1990, le=2100, description="default: the plan's base year")
    months: bool = Field(default=True, description="monthly figures too (the dashboards' trend panels)")


class SumsCacheConfig(_Model):
    path: Path | None = Field(
        default=None,
        description="SQLite file of each period's sums, read from InfluxDB once (docs/central.md, \"The sums "
        "cache\"); unset: every figure is summed by InfluxDB",
    )
    recent_days: int = Field(
        default=45, ge=0, le=3660,
        description="kept periods ending within this many days are read again on each revalidation",
    )
    full_refresh_h: float = Field(
        default=24.0, ge=0.1, le=24 * 366, description="every other kept period is read again after this many hours"
    )


class CentralSettings(_Model):
    """``central.toml`` without its store: ``central_config_model`` adds ``[store]``, tagged by
    ``type`` over the store plugins a composition root names (``fmc.cli.plugins.CentralConfig``)."""

    targets: str = Field(
        default=DEFAULT_PLAN, description="a built-in plan id (zhejiang-2017-2020) or the path of a plan file"
    )
    api: ApiConfig = Field(default_factory=ApiConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    materialize: MaterializeConfig = Field(default_factory=MaterializeConfig)
    cache: SumsCacheConfig = Field(default_factory=SumsCacheConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty; name a plan (zhejiang-2017-2020) or a plan file")
        return v


    def store_settings(self) -> QueryStoreSettings:
        store: QueryStoreSettings = getattr(self, "store")  # noqa: B009 - a field of the assembled model
        return store


C = TypeVar("C", bound=CentralSettings)


def central_config_model(stores: Mapping[str, type[QueryStoreSettings]]) -> type[CentralSettings]:
    """The central file's model with these store plugins as ``[store]``."""
    if not stores:
        raise ValueError("the central service needs at least one store plugin")
    store_types = tuple(stores.values())
    store_type: Any = store_types[0] if len(store_types) == 1 else Union[store_types]  # noqa: UP007
    model = create_model("CentralConfig", __base__=CentralSettings, __module__=__name__,
                         store=(Annotated[store_type, Field(discriminator="type")], ...))
    model.__doc__ = CentralSettings.__doc__
    return model


def builtin_plans() -> list[str]:
    return sorted(p.stem for p in PLANS_DIR.glob("*.toml"))


def plan_path(name_or_path: str, base: Path | None = None) -> Path:
    """The file of a built-in plan id, else the path (relative to ``base``)."""
    if name_or_path in builtin_plans():
        return PLANS_DIR / f"{name_or_path}.toml"
    p = Path(name_or_path)
    return p if p.is_absolute() or base is None else base / p


def load_plan(name_or_path: str = DEFAULT_PLAN, base: Path | None = None) -> Targets:
    return load_targets(plan_path(name_or_path, base))


def load_central_config(path: str | os.PathLike[str], model: type[C]) -> C:
    """Read, substitute ``${ENV}``, validate with ``model`` (a ``central_config_model``); relative
    paths are taken from the file's folder."""
    path = Path(path)
    from_env: set[Location] = set()
    data = read_toml(path, missing_fix=f"pass the right path with -c (example: {EXAMPLE})", from_env=from_env)
    try:
        cfg = model.model_validate(data)
    except ValidationError as e:
        problems = [(s, w, f.replace("deploy/examples/agent.toml", EXAMPLE))
                    for s, w, f in problems_from(e, from_env)]
        raise ConfigError(path, problems) from None
    base = path.parent

    def rel(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    store = cfg.store_settings().relative_to(base)
    api = cfg.api.model_copy(update={"keys_file": rel(cfg.api.keys_file)})
    registry = cfg.registry
    if registry.csv is not None:
        registry = registry.model_copy(update={"csv": rel(registry.csv)})
    cache = cfg.cache
    if cache.path is not None:
        cache = cache.model_copy(update={"path": rel(cache.path)})
    targets = cfg.targets if cfg.targets in builtin_plans() else str(plan_path(cfg.targets, base))
    if not Path(plan_path(targets)).exists():
        raise ConfigError(
            path,
            [("targets", f"no plan {cfg.targets!r}: neither a built-in plan ({', '.join(builtin_plans())}) "
              "nor an existing file", f'write targets = "{DEFAULT_PLAN}" or the path of a plan file')],
        )
    return cfg.model_copy(update={"store": store, "api": api, "registry": registry, "cache": cache,
                                  "targets": targets})


def load_config_plan(cfg: CentralSettings) -> Targets:
    """The plan a loaded config names (its ``targets`` is already absolute or a built-in id)."""
    return load_plan(cfg.targets)
