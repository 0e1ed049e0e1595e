"""Configuration: the example loads; every kind of mistake names the file, the setting and a fix."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fmc.agent.config import parse_size
from fmc.agent.spool import Spool
from fmc.cli.main import main
from fmc.cli.plugins import load_config
from fmc.core.config import ConfigError
from fmc.core.points import Priority

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "examples" / "agent.toml"
ENV = {"FMC_MQTT_USER": "gw", "FMC_MQTT_PASSWORD": "s3cret-mqtt", "FMC_INFLUX_USER": "fmc",
       "FMC_INFLUX_PASSWORD": "s3cret-influx"}

GOOD = """
[enterprise]
id = "e1"
name = "测试企业"
region = "330602"
industry = "17"

[[mqtt]]
name = "plant"
client_id = "gw-1"
  [[mqtt.subscribe]]
  topic = "plant/{equipment}/{signal}"

[sink]
type = "embedded"
path = "store.db"

[spool]
path = "spool/spool.db"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_example_config_loads(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    cfg = load_config(EXAMPLE)
    assert cfg.enterprise.region == "330602"
    assert cfg.mqtt[0].password.get_secret_value() == "s3cret-mqtt"
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.model_dump())
    assert [s.mqtt_filter() for s in cfg.mqtt[0].subscribe] == ["plant/+/+", "meters/+/+", "water/+"]
    assert cfg.spool.max_bytes == 2**30


def test_the_example_configs_commented_sources_load_once_uncommented(tmp_path, monkeypatch):
    """The DL/T 645, Modbus and Sparkplug B blocks of the example are commented out (no such
    devices on a fresh gateway): a user who uncomments one gets a config that loads."""
    import re
    import shutil

    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    text = EXAMPLE.read_text(encoding="utf-8")
    start, end = text.index("# [[dlt645]]"), text.index("[sink]")
    # a commented setting or table is "# " + TOML; the prose lines above each block stay comments
    code = re.compile(r"^# ?(\s*(\[\[|[a-z_]+ = ))")
    block = "\n".join(code.sub(r"\1", line) for line in text[start:end].splitlines())
    for f in EXAMPLE.parent.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    (tmp_path / "agent.toml").write_text(text[:start] + block + "\n" + text[end:], encoding="utf-8")
    cfg = load_config(tmp_path / "agent.toml")
    assert sorted((type(s).__name__, s.name) for s in cfg.sources()) == [
        ("Dlt645Source", "substation-bus"), ("ModbusSource", "water-and-power"), ("MqttSource", "plant"),
        ("SparkplugSource", "edge")]


def test_the_gateway_id_defaults_to_main_and_tags_the_rollups(tmp_path):
    from datetime import date

    from fmc.plant.rollups import InventoryItem, Site, enterprise_daily

    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.enterprise.gateway == "main"
    point = enterprise_daily(date(2019, 12, 31), Site.from_enterprise(cfg.enterprise), [InventoryItem("m1", True)], [])
    assert point.tags == {"enterprise": "e1", "region": "330602", "industry": "17", "gateway": "main"}
    cfg = load_config(write(tmp_path, GOOD.replace('industry = "17"', 'industry = "17"\ngateway = "hall-b"')))
    assert Site.from_enterprise(cfg.enterprise).tags(carrier="electricity")["gateway"] == "hall-b"


def test_relative_paths_are_taken_from_the_config_folder(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.spool.path == tmp_path / "spool" / "spool.db"
    assert cfg.sink.path == tmp_path / "store.db"


@pytest.mark.parametrize(
    ("change", "setting", "words"),
    [
        (('region = "330602"', 'region = "3306"'), "enterprise.region", "330602"),
        (('industry = "17"', 'industry = "textiles"'), "enterprise.industry", "4754"),
        (('client_id = "gw-1"', 'client_id = "gw-1"\nport = 70000'), "mqtt[0].port", "65535"),
        (('client_id = "gw-1"', ""), "mqtt[0]", "client_id"),
        (('topic = "plant/{equipment}/{signal}"', 'topic = "plant/{machine}/{signal}"'), "mqtt[0].subscribe[0]",
         "{equipment}"),
        (('topic = "plant/{equipment}/{signal}"', 'topic = "plant/#/{x}"'), "mqtt[0].subscribe[0].topic", "'#'"),
        (('type = "embedded"', 'type = "influx"'), "sink", 'type = "influxdb"'),
        (('type = "embedded"\npath = "store.db"', 'type = "influxdb"\nurl = "http://127.0.0.1:8086"'), "sink",
         "database"),
        (('path = "spool/spool.db"', 'path = "spool/spool.db"\nmax_bytes = "lots"'), "spool.max_bytes", "512MiB"),
        (('[spool]', '[spool]\nsize = 3'), "spool.size", "remove it"),
        (('[spool]', '[metrics]\nlisten = "127.0.0.1:99999"\n[spool]'), "metrics.listen", "1 to 65535"),
        (('[spool]', '[metrics]\nlisten = "[::1]:0"\n[spool]'), "metrics.listen", "1 to 65535"),
        (('name = "测试企业"', 'name = "测试企业"\ntimezone = "Mars/Base"'), "enterprise.timezone", "IANA"),
        (('name = "测试企业"', 'name = "测试企业"\ngateway = "hall a/1"'), "enterprise.gateway", "hall-a"),
        (('name = "测试企业"', 'name = "测试企业"\ngateway = "' + "g" * 65 + '"'), "enterprise.gateway", "64"),
    ],
)
def test_each_mistake_names_file_setting_and_fix(tmp_path, capsys, change, setting, words):
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = info.value.render()
    assert str(path) in text
    assert f"`{setting}`" in text, text
    assert words in text, text
    # the CLI prints the same, with exit code 2 and no stack trace
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"`{setting}`" in err and "Traceback" not in err


def test_missing_env_reference_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("FMC_TEST_PW", raising=False)
    path = write(tmp_path, GOOD.replace('client_id = "gw-1"', 'client_id = "gw-1"\npassword = "${FMC_TEST_PW}"'))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "mqtt[0].password" in info.value.render() and "export FMC_TEST_PW" in info.value.render()


def test_secret_values_never_appear_in_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FMC_TEST_PW", "hunter2-secret")
    path = write(tmp_path, GOOD.replace('client_id = "gw-1"', 'client_id = "gw-1"\npassword = "${FMC_TEST_PW}"\n'
                                        'keepalive_s = 1'))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "hunter2" not in info.value.render()
    assert "keepalive_s" in info.value.render()


INFLUX = GOOD.replace('type = "embedded"\npath = "store.db"', 'type = "influxdb"\ndatabase = "fmc"\nSETTINGS')


@pytest.mark.parametrize("settings", [
    'url = "http://127.0.0.1:8086"\nusername = "fmc"\npasword = "${FMC_TEST_PW}"',  # an unknown key …
    'url = "http://127.0.0.1:8086"\nusername = "fmc"\npasswd = "${FMC_TEST_PW}"',
    'url = "http://127.0.0.1:8086"\nusername = "fmc"\npassword = "${FMC_TEST_PW}"\nbatch_size = "${FMC_TEST_PW}"',
    'url = "htp://fmc:${FMC_TEST_PW}@127.0.0.1:8086"',  # … a value from ${ENV}, credentials in a URL
    'url = "htp://fmc:hunter2-secret@127.0.0.1:8086"',
], ids=["pasword", "passwd", "from-env", "url-from-env", "url"])
def test_a_misspelt_or_misplaced_secret_is_named_not_printed(tmp_path, monkeypatch, capsys, settings):
    """A misspelt key's value, a value from ${ENV} and a URL's user:password@ are never quoted in
    the message (stderr is the journal under systemd); an ordinary wrong value still is."""
    monkeypatch.setenv("FMC_TEST_PW", "hunter2-secret")
    path = write(tmp_path, INFLUX.replace("SETTINGS", settings))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = info.value.render()
    assert "`sink." in text and "hunter2" not in text, text
    assert main(["check", "-c", str(path)]) == 2
    out = capsys.readouterr()
    assert "`sink." in out.err and "hunter2" not in out.err + out.out
    if "hunter2" in settings:
        assert "(got 'htp://127.0.0.1:8086')" in text, text  # the URL without its credentials
    path = write(tmp_path, INFLUX.replace("SETTINGS", 'url = "http://127.0.0.1:8086"\nbatch_size = "lots"'))
    with pytest.raises(ConfigError, match=r"\(got 'lots'\)"):
        load_config(path)


def test_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[enterprise\nid = 1"))
    assert "(syntax)" in info.value.render() and "line" in info.value.render()
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert "does not exist" in info.value.render()


def test_a_config_saved_as_utf8_with_a_bom_loads(tmp_path):
    """"UTF-8 with BOM" (older Windows Notepad, many Chinese editors) reads as without it; tomllib
    alone refused it as "Invalid statement (at line 1, column 1)". The CSV files take a BOM too."""
    import codecs

    path = tmp_path / "agent.toml"
    path.write_bytes(codecs.BOM_UTF8 + GOOD.encode("utf-8"))
    cfg = load_config(path)
    assert cfg.enterprise.id == "e1" and cfg.enterprise.name == "测试企业"


def test_cli_exit_code_2_without_traceback_in_a_real_process(tmp_path):
    path = write(tmp_path, GOOD.replace('region = "330602"', 'region = "33"'))
    proc = subprocess.run([sys.executable, "-m", "fmc.cli.main", "run", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert "enterprise.region" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "fmc.cli.main", "frobnicate"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2


@pytest.mark.parametrize(("text", "expected"), [("512MiB", 512 * 2**20), ("1 GB", 10**9), (4096, 4096),
                                                ("1.5KiB", 1536)])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "12 parsecs", "-5MiB", True])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('kind = "meter"\n  carrier = "plutonium"\n  meter = "main"', "not one of"),
        ('equipment = "loom\\\\{equipment}"', "backslash"),
        ('values = { "a\\nb" = "x" }', "control character"),
    ],
)
def test_fixed_names_are_checked_at_start(tmp_path, line, words):
    text = GOOD.replace('topic = "plant/{equipment}/{signal}"', f'topic = "plant/{{equipment}}/{{signal}}"\n  {line}')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert "mqtt[0].subscribe[0]" in info.value.render() and words in info.value.render()


@pytest.mark.parametrize("kind", ["folder", "not-a-spool"])
def test_check_fails_a_spool_path_the_agent_cannot_open(tmp_path, capsys, kind):
    """`[spool] path = "/var/lib/fmc"` (the folder) or an existing file that is not a spool: `fmc run`
    would stop with SpoolError, so `fmc check` fails the spool, naming the setting and the fix."""
    spool = tmp_path / "fmc"
    if kind == "folder":
        spool.mkdir()
    else:
        spool.write_text("these are notes, not a spool\n", encoding="utf-8")
    text = GOOD.split("[[mqtt]]")[0] + '[sink]\ntype = "embedded"\npath = "store.db"\n[metrics]\nenabled = false\n'
    path = write(tmp_path, text + f'[spool]\npath = "{spool}"\n')
    assert main(["check", "-c", str(path), "--timeout", "1"]) == 1
    spool_line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("spool "))
    assert "FAIL" in spool_line and f"[spool] path {spool}:" in spool_line and "fix:" in spool_line, spool_line


# Acting as another user needs root (to make files of another user) and setpriv: the service's or an
# engineer's user is uid/gid 65534 here.
OTHER_UID = 65534
as_another_user = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                     reason="needs root and setpriv to act as another user")


def run_as_other_user(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups", sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=120, cwd=str(cwd))


@pytest.fixture
def gateway() -> Iterator[Path]:
    """/etc/fmc and /var/lib/fmc in small: the config readable by all, the state folder var/ (0750, root's:
    a test gives it to the other user where that user is the agent's) and a folder for the store."""
    base = Path(tempfile.mkdtemp(prefix="fmc-test-gateway-", dir="/tmp"))  # a folder the other user may enter
    try:
        base.chmod(0o755)
        text = GOOD.split("[[mqtt]]")[0] + '[sink]\ntype = "embedded"\npath = "store/store.db"\n'
        (base / "agent.toml").write_text(text + '[spool]\npath = "var/spool.db"\n', encoding="utf-8")
        (base / "agent.toml").chmod(0o644)
        for folder in ("var", "store"):
            (base / folder).mkdir(mode=0o750)
        os.chown(base / "store", OTHER_UID, OTHER_UID)
        probe = run_as_other_user("-c", "import fmc", cwd=base)
        if probe.returncode != 0:
            pytest.skip(f"this interpreter or the tree cannot be used by uid {OTHER_UID}: {probe.stderr[-200:]}")
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@as_another_user
def test_check_fails_a_spool_the_agents_user_cannot_write(gateway: Path) -> None:
    """A `sudo fmc run` during commissioning leaves the spool root's, 0644, in the service's folder; the
    unit's User=fmc then reads it but fails its first write at every start. `fmc check` as the service
    will run says so, with the owner and the fix, instead of "writable"."""
    os.chown(gateway / "var", OTHER_UID, OTHER_UID)
    spool, wal = gateway / "var" / "spool.db", gateway / "var" / "spool.db-wal"
    old = os.umask(0o022)
    try:
        with Spool(spool) as opened:  # as root
            opened.append([("m v=1i 1", Priority.RAW)])
        wal.touch()  # and its WAL file, as a power cut leaves it (empty: nothing to replay)
    finally:
        os.umask(old)
    run = run_as_other_user("-c", "from fmc.agent.spool import Spool; Spool('var/spool.db')", cwd=gateway)
    assert run.returncode != 0 and "SpoolError" in run.stderr  # what `fmc run` meets at every start

    check = run_as_other_user("-m", "fmc", "check", "-c", "agent.toml", "--timeout", "2", cwd=gateway)
    assert check.returncode == 1, check.stdout + check.stderr
    [line] = [line.strip() for line in check.stdout.splitlines() if line.strip().startswith("spool ")]
    me = pwd.getpwuid(OTHER_UID).pw_name
    assert "FAIL" in line and f"may not write {spool} {wal} (owner root:root, mode 0644)" in line, line
    fix = line.split("; fix: ", 1)[1]
    assert fix.startswith(f"chown {me}:{grp.getgrgid(OTHER_UID).gr_name} {spool} {wal}"), fix  # and -shm, if there
    assert fix.endswith(f"if the agent runs as {me}, else run this as the agent's user"), fix

    os.chown(spool, OTHER_UID, OTHER_UID)  # what the message says (the WAL file too)
    os.chown(wal, OTHER_UID, OTHER_UID)
    check = run_as_other_user("-m", "fmc", "check", "-c", "agent.toml", "--timeout", "2", cwd=gateway)
    assert check.returncode == 0 and f"{spool} writable" in check.stdout, check.stdout + check.stderr


@as_another_user
@pytest.mark.parametrize("command", [["check", "-c", "agent.toml", "--timeout", "2"],
                                     ["spool", "show", "-c", "agent.toml"]], ids=["check", "spool-show"])
def test_a_state_folder_the_user_may_not_enter_is_one_sentence_with_the_fix(gateway: Path,
                                                                             command: list[str]) -> None:
    """An engineer's own login and the service's /var/lib/fmc (0750 fmc:fmc): no traceback, one line naming
    the setting, the folder and the fix, exit 1."""
    Spool(gateway / "var" / "spool.db").close()
    result = run_as_other_user("-m", "fmc", *command, cwd=gateway)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    out = result.stdout + result.stderr
    [line] = [line for line in out.splitlines() if "[spool] path" in line]
    me = pwd.getpwuid(OTHER_UID).pw_name
    assert f"[spool] path {gateway / 'var' / 'spool.db'}: the user {me} may not look into {gateway / 'var'}" in line
    assert "fix: run this as the user the agent runs as (with the systemd unit: sudo -u fmc …) or as root" in line


SINK_ONLY = """
[enterprise]
id = "e1"
name = "n"
region = "330602"
industry = "17"

[sink]
type = "embedded"
path = "store.db"

[[meter]]
id = "main"
carrier = "electricity"
"""


def dlt645_bus(name: str, port: str, address: str, writes: str) -> str:
    return f'\n[[dlt645]]\nname = "{name}"\nport = "{port}"\n  [[dlt645.meter]]\n  address = "{address}"\n  {writes}\n'


def modbus_link(writes: str) -> str:
    return ('\n[[modbus]]\nname = "power"\nhost = "127.0.0.1"\n  [[modbus.device]]\n  unit = 1\n'
            f'    [[modbus.device.register]]\n    address = 0\n    {writes}\n')


METER_MAIN = 'meter = "main"'


@pytest.mark.parametrize(("sources", "named"), [
    (dlt645_bus("bus-a", "/dev/ttyUSB0", "000012345678", METER_MAIN)
     + dlt645_bus("bus-b", "/dev/ttyUSB1", "000012345679", METER_MAIN),  # a bus copy-pasted
     "[[dlt645]] 'bus-a' and [[dlt645]] 'bus-b'"),
    (dlt645_bus("bus-a", "/dev/ttyUSB0", "000012345678", METER_MAIN)
     + modbus_link(METER_MAIN + '\n    carrier = "electricity"'),
     "[[dlt645]] 'bus-a' and [[modbus]] 'power'"),
], ids=["two-buses", "modbus-and-dlt645"])
def test_two_sources_writing_one_meter_are_refused_naming_both(tmp_path, capsys, sources, named):
    """Each section refuses two of its entries writing one meter, and two sections are refused too:
    both counters would go to the one [[meter]], one taken as the other's glitches, and one meter's
    consumption lost."""
    path = write(tmp_path, SINK_ONLY + sources)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = info.value.render()
    assert f"{named} both write meter 'main'" in text and "its own meter id" in text, text
    assert main(["check", "-c", str(path)]) == 2
    assert f"{named} both write meter 'main'" in capsys.readouterr().err


def test_two_sources_writing_one_equipments_signals_are_fine(tmp_path):
    """A machine's power from the power meter, its speed from its PLC: one equipment, two sources."""
    sources = (dlt645_bus("bus-a", "/dev/ttyUSB0", "000012345678", METER_MAIN)
               + dlt645_bus("bus-b", "/dev/ttyUSB1", "000012345679",
                            'equipment = "loom-1"\n  signals = { power = "02030000" }')
               + modbus_link('equipment = "loom-1"\n    signal = "spindle_speed"'))
    cfg = load_config(write(tmp_path, SINK_ONLY + sources))
    assert [s.feeds().equipment for s in cfg.sources()] == [frozenset(), {"loom-1"}, {"loom-1"}]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(("text", "setting"), [
    (GOOD.replace('topic = "plant/{equipment}/{signal}"', 'topic = "plant/{equipment}/{signal}"\n  scale = VALUE'),
     "mqtt[0].subscribe[0].scale"),
    (SINK_ONLY + modbus_link('meter = "main"\n    carrier = "electricity"\n    scale = VALUE'),
     "modbus[0].device[0].register[0].scale"),
    (SINK_ONLY + modbus_link('equipment = "loom-1"\n    signal = "speed"\n    max = VALUE'),
     "modbus[0].device[0].register[0].max"),
    (INFLUX.replace("SETTINGS", 'url = "http://127.0.0.1:8086"\nretry_max_s = VALUE'), "sink.retry_max_s"),
], ids=["mqtt-scale", "modbus-scale", "modbus-max", "sink-retry"])
def test_a_non_finite_setting_is_a_config_error_naming_it(tmp_path, text, setting, value):
    """TOML has nan and inf; no setting has a use for them (the plant sections refused them, the
    sources and the sink did not: `scale = inf` loaded and every reading was rejected at run time)."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text.replace("VALUE", value)))
    assert f"`{setting}`" in info.value.render() and "not nan or inf" in info.value.render(), info.value.render()


def test_example_config_with_its_inventory_loads(monkeypatch):
    from fmc.plant.ledger import load_inventory

    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    cfg = load_config(EXAMPLE)
    items = load_inventory(EXAMPLE, cfg.equipment, cfg.inventory)
    assert len(items) == 20
    kinds = {i.kind for i in items}
    assert "织机" in kinds and [c.name for c in cfg.equipment_class] == ["织机"]
    assert [m.id for m in cfg.meter] == ["main", "intake-1"]


@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-1"])
def test_check_refuses_a_timeout_that_is_not_a_positive_number(tmp_path, capsys, timeout):
    assert main(["check", "-c", str(write(tmp_path, GOOD)), "--timeout", timeout]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmc check: --timeout must be a positive number of seconds") and err.count("\n") == 1


def test_bad_inventory_csv_fails_at_start_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "ledger.csv").write_text("设备编号,是否数控,原值\nm1,是,12万\nm1,否,100\n", encoding="utf-8")
    path = write(tmp_path, GOOD + '\n[inventory]\ncsv = "ledger.csv"\n')
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "12万" in err and "line 3" in err and "Traceback" not in err


# issue 10, defect 9: a virtual meter's wait is checked against its parts' max_gap_s at start
SLOW_PART = GOOD + """
[[meter]]
id = "main"
carrier = "electricity"
max_gap_s = 10800       # read every 2 h
enterprise_total = false

[[meter]]
id = "tenant"
carrier = "electricity"
enterprise_total = false

[[virtual_meter]]
id = "own"
carrier = "electricity"
add = ["main"]
subtract = ["tenant"]
"""


def test_a_virtual_meter_waiting_less_than_its_slowest_part_is_a_config_error(tmp_path, capsys):
    path = write(tmp_path, SLOW_PART + "max_wait_s = 3600\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = info.value.render()
    assert str(path) in text and "`virtual_meter[0].max_wait_s`" in text, text
    assert "10800" in text and "'main'" in text and "remove max_wait_s" in text, text
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "`virtual_meter[0].max_wait_s`" in err and "Traceback" not in err


def test_a_virtual_meter_waits_for_its_slowest_part_by_default(tmp_path):
    cfg = load_config(write(tmp_path, SLOW_PART))
    assert cfg.virtual_meter[0].max_wait_s == 10800.0  # derived from the parts: main's max_gap_s
    cfg = load_config(write(tmp_path, SLOW_PART.replace("max_gap_s = 10800", "max_gap_s = 600")))
    assert cfg.virtual_meter[0].max_wait_s == 3600.0  # never less than the default
    cfg = load_config(write(tmp_path, SLOW_PART + "max_wait_s = 14400\n"))
    assert cfg.virtual_meter[0].max_wait_s == 14400.0  # a longer wait is fine


def test_a_config_in_another_folder_finds_its_ledger_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fmc check -c runA/agent.toml` from the parent folder: the ledger is runA/inventory.csv, not
    runA/runA/inventory.csv (the config folder was prefixed once by the config, again by the loader)."""
    from fmc.plant.ledger import load_inventory

    folder = tmp_path / "runA"
    folder.mkdir()
    (folder / "inventory.csv").write_text("id,nc\nloom-01,no\ncnc-01,yes\n", encoding="utf-8")
    (folder / "agent.toml").write_text(
        '[enterprise]\nid = "e1"\nname = "n"\nregion = "330602"\nindustry = "17"\n'
        '[inventory]\ncsv = "inventory.csv"\n[sink]\ntype = "embedded"\npath = "store.db"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("runA/agent.toml")
    assert cfg.inventory.csv == folder / "inventory.csv" and cfg.spool.path == folder / "spool.db"
    items = load_inventory("runA/agent.toml", cfg.equipment, cfg.inventory)
    assert [i.id for i in items] == ["loom-01", "cnc-01"]


@pytest.mark.parametrize("level", ["info", "debug"])
def test_library_logs_are_one_json_object_per_line(level: str) -> None:
    """asyncua logs "Publish iteration crashed" with its traceback when a server shuts down; with
    format = "json" every line must still be one JSON object, the traceback only at debug."""
    import io
    import json
    import logging

    from fmc.core.logs import LIBRARY_LOGGERS, LogConfig, setup_logging

    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate,
                    logging.getLogger(name).level) for name in ("fmc", *LIBRARY_LOGGERS)}
    stream = io.StringIO()
    try:
        setup_logging(LogConfig(level=level, format="json"), stream)
        try:
            raise ConnectionError("The session was closed by the client.")
        except ConnectionError:
            logging.getLogger("asyncua.client.ua_session").exception("Publish iteration crashed; retrying in 1s")
        logging.getLogger("asyncua.client.ua_client").warning("a warning the source reports better")
        logging.getLogger("fmc.opcua").info("stopped")
    finally:
        for name, (handlers, propagate, lvl) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.propagate = handlers, propagate
            logger.setLevel(lvl)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is one object
    crash = records[0]
    assert crash["logger"] == "asyncua.client.ua_session" and crash["level"] == "error"
    if level == "debug":
        assert "Traceback" in crash["exc"] and len(records) == 3  # asyncua's warnings too, at debug
    else:
        assert "exc" not in crash and len(records) == 2
        assert crash["msg"] == ("Publish iteration crashed; retrying in 1s "
                                "(ConnectionError: The session was closed by the client.)")
