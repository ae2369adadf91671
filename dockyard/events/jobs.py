"""Background work of the events room: pruning the event log and finished jobs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from dockyard.db import utcnow
from dockyard.events.queue import JobService
from dockyard.events.services import EventService

log = logging.getLogger(__name__)

#: How often old events and succeeded jobs are looked for.
PRUNE_EVERY = 3600.0
#: Succeeded jobs are kept this long (dead ones stay until someone retries or they are looked at).
SUCCEEDED_JOB_RETENTION = timedelta(days=7)
#: Pull events are written in batches this often (per process: they are buffered in memory).
PULL_FLUSH_SECONDS = 1.0


def prune(events: EventService, jobs: JobService, retention_days: int, consumers: Sequence[str]) -> None:
    """Delete events past their retention that every consumer has read, and old succeeded jobs."""
    now = utcnow()
    old_events = events.prune(now - timedelta(days=retention_days), consumers)
    old_jobs = jobs.prune(now - SUCCEEDED_JOB_RETENTION)
    if old_events or old_jobs:
        log.info("pruned %d events and %d succeeded jobs", old_events, old_jobs)
