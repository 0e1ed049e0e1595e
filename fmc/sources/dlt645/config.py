"""The ``[[dlt645]]`` section: one RS-485 bus of DL/T 645-2007 electricity meters, over a serial port
or a transparent serial-to-Ethernet converter, and the meters on it.

Reference: ``fmc/sources/dlt645/README.md``; a section to copy: ``fmc/sources/dlt645/sample.toml``.
``Dlt645Source`` is the plugin's entry (``fmc.agent.plugin.SourceSettings``); pyserial is imported
only when a source is opened or checked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator

from fmc.agent.plugin import CheckResult, Feeds, SourceContext
from fmc.core.config import ID_PATTERN, NAME_PATTERN, EnterpriseConfig, _Model
from fmc.sources.dlt645.frame import ADDRESS_PATTERN, IDENTIFIERS, Identifier, parse_identifier

if TYPE_CHECKING:
    from fmc.sources.dlt645.source import Dlt645Source as RunningDlt645Source

CARRIER = "electricity"
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
FORWARD_ACTIVE_TOTAL = "00010000"


def _known(kind: str) -> str:
    return ", ".join(f"\"{i.text}\" ({i.name})" for i in IDENTIFIERS.values() if i.energy == (kind == "energy"))


def identifier(text: str, *, energy: bool) -> Identifier:
    """A configured data identifier, checked against the ones fmc can decode; ValueError with the list."""
    di = parse_identifier(text)
    ident = IDENTIFIERS.get(di)
    kind = "energy" if energy else "signal"
    if ident is None or ident.energy != energy:
        what = "an energy register (kWh)" if energy else "a voltage, current or power"
        raise ValueError(f"data identifier {text!r} is not {what} fmc reads; use one of: {_known(kind)}")
    return ident


def known_identifier(text: str) -> Identifier:
    """Any data identifier fmc decodes, energy or signal (``fmc dlt645 read``)."""
    ident = IDENTIFIERS.get(parse_identifier(text))
    if ident is None:
        raise ValueError(f"data identifier {text!r} is not one fmc reads; use one of: {_known('energy')}, "
                         f"{_known('signal')}")
    return ident


def register_wraps_at(ident: Identifier) -> float | None:
    """Where an energy register goes back to 0: 10^digits (XXXXXX.XX: 1000000 kWh, not 999999.99, which
    would lose the last 0.01 kWh of each wrap); None for a signed one, whose wrap the meter's manual gives."""
    return None if ident.signed else float(10 ** (2 * ident.size - ident.decimals))


class Dlt645Meter(_Model):
    """One ``[[dlt645.meter]]``: a meter's address, what its kWh feed, and its signals."""

    address: str = Field(description="the 12 digits on the nameplate (表号/通信地址)")
    meter: str | None = Field(default=None, description="meter id: the `meter` tag of its readings, a [[meter]]")
    energy: str = Field(default=FORWARD_ACTIVE_TOTAL, description="the data identifier of its cumulative kWh")
    equipment: str | None = None
    signals: dict[str, str] = Field(default_factory=dict, description="signal name -> data identifier")
    poll_interval_s: float | None = Field(default=None, ge=0.05, le=86_400)
    timeout_s: float | None = Field(default=None, gt=0, le=60)
    retries: int | None = Field(default=None, ge=0, le=10)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip().replace(" ", "")
        if not ADDRESS_PATTERN.fullmatch(v):
            raise ValueError(
                f"address {v!r} is not 12 digits: write the meter's communication address as printed on its "
                "nameplate, padded with zeros on the left, e.g. \"000012345678\" (find it with `fmc dlt645 scan`)"
            )
        if v == "999999999999":
            raise ValueError("999999999999 is the broadcast address of time sync, not a meter's: write the meter's own")
        return v

    @field_validator("energy")
    @classmethod
    def _energy(cls, v: str) -> str:
        return identifier(v, energy=True).text

    @field_validator("signals")
    @classmethod
    def _signals(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for name, text in v.items():
            if not re.fullmatch(NAME_PATTERN, name):
                raise ValueError(f"signal name {name!r}: names become tags: 1 to 128 characters, no control characters")
            try:
                out[name] = identifier(text, energy=False).text
            except ValueError as e:
                raise ValueError(f"signal {name!r}: {e}") from None
        return out

    @field_validator("meter", "equipment")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(NAME_PATTERN, v):
            raise ValueError("names become tags in the store: 1 to 128 characters, no control characters or "
                             "backslashes")
        return v

    @model_validator(mode="after")
    def _targets(self) -> Dlt645Meter:
        if self.signals and self.equipment is None:
            raise ValueError(f"meter {self.address}: signals need equipment = \"<the equipment id they belong to>\"")
        if self.equipment is not None and not self.signals:
            raise ValueError(
                f"meter {self.address}: equipment is set but no signals: add signals = {{ power = \"02030000\" }} "
                "or remove equipment"
            )
        if self.meter is None and not self.signals:
            raise ValueError(
                f"meter {self.address} feeds nothing: set meter = \"<meter id>\" for its kWh, or equipment and signals"
            )
        return self

    def reads(self) -> list[tuple[Identifier, str | None]]:
        """What one poll reads, in order: the energy register first (when it feeds a meter), then the
        signals; each with its signal name (None: the meter reading)."""
        out: list[tuple[Identifier, str | None]] = []
        if self.meter is not None:
            out.append((IDENTIFIERS[parse_identifier(self.energy)], None))
        out += [(IDENTIFIERS[parse_identifier(di)], name) for name, di in self.signals.items()]
        return out


class Dlt645Bus(_Model):
    """How to reach one bus: a serial port and its settings, or a converter's TCP port (shared by
    the source, ``fmc check`` and ``fmc dlt645 scan/read``)."""

    transport: Literal["serial", "tcp"] = "serial"
    port: str | int = Field(description="serial: the device (/dev/ttyUSB0, COM3); tcp: the converter's TCP port")
    host: str | None = Field(default=None, description="tcp: the converter's address")
    baudrate: int = 2400
    data_bits: Literal[7, 8] = 8
    parity: Literal["even", "odd", "none"] = "even"
    stop_bits: Literal[1, 2] = 1
    preamble: int = Field(default=4, ge=0, le=4, description="FE wake-up bytes sent before each request")

    @field_validator("baudrate")
    @classmethod
    def _baudrate(cls, v: int) -> int:
        if v not in BAUDRATES:
            raise ValueError(f"{v} is not a baud rate meters use: one of {', '.join(map(str, BAUDRATES))} "
                             "(DL/T 645-2007 meters default to 2400)")
        return v

    @model_validator(mode="after")
    def _bus(self) -> Self:
        if self.transport == "serial":
            if not isinstance(self.port, str) or not self.port.strip():
                raise ValueError("transport = \"serial\" takes port = \"/dev/ttyUSB0\" (the serial device, in quotes)")
            if self.host is not None:
                raise ValueError("host is for transport = \"tcp\" (a serial-to-Ethernet converter); remove it")
        else:
            if self.host is None or not self.host.strip():
                raise ValueError("transport = \"tcp\" needs host = \"<the converter's address>\"")
            if isinstance(self.port, str) or not 1 <= self.port <= 65535:
                raise ValueError("transport = \"tcp\" takes port = <the converter's TCP port, 1 to 65535, no quotes>")
        return self

    @property
    def where(self) -> str:
        """The bus as a person names it: the device, or host:port of the converter."""
        return str(self.port) if self.transport == "serial" else f"{self.host}:{self.port}"

    @property
    def framing(self) -> str:
        """``2400 8E1``: the serial settings as a meter's manual writes them."""
        return f"{self.baudrate} {self.data_bits}{self.parity[0].upper()}{self.stop_bits}"


class Dlt645Source(Dlt645Bus):
    """One ``[[dlt645]]`` table: a bus, how to reach it, the meters on it (polled in turn, one
    request on the bus at a time)."""

    section: ClassVar[str] = "dlt645"

    name: str = Field(pattern=ID_PATTERN)
    poll_interval_s: float = Field(default=60.0, ge=0.05, le=86_400)
    timeout_s: float = Field(default=1.0, gt=0, le=60, description="each request's time limit")
    retries: int = Field(default=2, ge=0, le=10)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    meter: list[Dlt645Meter] = Field(min_length=1)

    @model_validator(mode="after")
    def _source(self) -> Self:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be smaller than reconnect_min_s")
        seen: dict[str, int] = {}
        ids: dict[str, int] = {}
        for i, m in enumerate(self.meter):
            if m.address in seen:
                raise ValueError(f"meter[{seen[m.address]}] and meter[{i}] both have address {m.address}: "
                                 "two meters on one bus need two addresses")
            seen[m.address] = i
            if m.meter is not None:
                if m.meter in ids:
                    raise ValueError(f"meter[{ids[m.meter]}] and meter[{i}] both write meter {m.meter!r}: "
                                     "give each its own meter id")
                ids[m.meter] = i
        return self

    @classmethod
    def check_group(cls, sources: Sequence[Dlt645Source]) -> None:
        """Two sections on one bus would put two requests on the line at once: meters answer neither."""
        buses = [s.where for s in sources]
        dup = sorted({b for b in buses if buses.count(b) > 1})
        if dup:
            raise ValueError(f"two [[dlt645]] sources use the same bus {dup}: put all its meters in one section")

    def meter_poll_interval_s(self, m: Dlt645Meter) -> float:
        return m.poll_interval_s if m.poll_interval_s is not None else self.poll_interval_s

    def meter_timeout_s(self, m: Dlt645Meter) -> float:
        return m.timeout_s if m.timeout_s is not None else self.timeout_s

    def meter_retries(self, m: Dlt645Meter) -> int:
        return m.retries if m.retries is not None else self.retries

    def open_source(self, ctx: SourceContext) -> RunningDlt645Source:
        from fmc.sources.dlt645.source import Dlt645Source as RunningDlt645Source

        return RunningDlt645Source(self, ctx.enterprise, ctx.ingest, ctx.metrics, ctx.log)

    async def check(self, enterprise: EnterpriseConfig, timeout: float) -> CheckResult:
        import asyncio

        from fmc.sources.dlt645.check import check_bus

        return await asyncio.to_thread(check_bus, self, timeout)

    def feeds(self) -> Feeds:
        return Feeds(
            equipment=frozenset(m.equipment for m in self.meter if m.equipment is not None),
            meters=frozenset(m.meter for m in self.meter if m.meter is not None),
            wraps={m.meter: register_wraps_at(IDENTIFIERS[parse_identifier(m.energy)])
                   for m in self.meter if m.meter is not None},
        )

    def relative_to(self, base: Path) -> Self:
        return self  # a serial device path is absolute (or COM3); nothing to resolve
