"""content change notifications (PostgreSQL): triggers that NOTIFY dockyard_content

Every change to a repository's tags, manifests or blob links notifies the channel with
the repository's name, so each process can drop what it cached (dockyard/changes.py).
SQLite needs none: its lookups are local and uncached.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: Tables whose rows carry a repository_id, and the changes that matter for reads.
BY_REPOSITORY_ID = {
    "tags": "INSERT OR UPDATE OR DELETE",
    "manifests": "UPDATE OR DELETE",
    "repository_blobs": "UPDATE OR DELETE",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION dockyard_notify_repository() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('dockyard_content', OLD.name);
            ELSE
                PERFORM pg_notify('dockyard_content', NEW.name);
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION dockyard_notify_repository_id() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            changed bigint;
            repository text;
        BEGIN
            IF TG_OP = 'DELETE' THEN
                changed := OLD.repository_id;
            ELSE
                changed := NEW.repository_id;
            END IF;
            SELECT name INTO repository FROM repositories WHERE id = changed;
            PERFORM pg_notify('dockyard_content', COALESCE(repository, '*'));
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER dockyard_repositories_changed AFTER UPDATE OR DELETE ON repositories "
        "FOR EACH ROW EXECUTE FUNCTION dockyard_notify_repository()"
    )
    for table, events in BY_REPOSITORY_ID.items():
        op.execute(
            f"CREATE TRIGGER dockyard_{table}_changed AFTER {events} ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION dockyard_notify_repository_id()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in ("repositories", *BY_REPOSITORY_ID):
        op.execute(f"DROP TRIGGER IF EXISTS dockyard_{table}_changed ON {table}")
    op.execute("DROP FUNCTION IF EXISTS dockyard_notify_repository_id()")
    op.execute("DROP FUNCTION IF EXISTS dockyard_notify_repository()")
