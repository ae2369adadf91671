"""object-shaped blob storage: upload store/hash state, blob location

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("store_state", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("hash_state", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("location", sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_column("location")
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_column("hash_state")
        batch_op.drop_column("store_state")
