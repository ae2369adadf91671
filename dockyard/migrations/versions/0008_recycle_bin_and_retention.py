"""lifecycle: recycle bin (soft-deleted manifests and their blobs), retention of untagged manifests

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "recycled_manifests",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("repository", sa.String(length=255), nullable=False),
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.Column("media_type", sa.String(length=255), nullable=False),
        sa.Column("artifact_type", sa.String(length=255), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("total_size", sa.BigInteger(), nullable=False),
        sa.Column("subject_digest", sa.String(length=200), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recycled_manifests")),
        sa.UniqueConstraint("repository", "digest", name=op.f("uq_recycled_manifests_repository")),
    )
    op.create_index("ix_recycled_manifests_deleted_at", "recycled_manifests", ["deleted_at"])
    op.create_table(
        "recycled_blobs",
        sa.Column("recycled_id", ID, nullable=False),
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["recycled_id"],
            ["recycled_manifests.id"],
            name=op.f("fk_recycled_blobs_recycled_id_recycled_manifests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("recycled_id", "digest", name=op.f("pk_recycled_blobs")),
    )
    op.create_index("ix_recycled_blobs_digest", "recycled_blobs", ["digest"])
    op.create_table(
        "retention_due",
        sa.Column("manifest_id", ID, nullable=False),
        sa.Column("untagged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["manifest_id"],
            ["manifests.id"],
            name=op.f("fk_retention_due_manifest_id_manifests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("manifest_id", name=op.f("pk_retention_due")),
    )
    op.create_index("ix_retention_due_due_at", "retention_due", ["due_at"])


def downgrade() -> None:
    op.drop_table("retention_due")
    op.drop_table("recycled_blobs")
    op.drop_table("recycled_manifests")
