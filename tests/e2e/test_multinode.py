"""The multi-node proof: two `dockyard serve` nodes (run_worker off) and a `dockyard worker` on one
PostgreSQL and one SeaweedFS bucket prefix, behind nginx alternating nodes per request.

Both nodes start at once on a fresh database; one push's requests alternate nodes (shown by nginx's
and the nodes' own access logs); pulls from either node and through the balancer agree; a node
SIGKILLed mid-PATCH leaves a session the other node continues; webhooks arrive exactly once per
push with two workers competing; a tag moved on one node is read at once on the other.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.conftest import server_group
from tests.e2e.multinode import Nginx, Worker, served_by
from tests.e2e.support import (
    ADMIN,
    ContainerTools,
    DockyardServer,
    fetch_blob,
    fetch_manifest,
    get_manifest,
    push_image,
    put_manifest,
    sha256_digest,
    wait_for,
)
from tests.support.images import make_image, write_oci_layout
from tests.support.postgres import free_port, private_cluster
from tests.support.receiver import Receiver
from tests.support.seaweedfs import SeaweedS3

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
OWNER = __name__.replace(".", "/") + ".py"


@dataclass
class Cluster:
    a: DockyardServer
    b: DockyardServer
    lb: Nginx
    worker: Worker
    database_url: str
    env: dict[str, str]
    tools: ContainerTools
    root: Path

    def lb_http(self, **kwargs: object) -> httpx.Client:
        """One keep-alive connection to the balancer, signed in as the admin user."""
        return httpx.Client(base_url=self.lb.url, auth=ADMIN, timeout=60.0, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, e2e_logs: Path, seaweedfs: SeaweedS3
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("multinode")
    with private_cluster() as database_url:
        env = {
            "DOCKYARD_DATABASE_URL": database_url,
            "DOCKYARD_STORAGE": f"s3://{seaweedfs.bucket}/multinode-{secrets.token_hex(4)}",
            "DOCKYARD_S3_ENDPOINT_URL": seaweedfs.endpoint_url,
            "DOCKYARD_S3_ACCESS_KEY_ID": seaweedfs.access_key_id,
            "DOCKYARD_S3_SECRET_ACCESS_KEY": seaweedfs.secret_access_key,
            "DOCKYARD_S3_REGION": seaweedfs.region,
            "DOCKYARD_S3_ADDRESSING_STYLE": "path",
            "DOCKYARD_RUN_WORKER": "false",
            "DOCKYARD_UPLOAD_LEASE_SECONDS": "5",  # the least allowed: a dead node's lease ends soon
            "DOCKYARD_TRUSTED_PROXIES": "127.0.0.1/32",
            "DOCKYARD_JOB_POLL_SECONDS": "0.2",
            "DOCKYARD_WEBHOOK_POLL_SECONDS": "0.2",
            "DOCKYARD_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
            "DOCKYARD_WEBHOOK_RETRY_MAX_SECONDS": "0.4",
        }
        tools = ContainerTools(root / "tools")
        with server_group() as group:
            a, b = (
                DockyardServer(log_dir=e2e_logs, port=free_port(), data_dir=root / name, owner=OWNER, env=env)
                for name in ("node-a", "node-b")
            )
            # both at once on the empty database: migrations and the admin user race
            group.start(a, wait=False)
            group.start(b, wait=False)
            a.wait_ready()
            b.wait_ready()
            with contextlib.ExitStack() as cleanup:
                cleanup.callback(tools.close)
                worker = Worker(e2e_logs / f"multinode-worker-{a.port}.log", env)
                cleanup.callback(lambda: _stopped_cleanly(worker))
                worker.start()
                lb = Nginx(root / "nginx", [a.host, b.host])
                cleanup.callback(lb.stop)
                lb.start()
                for host in (lb.host, a.host, b.host):
                    tools.authorize(host)
                yield Cluster(a, b, lb, worker, database_url, env, tools, root)


def _stopped_cleanly(worker: Worker) -> None:
    """Stop a started worker; it must exit 0 on SIGTERM."""
    if worker.proc is not None:
        assert worker.stop() == 0, worker.output()


def _upload_ids(server: DockyardServer, repository: str) -> set[str]:
    prefix = f"/v2/{repository}/blobs/uploads/"
    return {
        path[len(prefix) :] for _, path, _ in served_by(server) if path.startswith(prefix) and path != prefix
    }


def test_both_nodes_started_together_share_one_admin_and_signing_key(cluster: Cluster) -> None:
    notices = [s for s in (cluster.a, cluster.b) if "Admin user created" in s.stderr()]
    assert len(notices) == 1, "exactly one node creates the admin user"
    for node in (cluster.a, cluster.b):
        with node.http(timeout=10) as http:
            assert http.get("/v2/").status_code == 200
    # a token node A signs verifies on node B: one signing key for the registry
    with httpx.Client(timeout=10) as http:
        issued = http.get(
            f"{cluster.a.url}/oauth2/token", params={"scope": "repository:any/thing:pull"}, auth=ADMIN
        )
        assert issued.status_code == 200, issued.text
        token = issued.json().get("access_token") or issued.json()["token"]
        answer = http.get(f"{cluster.b.url}/v2/", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text


def test_skopeo_push_through_the_balancer_alternates_nodes_and_pulls_agree(cluster: Cluster) -> None:
    image = make_image("multinode-skopeo", layers=2, layer_size=256 * 1024)
    layout = cluster.root / "layout"
    write_oci_layout(layout, {"v1": image})
    tools, lb = cluster.tools, cluster.lb
    before = len(lb.requests())
    tools.skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{lb.host}/multi/app:v1")

    # nginx hands requests to the nodes in turn; skopeo sends some at once, so they may finish (and
    # be logged) out of turn, but the two nodes' shares differ by at most one
    nodes = [r.upstream for r in lb.requests()[before:]]
    assert sum(1 for r in lb.requests()[before:] if r.target.startswith("/v2/multi/app/")) >= 8
    assert abs(nodes.count(cluster.a.host) - nodes.count(cluster.b.host)) <= 1, nodes
    assert set(nodes) == {cluster.a.host, cluster.b.host}
    # an upload session begun on one node was continued on the other (seen in the nodes' own logs)
    shared = _upload_ids(cluster.a, "multi/app") & _upload_ids(cluster.b, "multi/app")
    assert shared, "no upload session was served by both nodes"

    for host in (cluster.b.host, cluster.a.host, lb.host):
        raw = tools.skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/multi/app:v1").stdout
        assert sha256_digest(raw.encode()) == image.digest
    pulled = cluster.root / "pulled-b"
    tools.skopeo(
        "copy", "--src-tls-verify=false", f"docker://{cluster.b.host}/multi/app:v1", f"oci:{pulled}:v1"
    )
    for blob in image.blobs:
        assert (pulled / "blobs" / "sha256" / blob.digest.split(":")[1]).read_bytes() == blob.data

    store = cluster.root / "podman"
    policy = f"--signature-policy={tools.policy}"
    tools.podman(store, "pull", "--tls-verify=false", policy, f"{lb.host}/multi/app:v1")
    inspected = json.loads(tools.podman(store, "image", "inspect", f"{lb.host}/multi/app:v1").stdout)
    assert inspected[0]["Id"] == image.config.digest.split(":", 1)[1]


def test_one_blob_in_chunks_through_the_balancer_alternates_nodes(cluster: Cluster) -> None:
    data = hashlib.shake_256(b"multinode-chunks").digest(14 * MiB)
    digest = sha256_digest(data)
    chunk = 3 * MiB + 17  # deliberately not part-aligned
    with cluster.lb_http() as http:
        before = len(cluster.lb.requests())
        started = http.post("/v2/multi/chunks/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        for offset in range(0, len(data), chunk):
            piece = data[offset : offset + chunk]
            response = http.patch(
                location,
                content=piece,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                },
            )
            assert response.status_code == 202, response.text
            assert response.headers["Range"] == f"0-{offset + len(piece) - 1}"
            location = response.headers["Location"]
        done = http.put(location, params={"digest": digest})
        assert done.status_code == 201, done.text

        def upload_requests_logged() -> list:
            return [r for r in cluster.lb.requests()[before:] if "/blobs/uploads/" in r.target]

        expected = 2 + -(-len(data) // chunk)
        # nginx logs a request once it has ended, which may be just after the client has its answer
        wait_for(lambda: len(upload_requests_logged()) >= expected, timeout=10, what="nginx's log of the PUT")
        upload_requests = upload_requests_logged()
    assert len(upload_requests) == expected
    nodes = [r.upstream for r in upload_requests]
    assert all(x != y for x, y in itertools.pairwise(nodes)), f"not alternating: {nodes}"
    upload_id = location.rsplit("/", 1)[-1].split("?")[0]
    for node in (cluster.a, cluster.b):
        patches = [p for m, p, _ in served_by(node) if m == "PATCH" and p.endswith(upload_id)]
        assert len(patches) >= 2, f"node {node.host} served {len(patches)} of the chunks"
        with node.http(timeout=60) as http:
            assert fetch_blob(http, "multi/chunks", digest) == data


def test_webhooks_are_delivered_once_per_push_with_two_workers(cluster: Cluster) -> None:
    second_worker = Worker(cluster.worker.log.with_name("multinode-worker-2.log"), cluster.env).start()
    tags = [f"t{i}" for i in range(6)]
    try:
        with Receiver() as receiver, cluster.lb_http() as http:
            created = http.post(
                "/api/v1/webhooks",
                json={
                    "name": "multinode",
                    "serviceUri": receiver.url,
                    "actions": ["push"],
                    "scope": "multi/hooks:*",
                },
            )
            assert created.status_code in (200, 201), created.text
            before = len(cluster.lb.requests())
            for tag in tags:
                push_image(http, "multi/hooks", tag, make_image(f"multinode-hook-{tag}"))
            manifest_puts = [
                r.upstream
                for r in cluster.lb.requests()[before:]
                if r.method == "PUT" and "/manifests/" in r.target
            ]
            assert set(manifest_puts) == {cluster.a.host, cluster.b.host}, manifest_puts

            def settled() -> list[dict[str, object]] | None:
                found = http.get("/api/v1/webhooks/multinode/events").json()["value"]
                done = len(found) == len(tags) and all(d["status"] == "succeeded" for d in found)
                return found if done else None

            deliveries = wait_for(settled, timeout=30, what="six settled deliveries")
            received = receiver.wait_for(len(tags))
            # every delivery has succeeded: anything more would be a duplicate already sent
            assert len(receiver.received) == len(tags)
    finally:
        _stopped_cleanly(second_worker)
    bodies = [r.json() for r in received]
    assert sorted(b["target"]["tag"] for b in bodies) == tags
    assert len({b["id"] for b in bodies}) == len(tags)
    assert all(d["attempts"] == 1 for d in deliveries)  # type: ignore[union-attr]


def test_a_tag_moved_on_one_node_is_read_at_once_on_the_other(cluster: Cluster) -> None:
    """Node B caches the tag; each move on node A reaches B by PostgreSQL's notification, which
    normally lands before the client's next request does. Delivery itself is asynchronous (tens
    of microseconds, a few milliseconds on a loaded machine), so a first read may rarely be stale;
    every read after the notice is fresh."""
    base = make_image("multinode-move")
    rounds, stale_first_reads = 30, 0
    with cluster.a.http(timeout=30) as on_a, cluster.b.http(timeout=30) as on_b:
        push_image(on_a, "multi/move", "latest", base)
        assert fetch_manifest(on_b, "multi/move", "latest") == base.manifest  # node B caches it

        def on_b_latest() -> str:
            answer = get_manifest(on_b, "multi/move", "latest")
            assert answer.status_code == 200
            return answer.headers["Docker-Content-Digest"]

        for round_ in range(rounds):
            moved = make_image("multinode-move", annotations={"round": str(round_)})
            digest = put_manifest(on_a, "multi/move", "latest", moved.manifest, moved.media_type)
            if on_b_latest() != digest:
                stale_first_reads += 1
                wait_for(lambda d=digest: on_b_latest() == d, timeout=2, what="node B to see the moved tag")
    assert stale_first_reads <= rounds // 10, (
        f"{stale_first_reads} of {rounds} first reads on node B were stale"
    )


def test_a_node_killed_mid_patch_leaves_a_session_the_other_node_continues(cluster: Cluster) -> None:
    data = hashlib.shake_256(b"multinode-kill").digest(12 * MiB)
    digest = sha256_digest(data)
    first = 5 * MiB
    repository = "multi/killed"
    with cluster.b.http(timeout=60) as on_b:
        started = on_b.post(f"/v2/{repository}/blobs/uploads/")
        location = started.headers["Location"]
        response = on_b.patch(
            location, content=data[:first], headers={"Content-Type": "application/octet-stream"}
        )
        assert response.status_code == 202, response.text
    upload_id = location.rsplit("/", 1)[-1]

    # stream the next chunk to node A and SIGKILL it while it is in the middle of it
    halfway = threading.Event()
    release = threading.Event()
    outcome: list[object] = []

    def body() -> Iterator[bytes]:
        for offset in range(first, first + 4 * MiB, MiB):
            yield data[offset : offset + MiB]
        halfway.set()
        release.wait(30)
        yield data[first + 4 * MiB :]

    def stream() -> None:
        try:
            with cluster.a.http(timeout=60) as on_a:
                outcome.append(
                    on_a.patch(location, content=body(), headers={"Content-Type": "application/octet-stream"})
                )
        except httpx.TransportError as exc:
            outcome.append(exc)

    sender = threading.Thread(target=stream)
    sender.start()
    engine = sa.create_engine(cluster.database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        assert halfway.wait(30)
        with engine.connect() as conn:
            leased = sa.text("SELECT lease_token IS NOT NULL FROM uploads WHERE id = :id")
            wait_for(
                lambda: conn.execute(leased, {"id": upload_id}).scalar(), timeout=10, what="node A's lease"
            )
            conn.rollback()
        cluster.a.kill()
    finally:
        release.set()
        sender.join(30)
        engine.dispose()
    assert outcome
    assert not (isinstance(outcome[0], httpx.Response) and outcome[0].status_code == 202)
    with cluster.lb_http() as http:
        assert http.get(f"/v2/{repository}/blobs/{digest}").status_code == 404  # nothing half-made served
        status = http.get(location)
        assert status.status_code == 204
        assert status.headers["Range"] == f"0-{first - 1}", "the killed chunk must not count"

        def continue_upload() -> httpx.Response | None:
            answer = http.patch(
                location,
                content=data[first:],
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{first}-{len(data) - 1}",
                },
            )
            return None if answer.status_code == 416 else answer  # the dead node's lease, until it ends

        resumed = wait_for(continue_upload, timeout=15, what="the dead node's lease to end", interval=0.5)
        assert resumed.status_code == 202, resumed.text  # type: ignore[union-attr]
        done = http.put(resumed.headers["Location"], params={"digest": digest})  # type: ignore[union-attr]
        assert done.status_code == 201, done.text
        assert fetch_blob(http, repository, digest) == data
    cluster.a.start()  # node A comes back and serves the same, whole blob
    for node in (cluster.a, cluster.b):
        with node.http(timeout=60) as on_node:
            assert fetch_blob(on_node, repository, digest) == data
