"""builds: tasks, timers, runs, logs, sources

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "build_sources",
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("location", sa.String(length=1024), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_build_sources")),
    )
    with op.batch_alter_table("build_sources", schema=None) as batch_op:
        batch_op.create_index("ix_build_sources_expires_at", ["expires_at"], unique=False)

    op.create_table(
        "build_tasks",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("context", sa.String(length=2048), nullable=False),
        sa.Column("git_access_token", sa.String(length=4096), nullable=True),
        sa.Column("file", sa.String(length=1024), nullable=True),
        sa.Column("task_file", sa.Text(), nullable=True),
        sa.Column("cmd", sa.String(length=4096), nullable=True),
        sa.Column("images", sa.JSON(), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("secret_args", sa.JSON(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("secret_values", sa.JSON(), nullable=False),
        sa.Column("platform", sa.String(length=64), nullable=False),
        sa.Column("no_push", sa.Boolean(), nullable=False),
        sa.Column("timeout", sa.Integer(), nullable=False),
        sa.Column("commit_trigger", sa.Boolean(), nullable=False),
        sa.Column("pull_request_trigger", sa.Boolean(), nullable=False),
        sa.Column("base_image_trigger", sa.Boolean(), nullable=False),
        sa.Column("trigger_secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_build_tasks")),
        sa.UniqueConstraint("name", name=op.f("uq_build_tasks_name")),
    )
    op.create_table(
        "build_runs",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("task_name", sa.String(length=50), nullable=True),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column("trigger_detail", sa.JSON(), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("secrets", sa.Text(), nullable=True),
        sa.Column("platform", sa.String(length=64), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("base_images", sa.JSON(), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("error", sa.String(length=2048), nullable=True),
        sa.Column("requested_by", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker", sa.String(length=64), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("log_size", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["build_tasks.id"],
            name=op.f("fk_build_runs_task_id_build_tasks"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_build_runs")),
        sa.UniqueConstraint("run_id", name=op.f("uq_build_runs_run_id")),
    )
    with op.batch_alter_table("build_runs", schema=None) as batch_op:
        batch_op.create_index("ix_build_runs_created_at", ["created_at"], unique=False)
        batch_op.create_index("ix_build_runs_status", ["status"], unique=False)
        batch_op.create_index("ix_build_runs_task_id", ["task_id", "seq"], unique=False)

    op.create_table(
        "build_task_bases",
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("image", sa.String(length=1024), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("repository", sa.String(length=512), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("digest", sa.String(length=200), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["build_tasks.id"],
            name=op.f("fk_build_task_bases_task_id_build_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", "image", name=op.f("pk_build_task_bases")),
    )
    with op.batch_alter_table("build_task_bases", schema=None) as batch_op:
        batch_op.create_index("ix_build_task_bases_ref", ["host", "repository", "tag"], unique=False)

    op.create_table(
        "build_timers",
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("schedule", sa.String(length=255), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["build_tasks.id"],
            name=op.f("fk_build_timers_task_id_build_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", "name", name=op.f("pk_build_timers")),
    )
    with op.batch_alter_table("build_timers", schema=None) as batch_op:
        batch_op.create_index("ix_build_timers_next_run_at", ["next_run_at"], unique=False)

    op.create_table(
        "build_run_logs",
        sa.Column("run_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("chunk", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_seq"],
            ["build_runs.seq"],
            name=op.f("fk_build_run_logs_run_seq_build_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_seq", "chunk", name=op.f("pk_build_run_logs")),
    )


def downgrade() -> None:
    op.drop_table("build_run_logs")
    with op.batch_alter_table("build_timers", schema=None) as batch_op:
        batch_op.drop_index("ix_build_timers_next_run_at")

    op.drop_table("build_timers")
    with op.batch_alter_table("build_task_bases", schema=None) as batch_op:
        batch_op.drop_index("ix_build_task_bases_ref")

    op.drop_table("build_task_bases")
    with op.batch_alter_table("build_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_build_runs_task_id")
        batch_op.drop_index("ix_build_runs_status")
        batch_op.drop_index("ix_build_runs_created_at")

    op.drop_table("build_runs")
    op.drop_table("build_tasks")
    with op.batch_alter_table("build_sources", schema=None) as batch_op:
        batch_op.drop_index("ix_build_sources_expires_at")

    op.drop_table("build_sources")
