"""A Sparkplug B edge node for the tests: paho-mqtt and protobuf, publishing through the real Mosquitto.

It does what an edge node must (Sparkplug 3.0): an NDEATH will with its ``bdSeq``, NBIRTH (seq 0,
``bdSeq``, ``Node Control/Rebirth`` = false) and DBIRTHs with names and aliases, data by alias with
the next ``seq``, DDEATH, and a new birth sequence when an NCMD ``Node Control/Rebirth`` = true comes.
``kill()`` cuts its TCP connection without a DISCONNECT, so the broker publishes the will.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from fmc.sources.sparkplug import payload as spb

HOST = "127.0.0.1"


@dataclass
class Def:
    """A metric as its birth declares it."""

    name: str
    alias: int | None
    datatype: int
    value: float | int | bool | str | None


def put_value(m: object, datatype: int, value: float | int | bool | str | None) -> None:
    if value is None:
        m.is_null = True  # type: ignore[attr-defined]
    elif datatype in (spb.INT8, spb.INT16, spb.INT32, spb.UINT8, spb.UINT16, spb.UINT32):
        m.int_value = int(value) & 0xFFFFFFFF  # type: ignore[attr-defined]
    elif datatype in (spb.INT64, spb.UINT64, spb.DATETIME):
        m.long_value = int(value) & 0xFFFFFFFFFFFFFFFF  # type: ignore[attr-defined]
    elif datatype == spb.FLOAT:
        m.float_value = float(value)  # type: ignore[attr-defined]
    elif datatype == spb.DOUBLE:
        m.double_value = float(value)  # type: ignore[attr-defined]
    elif datatype == spb.BOOLEAN:
        m.boolean_value = bool(value)  # type: ignore[attr-defined]
    else:
        m.string_value = str(value)  # type: ignore[attr-defined]


def encode(seq: int | None, metrics: list[tuple[str | None, int | None, int | None, object]],
           timestamp_ms: int | None = None, quality: dict[int, int] | None = None,
           value_types: dict[int, int] | None = None) -> bytes:
    """A payload: metrics are (name, alias, datatype, value); a data message sends no datatype, and
    ``value_types`` (alias -> datatype) says which field carries its value; ``quality`` maps a
    metric's index to its Quality property."""
    ts = timestamp_ms if timestamp_ms is not None else time.time_ns() // 1_000_000
    msg = spb.ProtoPayload(timestamp=ts)
    if seq is not None:
        msg.seq = seq
    for i, (name, alias, datatype, value) in enumerate(metrics):
        m = msg.metrics.add(timestamp=ts)
        if name is not None:
            m.name = name
        if alias is not None:
            m.alias = alias
        if datatype is not None:
            m.datatype = datatype
        kind = datatype if datatype is not None else (value_types or {}).get(alias or -1, spb.DOUBLE)
        put_value(m, kind, value)  # type: ignore[arg-type]
        if quality and i in quality:
            m.properties.keys.append("Quality")
            m.properties.values.add(type=spb.INT32, int_value=quality[i])
    return bytes(msg.SerializeToString())


class EdgeNode:
    def __init__(self, port: int, group: str, node: str, devices: dict[str, list[Def]],
                 node_metrics: list[Def] | None = None, *, bd_seq: int = 0, client_id: str | None = None) -> None:
        self.port = port
        self.group = group
        self.node = node
        self.devices = devices
        self.node_metrics = node_metrics or []
        self.bd_seq = bd_seq
        self.seq = 0
        self.rebirths = 0  # rebirth requests received
        self._lock = threading.Lock()
        self._rebirth = threading.Condition(self._lock)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"edge-{group}-{node}",
                                  clean_session=True, reconnect_on_failure=False)
        self.client.on_message = self._on_message

    def topic(self, kind: str, device: str | None = None) -> str:
        return f"spBv1.0/{self.group}/{kind}/{self.node}" + (f"/{device}" if device else "")

    def connect(self) -> EdgeNode:
        will = encode(None, [(spb.BDSEQ, None, spb.INT64, self.bd_seq)])
        self.client.will_set(self.topic("NDEATH"), will, qos=1, retain=False)
        self.client.connect(HOST, self.port, keepalive=5)
        self.client.loop_start()
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(self.topic("NCMD"), qos=0)
        assert done.wait(5), "the edge node's SUBSCRIBE was not answered"
        self.birth()
        return self

    def _publish(self, topic: str, data: bytes) -> None:
        info = self.client.publish(topic, data, qos=0)
        info.wait_for_publish(5)

    def birth(self) -> None:
        """NBIRTH and every DBIRTH: a new sequence from seq 0."""
        with self._lock:
            self.seq = 0
            node = [(spb.BDSEQ, None, spb.INT64, self.bd_seq), (spb.REBIRTH, None, spb.BOOLEAN, False)]
            node += [(d.name, d.alias, d.datatype, d.value) for d in self.node_metrics]
            self._publish(self.topic("NBIRTH"), encode(self._next(), node))
            for device, defs in self.devices.items():
                metrics = [(d.name, d.alias, d.datatype, d.value) for d in defs]
                self._publish(self.topic("DBIRTH", device), encode(self._next(), metrics))

    def _next(self) -> int:
        seq = self.seq
        self.seq = (self.seq + 1) % 256
        return seq

    def ddata(self, device: str, values: dict[int, object], *, skip: int = 0, timestamp_ms: int | None = None) -> None:
        """DDATA by alias (``skip`` seq numbers left out first: a gap)."""
        with self._lock:
            self.seq = (self.seq + skip) % 256
            metrics = [(None, alias, None, value) for alias, value in values.items()]
            types = {d.alias: d.datatype for d in self.devices[device] if d.alias is not None}
            self._publish(self.topic("DDATA", device), encode(self._next(), metrics, timestamp_ms, value_types=types))

    def ndata(self, values: dict[int, object], timestamp_ms: int | None = None) -> None:
        with self._lock:
            metrics = [(None, alias, None, value) for alias, value in values.items()]
            types = {d.alias: d.datatype for d in self.node_metrics if d.alias is not None}
            self._publish(self.topic("NDATA"), encode(self._next(), metrics, timestamp_ms, value_types=types))

    def ddeath(self, device: str) -> None:
        with self._lock:
            self._publish(self.topic("DDEATH", device), encode(self._next(), []))

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        decoded = spb.decode(msg.payload)
        assert not isinstance(decoded, spb.Rejection)
        rebirth = decoded.metric(spb.REBIRTH)
        if rebirth is not None and rebirth.value is True:
            # not in paho's network thread: birth() waits for its publishes, which that thread sends
            threading.Thread(target=self._answer_rebirth, daemon=True).start()

    def _answer_rebirth(self) -> None:
        self.birth()
        with self._rebirth:
            self.rebirths += 1
            self._rebirth.notify_all()

    def wait_rebirths(self, n: int, timeout: float = 5.0) -> None:
        with self._rebirth:
            assert self._rebirth.wait_for(lambda: self.rebirths >= n, timeout), \
                f"expected {n} rebirth request(s), got {self.rebirths}"

    def kill(self) -> None:
        """Cut the connection without a DISCONNECT: the broker publishes the NDEATH will."""
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
        self.client.loop_stop()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
