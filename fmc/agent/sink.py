"""What every store sink offers the drain loop: one write attempt, and a connection check.

The drain loop (``fmc.agent.runtime``) owns retries and backoff, so the InfluxDB sink and the
embedded store behave alike: a sink either takes the lines (reporting any line the store
refused for good), or raises ``SinkUnavailable`` and nothing is deleted from the spool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class SinkUnavailable(Exception):
    """The store cannot take data now (down, 5xx, 429, auth or missing database). Retry later."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


@dataclass(slots=True)
class RefusedLine:
    index: int  # position in the list given to ``write``
    reason: str  # the store's own words
    status: int | None = None


@dataclass(slots=True)
class WriteOutcome:
    written: int
    refused: list[RefusedLine] = field(default_factory=list)
    requests: int = 1


@dataclass(slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


class Sink(Protocol):
    name: str

    async def write(self, lines: list[str]) -> WriteOutcome:
        """Write line-protocol lines (ns precision). Lines the store refuses for good (4xx for that
        line) are reported in ``refused``; anything retryable raises ``SinkUnavailable``."""
        ...

    async def check(self) -> CheckResult: ...

    async def aclose(self) -> None: ...
