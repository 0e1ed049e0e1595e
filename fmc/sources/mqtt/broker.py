"""A broker connection's set-up, shared by the MQTT source and the Sparkplug source (which runs over
MQTT): the paho client's options, credentials and TLS, the sentences for a connection that fails
or is refused, and ``fmc check``'s handshake (CONNECT, CONNACK, SUBSCRIBE, SUBACK).

Each source keeps what is its own: the MQTT source its persistent session and flow control, the
Sparkplug source its clean session, will and STATE.
"""

from __future__ import annotations

import queue
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from fmc.core.config import TLSConfig


class BrokerSettings(Protocol):
    """What a source's settings say about its broker (both sources' models have these)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def keepalive_s(self) -> int: ...
    @property
    def protocol(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> SecretStr | None: ...
    @property
    def tls(self) -> TLSConfig | None: ...


def tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """The TLS context of ``[<section>.tls]``: the CA to trust, the client's certificate, or no checks."""
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def client_options(cfg: BrokerSettings, client_id: str, *, clean: bool, manual_ack: bool,
                   reconnect: bool) -> dict[str, Any]:
    """Keyword arguments for ``paho.mqtt.client.Client``. ``clean``: a clean session (MQTT 3.1.1; MQTT 5
    says clean_start at connect time instead, and paho refuses both)."""
    v5 = cfg.protocol == "5"
    options: dict[str, Any] = {
        "callback_api_version": CallbackAPIVersion.VERSION2,
        "client_id": client_id,
        "protocol": MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        "manual_ack": manual_ack,
        "reconnect_on_failure": reconnect,
    }
    if not v5:
        options["clean_session"] = clean
    return options


def set_credentials(client: mqtt.Client, cfg: BrokerSettings) -> None:
    """Username, password and TLS on a client not yet connected (reads the TLS files: OSError, ValueError)."""
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password is not None else None)
    if cfg.tls is not None:
        client.tls_set_context(tls_context(cfg.tls))
        if cfg.tls.insecure_skip_verify:
            client.tls_insecure_set(True)


def describe_connect_error(error: BaseException | None, host: str, port: int, section: str) -> str:
    """One sentence a person can act on, for an error raised while opening the connection of the
    ``[section]`` (``mqtt``, ``sparkplug``)."""
    where = f"{host}:{port}"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host name {host!r} ({error.strerror}): check `host`"
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"TLS: the broker's certificate at {where} is not trusted ({error.verify_message}); "
                "set tls.ca_file to the CA that signed it")
    if isinstance(error, ssl.SSLError):
        return (f"TLS handshake with {where} failed ({error.reason or error}): is that port a TLS listener, "
                "and do tls.cert_file and tls.key_file belong together?")
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused by {where}: no broker listens there (is it running? right port?)"
    if isinstance(error, TimeoutError):
        return f"no answer from {where} (timed out): wrong host, or a firewall in between"
    if isinstance(error, ConnectionResetError):
        return (f"{where} closed the connection at once: a TLS port spoken to without [{section}.tls], "
                "or a plain port with it?")
    if isinstance(error, OSError):
        return f"cannot connect to {where}: {error.strerror or error}"
    if error is not None:
        return f"cannot connect to {where}: {type(error).__name__}: {error}"
    return f"cannot connect to {where}"


def describe_refusal(reason: ReasonCode) -> str:
    """A refused CONNACK, with a hint. MQTT 3.1.1 codes arrive here converted to MQTT 5 names."""
    hints = {
        0x84: "the broker does not accept this MQTT version: try the other `protocol`",
        0x85: "the broker refused the client_id: use letters, digits and '-' only",
        0x86: "bad username or password: check `username` and `password`",
        0x87: "not authorised: check `username` and `password`, and the broker's ACL for this client",
        0x8A: "this client is banned by the broker",
        0x88: "the broker is unavailable",
        0x89: "the broker is busy",
    }
    hint = hints.get(reason.value)
    refused = f"the broker refused the connection ({reason})"
    return f"{refused}: {hint}" if hint else refused


def check_handshake(client: mqtt.Client, cfg: BrokerSettings, section: str, connect_options: dict[str, Any],
                    filters: Sequence[tuple[str, int]], timeout: float) -> str | None:
    """``fmc check``'s part that both sources share: connect ``client`` (a check's own, callbacks not
    set yet), wait for its CONNACK, subscribe ``filters`` and wait for the SUBACK, within ``timeout``.
    None when all of it went through; else what failed, with what to do. The client's loop may be
    running either way: the caller disconnects and stops it."""
    where = f"{cfg.host}:{cfg.port}"
    deadline = time.monotonic() + timeout
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    client.on_connect = lambda c, u, flags, reason, props: events.put(("connack", (reason, props)))
    client.on_disconnect = lambda c, u, flags, reason, props: events.put(("disconnect", reason))
    client.on_subscribe = lambda c, u, mid, reasons, props: events.put(("suback", reasons))
    client.connect_timeout = timeout

    def next_event() -> tuple[str, Any] | None:
        try:
            return events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    try:
        client.connect(cfg.host, cfg.port, cfg.keepalive_s, **connect_options)
    except (OSError, ValueError) as e:
        return describe_connect_error(e, cfg.host, cfg.port, section)
    client.loop_start()
    event = next_event()
    if event is None:
        return (f"connected to {where}, but no CONNACK within {timeout:.0f}s: is it an MQTT port? "
                f"(a TLS port needs [{section}.tls])")
    kind, answer = event
    if kind == "disconnect":
        return (f"{where} closed the connection before answering ({answer}): is it an MQTT port? "
                f"(a TLS port needs [{section}.tls])")
    reason, props = answer
    if reason.is_failure:
        return describe_refusal(reason)
    rc, _ = client.subscribe(list(filters))
    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
        return f"connected, but could not send SUBSCRIBE ({rc})"
    event = next_event()
    while event is not None and event[0] != "suback":
        if event[0] == "disconnect":
            return f"the broker closed the connection after SUBSCRIBE ({event[1]})"
        event = next_event()
    if event is None:
        return f"connected, but no SUBACK within {timeout:.0f}s"
    refused = [f"{f!r} ({r})" for (f, _), r in zip(filters, event[1], strict=False) if r.is_failure]
    if refused:
        return (f"connected, but the broker refused {len(refused)} subscription(s): {', '.join(refused)}; "
                "check the broker's ACL for this user")
    downgraded = [downgrade_warning(f, asked, r.value, connack_max_qos(props))
                  for (f, asked), r in zip(filters, event[1], strict=False) if r.value < asked]
    if downgraded:
        return "connected, but " + "; ".join(downgraded)
    return None


def connack_max_qos(properties: Any) -> int | None:
    """MQTT 5: the Maximum QoS the broker's CONNACK announces (absent: 2, any); None for MQTT 3.1.1."""
    value = getattr(properties, "MaximumQoS", None)
    return value if isinstance(value, int) else None


def downgrade_warning(topic_filter: str, asked: int, granted: int, max_qos: int | None) -> str:
    """A subscription the broker granted at a lower QoS than asked (SUBACK): what it costs, what to do."""
    announced = f"; its CONNACK says Maximum QoS {max_qos}" if max_qos is not None else ""
    return (f"the broker granted QoS {granted} for {topic_filter!r}, not the QoS {asked} asked{announced}: its "
            "messages arrive at most once, none is kept while the agent is away nor sent again after a lost "
            f"acknowledgement; allow QoS {asked} on the broker (mosquitto: max_qos; EMQX: max_qos_allowed) "
            "and in its ACL for this user")
