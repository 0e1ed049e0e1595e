"""Hostile input: every parameter of every endpoint with quotes, ``;``, InfluxQL keywords, regex,
``/``, unicode, very long strings and NUL gets a 422 (never a 500, never data), and the store is
unchanged afterwards; then schemathesis fuzzes the whole OpenAPI spec with a province key and
without a key: no 5xx, responses as documented."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.test_api import Api, make_api, seed_template, store_snapshot

HOSTILE = [
    "",
    "'",
    '"',
    "33'",
    '3306"',
    "33;",
    "33; DROP MEASUREMENT enterprise_daily",
    "2019' OR '1'='1",
    "DROP DATABASE fmc",
    "SELECT * FROM enterprise_report",
    "33 OR 1=1",
    "/.*/",
    ".*",
    "33.*",
    "33|32",
    "^33",
    "/",
    "../../etc",
    "33/06",
    "３３０６",  # full-width digits
    "٣٣٠٦",  # Arabic-Indic digits
    "3306\n",
    "2019\n",
    "33\r\nX-Injected: 1",
    "\x00",
    "33\x00",
    "2019\x00",
    "😀",
    "绍兴",
    "${INFLUX_PASSWORD}",
    "<script>alert(1)</script>",
    "x" * 5000,
    "1" * 5000,
    "-1",
    "0",
    "1e3",
    "99999999999999999999999999",
    "null",
    "true",
]

# endpoint -> (required query parameters, the parameters it takes)
GET_ENDPOINTS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "/v1/targets": ({}, ("format", "lang")),
    "/v1/enterprises": ({}, ("region", "industry", "page", "page_size", "format", "lang")),
    "/v1/enterprises/91330602A1": ({}, ("format", "lang")),
    "/v1/enterprises/91330602A1/indicators": ({"period": "2019"}, ("period", "indicator", "format", "lang")),
    "/v1/indicators": (
        {"level": "county", "period": "2019"},
        ("level", "period", "region", "industry", "enterprise", "indicator", "page", "page_size", "format", "lang"),
    ),
    "/v1/enterprises/91330602A1/reports": ({}, ("year", "format", "lang")),
}


@dataclass
class Fuzzed:
    api: Api
    app: object


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    tmp = tmp_path_factory.mktemp("fuzz")
    store_file = tmp / "store.db"
    shutil.copy(seed_template(tmp_path_factory), store_file)
    client, keys, key = make_api(tmp, store_file)
    with client:
        yield Fuzzed(Api(client, keys, store_file, key), client.app)
    keys.close()


def accepted(param: str, value: str) -> bool:
    """Whether ``value`` is a valid value of ``param`` (then it is no hostile test)."""
    if param in ("page", "page_size", "year"):
        if not (value.isascii() and value.isdigit() and len(value) <= 12):
            return False
        low, high = {"page": (1, 10**9), "page_size": (1, 500), "year": (1949, 2100)}[param]
        return low <= int(value) <= high
    return False


def test_hostile_query_values_are_422_and_change_nothing(fuzzed: Fuzzed) -> None:
    api = fuzzed.api
    before = store_snapshot(api.store_path)
    keys_before = [(k.id, k.scope, k.revoked) for k in api.keys.list()]
    checked = 0
    for path, (required, params) in GET_ENDPOINTS.items():
        for param in params:
            for value in HOSTILE:
                if accepted(param, value):
                    continue
                query = {**required, param: value}
                url = path + "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
                r = api.get(url)
                assert r.status_code == 422, (url[:200], r.status_code, r.text[:300])
                detail = r.json()["detail"]
                assert isinstance(detail, str) and detail.endswith("."), detail
                assert "Traceback" not in r.text
                assert "91330102D4" not in r.text  # no data slips out with an error
                checked += 1
    assert checked > 300
    assert store_snapshot(api.store_path) == before
    assert [(k.id, k.scope, k.revoked) for k in api.keys.list()] == keys_before


def test_hostile_path_values_are_refused(fuzzed: Fuzzed) -> None:
    api = fuzzed.api
    before = store_snapshot(api.store_path)
    for value in HOSTILE:
        if value == "":
            continue
        segment = quote(value, safe="")
        for url in (f"/v1/enterprises/{segment}", f"/v1/enterprises/{segment}/indicators?period=2019",
                    f"/v1/enterprises/{segment}/reports"):
            r = api.get(url)
            # '/' in an id routes elsewhere (404); anything else fails the id pattern (422) or is unknown (404)
            assert r.status_code in (404, 422), (value[:50], url[:120], r.status_code)
            if value.isascii() and value.isalnum() and len(value) <= 64:
                continue  # a well-formed id nobody has: 404
            assert r.status_code == 422 or "/" in value, (value[:50], r.status_code)
        for url in (f"/v1/enterprises/91330602A1/reports/{segment}", f"/v1/enterprises/{segment}/reports/2019"):
            r = api.put(url, {"value_added": 1.0})
            assert r.status_code in (404, 405, 422), (value[:50], url[:120], r.status_code, r.text[:200])
        for body in ({"value_added": value}, {value[:100] or "x": 1.0}, {"employees_avg": [value]}):
            r = api.put("/v1/enterprises/91330602A1/reports/2019-07", body)
            assert r.status_code == 422, (body, r.text[:200])
    assert store_snapshot(api.store_path) == before


def test_hostile_headers_are_harmless(fuzzed: Fuzzed) -> None:
    api = fuzzed.api
    for accept in ("text/csv;q=abc", "text/csv;q=1e999", ";;;,,,", "x" * 5000, "text/csv, */*;q=0.1"):
        assert api.get("/v1/enterprises", headers={"Accept": accept}).status_code == 200
    for inm in ("*", '"', "W/", 'W/"' + "x" * 5000 + '"', ",,,"):
        assert api.get("/v1/enterprises", headers={"If-None-Match": inm}).status_code in (200, 304)
    for auth in ("Bearer " + "x" * 5000, "Bearer fmc_" + "'" * 20, "Bearer \u00e9", "bearer", "Bearer a b c"):
        r = api.client.get("/v1/enterprises", headers={"Authorization": auth.encode("utf-8")})
        assert r.status_code == 401


# --- schemathesis over the whole spec -----------------------------------------------------------------------------

RESPONSE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def send(client: TestClient, case: schemathesis.Case, headers: dict[str, str]) -> httpx.Response:
    """The case over the Starlette test client (httpx). Schemathesis' own ASGI transport goes
    through ``requests``, which the urllib3 in this environment breaks; its checks take httpx
    responses as they are."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
    body: dict[str, object] = {}
    if "json" in kwargs:
        body["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        body["content"] = data.encode("utf-8") if isinstance(data, str) else data
    return client.request(kwargs["method"], kwargs["url"], headers=kwargs["headers"], params=kwargs["params"],
                          **body)  # type: ignore[arg-type]


def fuzz(client: TestClient, headers: dict[str, str], *, mode: schemathesis.GenerationMode, max_examples: int,
         checks: list) -> int:  # type: ignore[type-arg]
    """Run every operation of the app's spec; returns the number of requests made."""
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            nonlocal calls
            response = send(client, case, headers)
            calls += 1
            case.validate_response(response, checks=checks, headers=headers)

        try:
            run()
        except Unsatisfiable:
            # an operation without parameters or body (GET /v1/health) has no invalid form
            assert mode == schemathesis.GenerationMode.NEGATIVE and operation.path == "/v1/health", operation.path
    return calls


def test_schemathesis_with_a_province_key(fuzzed: Fuzzed) -> None:
    headers = {"Authorization": f"Bearer {fuzzed.api.key['province']}"}
    positive = fuzz(fuzzed.api.client, headers, mode=schemathesis.GenerationMode.POSITIVE, max_examples=25,
                    checks=RESPONSE_CHECKS)
    negative = fuzz(fuzzed.api.client, headers, mode=schemathesis.GenerationMode.NEGATIVE, max_examples=25,
                    checks=[*RESPONSE_CHECKS, negative_data_rejection])
    assert positive > 50 and negative > 50


def test_schemathesis_without_a_key(fuzzed: Fuzzed) -> None:
    calls = fuzz(fuzzed.api.client, {}, mode=schemathesis.GenerationMode.POSITIVE, max_examples=10,
                 checks=RESPONSE_CHECKS)
    assert calls > 20
