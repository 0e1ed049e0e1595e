"""An asyncio loop in a thread of its own, for a source whose client library is asyncio (asyncua,
pymodbus) inside an agent whose other parts are threads: ``start(run)`` runs ``run(stop)`` there
and returns at once; ``stop()`` sets ``stop`` from any thread and waits for the thread to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any


class LoopThread:
    """One thread, one loop, one ``run(stop)``; ``what`` names it in the log ("the Modbus source")."""

    def __init__(self, name: str, what: str, log: logging.Logger) -> None:
        self.name, self.what, self.log = name, what, log
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, run: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.what} was already started")
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        self._loop, self._stop = loop, stop

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(run(stop))
            except Exception:
                self.log.exception("%s stopped on an unexpected error", self.what)
            finally:
                _cancel_leftovers(loop)
                loop.close()

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Ask ``run`` to end and wait up to ``timeout`` seconds; a thread that does not end is left
        behind (a daemon: it does not keep the process alive), with a warning."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            self.log.warning("%s did not end within %.1fs; leaving its thread behind", self.what, timeout)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks a client library may leave behind (asyncua's publish loop, say), so that
    the loop closes quietly."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    with contextlib.suppress(Exception):
        loop.run_until_complete(loop.shutdown_asyncgens())
