"""The gateway install: ``pip install fmc`` without extras is the edge agent, and the commands of the
extras refuse in one line (``fmc.cli.extras``).

The first tests run in this interpreter. The rest build the wheel (``pip wheel --no-deps``) and
install it with ``deploy/install.sh --role agent`` into a fresh venv, as on a gateway, with its real
dependencies from the package index (pip's cache helps). Where the index cannot be reached,
``FMC_TEST_NO_INDEX=1`` installs the wheel without dependencies and gives the venv only the
agent's dependencies — the closure of fmc's requirements without extras, as installed for the
tests — on ``PYTHONPATH``; the central packages stay out of reach either way.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from fmc.cli import extras
from fmc.cli.main import main
from tests.agent_process import agent_config
from tests.ports import free_port
from tests.test_deploy import INSTALL, _copy_source

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# the packages of the extras that a gateway must not have (import names)
CENTRAL_MODULES = ("fastapi", "starlette", "uvicorn", "amqtt", "grafana_client")
NO_INDEX = os.environ.get("FMC_TEST_NO_INDEX") == "1"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1))  # type: ignore[union-attr]


def _extra_distributions(extra: str) -> set[str]:
    """The distributions an extra of pyproject.toml names, ``fmc[other]`` references followed."""
    out: set[str] = set()
    for req in PYPROJECT["project"]["optional-dependencies"][extra]:
        name = _requirement_name(req)
        if name == "fmc":
            inner = re.search(r"\[([^\]]*)\]", req)
            assert inner, req
            for other in inner.group(1).split(","):
                out |= _extra_distributions(other.strip())
        else:
            out.add(name)
    return out


# --- the extras and the refusal, in this interpreter ---------------------------------------------------------


def test_the_gateway_dependencies_are_the_agents_and_the_extras_hold_the_rest() -> None:
    base = {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert base == {"paho-mqtt", "asyncua", "httpx", "sniffio", "pydantic", "prometheus-client", "protobuf",
                    "pyserial", "pymodbus", "msgspec"}
    central = _extra_distributions("central")
    assert {"fastapi", "uvicorn", "httptools", "uvloop", "grafana-client"} == central
    # a base dependency named in an extra only raises its floor (the demo's water meter: pymodbus's simulator)
    assert _extra_distributions("demo") - base == central | {"amqtt"}
    test = _extra_distributions("test")
    assert central | {"amqtt"} <= test
    assert not base & (central | {"amqtt"})
    # uvloop has no Windows build and is a CPython extension
    [uvloop] = [r for r in PYPROJECT["project"]["optional-dependencies"]["central"] if r.startswith("uvloop")]
    assert "sys_platform != 'win32'" in uvloop


def test_each_command_of_an_extra_checks_modules_that_extra_installs() -> None:
    module_dists = importlib.metadata.packages_distributions()
    assert set(extras.NEEDS) == {"api", "grafana", "demo"}
    for command, needs in extras.NEEDS.items():
        wanted = _extra_distributions(needs.extra)
        for module in needs.modules:
            dists = {_canonical(d) for d in module_dists.get(module, [])}
            assert dists & wanted, f"fmc {command}: {module} is not installed by fmc[{needs.extra}]"
        # and the gateway contract forbids the agent every one of them
        contract = next(c for c in PYPROJECT["tool"]["importlinter"]["contracts"] if c["id"] == "gateway")
        assert set(needs.modules) <= set(contract["forbidden_modules"])


def test_every_command_runs_when_its_extra_is_installed() -> None:
    for command in extras.NEEDS:
        assert extras.refusal(command) is None, command
    assert extras.refusal("run") is None and extras.refusal(None) is None


@pytest.mark.parametrize(("argv", "prog", "extra", "module"), [
    (["api", "-c", "/nonexistent/central.toml"], "fmc api", "central", "fastapi"),
    (["api", "-c", "/nonexistent/central.toml"], "fmc api", "central", "uvicorn"),
    (["grafana", "push", "--url", "http://127.0.0.1:9"], "fmc grafana push", "central", "grafana_client"),
    (["demo", "--duration", "1"], "fmc demo", "demo", "amqtt"),
    (["demo", "--duration", "1"], "fmc demo", "demo", "fastapi"),
])
def test_a_command_without_its_extra_refuses_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], prog: str, extra: str,
    module: str,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    # before anything else: the config file named does not exist, and that is not what it says
    assert err == f"{prog}: needs the {extra} extra: pip install 'fmc[{extra}]' ({module} is not installed)\n"


def test_a_broken_package_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(name: str, *args: object) -> None:
        raise ValueError(f"{name}.__spec__ is None")

    monkeypatch.setattr(importlib.util, "find_spec", broken)
    assert extras.missing_module(("fastapi",)) == "fastapi"


# --- the wheel, installed as on a gateway ---------------------------------------------------------------------


@dataclass
class Gateway:
    prefix: Path
    wheel: Path
    install: subprocess.CompletedProcess[str]
    env: dict[str, str]  # the environment every command in the gateway venv runs with

    @property
    def venv(self) -> Path:
        return self.prefix / "venv"

    def run(self, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / "fmc"), *map(str, args)], capture_output=True, text=True,
                              env=self.env, timeout=timeout, cwd=str(self.prefix))

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                              env=self.env, timeout=60, cwd=str(self.prefix))


def _agent_distributions() -> set[str]:
    """fmc's requirements without extras and theirs, recursively, as installed here (what pip installs)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(req, "") for req in importlib.metadata.requires("fmc") or []]
    while todo:
        text, extra = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = (_canonical(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        for sub in importlib.metadata.requires(req.name) or []:
            todo += [(sub, e) for e in (req.extras or {""})]
    return {name for name, _ in seen}


def _only_agent_site_packages(dest: Path) -> Path:
    """A folder with links to the agent's dependencies only (code and metadata), for PYTHONPATH."""
    dest.mkdir()
    for name in sorted(_agent_distributions()):
        dist = importlib.metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            if not (dest / top).exists():
                (dest / top).symlink_to(Path(str(dist.locate_file(top))))
    return dest


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    base = tmp_path_factory.mktemp("gateway")
    source = _copy_source(base / "src")  # the wheel is built from a copy: building writes into the tree
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_NO_DEPS"))}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(base / "dist"),
                            str(source)], capture_output=True, text=True, env=env, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (base / "dist").glob("fmc-*.whl")
    if NO_INDEX:
        env |= {"PIP_NO_DEPS": "1", "PYTHONPATH": str(_only_agent_site_packages(base / "agent-deps"))}
    prefix = base / "gw"
    install = subprocess.run(["bash", str(INSTALL), "--role", "agent", "--no-systemd", "--prefix", str(prefix),
                              "--from", str(wheel), "--python", sys.executable],
                             capture_output=True, text=True, env=env, timeout=400, cwd=str(base))
    assert install.returncode == 0, install.stdout + install.stderr
    yield Gateway(prefix, wheel, install, env)




def gateway_test(test):  # type: ignore[no-untyped-def]
    """Slow: building the wheel and installing its dependencies take about a minute on a loaded machine."""
    return pytest.mark.timeout(600)(pytest.mark.slow(test))


@gateway_test
def test_the_wheel_ships_every_plugins_readme_and_sample_and_the_plans(gateway: Gateway) -> None:
    with zipfile.ZipFile(gateway.wheel) as wheel:
        names = set(wheel.namelist())
    for folder in sorted([*ROOT.glob("fmc/sources/*/"), *ROOT.glob("fmc/stores/*/")]):
        if folder.is_dir() and (folder / "__init__.py").exists():
            rel = folder.relative_to(ROOT).as_posix()
            assert {f"{rel}/README.md", f"{rel}/sample.toml", f"{rel}/config.py"} <= names, rel
    # every document and TOML file of the package (plans, the Grafana README) is in it
    shipped = {p.relative_to(ROOT).as_posix() for ext in ("md", "toml") for p in (ROOT / "fmc").rglob(f"*.{ext}")}
    assert shipped <= names, sorted(shipped - names)
    assert "fmc/indicators/plans/zhejiang-2017-2020.toml" in names
    [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
    with zipfile.ZipFile(gateway.wheel) as wheel:
        text = wheel.read(metadata).decode()
    assert {"Provides-Extra: central", "Provides-Extra: demo", "Provides-Extra: test"} <= set(text.splitlines())


@gateway_test
def test_the_gateway_venv_has_the_agent_and_no_central_dependency(gateway: Gateway) -> None:
    out = gateway.install.stdout
    assert "installing fmc (agent)" in out and "extra" not in out.split("installed fmc", 1)[1].splitlines()[0]
    probe = gateway.python(
        "import importlib.util, fmc, sys\n"
        "print(fmc.__file__)\n"
        "import fmc.agent.runtime, fmc.sources.mqtt.source, fmc.sources.opcua.source, fmc.sources.modbus.source\n"
        "import fmc.stores.influxdb.sink, fmc.stores.embedded.store, fmc.cli.main\n"
        f"print(*[m for m in {CENTRAL_MODULES!r} if importlib.util.find_spec(m) is not None])\n"
        "print(*sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette')))"
    )
    assert probe.returncode == 0, probe.stderr
    where, importable, loaded = [*probe.stdout.splitlines(), "", ""][:3]
    assert where.startswith(str(gateway.venv)), where  # the installed copy, not the source tree
    assert importable == "" and loaded == "", probe.stdout
    site = next((gateway.venv / "lib").glob("python3*/site-packages"))
    installed = {_canonical(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
    base = {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    central = {_canonical(n) for n in _extra_distributions("demo") - base} | {"starlette"}
    assert not installed & central, sorted(installed & central)
    if not NO_INDEX:  # pip installed the agent's dependencies
        assert base <= installed, sorted(base - installed)


@gateway_test
def test_check_on_the_gateway_runs_and_reports_an_unreachable_broker(gateway: Gateway, tmp_path: Path) -> None:
    config = agent_config(tmp_path, mqtt_port=free_port())  # embedded sink; nothing listens at the broker's port
    done = gateway.run("check", "-c", config, "--timeout", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("config ok: enterprise e-330602-1"), done.stdout
    assert re.search(r"^  mqtt:plant +FAIL +connection refused by 127\.0\.0\.1:\d+", done.stdout, re.M), done.stdout
    assert re.search(r"^  sink:embedded +ok ", done.stdout, re.M), done.stdout
    assert lines[-1] == "1 check(s) failed"


@gateway_test
def test_run_on_the_gateway_starts_and_stops_on_sigterm(gateway: Gateway, tmp_path: Path) -> None:
    metrics_port = free_port()
    config = agent_config(tmp_path, mqtt_port=free_port(), metrics_port=metrics_port)
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(gateway.venv / "bin" / "fmc"), "run", "-c", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=gateway.env,
                                cwd=str(tmp_path))
    try:
        deadline = time.monotonic() + 30
        metrics = ""
        while not metrics:
            assert proc.poll() is None, f"fmc run exited at start:\n{log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"no /metrics after 30 s:\n{log.read_text(errors='replace')}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as resp:
                    metrics = resp.read().decode()
            except OSError:
                time.sleep(0.2)
        assert 'fmc_source_connected{source="plant"} 0.0' in metrics  # running, the broker still unreachable
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in log.read_text(errors="replace")


@gateway_test
@pytest.mark.parametrize(("args", "line"), [
    (["api", "-c", "central.toml"],
     "fmc api: needs the central extra: pip install 'fmc[central]' (fastapi is not installed)"),
    (["grafana", "push", "--url", "http://127.0.0.1:9"],
     "fmc grafana push: needs the central extra: pip install 'fmc[central]' (grafana_client is not installed)"),
    (["demo", "--duration", "1"],
     "fmc demo: needs the demo extra: pip install 'fmc[demo]' (amqtt is not installed)"),
])
def test_the_commands_of_the_extras_refuse_on_the_gateway_in_one_line(
    gateway: Gateway, args: list[str], line: str
) -> None:
    (gateway.prefix / "central.toml").write_bytes((ROOT / "deploy" / "examples" / "central.toml").read_bytes())
    done = gateway.run(*args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", line + "\n")


@gateway_test
def test_the_gateway_installs_next_steps_are_the_agents(gateway: Gateway) -> None:
    out = gateway.install.stdout
    steps = out[out.index("next steps:"):]
    etc = gateway.prefix / "etc"
    for wanted in (f"{etc}/agent.toml", f"{etc}/inventory.csv", f"{etc}/agent.env", "fmc check -c", "fmc run -c"):
        assert wanted in steps, steps
    for central in ("central.toml", "central.env", "fmc api", "fmc keys", "grafana", "enterprises.csv"):
        assert central not in out, central
    assert (etc / "agent.toml").exists() and not (etc / "central.toml").exists()
    assert (gateway.prefix / "share" / "systemd" / "fmc-agent.service").exists()
