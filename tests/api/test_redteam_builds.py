"""Red-team attacks on the builds room (ACR Tasks): triggers, roles, the system:tasks identity,
runs and logs (attacks on the build tools, contexts and task files: test_redteam_builds_tools.py).

* ``HOLE`` tests (section A) reproduce attacks that worked when they were written; each failed
  until its hole was closed.
* ``REFUSED`` tests (section B) are attacks that were correctly refused; they guard against
  regressions.

Every test's docstring names the attack.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from dockyard.access.services.identities import NULL_GUID
from dockyard.builds.models import build_run_logs, build_runs
from dockyard.builds.services.logs import DbLogSink
from tests.support.auth import basic, create_user
from tests.support.builds import FakeEngine, use_engine, wait_for
from tests.support.registry import error_codes

TASK = {
    "name": "victim-task",
    "context": "https://git.example/app.git#main",
    "file": "Dockerfile",
    "images": ["app:{{.Run.ID}}"],
    "secretArgs": {"ARG_SECRET": "s3cret-arg-value"},
    "secretValues": {"pw": "s3cret-value-value"},
    "gitAccessToken": "ghp_s3cret_git_token",
}
SECRETS = ("s3cret-arg-value", "s3cret-value-value", "ghp_s3cret_git_token")


@pytest.fixture
def engine(dockyard) -> FakeEngine:
    return use_engine(dockyard, FakeEngine())


def create(client, **changes) -> dict:
    response = client.post("/api/v1/tasks", json={**TASK, **changes})
    assert response.status_code == 201, response.text
    return response.json()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(client, name: str, secret: str, event: str, payload: object, **headers: str):
    body = json.dumps(payload).encode()
    sent = {"X-GitHub-Event": event, "X-Hub-Signature-256": sign(secret, body), **headers}
    return client.post(f"/api/v1/tasks/{name}/triggers/github", content=body, headers=sent)


def writes(seen: list[str]) -> list[str]:
    return [s for s in seen if s in ("INSERT", "UPDATE", "DELETE", "UPSERT", "REPLACE")]


def run_count(dockyard) -> int:
    with dockyard.db.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(build_runs)).scalar_one()


# =================================================================================================
# A. HOLES — each of these failed when it was written
# =================================================================================================


@pytest.mark.parametrize(
    "ref",
    [
        "refs/heads/main\n--privileged",
        "refs/heads/a b",
        "refs/heads/a..b",
        "refs/heads/-x",
        "refs/heads/x\x1b[31m",
        "refs/heads/.hidden",
        "refs/heads/x.lock",
    ],
)
def test_hole_github_branch_names_reach_run_branch(client, anonymous, dockyard, ref: str) -> None:
    """HOLE (closed; medium: needs the trigger secret). Attack: a signed GitHub ``push`` whose
    ``ref`` is ``refs/heads/main\\n--privileged`` (blanks, control characters, ``..``, leading
    ``-``): the branch was taken unchecked into triggerDetail and, for a commit build, into
    ``{{.Run.Branch}}`` — rendered into step texts before they are split into words (extra
    arguments), and into the log. Expected: 400, no run."""
    secret = create(client, context="https://git.example/app.git")["triggerSecret"]
    answer = deliver(anonymous, "victim-task", secret, "push", {"ref": ref, "after": "a" * 40})
    assert answer.status_code == 400, answer.text
    assert run_count(dockyard) == 0


def test_hole_manual_run_commit_and_branch_unchecked(client, dockyard) -> None:
    """HOLE (closed; low: Contributor). Attack: ``POST /api/v1/tasks/{name}/runs`` with
    ``commit: "--upload-pack=touch /tmp/pwned"`` or ``branch: "x\\ny"``: free text went into the
    run's ref (git argv) and ``{{.Run.Commit}}``/``{{.Run.Branch}}``. Expected: 400."""
    create(client)
    for body in (
        {"commit": "--upload-pack=touch /tmp/pwned"},
        {"commit": "HEAD~1"},
        {"branch": "x\ny"},
        {"branch": "-x"},
        {"branch": "a..b"},
    ):
        response = client.post("/api/v1/tasks/victim-task/runs", json=body)
        assert response.status_code == 400, (body, response.text)
        assert error_codes(response) == ["INVALID_REQUEST"]
    assert run_count(dockyard) == 0
    ok = client.post("/api/v1/tasks/victim-task/runs", json={"commit": "ab" * 20, "branch": "feature/x"})
    assert ok.status_code == 202, ok.text


def test_hole_pull_request_payload_types(client, anonymous, dockyard) -> None:
    """HOLE (closed; low: needs the secret). Attack: signed ``pull_request`` deliveries with
    ``action: []`` (unhashable: a 500 from ``action in frozenset``) and ``number: true`` (a bool
    is an int: ``refs/pull/True/head``) or a negative number. Expected: 200 ignored, no run."""
    secret = create(client, pullRequestTriggerEnabled=True)["triggerSecret"]
    head = {"head": {"sha": "b" * 40}}
    for payload in (
        {"action": [], "number": 1, "pull_request": head},
        {"action": {"a": 1}, "number": 1, "pull_request": head},
        {"action": "opened", "number": True, "pull_request": head},
        {"action": "opened", "number": -5, "pull_request": head},
        {"action": "opened", "number": 10**30, "pull_request": head},
    ):
        answer = deliver(anonymous, "victim-task", secret, "pull_request", payload)
        assert answer.status_code == 200, (payload, answer.text)
        assert "ignored" in answer.json()
    assert run_count(dockyard) == 0


def test_hole_replayed_delivery_queues_a_run_each_time(client, anonymous, dockyard) -> None:
    """HOLE (closed; low: needs one captured delivery). Attack: replay one signed ``push``
    delivery 20 times: each queued another build of the same commit (a build-farm flood from one
    captured request). Expected: the replays answer the run already queued for that commit."""
    secret = create(client)["triggerSecret"]
    push = {"ref": "refs/heads/main", "after": "c" * 40}
    ids = {deliver(anonymous, "victim-task", secret, "push", push).json()["runId"] for _ in range(20)}
    assert len(ids) == 1
    assert run_count(dockyard) == 1
    other = deliver(anonymous, "victim-task", secret, "push", {**push, "after": "d" * 40})
    assert other.status_code == 202
    assert other.json()["runId"] not in ids


def test_hole_log_flood_is_unbounded(dockyard, client, engine) -> None:
    """HOLE (closed; high: any run can do it). Attack: a step printing forever (``yes``) for its
    whole timeout (up to 8 h): every line went to build_run_logs, without bound, filling the
    database. Expected: the log stops at its bound with one notice; later output is dropped."""
    queued = client.post("/api/v1/runs", json={"type": "cmd", "cmd": "busybox yes"}).json()
    seq = int(queued["runId"][2:], 36)
    sink = DbLogSink(dockyard.db, seq, ["hunter2"], max_bytes=256 * 1024)
    line = "y" * 1023 + "\n"
    for _ in range(2000):  # 2 MiB offered
        sink.write(line)
    sink.write("hunter2 after the bound\n")
    sink.flush()
    size = client.get(f"/api/v1/runs/{queued['runId']}").json()["logSize"]
    assert size <= 256 * 1024 + 200
    text = client.get(f"/api/v1/runs/{queued['runId']}/logs").text
    assert text.endswith("the rest of this run's output is dropped\n")
    assert "hunter2" not in text


def test_hole_log_read_loads_the_whole_rest(dockyard, client, engine) -> None:
    """HOLE (closed; medium: a Contributor, or a follower). Attack: read (or follow) a long log
    from offset 0: ``read_log`` fetched every chunk after the offset — the whole rest of the log —
    to send 4 MiB of it, for each answer. Expected: the chunk query is bounded by the answer."""
    queued = client.post("/api/v1/runs", json={"type": "cmd", "cmd": "busybox yes"}).json()
    seq = int(queued["runId"][2:], 36)
    sink = DbLogSink(dockyard.db, seq)
    for _ in range(40):
        sink.write("z" * (256 * 1024))
        sink.flush()
    captured: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        if "build_run_logs" in statement and statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, parameters))

    sa.event.listen(dockyard.db.engine, "before_cursor_execute", record)
    try:
        piece = dockyard.service("builds").runs.read_log(queued["runId"], 0, limit=1024 * 1024)
    finally:
        sa.event.remove(dockyard.db.engine, "before_cursor_execute", record)
    assert len(piece.data) == 1024 * 1024
    statement, parameters = captured[-1]
    with dockyard.db.engine.connect() as conn:
        rows = conn.exec_driver_sql(statement, parameters).fetchall()
    assert len(rows) <= 5  # 1 MiB from 256 KiB chunks, not all 40
    with dockyard.db.read() as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count()).select_from(build_run_logs).where(build_run_logs.c.run_seq == seq)
            ).scalar_one()
            == 40
        )


def test_hole_registry_token_not_masked_by_the_run_log(client, dockyard) -> None:
    """HOLE (closed; low: defence in depth). Attack: get the run's ``system:tasks`` refresh token printed by
    anything that writes to the run's log outside the executor's masked writer (context
    preparation, the handler's own error lines): the run sink masked only secret args/values and
    the git token. Expected: the registry credential is ``***`` in the stored log."""

    class Leaky(FakeEngine):
        def execute(self, spec, context, variables, *, registry, **kwargs):  # type: ignore[override]
            kwargs["log"].write(f"password={registry.password}\n")
            return super().execute(spec, context, variables, registry=registry, **kwargs)

    engine = use_engine(dockyard, Leaky())
    queued = client.post("/api/v1/runs", json={"type": "cmd", "cmd": "busybox true"}).json()
    dockyard.runtime.run_jobs()
    password = engine.registries[0].password
    assert len(password) > 20
    text = client.get(f"/api/v1/runs/{queued['runId']}/logs").text
    assert "password=***" in text
    assert password not in text


def test_hole_a_contributor_moves_a_tokened_task_to_their_host(client, dockyard, engine) -> None:
    """HOLE (closed; medium). Attack: an Owner's task holds a git access token; a Contributor points
    its context at their own host (``http://192.0.2.2:5098/evil.git``) and runs it: git sent
    ``Basic x-access-token:<token>`` there. Expected: a context on another scheme, host or port
    without gitAccessToken in the same request is refused (400); the runs still clone the Owner's
    host with the token."""
    create(client)
    contributor = create_user(client, "contrib", "Contributor")
    for context in (
        "http://192.0.2.2:5098/evil.git#main",
        "https://192.0.2.2/evil.git#main",
        "https://git.example:8443/app.git#main",
        "http://git.example/app.git#main",
        "https://evil.example/app.git#main",
        "https://evil.example/ctx.tar.gz",
        "oci://evil.example/ctx:1",
        "/dev/null",
    ):
        moved = client.patch(
            "/api/v1/tasks/victim-task", headers=contributor, json={"context": context, "status": "Enabled"}
        )
        assert moved.status_code == 400, (context, moved.text)
        assert error_codes(moved) == ["INVALID_REQUEST"]
        assert "gitAccessToken" in moved.json()["errors"][0]["message"]
    assert client.get("/api/v1/tasks/victim-task").json()["context"] == TASK["context"]
    # the same origin (another repository, branch or spelling of the port) keeps the token
    same = client.patch(
        "/api/v1/tasks/victim-task",
        headers=contributor,
        json={"context": "https://GIT.example:443/other.git#dev"},
    )
    assert same.status_code == 200, same.text
    run = client.post("/api/v1/tasks/victim-task/runs", headers=contributor, json={})
    assert run.status_code == 202, run.text
    dockyard.runtime.run_jobs()
    assert (engine.sources[-1].location, engine.sources[-1].token) == (
        "https://GIT.example:443/other.git",
        "ghp_s3cret_git_token",
    )
    # another host with the token dropped (null) or given again is a change the caller owns
    dropped = client.patch(
        "/api/v1/tasks/victim-task",
        headers=contributor,
        json={"context": "https://evil.example/app.git#main", "gitAccessToken": None},
    )
    assert dropped.status_code == 200, dropped.text
    assert dropped.json()["hasGitAccessToken"] is False
    client.post("/api/v1/tasks/victim-task/runs", headers=contributor, json={})
    dockyard.runtime.run_jobs()
    assert (engine.sources[-1].location, engine.sources[-1].token) == ("https://evil.example/app.git", None)


def test_hole_a_git_token_goes_over_plain_http(client, dockyard, settings, engine) -> None:
    """HOLE (closed). Attack: a task with a git access token and an ``http://`` git context (tarball
    contexts need ``insecure_upstreams``, git ones did not): the token crossed the network in clear.
    Expected: a task holding a token refuses an http context (create and update, 400) unless
    ``insecure_upstreams`` lists its host."""
    plain = "http://git.example/app.git#main"
    refused = client.post("/api/v1/tasks", json={**TASK, "context": plain})
    assert refused.status_code == 400, refused.text
    assert error_codes(refused) == ["INVALID_REQUEST"]
    assert "plain http" in refused.json()["errors"][0]["message"]
    assert create(client, context=plain, gitAccessToken=None)["hasGitAccessToken"] is False
    given = client.patch("/api/v1/tasks/victim-task", json={"gitAccessToken": "ghp_s3cret_git_token"})
    assert given.status_code == 400, given.text
    moved = client.patch(
        "/api/v1/tasks/victim-task",
        json={"context": "http://git.example:8080/app.git", "gitAccessToken": "ghp_s3cret_git_token"},
    )
    assert moved.status_code == 400, moved.text
    dockyard.service("builds").tasks._settings = settings.model_copy(
        update={"insecure_upstreams": ["git.example"]}
    )
    allowed = client.patch("/api/v1/tasks/victim-task", json={"gitAccessToken": "ghp_s3cret_git_token"})
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["hasGitAccessToken"] is True


def test_hole_a_run_queued_before_a_context_move_gets_the_new_token(client, dockyard, engine) -> None:
    """HOLE (closed; defence in depth). Attack: with the token dropped, a Contributor points the task
    at their host and queues a run; the Owner later moves the task back and gives a token again
    before the queued run starts: the run cloned the Contributor's host with the Owner's new token.
    Expected: a run whose context is not on the task's current origin gets no token."""
    create(client)
    contributor = create_user(client, "contrib", "Contributor")
    evil = {"context": "https://evil.example/app.git#main", "gitAccessToken": None}
    assert client.patch("/api/v1/tasks/victim-task", headers=contributor, json=evil).status_code == 200
    queued = client.post("/api/v1/tasks/victim-task/runs", headers=contributor, json={})
    assert queued.status_code == 202, queued.text
    back = {"context": TASK["context"], "gitAccessToken": "ghp_new_owner_token"}
    assert client.patch("/api/v1/tasks/victim-task", json=back).status_code == 200
    dockyard.runtime.run_jobs()
    assert (engine.sources[0].location, engine.sources[0].token) == ("https://evil.example/app.git", None)


# =================================================================================================
# B. REFUSED — attacks that failed, as they should (these pass)
# =================================================================================================


def test_refused_trigger_forgeries(client, anonymous, dockyard, engine) -> None:
    """REFUSED. Attack: trigger without a signature, with a forged, short, empty or upper-case
    one, a signature over another body, the plain token on the GitHub route, the token header on
    a wrong secret; unknown task vs wrong secret must look the same. Expected: 401 alike, no run."""
    secret = create(client)["triggerSecret"]
    push = json.dumps({"ref": "refs/heads/main", "after": "a" * 40}).encode()
    url = "/api/v1/tasks/victim-task/triggers/github"
    attempts = [
        {},
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-Hub-Signature-256": sign(secret, push)[:20]},
        {"X-Hub-Signature-256": ""},
        {"X-Hub-Signature-256": sign(secret, push).upper()},
        {"X-Hub-Signature-256": sign(secret, push + b" ")},
        {"X-Hub-Signature-256": sign(secret[:-1], push)},
        {"X-Dockyard-Trigger-Token": secret},  # token only on the git route
    ]
    answers = [anonymous.post(url, content=push, headers={"X-GitHub-Event": "push", **h}) for h in attempts]
    assert [a.status_code for a in answers] == [401] * len(attempts)
    unknown = anonymous.post(
        "/api/v1/tasks/no-such-task/triggers/github",
        content=push,
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(secret, push)},
    )
    assert unknown.status_code == 401
    assert unknown.json() == answers[1].json()
    assert unknown.headers.get("content-type") == answers[1].headers.get("content-type")
    git = "/api/v1/tasks/victim-task/triggers/git"
    assert anonymous.post(git, json={}, headers={"X-Dockyard-Trigger-Token": secret + "x"}).status_code == 401
    assert anonymous.post(git, json={}, headers={"X-Dockyard-Trigger-Token": ""}).status_code == 401
    assert run_count(dockyard) == 0


def test_refused_unauthenticated_flood_writes_nothing(client, anonymous, dockyard) -> None:
    """REFUSED. Attack: 60 trigger calls without valid credentials (bad signatures, unknown tasks,
    oversized and deeply nested bodies, names with NUL): none may write to the database but the
    rate limiter's aggregated bucket (a couple of writes for the whole flood, not one a call)."""
    create(client)
    seen: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE", "REPLACE"):
            seen.append(statement)

    sa.event.listen(dockyard.db.engine, "before_cursor_execute", record)
    try:
        for n in range(20):
            body = json.dumps({"ref": "refs/heads/main", "after": f"{n:040x}"}).encode()
            headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + f"{n:064x}"}
            anonymous.post("/api/v1/tasks/victim-task/triggers/github", content=body, headers=headers)
            anonymous.post(f"/api/v1/tasks/nobody-{n}/triggers/git", content=body, headers=headers)
            anonymous.post(
                "/api/v1/tasks/victim%00task/triggers/git", content=b"[" * 100_000, headers=headers
            )
    finally:
        sa.event.remove(dockyard.db.engine, "before_cursor_execute", record)
    assert [s for s in seen if "rate_buckets" not in s] == []
    assert len(seen) <= 4


def test_refused_huge_and_nested_bodies(client, anonymous, dockyard) -> None:
    """REFUSED. Attack: a 2 MiB body (413 before the secret is even looked at), a JSON bomb of
    100,000 nested arrays signed correctly (400, not a RecursionError 500), a non-object."""
    secret = create(client)["triggerSecret"]
    huge = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    answer = anonymous.post(
        "/api/v1/tasks/victim-task/triggers/git", content=huge, headers={"X-Dockyard-Trigger-Token": secret}
    )
    assert answer.status_code == 413
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"[1]"):
        headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(secret, body)}
        answer = anonymous.post("/api/v1/tasks/victim-task/triggers/github", content=body, headers=headers)
        assert answer.status_code == 400, answer.text
    assert run_count(dockyard) == 0


def test_refused_disabled_task_and_trigger_off(client, anonymous, dockyard) -> None:
    """REFUSED. Attack: a correctly signed push to a disabled task, and to one whose commit
    trigger is off. Expected: 409, no run."""
    secret = create(client, status="Disabled")["triggerSecret"]
    push = {"ref": "refs/heads/main", "after": "a" * 40}
    assert deliver(anonymous, "victim-task", secret, "push", push).status_code == 409
    client.patch("/api/v1/tasks/victim-task", json={"status": "Enabled", "commitTriggerEnabled": False})
    assert deliver(anonymous, "victim-task", secret, "push", push).status_code == 409
    assert run_count(dockyard) == 0


BUILD_ROUTES = [
    ("POST", "/api/v1/builds/sources"),
    ("POST", "/api/v1/runs"),
    ("POST", "/api/v1/runs/dy1/cancel"),
    ("GET", "/api/v1/runs/dy1/logs"),
    ("POST", "/api/v1/tasks"),
    ("PATCH", "/api/v1/tasks/victim-task"),
    ("DELETE", "/api/v1/tasks/victim-task"),
    ("POST", "/api/v1/tasks/victim-task/runs"),
    ("POST", "/api/v1/tasks/victim-task/trigger-secret"),
    ("POST", "/api/v1/tasks/victim-task/timers"),
    ("PATCH", "/api/v1/tasks/victim-task/timers/t1"),
    ("DELETE", "/api/v1/tasks/victim-task/timers/t1"),
]
READ_ROUTES = [("GET", "/api/v1/tasks"), ("GET", "/api/v1/tasks/victim-task"), ("GET", "/api/v1/runs")]


def test_refused_roles_on_every_builds_route(app, client, dockyard, engine) -> None:
    """REFUSED. Attack: every builds write route (and the logs) as Reader, AcrPush, AcrPull, a
    repository-scoped token, a Bearer access token of a Reader, and anonymously; reads as AcrPush,
    AcrPull and the token. Expected: 401/403, nothing changed."""
    create(client, timers=[{"name": "t1", "schedule": "0 * * * *"}])
    client.post("/api/v1/runs", json={"type": "cmd", "cmd": "busybox true"})
    reader = create_user(client, "reader-x", "Reader")
    pusher = create_user(client, "pusher-x", "AcrPush")
    puller = create_user(client, "puller-x", "AcrPull")
    token = client.post("/api/v1/tokens", json={"name": "tok-x", "scopeMap": "_repositories_admin"})
    assert token.status_code == 201, token.text
    scoped = basic("tok-x", token.json()["credentials"][0]["value"])
    issued = client.get("/oauth2/token", params={"service": "dockyard"}, headers=reader)
    reader_bearer = {"Authorization": f"Bearer {issued.json()['access_token']}"}
    with TestClient(app, raise_server_exceptions=False) as anyone:
        for who in (reader, pusher, puller, scoped, reader_bearer, {}):
            for method, path in BUILD_ROUTES:
                answer = anyone.request(method, path, headers=who, json={})
                assert answer.status_code in (401, 403), (who, method, path, answer.status_code)
        for who in (pusher, puller, scoped, {}):
            for method, path in READ_ROUTES:
                answer = anyone.request(method, path, headers=who)
                assert answer.status_code in (401, 403), (who, method, path, answer.status_code)
    assert client.get("/api/v1/tasks/victim-task").json()["timers"][0]["name"] == "t1"
    assert run_count(dockyard) == 1


def test_refused_secrets_leak_nowhere(client, anonymous, dockyard, engine) -> None:
    """REFUSED. Attack: read a task's secretArgs, secretValues, gitAccessToken and trigger secret
    back through show, list, runs, logs, events, audit, job payloads, webhook payloads and the
    OpenAPI document. Expected: none of them holds a secret (only keys and hasGitAccessToken)."""
    created = create(client)
    trigger_secret = created["triggerSecret"]
    client.post("/api/v1/webhooks", json={"name": "hook1", "serviceUri": "https://hooks.example/x"})
    run = client.post(
        "/api/v1/tasks/victim-task/runs", json={"secretValues": {"extra": "s3cret-override-value"}}
    ).json()
    quick = client.post(
        "/api/v1/runs", json={"type": "cmd", "cmd": "busybox true", "secretArgs": {"q": "s3cret-quick-value"}}
    ).json()
    dockyard.runtime.run_jobs()
    wait_for(lambda: client.get(f"/api/v1/runs/{run['runId']}").json()["status"] == "Succeeded")
    seen = [
        client.get("/api/v1/tasks/victim-task").text,
        client.get("/api/v1/tasks").text,
        client.get("/api/v1/runs").text,
        client.get(f"/api/v1/runs/{run['runId']}/logs").text,
        client.get(f"/api/v1/runs/{quick['runId']}/logs").text,
        client.get("/api/v1/events").text,
        client.get("/api/v1/audit").text,
        client.get("/api/v1/openapi.json").text,
    ]
    tables = sa.MetaData()
    tables.reflect(dockyard.db.engine)
    with dockyard.db.read() as conn:
        for name, table in tables.tables.items():
            if name != "build_tasks":  # the one place secrets are kept (in clear, as documented)
                seen.append(repr(conn.execute(table.select()).all()))
        secrets_column = conn.execute(sa.select(build_runs.c.secrets)).scalars().all()
    assert secrets_column == [None, None]  # forgotten once the runs ended
    blob = "\n".join(seen)
    for secret in (*SECRETS, trigger_secret, "s3cret-override-value", "s3cret-quick-value"):
        assert secret not in blob, secret


def test_refused_system_tasks_identity(client, anonymous, dockyard, engine) -> None:
    """REFUSED. Attack: sign in as ``system:tasks``; find, renew, disable or delete it through the
    identity APIs; use a run's minted refresh token on /api/v1 (it must not manage), or after the
    run ended. Expected: 401/404/403; a running run's token pushes (AcrPush) but manages nothing."""
    client.post("/api/v1/runs", json={"type": "cmd", "cmd": "busybox true"})
    dockyard.runtime.run_jobs()
    password = engine.registries[0].password
    assert anonymous.get("/v2/", headers=basic("system:tasks", "x")).status_code == 401
    assert anonymous.get("/v2/", headers=basic("system:tasks", password)).status_code == 401
    for path in ("/api/v1/users", "/api/v1/service-principals", "/api/v1/tokens", "/api/v1/role-assignments"):
        assert "system:tasks" not in client.get(path).text, path
    for method, path, body in (
        ("DELETE", "/api/v1/users/system:tasks", None),
        ("PATCH", "/api/v1/users/system:tasks", {"enabled": False}),
        ("POST", "/api/v1/users/system:tasks/credentials/renew", {}),
        ("DELETE", "/api/v1/service-principals/system:tasks", None),
        ("POST", "/api/v1/role-assignments", {"assignee": "system:tasks", "role": "Owner"}),
    ):
        answer = client.request(method, path, json=body)
        assert answer.status_code in (400, 404, 405), (method, path, answer.status_code)
    assert anonymous.get("/v2/", headers=basic(NULL_GUID, password)).status_code == 401  # the run ended
    as_run = basic(NULL_GUID, dockyard.service("builds").credentials.mint("dyrunning", 600).password)
    assert anonymous.get("/v2/", headers=as_run).status_code == 200
    for method, path in (*BUILD_ROUTES, *READ_ROUTES, ("GET", "/api/v1/users"), ("POST", "/api/v1/users")):
        answer = anonymous.request(method, path, headers=as_run, json={})
        assert answer.status_code in (401, 403), (method, path, answer.status_code)


def test_refused_log_offsets_and_cancel_races(client, dockyard, engine) -> None:
    """REFUSED. Attack: log offsets negative, non-numeric, past the end, beyond 64 bits; cancel a
    run twice and cancel an ended one. Expected: 400 / empty answers / 409, never a 500."""
    queued = client.post("/api/v1/runs", json={"type": "cmd", "cmd": "busybox true"}).json()
    logs = f"/api/v1/runs/{queued['runId']}/logs"
    assert client.get(logs, params={"offset": "-1"}).status_code == 400
    assert client.get(logs, params={"offset": "abc"}).status_code == 400
    answer = client.get(logs, params={"offset": "999999"})
    assert answer.status_code == 200
    assert answer.content == b""
    assert client.get(logs, params={"offset": str(2**70)}).status_code == 400
    assert client.post(f"/api/v1/runs/{queued['runId']}/cancel").status_code == 202
    assert client.post(f"/api/v1/runs/{queued['runId']}/cancel").status_code == 409
    assert client.get("/api/v1/runs/dy" + "z" * 40).status_code == 404


def test_refused_concurrency_cap_under_parallel_requests(client, dockyard) -> None:
    """REFUSED. Attack: queue 8 runs at once and let several workers claim them: never more than
    ``builds_concurrency`` (2) run at the same time; the rest wait Queued."""
    import threading

    release = threading.Event()
    engine = use_engine(dockyard, FakeEngine(hold=release))
    for _ in range(8):
        client.post("/api/v1/runs", json={"type": "cmd", "cmd": "busybox true"})
    workers = [threading.Thread(target=dockyard.runtime.run_jobs, args=(1,)) for _ in range(4)]
    for worker in workers:
        worker.start()
    wait_for(engine.running.is_set)
    with dockyard.db.read() as conn:
        busy = conn.execute(
            sa.select(sa.func.count())
            .select_from(build_runs)
            .where(build_runs.c.status.in_(("Started", "Running")))
        ).scalar_one()
    release.set()
    for worker in workers:
        worker.join(30)
    assert 1 <= busy <= dockyard.settings.builds_concurrency


@pytest.mark.parametrize("timers", [5, True, 1.5, "daily", {"name": "t"}])
def test_hole_timers_that_are_not_a_list_are_a_500(client, timers):
    """HOLE (closed). Attack: ``"timers": 5`` (or true, a float, a string, an object) on a task
    create raised TypeError: a 500 and a traceback. Now a 400."""
    response = client.post("/api/v1/tasks", json={**TASK, "timers": timers})
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["code"] == "INVALID_REQUEST"
    assert client.get(f"/api/v1/tasks/{TASK['name']}").status_code == 404
