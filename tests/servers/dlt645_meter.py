"""DL/T 645-2007 meters for the tests: the simulator (``fmc.sources.dlt645.simulator``, which the
demo uses too) on a real serial line — a socat pseudo-terminal pair standing in for the RS-485 bus —
or on real TCP as a transparent converter.

``SerialPair`` starts ``socat pty,raw,echo=0,link=<dir>/agent pty,raw,echo=0,link=<dir>/meters``; the
agent opens ``agent``, ``SerialMeterServer`` the other end. A pty ignores the baud rate, so the
tests' speed does not depend on it; the settings are still applied as on a real port.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fmc.sources.dlt645.simulator import MeterBus, SerialMeterServer, SimulatedMeter, TcpMeterServer

__all__ = ["MeterBus", "SerialMeterServer", "SerialPair", "SimulatedMeter", "TcpMeterServer"]

_MISSING = "socat is not installed: install Debian's `socat` package (scripts/test does), then run the test again"


class SerialPair:
    """Two connected pseudo-terminals: ``agent`` and ``meters`` (paths of symlinks in ``folder``)."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("socat")
        if binary is None:
            pytest.fail(_MISSING, pytrace=False)
        self.agent = str(folder / "agent")
        self.meters = str(folder / "meters")
        self._proc = subprocess.Popen(
            [binary, "-d", "-d", f"pty,raw,echo=0,link={self.agent}", f"pty,raw,echo=0,link={self.meters}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not (Path(self.agent).exists() and Path(self.meters).exists()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                self.close()
                pytest.fail(f"socat did not make the pty pair: {err}", pytrace=False)
            time.sleep(0.01)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stderr:
            self._proc.stderr.close()

    def __enter__(self) -> SerialPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
