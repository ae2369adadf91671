"""ASGI ``receive`` callables for driving an app by hand, as a server would."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]


def after_the_request(then: Callable[[], Awaitable[Message]]) -> Callable[[], Awaitable[Message]]:
    """A receive that gives the (empty) request body first, then what ``then`` returns each time."""
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await then()

    return receive
