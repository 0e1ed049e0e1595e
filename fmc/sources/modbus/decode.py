"""Register words to numbers and back, for every data type and byte/word order. Pure.

A Modbus register is 16 bits, sent high byte first. Values wider than one register span 2 or 4
consecutive registers, and devices disagree on two things, both settings of a register:

- ``word_order``: which register holds the most significant 16 bits. ``"big"`` (the first
  register, the Modbus convention) or ``"little"`` (the last: many energy meters and PLCs).
- ``byte_order``: the byte order inside each register. ``"big"`` (the protocol's) or ``"little"``
  (some converters and PLCs swap the two bytes of every register).

So a float32 whose bytes are A B C D (A most significant) arrives as registers ``AB CD`` (big/big,
"ABCD"), ``CD AB`` (word_order little, "CDAB"), ``BA DC`` (byte_order little, "BADC") or ``DC BA``
(both little, "DCBA"). tests/test_modbus_source.py checks every combination against pymodbus's own
``convert_from_registers``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Literal

DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64"]
Order = Literal["big", "little"]

DATA_TYPES: tuple[str, ...] = ("bool", "int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64")
# struct codes (big-endian) and the number of registers each type spans
_STRUCT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "int64": "q", "uint64": "Q",
           "float64": "d"}
REGISTERS: dict[str, int] = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "int64": 4,
                             "uint64": 4, "float64": 4}
FLOAT_TYPES = frozenset({"float32", "float64"})


def register_count(data_type: str) -> int:
    """How many registers (or, for ``bool``, bits) a value of this type spans."""
    return REGISTERS[data_type]


def _wire_bytes(words: Sequence[int], byte_order: str, word_order: str) -> bytes:
    """The value's bytes, most significant first, from the registers as they arrived."""
    ordered = words if word_order == "big" else list(reversed(words))
    swap = byte_order == "little"
    return b"".join(((w & 0xFF) << 8 | w >> 8).to_bytes(2, "big") if swap else w.to_bytes(2, "big")
                    for w in ordered)


def decode_words(words: Sequence[int], data_type: str, byte_order: str = "big", word_order: str = "big") -> int | float:
    """The value that ``words`` (registers in the order read, each 0..65535) hold.

    ValueError when the number of words does not fit the type or a word is not 16 bits."""
    if data_type not in _STRUCT:
        raise ValueError(f"{data_type!r} is not a register type: use one of {', '.join(_STRUCT)}")
    n = REGISTERS[data_type]
    if len(words) != n:
        raise ValueError(f"{data_type} spans {n} register(s), got {len(words)}")
    for w in words:
        if not 0 <= w <= 0xFFFF:
            raise ValueError(f"register value {w} is not 16 bits")
    value: int | float = struct.unpack(">" + _STRUCT[data_type], _wire_bytes(words, byte_order, word_order))[0]
    return value


def encode_value(value: int | float, data_type: str, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """The registers a device holding ``value`` sends (the inverse of ``decode_words``), for
    simulators and tests. ``struct.error`` when the value does not fit the type."""
    raw = struct.pack(">" + _STRUCT[data_type], value)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if byte_order == "little":
        words = [(w & 0xFF) << 8 | w >> 8 for w in words]
    return words if word_order == "big" else list(reversed(words))
