"""Which requests read a device's registers: close registers of one function go in one request. Pure.

A request reads one function's contiguous range: at most 125 registers (holding, input) or 2000
bits (coils, discrete inputs) by the protocol, fewer when a device says so. Registers at most
``max_gap`` addresses apart share a request (the unrequested addresses between them are read and
ignored: one request costs a round trip, a few more registers cost next to nothing). Set
``max_gap = 0`` for a device that refuses to read addresses it does not define (it answers
"illegal data address").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BIT_FUNCTIONS = frozenset({"coil", "discrete_input"})
FUNCTIONS: tuple[str, ...] = ("coil", "discrete_input", "holding", "input")
MAX_REGISTERS = 125  # Modbus application protocol 1.1b3, 6.3/6.4: read holding / input registers
MAX_BITS = 2000  # 6.1/6.2: read coils / discrete inputs


@dataclass(frozen=True, slots=True)
class Span:
    """One value to read: its function, first address and how many registers (bits) it spans."""

    function: str
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class Block:
    """One read request and the values it serves (indexes into the spans given to ``plan_blocks``)."""

    function: str
    address: int
    count: int
    members: tuple[int, ...]

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.address + self.count


def plan_blocks(
    spans: Sequence[Span], max_gap: int, max_registers: int = MAX_REGISTERS, max_bits: int = MAX_BITS
) -> list[Block]:
    """The requests, in address order per function, that read every span: taken by address, a span
    joins the request before it when the gap between them is at most ``max_gap`` and the request
    stays within the limit of its function. Spans may overlap (two types read from one address)."""
    if max_gap < 0 or not 1 <= max_registers <= MAX_REGISTERS or not 1 <= max_bits <= MAX_BITS:
        raise ValueError("need max_gap >= 0, 1 <= max_registers <= 125 and 1 <= max_bits <= 2000")
    blocks: list[Block] = []
    for function in FUNCTIONS:
        limit = max_bits if function in BIT_FUNCTIONS else max_registers
        order = sorted((i for i, s in enumerate(spans) if s.function == function),
                       key=lambda i: (spans[i].address, spans[i].count))
        start = end = -1
        members: list[int] = []
        for i in order:
            span = spans[i]
            if span.count > limit:
                raise ValueError(f"{function} {span.address}: {span.count} in one value, more than one request "
                                 f"reads ({limit})")
            span_end = span.address + span.count
            if members and span.address - end <= max_gap and max(end, span_end) - start <= limit:
                members.append(i)
                end = max(end, span_end)
                continue
            if members:
                blocks.append(Block(function, start, end - start, tuple(members)))
            start, end, members = span.address, span_end, [i]
        if members:
            blocks.append(Block(function, start, end - start, tuple(members)))
    return blocks
