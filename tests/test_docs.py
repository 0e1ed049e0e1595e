"""The docs point at what exists: the map of docs/design.md names every folder of ``fmc/`` and only
paths that exist, every relative link of the documentation resolves, and no page uses a name the
tree no longer has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "grafana" / "README.md", *(ROOT / "docs").glob("*.md"),
               *(ROOT / "deploy").rglob("*.md"), *(ROOT / "fmc").rglob("README.md")])
# names of the layout before fmc/ was one package
STALE = [r"(?<![\w/])collector/", r"(?<![\w/.])collector\.", r"(?<![\w/])adapters/", r"(?<![\w/])schemas/",
         r"(?<!\w)influxdb_query", r"(?<!\w)grafana_dashboards", r"stores/influxdb/query\.md"]


def _the_map() -> str:
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    start = text.index("\n## The map\n")
    return text[start:text.index("\n## ", start + 1)]


def _expand(path: str) -> list[str]:
    """``fmc/plant/{states,meters}.py`` -> both; ``fmc/sources/<name>/`` -> a glob."""
    m = re.search(r"\{([^}]*)\}", path)
    if m:
        return [p for part in m.group(1).split(",") for p in _expand(path[:m.start()] + part + path[m.end():])]
    return [re.sub(r"<[^>]*>", "*", path)]


def test_design_opens_with_the_map() -> None:
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    assert re.findall(r"^## .*", text, re.M)[0] == "## The map"


def test_the_map_has_a_row_for_every_folder_of_fmc() -> None:
    rows = set(re.findall(r"^\| `(fmc/[^`]*)/` \|", _the_map(), re.M))
    folders = {f"fmc/{p.name}" for p in (ROOT / "fmc").iterdir() if (p / "__init__.py").exists()}
    folders = {f if f not in ("fmc/sources", "fmc/stores") else f"{f}/<name>" for f in folders}
    assert rows == folders


def test_every_path_the_map_names_exists() -> None:
    paths = [p for p in re.findall(r"`((?:fmc|tests|docs|grafana|deploy|scripts)/[^`\s]*)`", _the_map())]
    assert len(paths) > 20
    for path in paths:
        for one in _expand(path):
            assert list(ROOT.glob(one.rstrip("/"))), f"docs/design.md, the map: {path} does not exist"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_relative_links_resolve_and_no_stale_name_is_left(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"[a-z]+:", target):
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)}: link to {target}, which does not exist"
    for pattern in STALE:
        found = re.search(pattern, text)
        assert not found, f"{doc.relative_to(ROOT)}: {found.group(0)!r} is a name of the old layout"
