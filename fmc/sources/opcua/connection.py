"""Reaching one OPC UA server: failures named for a person, certificates, the endpoint, the client.

- ``OpcUaError`` and ``describe_failure``: every error raised while connecting or in a session
  becomes one sentence with a short, stable ``cause`` (``wrong_credentials``, ``no_server``, ...);
  ``_NEEDS_A_PERSON`` lists the causes a retry cannot fix.
- The client certificate and key (loaded and checked before any round trip), the server
  certificate (pinned, or trusted by a folder), and ``choose_endpoint`` (policy, mode, identity).
- ``open_client`` opens one session step by step; ``reactivate_session`` takes an existing
  session over on a new connection; ``drop_connection`` and ``close_client`` end it.

Used by the running source (``session.py``, ``source.py``), ``fmc check`` (``check.py``) and
``fmc opcua browse`` (``tools.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.crypto import security_policies
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from fmc.sources.opcua import config as schema

CLOSE_TIMEOUT_S = 2.0
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


# causes a retry cannot fix: logged as errors, not warnings
_NEEDS_A_PERSON = frozenset({
    "wrong_credentials", "identity_rejected", "client_certificate_untrusted", "certificate_uri_mismatch",
    "certificate_invalid", "certificate_file", "server_certificate_untrusted", "no_matching_security",
    "identity_not_offered", "endpoint_url_invalid",
})


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
    True: the session and its subscriptions are back; the caller starts the publish loop again
    (``client.uaclient.ensure_publish_loop()``) once it has asked for what was lost in flight
    (``_Session.republish_missed``). False: the server no longer has it (it restarted, or the
    session timed out); the connection is closed. Other failures raise.
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
