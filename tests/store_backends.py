"""The two stores the central service reads, as a pytest plugin (``tests/conftest.py``): the ``backend``
fixture runs a test on the embedded SQLite store and on a real InfluxDB 1.6, with the agents' way of
writing into each; and points in the writers' exact format (``tests/test_store_contract.py`` checks
that against ``fmc.plant.rollups``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fmc.central.store import IndicatorStore
from fmc.core.lineprotocol import encode
from fmc.core.localtime import local_day_start_ns, zone
from fmc.core.points import Point, Priority
from fmc.indicators.engine import ConsumptionDay, EnterpriseDay
from fmc.plant.rollups import Site
from fmc.stores.embedded.store import EmbeddedQueryStore, EmbeddedStore
from fmc.stores.influxdb.config import InfluxDBSink

TZ = "Asia/Shanghai"
BACKENDS = ["embedded", "influxdb", "influxdb-cached"]


# --- points in the writers' format ------------------------------------------------------------------


def daily_point(site: Site, row: EnterpriseDay) -> Point:
    """An ``enterprise_daily`` point exactly as ``fmc.plant.rollups.enterprise_daily`` makes it
    (``test_helpers_match_the_rollup_writers`` checks that)."""
    return Point(
        "enterprise_daily",
        site.tags(),
        {
            "equipment_total": row.equipment_total,
            "equipment_nc": row.equipment_nc,
            "asset_value_total": float(row.asset_value_total),
            "asset_value_nc": float(row.asset_value_nc),
            # a day the agent was off for long: the ledger's counts alone (``enterprise_daily_unobserved``)
            **({"equipment_networked": row.equipment_networked} if row.equipment_networked is not None else {}),
            **({"nc_equipment_networked": row.nc_equipment_networked}
               if row.nc_equipment_networked is not None else {}),
            # the writers carry it; hand-built rows of older data may not
            **({"equipment_valued": row.equipment_valued} if row.equipment_valued is not None else {}),
        },
        local_day_start_ns(row.day, zone(site.timezone)),
        Priority.ROLLUP,
    )


def consumption_point(site: Site, row: ConsumptionDay) -> Point:
    """A ``consumption_daily`` point as ``fmc.plant.rollups.consumption_daily`` makes it."""
    fields: dict[str, float] = {"amount": float(row.amount)}
    if row.tce is not None:
        fields["tce"] = float(row.tce)
    if row.m3 is not None:
        fields["m3"] = float(row.m3)
    fields["coverage"] = float(row.coverage)
    return Point(
        "consumption_daily",
        site.tags(carrier=row.carrier),
        fields,
        local_day_start_ns(row.day, zone(site.timezone)),
        Priority.ROLLUP,
    )


# --- the two stores ---------------------------------------------------------------------------------


@dataclass
class Backend:
    """A store under test and the agents' way of writing into it (line protocol, in order)."""

    name: str
    store: IndicatorStore
    ingest: Callable[[Sequence[Point]], None]
    open_store: Callable[[], IndicatorStore]  # another store on the same data (e.g. for an app's own loop)


def batches_in_order(points: Sequence[Point]) -> list[list[Point]]:
    """The points in order, cut where a (series, time) repeats: a later write must overwrite an
    earlier one, and within one batch the server may apply equal keys in any order."""
    out: list[list[Point]] = [[]]
    seen: set[tuple[object, int]] = set()
    for p in points:
        key = (p.series_key(), p.ts_ns)
        if key in seen:
            out.append([])
            seen.clear()
        seen.add(key)
        out[-1].append(p)
    return [b for b in out if b]


def _influx_ingest(url: str, db: str) -> Callable[[Sequence[Point]], None]:
    def ingest(points: Sequence[Point]) -> None:
        with httpx.Client(timeout=10.0) as client:
            for batch in batches_in_order(points):
                body = "\n".join(encode(p) for p in batch).encode()
                response = client.post(f"{url}/write", params={"db": db, "precision": "ns"}, content=body)
                assert response.status_code == 204, response.text

    return ingest


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "embedded":
        raw = EmbeddedStore(tmp_path / "store.db")

        def ingest(points: Sequence[Point]) -> None:
            outcome = raw.write_lines([encode(p) for p in points])
            assert outcome.refused == []

        def open_embedded() -> IndicatorStore:
            return EmbeddedQueryStore(tmp_path / "store.db", timezone=TZ)

        store = open_embedded()
        try:
            yield Backend("embedded", store, ingest, open_embedded)
        finally:
            await store.aclose()
            raw.close()
    else:
        from fmc.stores.influxdb.query import InfluxQueryStore

        server, db = request.getfixturevalue("influx_db")

        def open_influx() -> IndicatorStore:
            return InfluxQueryStore(InfluxDBSink(type="influxdb", url=server.url, database=db), timezone=TZ)

        ingest = _influx_ingest(server.url, db)
        if request.param == "influxdb":
            store = open_influx()
        else:
            # the central service's sums cache over the same InfluxDB: whole months from its file
            from fmc.central.sums_cache import SumsCache
            from fmc.indicators.sums import ALL_SUMS

            def open_cached(open_raw: Callable[[], IndicatorStore] = open_influx) -> IndicatorStore:
                return SumsCache(open_raw(), tmp_path / "sums-cache.db", ALL_SUMS,  # type: ignore[arg-type]
                                 source=f"{server.url} {db}")

            cache = open_cached()
            store, open_influx, raw_ingest = cache, open_cached, ingest

            def ingest(points: Sequence[Point]) -> None:
                raw_ingest(points)
                cache.forget()  # the writer's news: every period is read again (another open file sees it too)

        try:
            yield Backend(request.param, store, ingest, open_influx)
        finally:
            await store.aclose()
