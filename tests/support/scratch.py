"""A two-column scratch table for tests of transactions, on a database of one pooled connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from dockyard.db import Database

scratch_metadata = sa.MetaData()
scratch = sa.Table(
    "redteam_scratch",
    scratch_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
)
INSERT = scratch.insert()
RENAME = scratch.update().where(scratch.c.name == sa.bindparam("old")).values(name=sa.bindparam("new"))
NAMES = sa.select(scratch.c.name).order_by(scratch.c.name)


@contextmanager
def scratch_database(database_url: str, *, postgresql_cleanup: tuple[str, ...] = ()) -> Iterator[Database]:
    """A ``Database`` with one connection (every statement of a test reuses it) and the scratch
    table, dropped afterwards with whatever ``postgresql_cleanup`` names."""
    database = Database(database_url, pool_size=1)
    scratch_metadata.create_all(database.engine)
    try:
        yield database
    finally:
        with database.engine.begin() as conn:
            for statement in () if database.is_sqlite else postgresql_cleanup:
                conn.exec_driver_sql(statement)
        scratch_metadata.drop_all(database.engine)
        database.dispose()
