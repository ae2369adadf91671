"""An idle job runtime waits longer and longer between looks, and other processes' work ends the
wait within a poll: SQLite's data version, PostgreSQL's ``dockyard_work`` notices (migration 0016)."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest

from dockyard.app import wake_on_work
from dockyard.events.queue import JobService
from dockyard.events.runtime import idle_wait
from tests.support.builds import wait_for

#: Far longer than any wake-up takes: a pause that ends sooner was ended by the wake-up.
LONG_PAUSE = 60.0


@pytest.mark.parametrize(
    ("idle_rounds", "expected"), [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0), (10**6, 4.0), (-1, 0.5)]
)
def test_the_wait_doubles_while_idle_up_to_the_idle_poll(idle_rounds, expected):
    assert idle_wait(0.5, 4.0, idle_rounds) == expected


def test_an_idle_poll_shorter_than_the_poll_never_shortens_it():
    assert idle_wait(2.0, 1.0, 3) == 2.0


def test_an_idle_runtime_wakes_for_another_processs_job_at_once(dockyard):
    """Another process queues a job (no local wake-up): this runtime, in a long idle pause, looks
    at once, through the data version (SQLite) or the listener's work notice (PostgreSQL)."""
    runtime, listener = dockyard.runtime, dockyard.registry.listener
    elsewhere = JobService(dockyard.db)  # stands for another process: it wakes nothing here

    async def main() -> float:
        dockyard.db.serve_lookups_inline()
        if listener is not None:
            listener.start()
        try:
            wake_on_work(dockyard)
            assert runtime.changed is not None
            if listener is not None:  # PostgreSQL: LISTEN is on once the cache is
                await anyio.to_thread.run_sync(lambda: wait_for(lambda: dockyard.registry.cache.enabled))
            runtime.changed()  # what it had seen before the other process's commit
            await anyio.to_thread.run_sync(elsewhere.enqueue, "ping", {})
            started = time.monotonic()
            await runtime._pause(asyncio.Event(), LONG_PAUSE)
            return time.monotonic() - started
        finally:
            if listener is not None:
                await anyio.to_thread.run_sync(listener.stop)

    assert anyio.run(main) < LONG_PAUSE / 4


def test_an_idle_pause_with_nothing_new_runs_its_length(dockyard):
    """Without a change or a wake-up, the pause is not cut short (each check finds no change)."""
    runtime = dockyard.runtime

    async def main() -> float:
        dockyard.db.serve_lookups_inline()
        wake_on_work(dockyard)
        if runtime.changed is not None:
            runtime.changed()
        started = time.monotonic()
        await runtime._pause(asyncio.Event(), 0.3)
        return time.monotonic() - started

    assert anyio.run(main) >= 0.3
