"""Decoding JSON fast, with the standard library's results (no I/O)."""

from __future__ import annotations

import json

import msgspec

_FAST_JSON = msgspec.json.Decoder()


def load_json(payload: bytes) -> object:
    """A JSON document (an MQTT message, a store's answer), as ``json.loads`` of its UTF-8 text
    gives it.

    msgspec's decoder takes a small message in a tenth of json's time (0.2 against 2.3 µs, the
    bench's MQTT payload), a few per cent of the agent's CPU per message. It refuses some things json
    takes and fmc keeps taking: NaN and Infinity (caught per value later, so a NaN in a field
    nobody reads does not cost the whole message), numbers beyond a float, lone surrogates, a
    BOM (some Windows tools write one). Whatever it refuses goes to json, so every result and
    every error is json's (``tests/test_mapping.py`` checks the two against each other).
    Raises UnicodeDecodeError, ValueError or RecursionError as json does."""
    try:
        return _FAST_JSON.decode(payload)
    except (msgspec.MsgspecError, RecursionError):
        pass
    text = payload.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    return json.loads(text)
