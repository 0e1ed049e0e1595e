"""What each command needs beyond the gateway install.

``pip install fmc`` is the edge agent: ``fmc run``, ``check``, ``spool``, ``opcua``, ``inventory``
and the central commands that only read a store (``indicators``, ``reports``, ``keys``). The
commands below need an extra (``pyproject.toml``, ``[project.optional-dependencies]``); on an
install without it they refuse with one line that names the extra to install, exit code 2, before
anything is loaded — never a traceback from deep inside. The check only looks whether the modules
can be found (``importlib.util.find_spec``); it imports nothing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Needs:
    extra: str  # the name in [project.optional-dependencies]
    modules: tuple[str, ...]  # the top-level modules of that extra the command imports


# the `fmc` subcommand -> what it needs (tests/test_gateway_install.py checks this against pyproject.toml)
NEEDS: dict[str, Needs] = {
    "api": Needs("central", ("fastapi", "uvicorn")),
    "grafana": Needs("central", ("grafana_client",)),
    # the demo serves the API too: its extra takes the central one
    "demo": Needs("demo", ("amqtt", "fastapi", "uvicorn")),
}


def missing_module(modules: tuple[str, ...]) -> str | None:
    """The first of ``modules`` that cannot be imported here, or None."""
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):  # a broken or half-removed package counts as missing
            return name
    return None


def refusal(command: str | None, prog: str | None = None) -> str | None:
    """The one line ``fmc COMMAND`` (or ``prog``, e.g. ``fmc grafana push``) prints when its extra is
    not installed, or None when it can run."""
    needs = NEEDS.get(command or "")
    if needs is None:
        return None
    missing = missing_module(needs.modules)
    if missing is None:
        return None
    return (f"{prog or f'fmc {command}'}: needs the {needs.extra} extra: pip install 'fmc[{needs.extra}]' "
            f"({missing} is not installed)")
