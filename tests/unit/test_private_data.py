"""The data folder and the SQLite file (which holds the token signing keys) are private to their owner."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dockyard.config import Settings
from dockyard.db import Database, keep_private
from dockyard.server import prepare


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> object:
    """The usual 022 umask, under which new files are readable by everyone."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_new_database_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "dockyard.db"
    db = Database(f"sqlite:///{path}", pool_size=1)
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
        assert mode(tmp_path / "dockyard.db-wal") == 0o600  # SQLite copies the database file's mode
    db.dispose()
    assert mode(path) == 0o600


def test_an_existing_readable_database_and_its_journal_are_made_private(tmp_path: Path) -> None:
    path = tmp_path / "dockyard.db"
    for name in ("dockyard.db", "dockyard.db-wal", "dockyard.db-shm"):
        (tmp_path / name).touch(mode=0o644)
    keep_private(str(path))
    assert [mode(tmp_path / name) for name in ("dockyard.db", "dockyard.db-wal", "dockyard.db-shm")] == [
        0o600
    ] * 3


def test_a_database_in_a_missing_folder_is_not_created(tmp_path: Path) -> None:
    keep_private(str(tmp_path / "missing" / "dockyard.db"))
    assert not (tmp_path / "missing").exists()


def test_a_new_data_folder_is_private_and_holds_a_private_database(tmp_path: Path) -> None:
    settings = Settings.model_validate({"data_dir": tmp_path / "data", "admin_password": "x" * 16})
    prepare(settings)
    assert mode(tmp_path / "data") == 0o700
    assert mode(tmp_path / "data" / "dockyard.db") == 0o600
