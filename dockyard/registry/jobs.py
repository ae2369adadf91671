"""Background work of the registry room: upload expiry, planner statistics of young tables."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from dockyard.db import Database
from dockyard.registry.services import RegistryServices

log = logging.getLogger(__name__)

#: How often stale upload sessions are looked for (a schedule: once per registry).
EXPIRE_UPLOADS_EVERY = 600.0


def expire_uploads(services: RegistryServices) -> int:
    """Cancel idle upload sessions and remove upload data nobody owns."""
    removed = services.uploads.expire()
    if removed:
        log.info("expired %d stale uploads", removed)
    return removed


#: How often young tables' planner statistics are looked at (a schedule: once per registry).
REFRESH_STATISTICS_EVERY = 10.0
#: The tables every push and pull reads, whose statistics the hot statements' plans rest on.
HOT_TABLES = (
    "repositories",
    "repository_blobs",
    "blobs",
    "manifests",
    "manifest_blobs",
    "manifest_children",
    "tags",
    "uploads",
    "repository_events",
)
#: A table is analyzed once this many rows changed since its last analysis, and at least this
#: share of its rows; only while it holds fewer rows than YOUNG_ROWS (autovacuum keeps larger
#: ones current on its own).
MIN_CHANGES = 50
CHANGED_SHARE = 0.2
YOUNG_ROWS = 100_000

_STALE_TABLES = sa.text(
    "SELECT relname FROM pg_stat_user_tables"
    " WHERE schemaname = current_schema() AND relname = ANY(:tables)"
    " AND n_live_tup < :young AND n_mod_since_analyze >= :least"
    " AND n_mod_since_analyze >= :share * n_live_tup ORDER BY relname"
)


def refresh_statistics(db: Database) -> list[str]:
    """ANALYZE the hot tables of a young PostgreSQL database that grew since their statistics.

    A statement prepared while a table was nearly empty keeps the plan made for that size (a scan
    of the whole repository's links, say) until the table is analyzed, and autovacuum looks at
    most once a minute: a new registry's first thousands of pushes would each cost time in
    proportion to the registry's size. Analysing the table re-plans every connection's statements.
    Returns the tables analyzed (none on SQLite, whose planner does not go by table sizes)."""
    if db.is_sqlite:
        return []
    params = {
        "tables": list(HOT_TABLES),
        "young": YOUNG_ROWS,
        "least": MIN_CHANGES,
        "share": CHANGED_SHARE,
    }
    with db.engine.connect() as pooled:
        conn = pooled.execution_options(isolation_level="AUTOCOMMIT")
        stale = list(conn.execute(_STALE_TABLES, params).scalars())
        for table in stale:
            conn.execute(sa.text(f'ANALYZE "{table}"'))  # a name from HOT_TABLES, never user input
    if stale:
        log.debug("refreshed planner statistics of %s", ", ".join(stale))
    return stale
