"""Imports: requested (API), run as ``imports.run`` jobs, recorded with their progress in ``imports``."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard import __version__
from dockyard.config import Settings
from dockyard.db import Database, utcnow
from dockyard.events.queue import Job, enqueue
from dockyard.events.services import Origin
from dockyard.imports.copier import Copier, ImportFailed, Progress
from dockyard.imports.models import imports
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.names import MAX_NAME_LENGTH, NAME_GRAMMAR, TAG_GRAMMAR
from dockyard.registry.models import repositories, tags
from dockyard.registry.services import RegistryServices
from dockyard.upstream.client import open_upstream, parse_source
from dockyard.upstream.interfaces import (
    Credentials,
    UpstreamClient,
    UpstreamDenied,
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

JOB_KIND = "imports.run"
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
#: At most this many targets (``repo:tag`` or ``repo``) per import.
MAX_TARGETS = 50
#: A crash mid-import retries it (the copy is idempotent) this many times in all.
JOB_ATTEMPTS = 3
#: An import of a large image may take long; its job lease must outlast it.
LEASE_SECONDS = 6 * 3600

OpenUpstream = Callable[[str, Credentials | None, Settings], UpstreamClient]


@dataclass(frozen=True)
class ImportRecord:
    """One import as the API shows it (never the password)."""

    id: str
    status: str
    source: str
    targets: list[str]
    force: bool
    include_referrers: bool
    username: str | None
    requested_by: str | None
    digest: str | None
    manifests_done: int
    manifests_total: int
    bytes_done: int
    bytes_total: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def _invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.INVALID_REQUEST, message)


def parse_target(text: str) -> tuple[str, str | None]:
    """``repository[:tag]`` → (repository, tag or None); INVALID_REQUEST when malformed."""
    repository, _, tag = text.partition(":")
    if not repository or len(repository) > MAX_NAME_LENGTH or not NAME_GRAMMAR.match(repository):
        raise _invalid(f"invalid target repository {repository[:100]!r}")
    if ":" in text and not TAG_GRAMMAR.match(tag):
        raise _invalid(f"invalid target tag {tag[:140]!r}")
    return repository, (tag if ":" in text else None)


class ImportService:
    """Queues imports, runs them (the job handler) and reads them back."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        registry: RegistryServices,
        open_client: OpenUpstream = open_upstream,
    ) -> None:
        self._db = db
        self._settings = settings
        self._registry = registry
        self._open = open_client

    def request(
        self,
        *,
        source: str,
        targets: list[str],
        force: bool = False,
        include_referrers: bool = False,
        username: str | None = None,
        password: str | None = None,
        requested_by: str | None = None,
    ) -> ImportRecord:
        """Check the request, record it and queue its job (one transaction)."""
        try:
            ref = parse_source(source)
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        if (username is None) != (password is None):
            raise _invalid("give both username and password, or neither")
        if username is not None and (not username or len(username) > 255):
            raise _invalid("username must be 1 to 255 characters")
        if password is not None and (not password or len(password) > 4096):
            raise _invalid("password must be 1 to 4096 characters")
        if not targets:  # as az acr import: the source's own name (and tag, if it has one)
            targets = [ref.repository if ref.is_digest else f"{ref.repository}:{ref.reference}"]
        if len(targets) > MAX_TARGETS:
            raise _invalid(f"at most {MAX_TARGETS} targets per import")
        cache = self._registry.hooks.pull_through
        for target in targets:
            repository, _ = parse_target(target)
            if cache is not None and cache.covered(repository):
                raise RegistryError(
                    ErrorCode.DENIED,
                    f"{repository} is a cache rule's target: its content comes from the rule's upstream",
                )
        targets = list(dict.fromkeys(targets))
        import_id = str(uuid.uuid4())

        def work(conn: Connection) -> None:
            conn.execute(
                imports.insert().values(
                    id=import_id,
                    status=QUEUED,
                    source=source.strip(),
                    targets=targets,
                    force=force,
                    include_referrers=include_referrers,
                    username=username,
                    password=password,
                    requested_by=requested_by,
                    created_at=utcnow(),
                )
            )
            enqueue(conn, JOB_KIND, {"import": import_id}, max_attempts=JOB_ATTEMPTS)

        self._db.run_write(work)
        found = self.get(import_id)
        assert found is not None
        return found

    def handle(self, job: Job) -> None:
        """The ``imports.run`` job handler."""
        self.execute(str(job.payload["import"]), last_attempt=job.attempts >= job.max_attempts)

    def execute(self, import_id: str, *, last_attempt: bool = True) -> ImportRecord | None:
        """Run a recorded import (a finished one is left alone); the outcome is recorded and the
        password scrubbed whatever happens. On the job's last attempt the password is scrubbed from
        the row as the run starts (held in memory only), so a process killed then leaves none behind."""

        def start(conn: Connection) -> Any:
            row = conn.execute(sa.select(imports).where(imports.c.id == import_id).with_for_update()).first()
            if row is None or row.status in (SUCCEEDED, FAILED):
                return None
            values: dict[str, Any] = {"status": RUNNING, "started_at": utcnow()}
            if last_attempt:
                values["password"] = None
            conn.execute(imports.update().where(imports.c.id == import_id).values(**values))
            return row

        row = self._db.run_write(start)
        if row is None:
            return self.get(import_id)
        values: dict[str, Any]
        try:
            self._run(row)
        except ImportFailed as exc:
            values = {"status": FAILED, "error": str(exc)}
        except UpstreamError as exc:
            values = {"status": FAILED, "error": _upstream_message(row.source, exc)}
        except RegistryError as exc:
            values = {"status": FAILED, "error": f"{exc.code.name}: {exc.message}"}
        except Exception as exc:
            log.exception("import %s failed", import_id)
            values = {"status": FAILED, "error": f"{type(exc).__name__}: {exc}"}
        else:
            values = {"status": SUCCEEDED}
        if values.get("error"):
            values["error"] = values["error"][:2048]
            log.info("import %s of %s failed: %s", import_id, row.source, values["error"])
        self._db.run_write(
            lambda conn: conn.execute(
                imports.update()
                .where(imports.c.id == import_id)
                .values(finished_at=utcnow(), password=None, **values)
            )
        )
        return self.get(import_id)

    def _run(self, row: Any) -> None:
        ref = parse_source(row.source)
        targets = [parse_target(t) for t in row.targets]
        tagged = [(repository, tag) for repository, tag in targets if tag is not None]
        if not row.force:
            self._refuse_existing(tagged)
        credentials = Credentials(row.username, row.password) if row.username and row.password else None
        origin = Origin(actor=row.requested_by, user_agent=f"dockyard-import/{__version__}", method="IMPORT")
        client = self._open(ref.registry, credentials, self._settings)
        try:
            copier = Copier(client, self._registry, origin)
            plan = copier.plan(ref, include_referrers=row.include_referrers)
            repos = list(dict.fromkeys(repository for repository, _ in targets))
            blob_bytes = sum(d.size for d in plan.blobs())
            self._progress_totals(
                row.id, plan.top.digest, len(plan.nodes) * len(repos), blob_bytes * len(repos)
            )
            progress = Progress(lambda manifests, size: self._progress(row.id, manifests, size))
            for repository in repos:
                copier.copy_blobs(plan, ref.repository, repository, progress)
                copier.copy_manifests(plan, repository, progress)
            copier.tag(plan, tagged, force=row.force)
            progress.add(flush=True)
        finally:
            client.close()

    def _refuse_existing(self, tagged: list[tuple[str, str]]) -> None:
        with self._db.read() as conn:
            for repository, tag in tagged:
                exists = conn.execute(
                    sa.select(tags.c.name)
                    .join(repositories, repositories.c.id == tags.c.repository_id)
                    .where(repositories.c.name == repository, tags.c.name == tag)
                ).first()
                if exists is not None:
                    raise ImportFailed(f"the tag {repository}:{tag} exists; use force to overwrite it")

    def _progress_totals(self, import_id: str, digest: str, manifests: int, size: int) -> None:
        self._db.run_write(
            lambda conn: conn.execute(
                imports.update()
                .where(imports.c.id == import_id)
                .values(digest=digest, manifests_total=manifests, bytes_total=size)
            )
        )

    def _progress(self, import_id: str, manifests: int, size: int) -> None:
        self._db.run_write(
            lambda conn: conn.execute(
                imports.update()
                .where(imports.c.id == import_id)
                .values(manifests_done=manifests, bytes_done=size)
            )
        )

    def get(self, import_id: str) -> ImportRecord | None:
        with self._db.read() as conn:
            row = conn.execute(sa.select(imports).where(imports.c.id == import_id)).first()
        return None if row is None else _record(row)

    def list(self, limit: int = 20) -> list[ImportRecord]:
        """The latest imports, newest first."""
        with self._db.read() as conn:
            rows = conn.execute(sa.select(imports).order_by(imports.c.created_at.desc()).limit(limit)).all()
        return [_record(row) for row in rows]


def _upstream_message(source: str, exc: UpstreamError) -> str:
    if isinstance(exc, UpstreamNotFound):
        return f"{source} was not found upstream: {exc}"
    if isinstance(exc, UpstreamDenied):
        return f"the upstream refused access to {source} (check username and password): {exc}"
    if isinstance(exc, UpstreamUnavailable):
        return f"the upstream registry is unavailable: {exc}"
    return f"the upstream failed: {exc}"


def _record(row: Any) -> ImportRecord:
    return ImportRecord(
        id=row.id,
        status=row.status,
        source=row.source,
        targets=list(row.targets),
        force=row.force,
        include_referrers=row.include_referrers,
        username=row.username,
        requested_by=row.requested_by,
        digest=row.digest,
        manifests_done=row.manifests_done,
        manifests_total=row.manifests_total,
        bytes_done=row.bytes_done,
        bytes_total=row.bytes_total,
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )
