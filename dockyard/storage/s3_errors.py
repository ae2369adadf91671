"""How the S3 driver reports boto's errors: StorageFull for quotas, StorageError for the rest."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from botocore.exceptions import BotoCoreError, ClientError

from dockyard.storage.interfaces import StorageError, StorageFull

QUOTA_CODES = frozenset(
    {"QuotaExceeded", "StorageQuotaExceeded", "XMinioStorageFull", "InsufficientStorage", "StorageFull"}
)
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def error_code(exc: ClientError) -> str:
    """The S3 error code of a failed call (``NoSuchKey``, ``InvalidPart``, …), or ""."""
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn boto errors into StorageFull (quota) or StorageError with what was being done."""
    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = exc.response.get("Error", {}).get("Message", "")
        if code in QUOTA_CODES or status == 507:
            raise StorageFull(f"S3 has no space left for {what}: {code} {message}".rstrip()) from exc
        raise StorageError(f"S3 failed to {what}: {code or status} {message}".rstrip()) from exc
    except BotoCoreError as exc:
        raise StorageError(f"S3 failed to {what}: {exc}") from exc
