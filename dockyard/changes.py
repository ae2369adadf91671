"""Content caches that every process keeps true: through PostgreSQL's LISTEN/NOTIFY, or SQLite's
``data_version``.

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

import asyncio
import logging
import os
import select
import selectors
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL

if TYPE_CHECKING:
    from dockyard.db import Database

log = logging.getLogger(__name__)

#: The channel the content triggers notify; the payload is a repository name, or "*" for all.
CHANNEL = "dockyard_content"
#: The channel a queued job or a recorded event notifies (migration 0016): the job runtimes of
#: every process look for work at once (``ChangeListener.on_work``).
WORK_CHANNEL = "dockyard_work"
#: The channel a change of a repository's own row notifies (its locks, its write-once policy, its
#: deletion), but not the ``tag_version`` bump of a push (migration 0015); payload: its name.
SETTINGS_CHANNEL = "dockyard_settings"
EVERYTHING = "*"
#: The first part of the keys of a repository's settings (``ContentCache.invalidate_content``
#: keeps them): what a push never changes, such as "not write-locked".
SETTINGS = "settings"


class ContentCache:
    """A bounded map from (repository, key) to a value, invalidated per repository.

    Keys starting with ``SETTINGS`` hold what only a change of the repository's own row changes:
    a content change (``invalidate_content``, a push) keeps them, ``invalidate`` drops them too.
    """

    def __init__(self, capacity: int = 20_000) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, Hashable], Any] = OrderedDict()
        #: Each repository's keys in ``_entries``: an invalidation visits those, not every entry.
        self._keys: dict[str, set[Hashable]] = {}
        self._generation = 0
        self.enabled = False
        #: The listener's check for notices received but not yet applied (see ChangeListener).
        self.unapplied: Callable[[], bool] = lambda: False

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, repository: str, key: Hashable) -> Any | None:
        """The cached value, or None (also whenever the cache is not enabled, or a change notice
        has arrived that its listener has not applied yet)."""
        if not self.enabled or self.unapplied():
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
            self._keys.setdefault(repository, set()).add(key)
            if len(self._entries) > self._capacity:
                (oldest, old_key), _ = self._entries.popitem(last=False)
                self._drop_keys(oldest, (old_key,))

    def invalidate(self, repository: str) -> None:
        """Drop ``repository``'s entries (all entries for ``EVERYTHING``), its settings too."""
        with self._lock:
            self._generation += 1
            if repository == EVERYTHING:
                self._entries.clear()
                self._keys.clear()
                return
            for key in self._keys.pop(repository, ()):
                del self._entries[(repository, key)]

    def invalidate_content(self, repository: str) -> None:
        """Drop ``repository``'s content entries (every repository's for ``EVERYTHING``), keeping
        its settings: after a change of its tags, manifests or blob links."""
        with self._lock:
            self._generation += 1
            for name in list(self._keys) if repository == EVERYTHING else [repository]:
                content = [key for key in self._keys.get(name, ()) if not _is_setting(key)]
                for key in content:
                    del self._entries[(name, key)]
                self._drop_keys(name, content)

    def _drop_keys(self, repository: str, dropped: Iterable[Hashable]) -> None:
        keys = self._keys.get(repository)
        if keys is not None:
            keys.difference_update(dropped)
            if not keys:
                del self._keys[repository]

    def set_enabled(self, enabled: bool) -> None:
        """Switch the cache on (a listener is connected) or off (emptied)."""
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._keys.clear()
            self.enabled = enabled


def _is_setting(key: Hashable) -> bool:
    return isinstance(key, tuple) and bool(key) and key[0] == SETTINGS


class OncePerTurn:
    """Asks a freshness check at most once per turn of the event loop, on the loop's thread.

    The check (a pragma, a poll) releases the GIL, and on a busy server getting it back cost
    more than the rest of a cached manifest GET. So the first lookup of a turn asks; if the
    cache is current, the turn's other lookups take that answer, and a callback queued behind
    them forgets it. The loop runs its queue in order and every request is queued before it
    runs, so each answer a request relies on was asked after the request arrived: a change
    committed (or notified) before a client sent its request is always seen, as when every
    lookup asks. Other threads always ask.
    """

    def __init__(self, check: Callable[[], bool]) -> None:
        self._check = check
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._current = False

    def bind(self) -> None:
        """Take the calling thread's running event loop as the loop (no loop: every lookup asks)."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop, self._thread = None, None
        else:
            self._thread = threading.get_ident()
        self._current = False

    def __call__(self) -> bool:
        """``check()``'s answer: True when the cache may be behind (ask the database)."""
        if self._thread != threading.get_ident():
            return self._check()
        if self._current:
            return False
        if self._check():
            return True
        assert self._loop is not None
        self._current = True
        self._loop.call_soon(self._forget)
        return False

    def _forget(self) -> None:
        self._current = False


def libpq_url(url: URL) -> str:
    """A SQLAlchemy PostgreSQL URL as a libpq connection string."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeListener:
    """A daemon thread that LISTENs on ``CHANNEL`` and ``SETTINGS_CHANNEL`` and keeps a ContentCache
    true.

    Another node's change must be seen at once by a client that got that node's answer and
    now asks this one: the notice reaches this process's socket before that client's next
    request normally does, but the listener thread may not have run yet (it waits for the GIL
    while the event loop answers). So a cache lookup first asks ``unapplied``: is the socket
    readable, or is the thread between reading notices and applying them? Then the lookup
    goes to the database instead. It costs one poll(2) per turn of the event loop that looks
    something up (``OncePerTurn``).
    """

    def __init__(self, conninfo: str, cache: ContentCache, *, retry_seconds: float = 1.0) -> None:
        self._conninfo = conninfo
        self._cache = cache
        self._retry = retry_seconds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        #: The listening connection's socket while connected.
        self._fd: int | None = None
        #: True from reading the socket until its notices are applied.
        self._applying = False
        #: The last payload received (diagnostics; tests use it to know a notice has arrived).
        self.last_notice: str | None = None
        self._per_turn = OncePerTurn(self.unapplied)
        cache.unapplied = self._per_turn
        #: Called (from the listener's thread) when work was announced on ``WORK_CHANNEL``, and
        #: after the connection is made again (a notice may have been missed meanwhile).
        self.on_work: list[Callable[[], None]] = []

    def start(self) -> None:
        """Start listening in the background (idempotent); called on the event loop's thread,
        cache lookups there poll once per turn of the loop."""
        self._per_turn.bind()
        if self._thread is None:
            self._stopping.clear()
            self._wake = os.pipe()
            self._thread = threading.Thread(target=self._run, name="dockyard-changes", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop listening; the cache is switched off."""
        self._stopping.set()
        thread, wake = self._thread, self._wake
        if wake is not None:
            os.write(wake[1], b"x")
        if thread is not None:
            thread.join(timeout=5)
            self._thread = None
        if wake is not None and (thread is None or not thread.is_alive()):
            for fd in wake:
                os.close(fd)
            self._wake = None
        self._cache.set_enabled(False)

    def unapplied(self) -> bool:
        """Whether a notice may have arrived that the cache does not reflect yet."""
        fd = self._fd
        if self._applying or fd is None:
            return self._applying
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))  # readable, hung up or closed: all mean "ask the database"

    def _run(self) -> None:
        import psycopg

        assert self._wake is not None
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}; LISTEN {SETTINGS_CHANNEL}; LISTEN {WORK_CHANNEL}")
                    self._fd = connection.pgconn.socket
                    self._cache.set_enabled(True)
                    self._announce_work()
                    self._listen(connection.pgconn, self._fd)
            except psycopg.Error as exc:
                if not self._stopping.is_set():
                    log.warning("content change listener lost its connection (%s); caching paused", exc)
            finally:
                self._cache.set_enabled(False)
                self._fd = None
            self._stopping.wait(self._retry)

    def _listen(self, pgconn: Any, fd: int) -> None:
        assert self._wake is not None
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            selector.register(self._wake[0], selectors.EVENT_READ)
            while not self._stopping.is_set():
                if any(key.fd == fd for key, _ in selector.select(timeout=1.0)):
                    self._apply(pgconn)

    def _apply(self, pgconn: Any) -> None:
        """Read what the socket holds and drop the entries its notices name."""
        settings, work = SETTINGS_CHANNEL.encode(), WORK_CHANNEL.encode()
        announced = False
        self._applying = True
        try:
            pgconn.consume_input()  # raises when the connection is lost
            while (notice := pgconn.notifies()) is not None:
                payload = notice.extra.decode()
                if notice.relname == work:
                    announced = True
                    continue
                if notice.relname == settings:
                    self._cache.invalidate(payload or EVERYTHING)
                else:
                    self._cache.invalidate_content(payload or EVERYTHING)
                self.last_notice = payload
        finally:
            self._applying = False
        if announced:
            self._announce_work()

    def _announce_work(self) -> None:
        for wake in self.on_work:
            wake()


class SqliteChangeWatch:
    """Keeps a ContentCache true on SQLite, where there is no LISTEN: a cache lookup first
    reads ``PRAGMA data_version`` on the event loop's connection (once per turn of the loop:
    ``OncePerTurn``), which changes whenever any other connection, in this process or
    another, has committed. A change empties the whole cache (the version does not say which
    repository changed); a lookup off the loop's thread goes to the database. One pragma
    costs a fraction of the lookup it replaces.

    A row read before a commit and stored after the lookup that noticed that commit is refused
    by the cache's generation, as with the PostgreSQL listener.
    """

    def __init__(self, db: Database, cache: ContentCache) -> None:
        self._db = db
        self._cache = cache
        self._seen: tuple[int, int] | None = None
        self._per_turn = OncePerTurn(self.unapplied)
        cache.unapplied = self._per_turn

    def start(self) -> None:
        """Switch the cache on (call on the event loop's thread, after ``serve_lookups_inline``)."""
        self._seen = None
        self._per_turn.bind()
        self._cache.set_enabled(True)

    def stop(self) -> None:
        """Switch the cache off (emptied)."""
        self._cache.set_enabled(False)

    def unapplied(self) -> bool:
        """Apply any commit made since the last lookup; True (ask the database) off the loop's thread."""
        version = self._db.data_version()
        if version is None:
            return True
        if version != self._seen:
            self._cache.invalidate(EVERYTHING)
            self._seen = version
        return False
