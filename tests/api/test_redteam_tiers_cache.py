"""Red-team attacks on the issue #10 surfaces: the upstream client, import, the pull-through cache
(tiers, the storage quota and request-rate limits are in test_redteam_tiers_rates.py).

``test_hole_…`` tests reproduce attacks that worked when they were written (each failed until its
hole was closed, or is marked ``xfail(strict=True)`` with the reason while it is open);
``test_refused_…`` tests are attacks that were correctly refused and guard against regressions.
Every test's docstring names the attack. The upstream is a scripted server (tests/support/evil_upstream.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from dockyard.app import Dockyard
from dockyard.registry.models import blobs, manifests
from tests.support.auth import ADMIN_USERNAME, basic, create_user
from tests.support.evil_upstream import EvilUpstream, answer, blob, manifest
from tests.support.images import OCI_MANIFEST, make_artifact, make_image, sha256
from tests.support.registry import error_codes, push_manifest

ACCEPT = {"Accept": f"{OCI_MANIFEST}, application/vnd.oci.image.index.v1+json"}
IMAGE = make_image("evil", layers=1)
LAYER = IMAGE.layers[0]
#: The upstream's read timeout in these tests: slow answers must end within a few of these.
TIMEOUT = 1.0


@pytest.fixture
def settings(settings):
    return settings.model_copy(
        update={
            "cache_ttl_seconds": 3600.0,
            "insecure_upstreams": ["127.0.0.1", "127.0.0.2"],
            "upstream_allowed_networks": ["127.0.0.2/32"],  # only the scripted upstream's address
            "upstream_timeout_seconds": TIMEOUT,
        }
    )


@pytest.fixture
def evil() -> Iterator[EvilUpstream]:
    server = EvilUpstream("127.0.0.2")
    yield server
    server.close()


@pytest.fixture
def bystander() -> Iterator[EvilUpstream]:
    """A server on 127.0.0.1 (refused by the settings): no request may ever reach it."""
    server = EvilUpstream("127.0.0.1")
    yield server
    server.close()


def make_rule(client, source: str, target: str, name: str = "evil-rule", cred: str | None = None) -> None:
    body = {"name": name, "sourceRepository": source, "targetRepository": target}
    if cred:
        body["credentialSetName"] = cred
    created = client.post("/api/v1/cache-rules", json=body)
    assert created.status_code == 201, created.text


def serve_image(evil: EvilUpstream, repository: str = "team/app", tag: str = "v1") -> None:
    handler = manifest(IMAGE.manifest, IMAGE.media_type, IMAGE.digest)
    evil.routes[("GET", f"/v2/{repository}/manifests/{tag}")] = handler
    evil.routes[("GET", f"/v2/{repository}/manifests/{IMAGE.digest}")] = handler
    evil.routes[("GET", f"/v2/{repository}/blobs/{IMAGE.config.digest}")] = blob(IMAGE.config.data)


def blob_recorded(dockyard: Dockyard, digest: str) -> bool:
    with dockyard.db.read() as conn:
        return conn.execute(sa.select(blobs.c.digest).where(blobs.c.digest == digest)).first() is not None


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


# =================================================================================================
# A. A MALICIOUS UPSTREAM BEHIND A CACHE RULE
# =================================================================================================


def test_hole_cache_blob_without_content_length_is_read_without_bound(client, dockyard, evil):
    """HOLE (closed). Attack: the upstream answers a layer the manifest declares as a few hundred
    bytes with a chunked body that never ends. The cache passed the upstream's Content-Length (none)
    as the expected size, so it wrote to disk as long as the upstream sent. Expected: the read stops
    past the manifest's declared size, 502, nothing stored."""
    serve_image(evil)
    sent = {"bytes": 0}

    def endless(request) -> None:
        request.send_response(200)
        request.send_header("Transfer-Encoding", "chunked")
        request.end_headers()
        chunk = b"\0" * 65536
        while sent["bytes"] < 256 * 1024 * 1024 and not evil.stopping.is_set():
            request.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent["bytes"] += len(chunk)
        request.wfile.write(b"0\r\n\r\n")

    evil.routes[("GET", f"/v2/team/app/blobs/{LAYER.digest}")] = endless
    make_rule(client, f"{evil.host}/team/app", "mirror")
    assert client.get("/v2/mirror/manifests/v1", headers=ACCEPT).status_code == 200
    answer_, _seconds = timed(lambda: client.get(f"/v2/mirror/blobs/{LAYER.digest}"))
    assert answer_.status_code == 502, answer_.text
    assert sent["bytes"] < 32 * 1024 * 1024, sent  # stopped early (socket buffers aside)
    assert not blob_recorded(dockyard, LAYER.digest)


def test_hole_cache_blob_with_wrong_bytes_answers_a_client_error(client, dockyard, evil):
    """HOLE (closed). Attack: the upstream serves other bytes under a layer's digest. Nothing was
    stored (good), but the puller got ``400 DIGEST_INVALID`` as if *its* request were wrong.
    Expected: 502 (the upstream failed), nothing stored, later pulls still try again."""
    serve_image(evil)
    evil.routes[("GET", f"/v2/team/app/blobs/{LAYER.digest}")] = blob(b"x" * len(LAYER.data))
    make_rule(client, f"{evil.host}/team/app", "mirror")
    assert client.get("/v2/mirror/manifests/v1", headers=ACCEPT).status_code == 200
    got = client.get(f"/v2/mirror/blobs/{LAYER.digest}")
    assert got.status_code == 502, got.text
    assert not blob_recorded(dockyard, LAYER.digest)
    evil.routes[("GET", f"/v2/team/app/blobs/{LAYER.digest}")] = blob(LAYER.data)
    fixed = client.get(f"/v2/mirror/blobs/{LAYER.digest}")
    assert fixed.status_code == 200
    assert fixed.content == LAYER.data


def test_hole_cache_blob_longer_than_declared_is_refused(client, dockyard, evil):
    """HOLE (closed). Attack: the upstream's Content-Length says 10 MiB for a layer the manifest
    declares as a few hundred bytes. Expected: refused before 10 MiB are read, 502, nothing stored."""
    serve_image(evil)
    evil.routes[("GET", f"/v2/team/app/blobs/{LAYER.digest}")] = blob(b"y" * (10 * 1024 * 1024))
    make_rule(client, f"{evil.host}/team/app", "mirror")
    assert client.get("/v2/mirror/manifests/v1", headers=ACCEPT).status_code == 200
    got = client.get(f"/v2/mirror/blobs/{LAYER.digest}")
    assert got.status_code == 502, got.text
    assert not blob_recorded(dockyard, LAYER.digest)


def drip(body_size: int, every: float, stopping) -> callable:
    """Headers at once, then one byte every ``every`` seconds (never faster than the read timeout)."""

    def handler(request) -> None:
        request.send_response(200)
        request.send_header("Content-Type", OCI_MANIFEST)
        request.send_header("Content-Length", str(body_size))
        request.end_headers()
        for _ in range(min(body_size, 40)):  # ~12 s at most, then the connection is dropped
            if stopping.wait(every):
                return
            request.wfile.write(b" ")
            request.wfile.flush()

    return handler


def test_hole_slowloris_manifest_holds_the_pull_forever(client, evil):
    """HOLE (closed). Attack: the upstream sends a manifest's headers, then one byte per 0.3 s
    (faster than the 1 s read timeout, so no single read times out). Each read of the upstream only
    had a per-read timeout: the pull (and every other pull of the tag, waiting on its flight) hung
    for as long as the upstream liked. Expected: the pull fails within a few timeouts (502)."""
    evil.routes[("GET", "/v2/team/app/manifests/v1")] = drip(100_000, 0.3, evil.stopping)
    make_rule(client, f"{evil.host}/team/app", "mirror")
    got, seconds = timed(lambda: client.get("/v2/mirror/manifests/v1", headers=ACCEPT))
    assert got.status_code == 502, got.text
    assert seconds < 6 * TIMEOUT, seconds


def test_hole_slowloris_blob_holds_the_pull_forever(client, dockyard, evil):
    """HOLE (closed). Attack: as above for a layer (one byte per 0.3 s of a declared size). Expected:
    an upstream sending less than 1 MiB per read timeout is given up on (502), nothing stored."""
    serve_image(evil)
    evil.routes[("GET", f"/v2/team/app/blobs/{LAYER.digest}")] = drip(len(LAYER.data), 0.3, evil.stopping)
    make_rule(client, f"{evil.host}/team/app", "mirror")
    assert client.get("/v2/mirror/manifests/v1", headers=ACCEPT).status_code == 200
    got, seconds = timed(lambda: client.get(f"/v2/mirror/blobs/{LAYER.digest}"))
    assert got.status_code == 502, got.text
    assert seconds < 6 * TIMEOUT, seconds
    assert not blob_recorded(dockyard, LAYER.digest)


def test_refused_oversized_and_mislabelled_manifests_are_not_stored(client, dockyard, evil):
    """Refused. Attacks: a 5 MiB manifest; a tag whose bytes do not match the Docker-Content-Digest
    the upstream itself sent; a by-digest manifest whose bytes are another manifest's. Expected:
    502/404, nothing stored."""
    huge = b'{"schemaVersion":2,"annotations":{"a":"' + b"z" * (5 * 1024 * 1024) + b'"}}'
    evil.routes[("GET", "/v2/team/app/manifests/huge")] = manifest(huge, OCI_MANIFEST)
    other = make_image("other")
    evil.routes[("GET", "/v2/team/app/manifests/liar")] = manifest(other.manifest, OCI_MANIFEST, IMAGE.digest)
    evil.routes[("GET", f"/v2/team/app/manifests/{IMAGE.digest}")] = manifest(other.manifest, OCI_MANIFEST)
    make_rule(client, f"{evil.host}/team/app", "mirror")
    for reference in ("huge", "liar", IMAGE.digest):
        got = client.get(f"/v2/mirror/manifests/{reference}", headers=ACCEPT)
        assert got.status_code in (404, 502), (reference, got.status_code, got.text)
    with dockyard.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(manifests)).scalar_one() == 0


def test_refused_redirect_to_a_forbidden_address(client, dockyard, evil, bystander):
    """Refused. Attack: an allowed upstream redirects a blob to 127.0.0.1 (not allowed), a
    metadata address and a file: URL. Expected: no connection to the bystander, 502, nothing stored."""
    serve_image(evil)
    bystander.routes[("GET", "/steal")] = blob(LAYER.data)
    make_rule(client, f"{evil.host}/team/app", "mirror")
    assert client.get("/v2/mirror/manifests/v1", headers=ACCEPT).status_code == 200
    for location in (
        f"http://{bystander.host}/steal",
        f"http://[::ffff:127.0.0.1]:{bystander.host.rsplit(':', 1)[1]}/steal",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
    ):
        evil.routes[("GET", f"/v2/team/app/blobs/{LAYER.digest}")] = lambda request, location=location: (
            answer(request, 307, b"", {"Location": location})
        )
        got = client.get(f"/v2/mirror/blobs/{LAYER.digest}")
        assert got.status_code == 502, (location, got.text)
    assert bystander.requests == []
    assert not blob_recorded(dockyard, LAYER.digest)


def test_hole_a_failed_pull_tells_the_puller_internal_addresses(client, anonymous, evil, bystander):
    """HOLE (fixed). Attack: as an anonymous puller, make the cache follow an upstream's redirect to an
    internal address and read the 502. Expected: the answer says the upstream failed, not where the
    registry was refused to connect (the reason is logged for the operator)."""
    client.patch("/api/v1/registry", json={"anonymousPullEnabled": True})
    serve_image(evil)
    make_rule(client, f"{evil.host}/team/app", "mirror")
    assert anonymous.get("/v2/mirror/manifests/v1", headers=ACCEPT).status_code == 200
    evil.routes[("GET", f"/v2/team/app/blobs/{LAYER.digest}")] = lambda request: answer(
        request, 307, b"", {"Location": f"http://{bystander.host}/steal"}
    )
    got = anonymous.get(f"/v2/mirror/blobs/{LAYER.digest}")
    assert got.status_code == 502
    message = got.json()["errors"][0]["message"]
    assert "127.0.0.1" not in message, message
    assert "loopback" not in message, message
    assert bystander.requests == []


def test_hole_an_import_writes_into_a_cache_target(client, evil):
    """HOLE (fixed). Attack: a Contributor imports into a cache rule's target repository (pushes there
    are refused). Expected: the import is refused up front with DENIED."""
    make_rule(client, f"{evil.host}/team/*", "hub/*")
    refused = client.post(
        "/api/v1/imports", json={"source": f"{evil.host}/team/app:v1", "targetTags": ["hub/app:v1"]}
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["errors"][0]["code"] == "DENIED"
    allowed = client.post(
        "/api/v1/imports", json={"source": f"{evil.host}/team/app:v1", "targetTags": ["own/app:v1"]}
    )
    assert allowed.status_code == 202, allowed.text


def test_refused_credentials_never_follow_a_redirect_to_another_host(client, evil, bystander, settings):
    """Refused. Attack: the upstream asks for Basic credentials (a credential set's), then redirects
    the blob to another origin (a presigned-URL look-alike) it controls. Expected: the other origin
    gets no Authorization header."""
    other = EvilUpstream("127.0.0.2")  # same address, another port: another origin
    try:
        serve_image(evil)

        def needs_basic(handler):
            def guarded(request) -> None:
                if not request.headers.get("Authorization", "").startswith("Basic "):
                    answer(request, 401, b"", {"WWW-Authenticate": 'Basic realm="evil"'})
                else:
                    handler(request)

            return guarded

        for key, handler in list(evil.routes.items()):
            evil.routes[key] = needs_basic(handler)
        evil.routes[("GET", f"/v2/team/app/blobs/{LAYER.digest}")] = needs_basic(
            lambda request: answer(request, 307, b"", {"Location": f"{other.url}/presigned"})
        )
        other.routes[("GET", "/presigned")] = blob(LAYER.data)
        created = client.post(
            "/api/v1/credential-sets",
            json={"name": "evil-creds", "loginServer": evil.host, "username": "u", "password": "s3cret-pw"},
        )
        assert created.status_code == 201, created.text
        make_rule(client, f"{evil.host}/team/app", "mirror", cred="evil-creds")
        assert client.get("/v2/mirror/manifests/v1", headers=ACCEPT).status_code == 200
        got = client.get(f"/v2/mirror/blobs/{LAYER.digest}")
        assert got.status_code == 200
        assert got.content == LAYER.data
        assert [h for m, p, h in other.requests if "Authorization" in h or "authorization" in h] == []
        assert other.paths() == ["/presigned"]
    finally:
        other.close()


def test_hole_flooding_a_missing_tag_costs_an_upstream_request_each(client, anonymous, evil):
    """HOLE (fixed). Attack: with anonymous pull on, pull the same missing tag 20 times. Expected:
    the upstream is asked once within a short window, not 20 times."""
    client.patch("/api/v1/registry", json={"anonymousPullEnabled": True})
    make_rule(client, f"{evil.host}/team/*", "hub/*")
    for _ in range(20):
        assert anonymous.get("/v2/hub/app/manifests/missing", headers=ACCEPT).status_code == 404
    asked = [p for p in evil.paths("GET") if p.endswith("/manifests/missing")]
    assert len(asked) <= 2, len(asked)


def test_refused_wildcard_names_cannot_escape_the_source_prefix(client, anonymous, evil):
    """Refused. Attack: anonymous pulls of ``hub/../secret``, ``hub/%2e%2e/secret``, ``hub%2F..%2Fx``
    and ``hub/a/../../x`` under a rule ``team/*`` → ``hub/*``. Expected: never an upstream request
    outside ``/v2/team/``."""
    client.patch("/api/v1/registry", json={"anonymousPullEnabled": True})
    make_rule(client, f"{evil.host}/team/*", "hub/*")
    for name in (
        "hub/../secret",
        "hub/%2e%2e/secret",
        "hub%2F..%2Fsecret",
        "hub/a/../../secret",
        "hub//secret",
    ):
        got = anonymous.get(f"/v2/{name}/manifests/v1", headers=ACCEPT)
        assert got.status_code in (400, 401, 404), (name, got.status_code)
    assert all(p.startswith("/v2/team/") for p in evil.paths() if p != "/v2/"), evil.paths()


def test_refused_pushes_into_a_cache_target_by_every_route(client, evil):
    """Refused. Attacks on a cache target: start an upload, a cross-repository mount, a monolithic
    POST ?digest=, a manifest PUT by tag and by digest. Expected: 403 DENIED each."""
    push_manifest(client, "elsewhere", "v1", make_artifact("a/b", b"x").manifest, OCI_MANIFEST)
    make_rule(client, f"{evil.host}/team/app", "mirror")
    data = b"payload"
    attempts = [
        client.post("/v2/mirror/blobs/uploads/"),
        client.post("/v2/mirror/blobs/uploads/", params={"mount": sha256(b"{}"), "from": "elsewhere"}),
        client.post("/v2/mirror/blobs/uploads/", params={"digest": sha256(data)}, content=data),
        client.put("/v2/mirror/manifests/v1", content=IMAGE.manifest, headers={"Content-Type": OCI_MANIFEST}),
        client.put(
            f"/v2/mirror/manifests/{IMAGE.digest}",
            content=IMAGE.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        ),
    ]
    assert [(a.status_code, error_codes(a)) for a in attempts] == [(403, ["DENIED"])] * len(attempts)


# =================================================================================================
# B. SSRF THROUGH IMPORT SOURCES AND CACHE RULES
# =================================================================================================

FORBIDDEN_HOSTS = [
    "127.0.0.1:{port}",
    "localhost:{port}",
    "2130706433:{port}",  # decimal 127.0.0.1
    "0177.0.0.1:{port}",  # octal
    "0x7f.0.0.1:{port}",  # hexadecimal
    "127.1:{port}",  # short form
    "[::ffff:127.0.0.1]:{port}",  # IPv4-mapped IPv6
    "[::1]:{port}",
    "169.254.169.254",
    "metadata.google.internal",
]


@pytest.mark.parametrize("host", FORBIDDEN_HOSTS)
def test_refused_import_from_a_forbidden_address(client, dockyard, bystander, host):
    """Refused. Attack: an import whose source is loopback / metadata in some spelling. Expected: the
    import fails naming the refusal (or the source is invalid), and the bystander gets nothing."""
    source = host.format(port=bystander.host.rsplit(":", 1)[1]) + "/team/app:v1"
    created = client.post("/api/v1/imports", json={"source": source, "targetTags": ["stolen:v1"]})
    if created.status_code == 400:
        return  # the source itself is refused
    assert created.status_code == 202, created.text
    dockyard.runtime.run_jobs()
    found = client.get(f"/api/v1/imports/{created.json()['id']}").json()
    assert found["status"] == "failed", found
    assert bystander.requests == []


@pytest.mark.parametrize("host", FORBIDDEN_HOSTS[:7])
def test_refused_cache_rule_towards_a_forbidden_address(client, anonymous, bystander, host):
    """Refused. Attack: a Contributor's cache rule towards loopback in some spelling, then an anonymous
    pull. Expected: the rule is invalid or the pull fails (502/400/404), the bystander gets nothing."""
    client.patch("/api/v1/registry", json={"anonymousPullEnabled": True})
    server = host.format(port=bystander.host.rsplit(":", 1)[1])
    bystander.routes[("GET", "/v2/team/app/manifests/v1")] = manifest(IMAGE.manifest, OCI_MANIFEST)
    body = {"name": "ssrf-rule", "sourceRepository": f"{server}/team/app", "targetRepository": "mirror"}
    created = client.post("/api/v1/cache-rules", json=body)
    if created.status_code == 400:
        return
    assert created.status_code == 201, created.text
    got = anonymous.get("/v2/mirror/manifests/v1", headers=ACCEPT)
    assert got.status_code in (400, 404, 502), got.text
    assert bystander.requests == []


# =================================================================================================
# C. WHO MAY DO WHAT, AND WHO MAY READ THE SECRETS
# =================================================================================================


def scoped_token(client, name: str) -> dict[str, str]:
    scope_map = client.post(
        "/api/v1/scope-maps",
        json={
            "name": f"{name}-map",
            "actions": {"mirror": ["content/read", "content/write", "content/delete"]},
        },
    )
    assert scope_map.status_code == 201, scope_map.text
    created = client.post("/api/v1/tokens", json={"name": name, "scopeMap": f"{name}-map"})
    assert created.status_code == 201, created.text
    return basic(name, created.json()["credentials"][0]["value"])


def test_refused_management_routes_by_role(client, anonymous, evil):
    """Refused. Attack: every data-plane role, a repository-scoped token, bad and no credentials
    (anonymous pull on) on the new management routes. Expected: reads need Reader, writes
    Contributor; everything else 401/403."""
    client.patch("/api/v1/registry", json={"anonymousPullEnabled": True})
    make_rule(client, f"{evil.host}/team/app", "mirror")
    callers = {
        "none": {},
        "wrong": basic(ADMIN_USERNAME, "wrong-password"),
        "token": scoped_token(client, "mirror-token"),
        **{role: create_user(client, role.lower(), role) for role in ("AcrPull", "AcrPush", "AcrDelete")},
        "Reader": create_user(client, "reader", "Reader"),
        "Contributor": create_user(client, "contrib", "Contributor"),
    }
    reads = [
        "/api/v1/cache-rules",
        "/api/v1/cache-rules/evil-rule",
        "/api/v1/credential-sets",
        "/api/v1/imports",
    ]
    for who, headers in callers.items():
        for path in reads:
            status = anonymous.get(path, headers=headers).status_code
            expected = 200 if who in ("Reader", "Contributor") else (401, 403)
            assert status == expected if isinstance(expected, int) else status in expected, (
                who,
                path,
                status,
            )
        writes = [
            anonymous.post("/api/v1/imports", headers=headers, json={"source": f"{evil.host}/a/b:v1"}),
            anonymous.post(
                "/api/v1/credential-sets",
                headers=headers,
                json={"name": f"set-{who.lower()}", "loginServer": "x.io", "username": "u", "password": "p"},
            ),
            anonymous.patch(
                "/api/v1/cache-rules/evil-rule", headers=headers, json={"credentialSetName": None}
            ),
            anonymous.delete("/api/v1/cache-rules/evil-rule", headers=headers)
            if who != "Contributor"
            else anonymous.get("/api/v1/cache-rules/evil-rule", headers=headers),
        ]
        for response in writes:
            if who == "Contributor":
                assert response.status_code in (200, 201, 202), (who, response.text)
            else:
                assert response.status_code in (401, 403), (who, response.request.url, response.status_code)


def test_refused_readers_never_see_a_password(client, anonymous, dockyard, evil):
    """Refused. Attack: a Reader looks for a credential set's and an import's password in every
    answer it may read: the sets, the imports, the audit log. Expected: neither password anywhere."""
    reader = create_user(client, "reader", "Reader")
    created = client.post(
        "/api/v1/credential-sets",
        json={"name": "secret-set", "loginServer": "docker.io", "username": "u", "password": "CRED-PW-123"},
    )
    assert created.status_code == 201
    client.patch("/api/v1/credential-sets/secret-set", json={"password": "CRED-PW-456"})
    queued = client.post(
        "/api/v1/imports",
        json={"source": f"{evil.host}/team/app:v1", "username": "u", "password": "IMPORT-PW-789"},
    )
    assert queued.status_code == 202
    seen = [
        anonymous.get(path, headers=reader).text
        for path in (
            "/api/v1/credential-sets",
            "/api/v1/credential-sets/secret-set",
            "/api/v1/imports",
            f"/api/v1/imports/{queued.json()['id']}",
            "/api/v1/audit",
            "/api/v1/events",
        )
    ]
    with dockyard.db.read() as conn:
        jobs = json.dumps(
            [dict(r._mapping) for r in conn.execute(sa.text("SELECT payload FROM jobs"))], default=str
        )
    for secret in ("CRED-PW-123", "CRED-PW-456", "IMPORT-PW-789"):
        assert all(secret not in text for text in seen), secret
        assert secret not in jobs


def demand_basic(evil: EvilUpstream) -> None:
    """Make every route of ``evil`` (and /v2/) answer 401 with a Basic challenge until it gets one."""

    def guarded(handler):
        def handle(request) -> None:
            if not request.headers.get("Authorization", "").startswith("Basic "):
                answer(request, 401, b"", {"WWW-Authenticate": 'Basic realm="evil"'})
            else:
                handler(request)

        return handle

    evil.routes[("GET", "/v2/")] = lambda request: answer(request, 200, b"{}")
    for key, handler in list(evil.routes.items()):
        evil.routes[key] = guarded(handler)


def authorizations(evil: EvilUpstream) -> list[str]:
    return [h[k] for _m, _p, h in evil.requests for k in h if k.lower() == "authorization"]


def test_hole_a_contributor_sends_a_credential_set_to_a_host_of_their_choice(client, evil):
    """HOLE (closed; medium). Attack: a Contributor detaches the admin's rule from its Docker Hub
    credential set, moves the set's loginServer to their own host without giving the password, makes
    a rule for that host with the set and pulls through it: the host got ``Basic corp-bot:<PAT>``.
    Expected: a new loginServer without username and password is refused (400), so no rule for another
    host can use the set and the host never sees an Authorization header."""
    serve_image(evil, "x/y", "latest")
    demand_basic(evil)
    admin_set = {"name": "hubcreds", "loginServer": "docker.io", "username": "corp-bot"}
    created = client.post("/api/v1/credential-sets", json={**admin_set, "password": "UPSTREAM-SECRET-PAT"})
    assert created.status_code == 201, created.text
    make_rule(client, "docker.io/library/ubuntu", "ubuntu", name="hubrule", cred="hubcreds")
    contributor = create_user(client, "contrib", "Contributor")
    detached = client.patch(
        "/api/v1/cache-rules/hubrule", headers=contributor, json={"credentialSetName": None}
    )
    assert detached.status_code == 200, detached.text
    for partial in ({}, {"username": "corp-bot"}, {"password": "other"}):
        moved = client.patch(
            "/api/v1/credential-sets/hubcreds",
            headers=contributor,
            json={"loginServer": evil.host, **partial},
        )
        assert moved.status_code == 400, (partial, moved.text)
        assert error_codes(moved) == ["INVALID_REQUEST"]
        assert "username and password" in moved.json()["errors"][0]["message"]
    assert client.get("/api/v1/credential-sets/hubcreds").json()["loginServer"] == "registry-1.docker.io"
    evil_rule = {
        "name": "evilrule",
        "sourceRepository": f"{evil.host}/x/y",
        "targetRepository": "evil/y",
        "credentialSetName": "hubcreds",
    }
    refused = client.post("/api/v1/cache-rules", headers=contributor, json=evil_rule)
    assert refused.status_code == 400, refused.text
    make_rule(client, f"{evil.host}/x/y", "evil/y", name="evilrule")
    assert (
        client.patch("/api/v1/cache-rules/evilrule", json={"credentialSetName": "hubcreds"}).status_code
        == 400
    )
    client.get("/v2/evil/y/manifests/latest", headers=ACCEPT)
    assert evil.requests  # the host was asked, anonymously
    assert authorizations(evil) == []
    # the set's own login server, spelt another way, is no move; a move with new credentials is fine
    same = client.patch("/api/v1/credential-sets/hubcreds", json={"loginServer": "index.docker.io"})
    assert same.status_code == 200, same.text
    given = {"loginServer": "registry.example:5000", "username": "other-bot", "password": "OTHER-PW"}
    assert client.patch("/api/v1/credential-sets/hubcreds", json=given).status_code == 200


def test_hole_a_rule_stored_with_another_hosts_credential_set_sends_it_there(client, dockyard, evil):
    """HOLE (closed; defence in depth). Attack: a rule stored (before the checks, or by a direct
    write) with a credential set for another login server, then a pull through it: the upstream
    client got the set's password for the rule's host. Expected: the pull is refused, the host sees
    no Authorization header."""
    serve_image(evil)
    demand_basic(evil)
    body = {"name": "hubcreds", "loginServer": "docker.io", "username": "corp-bot", "password": "PAT-XYZ"}
    assert client.post("/api/v1/credential-sets", json=body).status_code == 201
    from dockyard.cache.models import cache_rules, credential_sets
    from dockyard.db import utcnow

    now = utcnow()

    def insert(conn) -> None:
        cred_id = conn.execute(
            sa.select(credential_sets.c.id).where(credential_sets.c.name == "hubcreds")
        ).scalar_one()
        conn.execute(
            cache_rules.insert().values(
                name="stale-rule",
                source_repo=f"{evil.host}/team/app",
                target_repo="mirror",
                credential_set_id=cred_id,
                created_at=now,
                updated_at=now,
            )
        )

    dockyard.db.run_write(insert)
    dockyard.service("cache").config.forget()
    pulled = client.get("/v2/mirror/manifests/v1", headers=ACCEPT)
    assert pulled.status_code == 403, pulled.text
    assert authorizations(evil) == []


def test_hole_a_rule_host_no_url_parser_takes_is_a_500_for_every_pull(client, anonymous, dockyard):
    """HOLE (closed). Attack: a cache rule on ``0177.0.0.1:5000`` (the grammar took it; httpx refuses
    it as an IPv4 address), then an anonymous pull of its target: an unhandled InvalidURL, 500.
    Expected: the rule is refused (400); one stored before the check is skipped, not a 500."""
    body = {
        "name": "octal-rule",
        "sourceRepository": "0177.0.0.1:5000/team/app",
        "targetRepository": "mirror",
    }
    refused = client.post("/api/v1/cache-rules", json=body)
    assert refused.status_code == 400, refused.text
    from dockyard.cache.models import cache_rules
    from dockyard.db import utcnow

    now = utcnow()
    dockyard.db.run_write(
        lambda conn: conn.execute(
            cache_rules.insert().values(
                name="octal-rule",
                source_repo=body["sourceRepository"],
                target_repo="mirror",
                created_at=now,
                updated_at=now,
            )
        )
    )
    dockyard.service("cache").config.forget()
    client.patch("/api/v1/registry", json={"anonymousPullEnabled": True})
    assert anonymous.get("/v2/mirror/manifests/v1", headers=ACCEPT).status_code == 404
