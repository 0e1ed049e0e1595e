"""Deployment: systemd units, deploy/install.sh, the compose stack and Grafana file provisioning.

The install script runs for real into a temp prefix (``--no-systemd``): a fresh venv, pip
installing fmc from a copy of the source tree, the example configuration, the rendered unit; then
again, as an upgrade, which must keep the state directory, the configuration and the secrets.
For speed the test (not the script) sets ``PIP_NO_DEPS=1`` and puts this interpreter's
site-packages on ``PYTHONPATH`` for fmc's dependencies, the way ``--system-site-packages`` would;
``FMC_TEST_FULL_INSTALL=1`` makes it install every dependency too (about 30 s instead of 5), and then
checks that the central role brought the central extra. The gateway install (the agent role from
the wheel, with its real dependencies and without extras) is tests/test_gateway_install.py.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from fmc.central.grafana.push import DATASOURCE_UID

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
UNITS = {"agent": DEPLOY / "systemd" / "fmc-agent.service", "central": DEPLOY / "systemd" / "fmc-api.service"}
INSTALL = DEPLOY / "install.sh"
# compose interpolation: ${VAR}, ${VAR:-default}, ${VAR:?message}; $$ is a literal dollar
_COMPOSE_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# --- systemd units -------------------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file as {section: [(key, value), …]} (keys repeat in systemd, so a list)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None and "=" in line, f"line {n}: {raw!r} is neither a section nor key=value"
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    values = [v for k, v in unit.get(section, []) if k == key]
    assert len(values) == 1, f"[{section}] {key}: expected once, found {values}"
    return values[0]


def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMG]?)", size).groups()  # type: ignore[union-attr]
    return int(number) << {"": 0, "K": 10, "M": 20, "G": 30}[unit]


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", value)
    assert m, value
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


@pytest.mark.parametrize("role", ["agent", "central"])
def test_unit_has_the_hardening_and_the_layout_install_sh_expects(role: str) -> None:
    unit = parse_unit(UNITS[role].read_text(encoding="utf-8"))
    assert set(unit) == {"Unit", "Service", "Install"}
    assert one(unit, "Unit", "Description")
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    config = "agent.toml" if role == "agent" else "central.toml"
    command = "run" if role == "agent" else "api"
    assert one(unit, "Service", "ExecStart") == f"/opt/fmc/venv/bin/fmc {command} -c /etc/fmc/{config}"
    expected = {
        "User": "fmc", "Group": "fmc", "Type": "simple",
        "StateDirectory": "fmc", "ConfigurationDirectory": "fmc", "WorkingDirectory": "/var/lib/fmc",
        "Restart": "on-failure", "RestartPreventExitStatus": "2", "KillSignal": "SIGTERM",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "CapabilityBoundingSet": "", "AmbientCapabilities": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "SystemCallFilter": "@system-service",
        "EnvironmentFile": f"-/etc/fmc/{config.replace('.toml', '.env')}",
    }
    assert {k: one(unit, "Service", k) for k in expected} == expected
    # systemd's own directories are the only writable places under ProtectSystem=strict
    assert not [v for k, v in unit["Service"] if k == "ReadWritePaths"]
    # the install script puts the venv at $prefix/venv with /opt/fmc as the default prefix
    script = INSTALL.read_text(encoding="utf-8")
    assert 'prefix="/opt/fmc"' in script and 'venv="$prefix/venv"' in script
    assert 'config_dir="/etc/fmc"' in script and 'state_dir="/var/lib/fmc"' in script


def test_the_agent_unit_sees_serial_lines_and_no_other_device() -> None:
    # Modbus RTU and DL/T 645 read RS-485 adapters and UARTs; PrivateDevices=yes would hide them
    agent = parse_unit(UNITS["agent"].read_text(encoding="utf-8"))
    assert one(agent, "Service", "DevicePolicy") == "closed"
    allowed = sorted(v for k, v in agent["Service"] if k == "DeviceAllow")
    assert allowed == ["char-ttyACM rw", "char-ttyAMA rw", "char-ttyS rw", "char-ttyUSB rw"]
    assert one(agent, "Service", "SupplementaryGroups") == "dialout"  # owns /dev/tty{S,USB,ACM}* on Debian
    assert not [v for k, v in agent["Service"] if k == "PrivateDevices"]
    api = parse_unit(UNITS["central"].read_text(encoding="utf-8"))
    assert one(api, "Service", "PrivateDevices") == "yes"  # the API reads no device


def test_agent_unit_fits_a_small_gateway_and_waits_for_the_spool_flush() -> None:
    from fmc.agent.runtime import Agent

    unit = parse_unit(UNITS["agent"].read_text(encoding="utf-8"))
    memory_max = _bytes(one(unit, "Service", "MemoryMax"))
    assert 256 << 20 <= memory_max <= 768 << 20  # a 1-2 GB gateway keeps room for the OS and the broker
    assert _bytes(one(unit, "Service", "MemoryHigh")) < memory_max
    flush_s = inspect.signature(Agent.__init__).parameters["shutdown_flush_s"].default
    assert _seconds(one(unit, "Service", "TimeoutStopSec")) >= flush_s + 10  # flush, then commit and close


def test_agent_unit_waits_for_as_long_as_the_agent_allows_its_stop() -> None:
    """systemd kills the agent after TimeoutStopSec: no sooner than the agent's own bounds of its stop
    (fmc/agent/runtime.py), for a gateway of up to nine sources at the default batch size."""
    from fmc.agent.ingest import Ingest
    from fmc.agent.plugin import Source
    from fmc.agent.runtime import Agent
    from fmc.stores.influxdb.config import InfluxDBSink

    def default(f: Any, name: str) -> float:
        return float(inspect.signature(f).parameters[name].default)

    unit = parse_unit(UNITS["agent"].read_text(encoding="utf-8"))
    sources = 9 * default(Source.stop, "timeout")  # stopped one after another
    commit = default(Ingest.stop, "timeout")
    flush = default(Agent.__init__, "shutdown_flush_s")
    end_drain = max(5.0, InfluxDBSink.model_fields["batch_size"].default / 1000)  # Agent._end_drain's
    assert _seconds(one(unit, "Service", "TimeoutStopSec")) >= sources + commit + flush + end_drain
    # the example config spools into the unit's StateDirectory
    example = tomllib.loads((DEPLOY / "examples" / "agent.toml").read_text(encoding="utf-8"))
    assert Path(example["spool"]["path"]).parent == Path("/var/lib/fmc")


# --- pyproject.toml: the dependencies' floors ----------------------------------------------------------------

# The lowest version of each dependency fmc's code works with, and what needs it. pip installs any version
# pyproject.toml allows (the one a venv has already, a constraints file, a mirror, Debian's python3-paho-mqtt
# under --system-site-packages): a floor below one of these is an agent that fails at every start, which
# systemd restarts for good. Each row was checked once by hand, installing exactly that version (pip install
# --no-deps --target DIR name==version, DIR first on PYTHONPATH) and running what uses it, and where a row
# names an API the version before it too; the suite installs no old version. Code that starts using an API
# newer than a row's version raises that row and the floor in pyproject.toml together.
# (distribution, the extra whose own requirement sets it, or None for `pip install fmc`): (version, needs)
MINIMUM_VERSIONS: dict[tuple[str, str | None], tuple[str, str]] = {
    ("paho-mqtt", None): ("2.2", "paho.mqtt.exception.MalformedPacket (fmc.sources.mqtt.source); 2.1 has no "
                                 "paho.mqtt.exception"),
    ("pymodbus", None): ("3.10", "read_*_registers(..., device_id=) (fmc.sources.modbus.link); 3.9 calls it slave="),
    ("pymodbus", "demo"): ("3.13", "pymodbus.simulator's SimDevice with action= (fmc.demo.modbus_meter); 3.12 "
                                   "refuses it"),
    ("protobuf", None): ("5.26", "checked with the Sparkplug source's tests (message_factory.GetMessageClass)"),
    ("asyncua", None): ("2.1", "checked with the OPC UA source's tests"),
    ("msgspec", None): ("0.18", "checked with the MQTT source's tests (msgspec.json)"),
    ("httpx", None): ("0.27", "checked with the InfluxDB sink's tests"),
    ("sniffio", None): ("1.3", "checked with the InfluxDB sink's tests"),
    ("pydantic", None): ("2.6", "checked with the sources' and the sink's tests (every configuration model)"),
    ("prometheus-client", None): ("0.20", "checked with the sources' tests (fmc.agent.metrics)"),
    ("pyserial", None): ("3.5", "checked with the DL/T 645 source's tests"),
    ("fastapi", "central"): ("0.115", "checked with fmc demo (it serves the API)"),
    ("uvicorn", "central"): ("0.30", "checked with fmc demo"),
    ("httptools", "central"): ("0.6", "checked with fmc demo"),
    ("uvloop", "central"): ("0.19", "checked with fmc demo"),
    ("grafana-client", "central"): ("5", "checked with tests/test_grafana_push.py"),
    ("amqtt", "demo"): ("0.11", "checked with fmc demo (its MQTT broker)"),
}


def _requirements(extra: str | None) -> list[Requirement]:
    """What ``pip install fmc`` (or ``fmc[extra]``) asks for: the dependencies and the extra's own, the
    extras it names (``fmc[central]``) followed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    out = [Requirement(d) for d in project["dependencies"]]
    todo, seen = [] if extra is None else [extra], set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            for r in map(Requirement, project["optional-dependencies"][name]):
                if r.name == "fmc":
                    todo += r.extras
                else:
                    out.append(r)
    return out


def _floors(extra: str | None) -> dict[str, Version | None]:
    """The lowest version pip may pick of each distribution: the highest ``>=`` (or ``==``) of the
    requirements naming it, None when none sets one."""
    floors: dict[str, Version | None] = {}
    for r in _requirements(extra):
        name = canonicalize_name(r.name)
        lows = [Version(s.version) for s in r.specifier if s.operator in (">=", "==")]
        got = floors.get(name)
        floors[name] = max([*lows, *([got] if got else [])], default=None)
    return floors


def test_the_dependency_floors_are_versions_the_code_works_with() -> None:
    for (name, extra), (minimum, needs) in MINIMUM_VERSIONS.items():
        floor = _floors(extra).get(name)
        where = "pip install fmc" if extra is None else f"pip install 'fmc[{extra}]'"
        assert floor is not None and floor >= Version(minimum), (
            f"{where} may install {name} {floor or 'of any version'}, the code needs {minimum}: {needs}")
    # every dependency has its row, so a new one gets its floor checked too
    base, central = set(_floors(None)), set(_floors("central"))
    wanted = ({(n, None) for n in base} | {(n, "central") for n in central - base}
              | {(n, "demo") for n in set(_floors("demo")) - central})
    assert wanted <= set(MINIMUM_VERSIONS), f"no row in MINIMUM_VERSIONS: {sorted(wanted - set(MINIMUM_VERSIONS))}"


# --- deploy/install.sh, for real -----------------------------------------------------------------------------


@dataclass
class Installed:
    prefix: Path
    source: Path
    first: subprocess.CompletedProcess[str]

    @property
    def venv(self) -> Path:
        return self.prefix / "venv"


def _copy_source(dest: Path) -> Path:
    """The package's sources only: the install must not write into the tree it installs from."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for package in ("fmc",):
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@functools.cache
def _dependencies_path() -> str:
    """This interpreter's site-packages without fmc: its dependencies, as installed for the tests. With the
    tests' own fmc on PYTHONPATH pip would find fmc installed "outside environment" and install every
    wheel, also one the script must tell it to reinstall (an upgrade to a build of the same version)."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    folder = Path(tempfile.mkdtemp(prefix="fmc-test-deps-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for entry in purelib.iterdir():
        if entry.name != "fmc" and not entry.name.startswith(("fmc-", "__editable__.fmc-", "__editable___fmc_")):
            (folder / entry.name).symlink_to(entry)
    return str(folder)


def _install_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    if os.environ.get("FMC_TEST_FULL_INSTALL") != "1":
        env["PIP_NO_DEPS"] = "1"
        env["PYTHONPATH"] = _dependencies_path()
    return env


def run_install(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL), *map(str, args)], capture_output=True, text=True,
                          env=_install_env(), timeout=timeout, cwd=str(ROOT / "deploy"))


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("install")
    source = _copy_source(base / "src with space")  # paths with spaces must survive the script's quoting
    before = _tree(source)
    prefix = base / "opt-fmc"
    result = run_install("--prefix", prefix, "--no-systemd", "--from", source, "--python", sys.executable)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _tree(source) == before, "the install wrote into the source tree"
    yield Installed(prefix, source, result)


def test_install_makes_a_working_venv_and_says_what_to_do_next(installed: Installed) -> None:
    fmc = installed.venv / "bin" / "fmc"
    version = subprocess.run([str(fmc), "--version"], capture_output=True, text=True, env=_install_env(), timeout=60)
    assert version.returncode == 0, version.stderr
    assert re.fullmatch(r"fmc \d+\.\d+\.\d+\S*\n", version.stdout)
    probe = "import fmc; print(fmc.__file__)"
    where = subprocess.run([str(installed.venv / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                           env=_install_env(), timeout=60, cwd="/")
    assert where.stdout.startswith(str(installed.venv)), where.stdout + where.stderr  # the installed copy, not ours
    plans = list((installed.venv / "lib").glob("python3*/site-packages/fmc/indicators/plans/*.toml"))
    assert {p.name for p in plans} == {p.name for p in (ROOT / "fmc" / "indicators" / "plans").glob("*.toml")}
    out = installed.first.stdout
    assert f"created venv {installed.venv}" in out and version.stdout.strip() in out
    for step in ("next steps:", f"{installed.prefix}/etc/agent.toml", f"{installed.prefix}/etc/agent.env",
                 "fmc check -c", "fmc run -c"):
        assert step in out
    assert "extra" not in out.split("installed fmc", 1)[1].splitlines()[0]  # the agent role installs no extra
    for central in ("central.toml", "fmc api", "fmc keys", "grafana"):  # the next steps are the agent's
        assert central not in out, central
    etc = installed.prefix / "etc"
    assert (etc / "inventory.csv").read_bytes() == (DEPLOY / "examples" / "inventory.csv").read_bytes()
    assert stat.S_IMODE((etc / "agent.env").stat().st_mode) == 0o600
    config = tomllib.loads((etc / "agent.toml").read_text(encoding="utf-8"))
    assert config["spool"]["path"] == f"{installed.prefix}/var/spool.db"  # state under the prefix without systemd
    assert (installed.prefix / "var").is_dir()


def test_rendered_unit_points_at_the_installed_venv(installed: Installed) -> None:
    rendered = installed.prefix / "share" / "systemd" / "fmc-agent.service"
    unit = parse_unit(rendered.read_text(encoding="utf-8"))
    exec_start = one(unit, "Service", "ExecStart")
    binary = f"{installed.venv}/bin/fmc"
    assert exec_start == f"{binary} run -c /etc/fmc/agent.toml"
    assert os.access(binary, os.X_OK)
    # the rest is the unit of the repository, unchanged
    original = UNITS["agent"].read_text(encoding="utf-8")
    assert rendered.read_text(encoding="utf-8") == original.replace("/opt/fmc/", f"{installed.prefix}/")


def test_upgrade_keeps_state_config_and_secrets(installed: Installed, tmp_path: Path) -> None:
    etc, var = installed.prefix / "etc", installed.prefix / "var"
    spool = var / "spool.db"
    with sqlite3.connect(spool) as db:
        db.execute("CREATE TABLE IF NOT EXISTS points (id INTEGER PRIMARY KEY, line TEXT)")
        db.execute("INSERT INTO points (line) VALUES ('enterprise_daily,enterprise=x equipment_total=3i 1')")
    db.close()
    (var / "keep-me").write_text("state", encoding="utf-8")
    # a configuration the new fmc passes (its check runs before the agent would restart on it), with a
    # store and a spool outside the folders compared
    (etc / "agent.toml").write_text(
        '[enterprise]\nid = "e-1"\nname = "edited by the user"\nregion = "330602"\nindustry = "17"\n'
        f'[sink]\ntype = "embedded"\npath = "{tmp_path / "store.db"}"\n[spool]\npath = "{tmp_path / "spool.db"}"\n',
        encoding="utf-8")
    (etc / "agent.env").write_text("FMC_MQTT_PASSWORD=s3cret\n", encoding="utf-8")
    (etc / "inventory.csv").write_text("id,name\nloom-01,织机\n", encoding="utf-8")
    before = _tree(installed.prefix / "etc") | {f"var/{k}": v for k, v in _tree(var).items()}
    # the next build: a fix in the code, fmc's version unchanged (as in every build so far), so its wheel
    # has the name of the one installed
    source = _copy_source(tmp_path / "src")
    init = source / "fmc" / "__init__.py"
    init.write_text(init.read_text(encoding="utf-8") + '\nTEST_BUILD = "the upgrade"\n', encoding="utf-8")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(source)], capture_output=True, text=True, env=_install_env(), timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (tmp_path / "dist").glob("fmc-*.whl")

    result = run_install("--prefix", installed.prefix, "--no-systemd", "--from", wheel, "--python", sys.executable)
    assert result.returncode == 0, result.stdout + result.stderr
    after = _tree(installed.prefix / "etc") | {f"var/{k}": v for k, v in _tree(var).items()}
    assert after == before
    assert "created venv" not in result.stdout
    for kept in ("agent.toml", "inventory.csv", "agent.env"):
        assert f"kept {etc / kept}" in result.stdout
    assert "fmc check" not in result.stderr  # passed: nothing to say
    probe = subprocess.run([str(installed.venv / "bin" / "python"), "-c",
                            "import fmc; print(getattr(fmc, 'TEST_BUILD', 'the code installed before'))"],
                           capture_output=True, text=True, env=_install_env(), timeout=60, cwd="/")
    assert probe.stdout.strip() == "the upgrade", probe.stdout + probe.stderr  # what the agent restarts on
    with sqlite3.connect(spool) as db:
        assert db.execute("SELECT count(*) FROM points").fetchone() == (1,)
    db.close()


def test_an_upgrade_whose_configuration_the_new_fmc_refuses_says_so_and_exits_non_zero(
    installed: Installed, tmp_path: Path
) -> None:
    """The new fmc refuses the configuration kept: the script runs its fmc check before the agent
    would restart on it, prints the check's output and what to do, and exits 1 (under systemd the
    running agent is not restarted: its unit would stop at exit 2 and the gateway collect nothing)."""
    etc = installed.prefix / "etc"
    config = etc / "agent.toml"
    kept = config.read_bytes()
    try:
        config.write_text('[enterprise]\nid = "edited by the user"\n', encoding="utf-8")
        result = run_install("--prefix", installed.prefix, "--no-systemd", "--from", installed.source,
                             "--python", sys.executable)
        assert result.returncode == 1, result.stdout + result.stderr
        out = result.stdout + result.stderr
        assert f"fmc check -c {config}" in out and "refuses" in out
        assert "setting `enterprise.name`: Field required" in out  # the check's own words
        assert "done:" not in result.stdout
        assert config.read_text(encoding="utf-8") == '[enterprise]\nid = "edited by the user"\n'
    finally:
        config.write_bytes(kept)
    # under systemd (not run here: it installs into /etc) the same check comes before the restart
    script = INSTALL.read_text(encoding="utf-8")
    assert script.index("check_upgrade || exit 1") < script.index('systemctl restart "$unit"')


def test_an_upgrade_where_only_a_connection_fails_the_check_goes_on(installed: Installed, tmp_path: Path) -> None:
    """A broker away (an MQTT source on a port nobody listens on) fails fmc check with exit 1, as routine
    on a factory floor: the agent rides it out on its spool, so the upgrade says so and goes on (under
    systemd: restarts the agent) instead of stopping a fleet's upgrade at every gateway with a machine off."""
    from tests.ports import free_port

    etc = installed.prefix / "etc"
    config = etc / "agent.toml"
    kept = config.read_bytes()
    try:
        config.write_text(
            '[enterprise]\nid = "e-1"\nname = "n"\nregion = "330602"\nindustry = "17"\n'
            f'[sink]\ntype = "embedded"\npath = "{tmp_path / "store.db"}"\n[spool]\npath = "{tmp_path / "spool.db"}"\n'
            f'[[mqtt]]\nname = "plant"\nclient_id = "fmc-e-1"\nhost = "127.0.0.1"\nport = {free_port()}\n'
            '[[mqtt.subscribe]]\ntopic = "plant/{equipment}/{signal}"\nvalue_path = "value"\n',
            encoding="utf-8")
        check = subprocess.run([str(installed.venv / "bin" / "fmc"), "check", "-c", str(config)], capture_output=True,
                               text=True, env=_install_env(), timeout=120)
        assert check.returncode == 1 and "FAIL" in check.stdout + check.stderr, check.stdout + check.stderr
        result = run_install("--prefix", installed.prefix, "--no-systemd", "--from", installed.source,
                             "--python", sys.executable)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "found connections failing (exit 1)" in result.stderr and "restarting" in result.stderr
        assert "done:" in result.stdout
    finally:
        config.write_bytes(kept)


def test_central_role_installs_the_api_unit_and_a_usable_central_config(
    installed: Installed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fmc.cli.plugins import load_central_config

    etc = installed.prefix / "etc"
    agent_files = {name: (etc / name).read_bytes() for name in ("agent.toml", "agent.env", "inventory.csv")}
    result = run_install("--prefix", installed.prefix, "--no-systemd", "--role", "central", "--from",
                         installed.source, "--python", sys.executable)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {name: (etc / name).read_bytes() for name in agent_files} == agent_files  # the other role's files
    assert "fmc api -c" in result.stdout
    assert re.search(r"^  installed fmc \S+ with the central extra$", result.stdout, re.M), result.stdout
    steps = result.stdout[result.stdout.index("next steps:"):]
    assert f"{etc}/central.toml" in steps and "fmc keys create -c" in steps and "fmc grafana push" in steps
    assert "fmc run" not in steps and "fmc check" not in steps and "inventory.csv" not in steps
    if os.environ.get("FMC_TEST_FULL_INSTALL") == "1":  # with its dependencies: the central extra's are there
        site = next((installed.venv / "lib").glob("python3*/site-packages"))
        have = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
        assert {"fastapi", "uvicorn", "httptools", "grafana_client"} <= have, sorted(have)
    unit = parse_unit((installed.prefix / "share/systemd/fmc-api.service").read_text(encoding="utf-8"))
    assert one(unit, "Service", "ExecStart") == f"{installed.venv}/bin/fmc api -c /etc/fmc/central.toml"
    assert stat.S_IMODE((etc / "central.env").stat().st_mode) == 0o600
    # the copied example loads, and its keys file and sums cache are in the state directory, not next to the config
    monkeypatch.setenv("INFLUX_TOKEN", "t")
    monkeypatch.setenv("INFLUX_PASSWORD", "p")
    cfg = load_central_config(etc / "central.toml")
    assert cfg.api.keys_file == installed.prefix / "var" / "keys.db"
    assert cfg.cache.path == installed.prefix / "var" / "sums-cache.db"
    assert cfg.registry.csv == etc / "enterprises.csv" and cfg.registry.csv.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--role", "gateway"], "--role must be agent or central (got 'gateway')"),
    (["--from", "/nonexistent/fmc"], "--from /nonexistent/fmc: no such file or directory"),
    (["--from", "README.md"], "not a directory and not a .whl file"),
    (["--frm", "x"], "unknown argument: --frm"),
    (["--prefix"], "--prefix needs a directory"),
    (["--python", "no-such-python3"], "no-such-python3 is missing or older than Python 3.11"),
    (["--prefix", "/tmp/a b"], "--prefix '/tmp/a b': no spaces"),
    (["--prefix", "/tmp/50%"], "no spaces, quotes, backslashes or %"),
])
def test_install_refuses_bad_arguments_with_a_sentence(tmp_path: Path, args: list[str], message: str) -> None:
    args = [a.replace("README.md", str(ROOT / "README.md")) for a in args]
    result = run_install("--no-systemd", "--prefix", tmp_path / "p", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert not (tmp_path / "p").exists()


def test_install_without_root_refuses_systemd(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # as root the script would install for real; run the check as an unprivileged user instead
        nobody = shutil.which("setpriv")
        if nobody is None:
            pytest.skip("running as root without setpriv: cannot try the non-root path")
        cmd = [nobody, "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(INSTALL), "--prefix",
               str(tmp_path / "p")]
    else:
        cmd = ["bash", str(INSTALL), "--prefix", str(tmp_path / "p")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 2
    assert "needs root: run with sudo, or pass --no-systemd" in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_units_pass_systemd_analyze_verify(installed: Installed, tmp_path: Path) -> None:
    for role, unit in UNITS.items():
        # rendered for the test's prefix, so that ExecStart names a binary that exists
        rendered = tmp_path / unit.name
        rendered.write_text(unit.read_text(encoding="utf-8").replace("/opt/fmc/", f"{installed.prefix}/"),
                            encoding="utf-8")
        result = subprocess.run(["systemd-analyze", "verify", str(rendered)], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, f"{role}: {result.stdout}{result.stderr}"
        # and it fails for a unit that is wrong, so the check is real
        broken = tmp_path / f"broken-{unit.name}"
        broken.write_text(rendered.read_text(encoding="utf-8").replace("Restart=on-failure", "Restart=sometimes"),
                          encoding="utf-8")
        bad = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60)
        assert "failed to parse service restart specifier" in (bad.stdout + bad.stderr).lower()


# --- compose -------------------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text(encoding="utf-8"))


def _env_example() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (COMPOSE_DIR / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", key), line
            out[key] = value
    return out


def _compose_vars() -> dict[str, tuple[str | None, str | None]]:
    """Every ${VAR} in compose.yaml: (operator, argument)."""
    text = (COMPOSE_DIR / "compose.yaml").read_text(encoding="utf-8")
    found: dict[str, tuple[str | None, str | None]] = {}
    for m in _COMPOSE_VAR.finditer(text):
        found.setdefault(m.group(1), (m.group(2), m.group(3)))
    return found


def _interpolate(value: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        got = env.get(name, "")
        if op in (":-", "-") and not got:
            return arg or ""
        if op in (":?", "?") and not got:
            raise AssertionError(f"compose would refuse: {name}: {arg}")
        return got

    return _COMPOSE_VAR.sub(sub, value).replace("$$", "$")


def test_compose_services_images_and_ports() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"influxdb", "grafana", "mosquitto", "fmc-api"}
    assert services["influxdb"]["image"] == "influxdb:2.7"
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    assert services["fmc-api"]["build"] == {"context": "../..", "dockerfile": "deploy/compose/Dockerfile"}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port} is not bound to BIND_ADDRESS"
        assert service.get("restart") == "unless-stopped", name
    named = set(compose["volumes"])
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "$")):
                assert source in named, f"{name}: volume {source} is not declared"


def test_compose_bind_mounts_exist_in_the_repository() -> None:
    env = _env_example()
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            parts = _interpolate(volume, env).split(":")
            if not parts[0].startswith("."):
                continue
            source = (COMPOSE_DIR / parts[0]).resolve()
            assert source.exists(), f"{name}: {parts[0]} ({source.relative_to(ROOT)}) does not exist"
            assert parts[-1] == "ro", f"{name}: {parts[0]} should be mounted read-only"


def test_every_compose_variable_is_documented_and_secrets_have_no_default() -> None:
    used = _compose_vars()
    documented = _env_example()
    assert set(used) == set(documented), (
        f"in compose.yaml, not in .env.example: {sorted(set(used) - set(documented))}; "
        f"in .env.example, unused: {sorted(set(documented) - set(used))}")
    secrets = {n for n in used if re.search(r"PASSWORD|TOKEN", n)}
    assert secrets == {"INFLUX_ADMIN_PASSWORD", "INFLUX_TOKEN", "INFLUX_AGENT_PASSWORD", "INFLUX_GRAFANA_PASSWORD",
                       "GRAFANA_ADMIN_PASSWORD", "MQTT_PASSWORD"}
    for name in secrets:
        assert used[name][0] == ":?", f"{name}: compose must refuse to start without it"
        assert documented[name] == "", f"{name}: .env.example must not carry a value"
    text = (COMPOSE_DIR / "compose.yaml").read_text(encoding="utf-8")
    for name in secrets:  # every use of a secret refuses to start without it, not only the first
        for m in re.finditer(r"\$\{" + name + r"([^}]*)\}", text):
            assert m.group(1).startswith(":?"), f"{name}{m.group(1)}"
    # a complete .env makes every value resolve
    env = documented | {n: "x" for n in secrets}
    for service in _compose()["services"].values():
        for value in (service.get("environment") or {}).values():
            _interpolate(str(value), env)
    assert (COMPOSE_DIR / ".gitignore").read_text(encoding="utf-8").split() == [".env"]


def test_containers_get_every_variable_their_files_refer_to() -> None:
    services = _compose()["services"]
    grafana_env = set(services["grafana"]["environment"])
    for path in (DEPLOY / "grafana" / "provisioning").rglob("*.yaml"):
        refs = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", "\n".join(
            line for line in path.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#"))))
        assert refs <= grafana_env, f"{path.name}: {sorted(refs - grafana_env)} not given to the grafana container"
    api_env = set(services["fmc-api"]["environment"])
    central = tomllib.loads((COMPOSE_DIR / "central.toml").read_text(encoding="utf-8"))

    def strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        return [node] if isinstance(node, str) else []

    refs = {name for s in strings(central) for name in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", s)}
    assert refs and refs <= api_env, sorted(refs - api_env)
    init = (COMPOSE_DIR / "influxdb-init.sh").read_text(encoding="utf-8")
    influx_env = set(services["influxdb"]["environment"])
    refs = set(re.findall(r"\$\{?(FMC_[A-Z0-9_]+|DOCKER_INFLUXDB_[A-Z0-9_]+)", init))
    assert refs - {"DOCKER_INFLUXDB_INIT_BUCKET_ID"} <= influx_env  # the image exports the bucket id itself


def test_influxdb_init_script_maps_the_database_and_runs_in_the_image() -> None:
    script = COMPOSE_DIR / "influxdb-init.sh"
    assert os.access(script, os.X_OK), "the influxdb image runs only executable *.sh from /docker-entrypoint-initdb.d"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, timeout=30).returncode == 0
    text = script.read_text(encoding="utf-8")
    assert "influx v1 dbrp create" in text and "--rp autogen" in text and "--default" in text
    mount = [v for v in _compose()["services"]["influxdb"]["volumes"] if "influxdb-init.sh" in v]
    assert mount == ["./influxdb-init.sh:/docker-entrypoint-initdb.d/fmc-init.sh:ro"]


def test_compose_central_config_is_valid_and_fits_the_container(monkeypatch: pytest.MonkeyPatch) -> None:
    from fmc.cli.plugins import load_central_config

    service = _compose()["services"]["fmc-api"]
    for name in service["environment"]:
        monkeypatch.setenv(name, "value-" + name.lower())
    cfg = load_central_config(COMPOSE_DIR / "central.toml")
    assert cfg.api.host == "0.0.0.0" and cfg.api.port == 8080
    assert cfg.store.type == "influxdb" and cfg.store.url == "http://influxdb:8086"  # the compose service
    assert str(cfg.api.keys_file).startswith("/var/lib/fmc/")
    assert "fmc-api-data:/var/lib/fmc" in service["volumes"]
    assert service["command"] == ["api", "-c", "/etc/fmc/central.toml"]
    assert any(v.endswith(":/etc/fmc/central.toml:ro") for v in service["volumes"])
    assert any(v.endswith(f":{cfg.registry.csv}:ro") for v in service["volumes"])
    assert any(p.endswith(":8080") for p in service["ports"])
    assert "8080/v1/health" in " ".join(service["healthcheck"]["test"])


def test_dockerfile_builds_from_the_package_sources_only() -> None:
    text = (COMPOSE_DIR / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.12-slim$", text, re.M)
    copied = re.findall(r"^COPY (.+) \S+$", text, re.M)
    sources = [s for line in copied for s in line.split()]
    for source in sources:
        assert (ROOT / source).exists(), source
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    # a sub-package (fmc.indicators.plans) comes with its top-level folder
    assert {p.split(".")[0].rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]} <= set(
        sources)
    assert pyproject["project"]["readme"] in sources
    allowed = [line[1:].rstrip("/") for line in (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")]
    assert sorted(allowed) == sorted(sources)
    assert re.search(r'^USER fmc$', text, re.M)
    assert 'CMD ["api", "-c", "/etc/fmc/central.toml"]' in text
    assert not re.search(r"(?i)^(ENV|ARG)\s.*(TOKEN|PASSWORD|SECRET)", text, re.M)


def test_dockerfile_installs_fmc_with_the_central_extra() -> None:
    text = (COMPOSE_DIR / "Dockerfile").read_text(encoding="utf-8")
    installs = re.findall(r"^RUN pip install (\S+)", text, re.M)
    assert installs == ['"/tmp/fmc-src[central]"'], installs  # fmc api needs the API server of the extra


def test_mosquitto_config_is_accepted_by_mosquitto_2(tmp_path: Path) -> None:
    from tests.servers.mosquitto import MosquittoServer

    conf = (COMPOSE_DIR / "mosquitto.conf").read_text(encoding="utf-8")
    directives = [line for line in conf.splitlines() if line.strip() and not line.startswith("#")]
    assert {"allow_anonymous false", "persistence true", "password_file /mosquitto/data/passwd"} <= set(directives)
    # the container's paths and port are the test server's own; every other directive is used as written
    own = ("listener", "password_file", "persistence_location", "log_dest", "allow_anonymous", "persistence ",
           "max_queued_messages", "max_inflight_messages")
    extra = "\n".join(line for line in directives if not line.startswith(own))
    extra += "\n" + "\n".join(line for line in directives if line.startswith(("max_queued", "max_inflight")))
    with MosquittoServer(tmp_path, extra, users={"fmc": "p@ss;word"}) as server:
        assert _connack(server.host, server.port, "fmc", "p@ss;word") == 0
        assert _connack(server.host, server.port, None, None) != 0  # anonymous
        assert _connack(server.host, server.port, "fmc", "wrong") != 0


def _connack(host: str, port: int, user: str | None, password: str | None) -> int:
    """The broker's CONNACK reason code (0 = accepted), -1 when none came."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"deploy-test-{user}-{password}")
    if user is not None:
        client.username_pw_set(user, password)
    codes: list[int] = []
    client.on_connect = lambda _client, _userdata, _flags, reason, _props: codes.append(reason.value)
    client.connect(host, port, keepalive=5)
    try:
        for _ in range(50):
            client.loop(timeout=0.1)
            if codes:
                break
    finally:
        client.disconnect()
    return codes[0] if codes else -1


# --- Grafana file provisioning -------------------------------------------------------------------------------


def test_provisioned_datasource_is_the_one_the_dashboards_use() -> None:
    from fmc.central.grafana import dashboards as grafana_dashboards

    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/fmc.yaml").read_text(encoding="utf-8"))
    assert prov["apiVersion"] == 1
    [ds] = prov["datasources"]
    assert ds["uid"] == DATASOURCE_UID == grafana_dashboards.DATASOURCE_UID
    assert (ds["type"], ds["access"], ds["jsonData"]["version"]) == ("influxdb", "proxy", "InfluxQL")
    assert ds["jsonData"]["dbName"] == ds["database"] == "${FMC_INFLUX_DATABASE}"
    # secrets only as placeholders, and only in secureJsonData
    assert ds["secureJsonData"] == {"password": "${FMC_INFLUX_PASSWORD}"}
    assert "password" not in ds and "basicAuthPassword" not in ds
    for dashboard in grafana_dashboards.all_dashboards():
        text = json.dumps(dashboard.model)
        refs = set(re.findall(r'"datasource": \{[^{}]*"uid": "([^"]+)"', text))
        assert DATASOURCE_UID in refs and refs <= {DATASOURCE_UID, "-- Grafana --", "grafana"}, dashboard.uid


def test_dashboard_provider_reads_the_mounted_folder_like_push_does() -> None:
    from fmc.central.grafana import dashboards as grafana_dashboards

    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/fmc.yaml").read_text(encoding="utf-8"))
    [provider] = prov["providers"]
    assert provider["type"] == "file"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in _compose()["services"]["grafana"]["volumes"]}
    assert mounts[provider["options"]["path"]] == "../../grafana/dashboards"
    # the same folder `fmc grafana push --lang zh` makes
    zh = grafana_dashboards.build_dashboards(lang="zh")
    assert {(d.folder_uid, d.folder_title) for d in zh} == {(provider["folderUid"], provider["folder"])}
    # the provisioning files are mounted where Grafana looks for them
    for kind in ("datasources", "dashboards"):
        assert mounts[f"/etc/grafana/provisioning/{kind}"] == f"../grafana/provisioning/{kind}"


def test_committed_dashboard_files_are_what_the_code_builds() -> None:
    from fmc.central.grafana import dashboards as grafana_dashboards

    folder = ROOT / "grafana" / "dashboards"
    files = {p.name: p for p in folder.glob("*.json")}
    built = {f"{d.uid}.json": d for d in grafana_dashboards.all_dashboards()}
    assert set(files) == set(built), "regenerate: python -m fmc.central.grafana.dashboards grafana/dashboards"
    for name, dashboard in built.items():
        # file provisioning needs the uid and title inside the JSON itself
        model = json.loads(files[name].read_text(encoding="utf-8"))
        assert (model["uid"], model["title"]) == (dashboard.uid, dashboard.title)
        assert model == json.loads(grafana_dashboards.dashboard_json(dashboard)), f"{name} is stale: regenerate"
