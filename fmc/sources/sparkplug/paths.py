"""Path templates over ``group/node/device/metric name`` levels (no dependencies: the config
validates them without loading protobuf).

A template matches level by level: literal text, ``+`` (any one level), ``{name}`` (one level,
captured), and as the last segment ``{name*}`` (one level or more, captured with their slashes) or
``#`` (any further levels, none included).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\*?)\}")


class PathTemplate:
    """A compiled template: per level a literal, '+', or a capture; the last may take the rest."""

    __slots__ = ("names", "rest", "rest_name", "segments", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        parts = text.split("/")
        self.rest = parts[-1] == "#" or bool((m := CAPTURE.fullmatch(parts[-1])) and m.group(2))
        self.rest_name: str | None = None
        if self.rest:
            last = parts.pop()
            if last != "#":
                self.rest_name = CAPTURE.fullmatch(last).group(1)  # type: ignore[union-attr]
        segments: list[tuple[str, str]] = []  # ("lit", text) | ("any", "") | ("cap", name)
        for seg in parts:
            m = CAPTURE.fullmatch(seg)
            if m:
                segments.append(("cap", m.group(1)))
            elif seg == "+":
                segments.append(("any", ""))
            else:
                segments.append(("lit", seg))
        self.segments = tuple(segments)
        self.names = [v for k, v in segments if k == "cap"] + ([self.rest_name] if self.rest_name else [])

    def match(self, levels: Sequence[str]) -> dict[str, str] | None:
        n = len(self.segments)
        if self.rest_name is not None:
            if len(levels) <= n:  # {name*} takes at least one level
                return None
        elif self.rest:
            if len(levels) < n:
                return None
        elif len(levels) != n:
            return None
        captures: dict[str, str] = {}
        for (kind, text), level in zip(self.segments, levels, strict=False):
            if kind == "lit":
                if level != text:
                    return None
            elif kind == "cap":
                captures[text] = level
        if self.rest_name is not None:
            captures[self.rest_name] = "/".join(levels[n:])
        return captures


def validate_template(text: str) -> list[str]:
    """The names a template captures; ValueError with the fix for a template that cannot work."""
    parts = text.split("/")
    names: list[str] = []
    for i, seg in enumerate(parts):
        last = i == len(parts) - 1
        if seg == "#":
            if not last:
                raise ValueError(f"path {text!r}: '#' may only be the last level")
            continue
        m = CAPTURE.fullmatch(seg)
        if m:
            if m.group(2) and not last:
                raise ValueError(f"path {text!r}: {{{m.group(1)}*}} takes the rest of the name, so it must be the "
                                 "last level; use {name} for one level")
            names.append(m.group(1))
        elif "{" in seg or "}" in seg:
            raise ValueError(f"path {text!r}: level {seg!r}: a capture fills a whole level like '{{equipment}}'")
        elif "#" in seg or ("+" in seg and seg != "+"):
            raise ValueError(f"path {text!r}: level {seg!r}: '+' and '#' fill a whole level")
    if len(names) != len(set(names)):
        raise ValueError(f"path {text!r}: a capture name appears twice")
    return names
