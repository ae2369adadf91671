"""Tasks: create/read/update/delete with their timers and trigger secret; queue a task's runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.access.passwords import new_secret
from dockyard.builds.models import build_runs, build_task_bases, build_tasks, build_timers
from dockyard.builds.origins import context_origin, plain_http_refused
from dockyard.builds.services.common import (
    GIT_SHA,
    TASK_NAME,
    TIMER_NAME,
    TaskRecord,
    TimerRecord,
    check_images,
    check_map,
    check_platform,
    check_timeout,
    conflict,
    context_kind,
    invalid,
    not_found,
    split_git_location,
    valid_branch,
)
from dockyard.builds.services.runs import RunService, queue_run
from dockyard.builds.spec import COMMIT, MANUAL, PULL_REQUEST, QUEUED
from dockyard.builds.taskfile import load_task_file
from dockyard.config import Settings
from dockyard.db import Database, as_utc, utcnow
from dockyard.events.services import EventService
from dockyard.lifecycle.cron import CronError, check_cron, cron_next
from dockyard.oci.errors import ErrorCode, RegistryError

ENABLED, DISABLED = "Enabled", "Disabled"
MAX_TIMERS = 10
MAX_TASK_FILE = 256 * 1024
#: Create/PATCH body fields (camelCase) → column and checker.
_FIELDS = {
    "file": "file",
    "taskFile": "task_file",
    "cmd": "cmd",
    "images": "images",
    "args": "args",
    "secretArgs": "secret_args",
    "values": "values",
    "secretValues": "secret_values",
    "platform": "platform",
    "noPush": "no_push",
    "timeout": "timeout",
    "status": "status",
    "gitAccessToken": "git_access_token",
    "commitTriggerEnabled": "commit_trigger",
    "pullRequestTriggerEnabled": "pull_request_trigger",
    "baseImageTriggerEnabled": "base_image_trigger",
    "context": "context",
}


def task_type(row: Any) -> str:
    """build (a Dockerfile), file (a task file) or cmd, from what the task names."""
    if row.cmd:
        return "cmd"
    if row.task_file or (row.file or "").endswith((".yaml", ".yml")):
        return "file"
    return "build"


def task_source(row: Any) -> dict[str, Any]:
    """The run request's ``source`` for a task's context (its git token stays in the task row)."""
    kind = context_kind(row.context)
    if kind == "git":
        url, ref, folder = split_git_location(row.context)
        return {"kind": "git", "location": url, "ref": ref, "folder": folder}
    if kind == "none":
        return {"kind": "none", "location": "", "ref": None, "folder": None}
    return {"kind": kind, "location": row.context, "ref": None, "folder": None}


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(f"{name} must be true or false")
    return value


def _status(value: object) -> str:
    if value not in (ENABLED, DISABLED):
        raise invalid("status must be Enabled or Disabled")
    return str(value)


def _text(value: object, name: str, limit: int) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise invalid(f"{name} must be a string of at most {limit} characters")
    return value


class TaskService:
    """Tasks and their timers; runs of a task are queued through ``run``."""

    def __init__(self, db: Database, settings: Settings, runs: RunService, events: EventService) -> None:
        self._db = db
        self._settings = settings
        self._runs = runs
        self._events = events

    # -- checks ---------------------------------------------------------------------------------

    def check_context(self, context: object) -> str:
        """A task's context: a git URL, a local repository under ``builds_local_git_roots``, a tarball
        URL, ``oci://…`` or ``/dev/null``."""
        if not isinstance(context, str) or not context or len(context) > 2048:
            raise invalid("context must be a git URL, a tarball URL, oci://… or /dev/null")
        kind = context_kind(context)
        if kind != "git":
            return context
        url, _, folder = split_git_location(context)
        if folder and (folder.startswith("/") or ".." in Path(folder).parts):
            raise invalid("the context's folder must be relative, without '..'")
        if url.startswith(("https://", "http://", "ssh://", "git://")) or url.startswith("git@"):
            return context
        self.check_local_repository(url)
        return context

    def check_local_repository(self, location: str) -> None:
        """400 unless ``location`` is a git repository under one of ``builds_local_git_roots``."""
        path = Path(location)
        if not path.is_absolute():
            raise invalid(f"context {location[:200]!r} is neither a URL nor an absolute path")
        resolved = path.resolve()
        roots = [root.resolve() for root in self._settings.builds_local_git_roots]
        if not any(resolved.is_relative_to(root) for root in roots):
            raise invalid(
                f"local context {location[:200]!r} is not under builds_local_git_roots "
                f"({', '.join(map(str, roots)) or 'none configured'})"
            )
        if not ((resolved / ".git").exists() or (resolved / "HEAD").is_file()):
            raise invalid(f"local context {location[:200]!r} is not a git repository")

    def _values(self, body: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
        unknown = set(body) - set(_FIELDS) - {"name", "timers"}
        if unknown:
            raise invalid(f"unknown fields: {', '.join(sorted(unknown))[:200]}")
        checks = {
            "args": lambda raw: check_map(raw, "args"),
            "values": lambda raw: check_map(raw, "values"),
            "secretArgs": lambda raw: check_map(raw, "secretArgs"),
            "secretValues": lambda raw: check_map(raw, "secretValues"),
            "images": check_images,
            "platform": check_platform,
            "timeout": check_timeout,
            "status": _status,
            "context": self.check_context,
            "taskFile": lambda raw: _text(raw, "taskFile", MAX_TASK_FILE),
        }
        values: dict[str, Any] = {}
        for key, column in _FIELDS.items():
            if key not in body:
                continue
            raw = body[key]
            if key in checks:
                values[column] = checks[key](raw)
            elif key in (
                "noPush",
                "commitTriggerEnabled",
                "pullRequestTriggerEnabled",
                "baseImageTriggerEnabled",
            ):
                values[column] = _bool(raw, key)
            else:
                values[column] = _text(raw, key, 4096)
        if creating and "context" not in values:
            raise invalid(
                "context is required (a git URL, a local repository, a tarball URL, oci://… or /dev/null)"
            )
        return values

    def _check_token_destination(self, row: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> None:
        """A git access token goes only to the origin it was given for, and over plain http only to a
        host ``insecure_upstreams`` allows: a new origin needs the token in the same request."""
        if not row.get("git_access_token"):
            return
        if old is not None and context_origin(row["context"]) != context_origin(old["context"]):
            raise invalid(
                "the task holds a git access token: a context on another scheme, host or port needs "
                "gitAccessToken in the same request (the token for that host, or null to drop it)"
            )
        refused = plain_http_refused(row["context"], self._settings.insecure_upstreams)
        if refused is not None:
            raise invalid(
                f"a git access token is not sent over plain http to {refused}: "
                "use https, or list the host in insecure_upstreams"
            )

    @staticmethod
    def _check_shape(row: Mapping[str, Any]) -> None:
        if row.get("cmd") and (row.get("task_file") or row.get("images")):
            raise invalid("give cmd, or a Dockerfile with images, or a task file; not several")
        if row.get("task_file"):
            _check_task_file(row["task_file"])
        is_file = row.get("task_file") or (row.get("file") or "").endswith((".yaml", ".yml"))
        if not row.get("cmd") and not is_file and not row.get("images") and not row.get("no_push"):
            raise invalid("a Dockerfile task needs images (-t), or noPush")

    # -- tasks ----------------------------------------------------------------------------------

    def create(self, body: Mapping[str, Any]) -> TaskRecord:
        name = body.get("name")
        if not isinstance(name, str) or not TASK_NAME.match(name):
            raise invalid("name must be 5 to 50 letters, digits, '_' or '-'")
        values = self._values(body, creating=True)
        row = {
            "name": name,
            "status": ENABLED,
            "file": None,
            "task_file": None,
            "cmd": None,
            "images": [],
            "args": {},
            "secret_args": {},
            "values": {},
            "secret_values": {},
            "platform": check_platform(None),
            "no_push": False,
            "timeout": check_timeout(None),
            "commit_trigger": True,
            "pull_request_trigger": False,
            "base_image_trigger": True,
            "git_access_token": None,
            **values,
        }
        self._check_shape(row)
        self._check_token_destination(row)
        given_timers = body.get("timers") or []
        if not isinstance(given_timers, list):
            raise invalid("timers is a list of {name, schedule, enabled}")
        timers = [self._timer(t) for t in given_timers]
        if len({t["name"] for t in timers}) != len(timers) or len(timers) > MAX_TIMERS:
            raise invalid(f"timers need distinct names (at most {MAX_TIMERS})")
        secret = new_secret()
        now = utcnow()

        def work(conn: Connection) -> int:
            if conn.execute(sa.select(build_tasks.c.id).where(build_tasks.c.name == name)).first():
                raise RegistryError(ErrorCode.ALREADY_EXISTS, f"a task named {name!r} exists")
            task_id = conn.execute(
                build_tasks.insert()
                .values(**row, trigger_secret=secret, created_at=now, updated_at=now)
                .returning(build_tasks.c.id)
            ).scalar_one()
            for timer in timers:
                conn.execute(build_timers.insert().values(task_id=task_id, **timer))
            return int(task_id)

        try:
            self._db.run_write(work)
        except sa.exc.IntegrityError:
            raise RegistryError(ErrorCode.ALREADY_EXISTS, f"a task named {name!r} exists") from None
        return self.get(name, trigger_secret=secret)

    def get(self, name: str, *, trigger_secret: str | None = None) -> TaskRecord:
        with self._db.read() as conn:
            row = conn.execute(sa.select(build_tasks).where(build_tasks.c.name == name)).first()
            if row is None:
                raise not_found(f"task {name[:60]!r}")
            return self._record(conn, row, trigger_secret)

    def row(self, name: str) -> Any:
        """The task's row (its trigger secret included), or None: for the trigger routes only."""
        with self._db.read() as conn:
            return conn.execute(sa.select(build_tasks).where(build_tasks.c.name == name)).first()

    def list(self) -> list[TaskRecord]:
        with self._db.read() as conn:
            rows = conn.execute(sa.select(build_tasks).order_by(build_tasks.c.name)).all()
            return [self._record(conn, row, None) for row in rows]

    def update(self, name: str, body: Mapping[str, Any]) -> TaskRecord:
        if "timers" in body or "name" in body:
            raise invalid("name and timers cannot be changed here (use the timers routes)")
        values = self._values(body, creating=False)

        def work(conn: Connection) -> None:
            row = self._locked(conn, name)
            merged = {**row._mapping, **values}
            self._check_shape(merged)
            if "context" in values or "git_access_token" in values:
                # a token given again may go to the new context; a kept one only to its old origin
                self._check_token_destination(merged, None if "git_access_token" in values else row._mapping)
            conn.execute(
                build_tasks.update().where(build_tasks.c.id == row.id).values(**values, updated_at=utcnow())
            )

        self._db.run_write(work)
        return self.get(name)

    def delete(self, name: str) -> None:
        def work(conn: Connection) -> None:
            row = self._locked(conn, name)
            self._runs.cancel_queued_of_task(conn, row.id)
            conn.execute(build_tasks.delete().where(build_tasks.c.id == row.id))

        self._db.run_write(work)
        self._events.committed()

    def renew_trigger_secret(self, name: str) -> TaskRecord:
        secret = new_secret()

        def work(conn: Connection) -> None:
            row = self._locked(conn, name)
            conn.execute(
                build_tasks.update()
                .where(build_tasks.c.id == row.id)
                .values(trigger_secret=secret, updated_at=utcnow())
            )

        self._db.run_write(work)
        return self.get(name, trigger_secret=secret)

    def run(
        self,
        name: str,
        overrides: Mapping[str, Any] | None = None,
        *,
        trigger: str = MANUAL,
        detail: Mapping[str, Any] | None = None,
        requested_by: str | None = None,
        conn: Connection | None = None,
        require_enabled: bool = False,
    ) -> int:
        """Queue a run of task ``name`` (with a manual run's overrides); its seq."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - {"values", "secretValues", "args", "commit", "branch", "noPush"}
        if unknown:
            raise invalid(f"unknown fields: {', '.join(sorted(unknown))[:200]}")
        values = check_map(overrides.get("values"), "values")
        secret_values = check_map(overrides.get("secretValues"), "secretValues")
        args = check_map(overrides.get("args"), "args")
        commit = _text(overrides.get("commit"), "commit", 64)
        branch = _text(overrides.get("branch"), "branch", 255)
        if commit is not None and not GIT_SHA.match(commit):
            raise invalid("commit must be a hexadecimal commit id")
        if branch is not None and not valid_branch(branch):
            raise invalid("branch must be a valid git branch name")
        no_push = overrides.get("noPush")
        if no_push is not None:
            _bool(no_push, "noPush")
        detail = dict(detail or {})
        if commit:
            detail.setdefault("commit", commit)
        if branch:
            detail.setdefault("branch", branch)

        def work(conn: Connection) -> int:
            row = conn.execute(sa.select(build_tasks).where(build_tasks.c.name == name)).first()
            if row is None:
                raise not_found(f"task {name[:60]!r}")
            if require_enabled and row.status != ENABLED:
                raise conflict(f"task {name} is disabled")
            if trigger in (COMMIT, PULL_REQUEST) and detail.get("commit"):
                # a replayed or repeated delivery: the run of that commit already waiting answers it
                waiting = conn.execute(
                    sa.select(build_runs.c.seq, build_runs.c.trigger_detail).where(
                        build_runs.c.task_id == row.id,
                        build_runs.c.status == QUEUED,
                        build_runs.c.trigger == trigger,
                    )
                ).all()
                for seq, queued in waiting:
                    if (queued or {}).get("commit") == detail["commit"]:
                        return int(seq)
            request = {
                "type": task_type(row),
                "source": task_source(row),
                "file": row.file,
                "taskFile": row.task_file,
                "cmd": row.cmd,
                "images": list(row.images),
                "args": {**row.args, **args},
                "values": {**row.values, **values},
                "noPush": row.no_push if no_push is None else no_push,
                "timeout": row.timeout,
                "commit": detail.get("commit"),
                "branch": detail.get("branch"),
                "ref": detail.get("ref"),
            }
            secrets = {"values": secret_values} if secret_values else None
            return queue_run(
                conn,
                type=request["type"],
                trigger=trigger,
                request=request,
                platform=row.platform,
                task=row,
                detail=detail,
                secrets=secrets,
                requested_by=requested_by,
            )

        return work(conn) if conn is not None else self._db.run_write(work)

    # -- timers ---------------------------------------------------------------------------------

    def _timer(self, body: object, *, name: str | None = None) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise invalid("a timer is an object {name, schedule, enabled}")
        timer_name = name or body.get("name")
        if not isinstance(timer_name, str) or not TIMER_NAME.match(timer_name):
            raise invalid("timer names are 1 to 50 letters, digits, '_' or '-'")
        schedule = body.get("schedule")
        if not isinstance(schedule, str):
            raise invalid("schedule is required: 5 cron fields in UTC")
        now = utcnow()
        try:
            schedule = check_cron(schedule, now)
        except CronError as exc:
            raise invalid(str(exc)) from None
        enabled = body.get("enabled", True)
        return {
            "name": timer_name,
            "schedule": schedule,
            "enabled": _bool(enabled, "enabled"),
            "next_run_at": cron_next(schedule, now),
        }

    def timers(self, name: str) -> list[TimerRecord]:
        return self.get(name).timers

    def add_timer(self, name: str, body: Mapping[str, Any]) -> TimerRecord:
        timer = self._timer(body)

        def work(conn: Connection) -> None:
            row = self._locked(conn, name)
            count = conn.execute(
                sa.select(sa.func.count()).select_from(build_timers).where(build_timers.c.task_id == row.id)
            ).scalar_one()
            if count >= MAX_TIMERS:
                raise invalid(f"a task has at most {MAX_TIMERS} timers")
            if conn.execute(
                sa.select(build_timers.c.name).where(
                    build_timers.c.task_id == row.id, build_timers.c.name == timer["name"]
                )
            ).first():
                raise RegistryError(ErrorCode.ALREADY_EXISTS, f"task {name} has a timer {timer['name']!r}")
            conn.execute(build_timers.insert().values(task_id=row.id, **timer))

        self._db.run_write(work)
        return next(t for t in self.timers(name) if t.name == timer["name"])

    def update_timer(self, name: str, timer_name: str, body: Mapping[str, Any]) -> TimerRecord:
        def work(conn: Connection) -> None:
            row = self._locked(conn, name)
            current = conn.execute(
                sa.select(build_timers).where(
                    build_timers.c.task_id == row.id, build_timers.c.name == timer_name
                )
            ).first()
            if current is None:
                raise not_found(f"timer {timer_name[:60]!r} of task {name}")
            merged = {"schedule": current.schedule, "enabled": current.enabled, **body}
            timer = self._timer(merged, name=timer_name)
            conn.execute(
                build_timers.update()
                .where(build_timers.c.task_id == row.id, build_timers.c.name == timer_name)
                .values(**timer)
            )

        self._db.run_write(work)
        return next(t for t in self.timers(name) if t.name == timer_name)

    def delete_timer(self, name: str, timer_name: str) -> None:
        def work(conn: Connection) -> None:
            row = self._locked(conn, name)
            deleted = conn.execute(
                build_timers.delete().where(
                    build_timers.c.task_id == row.id, build_timers.c.name == timer_name
                )
            ).rowcount
            if not deleted:
                raise not_found(f"timer {timer_name[:60]!r} of task {name}")

        self._db.run_write(work)

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _locked(conn: Connection, name: str) -> Any:
        row = conn.execute(sa.select(build_tasks).where(build_tasks.c.name == name).with_for_update()).first()
        if row is None:
            raise not_found(f"task {name[:60]!r}")
        return row

    @staticmethod
    def _record(conn: Connection, row: Any, trigger_secret: str | None) -> TaskRecord:
        timers = [
            TimerRecord(t.name, t.schedule, t.enabled, as_utc(t.next_run_at))
            for t in conn.execute(
                sa.select(build_timers).where(build_timers.c.task_id == row.id).order_by(build_timers.c.name)
            ).all()
        ]
        bases = [
            {"image": b.image, "digest": b.digest}
            for b in conn.execute(
                sa.select(build_task_bases)
                .where(build_task_bases.c.task_id == row.id)
                .order_by(build_task_bases.c.image)
            ).all()
        ]
        return TaskRecord(
            id=row.id,
            name=row.name,
            status=row.status,
            context=row.context,
            file=row.file,
            task_file=row.task_file,
            cmd=row.cmd,
            images=list(row.images),
            args=dict(row.args),
            secret_arg_keys=sorted(row.secret_args),
            values=dict(row.values),
            secret_value_keys=sorted(row.secret_values),
            platform=row.platform,
            no_push=row.no_push,
            timeout=row.timeout,
            commit_trigger=row.commit_trigger,
            pull_request_trigger=row.pull_request_trigger,
            base_image_trigger=row.base_image_trigger,
            has_git_access_token=bool(row.git_access_token),
            created_at=as_utc(row.created_at),
            updated_at=as_utc(row.updated_at),
            timers=timers,
            base_images=bases,
            trigger_secret=trigger_secret,
        )


def _check_task_file(text: str) -> None:
    """400 naming the bad path when ``text`` is not a valid task file."""
    try:
        load_task_file(text)
    except ValueError as exc:
        raise invalid(f"taskFile: {exc}") from None
