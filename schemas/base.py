"""What every config model shares: the base model, the error type, name patterns, carriers.

Kept apart from ``schemas.config`` so the section modules (plant, inventory, OPC UA) can use it
while ``schemas.config`` assembles them into the agent's configuration.
"""

from __future__ import annotations

import os
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict

# Names that become tag values in the store: bounded, printable, no line-protocol specials
# beyond what the encoder escapes. Topic segments are checked again at run time.
NAME_PATTERN = r"^[^\x00-\x1f\x7f\\]{1,128}$"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
CARRIERS = (
    "electricity",
    "natural_gas",
    "coal",
    "diesel",
    "gasoline",
    "lpg",
    "steam",
    "heat",
    "water_intake",
    "water_reused",
    "wastewater",
)


class ConfigError(Exception):
    """A configuration problem a user can fix: which file, which setting, what to do."""

    def __init__(self, file: str | os.PathLike[str] | None, problems: list[tuple[str, str, str]]) -> None:
        self.file = str(file) if file is not None else "<config>"
        self.problems = problems  # (setting, what is wrong, how to fix)
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.file}: invalid configuration ({len(self.problems)} problem(s))"]
        for setting, wrong, fix in self.problems:
            lines.append(f"  - setting `{setting}`: {wrong}")
            if fix:
                lines.append(f"    fix: {fix}")
        return "\n".join(lines)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)




def known_timezone(v: str) -> str:
    """A time-zone setting: an IANA name zoneinfo knows."""
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r}; use an IANA name such as 'Asia/Shanghai'") from None
    return v


def equal_values_by_year(v: dict[int, float]) -> dict[int, float]:
    """Published electricity equal values 等价值 (kgce per kWh) by calendar year."""
    for year, value in v.items():
        if not 1990 <= year <= 2100:
            raise ValueError(f"year {year} is not a calendar year; write e.g. 2020 = 0.3055")
        if not 0 < value < 1:
            raise ValueError(f"{year} = {value}: the equal value is in kgce per kWh, around 0.3")
    return v
