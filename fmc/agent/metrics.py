"""The agent's Prometheus metrics, in a registry of its own (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("fmc_messages_received", "Messages received from sources", ["source"], registry=r)
        self.accepted = Counter("fmc_points_accepted", "Points accepted into the spool", ["source"], registry=r)
        self.rejected = Counter(
            "fmc_rejected", "Messages or values rejected, by reason", ["source", "reason"], registry=r
        )
        self.spooled = Counter("fmc_points_spooled", "Points committed to the spool", registry=r)
        self.redeliveries = Counter(
            "fmc_redeliveries",
            "Messages a broker delivered again (DUP) after they were committed: recognised, acknowledged, "
            "not stored again", ["source"], registry=r,
        )
        self.written = Counter(
            "fmc_points_written", "Data points the store confirmed (the agent's own `agent` points excluded)", ["sink"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "fmc_points_dead_lettered", "Points the store refused for good, moved to the dead-letter table",
            ["sink"], registry=r,
        )
        self.dropped = Counter(
            "fmc_points_dropped", "Points dropped from a full spool, by priority", ["priority"], registry=r
        )
        self.sink_errors = Counter(
            "fmc_sink_errors", "Failed write attempts to the store, by reason", ["sink", "reason"], registry=r
        )
        self.spool_depth = Gauge("fmc_spool_depth_points", "Points waiting in the spool", registry=r)
        self.spool_bytes = Gauge("fmc_spool_bytes", "Bytes of points waiting in the spool", registry=r)
        self.oldest_age = Gauge(
            "fmc_spool_oldest_point_age_seconds", "Age of the oldest unsent point (0 when empty)", registry=r
        )
        self.plant_events = Gauge(
            "fmc_plant_events",
            "Plant model events since start, by part and kind: late or future samples, implausible meter "
            "jumps (rejected), resets and rollovers, unknown equipment or meters, skipped days",
            ["part", "kind"], registry=r,
        )
        self.source_errors = Counter(
            "fmc_source_errors",
            "Failed requests of sources that poll devices (DL/T 645, Modbus), by reason: timeout, checksum, "
            "error_flag, wrong_address, bad_reply, noise, io_error, …", ["source", "reason"], registry=r,
        )
        self.connected = Gauge("fmc_source_connected", "1 while a source is connected", ["source"], registry=r)
        self.source_events = Counter(
            "fmc_source_events", "What a source saw of its protocol, by kind (Sparkplug: seq gaps, rebirth "
            "requests, deaths)", ["source", "event"], registry=r,
        )

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of a sample (for tests and the demo's summary); 0 when absent."""
        v = self.registry.get_sample_value(name, labels or {})
        return float(v or 0.0)
