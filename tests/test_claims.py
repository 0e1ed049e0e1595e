"""``fmc check`` refuses two agents that claim the same equipment (issue 11, item 5).

The store is asked which gateways counted the agent's equipment ids (``equipment_daily`` rows with
``in_inventory_s > 0``): on the real InfluxDB (``SELECT … GROUP BY equipment, gateway`` over
``/query``) and on the embedded store. Rows without a gateway tag are gateway ``main``'s. A machine
handed over from one gateway to another (停用日期 / 启用日期, or its row deleted) is not a clash. A
store that cannot answer: "cannot tell".
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from datetime import date, timedelta
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
from fmc.plant.config import PlantSections
from fmc.plant.equipment import EquipmentItem
from fmc.plant.model import PlantModel
from fmc.plant.rollups import InventoryItem, Site
from fmc.plant.states import EquipmentDay
from fmc.stores.embedded.config import EmbeddedSink as EmbeddedSinkConfig
from fmc.stores.embedded.store import EmbeddedStore
from fmc.stores.influxdb.config import InfluxDBSink as InfluxDBSinkConfig
from tests.ports import free_port

ENTERPRISE = "E-CLAIM"
D = date(2019, 12, 30)


def site(gateway: str | None, enterprise: str = ENTERPRISE) -> Site:
    return Site(enterprise, "330602", "1711", "Asia/Shanghai", gateway)


def equipment_day(s: Site, equipment: str, d: date = D, *, in_inventory: bool = True) -> Point:
    start, end = local_day_bounds(d, s.tz)
    hour = 3600 * 10**9
    return EquipmentDay(equipment, d, start, end, start, end - start - hour, 0, 0, hour, 0, good_samples=10,
                        in_inventory_s=86400.0 if in_inventory else 0.0, nc="true", kind="loom").to_point(s)


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
    equipment_day(site("hall-b"), "b1", date(2019, 12, 31)),  # hall-b still counts b1 on its latest day
    equipment_day(site("hall-b"), "b9", date(2019, 12, 31), in_inventory=False),  # tracked, not in its inventory
]


def enterprise(gateway: str) -> EnterpriseConfig:
    return EnterpriseConfig(id=ENTERPRISE, name="t", region="330602", industry="1711", gateway=gateway)


def open_store_with(request: pytest.FixtureRequest, tmp_path: Path, points: Sequence[Point]):
    """A sink of the fixture's kind over a store holding ``points``."""
    lines = [encode(p) for p in points]
    if request.param == "embedded":
        with EmbeddedStore(tmp_path / "store.db") as store:
            assert store.write_lines(lines).refused == []
        return EmbeddedSinkConfig(type="embedded", path=tmp_path / "store.db").open_sink()
    server, db = request.getfixturevalue("influx_db")
    response = httpx.post(f"{server.url}/write", params={"db": db, "precision": "ns"}, content="\n".join(lines))
    assert response.status_code == 204, response.text
    return InfluxDBSinkConfig(type="influxdb", url=server.url, database=db).open_sink()


@pytest.fixture(params=["embedded", "influxdb"])
async def sink(request: pytest.FixtureRequest, tmp_path: Path):
    opened = open_store_with(request, tmp_path, SEED + AGENTS)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture(params=["embedded", "influxdb"])
def store_kind(request: pytest.FixtureRequest) -> pytest.FixtureRequest:
    return request


async def claims(sink, gateway: str, equipment: Sequence[str]) -> CheckResult:
    return await check_claims(sink, enterprise(gateway), list(equipment))


async def test_the_store_lists_each_equipment_and_gateway(sink) -> None:
    got = await sink.equipment_claims(ENTERPRISE, ["b1", "b2", "b9", "x1", "a1"])
    # b9: rows with in_inventory_s = 0 only (out of hall-b's scope, or before its 启用日期): no claim
    assert sorted((c.equipment, c.gateway) for c in got) == [("b1", "hall-b"), ("b2", "hall-b"), ("x1", "")]
    by = {c.equipment: c for c in got}
    assert (by["b1"].first_ns, by["b1"].last_ns, by["b1"].gateway_last_ns) == (SEED[0].ts_ns, SEED[4].ts_ns,
                                                                                SEED[4].ts_ns)
    assert (by["b2"].first_ns, by["b2"].last_ns) == (SEED[1].ts_ns, SEED[1].ts_ns)
    assert by["x1"].gateway_last_ns == SEED[2].ts_ns


async def test_an_equipment_another_gateway_writes_fails_naming_both(sink) -> None:
    r = await claims(sink, "hall-a", ["a1", "b1", "b2"])
    assert not r.ok and not r.undecided
    assert "2 equipment" in r.detail and "gateway 'hall-a'" in r.detail
    assert "b1 by gateway 'hall-b' (last day 2019-12-31)" in r.detail
    assert "b2 by gateway 'hall-b' (last day 2019-12-31)" in r.detail
    assert (await claims(sink, "hall-a", ["b9"])).ok  # hall-b tracks b9 outside its inventory: counts nowhere


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


# --- a machine moved between two gateways of one enterprise -----------------------------------------------
# configuration.md: an equipment belongs to one gateway at a time. inventory.md lets a move be written with
# 停用日期 in the old ledger and 启用日期 in the new one; or the old row is deleted. Either way each day has
# one gateway counting it: the check must not fail on the new gateway for ever.

MOVED = date(2020, 7, 1)
S_NS = 10**9


def local_ns(d: date) -> int:
    return local_day_bounds(d, site("hall-a").tz)[0]


def hall_a_points(inventory: list[InventoryItem], start: date, days: int) -> list[Point]:
    """What hall-a's plant model writes over ``days`` days from ``start``, every machine in service sending."""
    model = PlantModel(site("hall-a"), PlantSections.model_validate({"plant": {"sample_delay_s": 0}}), inventory,
                       start_ns=local_ns(start))
    out: list[Point] = []
    t = local_ns(start)
    for _ in range(days * 4):
        today = start + timedelta(days=(t - local_ns(start)) // (86_400 * S_NS))
        out += model.observe([Point("signal", {"enterprise": ENTERPRISE, "equipment": i.id, "signal": "kw"},
                                    {"value": 1.0, "quality": 0}, t) for i in inventory if i.in_scope_on(today)], t)
        t += 6 * HOUR_NS
        out += model.advance(t)
    return out


async def test_a_machine_moved_with_a_decommissioning_date_is_handed_over(store_kind, tmp_path: Path) -> None:
    """hall-a's ledger: loom-07 停用日期 2020-07-01; hall-b's: 启用日期 2020-07-01. hall-a keeps tracking
    loom-07 (its equipment_daily has in_inventory_s = 0 from 1 July) and no longer counts it."""
    points = hall_a_points([InventoryItem("loom-01", True), InventoryItem("loom-07", True, decommissioned=MOVED)],
                           date(2020, 6, 28), 6)
    daily = {p.ts_ns: p.fields for p in points if p.measurement == "enterprise_daily"}
    assert daily[local_ns(date(2020, 7, 2))]["equipment_total"] == 1  # hall-a no longer counts it
    sink = open_store_with(store_kind, tmp_path, points)
    hall_b = [EquipmentItem(id="loom-07", nc=True, commissioned=MOVED), EquipmentItem(id="loom-20", nc=True)]
    try:
        for equipment in (hall_b, ["loom-07", "loom-20"]):  # its ledger's items, or bare ids
            r = await check_claims(sink, enterprise("hall-b"), equipment, today=date(2020, 7, 4))
            assert (r.ok, r.warning) == (True, False), r.detail
            assert "handed over: loom-07 from gateway 'hall-a' (its last day 2020-06-30)" in r.detail
    finally:
        await sink.aclose()


async def test_a_machine_moved_by_deleting_its_old_ledger_row_is_handed_over(store_kind, tmp_path: Path) -> None:
    """hall-a's rows up to 30 June still count loom-07; from 1 July hall-a (restarted without the row)
    writes loom-01 alone: it runs on without loom-07, which is hall-b's now. Until hall-a has written a
    day without it, the check fails: both would count it."""
    before = hall_a_points([InventoryItem("loom-01", True), InventoryItem("loom-07", True)], date(2020, 6, 28), 3)
    after = hall_a_points([InventoryItem("loom-01", True)], MOVED, 3)
    for points, today, handed in ((before, MOVED, False), (after, date(2020, 7, 4), True)):
        sink = open_store_with(store_kind, tmp_path, points)  # the store as it is by then
        try:
            r = await check_claims(sink, enterprise("hall-b"), ["loom-07", "loom-20"], today=today)
        finally:
            await sink.aclose()
        if handed:
            assert (r.ok, r.warning) == (True, False) and "handed over: loom-07 from gateway 'hall-a'" in r.detail
        else:
            assert not r.ok and "loom-07 by gateway 'hall-a' (last day 2020-06-30)" in r.detail


def test_the_verdict_on_a_gateway_counting_another_gateways_machine() -> None:
    """Another gateway's claim by when it counted the machine, and when this agent counts it."""
    day_ns = {d: local_ns(date(2020, 6, d)) for d in range(1, 31)}
    still = EquipmentClaim("m1", "hall-a", day_ns[30], day_ns[1], day_ns[30])  # hall-a's latest day counts it
    ended = EquipmentClaim("m1", "hall-a", day_ns[20], day_ns[1], day_ns[30])  # 21-30 June: hall-a without m1
    june30 = date(2020, 6, 30)

    def verdict(item: str | EquipmentItem, *claims: EquipmentClaim) -> CheckResult:
        return claims_result("hall-b", [item], claims, today=june30)

    r = verdict("m1", still)
    assert not r.ok and "m1 by gateway 'hall-a' (last day 2020-06-30)" in r.detail
    assert "this check passes once that gateway has written a day without it" in r.detail
    # hall-b counts it only from 1 July (启用日期): a warning to end it in hall-a's ledger by then
    r = verdict(EquipmentItem(id="m1", nc=True, commissioned=date(2020, 7, 1)), still)
    assert (r.ok, r.warning) == (True, True) and "end it in that inventory by then (停用日期 2020-07-01)" in r.detail
    # hall-b no longer counts it (停用日期, or out of scope): handed to hall-a
    for item in (EquipmentItem(id="m1", nc=True, decommissioned=date(2020, 6, 1)),
                 EquipmentItem(id="m1", nc=True, in_scope=False)):
        r = verdict(item, still)
        assert (r.ok, r.warning) == (True, False) and "handed over: m1 to gateway 'hall-a'" in r.detail
    # hall-a stopped on 20 June and hall-b had not counted it: handed over; hall-b counted it 15-30 June
    # too: a warning, those days count it twice
    r = verdict("m1", ended)
    assert (r.ok, r.warning) == (True, False) and "m1 from gateway 'hall-a' (its last day 2020-06-20)" in r.detail
    r = verdict("m1", ended, EquipmentClaim("m1", "hall-b", day_ns[30], day_ns[15], day_ns[30]))
    assert (r.ok, r.warning) == (True, True) and "on the same days, up to 2020-06-20" in r.detail
    # a sink that says only the last day (no first day, no gateway's latest): as before, a clash
    assert not verdict("m1", EquipmentClaim("m1", "hall-a", day_ns[20])).ok


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
