"""Every benchmark module imports: `make bench` is not part of the test command, so a renamed
helper a benchmark uses (a test fixture module, a store's function) would otherwise only show
when someone runs the benchmarks."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
MODULES = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")


def test_there_are_benchmarks() -> None:
    assert {"mqtt_to_influxdb", "province", "opcua_changes"} <= set(MODULES), MODULES


@pytest.mark.parametrize("name", MODULES)
def test_a_benchmark_module_imports(name: str) -> None:
    module = importlib.import_module(f"bench.{name}")
    assert module.__name__ == f"bench.{name}"
