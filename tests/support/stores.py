"""Store-neutral checks on a BlobStore, so API tests assert the same on every driver."""

from __future__ import annotations

import time

from dockyard.storage import BlobStore, StoredBlob


def upload_leftovers(store: BlobStore) -> int:
    """How many pieces of upload data ``store`` still holds: what expiring every upload an hour
    from now, with no session alive, drops (it does drop them; call it when no upload is open)."""
    return store.expire_uploads(time.time() + 3600, lambda _upload_id: False)


def stored_blobs(store: BlobStore) -> list[StoredBlob]:
    """Every blob object the store holds, all pages."""
    found: list[StoredBlob] = []
    cursor: str | None = None
    while True:
        page = store.list_blobs(cursor)
        found.extend(page.blobs)
        if page.cursor is None:
            return found
        cursor = page.cursor
