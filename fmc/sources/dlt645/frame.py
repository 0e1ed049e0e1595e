"""DL/T 645-2007 frames and values, as pure functions (no I/O, no clock).

A frame on the line::

    FE FE FE FE | 68 | A0 A1 A2 A3 A4 A5 | 68 | C | L | DATA (L bytes) | CS | 16

- up to four ``FE`` wake-up bytes before it (a receiver skips them);
- the address: 12 BCD digits, **low byte first** — meter ``123456789012`` is sent ``12 90 78 56 34 12``;
  ``AAAAAAAAAAAA`` is the broadcast address of "read address" (one meter on the bus answers);
- the control code ``C``: bit 7 a reply, bit 6 an error reply, bit 5 "more frames follow", bits 0-4
  the function (``0x11`` read data, ``0x13`` read address);
- every byte of DATA is sent plus ``0x33`` (so a field of zeros is not a line of zeros);
- ``CS`` is the sum, modulo 256, of every byte from the first ``68`` to the end of DATA.

A read request's DATA is the data identifier DI0 DI1 DI2 DI3 (``00 01 00 00``, forward active
energy, is sent ``00 00 01 00`` before the +0x33); the reply repeats it and adds the value in BCD,
lowest digits first, with the top bit of the last byte as the sign where the format has one.

Why a codec of our own rather than the ``dlt645`` package (3.2.0), which the tests check this one
against (tests/test_dlt645_frame.py): its stream parser drops a frame with a bad checksum or end
byte with a log line, where the source must count each by reason; its client takes the address in
wire order (``set_address("123456789012")`` sends ``12 34 56 78 90 12``, not the nameplate's number
low byte first) and answers every failure — timeout, checksum, error reply, wrong meter — with
``None``; it reads the sign bit of every energy register, where forward active energy is unsigned
(000000.00-999999.99); and importing it loads loguru and its servers into the agent. The frame
layout itself is the same, and the tests prove it both ways.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREAMBLE_BYTE = 0xFE
START = 0x68
END = 0x16
DATA_OFFSET = 0x33
MAX_PREAMBLE = 4
MAX_DATA = 255
HEADER_LEN = 10  # 68 A0..A5 68 C L
FRAME_OVERHEAD = 12  # header, CS, 16

READ_DATA = 0x11
READ_ADDRESS = 0x13
REPLY_BIT = 0x80
ERROR_BIT = 0x40
FOLLOWS_BIT = 0x20
FUNCTION_MASK = 0x1F

BROADCAST_ADDRESS = "AAAAAAAAAAAA"
ADDRESS_PATTERN = re.compile(r"^[0-9]{12}$")

# The error byte of an error reply (C = 0xD1 for read data), bit by bit (DL/T 645-2007 §7.3.4),
# with what a person does about it.
ERROR_BITS: tuple[tuple[int, str, str], ...] = (
    (0x01, "other error", "see the meter's manual; try the data identifier with a handheld reader"),
    (0x02, "no data requested (the meter does not have this data identifier)",
     "read another data identifier, e.g. energy = \"00000000\" (combined) instead of \"00010000\" (forward)"),
    (0x04, "password error / not authorised", "a read needs no password: the meter may be locked; see its manual"),
    (0x08, "the baud rate cannot be changed", "use the meter's baud rate"),
    (0x10, "too many year time zones", "a tariff setting; not for reading"),
    (0x20, "too many daily time slots", "a tariff setting; not for reading"),
    (0x40, "too many tariffs", "read a tariff the meter has (1 to its tariff count)"),
)


class BcdError(ValueError):
    """A value field holds a nibble above 9: not a decimal number (a corrupt or foreign reply)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as received: the address as printed on the meter, the control code, DATA less 0x33."""

    address: str
    control: int
    data: bytes

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.control & REPLY_BIT)

    @property
    def is_error(self) -> bool:
        return bool(self.control & ERROR_BIT)

    @property
    def follows(self) -> bool:
        """More frames follow (C = 0xB1): this frame still carries the identifier and the first part."""
        return bool(self.control & FOLLOWS_BIT)


@dataclass(frozen=True, slots=True)
class Scan:
    """What the start of a receive buffer holds.

    ``frame`` a whole good frame; ``problem`` ("checksum", "bad_end") a frame-shaped run of bytes
    that is broken; neither: more bytes are needed. ``consumed`` bytes of the buffer are done
    with (drop them); ``noise`` of those were neither a frame nor the FE preamble."""

    frame: Frame | None
    problem: str | None
    consumed: int
    noise: int


# --- addresses and identifiers -------------------------------------------------------------------------


def encode_address(address: str) -> bytes:
    """``"123456789012"`` -> ``12 90 78 56 34 12`` (low byte first); the broadcast address as is."""
    if address.upper() == BROADCAST_ADDRESS:
        return bytes([0xAA] * 6)
    if not ADDRESS_PATTERN.fullmatch(address):
        raise ValueError(f"address {address!r} is not 12 decimal digits")
    return bytes(int(address[i : i + 2], 16) for i in range(10, -1, -2))


def decode_address(raw: bytes) -> str:
    """Six address bytes (low byte first) -> the 12 digits as printed; non-BCD bytes show as hex (AA)."""
    return "".join(f"{b:02X}" for b in reversed(raw))


def parse_identifier(text: str) -> int:
    """``"00010000"``, ``"00 01 00 00"`` or ``"0x00010000"`` -> 0x00010000 (DI3 DI2 DI1 DI0, as the
    standard writes it)."""
    digits = text.strip().removeprefix("0x").removeprefix("0X").replace(" ", "").replace("-", "")
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", digits):
        raise ValueError(f"data identifier {text!r} is not 8 hex digits such as \"00010000\"")
    return int(digits, 16)


def format_identifier(di: int) -> str:
    return f"{di:08X}"


# --- frames ---------------------------------------------------------------------------------------------


def checksum(body: bytes) -> int:
    """Sum modulo 256 from the first 0x68 to the end of DATA."""
    return sum(body) & 0xFF


def encode_frame(address: str, control: int, data: bytes = b"", preamble: int = MAX_PREAMBLE) -> bytes:
    """A whole frame: ``preamble`` FE bytes, header, DATA + 0x33, checksum, 16."""
    if not 0 <= preamble <= MAX_PREAMBLE:
        raise ValueError(f"preamble is 0 to {MAX_PREAMBLE} FE bytes, not {preamble}")
    if not 0 <= control <= 0xFF:
        raise ValueError(f"control code {control} is not a byte")
    if len(data) > MAX_DATA:
        raise ValueError(f"DATA is at most {MAX_DATA} bytes, not {len(data)}")
    body = bytes([START, *encode_address(address), START, control, len(data)])
    body += bytes((b + DATA_OFFSET) & 0xFF for b in data)
    return bytes([PREAMBLE_BYTE] * preamble) + body + bytes([checksum(body), END])


def read_data_request(address: str, di: int, preamble: int = MAX_PREAMBLE) -> bytes:
    return encode_frame(address, READ_DATA, di.to_bytes(4, "little"), preamble)


def read_address_request(preamble: int = MAX_PREAMBLE) -> bytes:
    return encode_frame(BROADCAST_ADDRESS, READ_ADDRESS, b"", preamble)


def scan(buffer: bytes) -> Scan:
    """Find the first frame in ``buffer`` (FE preamble and line noise before it skipped)."""
    n = len(buffer)
    i = 0
    noise = 0
    while True:
        start = buffer.find(START, i)
        if start < 0:
            noise += sum(1 for b in buffer[i:] if b != PREAMBLE_BYTE)
            return Scan(None, None, n, noise)
        noise += sum(1 for b in buffer[i:start] if b != PREAMBLE_BYTE)
        if n < start + HEADER_LEN:
            return Scan(None, None, start, noise)  # wait for the rest of the header
        if buffer[start + 7] != START:  # a 68 that does not open a frame: noise
            noise += 1
            i = start + 1
            continue
        length = buffer[start + 9]
        end = start + FRAME_OVERHEAD + length
        if n < end:
            # a stray 68 seven bytes before a 68 looks like a header, and its "length" is whatever
            # byte follows: a whole frame already here after it (good or broken) is the one, and the
            # stray 68 noise; else wait for the rest
            later = scan(buffer[start + 1 :])
            if later.frame is not None or later.problem is not None:
                return Scan(later.frame, later.problem, start + 1 + later.consumed, noise + 1 + later.noise)
            return Scan(None, None, start, noise)  # wait for the rest of the frame
        data_end = start + HEADER_LEN + length
        if buffer[data_end] != checksum(buffer[start:data_end]):
            return Scan(None, "checksum", start + 1, noise)  # a later 68 may still open a good frame
        if buffer[data_end + 1] != END:
            return Scan(None, "bad_end", start + 1, noise)
        frame = Frame(
            decode_address(buffer[start + 1 : start + 7]),
            buffer[start + 8],
            bytes((b - DATA_OFFSET) & 0xFF for b in buffer[start + HEADER_LEN : data_end]),
        )
        return Scan(frame, None, end, noise)


def decode_frame(raw: bytes) -> Frame:
    """Exactly one frame (with or without preamble) -> Frame; ValueError saying what is wrong."""
    result = scan(raw)
    if result.frame is None:
        raise ValueError(result.problem or "incomplete frame")
    if result.consumed != len(raw) or result.noise:
        raise ValueError("bytes besides one frame")
    return result.frame


def describe_error(code: int) -> str:
    """The error byte of an error reply in words: ``0x02`` -> "no data requested (…)"."""
    words = [text for bit, text, _ in ERROR_BITS if code & bit]
    return "; ".join(words) if words else f"error byte 0x{code:02X} (no bit the standard names)"


def error_fix(code: int) -> str:
    fixes = [fix for bit, _, fix in ERROR_BITS if code & bit]
    return fixes[0] if fixes else "see the meter's manual"


# --- values -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identifier:
    """A data identifier fmc reads, and its format in the standard's notation (XXXXXX.XX)."""

    di: int
    name: str
    unit: str
    size: int  # bytes of BCD
    decimals: int
    signed: bool  # the top bit of the last (highest) byte is the sign
    energy: bool  # a cumulative kWh register (a meter reading); otherwise an instantaneous signal

    @property
    def text(self) -> str:
        return format_identifier(self.di)

    @property
    def format(self) -> str:
        whole = 2 * self.size - self.decimals
        return "X" * whole + ("." + "X" * self.decimals if self.decimals else "")

    @property
    def limit(self) -> float:
        """The largest magnitude the register shows (a signed one keeps its top bit for the sign)."""
        top = (8 if self.signed else 10) * 10 ** (2 * self.size - 1)
        return (top - 1) / 10**self.decimals


def _table() -> dict[int, Identifier]:
    rows: list[Identifier] = [
        Identifier(0x00000000, "combined active energy, total", "kWh", 4, 2, True, True),
        Identifier(0x00010000, "forward active energy, total", "kWh", 4, 2, False, True),
    ]
    for tariff in range(1, 5):
        rows.append(Identifier(0x00000000 | tariff << 8, f"combined active energy, tariff {tariff}", "kWh", 4, 2,
                               True, True))
        rows.append(Identifier(0x00010000 | tariff << 8, f"forward active energy, tariff {tariff}", "kWh", 4, 2,
                               False, True))
    for n, phase in enumerate("ABC", start=1):
        rows.append(Identifier(0x02010000 | n << 8, f"voltage, phase {phase}", "V", 2, 1, False, False))
        rows.append(Identifier(0x02020000 | n << 8, f"current, phase {phase}", "A", 3, 3, True, False))
        rows.append(Identifier(0x02030000 | n << 8, f"active power, phase {phase}", "kW", 3, 4, True, False))
    rows.append(Identifier(0x02030000, "active power, total", "kW", 3, 4, True, False))
    return {r.di: r for r in sorted(rows, key=lambda r: r.di)}


IDENTIFIERS: dict[int, Identifier] = _table()


def decode_value(ident: Identifier, raw: bytes) -> float:
    """BCD, lowest digits first, to a number in ``ident.unit``; BcdError for a nibble above 9."""
    if len(raw) != ident.size:
        raise BcdError(f"{ident.text} takes {ident.size} bytes, the reply has {len(raw)}")
    negative = False
    units = 0
    for k, b in enumerate(reversed(raw)):
        if k == 0 and ident.signed:
            negative, b = bool(b & 0x80), b & 0x7F
        hi, lo = b >> 4, b & 0x0F
        if hi > 9 or lo > 9:
            raise BcdError(f"{ident.text}: byte 0x{b:02X} is not two decimal digits (BCD {raw.hex(' ')})")
        units = units * 100 + hi * 10 + lo
    value = units / 10**ident.decimals
    return -value if negative else value


def encode_value(ident: Identifier, value: float) -> bytes:
    """A number in ``ident.unit`` -> BCD, lowest digits first (what a meter sends); ValueError beyond its range."""
    magnitude = units = round(abs(value) * 10**ident.decimals)
    top = (8 if ident.signed else 10) * 10 ** (2 * ident.size - 1)
    if units >= top:
        raise ValueError(f"{value} does not fit {ident.text} ({ident.format} {ident.unit})")
    if value < 0 and not ident.signed:
        raise ValueError(f"{ident.text} has no sign: {value}")
    out = bytearray()
    for _ in range(ident.size):
        units, pair = divmod(units, 100)
        out.append((pair // 10) << 4 | pair % 10)
    if value < 0 and magnitude:
        out[-1] |= 0x80
    return bytes(out)


def read_reply_data(di: int, value: bytes) -> bytes:
    """The DATA of a read reply (before +0x33): the identifier, then the value."""
    return di.to_bytes(4, "little") + value
