"""Structured logs: logfmt-like text or one JSON object per line, on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

from fmc.core.config import _Model


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict) and extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return line


def setup_logging(cfg: LogConfig, stream=sys.stderr) -> logging.Logger:
    logger = logging.getLogger("fmc")
    logger.handlers.clear()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(cfg.level.upper())
    logger.propagate = False
    # asyncua's own warnings repeat what the OPC UA source reports with its cause; keep its errors
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    return logger


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
