"""A small HTTP/1.1 reverse proxy on 127.0.0.1 that injects faults in front of a real store.

The store itself is never mocked: requests are forwarded to it unless the test asked for a fault
(a status such as 503 or 429, a 413 for big bodies, a closed connection, a stall). Every request
is recorded, decompressed, so tests can assert exactly what a client sent.

The proxy runs its own event loop in a thread, so it works the same under sync and async tests
and keeps answering while the test's loop is busy awaiting the client under test.

    proxy = FaultProxy(influxdb.url).start()
    proxy.then(Respond(503), Respond(503))        # the next two requests
    proxy.on_path("/api/v2/write", Respond(204))  # every request to that path
    proxy.default = TooLarge(4096)                # everything else
    proxy.then(Delay(3.0))                        # a slow store: held 3 s, then forwarded
    ...
    proxy.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import httpx

LOOPBACK = "127.0.0.1"
MAX_HEADER_BYTES = 64 * 1024
STALL_LIMIT_S = 60.0  # a stalled request is dropped after this, or when the proxy stops
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding",
}


# --- what the proxy does with one request ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forward:
    """Pass the request to the store and its answer back."""


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer with this status (and headers/body) without asking the store."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class TooLarge:
    """413 when the body, decompressed, is over ``max_bytes``; else forward.

    Decompressed, so that the number of lines decides, not how well they compress (InfluxDB 1.6's
    own max-body-size counts the bytes as sent).
    """

    max_bytes: int


@dataclass(frozen=True, slots=True)
class Close:
    """Read the request, then close the connection without any answer."""


@dataclass(frozen=True, slots=True)
class Stall:
    """Read the request and never answer (until the client gives up or the proxy stops)."""


@dataclass(frozen=True, slots=True)
class Delay:
    """Hold the request for ``seconds``, then forward it (a slow store)."""

    seconds: float


Action = Forward | Respond | TooLarge | Close | Stall | Delay


@dataclass(slots=True)
class RecordedRequest:
    method: str
    path: str  # as received, with any prefix
    query: dict[str, str]  # last value of each parameter
    headers: dict[str, str]  # lower-case names
    body_size: int  # bytes on the wire (compressed when the client compressed)
    body: bytes  # decompressed
    action: str  # what the proxy did: forward, respond 503, too large 413, close, stall, delay
    at: float = 0.0  # time.monotonic() when the request was read (before any delay)

    @property
    def lines(self) -> list[str]:
        return [line for line in self.body.decode("utf-8").split("\n") if line]


class ProxyError(Exception):
    pass


class FaultProxy:
    def __init__(self, upstream: str, *, prefix: str = "") -> None:
        """``prefix``: a path the proxy serves under and strips before forwarding (a reverse proxy path)."""
        self.upstream = upstream.rstrip("/")
        self.prefix = prefix.rstrip("/")
        self.default: Action = Forward()
        self.requests: list[RecordedRequest] = []
        self.port = 0
        self._queued: deque[Action] = deque()
        self._by_path: dict[str, Action] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._handlers: set[asyncio.Task[None]] = set()  # open client connections, cancelled on stop
        self._client: httpx.AsyncClient | None = None  # to the store; lives in the proxy's loop

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{self.prefix}"

    # --- programming ------------------------------------------------------------------------

    def then(self, *actions: Action) -> FaultProxy:
        """Use these actions for the next requests, in order (before path rules and the default)."""
        with self._lock:
            self._queued.extend(actions)
        return self

    def on_path(self, path: str, action: Action) -> FaultProxy:
        """Use ``action`` for every request to ``path`` (after the prefix is stripped)."""
        with self._lock:
            self._by_path[path] = action
        return self

    def reset(self) -> None:
        with self._lock:
            self._queued.clear()
            self._by_path.clear()
            self.default = Forward()
            self.requests.clear()

    def _decide(self, upstream_path: str) -> Action:
        with self._lock:
            if self._queued:
                return self._queued.popleft()
            return self._by_path.get(upstream_path, self.default)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0):
            raise ProxyError("fault proxy did not start")
        if self._startup_error is not None:
            raise ProxyError(f"fault proxy did not start: {self._startup_error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10.0)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._handle_connection, LOOPBACK, 0)
        except OSError as e:
            self._startup_error = e
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        async with httpx.AsyncClient(timeout=30.0) as client:
            self._client = client
            self._ready.set()
            await self._stopping.wait()
            server.close()
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()

    # --- one client connection (keep-alive: several requests) --------------------------------

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task: asyncio.Task[None] | None = asyncio.current_task()  # type: ignore[assignment]
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                keep_open = await self._answer(request, writer)
                if not keep_open:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        except asyncio.CancelledError:
            # stop() cancels open (kept-alive or stalled) connections; ending quietly here keeps
            # asyncio from logging the cancelled task as an error
            return
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, request: _RawRequest, writer: asyncio.StreamWriter) -> bool:
        """Apply the planned action; False when the connection must be closed."""
        split = urlsplit(request.target)
        path = split.path
        if self.prefix and not (path == self.prefix or path.startswith(self.prefix + "/")):
            self._record(request, split.query, "outside prefix 404")
            await _send(writer, 404, {"Content-Type": "text/plain"}, b"404 page not found (outside prefix)")
            return True
        upstream_path = path[len(self.prefix):] or "/"
        action = self._decide(upstream_path)
        if isinstance(action, TooLarge):
            if len(request.decoded_body()) > action.max_bytes:
                self._record(request, split.query, "too large 413")
                await _send(writer, 413, {"Content-Type": "application/json"},
                            b'{"error":"Request Entity Too Large"}')
                return True
            action = Forward()
        if isinstance(action, Respond):
            self._record(request, split.query, f"respond {action.status}")
            await _send(writer, action.status, action.headers, action.body)
            return True
        if isinstance(action, Close):
            self._record(request, split.query, "close")
            return False
        if isinstance(action, Stall):
            self._record(request, split.query, "stall")
            await asyncio.sleep(STALL_LIMIT_S)
            return False
        if isinstance(action, Delay):
            self._record(request, split.query, "delay")
            await asyncio.sleep(action.seconds)
            return await self._forward(request, upstream_path, split.query, writer)
        self._record(request, split.query, "forward")
        return await self._forward(request, upstream_path, split.query, writer)

    async def _forward(self, request: _RawRequest, path: str, query: str, writer: asyncio.StreamWriter) -> bool:
        assert self._client is not None
        headers = {k: v for k, v in request.headers if k.lower() not in HOP_BY_HOP}
        url = f"{self.upstream}{path}" + (f"?{query}" if query else "")
        try:
            response = await self._client.request(request.method, url, headers=headers, content=request.body)
        except httpx.HTTPError:
            await _send(writer, 502, {"Content-Type": "text/plain"}, b"bad gateway: store unreachable")
            return True
        out_headers = {k: v for k, v in response.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding"}
        await _send(writer, response.status_code, out_headers, response.content)
        return True

    def _record(self, request: _RawRequest, query: str, action: str) -> None:
        self.requests.append(RecordedRequest(
            method=request.method,
            path=urlsplit(request.target).path,
            query={k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()},
            headers={k.lower(): v for k, v in request.headers},
            body_size=len(request.body),
            body=request.decoded_body(),
            action=action,
            at=time.monotonic(),
        ))


# --- minimal HTTP/1.1 parsing -------------------------------------------------------------------


@dataclass(slots=True)
class _RawRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def decoded_body(self) -> bytes:
        if (self.header("content-encoding") or "").lower() == "gzip":
            return gzip.decompress(self.body)
        return self.body


async def _read_request(reader: asyncio.StreamReader) -> _RawRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None  # the client closed a kept-alive connection
        raise
    except asyncio.LimitOverrunError as e:
        raise ValueError("request head too long") from e
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError("request head too long")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    headers: list[tuple[str, str]] = []
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    request = _RawRequest(method, target, headers, b"")
    if (request.header("transfer-encoding") or "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        request.body = b"".join(chunks)
    else:
        request.body = await reader.readexactly(int(request.header("content-length") or 0))
    return request


async def _send(writer: asyncio.StreamWriter, status: int, headers: dict[str, str], body: bytes) -> None:
    phrase = httpx.codes.get_reason_phrase(status) or "Unknown"
    head = [f"HTTP/1.1 {status} {phrase}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if status != 204 and status != 304 and status >= 200:  # those carry no body, hence no length
        head.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
