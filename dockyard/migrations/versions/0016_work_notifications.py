"""work notifications (PostgreSQL): a queued job or a recorded event notifies dockyard_work

Each process's job runtime waits longer while its rounds find nothing (``job_idle_poll_seconds``);
a job queued or an event recorded by any process notifies the channel ``dockyard_work`` once per
statement, and every process's listener (dockyard/changes.py) wakes its runtime at once. The
payload is empty: the runtime looks for every kind of work anyway.

Revision ID: 0016
Revises: 0015
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

#: The tables whose new rows are work for some process's job runtime.
WORK_TABLES = ("jobs", "repository_events")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION dockyard_notify_work() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('dockyard_work', '');
            RETURN NULL;
        END $$
        """
    )
    for table in WORK_TABLES:
        op.execute(
            f"CREATE TRIGGER dockyard_{table}_work AFTER INSERT ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION dockyard_notify_work()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in WORK_TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS dockyard_{table}_work ON {table}")
    op.execute("DROP FUNCTION IF EXISTS dockyard_notify_work()")
