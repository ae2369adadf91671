"""The builds room's background work: timers, base-image triggers (push and poll), pruning, and the
``system:tasks`` identity's run credentials."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from dockyard.app import build
from dockyard.builds.credentials import SYSTEM_IDENTITY
from dockyard.builds.jobs import BuildJobs
from dockyard.builds.models import build_run_logs, build_runs, build_task_bases, build_tasks
from dockyard.db import utcnow
from dockyard.oci.errors import RegistryError
from dockyard.upstream.interfaces import ManifestHead, UpstreamUnavailable
from tests.support.auth import basic, bearer
from tests.support.builds import FakeEngine, set_run, use_engine
from tests.support.images import make_image
from tests.support.registry import push_image

BASE = "127.0.0.1:5000/base:1"


def task(client, name: str, **changes) -> dict:
    body = {"name": name, "context": "https://git.example/app.git", "images": [f"{name}:latest"], **changes}
    response = client.post("/api/v1/tasks", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def runs_of(client, name: str) -> list[dict]:
    return client.get("/api/v1/runs", params={"task": name}).json()["runs"]


def record_base(
    node, name: str, image: str, host: str, repository: str, tag: str, digest: str | None
) -> None:
    def work(conn):
        task_id = conn.execute(sa.select(build_tasks.c.id).where(build_tasks.c.name == name)).scalar_one()
        conn.execute(
            build_task_bases.insert().values(
                task_id=task_id, image=image, host=host, repository=repository, tag=tag, digest=digest
            )
        )

    node.db.run_write(work)


def test_timers_fire_once_across_two_runtimes(client, settings, dockyard) -> None:
    task(client, "timed-task", timers=[{"name": "every", "schedule": "* * * * *"}])
    task(client, "idle-task", timers=[{"name": "off", "schedule": "* * * * *", "enabled": False}])
    nodes = [build(settings) for _ in range(2)]
    try:
        later = utcnow() + timedelta(minutes=2)
        for node in nodes:
            node.service("builds").jobs.clock = lambda: later
        barrier = threading.Barrier(2)
        fired: list[int] = []

        def fire(node) -> None:
            barrier.wait()
            fired.append(node.service("builds").jobs.fire_timers())

        threads = [threading.Thread(target=fire, args=(node,)) for node in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(fired) == [0, 1]
        assert sum(node.service("builds").jobs.fire_timers() for node in nodes) == 0  # not due again yet
        runs = runs_of(client, "timed-task")
        assert len(runs) == 1
        assert runs[0]["trigger"] == "Timer"
        assert runs[0]["triggerDetail"] == {"timer": "every"}
        assert runs_of(client, "idle-task") == []  # a disabled timer moves on without firing
        for node in nodes:
            node.service("builds").jobs.clock = lambda: later + timedelta(minutes=1)
        assert sum(node.service("builds").jobs.fire_timers() for node in nodes) == 1
    finally:
        for node in nodes:
            node.db.dispose()


def test_timers_through_the_runtimes_schedules(client, settings, dockyard) -> None:
    """Two runtimes' run_due: the builds.timers schedule runs on one of them, the timer fires once."""
    task(client, "timed-task", timers=[{"name": "every", "schedule": "* * * * *"}])
    nodes = [build(settings) for _ in range(2)]
    try:
        later = utcnow() + timedelta(minutes=2)
        for node in nodes:
            node.service("builds").jobs.clock = lambda: later
        ran = [{s.name for s in node.runtime.due_schedules()} for node in nodes]
        assert sum("builds.timers" in names for names in ran) == 1
        for node, names in zip(nodes, ran, strict=True):
            for schedule in node.runtime.schedules:
                if schedule.name in names:
                    node.runtime.run_schedule(schedule)
        runs = runs_of(client, "timed-task")
        assert [r["trigger"] for r in runs] == ["Timer"]
    finally:
        for node in nodes:
            node.db.dispose()


def test_the_timers_schedule_is_registered(dockyard) -> None:
    names = {schedule.name: schedule.every_seconds for schedule in dockyard.runtime.schedules}
    assert names["builds.timers"] == 60
    assert "builds.recover" in names
    assert "builds.base-poll" in names
    assert any(consumer.name == "builds" for consumer in dockyard.runtime.consumers)
    assert "builds.run" in dockyard.runtime.kinds


def test_disabled_builds_register_no_job_handler(settings) -> None:
    node = build(settings.model_copy(update={"builds_enabled": False}))
    try:
        assert "builds.run" not in node.runtime.kinds
        assert any(schedule.name == "builds.recover" for schedule in node.runtime.schedules)
    finally:
        node.db.dispose()


def test_a_push_of_a_base_queues_its_dependents_not_itself(client, dockyard) -> None:
    task(client, "dependent")
    task(client, "producer", images=["base:{{.Run.ID}}"])  # builds base itself: never its own trigger
    task(client, "untriggered", baseImageTriggerEnabled=False)
    for name in ("dependent", "producer", "untriggered"):
        record_base(dockyard, name, BASE, "127.0.0.1:5000", "base", "1", "sha256:" + "1" * 64)
    push_image(client, "base", make_image("base-v1"), tag="2")  # another tag: nothing
    dockyard.runtime.consume()
    assert runs_of(client, "dependent") == []
    push_image(client, "base", make_image("base-v2"), tag="1")
    dockyard.runtime.consume()
    runs = runs_of(client, "dependent")
    assert len(runs) == 1
    assert runs[0]["trigger"] == "BaseImageUpdate"
    assert runs[0]["triggerDetail"] == {"baseImage": BASE}
    assert runs_of(client, "producer") == []
    assert runs_of(client, "untriggered") == []
    push_image(client, "base", make_image("base-v3"), tag="1")  # while one is queued: no second
    dockyard.runtime.consume()
    assert len(runs_of(client, "dependent")) == 1


def test_the_builds_consumer_is_idle_only_without_an_enabled_base_trigger(client, dockyard) -> None:
    """Idle, the consumer moves past pushes unread; a task that rebuilds on its base wakes it."""

    def idle() -> bool:
        return dockyard.db.run_lookup(BuildJobs.idle)

    assert idle()
    task(client, "untriggered", baseImageTriggerEnabled=False)
    record_base(dockyard, "untriggered", BASE, "127.0.0.1:5000", "base", "1", "sha256:" + "1" * 64)
    assert idle()
    task(client, "dependent")
    assert idle()  # no base recorded yet: no push can trigger it
    record_base(dockyard, "dependent", BASE, "127.0.0.1:5000", "base", "1", "sha256:" + "1" * 64)
    assert not idle()
    client.patch("/api/v1/tasks/dependent", json={"status": "Disabled"})
    assert idle()


class FakeUpstream:
    def __init__(self, digests: dict[str, str]) -> None:
        self.digests = digests
        self.heads: list[tuple[str, str]] = []

    def head_manifest(self, repository: str, reference: str, accept: tuple[str, ...]) -> ManifestHead:
        self.heads.append((repository, reference))
        if repository not in self.digests:
            raise UpstreamUnavailable("down")
        return ManifestHead(self.digests[repository], "application/vnd.oci.image.manifest.v1+json", 10)

    def close(self) -> None:
        return None


def test_poll_of_other_registries(client, dockyard) -> None:
    task(client, "polled-task")
    record_base(
        dockyard,
        "polled-task",
        "quay.example/org/img:3",
        "quay.example",
        "org/img",
        "3",
        "sha256:" + "1" * 64,
    )
    record_base(dockyard, "polled-task", "down.example/x:1", "down.example", "x", "1", "sha256:" + "2" * 64)
    record_base(dockyard, "polled-task", BASE, "127.0.0.1:5000", "base", "1", "sha256:" + "3" * 64)
    upstream = FakeUpstream({"org/img": "sha256:" + "1" * 64})
    jobs = dockyard.service("builds").jobs
    hosts: list[str] = []
    jobs.open_client = lambda host, credentials, settings: hosts.append(host) or upstream
    assert jobs.poll_bases() == 0  # same digest: nothing
    assert sorted(hosts) == ["down.example", "quay.example"]  # local bases are never polled
    upstream.digests["org/img"] = "sha256:" + "9" * 64
    assert jobs.poll_bases() == 1
    runs = runs_of(client, "polled-task")
    assert len(runs) == 1
    assert runs[0]["triggerDetail"] == {"baseImage": "quay.example/org/img:3"}
    assert jobs.poll_bases() == 0  # the new digest is recorded


def test_successful_builds_record_their_bases(client, dockyard) -> None:
    from dockyard.builds.spec import RunOutcome

    engine = use_engine(dockyard, FakeEngine())
    engine.outcome = RunOutcome("Succeeded", base_images=(("busybox", "sha256:" + "4" * 64), (BASE, None)))
    task(client, "records-bases")
    client.post("/api/v1/tasks/records-bases/runs", json={})
    dockyard.runtime.run_jobs()
    shown = client.get("/api/v1/tasks/records-bases").json()["baseImages"]
    assert shown == [{"image": BASE, "digest": None}, {"image": "busybox", "digest": "sha256:" + "4" * 64}]
    with dockyard.db.read() as conn:
        rows = conn.execute(
            sa.select(build_task_bases.c.host, build_task_bases.c.repository, build_task_bases.c.tag)
        ).all()
    assert sorted(map(tuple, rows)) == [
        ("127.0.0.1:5000", "base", "1"),
        ("docker.io", "library/busybox", "latest"),
    ]


def test_prune_old_runs(client, dockyard) -> None:
    use_engine(dockyard, FakeEngine())
    old = client.post("/api/v1/runs", json={"type": "cmd", "cmd": "x"}).json()["runId"]
    new = client.post("/api/v1/runs", json={"type": "cmd", "cmd": "x"}).json()["runId"]
    dockyard.runtime.run_jobs()
    set_run(dockyard, old, finished_at=utcnow() - timedelta(days=31))
    assert dockyard.service("builds").jobs.prune() == 1
    assert client.get(f"/api/v1/runs/{old}").status_code == 404
    assert client.get(f"/api/v1/runs/{new}").status_code == 200
    with dockyard.db.read() as conn:
        seqs = set(conn.execute(sa.select(build_run_logs.c.run_seq)).scalars())
        assert seqs == set(conn.execute(sa.select(build_runs.c.seq)).scalars())


def test_run_credentials_push_and_pull_but_never_manage(client, dockyard) -> None:
    credentials = dockyard.service("builds").credentials
    access = credentials.mint("dytest1", 600)
    assert access.username == "00000000-0000-0000-0000-000000000000"
    assert access.plain_http
    login = basic(access.username, access.password)
    token = client.get(
        "/oauth2/token",
        params={"service": "dockyard", "scope": "repository:built/app:pull,push"},
        headers=login,
    )
    assert token.status_code == 200, token.text
    with TestClient(client.app, headers=bearer(token.json()["access_token"])) as pusher:
        push_image(pusher, "built/app", make_image("built"), tag="v1")
        assert (
            pusher.get(
                "/v2/built/app/manifests/v1", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
            ).status_code
            == 200
        )
    with TestClient(client.app, headers=login) as basic_client:
        assert basic_client.get("/api/v1/tasks").status_code == 403
        assert basic_client.post("/api/v1/users", json={"name": "sneaky"}).status_code == 403
    # the system identity is neither listed nor changeable through the identity API
    assert SYSTEM_IDENTITY not in str(client.get("/api/v1/users").json())
    assert SYSTEM_IDENTITY not in str(client.get("/api/v1/service-principals").json())
    assert SYSTEM_IDENTITY not in str(client.get("/api/v1/role-assignments").json())
    assert client.delete(f"/api/v1/users/{SYSTEM_IDENTITY}").status_code in (400, 404)
    credentials.ensure_identity()  # idempotent
    with pytest.raises(RegistryError):  # a user name cannot hold ':'
        dockyard.access.identities.create("user", SYSTEM_IDENTITY)


def test_run_credentials_follow_the_servers_tls(settings, dockyard) -> None:
    from dockyard.builds.credentials import TaskCredentials

    tls = settings.model_copy(update={"tls_mode": "self-signed", "host": "0.0.0.0", "port": 5443})
    access = TaskCredentials(tls, dockyard.access).mint("dytest2", 300)
    assert not access.plain_http
    assert access.ca_file == settings.data_dir / "tls" / "ca.crt"
    assert access.host == "127.0.0.1:5443"
    named = settings.model_copy(update={"builds_registry": "registry.internal:8443", "tls_cert": None})
    assert TaskCredentials(named, dockyard.access).mint("dytest2", 300).host == "registry.internal:8443"


def test_one_batch_of_pushes_matches_each_push_to_its_own_base(client, dockyard) -> None:
    """Events reach the consumer in batches: a push of base:2 and one of other:1 in the same batch
    do not add up to base:1; base:1 among other pushes queues its dependent once."""
    task(client, "dependent")
    record_base(dockyard, "dependent", BASE, "127.0.0.1:5000", "base", "1", "sha256:" + "1" * 64)
    push_image(client, "base", make_image("base-b2"), tag="2")
    push_image(client, "other", make_image("other-o1"), tag="1")
    dockyard.runtime.consume()
    assert runs_of(client, "dependent") == []
    push_image(client, "other", make_image("other-o2"), tag="1")
    push_image(client, "base", make_image("base-b1"), tag="1")
    push_image(client, "base", make_image("base-b1-again"), tag="1")
    dockyard.runtime.consume()
    runs = runs_of(client, "dependent")
    assert [r["triggerDetail"] for r in runs] == [{"baseImage": BASE}]
