"""The ``[[modbus]]`` section: one Modbus link (a TCP address, a serial line, or a serial line behind a
TCP converter), the devices on it, and the registers read from each.

Reference: ``fmc/sources/modbus/README.md``; a section to copy: ``fmc/sources/modbus/sample.toml``.
``ModbusSource`` is the plugin's entry (``fmc.agent.plugin.SourceSettings``): it imports pymodbus
(and pyserial) only when a source is opened or checked, so a gateway without Modbus never loads it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator

from fmc.agent.plugin import CheckResult, Feeds, SourceContext
from fmc.core.carriers import CARRIERS
from fmc.core.config import ID_PATTERN, NAME_PATTERN, EnterpriseConfig, _Model
from fmc.sources.modbus.decode import REGISTERS
from fmc.sources.modbus.plan import BIT_FUNCTIONS, MAX_BITS, MAX_REGISTERS, Span

if TYPE_CHECKING:
    from fmc.sources.modbus.source import ModbusSource as RunningModbusSource

Function = Literal["coil", "discrete_input", "holding", "input"]
RegisterType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64"]
Order = Literal["big", "little"]
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]+|[A-Za-z0-9_.\-]+)$")


def _name(v: str | None) -> str | None:
    if v is not None and not re.fullmatch(NAME_PATTERN, v):
        raise ValueError("names become tags in the store: 1 to 128 characters, no control characters or backslashes")
    return v


def _host(v: str | None) -> str | None:
    if v is not None and not _HOST.fullmatch(v):
        raise ValueError("write a host name or an IP address such as \"192.168.1.50\" (no scheme, no port)")
    return v.strip("[]") if v is not None else v


class ModbusRegister(_Model):
    """One ``[[modbus.device.register]]``: where a value is, its type, and what it becomes."""

    function: Function = "holding"
    address: int = Field(ge=0, le=65535, description="0-based protocol address (manual's 40001 = holding 0)")
    type: RegisterType | None = None  # default: bool for coils and discrete inputs, uint16 for registers
    byte_order: Order | None = None  # default: the device's
    word_order: Order | None = None  # default: the device's
    scale: float = 1.0
    offset: float = 0.0
    min: float | None = None  # a value (after scale and offset) below this is rejected, not stored
    max: float | None = None
    equipment: str | None = None  # default: the device's equipment
    signal: str | None = None
    meter: str | None = None
    carrier: str | None = None

    _names = field_validator("equipment", "signal", "meter")(lambda cls, v: _name(v))

    @model_validator(mode="after")
    def _checks(self) -> ModbusRegister:
        where = f"{self.function} {self.address}"
        bits = self.function in BIT_FUNCTIONS
        if self.type is None:
            object.__setattr__(self, "type", "bool" if bits else "uint16")
        if bits and self.type != "bool":
            raise ValueError(f"{where}: a {self.function} is one bit: leave out type or write type = \"bool\"")
        if not bits and self.type == "bool":
            raise ValueError(f"{where}: type = \"bool\" is for function = \"coil\" or \"discrete_input\"; "
                             "a register is int16, uint16, int32, uint32, float32, int64, uint64 or float64")
        if self.address + self.count > 65536:
            raise ValueError(f"{where}: a {self.type} spans {self.count} registers and would end past address 65535")
        if self.type == "bool" and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError(f"{where}: scale and offset apply to numbers, not to a bool")
        if self.type == "bool" and (self.byte_order is not None or self.word_order is not None):
            raise ValueError(f"{where}: byte_order and word_order apply to registers, not to a bool")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"{where}: min ({self.min:g}) is larger than max ({self.max:g})")
        is_meter = self.meter is not None or self.carrier is not None
        if is_meter:
            if self.signal is not None or self.equipment is not None:
                raise ValueError(f"{where}: a register is a meter reading (meter, carrier) or an equipment signal "
                                 "(equipment, signal), not both")
            if self.meter is None or self.carrier is None:
                raise ValueError(f"{where}: a meter reading needs both meter = \"…\" (the [[meter]] id) and "
                                 "carrier = \"…\"")
            if self.carrier not in CARRIERS:
                raise ValueError(f"{where}: carrier = {self.carrier!r} is not one of: {', '.join(CARRIERS)}")
            if self.type == "bool":
                raise ValueError(f"{where}: a meter reading is a number: read it from a holding or input register")
        elif self.signal is None:
            raise ValueError(f"{where}: say what the value becomes: signal = \"…\" (with the device's or the "
                             "register's equipment), or meter = \"…\" and carrier = \"…\"")
        return self

    @property
    def count(self) -> int:
        """Registers (bits) the value spans."""
        return REGISTERS[self.type or "uint16"]

    @property
    def is_meter(self) -> bool:
        return self.meter is not None


class ModbusDevice(_Model):
    """One ``[[modbus.device]]``: a unit id on the link, how to poll it, and its registers."""

    unit: int = Field(ge=0, le=255, description="the device's unit id (slave address): 1-247 on a serial line")
    name: str | None = None  # for logs and fmc check; default "unit <n>"
    host: str | None = None  # transport = "tcp" only: this device's own address (default: the section's)
    port: int | None = Field(default=None, ge=1, le=65535)
    equipment: str | None = None  # the equipment of its signal registers, unless a register names its own
    poll_interval_s: float = Field(default=1.0, ge=0.05, le=86_400)
    timeout_s: float = Field(default=1.0, gt=0, le=60, description="how long to wait for each answer")
    retries: int = Field(default=2, ge=0, le=10, description="requests sent again after a timeout")
    byte_order: Order = "big"
    word_order: Order = "big"
    max_gap: int = Field(default=16, ge=0, le=MAX_REGISTERS - 1,
                         description="unused addresses read across to join two values in one request")
    max_registers: int = Field(default=MAX_REGISTERS, ge=1, le=MAX_REGISTERS)
    max_bits: int = Field(default=MAX_BITS, ge=1, le=MAX_BITS)
    # `[[modbus.device.register]]` in the file (the attribute name `register` belongs to pydantic)
    registers: list[ModbusRegister] = Field(alias="register", min_length=1)

    _names = field_validator("name", "equipment")(lambda cls, v: _name(v))
    _hosts = field_validator("host")(lambda cls, v: _host(v))

    @model_validator(mode="after")
    def _checks(self) -> ModbusDevice:
        who = self.label
        for i, reg in enumerate(self.registers):
            if reg.signal is not None and reg.equipment is None and self.equipment is None:
                raise ValueError(f"{who} register[{i}] ({reg.function} {reg.address}): signal {reg.signal!r} needs "
                                 "an equipment: set equipment = \"…\" on the device or the register")
        seen: dict[tuple[str, str], int] = {}
        for i, reg in enumerate(self.registers):
            key = ("meter", reg.meter) if reg.meter is not None else (self.equipment_of(reg), reg.signal or "")
            if key in seen:
                what = f"meter {reg.meter!r}" if reg.meter is not None else f"equipment {key[0]!r} signal {key[1]!r}"
                raise ValueError(f"{who} register[{seen[key]}] and register[{i}] both write {what}: "
                                 "give each register its own name")
            seen[key] = i
        return self

    @property
    def label(self) -> str:
        return f"unit {self.unit}" + (f" ({self.name})" if self.name else "")

    def equipment_of(self, reg: ModbusRegister) -> str:
        return reg.equipment or self.equipment or ""

    def spans(self) -> list[Span]:
        return [Span(r.function, r.address, r.count) for r in self.registers]

    def signal_equipment(self) -> set[str]:
        return {self.equipment_of(r) for r in self.registers if not r.is_meter}


class ModbusSource(_Model):
    """One ``[[modbus]]`` table: a link and its devices. The plugin's entry (``SourceSettings``)."""

    section: ClassVar[str] = "modbus"

    name: str = Field(pattern=ID_PATTERN)
    transport: Literal["tcp", "rtu", "rtu_over_tcp"] = "tcp"
    host: str | None = None  # tcp, rtu_over_tcp
    port: int = Field(default=502, ge=1, le=65535)
    serial_port: str | None = None  # rtu: the serial device, e.g. "/dev/ttyUSB0"
    baudrate: int = Field(default=9600, ge=50, le=4_000_000)
    parity: Literal["N", "E", "O"] = "E"  # the Modbus serial line spec's default: even
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    share_connection: bool = False  # tcp: devices at one host:port use one connection, one request at a time
    reconnect_min_s: float = Field(default=1.0, gt=0, description="backoff of a device that stopped answering")
    reconnect_max_s: float = Field(default=60.0, gt=0)
    device: list[ModbusDevice] = Field(min_length=1)

    _hosts = field_validator("host")(lambda cls, v: _host(v))

    @model_validator(mode="after")
    def _checks(self) -> ModbusSource:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be smaller than reconnect_min_s")
        serial = self.transport == "rtu"
        if serial and self.serial_port is None:
            raise ValueError("transport = \"rtu\" reads a serial line: set serial_port = \"/dev/ttyUSB0\" (the "
                             "RS-485 adapter), or use transport = \"rtu_over_tcp\" for a serial-to-Ethernet converter")
        if not serial and self.serial_port is not None:
            raise ValueError(f"serial_port is for transport = \"rtu\"; transport = \"{self.transport}\" connects to "
                             "host and port: remove serial_port or set transport = \"rtu\"")
        if serial and self.host is not None:
            raise ValueError("transport = \"rtu\" reads serial_port, not a host: remove host, or use "
                             "transport = \"rtu_over_tcp\" for a converter")
        for i, dev in enumerate(self.device):
            if (dev.host is not None or dev.port is not None) and self.transport != "tcp":
                raise ValueError(f"device[{i}] ({dev.label}): a device's own host and port are for transport = "
                                 "\"tcp\"; the devices of a serial line share the section's")
            if self.transport == "tcp" and dev.host is None and self.host is None:
                raise ValueError(f"device[{i}] ({dev.label}) has no host: set host = \"192.168.1.50\" on the "
                                 "section (or on the device)")
            if self.transport != "tcp" and not 1 <= dev.unit <= 247:
                raise ValueError(f"device[{i}]: unit {dev.unit} cannot be addressed on a serial line: use 1 to 247")
        if self.transport == "rtu_over_tcp" and self.host is None:
            raise ValueError("transport = \"rtu_over_tcp\" needs host = \"…\" (the converter's address) and its port")
        links: dict[tuple[object, ...], dict[int, int]] = {}
        for i, dev in enumerate(self.device):
            units = links.setdefault(self.link_key(i), {})
            if dev.unit in units:
                raise ValueError(f"device[{units[dev.unit]}] and device[{i}] are both unit {dev.unit} at one address: "
                                 "each device on a line has its own unit id")
            units[dev.unit] = i
        seen: dict[tuple[str, str], int] = {}
        for i, dev in enumerate(self.device):
            for reg in dev.registers:
                key = ("meter", reg.meter) if reg.meter is not None else (dev.equipment_of(reg), reg.signal or "")
                if key in seen and seen[key] != i:
                    raise ValueError(f"device[{seen[key]}] and device[{i}] both write {key[0]} {key[1]!r}: "
                                     "give each value its own name")
                seen[key] = i
        return self

    @classmethod
    def check_group(cls, sources: Sequence[ModbusSource]) -> None:
        """Rules over every [[modbus]] entry: a serial port is opened by one section (exclusively)."""
        ports = [s.serial_port for s in sources if s.transport == "rtu"]
        twice = sorted({p for p in ports if ports.count(p) > 1 and p is not None})
        if twice:
            raise ValueError(f"serial_port {twice[0]!r} is in two [[modbus]] sections: a serial line is opened by "
                             "one section only; put all devices of the line into one section")

    def link_key(self, index: int) -> tuple[object, ...]:
        """Devices with one key share a connection (and wait for each other's answers)."""
        dev = self.device[index]
        if self.transport != "tcp":
            return (self.transport,)
        address = (dev.host or self.host, dev.port or self.port)
        return address if self.share_connection else (*address, dev.unit, index)

    def endpoint(self, index: int) -> str:
        """Where a device is, for people: "192.168.1.50:502" or "/dev/ttyUSB0"."""
        if self.transport == "rtu":
            return str(self.serial_port)
        dev = self.device[index]
        host = dev.host or self.host or ""
        return f"[{host}]:{dev.port or self.port}" if ":" in host else f"{host}:{dev.port or self.port}"

    def open_source(self, ctx: SourceContext) -> RunningModbusSource:
        from fmc.sources.modbus.source import ModbusSource as RunningModbusSource

        return RunningModbusSource(self, ctx.enterprise, ctx.ingest, ctx.metrics, ctx.log)

    async def check(self, enterprise: EnterpriseConfig, timeout: float) -> CheckResult:
        from fmc.sources.modbus.check import check_modbus

        return await check_modbus(self, timeout=timeout)

    def feeds(self) -> Feeds:
        equipment: set[str] = set()
        meters: set[str] = set()
        for dev in self.device:
            equipment |= dev.signal_equipment()
            meters |= {r.meter for r in dev.registers if r.meter is not None}
        return Feeds(frozenset(equipment), frozenset(meters))

    def relative_to(self, base: Path) -> Self:
        return self  # no file paths (serial_port names a device, not a file of the config's folder)
