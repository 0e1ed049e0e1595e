"""Plain-text tables for the terminal that stay aligned with Chinese text (``fmc demo``, ``fmc indicators``)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence


def text_width(text: str) -> int:
    """Columns a terminal gives ``text``: East Asian wide and fullwidth characters take two."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text
    )


def pad(text: str, width: int, align: str = "<") -> str:
    gap = " " * max(0, width - text_width(text))
    return gap + text if align == ">" else text + gap


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Plain-text table; ``align`` has one '<' or '>' per column."""
    widths = [max(text_width(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    def line(cells: Sequence[str]) -> str:
        return "  ".join(pad(str(c), w, a) for c, w, a in zip(cells, widths, align, strict=True)).rstrip()
    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]
