"""Build the configured BlobStore."""

from __future__ import annotations

from dockyard.config import Settings
from dockyard.storage.filesystem import FilesystemBlobStore
from dockyard.storage.interfaces import BlobStore


def create_blob_store(settings: Settings) -> BlobStore:
    """The blob store ``settings`` asks for (the filesystem driver, for now)."""
    assert settings.storage_path is not None
    return FilesystemBlobStore(settings.storage_path)
