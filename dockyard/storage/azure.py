"""Azure Blob Storage BlobStore (block blobs, the synchronous ``azure-storage-blob`` client).

Layout under ``<prefix>/`` in one container (see docs/storage-azure.md):

* ``blobs/<alg>/<hex>``: a blob at its digest's own place (``put``, and uploads whose
  digest was known before their first byte);
* ``located/<upload_id>``: an upload whose digest was unknown. Its parts are staged as
  uncommitted blocks; ``commit_upload`` is one Put Block List naming the blocks the state
  records, and the blob stays there: its name is the location the caller records.

Block ids have one fixed length and are derived from the upload id, the part index (how
many parts the state records) and the block's index in its part: a retried part stages
the same ids as the dead request it replaces, and blocks a part staged but never got
recorded are simply not named at commit (Azure discards them then, or after a week).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, ContainerClient, generate_blob_sas
from urllib3.util.retry import Retry

from dockyard.oci.digest import parse_digest
from dockyard.oci.errors import RegistryError
from dockyard.storage.interfaces import (
    BlobPage,
    BlobSource,
    Redirect,
    StorageError,
    StorageFull,
    StoredBlob,
)

MIB = 1024 * 1024
#: Default size of the blocks large writes are split into (small writes are buffered up to it).
BLOCK_SIZE = 8 * MIB
#: Azure's limits: the largest block, and committed blocks per blob.
MAX_BLOCK_SIZE = 4000 * MIB
MAX_BLOCKS = 50_000
READ_CHUNK = 4 * MIB
#: Connections kept open to the blob endpoint (the HTTP layer calls the store from many threads).
POOL_SIZE = 64

UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
CONTAINER = re.compile(r"^(?=.{3,63}\Z)[a-z0-9](?:-?[a-z0-9])*\Z")
#: Azurite's well-known development account (public, documented by Microsoft).
DEV_ACCOUNT = "devstoreaccount1"
_STATE_VERSION = 1


def _code(exc: AzureError) -> str:
    """Azure's error code (``BlobNotFound``…), or "" if the answer had none."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _failure(what: str, exc: AzureError) -> StorageError:
    """A StorageError (StorageFull for capacity errors) saying what failed and Azure's reason."""
    status = getattr(exc, "status_code", None)
    code = _code(exc)
    reason = str(code or status or type(exc).__name__)
    message = (getattr(exc, "reason", None) or str(exc) or "").splitlines()[0][:200]
    if status == 507 or "Quota" in code:
        return StorageFull(f"Azure Blob Storage has no space left for {what} ({reason})")
    return StorageError(f"Azure Blob Storage failed to {what}: {reason} {message}".rstrip())


@contextlib.contextmanager
def _azure(what: str) -> Iterator[None]:
    """Turn Azure SDK errors into StorageError / StorageFull."""
    try:
        yield
    except AzureError as exc:
        raise _failure(what, exc) from exc


def _blob_missing(exc: ResourceNotFoundError) -> bool:
    """True for a missing blob (not for a missing container, which is a configuration error)."""
    return _code(exc) in ("", "BlobNotFound")


def _already_held(exc: HttpResponseError) -> bool:
    """True if a write conditional on ``If-None-Match: *`` failed because the blob exists."""
    return exc.status_code in (409, 412) and _code(exc) in ("BlobAlreadyExists", "ConditionNotMet")


def _check_upload_id(upload_id: str) -> str:
    if not UPLOAD_ID.match(upload_id or ""):
        raise StorageError(f"not an upload id: {upload_id!r}")
    return upload_id


class _State:
    """An upload's recorded state: where its blocks are staged and the parts that count.

    JSON ``{"v": 1, "digest": "sha256:…" | null, "parts": [[blocks, bytes], …]}``: with a
    digest the blocks are staged on the blob's own name, else on ``located/<upload_id>``;
    part ``i`` is the blocks ``block_id(i, 0 … blocks-1)`` and holds ``bytes`` bytes.
    """

    def __init__(self, digest: str | None, parts: list[tuple[int, int]]) -> None:
        self.digest = digest
        self.parts = parts

    @classmethod
    def load(cls, state: str | None, digest: str | None = None) -> _State:
        if state is None:
            return cls(digest, [])
        try:
            data = json.loads(state)
            if data.get("v") != _STATE_VERSION:
                raise ValueError("unknown version")
            parts = [(int(blocks), int(size)) for blocks, size in data["parts"]]
            stored = data.get("digest")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StorageError(f"not an Azure upload state: {state[:80]!r}") from exc
        if stored is not None and not isinstance(stored, str):
            raise StorageError("not an Azure upload state: bad digest")
        if any(blocks < 0 or size < 0 for blocks, size in parts):
            raise StorageError("not an Azure upload state: negative part")
        return cls(stored, parts)

    def dump(self) -> str:
        body = {"v": _STATE_VERSION, "digest": self.digest, "parts": [list(part) for part in self.parts]}
        return json.dumps(body, separators=(",", ":"))

    @property
    def size(self) -> int:
        return sum(size for _, size in self.parts)

    @property
    def blocks(self) -> int:
        return sum(blocks for blocks, _ in self.parts)


def block_id(upload_id: str, part: int, block: int) -> str:
    """The fixed-length id (28 characters, before base64) of block ``block`` of part ``part``."""
    tag = hashlib.sha256(upload_id.encode()).hexdigest()[:16]
    return f"{tag}-{part:05d}-{block:05d}"


class AzureUploadWriter:
    """Stages one part's bytes as blocks of ``block_size`` (small writes are buffered)."""

    def __init__(
        self, store: AzureBlobStore, upload_id: str, name: str, state: _State, block_size: int
    ) -> None:
        self._store = store
        self._upload_id = upload_id
        self._name = name
        self._state = state
        self._part = len(state.parts)
        self._block_size = block_size
        self._buffer = bytearray()
        self._staged = 0
        self._bytes = 0
        self._closed = False

    def write(self, data: bytes) -> None:
        """Buffer ``data`` and stage every full block."""
        if self._closed:
            raise StorageError("write to a closed upload part")
        view = memoryview(data)
        if self._buffer:
            room = self._block_size - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) < self._block_size:
                return
            self._stage(bytes(self._buffer))
            self._buffer.clear()
        while len(view) >= self._block_size:
            self._stage(bytes(view[: self._block_size]))
            view = view[self._block_size :]
        self._buffer += view

    def _stage(self, data: bytes) -> None:
        if self._state.blocks + self._staged >= MAX_BLOCKS:
            raise StorageError(f"upload {self._upload_id} would exceed Azure's {MAX_BLOCKS} blocks per blob")
        if self._part > 99_999:
            raise StorageError(f"upload {self._upload_id} has too many parts")
        ident = block_id(self._upload_id, self._part, self._staged)
        with _azure(f"stage a block of upload {self._upload_id}"):
            self._store.container.get_blob_client(self._name).stage_block(ident, data, length=len(data))
        self._staged += 1
        self._bytes += len(data)

    def close(self) -> str:
        """Stage what is buffered; return the state with this part added."""
        if self._closed:
            raise StorageError("upload part closed twice")
        if self._buffer:
            self._stage(bytes(self._buffer))
            self._buffer.clear()
        self._closed = True
        if not self._staged:
            return self._state.dump()
        return _State(self._state.digest, [*self._state.parts, (self._staged, self._bytes)]).dump()

    def abort(self) -> None:
        """Forget this part: its staged blocks are never named by a recorded state."""
        self._closed = True
        self._buffer.clear()


class AzureBlobStore:
    """A BlobStore on one Azure Blob Storage container (or Azurite), under a name prefix."""

    local = False

    def __init__(
        self,
        container: ContainerClient,
        prefix: str = "",
        *,
        account_key: str | None = None,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        if not 0 < block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block_size must be between 1 byte and {MAX_BLOCK_SIZE} bytes")
        self.container = container
        prefix = prefix.strip("/")
        self._root = f"{prefix}/" if prefix else ""
        self._blobs = f"{self._root}blobs/"
        self._located = f"{self._root}located/"
        self._account_key = account_key
        self._block_size = block_size

    # -- names --------------------------------------------------------------------------------

    def _blob_name(self, digest: str) -> str:
        try:
            algorithm, encoded = parse_digest(digest)
        except RegistryError:
            raise StorageError(f"not a digest: {digest[:80]!r}") from None
        return f"{self._blobs}{algorithm}/{encoded}"

    def _name(self, digest: str, location: str | None) -> str:
        if location is None:
            return self._blob_name(digest)
        if not location.startswith(self._located) or not UPLOAD_ID.match(location[len(self._located) :]):
            raise StorageError(f"not a location of this store: {location[:120]!r}")
        return location

    def _located_name(self, upload_id: str) -> str:
        return f"{self._located}{_check_upload_id(upload_id)}"

    # -- blobs --------------------------------------------------------------------------------

    def stat(self, digest: str, *, location: str | None = None) -> int | None:
        """The blob's size (one Get Blob Properties), or None if it is missing."""
        name = self._name(digest, location)
        try:
            return self.container.get_blob_client(name).get_blob_properties().size
        except ResourceNotFoundError as exc:
            if _blob_missing(exc):
                return None
            raise _failure(f"look up {name}", exc) from exc
        except AzureError as exc:
            raise _failure(f"look up {name}", exc) from exc

    def read(
        self, digest: str, offset: int = 0, length: int | None = None, *, location: str | None = None
    ) -> Iterator[bytes]:
        """Ranged downloads of at most 4 MiB each (the SDK pins them to the first one's ETag)."""
        name = self._name(digest, location)
        return self._read(name, offset, length)

    def _read(self, name: str, offset: int, length: int | None) -> Iterator[bytes]:
        if length == 0:
            return
        received = 0
        with _azure(f"read {name}"):
            try:
                stream = self.container.download_blob(name, offset=offset, length=length)
            except HttpResponseError as exc:
                if exc.status_code != 416:
                    raise
                size = self.container.get_blob_client(name).get_blob_properties().size
                if offset == size and length is None:
                    return
                raise StorageError(f"{name} holds {size} bytes, fewer than asked for") from None
            expected = stream.size if length is None else length
            for chunk in stream.chunks():
                received += len(chunk)
                yield chunk
        if received != expected:
            raise StorageError(f"{name} ended {expected - received} bytes early")

    def source(
        self, digest: str, *, location: str | None = None, redirect: bool = False, expires: int = 1200
    ) -> BlobSource:
        """A read-only SAS URL (no request) when a redirect is asked and the account key is known."""
        name = self._name(digest, location)
        if not redirect or not self._account_key:
            return None
        sas = generate_blob_sas(
            account_name=self.container.account_name or "",
            container_name=self.container.container_name,
            blob_name=name,
            account_key=self._account_key,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(UTC) + timedelta(seconds=expires),
        )
        return Redirect(f"{self.container.get_blob_client(name).url}?{sas}")

    def put(self, digest: str, data: bytes) -> None:
        """Put Blob (Put Block + Put Block List above the block size); an existing blob is kept."""
        name = self._blob_name(digest)
        with _azure(f"write {name}"):
            try:
                self.container.upload_blob(name, data, length=len(data), overwrite=False)
            except HttpResponseError as exc:
                if not _already_held(exc):
                    raise

    def delete(self, digest: str, *, location: str | None = None) -> bool:
        """Delete Blob; True if it existed."""
        name = self._name(digest, location)
        try:
            self.container.delete_blob(name)
        except ResourceNotFoundError as exc:
            if _blob_missing(exc):
                return False
            raise _failure(f"delete {name}", exc) from exc
        except AzureError as exc:
            raise _failure(f"delete {name}", exc) from exc
        return True

    def list_blobs(self, cursor: str | None = None, limit: int = 1000) -> BlobPage:
        """One List Blobs page over ``blobs/`` and ``located/``; the cursor is Azure's marker."""
        limit = max(1, min(limit, 5000))
        with _azure("list blobs"):
            pages = self.container.list_blobs(name_starts_with=self._root or None, results_per_page=limit)
            pager = pages.by_page(continuation_token=cursor)
            page = next(pager, [])
            found = [blob for blob in (self._stored(item) for item in page) if blob is not None]
            return BlobPage(found, pager.continuation_token or None)

    def _stored(self, item: Any) -> StoredBlob | None:
        name: str = item.name
        modified = item.last_modified.timestamp()
        if name.startswith(self._blobs):
            algorithm, _, encoded = name[len(self._blobs) :].partition("/")
            return StoredBlob(f"{algorithm}:{encoded}", None, item.size, modified)
        if name.startswith(self._located):
            return StoredBlob(None, name, item.size, modified)
        return None

    # -- uploads ------------------------------------------------------------------------------

    def open_upload(
        self, upload_id: str, state: str | None, size: int, *, digest: str | None = None
    ) -> AzureUploadWriter:
        """A writer staging blocks on the blob's own name (digest known) or on ``located/<id>``."""
        _check_upload_id(upload_id)
        current = _State.load(state, digest)
        if current.size != size:
            raise StorageError(f"upload {upload_id} holds {current.size} bytes, not {size}")
        name = self._blob_name(current.digest) if current.digest else self._located_name(upload_id)
        return AzureUploadWriter(self, upload_id, name, current, self._block_size)

    def commit_upload(self, upload_id: str, state: str | None, digest: str, size: int) -> str | None:
        """One Put Block List (a located upload first checks that the blob is not already held)."""
        _check_upload_id(upload_id)
        current = _State.load(state)
        canonical = self._blob_name(digest)
        if current.digest is not None and current.digest != digest:
            raise StorageError(f"upload {upload_id} was written for {current.digest}, not {digest}")
        if current.size != size:
            raise StorageError(f"upload {upload_id} holds {current.size} bytes, expected {size}")
        blocks = [
            block_id(upload_id, part, n)
            for part, (count, _) in enumerate(current.parts)
            for n in range(count)
        ]
        if not blocks:
            if state is None and size:
                raise StorageError(f"upload {upload_id} holds no data")
            self.put(digest, b"")
            return None
        if current.digest is not None:
            with _azure(f"commit upload {upload_id}"):
                try:
                    self.container.get_blob_client(canonical).commit_block_list(
                        blocks, match_condition=MatchConditions.IfMissing
                    )
                except HttpResponseError as exc:
                    if not _already_held(exc):  # held: this upload's blocks expire with Azure's GC
                        raise
            return None
        if self.stat(digest) is not None:
            self.abort_upload(upload_id, state)
            return None
        name = self._located_name(upload_id)
        with _azure(f"commit upload {upload_id}"):
            self.container.get_blob_client(name).commit_block_list(blocks)
        return name

    def abort_upload(self, upload_id: str, state: str | None) -> None:
        """Drop a located upload's blocks; blocks staged on a blob's own name are left to Azure's GC."""
        current = _State.load(state)
        if current.digest is None:
            self._drop_uncommitted(self._located_name(upload_id))

    def _drop_uncommitted(self, name: str) -> bool:
        """Discard a blob that holds only uncommitted blocks; a committed blob is left alone.

        An empty Put Block List that only succeeds if no committed blob exists discards the
        staged blocks, then a Delete Blob conditional on that write's ETag removes it.
        """
        client = self.container.get_blob_client(name)
        with _azure(f"discard upload data {name}"):
            try:
                etag = client.commit_block_list([], match_condition=MatchConditions.IfMissing)["etag"]
            except HttpResponseError as exc:
                if _already_held(exc):
                    return False
                raise
            try:
                client.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
            except ResourceModifiedError:
                return False  # committed by someone else since
            except ResourceNotFoundError as exc:
                if _blob_missing(exc):
                    return False
                raise
        return True

    def expire_uploads(self, older_than: float, is_live: Callable[[str], bool]) -> int:
        """Drop ``located/`` blobs with only uncommitted blocks, older than the cutoff and not live."""
        with _azure("list uploads"):
            committed = {item.name for item in self.container.list_blobs(name_starts_with=self._located)}
            staged = [
                item
                for item in self.container.list_blobs(
                    name_starts_with=self._located, include=["uncommittedblobs"]
                )
                if item.name not in committed
            ]
        dropped = 0
        for item in staged:
            upload_id = item.name[len(self._located) :]
            if not UPLOAD_ID.match(upload_id) or item.last_modified.timestamp() >= older_than:
                continue
            if is_live(upload_id):
                continue
            dropped += self._drop_uncommitted(item.name)
        return dropped


# -- configuration ----------------------------------------------------------------------------


def parse_url(url: str) -> tuple[str, str]:
    """``azure://container/prefix`` → (container, prefix)."""
    parts = urlsplit(url)
    if parts.scheme != "azure" or parts.query or parts.fragment:
        raise ValueError(f"not an azure://container/prefix URL: {url!r}")
    container, prefix = parts.netloc, parts.path.strip("/")
    if not CONTAINER.match(container):
        raise ValueError(f"not an Azure container name: {container!r} (3-63 of a-z, 0-9 and single -)")
    if any(segment in ("", ".", "..") for segment in prefix.split("/")) and prefix:
        raise ValueError(f"bad prefix in {url!r}")
    return container, prefix


def _transport() -> RequestsTransport:
    """azure-core's requests transport with a connection pool sized for many threads."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=4,
        pool_maxsize=POOL_SIZE,
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),  # azure-core retries
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(session=session, session_owner=True)


def from_url(
    url: str,
    *,
    connection_string: str = "",
    account: str = "",
    key: str = "",
    endpoint: str = "",
    env: Mapping[str, str] | None = None,
    block_size: int = BLOCK_SIZE,
    **client_options: Any,
) -> AzureBlobStore:
    """The store an ``azure://container/prefix`` URL names.

    Credentials, first found wins: ``connection_string``, then ``account`` + ``key`` (settings),
    then ``AZURE_STORAGE_CONNECTION_STRING``, then ``AZURE_STORAGE_ACCOUNT`` + ``AZURE_STORAGE_KEY``.
    ``endpoint`` (or ``AZURE_STORAGE_BLOB_ENDPOINT``) overrides ``https://<account>.blob.core.windows.net``,
    e.g. ``http://127.0.0.1:10000/devstoreaccount1`` for Azurite.
    """
    env = os.environ if env is None else env
    container, prefix = parse_url(url)
    endpoint = endpoint or env.get("AZURE_STORAGE_BLOB_ENDPOINT", "")
    options: dict[str, Any] = {
        "transport": _transport(),
        "max_single_get_size": READ_CHUNK,
        "max_chunk_get_size": READ_CHUNK,
        "max_single_put_size": block_size,
        "max_block_size": block_size,
        "connection_timeout": 10,
        "read_timeout": 120,
        **client_options,
    }
    if not connection_string and not (account and key):
        connection_string = env.get("AZURE_STORAGE_CONNECTION_STRING", "")
        if not connection_string:
            account = env.get("AZURE_STORAGE_ACCOUNT", "")
            key = env.get("AZURE_STORAGE_KEY", "")
    if connection_string:
        service = BlobServiceClient.from_connection_string(connection_string, **options)
        if endpoint:
            service = BlobServiceClient(endpoint, credential=service.credential, **options)
    elif account and key:
        service = BlobServiceClient(
            endpoint or f"https://{account}.blob.core.windows.net",
            credential={"account_name": account, "account_key": key},
            **options,
        )
    else:
        raise ValueError(
            "azure:// storage needs credentials: a connection string or an account name and key "
            "(settings azure_connection_string / azure_account + azure_key, or the AZURE_STORAGE_* variables)"
        )
    account_key = getattr(service.credential, "account_key", None)
    return AzureBlobStore(
        service.get_container_client(container), prefix, account_key=account_key, block_size=block_size
    )
