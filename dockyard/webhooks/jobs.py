"""The delivery worker: lease due deliveries, send them concurrently, record results.

Events become deliveries in the ``webhooks`` event consumer (``WebhookService.dispatch``, run
by the job runtime), which wakes this worker after it queued some. The worker is a runtime
task: it runs wherever the runtime runs (`dockyard serve` unless ``run_worker`` is off,
`dockyard worker`); leases in the database keep two workers from sending the same delivery at
once. A process that dies mid-delivery leaves a lease that expires, and the delivery is sent
again (at least once).
"""

from __future__ import annotations

import asyncio
import logging

import anyio
import httpx

from dockyard.asgi import run_sync
from dockyard.events.runtime import idle_wait
from dockyard.webhooks.delivery import attempt, new_client
from dockyard.webhooks.services import DeliveryJob, WebhookService

log = logging.getLogger(__name__)


class DeliveryWorker:
    """Delivers webhooks until cancelled."""

    def __init__(
        self,
        service: WebhookService,
        *,
        concurrency: int,
        timeout_seconds: float,
        poll_seconds: float,
        idle_poll_seconds: float | None = None,
    ) -> None:
        self.service = service
        self.concurrency = concurrency
        self.timeout = timeout_seconds
        self.poll = poll_seconds
        #: While rounds start nothing, the wait doubles up to this, never past the next attempt due.
        self.idle_poll = poll_seconds if idle_poll_seconds is None else idle_poll_seconds
        self._in_flight = 0
        self._claiming = True
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def in_flight(self) -> int:
        """Delivery attempts running now."""
        return self._in_flight

    def stop_claiming(self) -> None:
        """Start no more attempts (a graceful shutdown); those running carry on."""
        self._claiming = False

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for running attempts to finish; return how many did not."""
        with anyio.move_on_after(timeout):
            await self._idle.wait()
        return self._in_flight

    def wake(self) -> None:
        """Look for due deliveries now (from any thread): the consumer has queued some."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()
        async with (
            new_client(self.timeout, self.service.allowed_networks) as client,
            anyio.create_task_group() as group,
        ):
            idle_rounds = 0
            while True:
                wake.clear()
                started = 1  # a failed step keeps the short wait
                try:
                    started = await self.step(client, group)
                except Exception:
                    log.exception("webhook delivery step failed; retrying")
                idle_rounds = 0 if started or self._in_flight else idle_rounds + 1
                with anyio.move_on_after(await self._pause(idle_rounds)):
                    await wake.wait()

    async def _pause(self, idle_rounds: int) -> float:
        """How long to wait for a wake-up: ``poll``, or while idle up to ``idle_poll``, but never
        past the next attempt that comes due (a retry, a lease that runs out)."""
        wait = idle_wait(self.poll, self.idle_poll, idle_rounds)
        if wait <= self.poll:
            return wait
        due_in = await run_sync(self.service.seconds_until_due)
        return wait if due_in is None else min(wait, max(due_in, self.poll))

    async def step(self, client: httpx.AsyncClient, group: anyio.abc.TaskGroup) -> int:
        """One round: start the deliveries that are due. Returns how many attempts started."""
        if not self._claiming:
            return 0
        jobs = await run_sync(self.service.claim, self.concurrency - self._in_flight)
        for job in jobs:
            self._in_flight += 1
            self._idle.clear()
            group.start_soon(self._deliver, client, job)
        return len(jobs)

    async def _deliver(self, client: httpx.AsyncClient, job: DeliveryJob) -> None:
        try:
            result = await attempt(client, job, self.timeout)
            status = await run_sync(self.service.record, job, result)
            if not result.succeeded:
                log.info(
                    "webhook %s delivery %d failed (%s); now %s",
                    job.webhook,
                    job.id,
                    result.status or result.error,
                    status,
                )
        except Exception:
            log.exception("webhook %s delivery %d could not be recorded", job.webhook, job.id)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
            if self._wake is not None:
                self._wake.set()
