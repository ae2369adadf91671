"""The management API's OpenAPI 3.1 description, served at /api/v1/openapi.json."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

STATUS = {"type": "string", "enum": ["enabled", "disabled"]}
ACTIONS = {
    "type": "object",
    "description": "repository pattern → data actions",
    "additionalProperties": {
        "type": "array",
        "items": {
            "type": "string",
            "enum": ["content/read", "content/write", "content/delete", "metadata/read", "metadata/write"],
        },
    },
}
CREDENTIAL_NAME = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "expiresInDays": {"type": "integer"}},
}


def _object(required: list[str] | None = None, **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


WEBHOOK = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "serviceUri": {"type": "string", "format": "uri"},
        "actions": {
            "type": "array",
            "items": {
                "type": "string",
                "enum": [
                    "push",
                    "delete",
                    "quarantine",
                    "chart_push",
                    "chart_delete",
                    "build_succeeded",
                    "build_failed",
                ],
            },
        },
        "scope": {"type": "string", "description": "repo:tag, repo:* or repo (= repo:latest); * wildcards"},
        "customHeaders": {"type": "object", "additionalProperties": {"type": "string"}},
        "status": STATUS,
        "secret": {"type": "string", "description": "signs each delivery: X-Dockyard-Signature-256"},
        "payloadFormat": {"type": "string", "enum": ["acr", "cloudevents"]},
    },
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
STRINGS = {"type": "array", "items": {"type": "string"}}
TIMER = _object(name={"type": "string"}, schedule={"type": "string"}, enabled={"type": "boolean"})
TASK = _object(
    name={"type": "string", "pattern": "^[A-Za-z0-9_-]{5,50}$"},
    context={
        "type": "string",
        "description": "git URL (#ref:folder), local repository, tarball URL, oci://, /dev/null",
    },
    file={"type": "string"},
    taskFile={"type": "string"},
    cmd={"type": "string"},
    images=STRINGS,
    args=STRING_MAP,
    secretArgs=STRING_MAP,
    values=STRING_MAP,
    secretValues=STRING_MAP,
    platform={"type": "string"},
    noPush={"type": "boolean"},
    timeout={"type": "integer", "minimum": 300, "maximum": 28800},
    status={"type": "string", "enum": ["Enabled", "Disabled"]},
    gitAccessToken={"type": "string"},
    commitTriggerEnabled={"type": "boolean"},
    pullRequestTriggerEnabled={"type": "boolean"},
    baseImageTriggerEnabled={"type": "boolean"},
    timers={"type": "array", "items": TIMER},
)
TASK_RUN = _object(
    values=STRING_MAP,
    secretValues=STRING_MAP,
    args=STRING_MAP,
    commit={"type": "string"},
    branch={"type": "string"},
    noPush={"type": "boolean"},
)
RUN_REQUEST = _object(
    type={"type": "string", "enum": ["build", "file", "cmd", "patch"]},
    source=_object(
        kind={"type": "string", "enum": ["upload", "git", "tarball", "oci", "none"]},
        location={"type": "string"},
        ref={"type": "string"},
        folder={"type": "string"},
    ),
    images=STRINGS,
    file={"type": "string"},
    taskFile={"type": "string"},
    cmd={"type": "string"},
    args=STRING_MAP,
    secretArgs=STRING_MAP,
    values=STRING_MAP,
    secretValues=STRING_MAP,
    platform={"type": "string"},
    noPush={"type": "boolean"},
    noCache={"type": "boolean"},
    timeout={"type": "integer", "minimum": 300, "maximum": 28800},
    image={"type": "string"},
    tag={"type": "string"},
)
SOFT_DELETE = _object(status=STATUS, retentionDays={"type": "integer", "minimum": 1, "maximum": 90})
RETENTION = _object(
    status=STATUS,
    days={"type": "integer", "minimum": 0, "maximum": 365},
    type={"type": "string", "enum": ["UntaggedManifests"]},
)
RESTORE = _object(
    tag={"type": "string", "description": "restore this tag instead of the ones it had"},
    force={"type": "boolean", "description": "take back tags that now point elsewhere"},
)

#: (path, method, summary, request body schema or None, success status)
#: acr purge's flags as a JSON body.
PURGE = _object(
    filters={"type": "array", "items": {"type": "string"}},
    ago={"type": "string"},
    keep={"type": "integer"},
    untagged={"type": "boolean"},
    untaggedOnly={"type": "boolean"},
    concurrency={"type": "integer"},
)
OPERATIONS: list[tuple[str, str, str, dict[str, Any] | None, int]] = [
    ("/api/v1/registry", "get", "Registry properties", None, 200),
    (
        "/api/v1/registry",
        "patch",
        "Change registry properties (a SKU change is refused while the registry exceeds the new tier)",
        _object(
            sku=_object(["name"], name={"type": "string", "enum": ["Basic", "Standard", "Premium"]}),
            adminUserEnabled={"type": "boolean"},
            anonymousPullEnabled={"type": "boolean"},
            publicNetworkAccess={"type": "string", "enum": ["Enabled", "Disabled"]},
            networkRuleSet=_object(
                defaultAction={"type": "string", "enum": ["Allow", "Deny"]},
                ipRules={"type": "array", "items": _object(value={"type": "string"})},
            ),
        ),
        200,
    ),
    ("/api/v1/registry/credentials", "get", "Admin user name and password metadata", None, 200),
    (
        "/api/v1/registry/network-rules",
        "post",
        "Add one IP rule",
        _object(["ipAddress"], ipAddress={"type": "string"}),
        200,
    ),
    ("/api/v1/registry/network-rules", "delete", "Remove one IP rule (?ipAddress=)", None, 200),
    ("/api/v1/registry/credentials/renew", "post", "Regenerate an admin password", CREDENTIAL_NAME, 200),
    ("/api/v1/users", "get", "List users", None, 200),
    (
        "/api/v1/users",
        "post",
        "Create a user (its secret is shown once)",
        _object(["name"], name={"type": "string"}, description={"type": "string"}),
        201,
    ),
    ("/api/v1/users/{id}", "get", "Show a user", None, 200),
    ("/api/v1/users/{id}", "patch", "Enable or disable a user", _object(status=STATUS), 200),
    ("/api/v1/users/{id}", "delete", "Delete a user", None, 204),
    ("/api/v1/users/{id}/credentials", "post", "Regenerate a user's secret", CREDENTIAL_NAME, 201),
    ("/api/v1/service-principals", "get", "List service principals", None, 200),
    (
        "/api/v1/service-principals",
        "post",
        "Create a service principal",
        _object(name={"type": "string"}, description={"type": "string"}),
        201,
    ),
    ("/api/v1/service-principals/{id}", "get", "Show a service principal", None, 200),
    (
        "/api/v1/service-principals/{id}",
        "patch",
        "Enable or disable a service principal",
        _object(status=STATUS),
        200,
    ),
    ("/api/v1/service-principals/{id}", "delete", "Delete a service principal", None, 204),
    (
        "/api/v1/service-principals/{id}/credentials",
        "post",
        "Regenerate a service principal's secret",
        CREDENTIAL_NAME,
        201,
    ),
    ("/api/v1/role-assignments", "get", "List role assignments (?assignee=)", None, 200),
    (
        "/api/v1/role-assignments",
        "post",
        "Assign a role",
        _object(
            ["assignee", "role"],
            assignee={"type": "string"},
            role={"type": "string"},
            scope={"type": "string"},
        ),
        201,
    ),
    ("/api/v1/role-assignments/{id}", "delete", "Remove a role assignment", None, 204),
    ("/api/v1/scope-maps", "get", "List scope maps", None, 200),
    (
        "/api/v1/scope-maps",
        "post",
        "Create a scope map",
        _object(
            ["name", "actions"], name={"type": "string"}, description={"type": "string"}, actions=ACTIONS
        ),
        201,
    ),
    ("/api/v1/scope-maps/{id}", "get", "Show a scope map", None, 200),
    (
        "/api/v1/scope-maps/{id}",
        "patch",
        "Add and remove rules",
        _object(add=ACTIONS, remove=ACTIONS, description={"type": "string"}),
        200,
    ),
    ("/api/v1/scope-maps/{id}", "delete", "Delete a scope map", None, 204),
    ("/api/v1/tokens", "get", "List repository-scoped tokens", None, 200),
    (
        "/api/v1/tokens",
        "post",
        "Create a token (its passwords are shown once)",
        _object(
            ["name", "scopeMap"],
            name={"type": "string"},
            scopeMap={"type": "string"},
            status=STATUS,
            expiresInDays={"type": "integer"},
        ),
        201,
    ),
    ("/api/v1/tokens/{id}", "get", "Show a token", None, 200),
    (
        "/api/v1/tokens/{id}",
        "patch",
        "Change a token's scope map or status",
        _object(scopeMap={"type": "string"}, status=STATUS),
        200,
    ),
    ("/api/v1/tokens/{id}", "delete", "Delete a token", None, 204),
    ("/api/v1/tokens/{id}/credentials", "post", "Generate a token password", CREDENTIAL_NAME, 201),
    ("/api/v1/signing-keys", "get", "List token signing keys", None, 200),
    ("/api/v1/signing-keys/rotate", "post", "Start signing with a new key", None, 201),
    ("/api/v1/audit", "get", "Audit events (?since=, ?action=, ?limit=)", None, 200),
    (
        "/api/v1/events",
        "get",
        "Repository events: push, pull, delete, untag… (?repository=, ?action=, ?since=)",
        None,
        200,
    ),
    ("/api/v1/webhooks", "get", "List webhooks", None, 200),
    (
        "/api/v1/webhooks",
        "post",
        "Create a webhook",
        WEBHOOK | {"required": ["name", "serviceUri", "actions"]},
        201,
    ),
    ("/api/v1/webhooks/{id}", "get", "Show a webhook", None, 200),
    ("/api/v1/webhooks/{id}", "patch", "Change a webhook", WEBHOOK, 200),
    ("/api/v1/webhooks/{id}", "delete", "Delete a webhook", None, 204),
    ("/api/v1/webhooks/{id}/config", "get", "A webhook's service URI and custom headers", None, 200),
    ("/api/v1/webhooks/{id}/ping", "post", "Send a ping now and report the answer", None, 200),
    ("/api/v1/webhooks/{id}/events", "get", "Deliveries with every attempt (?status=, ?limit=)", None, 200),
    ("/api/v1/webhooks/{id}/events/{delivery}/redeliver", "post", "Send a delivery again", None, 202),
    # the pull-through cache (docs/cache.md); a credential set's password is write-only
    ("/api/v1/cache-rules", "get", "List cache rules", None, 200),
    (
        "/api/v1/cache-rules",
        "post",
        "Create a cache rule (sourceRepository: login-server/repo or login-server/prefix/*)",
        _object(
            ["name", "sourceRepository", "targetRepository"],
            name={"type": "string"},
            sourceRepository={"type": "string"},
            targetRepository={"type": "string"},
            credentialSetName={"type": "string"},
        ),
        201,
    ),
    ("/api/v1/cache-rules/{name}", "get", "Show a cache rule", None, 200),
    (
        "/api/v1/cache-rules/{name}",
        "patch",
        "Change a cache rule's credential set (null: none)",
        _object(credentialSetName={"type": ["string", "null"]}),
        200,
    ),
    ("/api/v1/cache-rules/{name}", "delete", "Delete a cache rule (what it cached stays)", None, 204),
    ("/api/v1/credential-sets", "get", "List credential sets (never their passwords)", None, 200),
    (
        "/api/v1/credential-sets",
        "post",
        "Create a credential set for an upstream registry",
        _object(
            ["name", "loginServer", "username", "password"],
            name={"type": "string"},
            loginServer={"type": "string"},
            username={"type": "string"},
            password={"type": "string", "writeOnly": True},
        ),
        201,
    ),
    ("/api/v1/credential-sets/{name}", "get", "Show a credential set", None, 200),
    (
        "/api/v1/credential-sets/{name}",
        "patch",
        "Change a credential set",
        _object(
            loginServer={"type": "string"},
            username={"type": "string"},
            password={"type": "string", "writeOnly": True},
        ),
        200,
    ),
    ("/api/v1/credential-sets/{name}", "delete", "Delete a credential set no rule uses", None, 204),
    # {name} is a repository name; its slashes are sent as they are (or as %2F).
    ("/api/v1/repositories/{name}/immutability", "get", "A repository's write-once tag policy", None, 200),
    (
        "/api/v1/repositories/{name}/immutability",
        "put",
        "Set the write-once tag policy (enabled null: follow the registry default)",
        _object(
            ["enabled"],
            enabled={"type": ["boolean", "null"]},
            exemptions={"type": "array", "items": {"type": "string"}},
        ),
        200,
    ),
    # lifecycle: soft delete (recycle bin) and retention; {name} is a repository name with its slashes
    ("/api/v1/registry/policies", "get", "The soft-delete and retention policies", None, 200),
    ("/api/v1/registry/policies/soft-delete", "get", "The soft-delete policy", None, 200),
    ("/api/v1/registry/policies/soft-delete", "patch", "Change the soft-delete policy", SOFT_DELETE, 200),
    ("/api/v1/registry/policies/retention", "get", "The untagged-manifest retention policy", None, 200),
    ("/api/v1/registry/policies/retention", "patch", "Change the retention policy", RETENTION, 200),
    ("/api/v1/deleted-repositories", "get", "Repositories deleted with manifests in the bin", None, 200),
    ("/api/v1/deleted/{name}/_manifests", "get", "A repository's manifests in the recycle bin", None, 200),
    ("/api/v1/deleted/{name}/_tags", "get", "Tags of a repository's manifests in the bin", None, 200),
    ("/api/v1/deleted/{name}/_manifests/{digest}/restore", "post", "Restore a manifest", RESTORE, 200),
    (
        "/api/v1/purge",
        "post",
        "Start a purge as acr purge (needs delete on every matched repository); returns the run id",
        PURGE | {"properties": PURGE["properties"] | {"dryRun": {"type": "boolean"}}},
        202,
    ),
    ("/api/v1/purge/runs", "get", "Purge runs, newest first (?limit=, ?schedule=)", None, 200),
    ("/api/v1/purge/runs/{id}", "get", "A purge run with what it deleted or skipped", None, 200),
    ("/api/v1/purge/schedules", "get", "List purge schedules", None, 200),
    (
        "/api/v1/purge/schedules",
        "post",
        "Create a purge schedule (5-field cron in UTC)",
        PURGE
        | {
            "required": ["name", "schedule"],
            "properties": PURGE["properties"] | {"name": {"type": "string"}, "schedule": {"type": "string"}},
        },
        201,
    ),
    ("/api/v1/purge/schedules/{schedule}", "get", "Show a purge schedule", None, 200),
    ("/api/v1/purge/schedules/{schedule}", "delete", "Delete a purge schedule", None, 204),
    ("/api/v1/gc/runs", "get", "Latest garbage-collection runs, newest first (?limit=)", None, 200),
    (
        "/api/v1/gc/runs",
        "post",
        "Queue a garbage-collection run",
        _object(
            gracePeriodSeconds={"type": "integer"}, dryRun={"type": "boolean"}, untagged={"type": "boolean"}
        ),
        202,
    ),
    ("/api/v1/gc/runs/{run_id}", "get", "A garbage-collection run: status, items and bytes freed", None, 200),
    (
        "/api/v1/registry/usage",
        "get",
        "The tier's limits with current use (as az acr show-usage; -1: unlimited); ?repository= gives one"
        " repository's size",
        None,
        200,
    ),
    ("/api/v1/imports", "get", "Latest imports, newest first (?limit=)", None, 200),
    (
        "/api/v1/imports",
        "post",
        "Import an image from another registry (as az acr import); runs as a job",
        _object(
            source={"type": "string"},
            targetTags={"type": "array", "items": {"type": "string"}},
            repository={"type": "string"},
            username={"type": "string"},
            password={"type": "string"},
            force={"type": "boolean"},
            includeReferrers={"type": "boolean"},
        ),
        202,
    ),
    (
        "/api/v1/imports/{import_id}",
        "get",
        "An import: status, progress (manifests and bytes), error",
        None,
        200,
    ),
    # -- builds (docs/tasks.md) -----------------------------------------------------------------
    (
        "/api/v1/builds/sources",
        "post",
        "Upload a build context (a tar, optionally gzip'd; raw body)",
        None,
        201,
    ),
    ("/api/v1/runs", "get", "Runs, newest first (?task=&status=&top=&last=, Link rel=next)", None, 200),
    ("/api/v1/runs", "post", "Queue a quick build, task-file run, cmd run or patch", RUN_REQUEST, 202),
    ("/api/v1/runs/{run_id}", "get", "A run: status, trigger, steps, output and base images", None, 200),
    (
        "/api/v1/runs/{run_id}/cancel",
        "post",
        "Cancel a run (queued: at once; running: within a second)",
        None,
        202,
    ),
    (
        "/api/v1/runs/{run_id}/logs",
        "get",
        "A run's log from ?offset=, text/plain; ?follow=true streams it",
        None,
        200,
    ),
    ("/api/v1/tasks", "get", "List tasks (no secrets)", None, 200),
    (
        "/api/v1/tasks",
        "post",
        "Create a task (as az acr task create); answers its trigger secret once",
        TASK,
        201,
    ),
    (
        "/api/v1/tasks/{task}",
        "get",
        "Show a task (no secrets), its timers and recorded base images",
        None,
        200,
    ),
    ("/api/v1/tasks/{task}", "patch", "Change a task (any create field but name and timers)", TASK, 200),
    ("/api/v1/tasks/{task}", "delete", "Delete a task; its queued runs are canceled", None, 204),
    ("/api/v1/tasks/{task}/runs", "post", "Run a task now, with overrides", TASK_RUN, 202),
    (
        "/api/v1/tasks/{task}/trigger-secret",
        "post",
        "Renew the task's trigger secret (shown once)",
        None,
        200,
    ),
    ("/api/v1/tasks/{task}/timers", "get", "A task's timers", None, 200),
    ("/api/v1/tasks/{task}/timers", "post", "Add a timer (5-field cron, UTC)", TIMER, 201),
    ("/api/v1/tasks/{task}/timers/{timer}", "patch", "Change a timer's schedule or enabled", TIMER, 200),
    ("/api/v1/tasks/{task}/timers/{timer}", "delete", "Remove a timer", None, 204),
    (
        "/api/v1/tasks/{task}/triggers/github",
        "post",
        "GitHub webhook (push, pull_request, ping); no credentials: X-Hub-Signature-256 by the trigger"
        " secret",
        None,
        202,
    ),
    (
        "/api/v1/tasks/{task}/triggers/git",
        "post",
        "Generic push {commit, branch}; no credentials: X-Dockyard-Trigger-Token or X-Hub-Signature-256",
        _object(commit={"type": "string"}, branch={"type": "string"}),
        202,
    ),
]


def openapi_document() -> dict[str, Any]:
    error = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}},
    }
    paths: dict[str, dict[str, Any]] = {}
    for path, method, summary, body, status in OPERATIONS:
        operation: dict[str, Any] = {
            "summary": summary,
            "responses": {
                str(status): {"description": "success"},
                "400": error,
                "401": error,
                "403": error,
                "404": error,
                "429": error,
            },
        }
        parameters = re.findall(r"\{(\w+)\}", path)
        if parameters:
            operation["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in parameters
            ]
        if body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Dockyard management API", "version": "v1"},
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {
                "Errors": _object(
                    errors={
                        "type": "array",
                        "items": _object(code={"type": "string"}, message={"type": "string"}, detail={}),
                    }
                )
            },
        },
        "security": [{"basic": []}, {"bearer": []}],
        "paths": paths,
    }


class OpenApiRoutes:
    def routes(self) -> list[BaseRoute]:
        return [Route("/api/v1/openapi.json", self.document, methods=["GET"])]

    async def document(self, request: Request) -> Response:
        return JSONResponse(openapi_document())
