"""``fmc check`` refuses two agents that claim the same equipment (issue 11, item 5).

The store is asked which gateways wrote ``equipment_daily`` for the agent's equipment ids: on the
real InfluxDB (``SELECT … GROUP BY equipment, gateway`` over ``/query``) and on the embedded store.
Rows without a gateway tag are gateway ``main``'s. A store that cannot answer: "cannot tell".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path

import httpx
import pytest

from fmc.agent.claims import check_claims, claims_result
from fmc.agent.plugin import CheckResult, EquipmentClaim
from fmc.cli.main import main
from fmc.core.config import EnterpriseConfig
from fmc.core.lineprotocol import encode
from fmc.core.localtime import local_day_bounds
from fmc.core.points import Point
from fmc.plant.rollups import Site
from fmc.plant.states import EquipmentDay
from fmc.stores.embedded.config import EmbeddedSink as EmbeddedSinkConfig
from fmc.stores.embedded.store import EmbeddedStore
from fmc.stores.influxdb.config import InfluxDBSink as InfluxDBSinkConfig
from tests.ports import free_port

ENTERPRISE = "E-CLAIM"
D = date(2019, 12, 30)


def site(gateway: str | None, enterprise: str = ENTERPRISE) -> Site:
    return Site(enterprise, "330602", "1711", "Asia/Shanghai", gateway)


def equipment_day(s: Site, equipment: str, d: date = D) -> Point:
    start, end = local_day_bounds(d, s.tz)
    hour = 3600 * 10**9
    return EquipmentDay(equipment, d, start, end, start, end - start - hour, 0, 0, hour, 0, good_samples=10,
                        in_inventory_s=86400.0, nc="true", kind="loom").to_point(s)


SEED = [
    equipment_day(site("hall-b"), "b1"),
    equipment_day(site("hall-b"), "b2", date(2019, 12, 31)),
    equipment_day(site(None), "x1"),  # an fmc before gateway ids: gateway "main"
    equipment_day(site("hall-a", "E-OTHER"), "b1"),  # another enterprise's b1 is not a clash
]


def enterprise(gateway: str) -> EnterpriseConfig:
    return EnterpriseConfig(id=ENTERPRISE, name="t", region="330602", industry="1711", gateway=gateway)


@pytest.fixture(params=["embedded", "influxdb"])
async def sink(request: pytest.FixtureRequest, tmp_path: Path):
    lines = [encode(p) for p in SEED]
    if request.param == "embedded":
        with EmbeddedStore(tmp_path / "store.db") as store:
            assert store.write_lines(lines).refused == []
        opened = EmbeddedSinkConfig(type="embedded", path=tmp_path / "store.db").open_sink()
    else:
        server, db = request.getfixturevalue("influx_db")
        response = httpx.post(f"{server.url}/write", params={"db": db, "precision": "ns"}, content="\n".join(lines))
        assert response.status_code == 204, response.text
        opened = InfluxDBSinkConfig(type="influxdb", url=server.url, database=db).open_sink()
    try:
        yield opened
    finally:
        await opened.aclose()


async def claims(sink, gateway: str, equipment: Sequence[str]) -> CheckResult:
    return await check_claims(sink, enterprise(gateway), list(equipment))


async def test_the_store_lists_each_equipment_and_gateway(sink) -> None:
    got = await sink.equipment_claims(ENTERPRISE, ["b1", "b2", "x1", "a1"])
    assert sorted((c.equipment, c.gateway) for c in got) == [("b1", "hall-b"), ("b2", "hall-b"), ("x1", "")]
    assert {c.equipment: c.last_ns for c in got}["b2"] == SEED[1].ts_ns


async def test_an_equipment_another_gateway_writes_fails_naming_both(sink) -> None:
    r = await claims(sink, "hall-a", ["a1", "b1", "b2"])
    assert not r.ok and not r.undecided
    assert "2 equipment" in r.detail and "gateway 'hall-a'" in r.detail
    assert "b1 by gateway 'hall-b' (last day 2019-12-30)" in r.detail
    assert "b2 by gateway 'hall-b' (last day 2019-12-31)" in r.detail


async def test_the_gateways_own_equipment_is_ok(sink) -> None:
    r = await claims(sink, "hall-b", ["b1", "b2", "b3"])
    assert r.ok and "3 equipment" in r.detail


async def test_rows_without_a_gateway_tag_are_gateway_main(sink) -> None:
    assert (await claims(sink, "main", ["x1"])).ok
    r = await claims(sink, "hall-a", ["x1"])
    assert not r.ok and "x1 by gateway 'main' (rows without a gateway tag)" in r.detail


async def test_a_store_that_cannot_answer_cannot_tell() -> None:
    dead = InfluxDBSinkConfig(type="influxdb", url=f"http://127.0.0.1:{free_port()}", database="fmc").open_sink()
    try:
        r = await claims(dead, "hall-a", ["b1"])
    finally:
        await dead.aclose()
    assert (r.ok, r.undecided) == (False, True) and r.detail.startswith("cannot tell: ")

    class NoClaims:
        name = "other"

    r = await claims(NoClaims(), "hall-a", ["b1"])
    assert (r.ok, r.undecided) == (False, True) and "cannot tell" in r.detail


def test_the_verdict_names_at_most_five_and_counts_the_rest() -> None:
    many = [EquipmentClaim(f"m{i:02d}", "hall-b", 0) for i in range(8)]
    r = claims_result("hall-a", [c.equipment for c in many], many)
    assert not r.ok and "8 equipment" in r.detail and "m04 by" in r.detail and "m05 by" not in r.detail
    assert "and 3 more" in r.detail


def test_fmc_check_fails_for_the_second_agent_of_an_equipment(tmp_path: Path, capsys) -> None:
    with EmbeddedStore(tmp_path / "store.db") as store:
        assert store.write_lines([encode(p) for p in SEED]).refused == []
    for gateway, equipment, code in (("hall-a", "b1", 1), ("hall-b", "b1", 0)):
        config = tmp_path / f"{gateway}.toml"
        config.write_text(
            f'[enterprise]\nid = "{ENTERPRISE}"\nname = "t"\nregion = "330602"\nindustry = "1711"\n'
            f'gateway = "{gateway}"\n\n[[equipment]]\nid = "{equipment}"\nnc = true\n\n'
            f'[sink]\ntype = "embedded"\npath = "store.db"\n\n[spool]\npath = "spool-{gateway}.db"\n',
            encoding="utf-8",
        )
        assert main(["check", "-c", str(config)]) == code
        out = capsys.readouterr().out
        line = next(x for x in out.splitlines() if "sink:claims" in x)
        if code:
            assert "FAIL" in line and "b1 by gateway 'hall-b'" in line and "1 check(s) failed" in out
        else:
            assert "ok" in line and "all checks passed" in out
