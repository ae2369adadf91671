"""Alembic migrations, driven programmatically (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from dockyard.db import Database, metadata

HERE = Path(__file__).parent
#: Held (Database.exclusive) while migrating, so nodes starting together migrate one at a time.
MIGRATION_LOCK = "dockyard.migrations"


def load_models() -> None:
    """Import every room's models so ``metadata`` holds the whole schema."""
    import dockyard.access.models
    import dockyard.builds.models
    import dockyard.cache.models
    import dockyard.events.models
    import dockyard.imports.models
    import dockyard.lifecycle.models
    import dockyard.ratelimits.models
    import dockyard.registry.models
    import dockyard.webhooks.models  # noqa: F401


def alembic_config(database: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["engine"] = database.engine
    return config


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema up to ``revision``; a node starting at the same time waits, then finds it done."""
    with database.exclusive(MIGRATION_LOCK):
        command.upgrade(alembic_config(database), revision)


def current_revision(database: Database) -> str | None:
    with database.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(database: Database) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database)).get_current_head()


def schema_drift(database: Database) -> list[object]:
    """Differences between the models and the migrated database (empty when in sync)."""
    load_models()
    with database.engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)
