"""S3-compatible BlobStore (AWS S3, SeaweedFS, MinIO, Ceph RGW) on boto3.

Layout and upload state: see ``s3_layout``. An upload whose digest is unknown is a
multipart upload targeting ``located/<upload_id>``; ``commit_upload`` completes it there
and returns that key as the blob's location (no server-side copy, no ListParts). An
upload whose digest is known before the first byte goes straight to the blob's own key:
one PutObject when small, a multipart upload completed at commit when large.

Writes are buffered to whole parts. A request that ends with less than S3's 5 MiB part
minimum uploads the rest as the next part (so a commit needs no further upload) and
keeps a copy as a small tail object; the next request reads it back, prepends it, and
uploads the bigger part under the same number. The recorded state's ETags decide which
upload of a part number counts.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from dockyard.storage.interfaces import (
    BlobPage,
    BlobSource,
    Redirect,
    StorageError,
    StoredBlob,
    UploadLost,
)
from dockyard.storage.s3_errors import MISSING_CODES, error_code, translate_errors
from dockyard.storage.s3_layout import (
    BLOB_KEY,
    LOCATION,
    MIB,
    MIN_PART,
    TAIL_KEY,
    UploadState,
    blob_key,
    check_upload_id,
    located_key,
    object_key,
)
from dockyard.storage.s3_writer import S3UploadWriter

log = logging.getLogger(__name__)

READ_CHUNK = MIB


def _checksum(digest: str) -> dict[str, str]:
    """Let S3 verify a sha256 blob's bytes on arrival (x-amz-checksum-sha256)."""
    algorithm, _, encoded = digest.partition(":")
    if algorithm != "sha256":
        return {}
    return {"ChecksumSHA256": base64.b64encode(bytes.fromhex(encoded)).decode()}


class S3BlobStore:
    """A BlobStore in one bucket under one prefix of an S3-compatible object store."""

    local = False

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: str = "auto",
        part_size: int = 8 * MIB,
        max_connections: int = 64,
        client: Any = None,
    ) -> None:
        if part_size < MIN_PART:
            raise ValueError(f"S3 part size must be at least {MIN_PART} bytes")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = part_size
        if client is None:
            if addressing_style == "auto" and endpoint_url:
                addressing_style = "path"  # S3-compatible servers rarely have wildcard DNS
            config = Config(
                signature_version="s3v4",
                max_pool_connections=max_connections,
                retries={"mode": "standard", "max_attempts": 4},
                s3={"addressing_style": addressing_style},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                connect_timeout=10,
                read_timeout=60,
            )
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=endpoint_url or None,
                region_name=region or None,
                aws_access_key_id=access_key_id or None,
                aws_secret_access_key=secret_access_key or None,
                config=config,
            )
        self.client = client
        # Sends writers' full parts while their requests' next bytes arrive (PARTS_IN_FLIGHT each).
        # One slot per sender thread: a part is handed over only when a thread is free for it, so
        # no part waits in the executor's queue holding its memory (``max_connections`` parts of
        # ``part_size`` at most, for all uploads together); an upload that finds none free waits.
        self._part_sender = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix="s3-part")
        self._part_slots = threading.BoundedSemaphore(max_connections)

    def __repr__(self) -> str:
        return f"S3BlobStore(s3://{self.bucket}/{self.prefix})"

    def _key(self, relative: str) -> str:
        return self.prefix + relative

    # -- blobs --------------------------------------------------------------------------------

    def _head(self, key: str) -> dict[str, Any] | None:
        with translate_errors(f"look up {key}"):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if error_code(exc) in MISSING_CODES:
                    return None
                raise

    def stat(self, digest: str, *, location: str | None = None) -> int | None:
        """The blob's size (one HEAD), or None."""
        head = self._head(object_key(digest, location))
        return None if head is None else int(head["ContentLength"])

    def read(
        self, digest: str, offset: int = 0, length: int | None = None, *, location: str | None = None
    ) -> Iterator[bytes]:
        """Stream the blob with one (ranged) GET."""
        key = object_key(digest, location)
        if offset < 0 or (length is not None and length < 0):
            raise StorageError(f"bad range {offset}+{length}")
        if length == 0:
            if self._head(key) is None:
                raise StorageError(f"blob {digest} is missing")
            return
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            arguments["Range"] = f"bytes={offset}-{end}"
        with translate_errors(f"read {key}"):
            try:
                response = self.client.get_object(**arguments)
            except ClientError as exc:
                if error_code(exc) in MISSING_CODES:
                    raise StorageError(f"blob {digest} is missing") from exc
                if error_code(exc) == "InvalidRange" and length is None:
                    head = self._head(key)
                    if head is not None and int(head["ContentLength"]) == offset:
                        return  # reading from the very end: nothing
                raise
        body = response["Body"]
        received = 0
        try:
            with translate_errors(f"read {key}"):
                for chunk in body.iter_chunks(READ_CHUNK):
                    received += len(chunk)
                    yield chunk
        finally:
            body.close()
        if length is not None and received < length:
            raise StorageError(f"blob {digest} ends after {offset + received} bytes")

    def source(
        self, digest: str, *, location: str | None = None, redirect: bool = False, expires: int = 1200
    ) -> BlobSource:
        """A presigned GET URL (no request to S3) when asked to redirect, else None (stream)."""
        key = object_key(digest, location)
        if not redirect:
            return None
        with translate_errors(f"presign {key}"):
            url = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires
            )
        return Redirect(url)

    def put(self, digest: str, data: bytes) -> None:
        """One PutObject at the digest's key (S3 checks a sha256 digest on arrival)."""
        key = blob_key(digest)
        with translate_errors(f"store {key}"):
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=data,
                ContentLength=len(data),
                **_checksum(digest),
            )

    def delete(self, digest: str, *, location: str | None = None) -> bool:
        """HEAD then DeleteObject (S3 does not say whether a deleted object existed)."""
        key = object_key(digest, location)
        if self._head(key) is None:
            return False
        with translate_errors(f"delete {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        return True

    def list_blobs(self, cursor: str | None = None, limit: int = 1000) -> BlobPage:
        """ListObjectsV2 over ``blobs/`` then ``located/``; the cursor is the last key seen.

        Keys sort ``blobs/`` < ``located/`` < ``uploads/``, so one listing from the prefix
        covers both and ends at the first upload tail. A page may hold fewer than ``limit``.
        """
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix, "MaxKeys": max(1, limit)}
        if cursor:
            arguments["StartAfter"] = self._key(cursor)
        with translate_errors("list blobs"):
            response = self.client.list_objects_v2(**arguments)
        blobs: list[StoredBlob] = []
        last = None
        for item in response.get("Contents", []):
            relative = item["Key"][len(self.prefix) :]
            if relative >= "uploads/":
                return BlobPage(blobs, None)
            last = relative
            size, modified = int(item["Size"]), item["LastModified"].timestamp()
            if match := BLOB_KEY.match(relative):
                digest = match.group(1).replace("/", ":", 1)
                blobs.append(StoredBlob(digest=digest, location=None, size=size, modified=modified))
            elif LOCATION.match(relative):
                blobs.append(StoredBlob(digest=None, location=relative, size=size, modified=modified))
        return BlobPage(blobs, last if response.get("IsTruncated") and last else None)

    # -- uploads ------------------------------------------------------------------------------

    def open_upload(
        self, upload_id: str, state: str | None, size: int, *, digest: str | None = None
    ) -> S3UploadWriter:
        """A writer continuing ``state``; a known ``digest`` on a new upload targets its key."""
        check_upload_id(upload_id)
        if state is None:
            if size != 0:
                raise StorageError(f"upload {upload_id} has no data but {size} bytes were recorded")
            key = blob_key(digest) if digest is not None else located_key(upload_id)
            return S3UploadWriter(self, upload_id, UploadState(key=key), digest, fresh=True)
        parsed = UploadState.load(state, upload_id)
        if parsed.size != size:
            raise StorageError(f"upload {upload_id} holds {parsed.size} bytes, not {size}")
        return S3UploadWriter(self, upload_id, parsed, digest, fresh=False)

    def commit_upload(self, upload_id: str, state: str | None, digest: str, size: int) -> str | None:
        """Complete the multipart upload where it is; return ``located/<id>`` or None."""
        check_upload_id(upload_id)
        target = blob_key(digest)
        if state is None:
            if size != 0:
                raise StorageError(f"upload {upload_id} holds no data, not {size} bytes")
            self.put(digest, b"")
            return None
        parsed = UploadState.load(state, upload_id)
        if parsed.size != size:
            raise StorageError(f"upload {upload_id} holds {parsed.size} bytes, not {size}")
        if parsed.key != target and parsed.key != located_key(upload_id):
            raise StorageError(f"upload {upload_id} was written for another digest")
        if parsed.mpu is None:
            if parsed.sealed:  # put whole at its key when the writer closed
                if parsed.key != target:
                    raise StorageError(f"upload {upload_id} was written for another digest")
            else:  # nothing written
                self.put(digest, b"")
            self._drop_tails(parsed)
            return None
        if parsed.key != target and self._head(target) is not None:
            self.abort_upload(upload_id, state)  # the blob exists already
            return None
        self._complete(upload_id, parsed)
        self._drop_tails(parsed)
        return None if parsed.key == target else parsed.key

    def _complete(self, upload_id: str, state: UploadState) -> None:
        def complete(parts: list[tuple[int, str, int]]) -> None:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self._key(state.key),
                UploadId=state.mpu,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag, _ in parts]},
            )

        with translate_errors(f"commit upload {upload_id}"):
            try:
                complete(state.parts)
            except ClientError as exc:
                if error_code(exc) == "NoSuchUpload":
                    raise UploadLost(f"upload {upload_id} is gone (aborted or expired)") from exc
                if error_code(exc) != "InvalidPart" or state.tail is None:
                    raise
                # A request that never got recorded replaced the tail part: upload it again
                # from the tail object (stores that keep every upload of a part never get here).
                number, _, size = state.parts[-1]
                data = self._get(state.tail)
                if len(data) != size:
                    raise StorageError(f"upload {upload_id}: its tail object is damaged") from exc
                etag = self._upload_part(state.key, state.mpu, number, data)
                complete([*state.parts[:-1], (number, etag, size)])

    def _upload_part(self, key: str, mpu: str, number: int, data: bytes) -> str:
        """UploadPart ``number`` of the multipart upload ``mpu`` at ``key``; its ETag."""
        answer = self.client.upload_part(
            Bucket=self.bucket,
            Key=self._key(key),
            UploadId=mpu,
            PartNumber=number,
            Body=data,
            ContentLength=len(data),
        )
        return str(answer["ETag"])

    def _get(self, key: str) -> bytes:
        with translate_errors(f"read {key}"):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            except ClientError as exc:
                if error_code(exc) in MISSING_CODES:
                    raise StorageError(f"upload data {key} is gone (aborted or expired)") from exc
                raise

    def _delete_many(self, keys: list[str]) -> None:
        """DeleteObjects in batches of 1,000 (missing keys are fine)."""
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(key)} for key in keys[start : start + 1000]]
            with translate_errors("delete upload data"):
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if answer.get("Errors"):
                raise StorageError(f"S3 failed to delete upload data: {answer['Errors'][:3]}")

    def _drop_tails(self, state: UploadState) -> None:
        """Delete the tail objects a finished upload named; a failure only leaves garbage
        for ``expire_uploads``, so it is logged, not raised."""
        keys = [*state.stale, *([state.tail] if state.tail else [])]
        if not keys:
            return
        try:
            self._delete_many(keys)
        except StorageError as exc:
            log.warning("left upload tails for expiry: %s", exc)

    def abort_upload(self, upload_id: str, state: str | None) -> None:
        """Abort the multipart upload and delete its tails; a blob put whole stays (it may
        be shared, and garbage collection finds it if not)."""
        check_upload_id(upload_id)
        if state is None:
            return
        parsed = UploadState.load(state, upload_id)
        if parsed.mpu is not None:
            with translate_errors(f"abort upload {upload_id}"):
                try:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=self._key(parsed.key), UploadId=parsed.mpu
                    )
                except ClientError as exc:
                    if error_code(exc) != "NoSuchUpload":
                        raise
        self._drop_tails(parsed)

    def expire_uploads(self, older_than: float, is_live: Callable[[str], bool]) -> int:
        """Abort multipart uploads started before ``older_than`` and delete tail objects
        written before it, unless ``is_live`` claims their upload; return how many uploads.

        A multipart upload at a blob's own key comes from one request that knew the digest
        and has no upload id in its key: it is aborted by age alone.
        """
        dropped: set[str] = set()
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        while True:
            with translate_errors("list multipart uploads"):
                page = self.client.list_multipart_uploads(**arguments)
            for upload in page.get("Uploads", []):
                relative = upload["Key"][len(self.prefix) :]
                if upload["Initiated"].timestamp() >= older_than:
                    continue
                if LOCATION.match(relative):
                    owner = relative.removeprefix("located/")
                    if is_live(owner):
                        continue
                elif BLOB_KEY.match(relative):
                    owner = f"{relative}#{upload['UploadId']}"
                else:
                    continue
                with translate_errors(f"abort expired upload {relative}"):
                    try:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                    except ClientError as exc:
                        if error_code(exc) != "NoSuchUpload":
                            raise
                dropped.add(owner)
            if not page.get("IsTruncated"):
                break
            arguments["KeyMarker"] = page.get("NextKeyMarker")
            arguments["UploadIdMarker"] = page.get("NextUploadIdMarker")
        dropped.update(self._expire_tails(older_than, is_live))
        return len(dropped)

    def _expire_tails(self, older_than: float, is_live: Callable[[str], bool]) -> set[str]:
        owners: set[str] = set()
        expired: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        with translate_errors("list upload tails"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key("uploads/")):
                for item in page.get("Contents", []):
                    relative = item["Key"][len(self.prefix) :]
                    match = TAIL_KEY.match(relative)
                    if match is None or item["LastModified"].timestamp() >= older_than:
                        continue
                    if not is_live(match.group(1)):
                        owners.add(match.group(1))
                        expired.append(relative)
        self._delete_many(expired)
        return owners
