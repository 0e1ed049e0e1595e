"""The import rule (pyproject.toml, [tool.importlinter]) holds on the tree, and each contract fails
when a lower layer imports a higher one: an import that runs the wrong way is written into a copy
of the package and `lint-imports` must name the broken contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the copy, not the installed package
    only = [arg for c in contracts for arg in ("--contract", c)]
    return subprocess.run([str(LINT), "--no-cache", "--config", str(tree / "pyproject.toml"), *only], cwd=tree,
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "fmc", tmp_path / "fmc", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    done = lint(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # a formula reaching up into the agent's runtime
        ("fmc/plant/tce.py", "from fmc.agent import runtime", "layers"),
        # the core knowing the central service
        ("fmc/core/points.py", "import fmc.central.service", "layers"),
        # the agent picking a concrete store (that is for the composition roots)
        ("fmc/agent/runtime.py", "from fmc.stores.influxdb import sink", "layers"),
        # the two siblings of one layer are independent
        ("fmc/indicators/engine.py", "from fmc.plant import meters", "layers"),
        # a source using the agent's inside, not the interface it implements
        ("fmc/sources/mqtt/source.py", "from fmc.agent import spool", "plugins"),
        # a formula doing database I/O
        ("fmc/indicators/pooling.py", "import sqlite3", "pure"),
        # the gateway agent pulling in the API framework of the central extra
        ("fmc/agent/ingest.py", "import fastapi", "gateway"),
    ],
)
def test_an_import_that_runs_the_wrong_way_breaks_its_contract(tree: Path, module: str, line: str,
                                                                 contract: str) -> None:
    assert lint(tree, contract).returncode == 0
    target = tree / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}  # noqa\n", encoding="utf-8")
    done = lint(tree, contract)
    assert done.returncode != 0, done.stdout
    assert "1 broken" in done.stdout, done.stdout
