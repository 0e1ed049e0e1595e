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
import re
import tomllib
from pathlib import Path

import pytest

from fmc.cli import extras
from fmc.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# the packages of the extras that a gateway must not have (import names)
CENTRAL_MODULES = ("fastapi", "starlette", "uvicorn", "amqtt", "grafana_client")


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
    assert base == {"paho-mqtt", "asyncua", "httpx", "sniffio", "pydantic", "prometheus-client"}
    central = _extra_distributions("central")
    assert {"fastapi", "uvicorn", "httptools", "uvloop", "grafana-client"} == central
    assert _extra_distributions("demo") == central | {"amqtt"}
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
