"""The InfluxDB sink against a real influxd (Debian's 1.6), with faults injected by a proxy in front.

What is read back is always queried from the store; nothing about the store is mocked.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from fmc.agent.plugin import SinkUnavailable
from fmc.core.lineprotocol import encode
from fmc.core.points import Point
from fmc.stores.influxdb.config import InfluxDBSink as InfluxDBSinkConfig
from fmc.stores.influxdb.sink import InfluxDBSink, parse_retry_after
from tests.faultproxy import Close, FaultProxy, Respond, Stall, TooLarge
from tests.ports import free_port
from tests.servers.influxdb import InfluxDBServer

ADMIN = ("fmc_admin", "adm1n-Pa55")
WRITER = ("fmc_writer", "wr1ter-s3cret")
READER = ("fmc_reader", "r3ader-s3cret")
STRICT_MAX_BODY = 16 * 1024  # the strict server's max-body-size, to get real 413s
V2_TOKEN = "tok-Zq81-s3cret"
BASE_TS = 1_732_500_000_123_456_789  # 2024-11-25 in ns: nanosecond digits must survive

MakeSink = Callable[..., InfluxDBSink]


@pytest.fixture
async def make_sink() -> AsyncIterator[MakeSink]:
    """Build sinks from config settings; all are closed after the test."""
    sinks: list[InfluxDBSink] = []

    def make(**settings: Any) -> InfluxDBSink:
        settings.setdefault("timeout_s", 5.0)
        sink = InfluxDBSink(InfluxDBSinkConfig(type="influxdb", **settings))
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.aclose()


@pytest.fixture
def fault_proxy(influxdb: InfluxDBServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(influxdb.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def influx_strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InfluxDBServer, str]]:
    """A server with auth on and a small max-body-size; an admin, a writer and a read-only user."""
    server = InfluxDBServer(tmp_path_factory.mktemp("influx-strict"), auth_enabled=True,
                            max_body_size=STRICT_MAX_BODY)
    server.start()
    # with auth on, 1.x lets anyone create the FIRST user, which must be an admin
    server.query(f"CREATE USER {ADMIN[0]} WITH PASSWORD '{ADMIN[1]}' WITH ALL PRIVILEGES")
    server.auth = ADMIN
    db = "plant"
    server.create_database(db)
    server.query(f"CREATE USER {WRITER[0]} WITH PASSWORD '{WRITER[1]}'")
    server.query(f'GRANT WRITE ON "{db}" TO {WRITER[0]}')  # what the docs tell operators to grant
    server.query(f"CREATE USER {READER[0]} WITH PASSWORD '{READER[1]}'")
    server.query(f'GRANT READ ON "{db}" TO {READER[0]}')
    try:
        yield server, db
    finally:
        server.stop()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def numbered_lines(measurement: str, count: int, first: int = 0) -> list[str]:
    return [encode(Point(measurement, {"meter": "m-1"}, {"v": float(i) + 0.5}, BASE_TS + i))
            for i in range(first, first + count)]


def values_by_time(server: InfluxDBServer, db: str, measurement: str) -> dict[int, Any]:
    return {row["time"]: row["v"] for row in server.select(db, f'SELECT "v" FROM "{measurement}"')}


# --- writing and reading back -----------------------------------------------------------------

ROUNDTRIP_POINTS = [
    Point("signal", {"enterprise": "91330602MA2BXXXX1X", "equipment": "loom 07,east=A",
                     "signal": 'spindle "speed"'}, {"value": 412.5, "quality": 192}, BASE_TS),
    Point("signal", {"enterprise": "91330602MA2BXXXX1X", "equipment": "织机-07 车间二",
                     "signal": "状态=运行, 自动"}, {"text": 'running "auto" \\ 运行中', "quality": 0}, BASE_TS + 1),
    Point("signal", {"enterprise": "91330602MA2BXXXX1X", "equipment": "CNC=1, line 2",
                     "signal": "power kW"}, {"value": 0.1 + 0.2, "quality": -7}, BASE_TS + 999_999_999),
    Point("signal", {"enterprise": "91330602MA2BXXXX1X", "equipment": "press",
                     "signal": "counter"}, {"value": 1e-9, "quality": 2**63 - 1}, 1),
    Point("equipment state, v2", {"work shop": "东区 A=1", "equipment": "press"},
          {"running": True, "fault": False, "code": -12345, "note ,=x": "a,b=c d"}, BASE_TS),
]


@pytest.mark.parametrize("use_gzip", [True, False], ids=["gzip", "plain"])
async def test_written_points_read_back_exactly(
    influx_db: tuple[InfluxDBServer, str], make_sink: MakeSink, use_gzip: bool
) -> None:
    server, db = influx_db
    sink = make_sink(url=server.url, database=db, gzip=use_gzip)
    lines = [encode(p) for p in ROUNDTRIP_POINTS]

    outcome = await sink.write(lines)

    assert (outcome.written, outcome.refused, outcome.requests) == (len(lines), [], 1)
    for measurement in {p.measurement for p in ROUNDTRIP_POINTS}:
        expected = [p for p in ROUNDTRIP_POINTS if p.measurement == measurement]
        quoted = measurement.replace('"', '\\"')
        rows = server.select(db, f'SELECT * FROM "{quoted}"')
        assert len(rows) == len(expected)
        for point, row in zip(sorted(expected, key=lambda p: p.ts_ns), rows, strict=True):
            assert row["time"] == point.ts_ns
            assert {k: row[k] for k in point.tags} == point.tags
            for key, value in point.fields.items():
                assert row[key] == value, (key, row[key], value)
                if not isinstance(value, float):  # JSON writes a float 412.0 as 412; types checked below
                    assert type(row[key]) is type(value), (key, row[key], value)
    field_types = {
        (row["fieldKey"], row["fieldType"])
        for row in server.select(db, 'SHOW FIELD KEYS FROM "equipment state, v2"')
    }
    assert field_types == {("running", "boolean"), ("fault", "boolean"), ("code", "integer"),
                           ("note ,=x", "string")}
    signal_types = {(r["fieldKey"], r["fieldType"]) for r in server.select(db, "SHOW FIELD KEYS FROM signal")}
    assert signal_types == {("value", "float"), ("quality", "integer"), ("text", "string")}


@pytest.mark.parametrize("use_gzip", [True, False], ids=["gzip", "plain"])
async def test_gzip_setting_decides_the_request_encoding(
    influx_db: tuple[InfluxDBServer, str], fault_proxy: FaultProxy, make_sink: MakeSink, use_gzip: bool
) -> None:
    server, db = influx_db
    sink = make_sink(url=fault_proxy.url, database=db, gzip=use_gzip)
    lines = numbered_lines("gz", 200)

    outcome = await sink.write(lines)

    assert outcome.written == 200
    (request,) = fault_proxy.requests
    assert request.lines == lines
    if use_gzip:
        assert request.headers["content-encoding"] == "gzip"
        assert request.body_size < len(request.body) / 4  # repetitive line protocol compresses well
    else:
        assert "content-encoding" not in request.headers
        assert request.body_size == len(request.body)
    assert len(values_by_time(server, db, "gz")) == 200


async def test_v1_request_shape_uses_basic_auth_never_credentials_in_url(
    influx_strict: tuple[InfluxDBServer, str], make_sink: MakeSink
) -> None:
    server, db = influx_strict
    proxy = FaultProxy(server.url, prefix="/influx").start()  # also: InfluxDB behind a path prefix
    try:
        sink = make_sink(url=proxy.url, database=db, retention_policy="autogen",
                         username=WRITER[0], password=WRITER[1])
        lines = numbered_lines(unique("shape"), 3)
        outcome = await sink.write(lines)
    finally:
        proxy.stop()

    assert outcome.written == 3
    (request,) = proxy.requests
    assert (request.method, request.path) == ("POST", "/influx/write")
    assert request.query == {"db": db, "rp": "autogen", "precision": "ns"}
    basic = base64.b64encode(f"{WRITER[0]}:{WRITER[1]}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {basic}"
    assert WRITER[1] not in request.path + str(request.query)
    assert request.lines == lines


# --- credentials and missing targets: configuration faults stay retryable ------------------------


async def test_wrong_password_is_unavailable_naming_authentication_and_right_one_writes(
    influx_strict: tuple[InfluxDBServer, str], make_sink: MakeSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server, db = influx_strict
    measurement = unique("auth")
    lines = numbered_lines(measurement, 4)
    bad_password = "not-the-Pa55word"
    wrong = make_sink(url=server.url, database=db, username=WRITER[0], password=bad_password)

    with pytest.raises(SinkUnavailable) as failed:
        await wrong.write(lines)

    assert failed.value.status == 401
    assert "authentication failed" in failed.value.reason
    assert "username/password" in failed.value.reason
    assert bad_password not in failed.value.reason
    assert values_by_time(server, db, measurement) == {}

    right = make_sink(url=server.url, database=db, username=WRITER[0], password=WRITER[1])
    outcome = await right.write(lines)
    assert outcome.written == 4
    assert values_by_time(server, db, measurement) == {BASE_TS + i: i + 0.5 for i in range(4)}

    check = await wrong.check()
    assert not check.ok
    assert "authentication failed (check username/password)" in check.detail
    for secret in (bad_password, WRITER[1]):
        assert secret not in caplog.text
        assert secret not in check.detail


async def test_credentials_in_the_url_become_basic_auth_and_never_reach_a_log(
    influx_strict: tuple[InfluxDBServer, str], make_sink: MakeSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx logs every request URL at INFO
    server, db = influx_strict
    measurement = unique("urlauth")
    sink = make_sink(url=server.url.replace("://", f"://{WRITER[0]}:{WRITER[1]}@"), database=db)

    outcome = await sink.write(numbered_lines(measurement, 2))
    result = await sink.check()

    assert outcome.written == 2 and result.ok, result.detail
    assert values_by_time(server, db, measurement) == {BASE_TS: 0.5, BASE_TS + 1: 1.5}
    assert "POST" in caplog.text  # the request was logged, without the password
    assert WRITER[1] not in caplog.text and WRITER[1] not in result.detail


async def test_user_without_write_privilege_is_unavailable_not_dead_lettered(
    influx_strict: tuple[InfluxDBServer, str], make_sink: MakeSink
) -> None:
    server, db = influx_strict
    sink = make_sink(url=server.url, database=db, username=READER[0], password=READER[1])

    with pytest.raises(SinkUnavailable) as failed:
        await sink.write(numbered_lines(unique("ro"), 2))

    assert failed.value.status == 403
    assert "not authorized" in failed.value.reason
    assert "may write to the database" in failed.value.reason


async def test_missing_database_is_unavailable_naming_it(
    influxdb: InfluxDBServer, make_sink: MakeSink
) -> None:
    missing = unique("no_such_db")
    sink = make_sink(url=influxdb.url, database=missing)

    with pytest.raises(SinkUnavailable) as failed:
        await sink.write(numbered_lines("m", 2))

    assert failed.value.status == 404
    assert f"database '{missing}' does not exist" in failed.value.reason
    assert f"CREATE DATABASE {missing}" in failed.value.reason
    assert failed.value.retry_after is None


async def test_v2_dialect_on_a_1x_server_points_at_url_and_dialect(
    influxdb: InfluxDBServer, make_sink: MakeSink
) -> None:
    # InfluxDB 1.6 has no /api/v2/write: its bare 404 page means the URL or the dialect is wrong.
    sink = make_sink(url=influxdb.url, dialect="v2", org="acme", bucket="fmc", token=V2_TOKEN)

    with pytest.raises(SinkUnavailable) as failed:
        await sink.write(numbered_lines("m", 1))

    assert failed.value.status == 404
    assert "/api/v2/write not found" in failed.value.reason
    assert "dialect 'v2' needs InfluxDB 2.x or 3.x" in failed.value.reason
    assert V2_TOKEN not in failed.value.reason


# --- refused points: a real 400 partial write is bisected down to the bad lines ----------------


async def test_field_type_conflicts_refuse_exactly_the_bad_lines(
    influx_db: tuple[InfluxDBServer, str], make_sink: MakeSink
) -> None:
    server, db = influx_db
    sink = make_sink(url=server.url, database=db)
    assert (await sink.write([f"conflict,meter=m-1 v=1.5 {BASE_TS - 1}"])).written == 1  # v is a float now
    bad = {3, 11, 17}
    lines = [
        encode(Point("conflict", {"meter": "m-1"}, {"v": f"text {i}" if i in bad else i + 0.25}, BASE_TS + i))
        for i in range(20)
    ]

    outcome = await sink.write(lines)

    assert [r.index for r in outcome.refused] == sorted(bad)
    for refused in outcome.refused:
        assert refused.status == 400
        assert "field type conflict" in refused.reason
        assert 'input field "v" on measurement "conflict" is type string, already exists as type float' \
            in refused.reason
    assert outcome.written == 17
    assert 3 < outcome.requests <= 2 * len(bad) * 5 + 1  # bisection, not one request per line
    stored = values_by_time(server, db, "conflict")
    assert stored == {BASE_TS - 1: 1.5} | {BASE_TS + i: i + 0.25 for i in range(20) if i not in bad}


async def test_conflicts_inside_one_batch_and_unparsable_lines_are_isolated(
    influx_db: tuple[InfluxDBServer, str], make_sink: MakeSink
) -> None:
    # On a measurement that does not exist yet, 1.6 rejects the WHOLE batch on an in-batch type
    # conflict (a 400 that stored nothing); a malformed line is a "partial write: unable to parse".
    server, db = influx_db
    sink = make_sink(url=server.url, database=db)
    lines = [
        f"fresh v=1 {BASE_TS}",
        f"fresh v=2 {BASE_TS + 1}",
        f'fresh v="two" {BASE_TS + 2}',
        f"fresh v=3 {BASE_TS + 3}",
        f"fresh v= {BASE_TS + 4}",
        f"fresh v=5 {BASE_TS + 5}",
    ]

    outcome = await sink.write(lines)

    assert [(r.index, r.status) for r in outcome.refused] == [(2, 400), (4, 400)]
    assert "field type conflict" in outcome.refused[0].reason
    assert "unable to parse" in outcome.refused[1].reason and "missing field value" in outcome.refused[1].reason
    assert outcome.written == 4
    assert values_by_time(server, db, "fresh") == {BASE_TS: 1, BASE_TS + 1: 2, BASE_TS + 3: 3, BASE_TS + 5: 5}


async def test_long_store_errors_are_truncated(influx_db: tuple[InfluxDBServer, str], make_sink: MakeSink) -> None:
    server, db = influx_db
    sink = make_sink(url=server.url, database=db)
    # 1.x quotes the whole unparsable line in its error
    outcome = await sink.write([f"m,t={'x' * 3000} v= 1", f"m v=1 {BASE_TS}"])

    assert [r.index for r in outcome.refused] == [0]
    assert "unable to parse" in outcome.refused[0].reason
    assert len(outcome.refused[0].reason) <= 500


# --- 413: split until it fits ----------------------------------------------------------------------


async def test_real_413_from_max_body_size_splits_until_everything_lands(
    influx_strict: tuple[InfluxDBServer, str], make_sink: MakeSink
) -> None:
    server, db = influx_strict
    measurement = unique("big")
    sink = make_sink(url=server.url, database=db, username=WRITER[0], password=WRITER[1], gzip=False)
    lines = [encode(Point(measurement, {"meter": "m-1"}, {"v": i + 0.5, "pad": "p" * 100}, BASE_TS + i))
             for i in range(400)]
    assert len("\n".join(lines)) > 3 * STRICT_MAX_BODY  # 1.6 limits the body as sent (compressed or not)

    outcome = await sink.write(lines)

    assert (outcome.written, outcome.refused) == (400, [])
    assert outcome.requests > 4
    assert values_by_time(server, db, measurement) == {BASE_TS + i: i + 0.5 for i in range(400)}


async def test_proxy_413_splits_and_a_single_oversized_line_is_refused(
    influx_db: tuple[InfluxDBServer, str], fault_proxy: FaultProxy, make_sink: MakeSink
) -> None:
    server, db = influx_db
    limit = 1500
    fault_proxy.default = TooLarge(limit)
    sink = make_sink(url=fault_proxy.url, database=db)
    lines = numbered_lines("split", 100)
    lines[40] = encode(Point("split", {"meter": "m-1"}, {"v": 40.5, "note": "n" * 2000}, BASE_TS + 40))

    outcome = await sink.write(lines)

    assert [(r.index, r.status) for r in outcome.refused] == [(40, 413)]
    assert "too large" in outcome.refused[0].reason
    assert outcome.written == 99
    forwarded = [r for r in fault_proxy.requests if r.action == "forward"]
    assert all(len(r.body) <= limit for r in forwarded)
    assert sum(len(r.lines) for r in forwarded) == 99
    assert outcome.requests == len(fault_proxy.requests)
    assert values_by_time(server, db, "split") == {BASE_TS + i: i + 0.5 for i in range(100) if i != 40}


# --- the store is unavailable: nothing is refused, the caller retries --------------------------


async def test_503_is_unavailable_and_the_next_attempt_lands(
    influx_db: tuple[InfluxDBServer, str], fault_proxy: FaultProxy, make_sink: MakeSink
) -> None:
    server, db = influx_db
    fault_proxy.then(Respond(503, {"Content-Type": "application/json"}, b'{"error":"engine busy"}'))
    sink = make_sink(url=fault_proxy.url, database=db)
    lines = numbered_lines("flaky", 5)

    with pytest.raises(SinkUnavailable) as failed:
        await sink.write(lines)
    assert failed.value.status == 503
    assert "engine busy" in failed.value.reason
    assert values_by_time(server, db, "flaky") == {}

    assert (await sink.write(lines)).written == 5
    assert values_by_time(server, db, "flaky") == {BASE_TS + i: i + 0.5 for i in range(5)}


async def test_500_is_unavailable(influx_db: tuple[InfluxDBServer, str], fault_proxy: FaultProxy,
                                  make_sink: MakeSink) -> None:
    fault_proxy.then(Respond(500, body=b"internal error"))
    sink = make_sink(url=fault_proxy.url, database=influx_db[1])

    with pytest.raises(SinkUnavailable) as failed:
        await sink.write(numbered_lines("m", 1))

    assert (failed.value.status, failed.value.retry_after) == (500, None)
    assert "internal error" in failed.value.reason


async def test_429_retry_after_seconds_and_http_date(
    influx_db: tuple[InfluxDBServer, str], fault_proxy: FaultProxy, make_sink: MakeSink
) -> None:
    in_30s = email.utils.formatdate(time.time() + 30, usegmt=True)
    fault_proxy.then(Respond(429, {"Retry-After": "7"}), Respond(503, {"Retry-After": in_30s}))
    sink = make_sink(url=fault_proxy.url, database=influx_db[1])

    with pytest.raises(SinkUnavailable) as first:
        await sink.write(numbered_lines("m", 1))
    with pytest.raises(SinkUnavailable) as second:
        await sink.write(numbered_lines("m", 1))

    assert (first.value.status, first.value.retry_after) == (429, 7.0)
    assert second.value.status == 503
    assert second.value.retry_after is not None and 27.0 <= second.value.retry_after <= 30.0


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now) == 90.0
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now) == 0.0  # in the past
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("nan", now) is None


async def test_closed_connection_is_unavailable(
    influx_db: tuple[InfluxDBServer, str], fault_proxy: FaultProxy, make_sink: MakeSink
) -> None:
    fault_proxy.then(Close())
    sink = make_sink(url=fault_proxy.url, database=influx_db[1])

    with pytest.raises(SinkUnavailable) as failed:
        await sink.write(numbered_lines("m", 1))

    assert failed.value.status is None
    assert "connection failed" in failed.value.reason
    assert [r.action for r in fault_proxy.requests] == ["close"]


async def test_no_answer_within_timeout_is_unavailable(
    influx_db: tuple[InfluxDBServer, str], fault_proxy: FaultProxy, make_sink: MakeSink
) -> None:
    fault_proxy.then(Stall())
    sink = make_sink(url=fault_proxy.url, database=influx_db[1], timeout_s=0.3)

    started = time.monotonic()
    with pytest.raises(SinkUnavailable) as failed:
        await sink.write(numbered_lines("m", 1))

    assert time.monotonic() - started < 3.0
    assert "no answer within 0.3s" in failed.value.reason


async def test_store_down_is_unavailable_quickly(make_sink: MakeSink) -> None:
    sink = make_sink(url=f"http://127.0.0.1:{free_port()}", database="fmc")  # nothing listens there

    started = time.monotonic()
    with pytest.raises(SinkUnavailable) as failed:
        await sink.write(numbered_lines("m", 3))

    assert time.monotonic() - started < 2.0
    assert failed.value.status is None
    assert "cannot connect" in failed.value.reason
    check = await sink.check()
    assert not check.ok and "cannot connect" in check.detail


async def test_store_restart_writes_resume_and_data_survives(
    influxdb_private: InfluxDBServer, make_sink: MakeSink
) -> None:
    server = influxdb_private
    server.create_database("fmc")
    sink = make_sink(url=server.url, database="fmc")
    assert (await sink.write(numbered_lines("r", 3))).written == 3

    server.stop()
    with pytest.raises(SinkUnavailable):
        await sink.write(numbered_lines("r", 3, first=3))
    server.start()  # same port, same data dir: the same sink (and client) carries on

    assert (await sink.write(numbered_lines("r", 3, first=3))).written == 3
    assert values_by_time(server, "fmc", "r") == {BASE_TS + i: i + 0.5 for i in range(6)}


async def test_ping_answers_only_when_the_store_does(
    influx_db: tuple[InfluxDBServer, str], fault_proxy: FaultProxy, make_sink: MakeSink
) -> None:
    """The drain loop's probe while it backs off: GET /ping, nothing else."""
    server, db = influx_db
    await make_sink(url=server.url, database=db).ping()
    fault_proxy.then(Respond(503), Close())
    sink = make_sink(url=fault_proxy.url, database=db)
    with pytest.raises(SinkUnavailable) as answered:
        await sink.ping()
    assert answered.value.status == 503 and "/ping answered HTTP 503" in answered.value.reason
    with pytest.raises(SinkUnavailable) as closed:
        await sink.ping()
    assert closed.value.status is None
    await sink.ping()
    assert [(r.method, r.path) for r in fault_proxy.requests] == [("GET", "/ping")] * 3
    down = make_sink(url=f"http://127.0.0.1:{free_port()}", database=db)
    with pytest.raises(SinkUnavailable, match="cannot connect"):
        await down.ping()


async def test_other_4xx_refuses_the_whole_batch(
    influx_db: tuple[InfluxDBServer, str], fault_proxy: FaultProxy, make_sink: MakeSink
) -> None:
    fault_proxy.then(Respond(409, {"Content-Type": "application/json"}, b'{"error":"schema is locked"}'))
    sink = make_sink(url=fault_proxy.url, database=influx_db[1])

    outcome = await sink.write(numbered_lines("m", 3))

    assert outcome.written == 0
    assert [(r.index, r.reason, r.status) for r in outcome.refused] == [
        (i, "schema is locked", 409) for i in range(3)
    ]


async def test_redirect_is_a_configuration_fault(
    influx_db: tuple[InfluxDBServer, str], fault_proxy: FaultProxy, make_sink: MakeSink
) -> None:
    fault_proxy.then(Respond(301, {"Location": "https://127.0.0.1:8443/write"}))
    sink = make_sink(url=fault_proxy.url, database=influx_db[1])

    with pytest.raises(SinkUnavailable) as failed:
        await sink.write(numbered_lines("m", 1))

    assert failed.value.status == 301
    assert "https://127.0.0.1:8443/write" in failed.value.reason


# --- answers that are not InfluxDB's verdict on the points: the points stay in the spool ----------

NGINX_TLS_PORT_400 = (
    b"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n"
    b"<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP request was sent "
    b"to HTTPS port</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


@pytest.mark.parametrize(("answer", "shown"), [
    (Respond(400, {"Content-Type": "text/html", "Server": "nginx"}, NGINX_TLS_PORT_400),
     "400 The plain HTTP request was sent to HTTPS port"),
    # Go's net/http, so also an InfluxDB with https-enabled, answering a plain HTTP request
    (Respond(400, {"Content-Type": "text/plain; charset=utf-8"},
             b"Client sent an HTTP request to an HTTPS server.\n"),
     "Client sent an HTTP request to an HTTPS server."),
], ids=["nginx-tls-port", "go-tls-server"])
async def test_a_400_that_is_not_influxdbs_keeps_the_points_and_names_the_url(
    influx_db: tuple[InfluxDBServer, str], fault_proxy: FaultProxy, make_sink: MakeSink, answer: Respond,
    shown: str
) -> None:
    # url = "http://host:443" in front of a TLS port: no line is bad, splitting would refuse them all
    server, db = influx_db
    fault_proxy.default = answer
    sink = make_sink(url=fault_proxy.url, database=db)
    lines = numbered_lines("elsewhere", 64)

    with pytest.raises(SinkUnavailable) as failed:
        await sink.write(lines)

    assert failed.value.status == 400
    assert len(fault_proxy.requests) == 1  # not bisected
    assert fault_proxy.url in failed.value.reason and "https://" in failed.value.reason
    assert shown in failed.value.reason and "<html>" not in failed.value.reason
    fault_proxy.reset()  # url fixed: the points that waited are written
    assert (await sink.write(lines)).written == 64
    assert len(values_by_time(server, db, "elsewhere")) == 64


V2_HEADERS = {"Content-Type": "application/json; charset=utf-8", "X-Influxdb-Build": "OSS",
              "X-Influxdb-Version": "v2.7.11"}


@pytest.mark.parametrize("refusal", [
    Respond(400, V2_HEADERS | {"X-Platform-Error-Code": "invalid"},
            b'{"code":"invalid","message":"partial write: field type conflict: input field \\"v\\" on '
            b'measurement \\"m\\" is type string, already exists as type float dropped=1"}'),
    Respond(422, V2_HEADERS | {"X-Platform-Error-Code": "unprocessable entity"},
            b'{"code":"unprocessable entity","message":"failure writing points to database: partial write: '
            b'points beyond retention policy dropped=1"}'),
    # InfluxDB 3 sends its version on /ping only; its refusal is known by its body
    Respond(400, {"Content-Type": "application/json"},
            b'{"error":"partial write of line protocol occurred","data":[{"original_line":"m v=\\"x\\"",'
            b'"line_number":1,"error_message":"invalid column type for column \'v\', expected Float, got '
            b'String"}]}'),
], ids=["2x-400", "2x-422", "3x-400"])
async def test_influxdb_2x_and_3x_refusals_are_split_down_to_the_bad_lines(
    influx_db: tuple[InfluxDBServer, str], fault_proxy: FaultProxy, make_sink: MakeSink, refusal: Respond
) -> None:
    server, db = influx_db
    sink = make_sink(url=fault_proxy.url, database=db)
    message = json.loads(refusal.body).get("message") or json.loads(refusal.body)["error"]

    fault_proxy.then(refusal)
    outcome = await sink.write(numbered_lines("refused", 1))
    assert [(r.index, r.reason, r.status) for r in outcome.refused] == [(0, message, refusal.status)]

    fault_proxy.then(refusal)  # the whole batch refused, then both halves accepted
    outcome = await sink.write(numbered_lines("split", 8))
    assert (outcome.written, outcome.refused, outcome.requests) == (8, [], 3)
    assert len(values_by_time(server, db, "split")) == 8


@pytest.fixture
def proxy_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy settings but the test's own (httpx reads them when a client is made)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


async def test_407_from_the_environments_proxy_keeps_the_points_and_no_proxy_goes_around_it(
    influx_db: tuple[InfluxDBServer, str], fault_proxy: FaultProxy, make_sink: MakeSink,
    proxy_environment: pytest.MonkeyPatch
) -> None:
    server, db = influx_db
    proxy_environment.setenv("HTTP_PROXY", fault_proxy.url)
    fault_proxy.default = Respond(407, {"Proxy-Authenticate": 'Basic realm="corp"', "Content-Type": "text/plain"},
                                  b"Proxy Authentication Required")
    sink = make_sink(url=server.url, database=db)
    lines = numbered_lines("proxied", 10)

    with pytest.raises(SinkUnavailable) as failed:
        await sink.write(lines)

    assert failed.value.status == 407
    assert "HTTP_PROXY" in failed.value.reason and "NO_PROXY" in failed.value.reason
    assert [(r.method, r.path) for r in fault_proxy.requests] == [("POST", "/write")]  # the sink used it
    proxy_environment.setenv("NO_PROXY", "127.0.0.1")
    assert (await make_sink(url=server.url, database=db).write(lines)).written == 10
    assert len(fault_proxy.requests) == 1
    assert len(values_by_time(server, db, "proxied")) == 10


async def test_https_through_a_proxy_that_refuses_connect_names_the_proxy_variables(
    fault_proxy: FaultProxy, make_sink: MakeSink, proxy_environment: pytest.MonkeyPatch
) -> None:
    proxy_environment.setenv("HTTPS_PROXY", fault_proxy.url)
    fault_proxy.default = Respond(407, {"Proxy-Authenticate": 'Basic realm="corp"'})
    sink = make_sink(url=f"https://127.0.0.1:{free_port()}", database="fmc")

    with pytest.raises(SinkUnavailable) as failed:
        await sink.write(numbered_lines("m", 3))

    assert "407" in failed.value.reason and "HTTPS_PROXY" in failed.value.reason
    assert [r.method for r in fault_proxy.requests] == ["CONNECT"]


# --- v2 dialect request shape --------------------------------------------------------------------


async def test_v2_request_shape(influxdb: InfluxDBServer, make_sink: MakeSink) -> None:
    # InfluxDB 1.6 has no /api/v2/write, so the proxy answers 204 there itself: this test checks
    # what the sink sends (path, parameters, token header, gzip), not what a 2.x server stores.
    proxy = FaultProxy(influxdb.url, prefix="/tsdb").start()
    proxy.on_path("/api/v2/write", Respond(204))
    try:
        sink = make_sink(url=proxy.url + "/", dialect="v2", org="浙江 acme", bucket="fmc/raw",
                         token=V2_TOKEN, gzip=True)
        lines = [encode(p) for p in ROUNDTRIP_POINTS]
        outcome = await sink.write(lines)
    finally:
        proxy.stop()

    assert (outcome.written, outcome.refused, outcome.requests) == (len(lines), [], 1)
    (request,) = proxy.requests
    assert (request.method, request.path) == ("POST", "/tsdb/api/v2/write")
    assert request.query == {"org": "浙江 acme", "bucket": "fmc/raw", "precision": "ns"}
    assert request.headers["authorization"] == f"Token {V2_TOKEN}"
    assert request.headers["content-encoding"] == "gzip"
    assert request.headers["content-type"].startswith("text/plain")
    assert request.lines == lines


# --- check() ------------------------------------------------------------------------------------


async def test_check_ok_reports_the_server_version(influx_db: tuple[InfluxDBServer, str],
                                                   make_sink: MakeSink) -> None:
    server, db = influx_db
    version = httpx.get(f"{server.url}/ping").headers["X-Influxdb-Version"]
    sink = make_sink(url=server.url, database=db)

    result = await sink.check()

    assert result.ok, result.detail
    assert result.name == "influxdb"
    assert f"InfluxDB {version}" in result.detail
    assert f"database '{db}'" in result.detail


async def test_check_with_credentials_and_retention_policy(
    influx_strict: tuple[InfluxDBServer, str], make_sink: MakeSink
) -> None:
    server, db = influx_strict
    writer = make_sink(url=server.url, database=db, username=WRITER[0], password=WRITER[1],
                       retention_policy="autogen")
    admin_ok = make_sink(url=server.url, database=db, username=ADMIN[0], password=ADMIN[1],
                         retention_policy="autogen")
    admin_no_rp = make_sink(url=server.url, database=db, username=ADMIN[0], password=ADMIN[1],
                            retention_policy="one_year")

    # a write-only user (all the agent needs) may not list retention policies: not a failure
    writer_result = await writer.check()
    assert writer_result.ok, writer_result.detail
    assert "retention policy 'autogen' not checked" in writer_result.detail
    admin_result = await admin_ok.check()
    assert admin_result.ok and admin_result.detail.endswith("database 'plant' ready"), admin_result.detail
    missing = await admin_no_rp.check()
    assert not missing.ok
    assert "retention policy 'one_year' does not exist on database 'plant'" in missing.detail


async def test_check_missing_database(influxdb: InfluxDBServer, make_sink: MakeSink) -> None:
    sink = make_sink(url=influxdb.url, database="no_such_fmc_db")

    result = await sink.check()

    assert not result.ok
    assert "database 'no_such_fmc_db' does not exist (create it: CREATE DATABASE no_such_fmc_db)" in result.detail


async def test_check_not_influxdb(influxdb: InfluxDBServer, fault_proxy: FaultProxy, make_sink: MakeSink) -> None:
    fault_proxy.on_path("/ping", Respond(404, body=b"not here"))
    result = await make_sink(url=fault_proxy.url, database="fmc").check()

    assert not result.ok
    assert "/ping answered HTTP 404" in result.detail



async def test_check_v2_bucket_token_and_influxdb3(influxdb: InfluxDBServer, fault_proxy: FaultProxy,
                                                   make_sink: MakeSink) -> None:
    # InfluxDB 1.6 has no /api/v2: the proxy answers /ping and /api/v2/buckets as 2.x and 3.x do,
    # so this checks how the sink reads those answers and what it asks.
    def v2_ping(version: str, status: int = 204) -> Respond:
        return Respond(status, {"X-Influxdb-Version": version})

    def buckets(*names: str) -> Respond:
        body = json.dumps({"buckets": [{"name": n, "orgID": "0a1b"} for n in names]}).encode()
        return Respond(200, {"Content-Type": "application/json"}, body)

    unauthorized = Respond(401, {"Content-Type": "application/json"},
                           b'{"code":"unauthorized","message":"unauthorized access"}')
    sink = make_sink(url=fault_proxy.url, dialect="v2", org="acme", bucket="fmc", token=V2_TOKEN)

    fault_proxy.then(v2_ping("v2.7.11"), buckets("_monitoring", "fmc"))
    ok = await sink.check()
    fault_proxy.then(v2_ping("v2.7.11"), buckets("_monitoring"))
    missing = await sink.check()
    fault_proxy.then(v2_ping("v2.7.11"), unauthorized)
    bad_token = await sink.check()
    fault_proxy.then(v2_ping("3.9.2", 200), Respond(404, body=b"not found"))
    v3 = await sink.check()
    fault_proxy.then(v2_ping("3.9.2", 401))
    v3_bad_token = await sink.check()

    assert ok.ok and "InfluxDB v2.7.11" in ok.detail and "bucket 'fmc' in org 'acme' ready" in ok.detail
    assert not missing.ok and "bucket 'fmc' does not exist in org 'acme'" in missing.detail
    assert not bad_token.ok and "authentication failed (check the token): unauthorized access" in bad_token.detail
    assert v3.ok and "InfluxDB 3.9.2" in v3.detail and "not checked" in v3.detail
    assert not v3_bad_token.ok and "authentication failed (check the token)" in v3_bad_token.detail
    listing = fault_proxy.requests[1]
    assert (listing.method, listing.path, listing.query) == ("GET", "/api/v2/buckets", {"name": "fmc", "org": "acme"})
    assert all(r.headers["authorization"] == f"Token {V2_TOKEN}" for r in fault_proxy.requests)
    assert all(V2_TOKEN not in c.detail for c in (ok, missing, bad_token, v3, v3_bad_token))


async def test_check_for_a_user_without_rights_names_grant(
    influx_strict: tuple[InfluxDBServer, str], make_sink: MakeSink
) -> None:
    server, db = influx_strict
    server.query("CREATE USER fmc_nobody WITH PASSWORD 'n0body-pw'")
    result = await make_sink(url=server.url, database=db, username="fmc_nobody", password="n0body-pw").check()

    assert not result.ok
    assert f"database '{db}' does not exist (create it: CREATE DATABASE {db})" in result.detail
    assert f"or user 'fmc_nobody' has no rights on it (GRANT WRITE ON {db} TO fmc_nobody)" in result.detail
    assert "n0body-pw" not in result.detail
