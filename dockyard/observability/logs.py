"""Log formats: one JSON object per line (``log_format = "json"``) for app logs, granian's and the access log.

``json.dumps`` escapes every control character (and, with ``ensure_ascii``, everything
non-ASCII), so a client-chosen path or header cannot break a line or forge another record.
This module is imported by the server's supervisor: it must stay light (no app imports).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

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
