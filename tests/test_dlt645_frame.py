"""The DL/T 645-2007 codec (fmc/sources/dlt645/frame.py): hand-checked frames of the standard's
layout, round trips with hypothesis, and the ``dlt645`` package (3.2.0) as a second opinion — its
frames decoded by ours and ours by it, its BCD values against ours."""

from __future__ import annotations

import pytest
from dlt645.common.transform import bcd_to_float, float_to_bcd, string_to_bcd
from dlt645.protocol.protocol import DLT645Protocol
from hypothesis import given
from hypothesis import strategies as st

from fmc.sources.dlt645 import frame as f

FORWARD = f.IDENTIFIERS[0x00010000]
COMBINED = f.IDENTIFIERS[0x00000000]
VOLTAGE_A = f.IDENTIFIERS[0x02010100]
CURRENT_A = f.IDENTIFIERS[0x02020100]
POWER = f.IDENTIFIERS[0x02030000]

addresses = st.text("0123456789", min_size=12, max_size=12)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- hand-checked frames ---------------------------------------------------------------------------


def test_the_broadcast_read_address_request_is_the_one_every_manual_prints() -> None:
    assert f.read_address_request() == h("FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16")
    assert f.read_address_request(preamble=0) == h("68 AA AA AA AA AA AA 68 13 00 DF 16")


def test_a_read_request_sends_the_address_low_byte_first_and_the_identifier_plus_0x33() -> None:
    # 123456789012 -> 12 90 78 56 34 12; DI 00 01 00 00 -> 00 00 01 00 -> +0x33 -> 33 33 34 33
    # checksum: 68+12+90+78+56+34+12+68+11+04+33+33+34+33 = 0x368 -> 68
    assert f.read_data_request("123456789012", 0x00010000, preamble=0) == h(
        "68 12 90 78 56 34 12 68 11 04 33 33 34 33 68 16")


def test_a_reply_decodes_to_the_register_in_kwh() -> None:
    # meter 000000000001 answers 12345.67 kWh: data 00 00 01 00 67 45 23 01, +0x33; checksum 0x3D3 -> D3
    raw = h("FE FE 68 01 00 00 00 00 00 68 91 08 33 33 34 33 9A 78 56 34 D3 16")
    frame = f.decode_frame(raw)
    assert (frame.address, frame.control, frame.is_reply, frame.is_error) == ("000000000001", 0x91, True, False)
    assert int.from_bytes(frame.data[:4], "little") == 0x00010000
    assert f.decode_value(FORWARD, frame.data[4:]) == 12345.67


def test_an_error_reply_names_its_error_byte() -> None:
    # C = D1 (reply, error, read data), one byte 02 + 33 = 35: "no data requested"; checksum 0x1D8 -> D8
    frame = f.decode_frame(h("68 01 00 00 00 00 00 68 D1 01 35 D8 16"))
    assert frame.is_error and frame.function == f.READ_DATA and frame.data == b"\x02"
    assert f.describe_error(0x02).startswith("no data requested")
    assert f.describe_error(0x06) == "no data requested (the meter does not have this data identifier); " \
                                     "password error / not authorised"
    assert "no bit the standard names" in f.describe_error(0x80)
    assert "00000000" in f.error_fix(0x02)


def test_a_reply_with_following_frames_still_carries_the_identifier_and_the_value() -> None:
    raw = f.encode_frame("000000000001", 0xB1, f.read_reply_data(0x00010000, f.encode_value(FORWARD, 2.5)), 0)
    frame = f.decode_frame(raw)
    assert frame.follows and frame.is_reply and not frame.is_error and frame.function == f.READ_DATA
    assert f.decode_value(FORWARD, frame.data[4:8]) == 2.5


def test_values_in_the_formats_of_the_standard() -> None:
    assert f.decode_value(VOLTAGE_A, h("01 22")) == 220.1  # XXX.X V
    assert f.decode_value(CURRENT_A, h("34 12 00")) == 1.234  # XXX.XXX A
    assert f.decode_value(CURRENT_A, h("34 12 80")) == -1.234  # top bit: the sign
    assert f.decode_value(POWER, h("56 34 12")) == 12.3456  # XX.XXXX kW
    assert f.decode_value(POWER, h("56 34 92")) == -12.3456
    assert f.decode_value(FORWARD, h("99 99 99 99")) == 999999.99  # forward active energy has no sign
    assert f.decode_value(COMBINED, h("99 99 99 79")) == 799999.99
    assert f.decode_value(COMBINED, h("00 01 00 80")) == -1.0  # combined active energy has one
    assert [VOLTAGE_A.format, CURRENT_A.format, POWER.format, FORWARD.format] == [
        "XXX.X", "XXX.XXX", "XX.XXXX", "XXXXXX.XX"]
    assert FORWARD.limit == 999999.99 and COMBINED.limit == 799999.99


def test_the_identifier_table_has_what_the_source_reads() -> None:
    assert set(f.IDENTIFIERS) >= {0x00000000, 0x00000100, 0x00000200, 0x00000300, 0x00000400, 0x00010000,
                                  0x02010100, 0x02020100, 0x02030000}
    assert [i.energy for i in (FORWARD, COMBINED, VOLTAGE_A, CURRENT_A, POWER)] == [True, True, False, False, False]
    assert f.parse_identifier("00 01 00 00") == f.parse_identifier("0x00010000") == 0x00010000
    for bad in ("0001000", "0001000G", "", "000100000"):
        with pytest.raises(ValueError, match="8 hex digits"):
            f.parse_identifier(bad)


# --- bad input ------------------------------------------------------------------------------------------


def test_a_wrong_checksum_a_missing_end_byte_and_a_short_frame_are_told_apart() -> None:
    good = f.encode_frame("000000000001", 0x91, f.read_reply_data(0x00010000, f.encode_value(FORWARD, 1.0)), 0)
    bad_sum = bytearray(good)
    bad_sum[-2] ^= 1
    assert f.scan(bytes(bad_sum)).problem == "checksum"
    bad_end = bytearray(good)
    bad_end[-1] = 0x00
    assert f.scan(bytes(bad_end)).problem == "bad_end"
    partial = f.scan(good[:-1])
    assert (partial.frame, partial.problem, partial.consumed) == (None, None, 0)  # wait for the rest
    with pytest.raises(ValueError, match="checksum"):
        f.decode_frame(bytes(bad_sum))
    with pytest.raises(ValueError, match="incomplete"):
        f.decode_frame(good[:5])
    with pytest.raises(ValueError, match="besides one frame"):
        f.decode_frame(b"\x00" + good)


def test_line_noise_and_a_stray_68_before_a_frame_are_skipped_and_counted() -> None:
    good = f.encode_frame("000000000002", 0x93, f.encode_address("000000000002"), 4)
    s = f.scan(h("00 FF 68 01 02 03 04 05 06 07 08") + good)
    assert s.frame is not None and s.frame.address == "000000000002"
    assert s.noise == 11 and s.consumed == 11 + len(good)
    # a stray 68 seven bytes before a real one looks like a header: that candidate fails its checksum,
    # and the scan of what follows it finds the frame
    buffer = h("68 01 02") + good
    first = f.scan(buffer)
    assert (first.problem, first.consumed) == ("checksum", 1)
    second = f.scan(buffer[first.consumed :])
    assert second.frame is not None and second.frame.address == "000000000002"
    assert f.scan(h("FE FE FE")).noise == 0  # the preamble alone is not noise
    assert f.scan(h("00 11")).consumed == 2  # nothing to keep


def _frames_in(buffer: bytes) -> list[f.Frame]:
    """Every frame the client's wait finds in ``buffer`` once all of it has arrived."""
    found = []
    while buffer:
        s = f.scan(buffer)
        buffer = buffer[s.consumed :]
        if s.frame is not None:
            found.append(s.frame)
        elif s.problem is None:
            break  # waits for more: nothing more will come
    return found


@pytest.mark.parametrize("address", ["000000000007", "000000001207", "000000996807", "999999999999"])
@pytest.mark.parametrize("gap", range(1, 14))
def test_a_stray_68_never_hides_a_whole_frame_behind_it(address: str, gap: int) -> None:
    # 68 seven bytes before the frame's 68 looks like a header whose "length" is the address's
    # second byte: the scan waited for that many more bytes, and a meter 000000001207 behind the
    # noise 00 FF 68 11 3C was never read (a timeout, every poll)
    good = f.encode_frame(address, 0x91, f.read_reply_data(0x00010000, f.encode_value(f.IDENTIFIERS[0x00010000], 42.0)),
                          4)
    noise = bytes([0x68]) + bytes(range(0x30, 0x30 + gap - 1))
    assert _frames_in(noise + good) == [f.decode_frame(good)]
    assert _frames_in(h("00 FF 68 11 3C") + good) == [f.decode_frame(good)]
    assert f.scan(h("00 FF 68 11 3C") + good[:-1]).frame is None  # a frame not all here yet is waited for


def test_bcd_with_a_nibble_above_9_is_refused() -> None:
    for raw in (h("AA AA AA AA"), h("0A 00 00 00"), h("00 00 00 F0")):
        with pytest.raises(f.BcdError, match="decimal digits"):
            f.decode_value(FORWARD, raw)
    with pytest.raises(f.BcdError, match="takes 4 bytes"):
        f.decode_value(FORWARD, h("00 00"))


def test_addresses_and_values_out_of_range_are_refused() -> None:
    for bad in ("12345", "12345678901a", "1234567890123"):
        with pytest.raises(ValueError, match="12 decimal digits"):
            f.encode_address(bad)
    with pytest.raises(ValueError, match="does not fit"):
        f.encode_value(FORWARD, 1_000_000.0)
    with pytest.raises(ValueError, match="does not fit"):
        f.encode_value(COMBINED, 800_000.0)
    with pytest.raises(ValueError, match="no sign"):
        f.encode_value(VOLTAGE_A, -1.0)
    with pytest.raises(ValueError, match="preamble"):
        f.encode_frame("000000000001", 0x11, b"", preamble=5)
    with pytest.raises(ValueError, match="at most 255"):
        f.encode_frame("000000000001", 0x11, bytes(256))


# --- round trips --------------------------------------------------------------------------------------


@given(addresses)
def test_an_address_round_trips(address: str) -> None:
    raw = f.encode_address(address)
    assert len(raw) == 6 and f.decode_address(raw) == address
    assert raw[0] == int(address[10:12], 16)  # low byte first


@given(addresses, st.integers(0, 255), st.binary(max_size=255), st.integers(0, 4),
       st.binary(max_size=20).filter(lambda b: 0x68 not in b))
def test_a_frame_round_trips_through_noise_and_preamble(address: str, control: int, data: bytes, preamble: int,
                                                        noise: bytes) -> None:
    raw = f.encode_frame(address, control, data, preamble)
    s = f.scan(noise + raw)
    assert s.frame == f.Frame(address, control, data)
    assert s.consumed == len(noise) + len(raw)
    assert s.noise == sum(1 for b in noise if b != 0xFE)


@given(st.data())
def test_a_value_round_trips_in_every_format(data: st.DataObject) -> None:
    ident = data.draw(st.sampled_from(list(f.IDENTIFIERS.values())))
    top = round(ident.limit * 10**ident.decimals)
    units = data.draw(st.integers(-top if ident.signed else 0, top))
    value = units / 10**ident.decimals
    raw = f.encode_value(ident, value)
    assert len(raw) == ident.size
    assert f.decode_value(ident, raw) == value


@given(st.binary(max_size=300))
def test_scan_never_raises_and_always_makes_progress_or_waits(buffer: bytes) -> None:
    s = f.scan(buffer)
    assert 0 <= s.consumed <= len(buffer)
    if s.frame is None and s.problem is None and s.consumed < len(buffer):
        assert buffer[s.consumed] == 0x68  # kept only to wait for the rest of a frame


# --- against the dlt645 package -------------------------------------------------------------------------


@given(addresses, st.sampled_from([0x11, 0x13, 0x91, 0x93, 0xB1, 0xD1]), st.binary(max_size=200), st.integers(0, 4))
def test_frames_the_package_builds_are_decoded_by_ours(address: str, control: int, data: bytes, preamble: int) -> None:
    raw = bytes(DLT645Protocol.build_frame(f.encode_address(address), control, data, preamble))
    assert f.decode_frame(raw) == f.Frame(address, control, data)


@given(addresses, st.sampled_from([0x11, 0x13, 0x91, 0x93, 0xB1, 0xD1]), st.binary(max_size=200), st.integers(0, 4))
def test_frames_ours_builds_are_decoded_by_the_package(address: str, control: int, data: bytes, preamble: int) -> None:
    frame = DLT645Protocol.deserialize(f.encode_frame(address, control, data, preamble))
    assert frame is not None
    assert bytes(frame.addr) == f.encode_address(address)
    assert (frame.ctrl_code, bytes(frame.data), len(frame.preamble)) == (control, data, preamble)


@given(st.data())
def test_values_agree_with_the_package_where_both_read_the_standard_alike(data: st.DataObject) -> None:
    ident = data.draw(st.sampled_from([i for i in f.IDENTIFIERS.values() if i.signed]))
    top = round(ident.limit * 10**ident.decimals)
    value = data.draw(st.integers(-top, top)) / 10**ident.decimals
    assert bytes(float_to_bcd(value, ident.format, "little")) == f.encode_value(ident, value)
    assert bcd_to_float(f.encode_value(ident, value), ident.format, "little") == value


def test_where_ours_differs_from_the_package_and_why() -> None:
    # forward active energy has no sign bit: 850000.00 kWh is 850000.00, the package reads -50000.00
    raw = f.encode_value(FORWARD, 850_000.0)
    assert f.decode_value(FORWARD, raw) == 850_000.0
    assert bcd_to_float(raw, FORWARD.format, "little") == -50_000.0
    # its client takes an address in wire order; the nameplate's number goes low byte first
    assert bytes(string_to_bcd("123456789012")) == h("12 34 56 78 90 12")
    assert f.encode_address("123456789012") == h("12 90 78 56 34 12")
    # its stream parser passes over a frame with a bad checksum; ours says so, for the counters
    good = f.read_data_request("000000000001", 0x00010000, 0)
    bad = good[:-2] + bytes([good[-2] ^ 1]) + good[-1:]
    assert DLT645Protocol.deserialize_with_remaining(bad)[1] is None
    assert f.scan(bad).problem == "checksum"
