"""``fmc api -c central.toml``: the aggregated REST API (``fmc.central.api.app``) under uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from fmc.central.api.app import create_app
from fmc.central.config import CentralSettings
from fmc.central.keys import KeyStore
from fmc.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def serve(cfg: CentralSettings, *, host: str | None = None, port: int | None = None) -> int:
    """Run ``fmc api`` until SIGINT/SIGTERM (graceful: requests in flight finish, up to 10 s)."""
    import uvicorn

    from fmc.central.keys import KeyStoreError
    from fmc.central.service import IndicatorService
    from fmc.core.config import ConfigError
    from fmc.core.logs import setup_logging

    logger = setup_logging(cfg.log)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers = list(logger.handlers)
        uv.setLevel(logger.level)
        uv.propagate = False
    try:
        keys = KeyStore(cfg.api.keys_file)
    except KeyStoreError as e:
        print(f"fmc api: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        service = IndicatorService.from_config(cfg)
    except ConfigError as e:
        keys.close()
        print(e.render(), file=sys.stderr)
        return EXIT_USAGE
    app = create_app(service, keys, cfg.api)
    bind_host, bind_port = host or cfg.api.host, port or cfg.api.port
    config = uvicorn.Config(app, host=bind_host, port=bind_port, log_config=None, lifespan="on",
                            timeout_graceful_shutdown=10, server_header=False)
    server = uvicorn.Server(config)
    logger.info("fmc api on http://%s:%d (OpenAPI at /docs)", bind_host, bind_port)
    try:
        with _stop_signals_end_cleanly():
            server.run()
    except SystemExit as e:  # uvicorn exits when it cannot bind; it has logged why
        print(f"fmc api: could not start on {bind_host}:{bind_port} (address in use or not permitted?)",
              file=sys.stderr)
        return EXIT_FAILURE if e.code else EXIT_OK
    finally:
        keys.close()
    return EXIT_OK if server.started else EXIT_FAILURE


@contextmanager
def _stop_signals_end_cleanly() -> Iterator[None]:
    """uvicorn shuts down gracefully on SIGINT/SIGTERM and then raises the signal again to whatever
    handler was there before; with this one there, a requested stop ends ``fmc api`` with exit 0."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``fmc api -c central.toml [--host H] [--port P]``; handler ``args.handler(args) -> exit code``."""
    p = subparsers.add_parser("api", help="serve the aggregated REST API (JSON/CSV, scoped keys)")
    p.add_argument("-c", "--config", required=True, help="central TOML file (deploy/examples/central.toml)")
    p.add_argument("--host", default=None, help="address to listen on (default: [api] host)")
    p.add_argument("--port", type=int, default=None, help="port (default: [api] port)")
    p.set_defaults(handler=api_main)
    return p


def api_main(args: argparse.Namespace) -> int:
    from fmc.cli.plugins import load_central_config
    from fmc.core.config import ConfigError

    try:
        cfg = load_central_config(args.config)
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_USAGE
    if args.port is not None and not 1 <= args.port <= 65535:
        print(f"fmc api: --port {args.port}: a port from 1 to 65535", file=sys.stderr)
        return EXIT_USAGE
    return serve(cfg, host=args.host, port=args.port)
