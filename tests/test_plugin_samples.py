"""Every plugin folder is complete, and its ``sample.toml`` is what the agent accepts.

A plugin is a folder ``fmc/sources/<name>/`` or ``fmc/stores/<name>/`` (Telegraf style): its code,
a ``README.md`` and a ``sample.toml`` — the commented section a user copies into agent.toml. Each
sample is validated here through the agent's real model (``fmc.cli.plugins.AgentConfig``), merged
with a minimal ``[enterprise]`` and, for a source, a minimal ``[sink]``; a store's sample also as
the central service's ``[store]``. Every setting of the plugin's model is named in its sample
(set, or commented out), so a new setting cannot be left out of the file users start from.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from fmc.cli import plugins

ROOT = Path(__file__).resolve().parent.parent
MINIMAL_ENTERPRISE = '[enterprise]\nid = "e-330602-1"\nname = "样例 Sample"\nregion = "330602"\nindustry = "17"\n'
MINIMAL_SINK = '[sink]\ntype = "embedded"\npath = "store.db"\n'


def _folders(kind: str) -> list[str]:
    return sorted(p.name for p in (ROOT / "fmc" / kind).iterdir() if p.is_dir() and (p / "__init__.py").exists())


# every folder, and every plugin the CLI lists (a plugin without a folder, or the reverse, is a mistake)
SOURCES = sorted(set(_folders("sources")) | set(plugins.SOURCES))
STORES = sorted(set(_folders("stores")) | set(plugins.STORES))
PLUGINS = [("sources", n) for n in SOURCES] + [("stores", n) for n in STORES]


def test_the_folders_are_the_plugins_the_cli_lists() -> None:
    assert _folders("sources") == sorted(plugins.SOURCES)
    assert _folders("stores") == sorted(plugins.STORES)
    # the built-in protocols and stores, whose samples the other tests check
    assert {"mqtt", "opcua"} <= set(SOURCES) and {"influxdb", "embedded"} <= set(STORES)


@pytest.mark.parametrize(("kind", "name"), PLUGINS, ids=[f"{k}/{n}" for k, n in PLUGINS])
def test_every_plugin_folder_has_its_readme_and_sample(kind: str, name: str) -> None:
    folder = ROOT / "fmc" / kind / name
    for file in ("__init__.py", "config.py", "README.md", "sample.toml"):
        assert (folder / file).is_file(), f"fmc/{kind}/{name}/{file} is missing"
    sample = (folder / "sample.toml").read_text(encoding="utf-8")
    assert sample.startswith("#"), "a sample opens with a comment: what it is and where to copy it"
    assert f"fmc/{kind}/{name}/README.md" in sample, "the sample names its README"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# "), "the README opens with its title"


def _with_env_set(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    for var in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text):
        monkeypatch.setenv(var, f"sample-{var.lower()}")


def _sample(kind: str, name: str) -> str:
    path = ROOT / "fmc" / kind / name / "sample.toml"
    if not path.exists():
        pytest.fail(f"fmc/{kind}/{name}/sample.toml is missing")
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", SOURCES)
def test_a_source_sample_is_one_section_the_agent_accepts(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = _sample("sources", name)
    assert set(tomllib.loads(sample)) == {name}, f"the sample holds the [[{name}]] section(s) only"
    _with_env_set(monkeypatch, sample)
    path = tmp_path / "agent.toml"
    path.write_text(f"{MINIMAL_ENTERPRISE}\n{MINIMAL_SINK}\n{sample}", encoding="utf-8")
    cfg = plugins.load_config(path)  # fmc.cli.plugins.AgentConfig, as `fmc run -c` reads a file
    assert isinstance(cfg, plugins.AgentConfig)
    sections = getattr(cfg, name)
    assert sections and all(isinstance(s, plugins.SOURCES[name]) for s in sections)


@pytest.mark.parametrize("name", STORES)
def test_a_store_sample_is_a_sink_the_agent_accepts_and_a_store_the_central_service_accepts(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = _sample("stores", name)
    data = tomllib.loads(sample)
    assert set(data) == {"sink"} and data["sink"]["type"] == name
    _with_env_set(monkeypatch, sample)
    agent = tmp_path / "agent.toml"
    agent.write_text(f"{MINIMAL_ENTERPRISE}\n{sample}", encoding="utf-8")
    cfg = plugins.load_config(agent)
    assert isinstance(cfg.sink_settings(), plugins.STORES[name])
    # central.toml takes the same settings under [store]
    central = tmp_path / "central.toml"
    central.write_text(re.sub(r"^\[sink\]$", "[store]", sample, flags=re.M), encoding="utf-8")
    assert isinstance(plugins.load_central_config(central).store_settings(), plugins.STORES[name])


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (``X``, ``X | None``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    return []


def _settings(model: type[BaseModel], seen: frozenset[type[BaseModel]] = frozenset()) -> set[str]:
    """Every setting a user can write in the model's section, nested sections included."""
    out: set[str] = set()
    for name, field in model.model_fields.items():
        out.add(field.alias or name)
        for inner in _models(field.annotation):
            if inner not in seen:
                out |= _settings(inner, seen | {model})
    return out


@pytest.mark.parametrize(("kind", "name"), PLUGINS, ids=[f"{k}/{n}" for k, n in PLUGINS])
def test_a_sample_names_every_setting_of_its_plugin(kind: str, name: str) -> None:
    model = (plugins.SOURCES if kind == "sources" else plugins.STORES)[name]
    sample = _sample(kind, name)
    missing = sorted(
        s for s in _settings(model)
        # `key = …`, also commented out or in an inline table, or a section header `[x.key]`, `[[x.key]]`
        if not re.search(rf"(^|[\s{{,#]){re.escape(s)}\s*=|\.{re.escape(s)}\]", sample, re.M)
    )
    assert not missing, f"fmc/{kind}/{name}/sample.toml does not mention: {', '.join(missing)}"


@pytest.mark.parametrize(("kind", "name"), PLUGINS, ids=[f"{k}/{n}" for k, n in PLUGINS])
def test_every_toml_example_of_a_plugin_readme_is_accepted_too(
    kind: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (ROOT / "fmc" / kind / name / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```toml\n(.*?)^```", readme, re.S | re.M)
    assert blocks, f"fmc/{kind}/{name}/README.md shows its configuration in a ```toml block"
    for n, block in enumerate(blocks):
        _with_env_set(monkeypatch, block)
        sections = set(tomllib.loads(block))
        path = tmp_path / f"example-{n}.toml"
        if sections == {"store"}:  # central.toml
            path.write_text(block, encoding="utf-8")
            assert isinstance(plugins.load_central_config(path).store_settings(), plugins.STORES[name])
            continue
        assert sections == ({name} if kind == "sources" else {"sink"}), f"block {n}: {sorted(sections)}"
        extra = MINIMAL_SINK if kind == "sources" else ""
        path.write_text(f"{MINIMAL_ENTERPRISE}\n{extra}\n{block}", encoding="utf-8")
        plugins.load_config(path)


def test_a_source_says_what_it_feeds_fixed_names_and_templates_apart() -> None:
    from fmc.agent.plugin import Feeds
    from fmc.sources.mqtt.config import MqttSource

    mqtt = MqttSource.model_validate({
        "name": "b", "clean_session": True,
        "subscribe": [
            {"topic": "plant/{equipment}/{signal}"},
            {"topic": "loom/7/speed", "equipment": "loom-7", "signal": "speed"},
            {"topic": "meters/main/kwh", "kind": "meter", "meter": "main", "carrier": "electricity"},
        ],
    })
    assert mqtt.feeds() == Feeds(frozenset({"loom-7"}), frozenset({"main"}), any_equipment=True, any_meter=False)
    for name, model in plugins.SOURCES.items():
        assert callable(getattr(model, "feeds", None)), f"the {name} source does not say what it feeds"
