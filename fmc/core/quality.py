"""What a sample's ``quality`` says, beyond good or not (DESIGN §4, docs/plant-semantics.md).

``quality`` holds an OPC UA status code, whatever the protocol: 0 is Good; the top two bits tell
Uncertain (0x40…) from Bad (0x80…). The status codes below say that the source has *lost contact*
with the equipment — not that a value is doubtful. A sample with one of them takes the equipment
offline at once, instead of after ``offline_after_s`` of silence: a Sparkplug death certificate,
a Modbus device that stopped answering after its retries, an OPC UA server that reports the PLC
behind it unreachable.
"""

from __future__ import annotations

GOOD = 0
BAD = 0x80000000
# OPC UA Part 4, 7.34 / Part 6 StatusCode values
BAD_COMMUNICATION_ERROR = 0x80050000
BAD_SERVER_NOT_CONNECTED = 0x800D0000
BAD_NO_COMMUNICATION = 0x80310000  # "communication with the data source is defined, but not established"
BAD_NOT_CONNECTED = 0x808A0000
BAD_OUT_OF_SERVICE = 0x808D0000

CONTACT_LOST: frozenset[int] = frozenset(
    {BAD_COMMUNICATION_ERROR, BAD_SERVER_NOT_CONNECTED, BAD_NO_COMMUNICATION, BAD_NOT_CONNECTED}
)


def contact_lost(quality: int) -> bool:
    """The sample says the source cannot reach the equipment (offline now), not that a value is bad."""
    return (quality & 0xFFFF0000) in CONTACT_LOST
