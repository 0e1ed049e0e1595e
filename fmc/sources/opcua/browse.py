"""``fmc opcua browse``: walk a server's address space, recognise machines and meters, print TOML.

``browse_machines`` walks the address space and recognises machines: the OPC 40001 ``Machines``
folder, OPC 40501 machine tools (a ``Monitoring`` component with NC channels holding
``ChannelState`` or a ``MachineTool`` object, with or without an ``Equipment`` component), PackML
state machines, and otherwise objects that hold variables. Energy and volume counters (names with
``Energy``, ``kWh``, ``m3``, …) become meters, not signals: per machine (sub-meters) or, in a
folder that holds only such counters (``Meters``), site meters — such a folder is not a machine.
``BrowseReport.render_toml()`` prints a ``[[opcua]]`` table with its namespaces, one
``[[opcua.node]]`` per signal and per meter, by browse path, and the ``[[meter]]``,
``[[equipment_class]]`` and ``[[equipment]]`` tables that make it measure as pasted.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from asyncua import Client, ua
from pydantic import ValidationError

from fmc.core.config import problems_from
from fmc.sources.opcua import config as schema
from fmc.sources.opcua.connection import close_client, open_client

# Well-known namespaces get the aliases people use for them; others are named from their URI.
KNOWN_ALIASES = {
    "http://opcfoundation.org/UA/": schema.UA_ALIAS,
    "http://opcfoundation.org/UA/DI/": "di",
    "http://opcfoundation.org/UA/Machinery/": "machinery",
    "http://opcfoundation.org/UA/MachineTool/": "mt",
    "http://opcfoundation.org/UA/IA/": "ia",
    "http://opcfoundation.org/UA/PackML/": "packml",
    "http://opcfoundation.org/UA/CNC": "cnc",
}
MAX_NODES = 20_000  # a browse stops after this many nodes, whatever the depth
_BROWSE_CHUNK = 200
_MASK = ua.NodeClass.Object | ua.NodeClass.Variable
# Boolean, SByte .. Double, Number, Integer, UInteger (namespace-0 DataType ids)
_NUMERIC_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 26, 27, 28})
_TEXT_TYPES = frozenset({12, 21})  # String, LocalizedText
_SPEED_NAMES = re.compile(r"^(act(ual)?_?speed|speed|spindle_?speed|rotational_?speed|act_?rot_?speed)$", re.I)
_POWER_NAMES = re.compile(r"^(power|active_?power|act(ual)?_?power|power_?consumption|electrical_?power|p_?act)$",
                          re.I)


@dataclass(slots=True)
class FoundSignal:
    signal: str
    browse_path: list[tuple[str, str]]  # (namespace URI, BrowseName) from Objects down
    node_id: str
    value_type: str  # number | text | state


# energy and volume counters: offered as meters, not as signals
_ENERGY = re.compile(r"energy|kwh|mwh|(^|[^a-z])wh($|[^a-z])", re.I)
_VOLUME = re.compile(r"m3|m³|volume|flow_?total|totali[sz]er", re.I)
_UNIT_IN_NAME = re.compile(r"(?<![A-Za-z])(kWh|MWh|Wh|kW|MW|m3|m³|GJ|MJ)(?![a-z])", re.I)
_UNITS = {"kwh": "kWh", "mwh": "MWh", "wh": "Wh", "m3": "m3", "m³": "m3", "gj": "GJ", "mj": "MJ"}


def meter_kind(name: str) -> tuple[str, str] | None:
    """(carrier, unit) for a variable whose name says it counts energy or a volume, else None."""
    lower = name.lower()
    unit_match = _UNIT_IN_NAME.search(name)
    unit = _UNITS.get(unit_match.group(1).lower()) if unit_match else None
    if "steam" in lower:
        return "steam", "t" if re.search(r"(^|[^a-z])t($|[^a-z])", lower) else "kg"
    if "heat" in lower:
        return "heat", unit if unit in ("GJ", "MJ", "kWh", "MWh") else "GJ"
    if _VOLUME.search(name):
        if "gas" in lower:
            return "natural_gas", "m3"
        if re.search(r"waste|sewage|effluent|discharge", lower):
            return "wastewater", "m3"
        if re.search(r"reuse|recycl", lower):
            return "water_reused", "m3"
        if "water" in lower:
            return "water_intake", "m3"
        return None  # a volume of what? not guessed
    if _ENERGY.search(name):
        return "electricity", unit if unit in ("kWh", "MWh", "Wh") else "kWh"
    return None


@dataclass(slots=True)
class FoundMeter:
    meter: str  # the [[meter]] id and the node's meter
    display_name: str
    carrier: str
    unit: str
    browse_path: list[tuple[str, str]]
    node_id: str
    equipment: str | None = None  # the machine it measures (a sub-meter), None for a site meter


@dataclass(slots=True)
class FoundMachine:
    equipment: str
    display_name: str
    kind: str  # "machine_tool", "machine" (OPC 40001), "packml", "object"
    browse_path: list[tuple[str, str]]
    nc: bool | None  # numerically controlled: True for machine tools, unknown otherwise
    signals: list[FoundSignal] = field(default_factory=list)
    meters: list[FoundMeter] = field(default_factory=list)
    manufacturer: str | None = None
    model: str | None = None
    serial_number: str | None = None


@dataclass(slots=True)
class BrowseReport:
    endpoint: str
    namespace_array: list[str]
    machines: list[FoundMachine]
    nodes_visited: int = 0
    truncated: bool = False
    meters: list[FoundMeter] = field(default_factory=list)  # site meters (outside every machine)

    def all_meters(self) -> list[FoundMeter]:
        return [*self.meters, *(m for machine in self.machines for m in machine.meters)]

    def aliases(self) -> dict[str, str]:
        """alias -> URI for every namespace the found browse paths use."""
        used: list[str] = []
        paths = [s.browse_path for m in self.machines for s in m.signals] + [m.browse_path for m in self.all_meters()]
        for path in paths:
            for uri, _ in path:
                if uri not in used:
                    used.append(uri)
        return alias_namespaces(used)

    def render_toml(self, source_name: str = "plant") -> str:
        """An ``[[opcua]]`` table with namespaces and nodes, then the ``[[meter]]``, ``[[equipment_class]]``
        and ``[[equipment]]`` tables the nodes need to measure (states, consumption) as pasted."""
        aliases = self.aliases()
        alias_of = {uri: alias for alias, uri in aliases.items()}

        def path_of(browse_path: list[tuple[str, str]]) -> str:
            return ", ".join(_toml_str(f"{alias_of[uri]}:{name}") for uri, name in browse_path)

        meters = self.all_meters()
        lines = [
            f"# Found by `fmc opcua browse {self.endpoint}`: {len(self.machines)} machine(s), "
            f"{sum(len(m.signals) for m in self.machines)} signal(s), {len(meters)} meter(s)."
            + (" The browse stopped early (size limit): pass a larger --max-depth or browse parts." if self.truncated
               else ""),
            "# Check equipment ids against the equipment inventory and remove signals you do not need.",
            "[[opcua]]",
            f"name = {_toml_str(source_name)}",
            f"endpoint = {_toml_str(self.endpoint)}",
            "",
            "[opcua.namespaces]",
        ]
        lines += [f"{alias} = {_toml_str(uri)}" for alias, uri in aliases.items() if alias != schema.UA_ALIAS]
        for machine in self.machines:
            if not machine.signals:
                continue
            lines += ["", f"# {machine.display_name} ({_KIND_LABELS[machine.kind]})"]
            for signal in machine.signals:
                lines += [
                    "[[opcua.node]]",
                    f"equipment = {_toml_str(machine.equipment)}",
                    f"signal = {_toml_str(signal.signal)}",
                    f"browse_path = [{path_of(signal.browse_path)}]",
                ]
                if signal.value_type != "number":
                    lines.append(f"value_type = {_toml_str(signal.value_type)}")
        if meters:
            lines += ["", "# Meters: energy and volume counters, each feeding the [[meter]] of its id below"]
        for meter in meters:
            lines += [
                "[[opcua.node]]",
                'kind = "meter"',
                f"meter = {_toml_str(meter.meter)}",
                f"carrier = {_toml_str(meter.carrier)}",
                f"browse_path = [{path_of(meter.browse_path)}]",
            ]
        lines += self._meter_tables(meters)
        lines += self._class_tables()
        lines += self._equipment_tables()
        return "\n".join(lines) + "\n"

    def _meter_tables(self, meters: list[FoundMeter]) -> list[str]:
        if not meters:
            return []
        # a machine's counter is a sub-meter of the site's meter of the same carrier: counting both in
        # the enterprise's total would count that energy twice
        site_carriers = {m.carrier for m in meters if m.equipment is None}
        lines = ["", "# [[meter]]: how readings become consumption. Set max_rate_per_h (the most a counter can",
                 "# plausibly count per hour, in its unit): it makes resets countable and garbage rejectable."]
        for meter in meters:
            sub = meter.equipment is not None and meter.carrier in site_carriers
            lines += ["[[meter]]", f"id = {_toml_str(meter.meter)}", f"carrier = {_toml_str(meter.carrier)}",
                      'kind = "counter"', f"unit = {_toml_str(meter.unit)}  # check: the register's unit"]
            if sub:
                lines.append(f"enterprise_total = false  # {meter.equipment}'s share; the site meter counts it")
        return lines

    def _class_tables(self) -> list[str]:
        by_kind: dict[str, list[FoundSignal]] = {}
        for machine in self.machines:
            by_kind.setdefault(machine.kind, []).extend(machine.signals)
        lines: list[str] = []
        for kind, signals in by_kind.items():
            rules: list[list[str]] = []
            seen: set[str] = set()
            for signal in signals:
                rule = _rule_for(signal)
                if rule is not None and signal.signal not in seen:
                    seen.add(signal.signal)
                    rules.append(rule)
            if not rules:
                continue
            lines += ["", f"# How a {_KIND_LABELS[kind]}'s signals make its state (docs/plant-semantics.md)",
                      "[[equipment_class]]", f"name = {_toml_str(kind)}"]
            for rule in rules:
                lines += ["  [[equipment_class.rules]]", *(f"  {r}" for r in rule)]
        return lines

    def _equipment_tables(self) -> list[str]:
        """The machines as [[equipment]] (the ledger); delete them when the inventory CSV lists them."""
        if not self.machines:
            return []
        lines = ["", "# The equipment ledger (设备台账): delete these tables when your [inventory] csv lists the",
                 "# machines. nc = true for machine tools; say for the others whether they are NC."]
        sketch = io.StringIO()
        writer = csv.writer(sketch, lineterminator="\n")
        for machine in self.machines:
            lines += ["[[equipment]]", f"id = {_toml_str(machine.equipment)}",
                      f"name = {_toml_str(machine.display_name)}", f"kind = {_toml_str(machine.kind)}",
                      f"nc = {'true' if machine.nc else 'false'}", "connected = true"]
            writer.writerow([machine.equipment, machine.display_name, machine.kind,
                             "yes" if machine.nc else ("no" if machine.nc is False else ""),
                             machine.manufacturer or "", machine.model or "", machine.serial_number or ""])
        lines += ["", "# The same as ledger CSV rows (id, name, kind, nc, manufacturer, model, serial_number):"]
        lines += [f"# {row}" for row in sketch.getvalue().splitlines()]
        return lines


def _rule_for(signal: FoundSignal) -> list[str] | None:
    """An equipment_class rule reading this signal, when its name says what it is."""
    name = signal.signal
    builtin = {"channel_state": "opcua_channel_state", "machinery_item_state": "opcua_machinery_item_state",
               "machinery_operation_mode": "opcua_machinery_operation_mode", "packml_state": "packml_state"}
    base = re.sub(r"_\d+$", "", name)
    for prefix, rule_type in builtin.items():
        if base == prefix or base.startswith(prefix + "_"):
            return [f'type = "{rule_type}"', f"signal = {_toml_str(name)}"]
    if base in ("running", "run", "is_running", "machine_running"):
        return ['type = "map"', f"signal = {_toml_str(name)}", 'states = { "0" = "idle", "1" = "running" }']
    if base.startswith("spindle_speed") or base.endswith("_rate") or base in ("rate", "speed"):
        return ['type = "threshold"', f"signal = {_toml_str(name)}", "on_above = 0  # moving: running"]
    return None


_KIND_LABELS = {"machine_tool": "machine tool, OPC 40501", "machine": "machine, OPC 40001",
                "packml": "PackML state machine", "object": "object with variables"}


def _toml_str(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped)
    return f'"{escaped}"'


def alias_namespaces(uris: Sequence[str]) -> dict[str, str]:
    """alias -> URI: well-known aliases, else a short name from the URI's last word."""
    out: dict[str, str] = {}
    for uri in uris:
        alias = KNOWN_ALIASES.get(uri) or KNOWN_ALIASES.get(uri.rstrip("/") + "/")
        if alias is None:
            words = [w for w in re.split(r"[^A-Za-z0-9]+", uri) if w and w.lower() not in ("http", "https", "urn",
                                                                                          "www", "com", "org")]
            alias = (words[-1].lower() if words else "ns")[:24]
            if not re.match(r"[A-Za-z_]", alias):
                alias = f"ns_{alias}"
        base, n = alias, 2
        while alias in out and out[alias] != uri:
            alias, n = f"{base}{n}", n + 1
        out[alias] = uri
    return out


def equipment_id(name: str) -> str:
    """A readable id from a BrowseName: words joined by '-', lower case (non-ASCII letters kept)."""
    slug = re.sub(r"[^\w.]+", "-", name, flags=re.UNICODE).strip("-._").lower()
    return slug[:64] or "machine"


def _snake(name: str) -> str:
    """snake_case of a BrowseName; units stay one word: Main_Electricity_kWh -> main_electricity_kwh."""
    text = _UNIT_IN_NAME.sub(lambda m: f"_{m.group(1).lower().replace('³', '3')}_", name)
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)
    return re.sub(r"[^\w]+|_+", "_", text, flags=re.UNICODE).strip("_").lower() or "value"


@dataclass(slots=True)
class _Node:
    node_id: ua.NodeId
    browse_name: ua.QualifiedName
    display_name: str
    node_class: ua.NodeClass
    path: list[tuple[str, str]]
    children: list[_Node] = field(default_factory=list)
    data_type: int | None = None  # numeric id in namespace 0, or -1 for a type of another namespace
    value_rank: int = -1

    @property
    def name(self) -> str:
        return self.browse_name.Name or ""

    def child(self, *names: str) -> _Node | None:
        wanted = {n.lower() for n in names}
        for c in self.children:
            if c.name.lower() in wanted:
                return c
        return None

    def find(self, *path: str) -> _Node | None:
        node: _Node | None = self
        for step in path:
            node = node.child(step) if node is not None else None
        return node

    def variables(self) -> list[_Node]:
        return [c for c in self.children if c.node_class == ua.NodeClass.Variable]

    def objects(self) -> list[_Node]:
        return [c for c in self.children if c.node_class == ua.NodeClass.Object]


class _Walker:
    def __init__(self, client: Client, namespace_array: list[str], max_depth: int) -> None:
        self.client = client
        self.namespace_array = namespace_array
        self.max_depth = max_depth
        self.visited = 0
        self.truncated = False
        self.seen: set[ua.NodeId] = set()

    def uri(self, index: int) -> str:
        return self.namespace_array[index] if index < len(self.namespace_array) else f"ns{index}"

    async def tree(self, root: ua.NodeId) -> _Node:
        top = _Node(root, ua.QualifiedName("Objects", 0), "Objects", ua.NodeClass.Object, [])
        level = [top]
        for _depth in range(self.max_depth):
            parents = [n for n in level if n.node_class == ua.NodeClass.Object and not self.truncated]
            if not parents:
                break
            level = []
            for start in range(0, len(parents), _BROWSE_CHUNK):
                chunk = parents[start : start + _BROWSE_CHUNK]
                for parent, refs in zip(chunk, await self._browse([p.node_id for p in chunk]), strict=True):
                    for ref in refs:
                        node_id = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
                        if node_id in self.seen or (node_id.NamespaceIndex == 0 and parent is top):
                            continue  # namespace-0 objects under Objects are the Server object and friends
                        self.seen.add(node_id)
                        self.visited += 1
                        if self.visited > MAX_NODES:
                            self.truncated = True
                            break
                        child = _Node(node_id, ref.BrowseName, ref.DisplayName.Text or ref.BrowseName.Name,
                                      ref.NodeClass, [*parent.path, (self.uri(ref.BrowseName.NamespaceIndex),
                                                                     ref.BrowseName.Name)])
                        parent.children.append(child)
                        level.append(child)
        await self._variable_types(top)
        return top

    async def _browse(self, node_ids: list[ua.NodeId]) -> list[list[ua.ReferenceDescription]]:
        params = ua.BrowseParameters(
            View=ua.ViewDescription(), RequestedMaxReferencesPerNode=0,
            NodesToBrowse=[ua.BrowseDescription(
                NodeId=n, BrowseDirection=ua.BrowseDirection.Forward,
                ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences, 0), IncludeSubtypes=True,
                NodeClassMask=int(_MASK), ResultMask=int(ua.BrowseResultMask.All),
            ) for n in node_ids],
        )
        results = await self.client.uaclient.browse(params)
        out: list[list[ua.ReferenceDescription]] = []
        for result in results:
            refs = list(result.References or [])
            point = result.ContinuationPoint
            while point:
                more = await self.client.uaclient.browse_next(
                    ua.BrowseNextParameters(ReleaseContinuationPoints=False, ContinuationPoints=[point]))
                refs.extend(more[0].References or [])
                point = more[0].ContinuationPoint
            out.append(refs)
        return out

    async def _variable_types(self, top: _Node) -> None:
        variables: list[_Node] = []
        stack = [top]
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if node.node_class == ua.NodeClass.Variable:
                variables.append(node)
        for start in range(0, len(variables), 500):
            chunk = variables[start : start + 500]
            reads = []
            for v in chunk:
                reads.append(ua.ReadValueId(NodeId=v.node_id, AttributeId=ua.AttributeIds.DataType))
                reads.append(ua.ReadValueId(NodeId=v.node_id, AttributeId=ua.AttributeIds.ValueRank))
            values = await self.client.uaclient.read(ua.ReadParameters(NodesToRead=reads))
            for i, v in enumerate(chunk):
                data_type, rank = values[2 * i], values[2 * i + 1]
                if data_type.StatusCode.is_good() and isinstance(data_type.Value.Value, ua.NodeId):
                    t = data_type.Value.Value
                    v.data_type = t.Identifier if t.NamespaceIndex == 0 and isinstance(t.Identifier, int) else -1
                if rank.StatusCode.is_good() and isinstance(rank.Value.Value, int):
                    v.value_rank = rank.Value.Value


def _value_type(var: _Node) -> str | None:
    """number | text | state for a scalar variable we can store; None for others."""
    if var.value_rank not in (-1, -3, -2) or var.data_type is None:
        return None
    if var.data_type in _NUMERIC_TYPES:
        return "number"
    if var.data_type in _TEXT_TYPES:
        return "text"
    if var.data_type in (-1, 29):  # a companion-spec type (usually an enumeration) or Enumeration itself
        return "state"
    return None


def _signal(var: _Node, name: str, value_type: str | None = None) -> FoundSignal | None:
    kind = value_type or _value_type(var)
    if kind is None:
        return None
    return FoundSignal(name, var.path, var.node_id.to_string(), kind)


def _state_signal(state_machine: _Node | None, name: str) -> FoundSignal | None:
    """A state machine's CurrentState (text such as "Executing"), or a plain state variable."""
    if state_machine is None:
        return None
    if state_machine.node_class == ua.NodeClass.Variable and state_machine.name != "CurrentState":
        return _signal(state_machine, name, "state")
    current = state_machine if state_machine.name == "CurrentState" else state_machine.child("CurrentState")
    if current is None:
        return None
    return FoundSignal(name, current.path, current.node_id.to_string(), "state")


def _is_machine_tool(node: _Node) -> bool:
    """OPC 40501: a Monitoring component with an NC channel (ChannelState) or a MachineTool object;
    servers often leave the Equipment component out, so it is not required."""
    monitoring = node.child("Monitoring")
    if monitoring is None:
        return False
    return (node.child("Equipment") is not None or monitoring.child("MachineTool") is not None
            or any(o.child("ChannelState") is not None for o in monitoring.objects()))


def _packml_state(node: _Node) -> _Node | None:
    for name in ("BaseStateMachine", "State", "StateMachine"):
        sm = node.child(name)
        if sm is not None and sm.child("CurrentState") is not None:
            return sm
    status = node.child("Status")
    if status is not None and status.child("StateCurrent") is not None:
        return status.child("StateCurrent")
    return None


def _is_packml(node: _Node) -> bool:
    uri = node.path[-1][0] if node.path else ""
    sm = _packml_state(node)
    return sm is not None and ("packml" in uri.lower() or node.child("Admin") is not None
                               or sm.name == "BaseStateMachine" or "packml" in sm.path[-1][0].lower())


def _add(signals: list[FoundSignal], signal: FoundSignal | None) -> None:
    if signal is None:
        return
    taken = {s.signal for s in signals}
    name, n = signal.signal, 2
    while name in taken:
        name, n = f"{signal.signal}_{n}", n + 1
    signal.signal = name
    signals.append(signal)


def _machinery_signals(node: _Node, signals: list[FoundSignal]) -> None:
    blocks = node.child("MachineryBuildingBlocks") or node
    _add(signals, _state_signal(blocks.child("MachineryItemState"), "machinery_item_state"))
    # a machine tool's OPC 40501 OperationMode (manual/automatic) keeps the plain name
    name = "machinery_operation_mode" if any(s.signal == "operation_mode" for s in signals) else "operation_mode"
    _add(signals, _state_signal(blocks.child("MachineryOperationMode"), name))


def _machine_tool_signals(node: _Node, signals: list[FoundSignal]) -> None:
    monitoring = node.child("Monitoring")
    assert monitoring is not None
    machine_tool = monitoring.child("MachineTool")
    if machine_tool is not None:
        mode = machine_tool.child("OperationMode")
        if mode is not None:
            _add(signals, _signal(mode, "operation_mode", "state"))
        _power(machine_tool, signals)
    channels = [o for o in monitoring.objects() if o.child("ChannelState") is not None]
    for channel in channels:
        name = "channel_state" if len(channels) == 1 else f"channel_state_{_snake(channel.name)}"
        state = channel.child("ChannelState")
        assert state is not None
        _add(signals, _signal(state, name, "state"))
    spindles = [o for o in monitoring.objects() if "spindle" in o.name.lower()]
    for spindle in spindles:
        speed = next((v for v in spindle.variables() if _SPEED_NAMES.match(v.name)), None)
        if speed is not None:
            name = "spindle_speed" if len(spindles) == 1 else f"spindle_speed_{_snake(spindle.name)}"
            _add(signals, _signal(speed, name, "number"))
    production = node.child("Production")
    if production is not None:
        program = production.find("ActiveProgram", "State")
        _add(signals, _state_signal(program, "program_state"))


def _power(node: _Node, signals: list[FoundSignal]) -> None:
    power = next((v for v in node.variables() if _POWER_NAMES.match(v.name)), None)
    if power is not None:
        _add(signals, _signal(power, "power", "number"))


def _identification(machine: FoundMachine, node: _Node, values: dict[ua.NodeId, str]) -> None:
    ident = node.child("Identification")
    if ident is None:
        return
    for attr, names in (("manufacturer", ("Manufacturer",)), ("model", ("Model", "ProductCode")),
                        ("serial_number", ("SerialNumber",))):
        var = ident.child(*names)
        if var is not None and var.node_id in values:
            setattr(machine, attr, values[var.node_id])


def _describe(node: _Node, kind: str) -> FoundMachine:
    machine = FoundMachine(equipment_id(node.name), node.display_name, kind, node.path,
                           True if kind == "machine_tool" else None)
    signals = machine.signals
    if kind == "machine_tool":
        _machine_tool_signals(node, signals)
        _machinery_signals(node, signals)
    elif kind == "machine":
        _machinery_signals(node, signals)
    elif kind == "packml":
        _add(signals, _state_signal(_packml_state(node), "packml_state"))
    if kind != "object":
        _power(node, signals)
        monitoring = node.child("Monitoring")
        if monitoring is not None and kind != "machine_tool":
            _power(monitoring, signals)
    if kind == "object" or not signals:  # nothing of a companion spec (a loom with Running and a rate)
        for var in node.variables():
            if meter_kind(var.name) is not None:
                continue
            name = "power" if _POWER_NAMES.match(var.name) else (
                "spindle_speed" if _SPEED_NAMES.match(var.name) else _snake(var.name))
            _add(signals, _signal(var, name))
    return machine


def _counters(node: _Node, depth: int) -> list[_Node]:
    """Number variables named like energy or volume counters, in ``node`` and ``depth`` levels below."""
    found = [v for v in node.variables() if _value_type(v) == "number" and meter_kind(v.name) is not None]
    if depth > 0:
        for child in node.objects():
            if child.name != "Identification":
                found += _counters(child, depth - 1)
    return found


def _machine_meters(machine: FoundMachine, node: _Node) -> None:
    for var in _counters(node, 2):
        carrier, unit = meter_kind(var.name) or ("", "")
        meter_id = f"{machine.equipment}-{_snake(var.name)}"[:64]
        machine.meters.append(FoundMeter(meter_id, var.display_name, carrier, unit, var.path,
                                         var.node_id.to_string(), machine.equipment))


def _meter_folder(node: _Node) -> list[FoundMeter] | None:
    """The site meters of an object whose number variables are all counters (a ``Meters`` folder), else None."""
    numbers = [v for v in node.variables() if _value_type(v) == "number"]
    counters = [v for v in numbers if meter_kind(v.name) is not None]
    if not counters or (len(counters) < len(numbers) and node.name.lower() not in ("meters", "metering", "energy")):
        return None
    out = []
    for var in counters:
        carrier, unit = meter_kind(var.name) or ("", "")
        out.append(FoundMeter(_snake(var.name)[:64], var.display_name, carrier, unit, var.path,
                              var.node_id.to_string()))
    return out


def _classify(node: _Node) -> str | None:
    if _is_machine_tool(node):
        return "machine_tool"
    if _is_packml(node):
        return "packml"
    if node.child("MachineryBuildingBlocks") is not None or node.child("MachineryItemState") is not None:
        return "machine"
    return None


def find_machines(objects: _Node, site_meters: list[FoundMeter] | None = None) -> list[tuple[_Node, str]]:
    """Machines in a browsed tree, outermost first; nothing inside a found machine is a second machine.
    An object that holds only counters (a ``Meters`` folder) is no machine: its counters are added to
    ``site_meters``."""
    found: list[tuple[_Node, str]] = []
    machines_folder = next((c for c in objects.objects() if c.name == "Machines"), None)
    claimed: set[int] = set()
    if machines_folder is not None:  # OPC 40001: every object in Objects/Machines is a machine
        for node in machines_folder.objects():
            found.append((node, _classify(node) or "machine"))
            claimed.add(id(node))

    def walk(node: _Node) -> None:
        for child in node.objects():
            if id(child) in claimed or child is machines_folder:
                continue
            kind = _classify(child)
            if kind is not None:
                found.append((child, kind))
                continue
            walk(child)

    walk(objects)

    def plain(node: _Node) -> None:  # objects holding variables, outside every machine found
        for child in node.objects():
            if id(child) in claimed or child is machines_folder or any(child is m for m, _ in found):
                continue
            meters = _meter_folder(child)
            if meters is not None:
                if site_meters is not None:
                    site_meters.extend(meters)
                plain(child)  # a sub-folder may still hold a machine
            elif any(_value_type(v) for v in child.variables()):
                found.append((child, "object"))
            else:
                plain(child)

    plain(objects)
    return found


async def browse_machines(
    endpoint: str,
    connection: schema.OpcUaConnection | None = None,
    *,
    max_depth: int = 8,
    timeout: float = 10.0,
) -> BrowseReport:
    """Connect (``connection`` gives security and identity; its endpoint is replaced) and find machines."""
    if max_depth < 1:
        raise ValueError("max_depth must be at least 1")
    try:
        if connection is None:
            cfg = schema.OpcUaConnection(endpoint=endpoint, timeout_s=timeout)
        else:  # only the connection settings (a whole [[opcua]] source may be passed)
            settings = {key: getattr(connection, key) for key in schema.OpcUaConnection.model_fields}
            cfg = schema.OpcUaConnection.model_validate({**settings, "endpoint": endpoint})
    except ValidationError as e:  # one sentence, as fmc check gives it, not pydantic's text
        raise ValueError("; ".join(f"{setting} {problem}" + (f": {fix}" if fix else "")
                                   for setting, problem, fix in problems_from(e))) from None
    connected = await open_client(cfg, session_name="fmc browse")
    client = connected.client
    try:
        namespace_array = [str(u) for u in (await client.get_namespace_array())]
        walker = _Walker(client, namespace_array, max_depth)
        objects = await walker.tree(ua.NodeId(ua.ObjectIds.ObjectsFolder, 0))
        machines = []
        ident_vars: list[_Node] = []
        site_meters: list[FoundMeter] = []
        for node, kind in find_machines(objects, site_meters):
            machine = _describe(node, kind)
            machines.append((machine, node))
            ident = node.child("Identification")
            if ident is not None:
                ident_vars.extend(v for v in ident.variables() if v.data_type in _TEXT_TYPES)
        values: dict[ua.NodeId, str] = {}
        if ident_vars:
            results = await client.uaclient.read(ua.ReadParameters(
                NodesToRead=[ua.ReadValueId(NodeId=v.node_id, AttributeId=ua.AttributeIds.Value) for v in ident_vars]))
            for var, dv in zip(ident_vars, results, strict=True):
                value = dv.Value.Value if dv.Value is not None else None
                if isinstance(value, ua.LocalizedText):
                    value = value.Text
                if isinstance(value, str) and value:
                    values[var.node_id] = value
        for machine, node in machines:
            _identification(machine, node, values)
        _unique_equipment_ids([m for m, _ in machines])
        for machine, node in machines:  # named after the machine's final id
            _machine_meters(machine, node)
        _unique_meter_ids([*site_meters, *(meter for m, _ in machines for meter in m.meters)])
        return BrowseReport(endpoint, namespace_array, [m for m, _ in machines], walker.visited, walker.truncated,
                            site_meters)
    finally:
        await close_client(client)


def _unique_equipment_ids(machines: list[FoundMachine]) -> None:
    seen: dict[str, int] = {}
    for machine in machines:
        base = machine.equipment
        if base in seen:
            seen[base] += 1
            machine.equipment = f"{base}-{seen[base]}"
        else:
            seen[base] = 1


def _unique_meter_ids(meters: list[FoundMeter]) -> None:
    seen: dict[str, int] = {}
    for meter in meters:
        base = meter.meter
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            meter.meter = f"{base}-{seen[base]}"
