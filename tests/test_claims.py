"""``fmc check`` refuses two agents that claim the same equipment (issue 11, item 5).

The store is asked which gateways wrote ``equipment_daily`` for the agent's equipment ids: on the
real InfluxDB (``SELECT … GROUP BY equipment, gateway`` over ``/query``) and on the embedded store.
Rows without a gateway tag are gateway ``main``'s. A store that cannot answer: "cannot tell".
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import httpx
import pytest

from fmc.agent.claims import check_claims, check_gateway_hosts, claims_result, gateway_hosts_result
from fmc.agent.plugin import CheckResult, EquipmentClaim, GatewayHost
from fmc.agent.selfmetrics import host_tag
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


NOW_NS = time.time_ns()
HOUR_NS = 3600 * 10**9


def agent_seen(host: str, gateway: str | None, hours_ago: float, enterprise: str = ENTERPRISE) -> Point:
    """An ``agent`` point (the minute's self-metrics) of ``host`` as ``gateway`` (None: an fmc before the tag)."""
    tags = {"enterprise": enterprise, "host": host} | ({"gateway": gateway} if gateway else {})
    return Point("agent", tags, {"up": 1, "uptime_s": 60.0}, NOW_NS - int(hours_ago * HOUR_NS))


AGENTS = [
    agent_seen("gw-a", "main", 0.2),  # the agent being checked
    agent_seen("gw-b", "main", 1.0),  # a second agent left at the default id
    agent_seen("gw-b", "main", 3.0),
    agent_seen("gw-old", None, 5.0),  # an fmc before the tag: gateway "main"
    agent_seen("gw-c", "hall-b", 0.5),
    agent_seen("gw-gone", "main", 72.0),  # replaced three days ago
    agent_seen("gw-x", "main", 0.1, "E-OTHER"),  # another enterprise's
]

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
    lines = [encode(p) for p in SEED + AGENTS]
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


# --- another host writing as this agent's gateway ----------------------------------------------------------


async def test_the_store_lists_the_hosts_of_each_gateway_since_a_time(sink) -> None:
    got = await sink.gateway_hosts(ENTERPRISE, NOW_NS - 48 * HOUR_NS)
    assert sorted((g.host, g.gateway) for g in got) == [
        ("gw-a", "main"), ("gw-b", "main"), ("gw-c", "hall-b"), ("gw-old", "")]
    assert {g.host: g.last_ns for g in got}["gw-b"] == AGENTS[1].ts_ns  # the latest of its points


async def test_another_host_writing_as_this_gateway_is_a_warning_naming_it(sink) -> None:
    r = await check_gateway_hosts(sink, enterprise("main"), "gw-a", NOW_NS)
    assert (r.ok, r.warning, r.undecided) == (True, True, False)
    assert "2 other host(s) wrote as gateway 'main' in the last 2 days: 'gw-b' (last " in r.detail
    assert "'gw-old'" in r.detail and "gw-gone" not in r.detail and "gw-c" not in r.detail and "gw-x" not in r.detail
    assert "give each its own [enterprise] gateway" in r.detail
    r = await check_gateway_hosts(sink, enterprise("hall-b"), "gw-c", NOW_NS)
    assert (r.ok, r.warning) == (True, False) and "no other host wrote as gateway 'hall-b'" in r.detail


async def test_a_store_that_cannot_list_hosts_cannot_tell() -> None:
    dead = InfluxDBSinkConfig(type="influxdb", url=f"http://127.0.0.1:{free_port()}", database="fmc").open_sink()
    try:
        r = await check_gateway_hosts(dead, enterprise("main"), "gw-a", NOW_NS)
    finally:
        await dead.aclose()
    assert (r.ok, r.undecided) == (False, True) and r.detail.startswith("cannot tell: ")


def test_the_host_verdict_names_the_latest_first_and_at_most_five() -> None:
    rows = [GatewayHost(f"h{i}", "main", NOW_NS - i * HOUR_NS) for i in range(7)]
    r = gateway_hosts_result("main", "h0", rows)
    assert r.warning and "6 other host(s)" in r.detail and "and 1 more" in r.detail
    assert r.detail.index("'h1'") < r.detail.index("'h5'") and "'h6'" not in r.detail


def test_fmc_check_warns_when_another_host_writes_as_its_gateway(tmp_path: Path, capsys) -> None:
    here = host_tag(socket.gethostname())
    with EmbeddedStore(tmp_path / "store.db") as store:
        assert store.write_lines([encode(agent_seen(here, "main", 0.5)), encode(agent_seen(here + "-2", None, 1.0))
                                  ]).refused == []
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[enterprise]\nid = "{ENTERPRISE}"\nname = "t"\nregion = "330602"\nindustry = "1711"\n\n'
        '[sink]\ntype = "embedded"\npath = "store.db"\n\n[spool]\npath = "spool.db"\n', encoding="utf-8")
    assert main(["check", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "sink:gateway" in x)
    assert "warn" in line and f"'{here}-2'" in line and f"'{here}' " not in line
    assert "all checks passed; 1 warning(s)" in out
