"""Runs through the API and the builds.run job (a fake engine: the real builder is not the point here)."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from dockyard.access.services import bootstrap
from dockyard.app import build, create_app
from dockyard.builds.models import build_runs, build_sources
from dockyard.builds.spec import PushedImage, RunOutcome, StepOutcome
from dockyard.db import utcnow
from dockyard.events.models import jobs
from dockyard.registry.models import blobs
from dockyard.webhooks.models import deliveries
from tests.support.auth import ADMIN
from tests.support.builds import FakeEngine, run_status, set_run, use_engine, wait_for
from tests.support.registry import error_codes, fast_webhook_settings

CMD_RUN = {"type": "cmd", "cmd": "busybox echo hi", "source": {"kind": "none"}}


@pytest.fixture
def engine(dockyard) -> FakeEngine:
    return use_engine(dockyard, FakeEngine())


def queue(client, body=None) -> dict:
    response = client.post("/api/v1/runs", json=body or CMD_RUN)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/api/v1/runs/{response.json()['runId']}"
    return response.json()


def test_quick_run_is_queued_run_and_recorded(client, dockyard, engine, settings) -> None:
    engine.outcome = RunOutcome(
        "Succeeded",
        steps=(StepOutcome("acb_step_0", "Succeeded", 1.0, 2.0, 0),),
        images=(PushedImage("app", "dy1", "sha256:" + "a" * 64),),
        base_images=(("127.0.0.1:5000/base:1", "sha256:" + "b" * 64),),
    )
    run = queue(client, {**CMD_RUN, "values": {"v": "1"}, "secretValues": {"pw": "hunter2-secret"}})
    assert run["status"] == "Queued"
    assert run["runId"].startswith("dy")
    assert run["trigger"] == "Manual"
    with dockyard.db.read() as conn:  # the secret is kept apart from the request, and only until the run ends
        row = conn.execute(sa.select(build_runs)).one()
    assert "hunter2-secret" not in json.dumps(row.request)
    assert "hunter2-secret" in row.secrets
    assert dockyard.runtime.run_jobs() == 1
    done = client.get(f"/api/v1/runs/{run['runId']}").json()
    assert done["status"] == "Succeeded", done
    assert done["outputImages"] == [{"repository": "app", "tag": "dy1", "digest": "sha256:" + "a" * 64}]
    assert done["steps"][0]["id"] == "acb_step_0"
    assert done["steps"][0]["exitCode"] == 0
    assert done["startTime"]
    assert done["finishTime"]
    assert done["logSize"] > 0
    with dockyard.db.read() as conn:
        assert conn.execute(sa.select(build_runs.c.secrets)).scalar() is None
    variables = engine.variables[0]
    assert variables.run_id == run["runId"]
    assert variables.values == {"v": "1", "pw": "hunter2-secret"}
    assert variables.secret_values == frozenset({"pw"})
    assert engine.registries[0].username == "00000000-0000-0000-0000-000000000000"
    assert engine.registries[0].plain_http
    assert engine.registries[0].host == "127.0.0.1:5000"
    assert not engine.workdirs[0].exists()  # the run's folder is removed at the end


def test_failed_and_crashed_runs(client, dockyard, engine) -> None:
    engine.outcome = RunOutcome("Failed", "step acb_step_0 exited 3")
    failed = queue(client)
    dockyard.runtime.run_jobs()
    assert client.get(f"/api/v1/runs/{failed['runId']}").json()["error"] == "step acb_step_0 exited 3"

    def crash(*args, **kwargs):
        raise RuntimeError("engine exploded")

    engine.execute = crash  # type: ignore[method-assign]
    crashed = queue(client)
    dockyard.runtime.run_jobs()
    shown = client.get(f"/api/v1/runs/{crashed['runId']}").json()
    assert shown["status"] == "Error"
    assert "engine exploded" in shown["error"]


def test_request_validation(client, engine) -> None:
    bad = [
        {"type": "nope"},
        {"type": "build", "images": ["app:1"], "source": {"kind": "none"}},
        {"type": "build", "source": {"kind": "git", "location": "https://x/y.git"}},
        {"type": "cmd"},
        {"type": "cmd", "cmd": "x", "timeout": 10},
        {"type": "cmd", "cmd": "x", "args": {"a": 1}},
        {"type": "cmd", "cmd": "x", "extra": 1},
        {"type": "build", "images": ["a"], "source": {"kind": "upload", "location": "sha256:" + "0" * 64}},
        {"type": "build", "images": ["a"], "source": {"kind": "git", "location": "/srv/not/allowed"}},
        {"type": "cmd", "cmd": "x", "platform": "Linux AMD"},
        {"type": "file", "taskFile": "steps:\n  - build: -t a .\n    when: [nope]\n"},
        {"type": "file"},
    ]
    for body in bad:
        response = client.post("/api/v1/runs", json=body)
        assert response.status_code == 400, (body, response.text)
        assert error_codes(response) == ["INVALID_REQUEST"]


def test_git_location_is_split(client, dockyard, engine) -> None:
    body = {
        "type": "build",
        "images": ["app:1"],
        "source": {"kind": "git", "location": "https://g/x.git#dev:app"},
    }
    queue(client, body)
    dockyard.runtime.run_jobs()
    source = engine.sources[0]
    assert (source.location, source.ref, source.folder) == ("https://g/x.git", "dev", "app")


def test_cancel_queued_and_running(client, dockyard, engine) -> None:
    queued = queue(client)
    canceled = client.post(f"/api/v1/runs/{queued['runId']}/cancel")
    assert canceled.status_code == 202
    assert canceled.json()["status"] == "Canceled"
    assert client.post(f"/api/v1/runs/{queued['runId']}/cancel").status_code == 409
    assert dockyard.runtime.run_jobs() == 1  # its job finds it ended and does nothing
    assert engine.variables == []

    engine.hold = threading.Event()
    running = queue(client)
    worker = threading.Thread(target=dockyard.runtime.run_jobs)
    worker.start()
    try:
        assert engine.running.wait(10)
        assert run_status(dockyard, running["runId"]) == "Running"
        assert client.post(f"/api/v1/runs/{running['runId']}/cancel").status_code == 202
        wait_for(lambda: run_status(dockyard, running["runId"]) == "Canceled")
    finally:
        engine.hold.set()
        worker.join()


def test_logs_by_offset_and_follow(client, dockyard, engine, monkeypatch) -> None:
    engine.log_lines = ("first line\n", "second ünïcode line\n")
    run = queue(client)
    dockyard.runtime.run_jobs()
    whole = client.get(f"/api/v1/runs/{run['runId']}/logs")
    assert whole.status_code == 200
    assert whole.headers["X-Run-Status"] == "Succeeded"
    text = whole.content
    assert b"first line\nsecond \xc3\xbcn\xc3\xafcode line\n" in text
    assert (
        int(whole.headers["X-Log-Offset"])
        == len(text)
        == client.get(f"/api/v1/runs/{run['runId']}").json()["logSize"]
    )
    rest = client.get(f"/api/v1/runs/{run['runId']}/logs", params={"offset": 11})
    assert rest.content == text[11:]
    assert int(rest.headers["X-Log-Offset"]) == len(text)
    assert client.get(f"/api/v1/runs/{run['runId']}/logs", params={"offset": len(text)}).content == b""

    engine.hold = threading.Event()
    engine.running.clear()
    followed = queue(client)
    runs = dockyard.service("builds").runs
    following = threading.Event()  # the follow request has read the log once (its status is set)
    read_log = runs.read_log

    def reading(*args, **kwargs):
        piece = read_log(*args, **kwargs)
        following.set()
        return piece

    monkeypatch.setattr(runs, "read_log", reading)
    worker = threading.Thread(target=dockyard.runtime.run_jobs)
    worker.start()
    try:
        assert engine.running.wait(10)

        def release() -> None:  # once the running log is visible and followed, let the run end
            wait_for(lambda: client.get(f"/api/v1/runs/{followed['runId']}").json()["logSize"] > 0)
            assert following.wait(10)
            engine.hold.set()

        releaser = threading.Thread(target=release)
        releaser.start()
        streamed = client.get(f"/api/v1/runs/{followed['runId']}/logs", params={"follow": "true"})
        releaser.join()
    finally:
        engine.hold.set()
        worker.join()
    assert streamed.headers["X-Run-Status"] in ("Running", "Started")
    assert b"first line" in streamed.content
    assert streamed.content.endswith(b"Succeeded\n")


def test_logs_mask_secret_values(client, dockyard, engine) -> None:
    engine.log_lines = ("the password is hunter2-secret\n",)
    run = queue(client, {**CMD_RUN, "secretValues": {"pw": "hunter2-secret"}})
    dockyard.runtime.run_jobs()
    log = client.get(f"/api/v1/runs/{run['runId']}/logs").text
    assert "the password is ***" in log
    assert "hunter2" not in log


def test_list_runs_filters_and_pages(client, dockyard, engine) -> None:
    ids = [queue(client)["runId"] for _ in range(3)]
    client.post(f"/api/v1/runs/{ids[0]}/cancel")
    page = client.get("/api/v1/runs", params={"top": 2})
    assert [r["runId"] for r in page.json()["runs"]] == [ids[2], ids[1]]
    assert 'rel="next"' in page.headers["Link"]
    assert f"last={ids[1]}" in page.headers["Link"]
    assert [r["runId"] for r in client.get("/api/v1/runs", params={"last": ids[1]}).json()["runs"]] == [
        ids[0]
    ]
    canceled = client.get("/api/v1/runs", params={"status": "Canceled"}).json()["runs"]
    assert [r["runId"] for r in canceled] == [ids[0]]
    assert client.get("/api/v1/runs", params={"status": "Bogus"}).status_code == 400
    assert client.get("/api/v1/runs/dyzzzz").status_code == 404
    assert client.get("/api/v1/runs/nope").status_code == 404


def test_concurrency_limit_across_two_nodes(settings, engine, dockyard) -> None:
    settings = settings.model_copy(update={"builds_concurrency": 1})
    nodes = [build(settings) for _ in range(2)]
    try:
        first_engine = use_engine(nodes[0], FakeEngine(hold=threading.Event()))
        second_engine = use_engine(nodes[1], FakeEngine())
        builds = nodes[0].service("builds")
        first = builds.runs.get_seq(builds.quick.request(CMD_RUN)).run_id
        worker = threading.Thread(target=nodes[0].runtime.run_jobs, args=(1,))
        worker.start()
        try:
            assert first_engine.running.wait(10)
            second = builds.runs.get_seq(builds.quick.request(CMD_RUN)).run_id
            assert nodes[1].runtime.run_jobs() == 1  # its job ran, found the registry at capacity
            assert run_status(nodes[1], second) == "Queued"
            assert second_engine.variables == []
            with nodes[1].db.read() as conn:
                again = conn.execute(
                    sa.select(jobs.c.run_at).where(jobs.c.kind == "builds.run", jobs.c.status == "queued")
                ).all()
            assert len(again) == 1
            assert again[0].run_at.replace(tzinfo=None) > utcnow().replace(tzinfo=None)
        finally:
            first_engine.hold.set()
            worker.join()
        assert run_status(nodes[0], first) == "Succeeded"
        nodes[1].service("builds").handler.execute(int(second[2:], 36))  # its retried job, come due
        assert run_status(nodes[1], second) == "Succeeded"
    finally:
        for node in nodes:
            node.db.dispose()


def test_dead_worker_runs_end_in_error(client, dockyard, engine, settings) -> None:
    builds = dockyard.service("builds")
    stale = queue(client)["runId"]
    set_run(dockyard, stale, status="Running", heartbeat_at=utcnow() - timedelta(seconds=31), worker="gone")
    fresh = queue(client)["runId"]
    set_run(dockyard, fresh, status="Running", heartbeat_at=utcnow(), worker="alive")
    assert builds.jobs.recover() == 1
    shown = client.get(f"/api/v1/runs/{stale}").json()
    assert shown["status"] == "Error"
    assert shown["error"] == "the worker running it stopped"
    assert run_status(dockyard, fresh) == "Running"
    # a job claimed again after its worker died finds the run Started: Error, never a second run
    orphan = queue(client)["runId"]
    set_run(dockyard, orphan, status="Started", heartbeat_at=utcnow(), worker="gone")
    builds.handler.execute(int(orphan[2:], 36))
    assert run_status(dockyard, orphan) == "Error"
    assert engine.variables == []


def test_a_queued_run_resumes_on_a_new_app(settings, dockyard) -> None:
    builds = dockyard.service("builds")
    run_id = builds.runs.get_seq(builds.quick.request(CMD_RUN)).run_id
    dockyard.db.dispose()
    restarted = build(settings)
    try:
        engine = use_engine(restarted, FakeEngine())
        assert restarted.runtime.run_jobs() == 1
        assert run_status(restarted, run_id) == "Succeeded"
        assert engine.variables[0].run_id == run_id
    finally:
        restarted.db.dispose()


def test_source_upload_limit_and_use(settings, dockyard) -> None:
    settings = settings.model_copy(update={"builds_source_max_bytes": 1024})
    node = build(settings)
    bootstrap(settings, node.access)
    engine = use_engine(node, FakeEngine())
    try:
        with TestClient(create_app(settings, node, background_jobs=False), headers=ADMIN) as client:
            big = client.post("/api/v1/builds/sources", content=b"x" * 2000)
            assert big.status_code == 413
            streamed = client.post("/api/v1/builds/sources", content=iter([b"y" * 800, b"y" * 800]))
            assert streamed.status_code == 413
            with node.db.read() as conn:
                assert conn.execute(sa.select(sa.func.count()).select_from(build_sources)).scalar() == 0
                assert conn.execute(sa.select(sa.func.count()).select_from(blobs)).scalar() == 0
            stored = client.post("/api/v1/builds/sources", content=b"context tar bytes")
            assert stored.status_code == 201, stored.text
            digest = stored.json()["digest"]
            assert stored.json()["size"] == len(b"context tar bytes")
            body = {"type": "build", "images": ["app:1"], "source": {"kind": "upload", "location": digest}}
            client.post("/api/v1/runs", json=body)
            node.runtime.run_jobs()
            assert engine.source_bytes == [b"context tar bytes"]
            kept = node.service("lifecycle").kept_blobs
            with node.db.read() as conn:
                assert digest in {d for source in kept for d in conn.execute(source()).scalars()}
    finally:
        node.db.dispose()


def test_build_events_reach_webhooks(settings, dockyard) -> None:
    settings = fast_webhook_settings(settings, ["127.0.0.0/8"])
    node = build(settings)
    bootstrap(settings, node.access)
    engine = use_engine(node, FakeEngine())
    try:
        with TestClient(create_app(settings, node, background_jobs=False), headers=ADMIN) as client:
            hook = {
                "name": "builds1",
                "serviceUri": "http://127.0.0.1:9/h",
                "actions": ["build_succeeded", "build_failed"],
            }
            assert client.post("/api/v1/webhooks", json=hook).status_code == 201
            engine.outcome = RunOutcome(
                "Succeeded", images=(PushedImage("team/app", "v1", "sha256:" + "c" * 64),)
            )
            ok = queue(client)
            node.runtime.run_jobs()
            engine.outcome = RunOutcome("Failed", "boom")
            bad = queue(client)
            node.runtime.run_jobs()
            node.runtime.consume()
            with node.db.read() as conn:
                bodies = [
                    json.loads(b)
                    for b in conn.execute(sa.select(deliveries.c.body).order_by(deliveries.c.id)).scalars()
                ]
    finally:
        node.db.dispose()
    assert [b["action"] for b in bodies] == ["build_succeeded", "build_failed"]
    assert bodies[0]["target"] == {"repository": "team/app", "tag": "v1", "digest": "sha256:" + "c" * 64}
    assert bodies[0]["run"] == {"id": ok["runId"], "task": None, "status": "Succeeded", "trigger": "Manual"}
    assert bodies[1]["target"] == {"repository": f"_tasks/{bad['runId']}"}
    assert bodies[1]["run"]["status"] == "Failed"
