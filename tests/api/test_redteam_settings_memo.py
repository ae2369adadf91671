"""Red-team tests of the upload start's settings memo ("this repository is not write-locked").

Commits 2c3ac6a and 191d5a9: an upload POST answers from the content cache once the process has
seen the repository writable; migration 0015 notifies ``dockyard_settings`` on every change of a
repository's row but the push's ``tag_version``/``updated_at`` bump; the cache keeps an index of
each repository's keys. Each test here is an attack that passes when the registry holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from dockyard.access.services import bootstrap
from dockyard.app import Dockyard, build, create_app
from dockyard.changes import SETTINGS, ContentCache, libpq_url
from dockyard.config import Settings
from dockyard.registry.services.uploads import WRITABLE
from tests.support.auth import ADMIN, ADMIN_USERNAME, access_token, bearer
from tests.support.images import make_image, sha256
from tests.support.nodes import kill_listeners, listener_stalled, settled
from tests.support.polling import eventually
from tests.support.registry import error_codes, push_blob, push_image

# -- helpers -----------------------------------------------------------------------------------


def memo(node: Dockyard, repository: str) -> bool:
    """Whether ``node``'s cache holds the writable memo (read directly: ``get`` answers None off
    the event loop on SQLite)."""
    return (repository, WRITABLE) in node.registry.cache._entries


def assert_denied(response: Any) -> None:
    assert response.status_code == 403, (response.status_code, response.text)
    assert error_codes(response) == ["DENIED"], response.text


def assert_refused(response: Any) -> None:
    """401 or 403 with an OCI error body (a caller without push rights)."""
    assert response.status_code in (401, 403), (response.status_code, response.text)
    assert response.json()["errors"][0]["code"] in ("UNAUTHORIZED", "DENIED"), response.text


def lock(client: TestClient, repository: str, writable: bool) -> None:
    answer = client.patch(f"/acr/v1/{repository}", json={"writeEnabled": writable})
    assert answer.status_code == 200, answer.text


def blob_visible(client: TestClient, repository: str, digest: str) -> bool:
    status = client.head(f"/v2/{repository}/blobs/{digest}").status_code
    assert status in (200, 404), status
    return status == 200


def data_of(seed: str, size: int = 64) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(size)


def index_consistent(cache: ContentCache) -> None:
    """The per-repository key index names exactly the cached entries."""
    with cache._lock:
        indexed = {(name, key) for name, keys in cache._keys.items() for key in keys}
        assert indexed == set(cache._entries)
        assert all(cache._keys.values())  # no empty sets kept


@pytest.fixture
def app_with(settings: Settings) -> Iterator[Callable[..., tuple[Dockyard, TestClient]]]:
    """Builds an app on the test's backend with some settings changed (several may share it)."""
    with contextlib.ExitStack() as stack:

        def make(**update: Any) -> tuple[Dockyard, TestClient]:
            changed = settings.model_copy(update=update)
            parts = build(changed)
            stack.callback(parts.db.dispose)
            bootstrap(changed, parts.access)
            client = stack.enter_context(
                TestClient(create_app(changed, parts, background_jobs=False), headers=ADMIN)
            )
            if changed.content_cache_entries:
                eventually(lambda: parts.registry.cache.enabled, "the cache to be switched on")
            return parts, client

        yield make


# -- 1. a lock set on another node just before a POST, PUT or manifest PUT here ---------------


@pytest.mark.postgresql_only
def test_a_late_lock_notice_lets_nothing_become_visible(pg_client, pg_node, pg_other, monkeypatch):
    """The worst case of the memo: node B's lock notice has not reached node A at all (stalled
    listener, socket reported quiet). Every write path on A must still be refused whole."""
    name = "late/app"
    base = make_image("late-base")
    push_image(pg_client, name, base, tag="v1")
    settled(pg_node)
    assert pg_client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    assert memo(pg_node, name)

    monkeypatch.setattr(pg_node.registry.cache, "unapplied", lambda: False)
    with listener_stalled(pg_node, monkeypatch):
        lock(pg_other, name, False)
        assert memo(pg_node, name)  # A still believes the repository writable
        started = pg_client.post(f"/v2/{name}/blobs/uploads/")
        assert started.status_code == 202  # the admitted late allow: the POST writes nothing

        whole = data_of("late-monolithic")
        closed = pg_client.put(started.headers["location"], params={"digest": sha256(whole)}, content=whole)
        assert_denied(closed)

        chunked = pg_client.post(f"/v2/{name}/blobs/uploads/")
        assert chunked.status_code == 202
        part = data_of("late-chunked", 4096)
        patched = pg_client.patch(
            chunked.headers["location"], content=part, headers={"Content-Type": "application/octet-stream"}
        )
        assert_denied(patched)
        assert pg_client.put(chunked.headers["location"], params={"digest": sha256(part)}).status_code in (
            403,
            404,
        )

        single = data_of("late-single")
        assert_denied(
            pg_client.post(f"/v2/{name}/blobs/uploads/", params={"digest": sha256(single)}, content=single)
        )

        elsewhere = push_blob(pg_other, "late/source", data_of("late-mounted"))
        mounted = pg_client.post(
            f"/v2/{name}/blobs/uploads/", params={"mount": elsewhere, "from": "late/source"}
        )
        assert mounted.status_code in (202, 403), mounted.text
        if mounted.status_code == 403:
            assert error_codes(mounted) == ["DENIED"]

        other = make_image("late-other")
        manifest = pg_client.put(
            f"/v2/{name}/manifests/v2", content=other.manifest, headers={"Content-Type": other.media_type}
        )
        assert manifest.status_code in (400, 403, 404), manifest.text
        moved = pg_client.put(
            f"/v2/{name}/manifests/v1-again", content=base.manifest, headers={"Content-Type": base.media_type}
        )
        assert_denied(moved)

        for client in (pg_client, pg_other):
            for digest in (sha256(whole), sha256(part), sha256(single), elsewhere):
                assert not blob_visible(client, name, digest), digest
            assert client.get(f"/v2/{name}/manifests/v2").status_code == 404
            assert client.get(f"/v2/{name}/manifests/v1-again").status_code == 404
        assert pg_other.get(f"/v2/{name}/tags/list").json()["tags"] == ["v1"]
    settled(pg_node)
    assert not memo(pg_node, name)
    assert_denied(pg_client.post(f"/v2/{name}/blobs/uploads/"))


@pytest.mark.postgresql_only
def test_a_lock_committed_between_the_read_and_the_memo_store_is_not_remembered(
    pg_client, pg_node, pg_other, monkeypatch
):
    """The POST reads "writable", then node B locks and A's listener applies the notice, then the
    POST stores its memo: the memo must be refused (generation), so the next POST is refused."""
    name = "race/app"
    push_image(pg_client, name, make_image("race"), tag="v1")
    lock(pg_client, name, True)  # no change of the row, but drops this node's memo
    settled(pg_node)
    assert not memo(pg_node, name)
    policy = pg_node.registry.uploads._locks
    original = policy.refuse_if_write_locked
    raced: list[str] = []

    def read_then_lock(conn, repository):
        original(conn, repository)  # reads "writable"
        if not raced:
            raced.append(repository)
            lock(pg_other, repository, False)
            settled(pg_node)  # A's listener has applied B's notice before the memo is stored

    monkeypatch.setattr(policy, "refuse_if_write_locked", read_then_lock)
    assert pg_client.post(f"/v2/{name}/blobs/uploads/").status_code == 202  # it read before the lock
    assert raced == [name]
    assert not memo(pg_node, name)
    assert_denied(pg_client.post(f"/v2/{name}/blobs/uploads/"))


@pytest.mark.postgresql_only
def test_a_lock_set_on_another_node_refuses_the_manifest_put_and_blob_put_here(pg_client, pg_node, pg_other):
    name = "farput/app"
    push_image(pg_client, name, make_image("farput"), tag="v1")
    image = make_image("farput-2")
    for blob in image.blobs:
        push_blob(pg_client, name, blob.data)
    started = pg_client.post(f"/v2/{name}/blobs/uploads/")
    assert started.status_code == 202
    lock(pg_other, name, False)
    data = data_of("farput-blob")
    assert_denied(pg_client.put(started.headers["location"], params={"digest": sha256(data)}, content=data))
    pushed = pg_client.put(
        f"/v2/{name}/manifests/v2", content=image.manifest, headers={"Content-Type": image.media_type}
    )
    assert_denied(pushed)
    assert pg_other.get(f"/v2/{name}/manifests/v2").status_code == 404
    assert not blob_visible(pg_other, name, sha256(data))
    eventually(lambda: pg_client.post(f"/v2/{name}/blobs/uploads/").status_code == 403, "the lock to reach A")


# -- 2. delete and recreate; lock, unlock, lock quickly; lock there, unlock here --------------


@pytest.mark.postgresql_only
def test_delete_recreate_and_a_lock_on_another_node_are_seen(pg_client, pg_node, pg_other):
    name = "reborn/app"
    push_image(pg_client, name, make_image("reborn-1"), tag="v1")
    assert pg_client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    settled(pg_node)
    assert memo(pg_node, name)
    assert pg_other.delete(f"/acr/v1/{name}").status_code in (200, 202, 204)
    settled(pg_node)
    assert not memo(pg_node, name)  # the row's deletion notifies settings
    # A memo for a repository that does not exist, then B creates it and locks it.
    assert pg_client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    assert memo(pg_node, name)
    push_image(pg_other, name, make_image("reborn-2"), tag="v2")
    settled(pg_node)
    assert pg_client.post(f"/v2/{name}/blobs/uploads/").status_code == 202  # recreated: writable
    lock(pg_other, name, False)
    settled(pg_node)
    assert not memo(pg_node, name)
    assert_denied(pg_client.post(f"/v2/{name}/blobs/uploads/"))
    data = data_of("reborn-refused")
    assert_denied(pg_client.post(f"/v2/{name}/blobs/uploads/", params={"digest": sha256(data)}, content=data))
    assert not blob_visible(pg_client, name, sha256(data))
    # Unlocked here (locally), it is writable here and there at once: no stale refusal.
    lock(pg_client, name, True)
    assert pg_client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    assert pg_other.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    push_blob(pg_client, name, data)
    assert blob_visible(pg_other, name, sha256(data))


@pytest.mark.postgresql_only
def test_quick_lock_unlock_lock_on_another_node_ends_locked_here(pg_client, pg_node, pg_other):
    name = "flicker/app"
    push_image(pg_client, name, make_image("flicker"), tag="v1")
    for round_ in range(5):
        assert pg_client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
        lock(pg_other, name, False)
        lock(pg_other, name, True)
        assert pg_client.post(f"/v2/{name}/blobs/uploads/").status_code == 202  # never a stale refusal
        lock(pg_other, name, False)
        started = pg_client.post(f"/v2/{name}/blobs/uploads/")  # may be a late allow
        assert started.status_code in (202, 403), started.text
        if started.status_code == 202:
            data = data_of(f"flicker-{round_}")
            assert_denied(
                pg_client.put(started.headers["location"], params={"digest": sha256(data)}, content=data)
            )
            assert not blob_visible(pg_other, name, sha256(data))
        settled(pg_node)
        assert not memo(pg_node, name)
        assert_denied(pg_client.post(f"/v2/{name}/blobs/uploads/"))
        lock(pg_client, name, True)  # unlocked here: no wait
        assert pg_client.post(f"/v2/{name}/blobs/uploads/").status_code == 202


@pytest.mark.postgresql_only
def test_concurrent_lock_flapping_never_lets_a_blob_into_a_locked_repository(pg_client, pg_node, pg_other):
    """Node B flips the lock while A pushes blobs: every blob A got 201 for went in while the
    repository was writable, and after the last lock nothing more goes in."""
    name = "flap/app"
    push_image(pg_client, name, make_image("flap"), tag="v1")
    stop = threading.Event()
    errors: list[BaseException] = []

    def flapper() -> None:
        try:
            for _ in range(20):
                lock(pg_other, name, False)
                lock(pg_other, name, True)
            lock(pg_other, name, False)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=flapper)
    thread.start()
    statuses: list[int] = []
    count = 0
    while not stop.is_set():
        data = data_of(f"flap-{count}")
        count += 1
        started = pg_client.post(f"/v2/{name}/blobs/uploads/")
        statuses.append(started.status_code)
        if started.status_code == 202:
            closed = pg_client.put(started.headers["location"], params={"digest": sha256(data)}, content=data)
            statuses.append(closed.status_code)
            if closed.status_code == 403:
                assert error_codes(closed) == ["DENIED"]
    thread.join(30)
    assert not errors, errors
    assert set(statuses) <= {201, 202, 403}, statuses
    settled(pg_node)
    assert_denied(pg_client.post(f"/v2/{name}/blobs/uploads/"))
    data = data_of("flap-after")
    assert_denied(pg_client.post(f"/v2/{name}/blobs/uploads/", params={"digest": sha256(data)}, content=data))
    assert not blob_visible(pg_other, name, sha256(data))


# -- 3. auth: the memo is per repository, not per caller --------------------------------------


def test_a_primed_memo_grants_no_push_to_callers_without_push_rights(client, anonymous, dockyard):
    name, other = "authmemo/app", "authmemo/other"
    push_image(client, name, make_image("authmemo"), tag="v1")
    push_image(client, other, make_image("authmemo-other"), tag="v1")
    for repository in (name, other):
        assert client.post(f"/v2/{repository}/blobs/uploads/").status_code == 202
        assert client.post(f"/v2/{repository}/blobs/uploads/").status_code == 202
    push_token = access_token(client, ADMIN, f"repository:{name}:push,pull")
    pull_token = access_token(client, ADMIN, f"repository:{name}:pull")
    tokens = dockyard.access.tokens
    expired = tokens._claims(ADMIN_USERNAME, "admin", "access_token", lifetime=-60)
    expired["access"] = [{"type": "repository", "name": name, "actions": ["push", "pull"]}]
    header, payload, signature = push_token.split(".")
    forged_payload = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    callers = {
        "anonymous": {},
        "pull only": bearer(pull_token),
        "expired": bearer(tokens._sign(expired)),
        "bad signature": bearer(f"{header}.{payload}.{signature[::-1]}"),
        "forged payload": bearer(f"{header}.{forged_payload}.{signature}"),
        "garbage": bearer("not.a.jwt"),
        "wrong password": {"Authorization": "Basic ZG9ja3lhcmQ6d3Jvbmc="},
    }
    for what, headers in callers.items():
        for repository in (name, other):
            refused = anonymous.post(f"/v2/{repository}/blobs/uploads/", headers=headers)
            assert refused.status_code in (401, 403), (what, repository, refused.status_code)
            assert_refused(refused)
    # A push token for one repository starts uploads there, never in the other (memo primed).
    assert anonymous.post(f"/v2/{name}/blobs/uploads/", headers=bearer(push_token)).status_code == 202
    assert_refused(anonymous.post(f"/v2/{other}/blobs/uploads/", headers=bearer(push_token)))
    other_token = access_token(client, ADMIN, f"repository:{other}:push")
    assert anonymous.post(f"/v2/{other}/blobs/uploads/", headers=bearer(other_token)).status_code == 202
    assert_refused(anonymous.post(f"/v2/{name}/blobs/uploads/", headers=bearer(other_token)))
    # And a session id issued to the admin gives nobody else its closing PUT.
    started = client.post(f"/v2/{name}/blobs/uploads/")
    data = data_of("authmemo-stolen")
    stolen = anonymous.put(
        started.headers["location"], params={"digest": sha256(data)}, content=data, headers=bearer(pull_token)
    )
    assert_refused(stolen)
    assert not blob_visible(client, name, sha256(data))


# -- 4. the storage quota ---------------------------------------------------------------------

LIMIT = 5000


def test_past_the_quota_a_post_is_refused_even_with_the_memo(app_with):
    parts, client = app_with(tiers={"Premium": {"storage_bytes": LIMIT}})
    name = "quota/app"
    push_blob(client, name, data_of("quota-1", 3000))
    assert client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    assert client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    push_blob(client, name, data_of("quota-2", 2000))  # exactly at the quota now
    if not parts.db.is_sqlite:  # (SQLite empties the cache on any commit)
        assert memo(parts, name)  # the push kept the memo: the POST is answered from memory
    refused = client.post(f"/v2/{name}/blobs/uploads/")
    assert_denied(refused)
    assert "storage quota exceeded" in refused.json()["errors"][0]["message"]
    # another repository, never seen: refused by the database path too
    assert_denied(client.post("/v2/quota/fresh/blobs/uploads/"))


# -- 5. cache capacity pressure ---------------------------------------------------------------


def test_a_tiny_cache_under_evictions_and_invalidations_stays_true(app_with):
    parts, client = app_with(content_cache_entries=6)
    cache = parts.registry.cache
    rng = random.Random(7)
    names = [f"small/r{i}" for i in range(12)]
    locked: set[str] = set()
    images = {name: make_image(f"small-{name}") for name in names}
    for name in names:
        push_image(client, name, images[name], tag="v1")
    for step in range(150):
        name = rng.choice(names)
        action = rng.randrange(7)
        if action == 0:
            writable = name in locked
            lock(client, name, writable)
            (locked.discard if writable else locked.add)(name)
        elif action == 1:
            answer = client.get(f"/v2/{name}/manifests/v1")
            assert answer.status_code == 200, answer.text
        elif action == 2:
            assert client.head(f"/v2/{name}/blobs/{images[name].config.digest}").status_code == 200
        elif action == 3 and name not in locked:
            push_blob(client, name, data_of(f"small-{step}"))
        else:
            started = client.post(f"/v2/{name}/blobs/uploads/")
            if name in locked:
                assert_denied(started)
                data = data_of(f"small-locked-{step}")
                refused = client.post(
                    f"/v2/{name}/blobs/uploads/", params={"digest": sha256(data)}, content=data
                )
                assert_denied(refused)
                assert not blob_visible(client, name, sha256(data))
            else:
                assert started.status_code == 202, (step, name, started.text)
        assert len(cache) <= 6
        index_consistent(cache)
    for name in names:
        expected = 403 if name in locked else 202
        assert client.post(f"/v2/{name}/blobs/uploads/").status_code == expected, name


def test_a_flood_of_posts_to_new_names_keeps_memory_bounded(app_with):
    """A registry-wide pusher POSTs to many made-up names: each is remembered writable (no row
    exists), but the cache stays within its capacity and its index within its entries."""
    parts, client = app_with(content_cache_entries=32)
    cache = parts.registry.cache
    for i in range(300):
        name = f"flood/{uuid.uuid4().hex[:12]}/x{i}"
        assert client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    assert len(cache) <= 32
    assert len(cache._keys) <= 32
    index_consistent(cache)
    # odd but valid names, one of them at the maximum length
    odd = ["a" * 120 + "/" + "b.c__d---e" * 13, "x/y-z/0.9__1/a", "a" * 255]
    for name in odd:
        assert len(name) <= 255
        push_blob(client, name, data_of(f"odd-{name}"))
        assert client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
        lock(client, name, False)
        assert_denied(client.post(f"/v2/{name}/blobs/uploads/"))
        lock(client, name, True)
        assert client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    too_long = "a" * 256
    assert client.post(f"/v2/{too_long}/blobs/uploads/").status_code in (400, 404)
    assert len(cache) <= 32
    index_consistent(cache)


def test_concurrent_cache_mutation_keeps_the_index_consistent():
    """Threads put, invalidate and invalidate content on a tiny cache at once: no KeyError, the
    index names exactly the entries, and a settings key dropped by ``invalidate`` stays dropped."""
    cache = ContentCache(5)
    cache.set_enabled(True)
    errors: list[BaseException] = []
    names = [f"r{i}" for i in range(4)]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for i in range(4000):
                name = rng.choice(names)
                action = rng.randrange(6)
                if action == 0:
                    cache.invalidate(name)
                elif action == 1:
                    cache.invalidate_content(rng.choice([name, "*"]))
                elif action == 2:
                    cache.put(name, WRITABLE, True, cache.generation())
                else:
                    cache.put(name, ("b", i % 7), i, cache.generation())
                cache.get(name, WRITABLE)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(cache) <= 5
    index_consistent(cache)
    for name in names:
        cache.invalidate(name)
        assert cache.get(name, WRITABLE) is None
    cache.put("r0", WRITABLE, True, cache.generation())
    cache.put("r0", ("b", 1), 1, cache.generation())
    cache.invalidate_content("*")
    assert cache.get("r0", WRITABLE) is True
    assert cache.get("r0", ("b", 1)) is None
    cache.invalidate("*")
    assert len(cache) == 0
    assert cache._keys == {}
    # a stale put (generation taken before an invalidation) is refused
    generation = cache.generation()
    cache.invalidate("r1")
    cache.put("r1", WRITABLE, True, generation)
    assert cache.get("r1", WRITABLE) is None
    assert (SETTINGS, "writable") == WRITABLE


# -- 6. the trigger (PostgreSQL) --------------------------------------------------------------


@pytest.mark.postgresql_only
def test_which_repository_changes_notify_settings(pg_settings, postgres_url):
    conninfo = libpq_url(sa.engine.make_url(postgres_url))
    with (
        psycopg.connect(conninfo, autocommit=True) as writer,
        psycopg.connect(conninfo, autocommit=True) as listening,
    ):
        for name in ("trig/a", "trig/b", "trig/c"):
            writer.execute(
                "INSERT INTO repositories (name, created_at, updated_at) VALUES (%s, now(), now())", (name,)
            )
        listening.execute("LISTEN dockyard_settings")
        steps = [
            # a push's bump: no settings notice
            (
                "UPDATE repositories SET tag_version = tag_version + 1, updated_at = now() "
                "WHERE name = 'trig/a'"
            ),
            ("UPDATE repositories SET tag_version = tag_version + 1 WHERE name LIKE 'trig/%'"),
            # a bump and a lock in one statement
            (
                "UPDATE repositories SET tag_version = tag_version + 1, updated_at = now(), "
                "write_enabled = false WHERE name = 'trig/a'"
            ),
            ("UPDATE repositories SET write_enabled = true WHERE name = 'trig/a'"),
            ("UPDATE repositories SET read_enabled = false, tag_version = 9 WHERE name = 'trig/b'"),
            ("UPDATE repositories SET immutable_tags = true WHERE name = 'trig/c'"),
            ("UPDATE repositories SET immutable_exemptions = '[\"latest\"]' WHERE name = 'trig/c'"),
            ("UPDATE repositories SET list_enabled = false WHERE name IN ('trig/a', 'trig/b')"),
            ("UPDATE repositories SET name = 'trig/renamed' WHERE name = 'trig/c'"),
            ("DELETE FROM repositories WHERE name = 'trig/renamed'"),
            ("DELETE FROM repositories WHERE name = 'trig/b'"),
        ]
        for statement in steps:
            writer.execute(statement)
        writer.execute("SELECT pg_notify('dockyard_settings', 'the-end')")
        seen: list[str] = []
        for notice in listening.notifies(timeout=10):
            seen.append(notice.payload)
            if notice.payload == "the-end":
                break
    list_notices = sorted(seen[5:7])
    assert seen[:5] == ["trig/a", "trig/a", "trig/b", "trig/c", "trig/c"], seen
    assert list_notices == ["trig/a", "trig/b"], seen
    assert sorted(seen[7:9]) == ["trig/c", "trig/renamed"], seen
    assert seen[9:] == ["trig/renamed", "trig/b", "the-end"], seen


@pytest.mark.postgresql_only
def test_pushes_and_pulls_keep_the_memo_on_every_node(pg_client, pg_node, pg_other):
    """Content changes (pushes here and there, tag and manifest deletes) keep the memo; it is the
    only thing this feature remembers, and keeping it is what makes the POST cheap."""
    name = "keep/app"
    image = make_image("keep-1")
    push_image(pg_client, name, image, tag="v1")
    assert pg_client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    push_image(pg_other, name, make_image("keep-2"), tag="v2")
    assert pg_other.delete(f"/v2/{name}/manifests/v2").status_code == 202
    settled(pg_node)
    assert memo(pg_node, name)
    # a tag's lock (tag_version bump + tags row): the repository itself is unchanged
    assert pg_other.patch(f"/acr/v1/{name}/_tags/v1", json={"writeEnabled": False}).status_code == 200
    settled(pg_node)
    assert pg_client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    third = make_image("keep-3")
    push_image(pg_client, name, third)  # by digest: the repository is writable
    moved = pg_client.put(
        f"/v2/{name}/manifests/v1", content=third.manifest, headers={"Content-Type": third.media_type}
    )
    assert_denied(moved)  # the tag is locked
    assert pg_other.get(f"/v2/{name}/manifests/v1").headers["docker-content-digest"] == image.digest


@pytest.mark.postgresql_only
def test_a_lock_set_while_the_listener_is_cut_off_is_never_answered_from_the_memo(
    pg_client, pg_node, pg_other
):
    """Both nodes' listeners lose their connections, then node B locks: node A must not start an
    upload from a memo that no notice can correct any more."""
    name = "cutoff/app"
    push_image(pg_client, name, make_image("cutoff"), tag="v1")
    settled(pg_node)
    assert pg_client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    assert memo(pg_node, name)
    killed = kill_listeners(pg_node)
    assert killed >= 2
    lock(pg_other, name, False)  # no listener of A hears this
    assert_denied(pg_client.post(f"/v2/{name}/blobs/uploads/"))
    settled(pg_node)  # reconnected
    assert_denied(pg_client.post(f"/v2/{name}/blobs/uploads/"))
    lock(pg_other, name, True)
    eventually(lambda: pg_client.post(f"/v2/{name}/blobs/uploads/").status_code == 202, "the unlock")


# -- SQLite: two processes on one file (tests/api/conftest.py) ----------------------------------


def test_sqlite_a_lock_by_another_process_is_seen_by_the_next_post(sqlite_node, sqlite_other):
    parts, client = sqlite_node
    name = "sqlmemo/app"
    push_image(client, name, make_image("sqlmemo"), tag="v1")
    for _ in range(2):
        assert client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    assert memo(parts, name)  # the memo is used on SQLite too
    started = client.post(f"/v2/{name}/blobs/uploads/")
    assert started.status_code == 202
    lock(sqlite_other, name, False)
    assert_denied(client.post(f"/v2/{name}/blobs/uploads/"))  # no waiting: data_version
    data = data_of("sqlmemo-late")
    assert_denied(client.put(started.headers["location"], params={"digest": sha256(data)}, content=data))
    assert not blob_visible(sqlite_other, name, sha256(data))
    lock(sqlite_other, name, True)
    assert client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    assert sqlite_other.delete(f"/acr/v1/{name}").status_code in (200, 202, 204)
    assert client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    push_blob(sqlite_other, name, data)
    lock(sqlite_other, name, False)
    assert_denied(client.post(f"/v2/{name}/blobs/uploads/"))
