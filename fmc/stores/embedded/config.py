"""The embedded store's settings: the agent's ``[sink]`` and the central service's ``[store]``
(``type = "embedded"``). Reference: ``fmc/stores/embedded/README.md``; to copy: ``sample.toml``.

This model is the plugin's entry (``fmc.agent.plugin``): it opens the sink the agent drains into and
the query store the central service reads, importing their code only then.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from fmc.agent.plugin import Batching
from fmc.core.config import _Model

if TYPE_CHECKING:
    from fmc.stores.embedded.store import EmbeddedQueryStore
    from fmc.stores.embedded.store import EmbeddedSink as EmbeddedStoreSink

# one local SQLite file: a write is cheap, so drain in big batches soon and retry quickly
BATCHING = Batching(batch_size=5000, max_age_s=0.5, retry_min_s=0.5, retry_max_s=30.0)


class EmbeddedSink(_Model):
    type: Literal["embedded"]
    path: Path = Path("fmc-store.db")

    def open_sink(self) -> EmbeddedStoreSink:
        from fmc.stores.embedded.store import EmbeddedSink as EmbeddedStoreSink

        return EmbeddedStoreSink(self)

    def batching(self) -> Batching:
        return BATCHING

    def relative_to(self, base: Path) -> Self:
        return self if self.path.is_absolute() else self.model_copy(update={"path": base / self.path})

    def open_query_store(self, timezone: str) -> EmbeddedQueryStore:
        from fmc.stores.embedded.store import EmbeddedQueryStore

        return EmbeddedQueryStore(self.path, timezone=timezone)
