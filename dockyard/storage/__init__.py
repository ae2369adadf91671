"""Content-addressed blob storage: the BlobStore protocol and its drivers."""

from dockyard.storage.interfaces import BlobStore, StorageError, UploadWriter

__all__ = ["BlobStore", "StorageError", "UploadWriter"]
