"""The filesystem store's blob listing: digest order, resumable from any cursor, across prefix folders."""

from dockyard.storage.filesystem import FilesystemBlobStore
from tests.support.images import sha256


def test_pages_follow_digest_order_from_any_cursor(tmp_path):
    store = FilesystemBlobStore(tmp_path)
    digests = sorted(sha256(str(n).encode()) for n in range(40))
    for n in range(40):
        store.put(sha256(str(n).encode()), str(n).encode())
    (tmp_path / "blobs" / "sha256" / "zz").mkdir()  # an empty prefix folder is skipped
    listed, cursor = [], None
    while True:
        page = store.list_blobs(cursor, limit=7)
        listed += [blob.digest for blob in page.blobs]
        if page.cursor is None:
            break
        cursor = page.cursor
    assert listed == digests
    middle = digests[17]
    assert [b.digest for b in store.list_blobs(middle, limit=100).blobs] == digests[18:]
    assert store.list_blobs(digests[-1]).blobs == []
