"""`fmc run` in a child process, with faults put in on purpose (the supervision tests).

    python -m tests.agent_child FAULTS_JSON run -c agent.toml

FAULTS_JSON is an object; each key is optional:

- ``busy_timeout_s``: how long a spool transaction waits for another connection's lock before
  failing with "database is locked" (the agent's own is 60 s: too long for a test);
- ``writer_raises_after``: after that many successful spool appends, the next one raises
  RuntimeError, as a bug in the ingest writer thread would;
- ``drain_readonly_after``: after that many completed batches, the drain's connection may not
  write any more, as if the spool file had become read-only (SQLite's own read-only error).

Everything else is the real agent: the real CLI, spool, sources and sinks.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import fmc.agent.spool as spool_module
from fmc.cli.main import main

WRITER_FAULT = "writer fault injected by the test"


def install(faults: dict[str, Any]) -> None:
    if "busy_timeout_s" in faults:
        spool_module.BUSY_TIMEOUT_S = float(faults["busy_timeout_s"])
    if "writer_raises_after" in faults:
        appends_left = [int(faults["writer_raises_after"])]
        real_append = spool_module.Spool.append

        def append(self: spool_module.Spool, *args: Any, **kwargs: Any) -> dict[str, int]:
            if appends_left[0] <= 0:
                raise RuntimeError(WRITER_FAULT)
            drops = real_append(self, *args, **kwargs)
            appends_left[0] -= 1
            return drops

        spool_module.Spool.append = append  # type: ignore[method-assign]
    if "drain_readonly_after" in faults:
        completes_left = [int(faults["drain_readonly_after"])]
        real_complete = spool_module.Spool.complete

        def complete(self: spool_module.Spool, *args: Any, **kwargs: Any) -> None:
            if completes_left[0] <= 0:
                self._reader.execute("PRAGMA query_only = 1")
            real_complete(self, *args, **kwargs)
            completes_left[0] -= 1

        spool_module.Spool.complete = complete  # type: ignore[method-assign]


if __name__ == "__main__":
    install(json.loads(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
