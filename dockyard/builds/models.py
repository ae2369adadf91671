"""The builds room's tables: tasks (+ their recorded bases and timers), runs, run logs, uploaded sources."""

from __future__ import annotations

import sqlalchemy as sa

from dockyard.db import BIGINT, TIMESTAMP, metadata

#: A task (``az acr task create``): what to build, from where, and which triggers queue it.
build_tasks = sa.Table(
    "build_tasks",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(50), nullable=False, unique=True),
    #: Enabled | Disabled
    sa.Column("status", sa.String(16), nullable=False),
    #: As given: a git URL (``…#ref:folder``), a local repository path, a tarball URL, ``oci://…``,
    #: or ``/dev/null``.
    sa.Column("context", sa.String(2048), nullable=False),
    #: In clear text, as credential sets' passwords (no encryption at rest yet). Never returned.
    sa.Column("git_access_token", sa.String(4096)),
    sa.Column("file", sa.String(1024)),
    sa.Column("task_file", sa.Text),
    sa.Column("cmd", sa.String(4096)),
    sa.Column("images", sa.JSON, nullable=False),
    sa.Column("args", sa.JSON, nullable=False),
    #: In clear text (see git_access_token). Only their keys are ever returned.
    sa.Column("secret_args", sa.JSON, nullable=False),
    sa.Column("values", sa.JSON, nullable=False),
    sa.Column("secret_values", sa.JSON, nullable=False),
    sa.Column("platform", sa.String(64), nullable=False),
    sa.Column("no_push", sa.Boolean, nullable=False),
    sa.Column("timeout", sa.Integer, nullable=False),
    sa.Column("commit_trigger", sa.Boolean, nullable=False),
    sa.Column("pull_request_trigger", sa.Boolean, nullable=False),
    sa.Column("base_image_trigger", sa.Boolean, nullable=False),
    #: Authenticates the trigger endpoints (HMAC key / token); shown only when created or renewed.
    sa.Column("trigger_secret", sa.String(128), nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
)

#: The final-stage ``FROM`` images of a task's last successful build: what base-image triggers watch.
build_task_bases = sa.Table(
    "build_task_bases",
    metadata,
    sa.Column("task_id", BIGINT, sa.ForeignKey("build_tasks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("image", sa.String(1024), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("repository", sa.String(512), nullable=False),
    sa.Column("tag", sa.String(128), nullable=False),
    sa.Column("digest", sa.String(200)),
    sa.Column("checked_at", TIMESTAMP),
    sa.Index("ix_build_task_bases_ref", "host", "repository", "tag"),
)

build_timers = sa.Table(
    "build_timers",
    metadata,
    sa.Column("task_id", BIGINT, sa.ForeignKey("build_tasks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(50), primary_key=True),
    sa.Column("schedule", sa.String(255), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("next_run_at", TIMESTAMP, nullable=False),
    sa.Index("ix_build_timers_next_run_at", "next_run_at"),
)

#: One run (quick or of a task); ``run_id`` is ``dy`` + base36(seq).
build_runs = sa.Table(
    "build_runs",
    metadata,
    sa.Column("seq", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), unique=True),
    sa.Column("task_id", BIGINT, sa.ForeignKey("build_tasks.id", ondelete="SET NULL")),
    sa.Column("task_name", sa.String(50)),
    #: build | file | cmd | patch
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("trigger", sa.String(32), nullable=False),
    sa.Column("trigger_detail", sa.JSON, nullable=False),
    #: What to run (source, file, images, args, values…), never a secret value.
    sa.Column("request", sa.JSON, nullable=False),
    #: Quick runs' secret args and values (JSON text), nulled when the run ends.
    sa.Column("secrets", sa.Text),
    sa.Column("platform", sa.String(64), nullable=False),
    sa.Column("outputs", sa.JSON, nullable=False),
    sa.Column("base_images", sa.JSON, nullable=False),
    sa.Column("steps", sa.JSON, nullable=False),
    sa.Column("error", sa.String(2048)),
    sa.Column("requested_by", sa.String(255)),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("started_at", TIMESTAMP),
    sa.Column("finished_at", TIMESTAMP),
    sa.Column("heartbeat_at", TIMESTAMP),
    sa.Column("worker", sa.String(64)),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("log_size", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_build_runs_status", "status"),
    sa.Index("ix_build_runs_task_id", "task_id", "seq"),
    sa.Index("ix_build_runs_created_at", "created_at"),
)

#: A run's log, in chunks (secrets already masked).
build_run_logs = sa.Table(
    "build_run_logs",
    metadata,
    sa.Column("run_seq", BIGINT, sa.ForeignKey("build_runs.seq", ondelete="CASCADE"), primary_key=True),
    sa.Column("chunk", sa.Integer, primary_key=True, autoincrement=False),
    #: Byte offset of the chunk's first byte in the whole log.
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
)

#: Uploaded contexts (tars) in the blob store, kept until ``expires_at`` (GC keeps them till then).
build_sources = sa.Table(
    "build_sources",
    metadata,
    sa.Column("digest", sa.String(200), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("location", sa.String(1024)),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("expires_at", TIMESTAMP, nullable=False),
    sa.Index("ix_build_sources_expires_at", "expires_at"),
)
