"""locks: ACR changeableAttributes on repositories, tags, manifests; immutable-tag policy

Adds read/write/delete/list_enabled (default true) to repositories, tags and manifests, and
the repository's write-once tag policy. The content-change triggers of 0004 fire on every
UPDATE of these tables, so a lock change reaches every process's cache on PostgreSQL.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LOCKS = ("read_enabled", "write_enabled", "delete_enabled", "list_enabled")
TABLES = ("repositories", "tags", "manifests")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name in LOCKS:
                batch_op.add_column(sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.true()))
            if table == "repositories":
                batch_op.add_column(sa.Column("immutable_tags", sa.Boolean(), nullable=True))
                batch_op.add_column(sa.Column("immutable_exemptions", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            if table == "repositories":
                batch_op.drop_column("immutable_exemptions")
                batch_op.drop_column("immutable_tags")
            for name in reversed(LOCKS):
                batch_op.drop_column(name)
