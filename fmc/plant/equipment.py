"""The equipment inventory (设备台账): every piece of in-scope production equipment.

Connected or not, each item counts in the denominators of the NC rate and the networking rate
(DESIGN §2). Items come from ``[[equipment]]`` tables in the agent config and/or a CSV ledger
named by ``[inventory] csv``; ``fmc.plant.ledger`` reads the CSV and merges the two.

An item is *counted on a day* when it is in the statistical scope and in service that day:
from ``commissioned`` (inclusive) to ``decommissioned`` (exclusive), so equipment scrapped on
31 December is not in that year's year-end count (年末数).
"""

from __future__ import annotations

import os
import re
import unicodedata
from datetime import date
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from fmc.core.config import ID_PATTERN, NAME_PATTERN, ConfigError, InventoryProblem, _Model

# A state-tracker class name: one "word" of Unicode letters/digits, '_' or '-', so a category
# written in Chinese (织机) gives a usable class name without transliteration. Checked with Python's
# `re` (not pydantic's Rust regex, whose \w differs) so every slug ``kind_from_category`` makes passes.
KIND_PATTERN = r"^[^\W_][\w\-]{0,63}$"
_KIND_RE = re.compile(KIND_PATTERN)
DEFAULT_KIND = "equipment"


def kind_from_category(category: str | None) -> str:
    """'Air-jet Loom' -> 'air_jet_loom', '织机' -> '织机'; no usable category -> 'equipment'."""
    if not category:
        return DEFAULT_KIND
    text = unicodedata.normalize("NFKC", category).casefold()
    slug = re.sub(r"[\W_]+", "_", text).strip("_")[:64].rstrip("_")
    return slug or DEFAULT_KIND


class EquipmentItem(_Model):
    """One line of the ledger. ``name`` defaults to the id, ``kind`` to the category's slug."""

    id: str = Field(pattern=ID_PATTERN, description="unique equipment id; the `equipment` tag in the store")
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    category: str | None = Field(default=None, pattern=NAME_PATTERN, description="e.g. 织机, CNC lathe")
    kind: str | None = Field(default=None, description="state-tracker class name, e.g. loom")
    nc: bool = Field(description="numerically controlled / digital equipment (数控设备)")
    key_process: bool = Field(default=False, description="key-process equipment (关键工序设备)")
    asset_value: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="原值, yuan; 0 is none")
    commissioned: date | None = None
    decommissioned: date | None = None
    in_scope: bool = Field(default=True, description="production equipment within the statistical scope")
    connected: bool = Field(default=False, description="the agent expects data from it")

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str | None) -> str | None:
        if v is not None and not _KIND_RE.fullmatch(v):
            raise ValueError(
                f"kind {v!r} is not a class name: one word of letters, digits, '_' or '-', at most 64 characters"
            )
        return v

    @field_validator("asset_value")
    @classmethod
    def _asset_value(cls, v: float | None) -> float | None:
        # a machine in service has an original value: a 0 is an empty cell, as fixed-asset systems export
        # it. Counted as a value, it would raise the asset-value NC rate's coverage (equipment_valued) while
        # adding nothing to its sums, and the rate would be published on the machines that have one.
        return None if v == 0 else v

    @model_validator(mode="after")
    def _defaults_and_dates(self) -> EquipmentItem:
        if (
            self.commissioned is not None
            and self.decommissioned is not None
            and self.decommissioned < self.commissioned
        ):
            raise ValueError(
                f"decommissioned {self.decommissioned.isoformat()} is before commissioned "
                f"{self.commissioned.isoformat()}"
            )
        # frozen model: fill the derived defaults once, here, so every reader sees the same values
        if self.name is None:
            object.__setattr__(self, "name", self.id)
        if self.kind is None:
            object.__setattr__(self, "kind", kind_from_category(self.category))
        return self

    def in_service(self, on: date) -> bool:
        """Commissioned on or before ``on`` and not yet decommissioned on ``on``."""
        if self.commissioned is not None and on < self.commissioned:
            return False
        return self.decommissioned is None or on < self.decommissioned

    def counts_on(self, on: date) -> bool:
        """In the NC-rate / networking-rate denominators on that day."""
        return self.in_scope and self.in_service(on)


class InventoryConfig(_Model):
    """``[inventory]`` in the agent config: where the CSV ledger is (relative to the config file)."""

    csv: Path | None = None


class InventoryError(ConfigError):
    """A bad inventory file: every problem found, nothing imported.

    A ``ConfigError`` so the CLI's existing handler prints it and exits with code 2.
    """

    def __init__(self, file: str | os.PathLike[str] | None, problems: list[InventoryProblem]) -> None:
        self.inventory_problems = problems
        super().__init__(file, [(p.where or "(file)", p.message, "") for p in problems])

    def render(self) -> str:
        lines = [f"{self.file}: bad equipment inventory, nothing imported ({len(self.inventory_problems)} problem(s))"]
        lines.extend(f"  - {p}" for p in self.inventory_problems)
        return "\n".join(lines)
