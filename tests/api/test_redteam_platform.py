"""Red-team attacks on the platform surfaces: upload sessions, redirects, the event log, /metrics.

``HOLE`` tests reproduce attacks that worked when they were written (each failed until its
hole was closed); ``refused`` tests are attacks that were refused and guard against
regressions. Every test's docstring names the attack.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

import dockyard.app
from dockyard.access.services import bootstrap
from dockyard.app import Dockyard, build, create_app
from dockyard.events.models import repository_events
from dockyard.registry.models import uploads
from dockyard.registry.services.upload_sessions import CLOSED
from dockyard.storage import Redirect
from dockyard.storage.filesystem import FilesystemBlobStore
from dockyard.storage.s3 import S3BlobStore
from tests.support.auth import ADMIN, basic
from tests.support.images import OCI_MANIFEST, canonical, make_artifact, make_image, sha256
from tests.support.registry import error_codes, push_blob, push_image

DATA = bytes(range(256)) * 40  # 10 KiB


def _token(client: TestClient, name: str, repository: str, actions: list[str]) -> dict[str, str]:
    """A repository-scoped token (its own scope map) as Basic credentials."""
    made = client.post("/api/v1/scope-maps", json={"name": f"{name}-map", "actions": {repository: actions}})
    assert made.status_code == 201, made.text
    created = client.post("/api/v1/tokens", json={"name": name, "scopeMap": f"{name}-map"})
    assert created.status_code == 201, created.text
    return basic(name, created.json()["credentials"][0]["value"])


def _upload_row(parts: Dockyard, upload_id: str) -> sa.Row | None:
    with parts.db.read() as conn:
        return conn.execute(sa.select(uploads).where(uploads.c.id == upload_id)).first()


# =================================================================================================
# Upload sessions
# =================================================================================================


def test_refused_another_repositorys_upload_id_is_unknown_everywhere(client, anonymous, dockyard):
    """Attack: a pusher to ``mine`` reads, continues, commits and cancels an upload session that
    belongs to ``theirs`` by putting its id under its own repository's path."""
    theirs = client.post("/v2/theirs/blobs/uploads/")
    upload_id = theirs.headers["docker-upload-uuid"]
    assert client.patch(theirs.headers["location"], content=DATA[:100]).status_code == 202
    pusher = _token(client, "pusher", "mine", ["content/read", "content/write"])
    foreign = f"/v2/mine/blobs/uploads/{upload_id}"
    assert error_codes(anonymous.get(foreign, headers=pusher)) == ["BLOB_UPLOAD_UNKNOWN"]
    assert error_codes(anonymous.patch(foreign, content=DATA[100:200], headers=pusher)) == [
        "BLOB_UPLOAD_UNKNOWN"
    ]
    small = anonymous.put(
        foreign, params={"digest": sha256(DATA[:200])}, content=DATA[100:200], headers=pusher
    )
    assert error_codes(small) == ["BLOB_UPLOAD_UNKNOWN"]
    empty = anonymous.put(foreign, params={"digest": sha256(DATA[:100])}, headers=pusher)
    assert error_codes(empty) == ["BLOB_UPLOAD_UNKNOWN"]
    assert error_codes(anonymous.delete(foreign, headers=pusher)) == ["BLOB_UPLOAD_UNKNOWN"]
    # and the direct path to the other repository is refused by authorisation
    assert anonymous.get(theirs.headers["location"], headers=pusher).status_code in (401, 403)
    row = _upload_row(dockyard, upload_id)
    assert row is not None
    assert row.size == 100
    assert row.lease_token is None
    done = client.put(theirs.headers["location"], params={"digest": sha256(DATA[:100])})
    assert done.status_code == 201, done.text
    assert client.get(f"/v2/mine/blobs/{sha256(DATA[:100])}").status_code == 404


@pytest.mark.parametrize(
    "value",
    [
        "bytes=abc",
        "5-2",
        "-1-5",
        "0-99999999999999999999",
        "100-199/*x",
        "0-\x00",
        "0-1, 2-3",
        "1-100",
        "0-999999999999999999",
    ],
)
def test_refused_forged_content_ranges_record_nothing(client, dockyard, value):
    """Attack: garbage, reversed, overlong, multi-range and oversized ``Content-Range`` values on a
    PATCH of an upload holding 100 bytes; each is refused with a spec error and the session keeps
    exactly its 100 bytes, so the upload still completes with the right digest."""
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert client.patch(location, content=DATA[:100]).status_code == 202
    answer = client.patch(location, content=DATA[100:200], headers={"Content-Range": value})
    assert answer.status_code in (400, 416), answer.text
    assert error_codes(answer)[0] in ("BLOB_UPLOAD_INVALID", "SIZE_INVALID")
    assert _upload_row(dockyard, location.rsplit("/", 1)[1]).size == 100
    resumed = client.patch(location, content=DATA[100:], headers={"Content-Range": f"100-{len(DATA) - 1}"})
    assert resumed.status_code == 202, resumed.text
    assert client.put(location, params={"digest": sha256(DATA)}).status_code == 201
    assert client.get(f"/v2/team/app/blobs/{sha256(DATA)}").content == DATA


def test_refused_replayed_and_overlapping_chunks_never_reach_the_digest(client):
    """Attack: replay the first chunk, send a chunk overlapping the recorded bytes and one that
    skips ahead; all are 416 and none of their bytes count toward the digest."""
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    first = {"Content-Range": "0-99"}
    assert client.patch(location, content=DATA[:100], headers=first).status_code == 202
    assert client.patch(location, content=DATA[:100], headers=first).status_code == 416
    assert client.patch(location, content=b"X" * 100, headers={"Content-Range": "50-149"}).status_code == 416
    assert client.patch(location, content=b"Y" * 100, headers={"Content-Range": "101-200"}).status_code == 416
    assert (
        client.patch(
            location, content=DATA[100:], headers={"Content-Range": f"100-{len(DATA) - 1}"}
        ).status_code
        == 202
    )
    done = client.put(location, params={"digest": sha256(DATA)})
    assert done.status_code == 201, done.text


def test_refused_a_put_naming_another_blobs_digest_leaves_that_blob_alone(client):
    """Attack: upload other bytes and close the session with the digest of a blob another
    repository holds (in one request and chunked), hoping to replace the stored bytes."""
    victim = push_blob(client, "victim/app", DATA)
    evil = b"evil" * 1000
    for repository in ("attacker/app", "victim/app"):
        location = client.post(f"/v2/{repository}/blobs/uploads/").headers["location"]
        assert error_codes(client.put(location, params={"digest": victim}, content=evil)) == [
            "DIGEST_INVALID"
        ]
        location = client.post(f"/v2/{repository}/blobs/uploads/").headers["location"]
        assert client.patch(location, content=evil).status_code == 202
        assert error_codes(client.put(location, params={"digest": victim})) == ["DIGEST_INVALID"]
        whole = client.post(f"/v2/{repository}/blobs/uploads/", params={"digest": victim}, content=evil)
        assert error_codes(whole) == ["DIGEST_INVALID"]
    assert client.get(f"/v2/victim/app/blobs/{victim}").content == DATA
    assert client.get(f"/v2/attacker/app/blobs/{victim}").status_code == 404


def test_refused_sha512_digests_are_verified_on_every_path(client):
    """Attack: claim a sha512 digest for bytes that do not have it, on the chunked, in-one-PUT and
    POST ?digest= paths; and a sha512 digest whose hex is the sha256 of the bytes."""
    good = "sha512:" + hashlib.sha512(DATA).hexdigest()
    wrong = "sha512:" + hashlib.sha512(b"other").hexdigest()
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert error_codes(client.put(location, params={"digest": wrong}, content=DATA)) == ["DIGEST_INVALID"]
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert client.patch(location, content=DATA).status_code == 202
    assert error_codes(client.put(location, params={"digest": good})) == ["DIGEST_INVALID"]
    confused = "sha512:" + hashlib.sha256(DATA).hexdigest() * 2
    assert error_codes(
        client.post("/v2/team/app/blobs/uploads/", params={"digest": confused}, content=DATA)
    ) == ["DIGEST_INVALID"]
    assert (
        client.post("/v2/team/app/blobs/uploads/", params={"digest": good}, content=DATA).status_code == 201
    )
    assert client.get(f"/v2/team/app/blobs/{good}").content == DATA


@pytest.mark.filesystem_only  # the crashed step is simulated with the filesystem driver's upload state
@pytest.mark.parametrize("resume", ["patch", "put", "put-with-a-chunk", "put-another-blobs-digest"])
def test_HOLE_a_commit_that_crashed_before_its_record_leaves_a_session_that_500s_forever(
    client, dockyard, resume
):
    """HOLE (closed). Attack / accident: ``dockyard serve`` is killed (or its database write fails)
    after the store's commit moved an upload's bytes to the blob's place but before the
    transaction that records the blob ended the session. The client retries its closing PUT
    (or continues with a PATCH): each retry was a 500 (``upload … holds no data``) until the
    session expired a day later. Now the session is dropped with BLOB_UPLOAD_UNKNOWN and the
    client starts over. It must never be completed from what the store has at the digest's
    place: a retry naming *another* repository's blob would otherwise link that blob without
    its bytes (a mount without read access)."""
    big = bytes(range(256)) * 8192  # 2 MiB: past the one-request paths
    secret = push_blob(client, "private/secret", b"secret layer" * 100)
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert client.patch(location, content=big).status_code == 202
    upload_id = location.rsplit("/", 1)[1]
    dockyard.store.commit_upload(upload_id, "file", sha256(big), len(big))  # the crashed request's step
    if resume == "patch":
        answer = client.patch(
            location, content=b"more", headers={"Content-Range": f"{len(big)}-{len(big) + 3}"}
        )
    elif resume == "put":
        answer = client.put(location, params={"digest": sha256(big)})
    elif resume == "put-with-a-chunk":
        answer = client.put(location, params={"digest": sha256(big + b"more")}, content=b"more")
    else:
        answer = client.put(location, params={"digest": secret})
    if resume == "put-another-blobs-digest":  # the running digest is checked first
        assert error_codes(answer) == ["DIGEST_INVALID"]
    else:
        assert answer.status_code == 404, answer.text
        assert error_codes(answer) == ["BLOB_UPLOAD_UNKNOWN"]
    assert _upload_row(dockyard, upload_id).size == CLOSED  # dropped: its id stays unknown
    assert error_codes(client.get(location)) == ["BLOB_UPLOAD_UNKNOWN"]
    assert client.get(f"/v2/team/app/blobs/{secret}").status_code == 404
    assert push_blob(client, "team/app", big) == sha256(big)  # starting over works
    assert client.get(f"/v2/team/app/blobs/{sha256(big)}").content == big


# =================================================================================================
# Redirects
# =================================================================================================


class _RedirectingStore(FilesystemBlobStore):
    """The filesystem driver handing out redirects, as an object store's presigned URLs."""

    def source(self, digest, *, location=None, redirect=False, expires=1200):
        if redirect:
            return Redirect(f"https://blobs.example/{digest}?expires={expires}")
        return super().source(digest, location=location)


@pytest.fixture
def redirecting(settings, monkeypatch) -> Iterator[TestClient]:
    node_settings = settings.model_copy(update={"storage_redirect": True})
    store = _RedirectingStore(settings.storage_path)
    monkeypatch.setattr(dockyard.app, "create_blob_store", lambda _settings: store)
    parts = build(node_settings)
    monkeypatch.undo()
    bootstrap(node_settings, parts.access)
    with TestClient(create_app(node_settings, parts, background_jobs=False)) as client:
        yield client
    parts.db.dispose()


def test_HOLE_a_redirect_to_a_short_lived_url_is_cacheable_for_a_year(redirecting):
    """HOLE (closed). Attack (on anyone behind a caching proxy): the 307 to a presigned URL that
    expires in 20 minutes carried the blob's ``Cache-Control: max-age=31536000``, so a shared
    cache or client may replay the redirect for a year, long after the URL expired (pulls fail)
    and after anonymous pull was switched off (the redirect skips the registry's check)."""
    location = redirecting.post("/v2/team/app/blobs/uploads/", headers=ADMIN).headers["location"]
    digest = sha256(DATA)
    assert (
        redirecting.put(location, params={"digest": digest}, content=DATA, headers=ADMIN).status_code == 201
    )
    answer = redirecting.get(f"/v2/team/app/blobs/{digest}", headers=ADMIN, follow_redirects=False)
    assert answer.status_code == 307
    assert "max-age=31536000" not in answer.headers.get("cache-control", "")
    assert "no-store" in answer.headers["cache-control"] or "private" in answer.headers["cache-control"]
    head = redirecting.head(f"/v2/team/app/blobs/{digest}", headers=ADMIN, follow_redirects=False)
    assert head.status_code == 200
    assert "location" not in head.headers
    assert redirecting.get(f"/v2/team/app/blobs/{digest}", follow_redirects=False).status_code == 401


@pytest.fixture
def s3_redirecting(settings, monkeypatch, seaweedfs) -> Iterator[TestClient]:
    """A registry on a real S3 (SeaweedFS) with ``storage_redirect`` on."""
    node_settings = settings.model_copy(update={"storage_redirect": True})
    store = S3BlobStore(
        seaweedfs.bucket,
        f"redteam-{uuid.uuid4().hex[:12]}",
        endpoint_url=seaweedfs.endpoint_url,
        region=seaweedfs.region,
        access_key_id=seaweedfs.access_key_id,
        secret_access_key=seaweedfs.secret_access_key,
    )
    monkeypatch.setattr(dockyard.app, "create_blob_store", lambda _settings: store)
    parts = build(node_settings)
    monkeypatch.undo()
    bootstrap(node_settings, parts.access)
    with TestClient(create_app(node_settings, parts, background_jobs=False)) as client:
        yield client
    parts.db.dispose()


def test_refused_presigned_urls_are_given_only_after_authorisation_and_open_one_blob(
    s3_redirecting, seaweedfs
):
    """Attack: get a presigned URL without credentials or with a token for another repository;
    read the secret key out of it; edit the URL to read another blob; keep it past its expiry
    (its lifetime is bounded); make HEAD redirect."""
    client = s3_redirecting
    admin = TestClient(client.app, headers=ADMIN)
    one, other = b"first blob " * 300, b"second blob " * 300
    for data in (one, other):
        assert (
            client.post(
                "/v2/team/app/blobs/uploads/", params={"digest": sha256(data)}, content=data, headers=ADMIN
            ).status_code
            == 201
        )
    path = f"/v2/team/app/blobs/{sha256(one)}"
    assert client.get(path, follow_redirects=False).status_code == 401
    outsider = _token(admin, "elsewhere", "other/app", ["content/read"])
    refused = client.get(path, headers=outsider, follow_redirects=False)
    assert refused.status_code in (401, 403)
    assert "location" not in refused.headers
    answer = client.get(path, headers=ADMIN, follow_redirects=False)
    assert answer.status_code == 307
    url = answer.headers["location"]
    assert seaweedfs.secret_access_key not in url
    assert answer.headers["cache-control"] == "no-store"
    query = parse_qs(urlsplit(url).query)
    assert 0 < int(query["X-Amz-Expires"][0]) <= 3600
    assert httpx.get(url).content == one
    forged = url.replace(sha256(one).split(":")[1], sha256(other).split(":")[1])
    assert forged != url
    assert httpx.get(forged).status_code == 403
    head = client.head(path, headers=ADMIN, follow_redirects=False)
    assert head.status_code == 200
    assert "location" not in head.headers


# =================================================================================================
# The event log: what a pusher or a puller writes into it
# =================================================================================================


def test_HOLE_a_long_host_header_fails_pushes_and_loses_everyones_pulls(client, dockyard):
    """HOLE (closed). Attack: a pusher (or any puller) sends a ``Host`` header longer than the
    event log's ``request_host`` column (255). On PostgreSQL the push's event insert failed, so
    the push was a 500, and a pull's buffered event made the batched pull flush fail, losing
    every other client's pull events of that window."""
    image = make_image("long-host")
    for blob in image.blobs:
        push_blob(client, "team/app", blob.data)
    host = "h" * 300 + ".example"
    pushed = client.put(
        "/v2/team/app/manifests/v1",
        content=image.manifest,
        headers={"Content-Type": image.media_type, "Host": host},
    )
    assert pushed.status_code == 201, pushed.text
    assert client.get("/v2/team/app/manifests/v1").status_code == 200  # an honest pull
    evil = {"Host": host, "User-Agent": "attacker"}
    assert client.get("/v2/team/app/manifests/v1", headers=evil).status_code == 200
    assert dockyard.events.flush_pulls() == 2  # one batch: the honest pull and the attacker's
    with dockyard.db.read() as conn:
        agents = conn.execute(
            sa.select(repository_events.c.user_agent).where(repository_events.c.action == "pull")
        ).scalars()
        assert sorted(agents) == ["attacker", "testclient"]


def test_HOLE_a_new_user_agent_on_every_pull_is_a_new_row(client, dockyard):
    """HOLE (closed). Attack: with anonymous pull on, pull one manifest again and again with a new
    User-Agent (or from a new address in one IPv6 /64) each time: every pull was a row of its own
    (about 1 KB, kept 90 days). Now one client adds at most PULL_ROWS_PER_CLIENT rows a batch; its
    further pulls are counted on one row."""
    from dockyard.events.services import MORE_PULLS, PULL_ROWS_PER_CLIENT, Origin

    image = make_image("many-agents")
    push_image(client, "team/app", image, "v1")
    events = dockyard.events
    pulls = PULL_ROWS_PER_CLIENT + 50
    for number in range(pulls):
        origin = Origin(actor=None, client_ip=f"2001:db8:1:1::{number + 1:x}", user_agent=f"agent-{number}")
        events.note_pull("team/app", "v1", image.digest, image.media_type, len(image.manifest), origin)
    honest = Origin(actor="someone", client_ip="192.0.2.9", user_agent="docker")
    events.note_pull("team/app", "v1", image.digest, image.media_type, len(image.manifest), honest)
    assert events.flush_pulls() == PULL_ROWS_PER_CLIENT + 2
    with dockyard.db.read() as conn:
        columns = repository_events.c
        rows = conn.execute(
            sa.select(columns.user_agent, columns.count, columns.client_ip).where(columns.action == "pull")
        ).all()
    folded = [row for row in rows if row.user_agent == MORE_PULLS]
    assert [(row.count, row.client_ip) for row in folded] == [(50, "2001:db8:1:1::/64")]
    assert sum(row.count for row in rows) == pulls + 1  # every pull still counted
    assert ("docker", 1, "192.0.2.9") in [tuple(row) for row in rows]


@pytest.mark.parametrize("where", ["artifactType", "architecture"])
def test_HOLE_an_overlong_manifest_field_is_a_500_on_postgresql(client, where):
    """HOLE (closed). Attack: push a manifest whose ``artifactType`` (or an index entry's
    ``platform.architecture``) is longer than its column; PostgreSQL refused the insert and the
    push was a 500 instead of MANIFEST_INVALID."""
    long = "x" * 300
    if where == "artifactType":
        artifact = make_artifact("application/vnd.example+" + long, b"payload")
        for blob in artifact.blobs:
            push_blob(client, "team/app", blob.data)
        document = json.loads(artifact.manifest)
        answer = client.put(
            "/v2/team/app/manifests/art", content=artifact.manifest, headers={"Content-Type": OCI_MANIFEST}
        )
    else:
        image = make_image("arch")
        push_image(client, "team/app", image)
        document = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": image.media_type,
                    "digest": image.digest,
                    "size": len(image.manifest),
                    "platform": {"architecture": long, "os": "linux"},
                }
            ],
        }
        answer = client.put(
            "/v2/team/app/manifests/idx",
            content=canonical(document),
            headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
        )
    assert answer.status_code in (201, 400), answer.text
    if answer.status_code == 400:
        assert error_codes(answer) == ["MANIFEST_INVALID"]


# =================================================================================================
# /metrics
# =================================================================================================


def test_refused_x_forwarded_for_from_an_untrusted_peer_does_not_open_metrics(settings, dockyard):
    """Attack: a client on the internet claims a private address in ``X-Forwarded-For`` (also
    prepended to a real chain through a trusted proxy) to scrape without credentials."""
    plain = create_app(settings, dockyard, background_jobs=False)
    with TestClient(plain, client=("203.0.113.9", 40000)) as outsider:
        for forged in ("10.0.0.1", "127.0.0.1", "10.0.0.1, 192.168.1.1", "::1"):
            assert outsider.get("/metrics", headers={"X-Forwarded-For": forged}).status_code == 401
    proxied = create_app(settings.model_copy(update={"trusted_proxies": ["198.51.100.0/24"]}), dockyard)
    with TestClient(proxied, client=("198.51.100.1", 40000)) as via_proxy:
        for forged in ("10.0.0.1, 203.0.113.9", "127.0.0.1,203.0.113.9", "garbage, 203.0.113.9"):
            assert via_proxy.get("/metrics", headers={"X-Forwarded-For": forged}).status_code == 401


def test_refused_anonymous_pull_does_not_open_metrics(client, settings, dockyard):
    """Attack: with anonymous pull on, an anonymous client outside ``metrics_networks`` scrapes."""
    assert client.patch("/api/v1/registry", json={"anonymousPullEnabled": True}).status_code == 200
    app = create_app(settings, dockyard, background_jobs=False)
    with TestClient(app, client=("203.0.113.9", 40000)) as outsider:
        assert outsider.get("/metrics").status_code == 401


def test_refused_random_paths_methods_and_repositories_create_no_series(client):
    """Attack: grow the scrape (and the memory behind it) with unique paths, repository names,
    invented methods, digests and query strings."""

    def series() -> set[str]:
        text = client.get("/metrics").text
        return {line.split(" ")[0] for line in text.splitlines() if line.startswith("dockyard_http")}

    def attack(rng: random.Random, rounds: int) -> None:
        for n in range(rounds):
            name = f"repo{rng.getrandbits(40):x}/x{n}"
            client.get(f"/v2/{name}/manifests/t{n}?x={n}")
            client.get(f"/v2/{name}/blobs/sha256:{rng.getrandbits(256):064x}")
            client.request(f"M{n}", f"/nowhere/{uuid.uuid4()}")
            client.get(f"/{uuid.uuid4()}/%00/{n}")

    attack(random.Random(1), 20)
    series()  # the scrape's own series
    before = series()
    attack(random.Random(2), 200)
    assert series() == before
    assert not [s for s in before if "repo" in s or "nowhere" in s or "sha256" in s or '"M' in s]
