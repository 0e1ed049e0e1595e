"""Run `fmc run` as a real process for end-to-end tests: config file, start, metrics, signals."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]


def agent_config(
    tmp: Path,
    *,
    mqtt_port: int,
    influx_url: str | None = None,
    database: str | None = None,
    client_id: str = "fmc-test",
    metrics_port: int | None = None,
    extra_subscriptions: str = "",
    sink_extra: str = "",
    spool_extra: str = "",
) -> Path:
    """Write an agent TOML file into ``tmp`` and return its path."""
    if influx_url:
        sink = f'type = "influxdb"\nurl = "{influx_url}"\ndatabase = "{database}"\nbatch_max_age_s = 0.2\n' \
               f'retry_min_s = 0.2\nretry_max_s = 1.0\n{sink_extra}'
    else:
        sink = 'type = "embedded"\npath = "store.db"\n'
    text = f"""
[enterprise]
id = "e-330602-1"
name = "测试纺织 Test Textiles"
region = "330602"
industry = "17"

[[mqtt]]
name = "plant"
host = "127.0.0.1"
port = {mqtt_port}
client_id = "{client_id}"
reconnect_min_s = 0.2
reconnect_max_s = 1.0

  [[mqtt.subscribe]]
  topic = "plant/{{equipment}}/{{signal}}"
  qos = 1
  timestamp_path = "ts"
  timestamp_unit = "ns"

  [[mqtt.subscribe]]
  topic = "meters/{{carrier}}/{{meter}}"
  kind = "meter"
  qos = 1
  value_path = "d.reading"
  timestamp_path = "t"
  timestamp_unit = "iso8601"
{extra_subscriptions}

[sink]
{sink}

[spool]
path = "spool.db"
{spool_extra}

[metrics]
enabled = {"true" if metrics_port else "false"}
listen = "127.0.0.1:{metrics_port or 9273}"

[log]
level = "debug"
"""
    path = tmp / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


class AgentProcess:
    def __init__(
        self, config: Path, metrics_port: int | None = None, *, faults: dict[str, Any] | None = None,
        file_size_limit: int | None = None,
    ) -> None:
        """``faults``: run it through ``tests.agent_child`` with these faults put in.
        ``file_size_limit``: no file the agent writes may grow past this many bytes (RLIMIT_FSIZE):
        a disk that is full, for the spool's WAL as for anything else."""
        self.config = config
        self.metrics_port = metrics_port
        self.faults = faults
        self.file_size_limit = file_size_limit
        self.log_path = config.parent / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        command = [sys.executable, "-m", "fmc.cli.main"]
        if self.faults is not None:
            command = [sys.executable, "-m", "tests.agent_child", json.dumps(self.faults)]
        limit = self.file_size_limit

        def limit_file_size() -> None:  # in the child, before exec (Python ignores SIGXFSZ: writes fail with EFBIG)
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        self.proc = subprocess.Popen(
            [*command, "run", "-c", str(self.config)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=limit_file_size if limit else None,
        )
        log.close()
        if self.metrics_port:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"agent exited at start:\n{self.log()}")
                try:
                    self.metrics()
                    return self
                except OSError:
                    time.sleep(0.1)
            raise AssertionError(f"agent metrics never came up:\n{self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def health(self) -> tuple[int, dict[str, Any]]:
        """GET /health: the HTTP status and the JSON body."""
        url = f"http://127.0.0.1:{self.metrics_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def wait_metric(self, name: str, at_least: float, timeout: float = 30, poll_s: float = 0.05,
                    **labels: str) -> float:
        deadline = time.monotonic() + timeout
        value = 0.0
        while time.monotonic() < deadline:
            value = self.metric(name, **labels)
            if value >= at_least:
                return value
            time.sleep(poll_s)
        raise AssertionError(f"{name}{labels} = {value} < {at_least} after {timeout}s\n{self.log()}")

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
