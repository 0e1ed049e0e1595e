"""Sparkplug B host application: births, data, deaths and STATE over MQTT (``README.md`` here)."""
