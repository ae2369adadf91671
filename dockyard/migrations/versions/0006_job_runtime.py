"""job runtime: jobs, event cursors, schedules; events carry their txid, no dispatched flag

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TXID_DEFAULT = "(pg_current_xact_id()::text::bigint)"


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=2048), nullable=True),
        sa.Column("dedupe_key", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_jobs_dedupe_key")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_due", ["status", "run_at"], unique=False)

    op.create_table(
        "event_cursors",
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
        sa.Column("last_txid", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", name=op.f("pk_event_cursors")),
    )
    op.create_table(
        "schedules",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("interval_seconds", sa.Float(), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.String(length=16), nullable=True),
        sa.Column("last_error", sa.String(length=2048), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_schedules")),
    )

    postgres = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("repository_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("txid", sa.BigInteger(), nullable=True))
    if postgres:
        # Rows already there are committed: order them before every new transaction's.
        op.execute("UPDATE repository_events SET txid = 0")
        op.execute(f"ALTER TABLE repository_events ALTER COLUMN txid SET DEFAULT {TXID_DEFAULT}")
    # The webhooks consumer starts where the dispatched flag left off.
    op.execute(
        sa.text(
            "INSERT INTO event_cursors (consumer, last_event_id, last_txid, updated_at) "
            "SELECT 'webhooks', COALESCE((SELECT MIN(id) - 1 FROM repository_events WHERE NOT dispatched), "
            "(SELECT MAX(id) FROM repository_events), 0), :txid, CURRENT_TIMESTAMP"
        ).bindparams(txid=0 if postgres else None)
    )
    with op.batch_alter_table("repository_events", schema=None) as batch_op:
        batch_op.drop_index("ix_repository_events_pending")
        batch_op.drop_column("dispatched")
        batch_op.create_index("ix_repository_events_txid", ["txid", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("repository_events", schema=None) as batch_op:
        batch_op.drop_index("ix_repository_events_txid")
        batch_op.add_column(sa.Column("dispatched", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.create_index("ix_repository_events_pending", ["dispatched", "id"], unique=False)
        batch_op.drop_column("txid")
    op.drop_table("schedules")
    op.drop_table("event_cursors")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_due")
    op.drop_table("jobs")
