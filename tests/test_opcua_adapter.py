"""fmc.sources.opcua against real asyncua servers: values into a real Ingest + Spool, reconnects, watchdog, security."""

from __future__ import annotations

import logging
import math
import re
import shutil
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

import fmc.sources.opcua.connection as connection
from fmc.agent.ingest import Ingest
from fmc.agent.metrics import AgentMetrics
from fmc.agent.plugin import Rejection
from fmc.agent.spool import Spool
from fmc.core import lineprotocol
from fmc.core.config import ConfigError, EnterpriseConfig, _Model, problems_from
from fmc.core.points import Point
from fmc.sources.opcua import config as schema
from fmc.sources.opcua.check import check_opcua
from fmc.sources.opcua.connection import describe_failure
from fmc.sources.opcua.convert import QUALITY_MASK, _NodePlan, data_value_to_point
from fmc.sources.opcua.source import OpcUaSource
from fmc.sources.opcua.tools import make_client_certificate
from tests.servers.opcua import (
    MACHINE_TOOL_URI,
    MACHINERY_URI,
    PLANT_URI,
    OpcUaTestServer,
    free_port,
    utc,
)
from tests.tcprelay import TcpRelay

ENTERPRISE = EnterpriseConfig(id="91330602MA2BXXXX1X", name="示范机加工", region="330602", industry="34")
NAMESPACES = {"plant": PLANT_URI, "mt": MACHINE_TOOL_URI, "machinery": MACHINERY_URI}
WAIT_S = 8.0


def ns(dt: datetime) -> int:
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT_S, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def source_config(server: OpcUaTestServer, nodes: list[dict[str, Any]], **kw: Any) -> schema.OpcUaSource:
    kw.setdefault("name", "shop")
    kw.setdefault("namespaces", NAMESPACES)
    kw.setdefault("reconnect_min_s", 0.2)
    kw.setdefault("reconnect_max_s", 0.5)
    kw.setdefault("watchdog_s", 5)
    kw.setdefault("timeout_s", 2)
    kw.setdefault("session_timeout_s", 30)
    kw.setdefault("endpoint", server.url)
    # the server publishes every 100 ms: a written value arrives quickly
    nodes = [{"sampling_interval_ms": 100, **node} if node.get("mode") != "poll" else node for node in nodes]
    return schema.OpcUaSource(node=nodes, **kw)


class Harness:
    """A source feeding a real Ingest and Spool in tmp_path; committed points are read back from the spool."""

    def __init__(self, tmp_path: Path, cfg: schema.OpcUaSource) -> None:
        self.spool = Spool(tmp_path / f"spool-{cfg.name}.db")
        self.metrics = AgentMetrics()
        self.ingest = Ingest(self.spool, self.metrics, max_series=10_000, commit_interval_ms=5)
        self.ingest.start()
        self.log = logging.getLogger(f"fmc.test.opcua.{cfg.name}")
        self.source = OpcUaSource(cfg, ENTERPRISE, self.ingest, self.metrics, self.log)

    def start(self) -> Harness:
        self.source.start()
        wait_until(lambda: self.source.connected, what="the source to connect")
        return self

    def rows(self) -> tuple[list[Point], list[int]]:
        batch = self.spool.read_batch(1_000_000)
        return [lineprotocol.parse(line) for line in batch.lines], batch.enqueued_ms

    def points(self, signal: str | None = None, equipment: str | None = None) -> list[Point]:
        return [p for p in self.rows()[0] if (signal is None or p.tags["signal"] == signal)
                and (equipment is None or p.tags["equipment"] == equipment)]

    def wait_point(self, signal: str, predicate: Callable[[Point], bool], what: str = "") -> Point:
        def found() -> Point | None:
            return next((p for p in reversed(self.points(signal)) if predicate(p)), None)

        return wait_until(found, what=what or f"a point for {signal}")

    def gauge(self) -> float:
        return self.metrics.value("fmc_source_connected", {"source": self.source.name})

    def rejected(self, reason: str) -> float:
        return self.metrics.value("fmc_rejected_total", {"source": self.source.name, "reason": reason})

    def close(self) -> None:
        self.source.stop()
        self.ingest.stop()
        self.spool.close()


@pytest.fixture(scope="module")
def shop() -> Iterator[OpcUaTestServer]:
    with OpcUaTestServer() as server:
        yield server


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[[schema.OpcUaSource], Harness]]:
    made: list[Harness] = []

    def make(cfg: schema.OpcUaSource) -> Harness:
        h = Harness(tmp_path, cfg)
        made.append(h)
        return h.start()

    yield make
    for h in made:
        h.close()


# --- values end to end ----------------------------------------------------------------------------


def test_subscribed_values_arrive_exactly_with_source_timestamps(shop: OpcUaTestServer, harness: Any) -> None:
    h = harness(source_config(shop, [
        {"equipment": "cnc-01", "signal": "spindle_speed", "node_id": "ns=plant;s=CNC-01.Spindle.ActualSpeed",
         "sampling_interval_ms": 50},
        {"equipment": "cnc-01", "signal": "power", "node_id": "ns=plant;s=CNC-01.MachineTool.Power",
         "scale": 1000, "offset": 0.5},
        {"equipment": "cnc-01", "signal": "channel_state", "value_type": "state",
         "browse_path": ["machinery:Machines", "plant:CNC-01", "mt:Monitoring", "mt:Channel1", "mt:ChannelState"]},
        {"equipment": "cnc-01", "signal": "program_state", "value_type": "state",
         "browse_path": ["machinery:Machines", "plant:CNC-01", "mt:Production", "mt:ActiveProgram", "mt:State",
                         "ua:CurrentState"]},
        {"equipment": "lab", "signal": "label", "node_id": "ns=plant;s=Lab.Label", "value_type": "text"},
        {"equipment": "lab", "signal": "flag", "node_id": "ns=plant;s=Lab.Flag"},
    ]))
    assert h.source.subscribed_nodes == 6 and h.source.polled_nodes == 0
    source_ts, server_ts = utc(3), utc(1)
    shop.write("CNC-01.Spindle.ActualSpeed", 1234.5, source_ts=source_ts, server_ts=server_ts)
    shop.write("CNC-01.MachineTool.Power", 7.25)
    shop.write("CNC-01.Channel1.ChannelState", 1, variant_type=ua.VariantType.Int32)
    shop.write("CNC-01.ActiveProgram.State.CurrentState", ua.LocalizedText("Interrupted"))
    shop.write("Lab.Label", "setup 机床")
    shop.write("Lab.Flag", True)

    speed = h.wait_point("spindle_speed", lambda p: p.fields.get("value") == 1234.5)
    assert speed.ts_ns == ns(source_ts)
    assert speed.fields == {"value": 1234.5, "quality": 0}
    assert speed.tags == {"enterprise": ENTERPRISE.id, "equipment": "cnc-01", "signal": "spindle_speed"}
    assert h.wait_point("power", lambda p: p.fields.get("value") == 7250.5).fields["quality"] == 0
    assert h.wait_point("channel_state", lambda p: p.fields.get("value") == 1.0)
    assert h.wait_point("program_state", lambda p: p.fields.get("text") == "Interrupted")
    assert h.wait_point("label", lambda p: p.fields.get("text") == "setup 机床")
    assert h.wait_point("flag", lambda p: p.fields.get("value") == 1.0)
    # every data change received became a point (queue size 1: an initial value may be replaced by a write)
    assert h.metrics.value("fmc_messages_received_total", {"source": "shop"}) == len(h.points()) >= 6
    assert h.gauge() == 1


def test_server_timestamps_when_configured(shop: OpcUaTestServer, harness: Any) -> None:
    h = harness(source_config(shop, [
        {"equipment": "cnc-02", "signal": "spindle_speed", "node_id": "ns=plant;s=CNC-02.Spindle.ActualSpeed"},
    ], timestamp="server"))
    source_ts, server_ts = utc(30), utc(2)
    shop.write("CNC-02.Spindle.ActualSpeed", 800.0, source_ts=source_ts, server_ts=server_ts)
    point = h.wait_point("spindle_speed", lambda p: p.fields.get("value") == 800.0)
    assert point.ts_ns == ns(server_ts) != ns(source_ts)


def test_bad_and_uncertain_status_are_points_with_their_quality(shop: OpcUaTestServer, harness: Any) -> None:
    h = harness(source_config(shop, [
        {"equipment": "lab", "signal": "temperature", "node_id": "ns=plant;s=Lab.Temperature"},
    ]))
    bad = ua.StatusCodes.BadSensorFailure
    uncertain = ua.StatusCodes.UncertainLastUsableValue
    shop.write("Lab.Temperature", 99.0, status=bad)
    point = h.wait_point("temperature", lambda p: p.fields["quality"] != 0)
    assert point.fields == {"quality": bad}  # the server drops a Bad value: no value field
    shop.write("Lab.Temperature", 22.5, status=uncertain)
    point = h.wait_point("temperature", lambda p: p.fields["quality"] == uncertain)
    assert point.fields == {"quality": uncertain, "value": 22.5}
    shop.write("Lab.Temperature", 23.0)
    assert h.wait_point("temperature", lambda p: p.fields.get("value") == 23.0).fields["quality"] == 0


def test_wrong_types_and_non_finite_values_are_rejected_by_reason(shop: OpcUaTestServer, harness: Any) -> None:
    h = harness(source_config(shop, [
        {"equipment": "lab", "signal": "label_as_number", "node_id": "ns=plant;s=Lab.Label"},
        {"equipment": "cnc-02", "signal": "power", "node_id": "ns=plant;s=CNC-02.MachineTool.Power"},
    ]))
    wait_until(lambda: h.rejected("value_wrong_type") >= 1, what="a value_wrong_type rejection")
    shop.write("CNC-02.MachineTool.Power", math.nan)
    wait_until(lambda: h.rejected("value_not_finite") >= 1, what="a value_not_finite rejection")
    shop.write("CNC-02.MachineTool.Power", 8.5)
    h.wait_point("power", lambda p: p.fields.get("value") == 8.5)
    records = {r.reason: r for r in h.spool.recent_rejections()}
    assert records["value_wrong_type"].topic == shop.node_id("Lab.Label").to_string()
    assert "lab/label_as_number" in records["value_wrong_type"].detail and "not a number" in records[
        "value_wrong_type"].detail
    assert records["value_not_finite"].topic == shop.node_id("CNC-02.MachineTool.Power").to_string()
    assert not h.points("label_as_number")
    assert all(not math.isnan(p.fields.get("value", 0.0)) for p in h.points("power"))


def test_polling_reads_in_batches_at_the_interval(shop: OpcUaTestServer, harness: Any) -> None:
    h = harness(source_config(shop, [
        {"equipment": "lab", "signal": "counter", "node_id": "ns=plant;s=Lab.Counter", "mode": "poll",
         "poll_interval_s": 0.2},
        {"equipment": "loom-07", "signal": "power", "mode": "poll", "poll_interval_s": 0.2,
         "browse_path": ["machinery:Machines", "plant:Loom-07", "plant:Power"]},
    ]))
    assert h.source.polled_nodes == 2 and h.source.subscribed_nodes == 0
    shop.write("Lab.Counter", 7, variant_type=ua.VariantType.Int32)
    first = h.wait_point("counter", lambda p: p.fields.get("value") == 7.0)
    wait_until(lambda: len([p for p in h.points("counter") if p.fields.get("value") == 7.0]) >= 3,
               what="three polls of the counter")
    assert first.fields["quality"] == 0
    assert h.points("power", "loom-07")[-1].fields["value"] == 3.2


def test_nodes_the_server_will_not_monitor_are_polled(tmp_path: Path, harness: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fmc.test.opcua")
    with OpcUaTestServer(max_monitored_items=2) as server:
        h = harness(source_config(server, [
            {"equipment": f"cnc-0{n}", "signal": signal, "node_id": f"ns=plant;s=CNC-0{n}.{path}",
             "poll_interval_s": 0.2}
            for n in (1, 2) for signal, path in (("spindle_speed", "Spindle.ActualSpeed"),
                                                 ("feed_override", "Channel1.FeedOverride"))
        ]))
        assert (h.source.subscribed_nodes, h.source.polled_nodes) == (2, 2)
        assert "BadTooManyMonitoredItems" in caplog.text and "polling them instead" in caplog.text
        for n in (1, 2):
            server.write(f"CNC-0{n}.Spindle.ActualSpeed", 100.0 * n)
            server.write(f"CNC-0{n}.Channel1.FeedOverride", 90.0 + n)
        for n in (1, 2):
            h.wait_point("spindle_speed", lambda p, n=n: p.tags["equipment"] == f"cnc-0{n}"
                         and p.fields.get("value") == 100.0 * n)
            h.wait_point("feed_override", lambda p, n=n: p.tags["equipment"] == f"cnc-0{n}"
                         and p.fields.get("value") == 90.0 + n)


# --- reconnects and the watchdog ----------------------------------------------------------------------


def test_server_restart_with_renumbered_namespaces(tmp_path: Path, harness: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fmc.test.opcua")
    with OpcUaTestServer() as server:
        h = harness(source_config(server, [
            {"equipment": "cnc-01", "signal": "spindle_speed", "node_id": "ns=plant;s=CNC-01.Spindle.ActualSpeed"},
            {"equipment": "cnc-01", "signal": "channel_state", "value_type": "state",
             "browse_path": ["machinery:Machines", "plant:CNC-01", "mt:Monitoring", "mt:Channel1", "mt:ChannelState"]},
        ]))
        assert h.source.namespace_indexes["plant"] == 2
        server.write("CNC-01.Spindle.ActualSpeed", 1500.0)
        h.wait_point("spindle_speed", lambda p: p.fields.get("value") == 1500.0)

        gauge_during_gap: list[float] = []
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.wait(0.05):
                gauge_during_gap.append(h.gauge())

        server.stop()
        wait_until(lambda: not h.source.connected, what="the source to notice the stop")
        gap_began_ms = time.time_ns() // 10**6
        sampler = threading.Thread(target=sample)
        sampler.start()
        time.sleep(1.5)
        stop_sampling.set()
        sampler.join()
        gap_ended_ms = time.time_ns() // 10**6
        server.namespace_shift = 3  # the restarted server registers its namespaces after three others
        server.start()
        wait_until(lambda: h.source.connected, what="the source to reconnect")

        assert gauge_during_gap and set(gauge_during_gap) == {0.0}
        assert h.source.namespace_indexes == {"ua": 0, "plant": 5, "machinery": 7, "mt": 8}
        assert h.source.sessions_opened == 2
        assert "namespace indexes changed" in caplog.text
        server.write("CNC-01.Spindle.ActualSpeed", 2500.0)
        server.write("CNC-01.Channel1.ChannelState", 2, variant_type=ua.VariantType.Int32)
        after = h.wait_point("spindle_speed", lambda p: p.fields.get("value") == 2500.0)
        assert after.tags == {"enterprise": ENTERPRISE.id, "equipment": "cnc-01", "signal": "spindle_speed"}
        h.wait_point("channel_state", lambda p: p.fields.get("value") == 2.0)
        points, enqueued_ms = h.rows()
        assert not [p for p, at in zip(points, enqueued_ms, strict=True) if gap_began_ms <= at <= gap_ended_ms]
        assert server.open_sessions() == 1


@pytest.fixture(scope="module")
def watched() -> Iterator[OpcUaTestServer]:
    with OpcUaTestServer() as server:
        yield server


def test_watchdog_reconnects_when_server_time_stops(watched: OpcUaTestServer, harness: Any,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fmc.test.opcua")
    h = harness(source_config(watched, [
        {"equipment": "lab", "signal": "temperature", "node_id": "ns=plant;s=Lab.Temperature"},
    ], watchdog_s=2.5))
    watched.stop_clock()
    wait_until(lambda: "CurrentTime has not advanced" in caplog.text, timeout=10, what="the watchdog")
    wait_until(lambda: h.source.sessions_resumed >= 1 and h.source.connected, what="the session back")
    assert "the server is stalled" in h.source.last_error  # type: ignore[operator]
    assert h.source.sessions_opened == 1  # the same session was taken over again, not a second one


def test_watchdog_reconnects_when_server_stops_answering(watched: OpcUaTestServer, harness: Any,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fmc.test.opcua")
    h = harness(source_config(watched, [
        {"equipment": "lab", "signal": "counter", "node_id": "ns=plant;s=Lab.Counter", "sampling_interval_ms": 100},
    ], watchdog_s=1, timeout_s=0.5, name="frozen"))
    sessions_before = watched.open_sessions()
    for round_ in range(2):  # two stalls in a row: still one session on the server
        watched.freeze(2.0)
        wait_until(lambda: not h.source.connected, what="the watchdog to drop the silent connection")
        wait_until(lambda r=round_: h.source.sessions_resumed >= r + 1 and h.source.connected, timeout=15,
                   what="the session taken over again")
    assert "within 0.5s (watchdog)" in caplog.text or "no data and no keep-alive" in caplog.text
    assert h.source.sessions_opened == 1
    assert watched.open_sessions() == sessions_before
    watched.write("Lab.Counter", 41, variant_type=ua.VariantType.Int32)
    h.wait_point("counter", lambda p: p.fields.get("value") == 41.0)


# --- security -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OpcUaTestServer, Path]]:
    """A server with Basic256Sha256 only, users, and a client certificate it trusts (made by our tool)."""
    root = tmp_path_factory.mktemp("opcua-security")
    certs = root / "client"
    uri = "urn:fmc:test-gateway:client"
    make_client_certificate(certs / "client.der", certs / "client-key.pem", uri, "fmc test gateway")
    make_client_certificate(certs / "stranger.der", certs / "stranger-key.pem", uri, "unknown gateway")
    make_client_certificate(certs / "other-uri.der", certs / "other-uri-key.pem", "urn:other:app", "other app")
    server = OpcUaTestServer(security_dir=root / "server", users={"operator": "s3cret"}, allow_anonymous=False)
    assert server.trusted_clients is not None
    shutil.copy(certs / "client.der", server.trusted_clients / "client.der")
    shutil.copy(certs / "other-uri.der", server.trusted_clients / "other-uri.der")
    with server:
        yield server, certs


def secure_config(server: OpcUaTestServer, certs: Path, **kw: Any) -> schema.OpcUaSource:
    kw.setdefault("security_policy", "Basic256Sha256")
    kw.setdefault("certificate", certs / "client.der")
    kw.setdefault("private_key", certs / "client-key.pem")
    kw.setdefault("server_certificate", server.server_certificate)
    kw.setdefault("application_uri", "urn:fmc:test-gateway:client")
    kw.setdefault("username", "operator")
    kw.setdefault("password", "s3cret")
    return source_config(server, [
        {"equipment": "cnc-01", "signal": "spindle_speed", "node_id": "ns=plant;s=CNC-01.Spindle.ActualSpeed"},
    ], **kw)


def test_sign_and_encrypt_with_a_certificate_from_make_client_certificate(secure: Any, harness: Any) -> None:
    server, certs = secure
    cfg = secure_config(server, certs)
    assert cfg.security_mode == "SignAndEncrypt"
    h = harness(cfg)
    server.write("CNC-01.Spindle.ActualSpeed", 3000.0)
    assert h.wait_point("spindle_speed", lambda p: p.fields.get("value") == 3000.0).fields["quality"] == 0


async def test_check_reports_security_identity_and_trust(secure: Any) -> None:
    server, certs = secure
    ok = await check_opcua(secure_config(server, certs, security_mode="Sign"))
    assert ok.ok, ok.detail
    assert "Basic256Sha256/Sign, identity username" in ok.detail and "1 of 1 node(s) readable" in ok.detail
    folder = await check_opcua(secure_config(server, certs, server_certificate=None,
                                              trusted_server_certificates=server.server_certificate.parent))
    assert folder.ok, folder.detail
    unchecked = await check_opcua(secure_config(server, certs, server_certificate=None))
    assert unchecked.ok and "accepted without a check" in unchecked.detail
    by_certificate = await check_opcua(secure_config(server, certs, identity="certificate", username=None,
                                                     password=None))
    assert by_certificate.ok and "identity certificate" in by_certificate.detail, by_certificate.detail


@pytest.mark.parametrize(("settings", "expected"), [
    ({"password": "wrong"}, "the server refused user 'operator' (BadUserAccessDenied): wrong username or password"),
    ({"username": None, "password": None}, "does not accept identity = \"anonymous\""),
    ({"certificate": "stranger.der", "private_key": "stranger-key.pem"},
     "the server does not trust this client's certificate (BadCertificateUntrusted)"),
    ({"certificate": "other-uri.der", "private_key": "other-uri-key.pem"},
     "was made for 'urn:other:app', but this client announces application_uri 'urn:fmc:test-gateway:client'"),
    ({"application_uri": "urn:fmc:elsewhere:client"}, "servers refuse that (BadCertificateUriInvalid)"),
    ({"security_mode": "None", "security_policy": "None", "certificate": None, "private_key": None,
      "server_certificate": None},
     "offers no endpoint with security_policy = \"None\" and security_mode = \"None\"; it offers: "
     "Basic256Sha256/Sign, Basic256Sha256/SignAndEncrypt"),
    ({"certificate": "missing.der"}, "certificate file"),
])
async def test_security_failures_name_their_cause(secure: Any, settings: dict[str, Any], expected: str) -> None:
    server, certs = secure
    for key in ("certificate", "private_key"):
        if isinstance(settings.get(key), str):
            settings = {**settings, key: certs / settings[key]}
    result = await check_opcua(secure_config(server, certs, **settings))
    assert not result.ok
    assert expected in result.detail, result.detail


async def test_pinned_server_certificate_mismatch_is_refused(secure: Any, tmp_path: Path) -> None:
    server, certs = secure
    other, _ = make_client_certificate(tmp_path / "not-the-server.der", tmp_path / "k.pem", "urn:x", "impostor")
    result = await check_opcua(secure_config(server, certs, server_certificate=other))
    assert not result.ok
    assert "not the one pinned in server_certificate" in result.detail
    empty = tmp_path / "trusted"
    empty.mkdir()
    result = await check_opcua(secure_config(server, certs, server_certificate=None, trusted_server_certificates=empty))
    assert not result.ok and "trusted_server_certificates" in result.detail and "thumbprint" in result.detail


def test_wrong_password_is_logged_as_an_error_by_the_running_source(secure: Any, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    server, certs = secure
    caplog.set_level(logging.ERROR, logger="fmc.test.opcua")
    h = Harness(tmp_path, secure_config(server, certs, password="wrong", name="badpw"))
    h.source.start()
    try:
        wait_until(lambda: "wrong username or password" in caplog.text, what="the error log")
        assert not h.source.connected and h.gauge() == 0
        assert "BadUserAccessDenied" in (h.source.last_error or "")
        assert "wrong" not in caplog.text.replace("wrong username", "")  # the password is never logged
    finally:
        h.close()


async def test_wrong_endpoint_and_missing_nodes(shop: OpcUaTestServer) -> None:
    nobody = source_config(shop, [{"equipment": "x", "signal": "y", "node_id": "i=2258"}],
                           endpoint=f"opc.tcp://127.0.0.1:{free_port()}")
    result = await check_opcua(nobody)
    assert not result.ok
    assert "connection refused by 127.0.0.1" in result.detail and "no OPC UA server listens there" in result.detail
    unknown_host = await check_opcua(source_config(shop, [{"equipment": "x", "signal": "y", "node_id": "i=2258"}],
                                                   endpoint="opc.tcp://no-such-host.invalid:4840"))
    assert not unknown_host.ok and "cannot resolve the host name" in unknown_host.detail
    partly = await check_opcua(source_config(shop, [
        {"equipment": "cnc-01", "signal": "spindle_speed", "node_id": "ns=plant;s=CNC-01.Spindle.ActualSpeed"},
        {"equipment": "cnc-01", "signal": "typo", "node_id": "ns=plant;s=CNC-01.Spindle.ActualSped"},
        {"equipment": "cnc-01", "signal": "lost", "browse_path": ["plant:Nowhere", "plant:Speed"]},
        {"equipment": "cnc-01", "signal": "foreign", "node_id": "ns=missing;s=A"},
    ], namespaces={**NAMESPACES, "missing": "http://example.com/not-here/"}))
    assert not partly.ok
    assert "1 of 4 node(s) readable" in partly.detail
    assert "cnc-01/typo (ns=2;s=CNC-01.Spindle.ActualSped): BadNodeIdUnknown" in partly.detail
    assert "cnc-01/lost (plant:Nowhere/plant:Speed): browse path not found (BadNoMatch)" in partly.detail
    assert "missing = 'http://example.com/not-here/'" in partly.detail


# --- configuration ----------------------------------------------------------------------------------


class _AgentLike(_Model):
    opcua: list[schema.OpcUaSource]


def config_errors(toml: str) -> str:
    try:
        _AgentLike.model_validate(tomllib.loads(toml))
    except ValidationError as e:
        return ConfigError("agent.toml", problems_from(e)).render()
    raise AssertionError("the configuration was accepted")


def test_config_errors_name_the_setting_and_the_fix() -> None:
    text = config_errors("""
[[opcua]]
name = "cnc"
endpoint = "opc.tcp://10.0.0.5:4840"
security_policy = "Basic256Sha256"
[[opcua.node]]
equipment = "cnc-01"
signal = "spindle_speed"
node_id = "ns=mt;s=Spindle"
""")
    assert "setting `opcua[0]`" in text and "needs a client certificate" in text and "fmc opcua cert" in text
    text = config_errors("""
[[opcua]]
name = "cnc"
endpoint = "opc.tcp://10.0.0.5:4840"
[[opcua.node]]
equipment = "cnc-01"
signal = "spindle_speed"
node_id = "ns=mt;s=Spindle"
""")
    assert "node[0] (cnc-01/spindle_speed) uses namespace alias 'mt'" in text and 'add mt = "<namespace URI>"' in text
    text = config_errors("""
[[opcua]]
name = "cnc"
endpoint = "tcp://10.0.0.5"
[[opcua.node]]
equipment = "cnc-01"
signal = "spindle_speed"
browse_path = ["Objects", "Spindle"]
deadband = { type = "percent", value = 150 }
""")
    assert "setting `opcua[0].endpoint`: must look like \"opc.tcp://host:4840\"" in text
    assert "setting `opcua[0].node[0].browse_path`" in text and 'write "alias:BrowseName"' in text
    assert "setting `opcua[0].node[0].deadband`: a percent deadband" in text


def test_config_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = schema.OpcUaSource(
        name="cnc", endpoint="opc.tcp://10.0.0.5:4840", security_policy="Basic256Sha256",
        certificate=Path("pki/client.der"), private_key=Path("pki/client-key.pem"),
        username="operator", password="${never-logged}",
        node=[{"equipment": "cnc-01", "signal": "s", "node_id": "ns=2;i=5", "sampling_interval_ms": 250}],
    )
    assert (cfg.security_mode, cfg.identity, cfg.timestamp, cfg.watchdog_s) == ("SignAndEncrypt", "username",
                                                                                 "source", 30.0)
    assert cfg.application_uri.startswith("urn:fmc:") and "{hostname}" not in cfg.application_uri
    assert cfg.node[0].effective_poll_interval_s() == 0.25
    moved = cfg.relative_to(tmp_path)
    assert moved.certificate == tmp_path / "pki/client.der" and isinstance(moved, schema.OpcUaSource)
    assert "never-logged" not in repr(cfg)


# --- sample.toml: what a user copies into agent.toml ------------------------------------------------------

SAMPLE = Path(schema.__file__).with_name("sample.toml")
README = Path(schema.__file__).with_name("README.md")
MINIMAL_AGENT = """
[enterprise]
id = "91330602MA2BXXXX1X"
name = "示范机加工"
region = "330602"
industry = "34"

[sink]
type = "embedded"
"""
_ALTERNATIVE = re.compile(r"^(\s*)# ([a-z_]+ = .*)$")
_SETTING = re.compile(r"^\s*[a-z_]+ = ")


def sample_variants(text: str) -> dict[str, str]:
    """The sample as written, and with each ``# setting = value`` line in place of the setting above it."""
    lines = text.splitlines()
    variants = {"as written": text}
    for i, line in enumerate(lines):
        m = _ALTERNATIVE.match(line)
        if m is None:
            continue
        assert i > 0 and _SETTING.match(lines[i - 1]), f"line {i + 1}: {line.strip()!r} has no setting above it"
        variant = [*lines[: i - 1], m.group(1) + m.group(2), *lines[i + 1 :]]
        variants[m.group(2)] = "\n".join(variant) + "\n"
    return variants


def readme_config_block() -> str:
    section = README.read_text(encoding="utf-8").split("## Configuration", 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


def test_sample_toml_validates_in_an_agent_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sample.toml (and every alternative it shows) is a valid [[opcua]] section of agent.toml, as is the
    README's example, so neither can drift from the settings the code accepts."""
    from fmc.cli.plugins import load_config

    monkeypatch.setenv("OPCUA_PASSWORD", "s3cret-opcua")
    variants = sample_variants(SAMPLE.read_text(encoding="utf-8"))
    assert len(variants) == 3  # as written, trusted_server_certificates, a percent deadband
    variants["README.md"] = readme_config_block()
    for what, text in variants.items():
        path = tmp_path / "agent.toml"
        path.write_text(MINIMAL_AGENT + "\n" + text, encoding="utf-8")
        try:
            cfg = load_config(path)
        except ConfigError as e:
            raise AssertionError(f"sample.toml ({what}) does not validate:\n{e.render()}") from None
        [source] = cfg.opcua
        assert source.name == "machining-hall" and source.secure, what
        assert len(source.node) >= 4 and source.password is not None, what
        assert source.password.get_secret_value() == "s3cret-opcua", what
    as_written = tmp_path / "sample-agent.toml"
    as_written.write_text(MINIMAL_AGENT + "\n" + SAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    [source] = load_config(as_written).opcua
    assert {n.value_type for n in source.node} == {"number", "text", "state"}
    assert {n.mode for n in source.node} == {"subscribe", "poll"}
    assert any(n.browse_path for n in source.node) and any(n.deadband for n in source.node)


# --- DataValue -> point, without a server --------------------------------------------------------------


def _plan(value_type: str = "number", **kw: Any) -> _NodePlan:
    return _NodePlan(schema.OpcUaNode(equipment="m", signal="s", node_id="i=1", value_type=value_type, **kw), "E")


def _convert(plan: _NodePlan, dv: ua.DataValue, prefer_source: bool = True) -> tuple[list[Point], list[Rejection]]:
    points: list[Point] = []
    rejected: list[tuple[str, Rejection]] = []
    data_value_to_point(plan, "ns=1;i=1", dv, 2_000_000_000 * 10**9, prefer_source, points, rejected, [])
    return points, [r for _, r in rejected]


def test_timestamps_fall_back_and_quality_drops_info_bits() -> None:
    good_source = datetime(2025, 3, 1, 8, 0, 0, 123000, tzinfo=UTC)
    server = datetime(2025, 3, 1, 8, 0, 1, tzinfo=UTC)
    points, _ = _convert(_plan(), ua.DataValue(ua.Variant(1.5), SourceTimestamp=None, ServerTimestamp=server))
    assert points[0].ts_ns == ns(server)
    wrong_clock = datetime(1970, 1, 2, tzinfo=UTC)
    points, _ = _convert(_plan(), ua.DataValue(ua.Variant(1.5), SourceTimestamp=wrong_clock, ServerTimestamp=server))
    assert points[0].ts_ns == ns(server)
    points, _ = _convert(_plan(), ua.DataValue(ua.Variant(1.5)))
    assert points[0].ts_ns == 2_000_000_000 * 10**9  # neither timestamp: the receive time
    overflow_bit = ua.StatusCode(0x00000480)  # Good, InfoType DataValue + Overflow
    points, _ = _convert(_plan(), ua.DataValue(ua.Variant(2.0), StatusCode=overflow_bit, SourceTimestamp=good_source))
    assert points[0].fields == {"value": 2.0, "quality": 0} and points[0].ts_ns == ns(good_source)
    assert QUALITY_MASK & ua.StatusCodes.BadCommunicationError == ua.StatusCodes.BadCommunicationError


def test_state_keeps_codes_as_numbers_and_names_as_text() -> None:
    assert _convert(_plan("state"), ua.DataValue(ua.Variant(ua.ServerState.Running)))[0][0].fields["value"] == 0.0
    assert _convert(_plan("state"), ua.DataValue(ua.Variant(ua.LocalizedText("Idle"))))[0][0].fields["text"] == "Idle"
    assert _convert(_plan("text"), ua.DataValue(ua.Variant(3.5)))[1][0].reason == "value_wrong_type"
    assert _convert(_plan(), ua.DataValue(ua.Variant([1.0, 2.0])))[1][0].reason == "value_wrong_type"
    assert _convert(_plan(), ua.DataValue(ua.Variant(10**400 // 10**90)))[1][0].reason == "value_not_finite"
    assert _convert(_plan("text"), ua.DataValue(ua.Variant("a\nb")))[1][0].reason == "value_control_char"
    assert _convert(_plan(), ua.DataValue(ua.Variant(None)))[1][0].reason == "value_wrong_type"  # Good but empty


@given(st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_finite_numbers_pass_unchanged(value: float) -> None:
    points, rejections = _convert(_plan(), ua.DataValue(ua.Variant(value, ua.VariantType.Double)))
    assert not rejections and points[0].fields == {"value": value, "quality": 0}
    assert lineprotocol.parse(lineprotocol.encode(points[0])).fields["value"] == value


def test_describe_failure_names_server_side_uri_refusal() -> None:
    cfg = schema.OpcUaConnection(endpoint="opc.tcp://h:4840", security_policy="Basic256Sha256",
                                 certificate=Path("c.der"), private_key=Path("k.pem"))
    error = describe_failure(ua.UaStatusCodeError(ua.StatusCodes.BadCertificateUriInvalid), cfg)
    assert error.cause == "certificate_uri_mismatch" and "fmc opcua cert --application-uri" in error.message
    timeout = describe_failure(TimeoutError(), cfg)
    assert timeout.cause == "timeout" and "no answer from h:4840" in timeout.message


def test_secure_channel_renewal_failure_does_not_end_the_source(harness: Any,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """The secure channel is renewed at 75 % of its lifetime inside the watchdog; a renewal that
    times out (server busy at that moment) must be a lost session, then a reconnect."""
    caplog.set_level(logging.WARNING)

    class ShortChannelClient(connection.Client):  # type: ignore[misc,valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.secure_channel_timeout = 2000  # ms: renewed every 1.5 s instead of every 45 min

    monkeypatch.setattr(connection, "Client", ShortChannelClient)
    with OpcUaTestServer() as server:
        h = harness(source_config(server, [
            {"equipment": "lab", "signal": "temperature", "node_id": "ns=plant;s=Lab.Temperature"},
        ], watchdog_s=30, timeout_s=1))
        server.write("Lab.Temperature", 20.0)
        h.wait_point("temperature", lambda p: p.fields.get("value") == 20.0)
        time.sleep(3.5)  # a couple of renewals
        assert h.source.connected
        server.freeze(2.5)  # the server is busy for 2.5 s: the next renewal is not answered within 1 s
        time.sleep(3.0)
        # the source must come back by itself
        wait_until(lambda: h.source.connected, timeout=15, what="the source to reconnect after the busy server")
        server.write("Lab.Temperature", 21.0)
        h.wait_point("temperature", lambda p: p.fields.get("value") == 21.0)
        assert "stopped on an unexpected error" not in caplog.text


def test_a_failure_while_resuming_does_not_end_the_source(harness: Any,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The connection fails again right after the session was re-activated (the NamespaceArray read
    times out, as on a flapping link): the source must retry, not stop for good."""
    import fmc.sources.opcua.session as session_module

    caplog.set_level(logging.WARNING)
    real = session_module.read_namespace_array
    calls = {"n": 0}

    async def flaky(client: Any) -> list[str]:
        calls["n"] += 1
        if calls["n"] == 2:  # the first read after the session was taken over again
            raise TimeoutError
        return await real(client)

    monkeypatch.setattr(session_module, "read_namespace_array", flaky)
    with OpcUaTestServer() as server:
        h = harness(source_config(server, [
            {"equipment": "lab", "signal": "counter", "node_id": "ns=plant;s=Lab.Counter"},
        ], watchdog_s=1, timeout_s=0.5))
        server.freeze(2.0)
        wait_until(lambda: not h.source.connected, what="the watchdog to drop the silent connection")
        wait_until(lambda: h.source.connected, timeout=15, what="the source to come back")
        assert "stopped on an unexpected error" not in caplog.text


def test_equipment_and_meter_whose_node_vanished_are_not_vouched_for(harness: Any) -> None:
    """After a server restart without the node (a PLC program change), nothing is read for the
    equipment/meter any more; yet the source keeps vouching for them as live every confirmation."""
    with OpcUaTestServer() as server:
        h = harness(source_config(server, [
            {"equipment": "lab", "signal": "temperature", "node_id": "ns=plant;s=Lab.Temperature"},
            {"kind": "meter", "meter": "lab-kwh", "carrier": "electricity", "node_id": "ns=plant;s=Lab.Counter"},
        ]))
        server.write("Lab.Temperature", 22.0)
        server.write("Lab.Counter", 100, variant_type=ua.VariantType.Int32)
        wait_until(lambda: any(p.tags.get("signal") == "temperature" and p.fields.get("value") == 22.0
                               and p.fields["quality"] == 0 for p in h.rows()[0]), what="a good temperature")
        assert h.source.subscribed_nodes == 2
        assert (h.source.live_equipment(), h.source.live_meters()) == ({"lab"}, {"lab-kwh"})
        # the server comes back with another address space: neither node exists any more
        server.stop()
        wait_until(lambda: not h.source.connected, what="the source to notice the stop")
        server.layout = "factory"
        server.start()
        wait_until(lambda: h.source.connected and h.source.sessions_opened == 2, what="a new session")
        assert h.source.subscribed_nodes == 0 and h.source.polled_nodes == 0
        # nothing is read for "lab" or "lab-kwh" in this session: they must not be confirmed as live
        assert h.source.live_equipment() == set()
        assert h.source.live_meters() == set()


def test_a_polled_node_that_was_unavailable_for_a_moment_is_read_again(harness: Any) -> None:
    """A polled node that answers BadNodeIdUnknown for a moment (a PLC downloading its program) was
    dropped from polling for the rest of the session: it is read again after a rest (5 s at first)."""
    from tests.servers.opcua import PLANT_URI

    with OpcUaTestServer() as server:
        h = harness(source_config(server, [
            {"equipment": "lab", "signal": "counter", "node_id": "ns=plant;s=Lab.Counter", "mode": "poll",
             "poll_interval_s": 0.2},
            {"equipment": "lab", "signal": "temperature", "node_id": "ns=plant;s=Lab.Temperature", "mode": "poll",
             "poll_interval_s": 0.2},
        ]))
        server.write("Lab.Counter", 1, variant_type=ua.VariantType.Int32)
        h.wait_point("counter", lambda p: p.fields.get("value") == 1.0)
        plant = server.namespace_index(PLANT_URI)

        async def drop() -> None:
            await server.server.delete_nodes([server.server.get_node(server.node_id("Lab.Counter"))])

        async def back() -> None:
            lab = server.server.get_node(ua.NodeId("Lab", plant))
            await lab.add_variable(server.node_id("Lab.Counter"), ua.QualifiedName("Counter", plant),
                                   ua.Variant(5, ua.VariantType.Int32))

        server.call(drop)
        time.sleep(1.0)
        server.call(back)
        server.write("Lab.Counter", 6, variant_type=ua.VariantType.Int32)
        server.write("Lab.Temperature", 30.0)
        h.wait_point("temperature", lambda p: p.fields.get("value") == 30.0)  # the other node goes on
        h.wait_point("counter", lambda p: p.fields.get("value") == 6.0, what="the counter read again")


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
@pytest.mark.parametrize("status", [ua.StatusCodes.GoodLocalOverride, ua.StatusCodes.GoodClamped])
def test_good_with_a_sub_status_is_good_data(harness: Any, status: int, mode: str) -> None:
    """A Good status with a sub-code (severity bits 00) is a Good value in OPC UA: a value forced at the
    PLC counted as bad data (its equipment's samples, a meter's readings)."""
    with OpcUaTestServer() as server:
        h = harness(source_config(server, [
            {"equipment": "lab", "signal": "temperature", "node_id": "ns=plant;s=Lab.Temperature", "mode": mode,
             **({"poll_interval_s": 0.2} if mode == "poll" else {})},
        ]))
        server.write("Lab.Temperature", 42.5, status=status)
        point = h.wait_point("temperature", lambda p: p.fields.get("value") == 42.5)
        assert point.fields["quality"] == 0, f"quality {point.fields['quality']:#010x} for a Good value"


def test_a_change_lost_in_flight_is_asked_for_again_on_resuming(harness: Any) -> None:
    """A notification the server sent just as the link broke never arrives, yet the server counts it
    as sent: later messages do not repeat it. Resuming the session must ask for it again (Republish)
    before publishing goes on, or the value is missing until the node next changes."""
    with OpcUaTestServer() as server:
        relay = TcpRelay("127.0.0.1", server.port)
        try:
            h = harness(source_config(server, [
                {"equipment": "lab", "signal": "temperature", "node_id": "ns=plant;s=Lab.Temperature"},
            ], endpoint=f"opc.tcp://{relay.host}:{relay.port}/fmc-test/"))
            server.write("Lab.Temperature", 20.0)
            h.wait_point("temperature", lambda p: p.fields.get("value") == 20.0)
            relay.swallow_downstream()
            server.write("Lab.Temperature", 21.0)
            wait_until(lambda: relay.swallowed > 0, what="a publish response to be lost")
            time.sleep(0.5)
            relay.forward()  # the connection that lost it is closed; the source resumes on a new one
            wait_until(lambda: h.source.sessions_resumed == 1 and h.source.connected, timeout=15,
                       what="the session to be resumed")
            assert h.source.sessions_opened == 1
            lost = h.wait_point("temperature", lambda p: p.fields.get("value") == 21.0, what="the change in flight")
            assert h.source.messages_republished >= 1
            server.write("Lab.Temperature", 22.0)  # publishing goes on after the Republish
            h.wait_point("temperature", lambda p: p.fields.get("value") == 22.0)
            assert [p.ts_ns for p in h.points("temperature") if p.fields.get("value") == 21.0] == [lost.ts_ns]
        finally:
            relay.close()
