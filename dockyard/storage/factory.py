"""Build the configured BlobStore."""

from __future__ import annotations

from dockyard.config import Settings
from dockyard.storage.filesystem import FilesystemBlobStore
from dockyard.storage.interfaces import BlobStore


def create_blob_store(settings: Settings) -> BlobStore:
    """The blob store ``settings`` asks for."""
    if settings.storage.startswith("azure://"):
        from dockyard.storage.azure import from_url

        return from_url(
            settings.storage,
            connection_string=settings.azure_connection_string,
            account=settings.azure_account,
            key=settings.azure_key,
            endpoint=settings.azure_endpoint,
        )
    assert settings.storage_path is not None
    return FilesystemBlobStore(settings.storage_path)
