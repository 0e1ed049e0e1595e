"""The InfluxDB store's settings: the agent's ``[sink]`` and the central service's ``[store]``
(``type = "influxdb"``). Reference: ``fmc/stores/influxdb/README.md``; to copy: ``sample.toml``.

This model is the plugin's entry (``fmc.agent.plugin``): it opens the sink the agent writes line
protocol to and the query store the central service reads with InfluxQL, importing them only then.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from pydantic import Field, SecretStr, model_validator

from fmc.agent.plugin import Batching
from fmc.core.config import _Model

if TYPE_CHECKING:
    from fmc.stores.influxdb.query import InfluxQueryStore
    from fmc.stores.influxdb.sink import InfluxDBSink as InfluxDBStoreSink


class InfluxDBSink(_Model):
    type: Literal["influxdb"]
    url: str = Field(pattern=r"^https?://[^\s/]+(/.*)?$")
    dialect: Literal["v1", "v2"] = "v1"
    database: str | None = None
    retention_policy: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    org: str | None = None
    bucket: str | None = None
    token: SecretStr | None = None
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    batch_max_age_s: float = Field(default=1.0, ge=0)
    gzip: bool = True
    timeout_s: float = Field(default=10.0, gt=0)
    retry_min_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=60.0, gt=0)
    ca_file: Path | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _dialect(self) -> InfluxDBSink:
        if self.dialect == "v1" and not self.database:
            raise ValueError("dialect 'v1' writes to a database: set database = \"fmc\"")
        if self.dialect == "v2" and not (self.org and self.bucket):
            raise ValueError("dialect 'v2' writes to an org and a bucket: set org = \"…\" and bucket = \"…\"")
        if self.dialect == "v2" and self.token is None:
            raise ValueError("dialect 'v2' needs an API token: token = \"${INFLUX_TOKEN}\"")
        return self

    def open_sink(self) -> InfluxDBStoreSink:
        from fmc.stores.influxdb.sink import InfluxDBSink as InfluxDBStoreSink

        return InfluxDBStoreSink(self)

    def batching(self) -> Batching:
        return Batching(self.batch_size, self.batch_max_age_s, self.retry_min_s, self.retry_max_s)

    def relative_to(self, base: Path) -> Self:
        return self

    def open_query_store(self, timezone: str) -> InfluxQueryStore:
        from fmc.stores.influxdb.query import InfluxQueryStore

        return InfluxQueryStore(self, timezone=timezone)
