"""The demo's fixed names and settings, shared by the run (``fmc.demo.run``) and its summary
(``fmc.demo.summary``): the simulated enterprise, the agent's source names, the ``[plant]`` settings
that differ from the defaults, and the files in the work dir.
"""

from __future__ import annotations

OPCUA_SOURCE = "plant-opcua"
MQTT_SOURCE = "meters-mqtt"
DEMO_ENTERPRISE = {
    "id": "demo-330602-0001",
    "name": "示范纺织（模拟） Demo Textiles (simulated)",
    "region": "330602",
    "industry": "17",
}
# Not the defaults: 1-minute meter intervals complete during a short run (default 15), and a
# machine whose link drops shows as offline after 8 s (default 600 s).
DEMO_PLANT = {"interval_minutes": 1, "offline_after_s": 8.0}
LEDGER_FILE = "equipment-ledger.csv"
STORE_FILE = "fmc-store.db"
SPOOL_FILE = "spool.db"
SUMMARY_FILE = "demo-summary.json"
