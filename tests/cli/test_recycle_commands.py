"""`dockyard config soft-delete|retention`, `manifest list-deleted|list-deleted-tags|restore`,
`repository list-deleted` against a running registry."""

from __future__ import annotations

import pytest

from tests.cli.conftest import Cli
from tests.e2e.support import DockyardServer, fetch_manifest, push_blob, push_image, put_manifest
from tests.support.images import make_image

pytestmark = pytest.mark.e2e


def test_policies_show_and_update(admin: Cli) -> None:
    try:
        shown = admin.json("config", "soft-delete", "update", "--days", "14", "--status", "enabled")
        assert (shown["status"], shown["retentionDays"]) == ("enabled", 14)
        assert admin.json("config", "soft-delete", "show") == shown
        assert admin.json("show")["policies"]["softDeletePolicy"] == shown
        admin.fails("config", "soft-delete", "update", "--days", "91")

        kept = admin.json("config", "retention", "update", "--status", "enabled", "--days", "30")
        assert (kept["status"], kept["days"], kept["type"]) == ("enabled", 30, "UntaggedManifests")
        assert admin.json("config", "retention", "show") == kept
    finally:
        admin.ok("config", "soft-delete", "update", "--status", "disabled", "--days", "7")
        admin.ok("config", "retention", "update", "--status", "disabled", "--days", "7")


def test_delete_list_deleted_and_restore(admin: Cli, registry: DockyardServer) -> None:
    image = make_image("cli-recycle")
    with registry.http(timeout=30) as http:
        push_image(http, "cli-recycle/app", "v1", image)
    try:
        admin.ok("config", "soft-delete", "update", "--status", "enabled")
        admin.ok("repository", "delete", "--image", "cli-recycle/app:v1", "--yes")
        [entry] = admin.json("manifest", "list-deleted", "--repository", "cli-recycle/app")
        assert (entry["digest"], entry["tags"]) == (image.digest, ["v1"])
        [tag] = admin.json("manifest", "list-deleted-tags", "--repository", "cli-recycle/app")
        assert (tag["tag"], tag["digest"]) == ("v1", image.digest)
        admin.ok("repository", "delete", "--repository", "cli-recycle/app", "--yes")
        assert "cli-recycle/app" in admin.json("repository", "list-deleted")

        restored = admin.json("manifest", "restore", "--repository", "cli-recycle/app", "-d", image.digest)
        assert restored == {"digest": image.digest, "restoredTags": ["v1"], "skippedTags": []}
        with registry.http(timeout=30) as http:
            assert fetch_manifest(http, "cli-recycle/app", "v1") == image.manifest
        assert admin.json("manifest", "list-deleted", "--repository", "cli-recycle/app") == []
        admin.fails("manifest", "restore", "--repository", "cli-recycle/app", "-d", image.digest)
    finally:
        admin.ok("config", "soft-delete", "update", "--status", "disabled")


def test_list_deleted_follows_the_pages(admin: Cli, registry: DockyardServer) -> None:
    """More than one page (100) of bin entries and tags: the commands list them all, or --top."""
    count = 103
    digests = []
    with registry.http(timeout=30) as http:
        base = make_image("cli-bin-pages")
        for blob in base.blobs:
            push_blob(http, "cli-bin/pages", blob.data)
        for i in range(count):
            image = make_image("cli-bin-pages", annotations={"i": str(i)})
            digests.append(put_manifest(http, "cli-bin/pages", f"t{i:03d}", image.manifest, image.media_type))
    try:
        admin.ok("config", "soft-delete", "update", "--status", "enabled")
        admin.ok("repository", "delete", "--repository", "cli-bin/pages", "--yes")
        listed = admin.json("manifest", "list-deleted", "--repository", "cli-bin/pages")
        assert sorted(m["digest"] for m in listed) == sorted(digests)
        assert [m["digest"] for m in listed] == sorted(digests)  # one deletion time: by digest
        tags = admin.json("manifest", "list-deleted-tags", "--repository", "cli-bin/pages")
        assert [t["tag"] for t in tags] == [f"t{i:03d}" for i in range(count)]
        assert [t["digest"] for t in tags] == digests
        top = admin.json("manifest", "list-deleted", "--repository", "cli-bin/pages", "--top", "101")
        assert top == listed[:101]
        assert "cli-bin/pages" in admin.json("repository", "list-deleted")
        assert len(admin.json("repository", "list-deleted", "--top", "1")) == 1
    finally:
        admin.ok("config", "soft-delete", "update", "--status", "disabled")
