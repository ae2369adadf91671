"""The registry's behaviour, free of HTTP: one service per concern, built together."""

from __future__ import annotations

from dataclasses import dataclass

from dockyard.changes import ChangeListener, ContentCache, SqliteChangeWatch, libpq_url
from dockyard.config import Settings
from dockyard.db import Database
from dockyard.events.services import EventService
from dockyard.registry.services.blobs import BlobService
from dockyard.registry.services.common import BlobQuota, ContentHooks
from dockyard.registry.services.digests import RecentBlobs
from dockyard.registry.services.locks import LockPolicy, LockService
from dockyard.registry.services.manifests import ManifestService
from dockyard.registry.services.repositories import RepositoryService
from dockyard.registry.services.uploads import UploadService
from dockyard.storage import BlobStore


@dataclass(frozen=True)
class RegistryServices:
    """Everything the registry routes call."""

    blobs: BlobService
    uploads: UploadService
    manifests: ManifestService
    repositories: RepositoryService
    #: Locks (changeableAttributes) and the write-once tag policy.
    locks: LockService
    events: EventService
    #: Manifests and blob lookups cached in this process (enabled while a listener runs).
    cache: ContentCache
    #: Keeps ``cache`` true (PostgreSQL: LISTEN/NOTIFY; SQLite: data_version); None if caching is off.
    listener: ChangeListener | SqliteChangeWatch | None
    #: Delete and untag extension points other rooms register on (the lifecycle room).
    hooks: ContentHooks


def build_registry_services(
    settings: Settings, db: Database, store: BlobStore, events: EventService, quota: BlobQuota | None = None
) -> RegistryServices:
    """Wire the registry services for one application."""
    cache = ContentCache(settings.content_cache_entries)
    recent = RecentBlobs(settings.small_blob_cache_bytes)
    policy = LockPolicy(settings.immutable_tags, settings.immutable_tags_exempt)
    hooks = ContentHooks()
    listener: ChangeListener | SqliteChangeWatch | None = None
    if settings.content_cache_entries:
        if db.is_sqlite:
            listener = SqliteChangeWatch(db, cache)
        else:
            listener = ChangeListener(libpq_url(db.engine.url), cache)
    return RegistryServices(
        blobs=BlobService(db, store, cache, redirect=settings.storage_redirect, locks=policy, recent=recent),
        uploads=UploadService(
            db,
            store,
            lease_seconds=settings.upload_lease_seconds,
            expiry_seconds=settings.upload_expiry_seconds,
            locks=policy,
            quota=quota,
            recent=recent,
            cache=cache,
        ),
        manifests=ManifestService(db, store, events, cache, policy, hooks, quota, recent),
        repositories=RepositoryService(db, events, settings.catalog_page_size, cache, policy, hooks),
        locks=LockService(db, policy, cache),
        events=events,
        cache=cache,
        listener=listener,
        hooks=hooks,
    )
