"""The read path of the pull-through cache: the registry's ``PullThrough`` hook.

A manifest missing locally is fetched from the rule's upstream and stored (its blobs and an
index's children are fetched lazily, each on its first read); a cached tag is served locally
until ``cache_ttl_seconds`` have passed since it was last confirmed, then one HEAD upstream
decides: same digest → confirmed again, moved → the new manifest is fetched and the tag moved,
no answer / 5xx / 429 → the cached copy is served. By-digest reads of cached content never go
upstream. Every network call runs in the caller's worker thread, outside any transaction; one
fetch per manifest or blob per process at a time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.cache.models import cache_tags
from dockyard.cache.rules import Match
from dockyard.cache.services import CacheConfigService
from dockyard.config import Settings
from dockyard.db import Database, as_utc, per_dialect, utcnow
from dockyard.events.services import Origin
from dockyard.oci import mediatypes as mt
from dockyard.oci.digest import parse_digest
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.names import parse_reference
from dockyard.registry.models import (
    blobs,
    manifest_blobs,
    manifest_children,
    manifests,
    repositories,
    repository_blobs,
    tags,
)
from dockyard.registry.services import RegistryServices
from dockyard.upstream.interfaces import (
    Credentials,
    FetchedManifest,
    UpstreamClient,
    UpstreamDenied,
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

#: Everything the registry stores; the upstream picks (an index when it has one).
ACCEPT = (*mt.MANIFEST_TYPES,)
#: After a failed check a tag is served from the cache this long before the upstream is asked again.
RETRY_SECONDS = 10.0
#: The longest Retry-After passed on from a throttling upstream.
MAX_RETRY_AFTER = 3600.0
#: Tags whose freshness this process remembers (the database is the truth; this only saves reads).
MAX_REMEMBERED = 10_000

OpenUpstream = Callable[[str, Credentials | None, Settings], UpstreamClient]

TAG_STATE = (
    sa.select(manifests.c.digest, cache_tags.c.checked_at)
    .select_from(
        tags.join(repositories)
        .join(manifests, manifests.c.id == tags.c.manifest_id)
        .outerjoin(
            cache_tags,
            sa.and_(cache_tags.c.repository == repositories.c.name, cache_tags.c.tag == tags.c.name),
        )
    )
    .where(repositories.c.name == sa.bindparam("repository"), tags.c.name == sa.bindparam("tag"))
)
#: The linux/amd64 child of the index a tag points at (the one a client without index support gets).
PLATFORM_CHILD = (
    sa.select(manifest_children.c.child_digest)
    .select_from(
        tags.join(repositories)
        .join(manifests, manifests.c.id == tags.c.manifest_id)
        .join(manifest_children, manifest_children.c.manifest_id == manifests.c.id)
    )
    .where(
        repositories.c.name == sa.bindparam("repository"),
        tags.c.name == sa.bindparam("tag"),
        manifest_children.c.os == sa.literal_column("'linux'"),
        manifest_children.c.architecture == sa.literal_column("'amd64'"),
    )
    .limit(1)
)
HAS_MANIFEST = (
    sa.select(manifests.c.id)
    .select_from(manifests.join(repositories))
    .where(repositories.c.name == sa.bindparam("repository"), manifests.c.digest == sa.bindparam("digest"))
)
#: The blob's size as a manifest of the repository (so one its upstream served) declares it.
REFERENCED = (
    sa.select(manifest_blobs.c.size)
    .select_from(manifest_blobs.join(manifests).join(repositories))
    .where(
        repositories.c.name == sa.bindparam("repository"),
        manifest_blobs.c.digest == sa.bindparam("digest"),
    )
    .limit(1)
)
HAS_BLOB = (
    sa.select(repository_blobs.c.digest)
    .select_from(repository_blobs.join(repositories).join(blobs))
    .where(
        repositories.c.name == sa.bindparam("repository"),
        repository_blobs.c.digest == sa.bindparam("digest"),
        blobs.c.state == sa.literal_column("'live'"),
    )
)


def _upsert_checked(insert: Callable[[sa.Table], object]) -> object:
    statement = insert(cache_tags)
    return statement.on_conflict_do_update(  # type: ignore[attr-defined]
        index_elements=["repository", "tag"],
        set_={"digest": statement.excluded.digest, "checked_at": statement.excluded.checked_at},  # type: ignore[attr-defined]
    )


UPSERT_CHECKED = per_dialect(_upsert_checked)


def _default_open(registry: str, credentials: Credentials | None, settings: Settings) -> UpstreamClient:
    from dockyard.upstream.client import open_upstream  # the client loads httpx: only when a rule exists

    return open_upstream(registry, credentials, settings)


def _unavailable(exc: UpstreamError, what: str) -> RegistryError:
    """The error a pull gets when the upstream cannot give what is not cached."""
    if isinstance(exc, UpstreamDenied):
        return RegistryError(
            ErrorCode.DENIED, f"the upstream registry refused {what}: check the credential set"
        )
    if isinstance(exc, UpstreamUnavailable) and exc.status == 429:
        wait = min(exc.retry_after or 1.0, MAX_RETRY_AFTER)
        headers = {"Retry-After": str(max(1, math.ceil(wait)))}  # whole seconds, never 0
        return RegistryError(
            ErrorCode.TOOMANYREQUESTS, f"the upstream registry throttles {what}", headers=headers
        )
    # The reason (which may name internal hosts and addresses) is logged, not told to the puller.
    return RegistryError(ErrorCode.UNKNOWN, f"the upstream registry did not serve {what}"[:500], status=502)


class _Flights:
    """One lock per key while someone holds it: one upstream fetch per manifest or blob at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, ...], tuple[threading.Lock, int]] = {}

    @contextmanager
    def one(self, *key: str) -> Iterator[None]:
        with self._lock:
            lock, users = self._held.get(key, (threading.Lock(), 0))
            self._held[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._held[key]
                if users == 1:
                    del self._held[key]
                else:
                    self._held[key] = (lock, users - 1)


class PullThroughCache:
    """The ``PullThrough`` hook the registry calls (``RegistryServices.hooks.pull_through``)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        registry: RegistryServices,
        config: CacheConfigService,
        *,
        open_upstream: OpenUpstream = _default_open,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._db = db
        self._registry = registry
        self._config = config
        self._open = open_upstream
        self._clock = clock
        self._ttl = settings.cache_ttl_seconds
        self._flights = _Flights()
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str | None], tuple[UpstreamClient, datetime | None]] = {}
        #: (repository, tag) → monotonic time until which this process knows the tag is current.
        self._fresh: dict[tuple[str, str], float] = {}
        #: (repository, tag or digest) → monotonic time until which the upstream's 404 stands: a flood
        #: of pulls of something missing costs one upstream request per RETRY_SECONDS, not one each.
        self._missing: dict[tuple[str, str], float] = {}
        #: What the read path did: upstream fetches, checks, stale copies served (also logged).
        self.stats: Counter[str] = Counter()
        #: Also told each outcome (the app factory points it at the Prometheus counter).
        self.observer: Callable[[str], None] | None = None

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.stats[outcome] += 1
        if self.observer is not None:
            self.observer(outcome)

    # -- the hook ---------------------------------------------------------------------------

    def covers(self, repository: str) -> bool | None:
        rules = self._config.snapshot()
        if rules is None:
            return None
        return rules.match(repository) is not None

    def covered(self, repository: str) -> bool:
        return self._config.rules().match(repository) is not None

    def manifest(self, repository: str, reference: str, accept: Sequence[str]) -> bool:
        match = self._config.rules().match(repository)
        if match is None:
            return False
        try:
            tag, digest = parse_reference(reference)
        except RegistryError:
            return False  # the registry answers a malformed reference
        if digest is not None:
            return self._by_digest(match, repository, digest)
        assert tag is not None
        fetched = self._by_tag(match, repository, tag)
        if accept and not any(kind in accept for kind in (*mt.INDEXES, "*/*")):
            # A client that takes no index gets the index's linux/amd64 image: that child must be here.
            child = self._db.lookup_row(PLATFORM_CHILD, {"repository": repository, "tag": tag})
            if child is not None:
                fetched = self._by_digest(match, repository, child[0]) or fetched
        return fetched

    def blob(self, repository: str, digest: str) -> bool | None:
        match = self._config.rules().match(repository)
        if match is None:
            return None
        parse_digest(digest)
        params = {"repository": repository, "digest": digest}
        with self._flights.one("b", digest):
            if self._db.lookup_row(HAS_BLOB, params) is not None:
                return False  # another request fetched it while this one waited
            # The registry has the bytes and a manifest that came from the upstream names them: link.
            declared = self._db.lookup_row(REFERENCED, params)
            if (
                declared is not None
                and self._registry.blobs.mount(repository, digest, None, lambda _: True) is not None
            ):
                self._count("blobs_linked")
                self._registry.cache.invalidate_content(repository)
                return False
            client = self._client(match)
            try:
                with client.open_blob(match.repository, digest) as stream:
                    # At most the size a manifest declared (else the upstream's own): an endless
                    # body stops there.
                    size = int(declared[0]) if declared is not None else stream.size
                    if size is None or (stream.size is not None and stream.size != size):
                        raise UpstreamError(
                            f"the upstream sent {stream.size} bytes for a blob of {size}",
                            code="SIZE_INVALID",
                        )
                    self._registry.uploads.upload_whole(
                        repository, digest, stream.chunks, content_length=size
                    )
            except UpstreamNotFound:
                return None
            except (UpstreamError, RegistryError) as exc:
                if isinstance(exc, RegistryError) and exc.code not in (
                    ErrorCode.DIGEST_INVALID,
                    ErrorCode.SIZE_INVALID,
                ):
                    raise  # the registry's own refusal (a quota, a lock): the caller's error
                self._count("upstream_errors")
                log.warning(
                    "cache rule %s: blob %s from %s failed: %s", match.rule.name, digest, match.registry, exc
                )
                if isinstance(exc, RegistryError):  # the bytes did not match the digest or size
                    raise RegistryError(
                        ErrorCode.UNKNOWN,
                        f"the upstream registry sent bad bytes for blob {digest}: {exc.message}"[:500],
                        status=502,
                    ) from None
                raise _unavailable(exc, f"blob {digest}") from None
        self._count("blobs_fetched")
        self._registry.cache.invalidate_content(repository)
        return True

    # -- manifests --------------------------------------------------------------------------

    def _by_digest(self, match: Match, repository: str, digest: str) -> bool:
        if self._has_manifest(repository, digest):
            return False  # cached content by digest never goes upstream
        if self._clock() < self._missing.get((repository, digest), 0.0):
            return False
        with self._flights.one("m", repository, digest):
            if self._has_manifest(repository, digest):
                return False
            try:
                fetched = self._client(match).get_manifest(match.repository, digest, ACCEPT)
            except UpstreamNotFound:
                self._remember((repository, digest), RETRY_SECONDS, self._missing)
                return False
            except UpstreamError as exc:
                self._count("upstream_errors")
                log.warning(
                    "cache rule %s: manifest %s from %s failed: %s",
                    match.rule.name,
                    digest,
                    match.registry,
                    exc,
                )
                raise _unavailable(exc, f"manifest {digest}") from None
            self._store(match, repository, digest, fetched, None)
        return True

    def _by_tag(self, match: Match, repository: str, tag: str) -> bool:
        key = (repository, tag)
        if self._clock() < self._fresh.get(key, 0.0) or self._clock() < self._missing.get(key, 0.0):
            return False
        with self._flights.one("t", repository, tag):
            if self._clock() < self._fresh.get(key, 0.0):
                return False
            row = self._db.lookup_row(TAG_STATE, {"repository": repository, "tag": tag})
            if row is None:
                return self._first_fetch(match, repository, tag)
            local_digest, checked_at = row
            age = self._ttl + 1 if checked_at is None else (utcnow() - as_utc(checked_at)).total_seconds()
            if age < self._ttl:
                self._remember(key, self._ttl - age)
                return False
            return self._revalidate(match, repository, tag, local_digest)

    def _first_fetch(self, match: Match, repository: str, tag: str) -> bool:
        try:
            fetched = self._client(match).get_manifest(match.repository, tag, ACCEPT)
        except UpstreamNotFound:
            self._remember((repository, tag), RETRY_SECONDS, self._missing)
            return False  # the registry answers MANIFEST_UNKNOWN / NAME_UNKNOWN
        except UpstreamError as exc:
            self._count("upstream_errors")
            log.warning(
                "cache rule %s: %s:%s from %s failed: %s",
                match.rule.name,
                repository,
                tag,
                match.registry,
                exc,
            )
            raise _unavailable(exc, f"{repository}:{tag}") from None
        self._store(match, repository, tag, fetched, tag)
        return True

    def _revalidate(self, match: Match, repository: str, tag: str, local_digest: str) -> bool:
        """One HEAD upstream for a tag past its TTL; the cached copy is served if it fails."""
        client = self._client(match)
        self._count("checks")
        try:
            head = client.head_manifest(match.repository, tag, ACCEPT)
            if head.digest == local_digest:
                self._confirm(repository, tag, local_digest)
                return False
            fetched = client.get_manifest(match.repository, tag, ACCEPT)
        except UpstreamError as exc:
            self._count("stale_served")
            log.warning(
                "cache rule %s: serving cached %s:%s, the upstream %s did not answer the check: %s",
                match.rule.name, repository, tag, match.registry, exc,
            )  # fmt: skip
            self._remember((repository, tag), min(self._ttl, RETRY_SECONDS))
            return False
        try:
            self._store(match, repository, tag, fetched, tag)
        except RegistryError as exc:  # e.g. a write-once tag or a write lock on the repository
            self._count("stale_served")
            log.warning("cache rule %s: serving cached %s:%s, the moved tag cannot be stored: %s",
                        match.rule.name, repository, tag, exc.message)  # fmt: skip
            self._remember((repository, tag), min(self._ttl, RETRY_SECONDS))
            return False
        return True

    def _store(
        self, match: Match, repository: str, reference: str, fetched: FetchedManifest, tag: str | None
    ) -> None:
        """Store a fetched manifest as a push by the rule (webhooks fire), its blobs left to fetch."""
        now = utcnow()

        def confirm(conn: Connection, repo_id: int) -> None:
            if tag is not None:
                conn.execute(
                    UPSERT_CHECKED[conn.dialect.name],
                    {"repository": repository, "tag": tag, "digest": fetched.digest, "checked_at": now},
                )

        origin = Origin(actor=f"cache-rule:{match.rule.name}", method="GET", host=match.registry)
        self._registry.manifests.put(
            repository, reference, fetched.payload, fetched.media_type, origin, before=confirm, lazy=True
        )
        self._count("manifests_fetched")
        if tag is not None:
            self._remember((repository, tag), self._ttl)

    def _confirm(self, repository: str, tag: str, digest: str) -> None:
        now = utcnow()
        self._db.run_write(
            lambda conn: conn.execute(
                UPSERT_CHECKED[conn.dialect.name],
                {"repository": repository, "tag": tag, "digest": digest, "checked_at": now},
            ),
            durable=False,
        )
        self._remember((repository, tag), self._ttl)

    def _remember(
        self, key: tuple[str, str], seconds: float, memory: dict[tuple[str, str], float] | None = None
    ) -> None:
        """Note ``key`` in ``memory`` (default: the fresh tags) for ``seconds``; bounded in size."""
        if seconds <= 0:
            return
        memory = self._fresh if memory is None else memory
        with self._lock:
            if len(memory) >= MAX_REMEMBERED:
                memory.clear()
            memory[key] = self._clock() + seconds

    def _has_manifest(self, repository: str, digest: str) -> bool:
        return self._db.lookup_row(HAS_MANIFEST, {"repository": repository, "digest": digest}) is not None

    # -- upstream clients -------------------------------------------------------------------

    def _client(self, match: Match) -> UpstreamClient:
        """The upstream client of a rule (one per registry and credential set, rebuilt when it changes)."""
        name = match.rule.credential_set
        credentials: Credentials | None = None
        changed: datetime | None = None
        if name is not None:
            found = self._config.credentials(name, match.registry)
            if found is None:
                raise RegistryError(
                    ErrorCode.DENIED,
                    f"cache rule {match.rule.name!r}: credential set {name!r} is gone "
                    "or is for another login server",
                )
            credentials, changed = found
        key = (match.registry, name)
        with self._lock:
            held = self._clients.get(key)
            if held is not None and held[1] == changed:
                return held[0]
        try:
            client = self._open(match.registry, credentials, self._settings)
        except UpstreamError as exc:
            log.warning("cache rule %s: cannot reach %s: %s", match.rule.name, match.registry, exc)
            raise _unavailable(exc, f"rule {match.rule.name!r}") from None
        with self._lock:
            old = self._clients.get(key)
            self._clients[key] = (client, changed)
        if old is not None and old[0] is not client:
            old[0].close()
        return client

    def close(self) -> None:
        """Close every upstream client."""
        with self._lock:
            held, self._clients = list(self._clients.values()), {}
        for client, _ in held:
            client.close()
