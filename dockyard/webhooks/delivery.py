"""Sending one delivery attempt: bounded in time, in where it may go, and in what is kept of the answer."""

from __future__ import annotations

import time

import anyio
import httpx

from dockyard.db import utcnow
from dockyard.webhooks.addresses import GuardedTransport, IPNetwork, RefusedAddress
from dockyard.webhooks.services import BODY_EXCERPT, AttemptResult, DeliveryJob

MAX_RESPONSE_HEADERS = 20
MAX_RESPONSE_HEADER_VALUE = 256
#: Appended to a kept answer that was longer than BODY_EXCERPT bytes.
TRUNCATED = f"\n[truncated: only the first {BODY_EXCERPT} bytes of the answer are kept]"


def new_client(timeout_seconds: float, allowed_networks: tuple[IPNetwork, ...] = ()) -> httpx.AsyncClient:
    """The HTTP client deliveries use: no redirects, no proxies, only to addresses that are allowed."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
    return httpx.AsyncClient(
        transport=GuardedTransport(allowed_networks, limits),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(timeout_seconds, connect=min(5.0, timeout_seconds)),
        headers={"Accept-Encoding": "identity"},  # the kept excerpt is then readable text
    )


async def attempt(client: httpx.AsyncClient, job: DeliveryJob, timeout_seconds: float) -> AttemptResult:
    """POST the job's body; keep at most BODY_EXCERPT bytes of the answer; never raise."""
    started = utcnow()
    clock = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - clock) * 1000)

    try:
        with anyio.fail_after(timeout_seconds):
            async with client.stream("POST", job.uri, content=job.body, headers=job.headers) as response:
                excerpt = bytearray()
                async for chunk in response.aiter_raw():
                    excerpt += chunk[: BODY_EXCERPT + 1 - len(excerpt)]
                    if len(excerpt) > BODY_EXCERPT:
                        break
                body = bytes(excerpt[:BODY_EXCERPT]).decode("utf-8", "replace")
                if len(excerpt) > BODY_EXCERPT:
                    body += TRUNCATED
                headers = {
                    name: value[:MAX_RESPONSE_HEADER_VALUE]
                    for name, value in list(response.headers.items())[:MAX_RESPONSE_HEADERS]
                }
                return AttemptResult(started, elapsed(), response.status_code, headers, body)
    except TimeoutError:
        return AttemptResult(started, elapsed(), error=f"no complete answer within {timeout_seconds:g}s")
    except httpx.HTTPError as exc:
        if isinstance(exc.__cause__, RefusedAddress):
            return AttemptResult(started, elapsed(), error=str(exc.__cause__)[:1000])
        return AttemptResult(started, elapsed(), error=f"{type(exc).__name__}: {exc}"[:1000])
    except UnicodeEncodeError as exc:  # a header value stored before values had to be ASCII
        return AttemptResult(started, elapsed(), error=f"a custom header cannot be sent: {exc}"[:1000])
