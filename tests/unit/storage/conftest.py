"""Store factories for the driver conformance suite.

Each driver provides a fixture ``<driver>_store_factory``: a callable that returns a new
store instance over one backing store private to the test (a folder, a bucket prefix, a
container prefix), so two instances act as two nodes sharing it.
"""

from collections.abc import Callable
from pathlib import Path

import pytest

from dockyard.storage import BlobStore
from dockyard.storage.filesystem import FilesystemBlobStore

DRIVERS = ["filesystem"]

StoreFactory = Callable[[], BlobStore]


@pytest.fixture
def filesystem_store_factory(tmp_path: Path) -> StoreFactory:
    return lambda: FilesystemBlobStore(tmp_path / "store")


@pytest.fixture(params=DRIVERS)
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """A factory of stores (nodes) sharing one backing store, for each driver."""
    return request.getfixturevalue(f"{request.param}_store_factory")


@pytest.fixture
def store(make_store: StoreFactory) -> BlobStore:
    return make_store()
