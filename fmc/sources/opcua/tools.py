"""Helpers behind ``fmc opcua cert`` and ``fmc opcua browse``.

``make_client_certificate`` makes the client's application instance certificate: self-signed,
RSA 2048, SHA-256, with the application URI the client announces in its SubjectAltName (a
mismatch is the classic BadCertificateUriInvalid), plus this host's name, and the key usages
OPC UA servers check (digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment, and
keyCertSign with cA=TRUE because it is self-signed; extendedKeyUsage clientAuth). The
certificate is written as DER (what OPC UA servers exchange and import), the key as PEM (PKCS#8).

``browse_machines`` walks a server's address space and recognises machines: the OPC 40001
``Machines`` folder, OPC 40501 machine tools (``Equipment`` and ``Monitoring`` components, NC
channels with ``ChannelState``), PackML state machines, and otherwise objects that hold
variables. ``BrowseReport.render_toml()`` prints a ``[[opcua]]`` table with its namespaces and
one ``[[opcua.node]]`` per signal found, by browse path, ready to paste into the agent file.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asyncua import Client, ua
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fmc.sources.opcua import config as schema
from fmc.sources.opcua.connection import close_client, open_client

KEY_BITS = 2048


# --- fmc opcua cert ---------------------------------------------------------------------------------


def make_client_certificate(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    application_uri: str,
    common_name: str,
    days: int = 3650,
    *,
    hostname: str | None = None,
    organization: str | None = None,
) -> tuple[Path, Path]:
    """Write a self-signed OPC UA client certificate (DER) and its private key (PEM); return the paths.

    The key file is created readable by its owner only. Existing files are replaced.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    application_uri = application_uri.replace("{hostname}", socket.gethostname())
    host = hostname or socket.gethostname()
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    name = x509.Name(attributes)
    now = dt.datetime.now(dt.UTC)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # a little in the past: a server whose clock is slightly behind must not see a future certificate
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(application_uri), x509.DNSName(host)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=True, data_encipherment=True,
                key_agreement=False, key_cert_sign=True, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
    )
    certificate = builder.sign(key, hashes.SHA256())
    cert_file, key_file = Path(cert_path), Path(key_path)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_private(key_file, key_pem)
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.DER))
    return cert_file, key_file


def _write_private(path: Path, data: bytes) -> None:
    # created 0600 from the start rather than chmod afterwards: no moment when others may read it
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# --- fmc opcua browse ------------------------------------------------------------------------------

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


@dataclass(slots=True)
class FoundMachine:
    equipment: str
    display_name: str
    kind: str  # "machine_tool", "machine" (OPC 40001), "packml", "object"
    browse_path: list[tuple[str, str]]
    nc: bool | None  # numerically controlled: True for machine tools, unknown otherwise
    signals: list[FoundSignal] = field(default_factory=list)
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

    def aliases(self) -> dict[str, str]:
        """alias -> URI for every namespace the found browse paths use."""
        used: list[str] = []
        for machine in self.machines:
            for signal in machine.signals:
                for uri, _ in signal.browse_path:
                    if uri not in used:
                        used.append(uri)
        return alias_namespaces(used)

    def render_toml(self, source_name: str = "plant") -> str:
        """A ``[[opcua]]`` table with namespaces and ``[[opcua.node]]`` entries, then an inventory sketch."""
        aliases = self.aliases()
        alias_of = {uri: alias for alias, uri in aliases.items()}
        lines = [
            f"# Found by `fmc opcua browse {self.endpoint}`: {len(self.machines)} machine(s), "
            f"{sum(len(m.signals) for m in self.machines)} signal(s)."
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
                path = ", ".join(_toml_str(f"{alias_of[uri]}:{name}") for uri, name in signal.browse_path)
                lines += [
                    "[[opcua.node]]",
                    f"equipment = {_toml_str(machine.equipment)}",
                    f"signal = {_toml_str(signal.signal)}",
                    f"browse_path = [{path}]",
                ]
                if signal.value_type != "number":
                    lines.append(f"value_type = {_toml_str(signal.value_type)}")
        # the equipment ledger is CSV; the sketch is that CSV, commented out, for what the browse cannot know
        lines += ["", "# Inventory sketch (equipment ledger CSV; check names, fill in category, nc, asset value):"]
        sketch = io.StringIO()
        writer = csv.writer(sketch, lineterminator="\n")
        writer.writerow(["id", "name", "kind", "nc", "manufacturer", "model", "serial_number"])
        for machine in self.machines:
            nc = "yes" if machine.nc else ("no" if machine.nc is False else "")
            writer.writerow([machine.equipment, machine.display_name, machine.kind, nc, machine.manufacturer or "",
                             machine.model or "", machine.serial_number or ""])
        lines += [f"# {row}" for row in sketch.getvalue().splitlines()]
        return "\n".join(lines) + "\n"


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
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return re.sub(r"[^\w]+", "_", text, flags=re.UNICODE).strip("_").lower() or "value"


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
    return node.child("Equipment") is not None and node.child("Monitoring") is not None


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
    else:
        for var in node.variables():
            name = "power" if _POWER_NAMES.match(var.name) else (
                "spindle_speed" if _SPEED_NAMES.match(var.name) else _snake(var.name))
            _add(signals, _signal(var, name))
    return machine


def _classify(node: _Node) -> str | None:
    if _is_machine_tool(node):
        return "machine_tool"
    if _is_packml(node):
        return "packml"
    if node.child("MachineryBuildingBlocks") is not None or node.child("MachineryItemState") is not None:
        return "machine"
    return None


def find_machines(objects: _Node) -> list[tuple[_Node, str]]:
    """Machines in a browsed tree, outermost first; nothing inside a found machine is a second machine."""
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
            if any(_value_type(v) for v in child.variables()):
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
    if connection is None:
        cfg = schema.OpcUaConnection(endpoint=endpoint, timeout_s=timeout)
    else:  # only the connection settings (a whole [[opcua]] source may be passed)
        settings = {key: getattr(connection, key) for key in schema.OpcUaConnection.model_fields}
        cfg = schema.OpcUaConnection.model_validate({**settings, "endpoint": endpoint})
    connected = await open_client(cfg, session_name="fmc browse")
    client = connected.client
    try:
        namespace_array = [str(u) for u in (await client.get_namespace_array())]
        walker = _Walker(client, namespace_array, max_depth)
        objects = await walker.tree(ua.NodeId(ua.ObjectIds.ObjectsFolder, 0))
        machines = []
        ident_vars: list[_Node] = []
        for node, kind in find_machines(objects):
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
        return BrowseReport(endpoint, namespace_array, [m for m, _ in machines], walker.visited, walker.truncated)
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
