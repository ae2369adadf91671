"""5-field cron expressions in UTC (croniter), as purge schedules and task timers use them."""

from __future__ import annotations

from datetime import UTC, datetime

from croniter import CroniterError, croniter


class CronError(ValueError):
    """An expression that is not 5 cron fields, or that names no time that ever comes."""


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def cron_next(expression: str, after: datetime) -> datetime:
    """The first time after ``after`` that a 5-field UTC cron expression names."""
    return _utc(croniter(expression, _utc(after)).get_next(datetime))


def check_cron(expression: str, now: datetime) -> str:
    """``expression`` normalised (single spaces) if it is a valid 5-field cron expression."""
    normal = " ".join(expression.split())
    message = f"invalid schedule {expression!r}: use 5 cron fields in UTC, e.g. '0 1 * * Sun'"
    if len(normal.split(" ")) != 5 or not croniter.is_valid(normal):
        raise CronError(message)
    try:  # is_valid accepts times that never come (February 31st); the next run time then fails
        cron_next(normal, now)
    except CroniterError:
        raise CronError(f"{message} (it names no time that ever comes)") from None
    return normal
