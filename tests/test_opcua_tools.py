"""fmc.sources.opcua.tools: the client certificate generator and the machine browser, on a real asyncua server."""

from __future__ import annotations

import re
import socket
import stat
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asyncua import ua
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fmc.sources.opcua import config as schema
from fmc.sources.opcua.check import check_opcua
from fmc.sources.opcua.connection import certificate_uris
from fmc.sources.opcua.tools import alias_namespaces, browse_machines, equipment_id, make_client_certificate
from tests.servers.opcua import MACHINE_TOOL_URI, PLANT_URI, OpcUaTestServer
from tests.test_opcua_adapter import Harness, wait_until


def test_client_certificate_has_what_opc_ua_servers_check(tmp_path: Path) -> None:
    cert_path, key_path = make_client_certificate(
        tmp_path / "pki" / "client.der", tmp_path / "pki" / "client-key.pem",
        "urn:fmc:{hostname}:client", "fmc gateway 01", days=30, organization="示范纺织",
    )
    cert = x509.load_der_x509_certificate(cert_path.read_bytes())  # DER, as OPC UA exchanges it
    host = socket.gethostname()
    assert certificate_uris(cert) == [f"urn:fmc:{host}:client"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [host]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "fmc gateway 01"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "示范纺织"
    assert cert.issuer == cert.subject
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (usage.digital_signature, usage.content_commitment, usage.key_encipherment, usage.data_encipherment,
            usage.key_cert_sign) == (True, True, True, True, True)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert cert.signature_hash_algorithm is not None and cert.signature_hash_algorithm.name == "sha256"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=30) <= lifetime <= timedelta(days=30, minutes=10)
    assert cert.not_valid_before_utc <= datetime.now(UTC)
    cert.verify_directly_issued_by(cert)  # self-signed, and the signature checks out

    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


@pytest.fixture(scope="module")
def plant() -> Iterator[OpcUaTestServer]:
    # two filler namespaces first: every index differs from the default numbering
    with OpcUaTestServer(namespace_shift=2) as server:
        yield server


async def test_browse_finds_machines_by_companion_specification(plant: OpcUaTestServer) -> None:
    report = await browse_machines(plant.url, max_depth=8)
    kinds = {m.equipment: m.kind for m in report.machines}
    assert kinds == {"cnc-01": "machine_tool", "cnc-02": "machine_tool", "loom-07": "machine", "filler": "packml",
                     "lab": "object"}
    signals = {m.equipment: sorted(s.signal for s in m.signals) for m in report.machines}
    assert signals["cnc-01"] == ["channel_state", "machinery_item_state", "machinery_operation_mode",
                                 "operation_mode", "power", "program_state", "spindle_speed"]
    assert signals["loom-07"] == ["machinery_item_state", "power"]
    assert signals["filler"] == ["packml_state"]
    assert signals["lab"] == ["counter", "flag", "label", "temperature"]
    cnc = next(m for m in report.machines if m.equipment == "cnc-02")
    assert (cnc.nc, cnc.manufacturer, cnc.model, cnc.serial_number) == (True, "Hangzhou Machine Tool", "VMC-850",
                                                                        "SN-1002")
    spindle = next(s for s in cnc.signals if s.signal == "spindle_speed")
    assert spindle.node_id == plant.node_id("CNC-02.Spindle.ActualSpeed").to_string()
    assert report.aliases()["mt"] == MACHINE_TOOL_URI and report.aliases()["plant"] == PLANT_URI


async def test_rendered_toml_loads_and_maps_to_the_right_nodes(plant: OpcUaTestServer, tmp_path: Path) -> None:
    report = await browse_machines(plant.url)
    text = report.render_toml("shop")
    assert "# cnc-01,CNC-01,machine_tool,yes,Hangzhou Machine Tool,VMC-850,SN-1001" in text
    data = tomllib.loads(text)
    cfg = schema.OpcUaSource.model_validate({**data["opcua"][0], "reconnect_min_s": 0.2, "watchdog_s": 5})
    assert len(cfg.node) == 21 and all(n.browse_path for n in cfg.node)
    states = {(n.equipment, n.signal): n.value_type for n in cfg.node}
    assert states[("filler", "packml_state")] == "state" and states[("lab", "label")] == "text"

    checked = await check_opcua(cfg)
    assert checked.ok and "21 of 21 node(s) readable" in checked.detail, checked.detail

    h = Harness(tmp_path, cfg.model_copy(update={"node": [n.model_copy(update={"sampling_interval_ms": 100})
                                                          for n in cfg.node]}))
    h.source.start()
    try:
        wait_until(lambda: h.source.connected, what="the browsed configuration to connect")
        plant.write("CNC-02.Spindle.ActualSpeed", 4321.0)
        plant.write("Loom-07.Power", 5.5)
        plant.write("Filler.BaseStateMachine.CurrentState", ua.LocalizedText("Held"))
        plant.write("CNC-01.Channel1.ChannelState", 2, variant_type=ua.VariantType.Int32)
        h.wait_point("spindle_speed", lambda p: p.tags["equipment"] == "cnc-02" and p.fields.get("value") == 4321.0)
        h.wait_point("power", lambda p: p.tags["equipment"] == "loom-07" and p.fields.get("value") == 5.5)
        h.wait_point("packml_state", lambda p: p.tags["equipment"] == "filler" and p.fields.get("text") == "Held")
        h.wait_point("channel_state", lambda p: p.tags["equipment"] == "cnc-01" and p.fields.get("value") == 2.0)
        assert not [p for p in h.points("spindle_speed", "cnc-01") if p.fields.get("value") == 4321.0]
    finally:
        h.close()


def test_names_for_namespaces_and_equipment() -> None:
    assert alias_namespaces(["http://opcfoundation.org/UA/MachineTool/", "http://example.com/plant/",
                             "urn:vendor:plant", "http://opcfoundation.org/UA/DI/"]) == {
        "mt": "http://opcfoundation.org/UA/MachineTool/", "plant": "http://example.com/plant/",
        "plant2": "urn:vendor:plant", "di": "http://opcfoundation.org/UA/DI/"}
    assert equipment_id("CNC 01 / Halle 3") == "cnc-01-halle-3"
    assert equipment_id("织机 07") == "织机-07"


def test_browse_of_a_wrong_endpoint_says_so_in_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    from fmc.cli.main import main

    assert main(["opcua", "browse", "http://127.0.0.1:4840"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "validation error" not in err
    assert err.startswith("fmc opcua browse: endpoint must look like \"opc.tcp://host:4840\"")


def test_the_readme_names_the_files_the_cert_command_writes(tmp_path: Path) -> None:
    from fmc.cli.main import main

    assert main(["opcua", "cert", "--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["client-cert.der", "client-key.pem"]
    root = Path(__file__).resolve().parent.parent
    for doc in ("fmc/sources/opcua/README.md", "fmc/sources/opcua/sample.toml"):
        text = (root / doc).read_text(encoding="utf-8")
        assert "client-cert.der" in text and not re.search(r"\bclient\.der\b", text), doc


def test_names_stay_readable_with_units() -> None:
    from fmc.sources.opcua.browse import _snake, meter_kind

    assert _snake("Main_Electricity_kWh") == "main_electricity_kwh"
    assert _snake("ActiveEnergy") == "active_energy" and _snake("PickRate") == "pick_rate"
    assert _snake("WaterIntake_m3") == "water_intake_m3" and _snake("EnergyMWh") == "energy_mwh"
    assert meter_kind("Main_Electricity_kWh") == ("electricity", "kWh")
    assert meter_kind("Energy_Wh") == ("electricity", "Wh")
    assert meter_kind("NaturalGas_m3") == ("natural_gas", "m3")
    assert meter_kind("Wastewater_m3") == ("wastewater", "m3")
    assert meter_kind("WaterIntake_m3") == ("water_intake", "m3")
    assert meter_kind("Volume_m3") is None  # a volume of what: not guessed
    assert meter_kind("ActualSpeed") is None and meter_kind("Power") is None
