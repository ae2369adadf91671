"""S3 driver specifics, against the real SeaweedFS of conftest (the contract is in the conformance suite)."""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.awsrequest import AWSResponse
from pydantic import ValidationError

from dockyard.config import Settings
from dockyard.storage import Redirect, StorageError, StorageFull, s3_writer
from dockyard.storage.factory import create_blob_store, parse_s3_url
from dockyard.storage.s3 import S3BlobStore
from dockyard.storage.s3_layout import MAX_PARTS, part_size
from tests.support.images import sha256

MIB = 1024 * 1024
DATA = bytes(range(256)) * (12 * MIB // 256)  # 12 MiB


@contextmanager
def counting(store: S3BlobStore) -> Iterator[list[str]]:
    """The S3 operations ``store`` calls inside the block, in order."""
    calls: list[str] = []

    def record(model, **_) -> None:
        calls.append(model.name)

    store.client.meta.events.register("before-call.s3", record)
    try:
        yield calls
    finally:
        store.client.meta.events.unregister("before-call.s3", record)


@contextmanager
def failing_once(store: S3BlobStore, operation: str, code: str, status: int = 400) -> Iterator[list[str]]:
    """Answer the first ``operation`` call with an S3 error ``code`` instead of sending it."""
    failed: list[str] = []

    def fail(model, **_):
        if model.name != operation or failed:
            return None
        failed.append(code)
        raw = AWSResponse("http://stub", status, {}, None)
        return raw, {
            "Error": {"Code": code, "Message": "injected"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }

    store.client.meta.events.register("before-call.s3", fail)
    try:
        yield failed
    finally:
        store.client.meta.events.unregister("before-call.s3", fail)


def _keys(store: S3BlobStore, under: str) -> list[str]:
    answer = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix + under)
    return [item["Key"][len(store.prefix) :] for item in answer.get("Contents", [])]


def _write(store: S3BlobStore, upload_id: str, state: str | None, size: int, data: bytes, **kw) -> str:
    writer = store.open_upload(upload_id, state, size, **kw)
    for start in range(0, len(data), MIB):
        writer.write(data[start : start + MIB])
    return writer.close()


@pytest.fixture
def s3(s3_store_factory) -> S3BlobStore:
    return s3_store_factory()


def test_a_small_monolithic_upload_is_one_put(s3):
    data = DATA[: 3 * MIB]
    digest = sha256(data)
    with counting(s3) as calls:
        state = _write(s3, "mono", None, 0, data, digest=digest)
        assert s3.commit_upload("mono", state, digest, len(data)) is None
    assert calls == ["PutObject"]
    with counting(s3) as calls:
        assert s3.stat(digest) == len(data)
    assert calls == ["HeadObject"]


def test_a_large_monolithic_upload_is_four_requests(s3):
    digest = sha256(DATA)
    with counting(s3) as calls:
        state = _write(s3, "big", None, 0, DATA, digest=digest)
        assert s3.commit_upload("big", state, digest, len(DATA)) is None
    assert calls == ["CreateMultipartUpload", "UploadPart", "UploadPart", "CompleteMultipartUpload"]
    assert _keys(s3, "uploads/") == []  # its last part was final: no tail object
    assert b"".join(s3.read(digest, 8 * MIB - 2, 4)) == DATA[8 * MIB - 2 : 8 * MIB + 2]


def test_parts_sent_while_the_request_goes_on_are_recorded_in_order(s3):
    """Full parts travel in the background (one at a time) while the next bytes arrive."""
    data = (DATA * 3)[: 30 * MIB]  # three full 8 MiB parts and a 6 MiB rest
    digest = sha256(data)
    state = _write(s3, "three", None, 0, data, digest=digest)
    parts = json.loads(state)["parts"]
    assert [part[0] for part in parts] == [1, 2, 3, 4]
    assert [part[2] for part in parts] == [8 * MIB, 8 * MIB, 8 * MIB, 6 * MIB]
    assert s3.commit_upload("three", state, digest, len(data)) is None
    assert b"".join(s3.read(digest)) == data


@contextmanager
def parts_in_flight(store: S3BlobStore, meet: int) -> Iterator[list[int]]:
    """Hold the first ``meet`` UploadParts until all of them are travelling at once (a barrier:
    fewer in flight at a time breaks it, failing those parts); record how many travel at each
    start."""
    barrier = threading.Barrier(meet, timeout=10)
    lock = threading.Lock()
    active: list[int] = [0]
    seen: list[int] = []

    def before(model, **_) -> None:
        if model.name != "UploadPart":
            return
        with lock:
            active[0] += 1
            seen.append(active[0])
            held = len(seen) <= meet
        if held:
            barrier.wait()

    def after(model, **_) -> None:
        if model.name == "UploadPart":
            with lock:
                active[0] -= 1

    store.client.meta.events.register("before-call.s3", before)
    store.client.meta.events.register("after-call.s3", after)
    try:
        yield seen
    finally:
        store.client.meta.events.unregister("before-call.s3", before)
        store.client.meta.events.unregister("after-call.s3", after)


def test_an_upload_has_three_parts_in_flight_at_most(s3):
    data = (DATA * 5)[: 42 * MIB]  # five full parts and a 2 MiB rest
    digest = sha256(data)
    with parts_in_flight(s3, 3) as seen:
        state = _write(s3, "five", None, 0, data, digest=digest)
    assert max(seen) == s3_writer.PARTS_IN_FLIGHT == 3
    assert [part[0] for part in json.loads(state)["parts"]] == [1, 2, 3, 4, 5, 6]
    assert s3.commit_upload("five", state, digest, len(data)) is None
    assert b"".join(s3.read(digest)) == data


def test_all_uploads_of_a_store_share_a_bound_on_parts_in_flight(s3):
    s3._part_slots = threading.BoundedSemaphore(2)  # 64 sender threads: only the slots limit it
    data = DATA * 2  # 24 MiB each: three full parts
    errors: list[BaseException] = []

    def upload(name: str) -> None:
        try:
            _write(s3, name, None, 0, data, digest=sha256(data))
        except BaseException as exc:  # reported below
            errors.append(exc)

    with parts_in_flight(s3, 2) as seen:
        threads = [threading.Thread(target=upload, args=(name,)) for name in ("left", "right")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not any(thread.is_alive() for thread in threads)  # every slot was given back
    assert errors == []
    assert len(seen) == 6
    assert max(seen) == 2


def test_a_store_has_a_slot_per_sender_thread(s3_store_factory):
    store = s3_store_factory()
    assert store._part_slots._initial_value == store._part_sender._max_workers == 64


def test_a_part_failing_in_the_background_fails_the_request(s3):
    data = DATA * 2  # 24 MiB: parts 1 and 2 are sent while the request goes on
    writer = s3.open_upload("refused", None, 0)

    def send() -> None:
        for start in range(0, len(data), MIB):
            writer.write(data[start : start + MIB])
        writer.close()

    with (
        failing_once(s3, "UploadPart", "AccessDenied", 403),
        pytest.raises(StorageError, match="AccessDenied"),
    ):
        send()
    writer.abort()
    assert s3.stat(sha256(data)) is None


def test_a_known_digest_with_other_data_never_reaches_the_digests_place(s3):
    digest = sha256(b"promised")
    state = _write(s3, "liar", None, 0, b"delivered", digest=digest)
    assert json.loads(state)["key"] == "located/liar"
    assert s3.stat(digest) is None
    location = s3.commit_upload("liar", state, sha256(b"delivered"), 9)  # what the caller verified
    assert b"".join(s3.read(sha256(b"delivered"), location=location)) == b"delivered"


def test_a_chunked_upload_requests(s3):
    """POST, one PATCH of 12 MiB, PUT: the shape docker push uses."""
    digest = sha256(DATA)
    with counting(s3) as patch:
        state = _write(s3, "chunked", None, 0, DATA)
    assert patch == ["CreateMultipartUpload", "UploadPart", "UploadPart", "PutObject"]
    with counting(s3) as put:
        location = s3.commit_upload("chunked", state, digest, len(DATA))
    assert put == ["HeadObject", "CompleteMultipartUpload", "DeleteObjects"]
    assert location == "located/chunked"
    assert _keys(s3, "uploads/") == []


def test_a_tail_is_kept_and_re_uploaded_under_the_same_part_number(s3):
    first = _write(s3, "tails", None, 0, DATA[:1000])
    recorded = json.loads(first)
    assert [part[0] for part in recorded["parts"]] == [1]
    assert _keys(s3, "uploads/") == [recorded["tail"]]
    with counting(s3) as calls:
        second = _write(s3, "tails", first, 1000, DATA[1000 : 9 * MIB])
    assert calls[0] == "GetObject"  # the tail read back
    recorded = json.loads(second)
    assert [(n, size) for n, _, size in recorded["parts"]] == [(1, 8 * MIB), (2, MIB)]
    assert recorded["stale"] == [json.loads(first)["tail"]]
    location = s3.commit_upload("tails", second, sha256(DATA[: 9 * MIB]), 9 * MIB)
    assert b"".join(s3.read(sha256(DATA[: 9 * MIB]), location=location)) == DATA[: 9 * MIB]
    assert _keys(s3, "uploads/") == []  # current and stale tails deleted


def test_a_rest_of_five_mib_or_more_is_a_plain_part(s3):
    state = json.loads(_write(s3, "plain", None, 0, DATA[: 6 * MIB]))
    assert state["parts"][0][2] == 6 * MIB
    assert "tail" not in state


def test_commit_re_uploads_a_tail_part_that_an_unrecorded_request_replaced(s3):
    """AWS refuses a replaced part's old ETag (InvalidPart): the tail object restores it."""
    recorded = _write(s3, "replaced", None, 0, b"recorded tail")
    s3.open_upload("replaced", recorded, 13).write(b" and more, never recorded")  # part 1 replaced
    with failing_once(s3, "CompleteMultipartUpload", "InvalidPart") as failed, counting(s3) as calls:
        location = s3.commit_upload("replaced", recorded, sha256(b"recorded tail"), 13)
    assert failed == ["InvalidPart"]
    assert "UploadPart" in calls
    assert b"".join(s3.read(sha256(b"recorded tail"), location=location)) == b"recorded tail"


def test_quota_errors_are_storage_full(s3):
    with failing_once(s3, "PutObject", "QuotaExceeded", 403), pytest.raises(StorageFull):
        s3.put(sha256(b"x"), b"x")
    with (
        failing_once(s3, "PutObject", "InternalError", 500),
        pytest.raises(StorageError, match="InternalError"),
    ):
        s3.put(sha256(b"x"), b"x")


def test_a_presigned_url_honours_range_and_its_signature(s3):
    data = DATA[: 2 * MIB]
    digest = sha256(data)
    s3.put(digest, data)
    source = s3.source(digest, redirect=True, expires=60)
    assert isinstance(source, Redirect)
    query = parse_qs(urlsplit(source.url).query)
    assert query["X-Amz-Expires"] == ["60"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    answer = httpx.get(source.url, headers={"Range": f"bytes={MIB}-{MIB + 9}"})
    assert answer.status_code == 206
    assert answer.content == data[MIB : MIB + 10]
    assert httpx.get(source.url.replace("X-Amz-Signature=", "X-Amz-Signature=0")).status_code == 403
    assert s3.source(digest) is None


def test_wrong_credentials_are_rejected(seaweedfs, s3, s3_prefix):
    s3.put(sha256(b"secret"), b"secret")
    intruder = S3BlobStore(
        seaweedfs.bucket,
        s3_prefix,
        endpoint_url=seaweedfs.endpoint_url,
        region=seaweedfs.region,
        access_key_id=seaweedfs.access_key_id,
        secret_access_key="not-the-secret",
    )
    with pytest.raises(StorageError, match="403"):
        intruder.stat(sha256(b"secret"))  # an error, not "missing"
    with pytest.raises(StorageError):
        intruder.put(sha256(b"forged"), b"forged")
    assert s3.stat(sha256(b"forged")) is None


def test_states_of_other_uploads_or_garbage_are_refused(s3):
    state = _write(s3, "mine", None, 0, b"data")
    with pytest.raises(StorageError):
        s3.open_upload("other", state, 4)
    with pytest.raises(StorageError):
        s3.commit_upload("mine", "not json", sha256(b"data"), 4)
    with pytest.raises(StorageError):
        s3.read(sha256(b"data"), location="../../etc/passwd").__next__()


def test_part_sizes_grow_so_that_uploads_over_5_gb_fit():
    base = 8 * MIB
    assert part_size(1, base) == part_size(1000, base) == base
    assert part_size(1001, base) == 2 * base
    assert sum(part_size(n, base) for n in range(1, MAX_PARTS + 1)) > 400 * 1024 * MIB
    assert max(part_size(n, 5 * MIB) for n in range(1, MAX_PARTS + 1)) <= 5 * 1024 * MIB


def test_expire_aborts_an_abandoned_upload_at_a_blobs_place(s3):
    digest = sha256(DATA)
    writer = s3.open_upload("abandoned", None, 0, digest=digest)
    writer.write(DATA[: 9 * MIB])  # a part went out, then the request died
    writer.abort()
    listed = s3.client.list_multipart_uploads(Bucket=s3.bucket, Prefix=s3.prefix)
    assert len(listed.get("Uploads", [])) == 1
    assert s3.expire_uploads(listed["Uploads"][0]["Initiated"].timestamp() + 1, lambda _: True) == 1
    listed = s3.client.list_multipart_uploads(Bucket=s3.bucket, Prefix=s3.prefix)
    assert listed.get("Uploads", []) == []


def test_the_factory_parses_s3_urls(seaweedfs, s3_prefix):
    assert parse_s3_url("s3://bucket/a/b/") == parse_s3_url("s3://bucket/a/b")
    assert parse_s3_url("s3://bucket").prefix == ""
    settings = Settings(
        storage=f"s3://{seaweedfs.bucket}/{s3_prefix}/nested",
        s3_endpoint_url=seaweedfs.endpoint_url,
        s3_access_key_id=seaweedfs.access_key_id,
        s3_secret_access_key=seaweedfs.secret_access_key,
        s3_part_size=16 * MIB,
    )
    store = create_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix, store.part_size) == (
        seaweedfs.bucket,
        f"{s3_prefix}/nested/",
        16 * MIB,
    )
    assert store.local is False
    store.put(sha256(b"via settings"), b"via settings")
    key = f"{s3_prefix}/nested/blobs/sha256/{sha256(b'via settings').split(':')[1]}"
    assert store.client.head_object(Bucket=seaweedfs.bucket, Key=key)["ContentLength"] == 12


def test_storage_urls_in_settings(tmp_path):
    assert Settings(storage=f"file://{tmp_path}/blobs").storage_path == tmp_path / "blobs"
    assert Settings(storage=str(tmp_path / "dir")).storage_path == tmp_path / "dir"
    assert Settings(storage="s3://bucket/prefix", data_dir=tmp_path).storage_path == tmp_path / "storage"
    for bad in ("ftp://host/x", "s3:///no-bucket", "s3://bucket/p?x=1"):
        with pytest.raises(ValidationError):
            Settings(storage=bad)
