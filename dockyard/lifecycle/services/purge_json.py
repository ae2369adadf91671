"""How purge runs and schedules are shown by the API (``/api/v1/purge/…``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dockyard.db import as_utc


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


def _parameters_json(stored: str) -> dict[str, Any]:
    """A run's or schedule's stored parameters, under the API's names."""
    parameters = json.loads(stored)
    return {
        "filters": parameters.get("filters", []),
        "ago": parameters.get("ago"),
        "keep": parameters.get("keep", 0),
        "untagged": parameters.get("untagged", False),
        "untaggedOnly": parameters.get("untagged_only", False),
    }


def run_json(row: sa.Row) -> dict[str, Any]:
    """A ``purge_runs`` row as the API shows it."""
    return {
        "id": row.id,
        "schedule": row.schedule_name,
        "status": row.status,
        "dryRun": bool(row.dry_run),
        **_parameters_json(row.parameters),
        "requestedBy": row.requested_by,
        "createdTime": _iso(row.created_at),
        "startedTime": _iso(row.started_at),
        "finishedTime": _iso(row.finished_at),
        "deletedTags": row.deleted_tags,
        "deletedManifests": row.deleted_manifests,
        "skipped": row.skipped,
        "freedBytes": row.freed_bytes,
        "error": row.error,
    }


def schedule_json(row: sa.Row) -> dict[str, Any]:
    """A ``purge_schedules`` row as the API shows it."""
    return {
        "name": row.name,
        "schedule": row.cron,
        **_parameters_json(row.parameters),
        "nextRunTime": _iso(row.next_run_at),
        "lastRunTime": _iso(row.last_run_at),
        "lastRunId": row.last_run_id,
        "createdBy": row.created_by,
        "createdTime": _iso(row.created_at),
    }
