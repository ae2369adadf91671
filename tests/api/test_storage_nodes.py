"""The registry on the object-shaped BlobStore: uploads that move between nodes, remote stores, redirects.

``GuardedStore`` wraps the test's blob store (filesystem, S3 or Azure) to act like an object
store: it can refuse to be read, hand out locations and redirects, and records every call made
while a database transaction was open on the calling thread (there must be none on a non-local
store).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

import dockyard.app
from dockyard.access.services import bootstrap
from dockyard.app import Dockyard, build, create_app
from dockyard.registry.models import blobs, uploads
from dockyard.storage import BlobStore, LocalFile, Redirect, StorageError
from dockyard.storage.factory import create_blob_store
from tests.support.auth import ADMIN
from tests.support.images import make_image, sha256
from tests.support.registry import error_codes, push_image
from tests.support.stores import upload_leftovers

MiB = 1024 * 1024
DATA = bytes(range(256)) * (5 * MiB // 256 + 7)  # 5 MiB and a bit


class GuardedStore:
    """The test's own blob store (any driver), dressed up for tests: it can pretend to be remote,
    refuse reads, hand out redirects and (filesystem only) locations, and it records every call
    made while a database transaction was open on the calling thread."""

    def __init__(self, inner: BlobStore, *, local=None, readable=True, redirect_to=None, locations=False):
        self.inner = inner
        self.local = inner.local if local is None else local
        self.readable = readable
        self.redirect_to = redirect_to
        self.locations = locations
        self.in_transaction = threading.local()
        self.calls_in_transactions: list[str] = []
        self.opened_with_digest: list[str | None] = []
        self.deleted: list[tuple[str, str | None]] = []
        self.reads: list[str] = []
        self.read_lengths: list[int | None] = []
        self.sourced: list[str] = []
        #: Bytes ``read`` answers instead of the stored ones (a store copy gone bad), by digest.
        self.rotten: dict[str, bytes] = {}

    def watch(self, engine: sa.Engine) -> None:
        """Track, per thread, whether a transaction is open on ``engine``."""

        def begin(conn: sa.Connection) -> None:  # an AUTOCOMMIT lookup is no transaction
            autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
            self.in_transaction.open = not autocommit

        sa.event.listen(engine, "begin", begin)
        for name in ("commit", "rollback"):
            sa.event.listen(engine, name, lambda _conn: setattr(self.in_transaction, "open", False))

    def _called(self, name: str) -> None:
        if getattr(self.in_transaction, "open", False):
            self.calls_in_transactions.append(name)

    def stat(self, digest, *, location=None):
        self._called("stat")
        return self.inner.stat(digest, location=self._real(location))

    def read(self, digest, offset=0, length=None, *, location=None):
        self._called("read")
        self.reads.append(digest)
        self.read_lengths.append(length)
        if digest in self.rotten:
            end = None if length is None else offset + length
            return iter([self.rotten[digest][offset:end]])
        if not self.readable:
            raise AssertionError("this node must not read blob data")
        return self.inner.read(digest, offset, length, location=self._real(location))

    def source(self, digest, *, location=None, redirect=False, expires=1200):
        self._called("source")
        self.sourced.append(digest)
        if not self.readable:
            raise AssertionError("this node must not read blob data")
        if redirect and self.redirect_to:
            return Redirect(f"{self.redirect_to}/{digest}?expires={expires}")
        if not self.local:
            return None
        return self.inner.source(digest, location=self._real(location))

    def put(self, digest, data):
        self._called("put")
        self.inner.put(digest, data)

    def delete(self, digest, *, location=None):
        self._called("delete")
        self.deleted.append((digest, location))
        if self.locations and location is not None:
            return False  # a made-up location: nothing to delete
        return self.inner.delete(digest, location=location)

    def list_blobs(self, cursor=None, limit=1000):
        return self.inner.list_blobs(cursor, limit)

    def open_upload(self, upload_id, state, size, *, digest=None):
        self._called("open_upload")
        self.opened_with_digest.append(digest)
        return self.inner.open_upload(upload_id, state, size, digest=digest)

    def commit_upload(self, upload_id, state, digest, size):
        self._called("commit_upload")
        location = self.inner.commit_upload(upload_id, state, digest, size)
        return f"objects/{upload_id}" if self.locations else location

    def abort_upload(self, upload_id, state):
        self._called("abort_upload")
        self.inner.abort_upload(upload_id, state)

    def expire_uploads(self, older_than, is_live):
        self._called("expire_uploads")
        return self.inner.expire_uploads(older_than, is_live)

    def _real(self, location):
        return None if self.locations else location


@pytest.fixture
def node(settings, monkeypatch) -> Iterator:
    """Builds extra app instances (nodes) on the test's database and blob store."""
    built: list[Dockyard] = []
    clients: list[TestClient] = []

    def make(store_options=None, **setting_changes) -> tuple[TestClient, Dockyard, GuardedStore]:
        node_settings = settings.model_copy(update=setting_changes)
        store = GuardedStore(create_blob_store(settings), **(store_options or {}))
        monkeypatch.setattr(dockyard.app, "create_blob_store", lambda _settings: store)
        parts = build(node_settings)
        monkeypatch.undo()
        store.watch(parts.db.engine)
        bootstrap(node_settings, parts.access)
        built.append(parts)
        client = TestClient(create_app(node_settings, parts, background_jobs=False), headers=ADMIN)
        clients.append(client)
        return client.__enter__(), parts, store

    yield make
    for client in clients:
        client.__exit__(None, None, None)
    for parts in built:
        parts.db.dispose()


def _hash_state(parts: Dockyard, location: str) -> tuple[int, bytes | None]:
    with parts.db.read() as conn:
        row = conn.execute(
            sa.select(uploads.c.size, uploads.c.hash_state).where(uploads.c.id == location.rsplit("/", 1)[1])
        ).one()
    return row.size, row.hash_state


def test_an_upload_continued_on_another_node_resumes_the_digest_from_the_database(client, dockyard, node):
    other, _other_parts, other_store = node({"readable": False})
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert client.patch(location, content=DATA[:1000]).status_code == 202  # small: one transaction
    assert client.patch(location, content=iter([DATA[1000 : 2 * MiB]])).status_code == 202  # streamed
    size, state = _hash_state(dockyard, location)
    assert size == 2 * MiB
    assert state is not None
    assert state[:4] == b"DKRH"
    # The other node never saw this upload: its digest can only come from the recorded state.
    assert other.patch(location, content=DATA[2 * MiB : 2 * MiB + 500]).status_code == 202
    assert client.patch(location, content=iter([DATA[2 * MiB + 500 : 4 * MiB]])).status_code == 202
    done = other.put(location, params={"digest": sha256(DATA)}, content=iter([DATA[4 * MiB :]]))
    assert done.status_code == 201, done.text
    assert client.get(f"/v2/team/app/blobs/{sha256(DATA)}").content == DATA
    assert other_store.opened_with_digest  # it wrote, and never read (reads raise on that node)


def test_a_wrong_digest_is_still_caught_on_another_node(client, node):
    other, _, _ = node({"readable": False})
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert client.patch(location, content=DATA[:3000]).status_code == 202
    wrong = other.put(location, params={"digest": sha256(DATA[:2999] + b"!")})
    assert wrong.status_code == 400
    assert error_codes(wrong) == ["DIGEST_INVALID"]


def test_a_session_without_a_hash_state_is_dropped_never_misverified(client, dockyard, node):
    other, _, _ = node()
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert client.patch(location, content=DATA[:3000]).status_code == 202
    with dockyard.db.write() as conn:  # a session recorded before hash states existed
        conn.execute(uploads.update().values(hash_state=None))
    refused = other.put(location, params={"digest": sha256(DATA[:3000])})
    assert refused.status_code == 404
    assert error_codes(refused) == ["BLOB_UPLOAD_UNKNOWN"]
    assert other.get(location).status_code == 404
    assert upload_leftovers(dockyard.store) == 0
    assert client.get(f"/v2/team/app/blobs/{sha256(DATA[:3000])}").status_code == 404


def test_a_chunked_upload_cannot_be_verified_with_another_algorithm(client):
    import hashlib

    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert client.patch(location, content=DATA[:3000]).status_code == 202
    answer = client.put(location, params={"digest": "sha512:" + hashlib.sha512(DATA[:3000]).hexdigest()})
    assert answer.status_code == 400
    assert "hashed with sha256" in answer.json()["errors"][0]["message"]


def test_a_redirecting_registry_answers_307(node):
    redirecting, _, _ = node({"redirect_to": "https://blobs.example"}, storage_redirect=True)
    plain, _, _ = node({"redirect_to": "https://blobs.example"})
    location = redirecting.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert (
        redirecting.put(location, params={"digest": sha256(DATA[:100])}, content=DATA[:100]).status_code
        == 201
    )
    url = f"/v2/team/app/blobs/{sha256(DATA[:100])}"
    answer = redirecting.get(url, follow_redirects=False)
    assert answer.status_code == 307
    assert answer.headers["location"] == f"https://blobs.example/{sha256(DATA[:100])}?expires=1200"
    assert answer.headers["docker-content-digest"] == sha256(DATA[:100])
    assert redirecting.head(url).status_code == 200
    served = plain.get(url, follow_redirects=False)  # the setting is off: the bytes come from Dockyard
    assert served.status_code == 200
    assert served.content == DATA[:100]


def test_a_redirect_is_signed_once_and_handed_out_again_while_fresh(node):
    client, _, store = node({"redirect_to": "https://blobs.example"}, storage_redirect=True)
    first, second = DATA[:100], DATA[100:200]
    for data in (first, second):
        location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
        assert client.put(location, params={"digest": sha256(data)}, content=data).status_code == 201
    urls = []
    for data in (first, first, second, first):
        answer = client.get(f"/v2/team/app/blobs/{sha256(data)}", follow_redirects=False)
        assert answer.status_code == 307
        urls.append(answer.headers["location"])
    assert urls[0] == urls[1] == urls[3] != urls[2]
    assert store.sourced == [sha256(first), sha256(second)]  # one signing per blob
    # the repository's hold on the blob and the caller's right are still asked every time
    assert client.get(f"/v2/team/other/blobs/{sha256(first)}", follow_redirects=False).status_code == 404
    anonymous = client.get(f"/v2/team/app/blobs/{sha256(first)}", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert client.delete(f"/v2/team/app/blobs/{sha256(first)}").status_code == 202
    assert client.get(f"/v2/team/app/blobs/{sha256(first)}", follow_redirects=False).status_code == 404


def test_a_remote_store_is_never_called_inside_a_transaction(node):
    client, _parts, store = node({"local": False})
    digest = sha256(DATA)
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert client.patch(location, content=DATA[:1000]).status_code == 202  # small: leased, not in one tx
    assert client.patch(location, content=DATA[1000 : 2 * MiB]).status_code == 202
    assert client.put(location, params={"digest": digest}, content=DATA[2 * MiB :]).status_code == 201
    small = DATA[:5000]
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert client.put(location, params={"digest": sha256(small)}, content=small).status_code == 201
    whole = DATA[: 3 * MiB]
    store.opened_with_digest.clear()
    answer = client.post("/v2/team/app/blobs/uploads/", params={"digest": sha256(whole)}, content=whole)
    assert answer.status_code == 201
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert (
        client.put(location, params={"digest": sha256(DATA[: 2 * MiB])}, content=DATA[: 2 * MiB]).status_code
        == 201
    )
    assert store.opened_with_digest == [sha256(whole), sha256(DATA[: 2 * MiB])]  # straight to their place
    image = make_image("remote")
    push_image(client, "team/app", image, "v1")  # reads the config blob for its platform
    full = client.get(f"/v2/team/app/blobs/{digest}")
    assert full.status_code == 200
    assert full.content == DATA
    part = client.get(f"/v2/team/app/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == DATA[10:20]
    assert store.calls_in_transactions == []


# Made-up locations over the filesystem; the object stores' real locations: tests/unit/storage.
@pytest.mark.filesystem_only
def test_a_second_copy_of_a_blob_at_another_location_is_deleted(node):
    client, parts, store = node({"locations": True})
    first_location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    second_location = client.post("/v2/team/other/blobs/uploads/").headers["location"]
    for location in (first_location, second_location):
        assert client.patch(location, content=DATA[:3000]).status_code == 202
    for location in (first_location, second_location):
        assert client.put(location, params={"digest": sha256(DATA[:3000])}).status_code == 201
    first_id, second_id = first_location.rsplit("/", 1)[1], second_location.rsplit("/", 1)[1]
    with parts.db.read() as conn:
        recorded = conn.execute(sa.select(blobs.c.location)).scalars().all()
    assert recorded == [f"objects/{first_id}"]
    assert store.deleted == [(sha256(DATA[:3000]), f"objects/{second_id}")]
    blob = parts.registry.blobs.stat("team/other", sha256(DATA[:3000]))
    assert blob.location == f"objects/{first_id}"
    assert isinstance(parts.store.source(blob.digest, location=blob.location), LocalFile)


def test_a_missing_blob_file_is_blob_unknown(client, dockyard):
    gone = b"gone" * (20 * 1024)  # above the small-blob memory's item size: it must be read
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert client.put(location, params={"digest": sha256(gone)}, content=gone).status_code == 201
    assert dockyard.store.delete(sha256(gone))
    url = f"/v2/team/app/blobs/{sha256(gone)}"
    for headers in ({}, {"Range": "bytes=1-2"}):  # whole (sent as a file, or streamed) and ranged
        answer = client.get(url, headers=headers)
        assert answer.status_code == 404, headers
        assert error_codes(answer) == ["BLOB_UNKNOWN"]
    with pytest.raises(StorageError):
        b"".join(dockyard.store.read(sha256(gone)))


def _push_blob(client: TestClient, data: bytes) -> str:
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert client.put(location, params={"digest": sha256(data)}, content=data).status_code == 201
    return f"/v2/team/app/blobs/{sha256(data)}"


def test_a_small_blob_streamed_from_the_store_is_read_once_then_served_from_memory(node):
    pusher, _, _ = node()
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    big = bytes(range(256)) * (65 * 4)  # 65 KiB: above the item size, streamed every time
    url, big_url = _push_blob(pusher, config), _push_blob(pusher, big)
    reader, _, store = node({"local": False})  # a store that streams (as S3 and Azure Blob do)
    first = reader.get(url)
    assert first.status_code == 200
    assert first.content == config
    assert first.headers["content-length"] == str(len(config))
    assert store.reads == [sha256(config)]
    assert reader.get(url).content == config
    ranged = reader.get(url, headers={"Range": "bytes=2-5"})
    assert ranged.status_code == 206
    assert ranged.content == config[2:6]
    assert ranged.headers["Content-Range"] == f"bytes 2-5/{len(config)}"
    assert store.reads == [sha256(config)]  # both answered from memory
    assert reader.get(big_url).content == big
    assert reader.get(big_url).content == big
    assert store.reads == [sha256(config), sha256(big), sha256(big)]


def test_bytes_that_do_not_match_their_digest_are_never_served_or_kept(node):
    pusher, _, _ = node()
    data = b"the real bytes"
    url = _push_blob(pusher, data)
    reader, _, store = node({"local": False})
    reader_raises = TestClient(reader.app, headers=ADMIN, raise_server_exceptions=False)
    store.rotten[sha256(data)] = b"rotten bytes!!" + bytes(1024)  # the store's copy went bad
    for _ in range(2):
        answer = reader_raises.get(url)
        assert answer.status_code == 500  # not 200 with bytes that are not the digest's
        assert b"rotten" not in answer.content
    assert store.reads == [sha256(data)] * 2  # never kept: each GET reads the store again
    assert store.read_lengths == [len(data)] * 2  # and never more than the recorded size
    del store.rotten[sha256(data)]  # repaired: served, and kept from now on
    assert reader.get(url).content == data
    assert reader.get(url).content == data
    assert store.reads == [sha256(data)] * 3


def test_the_small_blob_memory_can_be_turned_off(node):
    pusher, _, _ = node()
    url = _push_blob(pusher, b"small")
    reader, _, store = node({"local": False}, small_blob_cache_bytes=0)
    assert reader.get(url).content == b"small"
    assert reader.get(url).content == b"small"
    assert store.reads == [sha256(b"small")] * 2


def test_a_blob_in_memory_is_served_only_where_the_repository_still_holds_it(node):
    pusher, _, _ = node()
    data = b'{"secret":1}'
    url = _push_blob(pusher, data)
    location = pusher.post("/v2/team/other/blobs/uploads/").headers["location"]
    assert pusher.put(location, params={"digest": sha256(b"x")}, content=b"x").status_code == 201
    reader, _, store = node({"local": False})
    assert reader.get(url).content == data  # now in the reader's memory
    other = url.replace("team/app", "team/other")
    for answer in (reader.get(other), reader.head(other)):  # a repository that does not hold it
        assert answer.status_code == 404
    assert reader.delete(url).status_code == 202
    answer = reader.get(url)
    assert answer.status_code == 404
    assert error_codes(answer) == ["BLOB_UNKNOWN"]
    assert store.reads == [sha256(data)]
