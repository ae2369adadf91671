"""/api/v1/builds/sources, /api/v1/runs, /api/v1/tasks (docs/tasks.md), and the two trigger routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from dockyard.access.passwords import new_secret
from dockyard.access.permissions import MANAGE_READ, MANAGE_WRITE
from dockyard.access.policy import Policy
from dockyard.access.routes.common import iso, json_body, query_int, record_change
from dockyard.access.services.audit import AuditService
from dockyard.asgi import content_length, read_body, run_sync, run_with_body
from dockyard.builds import triggers
from dockyard.builds.services import BuildServices
from dockyard.builds.services.common import TASK_NAME, RunRecord, TaskRecord, TimerRecord, conflict, invalid
from dockyard.builds.services.tasks import ENABLED
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry.routes.headers import next_link

#: How often a followed log looks for new chunks.
FOLLOW_POLL_SECONDS = 0.5
#: Guarded routes here have no repository in their path.
NO_REPOSITORY = "-"


def run_json(run: RunRecord) -> dict[str, Any]:
    return {
        "runId": run.run_id,
        "task": run.task,
        "type": run.type,
        "status": run.status,
        "trigger": run.trigger,
        "triggerDetail": run.trigger_detail,
        "createTime": iso(run.created_at),
        "startTime": iso(run.started_at),
        "finishTime": iso(run.finished_at),
        "platform": run.platform,
        "outputImages": run.outputs,
        "baseImages": run.base_images,
        "steps": run.steps,
        "error": run.error,
        "logSize": run.log_size,
    }


def timer_json(timer: TimerRecord) -> dict[str, Any]:
    return {
        "name": timer.name,
        "schedule": timer.schedule,
        "enabled": timer.enabled,
        "nextRunTime": iso(timer.next_run_at),
    }


def task_json(task: TaskRecord) -> dict[str, Any]:
    """A task as the API answers it: no secret value, ever (the trigger secret only when just made)."""
    shown: dict[str, Any] = {
        "name": task.name,
        "status": task.status,
        "context": task.context,
        "file": task.file,
        "taskFile": task.task_file,
        "cmd": task.cmd,
        "images": task.images,
        "args": task.args,
        "secretArgs": task.secret_arg_keys,
        "values": task.values,
        "secretValues": task.secret_value_keys,
        "platform": task.platform,
        "noPush": task.no_push,
        "timeout": task.timeout,
        "hasGitAccessToken": task.has_git_access_token,
        "commitTriggerEnabled": task.commit_trigger,
        "pullRequestTriggerEnabled": task.pull_request_trigger,
        "baseImageTriggerEnabled": task.base_image_trigger,
        "timers": [timer_json(t) for t in task.timers],
        "baseImages": task.base_images,
        "triggerUrls": {
            "github": f"/api/v1/tasks/{task.name}/triggers/github",
            "git": f"/api/v1/tasks/{task.name}/triggers/git",
        },
        "createTime": iso(task.created_at),
        "updateTime": iso(task.updated_at),
    }
    if task.trigger_secret is not None:
        shown["triggerSecret"] = task.trigger_secret
    return shown


def _unauthorized() -> RegistryError:
    return RegistryError(ErrorCode.UNAUTHORIZED, "no such task, or the trigger secret does not match")


class BuildRoutes:
    """The builds room's routes."""

    def __init__(self, builds: BuildServices, policy: Policy, audit: AuditService) -> None:
        self.builds = builds
        self.policy = policy
        self.audit = audit

    def routes(self) -> list[BaseRoute]:
        def guard(endpoint: Any, needs: dict[str, Any]) -> Any:
            return self.policy.guard(endpoint, needs, repository_param=NO_REPOSITORY)

        read_write = {"GET": MANAGE_READ, "POST": MANAGE_WRITE}
        return [
            Route("/api/v1/builds/sources", guard(self.upload, {"POST": MANAGE_WRITE}), methods=["POST"]),
            Route("/api/v1/runs", guard(self.runs, read_write), methods=["GET", "POST"]),
            Route("/api/v1/runs/{run_id}", guard(self.run, {"GET": MANAGE_READ}), methods=["GET"]),
            Route(
                "/api/v1/runs/{run_id}/cancel", guard(self.cancel, {"POST": MANAGE_WRITE}), methods=["POST"]
            ),
            Route("/api/v1/runs/{run_id}/logs", guard(self.logs, {"GET": MANAGE_WRITE}), methods=["GET"]),
            Route("/api/v1/tasks", guard(self.tasks, read_write), methods=["GET", "POST"]),
            Route(
                "/api/v1/tasks/{task}",
                guard(self.task, {"GET": MANAGE_READ, "PATCH": MANAGE_WRITE, "DELETE": MANAGE_WRITE}),
                methods=["GET", "PATCH", "DELETE"],
            ),
            Route(
                "/api/v1/tasks/{task}/runs", guard(self.task_run, {"POST": MANAGE_WRITE}), methods=["POST"]
            ),
            Route(
                "/api/v1/tasks/{task}/trigger-secret",
                guard(self.trigger_secret, {"POST": MANAGE_WRITE}),
                methods=["POST"],
            ),
            Route("/api/v1/tasks/{task}/timers", guard(self.timers, read_write), methods=["GET", "POST"]),
            Route(
                "/api/v1/tasks/{task}/timers/{timer}",
                guard(self.timer, {"PATCH": MANAGE_WRITE, "DELETE": MANAGE_WRITE}),
                methods=["PATCH", "DELETE"],
            ),
            Route(
                "/api/v1/tasks/{task}/triggers/github",
                self.policy.self_authenticated(self.github),
                methods=["POST"],
            ),
            Route(
                "/api/v1/tasks/{task}/triggers/git",
                self.policy.self_authenticated(self.git),
                methods=["POST"],
            ),
        ]

    async def _audit(self, request: Request, action: str, detail: dict[str, Any]) -> None:
        await record_change(self.audit, self.policy, request, action, detail)

    # -- sources --------------------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        stored = await run_with_body(
            request, lambda body: self.builds.sources.upload(body, content_length(request))
        )
        return JSONResponse({"digest": stored.digest, "size": stored.size}, status_code=201)

    # -- runs -----------------------------------------------------------------------------------

    async def runs(self, request: Request) -> Response:
        if request.method == "POST":
            body = await json_body(request)
            manager = self.policy.manager(request)
            seq = await run_sync(self.builds.quick.request, body, manager.name)
            return await self._queued(request, seq, "run.request")
        params = request.query_params
        limit = min(max(query_int(request, "top", query_int(request, "n", 100)), 1), 1000)
        found, more = await run_sync(
            lambda: self.builds.runs.list(
                task=params.get("task") or None,
                status=params.get("status") or None,
                limit=limit,
                last=params.get("last") or None,
            )
        )
        headers = {}
        if more and found:
            extra = {k: params.get(k, "") for k in ("task", "status")}
            headers["Link"] = next_link("/api/v1/runs", limit, found[-1].run_id, **extra)
        return JSONResponse({"runs": [run_json(r) for r in found]}, headers=headers)

    async def _queued(self, request: Request, seq: int, action: str) -> Response:
        record = await run_sync(self.builds.runs.get_seq, seq)
        await self._audit(request, action, {"run": record.run_id, "task": record.task})
        return JSONResponse(
            run_json(record), status_code=202, headers={"Location": f"/api/v1/runs/{record.run_id}"}
        )

    async def run(self, request: Request) -> Response:
        return JSONResponse(run_json(await run_sync(self.builds.runs.get, request.path_params["run_id"])))

    async def cancel(self, request: Request) -> Response:
        record = await run_sync(self.builds.runs.cancel, request.path_params["run_id"])
        await self._audit(request, "run.cancel", {"run": record.run_id})
        return JSONResponse(run_json(record), status_code=202)

    async def logs(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        offset = query_int(request, "offset", 0)
        follow = request.query_params.get("follow", "").lower() in ("1", "true", "yes")
        runs = self.builds.runs
        first = await run_sync(runs.read_log, run_id, offset)
        headers = {"X-Run-Status": first.status}
        if not follow:
            headers["X-Log-Offset"] = str(first.offset)
            return Response(first.data, media_type="text/plain; charset=utf-8", headers=headers)

        async def stream() -> AsyncIterator[bytes]:
            piece = first
            while True:
                if piece.data:
                    yield piece.data
                if piece.final and not piece.data:
                    return
                if not piece.data:
                    await anyio.sleep(FOLLOW_POLL_SECONDS)
                piece = await run_sync(runs.read_log, run_id, piece.offset)

        return StreamingResponse(stream(), media_type="text/plain; charset=utf-8", headers=headers)

    # -- tasks ----------------------------------------------------------------------------------

    async def tasks(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"tasks": [task_json(t) for t in await run_sync(self.builds.tasks.list)]})
        body = await json_body(request)
        created = await run_sync(self.builds.tasks.create, body)
        await self._audit(request, "task.create", {"name": created.name})
        return JSONResponse(task_json(created), status_code=201)

    async def task(self, request: Request) -> Response:
        name = request.path_params["task"]
        tasks = self.builds.tasks
        if request.method == "GET":
            return JSONResponse(task_json(await run_sync(tasks.get, name)))
        if request.method == "DELETE":
            await run_sync(tasks.delete, name)
            await self._audit(request, "task.delete", {"name": name})
            return Response(status_code=204)
        body = await json_body(request)
        updated = await run_sync(tasks.update, name, body)
        await self._audit(request, "task.update", {"name": name, "fields": sorted(body)})
        return JSONResponse(task_json(updated))

    async def task_run(self, request: Request) -> Response:
        name = request.path_params["task"]
        body = await json_body(request)
        manager = self.policy.manager(request)
        seq = await run_sync(lambda: self.builds.tasks.run(name, body, requested_by=manager.name))
        return await self._queued(request, seq, "task.run")

    async def trigger_secret(self, request: Request) -> Response:
        name = request.path_params["task"]
        renewed = await run_sync(self.builds.tasks.renew_trigger_secret, name)
        await self._audit(request, "task.trigger-secret", {"name": name})
        return JSONResponse(task_json(renewed))

    async def timers(self, request: Request) -> Response:
        name = request.path_params["task"]
        if request.method == "GET":
            return JSONResponse(
                {"timers": [timer_json(t) for t in await run_sync(self.builds.tasks.timers, name)]}
            )
        body = await json_body(request)
        added = await run_sync(self.builds.tasks.add_timer, name, body)
        await self._audit(request, "task.timer.add", {"name": name, "timer": added.name})
        return JSONResponse(timer_json(added), status_code=201)

    async def timer(self, request: Request) -> Response:
        name, timer = request.path_params["task"], request.path_params["timer"]
        if request.method == "DELETE":
            await run_sync(self.builds.tasks.delete_timer, name, timer)
            await self._audit(request, "task.timer.delete", {"name": name, "timer": timer})
            return Response(status_code=204)
        body = await json_body(request)
        changed = await run_sync(self.builds.tasks.update_timer, name, timer, body)
        await self._audit(request, "task.timer.update", {"name": name, "timer": timer})
        return JSONResponse(timer_json(changed))

    # -- triggers (no registry credentials: the task's trigger secret) --------------------------

    async def _authenticated_task(self, request: Request, *, token_allowed: bool) -> tuple[Any, bytes]:
        body = await read_body(request, triggers.MAX_BODY)
        name = request.path_params["task"]
        row = None
        if TASK_NAME.match(name):
            row = await run_sync(self.builds.tasks.row, name)
        # unknown task: check against a throwaway secret, so both answers cost the same
        secret = row.trigger_secret if row is not None else new_secret()
        if (
            not triggers.authenticated(secret, body, request.headers, token_allowed=token_allowed)
            or row is None
        ):
            raise _unauthorized()
        return row, body

    async def _act(self, row: Any, decision: triggers.Decision) -> Response:
        if decision.outcome == "ping":
            return JSONResponse({"ping": "ok"})
        if decision.outcome == "invalid":
            raise invalid(decision.reason)
        if decision.outcome == "ignored":
            return JSONResponse({"ignored": decision.reason})
        if row.status != ENABLED:
            raise conflict(f"task {row.name} is disabled")
        if decision.outcome == "off":
            raise conflict(decision.reason)
        seq = await run_sync(
            lambda: self.builds.tasks.run(
                row.name, trigger=decision.trigger, detail=decision.detail, require_enabled=True
            )
        )
        record = await run_sync(self.builds.runs.get_seq, seq)
        return JSONResponse(
            run_json(record), status_code=202, headers={"Location": f"/api/v1/runs/{record.run_id}"}
        )

    async def github(self, request: Request) -> Response:
        row, body = await self._authenticated_task(request, token_allowed=False)
        event = request.headers.get(triggers.EVENT_HEADER, "")
        payload = triggers.parse_json(body)
        if payload is None:
            raise invalid("the body is not a JSON object")
        return await self._act(row, triggers.github_decision(event, payload, row))

    async def git(self, request: Request) -> Response:
        row, body = await self._authenticated_task(request, token_allowed=True)
        payload = triggers.parse_json(body)
        if payload is None:
            raise invalid("the body is not a JSON object")
        return await self._act(row, triggers.git_decision(payload, row))
