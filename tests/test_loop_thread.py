"""fmc.core.loop_thread: a source's asyncio loop in a thread of its own."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from fmc.core.loop_thread import LoopThread


def test_run_ends_when_stopped_and_leftover_tasks_are_cancelled() -> None:
    began, cancelled = threading.Event(), threading.Event()

    async def leftover() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def run(stop: asyncio.Event) -> None:
        asyncio.get_running_loop().create_task(leftover())  # as a client library may leave behind
        began.set()
        await stop.wait()

    thread = LoopThread("test-loop", "the test source", logging.getLogger("test.loop"))
    thread.start(run)
    assert began.wait(5)
    with pytest.raises(RuntimeError, match="already started"):
        thread.start(run)
    thread.stop(5)
    assert cancelled.is_set()
    assert not any(t.name == "test-loop" for t in threading.enumerate())


def test_an_error_is_logged_and_a_run_that_ignores_stop_is_left_behind(caplog: pytest.LogCaptureFixture) -> None:
    async def fails(stop: asyncio.Event) -> None:
        raise ValueError("broken")

    failing = LoopThread("test-fails", "the failing source", logging.getLogger("test.loop"))
    with caplog.at_level(logging.ERROR, logger="test.loop"):
        failing.start(fails)
        failing.stop(5)
    assert "the failing source stopped on an unexpected error" in caplog.text and "broken" in caplog.text

    release = threading.Event()

    async def stubborn(stop: asyncio.Event) -> None:
        while not release.is_set():
            time.sleep(0.01)  # blocks its loop: stop.set() cannot run

    left = LoopThread("test-stubborn", "the stubborn source", logging.getLogger("test.loop"))
    with caplog.at_level(logging.WARNING, logger="test.loop"):
        left.start(stubborn)
        left.stop(0.2)
    assert "the stubborn source did not end within 0.2s" in caplog.text
    release.set()


def test_stop_before_start_does_nothing() -> None:
    LoopThread("test-idle", "the idle source", logging.getLogger("test.loop")).stop(1)
