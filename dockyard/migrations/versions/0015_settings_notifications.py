"""settings notifications (PostgreSQL): a change of a repository's own row notifies dockyard_settings

A push bumps its repository's ``tag_version`` (and ``updated_at``); any other change of the row
(a lock, the write-once policy, a rename) or its deletion now also notifies the channel
``dockyard_settings`` with the repository's name, so each process may remember what only such
a change alters (dockyard/changes.py: "not write-locked", which lets an upload start without a
database round trip). Every change still notifies ``dockyard_content`` as before. A TRUNCATE of
``repositories`` (a restore, a test) notifies both channels with "*": every process drops all.

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

#: The columns a push changes: a change of only these is not a change of settings.
PUSH_COLUMNS = "- 'tag_version' - 'updated_at'"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION dockyard_notify_repository() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('dockyard_content', OLD.name);
                PERFORM pg_notify('dockyard_settings', OLD.name);
                RETURN NULL;
            END IF;
            PERFORM pg_notify('dockyard_content', NEW.name);
            IF OLD.name IS DISTINCT FROM NEW.name THEN
                PERFORM pg_notify('dockyard_content', OLD.name);
                PERFORM pg_notify('dockyard_settings', OLD.name);
            END IF;
            IF (to_jsonb(OLD) {PUSH_COLUMNS}) IS DISTINCT FROM (to_jsonb(NEW) {PUSH_COLUMNS}) THEN
                PERFORM pg_notify('dockyard_settings', NEW.name);
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION dockyard_notify_everything() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('dockyard_content', '*');
            PERFORM pg_notify('dockyard_settings', '*');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER dockyard_repositories_truncated AFTER TRUNCATE ON repositories "
        "FOR EACH STATEMENT EXECUTE FUNCTION dockyard_notify_everything()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS dockyard_repositories_truncated ON repositories")
    op.execute("DROP FUNCTION IF EXISTS dockyard_notify_everything()")
    op.execute(
        """
        CREATE OR REPLACE FUNCTION dockyard_notify_repository() RETURNS trigger LANGUAGE plpgsql AS $$
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
