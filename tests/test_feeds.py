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
