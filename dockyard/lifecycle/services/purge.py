"""``dockyard purge`` (as ``acr purge``): runs on the job runtime, once or on a cron schedule.

A run is a ``purge_runs`` row plus a ``lifecycle.purge`` job queued in the same transaction. The
job reads each repository, lets ``purge_rules`` choose (pure), and deletes through the registry's
own delete service, so events and webhooks fire, locks refuse (reported as skipped) and a recycle
bin sees every delete. Schedules are rows with a cron expression; a once-a-minute runtime schedule
(``tick``) queues the due ones, claiming each by a conditional update so it runs once per registry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard.db import Database, as_utc, utcnow
from dockyard.events.queue import Job, enqueue
from dockyard.events.services import Origin
from dockyard.lifecycle import cron as crontab
from dockyard.lifecycle import purge_rules as rules
from dockyard.lifecycle.models import purge_runs, purge_schedules
from dockyard.lifecycle.services.purge_json import run_json, schedule_json
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry.models import blobs, manifest_blobs, manifest_children, manifests, repositories, tags
from dockyard.registry.services.manifests import ManifestService

log = logging.getLogger(__name__)

JOB_KIND = "lifecycle.purge"
TICK_SCHEDULE = "lifecycle.purge-schedules"
TICK_SECONDS = 60.0
#: A purge job's lease: a large purge takes a while (acr purge's scheduled timeout is an hour).
LEASE_SECONDS = 3600.0
MAX_CONCURRENCY = 32
MAX_ITEMS = 10_000
MAX_ERROR = 2048
#: Finished runs are kept this long (as garbage collection's), then the tick forgets them.
KEEP_RUNS_DAYS = 30
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
#: Tags with their repository and manifest (for the checks made just before each delete).
TAGGED = tags.join(repositories).join(manifests, manifests.c.id == tags.c.manifest_id)


#: Purge schedules one registry may hold (each may run every minute).
MAX_SCHEDULES = 100


class PurgeError(RegistryError):
    """A purge request that cannot run (bad filter, duration, schedule…): 400 INVALID_REQUEST shape."""

    def __init__(self, message: str, status: int = 400, code: ErrorCode = ErrorCode.INVALID_REQUEST) -> None:
        super().__init__(code, message, status=status)


@dataclass(frozen=True)
class PurgeParameters:
    """What to purge (acr purge's flags); ``repositories`` narrows a one-off run to those checked."""

    filters: tuple[str, ...] = ()
    ago: str | None = None
    keep: int = 0
    untagged: bool = False
    untagged_only: bool = False
    concurrency: int = 1
    repositories: tuple[str, ...] | None = None

    def parsed(self) -> tuple[list[rules.Filter], timedelta | None]:
        """The filters and --ago, checked as acr purge checks them."""
        try:
            filters = [rules.parse_filter(f) for f in self.filters]
            ago = rules.parse_ago(self.ago) if self.ago is not None else None
        except rules.PurgeInputError as exc:
            raise PurgeError(str(exc)) from None
        size = sum(rules.expanded_size(f.repository) + rules.expanded_size(f.tag) for f in filters)
        if size > rules.MAX_EXPANDED:  # several filters on one repository are joined into one regex
            raise PurgeError("the filters' regular expressions are too large together")
        if not self.untagged_only:
            if not filters:
                raise PurgeError("--filter is required (unless --untagged-only)")
            if ago is None:
                raise PurgeError("--ago is required (unless --untagged-only)")
        if self.keep < 0:
            raise PurgeError("--keep must be 0 or more")
        return filters, ago

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PurgeParameters:
        data = json.loads(text)
        repos = data.get("repositories")
        return cls(
            filters=tuple(data.get("filters") or ()),
            ago=data.get("ago"),
            keep=int(data.get("keep") or 0),
            untagged=bool(data.get("untagged")),
            untagged_only=bool(data.get("untagged_only")),
            concurrency=int(data.get("concurrency") or 1),
            repositories=tuple(repos) if repos is not None else None,
        )


@dataclass
class RunReport:
    """What one run did, item by item (``action``: deleted, would-delete, skipped, not-found)."""

    dry_run: bool
    deleted_tags: int = 0
    deleted_manifests: int = 0
    skipped: int = 0
    freed_bytes: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, repository: str, action: str, **detail: Any) -> None:
        # as acr purge, a tag or manifest already gone (404) counts as deleted
        if action in ("deleted", "would-delete", "not-found"):
            if kind == "tag":
                self.deleted_tags += 1
            elif kind == "manifest":
                self.deleted_manifests += 1
        elif action == "skipped":
            self.skipped += 1
        if len(self.items) < MAX_ITEMS:
            self.items.append({"kind": kind, "repository": repository, "action": action, **detail})


@dataclass(frozen=True)
class Snapshot:
    """One repository's tags and manifests as purge sees them."""

    tags: list[rules.TagRow]
    manifests: list[rules.ManifestRow]
    ids: dict[str, int]


def check_cron(expression: str) -> str:
    """A valid 5-field cron expression, normalised; else PurgeError."""
    try:
        return crontab.check_cron(expression, utcnow())
    except crontab.CronError as exc:
        raise PurgeError(str(exc)) from None


#: The identity that started a run (by name) → where it may delete now; None: gone or disabled.
Rights = Callable[[str], Callable[[str], bool] | None]


class PurgeService:
    """Starts, runs and records purges; keeps purge schedules."""

    def __init__(
        self,
        db: Database,
        manifest_service: ManifestService,
        *,
        rights: Rights | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._manifests = manifest_service
        #: Where the identity that started a run may delete, asked again when the run runs.
        self._rights = rights
        self.clock = clock

    # -- which repositories ------------------------------------------------------------------

    def targets(
        self, parameters: PurgeParameters, visible: Callable[[str], bool] | None = None
    ) -> dict[str, str | None]:
        """Repository → tag regex (None: untagged only) that these parameters purge, right now,
        among the repositories ``visible`` admits (all without it): the regexes never see others."""
        filters, _ = parameters.parsed()
        names = self._db.run_lookup(lambda conn: list(conn.execute(sa.select(repositories.c.name)).scalars()))
        if visible is not None:
            names = [name for name in names if visible(name)]
        chosen: dict[str, str | None]
        try:
            chosen = dict(rules.tag_filters(filters, names)) if filters else dict.fromkeys(names)
        except rules.PurgeInputError as exc:  # a repository regex that timed out
            raise PurgeError(str(exc)) from None
        if parameters.untagged_only:
            chosen = dict.fromkeys(chosen)
        if parameters.repositories is not None:
            allowed = set(parameters.repositories)
            chosen = {name: regex for name, regex in chosen.items() if name in allowed}
        if visible is not None:  # a literal name is taken as given, seen or not
            chosen = {name: regex for name, regex in chosen.items() if visible(name)}
        return chosen

    # -- runs --------------------------------------------------------------------------------

    def start(
        self,
        parameters: PurgeParameters,
        *,
        dry_run: bool,
        requested_by: str | None,
        schedule: str | None = None,
        conn: Connection | None = None,
    ) -> int:
        """Record a queued run and queue its job in one transaction; return the run's id."""
        parameters.parsed()
        now = self.clock()

        def work(conn: Connection) -> int:
            run_id = conn.execute(
                purge_runs.insert()
                .values(
                    schedule_name=schedule,
                    status=QUEUED,
                    dry_run=dry_run,
                    parameters=parameters.to_json(),
                    requested_by=requested_by,
                    created_at=now,
                )
                .returning(purge_runs.c.id)
            ).scalar_one()
            enqueue(conn, JOB_KIND, {"run": int(run_id)}, now=now, max_attempts=3)
            return int(run_id)

        return work(conn) if conn is not None else self._db.run_write(work)

    def handle(self, job: Job) -> None:
        """The ``lifecycle.purge`` job: run the purge ``job.payload['run']`` names."""
        self.execute(int(job.payload["run"]))

    def execute(self, run_id: int) -> RunReport | None:
        """Run one recorded purge now and record how it ended (a failure is recorded, not raised)."""
        row = self._db.run_lookup(
            lambda conn: conn.execute(sa.select(purge_runs).where(purge_runs.c.id == run_id)).first()
        )
        if row is None or row.status in (SUCCEEDED, FAILED):
            return None
        started = self.clock()
        self._db.run_write(
            lambda conn: conn.execute(
                purge_runs.update()
                .where(purge_runs.c.id == run_id)
                .values(status=RUNNING, started_at=started)
            ),
            durable=False,
        )
        report = RunReport(dry_run=bool(row.dry_run))
        error = None
        try:
            actor = row.requested_by or (f"purge schedule {row.schedule_name}" if row.schedule_name else None)
            may_delete = None
            if row.requested_by and self._rights is not None:  # rights revoked since it was started?
                may_delete = self._rights(row.requested_by)
                if may_delete is None:
                    raise PurgeError(f"{row.requested_by!r} no longer exists or is disabled")
            self._purge(PurgeParameters.from_json(row.parameters), report, actor, started, may_delete)
        except Exception as exc:
            log.exception("purge run %d failed", run_id)
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
        self._db.run_write(
            lambda conn: conn.execute(
                purge_runs.update()
                .where(purge_runs.c.id == run_id)
                .values(
                    status=FAILED if error else SUCCEEDED,
                    finished_at=self.clock(),
                    deleted_tags=report.deleted_tags,
                    deleted_manifests=report.deleted_manifests,
                    skipped=report.skipped,
                    freed_bytes=report.freed_bytes,
                    error=error,
                    items=json.dumps(report.items, separators=(",", ":")),
                )
            )
        )
        return report

    def _purge(
        self,
        parameters: PurgeParameters,
        report: RunReport,
        actor: str | None,
        now: datetime,
        may_delete: Callable[[str], bool] | None = None,
    ) -> None:
        _, ago = parameters.parsed()
        cutoff = rules.cutoff_of(now, ago)
        origin = Origin(actor=actor, user_agent="dockyard-purge")
        gone_ids: list[int] = []
        held: set[str] = set()
        concurrency = max(1, min(parameters.concurrency, MAX_CONCURRENCY))
        for repository, tag_regex in sorted(self.targets(parameters, may_delete).items()):
            snapshot = self._snapshot(repository)
            if snapshot is None:
                report.add("repository", repository, "not-found")
                continue
            doomed: list[rules.TagRow] = []
            untagged: dict[str, list[str]] = {}  # digest → the tags this run took off it
            if tag_regex is not None:
                doomed = rules.select_tags(snapshot.tags, tag_regex, cutoff, parameters.keep)
                untagged = self._delete_tags(repository, doomed, report, origin, concurrency)
            if not (parameters.untagged or parameters.untagged_only):
                continue
            current = rules.without_tags(snapshot.manifests, doomed) if report.dry_run else None
            if current is None:
                fresh = self._snapshot(repository)
                if fresh is None:
                    continue
                snapshot, current = fresh, fresh.manifests
            chosen = rules.select_untagged(current, cutoff)
            held |= self._blobs_of([snapshot.ids[m.digest] for m in chosen])
            for manifest in chosen:
                former = untagged.get(manifest.digest, [])
                if self._delete_manifest(repository, manifest, report, origin, former):
                    gone_ids.append(snapshot.ids[manifest.digest])
        report.freed_bytes = self._freed_bytes(held, gone_ids) if gone_ids else 0

    def _delete_tags(
        self,
        repository: str,
        doomed: Sequence[rules.TagRow],
        report: RunReport,
        origin: Origin,
        concurrency: int,
    ) -> dict[str, list[str]]:
        """Untag ``doomed``; returns digest → the tag names deleted from it."""
        if report.dry_run:
            for tag in doomed:
                report.add("tag", repository, "would-delete", tag=tag.name, digest=tag.digest)
            return {}

        def delete(tag: rules.TagRow) -> tuple[rules.TagRow, str, str | None]:
            if self._tag_changed(repository, tag):
                return tag, "skipped", "the tag changed after it was selected"
            try:
                self._manifests.delete(repository, tag.name, origin)
            except RegistryError as exc:
                if exc.code == ErrorCode.MANIFEST_UNKNOWN:
                    return tag, "not-found", None
                return tag, "skipped", exc.message
            return tag, "deleted", None

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            outcomes = list(pool.map(delete, doomed))
        deleted: dict[str, list[str]] = {}
        for tag, action, reason in outcomes:
            extra = {"reason": reason} if reason else {}
            report.add("tag", repository, action, tag=tag.name, digest=tag.digest, **extra)
            if action == "deleted":
                deleted.setdefault(tag.digest, []).append(tag.name)
        return deleted

    def _delete_manifest(
        self,
        repository: str,
        manifest: rules.ManifestRow,
        report: RunReport,
        origin: Origin,
        former_tags: Sequence[str] = (),
    ) -> bool:
        """Delete an untagged manifest; ``former_tags`` (those this run took off it) go to the
        recycle bin with it, so a restore brings them back."""
        if report.dry_run:
            report.add("manifest", repository, "would-delete", digest=manifest.digest)
            return True
        if self._tagged(repository, manifest.digest):
            report.add("manifest", repository, "skipped", digest=manifest.digest, reason="tagged again")
            return False
        try:
            self._manifests.delete(repository, manifest.digest, origin, former_tags=former_tags)
        except RegistryError as exc:
            if exc.code == ErrorCode.MANIFEST_UNKNOWN:
                report.add("manifest", repository, "not-found", digest=manifest.digest)
            else:
                report.add("manifest", repository, "skipped", digest=manifest.digest, reason=exc.message)
            return False
        report.add("manifest", repository, "deleted", digest=manifest.digest)
        return True

    # -- reads -------------------------------------------------------------------------------

    def _snapshot(self, repository: str) -> Snapshot | None:
        with self._db.read() as conn:
            repo_id = conn.execute(
                sa.select(repositories.c.id).where(repositories.c.name == repository)
            ).scalar()
            if repo_id is None:
                return None
            tag_rows = conn.execute(
                sa.select(
                    tags.c.name,
                    manifests.c.digest,
                    tags.c.updated_at,
                    (tags.c.write_enabled & tags.c.delete_enabled).label("deletable"),
                )
                .select_from(tags.join(manifests, manifests.c.id == tags.c.manifest_id))
                .where(tags.c.repository_id == repo_id)
            ).all()
            counts: dict[int, int] = dict(
                conn.execute(  # type: ignore[arg-type]
                    sa.select(tags.c.manifest_id, sa.func.count())
                    .where(tags.c.repository_id == repo_id)
                    .group_by(tags.c.manifest_id)
                ).all()
            )
            children: dict[int, list[str]] = {}
            for manifest_id, child in conn.execute(
                sa.select(manifest_children.c.manifest_id, manifest_children.c.child_digest)
                .select_from(manifest_children.join(manifests))
                .where(manifests.c.repository_id == repo_id)
            ):
                children.setdefault(manifest_id, []).append(child)
            manifest_rows = conn.execute(
                sa.select(
                    manifests.c.id,
                    manifests.c.digest,
                    manifests.c.media_type,
                    manifests.c.created_at,
                    manifests.c.subject_digest,
                    (manifests.c.write_enabled & manifests.c.delete_enabled).label("deletable"),
                ).where(manifests.c.repository_id == repo_id)
            ).all()
        return Snapshot(
            tags=[
                rules.TagRow(r.name, r.digest, as_utc(r.updated_at), locked=not r.deletable) for r in tag_rows
            ],
            manifests=[
                rules.ManifestRow(
                    r.digest,
                    r.media_type,
                    as_utc(r.created_at),
                    counts.get(r.id, 0),
                    tuple(sorted(children.get(r.id, ()))),
                    r.subject_digest,
                    locked=not r.deletable,
                )
                for r in manifest_rows
            ],
            ids={r.digest: r.id for r in manifest_rows},
        )

    def _tag_changed(self, repository: str, tag: rules.TagRow) -> bool:
        """Whether the tag now points elsewhere or was pushed again since it was selected."""
        now = self._db.run_lookup(
            lambda conn: conn.execute(
                sa.select(manifests.c.digest, tags.c.updated_at)
                .select_from(TAGGED)
                .where(repositories.c.name == repository, tags.c.name == tag.name)
            ).first()
        )
        return now is not None and (now.digest != tag.digest or as_utc(now.updated_at) != tag.updated_at)

    def _tagged(self, repository: str, digest: str) -> bool:
        return bool(
            self._db.run_lookup(
                lambda conn: conn.execute(
                    sa.select(tags.c.name)
                    .select_from(
                        tags.join(repositories).join(manifests, manifests.c.id == tags.c.manifest_id)
                    )
                    .where(repositories.c.name == repository, manifests.c.digest == digest)
                    .limit(1)
                ).first()
            )
        )

    def _blobs_of(self, manifest_ids: list[int]) -> set[str]:
        """The blob digests these manifests reference (read before they are deleted)."""
        if not manifest_ids:
            return set()
        query = sa.select(manifest_blobs.c.digest).where(manifest_blobs.c.manifest_id.in_(manifest_ids))
        return set(self._db.run_lookup(lambda conn: list(conn.execute(query).scalars())))

    def _freed_bytes(self, digests: set[str], gone_ids: list[int]) -> int:
        """Bytes of the blobs among ``digests`` that no manifest outside ``gone_ids`` references."""
        if not digests:
            return 0
        query = sa.select(sa.func.coalesce(sa.func.sum(blobs.c.size), 0)).where(
            blobs.c.digest.in_(sorted(digests)),
            ~sa.exists().where(
                manifest_blobs.c.digest == blobs.c.digest, manifest_blobs.c.manifest_id.not_in(gone_ids)
            ),
        )
        return int(self._db.run_lookup(lambda conn: conn.execute(query).scalar_one()))

    def get_run(self, run_id: int, *, items: bool = False) -> dict[str, Any] | None:
        """A run as the API shows it (with its items when asked)."""
        row = self._db.run_lookup(
            lambda conn: conn.execute(sa.select(purge_runs).where(purge_runs.c.id == run_id)).first()
        )
        if row is None:
            return None
        data = run_json(row)
        if items:
            data["items"] = json.loads(row.items) if row.items else []
        return data

    def list_runs(self, limit: int = 20, schedule: str | None = None) -> list[dict[str, Any]]:
        """The newest runs first."""
        query = sa.select(purge_runs).order_by(purge_runs.c.id.desc()).limit(limit)
        if schedule is not None:
            query = query.where(purge_runs.c.schedule_name == schedule)
        return [run_json(r) for r in self._db.run_lookup(lambda conn: conn.execute(query).all())]

    # -- schedules ---------------------------------------------------------------------------

    def create_schedule(
        self, name: str, cron: str, parameters: PurgeParameters, created_by: str | None
    ) -> dict[str, Any]:
        """Add a schedule (409 if the name is taken); its first run is the cron's next time."""
        cron = check_cron(cron)
        parameters.parsed()
        now = self.clock()

        def work(conn: Connection) -> None:
            if conn.execute(sa.select(purge_schedules.c.name).where(purge_schedules.c.name == name)).first():
                raise PurgeError(f"a purge schedule named {name!r} already exists", 409)
            held = conn.execute(sa.select(sa.func.count()).select_from(purge_schedules)).scalar_one()
            if held >= MAX_SCHEDULES:
                raise PurgeError(
                    f"a registry holds at most {MAX_SCHEDULES} purge schedules; delete one first", 409
                )
            conn.execute(
                purge_schedules.insert().values(
                    name=name,
                    cron=cron,
                    parameters=parameters.to_json(),
                    next_run_at=crontab.cron_next(cron, now),
                    created_by=created_by,
                    created_at=now,
                )
            )

        self._db.run_write(work)
        schedule = self.get_schedule(name)
        assert schedule is not None
        return schedule

    def get_schedule(self, name: str) -> dict[str, Any] | None:
        row = self._db.run_lookup(
            lambda conn: conn.execute(
                sa.select(purge_schedules).where(purge_schedules.c.name == name)
            ).first()
        )
        return schedule_json(row) if row is not None else None

    def list_schedules(self) -> list[dict[str, Any]]:
        rows = self._db.run_lookup(
            lambda conn: conn.execute(sa.select(purge_schedules).order_by(purge_schedules.c.name)).all()
        )
        return [schedule_json(r) for r in rows]

    def delete_schedule(self, name: str) -> bool:
        return bool(
            self._db.run_write(
                lambda conn: (
                    conn.execute(purge_schedules.delete().where(purge_schedules.c.name == name)).rowcount
                )
            )
        )

    def tick(self, now: datetime | None = None) -> list[int]:
        """Queue a run of every due schedule (each claimed once, however many processes tick);
        forget finished runs older than KEEP_RUNS_DAYS (each may hold 10,000 items)."""
        now = now or self.clock()
        self._db.run_write(
            lambda conn: conn.execute(
                purge_runs.delete().where(purge_runs.c.finished_at < now - timedelta(days=KEEP_RUNS_DAYS))
            )
        )
        due = self._db.run_lookup(
            lambda conn: conn.execute(
                sa.select(purge_schedules).where(purge_schedules.c.next_run_at <= now)
            ).all()
        )
        started = []
        for row in due:

            def work(conn: Connection, row: sa.Row = row) -> int | None:
                claimed = conn.execute(
                    purge_schedules.update()
                    .where(
                        purge_schedules.c.name == row.name, purge_schedules.c.next_run_at == row.next_run_at
                    )
                    .values(next_run_at=crontab.cron_next(row.cron, now), last_run_at=now)
                ).rowcount
                if not claimed:
                    return None
                run_id = self.start(
                    PurgeParameters.from_json(row.parameters),
                    dry_run=False,
                    requested_by=None,
                    schedule=row.name,
                    conn=conn,
                )
                conn.execute(
                    purge_schedules.update()
                    .where(purge_schedules.c.name == row.name)
                    .values(last_run_id=run_id)
                )
                return run_id

            run_id = self._db.run_write(work)
            if run_id is not None:
                started.append(run_id)
        return started
