"""The Sparkplug host's rules as plain values: seq, bdSeq, aliases, births and deaths, rebirth requests
(fmc.sources.sparkplug.session), the payload codec and the path templates — no broker."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmc.agent.plugin import Feeds
from fmc.core.quality import BAD, BAD_NO_COMMUNICATION
from fmc.plant.config import PlantSections
from fmc.plant.model import PlantModel
from fmc.plant.rollups import InventoryItem, Site
from fmc.sources.sparkplug import payload as spb
from fmc.sources.sparkplug.config import MetricMap, SparkplugSource
from fmc.sources.sparkplug.mapping import Mapper
from fmc.sources.sparkplug.paths import PathTemplate, validate_template
from fmc.sources.sparkplug.payload import Metric, Payload
from fmc.sources.sparkplug.session import HostSession, Kind, Resolved

G, N = "Plant1", "edge-1"


def m(name: str | None, alias: int | None = None, value: object = 1.0, datatype: int | None = spb.DOUBLE) -> Metric:
    field = "double_value" if isinstance(value, float) else "int_value" if isinstance(value, int) else None
    return Metric(name, alias, None, datatype, value, field)  # type: ignore[arg-type]


def nbirth(seq: int = 0, bd_seq: int | None = 0, *metrics: Metric) -> Payload:
    base = [Metric(spb.BDSEQ, None, None, spb.INT64, bd_seq, "long_value")] if bd_seq is not None else []
    return Payload(1, seq, (*base, *metrics))


def dbirth(seq: int, *metrics: Metric) -> Payload:
    return Payload(1, seq, metrics)


def data(seq: int, *metrics: Metric) -> Payload:
    return Payload(1, seq, metrics)


def ndeath(bd_seq: int | None) -> Payload:
    return Payload(1, 0, (Metric(spb.BDSEQ, None, None, spb.INT64, bd_seq, "long_value"),) if bd_seq is not None
                   else ())


def born(session: HostSession, bd_seq: int = 0) -> None:
    """A node with one node metric (alias 1) and one device 'loom-1' with 'Inputs/Speed' (alias 2)."""
    assert not session.handle(Kind.NBIRTH, G, N, None, nbirth(0, bd_seq, m("Power", 1)), 0.0).rebirth
    assert not session.handle(Kind.DBIRTH, G, N, "loom-1", dbirth(1, m("Inputs/Speed", 2)), 0.0).rebirth


def test_births_define_aliases_and_data_resolves_them() -> None:
    s = HostSession()
    out = s.handle(Kind.NBIRTH, G, N, None, nbirth(0, 3, m("Power", 1, 5.0)), 0.0)
    assert [r.name for r in out.metrics] == [spb.BDSEQ, "Power"]  # a birth's values are data too
    s.handle(Kind.DBIRTH, G, N, "loom-1", dbirth(1, m("Inputs/Speed", 2, 0.0)), 0.0)
    out = s.handle(Kind.DDATA, G, N, "loom-1", data(2, m(None, 2, 412.5, None)), 0.0)
    assert [(r.name, r.datatype, r.metric.value) for r in out.metrics] == [("Inputs/Speed", spb.DOUBLE, 412.5)]
    assert not out.rebirth and not out.rejections and not out.events
    out = s.handle(Kind.NDATA, G, N, None, data(3, m(None, 1, 7.0, None)), 0.0)
    assert [r.name for r in out.metrics] == ["Power"]
    assert s.online() == {(G, N): ["loom-1"]}


def test_data_before_a_birth_is_refused_and_a_rebirth_requested_once_per_retry_interval() -> None:
    s = HostSession(rebirth_retry_s=5.0)
    out = s.handle(Kind.DDATA, G, N, "loom-1", data(7, m(None, 2)), 100.0)
    assert out.rebirth and [r.reason for r in out.rejections] == ["sparkplug_no_birth"]
    assert not out.metrics
    assert s.waiting() == [(G, N)]
    assert not s.handle(Kind.NDATA, G, N, None, data(8, m(None, 1)), 101.0).rebirth  # asked 1 s ago
    assert s.handle(Kind.NDATA, G, N, None, data(9, m(None, 1)), 105.0).rebirth  # 5 s later: again
    born(s)
    assert s.waiting() == [] and (G, N) in s.online()


def test_a_seq_gap_asks_for_a_rebirth_and_keeps_the_values() -> None:
    s = HostSession()
    born(s)
    out = s.handle(Kind.DDATA, G, N, "loom-1", data(5, m(None, 2, 3.0, None)), 10.0)  # 2, 3, 4 were lost
    assert out.rebirth and "seq_gap" in out.events
    assert [r.metric.value for r in out.metrics] == [3.0]
    # the sequence goes on from the message that came
    assert not s.handle(Kind.DDATA, G, N, "loom-1", data(6, m(None, 2)), 10.1).rebirth


def test_seq_wraps_from_255_to_0() -> None:
    s = HostSession()
    s.handle(Kind.NBIRTH, G, N, None, nbirth(254, 0, m("Power", 1)), 0.0)
    assert not s.handle(Kind.NDATA, G, N, None, data(255, m(None, 1)), 0.0).events
    assert not s.handle(Kind.NDATA, G, N, None, data(0, m(None, 1)), 0.0).events
    assert s.handle(Kind.NDATA, G, N, None, data(2, m(None, 1)), 0.0).events[0] == "seq_gap"


def test_an_out_of_range_seq_is_a_gap() -> None:
    s = HostSession()
    born(s)
    assert s.handle(Kind.NDATA, G, N, None, data(256, m(None, 1)), 0.0).rebirth
    s2 = HostSession()
    assert s2.handle(Kind.NBIRTH, G, N, None, nbirth(300, 0), 0.0).events == ["seq_invalid", "rebirth_requested"]
    assert (G, N) not in s2.online()


def test_an_absent_seq_is_0_so_a_birth_or_the_wrap_without_it_is_in_sequence() -> None:
    """Encoders that leave out default values (proto3-compiled Tahu schemas) send seq 0 as no seq:
    an NBIRTH without it was seq_invalid, and every message of the node after it sparkplug_no_birth."""
    no_seq = spb.ProtoPayload(timestamp=1)
    no_seq.metrics.add(name=spb.BDSEQ, datatype=spb.INT64, long_value=0)
    nbirth_ = spb.decode(no_seq.SerializeToString())
    assert isinstance(nbirth_, Payload) and nbirth_.seq == 0
    s = HostSession()
    out = s.handle(Kind.NBIRTH, G, N, None, nbirth_, 0.0)
    assert not out.events and (G, N) in s.online()
    assert not s.handle(Kind.DBIRTH, G, N, "loom-1", dbirth(1, m("Inputs/Speed", 2)), 0.0).events
    s.handle(Kind.NBIRTH, G, N, None, nbirth(255, 0, m("Power", 1)), 0.0)
    wrap = spb.decode(spb.ProtoPayload(timestamp=1).SerializeToString())  # the 0 after 255, left out
    assert isinstance(wrap, Payload)
    assert not s.handle(Kind.NDATA, G, N, None, wrap, 0.0).events
    assert not s.handle(Kind.NDATA, G, N, None, data(1, m(None, 1)), 0.0).events


def test_after_the_hosts_reconnect_no_birth_is_in_force_and_data_asks_for_one() -> None:
    s = HostSession(rebirth_retry_s=5.0)
    born(s)
    assert s.handle(Kind.NDATA, G, N, None, data(2, m(None, 1)), 1.0).rebirth is False
    s.forget_births()  # meanwhile the node may have been born again with other aliases
    assert s.online() == {}
    out = s.handle(Kind.DDATA, G, N, "loom-1", data(7, m(None, 2, 77.0, None)), 2.0)
    assert out.rebirth and not out.metrics and [r.reason for r in out.rejections] == ["sparkplug_no_birth"]


def test_an_unknown_alias_is_refused_and_asks_for_a_rebirth() -> None:
    s = HostSession()
    born(s)
    out = s.handle(Kind.DDATA, G, N, "loom-1", data(2, m(None, 99), m(None, 2, 1.0, None)), 0.0)
    assert [r.reason for r in out.rejections] == ["sparkplug_alias_unknown"]
    assert out.rebirth and [r.name for r in out.metrics] == ["Inputs/Speed"]


def test_ndeath_with_the_births_bdseq_takes_the_node_and_its_devices_offline() -> None:
    s = HostSession()
    born(s, bd_seq=4)
    out = s.handle(Kind.NDEATH, G, N, None, ndeath(4), 0.0)
    assert out.offline == {None: (spb.BDSEQ, "Power"), "loom-1": ("Inputs/Speed",)}
    assert s.online() == {}
    # after a death, data is data before a birth
    assert s.handle(Kind.DDATA, G, N, "loom-1", data(3, m(None, 2)), 0.0).rejections[0].reason == "sparkplug_no_birth"


def test_a_stale_ndeath_of_an_earlier_connection_is_ignored() -> None:
    s = HostSession()
    born(s, bd_seq=5)
    out = s.handle(Kind.NDEATH, G, N, None, ndeath(4), 0.0)  # the broker published the old will late
    assert out.offline == {} and out.events == ["stale_death"]
    assert s.online() == {(G, N): ["loom-1"]}
    assert not s.handle(Kind.DDATA, G, N, "loom-1", data(2, m(None, 2)), 0.0).events  # seq goes on


def test_a_birth_without_bdseq_takes_any_ndeath() -> None:
    s = HostSession()
    s.handle(Kind.NBIRTH, G, N, None, nbirth(0, None, m("Power", 1)), 0.0)
    assert s.handle(Kind.NDEATH, G, N, None, ndeath(7), 0.0).offline == {None: ("Power",)}


def test_ddeath_takes_only_its_device_offline_and_is_in_the_sequence() -> None:
    s = HostSession()
    born(s)
    s.handle(Kind.DBIRTH, G, N, "loom-2", dbirth(2, m("Inputs/Speed", 3)), 0.0)
    out = s.handle(Kind.DDEATH, G, N, "loom-1", data(3), 0.0)
    assert out.offline == {"loom-1": ("Inputs/Speed",)} and not out.rebirth
    assert s.online() == {(G, N): ["loom-2"]}
    assert s.handle(Kind.DDATA, G, N, "loom-1", data(4, m(None, 2)), 0.0).rejections[0].reason == \
        "sparkplug_no_birth"


def test_a_new_nbirth_forgets_the_devices_until_their_dbirth() -> None:
    s = HostSession()
    born(s)
    s.handle(Kind.NBIRTH, G, N, None, nbirth(0, 1, m("Power", 1)), 0.0)
    assert s.online() == {(G, N): []}
    assert s.handle(Kind.DDATA, G, N, "loom-1", data(1, m(None, 2)), 0.0).rebirth


def test_births_that_are_always_followed_by_a_gap_are_not_asked_for_without_pause() -> None:
    s = HostSession(rebirth_retry_s=5.0)
    asked = 0
    for t in range(20):  # a broken node: every birth sequence has a hole
        s.handle(Kind.NBIRTH, G, N, None, nbirth(0, 0, m("Power", 1)), float(t) / 10)
        asked += s.handle(Kind.NDATA, G, N, None, data(5, m(None, 1)), float(t) / 10).rebirth
    assert asked == 1  # 2 s of births: one request, not twenty


def test_commands_and_deaths_of_unknown_nodes_change_nothing() -> None:
    s = HostSession()
    assert s.handle(Kind.NCMD, G, N, None, data(0, m(spb.REBIRTH)), 0.0).events == []
    assert s.handle(Kind.NDEATH, G, N, None, ndeath(0), 0.0).events == ["death_unborn"]
    assert s.handle(Kind.DDEATH, G, N, "x", data(0), 0.0).rejections == []  # a death is no data to refuse
    assert s.online() == {}


def test_a_birth_metric_without_a_name_is_refused() -> None:
    s = HostSession()
    out = s.handle(Kind.NBIRTH, G, N, None, nbirth(0, 0, m(None, 1)), 0.0)
    assert [r.reason for r in out.rejections] == ["sparkplug_birth_invalid"]


# --- properties ----------------------------------------------------------------------------------

messages = st.lists(st.tuples(
    st.sampled_from([Kind.NBIRTH, Kind.DBIRTH, Kind.NDATA, Kind.DDATA, Kind.DDEATH, Kind.NDEATH]),
    st.integers(0, 300),  # seq (the decoder reads an absent one as 0)
    st.integers(0, 3),  # bdSeq
    st.sampled_from(["d1", "d2"]),
    st.integers(0, 5),  # alias
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_no_message_sequence_breaks_the_rules(msgs: list[tuple[Kind, int, int, str, int]]) -> None:
    """Whatever arrives: nothing raises, data is resolved only from a birth in force, a death is
    only acted on with its birth's bdSeq, and a rebirth is asked at most once per retry interval."""
    s = HostSession(rebirth_retry_s=1.0)
    births: dict[str, dict[int, str]] = {}  # the model: device ("" node) -> alias -> name
    node_bd: int | None = None
    alive = False
    last_ask = -1e9
    for t, (kind, seq, bd, device, alias) in enumerate(msgs):
        dev = device if kind in (Kind.DBIRTH, Kind.DDATA, Kind.DDEATH) else None
        metric = m(f"{dev}/{alias}", alias) if kind in (Kind.NBIRTH, Kind.DBIRTH) else m(None, alias, 1.0, None)
        if kind == Kind.NBIRTH:
            payload = nbirth(seq, bd, metric)
        elif kind == Kind.NDEATH:
            payload = ndeath(bd)
        else:
            payload = data(seq, metric)
        out = s.handle(kind, G, N, dev, payload, t * 0.4)
        if out.rebirth:
            assert t * 0.4 - last_ask >= 1.0 - 1e-9
            last_ask = t * 0.4
        if kind == Kind.NBIRTH:
            births = {"": {alias: f"None/{alias}"}}
            node_bd = bd
            alive = 0 <= seq < 256
        elif kind == Kind.NDEATH:
            if alive and bd == node_bd:
                assert None in out.offline
                alive, births = False, {}
            else:
                assert out.offline == {}
        elif not alive:
            assert out.metrics == [] and out.offline == {}
        elif kind == Kind.DBIRTH:
            births[device] = {alias: f"{device}/{alias}"}
        elif kind == Kind.DDEATH:
            assert (device in out.offline) == (device in births)
            births.pop(device, None)
        else:
            key = "" if kind == Kind.NDATA else device
            known = births.get(key, {})
            assert [r.name for r in out.metrics] == ([known[alias]] if alias in known else [])
        assert (s.online() != {}) == alive


# --- payloads ------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, body: bytes) -> bytes:
    return _varint(number << 3 | wire) + body


def test_decodes_a_payload_written_byte_by_byte_from_the_specifications_field_numbers() -> None:
    """Not encoded with the same schema: a mistake in a field number would not cancel out."""
    import struct

    prop_value = _field(1, 0, _varint(3)) + _field(3, 0, _varint(500))
    props = _field(1, 2, _varint(7) + b"Quality") + _field(2, 2, _varint(len(prop_value)) + prop_value)
    metric = (_field(1, 2, _varint(12) + b"Inputs/Speed") + _field(2, 0, _varint(7)) + _field(3, 0, _varint(1700))
              + _field(4, 0, _varint(spb.DOUBLE)) + _field(9, 2, _varint(len(props)) + props)
              + _field(13, 1, struct.pack("<d", 412.5)))
    neg = _field(2, 0, _varint(8)) + _field(4, 0, _varint(spb.INT16)) + _field(10, 0, _varint(0xFFFFFFFE))
    raw = (_field(1, 0, _varint(1_764_000_000_000)) + _field(2, 2, _varint(len(metric)) + metric)
           + _field(2, 2, _varint(len(neg)) + neg) + _field(3, 0, _varint(42)))
    decoded = spb.decode(raw)
    assert isinstance(decoded, Payload)
    assert (decoded.timestamp_ms, decoded.seq) == (1_764_000_000_000, 42)
    first, second = decoded.metrics
    assert (first.name, first.alias, first.timestamp_ms, first.datatype, first.value) == \
        ("Inputs/Speed", 7, 1700, spb.DOUBLE, 412.5)
    assert first.quality == 500 and spb.fmc_quality(first.quality) != 0
    assert spb.value_of(spb.INT16, second) == -2.0  # two's complement, sign-extended to 32 bits


@pytest.mark.parametrize(("datatype", "field", "raw", "want"), [
    (spb.INT8, "int_value", 0xFF, -1.0),  # 8-bit two's complement
    (spb.INT8, "int_value", 0xFFFFFFFF, -1.0),  # sign-extended to 32 bits
    (spb.INT32, "int_value", 0x80000000, -2147483648.0),
    (spb.INT64, "long_value", 2**64 - 5, -5.0),
    (spb.UINT32, "int_value", 0xFFFFFFFF, 4294967295.0),
    (spb.UINT64, "long_value", 2**53, 2.0**53),
    (spb.INT32, "long_value", 7, 7.0),  # some encoders put any integer in long_value
    (spb.FLOAT, "float_value", 1.5, 1.5),
    (spb.DOUBLE, "double_value", -0.25, -0.25),
    (spb.BOOLEAN, "boolean_value", True, 1.0),
    (spb.STRING, "string_value", "O1234", "O1234"),
    (spb.DATETIME, "long_value", 1_764_000_000_000, 1_764_000_000_000.0),
])
def test_values_by_datatype(datatype: int, field: str, raw: object, want: object) -> None:
    assert spb.value_of(datatype, Metric("x", None, None, datatype, raw, field)) == want  # type: ignore[arg-type]


@pytest.mark.parametrize(("datatype", "field", "raw", "reason"), [
    (spb.DOUBLE, "double_value", float("nan"), "value_not_finite"),
    (spb.FLOAT, "float_value", float("inf"), "value_not_finite"),
    (spb.DOUBLE, "string_value", "12.5", "value_wrong_type"),
    (spb.BOOLEAN, "int_value", 1, "value_wrong_type"),
    (spb.STRING, "double_value", 1.0, "value_wrong_type"),
    (16, None, None, "sparkplug_datatype"),  # DataSet: its field is not even declared
    (17, "bytes_value", b"\x00", "sparkplug_datatype"),  # Bytes
    (19, None, None, "sparkplug_datatype"),  # Template
    (None, "double_value", 1.0, "sparkplug_datatype"),  # no datatype anywhere
    (spb.DOUBLE, None, None, "value_wrong_type"),  # no value
])
def test_values_fmc_cannot_store_are_refused_by_reason(datatype: int | None, field: str | None, raw: object,
                                                        reason: str) -> None:
    out = spb.value_of(datatype, Metric("x", None, None, datatype, raw, field))  # type: ignore[arg-type]
    assert isinstance(out, spb.Rejection) and out.reason == reason


def test_a_null_metric_has_no_value() -> None:
    assert spb.value_of(spb.DOUBLE, Metric("x", None, None, spb.DOUBLE, None, None, is_null=True)) is None


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_are_refused_never_raise(data_: bytes) -> None:
    out = spb.decode(data_)
    assert isinstance(out, Payload | spb.Rejection)
    if isinstance(out, Payload):
        for metric in out.metrics:
            spb.value_of(metric.datatype, metric)  # never raises either


def test_a_name_or_text_that_is_not_utf8_is_refused_metric_by_metric() -> None:
    """upb does not check UTF-8 in proto2 strings: a GBK name or text comes as bytes. Such a metric is
    refused by itself (name_not_utf8, value_not_utf8), its birth's alias stays defined (no rebirth
    asked again and again), and the message's other metrics are kept."""
    gbk = "温度".encode("gbk")
    msg = spb.ProtoPayload(timestamp=1, seq=1)
    msg.metrics.add(name="Inputs/XXXX", alias=5, datatype=spb.DOUBLE, double_value=21.5)
    msg.metrics.add(name="Inputs/Speed", alias=2, datatype=spb.DOUBLE, double_value=3.0)
    msg.metrics.add(name="Status/Program", alias=3, datatype=spb.STRING, string_value="YYYY")
    decoded = spb.decode(msg.SerializeToString().replace(b"XXXX", gbk).replace(b"YYYY", b"O\xff\xfe1"))
    assert isinstance(decoded, Payload)
    assert spb.raw_name(decoded.metrics[0].name or "") == b"Inputs/" + gbk
    assert spb.raw_name("Inputs/转速") is None
    s = HostSession()
    s.handle(Kind.NBIRTH, G, N, None, nbirth(0, 0), 0.0)
    birth = s.handle(Kind.DBIRTH, G, N, "loom-1", decoded, 0.0)
    mp = mapper({"path": "P/+/{equipment}/{signal*}", "equipment": "loom-1", "signal": "fixed"})
    points, rejections = mp.points("P", N, "loom-1", birth.metrics, None, NOW_NS)
    assert [r.reason for r in rejections] == ["name_not_utf8", "value_not_utf8"]  # even to a fixed name
    assert "b'Inputs/\\xce\\xc2\\xb6\\xc8'" in rejections[0].detail
    assert [p.fields for p in points] == [{"value": 3.0, "quality": 0}]
    out = s.handle(Kind.DDATA, G, N, "loom-1", data(2, m(None, 5, 22.0, None), m(None, 2, 4.0, None)), 0.0)
    assert not out.rebirth and not out.rejections  # the alias is known: the mapper refuses it, alone
    points, rejections = mp.points("P", N, "loom-1", out.metrics, None, NOW_NS)
    assert [r.reason for r in rejections] == ["name_not_utf8"] and [p.fields["value"] for p in points] == [4.0]


def test_the_rebirth_request_and_state_payloads() -> None:
    decoded = spb.decode(spb.rebirth_request(1_764_000_000_000))
    assert isinstance(decoded, Payload)
    (rebirth,) = decoded.metrics
    assert (rebirth.name, rebirth.datatype, rebirth.value) == (spb.REBIRTH, spb.BOOLEAN, True)
    assert spb.state_payload(True, 5) == b'{"online":true,"timestamp":5}'
    assert spb.parse_state(spb.state_payload(False, 5)) == (False, 5)
    for bad in (b"ONLINE", b"{}", b'{"online": 1, "timestamp": 5}', b"\xff"):
        assert spb.parse_state(bad) is None


# --- path templates ------------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "path", "want"), [
    ("Plant1/+/{equipment}/{signal*}", "Plant1/n/loom-7/Inputs/Spindle Speed",
     {"equipment": "loom-7", "signal": "Inputs/Spindle Speed"}),
    ("Plant1/+/{equipment}/{signal*}", "Plant1/n/loom-7/Speed", {"equipment": "loom-7", "signal": "Speed"}),
    ("Plant1/+/{equipment}/{signal*}", "Plant1/n/loom-7", None),  # {x*} takes at least one level
    ("{g}/{n}/{d}/Inputs/{s}", "P/N/D/Inputs/Speed", {"g": "P", "n": "N", "d": "D", "s": "Speed"}),
    ("{g}/{n}/{d}/Inputs/{s}", "P/N/D/Inputs/Axis/X", None),
    ("P/+/+/#", "P/N/D", {}),
    ("P/+/+/#", "P/N/D/a/b", {}),
    ("P/N/{meter}/Energy/Total kWh", "P/N/m1/Energy/Total kWh", {"meter": "m1"}),
    ("P/N/{meter}/Energy/Total kWh", "P/N/m1/Energy/Total", None),
])
def test_path_templates(template: str, path: str, want: dict[str, str] | None) -> None:
    validate_template(template)
    assert PathTemplate(template).match(path.split("/")) == want


@pytest.mark.parametrize(("template", "says"), [
    ("P/{s*}/x", "must be the last level"),
    ("P/#/x", "'#' may only be the last level"),
    ("P/a{x}", "a capture fills a whole level"),
    ("P/a+/x", "fill a whole level"),
    ("P/{x}/{x}", "appears twice"),
])
def test_bad_path_templates_say_why(template: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        validate_template(template)


# --- mapping -------------------------------------------------------------------------------------

NOW_NS = 1_764_000_000_000_000_000


def mapper(*maps: dict[str, object], ignore: tuple[str, ...] = ()) -> Mapper:
    return Mapper("e1", [MetricMap.model_validate(x) for x in maps], ignore=ignore)


def resolved(name: str, value: object, datatype: int = spb.DOUBLE, quality: int | None = None,
             ts_ms: int | None = None) -> Resolved:
    field = {spb.DOUBLE: "double_value", spb.STRING: "string_value", spb.INT32: "int_value"}.get(datatype)
    return Resolved(name, datatype, Metric(name, None, ts_ms, datatype, value, field, quality=quality))  # type: ignore[arg-type]


def test_templates_name_equipment_signals_and_meters_first_match_wins() -> None:
    mp = mapper({"path": "P/+/{device}/Inputs/Speed", "equipment": "loom-{device}", "signal": "speed"},
                {"path": "P/+/{equipment}/{signal*}"},
                {"path": "P/{meter}/Energy/{unit}", "level": "node", "kind": "meter", "carrier": "electricity",
                 "scale": 0.001})
    metrics = [resolved("Inputs/Speed", 12.0), resolved("A/B/C", "x", spb.STRING)]
    points, rejections = mp.points("P", "n1", "7", metrics, NOW_NS // 10**6 - 5, NOW_NS)
    assert not rejections
    assert [(p.tags["equipment"], p.tags["signal"], p.fields) for p in points] == [
        ("loom-7", "speed", {"value": 12.0, "quality": 0}), ("7", "A/B/C", {"text": "x", "quality": 0})]
    assert points[0].ts_ns == NOW_NS - 5_000_000  # the payload's timestamp when the metric has none
    (reading,), _ = mp.points("P", "n1", None, [resolved("Energy/Wh", 5000.0, quality=500)], None, NOW_NS)
    assert reading.measurement == "meter_reading" and reading.ts_ns == NOW_NS
    assert reading.tags == {"enterprise": "e1", "meter": "n1", "carrier": "electricity"}
    assert reading.fields == {"value": 5.0, "quality": BAD}  # scaled; Quality 500 (stale) is Bad


def test_unmatched_ignored_and_unstorable_metrics() -> None:
    mp = mapper({"path": "P/{meter}/kWh", "level": "node", "kind": "meter", "carrier": "electricity"},
                {"path": "P/+/{equipment}/{signal}"}, {"path": "P/{equipment}/Node Control/{signal}", "level": "node"},
                ignore=("Properties/*",))
    # the protocol's own metrics are no data even when a map would take them
    metrics = [resolved("bdSeq", 0, spb.INT32), resolved("Node Control/Rebirth", None), resolved("Properties/x", 1.0),
               resolved("Other", 1.0), resolved("kWh", "text", spb.STRING)]
    points, rejections = mp.points("P", "n1", None, metrics, None, NOW_NS)
    assert points == []
    assert [r.reason for r in rejections] == ["metric_unmatched", "value_wrong_type"]  # a meter reads numbers
    _, rejections = mp.points("P", "n1", "d", [resolved("a", 1.0, ts_ms=1), resolved("b", "l\nx", spb.STRING)],
                              None, NOW_NS)
    assert [r.reason for r in rejections] == ["timestamp_out_of_range", "value_control_char"]


def test_a_death_emits_one_no_communication_sample_per_equipment_signal() -> None:
    mp = mapper({"path": "P/+/{equipment}/{signal*}"},
                {"path": "P/{meter}/kWh", "level": "node", "kind": "meter", "carrier": "electricity"})
    out = mp.offline_points("P", "n1", {None: ("kWh", "bdSeq"), "loom-1": ("Speed", "Speed", "Temp")}, NOW_NS)
    assert [(p.tags["equipment"], p.tags["signal"], p.fields, p.ts_ns) for p in out] == [
        ("loom-1", "Speed", {"quality": BAD_NO_COMMUNICATION}, NOW_NS),
        ("loom-1", "Temp", {"quality": BAD_NO_COMMUNICATION}, NOW_NS)]  # meters do not go offline


def test_the_births_in_force_name_the_equipment_and_meters_they_feed() -> None:
    s = HostSession()
    born(s)
    s.handle(Kind.DBIRTH, G, N, "loom-2", dbirth(2, m("Inputs/Speed", 3)), 0.0)
    mp = mapper({"path": f"{G}/+/{{equipment}}/{{signal*}}"},
                {"path": f"{G}/{{meter}}/Power", "level": "node", "kind": "meter", "carrier": "electricity"})
    assert s.born((G, N)) == {None: (spb.BDSEQ, "Power"), "loom-1": ("Inputs/Speed",), "loom-2": ("Inputs/Speed",)}
    assert mp.targets(G, N, s.born((G, N))) == ({"loom-1", "loom-2"}, {N})
    s.handle(Kind.DDEATH, G, N, "loom-2", data(3), 0.0)
    assert mp.targets(G, N, s.born((G, N))) == ({"loom-1"}, {N})
    s.handle(Kind.NDEATH, G, N, None, ndeath(0), 0.0)
    assert s.born((G, N)) == {} and s.born((G, "other")) == {}


def test_a_historical_value_is_stored_but_does_not_override_the_current_state_from_the_birth() -> None:
    """Store and forward: after an outage the edge node births with the current values, then sends
    what it buffered, flagged is_historical. The trackers apply a sample older than their cursor at
    the cursor: a speed of half an hour ago made a loom standing still "running"."""
    s_ = 10**9
    g, n, d = "Plant1", "line-2", "loom-1"
    sections = PlantSections.model_validate({
        "plant": {"sample_delay_s": 0},
        "equipment_class": [{"name": "loom", "rules": [
            {"type": "threshold", "signal": "Speed", "on_above": 100, "off_below": 50, "off_state": "idle"}]}],
        "meter": [{"id": n, "carrier": "electricity", "kind": "counter", "unit": "kWh"}],
    })
    now_ms = NOW_NS // 1_000_000
    t0 = NOW_NS
    plant = PlantModel(Site("e-1", "330602", "17", "Asia/Shanghai"), sections,
                       [InventoryItem(d, True, kind="loom")], start_ns=t0 - 3600 * s_)
    session = HostSession()
    mp = Mapper("e-1", [MetricMap(path=f"{g}/+/{{equipment}}/{{signal*}}"),
                        MetricMap(path=f"{g}/{{meter}}/kWh", level="node", kind="meter", carrier="electricity")])

    def feed(kind: Kind, device: str | None, seq: int, metrics: list[dict[str, object]], received_ns: int) -> list:
        msg = spb.ProtoPayload(timestamp=now_ms, seq=seq)
        for metric in metrics:
            msg.metrics.add(**metric)
        decoded = spb.decode(msg.SerializeToString())
        assert isinstance(decoded, Payload)
        out = session.handle(kind, g, n, device, decoded, received_ns / s_)
        points, rejections = mp.points(g, n, device, out.metrics, decoded.timestamp_ms, received_ns)
        assert not rejections and not out.rejections
        plant.observe(points, received_ns)
        return points

    feed(Kind.NBIRTH, None, 0, [dict(name="bdSeq", datatype=spb.INT64, long_value=1),
                                dict(name="kWh", alias=2, datatype=spb.DOUBLE, double_value=500.0)], t0)
    feed(Kind.DBIRTH, d, 1, [dict(name="Speed", alias=1, datatype=spb.DOUBLE, double_value=0.0, timestamp=now_ms)], t0)
    plant.advance(t0 + 1 * s_)
    assert plant.trackers[d].state == "idle"
    old_ms = now_ms - 1800 * 1000  # what it buffered half an hour ago
    (speed,) = feed(Kind.DDATA, d, 2, [dict(alias=1, double_value=1500.0, timestamp=old_ms, is_historical=True)],
                    t0 + 2 * s_)
    assert (speed.fields["value"], speed.ts_ns, speed.store_only) == (1500.0, old_ms * 1_000_000, True)  # stored
    (reading,) = feed(Kind.NDATA, None, 3, [dict(alias=2, double_value=480.0, timestamp=old_ms, is_historical=True)],
                      t0 + 2 * s_)
    assert reading.store_only and plant.inputs([speed, reading]) == []
    plant.advance(t0 + 300 * s_)
    assert plant.trackers[d].state == "idle", "a buffered historical value made the current state"
    assert plant.meters[n].counts["out_of_order"] == 0  # not even seen
    assert plant._last_reading[n] == (500.0, t0)  # the birth's stays the reading confirmations repeat


def test_a_template_naming_a_capture_the_path_lacks_is_a_config_error_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"name a level '\{equipment\}' in the path or write a fixed equipment"):
        MetricMap.model_validate({"path": "P/+/+/{signal*}"})


def test_feeds_fixed_names_and_templates_apart() -> None:
    cfg = SparkplugSource.model_validate({"name": "e", "group_ids": ["P"], "host_id": "h", "metric": [
        {"path": "P/+/{equipment}/{signal*}"},
        {"path": "P/n/d/Speed", "equipment": "loom-7", "signal": "speed"},
        {"path": "P/n/kWh", "level": "node", "kind": "meter", "meter": "main", "carrier": "electricity"}]})
    assert cfg.feeds() == Feeds(frozenset({"loom-7"}), frozenset({"main"}), any_equipment=True, any_meter=False)
