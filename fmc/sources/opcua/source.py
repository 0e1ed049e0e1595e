"""OPC UA source: one session per server, subscriptions and polling, every value to the ingest.

How it runs. ``start()`` starts a thread with an asyncio loop of its own (as paho's network thread
does for MQTT) and returns; ``stop(timeout)`` ends it. The loop runs ``run(stop_event)``, which
may also be awaited directly in any loop (tests, the benchmark). The thread keeps asyncua's
decoding and a blocking ``ingest.submit()`` (full queue: backpressure) off the agent's loop.

One session at a time. ``run`` connects, sets the session up, watches it, closes it, waits a
capped, jittered backoff and starts over: there is never a second session to the same endpoint,
however often the link drops, and each session asks the server to forget it after
``session_timeout_s`` if we vanish without closing it.

Every (re)connect: GetEndpoints, pick the endpoint with our policy and mode (or say what the
server offers), verify the server certificate against the pin or the trusted folder, open the
session, read the NamespaceArray and resolve every namespace alias by URI (a restarted server may
number them differently), resolve NodeIds and browse paths, then create one subscription per
(sampling interval, queue size) with monitored items in batches. Nodes the server will not
monitor (BadTooManyMonitoredItems, BadNotSupported, ...) and ``mode = "poll"`` nodes are read
with Read requests in batches instead.

The watchdog ends a session that is open but silent: no publish response (data or keep-alive)
for ``watchdog_s`` while subscriptions exist, the server's CurrentTime not advancing for
``watchdog_s``, or a CurrentTime read left unanswered. While no session is up, nothing is
emitted (the state tracker sees the silence) and ``fmc_source_connected{source}`` is 0.

The hot path (``_Session._on_publish``) works on asyncua's raw ``PublishResult`` rather than
its ``Subscription`` objects, which create a task and a ``Node`` per notification; the tags and
the encoded series of each node are made once per configuration.

User documentation: ``fmc/sources/opcua/README.md``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import random
import socket
import threading
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.crypto import security_policies
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from fmc.agent.metrics import AgentMetrics
from fmc.agent.plugin import MIN_TIMESTAMP_NS, CheckResult, IngestPort, MapResult, Rejection
from fmc.core.backoff import backoff_delay
from fmc.core.config import EnterpriseConfig
from fmc.core.lineprotocol import MAX_STRING_FIELD_BYTES, LineProtocolError, encode_series
from fmc.core.points import FieldValue, Point, Priority
from fmc.sources.opcua import config as schema

MAX_FUTURE_NS = 300 * 10**9  # a timestamp further ahead than this is a clock fault
_NULL_TIME_NS = -11_644_473_600 * 10**9  # 1601-01-01, OPC UA's "no timestamp": not a clock fault
# StatusCode bits 31..16 are severity and sub-code; bits 15..0 are info bits (overflow, limits).
# Quality keeps the former, so a Good value is exactly 0 even when the server flagged a queue
# overflow on it.
QUALITY_MASK = 0xFFFF0000
DEFAULT_ITEMS_PER_CALL = 1000  # monitored items per CreateMonitoredItems, unless the server says fewer
DEFAULT_NODES_PER_READ = 1000
DEFAULT_PATHS_PER_CALL = 1000
MAX_NOTIFICATIONS_PER_PUBLISH = 10_000
MIN_PUBLISHING_MS = 100.0
STABLE_SESSION_S = 10.0  # a session that lasted this long resets the reconnect backoff
CLOSE_TIMEOUT_S = 2.0
SUPERVISE_TICK_S = 0.25
_DETAIL_MAX = 120
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OBJECTS_FOLDER = ua.NodeId(ua.ObjectIds.ObjectsFolder, 0)
_HIERARCHICAL = ua.NodeId(ua.ObjectIds.HierarchicalReferences, 0)
_CURRENT_TIME = ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime, 0)
_NAMESPACE_ARRAY = ua.NodeId(ua.ObjectIds.Server_NamespaceArray, 0)
_LIMITS = {
    "read": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    "items": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
    "paths": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
}
_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
}
_MODES = {
    "None": ua.MessageSecurityMode.None_,
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
_TOKEN_TYPES = {
    "anonymous": ua.UserTokenType.Anonymous,
    "username": ua.UserTokenType.UserName,
    "certificate": ua.UserTokenType.Certificate,
}

_S = ua.StatusCodes
# the server will not monitor these nodes (or not at all): read them periodically instead
_POLL_INSTEAD = frozenset({
    _S.BadTooManyMonitoredItems, _S.BadNotSupported, _S.BadServiceUnsupported, _S.BadTooManySubscriptions,
    _S.BadMonitoredItemIdInvalid,
})
# the server refused the deadband filter: monitor without it
_FILTER_REFUSED = frozenset({
    _S.BadMonitoredItemFilterUnsupported, _S.BadFilterNotAllowed, _S.BadMonitoredItemFilterInvalid,
    _S.BadDeadbandFilterInvalid,
})
# the node cannot deliver values at all: a configuration error, retried at the next connect
_NODE_UNUSABLE = frozenset({
    _S.BadNodeIdUnknown, _S.BadNodeIdInvalid, _S.BadAttributeIdInvalid, _S.BadNotReadable,
    _S.BadUserAccessDenied, _S.BadIndexRangeInvalid, _S.BadNoMatch, _S.BadBrowseNameInvalid,
})
# the session is gone: reconnect
_SESSION_GONE = frozenset({
    _S.BadSessionClosed, _S.BadSessionIdInvalid, _S.BadSessionNotActivated, _S.BadSecureChannelClosed,
    _S.BadSecureChannelIdInvalid, _S.BadConnectionClosed, _S.BadServerHalted, _S.BadShutdown,
    _S.BadNoSubscription, _S.BadSubscriptionIdInvalid, _S.BadTimeout,
})



class OpcUaError(Exception):
    """A failure with a cause a person can act on. ``cause`` is short and stable (logs, tests)."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message


T = TypeVar("T")
# causes a retry cannot fix: logged as errors, not warnings
_NEEDS_A_PERSON = frozenset({
    "wrong_credentials", "identity_rejected", "client_certificate_untrusted", "certificate_uri_mismatch",
    "certificate_invalid", "certificate_file", "server_certificate_untrusted", "no_matching_security",
    "identity_not_offered", "endpoint_url_invalid",
})


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"


def _status_name(code: int) -> str:
    return ua.StatusCode(code).name


def _host_port(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.hostname}:{parts.port or 4840}"


# --- naming failures -------------------------------------------------------------------------------


def describe_failure(error: BaseException, cfg: schema.OpcUaConnection) -> OpcUaError:
    """One sentence a person can act on, for an error raised while connecting or in a session."""
    if isinstance(error, OpcUaError):
        return error
    where = _host_port(cfg.endpoint)
    if isinstance(error, ua.UaStatusCodeError):
        return _describe_status(error.code, cfg)
    if isinstance(error, ua.UaError) and "No matching endpoints" in str(error):
        return OpcUaError(
            "no_matching_security",
            f"the server at {cfg.endpoint} has no endpoint with security {cfg.security_policy}/{cfg.security_mode}: "
            "set security_policy and security_mode to what the server offers (fmc check lists it)",
        )
    if isinstance(error, socket.gaierror):
        return OpcUaError("no_server", f"cannot resolve the host name in {cfg.endpoint} ({error.strerror}): "
                                       "check `endpoint`")
    if isinstance(error, ConnectionRefusedError):
        return OpcUaError("no_server", f"connection refused by {where}: no OPC UA server listens there "
                                       "(is it running? right port in `endpoint`?)")
    if isinstance(error, TimeoutError):
        return OpcUaError("timeout", f"no answer from {where} within {cfg.timeout_s:g}s: wrong host or port in "
                                     "`endpoint`, a firewall in between, or a server too busy to answer")
    if isinstance(error, ConnectionError | EOFError):
        return OpcUaError("connection_closed", f"{where} closed the connection: is `endpoint` an OPC UA port, "
                                               "and does the server accept this client's security settings?")
    if isinstance(error, OSError):
        return OpcUaError("no_server", f"cannot connect to {where}: {error.strerror or error}")
    return OpcUaError("error", f"{type(error).__name__}: {error}"[:300])


def _describe_status(code: int, cfg: schema.OpcUaConnection) -> OpcUaError:
    name = _status_name(code)
    cert = cfg.certificate
    if code == _S.BadUserAccessDenied or (code == _S.BadIdentityTokenInvalid and cfg.identity == "username"):
        if cfg.identity == "username":
            return OpcUaError("wrong_credentials", f"the server refused user {cfg.username!r} ({name}): wrong "
                                                   "username or password; check `username` and `password`")
        return OpcUaError("wrong_credentials", f"the server refused this client's identity ({name}): it does not "
                                               f"grant access to identity = \"{cfg.identity}\"")
    if code in (_S.BadIdentityTokenRejected, _S.BadIdentityTokenInvalid):
        return OpcUaError("identity_rejected", f"the server does not accept identity = \"{cfg.identity}\" ({name}): "
                                               "use a sign-in it offers (username/password or a certificate)")
    if code in (_S.BadCertificateUntrusted, _S.BadSecurityChecksFailed):
        return OpcUaError(
            "client_certificate_untrusted",
            f"the server does not trust this client's certificate ({name}): add {cert} to the server's trusted "
            "certificates (many servers put it in a 'rejected' list to accept), then the agent reconnects by itself",
        )
    if code == _S.BadCertificateUriInvalid:
        return OpcUaError(
            "certificate_uri_mismatch",
            f"the server refused the client certificate because its application URI does not match the one the "
            f"client announces, {cfg.application_uri!r} ({name}): make a new certificate with "
            f"`fmc opcua cert --application-uri {cfg.application_uri}` or set application_uri to the certificate's URI",
        )
    if code == _S.BadCertificateTimeInvalid:
        return OpcUaError("certificate_invalid", f"the server says the client certificate {cert} has expired or is "
                                                 f"not yet valid ({name}): make a new one with `fmc opcua cert`")
    if code in (_S.BadCertificateUseNotAllowed, _S.BadCertificateInvalid, _S.BadCertificateHostNameInvalid,
                _S.BadCertificateRevoked, _S.BadCertificateIssuerRevoked):
        return OpcUaError("certificate_invalid", f"the server refused the client certificate {cert} ({name}): "
                                                 "make a new one with `fmc opcua cert`")
    if code == _S.BadSecurityPolicyRejected:
        return OpcUaError("no_matching_security", f"the server rejected security policy {cfg.security_policy} "
                                                  f"({name}): use one it offers (fmc check lists them)")
    if code == _S.BadTcpEndpointUrlInvalid:
        return OpcUaError("endpoint_url_invalid", f"the server has no endpoint {cfg.endpoint} ({name}): check the "
                                                  "path after the port in `endpoint`")
    if code in (_S.BadTooManySessions, _S.BadMaxConnectionsReached, _S.BadTcpServerTooBusy):
        return OpcUaError("server_busy", f"the server has no free session for this client ({name}); retrying")
    return OpcUaError("status", f"the server answered {name}: {ua.StatusCode(code).doc}")


# --- client certificate, server certificate, endpoint -------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ClientMaterial:
    certificate_der: bytes
    private_key_der: bytes


def _load_certificate(path: Any) -> x509.Certificate:
    data = path.read_bytes()
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError:
        return x509.load_pem_x509_certificate(data)


def certificate_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 thumbprint, the form OPC UA tools show (UaExpert, server certificate managers)."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # an identifier here, not a signature


def _load_client_material(cfg: schema.OpcUaConnection) -> _ClientMaterial | None:
    """The client certificate and key as DER, after checks that spare a round trip to the server."""
    if cfg.certificate is None or cfg.private_key is None:
        return None
    try:
        cert = _load_certificate(cfg.certificate)
    except FileNotFoundError:
        raise OpcUaError("certificate_file", f"certificate file {cfg.certificate} does not exist: make one with "
                                             "`fmc opcua cert --out DIR`") from None
    except (OSError, ValueError) as e:
        raise OpcUaError("certificate_file", f"certificate {cfg.certificate} cannot be read as a DER or PEM "
                                             f"X.509 certificate: {e}") from None
    try:
        key_data = cfg.private_key.read_bytes()
    except FileNotFoundError:
        raise OpcUaError("certificate_file", f"private key file {cfg.private_key} does not exist") from None
    except OSError as e:
        raise OpcUaError("certificate_file", f"private key {cfg.private_key} cannot be read: {e}") from None
    try:
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
        except ValueError:
            key = serialization.load_der_private_key(key_data, password=None)
    except (ValueError, TypeError) as e:
        raise OpcUaError("certificate_file", f"private key {cfg.private_key} is not an unencrypted PEM or DER "
                                             f"key: {e}") from None
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise OpcUaError("certificate_file", f"private key {cfg.private_key} does not belong to certificate "
                                             f"{cfg.certificate}")
    uris = certificate_uris(cert)
    if cfg.application_uri not in uris:
        made_for = ", ".join(repr(u) for u in uris) or "no application URI at all"
        raise OpcUaError(
            "certificate_uri_mismatch",
            f"certificate {cfg.certificate} was made for {made_for}, but this client announces application_uri "
            f"{cfg.application_uri!r}; servers refuse that (BadCertificateUriInvalid): make a new certificate with "
            f"`fmc opcua cert --application-uri {cfg.application_uri}` or set application_uri to the certificate's",
        )
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        valid = f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"
        raise OpcUaError("certificate_invalid", f"certificate {cfg.certificate} is valid from {valid}, not now: "
                                                "make a new one with `fmc opcua cert`")
    key_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return _ClientMaterial(cert.public_bytes(serialization.Encoding.DER), key_der)


def _first_certificate(der: bytes) -> bytes:
    """The leading certificate of a DER blob that may carry its chain after it."""
    if len(der) < 4 or der[0] != 0x30:
        return der
    if der[1] < 0x80:
        return der[: 2 + der[1]]
    n = der[1] & 0x7F
    length = int.from_bytes(der[2 : 2 + n], "big")
    return der[: 2 + n + length]


def verify_server_certificate(cfg: schema.OpcUaConnection, der: bytes) -> str | None:
    """Raise OpcUaError unless the server certificate is the pinned one or trusted by the folder.

    Returns a warning when nothing was configured to check it against (the connection is then
    encrypted, but to whoever answers).
    """
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise OpcUaError("server_certificate_untrusted", f"the server sent a certificate that cannot be read: {e}") \
            from None
    subject = cert.subject.rfc4514_string()
    described = f"{subject!r} (SHA-1 thumbprint {thumbprint(cert)})"
    if cfg.server_certificate is not None:
        try:
            pinned = _load_certificate(cfg.server_certificate)
        except OSError as e:
            raise OpcUaError("certificate_file", f"server_certificate {cfg.server_certificate} cannot be read: "
                                                 f"{e.strerror or e}") from None
        except ValueError as e:
            raise OpcUaError("certificate_file", f"server_certificate {cfg.server_certificate} is not a DER or PEM "
                                                 f"certificate: {e}") from None
        if pinned.public_bytes(serialization.Encoding.DER) != der:
            raise OpcUaError(
                "server_certificate_untrusted",
                f"the server presented certificate {described}, not the one pinned in server_certificate "
                f"({cfg.server_certificate}, thumbprint {thumbprint(pinned)}): if the server's certificate was "
                "renewed on purpose, replace the pinned file",
            )
        return None
    if cfg.trusted_server_certificates is not None:
        folder = cfg.trusted_server_certificates
        if not folder.is_dir():
            raise OpcUaError("certificate_file", f"trusted_server_certificates {folder} is not a folder")
        if _trusted_by_folder(cert, der, folder):
            return None
        raise OpcUaError(
            "server_certificate_untrusted",
            f"the server presented certificate {described}, which neither is in nor was issued by a certificate in "
            f"trusted_server_certificates ({folder}): if it is the right server, copy its certificate into that folder",
        )
    return (f"the server's certificate {described} is accepted without a check: set server_certificate or "
            "trusted_server_certificates to know it is the right server")


def _trusted_by_folder(cert: x509.Certificate, der: bytes, folder: Any) -> bool:
    now = datetime.now(UTC)
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        try:
            trusted = _load_certificate(path)
        except (OSError, ValueError):
            continue
        if trusted.public_bytes(serialization.Encoding.DER) == der:
            return True
        if trusted.subject != cert.issuer or not trusted.not_valid_before_utc <= now <= trusted.not_valid_after_utc:
            continue
        try:
            cert.verify_directly_issued_by(trusted)
        except (ValueError, TypeError, x509.InvalidSignature):
            continue
        return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    return False


def _policy_name(uri: str) -> str:
    return uri.rpartition("#")[2] or uri


def _mode_name(mode: ua.MessageSecurityMode) -> str:
    return {ua.MessageSecurityMode.None_: "None", ua.MessageSecurityMode.Sign: "Sign",
            ua.MessageSecurityMode.SignAndEncrypt: "SignAndEncrypt"}.get(mode, str(mode))


def choose_endpoint(cfg: schema.OpcUaConnection, endpoints: Sequence[ua.EndpointDescription]) -> ua.EndpointDescription:
    """The endpoint with the configured policy and mode and the identity; or an error naming what exists."""
    policy_uri = _POLICIES[cfg.security_policy].URI if cfg.secure else security_policies.SecurityPolicyNone.URI
    mode = _MODES[cfg.security_mode or "None"]
    tcp = [e for e in endpoints if e.EndpointUrl and e.EndpointUrl.startswith("opc.tcp")] or list(endpoints)
    matching = [e for e in tcp if e.SecurityPolicyUri == policy_uri and e.SecurityMode == mode]
    if not matching:
        offered = sorted({f"{_policy_name(e.SecurityPolicyUri)}/{_mode_name(e.SecurityMode)}" for e in tcp})
        raise OpcUaError(
            "no_matching_security",
            f"the server at {cfg.endpoint} offers no endpoint with security_policy = \"{cfg.security_policy}\" and "
            f"security_mode = \"{cfg.security_mode}\"; it offers: {', '.join(offered) or 'nothing'}: set "
            "security_policy and security_mode to one of these",
        )
    wanted = _TOKEN_TYPES[cfg.identity or "anonymous"]
    for endpoint in matching:
        tokens = endpoint.UserIdentityTokens or []
        if any(t.TokenType == wanted for t in tokens):
            return endpoint
    kinds = {ua.UserTokenType.Anonymous: "anonymous", ua.UserTokenType.UserName: "username",
             ua.UserTokenType.Certificate: "certificate", ua.UserTokenType.IssuedToken: "issued token"}
    offered_ids = sorted({kinds.get(t.TokenType, str(t.TokenType))
                          for e in matching for t in e.UserIdentityTokens or []})
    raise OpcUaError(
        "identity_not_offered",
        f"the server does not accept identity = \"{cfg.identity}\" on its {cfg.security_policy}/{cfg.security_mode} "
        f"endpoint; it accepts: {', '.join(offered_ids) or 'nothing'}",
    )


@dataclass(slots=True)
class ConnectedClient:
    """An open session and what was learned while opening it."""

    client: Client
    endpoint: ua.EndpointDescription
    warning: str | None = None


async def open_client(
    cfg: schema.OpcUaConnection, *, session_name: str = "fmc"
) -> ConnectedClient:
    """Open one session with the configured security and identity; raise OpcUaError naming the cause.

    The session is opened step by step rather than with ``Client.connect()``, which would also
    start asyncua's own supervisor and watchdog tasks; the source supervises the session itself.
    """
    material = _load_client_material(cfg)
    client = Client(cfg.endpoint, timeout=cfg.timeout_s)
    client.application_uri = cfg.application_uri
    client.name = "fmc"
    client.description = session_name
    client.product_uri = "urn:fmc"
    client.session_timeout = int(cfg.session_timeout_s * 1000)
    try:
        endpoints = await asyncio.wait_for(client.connect_and_get_server_endpoints(), cfg.timeout_s)
    except Exception as e:
        client.disconnect_socket()
        raise describe_failure(e, cfg) from e
    endpoint = choose_endpoint(cfg, endpoints)
    warning = None
    if cfg.secure:
        assert material is not None  # the config requires a certificate with security
        server_der = _first_certificate(endpoint.ServerCertificate or b"")
        warning = verify_server_certificate(cfg, server_der)
        await client.set_security(
            _POLICIES[cfg.security_policy], certificate=material.certificate_der,
            private_key=material.private_key_der, server_certificate=server_der,
            mode=_MODES[cfg.security_mode or "SignAndEncrypt"],
        )
    if cfg.identity == "certificate":
        assert material is not None
        client.user_certificate = x509.load_der_x509_certificate(material.certificate_der)
        client.user_private_key = serialization.load_der_private_key(material.private_key_der, password=None)
    try:
        await asyncio.wait_for(_create_session(client, cfg), cfg.timeout_s * 2)
    except BaseException as e:
        client.disconnect_socket()  # also after a timeout: a cancelled connect leaves the socket open
        if isinstance(e, asyncio.CancelledError):
            raise
        raise describe_failure(e, cfg) from e
    return ConnectedClient(client, endpoint, warning)


async def _create_session(client: Client, cfg: schema.OpcUaConnection) -> None:
    await client.connect_socket()
    await client.send_hello()
    await client.open_secure_channel()
    await client.create_session()
    try:
        await _activate(client, cfg)
    except BaseException:
        # a session that was created but never activated: tell the server at once when we can
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.uaclient.close_session(False), 1.0)
        raise


async def _activate(client: Client, cfg: schema.OpcUaConnection) -> None:
    username = password = None
    if cfg.identity == "username":
        assert cfg.username is not None and cfg.password is not None
        username, password = cfg.username, cfg.password.get_secret_value()
    await client.activate_session(username=username, password=password, certificate=client.user_certificate)


async def reactivate_session(client: Client, cfg: schema.OpcUaConnection) -> bool:
    """Open a new connection and secure channel and re-activate the existing session on it.

    OPC UA Part 4 §6.7: a session (with its subscriptions) outlives a broken connection until its
    timeout, so the client takes it over again instead of leaving it behind and opening another.
    True: the session and its subscriptions are back. False: the server no longer has it (it
    restarted, or the session timed out); the connection is closed. Other failures raise.
    """
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        client.uaclient.session.rebind_authentication_token()
        await _activate(client, cfg)
    except ua.UaStatusCodeError as e:
        client.disconnect_socket()
        if e.code in _SESSION_GONE or e.code == _S.BadSessionNotActivated:
            return False
        raise
    except BaseException:
        client.disconnect_socket()
        raise
    client.uaclient.ensure_publish_loop()
    return True


def _stop_publish_loop(client: Client) -> None:
    # asyncua's publish loop retries every second and logs an error with a traceback each time
    # while the connection is down; it has no public way to pause, so its task is cancelled and
    # ensure_publish_loop() starts it again once the session is back.
    task = getattr(client.uaclient.session, "_publish_task", None)
    if task is not None and not task.done():
        task.cancel()


def drop_connection(client: Client) -> None:
    """Close the socket but keep the session's state, for ``reactivate_session``."""
    _stop_publish_loop(client)
    client.disconnect_socket()


async def close_client(client: Client) -> None:
    """Close the session (the server deletes its subscriptions) within a bounded time."""
    if client.uaclient.state is UaClientState.CONNECTED:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), CLOSE_TIMEOUT_S)
    else:  # nothing to tell the server over a dead connection
        drop_connection(client)
    with contextlib.suppress(Exception):
        client.disconnect_socket()


# --- namespaces and nodes ---------------------------------------------------------------------------


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


# --- values -> points (hot path) --------------------------------------------------------------------

_NUMBER, _TEXT, _STATE = 0, 1, 2
_KINDS = {"number": _NUMBER, "text": _TEXT, "state": _STATE}


class _NodePlan:
    """Everything about one configured node that does not change between values."""

    __slots__ = ("address", "clock_fault", "config", "kind", "offset", "plain_number", "scale", "scaled", "series",
                 "tags", "where")

    def __init__(self, config: schema.OpcUaNode, enterprise_id: str) -> None:
        self.config = config
        self.tags = {"enterprise": enterprise_id, "equipment": config.equipment, "signal": config.signal}
        self.series = encode_series("signal", self.tags)  # raises LineProtocolError for unwritable names
        self.kind = _KINDS[config.value_type]
        self.scale = float(config.scale)
        self.offset = float(config.offset)
        self.scaled = self.scale != 1.0 or self.offset != 0.0
        self.plain_number = self.kind == _NUMBER and not self.scaled
        self.address = config.address()
        self.where = f"{config.equipment}/{config.signal}"
        self.clock_fault = False  # a wrong device clock is logged once per node and source


def _datetime_ns(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    d = dt - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000


def _timestamp_ns(
    plan: _NodePlan, dv: ua.DataValue, received_ns: int, prefer_source: bool, clock_faults: list[_NodePlan]
) -> int:
    """The preferred timestamp, else the other one, else the receive time; a wrong clock is noted once."""
    first, second = (dv.SourceTimestamp, dv.ServerTimestamp) if prefer_source else (dv.ServerTimestamp,
                                                                                       dv.SourceTimestamp)
    for dt in (first, second):
        if dt is None:
            continue
        ns = _datetime_ns(dt)
        if MIN_TIMESTAMP_NS <= ns <= received_ns + MAX_FUTURE_NS:
            return ns
        if ns > _NULL_TIME_NS and not plan.clock_fault:
            plan.clock_fault = True
            clock_faults.append(plan)
    return received_ns


def _text(plan: _NodePlan, raw: object) -> tuple[str, FieldValue] | Rejection:
    if type(raw) is ua.LocalizedText:
        raw = raw.Text or ""  # type: ignore[union-attr]
    if type(raw) is not str:
        return Rejection("value_wrong_type", f"{plan.where} ({plan.address}) is {_short(raw)}, not text")
    if "\n" in raw or "\r" in raw:
        return Rejection("value_control_char", f"{plan.where} ({plan.address}) contains a line break")
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        return Rejection("value_not_utf8", f"{plan.where} ({plan.address}) contains a lone surrogate")
    if size > MAX_STRING_FIELD_BYTES:
        return Rejection("value_too_long", f"{plan.where} ({plan.address}) is {size} bytes of text")
    return ("text", raw)


def _number(plan: _NodePlan, raw: object, scaled: bool) -> tuple[str, FieldValue] | Rejection:
    if type(raw) is float:
        value: float = raw  # type: ignore[assignment]
    elif isinstance(raw, int):  # int, bool (0/1) and enumerations (IntEnum)
        try:
            value = float(raw)
        except OverflowError:
            return Rejection("value_not_finite", f"{plan.where} ({plan.address}) is too large for a float")
    elif isinstance(raw, float):
        value = float(raw)
    else:
        return Rejection("value_wrong_type", f"{plan.where} ({plan.address}) is {_short(raw)}, not a number")
    if not math.isfinite(value):
        return Rejection("value_not_finite", f"{plan.where} ({plan.address}) is {value}")
    if scaled:
        value = value * plan.scale + plan.offset
        if not math.isfinite(value):
            return Rejection("value_not_finite", f"{plan.where} ({plan.address}) becomes {value} after scale/offset")
    return ("value", value)


def _field(plan: _NodePlan, raw: object) -> tuple[str, FieldValue] | Rejection:
    kind = plan.kind
    if kind == _NUMBER:
        return _number(plan, raw, plan.scaled)
    if kind == _TEXT:
        return _text(plan, raw)
    if type(raw) is str or type(raw) is ua.LocalizedText:  # state: names stay text, codes stay numbers
        return _text(plan, raw)
    return _number(plan, raw, False)


def data_value_to_point(
    plan: _NodePlan, topic: str, dv: ua.DataValue, received_ns: int, prefer_source: bool,
    points: list[Point], rejected: list[tuple[str, Rejection]], clock_faults: list[_NodePlan],
) -> None:
    """Append the point for one DataValue, or (topic, rejection) when a Good value cannot be stored."""
    status = dv.StatusCode
    quality = status.value & QUALITY_MASK if status is not None else 0
    variant = dv.Value
    raw = variant.Value if variant is not None else None
    fields: dict[str, FieldValue]
    if quality == 0 and plan.plain_number and type(raw) is float and raw - raw == 0.0:  # x - x is nan for inf, nan
        fields = {"value": raw, "quality": 0}  # the common case, kept short: a Good finite Double, unscaled
    else:
        fields = {"quality": quality}
        if raw is not None:
            converted = _field(plan, raw)
            if type(converted) is Rejection:
                if quality == 0:
                    rejected.append((topic, converted))  # type: ignore[arg-type]
                    return
                # Bad or Uncertain with a value we cannot store: the quality alone still tells the story
            else:
                key, value = converted  # type: ignore[misc]
                fields[key] = value
        elif quality == 0:
            rejected.append((topic, Rejection("value_wrong_type", f"{plan.where} ({plan.address}): Good status, "
                                                                  "no value")))
            return
    ts = dv.SourceTimestamp if prefer_source else dv.ServerTimestamp
    ts_ns = -1
    if ts is not None and ts.tzinfo is not None:
        d = ts - _EPOCH
        ts_ns = (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000
    if not MIN_TIMESTAMP_NS <= ts_ns <= received_ns + MAX_FUTURE_NS:
        ts_ns = _timestamp_ns(plan, dv, received_ns, prefer_source, clock_faults)
    points.append(Point("signal", plan.tags.copy(), fields, ts_ns, Priority.RAW, plan.series))


# --- one session ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _LiveNode:
    plan: _NodePlan
    node_id: ua.NodeId
    topic: str  # the resolved NodeId string, the "topic" of rejection records
    poll_interval_s: float = 0.0


class _Session:
    """One OPC UA session: its handles, subscriptions, poll tasks and watchdog.

    It survives a broken connection when the server still holds it (``resume``); a new object
    is made for a new session.
    """

    def __init__(self, source: OpcUaSource, connected: ConnectedClient) -> None:
        self.source = source
        self.cfg = source.cfg
        self.client = connected.client
        self.limits = {"read": DEFAULT_NODES_PER_READ, "items": DEFAULT_ITEMS_PER_CALL,
                       "paths": DEFAULT_PATHS_PER_CALL}
        self.prefer_source = self.cfg.timestamp == "source"
        self.handles: dict[int, _LiveNode] = {}
        self.next_handle = 1
        self.subscription_ids: list[int] = []
        self.subscribed = 0
        self.polled: list[_LiveNode] = []
        self.unresolved = 0
        self.indexes: dict[str, int] = {}
        self.namespace_array: list[str] = []
        self.last_publish = time.monotonic()
        self.keepalive_limit_s = self.cfg.watchdog_s
        self.channel_opened = time.monotonic()
        self.lost_reason: str | None = None
        self.resumable = True
        self.lost = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        # Hear of a closed socket at once (asyncua calls state listeners from connection_lost), before
        # the publish loop wakes up to its failed request and logs it as a crash.
        add_listener = getattr(self.client.uaclient, "_add_state_listener", None)
        if add_listener is not None:
            add_listener(self._on_client_state)

    def _on_client_state(self, state: UaClientState) -> None:
        if state is UaClientState.DISCONNECTED:
            _stop_publish_loop(self.client)
            self.lose("the connection closed")

    def lose(self, reason: str, *, resumable: bool = True) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason
            self.resumable = resumable
        self.lost.set()

    # --- data ----------------------------------------------------------------------------

    def on_publish(self, result: ua.PublishResult) -> None:
        """asyncua's publish loop calls this for every PublishResponse of our subscriptions."""
        self.last_publish = time.monotonic()
        data = result.NotificationMessage.NotificationData
        if not data:
            return  # keep-alive
        received_ns = time.time_ns()
        points: list[Point] = []
        rejected: list[tuple[str, Rejection]] = []
        clock_faults: list[_NodePlan] = []
        handles = self.handles
        prefer_source = self.prefer_source
        changes = 0
        for notification in data:
            if type(notification) is ua.DataChangeNotification:
                items = notification.MonitoredItems
                changes += len(items)
                for item in items:
                    node = handles.get(item.ClientHandle)
                    if node is not None:
                        data_value_to_point(node.plan, node.topic, item.Value, received_ns, prefer_source, points,
                                            rejected, clock_faults)
            elif isinstance(notification, ua.StatusChangeNotification):
                status = notification.Status
                if status is not None and not status.is_good():
                    self.lose(f"the server ended subscription {result.SubscriptionId} ({status.name})",
                              resumable=False)
        self.source.deliver(points, rejected, changes)
        self.last_publish = time.monotonic()  # a slow ingest (full queue) must not look like a silent server
        if clock_faults:
            self.log_clock_faults(clock_faults)

    def log_clock_faults(self, plans: list[_NodePlan]) -> None:
        for plan in plans:
            self.source.log.warning(
                "%s (%s): the server sent a timestamp before 2000 or in the future; using the other timestamp or "
                "the receive time instead (check the device's clock)", plan.where, plan.address,
            )

    # --- set-up --------------------------------------------------------------------------

    async def read_indexes(self) -> dict[str, int]:
        """Namespace aliases resolved by URI against the server's current NamespaceArray."""
        namespace_array = await read_namespace_array(self.client)
        indexes, missing = resolve_aliases(self.cfg.namespace_uris(), namespace_array)
        for alias, uri in missing.items():
            self.source.log.error("namespace %s = %r is not on the server (its NamespaceArray: %s); nodes using it "
                                  "are skipped", alias, uri, ", ".join(namespace_array))
        self.namespace_array = namespace_array
        return indexes

    async def setup(self) -> None:
        """Resolve every node, subscribe what can be subscribed, poll the rest."""
        self.indexes = await self.read_indexes()
        self.limits = await read_operation_limits(self.client)
        resolved = await resolve_nodes(self.client, self.cfg.node, self.indexes, self.namespace_array,
                                       self.limits["paths"])
        for node, why in resolved.failures:
            self.source.log.error("%s/%s (%s): %s; skipped until the next session", node.equipment, node.signal,
                                  node.address(), why)
        self.unresolved = len(resolved.failures)
        plan_of = self.source.plan_of
        live = [_LiveNode(plan_of(node), node_id, node_id.to_string(), node.effective_poll_interval_s())
                for node, node_id in resolved.nodes]
        to_poll = [n for n in live if n.plan.config.mode == "poll"]
        poll_instead = await self.subscribe([n for n in live if n.plan.config.mode == "subscribe"])
        if poll_instead:
            self.source.log.warning("%d node(s) cannot be subscribed, e.g. %s: %s; polling them instead",
                                    len(poll_instead), poll_instead[0][0].plan.where, poll_instead[0][1])
            to_poll.extend(n for n, _ in poll_instead)
        self.polled = to_poll
        self.start_polling()

    async def resume(self) -> bool:
        """Take the session over on a new connection; False when a new session is needed."""
        self.source.log.info("re-activating the existing session with %s", self.cfg.endpoint)
        try:
            back = await asyncio.wait_for(reactivate_session(self.client, self.cfg), self.cfg.timeout_s * 2)
        except BaseException as e:
            drop_connection(self.client)
            if isinstance(e, asyncio.CancelledError):
                raise
            raise describe_failure(e, self.cfg) from e
        if not back:
            self.source.log.info("the server no longer has the session; opening a new one")
            return False
        indexes = await self.read_indexes()
        if indexes != self.indexes:  # cannot happen without a restart, which ends sessions; but be sure
            self.source.log.info("namespace indexes changed; opening a new session")
            await close_client(self.client)
            return False
        self.channel_opened = time.monotonic()
        self.last_publish = time.monotonic()
        self.lost_reason, self.resumable = None, True
        self.lost.clear()
        self.start_polling()
        return True

    async def suspend(self) -> None:
        """Stop polling and drop the connection, keeping the session for ``resume``."""
        await self._stop_tasks()
        drop_connection(self.client)

    async def close(self) -> None:
        """Close the session for good (the server deletes its subscriptions)."""
        await self._stop_tasks()
        await close_client(self.client)

    async def _stop_tasks(self) -> None:
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def subscribe(self, nodes: list[_LiveNode]) -> list[tuple[_LiveNode, str]]:
        """Create subscriptions and monitored items; returns the nodes to poll instead, with why."""
        groups: dict[tuple[float, int], list[_LiveNode]] = {}
        for node in nodes:
            c = node.plan.config
            groups.setdefault((c.sampling_interval_ms, c.queue_size), []).append(node)
        poll_instead: list[tuple[_LiveNode, str]] = []
        for (sampling_ms, queue_size), members in sorted(groups.items()):
            try:
                subscription_id, keepalive_s = await self._create_subscription(sampling_ms)
            except ua.UaStatusCodeError as e:
                if e.code in _POLL_INSTEAD:
                    poll_instead.extend((n, f"the server cannot create a subscription ({_status_name(e.code)})")
                                        for n in members)
                    continue
                raise
            self.keepalive_limit_s = max(self.keepalive_limit_s, 2 * keepalive_s)
            poll_instead.extend(await self._create_items(subscription_id, sampling_ms, queue_size, members))
        return poll_instead

    async def _create_subscription(self, sampling_ms: float) -> tuple[int, float]:
        publishing_ms = max(MIN_PUBLISHING_MS, sampling_ms)
        # a keep-alive at least every half watchdog period, so silence means trouble
        keepalive = max(1, min(10_000, int(self.cfg.watchdog_s * 1000 / 2 // publishing_ms)))
        # the subscription lives as long as the session when no publish requests come (connection
        # down), so taking the session over again brings the subscriptions back with it
        lifetime = max(keepalive * 3, math.ceil(self.cfg.session_timeout_s * 1000 / publishing_ms))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=publishing_ms, RequestedLifetimeCount=min(lifetime, 2**31 - 1),
            RequestedMaxKeepAliveCount=keepalive, MaxNotificationsPerPublish=MAX_NOTIFICATIONS_PER_PUBLISH,
            PublishingEnabled=True, Priority=0,
        )
        result = await self.client.uaclient.create_subscription(params, self.on_publish)
        self.subscription_ids.append(result.SubscriptionId)
        self.last_publish = time.monotonic()
        revised_keepalive_s = result.RevisedPublishingInterval * result.RevisedMaxKeepAliveCount / 1000
        if revised_keepalive_s > self.cfg.watchdog_s:
            self.source.log.warning(
                "the server sends keep-alives only every %.0fs, longer than watchdog_s = %.0f; the watchdog waits "
                "for two of them", revised_keepalive_s, self.cfg.watchdog_s,
            )
        return result.SubscriptionId, revised_keepalive_s

    async def _create_items(
        self, subscription_id: int, sampling_ms: float, queue_size: int, members: list[_LiveNode]
    ) -> list[tuple[_LiveNode, str]]:
        poll_instead: list[tuple[_LiveNode, str]] = []
        retry_without_filter: list[_LiveNode] = []
        step = max(1, self.limits["items"])
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            results = await self._create_chunk(subscription_id, sampling_ms, queue_size, chunk, with_filter=True)
            for node, code in results:
                if code in _FILTER_REFUSED:
                    retry_without_filter.append(node)
                elif code in _POLL_INSTEAD:
                    poll_instead.append((node, f"the server will not monitor it ({_status_name(code)})"))
                elif code is not None:
                    self._log_unusable(node, code)
        if retry_without_filter:
            self.source.log.warning(
                "the server refused the deadband filter of %d node(s) (e.g. %s); monitoring them without it",
                len(retry_without_filter), retry_without_filter[0].plan.where,
            )
            results = await self._create_chunk(subscription_id, sampling_ms, queue_size, retry_without_filter,
                                               with_filter=False)
            for node, code in results:
                if code in _POLL_INSTEAD or code in _FILTER_REFUSED:
                    poll_instead.append((node, f"the server will not monitor it ({_status_name(code)})"))
                elif code is not None:
                    self._log_unusable(node, code)
        return poll_instead

    async def _create_chunk(
        self, subscription_id: int, sampling_ms: float, queue_size: int, chunk: list[_LiveNode], *, with_filter: bool
    ) -> list[tuple[_LiveNode, int | None]]:
        """Create monitored items; (node, None) when monitored, (node, status code) when not."""
        requests = []
        handles = []
        for node in chunk:
            handle = self.next_handle
            self.next_handle += 1
            # registered before the call: the first notification may arrive before its response
            self.handles[handle] = node
            handles.append(handle)
            deadband = node.plan.config.deadband if with_filter else None
            mfilter = None
            if deadband is not None:
                mfilter = ua.DataChangeFilter(
                    Trigger=ua.DataChangeTrigger.StatusValue,
                    DeadbandType=1 if deadband.type == "absolute" else 2,
                    DeadbandValue=deadband.value,
                )
            requests.append(ua.MonitoredItemCreateRequest(
                ItemToMonitor=ua.ReadValueId(NodeId=node.node_id, AttributeId=ua.AttributeIds.Value),
                MonitoringMode=ua.MonitoringMode.Reporting,
                RequestedParameters=ua.MonitoringParameters(
                    ClientHandle=handle, SamplingInterval=float(sampling_ms), Filter=mfilter,
                    QueueSize=queue_size, DiscardOldest=True,
                ),
            ))
        params = ua.CreateMonitoredItemsParameters(
            SubscriptionId=subscription_id, TimestampsToReturn=ua.TimestampsToReturn.Both, ItemsToCreate=requests,
        )
        try:
            results = await self.client.uaclient.create_monitored_items(params)
        except BaseException:
            for handle in handles:
                self.handles.pop(handle, None)
            raise
        out: list[tuple[_LiveNode, int | None]] = []
        for node, handle, result in zip(chunk, handles, results, strict=True):
            if result.StatusCode.is_good():
                self.subscribed += 1
                out.append((node, None))
            else:
                self.handles.pop(handle, None)
                out.append((node, result.StatusCode.value))
        return out

    def _log_unusable(self, node: _LiveNode, code: int) -> None:
        self.source.log.error(
            "%s: node %s (%s) cannot be read (%s: %s); it is skipped until the next connection",
            node.plan.where, node.topic, node.plan.address, _status_name(code), ua.StatusCode(code).doc,
        )

    def start_polling(self) -> None:
        groups: dict[float, list[_LiveNode]] = {}
        for node in self.polled:
            groups.setdefault(node.poll_interval_s, []).append(node)
        for interval, members in sorted(groups.items()):
            self.tasks.append(asyncio.create_task(self._poll(interval, members), name=f"fmc-opcua-poll-{interval}"))

    async def _poll(self, interval_s: float, nodes: list[_LiveNode]) -> None:
        batch = max(1, self.limits["read"])
        nodes = list(nodes)
        due = time.monotonic()
        try:
            while nodes:
                points: list[Point] = []
                rejected: list[tuple[str, Rejection]] = []
                clock_faults: list[_NodePlan] = []
                unusable: list[_LiveNode] = []
                start = 0
                while start < len(nodes):
                    chunk = nodes[start : start + batch]
                    try:
                        values = await self.client.uaclient.read(_read_params([n.node_id for n in chunk]))
                    except ua.UaStatusCodeError as e:
                        if e.code == _S.BadTooManyOperations and batch > 1:
                            batch = max(1, batch // 2)  # the server's real limit is lower than it said
                            continue
                        raise
                    received_ns = time.time_ns()
                    for node, dv in zip(chunk, values, strict=True):
                        code = dv.StatusCode.value if dv.StatusCode is not None else 0
                        if code in _NODE_UNUSABLE:
                            unusable.append(node)
                            continue
                        data_value_to_point(node.plan, node.topic, dv, received_ns, self.prefer_source, points,
                                            rejected, clock_faults)
                    start += len(chunk)
                for node in unusable:
                    self._log_unusable(node, _S.BadNodeIdUnknown)
                    nodes.remove(node)
                    self.polled.remove(node)
                self.source.deliver(points, rejected, len(points) + len(rejected))
                if clock_faults:
                    self.log_clock_faults(clock_faults)
                due += interval_s
                now = time.monotonic()
                if due < now:  # fell behind (slow server): skip the missed rounds, do not burst
                    due = now + interval_s
                await asyncio.sleep(due - now)
        except asyncio.CancelledError:
            raise
        except ua.UaStatusCodeError as e:
            self.lose(f"polling failed ({_status_name(e.code)})")
        except (ConnectionError, TimeoutError, OSError) as e:
            self.lose(f"polling failed: {describe_failure(e, self.cfg).message}")
        except Exception as e:
            self.source.log.exception("polling failed")
            self.lose(f"polling failed: {type(e).__name__}: {e}")

    # --- watchdog ------------------------------------------------------------------------

    async def supervise(self, stop: asyncio.Event) -> str | None:
        """Watch the session until ``stop`` (returns None) or until it fails (returns why)."""
        cfg = self.cfg
        probe_every = min(max(cfg.watchdog_s / 3, 0.5), 10.0)
        probe_timeout = min(cfg.timeout_s, cfg.watchdog_s)
        next_probe = time.monotonic()
        last_time: object = None
        last_time_change = time.monotonic()
        waiters = (asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.lost.wait()))
        try:
            while True:
                await asyncio.wait(waiters, timeout=SUPERVISE_TICK_S, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    return None
                if self.lost.is_set():
                    return self.lost_reason
                now = time.monotonic()
                if self.client.uaclient.state is not UaClientState.CONNECTED:
                    return self._lost("the connection closed")
                if self.subscription_ids and now - self.last_publish > self.keepalive_limit_s:
                    return self._lost(f"no data and no keep-alive from the server for {now - self.last_publish:.1f}s "
                                      f"(watchdog_s = {cfg.watchdog_s:g}): the connection is open but silent")
                if now - self.channel_opened > 0.75 * self.client.secure_channel_timeout / 1000:
                    # the secure channel's token expires: renew it as OPC UA asks, at 75 % of its lifetime
                    await self.client.open_secure_channel(renew=True)
                    self.client.uaclient.revolve_security_token()
                    self.channel_opened = now
                if now < next_probe:
                    continue
                next_probe = now + probe_every
                try:
                    [dv] = await asyncio.wait_for(self.client.uaclient.read(_read_params([_CURRENT_TIME])),
                                                  probe_timeout)
                except asyncio.CancelledError:
                    raise
                except TimeoutError:
                    return self._lost(f"the server did not answer a read of its CurrentTime within "
                                      f"{probe_timeout:g}s (watchdog)")
                except Exception as e:
                    return self._lost(f"reading the server's CurrentTime failed: {describe_failure(e, cfg).message}")
                current = dv.Value.Value if dv.Value is not None else None
                if current != last_time:
                    last_time, last_time_change = current, time.monotonic()
                elif time.monotonic() - last_time_change > cfg.watchdog_s:
                    return self._lost(f"the server's CurrentTime has not advanced for "
                                      f"{time.monotonic() - last_time_change:.1f}s (stuck at {current}; watchdog_s = "
                                      f"{cfg.watchdog_s:g}): the server is stalled")
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _lost(self, reason: str) -> str:
        self.lose(reason)
        return self.lost_reason or reason


# --- the source ---------------------------------------------------------------------------------------


class OpcUaSource:
    """One OPC UA server: one session at a time, values to the ingest, reconnects forever."""

    def __init__(
        self,
        cfg: schema.OpcUaSource,
        enterprise: EnterpriseConfig,
        ingest: IngestPort,
        metrics: AgentMetrics,
        logger: logging.Logger,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.log = logger
        self._ingest = ingest
        self._received = metrics.received.labels(cfg.name)
        self._connected_gauge = metrics.connected.labels(cfg.name)
        try:
            self._plans = {id(node): _NodePlan(node, enterprise.id) for node in cfg.node}
        except LineProtocolError as e:
            raise ValueError(f"opcua source {cfg.name!r}: {e.detail}") from None
        self._rng = random.Random()
        self._connected = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._namespace_indexes: dict[str, int] = {}
        self._kept: _Session | None = None  # a session whose connection broke, to take over again
        # observable state (tests, the demo, fmc check)
        self.sessions_opened = 0  # new sessions
        self.sessions_resumed = 0  # sessions taken over again after a broken connection
        self.last_error: str | None = None
        self.subscribed_nodes = 0
        self.polled_nodes = 0

    @property
    def connected(self) -> bool:
        """True while a session is set up (subscriptions created, polling started)."""
        return self._connected

    def live_equipment(self) -> set[str]:
        """Equipment read through a live subscription: it reports changes only, so an unchanged
        value is still good data while the session stands."""
        if not self._connected:
            return set()
        return {n.equipment for n in self.cfg.node if n.mode == "subscribe"}

    @property
    def namespace_indexes(self) -> dict[str, int]:
        """alias -> namespace index on the server, as resolved for the current session."""
        return dict(self._namespace_indexes)

    def plan_of(self, node: schema.OpcUaNode) -> _NodePlan:
        return self._plans[id(node)]

    # --- thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Run the source in a thread of its own (own asyncio loop) and return at once."""
        if self._thread is not None:
            raise RuntimeError(f"opcua source {self.name!r} was already started")
        self._connected_gauge.set(0)
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        self._loop, self._stop = loop, stop

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.run(stop))
            except Exception:
                self.log.exception("the OPC UA source stopped on an unexpected error")
            finally:
                _cancel_leftovers(loop)
                loop.close()

        self._thread = threading.Thread(target=main, name=f"fmc-opcua-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the session (the server deletes our subscriptions) and end the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            self.log.warning("the OPC UA thread did not end within %.1fs; leaving it behind", timeout)
        self._set_connected(False)

    # --- main loop --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect with capped jittered backoff, until ``stop`` is set."""
        cfg = self.cfg
        self.log.info("connecting to %s (%s/%s, %s identity, %d node(s))", cfg.endpoint, cfg.security_policy,
                      cfg.security_mode, cfg.identity, len(cfg.node))
        attempt = 0
        try:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    session = await _unless_stopped(stop, self._session())
                except OpcUaError as e:
                    self.last_error = e.message
                    delay = self._next_delay(attempt)
                    attempt += 1
                    level = logging.ERROR if e.cause in _NEEDS_A_PERSON else logging.WARNING
                    self.log.log(level, "no session with %s: %s; retrying in %.1fs", cfg.endpoint, e.message, delay)
                    await _sleep_unless(stop, delay)
                    continue
                if session is None:  # stopped while connecting
                    break
                self._set_connected(True)
                reason = await session.supervise(stop)
                self._set_connected(False)
                if reason is None:  # stopping
                    await session.close()
                    break
                self.last_error = reason
                if session.resumable:
                    await session.suspend()
                    self._kept = session
                else:
                    await session.close()
                if time.monotonic() - began >= STABLE_SESSION_S:
                    attempt = 0  # a flapping link keeps its growing backoff; a stable session resets it
                delay = self._next_delay(attempt)
                attempt += 1
                self.log.warning("lost the session with %s: %s; reconnecting in %.1fs", cfg.endpoint, reason, delay)
                await _sleep_unless(stop, delay)
        finally:
            self._set_connected(False)
            kept, self._kept = self._kept, None
            if kept is not None:
                await kept.close()
            self.log.info("stopped")

    def _next_delay(self, attempt: int) -> float:
        return backoff_delay(attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)

    async def _session(self) -> _Session:
        """The kept session taken over again, or else a new one, set up; OpcUaError on failure."""
        previous, self._kept = self._kept, None
        if previous is not None:
            try:
                if await previous.resume():
                    self.sessions_resumed += 1
                    self.log.info("session with %s re-activated: %d node(s) subscribed, %d polled",
                                  self.cfg.endpoint, previous.subscribed, len(previous.polled))
                    return previous
            except OpcUaError as e:
                if e.cause in ("no_server", "timeout", "connection_closed"):
                    self._kept = previous  # the server is away: try to take the session over next time
                    raise
                self.log.info("could not re-activate the session (%s); opening a new one", e.message)
            except BaseException:
                self._kept = previous
                raise
            await previous.close()
        connected = await open_client(self.cfg, session_name=f"fmc {self.name}")
        if connected.warning:
            self.log.warning("%s", connected.warning)
        session = _Session(self, connected)
        try:
            await session.setup()
        except BaseException as e:
            await session.close()
            if isinstance(e, asyncio.CancelledError | OpcUaError):
                raise
            raise describe_failure(e, self.cfg) from e
        self.sessions_opened += 1
        moved = {a: i for a, i in session.indexes.items() if self._namespace_indexes.get(a, i) != i}
        if moved:
            self.log.info("namespace indexes changed since the last session: %s",
                          ", ".join(f"{a} {self._namespace_indexes[a]} -> {i}" for a, i in moved.items()))
        self._namespace_indexes = dict(session.indexes)
        self.subscribed_nodes, self.polled_nodes = session.subscribed, len(session.polled)
        self.log.info(
            "session with %s up: %d node(s) subscribed in %d subscription(s), %d polled, %d not found",
            self.cfg.endpoint, session.subscribed, len(session.subscription_ids), len(session.polled),
            session.unresolved,
        )
        return session

    def _set_connected(self, up: bool) -> None:
        self._connected = up
        self._connected_gauge.set(1 if up else 0)

    def deliver(self, points: list[Point], rejected: list[tuple[str, Rejection]], changes: int) -> None:
        """Hand one publish response's (or poll round's) points to the ingest; rejections by node."""
        if changes:
            self._received.inc(changes)
        if points:
            self._ingest.submit(self.name, f"{len(points)} node value(s)", b"", MapResult(points, []), None)
        for topic, rejection in rejected:
            self._ingest.submit(self.name, topic, b"", MapResult([], [rejection]), None)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel tasks asyncua may leave behind (a publish loop), so the loop closes quietly."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    with contextlib.suppress(Exception):
        loop.run_until_complete(loop.shutdown_asyncgens())


async def _unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """Run ``work`` until it finishes or ``stop`` is set (then cancel it and return None)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)


# --- fmc check -----------------------------------------------------------------------------------------


async def check_opcua(cfg: schema.OpcUaSource, timeout: float = 10.0) -> CheckResult:
    """Connect as the agent would, resolve every node, read each once, report, disconnect."""
    name = f"opcua:{cfg.name}"
    try:
        return await asyncio.wait_for(_check(cfg, name), timeout)
    except OpcUaError as e:
        return CheckResult(name, False, e.message)
    except TimeoutError:
        return CheckResult(name, False, f"{cfg.endpoint} did not complete the check within {timeout:g}s")
    except Exception as e:
        return CheckResult(name, False, describe_failure(e, cfg).message)


async def _check(cfg: schema.OpcUaSource, name: str) -> CheckResult:
    connected = await open_client(cfg, session_name=f"fmc check {cfg.name}")
    client = connected.client
    try:
        namespace_array = await read_namespace_array(client)
        indexes, missing = resolve_aliases(cfg.namespace_uris(), namespace_array)
        limits = await read_operation_limits(client)
        resolved = await resolve_nodes(client, cfg.node, indexes, namespace_array, limits["paths"])
        problems = [f"{n.equipment}/{n.signal} ({n.address()}): {why}" for n, why in resolved.failures]
        step = max(1, limits["read"])
        for start in range(0, len(resolved.nodes), step):
            chunk = resolved.nodes[start : start + step]
            values = await client.uaclient.read(_read_params([node_id for _, node_id in chunk]))
            for (node, node_id), dv in zip(chunk, values, strict=True):
                code = dv.StatusCode.value if dv.StatusCode is not None else 0
                if code in _NODE_UNUSABLE:
                    problems.append(f"{node.equipment}/{node.signal} ({node_id.to_string()}): "
                                    f"{_status_name(code)}")
    finally:
        await close_client(client)
    security = f"{cfg.security_policy}/{cfg.security_mode}, identity {cfg.identity}"
    parts = [f"connected to {cfg.endpoint} ({security})",
             f"{len(cfg.node) - len(problems)} of {len(cfg.node)} node(s) readable"]
    if missing:
        parts.append("namespaces not on the server: " + ", ".join(f"{a} = {u!r}" for a, u in missing.items()))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        parts.append(f"not readable: {shown}")
    if connected.warning:
        parts.append(f"warning: {connected.warning}")
    return CheckResult(name, not problems and not missing, "; ".join(parts))
