"""Webhook subscriptions, fan-out of logged events into deliveries (a consumer), delivery bookkeeping."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dockyard import prepared
from dockyard.db import Database, as_utc, utcnow
from dockyard.events.services import DISPATCHED_ACTIONS, RepositoryEvent
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.tiers.services import TierService
from dockyard.webhooks import payloads
from dockyard.webhooks.addresses import BoundedResolver, IPNetwork, Resolver, check_destination
from dockyard.webhooks.models import deliveries, delivery_attempts, webhooks
from dockyard.webhooks.rules import (
    PAYLOAD_FORMATS,
    check_actions,
    check_headers,
    check_name,
    check_uri,
    invalid,
    normalize_scope,
    scope_matches,
)

PENDING, DELIVERING, SUCCEEDED, DEAD = "pending", "delivering", "succeeded", "dead"
#: At most this many deliveries to one webhook are in flight, so one slow receiver cannot hold every slot.
PER_WEBHOOK_IN_FLIGHT = 2
#: How much of a receiver's answer the delivery log keeps (it is shown to Contributors: keep it short).
BODY_EXCERPT = 1024


@dataclass(frozen=True)
class WebhookInfo:
    name: str
    uri: str
    actions: list[str]
    scope: str | None
    headers: dict[str, str]
    enabled: bool
    payload_format: str
    has_secret: bool
    created_at: datetime


@dataclass(frozen=True)
class AttemptInfo:
    started_at: datetime
    duration_ms: int
    request_uri: str
    request_headers: dict[str, str]
    response_status: int | None
    response_headers: dict[str, str] | None
    response_body: str | None
    error: str | None


@dataclass(frozen=True)
class DeliveryInfo:
    id: int
    event_id: str
    action: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    retry_until: datetime
    last_status: int | None
    last_error: str | None
    body: str
    attempt_log: list[AttemptInfo] = field(default_factory=list)


@dataclass(frozen=True)
class DeliveryJob:
    """What a worker needs to make one attempt."""

    id: int
    webhook: str
    uri: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class AttemptResult:
    started_at: datetime
    duration_ms: int
    status: int | None = None
    headers: dict[str, str] | None = None
    body: str | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


ENABLED_ACTIONS = sa.select(webhooks.c.actions).where(webhooks.c.enabled)
ANY_ENABLED = sa.select(webhooks.c.id).where(webhooks.c.enabled).limit(1)
#: How long ``WebhookService.wants`` trusts what it read (another process's webhook changes).
WANTS_FRESH_SECONDS = 1.0
#: When the next unfinished delivery of an enabled webhook comes due (its attempt time or, while
#: another process holds it, its lease's end).
NEXT_DUE = (
    sa.select(
        sa.func.min(
            sa.case(
                (deliveries.c.lease_until > deliveries.c.next_attempt_at, deliveries.c.lease_until),
                else_=deliveries.c.next_attempt_at,
            )
        )
    )
    .select_from(deliveries.join(webhooks))
    .where(webhooks.c.enabled, deliveries.c.status.in_([PENDING, DELIVERING]))
)
ANY_DUE = (
    sa.select(deliveries.c.id)
    .select_from(deliveries.join(webhooks))
    .where(
        webhooks.c.enabled,
        deliveries.c.status.in_([PENDING, DELIVERING]),
        deliveries.c.next_attempt_at <= sa.bindparam("now"),
        sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < sa.bindparam("now")),
    )
    .limit(1)
)


def _not_found(name: str) -> RegistryError:
    return RegistryError(ErrorCode.NOT_FOUND, f"webhook {name!r} not found")


class WebhookService:
    """Creates webhooks, turns events into deliveries, and keeps the delivery log."""

    def __init__(
        self,
        db: Database,
        *,
        registry_name: str,
        tiers: TierService,
        retry_window_seconds: float,
        retry_base_seconds: float,
        retry_max_seconds: float,
        lease_seconds: float,
        allowed_networks: tuple[IPNetwork, ...] = (),
        resolve: Resolver | None = None,
    ) -> None:
        self._db = db
        #: Networks webhooks may be sent to although addresses.REFUSED lists them (a setting).
        self.allowed_networks = allowed_networks
        self._resolve = resolve or BoundedResolver()
        self.registry_name = registry_name
        self._tiers = tiers
        self._window = timedelta(seconds=retry_window_seconds)
        self._base = retry_base_seconds
        self._max = retry_max_seconds
        self._lease = timedelta(seconds=lease_seconds)
        #: (when read, the actions enabled webhooks subscribe to), for ``wants``.
        self._enabled_actions: tuple[float, frozenset[str]] | None = None

    # -- subscriptions ----------------------------------------------------------------------

    def create(
        self,
        name: str,
        uri: str,
        actions: list[str],
        *,
        scope: str | None = None,
        headers: dict[str, str] | None = None,
        enabled: bool = True,
        secret: str | None = None,
        payload_format: str = "acr",
    ) -> WebhookInfo:
        """A new webhook; refused past the tier's webhook limit (409 LIMIT_EXCEEDED)."""
        values = self._validated(
            name=check_name(name),
            uri=uri,
            actions=actions,
            scope=scope,
            headers=headers or {},
            secret=secret,
            payload_format=payload_format,
        )
        now = utcnow()

        def work(conn: Connection) -> None:
            if conn.execute(sa.select(webhooks.c.id).where(webhooks.c.name == name)).first():
                raise RegistryError(ErrorCode.ALREADY_EXISTS, f"webhook {name!r} already exists")
            self._tiers.check_count(conn, "webhooks")
            conn.execute(webhooks.insert().values(**values, enabled=enabled, created_at=now, updated_at=now))

        self._db.run_write(work)
        self._enabled_actions = None
        return self.show(name)

    def _validated(self, **fields: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if "name" in fields:
            values["name"] = fields["name"]
        if fields.get("uri") is not None:
            values["uri"] = check_uri(fields["uri"])
        if fields.get("actions") is not None:
            values["actions"] = check_actions(fields["actions"])
        if "scope" in fields:
            values["scope"] = normalize_scope(fields["scope"])
        if fields.get("headers") is not None:
            values["headers"] = check_headers(fields["headers"])
        if "secret" in fields:
            secret = fields["secret"]
            if secret is not None and (len(secret) < 16 or len(secret) > 256):
                raise invalid("a webhook secret is 16 to 256 characters")
            values["secret"] = secret or None
        if fields.get("payload_format") is not None:
            if fields["payload_format"] not in PAYLOAD_FORMATS:
                raise invalid(f"payload format must be one of {', '.join(PAYLOAD_FORMATS)}")
            values["payload_format"] = fields["payload_format"]
        if "uri" in values:  # last: it may ask DNS, which the cheap checks above need not wait for
            check_destination(values["uri"], self.allowed_networks, self._resolve)
        return values

    def update(self, name: str, *, enabled: bool | None = None, **changes: Any) -> WebhookInfo:
        values = self._validated(**changes)
        if enabled is not None:
            values["enabled"] = enabled

        def work(conn: Connection) -> None:
            done = conn.execute(
                webhooks.update().where(webhooks.c.name == name).values(**values, updated_at=utcnow())
            ).rowcount
            if not done:
                raise _not_found(name)

        self._db.run_write(work)
        self._enabled_actions = None
        return self.show(name)

    def delete(self, name: str) -> None:
        def work(conn: Connection) -> None:
            if not conn.execute(webhooks.delete().where(webhooks.c.name == name)).rowcount:
                raise _not_found(name)

        self._db.run_write(work)
        self._enabled_actions = None

    def list(self) -> list[WebhookInfo]:
        with self._db.read() as conn:
            return [_info(row) for row in conn.execute(sa.select(webhooks).order_by(webhooks.c.name)).all()]

    def show(self, name: str) -> WebhookInfo:
        with self._db.read() as conn:
            row = conn.execute(sa.select(webhooks).where(webhooks.c.name == name)).first()
        if row is None:
            raise _not_found(name)
        return _info(row)

    # -- fan-out ----------------------------------------------------------------------------

    def wants(self, conn: Connection, action: str) -> bool:
        """Whether any enabled webhook subscribes to ``action`` (asked inside the event's transaction).

        Only whether the consumer is woken at once depends on it (it polls every half second
        anyway), so the answer is read at most once per WANTS_FRESH_SECONDS, and again at once
        after this process changes a webhook.
        """
        now = time.monotonic()
        held = self._enabled_actions
        if held is None or now - held[0] >= WANTS_FRESH_SECONDS:
            actions = frozenset(a for row in prepared.rows(conn, ENABLED_ACTIONS) for a in row[0])
            self._enabled_actions = held = (now, actions)
        return action in held[1]

    @staticmethod
    def idle(conn: Connection) -> bool:
        """Whether no webhook is enabled: ``dispatch`` would queue nothing for any event."""
        return prepared.first(conn, ANY_ENABLED) is None

    def dispatch(self, conn: Connection, events: list[RepositoryEvent]) -> int:
        """The ``webhooks`` event consumer: one delivery per event and matching enabled webhook.

        Runs in the transaction that moves the consumer's cursor past ``events``, so each event
        becomes its deliveries exactly once. Returns how many deliveries were queued.
        """
        wanted = [event for event in events if event.action in DISPATCHED_ACTIONS]
        if not wanted:
            return 0
        hooks = conn.execute(sa.select(webhooks).where(webhooks.c.enabled)).all()
        if not hooks:
            return 0
        now = utcnow()
        new = []
        for event in wanted:
            document = payloads.acr_payload(event)
            for hook in hooks:
                if event.action in hook.actions and scope_matches(hook.scope, event.repository, event.tag):
                    body = payloads.encode(document, hook.payload_format, self.registry_name)
                    new.append(self._delivery(hook.id, event.uid, event.action, body, now))
        if new:
            conn.execute(deliveries.insert(), new)
        return len(new)

    def _delivery(
        self, webhook_id: int, event_uid: str, action: str, body: bytes, now: datetime
    ) -> dict[str, Any]:
        return {
            "webhook_id": webhook_id,
            "event_uid": event_uid,
            "action": action,
            "body": body,
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "retry_until": now + self._window,
            "created_at": now,
            "updated_at": now,
        }

    def ping(self, name: str) -> DeliveryJob:
        """Queue a ping delivery now and return its job, for the caller to send at once."""
        now = utcnow()
        document = payloads.ping_payload()

        def work(conn: Connection) -> DeliveryJob:
            hook = conn.execute(sa.select(webhooks).where(webhooks.c.name == name)).first()
            if hook is None:
                raise _not_found(name)
            body = payloads.encode(document, hook.payload_format, self.registry_name)
            values = self._delivery(hook.id, document["id"], "ping", body, now)
            values.update(status=DELIVERING, lease_until=now + self._lease)
            delivery_id = conn.execute(
                deliveries.insert().values(**values).returning(deliveries.c.id)
            ).scalar_one()
            return _job(delivery_id, hook, body)

        return self._db.run_write(work)

    # -- the worker's side ------------------------------------------------------------------

    def seconds_until_due(self) -> float | None:
        """Seconds until the next unfinished delivery comes due (0 or less: due now); None if none."""
        due = self._db.run_lookup(lambda conn: conn.execute(NEXT_DUE).scalar())
        return None if due is None else (as_utc(due) - utcnow()).total_seconds()

    def claim(self, slots: int) -> list[DeliveryJob]:
        """Lease up to ``slots`` due deliveries, at most PER_WEBHOOK_IN_FLIGHT per webhook."""
        if slots <= 0:
            return []
        now = utcnow()
        if not self._db.run_lookup(lambda conn: conn.execute(ANY_DUE, {"now": now}).first()):
            return []  # nothing due: no write transaction

        def work(conn: Connection) -> list[DeliveryJob]:
            due = (
                sa.select(deliveries.c.id, deliveries.c.webhook_id, deliveries.c.body)
                .select_from(deliveries.join(webhooks))
                .where(
                    webhooks.c.enabled,  # a disabled webhook's deliveries wait until it is enabled again
                    deliveries.c.status.in_([PENDING, DELIVERING]),
                    deliveries.c.next_attempt_at <= now,
                    sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now),
                )
                .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
                .limit(slots * 4)
            )
            if conn.dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True, of=deliveries)
            candidates = conn.execute(due).all()
            if not candidates:
                return []
            busy = Counter(
                dict(
                    conn.execute(
                        sa.select(deliveries.c.webhook_id, sa.func.count())
                        .where(deliveries.c.status == DELIVERING, deliveries.c.lease_until >= now)
                        .group_by(deliveries.c.webhook_id)
                    ).all()
                )
            )
            chosen = []
            for row in candidates:
                if len(chosen) == slots:
                    break
                if busy[row.webhook_id] < PER_WEBHOOK_IN_FLIGHT:
                    busy[row.webhook_id] += 1
                    chosen.append(row)
            if not chosen:
                return []
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id.in_([row.id for row in chosen]))
                .values(status=DELIVERING, lease_until=now + self._lease, updated_at=now)
            )
            hooks = {
                hook.id: hook
                for hook in conn.execute(
                    sa.select(webhooks).where(webhooks.c.id.in_({row.webhook_id for row in chosen}))
                ).all()
            }
            return [_job(row.id, hooks[row.webhook_id], bytes(row.body)) for row in chosen]

        return self._db.run_write(work, durable=False)

    def record(self, job: DeliveryJob, result: AttemptResult) -> str:
        """Log an attempt and decide: succeeded, retry later (backoff with jitter), or dead."""
        now = utcnow()

        def work(conn: Connection) -> str:
            row = conn.execute(sa.select(deliveries).where(deliveries.c.id == job.id)).first()
            if row is None:  # the webhook was deleted meanwhile
                return DEAD
            conn.execute(
                delivery_attempts.insert().values(
                    delivery_id=job.id,
                    started_at=result.started_at,
                    duration_ms=result.duration_ms,
                    request_uri=job.uri,
                    request_headers={k: v for k, v in job.headers.items() if k != payloads.SIGNATURE_HEADER},
                    response_status=result.status,
                    response_headers=result.headers,
                    response_body=result.body,
                    error=result.error,
                )
            )
            attempts = row.attempts + 1
            if result.succeeded:
                status, next_at = SUCCEEDED, now
            else:
                delay = min(self._base * 2 ** (attempts - 1), self._max)
                next_at = now + timedelta(seconds=delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
                status = DEAD if next_at > as_utc(row.retry_until) else PENDING
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id == job.id)
                .values(
                    status=status,
                    attempts=attempts,
                    next_attempt_at=next_at,
                    lease_until=None,
                    last_status=result.status,
                    last_error=result.error,
                    updated_at=now,
                )
            )
            return status

        return self._db.run_write(work, durable=False)

    # -- the delivery log -------------------------------------------------------------------

    def deliveries(self, name: str, *, limit: int = 50, status: str | None = None) -> list[DeliveryInfo]:
        """The newest deliveries of a webhook (newest first), each with its attempts."""
        with self._db.read() as conn:
            hook_id = conn.execute(sa.select(webhooks.c.id).where(webhooks.c.name == name)).scalar()
            if hook_id is None:
                raise _not_found(name)
            query = (
                sa.select(deliveries)
                .where(deliveries.c.webhook_id == hook_id)
                .order_by(deliveries.c.id.desc())
                .limit(min(limit, 1000))
            )
            if status is not None:
                query = query.where(deliveries.c.status == status)
            rows = conn.execute(query).all()
            attempts: dict[int, list[AttemptInfo]] = {row.id: [] for row in rows}
            if rows:
                for attempt in conn.execute(
                    sa.select(delivery_attempts)
                    .where(delivery_attempts.c.delivery_id.in_(list(attempts)))
                    .order_by(delivery_attempts.c.id)
                ).all():
                    attempts[attempt.delivery_id].append(
                        AttemptInfo(
                            as_utc(attempt.started_at),
                            attempt.duration_ms,
                            attempt.request_uri,
                            attempt.request_headers,
                            attempt.response_status,
                            attempt.response_headers,
                            attempt.response_body,
                            attempt.error,
                        )
                    )
        return [
            DeliveryInfo(
                row.id,
                row.event_uid,
                row.action,
                row.status,
                row.attempts,
                as_utc(row.created_at),
                as_utc(row.next_attempt_at),
                as_utc(row.retry_until),
                row.last_status,
                row.last_error,
                bytes(row.body).decode("utf-8", "replace"),
                attempts[row.id],
            )
            for row in rows
        ]

    def prune(self, older_than: datetime) -> int:
        """Forget finished deliveries (succeeded or dead) last touched before ``older_than``."""

        def work(conn: Connection) -> int:
            return conn.execute(
                deliveries.delete().where(
                    deliveries.c.status.in_([SUCCEEDED, DEAD]), deliveries.c.updated_at < older_than
                )
            ).rowcount

        return self._db.run_write(work, durable=False)

    def redeliver(self, name: str, delivery_id: int) -> None:
        """Send a delivery again (a dead one, or one that succeeded), with a fresh retry window."""
        now = utcnow()

        def work(conn: Connection) -> None:
            hook_id = conn.execute(sa.select(webhooks.c.id).where(webhooks.c.name == name)).scalar()
            if hook_id is None:
                raise _not_found(name)
            done = conn.execute(
                deliveries.update()
                .where(deliveries.c.id == delivery_id, deliveries.c.webhook_id == hook_id)
                .values(
                    status=PENDING,
                    next_attempt_at=now,
                    retry_until=now + self._window,
                    lease_until=None,
                    updated_at=now,
                )
            ).rowcount
            if not done:
                raise RegistryError(
                    ErrorCode.NOT_FOUND, f"delivery {delivery_id} of webhook {name!r} not found"
                )

        self._db.run_write(work)


def _info(row: sa.Row) -> WebhookInfo:
    return WebhookInfo(
        name=row.name,
        uri=row.uri,
        actions=list(row.actions),
        scope=row.scope,
        headers=dict(row.headers),
        enabled=row.enabled,
        payload_format=row.payload_format,
        has_secret=row.secret is not None,
        created_at=as_utc(row.created_at),
    )


def _job(delivery_id: int, hook: sa.Row, body: bytes) -> DeliveryJob:
    headers = {"Content-Type": payloads.content_type(hook.payload_format), **dict(hook.headers)}
    if hook.secret:
        headers[payloads.SIGNATURE_HEADER] = payloads.signature(hook.secret, body)
    headers.setdefault("User-Agent", "Dockyard-Webhook/1.0")
    return DeliveryJob(delivery_id, hook.name, hook.uri, headers, body)
