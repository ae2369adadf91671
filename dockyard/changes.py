"""Content caches that every process keeps true through PostgreSQL's LISTEN/NOTIFY.

Hot reads (a manifest by tag or digest, a blob's size) would otherwise cost a database
round trip each. On PostgreSQL, triggers on the content tables (migration 0004) send a
notification naming the repository whenever its tags, manifests or blob links change;
every process LISTENs on one connection and drops that repository's cached entries.

A cache answers only while its listener is connected: when the connection drops it is
emptied and bypassed until LISTEN is re-established, so no change can slip by unseen.
A reader that missed records the cache's generation before its query and stores the
row only if no invalidation arrived meanwhile, so a row read before a change committed
is never cached after the change's notification. Across nodes a change becomes visible
once its notification arrives (normally within milliseconds of the commit); the node
that made the change drops its entries as soon as it commits.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from sqlalchemy.engine import URL

log = logging.getLogger(__name__)

#: The channel the content triggers notify; the payload is a repository name, or "*" for all.
CHANNEL = "dockyard_content"
EVERYTHING = "*"


class ContentCache:
    """A bounded map from (repository, key) to a value, invalidated per repository."""

    def __init__(self, capacity: int = 20_000) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, Hashable], Any] = OrderedDict()
        self._generation = 0
        self.enabled = False

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, repository: str, key: Hashable) -> Any | None:
        """The cached value, or None (also whenever the cache is not enabled)."""
        if not self.enabled:
            return None
        return self._entries.get((repository, key))

    def generation(self) -> int:
        """A token to take before reading the database, for ``put``."""
        return self._generation

    def put(self, repository: str, key: Hashable, value: Any, generation: int) -> None:
        """Cache ``value`` if nothing was invalidated since ``generation`` was taken."""
        if not self.enabled:
            return
        with self._lock:
            if not self.enabled or generation != self._generation:
                return
            self._entries[(repository, key)] = value
            if len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def invalidate(self, repository: str) -> None:
        """Drop ``repository``'s entries (all entries for ``EVERYTHING``)."""
        with self._lock:
            self._generation += 1
            if repository == EVERYTHING:
                self._entries.clear()
                return
            for entry in [entry for entry in self._entries if entry[0] == repository]:
                del self._entries[entry]

    def set_enabled(self, enabled: bool) -> None:
        """Switch the cache on (a listener is connected) or off (emptied)."""
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self.enabled = enabled


def libpq_url(url: URL) -> str:
    """A SQLAlchemy PostgreSQL URL as a libpq connection string."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeListener:
    """A daemon thread that LISTENs on ``CHANNEL`` and keeps a ContentCache true."""

    def __init__(self, conninfo: str, cache: ContentCache, *, retry_seconds: float = 1.0) -> None:
        self._conninfo = conninfo
        self._cache = cache
        self._retry = retry_seconds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: Any = None
        #: The last payload received (diagnostics; tests use it to know a notice has arrived).
        self.last_notice: str | None = None

    def start(self) -> None:
        """Start listening in the background (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dockyard-changes", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop listening; the cache is switched off."""
        self._stopping.set()
        connection = self._connection
        if connection is not None:
            connection.cancel_safe()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._cache.set_enabled(False)

    def _run(self) -> None:
        import psycopg

        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as connection:
                    self._connection = connection
                    connection.execute(f"LISTEN {CHANNEL}")
                    self._cache.set_enabled(True)
                    while not self._stopping.is_set():
                        for notice in connection.notifies(timeout=1.0):
                            self._cache.invalidate(notice.payload or EVERYTHING)
                            self.last_notice = notice.payload
            except psycopg.Error as exc:
                if not self._stopping.is_set():
                    log.warning("content change listener lost its connection (%s); caching paused", exc)
            finally:
                self._connection = None
                self._cache.set_enabled(False)
            self._stopping.wait(self._retry)
