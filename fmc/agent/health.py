"""Which parts of the agent work: the spool, the ingest writer, the drain loop and each source.

Each part reports itself (``ok`` / ``down`` with a reason) from whatever thread it runs in; a
source is asked when someone looks (``watch``). ``GET /health`` on the metrics listener serves the
``snapshot`` as JSON: HTTP 200 when every part is ok, 503 otherwise. User documentation:
``docs/deploy.md`` (the endpoint) and ``docs/spool.md`` (what the agent does when a part fails).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from fmc.agent.spool import SpoolError

SPOOL = "spool"
INGEST = "ingest"
DRAIN = "drain"


@dataclass(slots=True)
class _State:
    ok: bool
    reason: str
    since: float  # wall clock, s


class Health:
    """The state of each part. Thread-safe; cheap enough to update on every change."""

    def __init__(self, parts: Iterable[str] = (SPOOL, INGEST, DRAIN)) -> None:
        self._lock = threading.Lock()
        now = time.time()
        self._parts: dict[str, _State] = {name: _State(True, "", now) for name in parts}
        self._watched: dict[str, Callable[[], tuple[bool, str]]] = {}

    def ok(self, part: str) -> None:
        self._set(part, True, "")

    def down(self, part: str, reason: str) -> None:
        self._set(part, False, reason)

    def _set(self, part: str, ok: bool, reason: str) -> None:
        with self._lock:
            state = self._parts.get(part)
            if state is not None and state.ok == ok and state.reason == reason:
                return
            since = state.since if state is not None and state.ok == ok else time.time()
            self._parts[part] = _State(ok, reason, since)

    def watch(self, part: str, probe: Callable[[], tuple[bool, str]]) -> None:
        """A part asked for its state at each look (a source: connected or not, and why)."""
        with self._lock:
            self._watched[part] = probe
            self._parts.setdefault(part, _State(True, "", time.time()))

    def is_ok(self, part: str) -> bool:
        return bool(self.snapshot()["parts"][part]["status"] == "ok")

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            watched = list(self._watched.items())
        for part, probe in watched:
            try:
                ok, reason = probe()
            except Exception as e:  # a probe must never break the endpoint
                ok, reason = False, f"state unknown: {type(e).__name__}: {e}"
            self._set(part, ok, "" if ok else reason)
        with self._lock:
            parts = {name: _render(state) for name, state in self._parts.items()}
        return {"status": "ok" if all(p["status"] == "ok" for p in parts.values()) else "down", "parts": parts}


def describe(error: BaseException | None) -> str:
    """An error as a reason: the message alone when it names what failed (a SpoolError names the
    file and the operation), else with its type."""
    if error is None:
        return "no error"
    if isinstance(error, SpoolError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _render(state: _State) -> dict[str, Any]:
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.since))
    if state.ok:
        return {"status": "ok", "since": since}
    return {"status": "down", "reason": state.reason, "since": since}


# --- the listener: /metrics (Prometheus) and /health (JSON) ----------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        pass


def listen(host: str, port: int, registry: CollectorRegistry, health: Health) -> WSGIServer:
    """Bind ``host:port`` for ``/health`` (from ``health``) and everything else as Prometheus
    metrics; nothing is answered until ``serve_in_thread``. Binding first lets the agent fail on a
    taken port before any source connects. Raises ``OSError`` when the address cannot be bound."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").rstrip("/") == "/health":
            snapshot = health.snapshot()
            body = json.dumps(snapshot, ensure_ascii=False, indent=1).encode() + b"\n"
            status = "200 OK" if snapshot["status"] == "ok" else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json; charset=utf-8"),
                                    ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
            return [body]
        return metrics_app(environ, start_response)  # type: ignore[no-any-return]

    class Server(_Server):
        address_family = _family(host, port)

    return make_server(host, port, app, Server, handler_class=_QuietHandler)


def serve_in_thread(server: WSGIServer) -> None:
    """Answer on ``server`` from a daemon thread; ``shutdown()`` and ``server_close()`` it to stop."""
    threading.Thread(target=server.serve_forever, name="fmc-metrics", daemon=True).start()


def _family(host: str, port: int) -> socket.AddressFamily:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return infos[0][0]
