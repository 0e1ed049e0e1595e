"""``[[opcua]]`` sources: one OPC UA server each, its security, and the nodes read from it.

The models follow ``fmc.agent.config``: frozen, unknown keys refused, and every error says what is
wrong and how to fix it (``fmc.agent.config.problems_from`` adds the setting path, e.g.
``opcua[0].node[3].deadband``). Nothing here opens a file or a socket: certificate paths are
checked when the source connects (``fmc check`` reports them), and relative paths are taken
from the config file's folder by ``OpcUaSource.relative_to``.

User documentation: ``fmc/sources/opcua/README.md``.
"""

from __future__ import annotations

import base64
import binascii
import re
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from fmc.agent.plugin import CheckResult, Feeds, SourceContext
from fmc.core.carriers import CARRIERS
from fmc.core.config import ID_PATTERN, NAME_PATTERN, EnterpriseConfig, _Model

if TYPE_CHECKING:
    from fmc.sources.opcua.source import OpcUaSource as RunningOpcUaSource

# The OPC UA namespace (index 0 on every server) has a fixed alias; other namespaces are named
# in [opcua.namespaces] because their index may change when a server restarts.
UA_NAMESPACE_URI = "http://opcfoundation.org/UA/"
UA_ALIAS = "ua"
DEFAULT_APPLICATION_URI = "urn:fmc:{hostname}:client"
ALIAS_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,31}$")
SECURITY_POLICIES = ("None", "Basic256Sha256")
_ENDPOINT = re.compile(r"^opc\.tcp://(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+)(:(\d{1,5}))?(/\S*)?$")
# "ns=<index or alias>;" or "nsu=<uri>;" then one identifier: i= numeric, s= string, g= guid, b= base64
_NODE_ID = re.compile(r"^(?:ns=(?P<ns>[^;]+);|nsu=(?P<nsu>[^;]+);)?(?P<kind>[isgb])=(?P<ident>.+)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class NodeIdText:
    """A NodeId as written in the config: the namespace is an index, an alias or a URI."""

    namespace: str | None  # "2", "mt", or None (namespace 0, or given by uri)
    namespace_uri: str | None  # from the standard "nsu=" form
    kind: str  # i, s, g or b
    identifier: str

    @property
    def alias(self) -> str | None:
        """The alias to look up in [opcua.namespaces], or None for a numeric index or a URI."""
        if self.namespace is None or self.namespace.isdigit():
            return None
        return self.namespace


def parse_node_id(text: str) -> NodeIdText:
    """Split a NodeId string; ValueError with a fix when it has the wrong form."""
    m = _NODE_ID.fullmatch(text.strip())
    if m is None:
        raise ValueError(
            f"node_id {text!r} is not a NodeId: write it like \"ns=mt;s=Machine1.Spindle.Speed\", "
            "\"ns=2;i=1001\" or \"i=2258\" (ns= takes a namespace alias from [opcua.namespaces] or an index)"
        )
    ns, nsu, kind, ident = m.group("ns"), m.group("nsu"), m.group("kind"), m.group("ident")
    if ns is not None and not ns.isdigit() and not ALIAS_PATTERN.fullmatch(ns):
        raise ValueError(f"node_id {text!r}: ns={ns} is neither a namespace index nor an alias name")
    if ns is not None and ns.isdigit() and int(ns) > 65535:
        raise ValueError(f"node_id {text!r}: namespace index {ns} is larger than 65535")
    if kind == "i" and not (ident.isdigit() and int(ident) < 2**32):
        raise ValueError(f"node_id {text!r}: i= takes a whole number from 0 to 4294967295")
    if kind == "g":
        try:
            uuid.UUID(ident)
        except ValueError:
            raise ValueError(f"node_id {text!r}: g= takes a GUID like 72962b91-fa75-4ae6-8d28-b404dc7daf63") from None
    if kind == "b":
        try:
            base64.b64decode(ident, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"node_id {text!r}: b= takes base64 text") from None
    return NodeIdText(ns, nsu, kind, ident)


def parse_browse_element(element: str) -> tuple[str, str]:
    """'mt:Monitoring' -> ('mt', 'Monitoring'); the part before the first ':' names the namespace."""
    prefix, sep, name = element.partition(":")
    if not sep or not prefix or not name:
        raise ValueError(
            f"browse_path element {element!r} needs a namespace: write \"alias:BrowseName\" with an alias "
            f"from [opcua.namespaces], or \"{UA_ALIAS}:Name\" for the OPC UA namespace"
        )
    if not prefix.isdigit() and not ALIAS_PATTERN.fullmatch(prefix):
        raise ValueError(f"browse_path element {element!r}: {prefix!r} is neither an alias nor a namespace index")
    return prefix, name


class Deadband(_Model):
    """Report a change only when the value moved by more than this (OPC UA DataChangeFilter)."""

    type: Literal["absolute", "percent"]
    value: float = Field(ge=0)

    @model_validator(mode="after")
    def _percent(self) -> Deadband:
        if self.type == "percent" and self.value > 100:
            raise ValueError("a percent deadband is a share of the variable's EURange: use 0 to 100")
        return self


class OpcUaNode(_Model):
    """One ``[[opcua.node]]``: where the value is and what it becomes — a machine's signal
    (``kind = "signal"``: equipment + signal, the ``signal`` measurement) or a meter's reading
    (``kind = "meter"``: meter + carrier, the ``meter_reading`` measurement a ``[[meter]]`` takes)."""

    kind: Literal["signal", "meter"] = "signal"
    equipment: str | None = None
    signal: str | None = None
    meter: str | None = None
    carrier: str | None = None
    node_id: str | None = None
    browse_path: list[str] | None = None
    mode: Literal["subscribe", "poll"] = "subscribe"
    sampling_interval_ms: float = Field(default=1000.0, ge=0, le=3_600_000)
    queue_size: int = Field(default=1, ge=1, le=10_000)
    deadband: Deadband | None = None
    poll_interval_s: float | None = Field(default=None, ge=0.05, le=86_400)
    scale: float = 1.0
    offset: float = 0.0
    value_type: Literal["number", "text", "state"] = "number"

    @field_validator("equipment", "signal", "meter")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(NAME_PATTERN, v):
            raise ValueError(
                "names become tags in the store: 1 to 128 characters, no control characters or backslashes"
            )
        return v

    @field_validator("carrier")
    @classmethod
    def _carrier(cls, v: str | None) -> str | None:
        if v is not None and v not in CARRIERS:
            raise ValueError(f"carrier {v!r} is not one of: {', '.join(CARRIERS)}")
        return v

    @property
    def where(self) -> str:
        """How logs and messages name this node: equipment/signal, or meter <id>."""
        return f"meter {self.meter}" if self.kind == "meter" else f"{self.equipment}/{self.signal}"

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str | None) -> str | None:
        if v is not None:
            parse_node_id(v)
        return v

    @field_validator("browse_path")
    @classmethod
    def _browse_path(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("browse_path is empty: list the BrowseNames from Objects down, e.g. [\"mt:Machine1\", …]")
        for element in v:
            parse_browse_element(element)
        return v

    @model_validator(mode="after")
    def _checks(self) -> OpcUaNode:
        if self.kind == "signal":
            if self.equipment is None or self.signal is None:
                raise ValueError("a signal node needs equipment and signal "
                                 "(or kind = \"meter\" with meter and carrier)")
            if self.meter is not None or self.carrier is not None:
                raise ValueError(f"{self.equipment}/{self.signal}: meter and carrier are for kind = \"meter\"; "
                                 "remove them or set kind = \"meter\"")
        else:
            if self.meter is None or self.carrier is None:
                raise ValueError("kind = \"meter\" needs meter (the [[meter]] id it feeds) and carrier "
                                 f"(one of {', '.join(CARRIERS)})")
            if self.equipment is not None or self.signal is not None:
                raise ValueError(f"meter {self.meter}: equipment and signal are for kind = \"signal\"; remove them")
            if self.value_type != "number":
                raise ValueError(f"meter {self.meter}: a meter reading is a number; remove value_type")
        where = self.where
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError(f"{where}: set either node_id or browse_path (exactly one)")
        if self.value_type != "number" and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError(f"{where}: scale and offset apply to value_type = \"number\" only")
        if self.deadband is not None and self.value_type != "number":
            raise ValueError(f"{where}: a deadband applies to value_type = \"number\" only")
        if self.deadband is not None and self.mode == "poll":
            raise ValueError(f"{where}: a deadband is a subscription filter; remove it or use mode = \"subscribe\"")
        return self

    def namespace_refs(self) -> list[str]:
        """Aliases (or indexes) this node's address uses."""
        if self.node_id is not None:
            parsed = parse_node_id(self.node_id)
            return [parsed.namespace] if parsed.namespace is not None else []
        return [parse_browse_element(e)[0] for e in self.browse_path or []]

    def effective_poll_interval_s(self) -> float:
        """Polling period: poll_interval_s, else the sampling interval (at least 0.1 s)."""
        if self.poll_interval_s is not None:
            return self.poll_interval_s
        return max(0.1, self.sampling_interval_ms / 1000.0)

    def address(self) -> str:
        """The node's address as configured, for logs."""
        if self.node_id is not None:
            return self.node_id
        return "/".join(self.browse_path or [])


class OpcUaConnection(_Model):
    """How to reach one server: endpoint, security and identity (shared by sources and browse)."""

    endpoint: str
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    server_certificate: Path | None = None
    trusted_server_certificates: Path | None = None
    identity: Literal["anonymous", "username", "certificate"] | None = None
    username: str | None = None
    password: SecretStr | None = None
    application_uri: str = Field(default=DEFAULT_APPLICATION_URI, validate_default=True)
    timeout_s: float = Field(default=10.0, gt=0, le=600, description="each request's time limit")
    session_timeout_s: float = Field(
        default=120.0, ge=10, le=86_400,
        description="the server drops a session of ours that went silent after this (spares sessions)",
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        m = _ENDPOINT.fullmatch(v)
        if m is None:
            raise ValueError("must look like \"opc.tcp://host:4840\" (optionally with a path after the port)")
        if m.group(3) is not None and not 1 <= int(m.group(3)) <= 65535:
            raise ValueError("the port must be from 1 to 65535")
        return v

    @field_validator("application_uri")
    @classmethod
    def _application_uri(cls, v: str) -> str:
        uri = v.replace("{hostname}", socket.gethostname())
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+", uri):
            raise ValueError("must be a URI such as \"urn:fmc:gateway-01:client\" ({hostname} is replaced)")
        return uri

    @model_validator(mode="after")
    def _security(self) -> OpcUaConnection:
        secure = self.security_policy != "None"
        if self.security_mode is None:  # the natural mode for the policy
            object.__setattr__(self, "security_mode", "SignAndEncrypt" if secure else "None")
        if secure and self.security_mode == "None":
            raise ValueError(
                f"security_policy = \"{self.security_policy}\" needs security_mode = \"Sign\" or \"SignAndEncrypt\""
            )
        if not secure and self.security_mode != "None":
            raise ValueError(
                f"security_mode = \"{self.security_mode}\" needs security_policy = \"Basic256Sha256\""
            )
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together: set both (make them with `fmc opcua cert`)")
        if self.identity is None:
            object.__setattr__(self, "identity", "username" if self.username is not None else "anonymous")
        needs_cert = secure or self.identity == "certificate"
        if needs_cert and self.certificate is None:
            why = "security_policy = \"Basic256Sha256\"" if secure else "identity = \"certificate\""
            raise ValueError(
                f"{why} needs a client certificate: set certificate and private_key "
                "(make a pair with `fmc opcua cert --out DIR`)"
            )
        if self.identity == "username" and (self.username is None or self.password is None):
            raise ValueError("identity = \"username\" needs username and password (password = \"${OPCUA_PASSWORD}\")")
        if self.identity != "username" and (self.username is not None or self.password is not None):
            raise ValueError(
                f"username/password are set but identity = \"{self.identity}\": "
                "remove them or set identity = \"username\""
            )
        if self.server_certificate is not None and self.trusted_server_certificates is not None:
            raise ValueError(
                "set server_certificate (pin one certificate) or trusted_server_certificates (a folder), not both"
            )
        if not secure and (self.server_certificate is not None or self.trusted_server_certificates is not None):
            raise ValueError(
                "server_certificate / trusted_server_certificates check the server only with security: "
                "set security_policy = \"Basic256Sha256\" or remove them"
            )
        return self

    @property
    def secure(self) -> bool:
        return self.security_policy != "None"

    def relative_to(self, base: Path) -> Self:
        """A copy whose relative file paths are taken from ``base`` (the config file's folder)."""
        update: dict[str, Path] = {}
        for key in ("certificate", "private_key", "server_certificate", "trusted_server_certificates"):
            value = getattr(self, key)
            if value is not None and not value.is_absolute():
                update[key] = base / value
        return self.model_copy(update=update)


class OpcUaSource(OpcUaConnection):
    """One ``[[opcua]]`` table: a server, how to reach it, and the nodes to read. The plugin's entry
    (``fmc.agent.plugin.SourceSettings``): asyncua and its crypto (~25 MB on a gateway) are imported
    only when a source is opened or checked."""

    section: ClassVar[str] = "opcua"

    name: str = Field(pattern=ID_PATTERN)
    timestamp: Literal["source", "server"] = "source"
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    watchdog_s: float = Field(
        default=30.0, ge=1, le=3600,
        description="reconnect when the server's CurrentTime or keep-alives stall for this long",
    )
    namespaces: dict[str, str] = Field(default_factory=dict, description="alias -> namespace URI")
    node: list[OpcUaNode] = Field(min_length=1)

    @field_validator("namespaces")
    @classmethod
    def _namespaces(cls, v: dict[str, str]) -> dict[str, str]:
        for alias, uri in v.items():
            if not ALIAS_PATTERN.fullmatch(alias):
                raise ValueError(
                    f"alias {alias!r}: use a short name of letters, digits, '_' or '-' starting with a letter, "
                    "e.g. mt = \"http://opcfoundation.org/UA/MachineTool/\""
                )
            if alias == UA_ALIAS and uri != UA_NAMESPACE_URI:
                raise ValueError(f"alias {UA_ALIAS!r} is the OPC UA namespace {UA_NAMESPACE_URI}; choose another alias")
            if not uri.strip():
                raise ValueError(f"alias {alias!r} has an empty namespace URI")
        return v

    @model_validator(mode="after")
    def _source(self) -> OpcUaSource:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be smaller than reconnect_min_s")
        known = set(self.namespaces) | {UA_ALIAS}
        problems: list[str] = []
        for i, node in enumerate(self.node):
            for ref in node.namespace_refs():
                if not ref.isdigit() and ref not in known:
                    problems.append(
                        f"node[{i}] ({node.where}) uses namespace alias {ref!r}, which "
                        f"[opcua.namespaces] does not define: add {ref} = \"<namespace URI>\""
                    )
        if problems:
            raise ValueError("; ".join(sorted(set(problems))))
        seen: dict[tuple[str | None, ...], int] = {}
        for i, node in enumerate(self.node):
            key = (node.kind, node.equipment, node.signal, node.meter)
            if key in seen:
                if node.kind == "meter":
                    raise ValueError(
                        f"node[{seen[key]}] and node[{i}] both feed meter {node.meter!r}: one node per meter "
                        "(two registers of one meter would mix their readings); give each its own meter id"
                    )
                raise ValueError(
                    f"node[{seen[key]}] and node[{i}] both write equipment {node.equipment!r} signal "
                    f"{node.signal!r}: give each node its own signal name"
                )
            seen[key] = i
        return self

    def namespace_uris(self) -> dict[str, str]:
        """Every alias the nodes may use, including the fixed ``ua`` alias for namespace 0."""
        return {UA_ALIAS: UA_NAMESPACE_URI, **self.namespaces}

    def open_source(self, ctx: SourceContext) -> RunningOpcUaSource:
        from fmc.sources.opcua.source import OpcUaSource as RunningOpcUaSource

        return RunningOpcUaSource(self, ctx.enterprise, ctx.ingest, ctx.metrics, ctx.log)

    async def check(self, enterprise: EnterpriseConfig, timeout: float) -> CheckResult:
        from fmc.sources.opcua.check import check_opcua

        return await check_opcua(self, timeout=timeout)

    def feeds(self) -> Feeds:
        # every name is fixed text (no templates): the check can tell exactly what this source feeds
        return Feeds(equipment=frozenset(n.equipment for n in self.node if n.equipment is not None),
                     meters=frozenset(n.meter for n in self.node if n.meter is not None))
