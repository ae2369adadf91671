"""Content-addressed blob storage: the BlobStore protocol and its drivers."""

from dockyard.storage.interfaces import (
    BlobPage,
    BlobSource,
    BlobStore,
    LocalFile,
    Redirect,
    StorageError,
    StorageFull,
    StoredBlob,
    UploadLost,
    UploadWriter,
)

__all__ = [
    "BlobPage",
    "BlobSource",
    "BlobStore",
    "LocalFile",
    "Redirect",
    "StorageError",
    "StorageFull",
    "StoredBlob",
    "UploadLost",
    "UploadWriter",
]
