"""The S3 driver's object layout and the upload state it records in the database.

Keys, relative to the store's prefix::

    blobs/<alg>/<hex>            a blob at its digest's own place
    located/<upload_id>          a committed upload (the location ``commit_upload`` returns)
    uploads/<upload_id>/<name>   copies of upload tails (a last part under 5 MiB)

The state (JSON) names everything an upload holds, so no ListParts is ever needed::

    {"v": 1, "key": "located/<id>", "mpu": "<UploadId>",
     "parts": [[1, "<etag>", 8388608], [2, "<etag>", 1000]],
     "tail": "uploads/<id>/2-<nonce>", "stale": ["uploads/<id>/1-<nonce>"], "sealed": false}

``key`` is where the multipart upload ``mpu`` (absent until the first part) lands;
``parts`` are the parts that count, as number, ETag and size; ``tail``, when set, holds
a copy of the last part's bytes (under S3's 5 MiB minimum), which the next append reads
back and re-uploads, with more data, under the same part number; ``stale`` lists earlier
tail objects to delete at commit or abort; ``sealed`` means no more data may follow (the
digest was known and the data matched it), and with no ``mpu`` that the whole blob is
already at ``key``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from dockyard.storage.interfaces import StorageError

UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
DIGEST = re.compile(r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")
LOCATION = re.compile(r"^located/[A-Za-z0-9_-]{1,128}\Z")
BLOB_KEY = re.compile(r"^blobs/(sha256/[a-f0-9]{64}|sha512/[a-f0-9]{128})\Z")
TAIL_KEY = re.compile(r"^uploads/([A-Za-z0-9_-]{1,128})/[A-Za-z0-9_-]{1,64}\Z")

MIB = 1024 * 1024
MIN_PART = 5 * MIB  # S3's minimum size of every part but the last
MAX_PART = 5 * 1024 * MIB
MAX_PARTS = 10_000


def check_upload_id(upload_id: str) -> str:
    if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
        raise StorageError(f"not an upload id: {upload_id!r}")
    return upload_id


def blob_key(digest: str) -> str:
    """``blobs/<alg>/<hex>`` for a sha256 or sha512 digest; StorageError for anything else."""
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise StorageError(f"not a digest: {digest!r}")
    algorithm, _, encoded = digest.partition(":")
    return f"blobs/{algorithm}/{encoded}"


def located_key(upload_id: str) -> str:
    return f"located/{check_upload_id(upload_id)}"


def object_key(digest: str, location: str | None) -> str:
    """The relative key of a blob: its location if it has one, else its digest's place."""
    if location is None:
        return blob_key(digest)
    if not isinstance(location, str) or not LOCATION.match(location):
        raise StorageError(f"not an S3 blob location: {location!r}")
    blob_key(digest)  # validate it all the same
    return location


def part_size(number: int, base: int) -> int:
    """The size of part ``number``: ``base`` for the first 1,000 parts, then growing by
    ``base`` every 1,000 parts, so 10,000 parts of 8 MiB hold 430 GiB."""
    return min(MAX_PART, base * (1 + (number - 1) // 1000))


@dataclass
class UploadState:
    """Everything an upload holds, as recorded by the caller after each part."""

    key: str
    mpu: str | None = None
    parts: list[tuple[int, str, int]] = field(default_factory=list)
    tail: str | None = None
    stale: list[str] = field(default_factory=list)
    sealed: bool = False
    sealed_size: int = 0  # the size of a blob put whole (sealed, no multipart upload)

    @property
    def size(self) -> int:
        return sum(size for _, _, size in self.parts) + (self.sealed_size if self.mpu is None else 0)

    def dump(self) -> str:
        document: dict = {"v": 1, "key": self.key}
        if self.mpu is not None:
            document["mpu"] = self.mpu
            document["parts"] = [list(part) for part in self.parts]
        if self.tail is not None:
            document["tail"] = self.tail
        if self.stale:
            document["stale"] = self.stale
        if self.sealed:
            document["sealed"] = True
            if self.mpu is None:
                document["size"] = self.sealed_size
        return json.dumps(document, separators=(",", ":"))

    @classmethod
    def load(cls, state: str, upload_id: str) -> UploadState:
        """Parse and check a recorded state; StorageError if it is not one of this upload's."""
        try:
            document = json.loads(state)
            if document.get("v") != 1:
                raise ValueError("unknown version")
            parsed = cls(
                key=document["key"],
                mpu=document.get("mpu"),
                parts=[(int(n), str(etag), int(size)) for n, etag, size in document.get("parts", [])],
                tail=document.get("tail"),
                stale=[str(key) for key in document.get("stale", [])],
                sealed=bool(document.get("sealed", False)),
                sealed_size=int(document.get("size", 0)),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StorageError(f"not an S3 upload state: {state[:200]!r}") from exc
        if parsed.key != located_key(upload_id) and not BLOB_KEY.match(str(parsed.key)):
            raise StorageError(f"upload state of {upload_id} names a foreign key {parsed.key!r}")
        for tail in [parsed.tail, *parsed.stale]:
            match = TAIL_KEY.match(tail) if isinstance(tail, str) else None
            if tail is not None and (match is None or match.group(1) != upload_id):
                raise StorageError(f"upload state of {upload_id} names a foreign tail {tail!r}")
        return parsed
