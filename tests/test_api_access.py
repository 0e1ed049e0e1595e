"""Scopes end to end: for every endpoint and both formats, what each key may see.

An enterprise key sees its own enterprise only; a region key nothing outside its prefix (the
response bodies name no out-of-scope enterprise or region, and its pooled figures equal those of a
store holding only the in-scope enterprises); a province key sees everything; no key or a revoked
key gets 401. Out-of-scope enterprises get the same 403 whether they exist or not.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_api import (
    BY_ID,
    ENTERPRISES,
    REGISTRY_ONLY,
    SCOPES,
    Api,
    make_api,
    seed_template,
    store_snapshot,
    write_store,
)

PERIOD = "2019"
ALL_IDS = [*BY_ID, REGISTRY_ONLY.enterprise]
REGION_OF = {**{e.id: e.region for e in ENTERPRISES}, REGISTRY_ONLY.enterprise: REGISTRY_ONLY.region}
NAME_OF = {**{e.id: e.name for e in ENTERPRISES}, REGISTRY_ONLY.enterprise: REGISTRY_ONLY.name}
GHOST = "91339999Z9"  # no such enterprise anywhere
LEVEL_DIGITS = {"province": 2, "city": 4, "county": 6}


def prefix_of(scope: str) -> str | None:
    return scope.split(":", 1)[1] if scope.startswith("region:") else None


def visible(scope: str, enterprise: str) -> bool:
    if scope == "province":
        return True
    if scope.startswith("enterprise:"):
        return enterprise == scope.split(":", 1)[1]
    return REGION_OF[enterprise].startswith(prefix_of(scope) or "")


def level_allowed(scope: str, level: str) -> bool:
    if scope.startswith("enterprise:"):
        return level == "enterprise"
    prefix = prefix_of(scope)
    return prefix is None or level not in LEVEL_DIGITS or LEVEL_DIGITS[level] >= len(prefix)


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seed_template(tmp_path_factory)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, seeded_template: Path) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("access")
    store_file = tmp / "store.db"
    shutil.copy(seeded_template, store_file)
    client, keys, key = make_api(tmp, store_file)
    with client:
        yield Api(client, keys, store_file, key)
    keys.close()


# --- what a body names --------------------------------------------------------------------------------------------


def parse_body(resp: httpx.Response) -> list[dict[str, object]]:
    """Every record of a JSON or CSV body as a flat dict (CSV: one per line, English headers)."""
    if resp.headers["content-type"].startswith("text/csv"):
        text = resp.content.decode("utf-8-sig")
        return list(csv.DictReader(io.StringIO(text, newline="")))
    out: list[dict[str, object]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            out.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(resp.json())
    return out


def assert_nothing_outside(resp: httpx.Response, scope: str) -> None:
    """No enterprise, region code or name outside the key's scope, in any field or anywhere in the text."""
    text = resp.content.decode("utf-8-sig")
    for ent in ALL_IDS:
        if not visible(scope, ent):
            assert ent not in text, f"{scope} sees {ent}"
            assert NAME_OF[ent] not in text and NAME_OF[ent][1:] not in text
    prefix = prefix_of(scope)
    own = scope.split(":", 1)[1] if scope.startswith("enterprise:") else None
    for record in parse_body(resp):
        ent = record.get("enterprise")
        if isinstance(ent, str) and ent:
            assert ent in ALL_IDS and visible(scope, ent), (scope, ent)
        region = record.get("region")
        if isinstance(region, str) and region:
            if prefix is not None:
                assert region.startswith(prefix), (scope, region)
            if own is not None:
                assert region == REGION_OF[own]


# --- every endpoint, every key, both formats --------------------------------------------------------------------


def get_urls() -> list[str]:
    urls = ["/v1/targets", "/v1/enterprises", "/v1/enterprises?region=33", "/v1/enterprises?industry=17"]
    for level in ("enterprise", "county", "city", "province", "industry"):
        urls.append(f"/v1/indicators?level={level}&period={PERIOD}")
    for ent in [*ALL_IDS, GHOST]:
        urls += [f"/v1/enterprises/{ent}", f"/v1/enterprises/{ent}/indicators?period={PERIOD}",
                 f"/v1/enterprises/{ent}/reports"]
    return urls


def expected_status(scope: str, url: str) -> int:
    path = url.split("?", 1)[0]
    parts = path.split("/")
    if path.startswith("/v1/enterprises/"):
        ent = parts[3]
        if ent == GHOST:
            return 404 if scope == "province" else 403
        return 200 if visible(scope, ent) else 403
    if path == "/v1/indicators":
        level = url.split("level=", 1)[1].split("&", 1)[0]
        return 200 if level_allowed(scope, level) else 403
    if "region=33" in url and scope.startswith("region:") and scope != "region:33":
        return 403  # a filter wider than the key's region
    return 200


@pytest.mark.parametrize("fmt", ["json", "csv"])
@pytest.mark.parametrize("scope", SCOPES)
def test_every_endpoint_shows_only_the_scope(shared: Api, scope: str, fmt: str) -> None:
    for url in get_urls():
        sep = "&" if "?" in url else "?"
        resp = shared.get(f"{url}{sep}format={fmt}", scope=scope)
        want = expected_status(scope, url)
        assert resp.status_code == want, (scope, url, resp.text)
        assert_nothing_outside(resp, scope)
        if want == 200:
            assert resp.headers["content-type"].startswith("text/csv" if fmt == "csv" else "application/json")
        else:
            assert resp.headers["content-type"] == "application/json"  # errors are JSON in both formats
    # the same with Accept instead of ?format=
    resp = shared.get("/v1/enterprises", scope=scope, headers={"Accept": f"text/{fmt}" if fmt == "csv" else "*/*"})
    assert resp.status_code == 200
    assert_nothing_outside(resp, scope)


@pytest.mark.parametrize("scope", SCOPES)
def test_lists_hold_exactly_the_scope(shared: Api, scope: str) -> None:
    listed = {e["enterprise"] for e in shared.get("/v1/enterprises", scope=scope).json()["items"]}
    assert listed == {e for e in ALL_IDS if visible(scope, e)}
    rows = shared.get(f"/v1/indicators?level=enterprise&period={PERIOD}", scope=scope).json()["items"]
    assert {r["enterprise"] for r in rows} == listed
    assert shared.get(f"/v1/indicators?level=enterprise&period={PERIOD}", scope=scope).headers["X-Total-Count"] == str(
        len(listed))


def test_out_of_scope_enterprises_look_the_same_whether_they_exist_or_not(shared: Api) -> None:
    for scope in ("region:3306", "region:330602", "enterprise:91330602A1"):
        for suffix in ("", "/indicators?period=2019", "/reports"):
            outside = next(e for e in BY_ID if not visible(scope, e))
            a = shared.get(f"/v1/enterprises/{outside}{suffix}", scope=scope)
            b = shared.get(f"/v1/enterprises/{GHOST}{suffix}", scope=scope)
            assert a.status_code == b.status_code == 403
            assert a.json()["detail"].replace(outside, "X") == b.json()["detail"].replace(GHOST, "X")
            assert dict(a.headers).keys() == dict(b.headers).keys()


def test_region_filters_must_lie_inside_the_key(shared: Api) -> None:
    for url in ("/v1/enterprises?region=3301", "/v1/enterprises?region=33",
                f"/v1/indicators?level=enterprise&period={PERIOD}&region=3301",
                f"/v1/indicators?level=county&period={PERIOD}&region=32"):
        resp = shared.get(url, scope="region:3306")
        assert resp.status_code == 403, url
        assert "outside this key's region 3306" in resp.json()["detail"]
    inside = shared.get(f"/v1/indicators?level=enterprise&period={PERIOD}&region=330603", scope="region:3306")
    assert [r["enterprise"] for r in inside.json()["items"]] == ["91330603C3"]
    # an enterprise filter outside the scope gives nothing, not the enterprise
    other = shared.get(f"/v1/indicators?level=enterprise&period={PERIOD}&enterprise=91330102D4", scope="region:3306")
    assert other.status_code == 200 and other.json()["items"] == []
    own = shared.get(f"/v1/indicators?level=enterprise&period={PERIOD}&enterprise=91330602B2",
                     scope="enterprise:91330602A1")
    assert own.status_code == 403


def test_forbidden_levels_say_why(shared: Api) -> None:
    r = shared.get(f"/v1/indicators?level=province&period={PERIOD}", scope="region:3306")
    assert r.status_code == 403 and "pools enterprises outside region 3306" in r.json()["detail"]
    r = shared.get(f"/v1/indicators?level=county&period={PERIOD}", scope="enterprise:91330602A1")
    assert r.status_code == 403 and "only its own enterprise" in r.json()["detail"]
    r = shared.get(f"/v1/indicators?level=province&period={PERIOD}", scope="region:33")
    assert r.status_code == 200 and [x["key"] for x in r.json()["items"]] == ["33"]


def test_no_key_and_revoked_key_get_401_everywhere(shared: Api, tmp_path: Path) -> None:
    key_id, key = shared.keys.create("province", "to be revoked")
    assert shared.client.get("/v1/enterprises", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    shared.keys.revoke(key_id)
    for url in get_urls():
        for headers in ({}, {"Authorization": f"Bearer {key}"}):
            for fmt in ("json", "csv"):
                sep = "&" if "?" in url else "?"
                r = shared.client.get(f"{url}{sep}format={fmt}", headers=headers)
                assert r.status_code == 401, (url, headers)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert all(e not in r.text for e in ALL_IDS)
    for headers in ({}, {"Authorization": f"Bearer {key}"}):
        r = shared.client.put("/v1/enterprises/91330602A1/reports/2019-05", json={"value_added": 1}, headers=headers)
        assert r.status_code == 401
    assert shared.client.get("/v1/health").status_code == 200  # the one endpoint without a key


def test_writes_follow_the_scope(tmp_path: Path, seeded_template: Path) -> None:
    store_file = tmp_path / "store.db"
    shutil.copy(seeded_template, store_file)
    client, keys, key = make_api(tmp_path, store_file)
    api = Api(client, keys, store_file, key)
    with client:
        before = store_snapshot(store_file)
        for scope, ent in (("region:3306", "91330102D4"), ("region:3306", GHOST), ("region:330602", "91330603C3"),
                           ("enterprise:91330602A1", "91330602B2"), ("enterprise:91330602A1", GHOST)):
            r = api.put(f"/v1/enterprises/{ent}/reports/2019-05", {"value_added": 1.0}, scope=scope)
            assert r.status_code == 403, (scope, ent)
        assert store_snapshot(store_file) == before  # nothing written
        assert api.put(f"/v1/enterprises/{GHOST}/reports/2019-05", {"value_added": 1.0}).status_code == 404
        for scope, ent in (("enterprise:91330602A1", "91330602A1"), ("region:3306", "91330603C3"),
                           ("province", "91320500E5")):
            r = api.put(f"/v1/enterprises/{ent}/reports/2019-05", {"value_added": 2.0}, scope=scope)
            assert r.status_code == 200, (scope, ent, r.text)
            assert r.json() == {"enterprise": ent, "period": "2019-05", "figures": {"value_added": 2.0}}
        after = {row for row in store_snapshot(store_file)} - set(before)
        assert sorted(json.loads(row[1])["enterprise"] for row in after) == ["91320500E5", "91330602A1",
                                                                             "91330603C3"]
    keys.close()


# --- pooled figures equal those of the in-scope enterprises alone --------------------------------------------------

FIGURES = ("value", "baseline", "target", "yoy", "avg_annual", "coverage", "status", "rank", "members", "included",
           "assessed", "met_count", "met_share")


@pytest.mark.parametrize("scope", ["region:33", "region:3306", "region:330602"])
def test_pooled_figures_equal_a_store_of_the_scope_alone(shared: Api, tmp_path: Path, scope: str) -> None:
    prefix = prefix_of(scope) or ""
    inside = tuple(e for e in ENTERPRISES if e.region.startswith(prefix))
    alone_file = write_store(tmp_path / "alone.db", inside)
    client, keys, key = make_api(tmp_path, alone_file, inside, registry_extra=False)
    alone = Api(client, keys, alone_file, key)
    with client:
        for level in ("enterprise", "county", "city", "province", "industry"):
            if not level_allowed(scope, level):
                continue
            mine = shared.get(f"/v1/indicators?level={level}&period={PERIOD}", scope=scope).json()["items"]
            theirs = alone.get(f"/v1/indicators?level={level}&period={PERIOD}").json()["items"]
            # industry rows are pooled within the key's region; the province key's within the province
            ident = (lambda r: r["industry"]) if level == "industry" else (lambda r: r["key"])
            assert [ident(r) for r in mine] == [ident(r) for r in theirs], level
            for a, b in zip(mine, theirs, strict=True):
                for name, va in a["indicators"].items():
                    vb = b["indicators"][name]
                    assert {f: va[f] for f in FIGURES} == {f: vb[f] for f in FIGURES}, (level, a["key"], name)
            csv_mine = shared.get(f"/v1/indicators?level={level}&period={PERIOD}&format=csv&lang=en", scope=scope)
            csv_theirs = alone.get(f"/v1/indicators?level={level}&period={PERIOD}&format=csv&lang=en")
            strip = (lambda line: {k: v for k, v in line.items() if k != "region"}) if level == "industry" else (
                lambda line: line)
            assert [strip(x) for x in parse_body(csv_mine)] == [strip(x) for x in parse_body(csv_theirs)]
    keys.close()


def test_province_key_sees_every_group(shared: Api) -> None:
    counties = [r["key"] for r in shared.get(f"/v1/indicators?level=county&period={PERIOD}").json()["items"]]
    assert counties == sorted({*REGION_OF.values()})
    provinces = [r["key"] for r in shared.get(f"/v1/indicators?level=province&period={PERIOD}").json()["items"]]
    assert provinces == ["31", "32", "33"]
