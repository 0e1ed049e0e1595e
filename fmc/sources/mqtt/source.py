"""MQTT source: subscribe, map each message, hand it to the ingest; acknowledge only once spooled.

paho-mqtt 2.x runs the network loop in its own thread (``loop_start``). With ``manual_ack=True``
a QoS 1 message is acknowledged (PUBACK) only when the ingest has committed its points to the
spool, so an agent that is killed gets its unacknowledged messages again from the broker after
the restart (a persistent session: fixed client id, clean session off). Delivery is
at-least-once: a message can arrive twice, never zero times; a message the broker sends again
after it was committed (DUP flag, same packet id) is recognised by the ingest and stored once
(``MapResult.delivery``; docs/spool.md, "Redeliveries").

User documentation: ``fmc/sources/mqtt/README.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fmc.agent.metrics import AgentMetrics
from fmc.agent.plugin import CheckResult, Delivery, IngestPort, MapResult, Rejection
from fmc.core.backoff import backoff_delay
from fmc.sources.mqtt import config
from fmc.sources.mqtt.broker import (
    check_handshake,
    client_options,
    connack_max_qos,
    describe_connect_error,
    describe_refusal,
    downgrade_warning,
    set_credentials,
)
from fmc.sources.mqtt.mapping import Mapper

# MQTT 5: how many unacknowledged QoS 1 messages the broker may send us at once. Acks wait for a
# group commit (tens of ms), so a window of 20 (mosquitto's default) would cap a source at
# roughly 20 messages per commit; see "Throughput" in mqtt.md for the broker side (3.1.1).
RECEIVE_MAXIMUM = 1000
# MQTT 5: how long the broker keeps our session (and queues QoS 1 messages) while we are away
SESSION_EXPIRY_S = 7 * 24 * 3600
# stop(): how long to wait for acks of messages already handed to the ingest
ACK_GRACE_MAX_S = 1.0
# Backpressure. on_message never waits for the spool (paho's network thread must go on sending
# acks and keepalives, or the broker drops the session): QoS 1 messages are handed to the ingest
# at once, and the broker's in-flight window bounds how many can wait there for their commit. If
# this many are waiting anyway (an MQTT 3.1.1 broker whose max_inflight_messages is larger, or 0
# for no limit), the network thread stops reading from the socket until commits free room; it
# keeps writing meanwhile. Twice RECEIVE_MAXIMUM: a broker that keeps to the window (MQTT 5 brokers
# must) never gets there, even with messages of an earlier connection still waiting.
MAX_IN_FLIGHT = 2 * RECEIVE_MAXIMUM
READ_PAUSE_POLL_S = 0.05  # while reads are paused, the network thread looks again this often
READ_CHUNK_BYTES = 64 * 1024  # one recv() from the broker's socket: about a thousand small PUBLISHes
# A PUBLISH longer than max_payload_bytes and this is not buffered whole: its first this many bytes
# are kept (the topic, of up to 65 535 bytes, the packet id, MQTT 5 properties, the start of the
# payload for the rejection's excerpt) and the rest is discarded as it arrives (_BufferedSocket)
PUBLISH_HEAD_BYTES = 128 * 1024
PACKETS_PER_READ = 2000  # packets handled per turn of paho's loop before it writes (PUBACKs, PINGREQ)
# PUBLISHes handed to the ingest at once: fewer calls per message, yet the ingest's writer gets
# work while the network thread maps the rest of a read (a run costs it about 2 ms)
PUBLISHES_PER_RUN = 200
LOG_EVERY_S = 30.0  # repeated warnings of one kind (dropped QoS 0 messages, a refusing ingest)
_INVALID_TOPIC = "<topic is not valid UTF-8>"


def message_digest(topic: str, payload: bytes) -> bytes:
    """16 bytes that tell a message from another one: BLAKE2b of its topic and payload."""
    return hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=16).digest()


# --- client construction (shared with check_mqtt) ------------------------------------------------


_PUBACK = struct.Struct("!BBH")  # fixed header 0x40, remaining length 2, packet id
_U16 = struct.Struct("!H")


class _Head(bytearray):
    """The first PUBLISH_HEAD_BYTES of a PUBLISH longer than ``_BufferedSocket``'s max_publish_bytes,
    the rest discarded unread; ``length`` is the packet's whole remaining length."""

    length: int


class _BufferedSocket:
    """paho's socket, read in chunks of READ_CHUNK_BYTES.

    paho reads a packet in three ``recv`` calls (the command byte, the length byte by byte, the
    rest), each a system call: for small PUBLISHes that cost the network thread more than the rest
    of its work per message (measured with py-spy on ``make bench``). Here one ``recv`` takes what
    the kernel has and paho's calls are served from it. ``pending`` (paho asks it of TLS sockets)
    says that bytes are waiting here, so paho's loop does not wait in ``select`` for them; the
    rest of paho's use of the socket (send, fileno, setblocking, close) passes through.
    """

    __slots__ = ("_buffer", "_command", "_incoming", "_keep", "_max_publish", "_pos", "_short", "_skip", "sock")

    def __init__(self, sock: Any, max_publish_bytes: int | None = None) -> None:
        self.sock = sock
        self._buffer = b""
        self._pos = 0
        # what is buffered is only the start of a packet (read_packet needs the socket for the
        # rest): then nothing is "pending", or paho's loop would spin instead of waiting in select
        self._short = False
        # a PUBLISH whose remaining length is above this is kept only in part (PUBLISH_HEAD_BYTES)
        self._max_publish = max_publish_bytes
        # A packet longer than what one read brought, collected in a bytearray of its own as it
        # arrives (appending is linear; growing the buffer by concatenation copied it all at each
        # read, quadratic in its size): its first byte, how many bytes of it are kept, and how
        # many are still to be discarded after those.
        self._incoming: bytearray | None = None
        self._command = self._keep = self._skip = 0

    def recv(self, bufsize: int) -> bytes:
        self._short = False
        buffer, pos = self._buffer, self._pos
        if pos >= len(buffer):
            # may raise BlockingIOError (or ssl.SSLWantReadError), as paho expects of a recv
            buffer = self.sock.recv(max(bufsize, READ_CHUNK_BYTES))
            if len(buffer) <= bufsize:
                self._buffer, self._pos = b"", 0
                return buffer
            pos = 0
        end = pos + bufsize
        out = buffer[pos:end]
        if end >= len(buffer):
            self._buffer, self._pos = b"", 0
        else:
            self._buffer, self._pos = buffer, end
        return out

    def read_packet(self) -> tuple[int, bytearray] | None:
        """The next whole MQTT packet (its first byte, the rest after the remaining length) or None
        when it has not all arrived yet (what did is kept). A PUBLISH longer than
        ``max_publish_bytes`` comes as a ``_Head``: its first PUBLISH_HEAD_BYTES, the rest read and
        discarded, never buffered. Raises EOFError when the broker closed the connection,
        ValueError for a remaining length longer than MQTT's 4 bytes, and what the socket's recv
        raises (BlockingIOError when nothing more is there now)."""
        while True:
            buffer, pos = self._buffer, self._pos
            size = len(buffer)
            have = size - pos
            if have >= 2:
                length, shift, i = 0, 0, pos + 1
                while i < size and i - pos <= 4:
                    byte = buffer[i]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not byte & 0x80:
                        end = i + length
                        if end <= size:
                            self._pos = end
                            if end == size:
                                self._buffer, self._pos = b"", 0
                            return buffer[pos], bytearray(buffer[i:end])
                        self._begin(buffer[pos], length, memoryview(buffer)[i:])
                        return self._read_incoming()
                else:
                    if i - pos > 4:
                        raise ValueError("remaining length longer than 4 bytes")
            if self._incoming is not None:  # (nothing is buffered meanwhile)
                return self._read_incoming()
            self._short = True
            data = self.sock.recv(READ_CHUNK_BYTES)  # may raise BlockingIOError: the rest stays buffered
            if not data:
                raise EOFError
            self._short = False
            # what was left is at most the first 4 bytes of a fixed header: a body goes to _begin
            self._buffer, self._pos = (buffer[pos:] + data if have else data), 0

    def _begin(self, command: int, length: int, start: memoryview) -> None:
        """Collect a packet whose fixed header is buffered, its body not all (``start`` is what is)."""
        if command & 0xF0 == mqtt.PUBLISH and self._max_publish is not None and length > self._max_publish:
            keep = min(length, PUBLISH_HEAD_BYTES)
            head = _Head(start[:keep])
            head.length = length
            self._incoming = head
        else:
            keep = length
            self._incoming = bytearray(start)
        self._command, self._keep = command, keep
        self._skip = length - keep - max(0, len(start) - keep)
        self._buffer, self._pos = b"", 0

    def _read_incoming(self) -> tuple[int, bytearray] | None:
        """Go on collecting the packet _begin started: one read of the socket, then the whole
        packet, or None for "not yet" (which lets paho's loop note that bytes came, for its
        keepalive, and do its writes between the reads of a large message)."""
        body = self._incoming
        assert body is not None
        if len(body) < self._keep or self._skip:
            self._short = True
            data = self.sock.recv(READ_CHUNK_BYTES)  # may raise BlockingIOError: what came is kept
            if not data:
                raise EOFError
            self._short = False
            used = min(len(data), self._keep - len(body))
            if used:
                body += data if used == len(data) else data[:used]
            skipped = min(len(data) - used, self._skip)
            self._skip -= skipped
            used += skipped
            if used < len(data):  # the packets after this one
                self._buffer, self._pos = data, used
            if len(body) < self._keep or self._skip:
                return None
        self._incoming = None
        return self._command, body

    def buffered(self) -> int:
        return 0 if self._short else len(self._buffer) - self._pos

    def pending(self) -> int:
        inner = getattr(self.sock, "pending", None)  # a TLS socket's decrypted bytes
        return self.buffered() + (inner() if inner is not None else 0)

    def send(self, data: bytes | bytearray) -> int:
        return int(self.sock.send(data))

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def close(self) -> None:
        self._buffer, self._pos, self._incoming = b"", 0, None
        self.sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


# A PUBLISH as the network thread hands it on: topic (bytes, as received), payload, packet id (0
# for QoS 0), QoS, DUP flag, RETAIN flag (the broker's stored last message, sent at subscribe).
Publish = tuple[bytes, bytes, int, int, bool, bool]


class _Cut(bytes):
    """The start of a payload longer than the source's max_payload_bytes, whose rest was discarded
    unread (``_BufferedSocket``); ``size`` is the whole payload's length, for the rejection."""

    size: int

    def __new__(cls, start: bytes, size: int) -> _Cut:
        cut = super().__new__(cls, start)
        cut.size = size
        return cut


def _decode_cut_publish(header: int, head: _Head, v5: bool) -> Publish | None:
    """A QoS 0 or 1 PUBLISH of which only its ``head`` was kept: its fields with a ``_Cut`` payload,
    or None when ``head`` does not hold its topic, packet id and properties."""
    publish = _decode_publish(header, head, v5)
    if publish is None:
        return None
    topic, start, mid, qos, dup, retain = publish
    return topic, _Cut(start, len(start) + head.length - len(head)), mid, qos, dup, retain


def _decode_publish(header: int, packet: bytearray, v5: bool) -> Publish | None:
    """A QoS 0 or 1 PUBLISH's fields (MQTT 5 properties are skipped: fmc reads none), or None for
    what paho's own decoder must handle: QoS 2, an empty topic, a packet that does not add up."""
    qos = (header & 0x06) >> 1
    if qos > 1:
        return None
    try:
        (topic_len,) = _U16.unpack_from(packet, 0)
        end = 2 + topic_len
        mid = 0
        if qos:
            (mid,) = _U16.unpack_from(packet, end)
            end += 2
        if v5:
            # the properties' length, a variable byte integer of 1 to 4 bytes
            pos = -1
            props_len = 0
            for i in range(4):
                byte = packet[end]
                end += 1
                props_len |= (byte & 0x7F) << (7 * i)
                if not byte & 0x80:
                    pos = end + props_len
                    break
        else:
            pos = end
    except (struct.error, IndexError):
        return None
    if topic_len == 0 or not 0 <= pos <= len(packet):
        return None
    return (bytes(packet[2 : 2 + topic_len]), bytes(memoryview(packet)[pos:]), mid, qos, bool(header & 0x08),
            bool(header & 0x01))


class _Client(mqtt.Client):
    """paho's client whose network thread can stop reading for a while (``read_gate`` clear)
    while it goes on writing (PUBACKs) and on running the keepalive timer (PINGREQ), and which
    reads its socket in chunks (``_BufferedSocket``).

    paho's loop reads whenever the socket is readable (``_loop`` -> ``loop_read``); while paused,
    ``loop_read`` waits a little for the gate instead, then lets the loop do its writes and
    keepalive check. Nothing is read meanwhile, so the broker's PINGRESP waits too: paho ends the
    connection after about two keepalives without a byte read. Pauses are meant to be short.
    """

    read_gate: threading.Event | None = None
    # paho formats a debug line for every packet before asking whether anyone wants it: when
    # this logger (on_log's) is set and not enabled for debug, those lines are not made at all
    quiet_unless_debug: logging.Logger | None = None
    # With manual acks: takes runs of QoS 0 and 1 PUBLISHes in place of on_message (_read_runs),
    # each run at most run_room() long
    on_publishes: Callable[[list[Publish]], None] | None = None
    run_room: Callable[[], int] | None = None
    # A PUBLISH longer than this is not read whole (_BufferedSocket): with on_publishes only, which
    # is handed a _Cut payload (rejected as payload_too_large, acknowledged as any rejection)
    max_publish_bytes: int | None = None

    def _create_socket(self) -> Any:
        return _BufferedSocket(super()._create_socket(), self.max_publish_bytes)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        gate = self.read_gate
        if gate is not None and not gate.is_set() and not gate.wait(READ_PAUSE_POLL_S):
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        sock = self._sock
        if type(sock) is _BufferedSocket and self.on_publishes is not None and self._manual_ack:
            return self._read_runs(sock, gate)
        rc = super().loop_read(max_packets)
        # paho handles one packet per turn of its loop (a select() each); handle what one read
        # brought at once, as long as the gate is open, then let the loop write (PUBACKs)
        handled = 1
        while (rc == MQTTErrorCode.MQTT_ERR_SUCCESS and type(sock) is _BufferedSocket and sock.buffered()
               and self._sock is sock and handled < PACKETS_PER_READ and (gate is None or gate.is_set())):
            rc = super().loop_read(max_packets)
            handled += 1
        return rc

    def _read_runs(self, sock: _BufferedSocket, gate: threading.Event | None) -> MQTTErrorCode:
        """paho's ``loop_read`` for up to PACKETS_PER_READ packets, with consecutive PUBLISHes
        handed to ``on_publishes`` as one run (decoded by ``_decode_publish``) instead of one
        MQTTMessage and one ``on_message`` call each: per message, paho's dispatch, the packet
        dicts and the callback's locks cost the network thread about as much as the mapping
        (py-spy, ``make bench``). Other packets (acks, pings, QoS 2, PUBLISHes that do not add
        up) go to paho's handlers in their turn, after the run before them. A run is at most
        PUBLISHES_PER_RUN and ``run_room()`` long, so a source that pauses reading (clears the
        gate) at its bound of unacknowledged messages is not read past it."""
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        run: list[Publish] = []
        room = self._room()
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        handled = 0
        while handled < PACKETS_PER_READ and (gate is None or gate.is_set()) and self._sock is sock:
            packet = self._next_packet(sock)
            if type(packet) is not tuple:
                rc = packet
                break
            handled += 1
            command, body = packet
            if command & 0xF0 != mqtt.PUBLISH:
                publish = None
            elif type(body) is bytearray:
                publish = _decode_publish(command, body, v5)
            else:  # a _Head: longer than max_payload_bytes, only its start was kept
                publish = self._cut_publish(command, body, v5)
                if publish is None:
                    rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
                    break
            if publish is not None:
                run.append(publish)
                if len(run) < room:
                    continue
            if run:
                self._dispatch_run(run)
                run = []
                room = self._room()
            if publish is None:
                rc = self._handle_packet(command, body)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        if run:
            self._dispatch_run(run)
        if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return self._loop_rc_handle(rc)
        return rc

    def _cut_publish(self, command: int, head: bytearray, v5: bool) -> Publish | None:
        assert type(head) is _Head
        publish = _decode_cut_publish(command, head, v5)
        if publish is None:  # QoS 2 (never asked for), or MQTT 5 properties past the part kept
            self._easy_log(mqtt.MQTT_LOG_ERR, "a PUBLISH of %d bytes, more than max_payload_bytes, cannot be "
                           "decoded from its first %d bytes (QoS %d)", head.length, len(head), (command & 0x06) >> 1)
        return publish

    def _room(self) -> int:
        return min(PUBLISHES_PER_RUN, self.run_room()) if self.run_room is not None else PUBLISHES_PER_RUN

    def _dispatch_run(self, run: list[Publish]) -> None:
        on_publishes = self.on_publishes
        if on_publishes is None:
            return
        with self._in_callback_mutex:
            try:
                on_publishes(run)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_publishes: %s", err)
                if not self.suppress_exceptions:
                    raise

    def _next_packet(self, sock: _BufferedSocket) -> tuple[int, bytearray] | MQTTErrorCode:
        """The next whole packet from the chunked socket, or what paho's reader would return
        instead (MQTT_ERR_AGAIN when it has not all arrived yet)."""
        try:
            packet = sock.read_packet()
        except (BlockingIOError, ssl.SSLWantReadError):
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except ssl.SSLWantWriteError:
            self._call_socket_register_write()
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except EOFError:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        except ValueError:  # a remaining length of more than 4 bytes: a broken or hostile peer
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        except OSError as err:
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        return MQTTErrorCode.MQTT_ERR_AGAIN if packet is None else packet

    def _handle_packet(self, command: int, body: bytearray) -> MQTTErrorCode:
        """One whole packet to paho's handlers, in the form its own reader leaves it."""
        self._in_packet = {"command": command, "have_remaining": 1, "remaining_count": [], "remaining_mult": 1,
                           "remaining_length": len(body), "packet": body, "to_process": 0, "pos": 0}
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                           "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}
        return rc

    def _packet_read(self) -> MQTTErrorCode:
        """One whole packet from the chunked socket, to paho's handlers. paho's own reader asks the
        socket for the command byte, each length byte and the rest in turn, with a dict of state
        between: a tenth of the agent's time per message (py-spy). The same checks and outcomes."""
        sock = self._sock
        if type(sock) is not _BufferedSocket:
            return super()._packet_read()
        packet = self._next_packet(sock)
        if type(packet) is not tuple:
            return packet
        command, body = packet
        if type(body) is _Head:  # longer than max_payload_bytes: only its start was kept
            publish = self._cut_publish(command, body, self._protocol == MQTTProtocolVersion.MQTTv5)
            if publish is None:
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
            self._dispatch_run([publish])
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._handle_packet(command, body)

    def _handle_publish(self) -> MQTTErrorCode:
        """A QoS 0 or 1 PUBLISH, decoded by ``_decode_publish`` rather than by paho, whose decoder
        builds struct formats for each packet and whose message carries a ``threading.Condition``
        each (for publishing, never used for a message received): together a tenth of the agent's
        time per message (py-spy, ``make bench``). The same fields come out
        (``tests/test_mqtt_adapter.py`` checks against paho's decoder). Anything else (QoS 2, an
        empty topic, a packet that does not add up) goes to paho's own code."""
        header = self._in_packet["command"]
        publish = _decode_publish(header, self._in_packet["packet"], self._protocol == MQTTProtocolVersion.MQTTv5)
        if publish is None:
            return super()._handle_publish()
        topic, payload, mid, qos, dup, retain = publish
        message = mqtt.MQTTMessage.__new__(mqtt.MQTTMessage)
        message._topic = topic
        message.mid = mid
        message.qos = qos
        message.dup = dup
        message.retain = retain
        message.payload = payload
        message.properties = None
        message.state = 0
        message.timestamp = time.monotonic()
        quiet = self.quiet_unless_debug
        if quiet is None or quiet.isEnabledFor(logging.DEBUG):
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received PUBLISH (d%d, q%d, r%d, m%d), %r, ...  (%d bytes)",
                           message.dup, qos, message.retain, mid, message._topic, len(message.payload))
        self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _easy_log(self, level: int, fmt: str, *args: Any) -> None:
        quiet = self.quiet_unless_debug
        if level == mqtt.MQTT_LOG_DEBUG and quiet is not None and not quiet.isEnabledFor(logging.DEBUG):
            return
        super()._easy_log(level, fmt, *args)  # type: ignore[arg-type]

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        # paho matches every topic against per-filter callbacks (message_callback_add) under a
        # lock, per message; fmc registers none, so the one on_message is called directly
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise


class _Ack:
    """One QoS 1 message waiting for its commit. The ingest acks a committed group in one go
    through ``owner.ack_many``; calling the object acks just this message."""

    __slots__ = ("done", "generation", "mid", "owner", "qos")

    def __init__(self, owner: MqttSource, mid: int, qos: int, generation: int) -> None:
        self.owner = owner
        self.mid = mid
        self.qos = qos
        self.generation = generation
        self.done = False

    def __call__(self) -> None:
        self.owner.ack_many((self,))


def _is_v5(cfg: config.MqttSource) -> bool:
    return cfg.protocol == "5"


def build_client(
    cfg: config.MqttSource, client_id: str, *, persistent: bool, manual_ack: bool, reconnect: bool = True
) -> mqtt.Client:
    """A paho client with the source's protocol, credentials and TLS (not yet connected)."""
    client = _Client(**client_options(cfg, client_id, clean=not persistent, manual_ack=manual_ack,
                                      reconnect=reconnect))
    set_credentials(client, cfg)
    return client


def _connect_options(cfg: config.MqttSource, *, persistent: bool) -> dict[str, Any]:
    """Keyword arguments for connect()/connect_async(): MQTT 5 session and flow-control properties."""
    if not _is_v5(cfg):
        return {}
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S if persistent else 0
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    return {"clean_start": not persistent, "properties": props}


def subscription_filters(subscriptions: Sequence[config.Subscription]) -> list[tuple[str, int]]:
    """Distinct MQTT filters with the highest QoS asked for each (a filter subscribed twice would
    make the broker deliver every message twice)."""
    qos_by_filter: dict[str, int] = {}
    for sub in subscriptions:
        f = sub.mqtt_filter()
        qos_by_filter[f] = max(qos_by_filter.get(f, 0), sub.qos)
    return list(qos_by_filter.items())


# --- the source ----------------------------------------------------------------------------------------


class MqttSource:
    """One broker connection: subscriptions, mapping, manual acks after the spool commit."""

    def __init__(
        self,
        cfg: config.MqttSource,
        mapper: Mapper,
        ingest: IngestPort,
        metrics: AgentMetrics,
        logger: logging.Logger,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._mapper = mapper
        self._ingest = ingest
        self._log = logger
        self._received = metrics.received.labels(cfg.name)
        self._connected_gauge = metrics.connected.labels(cfg.name)
        self._persistent = not cfg.clean_session
        # a persistent session needs the fixed client_id (the config insists); a clean one may be random
        self._client_id = cfg.client_id or f"fmc-{cfg.name}-{secrets.token_hex(4)}"
        self._filters = subscription_filters(cfg.subscribe)
        self._rng = random.Random()
        self._attempt = 0  # reconnect attempts since the last successful connection

        # _lock guards the ack gate: _generation counts successful connections, _link_up is true
        # from a successful CONNACK until paho reports the disconnect; _unacked counts messages
        # handed to the ingest whose ack has not run yet.
        self._lock = threading.Lock()
        self._acks_done = threading.Condition(self._lock)
        self._generation = 0
        self._resumed = True  # whether the broker resumed the session of the connection before (CONNACK)
        self._link_up = False
        self._unacked = 0
        self._stopping = False
        self._started = False
        self._connected = False
        self._subscribed = False
        # SUBSCRIBE mid -> (filter, QoS asked) (network thread only)
        self._pending_subscribes: dict[int, list[tuple[str, int]]] = {}
        self._max_qos: int | None = None  # MQTT 5: the Maximum QoS of this connection's CONNACK
        # set: paho's thread may read from the broker; cleared (under _lock) while MAX_IN_FLIGHT
        # messages wait for their commit
        self._read_gate = threading.Event()
        self._read_gate.set()
        self._dropped = metrics.rejected.labels(cfg.name, "spool_busy")
        self._last_warning: dict[str, float] = {}  # kind -> monotonic time of the last such warning
        self._problem = "not connected yet"  # why the source is not connected, for /health

        self._client = build_client(cfg, self._client_id, persistent=self._persistent, manual_ack=True)
        self._client.read_gate = self._read_gate
        self._paho_log = logger.getChild("paho")
        self._client.quiet_unless_debug = self._paho_log
        self._client.on_log = self._on_log
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_publishes = self._on_publishes
        self._client.run_room = self._run_room
        self._client.max_publish_bytes = cfg.max_payload_bytes + PUBLISH_HEAD_BYTES

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def problem(self) -> str:
        """Why the source is not connected (the last failure), for the agent's /health."""
        return self._problem

    def live_equipment(self) -> set[str]:
        """None: every MQTT message is a value of its own (no change-only subscription)."""
        return set()

    @property
    def subscribed(self) -> bool:
        """True once the broker answered this connection's SUBSCRIBE (messages flow from then on)."""
        return self._subscribed

    @property
    def client_id(self) -> str:
        return self._client_id

    def start(self) -> None:
        """Connect in the background (paho's thread) and return at once; reconnects forever."""
        if self._started:
            raise RuntimeError(f"mqtt source {self.name!r} was already started")
        self._started = True
        self._connected_gauge.set(0)
        self._client.reconnect_delay_set(self.cfg.reconnect_min_s, self.cfg.reconnect_min_s)  # type: ignore[arg-type]
        options = _connect_options(self.cfg, persistent=self._persistent)
        self._client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, **options)
        self._client.loop_start()
        self._log.info(
            "connecting to %s:%d as %r (MQTT %s%s, %s session)", self.cfg.host, self.cfg.port, self._client_id,
            self.cfg.protocol, ", TLS" if self.cfg.tls else "", "persistent" if self._persistent else "clean",
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking messages, let pending acks go out, disconnect cleanly, end paho's thread."""
        if not self._started:
            return
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._stopping:
                return
            self._stopping = True  # from now on messages are neither submitted nor acked
            self._read_gate.set()  # paho's loop must read on, to see the DISCONNECT through
            # The ingest commits what it already has within its commit interval; waiting for those
            # acks spares the broker resending (and us storing twice) messages already on disk.
            self._acks_done.wait_for(lambda: self._unacked == 0, timeout=min(ACK_GRACE_MAX_S, timeout / 2))
            self._link_up = False  # nothing may be queued behind the DISCONNECT
        self._client.disconnect()
        # loop_stop() joins paho's thread without a time limit; that thread may be blocked in
        # ingest.submit() (full queue), which must not hang the agent's shutdown.
        stopper = threading.Thread(target=self._client.loop_stop, name=f"fmc-mqtt-stop-{self.name}", daemon=True)
        stopper.start()
        stopper.join(max(0.1, deadline - time.monotonic()))
        if stopper.is_alive():
            self._log.warning("the MQTT network thread did not end within %.1fs; leaving it behind", timeout)
        self._connected = False
        self._subscribed = False
        self._connected_gauge.set(0)
        self._log.info("stopped (%d message(s) handed over but not acknowledged: the broker resends them)",
                       self._unacked)

    # --- acks -------------------------------------------------------------------------------

    def ack_many(self, acks: Sequence[_Ack]) -> None:
        """Acknowledge a committed group of messages with one write to the broker.

        Why acks from another thread are safe (paho 2.2 source): ``ack`` -> ``_send_puback`` ->
        ``_packet_queue`` only appends to ``_out_packet`` (a ``collections.deque``, whose append is
        atomic) and writes one byte to the socket pair that wakes paho's ``select``; the network
        thread does the socket write. That is the path ``publish()`` takes from any thread.

        Two things are not safe, and the gate under ``_lock`` prevents them: an ack for a message
        from an earlier connection (after a reconnect the broker may reuse that packet id for a
        different message, which we would acknowledge unseen; the old one is resent anyway), and
        an ack queued after the connection dropped, which could reach the next connection before
        its CONNECT. paho calls on_disconnect (which closes the gate under the same lock) before
        it reconnects, so an ack is either queued while the link is up or dropped.

        Speed: one PUBACK per message, each its own queue entry, wake-up and ``send`` system call,
        costs the network thread as much as receiving the message. A group's PUBACKs (4 bytes
        each; MQTT 5 allows the same short form for reason Success) go as one queue entry. MQTT
        wants PUBACKs in the order the PUBLISHes came, which a group keeps.
        """
        fresh = [a for a in acks if not a.done]
        for a in fresh:
            a.done = True  # only the ingest's writer thread acks, so this needs no lock
        if not fresh:
            return
        # Build the packets before taking the lock: on_message waits on the same lock, and a
        # group can hold thousands of acks.
        generation = fresh[-1].generation
        mids = [a.mid for a in fresh if a.generation == generation and a.qos == 1]
        queue_packet = getattr(self._client, "_packet_queue", None)
        packets = b"".join(_PUBACK.pack(0x40, 2, mid) for mid in mids) if queue_packet and len(mids) > 1 else b""
        with self._lock:
            self._unacked -= len(fresh)
            if self._unacked == 0:
                self._acks_done.notify_all()
            if self._unacked < MAX_IN_FLIGHT:
                self._read_gate.set()
            if not mids or not self._link_up or generation != self._generation:
                return
            if packets:
                queue_packet(mqtt.PUBACK, packets, 0, 0)
            else:  # one message, or a paho without that internal: one by one
                for mid in mids:
                    self._client.ack(mid, 1)

    # --- paho callbacks (network thread) ---------------------------------------------------------

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        # paho's own lines (never the password). Our callbacks report connects, refusals and
        # losses with reasons, so paho's lines are debug detail, except its errors while running;
        # "Client is not connected" is paho's loop finding no socket, after every failed
        # (re)connect and after a clean stop(): on_connect_fail and on_disconnect say it better.
        if level == mqtt.MQTT_LOG_ERR and not self._stopping and not text.startswith("Client is not connected"):
            self._paho_log.warning("%s", text)
        else:
            self._paho_log.debug("%s", text)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # what paho's own handlers decode (QoS 2, a client without the chunked socket): a run of one
        self._on_publishes([(msg._topic, msg.payload, msg.mid, msg.qos, bool(msg.dup), bool(msg.retain))])

    def _run_room(self) -> int:
        # read without the lock: only this thread adds to _unacked, so it is at most this high
        return max(1, MAX_IN_FLIGHT - self._unacked)

    def _on_publishes(self, publishes: list[Publish]) -> None:
        """Map a run of messages and hand them to the ingest in one go; QoS 1 ones with their acks."""
        self._received.inc(len(publishes))
        awaiting = sum(1 for p in publishes if p[3])  # QoS 1 (and 2): acked after the commit
        paused = False
        with self._lock:
            if self._stopping:
                return  # not acked: the broker sends them again to the next start
            generation, resumed = self._generation, self._resumed
            if awaiting:
                self._unacked += awaiting
                if self._unacked >= MAX_IN_FLIGHT and self._read_gate.is_set():
                    self._read_gate.clear()  # until acks free room (ack_many)
                    paused = True
        if paused:
            self._warn_now_and_then(
                "paused", "%d messages are waiting for the spool: pausing reads from the broker until it catches "
                "up (the broker sends more unacknowledged messages than the %d it should; with MQTT 3.1.1 set its "
                "max_inflight_messages to %d or less)", MAX_IN_FLIGHT, RECEIVE_MAXIMUM, RECEIVE_MAXIMUM,
            )
        messages: list[tuple[str, bytes, MapResult, _Ack | None]] = []
        for raw_topic, payload, mid, qos, dup, retain in publishes:
            try:
                topic = raw_topic.decode("utf-8")
            except UnicodeDecodeError:  # brokers check UTF-8, but no message may stop this thread
                topic = _INVALID_TOPIC
                result = MapResult([], [Rejection("topic_not_utf8", "the topic is not valid UTF-8")])
            else:
                if type(payload) is _Cut:  # only its start was read
                    result = self._mapper.too_large(payload.size)
                else:
                    # each message its own receive time: a message without a timestamp of its own is
                    # stamped with it, and two points of a series with one timestamp are one point
                    result = self._map(topic, payload, time.time_ns(), retain)
            ack = None
            if qos:
                ack = _Ack(self, mid, qos, generation)
                # lets the ingest commit a message the broker delivers again only once: the broker
                # resends with the same packet id and the DUP flag (docs/spool.md, "Redeliveries")
                result.delivery = Delivery(mid, message_digest(topic, payload), dup, generation, resumed)
            messages.append((topic, payload, result, ack))
        try:
            # never waits (see MAX_IN_FLIGHT): QoS 1 messages are queued at once, QoS 0 ones are
            # dropped when the ingest's queue is full (they were sent at most once)
            dropped = self._ingest.submit_many(self.name, messages)
        except Exception as e:
            # paho would end its thread on an exception from a callback; leave the messages
            # unacknowledged instead (the broker resends them after a reconnect)
            if self._warn_now_and_then("ingest", "the ingest did not take %d message(s) (the first on %r); they "
                                       "stay unacknowledged: %s: %s", len(messages), messages[0][0],
                                       type(e).__name__, e, level=logging.ERROR):
                self._log.debug("the ingest's error", exc_info=True)
            if awaiting:
                with self._lock:
                    self._unacked -= awaiting
                    if self._unacked < MAX_IN_FLIGHT:
                        self._read_gate.set()
            return
        if dropped:
            self._dropped.inc(dropped)
            self._warn_now_and_then("qos0", "QoS 0 messages dropped: the spool cannot keep up and QoS 0 carries no "
                                    "promise of delivery (fmc_rejected_total{reason=\"spool_busy\"} counts them; "
                                    "subscribe with qos = 1 to keep them)")

    def _warn_now_and_then(self, kind: str, message: str, *args: Any, level: int = logging.WARNING) -> bool:
        """Log at most one line of each kind per LOG_EVERY_S; True when this one was logged."""
        now = time.monotonic()
        if now - self._last_warning.get(kind, -LOG_EVERY_S) < LOG_EVERY_S:
            return False
        self._last_warning[kind] = now
        self._log.log(level, message, *args)
        return True

    def _map(self, topic: str, payload: bytes, received_ns: int, retained: bool) -> MapResult:
        try:
            return self._mapper.map(topic, payload, received_ns, retained)
        except Exception as e:  # a mapping bug: record it, keep the connection
            self._log.exception("mapping failed for a message on %r", topic)
            return MapResult([], [Rejection("internal_error", f"{type(e).__name__}: {e}"[:200])])

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            # the broker closes the connection next; on_disconnect schedules the retry
            self._problem = describe_refusal(reason)
            self._log.warning("%s:%d: %s", self.cfg.host, self.cfg.port, self._problem)
            return
        with self._lock:
            self._generation += 1
            self._resumed = bool(flags.session_present)
            generation = self._generation
        # before any message of this connection is handled (paho reads on after this callback): a new
        # session forgets, in the spool, the packet ids of the earlier ones (docs/spool.md, "Redeliveries")
        begin_session = getattr(self._ingest, "begin_session", None)
        if begin_session is not None:
            begin_session(self.name, generation, resumed=bool(flags.session_present))
        with self._lock:
            self._link_up = True
        self._max_qos = connack_max_qos(properties)
        self._problem = ""
        self._attempt = 0
        self._connected = True
        self._connected_gauge.set(1)
        self._log.info(
            "connected to %s:%d (%s session)", self.cfg.host, self.cfg.port,
            "resumed" if flags.session_present else "new",
        )
        # Always subscribe again: a broker restarted without persistence has forgotten the
        # session even though it may say otherwise later; with a resumed session it is harmless.
        rc, mid = client.subscribe(self._filters)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            self._log.warning("could not send SUBSCRIBE (%s); it is sent again on the next connection", rc)
        else:
            self._pending_subscribes[mid] = list(self._filters)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Properties | None
    ) -> None:
        filters = self._pending_subscribes.pop(mid, [])
        for (topic_filter, asked), reason in zip(filters, reasons, strict=False):
            if reason.is_failure:
                self._log.error(
                    "the broker refused the subscription to %r (%s): no messages arrive for it; check the "
                    "broker's ACL for this user", topic_filter, reason,
                )
            elif reason.value < asked:  # once per connection: the SUBSCRIBE is sent on each connect
                self._log.warning("%s", downgrade_warning(topic_filter, asked, reason.value, self._max_qos))
            else:
                self._log.debug("subscribed to %r with QoS %d", topic_filter, reason.value)
        self._subscribed = True

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._link_up = False
            stopping = self._stopping
            self._read_gate.set()  # the next connection's CONNACK must be read
        was_connected = self._connected
        self._connected = False
        self._subscribed = False
        self._connected_gauge.set(0)
        if stopping:
            self._log.info("disconnected from %s:%d", self.cfg.host, self.cfg.port)
            return
        delay = self._schedule_retry()
        if was_connected or not self._problem:
            self._problem = f"lost the connection to {self.cfg.host}:{self.cfg.port} ({reason})"
        self._log.warning(
            "%s %s:%d (%s); reconnecting in %.1fs", "lost the connection to" if was_connected else "no session with",
            self.cfg.host, self.cfg.port, reason, delay,
        )

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError:` around reconnect(), so the exception
        # being handled is the reason (refused, DNS, TLS); paho's callback does not pass it.
        error = sys.exc_info()[1]
        delay = self._schedule_retry()
        self._problem = describe_connect_error(error, self.cfg.host, self.cfg.port, "mqtt")
        self._log.warning("%s; retrying in %.1fs", self._problem, delay)

    def _schedule_retry(self) -> float:
        # paho doubles its delay without jitter; thousands of gateways that lost the same broker
        # would all come back in the same second. Set paho's next wait to our jittered backoff.
        delay = backoff_delay(self._attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)
        self._attempt += 1
        self._client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]
        return delay


# --- fmc check -----------------------------------------------------------------------------------------


async def check_mqtt(cfg: config.MqttSource, timeout: float = 5.0) -> CheckResult:
    """Connect, wait for CONNACK, subscribe every filter, report what failed, disconnect.

    Uses a client id of its own and a clean session: connecting with the agent's client id
    would take over (and with a clean session, delete) the running agent's session.
    """
    return await asyncio.to_thread(_check_blocking, cfg, timeout)


def _check_blocking(cfg: config.MqttSource, timeout: float) -> CheckResult:
    name = f"mqtt:{cfg.name}"
    try:
        client = build_client(
            cfg, f"fmc-check-{secrets.token_hex(6)}", persistent=False, manual_ack=False, reconnect=False
        )
    except (OSError, ValueError) as e:  # unreadable CA/cert/key file
        return CheckResult(name, False, f"TLS settings: {e}")
    filters = subscription_filters(cfg.subscribe)
    try:
        problem = check_handshake(client, cfg, "mqtt", _connect_options(cfg, persistent=False), filters, timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    if problem is not None:
        return CheckResult(name, False, problem)
    return CheckResult(
        name, True,
        f"connected to {cfg.host}:{cfg.port} (MQTT {cfg.protocol}{', TLS' if cfg.tls else ''}), "
        f"{len(filters)} subscription(s) accepted",
    )
