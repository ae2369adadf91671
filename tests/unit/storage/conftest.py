"""Store factories for the driver conformance suite.

Each driver provides a fixture ``<driver>_store_factory``: a callable that returns a new
store instance over one backing store private to the test (a folder, a bucket prefix, a
container prefix), so two instances act as two nodes sharing it.
"""

import itertools
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockyard.storage import BlobStore
from dockyard.storage.azure import AzureBlobStore, from_url
from dockyard.storage.filesystem import FilesystemBlobStore
from dockyard.storage.s3 import S3BlobStore
from tests.support.azurite import Azurite
from tests.support.seaweedfs import SeaweedS3

DRIVERS = ["filesystem", "s3", "azure"]

StoreFactory = Callable[[], BlobStore]


@pytest.fixture
def filesystem_store_factory(tmp_path: Path) -> StoreFactory:
    return lambda: FilesystemBlobStore(tmp_path / "store")


@pytest.fixture
def s3_prefix() -> str:
    """A fresh key prefix: each test's store starts empty."""
    return f"test-{secrets.token_hex(6)}"


@pytest.fixture
def s3_store_factory(seaweedfs: SeaweedS3, s3_prefix: str) -> StoreFactory:
    def make() -> S3BlobStore:
        return S3BlobStore(
            seaweedfs.bucket,
            s3_prefix,
            endpoint_url=seaweedfs.endpoint_url,
            region=seaweedfs.region,
            access_key_id=seaweedfs.access_key_id,
            secret_access_key=seaweedfs.secret_access_key,
        )

    return make


@pytest.fixture(scope="session")
def azure_prefixes() -> Iterator[str]:
    return (f"test-{n}" for n in itertools.count())


@pytest.fixture
def azure_store_factory(azurite: Azurite, azure_prefixes: Iterator[str]) -> Callable[[], AzureBlobStore]:
    """Stores over a fresh prefix of the Azurite container (3 MiB blocks: 1 MiB writes are buffered)."""
    url = f"azure://{azurite.container}/{next(azure_prefixes)}"
    return lambda: from_url(
        url, connection_string=azurite.connection_string(), env={}, block_size=3 * 1024 * 1024
    )


@pytest.fixture(params=DRIVERS)
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """A factory of stores (nodes) sharing one backing store, for each driver."""
    return request.getfixturevalue(f"{request.param}_store_factory")


@pytest.fixture
def store(make_store: StoreFactory) -> BlobStore:
    return make_store()
