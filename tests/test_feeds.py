"""fmc check's feeds: [[meter]]s no source feeds, equipment the sources report that the ledger lacks —
from each source's Feeds only, so any protocol's settings model works (here: OPC UA and MQTT)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmc.agent.feeds import check_feeds
from fmc.cli.main import main
from fmc.sources.dlt645.config import Dlt645Source
from fmc.sources.mqtt.config import MqttSource
from fmc.sources.opcua.config import OpcUaSource
from tests.ports import free_port

OPCUA = OpcUaSource(name="hall", endpoint="opc.tcp://127.0.0.1:4840", node=[
    {"equipment": "cnc-01", "signal": "spindle_speed", "node_id": "ns=2;s=a"},
    {"equipment": "cnc-09", "signal": "spindle_speed", "node_id": "ns=2;s=b"},
    {"kind": "meter", "meter": "main", "carrier": "electricity", "node_id": "ns=2;s=c"},
    {"kind": "meter", "meter": "spare", "carrier": "electricity", "node_id": "ns=2;s=d"},
])
MQTT_TEMPLATE = MqttSource(name="plant", client_id="c", subscribe=[{"topic": "meters/{carrier}/{meter}",
                                                                     "kind": "meter"}])


def test_unfed_meters_and_unlisted_equipment_are_warnings() -> None:
    meters, ledger = check_feeds([OPCUA], ["main", "water"], ["cnc-01", "loom-01"])
    assert meters.ok and meters.warning and not meters.undecided
    assert "1 of 2 [[meter]](s) fed by no source: 'water'" in meters.detail
    assert "readings of 'spare' go to no [[meter]]" in meters.detail
    assert ledger.ok and ledger.warning and "not in the ledger: 'cnc-09'" in ledger.detail


def test_a_template_that_names_meters_at_run_time_cannot_tell() -> None:
    meters, ledger = check_feeds([OPCUA, MQTT_TEMPLATE], ["main", "water"], ["cnc-01", "cnc-09"])
    assert not meters.ok and meters.undecided and "cannot tell whether 'water'" in meters.detail
    assert "mqtt:plant" in meters.detail
    assert ledger.ok and not ledger.warning


def test_all_fed_is_ok() -> None:
    meters, ledger = check_feeds([OPCUA], ["main", "spare"], ["cnc-01", "cnc-09"])
    assert (meters.ok, meters.warning, ledger.ok, ledger.warning) == (True, False, True, False)
    assert meters.detail == "2 [[meter]](s), each fed by a source"


AGENT_HEAD = ('[enterprise]\nid = "e1"\nname = "n"\nregion = "330602"\nindustry = "17"\n'
              '[sink]\ntype = "embedded"\npath = "store.db"\n')


def test_fmc_check_prints_the_warnings(tmp_path: Path, capsys) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(AGENT_HEAD + '[[meter]]\nid = "water"\ncarrier = "water_intake"\n'
                    '[[equipment]]\nid = "loom-01"\nnc = false\n', encoding="utf-8")
    assert main(["check", "-c", str(path), "--timeout", "1"]) == 0
    out = capsys.readouterr().out
    assert "  meters         warn  1 of 1 [[meter]](s) fed by no source: 'water'" in out
    assert out.rstrip().endswith("all checks passed; 1 warning(s)")


def test_feeds_of_a_target_without_a_name_is_an_error_even_under_python_o() -> None:
    from fmc.agent.plugin import Feeds

    feeds = Feeds.of([("signal", "cnc-01"), ("meter", "main-{n}")])
    assert feeds.equipment == {"cnc-01"} and feeds.any_meter and not feeds.meters
    with pytest.raises(ValueError, match="a meter target of the source has no name"):
        Feeds.of([("meter", None)])


# --- a counter whose register wraps, without rollover ------------------------------------------------------


def dlt645(*meters: tuple[str, str]) -> Dlt645Source:
    return Dlt645Source(name="bus1", transport="tcp", host="127.0.0.1", port=8899, meter=[
        {"address": f"00000000000{i}", "meter": meter, "energy": energy} for i, (meter, energy) in enumerate(meters)])


def test_a_dlt645_register_that_wraps_without_rollover_is_a_warning_naming_the_setting() -> None:
    bus = dlt645(("main", "00010000"), ("hall", "00000000"), ("wired", "00010000"))
    meters, _ = check_feeds([bus], ["main", "hall", "wired"], [], without_rollover=["main", "hall"])
    assert meters.ok and meters.warning
    assert ("[[meter]] reading 'main' has no rollover, and its dlt645:bus1 register wraps at 1000000: set "
            "rollover = 1000000 (and max_rate_per_h)") in meters.detail
    # combined active energy carries a sign bit: where it wraps is the meter's own
    assert "'hall' has no rollover, and its dlt645:bus1 register wraps: set rollover to where the meter's manual" \
        in meters.detail
    assert "'wired'" not in meters.detail  # its [[meter]] has rollover
    meters, _ = check_feeds([bus], ["main", "hall", "wired"], [])
    assert (meters.ok, meters.warning) == (True, False)


def test_fmc_check_warns_about_a_dlt645_meter_without_rollover(tmp_path: Path, capsys) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        AGENT_HEAD + '[[meter]]\nid = "main"\ncarrier = "electricity"\n'
        '[[meter]]\nid = "hall"\ncarrier = "electricity"\nrollover = 1000000\n'
        f'[[dlt645]]\nname = "bus1"\ntransport = "tcp"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        '[[dlt645.meter]]\naddress = "000000000001"\nmeter = "main"\n'
        '[[dlt645.meter]]\naddress = "000000000002"\nmeter = "hall"\n', encoding="utf-8")
    main(["check", "-c", str(path), "--timeout", "1"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  meters"))
    assert "warn" in line and "'main' has no rollover" in line and "'hall'" not in line


# --- a kind no [[equipment_class]] names -------------------------------------------------------------------

CLASSES = ('[[equipment_class]]\nname = "cnc_lathe"\n  [[equipment_class.rules]]\n  type = "threshold"\n'
           '  signal = "spindle_speed"\n  on_above = 50\n')
HALL = ('[[opcua]]\nname = "hall"\nendpoint = "opc.tcp://127.0.0.1:{port}"\n'
        '  [[opcua.node]]\n  equipment = "cnc-01"\n  signal = "spindle_speed"\n  node_id = "ns=2;s=a"\n')


def unclassified_agent(tmp_path: Path) -> Path:
    """cnc-01 (named by a source, kind misspelt in the config), lathe-02 and dye-01 (connected in the
    ledger, kinds without a class); press-01 neither connected nor named: it needs no class."""
    (tmp_path / "ledger.csv").write_text(
        "设备编号,是否数控,设备类别,是否联网\nlathe-02,是,CNC Lathe,是\ndye-01,否,染色机,是\ndye-02,否,染色机,否\n"
        "press-01,否,压机,否\n", encoding="utf-8")
    path = tmp_path / "agent.toml"
    path.write_text(AGENT_HEAD + HALL.format(port=free_port()) + CLASSES.replace("cnc_lathe", "cnc_lathe_x")
                    + '[inventory]\ncsv = "ledger.csv"\n'
                    '[[equipment]]\nid = "cnc-01"\nkind = "cnc_lath"\nnc = true\n', encoding="utf-8")
    return path


def test_fmc_check_warns_about_equipment_whose_kind_has_no_class(tmp_path: Path, capsys) -> None:
    path = unclassified_agent(tmp_path)
    main(["check", "-c", str(path), "--timeout", "1"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  classes"))
    assert "warn" in line
    # the file, the machine, the kind, and the closest class there is
    assert f"{path}: 'cnc-01' of kind 'cnc_lath' (did you mean 'cnc_lathe_x'?)" in line
    assert (f"{tmp_path / 'ledger.csv'}: 'lathe-02' of kind 'cnc_lathe' (did you mean 'cnc_lathe_x'?), "
            "'dye-01' of kind '染色机';") in line
    assert "never running" in line and "add an [[equipment_class]] with that name" in line
    # unconnected, and no source names them: offline all day, whatever their class
    assert "dye-02" not in line and "press-01" not in line


def test_fmc_check_is_quiet_when_every_expected_kind_has_a_class(tmp_path: Path, capsys) -> None:
    path = unclassified_agent(tmp_path)
    path.write_text(path.read_text(encoding="utf-8").replace("cnc_lath\"", "cnc_lathe\"").replace(
        "cnc_lathe_x", "cnc_lathe") + '[[equipment_class]]\nname = "染色机"\n', encoding="utf-8")
    main(["check", "-c", str(path), "--timeout", "1"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  classes"))
    assert "ok" in line and "the 3 equipment the agent expects data from have an [[equipment_class]]" in line


def test_the_agent_logs_equipment_whose_kind_has_no_class_at_start(tmp_path: Path, caplog) -> None:
    from fmc.agent.runtime import Agent
    from fmc.agent.spool import Spool
    from fmc.cli.plugins import load_config
    from fmc.plant.ledger import load_inventory

    path = unclassified_agent(tmp_path)
    cfg = load_config(path)
    agent = Agent(cfg, inventory=load_inventory(path, cfg.equipment, cfg.inventory), config_path=path)
    spool = Spool(tmp_path / "spool.db")
    try:
        with caplog.at_level("WARNING", logger="fmc"):
            assert agent._plant_model(spool) is not None
    finally:
        spool.close()
    warned = [r.getMessage() for r in caplog.records if "[[equipment_class]]" in r.getMessage()]
    assert len(warned) == 1 and "'cnc-01' of kind 'cnc_lath'" in warned[0] and "'dye-01'" in warned[0]
