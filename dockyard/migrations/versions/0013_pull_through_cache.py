"""pull-through cache: credential_sets, cache_rules, cache_tags

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "credential_sets",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("login_server", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("password", sa.String(length=4096), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credential_sets")),
        sa.UniqueConstraint("name", name=op.f("uq_credential_sets_name")),
    )
    op.create_table(
        "cache_rules",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("source_repo", sa.String(length=512), nullable=False),
        sa.Column("target_repo", sa.String(length=255), nullable=False),
        sa.Column("credential_set_id", ID, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["credential_set_id"],
            ["credential_sets.id"],
            name=op.f("fk_cache_rules_credential_set_id_credential_sets"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cache_rules")),
        sa.UniqueConstraint("name", name=op.f("uq_cache_rules_name")),
        sa.UniqueConstraint("target_repo", name=op.f("uq_cache_rules_target_repo")),
    )
    with op.batch_alter_table("cache_rules", schema=None) as batch_op:
        batch_op.create_index("ix_cache_rules_credential_set_id", ["credential_set_id"], unique=False)
    op.create_table(
        "cache_tags",
        sa.Column("repository", sa.String(length=255), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("repository", "tag", name=op.f("pk_cache_tags")),
    )


def downgrade() -> None:
    op.drop_table("cache_tags")
    with op.batch_alter_table("cache_rules", schema=None) as batch_op:
        batch_op.drop_index("ix_cache_rules_credential_set_id")
    op.drop_table("cache_rules")
    op.drop_table("credential_sets")
