"""The agent as a real process on a plant: an asyncua server with machine tools, an inventory with
equipment that is never connected, state rules — into a real InfluxDB."""

from __future__ import annotations

import time

from asyncua import ua

from tests.agent_process import AgentProcess, agent_config
from tests.ports import free_port
from tests.servers.opcua import MACHINE_TOOL_URI, PLANT_URI, OpcUaTestServer

PLANT_SECTIONS = """
[[opcua]]
name = "hall"
endpoint = "{endpoint}"
security_policy = "None"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
  [opcua.namespaces]
  plant = "{plant_uri}"
  mt = "{mt_uri}"
  [[opcua.node]]
  equipment = "CNC-01"
  signal = "spindle_speed"
  node_id = "ns=plant;s=CNC-01.Spindle.ActualSpeed"
  sampling_interval_ms = 50
  [[opcua.node]]
  equipment = "CNC-01"
  signal = "channel_state"
  node_id = "ns=plant;s=CNC-01.Channel1.ChannelState"
  sampling_interval_ms = 50
  value_type = "state"

[[equipment]]
id = "CNC-01"
nc = true
kind = "cnc"
asset_value = 800000
connected = true

[[equipment]]
id = "CNC-02"
nc = true
kind = "cnc"
asset_value = 800000

[[equipment]]
id = "press-01"
nc = false
kind = "press"

[[equipment_class]]
name = "cnc"
  [[equipment_class.rules]]
  type = "opcua_channel_state"
  signal = "channel_state"
"""


def test_opcua_states_reach_influxdb(tmp_path, mosquitto, influx_db):
    server_, db = influx_db
    with OpcUaTestServer() as opcua:
        port = free_port()
        cfg = agent_config(tmp_path, mqtt_port=mosquitto.port, influx_url=server_.url, database=db,
                           metrics_port=port, client_id="e2e-plant")
        cfg.write_text(cfg.read_text() + PLANT_SECTIONS.format(endpoint=opcua.url, plant_uri=PLANT_URI,
                                                               mt_uri=MACHINE_TOOL_URI))
        agent = AgentProcess(cfg, port).start()
        try:
            agent.wait_metric("fmc_source_connected", 1, source="hall", timeout=30)
            opcua.write("CNC-01.Spindle.ActualSpeed", 1200.0)
            opcua.write("CNC-01.Channel1.ChannelState", 0, variant_type=ua.VariantType.Int32)  # Active
            states = wait_for_states(server_, db, {"running"})
            opcua.write("CNC-01.Channel1.ChannelState", 1, variant_type=ua.VariantType.Int32)  # Interrupted
            states = wait_for_states(server_, db, {"running", "down"})
            assert states["CNC-01"][-1] == ("down", 4)
            rows = server_.select(db, "SELECT last(\"value\") FROM \"signal\" WHERE \"equipment\" = 'CNC-01' "
                                      "AND \"signal\" = 'spindle_speed'")
            assert rows[0]["last"] == 1200.0
            # never-connected equipment has no state changes: it stays offline, counted at the day's end
            assert set(states) == {"CNC-01"}
            # the plant model's counters are on /metrics. Late samples: at most the two nodes' first values, when
            # the server stamped them before the agent started (older than the tracker's start: applied at it);
            # the values in flight since are not late, as the trackers run sample_delay_s behind the clock
            # (test_plant_runtime's test_samples_on_their_way_are_not_late… proves that part exactly)
            metrics = agent.metrics()
            assert metrics[("fmc_plant_events", (("kind", "late_samples"), ("part", "equipment")))] <= 2
            assert metrics[("fmc_plant_events", (("kind", "unknown_equipment"), ("part", "plant")))] == 0
            assert agent.terminate() == 0
        finally:
            agent.stop_quietly()


def wait_for_states(server, db: str, wanted: set[str], timeout: float = 30) -> dict[str, list[tuple[str, int]]]:
    deadline = time.monotonic() + timeout
    states: dict[str, list[tuple[str, int]]] = {}
    while time.monotonic() < deadline:
        rows = server.select(db, 'SELECT "state", "code" FROM "equipment_state" GROUP BY "equipment"')
        states = {}
        for r in rows:
            states.setdefault(r["equipment"], []).append((r["state"], r["code"]))
        if wanted <= {s for seq in states.values() for s, _ in seq}:
            return states
        time.sleep(0.2)
    raise AssertionError(f"states {wanted} not in InfluxDB after {timeout}s: {states}")
