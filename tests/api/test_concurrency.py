"""Several clients pushing the same blob, manifest and tag at once: every push succeeds, nothing breaks.

Each worker builds its own Dockyard (own engine and connection pool), the way
separate processes behind a load balancer would.
"""

from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from dockyard.app import build
from dockyard.registry.models import blobs, manifests, tags
from tests.support.images import make_image, sha256

WORKERS = 8
DATA = b"shared layer " * 50_000  # 650 KB


def _run(settings, count, job):
    instances = [build(settings) for _ in range(count)]
    try:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(job, instances, range(count)))
    finally:
        for instance in instances:
            instance.db.dispose()


def test_same_blob_pushed_concurrently(settings, dockyard):
    digest = sha256(DATA)

    def push(instance, index):
        uploads = instance.registry.uploads
        if index % 2:
            return uploads.upload_whole("team/app", digest, iter([DATA]), content_length=len(DATA)).digest
        state = uploads.start("team/app")
        half = len(DATA) // 2
        uploads.append("team/app", state.id, iter([DATA[:half]]), content_range=(0, half - 1))
        return uploads.complete("team/app", state.id, digest, iter([DATA[half:]])).digest

    assert _run(settings, WORKERS, push) == [digest] * WORKERS
    info = dockyard.registry.blobs.stat("team/app", digest)
    assert info.size == len(DATA)
    assert b"".join(dockyard.registry.blobs.open(info)) == DATA
    with dockyard.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(blobs)).scalar_one() == 1


def _push_blobs(instance, image, repository="team/app"):
    for blob in image.blobs:
        instance.registry.uploads.upload_whole(repository, blob.digest, iter([blob.data]))


def test_same_manifest_and_tag_pushed_concurrently(settings, dockyard):
    image = make_image("concurrent")
    _push_blobs(dockyard, image)

    def push(instance, _index):
        return instance.registry.manifests.put("team/app", "latest", image.manifest, image.media_type).digest

    assert _run(settings, WORKERS, push) == [image.digest] * WORKERS
    record = dockyard.registry.manifests.get("team/app", "latest")
    assert record.payload == image.manifest
    with dockyard.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(manifests)).scalar_one() == 1
        assert conn.execute(sa.select(sa.func.count()).select_from(tags)).scalar_one() == 1


def test_different_manifests_racing_for_one_tag(settings, dockyard):
    images = [make_image(f"racer-{i}") for i in range(WORKERS)]
    for image in images:
        _push_blobs(dockyard, image)

    def push(instance, index):
        return instance.registry.manifests.put(
            "team/app", "latest", images[index].manifest, images[index].media_type
        )

    pushed = _run(settings, WORKERS, push)
    assert {p.digest for p in pushed} == {image.digest for image in images}
    winner = dockyard.registry.manifests.get("team/app", "latest")
    assert winner.digest in {image.digest for image in images}
    assert dockyard.registry.repositories.tag_names("team/app").items == ["latest"]
    for image in images:
        assert dockyard.registry.manifests.get("team/app", image.digest).payload == image.manifest


def test_many_repositories_created_concurrently(settings, dockyard):
    image = make_image("fan-out")

    def push(instance, index):
        repository = f"fan/{index % 3}"
        _push_blobs(instance, image, repository)
        return instance.registry.manifests.put(
            repository, f"t{index}", image.manifest, image.media_type
        ).digest

    assert set(_run(settings, WORKERS, push)) == {image.digest}
    assert dockyard.registry.repositories.catalog().items == ["fan/0", "fan/1", "fan/2"]
