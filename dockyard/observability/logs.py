"""Log formats: one JSON object per line (``log_format = "json"``) for app logs, granian's and the access log.

``json.dumps`` escapes every control character (and, with ``ensure_ascii``, everything
non-ASCII), so a client-chosen path or header cannot break a line or forge another record.
This module is imported by the server's supervisor: it must stay light (no app imports).
"""

from __future__ import annotations

import asyncio
import json
import logging
import select
import sys
import time
from typing import Any, TextIO

#: The access log's logger name in JSON records (it is written directly, not through logging).
ACCESS_LOGGER = "dockyard.access"


def iso_time(seconds: float, *, millis: bool = True) -> str:
    """``seconds`` since the epoch as ISO 8601 UTC, e.g. ``2025-01-31T12:00:00.123Z``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{int(seconds % 1 * 1000):03d}Z" if millis else f"{stamp}Z"


class JsonFormatter(logging.Formatter):
    """A log record as one JSON line: time, level, logger, message (and exception, when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


def access_json(
    stamp: str, client: str, method: str, path: str, status: int, sent: int, milliseconds: float
) -> str:
    """One access-log record as a JSON line (with its newline)."""
    entry = {
        "time": stamp,
        "level": "info",
        "logger": ACCESS_LOGGER,
        "client": client,
        "method": method,
        "path": path,
        "status": status,
        "bytes": sent,
        "ms": round(milliseconds, 1),
    }
    return json.dumps(entry, ensure_ascii=True) + "\n"


class BatchedLines:
    """Log lines written to ``stream`` a batch at a time: at most ``seconds`` after the first line of
    a batch, or as soon as a batch holds ``limit`` characters.

    One write per request costs a system call and hands the GIL to whichever thread wants it;
    batching saves both. Each write is at most ``limit`` characters of whole lines (a longer
    line goes alone), so on a pipe that several workers share (``PIPE_BUF`` writes are atomic)
    no line is cut by another's. Lines must be ASCII (the access log's are: it escapes the
    rest). A process killed outright loses at most ``seconds`` of lines; ``flush`` writes the
    rest at shutdown. Called from one thread: the event loop's.
    """

    def __init__(self, stream: TextIO, *, seconds: float = 0.05, limit: int = select.PIPE_BUF) -> None:
        self.stream = stream
        self.seconds = seconds
        self.limit = limit
        self._lines: list[str] = []
        self._held = 0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, line: str) -> None:
        """Hold ``line`` (with its newline) for the next batch."""
        self._lines.append(line)
        self._held += len(line)
        if self._held >= self.limit:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop to flush later: write now
                self.flush()
            else:
                self._timer = loop.call_later(self.seconds, self.flush)

    def flush(self) -> None:
        """Write every held line now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines, self._held = self._lines, [], 0
        batch: list[str] = []
        size = 0
        for line in lines:
            if batch and size + len(line) > self.limit:
                self._put("".join(batch))
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        if batch:
            self._put("".join(batch))

    def _put(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()  # one write per batch, whatever the stream's own buffering


def granian_log_config() -> dict[str, Any]:
    """Granian's ``log_dictconfig`` for JSON: its own records in the same shape, on stderr."""
    formatter = {"()": f"{__name__}.JsonFormatter"}
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "formatters": {"json": formatter, "generic": formatter, "access": formatter},
        "handlers": {"console": handler, "access": handler},
    }


def write_notice(text: str, log_format: str) -> None:
    """Write a message for the operator (the start banner) to stderr: as is, or as one JSON record."""
    if log_format == "json":
        record = {"time": iso_time(time.time()), "level": "info", "logger": "dockyard", "message": text}
        sys.stderr.write(json.dumps(record, ensure_ascii=True) + "\n")
    else:
        sys.stderr.write(text + "\n")
    sys.stderr.flush()
