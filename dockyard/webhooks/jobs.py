"""The delivery worker: fan events out, lease due deliveries, send them concurrently, record results.

It runs in every `dockyard serve` process (and in `dockyard worker`); leases in the
database keep two workers from sending the same delivery at once. A process that dies
mid-delivery leaves a lease that expires, and the delivery is sent again (at least once).
"""

from __future__ import annotations

import asyncio
import logging

import anyio
import httpx

from dockyard.asgi import run_sync
from dockyard.events.services import EventService
from dockyard.webhooks.delivery import attempt, new_client
from dockyard.webhooks.services import DeliveryJob, WebhookService

log = logging.getLogger(__name__)

#: After a wake-up the worker waits this long, so a burst of pushes costs one dispatch, not one each.
BATCH_SECONDS = 0.05


class DeliveryWorker:
    """Delivers webhooks until cancelled."""

    def __init__(
        self,
        service: WebhookService,
        events: EventService,
        *,
        concurrency: int,
        timeout_seconds: float,
        poll_seconds: float,
    ) -> None:
        self.service = service
        self.events = events
        self.concurrency = concurrency
        self.timeout = timeout_seconds
        self.poll = poll_seconds
        self._in_flight = 0
        self._claiming = True
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake: asyncio.Event | None = None

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

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()
        self.events.on_recorded(lambda: loop.call_soon_threadsafe(wake.set))
        async with (
            new_client(self.timeout, self.service.allowed_networks) as client,
            anyio.create_task_group() as group,
        ):
            while True:
                wake.clear()
                try:
                    await self.step(client, group)
                except Exception:
                    log.exception("webhook delivery step failed; retrying")
                with anyio.move_on_after(self.poll):
                    await wake.wait()
                    await anyio.sleep(BATCH_SECONDS)  # let a burst of commits share one dispatch

    async def step(self, client: httpx.AsyncClient, group: anyio.abc.TaskGroup) -> int:
        """One round: dispatch new events, start what is due. Returns how many attempts started."""
        if not self._claiming:
            return 0
        await run_sync(self.service.dispatch)
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
