"""Content-addressed blob storage: the BlobStore protocol and its drivers."""

from dockyard.storage.interfaces import BlobStore, StorageError, StorageFull, UploadWriter

__all__ = ["BlobStore", "StorageError", "StorageFull", "UploadWriter"]
