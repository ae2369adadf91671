"""garbage collection: blob state and generation, gc_runs

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state", sa.String(length=16), server_default="live", nullable=False))
        batch_op.add_column(sa.Column("generation", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("state_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_blobs_location", ["location"], unique=False)
    op.create_table(
        "gc_runs",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("untagged", sa.Boolean(), nullable=False),
        sa.Column("grace_seconds", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("freed", sa.JSON(), nullable=True),
        sa.Column("error", sa.String(length=2048), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gc_runs")),
    )
    with op.batch_alter_table("gc_runs", schema=None) as batch_op:
        batch_op.create_index("ix_gc_runs_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("gc_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_gc_runs_created_at")
    op.drop_table("gc_runs")
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_index("ix_blobs_location")
        batch_op.drop_column("state_at")
        batch_op.drop_column("generation")
        batch_op.drop_column("state")
