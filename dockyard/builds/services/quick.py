"""Quick builds and runs (``POST /api/v1/runs``): checked, then queued with their secrets kept apart."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Connection

from dockyard.builds.services.common import (
    RUN_TYPES,
    SOURCE_KINDS,
    check_images,
    check_map,
    check_platform,
    check_timeout,
    invalid,
    split_git_location,
)
from dockyard.builds.services.runs import queue_run
from dockyard.builds.services.sources import SourceService
from dockyard.builds.services.tasks import MAX_TASK_FILE, TaskService, _check_task_file
from dockyard.builds.spec import MANUAL
from dockyard.config import Settings
from dockyard.db import Database
from dockyard.oci.digest import is_digest

_FIELDS = {
    "type",
    "source",
    "images",
    "file",
    "taskFile",
    "cmd",
    "args",
    "secretArgs",
    "values",
    "secretValues",
    "platform",
    "noPush",
    "timeout",
    "noCache",
    "image",
    "tag",
}


def _string(body: Mapping[str, Any], key: str, limit: int = 4096) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise invalid(f"{key} must be a string of at most {limit} characters")
    return value


def _flag(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise invalid(f"{key} must be true or false")
    return value


class QuickRuns:
    """Checks a quick run's request and queues it."""

    def __init__(self, db: Database, settings: Settings, tasks: TaskService, sources: SourceService) -> None:
        self._db = db
        self._settings = settings
        self._tasks = tasks
        self._sources = sources

    def _source(self, raw: object) -> dict[str, Any]:
        if raw is None:
            return {"kind": "none", "location": "", "ref": None, "folder": None}
        if not isinstance(raw, Mapping):
            raise invalid("source must be an object {kind, location, ref, folder}")
        kind = raw.get("kind")
        if kind not in SOURCE_KINDS:
            raise invalid(f"source.kind must be one of {', '.join(SOURCE_KINDS)}")
        location = raw.get("location") or ""
        ref, folder = raw.get("ref"), raw.get("folder")
        for name, value in (("location", location), ("ref", ref), ("folder", folder)):
            if value is not None and (not isinstance(value, str) or len(value) > 2048):
                raise invalid(f"source.{name} must be a string")
        if kind == "git":
            url, split_ref, split_folder = split_git_location(location)
            location, ref, folder = url, ref or split_ref, folder or split_folder
            if not url.startswith(("https://", "http://", "ssh://", "git://", "git@")):
                self._tasks.check_local_repository(url)
        elif kind == "upload" and not is_digest(location):
            raise invalid("source.location of an upload is the digest POST /api/v1/builds/sources answered")
        elif kind == "tarball" and not location.startswith(("https://", "http://")):
            raise invalid("source.location of a tarball is an http(s) URL")
        elif kind == "oci" and not location:
            raise invalid("source.location of an oci context is host/repository:tag")
        if folder and (folder.startswith("/") or ".." in folder.split("/")):
            raise invalid("source.folder must be relative, without '..'")
        return {"kind": kind, "location": location, "ref": ref, "folder": folder}

    def request(self, body: Mapping[str, Any], requested_by: str | None = None) -> int:
        """Check ``body`` (docs/tasks.md) and queue the run; its seq."""
        unknown = set(body) - _FIELDS
        if unknown:
            raise invalid(f"unknown fields: {', '.join(sorted(unknown))[:200]}")
        kind = body.get("type", "build")
        if kind not in RUN_TYPES:
            raise invalid(f"type must be one of {', '.join(RUN_TYPES)}")
        source = self._source(body.get("source"))
        request: dict[str, Any] = {
            "type": kind,
            "source": source,
            "images": check_images(body.get("images")),
            "file": _string(body, "file", 1024),
            "taskFile": _string(body, "taskFile", MAX_TASK_FILE),
            "cmd": _string(body, "cmd"),
            "args": check_map(body.get("args"), "args"),
            "values": check_map(body.get("values"), "values"),
            "noPush": _flag(body, "noPush"),
            "noCache": _flag(body, "noCache"),
            "timeout": check_timeout(body.get("timeout")),
        }
        secrets = {
            "args": check_map(body.get("secretArgs"), "secretArgs"),
            "values": check_map(body.get("secretValues"), "secretValues"),
        }
        platform = check_platform(body.get("platform"))
        if kind == "build":
            if not request["images"] and not request["noPush"]:
                raise invalid("a build needs images (-t), or noPush")
            if source["kind"] == "none":
                raise invalid("a build needs a context (source)")
        elif kind == "cmd" and not request["cmd"]:
            raise invalid("a cmd run needs cmd: '<image> args'")
        elif kind == "file":
            if request["taskFile"]:
                _check_task_file(request["taskFile"])
            elif source["kind"] == "none":
                raise invalid("a file run needs taskFile, or a context holding file")
        elif kind == "patch":
            image, tag = _string(body, "image", 512), _string(body, "tag", 512)
            if not image:
                raise invalid("a patch run needs image (repository:tag)")
            request.update(
                image=image, tag=tag or f"{image}-patched", source={"kind": "none", "location": ""}
            )

        def work(conn: Connection) -> int:
            if source["kind"] == "upload" and not self._sources.exists(conn, source["location"]):
                raise invalid(f"no uploaded context {source['location'][:80]} (expired?)")
            return queue_run(
                conn,
                type=kind,
                trigger=MANUAL,
                request=request,
                platform=platform,
                secrets=secrets if secrets["args"] or secrets["values"] else None,
                requested_by=requested_by,
            )

        return self._db.run_write(work)
