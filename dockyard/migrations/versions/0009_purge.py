"""purge: scheduled purges and the record of every purge run

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "purge_schedules",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("cron", sa.String(length=128), nullable=False),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_id", sa.BigInteger(), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_purge_schedules")),
    )
    with op.batch_alter_table("purge_schedules", schema=None) as batch_op:
        batch_op.create_index("ix_purge_schedules_next_run_at", ["next_run_at"], unique=False)

    op.create_table(
        "purge_runs",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("schedule_name", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_tags", sa.Integer(), server_default="0", nullable=False),
        sa.Column("deleted_manifests", sa.Integer(), server_default="0", nullable=False),
        sa.Column("skipped", sa.Integer(), server_default="0", nullable=False),
        sa.Column("freed_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("error", sa.String(length=2048), nullable=True),
        sa.Column("items", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_purge_runs")),
    )
    with op.batch_alter_table("purge_runs", schema=None) as batch_op:
        batch_op.create_index("ix_purge_runs_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("purge_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_purge_runs_created_at")
    op.drop_table("purge_runs")
    with op.batch_alter_table("purge_schedules", schema=None) as batch_op:
        batch_op.drop_index("ix_purge_schedules_next_run_at")
    op.drop_table("purge_schedules")
