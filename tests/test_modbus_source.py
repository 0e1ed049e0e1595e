"""fmc.sources.modbus: the codec and the request planner (exhaustively, with hypothesis and against
pymodbus's own conversion), the settings, and the source against real pymodbus servers — Modbus TCP,
RTU on a socat serial pair, RTU over TCP — with devices that vanish, refuse, answer slowly, answer
for another unit id or with a broken CRC; `fmc check`, `fmc modbus read`, and a water counter through
the real ingest and plant model to `meter_interval` and `consumption_daily` in the embedded store."""

from __future__ import annotations

import itertools
import logging
import math
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client import ModbusTcpClient

from fmc.agent.ingest import Ingest
from fmc.agent.metrics import AgentMetrics
from fmc.agent.plugin import MapResult
from fmc.agent.spool import Spool
from fmc.cli import plugins
from fmc.cli.main import main
from fmc.core.config import ConfigError, EnterpriseConfig
from fmc.core.points import Point
from fmc.core.quality import BAD_NO_COMMUNICATION, contact_lost
from fmc.plant.model import PlantModel
from fmc.plant.rollups import Site
from fmc.sources.modbus.check import check_modbus
from fmc.sources.modbus.config import ModbusSource as ModbusSettings
from fmc.sources.modbus.decode import DATA_TYPES, decode_words, encode_value, register_count
from fmc.sources.modbus.link import answer_fits
from fmc.sources.modbus.plan import BIT_FUNCTIONS, MAX_BITS, MAX_REGISTERS, Block, Span, plan_blocks
from fmc.sources.modbus.points import ValuePlan, block_points, offline_points
from fmc.sources.modbus.source import ModbusSource
from fmc.stores.embedded.store import EmbeddedStore
from tests.servers.modbus import ModbusTestServer, serial_pair

ROOT = Path(__file__).resolve().parent.parent
ENTERPRISE = EnterpriseConfig(id="e-330602-1", name="样例", region="330602", industry="17")
REGISTER_TYPES = [t for t in DATA_TYPES if t != "bool"]
ORDERS = [(b, w) for b in ("big", "little") for w in ("big", "little")]
FAST = {"poll_interval_s": 0.05, "timeout_s": 0.2, "retries": 1}
WAIT_S = 10.0


# --- the codec ------------------------------------------------------------------------------------------

def _value_of(data_type: str) -> st.SearchStrategy[int | float]:
    if data_type in ("float32", "float64"):
        width = 32 if data_type == "float32" else 64
        return st.floats(width=width, allow_nan=False)
    bits = 16 * register_count(data_type)
    if data_type.startswith("u"):
        return st.integers(0, 2**bits - 1)
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@st.composite
def typed_words(draw: st.DrawFn) -> tuple[str, list[int]]:
    data_type = draw(st.sampled_from(REGISTER_TYPES))
    return data_type, draw(st.lists(st.integers(0, 0xFFFF), min_size=register_count(data_type),
                                    max_size=register_count(data_type)))


def _swap(words: list[int]) -> list[int]:
    return [(w & 0xFF) << 8 | w >> 8 for w in words]


@settings(max_examples=200, deadline=None)
@given(typed_words(), st.sampled_from(ORDERS))
def test_decoding_equals_pymodbus_for_every_type_and_order(typed: tuple[str, list[int]], order: tuple[str, str]):
    data_type, words = typed
    byte_order, word_order = order
    ours = decode_words(words, data_type, byte_order, word_order)
    # pymodbus knows the word order only; a byte-swapped register is swapped back before it converts
    given_words = _swap(words) if byte_order == "little" else words
    theirs = ModbusTcpClient.convert_from_registers(given_words, getattr(ModbusTcpClient.DATATYPE, data_type.upper()),
                                                    word_order=word_order)  # type: ignore[arg-type]
    if isinstance(ours, float) and math.isnan(ours):
        assert isinstance(theirs, float) and math.isnan(theirs)
    else:
        assert ours == theirs and type(ours) is type(theirs)


@settings(max_examples=150, deadline=None)
@given(st.data(), st.sampled_from(REGISTER_TYPES), st.sampled_from(ORDERS))
def test_encoding_is_the_inverse_of_decoding(data: st.DataObject, data_type: str, order: tuple[str, str]):
    value = data.draw(_value_of(data_type))
    words = encode_value(value, data_type, *order)
    assert len(words) == register_count(data_type) and all(0 <= w <= 0xFFFF for w in words)
    back = decode_words(words, data_type, *order)
    if data_type == "float32":
        assert back == struct.unpack(">f", struct.pack(">f", value))[0]
    else:
        assert back == value


@pytest.mark.parametrize(("words", "byte_order", "word_order"), [
    ([0x4148, 0x0000], "big", "big"),  # ABCD
    ([0x0000, 0x4148], "big", "little"),  # CDAB, the usual energy-meter order
    ([0x4841, 0x0000], "little", "big"),  # BADC
    ([0x0000, 0x4841], "little", "little"),  # DCBA
])
def test_a_meter_manuals_float_in_each_of_the_four_orders(words: list[int], byte_order: str, word_order: str):
    assert decode_words(words, "float32", byte_order, word_order) == 12.5


def test_plain_values_of_the_integer_types():
    assert decode_words([0xFFFF], "int16") == -1 and decode_words([0xFFFF], "uint16") == 65535
    assert decode_words([0x0001, 0x0000], "uint32") == 65536
    assert decode_words([0x0000, 0x0001], "uint32", word_order="little") == 65536
    assert decode_words([0xFFFF, 0xFFFE], "int32") == -2
    assert decode_words([0, 0, 0, 1], "int64") == 1
    assert decode_words([0, 0, 0, 1], "int64", word_order="little") == 2**48
    assert decode_words([0x3FF0, 0, 0, 0], "float64") == 1.0


@pytest.mark.parametrize(("words", "data_type", "message"), [
    ([1], "float32", "spans 2"), ([1, 2, 3], "uint32", "spans 2"), ([70000], "uint16", "not 16 bits"),
    ([-1], "int16", "not 16 bits"), ([1], "bool", "not a register type"), ([1], "float16", "not a register type"),
])
def test_words_that_do_not_fit_are_refused(words: list[int], data_type: str, message: str):
    with pytest.raises(ValueError, match=message):
        decode_words(words, data_type)


# --- the planner ----------------------------------------------------------------------------------------

spans_strategy = st.lists(
    st.builds(Span, st.sampled_from(["coil", "discrete_input", "holding", "input"]), st.integers(0, 600),
              st.sampled_from([1, 1, 2, 4])),
    max_size=25,
)


def _limit(function: str, max_registers: int, max_bits: int) -> int:
    return max_bits if function in BIT_FUNCTIONS else max_registers


@settings(max_examples=150, deadline=None)
@given(spans_strategy, st.integers(0, 40), st.integers(4, MAX_REGISTERS), st.integers(4, MAX_BITS))
def test_every_value_is_read_by_exactly_one_request_within_the_limits(spans: list[Span], max_gap: int,
                                                                     max_registers: int, max_bits: int):
    blocks = plan_blocks(spans, max_gap, max_registers, max_bits)
    served = sorted(i for b in blocks for i in b.members)
    assert served == list(range(len(spans)))
    for b in blocks:
        assert 1 <= b.count <= _limit(b.function, max_registers, max_bits)
        for i in b.members:
            s = spans[i]
            assert s.function == b.function and b.address <= s.address and s.address + s.count <= b.end
        # no run of unrequested addresses inside a request is longer than max_gap
        needed = sorted({a for i in b.members for a in range(spans[i].address, spans[i].address + spans[i].count)})
        assert needed[0] == b.address and needed[-1] == b.end - 1
        assert all(later - earlier - 1 <= max_gap for earlier, later in itertools.pairwise(needed))


@settings(max_examples=150, deadline=None)
@given(spans_strategy, st.integers(0, 40), st.integers(4, MAX_REGISTERS))
def test_no_two_neighbouring_requests_could_have_been_one(spans: list[Span], max_gap: int, max_registers: int):
    blocks = plan_blocks(spans, max_gap, max_registers)
    for function in {b.function for b in blocks}:
        mine = [b for b in blocks if b.function == function]
        assert mine == sorted(mine, key=lambda b: b.address)
        for before, after in itertools.pairwise(mine):
            assert after.address > before.end - 1 or after.end > before.end  # in address order
            joined = max(before.end, after.end) - before.address
            assert after.address - before.end > max_gap or joined > _limit(function, max_registers, MAX_BITS)


def test_plain_plans():
    meter = [Span("holding", 0, 2), Span("holding", 2, 2), Span("holding", 20, 2), Span("input", 0, 1)]
    assert plan_blocks(meter, 16) == [Block("holding", 0, 22, (0, 1, 2)), Block("input", 0, 1, (3,))]
    assert plan_blocks(meter, 0) == [Block("holding", 0, 4, (0, 1)), Block("holding", 20, 2, (2,)),
                                     Block("input", 0, 1, (3,))]
    many = [Span("holding", a, 1) for a in range(130)]
    assert [(b.address, b.count) for b in plan_blocks(many, 0)] == [(0, 125), (125, 5)]
    assert [(b.address, b.count) for b in plan_blocks(many, 0, max_registers=64)] == [(0, 64), (64, 64), (128, 2)]
    bits = [Span("coil", a, 1) for a in range(0, 2500, 10)]
    assert [(b.address, b.count) for b in plan_blocks(bits, 9)] == [(0, 1991), (2000, 491)]
    overlapping = [Span("holding", 10, 4), Span("holding", 10, 2), Span("holding", 12, 1)]
    assert plan_blocks(overlapping, 0) == [Block("holding", 10, 4, (1, 0, 2))]
    with pytest.raises(ValueError):
        plan_blocks(meter, -1)
    with pytest.raises(ValueError):
        plan_blocks(meter, 0, max_registers=126)


# --- values to points -------------------------------------------------------------------------------------

def _plan(data_type: str = "float32", **kw: Any) -> ValuePlan:
    base: dict[str, Any] = {"enterprise": "e1", "unit": 1, "function": "holding", "address": 0,
                            "count": register_count(data_type), "data_type": data_type, "byte_order": "big",
                            "word_order": "big", "equipment": "pump-1", "signal": "flow"}
    return ValuePlan.make(**{**base, **kw})


def _convert(plan: ValuePlan, words: list[int] | list[bool]) -> tuple[list[Point], list[str]]:
    points: list[Point] = []
    rejections: list[Any] = []
    block_points(Block(plan.function, plan.address, len(words), (0,)), words, [plan], 7, points, rejections)
    return points, [r.reason for r in rejections]


def test_a_register_becomes_a_signal_or_a_meter_reading_scaled():
    points, rejected = _convert(_plan("uint16", scale=0.1, offset=-2.0), [1234])
    assert not rejected and points[0].measurement == "signal" and points[0].fields == {"value": 121.4, "quality": 0}
    assert points[0].tags == {"enterprise": "e1", "equipment": "pump-1", "signal": "flow"} and points[0].ts_ns == 7
    meter = _plan("uint32", meter="water-main", carrier="water_intake", equipment=None, signal=None)
    points, _ = _convert(meter, [0x0001, 0x0002])
    assert points[0].measurement == "meter_reading" and points[0].fields["value"] == 65538.0
    assert points[0].tags == {"enterprise": "e1", "meter": "water-main", "carrier": "water_intake"}
    points, _ = _convert(_plan("bool", function="coil", count=1), [False, True])
    assert points[0].fields["value"] == 0.0


@pytest.mark.parametrize(("words", "kw", "reason"), [
    (encode_value(math.nan, "float32"), {}, "value_not_finite"),
    (encode_value(math.inf, "float32"), {}, "value_not_finite"),
    (encode_value(-math.inf, "float64"), {"data_type": "float64", "count": 4}, "value_not_finite"),
    (encode_value(3e38, "float32"), {"scale": 1e300}, "value_not_finite"),
    (encode_value(65535, "uint16"), {"data_type": "uint16", "count": 1, "maximum": 60000}, "value_out_of_range"),
    (encode_value(-5, "int16"), {"data_type": "int16", "count": 1, "minimum": 0}, "value_out_of_range"),
])
def test_a_value_that_cannot_be_stored_is_a_rejection(words: list[int], kw: dict[str, Any], reason: str):
    points, rejected = _convert(_plan(**kw), words)
    assert points == [] and rejected == [reason]


def test_a_silent_device_takes_its_signals_offline_and_leaves_its_meters_alone():
    plans = [_plan(), _plan(signal="temp"), _plan(meter="m", carrier="water_intake", equipment=None, signal=None)]
    points = offline_points(plans, 99)
    assert [p.tags["signal"] for p in points] == ["flow", "temp"]
    assert all(p.fields == {"quality": BAD_NO_COMMUNICATION} and contact_lost(BAD_NO_COMMUNICATION) for p in points)


# --- settings -------------------------------------------------------------------------------------------

MINIMAL = '[enterprise]\nid = "e-1"\nname = "n"\nregion = "330602"\nindustry = "17"\n' \
          '[sink]\ntype = "embedded"\npath = "store.db"\n'


@pytest.mark.parametrize(("section", "setting", "words"), [
    ('transport = "rtu"\n[[modbus.device]]\nunit = 1\nequipment = "p"\n[[modbus.device.register]]\naddress = 0\n'
     'signal = "s"', "modbus[0]", "serial_port"),
    ('host = "10.0.0.5"\n[[modbus.device]]\nunit = 1\nequipment = "p"\n[[modbus.device.register]]\naddress = 0\n'
     'type = "bool"\nsignal = "s"', "modbus[0].device[0].register[0]", "coil"),
    ('host = "10.0.0.5"\n[[modbus.device]]\nunit = 1\n[[modbus.device.register]]\naddress = 0\nsignal = "s"',
     "modbus[0].device[0]", "needs an equipment"),
    ('host = "10.0.0.5"\n[[modbus.device]]\nunit = 1\n[[modbus.device.register]]\naddress = 0\nmeter = "w"\n'
     'carrier = "beer"', "modbus[0].device[0].register[0]", "not one of"),
    ('host = "10.0.0.5"\n[[modbus.device]]\nunit = 1\n[[modbus.device.register]]\naddress = 0\nmeter = "w"',
     "modbus[0].device[0].register[0]", "needs both meter"),
    ('host = "10.0.0.5"\n[[modbus.device]]\nunit = 1\nequipment = "p"\n[[modbus.device.register]]\naddress = 65535\n'
     'type = "float32"\nsignal = "s"', "modbus[0].device[0].register[0]", "past address 65535"),
    ('transport = "rtu_over_tcp"\nhost = "10.0.0.5"\n[[modbus.device]]\nunit = 1\nequipment = "p"\n'
     '[[modbus.device.register]]\naddress = 0\nsignal = "s"\n[[modbus.device]]\nunit = 1\nequipment = "q"\n'
     '[[modbus.device.register]]\naddress = 0\nsignal = "s"', "modbus[0]", "own unit id"),
    ('transport = "rtu"\nserial_port = "/dev/ttyUSB0"\n[[modbus.device]]\nunit = 0\nequipment = "p"\n'
     '[[modbus.device.register]]\naddress = 0\nsignal = "s"', "modbus[0]", "1 to 247"),
    ('host = "10.0.0.5"\n[[modbus.device]]\nunit = 1\nequipment = "p"\nretries = 11\n[[modbus.device.register]]\n'
     'address = 0\nsignal = "s"', "modbus[0].device[0].retries", "smaller value"),
    ('host = "10.0.0.5"\n[[modbus.device]]\nunit = 1\nequipment = "p"\n[[modbus.device.register]]\naddress = 0\n'
     'signal = "s"\nword_order = "middle"', "modbus[0].device[0].register[0].word_order", "'big' or 'little'"),
    ('host = "http://10.0.0.5"\n[[modbus.device]]\nunit = 1\nequipment = "p"\n[[modbus.device.register]]\n'
     'address = 0\nsignal = "s"', "modbus[0].host", "host name or an IP"),
])
def test_a_bad_section_names_the_file_the_setting_and_the_fix(tmp_path: Path, section: str, setting: str, words: str):
    path = tmp_path / "agent.toml"
    path.write_text(f'{MINIMAL}[[modbus]]\nname = "m"\n{section}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        plugins.load_config(path)
    text = e.value.render()
    assert str(path) in text and f"setting `{setting}`" in text and words in text, text


def test_one_serial_line_belongs_to_one_section(tmp_path: Path):
    line = ('transport = "rtu"\nserial_port = "/dev/ttyUSB0"\n[[modbus.device]]\nunit = {u}\nequipment = "p{u}"\n'
            '[[modbus.device.register]]\naddress = 0\nsignal = "s"\n')
    path = tmp_path / "agent.toml"
    path.write_text(f'{MINIMAL}[[modbus]]\nname = "a"\n{line.format(u=1)}[[modbus]]\nname = "b"\n{line.format(u=2)}',
                    encoding="utf-8")
    with pytest.raises(ConfigError, match="put all devices of the line into one section"):
        plugins.load_config(path)


def test_the_settings_do_not_load_pymodbus(tmp_path: Path):
    """`fmc check` of a gateway without Modbus, and validating a [[modbus]] section, never import pymodbus."""
    path = tmp_path / "agent.toml"
    path.write_text(f'{MINIMAL}[[modbus]]\nname = "m"\nhost = "10.0.0.5"\n[[modbus.device]]\nunit = 1\n'
                    '[[modbus.device.register]]\naddress = 0\nmeter = "w"\ncarrier = "water_intake"\n',
                    encoding="utf-8")
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from fmc.cli import main, plugins; "
         f"cfg = plugins.load_config({str(path)!r}); cfg.modbus[0].feeds(); "
         "print(sorted(m for m in ('pymodbus', 'serial') if m in sys.modules))"],
        capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def test_a_section_says_what_it_feeds():
    cfg = ModbusSettings.model_validate({
        "name": "m", "host": "127.0.0.1",
        "device": [{"unit": 1, "equipment": "pump-1", "register": [
            {"address": 0, "signal": "flow"}, {"address": 1, "signal": "speed", "equipment": "pump-2"},
            {"address": 2, "type": "uint32", "meter": "water-main", "carrier": "water_intake"}]}],
    })
    assert cfg.feeds().equipment == {"pump-1", "pump-2"} and cfg.feeds().meters == {"water-main"}
    assert cfg.feeds().any_equipment is False and cfg.feeds().any_meter is False


# --- the running source against real servers ----------------------------------------------------------------

class Recorder:
    """An IngestPort that keeps what it is given."""

    def __init__(self) -> None:
        self.results: list[MapResult] = []
        self._lock = threading.Lock()

    def submit(self, source: str, topic: str, payload: bytes, result: MapResult, ack: Callable[[], None] | None,
               *, wait: bool = True) -> bool:
        with self._lock:
            self.results.append(result)
        return True

    def points(self, **tags: str) -> list[Point]:
        with self._lock:
            return [p for r in self.results for p in r.points if all(p.tags.get(k) == v for k, v in tags.items())]

    def rejections(self) -> list[str]:
        with self._lock:
            return [j.reason for r in self.results for j in r.rejections]

    def wait(self, condition: Callable[[], object], timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "the condition did not come true in time"
            time.sleep(0.02)


def _section(devices: list[dict[str, Any]], **kw: Any) -> ModbusSettings:
    return ModbusSettings.model_validate({"name": "meters", "reconnect_min_s": 0.05, "reconnect_max_s": 0.2,
                                          **kw, "device": devices})


@pytest.fixture
def run_source() -> Iterator[Callable[..., tuple[ModbusSource, Recorder, AgentMetrics]]]:
    started: list[ModbusSource] = []

    def start(cfg: ModbusSettings, clock: Callable[[], int] = time.time_ns) -> tuple[ModbusSource, Recorder,
                                                                                      AgentMetrics]:
        recorder, metrics = Recorder(), AgentMetrics()
        source = ModbusSource(cfg, ENTERPRISE, recorder, metrics, logging.getLogger("test.modbus"), clock=clock)
        source.start()
        started.append(source)
        return source, recorder, metrics

    yield start
    for source in started:
        source.stop()


@pytest.fixture(scope="module")
def tcp_server() -> Iterator[ModbusTestServer]:
    with ModbusTestServer(units=(1, 2, 3, 4)) as server:
        yield server


def _every_type_and_order(server: ModbusTestServer, unit: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One register of every type in every order on ``unit``, and the value each should read as."""
    registers: list[dict[str, Any]] = []
    expected: dict[str, float] = {}
    address = 0
    for data_type in REGISTER_TYPES:
        for byte_order, word_order in ORDERS:
            value: float = {"int16": -1234, "uint16": 54321, "int32": -123456789, "uint32": 3_000_000_001,
                            "float32": 12.5, "int64": -(2**40) - 7, "uint64": 2**50 + 3, "float64": -1.0e-3}[data_type]
            name = f"{data_type}-{byte_order}-{word_order}"
            server.set_value(unit, "holding", address, value, data_type, byte_order, word_order)
            registers.append({"address": address, "type": data_type, "byte_order": byte_order,
                              "word_order": word_order, "signal": name})
            expected[name] = float(value)
            address += register_count(data_type)
    server.set_bits(unit, "coil", 5, [True])
    server.set_bits(unit, "discrete_input", 7, [True, False])
    registers += [{"function": "coil", "address": 5, "signal": "coil-5"},
                  {"function": "discrete_input", "address": 8, "signal": "di-8"},
                  {"function": "input", "address": 3, "type": "int16", "scale": 0.5, "signal": "input-3"}]
    server.set_value(unit, "input", 3, -9, "int16")
    expected |= {"coil-5": 1.0, "di-8": 0.0, "input-3": -4.5}
    return registers, expected


def _latest(recorder: Recorder, equipment: str) -> dict[str, float]:
    return {p.tags["signal"]: float(p.fields["value"]) for p in recorder.points(equipment=equipment)
            if "value" in p.fields}


def test_every_type_and_order_over_modbus_tcp(tcp_server: ModbusTestServer, run_source):
    registers, expected = _every_type_and_order(tcp_server, 1)
    cfg = _section([{"unit": 1, "equipment": "press-1", **FAST, "register": registers}], host="127.0.0.1",
                   port=tcp_server.port)
    source, recorder, metrics = run_source(cfg)
    recorder.wait(lambda: _latest(recorder, "press-1").keys() == expected.keys())
    assert _latest(recorder, "press-1") == expected
    device = source.devices[0]
    assert len(device.blocks) == 4  # holding, input, coil, discrete input: one request each
    assert source.connected and metrics.value("fmc_source_connected", {"source": "meters"}) == 1
    assert recorder.rejections() == []


def test_rtu_on_a_serial_line(tmp_path: Path, run_source):
    with serial_pair(tmp_path) as (ours, theirs), \
            ModbusTestServer(units=(1, 2), mode="rtu", serial_port=theirs, baudrate=19200, parity="N") as server:
        registers, expected = _every_type_and_order(server, 2)
        server.set_value(1, "input", 0, 4711.5, "float32", word_order="little")
        cfg = _section(
            [{"unit": 2, "equipment": "loom-3", **FAST, "register": registers},
             {"unit": 1, **FAST, "register": [{"function": "input", "address": 0, "type": "float32",
                                               "word_order": "little", "meter": "water", "carrier": "water_intake"}]}],
            transport="rtu", serial_port=ours, baudrate=19200, parity="N",  # a pty refuses parity settings
        )
        _source, recorder, _ = run_source(cfg)
        recorder.wait(lambda: _latest(recorder, "loom-3").keys() == expected.keys()
                      and recorder.points(meter="water"))
        assert _latest(recorder, "loom-3") == expected
        assert recorder.points(meter="water")[-1].fields["value"] == 4711.5


def test_rtu_over_tcp_counts_crc_errors_and_wrong_unit_ids(run_source):
    with ModbusTestServer(units=(1, 2, 3), mode="rtu_over_tcp") as server:
        server.set_value(1, "holding", 0, 321, "uint16")
        server.units[2].corrupt_crc = True
        server.units[3].wrong_unit = True
        regs = [{"address": 0, "signal": "v"}]
        cfg = _section([{"unit": u, "equipment": f"m{u}", **FAST, "register": regs} for u in (1, 2, 3)],
                       transport="rtu_over_tcp", host="127.0.0.1", port=server.port)
        source, recorder, metrics = run_source(cfg)

        def errors(reason: str) -> float:
            return metrics.value("fmc_source_errors_total", {"source": "meters", "reason": reason})

        recorder.wait(lambda: errors("crc_error") >= 2 and errors("wrong_unit_id") >= 2 and recorder.points(
            equipment="m1", signal="v"))
        assert recorder.points(equipment="m1")[-1].fields["value"] == 321.0
        for unit in (2, 3):  # silent in effect: offline at once, nothing else
            [offline] = recorder.points(equipment=f"m{unit}")
            assert offline.fields == {"quality": BAD_NO_COMMUNICATION}
        assert errors("timeout") == 0
        assert [d.online for d in source.devices] == [True, False, False]


def test_a_late_answer_on_an_rtu_line_is_dropped_never_taken_for_the_next_request(run_source):
    # Two blocks of the same size on one device, which answers 50 ms after its timeout: RTU frames
    # carry no transaction id, and without holding the line the answer to the first block was taken
    # for the second's (block b's 222 stored as signal a)
    with ModbusTestServer(units=(1,), mode="rtu_over_tcp") as server:
        server.set_value(1, "holding", 0, 111, "uint16")
        server.set_value(1, "holding", 400, 222, "uint16")
        server.units[1].delay_s = 0.25
        regs = [{"address": 0, "signal": "a"}, {"address": 400, "signal": "b"}]
        cfg = _section([{"unit": 1, "equipment": "m", "poll_interval_s": 0.05, "timeout_s": 0.2, "retries": 1,
                         "register": regs}], transport="rtu_over_tcp", host="127.0.0.1", port=server.port)
        source, recorder, metrics = run_source(cfg)

        def errors(reason: str) -> float:
            return metrics.value("fmc_source_errors_total", {"source": "meters", "reason": reason})

        def values(signal: str) -> list[object]:
            return [p.fields.get("value") for p in recorder.points(equipment="m", signal=signal)]

        recorder.wait(lambda: errors("late_answer") >= 4)
        assert errors("timeout") == 0  # each of them answered, late
        assert not source.devices[0].online
        assert set(values("a")) == {None} and set(values("b")) == {None}  # offline samples only
        server.units[1].delay_s = 0.0
        recorder.wait(lambda: values("a")[-1] == 111.0 and values("b")[-1] == 222.0)
        time.sleep(0.5)
        assert set(values("a")) == {None, 111.0} and set(values("b")) == {None, 222.0}
        assert source.devices[0].online


@pytest.mark.parametrize(("function", "count", "code", "n", "fits"), [
    ("holding", 2, 3, 2, True),
    ("holding", 2, 3, 3, False),  # another request's answer, longer
    ("holding", 2, 3, 1, False),
    ("holding", 2, 4, 2, False),  # input registers' answer to a holding read
    ("input", 1, 4, 1, True),
    ("coil", 3, 1, 8, True),  # bits come in whole bytes
    ("coil", 9, 1, 16, True),
    ("coil", 9, 1, 8, False),
    ("coil", 8, 1, 16, False),
    ("discrete_input", 1, 1, 8, False),
])
def test_an_answer_fits_its_request_by_function_and_number_of_values(function: str, count: int, code: int, n: int,
                                                                      fits: bool):
    assert answer_fits(function, count, code, [0] * n) is fits


def test_a_device_that_vanishes_goes_offline_at_once_and_comes_back_by_itself(run_source):
    with ModbusTestServer(units=(1,)) as server:
        server.set_value(1, "holding", 0, 1500, "uint16")
        server.set_value(1, "holding", 10, 120.25, "float32")
        cfg = _section([{"unit": 1, "equipment": "cnc-7", **FAST, "register": [
            {"address": 0, "signal": "spindle_speed"},
            {"address": 10, "type": "float32", "meter": "cnc-7-kwh", "carrier": "electricity"}]}],
            host="127.0.0.1", port=server.port)
        source, recorder, metrics = run_source(cfg)
        recorder.wait(lambda: recorder.points(signal="spindle_speed"))
        server.stop()
        stopped = time.time_ns()
        recorder.wait(lambda: any(p.fields.get("quality") == BAD_NO_COMMUNICATION
                                  for p in recorder.points(equipment="cnc-7")))
        offline = [p for p in recorder.points(equipment="cnc-7") if p.fields.get("quality")]
        assert len(offline) == 1 and offline[0].tags["signal"] == "spindle_speed" and "value" not in offline[0].fields
        # at once: within the request's timeout and retries, not after offline_after_s
        assert offline[0].ts_ns - stopped < 2 * 10**9
        assert all(p.fields.get("quality") == 0 for p in recorder.points(meter="cnc-7-kwh"))  # no meter sample
        assert not source.connected
        assert source.problem is not None and source.problem.startswith("no device answers: unit 1 at 127.0.0.1:")
        time.sleep(0.3)  # a few probes while it is away: still one offline sample
        assert len([p for p in recorder.points(equipment="cnc-7") if p.fields.get("quality")]) == 1
        assert metrics.value("fmc_source_errors_total", {"source": "meters", "reason": "connection_failed"}) >= 1
        before = len(recorder.points(signal="spindle_speed"))
        server.set_value(1, "holding", 0, 1600, "uint16")
        server.start()
        recorder.wait(lambda: recorder.points(signal="spindle_speed")[-1].fields.get("value") == 1600.0)
        assert len(recorder.points(signal="spindle_speed")) > before and source.connected


def test_exception_answers_are_counted_by_reason_and_skip_only_their_request(tcp_server: ModbusTestServer,
                                                                              run_source):
    tcp_server.set_value(2, "holding", 0, 7, "uint16")
    for unit, code in ((3, 6), (4, 0x0B)):
        tcp_server.units[unit].exception = code
    try:
        cfg = _section(
            [{"unit": 2, "equipment": "a", **FAST, "max_gap": 0, "register": [
                {"address": 0, "signal": "ok"}, {"address": 600, "signal": "missing"},  # past the device's registers
                {"function": "input", "address": 0, "signal": "ok2"}]},
             {"unit": 3, "equipment": "b", **FAST, "register": [{"address": 0, "signal": "busy"}]},
             {"unit": 4, "equipment": "c", **FAST, "register": [{"address": 0, "signal": "behind-gateway"}]}],
            host="127.0.0.1", port=tcp_server.port)
        source, recorder, metrics = run_source(cfg)

        def errors(reason: str) -> float:
            return metrics.value("fmc_source_errors_total", {"source": "meters", "reason": reason})

        recorder.wait(lambda: errors("illegal_address") >= 2 and errors("busy") >= 4
                      and errors("gateway_target_failed") >= 2)
        assert _latest(recorder, "a") == {"ok": 7.0, "ok2": 0.0}  # the other requests of the device still read
        assert source.devices[0].online and source.devices[1].online  # it answered: busy, not gone
        assert recorder.points(equipment="b") == []
        # a gateway that cannot reach the unit behind it: the unit is gone
        assert [p.fields for p in recorder.points(equipment="c")] == [{"quality": BAD_NO_COMMUNICATION}]
        assert source.devices[2].online is False
    finally:
        for unit in (3, 4):
            tcp_server.units[unit].exception = None


def test_a_slow_tcp_device_does_not_hold_up_another(tcp_server: ModbusTestServer, run_source):
    # slow but within its timeout (a device past its timeout is offline: the tests above and below);
    # pymodbus's server stamps a late answer with the newest request's id, so a device slower than the
    # timeout would sometimes look as if it answered
    tcp_server.units[3].delay_s = 0.15
    try:
        slow = {"poll_interval_s": 0.05, "timeout_s": 0.5, "retries": 0}
        cfg = _section([{"unit": 3, "equipment": "slow", **slow, "register": [{"address": 0, "signal": "v"}]},
                        {"unit": 2, "equipment": "quick", **FAST, "register": [{"address": 0, "signal": "v"}]}],
                       host="127.0.0.1", port=tcp_server.port)
        source, recorder, _ = run_source(cfg)
        recorder.wait(lambda: recorder.points(equipment="quick") and recorder.points(equipment="slow"))
        began = time.monotonic()
        quick0, slow0 = len(recorder.points(equipment="quick")), len(recorder.points(equipment="slow"))
        time.sleep(1.0)
        elapsed = time.monotonic() - began
        quick = len(recorder.points(equipment="quick")) - quick0
        slow_polls = len(recorder.points(equipment="slow")) - slow0
        # the quick one keeps its 0.05 s rounds while the slow one takes 0.15 s for each answer
        assert quick >= 0.5 * elapsed / 0.05, (quick, slow_polls)
        assert 1 <= slow_polls <= elapsed / 0.15 + 1 and slow_polls < quick / 2, (quick, slow_polls)
        assert all(d.online for d in source.devices)
    finally:
        tcp_server.units[3].delay_s = 0.0


def test_a_silent_device_on_a_serial_line_costs_the_others_only_its_own_timeouts(tmp_path: Path, run_source):
    with serial_pair(tmp_path) as (ours, theirs), \
            ModbusTestServer(units=(1, 2), mode="rtu", serial_port=theirs, baudrate=38400, parity="N") as server:
        server.units[2].silent = True
        cfg = _section([{"unit": 2, "equipment": "gone", "poll_interval_s": 0.05, "timeout_s": 0.3, "retries": 0,
                         "register": [{"address": 0, "signal": "v"}]},
                        {"unit": 1, "equipment": "here", **FAST, "register": [{"address": 0, "signal": "v"}]}],
                       transport="rtu", serial_port=ours, baudrate=38400, parity="N", reconnect_min_s=0.3,
                       reconnect_max_s=0.3)
        _source, recorder, metrics = run_source(cfg)
        recorder.wait(lambda: recorder.points(equipment="gone") and recorder.points(equipment="here"))
        began, count = time.monotonic(), len(recorder.points(equipment="here"))
        time.sleep(1.2)
        polls = len(recorder.points(equipment="here")) - count
        # the silent unit is probed 0.3 s after its last probe and holds the line 0.6 s each time (its
        # timeout, then as long again for a late answer to pass): a third of the time or more is left to
        # unit 1, whose rounds take a few ms
        assert polls >= 0.3 * (time.monotonic() - began) / 0.05, polls
        assert metrics.value("fmc_source_errors_total", {"source": "meters", "reason": "timeout"}) >= 2


def test_bad_values_are_counted_rejections_through_the_real_ingest(tmp_path: Path, tcp_server: ModbusTestServer):
    tcp_server.set_value(1, "input", 100, math.nan, "float32")
    tcp_server.set_value(1, "input", 102, 65000, "uint16")
    tcp_server.set_value(1, "input", 103, 250, "uint16")
    cfg = _section([{"unit": 1, "equipment": "dryer", **FAST, "register": [
        {"function": "input", "address": 100, "type": "float32", "signal": "temp"},
        {"function": "input", "address": 102, "signal": "rh", "max": 1000},
        {"function": "input", "address": 103, "signal": "ok", "max": 1000}]}], host="127.0.0.1", port=tcp_server.port)
    metrics = AgentMetrics()
    with Spool(tmp_path / "spool.db") as spool:
        ingest = Ingest(spool, metrics, max_series=1000, commit_interval_ms=0)
        ingest.start()
        source = ModbusSource(cfg, ENTERPRISE, ingest, metrics, logging.getLogger("test.modbus"))
        source.start()
        try:
            deadline = time.monotonic() + WAIT_S
            while metrics.value("fmc_rejected_total", {"source": "meters", "reason": "value_out_of_range"}) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            source.stop()
            ingest.stop()
        assert metrics.value("fmc_rejected_total", {"source": "meters", "reason": "value_not_finite"}) >= 2
        assert metrics.value("fmc_points_accepted_total", {"source": "meters"}) >= 2
        # inspectable with `fmc spool show`: which register, what value
        details = {(r.source, r.reason, r.detail) for r in spool.recent_rejections(50)}
        assert ("meters", "value_not_finite", "dryer/temp (input 100, unit 1) is nan") in details
        assert ("meters", "value_out_of_range", "dryer/rh (input 102, unit 1) is 65000, outside […, 1000]") in details


# --- fmc check and fmc modbus read --------------------------------------------------------------------

async def test_check_prints_one_line_per_device_with_the_fix(tcp_server: ModbusTestServer):
    tcp_server.units[3].exception = 2
    tcp_server.units[4].delay_s = 1.0
    tcp_server.units[1].wrong_unit = True
    try:
        cfg = _section([{"unit": u, "name": n, "equipment": n, "timeout_s": 0.2, "retries": 0,
                         "register": [{"address": 0, "signal": "v"}]}
                        for u, n in ((2, "good"), (3, "refuses"), (4, "slow"), (1, "impostor"))], host="127.0.0.1",
                       port=tcp_server.port)
        result = await check_modbus(cfg, timeout=3)
    finally:
        tcp_server.units[3].exception = None
        tcp_server.units[4].delay_s = 0.0
        tcp_server.units[1].wrong_unit = False
    assert result.name == "modbus:meters" and not result.ok
    lines = result.detail.split("\n")
    assert lines[0] == "1 of 4 device(s) answered over tcp"
    assert "unit 2 (good)" in lines[1] and "answered: 1 value(s) in 1 request(s)" in lines[1]
    assert "unit 3 (refuses)" in lines[2] and "illegal address" in lines[2] and "40001 is holding 0" in lines[2]
    assert "unit 4 (slow)" in lines[3] and "timeout (1 attempt(s) of 0.2s)" in lines[3] and "unit id" in lines[3]
    assert "unit 1 (impostor)" in lines[4] and "wrong unit id" in lines[4] and "another unit id answered" in lines[4]


async def test_check_names_a_late_answer_on_an_rtu_line_within_its_time():
    # 0.25 s answers to a 0.2 s timeout, and retries that would not fit: each attempt holds the line
    # 0.4 s, so a 1 s check makes 2 attempts and says why instead of running out of time
    with ModbusTestServer(units=(1, 2), mode="rtu_over_tcp") as server:
        server.units[1].delay_s = 0.25
        cfg = _section([{"unit": u, "name": n, "equipment": n, "timeout_s": 0.2, "retries": 5,
                         "register": [{"address": 0, "signal": "v"}]} for u, n in ((1, "slow"), (2, "quick"))],
                       transport="rtu_over_tcp", host="127.0.0.1", port=server.port)
        began = time.monotonic()
        result = await check_modbus(cfg, timeout=1.0)
    assert time.monotonic() - began < 2.0
    lines = result.detail.split("\n")
    assert lines[0] == "1 of 2 device(s) answered over rtu_over_tcp", result.detail
    assert "unit 1 (slow)" in lines[1] and "late answer (2 attempt(s) of 0.2s)" in lines[1], lines[1]
    assert "raise timeout_s" in lines[1]
    assert "unit 2 (quick)" in lines[2] and "answered" in lines[2]


def test_fmc_check_runs_the_modbus_check(tmp_path: Path, tcp_server: ModbusTestServer,
                                        capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "agent.toml"
    path.write_text(f'{MINIMAL}[[modbus]]\nname = "water"\nhost = "127.0.0.1"\nport = {tcp_server.port}\n'
                    '[[modbus.device]]\nunit = 1\ntimeout_s = 0.3\n[[modbus.device.register]]\naddress = 0\n'
                    'meter = "w"\ncarrier = "water_intake"\n', encoding="utf-8")
    code = main(["check", "-c", str(path), "--timeout", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "modbus:water" in out and "1 of 1 device(s) answered over tcp" in out, out
    assert f"unit 1 at 127.0.0.1:{tcp_server.port}: answered" in out, out


def test_modbus_read_over_tcp_and_serial(tmp_path: Path, tcp_server: ModbusTestServer,
                                         capsys: pytest.CaptureFixture[str]):
    def _read(*args: str) -> subprocess.CompletedProcess[str]:
        code = main(["modbus", "read", *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    tcp_server.set_value(1, "holding", 40, 230.5, "float32", word_order="little")
    tcp = ["--host", "127.0.0.1", "--port", str(tcp_server.port), "--unit", "1", "--function", "holding"]
    done = _read(*tcp, "--address", "40", "--type", "float32", "--word-order", "little")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("raw 8000 4366 -> float32, byte_order big, word_order little: 230.5")
    done = _read(*tcp, "--address", "600", "--timeout", "0.5")
    assert done.returncode == 1 and "illegal address" in done.stderr and "Traceback" not in done.stderr
    done = _read(*tcp, "--address", "0", "--type", "double")
    assert done.returncode == 2 and "type" in done.stderr and "Traceback" not in done.stderr
    with serial_pair(tmp_path) as (ours, theirs), \
            ModbusTestServer(units=(5, 6), mode="rtu", serial_port=theirs, baudrate=9600, parity="N") as server:
        server.units[6].silent = True
        server.set_value(5, "input", 2, 123456, "uint32")
        done = _read("--serial", ours, "--baudrate", "9600", "--parity", "N", "--unit", "5", "--function", "input",
                     "--address", "2", "--type", "uint32")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().endswith(": 123456") and f"unit 5 input 2 at {ours}" in done.stdout
        done = _read("--serial", ours, "--parity", "N", "--unit", "6", "--address", "0", "--timeout", "0.3",
                     "--retries", "0")
        assert done.returncode == 1 and "timeout" in done.stderr
    done = _read("--serial", str(tmp_path / "no-such-tty"), "--address", "0", "--timeout", "0.3")
    assert done.returncode == 1 and "connection failed" in done.stderr and "serial_port" in done.stderr


# --- a water counter through the ingest and the plant model into the store ----------------------------------

CST = timezone(timedelta(hours=8))


class Clock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


def test_a_modbus_water_counter_becomes_meter_intervals_and_a_daily_total(tmp_path: Path, tcp_server: ModbusTestServer):
    path = tmp_path / "agent.toml"
    path.write_text(
        f'{MINIMAL}[[modbus]]\nname = "water"\nhost = "127.0.0.1"\nport = {tcp_server.port}\n'
        '[[modbus.device]]\nunit = 2\npoll_interval_s = 0.05\ntimeout_s = 0.5\nword_order = "little"\n'
        '[[modbus.device.register]]\nfunction = "input"\naddress = 200\ntype = "uint32"\nscale = 0.01\n'
        'meter = "water-main"\ncarrier = "water_intake"\n'
        '[[meter]]\nid = "water-main"\ncarrier = "water_intake"\nunit = "m3"\nmax_rate_per_h = 100\n',
        encoding="utf-8")
    cfg = plugins.load_config(path)
    start = int(datetime(2026, 3, 1, 23, 0, tzinfo=CST).timestamp()) * 10**9
    clock = Clock(start)
    site = Site(cfg.enterprise.id, cfg.enterprise.region, cfg.enterprise.industry, cfg.enterprise.timezone)
    plant = PlantModel(site, cfg, [], start_ns=start)
    metrics = AgentMetrics()
    counter = 1_234_500  # 12 345.00 m³
    tcp_server.set_value(2, "input", 200, counter, "uint32", word_order="little")
    with Spool(tmp_path / "spool.db") as spool:
        ingest = Ingest(spool, metrics, max_series=1000, commit_interval_ms=0, plant=plant, clock=clock)
        ingest.start()
        source = ModbusSource(cfg.modbus[0], cfg.enterprise, ingest, metrics, logging.getLogger("test.modbus"),
                              clock=clock)
        source.start()
        try:
            for step in range(1, 10):  # every 10 simulated minutes, 23:00 to 00:30: 1.25 m³ each
                polls = source.devices[0].answered if source.devices else 0
                deadline = time.monotonic() + WAIT_S
                while not source.devices or source.devices[0].answered < polls + 2:
                    assert time.monotonic() < deadline, "the source stopped polling"
                    time.sleep(0.01)
                counter += 125
                tcp_server.set_value(2, "input", 200, counter, "uint32", word_order="little")
                time.sleep(0.12)  # the new reading is polled at this time, then the clock moves on
                clock.ns = start + step * 600 * 10**9
            time.sleep(0.15)
        finally:
            source.stop()
        clock.ns = start + 6 * 3600 * 10**9  # the last day's total is final
        time.sleep(0.6)  # the writer's tick sees the new time
        ingest.stop()
        with EmbeddedStore(tmp_path / "store.db") as store:
            while (batch := spool.read_batch(5000)).ids:
                spool.complete(batch, [(r.index, r.reason, r.status) for r in store.write_lines(batch.lines).refused])
            intervals = store.points("meter_interval", {"meter": "water-main"})
            daily = store.points("consumption_daily", {"carrier": "water_intake"})
    total_m3 = (counter - 1_234_500) / 100
    counted = sum(float(p.fields["m3"]) for p in intervals)
    # the readings of the last 10 minutes may still sit in an open interval; everything before is in
    assert total_m3 - 1.25 - 1e-6 <= counted <= total_m3 + 1e-6, (counted, total_m3)
    assert counted > 8
    days = {datetime.fromtimestamp(p.ts_ns / 1e9, CST).date().isoformat(): float(p.fields["m3"]) for p in daily}
    assert days["2026-03-01"] == pytest.approx(7.5, abs=1.3)  # 23:00-24:00 at 7.5 m³/h (one reading either way)
    midnight = int(datetime(2026, 3, 2, 0, 0, tzinfo=CST).timestamp()) * 10**9
    assert list(days) == ["2026-03-01"]  # 2 March is not over yet
    assert days["2026-03-01"] == pytest.approx(sum(float(p.fields["m3"]) for p in intervals if p.ts_ns < midnight))
    assert metrics.value("fmc_rejected_total", {"source": "water", "reason": "value_not_finite"}) == 0
