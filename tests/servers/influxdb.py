"""A real InfluxDB 1.x server (Debian's ``influxd``) for tests, on free 127.0.0.1 ports in a temp dir.

Fixtures:
- ``influxdb``: one server for the whole session.
- ``influx_db``: a fresh, uniquely named database on that server; yields ``(server, dbname)``.
- ``influxdb_private``: a server of the test's own, for tests that stop, kill or restart it.

Tests that need other server settings (auth, a body size limit) build an ``InfluxDBServer`` with
those options themselves.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ports import free_port

DEBIAN_INFLUXD = "/usr/bin/influxd"
LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def influxd_binary() -> str:
    """Path of ``influxd``; fails the test (not skips it) when it is missing, since the suite needs it."""
    found = shutil.which("influxd")
    if found:
        return found
    if os.access(DEBIAN_INFLUXD, os.X_OK):
        return DEBIAN_INFLUXD
    pytest.fail(
        "influxd is not installed. Run the project's test command, which installs Debian's "
        "'influxdb' package when run as root, or install it yourself: apt-get install influxdb",
        pytrace=False,
    )


class InfluxDBError(Exception):
    """InfluxDB answered a test helper's query with an error."""


class InfluxDBServer:
    """One ``influxd run`` process with its config, data and log in ``base_dir``.

    ``stop``/``kill`` then ``start`` brings it back on the same ports with the same data, as after
    a crash or a maintenance restart of a real store.
    """

    def __init__(self, base_dir: Path, *, auth_enabled: bool = False, max_body_size: int | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.binary = influxd_binary()
        self.auth_enabled = auth_enabled
        self.max_body_size = max_body_size
        self.http_port = free_port()
        self.rpc_port = free_port()
        self.config_path = self.base_dir / "influxdb.conf"
        self.log_path = self.base_dir / "influxd.log"
        # credentials the helpers (query, select, …) use once auth is on and an admin exists
        self.auth: tuple[str, str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def port(self) -> int:
        return self.http_port

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _config_text(self) -> str:
        # Only the HTTP API and the (loopback) RPC listener; no reporting, no _internal database.
        max_body = "" if self.max_body_size is None else f"  max-body-size = {self.max_body_size}\n"
        return (
            "reporting-disabled = true\n"
            f'bind-address = "{LOOPBACK}:{self.rpc_port}"\n'
            "[meta]\n"
            f'  dir = "{self.base_dir / "meta"}"\n'
            "[data]\n"
            f'  dir = "{self.base_dir / "data"}"\n'
            f'  wal-dir = "{self.base_dir / "wal"}"\n'
            "  query-log-enabled = false\n"
            "[monitor]\n"
            "  store-enabled = false\n"
            "[http]\n"
            "  enabled = true\n"
            f'  bind-address = "{LOOPBACK}:{self.http_port}"\n'
            f"  auth-enabled = {'true' if self.auth_enabled else 'false'}\n"
            "  log-enabled = false\n"
            f"{max_body}"
            "[continuous_queries]\n"
            "  enabled = false\n"
            "[subscriber]\n"
            "  enabled = false\n"
        )

    def start(self) -> None:
        """Start (or restart) the server and wait until ``/ping`` answers 204."""
        if self.running:
            raise RuntimeError("influxd is already running")
        attempts = 1 if self._started_once else 3
        for attempt in range(attempts):
            self.config_path.write_text(self._config_text(), encoding="utf-8")
            log_file = self.log_path.open("ab")
            try:
                # INFLUXDB_* variables override the config file: keep the test server hermetic.
                env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
                self._process = subprocess.Popen(
                    [self.binary, "run", "-config", str(self.config_path)],
                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                )
            finally:
                log_file.close()
            if self._wait_until_ready():
                self._started_once = True
                return
            # A port picked by free_port() can be taken by someone else before influxd binds it.
            port_taken = "address already in use" in self.log_tail()
            self.kill()
            if port_taken and attempt + 1 < attempts:
                self.http_port, self.rpc_port = free_port(), free_port()
                continue
            break
        pytest.fail(f"influxd did not start within {STARTUP_TIMEOUT_S:g}s; log tail:\n{self.log_tail()}",
                    pytrace=False)

    def _wait_until_ready(self) -> bool:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    return False
                try:
                    if client.get(f"{self.url}/ping").status_code == 204:
                        return True
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        """SIGTERM and wait (influxd closes its shards and WAL); SIGKILL if it hangs."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: the store vanishes as in a power cut (the WAL is replayed on start)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- helpers for assertions ---------------------------------------------------------------

    def query(self, q: str, db: str | None = None, *, epoch: str = "ns") -> dict[str, Any]:
        """Run InfluxQL via ``POST /query``; raises InfluxDBError on any error.

        ``epoch`` is the unit of returned times (integers); "ns" by default, so times compare exactly.
        """
        data = {"q": q}
        if db is not None:
            data["db"] = db
        response = httpx.post(f"{self.url}/query", params={"epoch": epoch}, data=data, auth=self.auth,
                              timeout=10.0)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            raise InfluxDBError(f"{q!r} -> HTTP {response.status_code}: {response.text[:500]}")
        if "error" in body:
            raise InfluxDBError(f"{q!r} -> {body['error']}")
        for result in body.get("results", []):
            if "error" in result:
                raise InfluxDBError(f"{q!r} -> {result['error']}")
        return body

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def select(self, db: str, q: str, *, epoch: str = "ns") -> list[dict[str, Any]]:
        """Rows of a query as dicts (column -> value, plus the series' GROUP BY tags); ``time`` in ns."""
        rows: list[dict[str, Any]] = []
        for result in self.query(q, db=db, epoch=epoch).get("results", []):
            for series in result.get("series", []):
                tags = series.get("tags") or {}
                for values in series.get("values", []):
                    rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
        return rows


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDBServer]:
    server = InfluxDBServer(tmp_path_factory.mktemp("influxdb"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def influx_db(influxdb: InfluxDBServer) -> Iterator[tuple[InfluxDBServer, str]]:
    name = f"fmc_test_{uuid.uuid4().hex[:12]}"
    influxdb.create_database(name)
    yield influxdb, name
    if influxdb.running:  # dropped to keep the shared server small; harmless if it fails
        with contextlib.suppress(InfluxDBError, httpx.HTTPError):
            influxdb.query(f'DROP DATABASE "{name}"')


@pytest.fixture
def influxdb_private(tmp_path: Path) -> Iterator[InfluxDBServer]:
    server = InfluxDBServer(tmp_path / "influxdb")
    server.start()
    try:
        yield server
    finally:
        server.stop()
