"""The built-in plugins, by name: the one list of the sources and stores fmc ships (like
Telegraf's ``plugins/inputs/all``). The composition roots — the CLI and the demo — take the agent's
and the central service's configuration models from here; nothing below them names a plugin.

Adding a protocol is a folder ``fmc/sources/<name>/`` with its ``config.py`` (a model that
implements ``fmc.agent.plugin.SourceSettings``), ``README.md`` and ``sample.toml``, and one line
here. A plugin's ``config`` module must stay light: it imports its protocol library only when a
source is opened or checked, so ``fmc check`` of an MQTT-only gateway never loads asyncua.
"""

from __future__ import annotations

import os
from typing import Any

from fmc.agent.config import AgentSettings, agent_config_model
from fmc.agent.config import load_config as _load_agent_config
from fmc.central.config import CentralSettings, central_config_model, load_config_plan
from fmc.central.config import load_central_config as _load_central_config
from fmc.sources.dlt645.config import Dlt645Source
from fmc.sources.modbus.config import ModbusSource
from fmc.sources.mqtt.config import MqttSource
from fmc.sources.opcua.config import OpcUaSource
from fmc.sources.sparkplug.config import SparkplugSource
from fmc.stores.embedded.config import EmbeddedSink
from fmc.stores.influxdb.config import InfluxDBSink

# the TOML section of each source (`[[mqtt]]`) -> its settings model
SOURCES: dict[str, type[Any]] = {
    "mqtt": MqttSource, "opcua": OpcUaSource, "sparkplug": SparkplugSource, "dlt645": Dlt645Source,
    "modbus": ModbusSource,
}
# the `type` of each store (`[sink] type = "influxdb"`, `[store] type = …`) -> its settings model
STORES: dict[str, type[Any]] = {"influxdb": InfluxDBSink, "embedded": EmbeddedSink}

AgentConfig = agent_config_model(SOURCES, STORES)
CentralConfig = central_config_model(STORES)


def load_config(path: str | os.PathLike[str]) -> AgentSettings:
    """An agent file (``fmc run -c``), validated with every built-in plugin."""
    return _load_agent_config(path, AgentConfig)


def load_central_config(path: str | os.PathLike[str]) -> CentralSettings:
    """A ``central.toml`` (``fmc api -c``), validated with every built-in store."""
    return _load_central_config(path, CentralConfig)


def central_timezone(path: str | os.PathLike[str]) -> str:
    """The time zone of the plan a ``central.toml`` names, whose local days its figures are
    (``fmc grafana push -c``); ConfigError for a file or plan refused."""
    return load_config_plan(load_central_config(path)).policy.timezone
