"""Tasks through the API: CRUD and validation, secrets, roles, triggers (GitHub and git hooks)."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
from pathlib import Path

import pytest

from tests.support.auth import create_user
from tests.support.builds import FakeEngine, use_engine
from tests.support.registry import error_codes

TASK = {
    "name": "hello-task",
    "context": "https://git.example/app.git#main:src",
    "file": "Dockerfile",
    "images": ["app:{{.Run.ID}}"],
    "args": {"A": "1"},
    "secretArgs": {"TOKEN": "s3cret-arg"},
    "values": {"v": "x"},
    "secretValues": {"pw": "s3cret-value"},
    "gitAccessToken": "ghp_s3cret",
    "pullRequestTriggerEnabled": False,
    "timers": [{"name": "nightly", "schedule": "0 2 * * *"}],
}


@pytest.fixture
def engine(dockyard) -> FakeEngine:
    return use_engine(dockyard, FakeEngine())


def create(client, **changes) -> dict:
    response = client.post("/api/v1/tasks", json={**TASK, **changes})
    assert response.status_code == 201, response.text
    return response.json()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github(client, name: str, secret: str | None, event: str, payload: dict, *, signature: str | None = None):
    body = json.dumps(payload).encode()
    headers = {"X-GitHub-Event": event, "Content-Type": "application/json"}
    if secret is not None:
        headers["X-Hub-Signature-256"] = signature or sign(secret, body)
    return client.post(f"/api/v1/tasks/{name}/triggers/github", content=body, headers=headers)


def test_create_show_update_delete(client, dockyard, engine) -> None:
    created = create(client)
    assert created["triggerSecret"]
    assert created["status"] == "Enabled"
    assert created["triggerUrls"]["github"] == "/api/v1/tasks/hello-task/triggers/github"
    assert created["timers"][0]["name"] == "nightly"
    assert created["timers"][0]["nextRunTime"]
    shown = client.get("/api/v1/tasks/hello-task").json()
    text = json.dumps(shown) + json.dumps(client.get("/api/v1/tasks").json())
    for secret in ("s3cret-arg", "s3cret-value", "ghp_s3cret", created["triggerSecret"]):
        assert secret not in text  # secrets never come back
    assert shown["secretArgs"] == ["TOKEN"]
    assert shown["secretValues"] == ["pw"]
    assert shown["hasGitAccessToken"]
    assert "triggerSecret" not in shown
    changed = client.patch("/api/v1/tasks/hello-task", json={"status": "Disabled", "timeout": 600})
    assert changed.status_code == 200
    assert changed.json()["status"] == "Disabled"
    assert changed.json()["timeout"] == 600
    renewed = client.post("/api/v1/tasks/hello-task/trigger-secret").json()["triggerSecret"]
    assert renewed
    assert renewed != created["triggerSecret"]
    assert client.post("/api/v1/tasks", json=TASK).status_code == 409
    queued = client.post("/api/v1/tasks/hello-task/runs", json={}).json()
    assert client.delete("/api/v1/tasks/hello-task").status_code == 204
    assert client.get("/api/v1/tasks/hello-task").status_code == 404
    assert client.get(f"/api/v1/runs/{queued['runId']}").json()["status"] == "Canceled"


def test_validation_errors(client, settings, tmp_path: Path) -> None:
    bad = [
        {"name": "abc"},
        {"name": "has space"},
        {"context": None},
        {"context": "relative/path"},
        {"context": "/srv/outside/roots"},
        {"images": "app"},
        {"images": [], "noPush": False},
        {"timeout": 5},
        {"status": "Maybe"},
        {"cmd": "busybox", "images": ["a"]},
        {"timers": [{"name": "t", "schedule": "every day"}]},
        {"bogus": 1},
        {"secretArgs": {"k": 5}},
    ]
    for changes in bad:
        body = {**TASK, **changes}
        if changes.get("context", "") is None:
            del body["context"]
        response = client.post("/api/v1/tasks", json=body)
        assert response.status_code == 400, (changes, response.text)
        assert error_codes(response) == ["INVALID_REQUEST"]


def test_local_git_context_under_roots(client, dockyard, settings, tmp_path: Path) -> None:
    root = tmp_path / "git"
    repo = root / "app"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    dockyard.service("builds").tasks._settings = settings.model_copy(
        update={"builds_local_git_roots": [root]}
    )
    assert client.post("/api/v1/tasks", json={**TASK, "context": str(repo)}).status_code == 201
    not_git = root / "plain"
    not_git.mkdir()
    assert (
        client.post("/api/v1/tasks", json={**TASK, "name": "other-task", "context": str(not_git)}).status_code
        == 400
    )
    escape = f"{repo}/../../outside"
    assert (
        client.post("/api/v1/tasks", json={**TASK, "name": "third-task", "context": escape}).status_code
        == 400
    )


def test_manual_task_run_uses_the_tasks_secrets(client, dockyard, engine) -> None:
    create(client)
    run = client.post(
        "/api/v1/tasks/hello-task/runs", json={"values": {"v": "y"}, "secretValues": {"extra": "more-secret"}}
    )
    assert run.status_code == 202, run.text
    assert run.json()["task"] == "hello-task"
    assert run.json()["trigger"] == "Manual"
    dockyard.runtime.run_jobs()
    assert client.get(f"/api/v1/runs/{run.json()['runId']}").json()["status"] == "Succeeded"
    source = engine.sources[0]
    assert (source.location, source.ref, source.folder, source.token) == (
        "https://git.example/app.git",
        "main",
        "src",
        "ghp_s3cret",
    )
    assert ("TOKEN", "s3cret-arg") in engine.build_args[0]
    assert ("A", "1") in engine.build_args[0]
    variables = engine.variables[0]
    assert variables.values == {"v": "y", "pw": "s3cret-value", "extra": "more-secret"}
    assert variables.secret_values == frozenset({"pw", "extra"})
    assert variables.task_name == "hello-task"
    assert client.get("/api/v1/runs?task=hello-task").json()["runs"][0]["runId"] == run.json()["runId"]


def test_timers_routes(client) -> None:
    create(client)
    added = client.post("/api/v1/tasks/hello-task/timers", json={"name": "hourly", "schedule": "0 * * * *"})
    assert added.status_code == 201
    assert added.json()["enabled"] is True
    assert (
        client.post(
            "/api/v1/tasks/hello-task/timers", json={"name": "hourly", "schedule": "0 * * * *"}
        ).status_code
        == 409
    )
    changed = client.patch("/api/v1/tasks/hello-task/timers/hourly", json={"enabled": False})
    assert changed.status_code == 200
    assert changed.json()["enabled"] is False
    assert changed.json()["schedule"] == "0 * * * *"
    assert (
        client.patch("/api/v1/tasks/hello-task/timers/hourly", json={"schedule": "61 * * * *"}).status_code
        == 400
    )
    names = [t["name"] for t in client.get("/api/v1/tasks/hello-task/timers").json()["timers"]]
    assert names == ["hourly", "nightly"]
    assert client.delete("/api/v1/tasks/hello-task/timers/hourly").status_code == 204
    assert client.delete("/api/v1/tasks/hello-task/timers/hourly").status_code == 404


def test_roles(client, anonymous) -> None:
    create(client)
    reader = create_user(client, "reader1", "Reader")
    pusher = create_user(client, "pusher1", "AcrPush")
    contributor = create_user(client, "contrib1", "Contributor")
    assert client.get("/api/v1/tasks", headers=reader).status_code == 200
    assert client.get("/api/v1/runs", headers=reader).status_code == 200
    for headers in (reader, pusher):
        assert (
            client.post("/api/v1/tasks", json={**TASK, "name": "other-task"}, headers=headers).status_code
            == 403
        )
        assert (
            client.post("/api/v1/runs", json={"type": "cmd", "cmd": "x"}, headers=headers).status_code == 403
        )
        assert client.post("/api/v1/tasks/hello-task/runs", json={}, headers=headers).status_code == 403
        assert client.post("/api/v1/builds/sources", content=b"x", headers=headers).status_code == 403
    assert client.get("/api/v1/tasks", headers=pusher).status_code == 403
    assert anonymous.get("/api/v1/tasks").status_code == 401
    assert anonymous.post("/api/v1/runs", json={"type": "cmd", "cmd": "x"}).status_code == 401
    assert client.post("/api/v1/tasks/hello-task/runs", json={}, headers=contributor).status_code == 202


def test_github_signature_checked_before_anything(client, anonymous, dockyard) -> None:
    secret = create(client)["triggerSecret"]
    push = {"ref": "refs/heads/main", "after": "a" * 40}
    assert github(anonymous, "hello-task", None, "push", push).status_code == 401
    assert (
        github(anonymous, "hello-task", secret, "push", push, signature="sha256=" + "0" * 64).status_code
        == 401
    )
    assert github(anonymous, "hello-task", "wrong", "push", push).status_code == 401
    unknown = github(anonymous, "no-such-task", secret, "push", push)
    assert unknown.status_code == 401
    assert unknown.json() == github(anonymous, "hello-task", "x", "push", push).json()
    assert client.get("/api/v1/runs").json()["runs"] == []
    assert github(anonymous, "hello-task", secret, "ping", {"zen": "hi"}).status_code == 200
    other = github(anonymous, "hello-task", secret, "push", {"ref": "refs/heads/dev", "after": "b" * 40})
    assert other.status_code == 200
    assert "ignored" in other.json()
    tag = github(anonymous, "hello-task", secret, "push", {"ref": "refs/tags/v1", "after": "c" * 40})
    assert tag.status_code == 200
    assert "ignored" in tag.json()
    deleted = github(
        anonymous,
        "hello-task",
        secret,
        "push",
        {"ref": "refs/heads/main", "after": "0" * 40, "deleted": True},
    )
    assert deleted.status_code == 200
    assert client.get("/api/v1/runs").json()["runs"] == []
    queued = github(anonymous, "hello-task", secret, "push", push)
    assert queued.status_code == 202, queued.text
    assert queued.json()["trigger"] == "Commit"
    assert queued.json()["triggerDetail"] == {
        "commit": "a" * 40,
        "branch": "main",
    }


def test_pull_request_trigger_off_then_on(client, anonymous) -> None:
    secret = create(client)["triggerSecret"]
    event = {"action": "opened", "number": 5, "pull_request": {"head": {"sha": "d" * 40}}}
    assert github(anonymous, "hello-task", secret, "pull_request", event).status_code == 409
    client.patch("/api/v1/tasks/hello-task", json={"pullRequestTriggerEnabled": True})
    queued = github(anonymous, "hello-task", secret, "pull_request", event)
    assert queued.status_code == 202
    assert queued.json()["trigger"] == "PullRequest"
    assert queued.json()["triggerDetail"]["pullRequest"] == 5
    assert queued.json()["triggerDetail"]["ref"] == "refs/pull/5/head"
    closed = github(anonymous, "hello-task", secret, "pull_request", {**event, "action": "closed"})
    assert closed.status_code == 200
    assert "ignored" in closed.json()


def test_generic_git_trigger(client, anonymous, dockyard, engine) -> None:
    secret = create(client)["triggerSecret"]
    url = "/api/v1/tasks/hello-task/triggers/git"
    body = {"commit": "e" * 40, "branch": "main"}
    assert anonymous.post(url, json=body).status_code == 401
    assert anonymous.post(url, json=body, headers={"X-Dockyard-Trigger-Token": "nope"}).status_code == 401
    queued = anonymous.post(url, json=body, headers={"X-Dockyard-Trigger-Token": secret})
    assert queued.status_code == 202
    assert queued.json()["trigger"] == "Commit"
    dockyard.runtime.run_jobs()
    assert engine.sources[0].ref == "e" * 40  # the commit is what gets checked out
    raw = json.dumps(body).encode()
    signed = anonymous.post(url, content=raw, headers={"X-Hub-Signature-256": sign(secret, raw)})
    assert signed.status_code == 202
    client.patch("/api/v1/tasks/hello-task", json={"status": "Disabled"})
    assert anonymous.post(url, json=body, headers={"X-Dockyard-Trigger-Token": secret}).status_code == 409
    big = anonymous.post(url, content=b"x" * (1024 * 1024 + 1), headers={"X-Dockyard-Trigger-Token": secret})
    assert big.status_code == 413
