"""The real Debian mosquitto broker for tests, on a free loopback port, with data in a temp dir.

Fixtures: ``mosquitto`` (one broker for the session; use unique topics and client ids) and
``mosquitto_private`` (one per test: stop/start/kill it freely). ``MosquittoServer`` itself is for
brokers with special settings (passwords, ACLs, TLS).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port

HOST = "127.0.0.1"
_DEBIAN_BINARY = "/usr/sbin/mosquitto"
_DEBIAN_PASSWD = "/usr/bin/mosquitto_passwd"
_MISSING = (
    "mosquitto is not installed: install Debian's `mosquitto` package (it brings mosquitto_passwd), "
    "then run: .venv/bin/python -m pytest tests/test_mqtt_adapter.py"
)


def _find(name: str, fallback: str) -> str | None:
    found = shutil.which(name) or (fallback if os.access(fallback, os.X_OK) else None)
    return found


class MosquittoServer:
    """One mosquitto process. ``users`` adds a password file and turns anonymous access off."""

    def __init__(
        self,
        tmpdir: str | os.PathLike[str],
        extra_config: str = "",
        *,
        users: dict[str, str] | None = None,
        port: int | None = None,
        verbose_log: bool = True,
    ) -> None:
        binary = _find("mosquitto", _DEBIAN_BINARY)
        if binary is None:
            pytest.fail(_MISSING, pytrace=False)
        self.binary = binary
        self.dir = Path(tmpdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.config_path = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        auth = "allow_anonymous true\n"
        if users:
            auth = f"allow_anonymous false\npassword_file {self._password_file(users)}\n"
        overridden = {line.split()[0] for line in extra_config.splitlines() if line.strip()}
        defaults = {"max_inflight_messages": "1000", "max_queued_messages": "0"}
        lines = [
            f"listener {self.port} {HOST}",
            auth.rstrip("\n"),
            "persistence true",
            f"persistence_location {self.dir}/",
            f"log_dest file {self.log_path}",
            # every packet is logged for tests that read the log; benchmarks turn that off
            "log_type all" if verbose_log else "log_type error\nlog_type warning",
            "connection_messages true",
            # mosquitto started as root switches to the user 'mosquitto', which cannot write here
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            *(f"{k} {v}" for k, v in defaults.items() if k not in overridden),
            extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.start()

    def _password_file(self, users: dict[str, str]) -> Path:
        tool = _find("mosquitto_passwd", _DEBIAN_PASSWD)
        if tool is None:
            pytest.fail(_MISSING, pytrace=False)
        path = self.dir / "passwd"
        path.write_text("", encoding="utf-8")
        for user, password in users.items():
            subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True, timeout=10)
        path.chmod(0o600)
        return path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start (again) on the same port with the same data; return once it accepts TCP."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                pytest.fail(f"mosquitto exited with {self._proc.returncode}: {err}\n{self.log()}", pytrace=False)
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self.kill()
        pytest.fail(f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: mosquitto saves its persistence file (sessions, queued messages) and exits."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close()

    def kill(self) -> None:
        """SIGKILL: like a power cut; whatever was not saved yet is gone."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close()

    def _close(self) -> None:
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()
        self._proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> MosquittoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path_factory.mktemp("mosquitto"))
    yield server
    server.stop()


@pytest.fixture
def mosquitto_private(tmp_path: Path) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path / "mosquitto")
    yield server
    server.stop()
