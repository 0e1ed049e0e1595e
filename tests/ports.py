"""Free TCP ports on 127.0.0.1 for the servers and agents the tests start.

A port the OS hands out for ``bind(0)`` comes from the ephemeral range, the same range every
outgoing connection takes its local port from; between picking a port and a server binding it,
one of the suite's many client connections (to InfluxDB, Mosquitto, an agent) can take it, and
the server fails with "Address already in use" (seen in CI: an agent's metrics listener). So the
ports are picked *below* the ephemeral range, where no outgoing connection lands, and never the
same one twice in a test run.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
_LOWEST = 20_000  # below: well-known and registered ports of services a machine may run
_handed_out: set[int] = set()
_pick = random.Random()  # its own: a test that seeds the global random must not repeat ports


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768  # Linux's default
    return low


def _bindable(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on, outside the ephemeral range, not handed out
    before in this process."""
    high = _ephemeral_low() - 1
    if high - _LOWEST < 1_000:  # an unusual range: fall back to the OS's pick
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    for _ in range(1_000):
        port = _pick.randint(_LOWEST, high)
        if port not in _handed_out and _bindable(port, host):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free TCP port on {host} between {_LOWEST} and {high}")
