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


# libraries whose records go through fmc's handler (their own would print raw text and tracebacks)
LIBRARY_LOGGERS = ("asyncua",)


class _LibraryRecords(logging.Filter):
    """A library's record in fmc's format, its traceback only at debug level: the exception's one
    line is added to the message instead (asyncua logs "Publish iteration crashed" with a traceback
    when a server shuts down; that would break one-JSON-object-per-line logs)."""

    def __init__(self, tracebacks: bool) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not self.tracebacks:
            error = record.exc_info[1]
            message = record.getMessage()
            if error is not None:
                message = f"{message} ({type(error).__name__}: {error})"
            record.msg, record.args, record.exc_info, record.exc_text = message, (), None, None
        return True


def setup_logging(cfg: LogConfig, stream=sys.stderr) -> logging.Logger:
    logger = logging.getLogger("fmc")
    logger.handlers.clear()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(cfg.level.upper())
    logger.propagate = False
    debug = cfg.level == "debug"
    library_handler = logging.StreamHandler(stream)
    library_handler.setFormatter(handler.formatter)
    library_handler.addFilter(_LibraryRecords(tracebacks=debug))
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.addHandler(library_handler)
        library.propagate = False
        # asyncua's own warnings repeat what the OPC UA source reports with its cause; keep its errors
        library.setLevel(logging.WARNING if debug else logging.ERROR)
    return logger


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
