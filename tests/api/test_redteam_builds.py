"""Red-team attacks on the builds room (ACR Tasks): triggers, roles, the system:tasks identity,
contexts, task files, runs and logs.

* ``HOLE`` tests (section A) reproduce attacks that worked when they were written; each failed
  until its hole was closed.
* ``REFUSED`` tests (section B) are attacks that were correctly refused; they guard against
  regressions.

Every test's docstring names the attack.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import json
import tarfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from dockyard.access.services.identities import NULL_GUID
from dockyard.builds.buildah import BuildahBuilder
from dockyard.builds.buildcmd import parse_build_command
from dockyard.builds.contexts import clone_git, extract_tar, git_url
from dockyard.builds.interfaces import (
    BuildError,
    ContainerRequest,
    ContextSource,
    Deadline,
    RegistryAccess,
)
from dockyard.builds.models import build_run_logs, build_runs
from dockyard.builds.services.logs import DbLogSink
from dockyard.builds.taskfile import TaskFileError, load_task_file
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


def recording_builder(tmp_path: Path, calls: list[list[str]]) -> BuildahBuilder:
    """A BuildahBuilder whose tools are recorded instead of run."""
    registry = RegistryAccess(
        host="127.0.0.1:5000", username=NULL_GUID, password="run-token", plain_http=True
    )
    builder = BuildahBuilder(tmp_path / "run", registry, "linux/amd64")

    def fake_run(tool, args, log, deadline, *, cwd=None, capture=False):
        calls.append([tool, *args])
        return 0, ""

    builder._run = fake_run  # type: ignore[method-assign]
    return builder


class ListLog:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text


def far() -> Deadline:
    return Deadline(at=time.monotonic() + 60)


# =================================================================================================
# A. HOLES — each of these failed when it was written
# =================================================================================================


@pytest.mark.parametrize(
    "cmd_image",
    ["--privileged", "--volume=/:/host", "--network=host", "-v/:/host", "--pid=host", " --user=0"],
)
def test_hole_cmd_text_becomes_podman_flags(tmp_path: Path, cmd_image: str) -> None:
    """HOLE (closed; low: defence in depth). Attack: ``cmd: "--privileged busybox sh -c …"`` or
    ``--volume=/:/host busybox``: the executor takes the first word of the cmd text as the image
    and BuildahBuilder put it after ``podman run``'s own flags, where podman reads it as a flag (a
    privileged container, the host's root mounted, the host network). Only the pre-pull saved the
    host: ``podman image exists``/``podman pull`` of that same word fail for want of an image
    argument, so ``podman run`` was never reached — by accident. Expected: an explicit BuildError,
    no tool started."""
    calls: list[list[str]] = []
    builder = recording_builder(tmp_path, calls)
    request = ContainerRequest(image=cmd_image, args=("busybox", "cat", "/host/etc/shadow"), pull=True)
    with pytest.raises(BuildError):
        builder.run(request, ListLog(), far())
    with pytest.raises(BuildError):
        builder.start(request, ListLog())
    assert calls == []


def test_hole_cmd_working_directory_adds_mount_options(tmp_path: Path) -> None:
    """HOLE (closed; low). Attack: ``workingDirectory: "/w:U"`` (chown the host's context folder),
    ``/w:O`` (or ``/w:rw,z``,
    a relative path): the step's working directory is spliced into ``-v <context>:<workdir>``, so
    ``:``/``,`` add mount options podman honours. Expected: BuildError before podman runs."""
    calls: list[list[str]] = []
    builder = recording_builder(tmp_path, calls)
    for workdir in ("/w:O", "/w:rw,z", "relative", "/w\nx"):
        request = ContainerRequest(image="busybox", workdir=workdir, mount=tmp_path, pull=True)
        with pytest.raises(BuildError):
            builder.run(request, ListLog(), far())
    assert not any(c[:2] == ["podman", "run"] for c in calls)
    builder.run(ContainerRequest(image="busybox", workdir="/workspace", mount=tmp_path), ListLog(), far())
    run = next(c for c in calls if c[:2] == ["podman", "run"])
    assert run[run.index("-v") + 1] == f"{tmp_path}:/workspace"
    assert run[-1] == "busybox"  # the image is the last word, after the fixed flags


def test_hole_push_image_becomes_buildah_flag(tmp_path: Path) -> None:
    """HOLE (closed; low: defence in depth). Attack: a task file ``push: ["--authfile=/x"]`` (or
    ``{{.Values.img}}`` rendering to a flag): ``buildah push … <image> docker://<image>`` read it
    as an option (another auth file, ``--creds``, ``--digestfile=/etc/…``); the push then failed
    for want of a local image, so no harm was seen. Expected: BuildError, buildah not started."""
    calls: list[list[str]] = []
    builder = recording_builder(tmp_path, calls)
    for image in ("--authfile=/root/.docker/config.json", "-q", "app:1 --creds=a:b", ""):
        with pytest.raises(BuildError):
            builder.push(image, ListLog(), far())
    assert calls == []


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


def _tar_with_pax_headers(size: int, members: int = 1) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for index in range(members):
            info = tarfile.TarInfo(f"a{index}.txt")
            info.size = 1
            info.pax_headers = {"comment": "x" * size}
            archive.addfile(info, io.BytesIO(b"a"))
    return gzip.compress(out.getvalue(), mtime=0)


def test_hole_gzip_bomb_of_tar_headers(tmp_path: Path, monkeypatch) -> None:
    """HOLE (closed; high: an uploaded or tarball context). Attack: a 70 KiB .tar.gz whose pax
    header holds 64 MiB (gigabytes at scale) of text: the context bounds counted compressed bytes
    and member sizes, never what the headers decompress to — and tarfile reads a pax header whole
    into memory (a worker OOM). Also many headers each under any per-header bound. Expected:
    BuildError past 1 MiB per header, and once the uncompressed tar passes its overall bound."""
    from dockyard.builds import contexts

    bomb = _tar_with_pax_headers(64 * 1024 * 1024)
    assert len(bomb) < 200 * 1024
    with pytest.raises(BuildError, match="extended header"):
        extract_tar([bomb], tmp_path / "one", max_bytes=1024**3, deadline=far())
    monkeypatch.setattr(contexts, "MAX_FILES", 10)
    many = _tar_with_pax_headers(900 * 1024, members=25)  # 22 MiB of headers > 64 KiB + slack
    with pytest.raises(BuildError, match="more than"):
        extract_tar([many], tmp_path / "many", max_bytes=64 * 1024, deadline=far())
    small = _tar_with_pax_headers(1000)
    extract_tar([small], tmp_path / "ok", max_bytes=1024 * 1024, deadline=far())
    assert (tmp_path / "ok" / "a0.txt").read_bytes() == b"a"


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
    identity APIs; use a run's minted refresh token on /api/v1 (it must not manage). Expected:
    401/404/403; the minted token still pushes (AcrPush) but manages nothing."""
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
    as_run = basic(NULL_GUID, password)
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


def test_refused_context_escapes(tmp_path: Path, settings) -> None:
    """REFUSED. Attack: archives with absolute names, ``..``, symlinks and hardlinks leaving the
    context, a link then a file written through it, devices; git locations for ``ext::``,
    ``file://`` outside the roots, scp-like ssh, loopback, metadata, option-looking URLs and refs.
    Expected: BuildError each time, nothing written outside."""

    def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as archive:
            for info, data in members:
                info.size = len(data) if info.isreg() else 0
                archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
        return out.getvalue()

    def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        return info

    device = tarfile.TarInfo("dev")
    device.type = tarfile.CHRTYPE
    attacks = [
        tar_of((tarfile.TarInfo("/etc/evil"), b"x")),
        tar_of((tarfile.TarInfo("../evil"), b"x")),
        tar_of((tarfile.TarInfo("a/../../evil"), b"x")),
        tar_of((link("up", "../.."), b"")),
        tar_of((link("abs", "/etc"), b"")),
        tar_of((link("hard", "../outside", tarfile.LNKTYPE), b"")),
        tar_of((link("d", "sub/../.."), b""), (tarfile.TarInfo("d/evil"), b"x")),
        tar_of((device, b"")),
    ]
    for index, archive in enumerate(attacks):
        with pytest.raises(BuildError):
            extract_tar([archive], tmp_path / f"ctx{index}" / "in", max_bytes=1 << 20, deadline=far())
    assert not any(p.name == "evil" for p in tmp_path.rglob("*"))
    for location in (
        "ext::sh -c touch% /tmp/pwned",
        "file:///etc",
        "/etc",
        "git@github.com:a/b.git",
        "ssh://git@host/x",
        "git://host/x",
        "http://127.0.0.1:5000/x.git",
        "http://169.254.169.254/latest",
        "https://metadata.google.internal/x",
        "http://[::1]/x.git",
        "--upload-pack=touch /tmp/pwned",
        "https://user:pw@github.com/a/b.git",
        "https://github.com/a/b.git\n--upload-pack=x",
    ):
        with pytest.raises(BuildError):
            git_url(location, settings)
    root = tmp_path / "roots"
    (root / "repo").mkdir(parents=True)
    local = settings.model_copy(update={"builds_local_git_roots": [root]})
    source = ContextSource(kind="git", location=str(root / "repo"), ref="--upload-pack=touch x")
    with pytest.raises(BuildError, match="refused git ref"):
        clone_git(source, tmp_path / "clone", log=ListLog(), settings=local, deadline=far())
    with pytest.raises(BuildError, match="not under builds_local_git_roots"):
        git_url(f"{root}/repo/../../etc", local)


def test_refused_build_step_and_task_file_tricks() -> None:
    """REFUSED. Attack: build steps with ``-f /etc/shadow``, a context of ``/`` or ``..``, remote
    contexts, podman-only flags (``--volume``, ``--security-opt``); task files with YAML alias
    bombs, 300 KiB of text, deep nesting, unknown step keys (``privileged``)."""
    for text in (
        "-f /etc/shadow .",
        "-f ../../etc/shadow .",
        "/",
        "..",
        "https://evil.example/ctx.git",
        "--volume /:/host .",
        "--security-opt seccomp=unconfined .",
        "-t a . extra",
    ):
        with pytest.raises(BuildError):
            parse_build_command(text)
    assert parse_build_command("--build-arg HOME .", {}).build_args == ()  # no host environment
    bomb = "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\nsteps:\n  - cmd: busybox\n"
    deep = "steps:\n  - cmd: busybox\nx: " + "[" * 200 + "]" * 200 + "\n"
    for text in (
        bomb,
        "steps:\n  - cmd: busybox\n" + "#" * 300_000,
        deep,
        "steps:\n  - cmd: busybox\n    privileged: true\n",
    ):
        with pytest.raises(TaskFileError):
            load_task_file(text)


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


def test_hole_git_dns_rebinding(tmp_path: Path, settings, monkeypatch) -> None:
    """HOLE (closed; high where loopback or metadata hold secrets). Attack: a git context on a
    host whose DNS answers a public address to the server's check, then 127.0.0.1 (or
    169.254.169.254) to git's own lookup a moment later: ``check_host`` resolved once, git
    resolved again. Expected: git is told (``http.curloptResolve``) to use the checked address."""
    from dockyard.builds import contexts

    answers = iter([["93.184.216.34"]] * 2 + [["127.0.0.1"]] * 10)

    def rebinding(host, *args, **kwargs):
        return [(2, 1, 6, "", (address, 0)) for address in next(answers)]

    calls: list[list[str]] = []

    def fake_process(argv, **kwargs):
        calls.append(list(argv))
        return 1, ""

    monkeypatch.setattr(contexts.socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(contexts, "run_process", fake_process)
    source = ContextSource(kind="git", location="https://rebind.example/app.git", ref="main")
    with pytest.raises(BuildError):
        clone_git(source, tmp_path / "clone", log=ListLog(), settings=settings, deadline=far())
    flags = calls[0]
    assert "http.curloptResolve=rebind.example:443:93.184.216.34" in flags
    assert not any("127.0.0.1" in flag for flag in flags)
