"""What the local commands (`db …`, `admin …`, `worker`) share: settings and opening the database.

They read the same settings as `dockyard serve` and open its database directly. Everything a
user can get wrong (a missing data folder or config file, a database that does not exist or
cannot be reached, an old schema) ends in a one-line error, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dockyard.cli.output import fail

if TYPE_CHECKING:
    from dockyard.config import Settings
    from dockyard.db import Database

DataDirOption = Annotated[
    Path | None,
    typer.Option(help="The registry's data folder (SQLite database and blobs) [default: ./dockyard-data]."),
]


def local_settings(config: Path | None, **overrides: Any) -> Settings:
    """Settings as `dockyard serve` reads them; a bad config file or value exits 2."""
    from dockyard.config import load_settings

    try:
        return load_settings(config, **overrides)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc), 2) from None


def _sqlite_file(settings: Settings) -> Path | None:
    import sqlalchemy as sa

    url = sa.engine.make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def check_database_exists(settings: Settings, *, create: bool = False) -> None:
    """Fail unless the SQLite database exists (``create``: unless its folder exists).

    Opening a missing SQLite file would create an empty database (or fail with a traceback
    when its folder is missing), so this names the folder instead.
    """
    path = _sqlite_file(settings)
    if path is None:
        return
    if create and path.parent.is_dir():
        return
    if not path.parent.is_dir():
        raise fail(
            f"no data folder at {path.parent}: give --data-dir (the folder `dockyard serve` uses) "
            "or --database-url"
        )
    if not path.is_file():
        raise fail(
            f"no database at {path}: start `dockyard serve` with this data folder first, "
            "or give --data-dir / --database-url"
        )


def database_error(exc: Exception) -> typer.Exit:
    """One line about a database that failed (SQLAlchemy's messages run to several lines)."""
    original = getattr(exc, "orig", None) or exc
    first = (str(original).strip().splitlines() or [type(original).__name__])[0]
    return fail(f"cannot use the database: {first}")


@contextmanager
def open_database(settings: Settings, *, create: bool = False) -> Iterator[Database]:
    """The settings' database, checked to exist, disposed afterwards; database errors are one line."""
    import sqlalchemy as sa

    from dockyard.db import Database

    check_database_exists(settings, create=create)
    try:
        db = Database(settings.database_url, pool_size=1)
    except (sa.exc.SQLAlchemyError, ValueError) as exc:
        raise database_error(exc) from None
    try:
        yield db
    except sa.exc.SQLAlchemyError as exc:
        raise database_error(exc) from None
    finally:
        db.dispose()


def require_current_schema(db: Database, *, hint: str = "run `dockyard db upgrade` first") -> None:
    """Fail unless the schema is at the newest migration."""
    from dockyard.migrations import current_revision, head_revision

    current, head = current_revision(db), head_revision(db)
    if current != head:
        raise fail(f"the database is at revision {current}, not {head}: {hint}")
