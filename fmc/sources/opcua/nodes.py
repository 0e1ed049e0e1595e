"""Namespaces and nodes: aliases resolved by URI, NodeId strings, browse paths, the server's limits.

A restarted server may number its namespaces differently, so every session reads the
NamespaceArray and resolves each alias by its URI (``resolve_aliases``) before it turns the
configured ``node_id`` strings and browse paths into NodeIds (``resolve_nodes``, browse paths in
batches of TranslateBrowsePathsToNodeIds). ``read_operation_limits`` reads the server's per-call
limits; ``_read_params`` builds the Read requests of the session, its polling and ``fmc check``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from asyncua import Client, ua

from fmc.sources.opcua import config as schema

DEFAULT_ITEMS_PER_CALL = 1000  # monitored items per CreateMonitoredItems, unless the server says fewer
DEFAULT_NODES_PER_READ = 1000
DEFAULT_PATHS_PER_CALL = 1000
_OBJECTS_FOLDER = ua.NodeId(ua.ObjectIds.ObjectsFolder, 0)
_HIERARCHICAL = ua.NodeId(ua.ObjectIds.HierarchicalReferences, 0)
_NAMESPACE_ARRAY = ua.NodeId(ua.ObjectIds.Server_NamespaceArray, 0)
_LIMITS = {
    "read": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    "items": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
    "paths": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
}

_S = ua.StatusCodes
# the node cannot deliver values at all: a configuration error, retried at the next connect
_NODE_UNUSABLE = frozenset({
    _S.BadNodeIdUnknown, _S.BadNodeIdInvalid, _S.BadAttributeIdInvalid, _S.BadNotReadable,
    _S.BadUserAccessDenied, _S.BadIndexRangeInvalid, _S.BadNoMatch, _S.BadBrowseNameInvalid,
})


async def read_namespace_array(client: Client) -> list[str]:
    [dv] = await client.uaclient.read(_read_params([_NAMESPACE_ARRAY]))
    dv.StatusCode.check()
    return list(dv.Value.Value or [])


def resolve_aliases(aliases: dict[str, str], namespace_array: Sequence[str]) -> tuple[dict[str, int], dict[str, str]]:
    """(alias -> index for URIs the server has, alias -> URI for those it lacks)."""
    index_by_uri = {uri: i for i, uri in enumerate(namespace_array)}
    found: dict[str, int] = {}
    missing: dict[str, str] = {}
    for alias, uri in aliases.items():
        if uri in index_by_uri:
            found[alias] = index_by_uri[uri]
        else:
            missing[alias] = uri
    return found, missing


def _namespace_index(ref: str | None, uri: str | None, indexes: dict[str, int],
                     namespace_array: Sequence[str]) -> int:
    if uri is not None:
        try:
            return list(namespace_array).index(uri)
        except ValueError:
            raise LookupError(f"namespace URI {uri!r} is not on the server") from None
    if ref is None:
        return 0
    if ref.isdigit():
        return int(ref)
    if ref not in indexes:
        raise LookupError(f"namespace alias {ref!r} names a URI the server does not have")
    return indexes[ref]


def node_id_from_text(text: str, indexes: dict[str, int], namespace_array: Sequence[str]) -> ua.NodeId:
    parsed = schema.parse_node_id(text)
    ns = _namespace_index(parsed.namespace, parsed.namespace_uri, indexes, namespace_array)
    ident = parsed.identifier
    if parsed.kind == "i":
        return ua.NodeId(int(ident), ns, ua.NodeIdType.Numeric)
    if parsed.kind == "g":
        return ua.NodeId(uuid.UUID(ident), ns, ua.NodeIdType.Guid)
    if parsed.kind == "b":
        return ua.NodeId(base64.b64decode(ident), ns, ua.NodeIdType.ByteString)
    return ua.NodeId(ident, ns, ua.NodeIdType.String)


def browse_path_request(path: Sequence[str], indexes: dict[str, int]) -> ua.BrowsePath:
    elements = []
    for element in path:
        ref, name = schema.parse_browse_element(element)
        ns = _namespace_index(ref, None, indexes, ())
        elements.append(ua.RelativePathElement(
            ReferenceTypeId=_HIERARCHICAL, IsInverse=False, IncludeSubtypes=True,
            TargetName=ua.QualifiedName(name, ns),
        ))
    return ua.BrowsePath(StartingNode=_OBJECTS_FOLDER, RelativePath=ua.RelativePath(Elements=elements))


async def read_operation_limits(client: Client) -> dict[str, int]:
    """The server's per-call limits (0 or unreadable: our defaults)."""
    defaults = {"read": DEFAULT_NODES_PER_READ, "items": DEFAULT_ITEMS_PER_CALL, "paths": DEFAULT_PATHS_PER_CALL}
    try:
        values = await client.uaclient.read(_read_params([ua.NodeId(i, 0) for i in _LIMITS.values()]))
    except ua.UaStatusCodeError:
        return defaults
    limits = dict(defaults)
    for key, dv in zip(_LIMITS, values, strict=True):
        value = dv.Value.Value if dv.Value is not None else None
        if dv.StatusCode.is_good() and isinstance(value, int) and value > 0:
            limits[key] = min(limits[key], value)
    return limits


def _read_params(node_ids: Sequence[ua.NodeId]) -> ua.ReadParameters:
    return ua.ReadParameters(
        MaxAge=0, TimestampsToReturn=ua.TimestampsToReturn.Both,
        NodesToRead=[ua.ReadValueId(NodeId=n, AttributeId=ua.AttributeIds.Value) for n in node_ids],
    )


@dataclass(slots=True)
class ResolvedNodes:
    nodes: list[tuple[schema.OpcUaNode, ua.NodeId]] = field(default_factory=list)
    failures: list[tuple[schema.OpcUaNode, str]] = field(default_factory=list)


async def resolve_nodes(
    client: Client, nodes: Sequence[schema.OpcUaNode], indexes: dict[str, int], namespace_array: Sequence[str],
    paths_per_call: int = DEFAULT_PATHS_PER_CALL,
) -> ResolvedNodes:
    """NodeIds for the configured nodes: NodeId strings with aliases, browse paths by translation."""
    out = ResolvedNodes()
    by_path: list[tuple[schema.OpcUaNode, ua.BrowsePath]] = []
    for node in nodes:
        try:
            if node.node_id is not None:
                out.nodes.append((node, node_id_from_text(node.node_id, indexes, namespace_array)))
            else:
                by_path.append((node, browse_path_request(node.browse_path or [], indexes)))
        except LookupError as e:
            out.failures.append((node, str(e)))
    for start in range(0, len(by_path), paths_per_call):
        chunk = by_path[start : start + paths_per_call]
        results = await client.uaclient.translate_browsepaths_to_nodeids([p for _, p in chunk])
        for (node, _), result in zip(chunk, results, strict=True):
            if not result.StatusCode.is_good() or not result.Targets:
                out.failures.append((node, f"browse path not found ({result.StatusCode.name})"))
                continue
            target = result.Targets[0].TargetId
            out.nodes.append((node, ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)))
    return out
