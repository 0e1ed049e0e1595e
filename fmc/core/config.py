"""What every config model shares: the base model, the error type, name patterns, carriers.

Kept apart from ``fmc.agent.config`` so the section modules (plant, inventory, OPC UA) can use it
while ``fmc.agent.config`` assembles them into the agent's configuration.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fmc.core.regions import INDUSTRY_CODE_PATTERN, REGION_CODE_PATTERN

# Names that become tag values in the store: bounded, printable, no line-protocol specials
# beyond what the encoder escapes. Topic segments are checked again at run time.
NAME_PATTERN = r"^[^\x00-\x1f\x7f\\]{1,128}$"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
# The gateway id of an agent without `[enterprise] gateway`, and the gateway that rollups written
# without a `gateway` tag (by an fmc before gateway ids) are read as (docs/design.md §4).
DEFAULT_GATEWAY = "main"
TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


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
    # TOML has nan and inf; no setting may be one (no scale, limit, interval or coefficient has a
    # use for them: a setting that can be "none" is left out)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


# --- loading -----------------------------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# where a setting's value came from: a location in the file, as pydantic's error locations give it
Location = tuple[str | int, ...]


def _substitute_env(node: Any, loc: Location, missing: list[tuple[str, str]], substituted: set[Location]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute_env(v, (*loc, k), missing, substituted) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, (*loc, i), missing, substituted) for i, v in enumerate(node)]
    if isinstance(node, str):

        def repl(m: re.Match[str]) -> str:
            substituted.add(loc)  # a secret, whatever the key is called: never quoted in a message
            value = os.environ.get(m.group(1))
            if value is None:
                missing.append((_loc_text(loc), m.group(1)))
                return ""
            return value

        return _ENV_REF.sub(repl, node)
    return node


def _loc_text(loc: Location) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_FIX_BY_TYPE = {
    "missing": "add this setting",
    "extra_forbidden": "remove it, or check its spelling against deploy/examples/agent.toml",
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "float_parsing": "write a number",
    "float_type": "write a number",
    "finite_number": "write a number (not nan or inf)",
    "bool_type": "write true or false",
    "bool_parsing": "write true or false",
    "string_type": "write text in quotes",
    "less_than_equal": "use a smaller value",
    "greater_than_equal": "use a larger value",
    "greater_than": "use a larger value",
    "literal_error": "use one of the values named",
    "union_tag_invalid": "set type = \"influxdb\" or type = \"embedded\"",
    "union_tag_not_found": "set type = \"influxdb\" or type = \"embedded\"",
    "too_short": "add at least one entry",
}


# For settings with a fixed form, say what the form is rather than quoting a regex.
_FORM_BY_SETTING = {
    "region": "a 6-digit GB/T 2260 administrative division code such as \"330602\" (a city: \"330600\")",
    "industry": "a GB/T 4754-2017 industry division code such as \"17\" (textiles) or \"2611\"",
    "id": "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64 characters",
    "name": "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64 characters",
    "gateway": "a stable id of this gateway within the enterprise such as \"hall-a\": letters, digits, '.', '_' "
    "or '-', starting with a letter or digit, at most 64 characters",
    "url": "a URL such as \"http://127.0.0.1:8086\"",
    "listen": "host:port such as \"127.0.0.1:9273\" or \"[::1]:9273\"",
}


# the user:password@ of a URL, anywhere in a text (a URL that failed validation may be malformed)
_URL_CREDENTIALS = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#]*@")


def redacted_url(text: str) -> str:
    """``text`` with the ``user:password@`` part of any URL in it left out, for messages and logs."""
    return _URL_CREDENTIALS.sub(r"\1", text)


def problems_from(err: ValidationError, from_env: Collection[Location] = ()) -> list[tuple[str, str, str]]:
    """(setting, what is wrong, how to fix) of each error. The value is quoted ("got …") unless it
    may be a secret: a password's or token's, an unknown key's (a misspelt `pasword`) or one that
    came from an ``${ENV}`` reference (``from_env``, from ``read_toml``); a URL's credentials never."""
    problems = []
    for e in err.errors(include_url=False):
        # a tagged union adds its tag to the location (sink.influxdb.url, rules[0].threshold.above)
        tags = ("influxdb", "embedded", "threshold", "map", "builtin")
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p in tags)]
        # model-level validators report at the section; function-after wrappers add noise
        loc = [p for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
        msg = e["msg"].removeprefix("Value error, ")
        fix = _FIX_BY_TYPE.get(e["type"], "")
        if e["type"].startswith("union_tag") and loc[:1] != ["sink"]:
            fix = "use one of the types named"
        if e["type"] == "string_pattern_mismatch":
            last = next((p for p in reversed(loc) if isinstance(p, str)), "")
            msg = "has the wrong form"
            fix = "write " + _FORM_BY_SETTING.get(last, "it in the form docs/configuration.md gives")
        given = e.get("input")
        secret = ("password" in str(loc) or "token" in str(loc) or e["type"] == "extra_forbidden"
                  or any(tuple(loc[:len(env_loc)]) == env_loc for env_loc in from_env))
        if e["type"] not in ("missing", "model_type") and not isinstance(given, dict | list) and not secret:
            msg += f" (got {given!r})"
        problems.append((_loc_text(tuple(loc)) or "(top level)", redacted_url(msg), fix))
    return problems


def read_toml(
    path: Path, *, missing_fix: str = "pass the right path with -c", env: bool = True,
    from_env: set[Location] | None = None,
) -> dict[str, Any]:
    """A config file's TOML, ``${ENV}`` references substituted; every problem a ConfigError.
    ``from_env`` gets the location of each value a reference went into, for ``problems_from``."""
    try:
        # utf-8-sig: a file saved as "UTF-8 with BOM" (older Windows Notepad, many Chinese editors)
        # reads as without it; tomllib refuses the BOM as "Invalid statement" at line 1, column 1
        raw_text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(path, [("(file)", "the file does not exist", missing_fix)]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, [("(file)", f"cannot read it: {e}", "check permissions and UTF-8 encoding")]) from None
    try:
        data = tomllib.loads(raw_text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [("(syntax)", f"not valid TOML: {e}", "fix the syntax at that line")]) from None
    if not env:
        return data
    missing: list[tuple[str, str]] = []
    data = _substitute_env(data, (), missing, from_env if from_env is not None else set())
    if missing:
        raise ConfigError(
            path,
            [(loc, f"refers to ${{{name}}}, which is not set", f"export {name}=… before starting fmc")
             for loc, name in missing],
        )
    return data


class TLSConfig(_Model):
    """``[<source>.tls]`` of a source that talks to an MQTT broker ([[mqtt]], [[sparkplug]])."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both for a client certificate, or neither")
        return self

    def relative_to(self, base: Path) -> TLSConfig:
        """The same files, relative paths taken from ``base`` (the config file's folder)."""
        update = {k: base / p for k in ("ca_file", "cert_file", "key_file")
                  if (p := getattr(self, k)) is not None and not p.is_absolute()}
        return self.model_copy(update=update) if update else self


class EnterpriseConfig(_Model):
    id: str = Field(pattern=ID_PATTERN, description="stable enterprise id, e.g. a unified social credit code")
    name: str = Field(min_length=1, max_length=200)
    region: str = Field(pattern=REGION_CODE_PATTERN, description="6-digit administrative division code (GB/T 2260)")
    industry: str = Field(pattern=INDUSTRY_CODE_PATTERN, description="GB/T 4754-2017 division, e.g. '17'")
    timezone: str = "Asia/Shanghai"
    gateway: str = Field(
        default=DEFAULT_GATEWAY, pattern=ID_PATTERN,
        description="this gateway's id within the enterprise (tag `gateway` on the rollups); unique per "
        "enterprise when several gateways serve one enterprise",
    )

    _tz = field_validator("timezone")(lambda cls, v: known_timezone(v))


@dataclass(frozen=True)
class InventoryProblem:
    """One thing wrong in an inventory source, located as the user sees it."""

    message: str
    line: int | None = None  # spreadsheet row, header = the header's row (usually 1); None: whole file
    column: str | None = None  # the header as written in the file

    @property
    def where(self) -> str:
        """'line 7, 原值', 'line 1' or '' (the whole file)."""
        parts = [f"line {self.line}"] if self.line is not None else []
        if self.column:
            parts.append(self.column)
        return ", ".join(parts)

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message
