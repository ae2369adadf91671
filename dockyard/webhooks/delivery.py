"""Sending one delivery attempt: bounded in time and in what is read back."""

from __future__ import annotations

import time

import anyio
import httpx

from dockyard.db import utcnow
from dockyard.webhooks.services import BODY_EXCERPT, AttemptResult, DeliveryJob

MAX_RESPONSE_HEADERS = 50


def new_client(timeout_seconds: float) -> httpx.AsyncClient:
    """The HTTP client deliveries use: no redirects followed, no proxies from the environment."""
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(timeout_seconds, connect=min(5.0, timeout_seconds)),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )


async def attempt(client: httpx.AsyncClient, job: DeliveryJob, timeout_seconds: float) -> AttemptResult:
    """POST the job's body; read at most BODY_EXCERPT bytes of the answer; never raise."""
    started = utcnow()
    clock = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - clock) * 1000)

    try:
        with anyio.fail_after(timeout_seconds):
            async with client.stream("POST", job.uri, content=job.body, headers=job.headers) as response:
                excerpt = bytearray()
                async for chunk in response.aiter_raw():
                    excerpt += chunk[: BODY_EXCERPT - len(excerpt)]
                    if len(excerpt) >= BODY_EXCERPT:
                        break
                headers = dict(list(response.headers.items())[:MAX_RESPONSE_HEADERS])
                return AttemptResult(
                    started, elapsed(), response.status_code, headers, excerpt.decode("utf-8", "replace")
                )
    except TimeoutError:
        return AttemptResult(started, elapsed(), error=f"no complete answer within {timeout_seconds:g}s")
    except httpx.HTTPError as exc:
        return AttemptResult(started, elapsed(), error=f"{type(exc).__name__}: {exc}"[:1000])
