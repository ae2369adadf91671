"""How pushes into one repository lock it: together with each other, serialised only for their tag
moves, never ahead of a write lock or a delete waiting its turn, and without deadlocks."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dockyard.app import build
from dockyard.oci.errors import RegistryError
from dockyard.registry.services import manifests as manifest_services
from dockyard.registry.services.locks import LockPolicy
from dockyard.registry.services.manifests import TagExists
from tests.support.images import make_image

REPO = "race/app"

pytestmark = pytest.mark.filesystem_only  # the store plays no part: once per database is enough


def _upload(dockyard, *images):
    for image in images:
        for blob in image.blobs:
            dockyard.registry.uploads.upload_whole(REPO, blob.digest, iter([blob.data]))


def test_a_write_lock_waits_for_a_push_in_flight(settings, dockyard, monkeypatch):
    """writeEnabled=false is not answered while a push that saw writeEnabled=true is still to commit."""
    image = make_image("in-flight")
    _upload(dockyard, image)
    paused, release = threading.Event(), threading.Event()
    real = manifest_services.check_references

    def slow(parsed, sent):
        paused.set()
        release.wait(10)
        return real(parsed, sent)

    monkeypatch.setattr(manifest_services, "check_references", slow)
    other = build(settings)
    try:
        pusher = threading.Thread(
            target=lambda: dockyard.registry.manifests.put(REPO, "v1", image.manifest, image.media_type)
        )
        pusher.start()
        assert paused.wait(10)
        locker = threading.Thread(
            target=lambda: other.registry.locks.update_repository(REPO, {"write_enabled": False})
        )
        locker.start()
        locker.join(0.5)
        answered_early = not locker.is_alive()
        release.set()
        pusher.join(30)
        locker.join(30)
        assert not answered_early, (
            "writeEnabled=false answered while a push into the repository was in flight"
        )
    finally:
        release.set()
        other.db.dispose()


def test_a_write_lock_is_not_starved_by_pushes_into_the_repository(settings, dockyard):
    """Six nodes push manifests into one repository without pause; writeEnabled=false still gets its turn."""
    images = [make_image(f"stream-{i}") for i in range(6)]
    _upload(dockyard, *images)
    nodes = [build(settings) for _ in images]
    stop = threading.Event()
    pushed = threading.Semaphore(0)

    def pusher(k: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                nodes[k].registry.manifests.put(
                    REPO, f"t{k}-{n % 20}", images[k].manifest, images[k].media_type
                )
            except RegistryError:
                return  # the repository is write-locked now
            pushed.release()
            n += 1

    threads = [threading.Thread(target=pusher, args=(k,)) for k in range(len(nodes))]
    for thread in threads:
        thread.start()
    try:
        for _ in range(30):  # the pushes are under way
            assert pushed.acquire(timeout=30)
        started = time.monotonic()
        dockyard.registry.locks.update_repository(REPO, {"write_enabled": False})
        waited = time.monotonic() - started
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        for node in nodes:
            node.db.dispose()
    assert waited < 5, f"writeEnabled=false waited {waited:.1f} s behind pushes"


def test_a_new_tag_only_push_never_overwrites_a_tag_pushed_meanwhile(settings, dockyard, monkeypatch):
    """An import without force (``new_tag_only``) reads the tag where tag moves are serialised: a push of
    that tag waits for it, so the import never overwrites a tag that appeared after its check."""
    one, two = make_image("import-one"), make_image("import-two")
    _upload(dockyard, one, two)
    importer = threading.current_thread
    checked, release = threading.Event(), threading.Event()
    importing: list[threading.Thread] = []
    real = LockPolicy.tag_move_from

    def check_then_pause(sent, repo, tag, manifest_id):
        previous = real(sent, repo, tag, manifest_id)
        if importer() in importing:
            checked.set()
            release.wait(10)
        return previous

    monkeypatch.setattr(LockPolicy, "tag_move_from", staticmethod(check_then_pause))
    other = build(settings)
    outcome: dict[str, str] = {}

    def import_tag() -> None:
        try:
            other.registry.manifests.put(REPO, "t", one.manifest, one.media_type, new_tag_only=True)
            outcome["import"] = "tagged"
        except TagExists:
            outcome["import"] = "refused"

    try:
        first = threading.Thread(target=import_tag)
        importing.append(first)
        first.start()
        assert checked.wait(10)
        second = threading.Thread(
            target=lambda: dockyard.registry.manifests.put(REPO, "t", two.manifest, two.media_type)
        )
        second.start()
        second.join(0.5)
        pushed_meanwhile = not second.is_alive()
        release.set()
        first.join(30)
        second.join(30)
    finally:
        release.set()
        other.db.dispose()
    assert not pushed_meanwhile, "a push moved the tag while the import held its check"
    assert outcome == {"import": "tagged"}
    assert dockyard.registry.repositories.tag_detail(REPO, "t").digest == two.digest


def test_an_existing_tag_refuses_a_new_tag_only_push(dockyard):
    one, two = make_image("exists-one"), make_image("exists-two")
    _upload(dockyard, one, two)
    dockyard.registry.manifests.put(REPO, "t", one.manifest, one.media_type)
    with pytest.raises(TagExists):
        dockyard.registry.manifests.put(REPO, "t", two.manifest, two.media_type, new_tag_only=True)
    assert dockyard.registry.repositories.tag_detail(REPO, "t").digest == one.digest


def test_a_hooked_push_and_a_push_of_one_manifest_do_not_deadlock(settings, dockyard, caplog):
    """A push with a ``before`` hook (a restore, the pull-through cache) takes its locks in the same
    order as any push: two pushes of one new manifest never deadlock (PostgreSQL: 1 s, then a retry)."""
    other = build(settings)
    caplog.set_level(logging.INFO, logger="dockyard.db")
    try:
        for i in range(10):
            image = make_image(f"same-{i}")
            _upload(dockyard, image)
            start = threading.Barrier(2)

            def plain(image=image, start=start, i=i):
                start.wait()
                dockyard.registry.manifests.put(REPO, f"p{i}", image.manifest, image.media_type)

            def hooked(image=image, start=start, i=i):
                start.wait()
                other.registry.manifests.put(
                    REPO, f"h{i}", image.manifest, image.media_type, before=lambda conn, repo_id: None
                )

            with ThreadPoolExecutor(2) as pool:
                for future in [pool.submit(plain), pool.submit(hooked)]:
                    future.result()
    finally:
        other.db.dispose()
    assert not [r for r in caplog.records if "Deadlock" in r.getMessage()]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_push_survives_its_repository_being_created_and_deleted_under_it(dockyard, monkeypatch):
    """Another node creates the repository after this push's first look and deletes it before the
    push locks it: the push makes the repository again instead of failing with a 500."""
    import sqlalchemy as sa

    from dockyard.registry.models import repositories
    from dockyard.registry.services import locks
    from dockyard.registry.services.common import ensure_repository

    other = dockyard.db
    calls = []

    def racing(conn, name, now=None):
        calls.append(name)
        if len(calls) == 1:
            with other.write() as elsewhere:  # another connection: its commits are seen at once
                ensure_repository(elsewhere, name, now)
            found = ensure_repository(conn, name, now)
            with other.write() as elsewhere:
                elsewhere.execute(sa.delete(repositories).where(repositories.c.name == name))
            return found
        return ensure_repository(conn, name, now)

    monkeypatch.setattr(locks, "ensure_repository", racing)
    image = make_image("recreated")
    _upload(dockyard, image)
    dockyard.registry.manifests.put(REPO, "v1", image.manifest, image.media_type)
    assert calls == [REPO, REPO]
    with dockyard.db.read() as conn:
        names = conn.execute(sa.select(repositories.c.name)).scalars().all()
    assert names == [REPO]
