"""The ``[[dlt645]]`` source against simulated meters speaking real frames — on a serial line (a socat
pty pair) and over TCP (a transparent converter) — into the real ingest, spool, plant model and
embedded store; its configuration errors, ``fmc check`` and ``fmc dlt645 scan/read``."""

from __future__ import annotations

import logging
import re
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fmc.agent.ingest import Ingest
from fmc.agent.metrics import AgentMetrics
from fmc.agent.spool import Spool
from fmc.cli import main as cli
from fmc.cli import plugins
from fmc.core.config import ConfigError, EnterpriseConfig
from fmc.core.lineprotocol import parse
from fmc.core.points import Point
from fmc.core.quality import BAD_NO_COMMUNICATION
from fmc.plant.config import PlantSections
from fmc.plant.model import PlantModel
from fmc.plant.rollups import Site
from fmc.sources.dlt645.check import check_bus
from fmc.sources.dlt645.config import Dlt645Source
from fmc.sources.dlt645.source import Dlt645Source as RunningSource
from fmc.stores.embedded.store import EmbeddedStore
from tests.servers.dlt645_meter import MeterBus, SerialMeterServer, SerialPair, SimulatedMeter, TcpMeterServer

FORWARD, COMBINED, VOLTAGE_A, CURRENT_A, POWER = 0x00010000, 0x00000000, 0x02010100, 0x02020100, 0x02030000
ENTERPRISE = {"id": "e-330602-1", "name": "样例 Sample", "region": "330602", "industry": "17"}
S = 10**9
MINIMAL = '[enterprise]\nid = "e-330602-1"\nname = "样例"\nregion = "330602"\nindustry = "17"\n' \
          '[sink]\ntype = "embedded"\npath = "store.db"\n'


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def source_settings(**bus: Any) -> Dlt645Source:
    return Dlt645Source.model_validate({"name": "bus1", **bus})


@dataclass
class Rig:
    """A running source feeding the real ingest and spool (and a plant model, when given)."""

    source: RunningSource
    ingest: Ingest
    spool: Spool
    metrics: AgentMetrics

    def points(self, measurement: str | None = None) -> list[Point]:
        lines = self.spool.read_batch(100_000).lines
        return [p for p in map(parse, lines) if measurement is None or p.measurement == measurement]

    def errors(self, reason: str) -> float:
        return self.metrics.value("fmc_source_errors_total", {"source": "bus1", "reason": reason})


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(cfg: Dlt645Source, plant: PlantModel | None = None, clock: Callable[[], int] | None = None) -> Rig:
        spool = Spool(tmp_path / f"spool-{len(made)}.db")
        metrics = AgentMetrics()
        kwargs: dict[str, Any] = {"plant": plant, "snapshot_every_s": 0.0} if plant is not None else {}
        if clock is not None:
            kwargs["clock"] = clock
        ingest = Ingest(spool, metrics, max_series=1000, commit_interval_ms=0, **kwargs)
        ingest.start()
        enterprise = EnterpriseConfig.model_validate(ENTERPRISE)
        source = cfg.open_source(_context(enterprise, ingest, metrics))
        rig = Rig(source, ingest, spool, metrics)
        made.append(rig)
        source.start()
        return rig

    yield make
    for rig in made:
        rig.source.stop()
        rig.ingest.stop()
        rig.spool.close()


def _context(enterprise: Any, ingest: Ingest, metrics: AgentMetrics) -> Any:
    from fmc.agent.plugin import SourceContext

    return SourceContext(enterprise, ingest, metrics, logging.getLogger("test.dlt645"))


# --- configuration ---------------------------------------------------------------------------------------


def _load(tmp_path: Path, section: str) -> plugins.AgentSettings:
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent("""
        [enterprise]
        id = "e-330602-1"
        name = "样例"
        region = "330602"
        industry = "17"
        [sink]
        type = "embedded"
        path = "store.db"
        """) + textwrap.dedent(section), encoding="utf-8")
    return plugins.load_config(path)


@pytest.mark.parametrize(("section", "setting", "words"), [
    ('[[dlt645]]\nname = "b"\nport = "/dev/ttyUSB0"\n[[dlt645.meter]]\naddress = "12345"\nmeter = "m"\n',
     "dlt645[0].meter[0].address", "is not 12 digits: write the meter's communication address"),
    ('[[dlt645]]\nname = "b"\nport = "/dev/ttyUSB0"\n[[dlt645.meter]]\naddress = "000000000001"\nmeter = "m"\n'
     'energy = "02010100"\n', "dlt645[0].meter[0].energy", "is not an energy register (kWh) fmc reads; use one of"),
    ('[[dlt645]]\nname = "b"\nport = "/dev/ttyUSB0"\n[[dlt645.meter]]\naddress = "000000000001"\nmeter = "m"\n'
     'energy = "0001000"\n', "dlt645[0].meter[0].energy", "is not 8 hex digits"),
    ('[[dlt645]]\nname = "b"\nport = "/dev/ttyUSB0"\n[[dlt645.meter]]\naddress = "000000000001"\n'
     'equipment = "pump"\nsignals = { kw = "04000401" }\n', "dlt645[0].meter[0].signals",
     "signal 'kw': data identifier '04000401' is not a voltage, current or power fmc reads"),
    ('[[dlt645]]\nname = "b"\nport = "/dev/ttyUSB0"\n[[dlt645.meter]]\naddress = "000000000001"\n'
     'signals = { kw = "02030000" }\n', "dlt645[0].meter[0]", "signals need equipment ="),
    ('[[dlt645]]\nname = "b"\nport = "/dev/ttyUSB0"\n[[dlt645.meter]]\naddress = "000000000001"\n',
     "dlt645[0].meter[0]", "feeds nothing: set meter ="),
    ('[[dlt645]]\nname = "b"\ntransport = "tcp"\nport = 4196\n[[dlt645.meter]]\naddress = "000000000001"\n'
     'meter = "m"\n', "dlt645[0]", "needs host ="),
    ('[[dlt645]]\nname = "b"\nport = 4196\n[[dlt645.meter]]\naddress = "000000000001"\nmeter = "m"\n',
     "dlt645[0]", "takes port = \"/dev/ttyUSB0\""),
    ('[[dlt645]]\nname = "b"\nport = "/dev/ttyUSB0"\nbaudrate = 2000\n[[dlt645.meter]]\naddress = "000000000001"\n'
     'meter = "m"\n', "dlt645[0].baudrate", "is not a baud rate meters use"),
    ('[[dlt645]]\nname = "b"\nport = "/dev/ttyUSB0"\n[[dlt645.meter]]\naddress = "000000000001"\nmeter = "m"\n'
     '[[dlt645.meter]]\naddress = "000000000001"\nmeter = "n"\n', "dlt645[0]", "both have address 000000000001"),
    ('[[dlt645]]\nname = "a"\nport = "/dev/ttyUSB0"\n[[dlt645.meter]]\naddress = "000000000001"\nmeter = "m"\n'
     '[[dlt645]]\nname = "b"\nport = "/dev/ttyUSB0"\n[[dlt645.meter]]\naddress = "000000000002"\nmeter = "n"\n',
     "(top level)", "use the same bus ['/dev/ttyUSB0']: put all its meters in one section"),
])
def test_bad_configuration_names_the_file_the_setting_and_the_fix(tmp_path: Path, section: str, setting: str,
                                                                 words: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, section)
    text = err.value.render()
    assert str(tmp_path / "agent.toml") in text
    assert f"setting `{setting}`" in text, text
    assert words in text, text


def test_a_good_section_says_what_it_feeds_and_reads(tmp_path: Path) -> None:
    cfg = _load(tmp_path, """
        [[dlt645]]
        name = "b"
        port = "/dev/ttyUSB0"
        [[dlt645.meter]]
        address = "000012345678"
        meter = "main"
        [[dlt645.meter]]
        address = " 0000 1234 5679 "
        meter = "press"
        energy = "00 00 00 00"
        equipment = "press-01"
        signals = { voltage_a = "02010100", power_kw = "0x02030000" }
        """)
    (bus,) = cfg.dlt645
    assert (bus.baudrate, bus.data_bits, bus.parity, bus.stop_bits, bus.framing) == (2400, 8, "even", 1, "2400 8E1")
    assert bus.meter[1].address == "000012345679" and bus.meter[1].energy == "00000000"
    assert bus.feeds().meters == {"main", "press"} and bus.feeds().equipment == {"press-01"}
    assert [(i.text, s) for i, s in bus.meter[1].reads()] == [("00000000", None), ("02010100", "voltage_a"),
                                                               ("02030000", "power_kw")]


# --- on a serial line --------------------------------------------------------------------------------------


def test_several_meters_on_one_serial_bus_with_the_default_settings(tmp_path: Path, rig_factory) -> None:
    """2400 8E1, the defaults: three meters polled in turn; kWh as meter readings, V, A and kW as signals."""
    bus = MeterBus([
        SimulatedMeter("000000000001", {FORWARD: 1234.56}),
        SimulatedMeter("000000000002", {FORWARD: 10.0, VOLTAGE_A: 230.1, CURRENT_A: -1.25, POWER: 0.2875}),
        SimulatedMeter("201912345678", {COMBINED: 99.99}, follows={COMBINED}),  # C = B1: the first frame has it
    ])
    with SerialPair(tmp_path) as pair, SerialMeterServer(bus, pair.meters):
        # timeout_s: a loaded test machine may be slow to answer; the serial settings are the defaults
        cfg = source_settings(port=pair.agent, poll_interval_s=0.2, timeout_s=3.0, meter=[
            {"address": "000000000001", "meter": "m1"},
            {"address": "000000000002", "meter": "m2", "equipment": "pump-1",
             "signals": {"voltage_a": "02010100", "current_a": "02020100", "power_kw": "02030000"}},
            {"address": "201912345678", "meter": "m3", "energy": "00000000"},
        ])
        assert cfg.framing == "2400 8E1"
        rig = rig_factory(cfg)
        wait_until(lambda: len({p.tags["meter"] for p in rig.points("meter_reading")}) == 3, what="three meters")
        wait_until(lambda: len(rig.points("signal")) >= 3, what="the signals")
        assert rig.source.connected
    readings = {p.tags["meter"]: p for p in rig.points("meter_reading")}
    assert {m: p.fields["value"] for m, p in readings.items()} == {"m1": 1234.56, "m2": 10.0, "m3": 99.99}
    assert readings["m1"].tags == {"enterprise": "e-330602-1", "meter": "m1", "carrier": "electricity"}
    assert all(p.fields["quality"] == 0 for p in readings.values())
    signals = {p.tags["signal"]: p.fields.get("value") for p in rig.points("signal")}
    assert signals == {"voltage_a": 230.1, "current_a": -1.25, "power_kw": 0.2875}
    assert rig.errors("timeout") == rig.errors("checksum") == 0
    assert rig.metrics.value("fmc_messages_received_total", {"source": "bus1"}) >= 6


# 000000001207: the stray 68 of the junk is seven bytes before the frame's, a header whose "length" is
# the address's 12: the scan waited for 18 bytes that never came, and the meter was never read
@pytest.mark.parametrize("address", ["000000000007", "000000001207"])
def test_garbage_on_the_line_and_a_corrupted_checksum_are_counted_and_the_value_still_read(
        tmp_path: Path, rig_factory, address: str) -> None:
    meter = SimulatedMeter(address, {FORWARD: 42.0})
    bus = MeterBus([meter], preamble=4)
    bus.noise = bytes.fromhex("00 FF 68 11 3C")  # a converter's junk, a stray 68
    meter.corrupt_next = 1
    with SerialPair(tmp_path) as pair, SerialMeterServer(bus, pair.meters, baudrate=9600):
        rig = rig_factory(source_settings(port=pair.agent, baudrate=9600, poll_interval_s=0.1, timeout_s=0.3,
                                          meter=[{"address": address, "meter": "m7"}]))
        wait_until(lambda: len(rig.points("meter_reading")) >= 2, what="two readings")
    assert all(p.fields["value"] == 42.0 for p in rig.points("meter_reading"))
    assert rig.errors("checksum") == 1  # the retry of the corrupted reply got the value
    assert rig.errors("noise") >= 2  # once per reply with junk before it
    assert rig.errors("timeout") == 0


# --- over TCP: faults ------------------------------------------------------------------------------------------


SLOW, NEXT = "000000000011", "000000000022"
LATE_TIMEOUT_S = 0.3


class SlowBus(MeterBus):
    """Meter SLOW answers 1.3 × the master's timeout after the request (the line is busy meanwhile, as
    one RS-485 line is): its reply arrives while the master waits for the next meter's."""

    def answer(self, request: Any) -> bytes | None:
        if request.address == SLOW and not request.is_reply:
            time.sleep(1.3 * LATE_TIMEOUT_S)
        return super().answer(request)


def test_a_late_reply_of_another_meter_is_passed_over_and_the_answer_behind_it_taken() -> None:
    from fmc.sources.dlt645 import frame as f
    from fmc.sources.dlt645.client import Client, TcpTransport

    with TcpMeterServer(SlowBus([SimulatedMeter(SLOW, {FORWARD: 111.0}), SimulatedMeter(NEXT, {FORWARD: 222.0})])) \
            as server:
        transport = TcpTransport(source_settings(transport="tcp", host="127.0.0.1", port=server.port,
                                                 meter=[{"address": SLOW, "meter": "a"}]))
        transport.open()
        try:
            client = Client(transport, 4)
            first = client.read(SLOW, f.IDENTIFIERS[FORWARD], LATE_TIMEOUT_S, 0)
            # SLOW's reply comes 0.09 s into this read, NEXT's right behind it: both in one read of the line,
            # and the wrong-address frame ended the attempt, NEXT's answer thrown away with it
            second = client.read(NEXT, f.IDENTIFIERS[FORWARD], LATE_TIMEOUT_S, 0)
        finally:
            transport.close()
    assert first.reason == "timeout"
    assert (second.value, second.failures) == (222.0, [])


def test_a_meter_polled_after_a_slow_one_comes_back_when_it_answers(rig_factory) -> None:
    slow = SimulatedMeter(SLOW, {FORWARD: 111.0})
    following = SimulatedMeter(NEXT, {FORWARD: 222.0}, answering=False)  # silent at first
    with TcpMeterServer(SlowBus([slow, following])) as server:
        rig = rig_factory(source_settings(transport="tcp", host="127.0.0.1", port=server.port, poll_interval_s=2.0,
                                          timeout_s=LATE_TIMEOUT_S, retries=2, meter=[
                                              {"address": SLOW, "meter": "a", "retries": 0},
                                              {"address": NEXT, "meter": "b"},
                                          ]))
        wait_until(lambda: rig.source.meter_answering(NEXT) is False, what="meter b offline")
        following.answering = True  # back; asked once per round while offline, right after SLOW's late reply
        wait_until(lambda: any(p.tags["meter"] == "b" for p in rig.points("meter_reading")), timeout=8,
                   what="a reading of meter b")
    assert all(p.fields["value"] == 222.0 for p in rig.points("meter_reading") if p.tags["meter"] == "b")


def test_error_replies_wrong_addresses_and_values_that_are_not_bcd_are_counted_and_rejected(rig_factory) -> None:
    good = SimulatedMeter("000000000001", {FORWARD: 5.0, VOLTAGE_A: 231.0})
    good.errors[POWER] = 0x02  # "no data requested": this meter has no power register
    wrong = SimulatedMeter("000000000002", {FORWARD: 6.0}, reply_address="000000000009")
    garbled = SimulatedMeter("000000000003", {FORWARD: 7.0}, not_bcd={FORWARD})
    with TcpMeterServer(MeterBus([good, wrong, garbled])) as server:
        rig = rig_factory(source_settings(transport="tcp", host="127.0.0.1", port=server.port, poll_interval_s=0.1,
                                          timeout_s=0.2, retries=1, meter=[
            {"address": "000000000001", "meter": "m1", "equipment": "fan",
             "signals": {"voltage_a": "02010100", "power_kw": "02030000"}},
            {"address": "000000000002", "meter": "m2"},
            {"address": "000000000003", "meter": "m3"},
        ]))
        wait_until(lambda: rig.errors("error_flag") >= 2 and rig.errors("bcd_invalid") >= 2
                   and rig.errors("wrong_address") >= 2, what="the faults")
        wait_until(lambda: rig.spool.stats().rejected_total >= 2, what="the rejections")
        # while the bus is up (once the server closes, every meter on it is out of reach)
        answering = [rig.source.meter_answering(f"00000000000{n}") for n in (1, 2, 3)]
    readings = rig.points("meter_reading")
    assert {p.tags["meter"] for p in readings} == {"m1"}  # m2's answers come from 000000000009; m3's are not BCD
    assert {p.tags["signal"] for p in rig.points("signal") if p.fields.get("quality") == 0} == {"voltage_a"}
    (rejection, *_) = rig.spool.recent_rejections(10)
    assert rejection.reason == "payload_not_number" and "not two decimal digits" in rejection.detail
    # m3 answers, with garbage; another meter answers for m2
    assert answering == [True, False, True]


def test_a_meter_that_vanishes_goes_offline_at_once_and_comes_back(rig_factory) -> None:
    meter = SimulatedMeter("000000000005", {FORWARD: 100.0, POWER: 1.5})
    other = SimulatedMeter("000000000006", {FORWARD: 200.0})
    with TcpMeterServer(MeterBus([meter, other])) as server:
        rig = rig_factory(source_settings(transport="tcp", host="127.0.0.1", port=server.port, poll_interval_s=0.1,
                                          timeout_s=0.15, retries=1, meter=[
            {"address": "000000000005", "meter": "m5", "equipment": "kiln", "signals": {"kw": "02030000"}},
            {"address": "000000000006", "meter": "m6"},
        ]))
        wait_until(lambda: rig.source.meter_answering("000000000005") is True, what="the first poll")
        meter.answering = False
        wait_until(lambda: any(p.fields.get("quality") == BAD_NO_COMMUNICATION for p in rig.points("signal")),
                   what="the contact-lost sample")
        lost_at = max(p.ts_ns for p in rig.points("signal") if p.fields.get("quality") == BAD_NO_COMMUNICATION)
        m6_before = len([p for p in rig.points("meter_reading") if p.tags["meter"] == "m6"])
        wait_until(lambda: len([p for p in rig.points("meter_reading") if p.tags["meter"] == "m6"]) >= m6_before + 3,
                   what="the other meter polled on")  # a silent meter does not stall the bus
        silent = [p for p in rig.points("meter_reading") if p.tags["meter"] == "m5" and p.ts_ns > lost_at]
        assert silent == []  # nothing for its kWh while it is silent: a gap, not a zero
        meter.registers[FORWARD] = 101.5
        meter.answering = True
        wait_until(lambda: rig.source.meter_answering("000000000005") is True, what="the meter back")
        wait_until(lambda: any(p.tags["meter"] == "m5" and p.fields["value"] == 101.5
                               for p in rig.points("meter_reading")), what="its reading")
        # the converter reboots: the connection is counted as failed and opened again
        server.drop_clients()
        wait_until(lambda: rig.errors("io_error") >= 1, what="the dropped connection")
        n = len(rig.points("meter_reading"))
        wait_until(lambda: len(rig.points("meter_reading")) > n + 2, what="polling after the reconnect")
    bad = [p for p in rig.points("signal") if p.fields.get("quality") == BAD_NO_COMMUNICATION]
    assert bad and all(set(p.fields) == {"quality"} for p in bad)  # no value: contact lost
    assert rig.errors("timeout") >= 2  # the first silent poll with its retry; then one try per interval


# --- kWh through the plant model to consumption_daily and tce -------------------------------------------------


def test_kwh_across_a_rollover_reach_consumption_daily_and_tce_in_the_embedded_store(tmp_path: Path,
                                                                                      rig_factory) -> None:
    """A register near 999999.99 kWh wraps to 0 while read over the serial line; with rollover = 1000000
    in [[meter]] the accumulator counts the wrap, and the day's consumption and tce reach the store."""
    meter = SimulatedMeter("000000000042", {FORWARD: 999_996.00})
    sections = PlantSections.model_validate({
        "plant": {"interval_minutes": 15},
        "meter": [{"id": "main", "carrier": "electricity", "kind": "counter", "unit": "kWh",
                   "rollover": 1_000_000}],
    })
    now = time.time_ns()
    clock_ns = [now]
    plant = PlantModel(Site("e-330602-1", "330602", "17", "Asia/Shanghai"), sections, [], start_ns=now)
    steps = [2.5, 2.5, 2.5, 2.5, 2.5, 2.5]  # 15 kWh in all; the fourth step wraps past 999999.99
    with SerialPair(tmp_path) as pair, SerialMeterServer(MeterBus([meter]), pair.meters, baudrate=19200):
        rig = rig_factory(source_settings(port=pair.agent, baudrate=19200, poll_interval_s=0.05,
                                          meter=[{"address": "000000000042", "meter": "main"}]),
                          plant=plant, clock=lambda: clock_ns[0])
        for step in [0.0, *steps]:
            meter.add_energy(step)
            want = meter.registers[FORWARD]
            wait_until(lambda w=want: any(p.fields["value"] == w for p in rig.points("meter_reading")),
                       what=f"the reading {want}")
        rig.source.stop()
    values = [p.fields["value"] for p in rig.points("meter_reading")]
    assert max(values) == 999_998.5 and min(values) == 1.0  # the register did wrap on the line
    # past the next local midnight + max_gap_s + one interval: the day's consumption is final
    local = datetime.fromtimestamp(now / S).astimezone(plant.site.tz)
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    clock_ns[0] = int(midnight.timestamp()) * S + (1800 + 16 * 60) * S
    wait_until(lambda: any(p.measurement == "consumption_daily" for p in rig.points()), what="consumption_daily")
    rig.ingest.stop()
    with EmbeddedStore(tmp_path / "store.db") as store:
        outcome = store.write_lines(rig.spool.read_batch(100_000).lines)
        assert not outcome.refused
        (daily,) = store.points("consumption_daily", {"carrier": "electricity"})
        intervals = store.points("meter_interval", {"meter": "main"})
    assert round(daily.fields["amount"], 6) == 15.0
    assert round(daily.fields["tce"], 9) == round(15.0 * 0.1229 / 1000, 9)
    assert round(sum(i.fields["amount"] for i in intervals), 6) == 15.0
    assert plant.event_counts()[("meter", "rollover")] == 1


# --- fmc check, fmc dlt645 scan and read ----------------------------------------------------------------


def _bus_for_check() -> MeterBus:
    return MeterBus([
        SimulatedMeter("000000000001", {FORWARD: 11.0, VOLTAGE_A: 229.9}),
        SimulatedMeter("000000000002", {FORWARD: 22.0}, errors={FORWARD: 0x02}),
        SimulatedMeter("000000000003", {FORWARD: 33.0}, corrupt_next=100),
    ])


def test_check_reads_each_meter_once_and_says_what_happened_with_the_fix() -> None:
    with TcpMeterServer(_bus_for_check()) as server:
        cfg = source_settings(transport="tcp", host="127.0.0.1", port=server.port, timeout_s=0.2, meter=[
            {"address": "000000000001", "meter": "m1", "equipment": "pump", "signals": {"v": "02010100"}},
            {"address": "000000000002", "meter": "m2"},
            {"address": "000000000003", "meter": "m3"},
            {"address": "000000000004", "meter": "m4"},
        ])
        result = check_bus(cfg, timeout=5.0)
    head, *lines = result.detail.splitlines()
    assert not result.ok and result.name == "dlt645:bus1"
    assert head == f"1 of 4 meter(s) answered on 127.0.0.1:{server.port} (tcp converter)"
    assert lines[0].strip() == "000000000001 (meter m1, equipment pump): answered: energy 11 kWh, v 229.9 V"
    assert lines[1].strip().startswith("000000000002 (meter m2): error flag: error reply to 00010000 (forward "
                                       "active energy, total): no data requested")
    assert 'fix: read another data identifier, e.g. energy = "00000000"' in lines[1]
    assert lines[2].strip().startswith("000000000003 (meter m3): checksum error reading 00010000")
    assert "fix: check the wiring and the bus termination" in lines[2]
    assert lines[3].strip().startswith("000000000004 (meter m4): timeout reading 00010000")
    assert "no answer within 0.2s; fix: check the address" in lines[3]


def test_check_of_a_port_that_does_not_exist_says_so() -> None:
    result = check_bus(source_settings(port="/nonexistent/ttyUSB9", meter=[{"address": "000000000001",
                                                                              "meter": "m"}]), timeout=1.0)
    assert not result.ok and "cannot open /nonexistent/ttyUSB9" in result.detail
    assert "dialout" in result.detail


def test_fmc_check_prints_the_bus_and_a_line_per_meter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with TcpMeterServer(_bus_for_check()) as server:
        path = tmp_path / "agent.toml"
        path.write_text(textwrap.dedent(f"""
            [enterprise]
            id = "e-330602-1"
            name = "样例"
            region = "330602"
            industry = "17"
            [sink]
            type = "embedded"
            path = "store.db"
            [[meter]]
            id = "m1"
            carrier = "electricity"
            rollover = 1000000
            [[dlt645]]
            name = "bus1"
            transport = "tcp"
            host = "127.0.0.1"
            port = {server.port}
            timeout_s = 0.2
            [[dlt645.meter]]
            address = "000000000001"
            meter = "m1"
            [[dlt645.meter]]
            address = "000000000002"
            meter = "m2"
            """), encoding="utf-8")
        code = cli.main(["check", "-c", str(path), "--timeout", "3"])
    out = capsys.readouterr().out
    assert code == 1, out
    head = rf"^  dlt645:bus1 +FAIL  1 of 2 meter\(s\) answered on 127\.0\.0\.1:{server.port} \(tcp converter\)$"
    assert re.search(head, out, re.M), out
    assert "\n      000000000001 (meter m1): answered: energy 11 kWh\n" in out
    assert "      000000000002 (meter m2): error flag" in out


def test_scan_finds_the_one_meter_on_a_bus_and_tries_given_addresses_when_there_are_several(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = MeterBus([SimulatedMeter("201912345678", {FORWARD: 1.0})])
    with TcpMeterServer(one) as server:
        assert cli.main(["dlt645", "scan", "--tcp", f"127.0.0.1:{server.port}", "--timeout", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "found 201912345678 (forward active energy 1 kWh)" in out
    assert '[[dlt645.meter]]\naddress = "201912345678"' in out
    two = MeterBus([SimulatedMeter("000000000001", {FORWARD: 1.0}), SimulatedMeter("000000000002", {COMBINED: 2.0})])
    with TcpMeterServer(two) as server:
        code = cli.main(["dlt645", "scan", "--tcp", f"127.0.0.1:{server.port}", "--timeout", "0.3"])
        out = capsys.readouterr().out
        assert code == 1
        assert "broadcast read address: a reply with a wrong checksum" in out
        assert "several meters answer a broadcast at once" in out
        code = cli.main(["dlt645", "scan", "--tcp", f"127.0.0.1:{server.port}", "--timeout", "0.3",
                         "--address", "000000000001", "--address", "000000000002", "--address", "000000000003"])
        out = capsys.readouterr().out
        # -c: the bus and the addresses of an agent file's [[dlt645]] section
        path = tmp_path / "agent.toml"
        path.write_text(f'{MINIMAL}\n[[dlt645]]\nname = "b"\ntransport = "tcp"\nhost = "127.0.0.1"\n'
                        f'port = {server.port}\n[[dlt645.meter]]\naddress = "000000000002"\nmeter = "m2"\n',
                        encoding="utf-8")
        assert cli.main(["dlt645", "scan", "-c", str(path), "--timeout", "0.3"]) == 0
        from_config = capsys.readouterr().out
    assert "000000000002: answered" in from_config and "1 of 1 answered" in from_config
    assert code == 0, out
    assert "000000000001: answered (forward active energy 1 kWh)" in out
    assert "000000000002: answered (forward active energy: error flag" in out  # it has combined only: still there
    assert "000000000003: no answer" in out


def test_read_prints_one_value_and_refuses_a_bad_address_or_identifier(capsys: pytest.CaptureFixture[str]) -> None:
    bus = MeterBus([SimulatedMeter("000000000001", {FORWARD: 1234.5, CURRENT_A: -3.5})])
    with TcpMeterServer(bus) as server:
        tcp = ["--tcp", f"127.0.0.1:{server.port}", "--timeout", "0.3"]
        assert cli.main(["dlt645", "read", *tcp, "000000000001", "02020100"]) == 0
        assert "000000000001 02020100 (current, phase A): -3.5 A" in capsys.readouterr().out
        assert cli.main(["dlt645", "read", *tcp, "000000000001", "02030000"]) == 1
        assert "error flag: error reply to 02030000" in capsys.readouterr().out
        assert cli.main(["dlt645", "read", *tcp, "000000000009"]) == 1
        assert "timeout" in capsys.readouterr().out
        assert cli.main(["dlt645", "read", *tcp, "12345", "00010000"]) == 2
        assert "is not 12 digits" in capsys.readouterr().err
        assert cli.main(["dlt645", "read", *tcp, "000000000001", "04000401"]) == 2
        assert "use one of" in capsys.readouterr().err
    assert cli.main(["dlt645", "read", "--port", "/nonexistent/ttyUSB9", "000000000001"]) == 1
    assert "cannot open /nonexistent/ttyUSB9" in capsys.readouterr().out


def test_the_source_thread_stops_within_a_request(rig_factory) -> None:
    with TcpMeterServer(MeterBus([])) as server:  # nobody answers: every request runs to its timeout
        rig = rig_factory(source_settings(transport="tcp", host="127.0.0.1", port=server.port, poll_interval_s=0.05,
                                          timeout_s=0.3, meter=[{"address": "000000000001", "meter": "m"}]))
        wait_until(lambda: rig.errors("timeout") >= 1, what="a timeout")
        began = time.monotonic()
        rig.source.stop(timeout=5)
        assert time.monotonic() - began < 1.5
        assert not rig.source.connected
        assert not [t for t in threading.enumerate() if t.name == "fmc-dlt645-bus1"]


# --- the agent as a process ---------------------------------------------------------------------------------


def test_fmc_run_counts_errors_on_metrics_and_takes_a_silent_meters_equipment_offline_at_once(tmp_path: Path) -> None:
    """`fmc run` with a [[dlt645]] source over TCP into the embedded store: readings and signals stored,
    failed requests on /metrics by reason, and the equipment of a meter that goes silent offline at once
    (not after offline_after_s, which is an hour here)."""
    from tests.agent_process import AgentProcess
    from tests.ports import free_port

    kiln = SimulatedMeter("000000000005", {FORWARD: 500.0, POWER: 12.5}, errors={VOLTAGE_A: 0x02})
    with TcpMeterServer(MeterBus([kiln])) as server:
        metrics_port = free_port()
        config = tmp_path / "agent.toml"
        config.write_text(textwrap.dedent(f"""
            [enterprise]
            id = "e-330602-1"
            name = "样例"
            region = "330602"
            industry = "17"
            [sink]
            type = "embedded"
            path = "store.db"
            [spool]
            path = "spool.db"
            [metrics]
            listen = "127.0.0.1:{metrics_port}"
            [plant]
            offline_after_s = 3600
            [[equipment]]
            id = "kiln-1"
            nc = false
            kind = "kiln"
            connected = true
            [[meter]]
            id = "kiln-kwh"
            carrier = "electricity"
            rollover = 1000000
            [[dlt645]]
            name = "bus1"
            transport = "tcp"
            host = "127.0.0.1"
            port = {server.port}
            poll_interval_s = 0.2
            timeout_s = 0.2
            retries = 1
              [[dlt645.meter]]
              address = "000000000005"
              meter = "kiln-kwh"
              equipment = "kiln-1"
              signals = {{ power_kw = "02030000", voltage_a = "02010100" }}
            """), encoding="utf-8")
        agent = AgentProcess(config, metrics_port).start()
        try:
            agent.wait_metric("fmc_source_connected", 1, source="bus1", timeout=20)
            agent.wait_metric("fmc_source_errors_total", 2, source="bus1", reason="error_flag", timeout=20)
            agent.wait_metric("fmc_messages_received_total", 6, source="bus1", timeout=20)
            kiln.answering = False
            agent.wait_metric("fmc_source_errors_total", 2, source="bus1", reason="timeout", timeout=20)
            deadline = time.monotonic() + 20
            while True:
                with EmbeddedStore(tmp_path / "store.db", readonly=True) as store:
                    states = [p.fields["state"] for p in store.points("equipment_state", {"equipment": "kiln-1"})]
                    readings = store.points("meter_reading", {"meter": "kiln-kwh"})
                    power = store.points("signal", {"equipment": "kiln-1", "signal": "power_kw"})
                if states[-1:] == ["offline"] and "idle" in states:
                    break
                assert time.monotonic() < deadline, f"states {states}\n{agent.log()}"
                time.sleep(0.1)
            assert agent.terminate() == 0
        finally:
            agent.stop_quietly()
    assert readings and all(p.fields["value"] == 500.0 for p in readings)
    assert power[0].fields["value"] == 12.5 and power[-1].fields == {"quality": BAD_NO_COMMUNICATION}
    assert "does not answer" in agent.log() and "no data requested" in agent.log()
