"""Build the configured BlobStore."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from dockyard.config import Settings
from dockyard.storage.filesystem import FilesystemBlobStore
from dockyard.storage.interfaces import BlobStore


@dataclass(frozen=True)
class S3Location:
    """The bucket and key prefix of an ``s3://bucket/prefix`` storage URL."""

    bucket: str
    prefix: str


def parse_s3_url(url: str) -> S3Location:
    """Split ``s3://bucket/some/prefix`` into bucket and prefix (no leading/trailing slash)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    return S3Location(bucket=parts.netloc, prefix=parts.path.strip("/"))


def create_blob_store(settings: Settings) -> BlobStore:
    """The blob store ``settings`` asks for: S3 (``s3://…``), Azure Blob (``azure://…``) or the filesystem."""
    if settings.storage and settings.storage.startswith("azure://"):
        from dockyard.storage.azure import from_url  # the Azure SDK loads only when Azure is used

        return from_url(
            settings.storage,
            connection_string=settings.azure_connection_string,
            account=settings.azure_account,
            key=settings.azure_key,
            endpoint=settings.azure_endpoint,
        )
    if settings.storage and settings.storage.startswith("s3://"):
        from dockyard.storage.s3 import S3BlobStore  # boto3 loads only when S3 is used

        location = parse_s3_url(settings.storage)
        secret = settings.s3_secret_access_key
        return S3BlobStore(
            location.bucket,
            location.prefix,
            endpoint_url=settings.s3_endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL"),
            region=settings.s3_region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1",
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            addressing_style=settings.s3_addressing_style,
            part_size=settings.s3_part_size,
            max_connections=settings.s3_max_connections,
        )
    assert settings.storage_path is not None
    return FilesystemBlobStore(settings.storage_path)
