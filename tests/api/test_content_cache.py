"""Hot reads from the in-process content cache, kept true across processes (PostgreSQL and SQLite)."""

import psycopg
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from dockyard.app import Dockyard
from dockyard.changes import SqliteChangeWatch, libpq_url
from dockyard.registry.services.uploads import WRITABLE
from tests.support.auth import ADMIN, access_token, bearer
from tests.support.images import make_image
from tests.support.nodes import kill_listeners, listener_stalled, settled
from tests.support.polling import eventually
from tests.support.registry import push_blob, push_image, sha256


@pytest.fixture
def node(pg_node: Dockyard) -> Dockyard:
    """Node A's services (this file's name for ``pg_node``)."""
    return pg_node


@pytest.fixture
def client(pg_client: TestClient) -> TestClient:
    """Node A's admin client, its listener connected (``pg_client``)."""
    return pg_client


@pytest.fixture
def other_node(pg_other: TestClient) -> TestClient:
    """Node B's admin client (``pg_other``)."""
    return pg_other


def lookups_of(node: Dockyard, monkeypatch) -> list[str]:
    """Every hot lookup ``node`` sends to SQLite from now on (its statement's first table)."""
    seen: list[str] = []
    original = node.db.lookup_row

    def counting(statement, params):
        seen.append(str(statement).split("FROM", 1)[1].split()[0])
        return original(statement, params)

    monkeypatch.setattr(node.db, "lookup_row", counting)
    return seen


def test_sqlite_caches_hot_reads_on_the_event_loop(sqlite_node, monkeypatch):
    parts, client = sqlite_node
    image = make_image("inline")
    push_image(client, "inline/app", image, tag="v1")
    assert client.get("/v2/inline/app/manifests/v1").status_code == 200
    assert client.head(f"/v2/inline/app/blobs/{image.config.digest}").status_code == 200
    assert isinstance(parts.registry.listener, SqliteChangeWatch)
    assert parts.registry.cache.enabled
    assert len(parts.registry.cache) >= 2
    lookups = lookups_of(parts, monkeypatch)
    for _ in range(3):
        answer = client.get("/v2/inline/app/manifests/v1")
        assert answer.headers["docker-content-digest"] == image.digest
        assert client.head(f"/v2/inline/app/blobs/{image.config.digest}").status_code == 200
    assert lookups == []
    assert parts.registry.manifests.reads_inline


def test_sqlite_cache_sees_a_commit_of_another_process_at_once(sqlite_node, sqlite_other, monkeypatch):
    parts, client = sqlite_node
    first, second = make_image("sqlite-1"), make_image("sqlite-2")
    push_image(client, "moving/app", first, tag="latest")
    extra = push_blob(client, "moving/app", b"loose blob")
    assert client.get("/v2/moving/app/manifests/latest").headers["docker-content-digest"] == first.digest
    assert client.head(f"/v2/moving/app/blobs/{extra}").status_code == 200
    push_image(sqlite_other, "moving/app", second, tag="latest")
    lookups = lookups_of(parts, monkeypatch)
    # No waiting: the first read after the other process's commit goes to the database.
    assert client.get("/v2/moving/app/manifests/latest").headers["docker-content-digest"] == second.digest
    assert lookups
    assert sqlite_other.delete(f"/v2/moving/app/blobs/{extra}").status_code == 202
    assert client.head(f"/v2/moving/app/blobs/{extra}").status_code == 404
    assert sqlite_other.delete(f"/v2/moving/app/manifests/{second.digest}").status_code == 202
    assert client.get("/v2/moving/app/manifests/latest").status_code == 404


def test_sqlite_cache_drops_a_row_read_before_a_commit(sqlite_node, sqlite_other):
    """A row read, then a commit elsewhere, then the row stored: the next lookup must not serve it."""
    parts, client = sqlite_node
    first, second = make_image("race-1"), make_image("race-2")
    push_image(client, "race/app", first, tag="v1")
    cache = parts.registry.cache
    generation = cache.generation()  # the reader's token, taken before its (stale) read
    push_image(sqlite_other, "race/app", second, tag="v1")
    assert client.get("/v2/race/app/manifests/v1").headers["docker-content-digest"] == second.digest

    def on_the_loop(work):  # the cache answers only on the event loop's thread
        return client.portal.call(work)

    assert on_the_loop(lambda: parts.registry.manifests.cached("race/app", "v1")).digest == second.digest
    on_the_loop(lambda: cache.put("race/app", ("m", "v1"), "stale", generation))
    assert on_the_loop(lambda: parts.registry.manifests.cached("race/app", "v1")).digest == second.digest
    assert parts.registry.manifests.cached("race/app", "v1") is None  # off the loop: the database


def test_a_repeated_pull_costs_no_query(client, node, statements_of):
    image = make_image("cached")
    push_image(client, "cache/app", image, tag="v1")
    settled(node)  # our own push's notification has arrived: nothing will drop the entries now
    token = bearer(access_token(client, ADMIN, "repository:cache/app:pull"))
    assert client.get("/v2/cache/app/manifests/v1", headers=token).status_code == 200
    assert client.get(f"/v2/cache/app/manifests/{image.digest}", headers=token).status_code == 200
    assert client.head(f"/v2/cache/app/blobs/{image.config.digest}", headers=token).status_code == 200
    with statements_of(node) as statements:
        for _ in range(3):
            answer = client.get("/v2/cache/app/manifests/v1", headers=token)
            assert answer.status_code == 200
            assert answer.headers["docker-content-digest"] == image.digest
            assert client.get(f"/v2/cache/app/manifests/{image.digest}", headers=token).status_code == 200
            assert client.head(f"/v2/cache/app/blobs/{image.config.digest}", headers=token).status_code == 200
    assert statements == []
    assert node.registry.manifests.reads_inline is False


def test_a_tag_moved_by_another_node_is_seen(client, other_node):
    first, second = make_image("first"), make_image("second")
    push_image(client, "moving/app", first, tag="latest")
    assert client.get("/v2/moving/app/manifests/latest").headers["docker-content-digest"] == first.digest
    push_image(other_node, "moving/app", second, tag="latest")
    eventually(
        lambda: (
            client.get("/v2/moving/app/manifests/latest").headers["docker-content-digest"] == second.digest
        ),
        "the other node's tag move to reach this node",
    )


def test_a_tag_moved_by_another_node_is_seen_at_once_even_before_the_listener_runs(
    client, node, other_node, monkeypatch, statements_of
):
    """The client got node A's 201 and asks node B at once: B's listener thread may not have run
    yet (it waits for the GIL); a notice waiting on its socket must keep B off its cache."""
    first, second = make_image("at-once-1"), make_image("at-once-2")
    push_image(other_node, "atonce/app", first, tag="latest")
    settled(node)
    token = bearer(access_token(client, ADMIN, "repository:atonce/app:pull"))

    def latest() -> str:
        answer = client.get("/v2/atonce/app/manifests/latest", headers=token)
        assert answer.status_code == 200
        return answer.headers["docker-content-digest"]

    assert latest() == first.digest
    with statements_of(node) as statements:  # B answers from its cache now
        assert latest() == first.digest
    assert statements == []

    with listener_stalled(node, monkeypatch):
        push_image(other_node, "atonce/app", second, tag="latest")
        eventually(node.registry.listener.unapplied, "the notice to reach node B's socket")
        assert latest() == second.digest
    settled(node)
    assert latest() == second.digest
    with statements_of(node) as statements:  # and caches again once the notice is applied
        assert latest() == second.digest
    assert statements == []


def test_deletes_by_another_node_are_seen(client, node, other_node):
    image = make_image("doomed")
    push_image(client, "doomed/app", image, tag="v1")
    extra = push_blob(client, "doomed/app", b"loose blob")
    settled(node)
    assert client.get(f"/v2/doomed/app/manifests/{image.digest}").status_code == 200
    assert client.head(f"/v2/doomed/app/blobs/{extra}").status_code == 200
    assert node.registry.cache.get("doomed/app", ("b", extra)) is not None
    assert other_node.delete(f"/v2/doomed/app/manifests/{image.digest}").status_code == 202
    assert other_node.delete(f"/v2/doomed/app/blobs/{extra}").status_code == 202
    settled(node)
    assert client.get(f"/v2/doomed/app/manifests/{image.digest}").status_code == 404
    assert client.head(f"/v2/doomed/app/blobs/{extra}").status_code == 404


def test_a_local_write_is_read_back_at_once(client):
    first, second = make_image("mine-1"), make_image("mine-2")
    push_image(client, "mine/app", first, tag="latest")
    assert client.get("/v2/mine/app/manifests/latest").headers["docker-content-digest"] == first.digest
    push_image(client, "mine/app", second, tag="latest")
    assert client.get("/v2/mine/app/manifests/latest").headers["docker-content-digest"] == second.digest
    assert client.delete("/v2/mine/app/manifests/latest").status_code == 202
    assert client.get("/v2/mine/app/manifests/latest").status_code == 404


def test_a_lost_listener_pauses_the_cache_until_it_reconnects(client, node, other_node):
    first, second = make_image("lost-1"), make_image("lost-2")
    push_image(client, "lost/app", first, tag="latest")
    settled(node)
    assert client.get("/v2/lost/app/manifests/latest").status_code == 200
    killed = kill_listeners(node)
    assert killed >= 1  # this node's listener (and the other node's)
    push_image(other_node, "lost/app", second, tag="latest")  # while nobody may be listening
    settled(node)  # the listener is back (it received the sentinel)
    assert client.get("/v2/lost/app/manifests/latest").headers["docker-content-digest"] == second.digest


def test_a_read_lock_is_served_from_no_cache(client, node, other_node):
    """A lock set on one node ends pulls of cached content on every node (the 0004 triggers fire
    on the attribute columns too); on the node that set it, at once."""
    image = make_image("locked")
    push_image(client, "locked/app", image, tag="v1")
    settled(node)
    layer = image.config.digest
    for path in ("manifests/v1", f"manifests/{image.digest}", f"blobs/{layer}"):
        assert client.head(f"/v2/locked/app/{path}").status_code == 200
    assert node.registry.cache.get("locked/app", ("b", layer)) is not None
    assert other_node.patch("/acr/v1/locked/app/_tags/v1", json={"readEnabled": False}).status_code == 200
    settled(node)
    assert client.get("/v2/locked/app/manifests/v1").status_code == 403
    assert client.get(f"/v2/locked/app/manifests/{image.digest}").status_code == 200
    assert other_node.patch("/acr/v1/locked/app", json={"readEnabled": False}).status_code == 200
    settled(node)
    assert client.get(f"/v2/locked/app/manifests/{image.digest}").status_code == 403
    assert client.head(f"/v2/locked/app/blobs/{layer}").status_code == 403
    assert client.patch("/acr/v1/locked/app", json={"readEnabled": True}).status_code == 200
    assert client.head(f"/v2/locked/app/blobs/{layer}").status_code == 200
    assert client.patch("/acr/v1/locked/app/_tags/v1", json={"readEnabled": True}).status_code == 200
    settled(node)
    assert client.get("/v2/locked/app/manifests/v1").status_code == 200
    assert node.registry.cache.get("locked/app", ("m", "v1")) is not None
    assert client.patch("/acr/v1/locked/app/_tags/v1", json={"readEnabled": False}).status_code == 200
    assert client.get("/v2/locked/app/manifests/v1").status_code == 403  # the local change: no wait


def test_sqlite_tag_list_from_the_cache_sees_another_process_tag(sqlite_node, sqlite_other, monkeypatch):
    parts, client = sqlite_node
    image = make_image("listed")
    push_image(client, "listed/app", image, tag="a")
    assert client.get("/v2/listed/app/tags/list").json()["tags"] == ["a"]
    assert client.get("/v2/listed/app/tags/list").json()["tags"] == ["a"]
    queried: list[str] = []
    original = parts.registry.repositories.tag_names
    monkeypatch.setattr(
        parts.registry.repositories,
        "tag_names",
        lambda *args: queried.append("tag_names") or original(*args),
    )
    assert client.get("/v2/listed/app/tags/list?n=1").json()["tags"] == ["a"]
    assert queried == []  # answered from the caches
    push_image(sqlite_other, "listed/app", image, tag="b")
    assert client.get("/v2/listed/app/tags/list").json()["tags"] == ["a", "b"]
    assert queried == ["tag_names"]
    assert sqlite_other.delete("/v2/listed/app/manifests/b").status_code == 202
    assert client.get("/v2/listed/app/tags/list").json()["tags"] == ["a"]


def test_sqlite_a_read_lock_set_by_another_process_ends_cached_pulls(sqlite_node, sqlite_other):
    parts, client = sqlite_node
    image = make_image("sqlite-locked")
    push_image(client, "locked/app", image, tag="v1")
    layer = image.config.digest
    for path in ("manifests/v1", f"manifests/{image.digest}", f"blobs/{layer}"):
        assert client.head(f"/v2/locked/app/{path}").status_code == 200
    assert len(parts.registry.cache) >= 3
    assert sqlite_other.patch("/acr/v1/locked/app/_tags/v1", json={"readEnabled": False}).status_code == 200
    assert client.get("/v2/locked/app/manifests/v1").status_code == 403
    assert client.get(f"/v2/locked/app/manifests/{image.digest}").status_code == 200
    assert sqlite_other.patch("/acr/v1/locked/app", json={"readEnabled": False}).status_code == 200
    assert client.get(f"/v2/locked/app/manifests/{image.digest}").status_code == 403
    assert client.head(f"/v2/locked/app/blobs/{layer}").status_code == 403
    assert client.get("/v2/locked/app/tags/list").status_code == 200  # listing is not reading
    assert sqlite_other.patch("/acr/v1/locked/app", json={"listEnabled": False}).status_code == 200
    assert client.get("/v2/_catalog").json()["repositories"] == []


def test_sqlite_cache_survives_a_new_loop_connection(sqlite_node, sqlite_other):
    """``data_version`` counts per connection: a replaced loop connection must not vouch for
    entries cached before a commit it never saw."""
    parts, client = sqlite_node
    first, second = make_image("epoch-1"), make_image("epoch-2")
    push_image(client, "epoch/app", first, tag="v1")
    assert client.get("/v2/epoch/app/manifests/v1").headers["docker-content-digest"] == first.digest
    assert client.get("/v2/epoch/app/manifests/v1").headers["docker-content-digest"] == first.digest
    client.portal.call(parts.db._inline_connection.close)  # as after a dropped connection
    push_image(sqlite_other, "epoch/app", second, tag="v1")
    assert client.get("/v2/epoch/app/manifests/v1").headers["docker-content-digest"] == second.digest


def test_tag_list_of_a_recreated_repository_is_not_the_deleted_ones(sqlite_node):
    """SQLite reuses the id of the newest row once it is deleted: the tag list's version must
    tell the new repository from the deleted one."""
    _, client = sqlite_node
    image = make_image("recreated")
    push_image(client, "reborn/app", image, tag="old")
    assert client.get("/v2/reborn/app/tags/list").json()["tags"] == ["old"]
    assert client.delete("/acr/v1/reborn/app").status_code in (200, 202, 204)
    push_image(client, "reborn/app", image, tag="new")
    assert client.get("/v2/reborn/app/tags/list").json()["tags"] == ["new"]


def test_a_new_loop_connection_changes_the_data_version(sqlite_node):
    parts, client = sqlite_node

    def versions():
        before = parts.db.data_version()
        parts.db._inline_connection.close()
        return before, parts.db.data_version(), parts.db.data_version()

    before, after, again = client.portal.call(versions)
    assert before is not None
    assert after is not None
    assert after != before  # nothing committed, but the counter is another connection's
    assert again == after
    assert parts.db.data_version() is None  # off the loop's thread


def upload_start(client: TestClient, repository: str, headers: dict[str, str]) -> int:
    return client.post(f"/v2/{repository}/blobs/uploads/", headers=headers).status_code


def test_an_upload_starts_without_a_query_once_the_repository_is_known_writable(
    client, node, other_node, statements_of
):
    push_image(client, "memo/app", make_image("memo-1"), tag="v1")
    token = bearer(access_token(client, ADMIN, "repository:memo/app:push,pull"))
    settled(node)
    assert upload_start(client, "memo/app", token) == 202  # the quota figure is fresh now too
    with statements_of(node) as statements:
        assert [upload_start(client, "memo/app", token) for _ in range(3)] == [202] * 3
    assert statements == []
    # Pushes into it, here and on another node, bump its tag_version: they are no lock change.
    push_image(client, "memo/app", make_image("memo-2"), tag="v2")
    push_image(other_node, "memo/app", make_image("memo-3"), tag="v3")
    settled(node)
    assert node.registry.cache.get("memo/app", WRITABLE) is True
    assert upload_start(client, "memo/app", token) == 202
    with statements_of(node) as statements:
        assert upload_start(client, "memo/app", token) == 202
    assert statements == []


def test_a_write_lock_set_here_refuses_the_next_upload_start_at_once(client, node):
    push_image(client, "herelock/app", make_image("herelock"), tag="v1")
    settled(node)  # the push's own notices, arriving late, would refuse the memo (as they must)
    assert upload_start(client, "herelock/app", ADMIN) == 202
    assert node.registry.cache.get("herelock/app", WRITABLE) is True
    assert client.patch("/acr/v1/herelock/app", json={"writeEnabled": False}).status_code == 200
    refused = client.post("/v2/herelock/app/blobs/uploads/")
    assert refused.status_code == 403
    assert refused.json()["errors"][0]["code"] == "DENIED"
    assert client.patch("/acr/v1/herelock/app", json={"writeEnabled": True}).status_code == 200
    assert upload_start(client, "herelock/app", ADMIN) == 202


def test_a_write_lock_set_on_another_node_refuses_upload_starts_there(client, node, other_node):
    push_image(client, "farlock/app", make_image("farlock"), tag="v1")
    settled(node)
    assert upload_start(client, "farlock/app", ADMIN) == 202
    assert node.registry.cache.get("farlock/app", WRITABLE) is True
    assert other_node.patch("/acr/v1/farlock/app", json={"writeEnabled": False}).status_code == 200
    eventually(
        lambda: upload_start(client, "farlock/app", ADMIN) == 403, "the other node's lock to reach this node"
    )
    assert node.registry.cache.get("farlock/app", WRITABLE) is None
    # A push is refused whole: its closing PUT checks the lock in its own transaction.
    refused = client.post("/v2/farlock/app/blobs/uploads/")
    assert refused.json()["errors"][0]["code"] == "DENIED"
    assert other_node.patch("/acr/v1/farlock/app", json={"writeEnabled": True}).status_code == 200
    eventually(lambda: upload_start(client, "farlock/app", ADMIN) == 202, "the unlock to reach this node")


def test_an_upload_started_before_a_lock_is_refused_by_its_closing_put(client, node, other_node):
    """What the memo may say late (a lock set on another node a moment ago) the closing PUT's
    transaction never does."""
    push_image(client, "latelock/app", make_image("latelock"), tag="v1")
    started = client.post("/v2/latelock/app/blobs/uploads/")
    assert started.status_code == 202
    assert other_node.patch("/acr/v1/latelock/app", json={"writeEnabled": False}).status_code == 200
    data = b"written after the lock"
    closed = client.put(started.headers["location"], params={"digest": sha256(data)}, content=data)
    assert closed.status_code == 403
    assert closed.json()["errors"][0]["code"] == "DENIED"
    assert client.head(f"/v2/latelock/app/blobs/{sha256(data)}").status_code == 404


def test_only_a_change_of_the_repository_row_notifies_settings(client, node, postgres_url):
    """Migration 0015: a push's tag_version bump notifies content only; a lock, both channels."""
    push_image(client, "notify/pushed", make_image("notify-1"), tag="v1")
    push_image(client, "notify/locked", make_image("notify-2"), tag="v1")
    with psycopg.connect(libpq_url(sa.engine.make_url(postgres_url)), autocommit=True) as listening:
        listening.execute("LISTEN dockyard_settings")
        push_image(client, "notify/pushed", make_image("notify-3"), tag="v2")
        assert client.delete("/v2/notify/pushed/manifests/v1").status_code == 202
        assert client.patch("/acr/v1/notify/locked", json={"deleteEnabled": False}).status_code == 200
        assert client.delete("/acr/v1/notify/pushed").status_code == 202
        notices = [n.payload for n in listening.notifies(timeout=10, stop_after=2)]
    # Delivered in commit order: a notice of the pushes would come first.
    assert notices == ["notify/locked", "notify/pushed"]


def test_a_truncate_of_repositories_drops_every_process_memo(client, node, postgres_url):
    """A TRUNCATE fires no row trigger: migration 0015 notifies "*" on both channels for it."""
    push_image(client, "truncated/app", make_image("truncated"), tag="v1")
    settled(node)  # the push's own notices, arriving late, would refuse the memo (as they must)
    assert upload_start(client, "truncated/app", ADMIN) == 202
    assert node.registry.cache.get("truncated/app", WRITABLE) is True
    with psycopg.connect(libpq_url(sa.engine.make_url(postgres_url)), autocommit=True) as listening:
        listening.execute("LISTEN dockyard_settings")
        with node.db.write() as conn:
            conn.execute(sa.text("TRUNCATE repositories CASCADE"))
        notices = [n.payload for n in listening.notifies(timeout=10, stop_after=1)]
    assert notices == ["*"]
    eventually(lambda: node.registry.cache.get("truncated/app", WRITABLE) is None, "the memo to be dropped")
