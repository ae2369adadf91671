"""Azure-specific behaviour of the Azure Blob driver, against a real Azurite."""

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from azure.storage.blob import ContainerClient

from dockyard.config import Settings
from dockyard.storage import StorageError
from dockyard.storage.azure import AzureBlobStore, block_id, from_url, parse_url
from dockyard.storage.factory import create_blob_store
from tests.support.azurite import ACCOUNT, KEY, Azurite
from tests.support.images import sha256

MIB = 1024 * 1024
DATA = bytes(range(256)) * (7 * MIB // 256 + 5)  # 7 MiB and a bit


class Requests:
    """Counts the HTTP requests a store sends (method and path, query dropped)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, request) -> None:
        with self._lock:
            self.sent.append((request.http_request.method, request.http_request.url.split("?")[0]))

    def take(self) -> list[tuple[str, str]]:
        with self._lock:
            sent, self.sent = self.sent, []
        return sent


@pytest.fixture
def prefix(azure_prefixes: Iterator[str]) -> str:
    return next(azure_prefixes)


@pytest.fixture
def counted(azurite: Azurite, prefix: str) -> tuple[AzureBlobStore, Requests]:
    requests = Requests()
    store = from_url(
        f"azure://{azurite.container}/{prefix}",
        connection_string=azurite.connection_string(),
        env={},
        block_size=4 * MIB,
        raw_request_hook=requests,
    )
    return store, requests


def _upload(store: AzureBlobStore, upload_id: str, state: str | None, size: int, data: bytes, **kw) -> str:
    writer = store.open_upload(upload_id, state, size, **kw)
    for start in range(0, len(data), MIB):
        writer.write(data[start : start + MIB])
    return writer.close()


def test_a_monolithic_upload_with_a_known_digest_takes_two_requests(counted):
    store, requests = counted
    data = DATA[: 3 * MIB]
    digest = sha256(data)
    state = _upload(store, "mono", None, 0, data, digest=digest)
    assert store.commit_upload("mono", state, digest, len(data)) is None
    sent = requests.take()
    assert [method for method, _ in sent] == ["PUT", "PUT"]  # Put Block, Put Block List
    assert all(path.endswith(f"/blobs/sha256/{digest.split(':')[1]}") for _, path in sent)
    assert b"".join(store.read(digest)) == data


def test_a_monolithic_upload_with_an_unknown_digest_takes_three_requests(counted):
    store, requests = counted
    data = DATA[: 3 * MIB]
    state = _upload(store, "mono2", None, 0, data)
    location = store.commit_upload("mono2", state, sha256(data), len(data))
    sent = requests.take()
    # Put Block; Get Blob Properties (is the blob held already?); Put Block List
    assert [method for method, _ in sent] == ["PUT", "HEAD", "PUT"]
    assert location is not None
    assert location.endswith("/located/mono2")
    assert b"".join(store.read(sha256(data), location=location)) == data


def test_large_writes_are_split_into_blocks_and_small_ones_buffered(counted, azurite):
    store, requests = counted
    writer = store.open_upload("split", None, 0)
    writer.write(DATA)  # one 7 MiB write: one 4 MiB block staged, the rest buffered
    assert [method for method, _ in requests.take()] == ["PUT"]
    writer.write(b"tail")
    state = writer.close()
    location = store.commit_upload("split", state, sha256(DATA + b"tail"), len(DATA) + 4)
    blocks = store.container.get_blob_client(location).get_block_list("committed")[0]
    assert [block.size for block in blocks] == [4 * MIB, len(DATA) + 4 - 4 * MIB]
    assert {len(block.id) for block in blocks} == {len(block_id("split", 0, 0))}


def test_a_retried_part_reuses_the_block_ids_of_the_dead_one(counted, prefix):
    store, _ = counted
    first = _upload(store, "retry", None, 0, DATA[:MIB])
    _upload(store, "retry", first, MIB, b"x" * (2 * MIB))  # closed, never recorded
    name = f"{prefix}/located/retry"
    blob = store.container.get_blob_client(name)
    before = sorted(block.id for block in blob.get_block_list("uncommitted")[1])
    state = _upload(store, "retry", first, MIB, DATA[MIB : 3 * MIB])
    after = sorted(block.id for block in blob.get_block_list("uncommitted")[1])
    assert after == before == sorted([block_id("retry", 0, 0), block_id("retry", 1, 0)])
    location = store.commit_upload("retry", state, sha256(DATA[: 3 * MIB]), 3 * MIB)
    assert b"".join(store.read(sha256(DATA[: 3 * MIB]), location=location)) == DATA[: 3 * MIB]


def test_a_wrong_account_key_is_refused(azurite, prefix):
    wrong = KEY[:-8] + "AAAAAA=="
    store = from_url(
        f"azure://{azurite.container}/{prefix}", connection_string=azurite.connection_string(wrong)
    )
    with pytest.raises(StorageError, match="AuthorizationFailure"):
        store.stat(sha256(b"anything"))  # not "missing": readiness must see the failure
    with pytest.raises(StorageError):
        store.put(sha256(b"x"), b"x")


def test_a_missing_container_is_an_error_not_a_missing_blob(azurite):
    store = from_url("azure://no-such-container/p", connection_string=azurite.connection_string(), env={})
    with pytest.raises(StorageError, match="ContainerNotFound"):
        store.stat(sha256(b"anything"))


def test_the_redirect_is_a_read_only_sas_url(azure_store_factory):
    store = azure_store_factory()
    digest = sha256(b"signed")
    store.put(digest, b"signed")
    source = store.source(digest, redirect=True, expires=60)
    assert source is not None
    assert "sig=" in source.url
    assert "sp=r" in source.url
    assert httpx.get(source.url).content == b"signed"
    assert httpx.put(source.url, content=b"evil", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 403
    assert httpx.delete(source.url).status_code == 403
    assert b"".join(store.read(digest)) == b"signed"
    assert store.source(digest) is None  # no redirect asked: stream read


def test_no_redirect_without_the_account_key(azurite, azure_store_factory):
    store = azure_store_factory()
    keyless = AzureBlobStore(store.container, "p", account_key=None)
    assert keyless.source(sha256(b"x"), redirect=True) is None


def test_uploads_of_one_digest_do_not_mix_their_blocks(azure_store_factory):
    """Two uploads staging on the same blob name: a client lying about the digest cannot win."""
    store = azure_store_factory()
    digest = sha256(DATA)
    honest = _upload(store, "honest", None, 0, DATA, digest=digest)
    _upload(store, "liar", None, 0, b"y" * len(DATA), digest=digest)  # staged, never committed
    assert store.commit_upload("honest", honest, digest, len(DATA)) is None
    assert b"".join(store.read(digest)) == DATA


def test_committing_an_upload_of_a_held_blob_keeps_the_blob(azure_store_factory):
    store = azure_store_factory()
    digest = sha256(b"held")
    store.put(digest, b"held")
    etag = store.container.get_blob_client(store._blob_name(digest)).get_blob_properties().etag
    state = _upload(store, "again", None, 0, b"held", digest=digest)
    assert store.commit_upload("again", state, digest, 4) is None
    store.abort_upload("again", state)  # leaves the blob alone
    assert store.container.get_blob_client(store._blob_name(digest)).get_blob_properties().etag == etag


def test_expiry_leaves_committed_uploads_and_counts_only_what_it_dropped(azure_store_factory):
    store = azure_store_factory()
    state = _upload(store, "done", None, 0, b"committed")
    location = store.commit_upload("done", state, sha256(b"committed"), 9)
    _upload(store, "abandoned", None, 0, b"staged")
    assert store.expire_uploads(time.time() + 60, lambda _: False) == 1
    assert store.stat(sha256(b"committed"), location=location) == 9
    assert store.expire_uploads(time.time() + 60, lambda _: False) == 0


def test_a_commit_racing_the_expiry_of_its_upload_is_not_deleted(azure_store_factory):
    """Expiry discards only a blob that has no committed content, by ETag: a commit that won stays."""
    store = azure_store_factory()
    state = _upload(store, "late", None, 0, b"late bytes")
    location = store.commit_upload("late", state, sha256(b"late bytes"), 10)
    assert store._drop_uncommitted(location) is False
    assert store.stat(sha256(b"late bytes"), location=location) == 10


def test_states_and_locations_are_checked(azure_store_factory):
    store = azure_store_factory()
    with pytest.raises(StorageError):
        store.open_upload("u", "not json", 0)
    with pytest.raises(StorageError):
        store.open_upload("u", '{"v": 9, "parts": []}', 0)
    with pytest.raises(StorageError):
        store.open_upload("u", '{"v": 1, "digest": null, "parts": [[1, 5]]}', 4)  # size mismatch
    with pytest.raises(StorageError):
        store.stat(sha256(b"x"), location="elsewhere/located/u")
    state = _upload(store, "two", None, 0, b"abc", digest=sha256(b"abc"))
    with pytest.raises(StorageError):
        store.commit_upload("two", state, sha256(b"abd"), 3)  # staged for another digest


def test_reads_past_the_end_fail(azure_store_factory):
    store = azure_store_factory()
    digest = sha256(b"short")
    store.put(digest, b"short")
    with pytest.raises(StorageError):
        b"".join(store.read(digest, 3, 10))
    with pytest.raises(StorageError):
        b"".join(store.read(digest, 9))
    assert b"".join(store.read(digest, 5)) == b""


# -- configuration ---------------------------------------------------------------------------


def test_parse_url():
    assert parse_url("azure://registry/some/prefix/") == ("registry", "some/prefix")
    assert parse_url("azure://registry") == ("registry", "")
    for bad in (
        "s3://bucket/x",
        "azure://UPPER/x",
        "azure://ab/x",
        "azure://ok-name/a/../b",
        "azure://a--b/x",
    ):
        with pytest.raises(ValueError, match=r"azure|container|prefix"):
            parse_url(bad)


def test_credentials_come_from_settings_then_the_environment(azurite, prefix):
    url = f"azure://{azurite.container}/{prefix}"
    env = {
        "AZURE_STORAGE_ACCOUNT": ACCOUNT,
        "AZURE_STORAGE_KEY": KEY,
        "AZURE_STORAGE_BLOB_ENDPOINT": azurite.endpoint,
    }
    from_env = from_url(url, env=env)
    from_env.put(sha256(b"env"), b"env")
    from_settings = from_url(url, account=ACCOUNT, key=KEY, endpoint=azurite.endpoint, env={})
    assert from_settings.stat(sha256(b"env")) == 3
    from_connection = from_url(url, env={"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string()})
    assert from_connection.stat(sha256(b"env")) == 3
    with pytest.raises(ValueError, match="credentials"):
        from_url(url, env={})


def test_the_factory_builds_the_azure_store(azurite, prefix, tmp_path):
    settings = Settings(
        data_dir=tmp_path,
        storage=f"azure://{azurite.container}/{prefix}",
        azure_connection_string=azurite.connection_string(),
    )
    store = create_blob_store(settings)
    assert isinstance(store, AzureBlobStore)
    store.put(sha256(b"factory"), b"factory")
    assert (
        ContainerClient.from_connection_string(azurite.connection_string(), azurite.container)
        .get_blob_client(f"{prefix}/blobs/sha256/{sha256(b'factory').split(':')[1]}")
        .exists()
    )


def test_stat_is_one_request(counted):
    store, requests = counted
    assert store.stat(sha256(b"x")) is None
    assert [method for method, _ in requests.take()] == ["HEAD"]


def test_one_store_serves_many_threads(azure_store_factory):
    store = azure_store_factory()
    blobs = {sha256(bytes([n]) * 100_000): bytes([n]) * 100_000 for n in range(16)}
    errors: list[BaseException] = []

    def work(digest: str, data: bytes) -> None:
        try:
            store.put(digest, data)
            assert b"".join(store.read(digest)) == data
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=item) for item in blobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert all(store.stat(digest) == 100_000 for digest in blobs)
