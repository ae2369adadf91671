"""A manifest push's references: the blobs and child manifests it needs, checked and recorded.

The checks lock what they find (FOR SHARE) until the push commits, so garbage collection either
waits and then sees the new references, or finished first and they are not found. They name the
repository rather than its id, so they travel in the round trip that locks its row.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from dockyard import prepared
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.manifests import ParsedManifest
from dockyard.registry.models import (
    blobs,
    manifest_blobs,
    manifest_children,
    manifests,
    repositories,
    repository_blobs,
)
from dockyard.registry.services.blobstate import LIVE

INSERT_MANIFEST_BLOB = manifest_blobs.insert()
INSERT_MANIFEST_CHILD = manifest_children.insert()


def _from_arrays(table: sa.Table, *columns: str) -> sa.Insert:
    """PostgreSQL: one statement inserting a row per element of the arrays bound as ``<column>s``
    (``manifest_id`` bound once), where SQLite runs the plain insert once per row."""
    # Unbounded element types: a cast to VARCHAR(n) would cut a long value where the column refuses it.
    kinds = {name: postgresql.ARRAY(_unbounded(table.c[name].type)) for name in columns}
    arrays = [sa.cast(sa.bindparam(f"{name}s"), kinds[name]) for name in columns]
    rows = sa.func.unnest(*arrays).table_valued(*columns).render_derived()
    return table.insert().from_select(
        ["manifest_id", *columns],
        sa.select(sa.bindparam("manifest_id", type_=table.c.manifest_id.type), *rows.c),
    )


def _unbounded(kind: Any) -> Any:
    return sa.Text() if isinstance(kind, sa.String) else kind


_BLOBS_FROM_ARRAYS = _from_arrays(manifest_blobs, "digest", "media_type", "size")
_CHILDREN_FROM_ARRAYS = _from_arrays(manifest_children, "child_digest", "os", "architecture", "variant")
_NAMED_REPOSITORY = (
    sa.select(repositories.c.id).where(repositories.c.name == sa.bindparam("repository")).scalar_subquery()
)
HELD_BLOBS = (
    sa.select(blobs.c.digest, blobs.c.size)
    .select_from(repository_blobs.join(blobs))
    .where(
        repository_blobs.c.repository_id == _NAMED_REPOSITORY,
        repository_blobs.c.digest.in_(sa.bindparam("digests", expanding=True)),
        blobs.c.state == LIVE,
    )
    .with_for_update(read=True, of=[repository_blobs, blobs])
)
PRESENT_MANIFESTS = (
    sa.select(manifests.c.digest)
    .where(
        manifests.c.repository_id == _NAMED_REPOSITORY,
        manifests.c.digest.in_(sa.bindparam("digests", expanding=True)),
    )
    .with_for_update(read=True)
)

#: What ``send_references`` sent: the blobs' check and the child manifests' (None: nothing to check).
Sent = tuple[prepared.Sent | None, prepared.Sent | None]


def send_references(conn: Connection, repository: str, parsed: ParsedManifest) -> Sent:
    """Ask, without waiting, which of the blobs and child manifests ``parsed`` needs
    ``repository`` holds (``check_references`` reads the answers)."""
    wanted = list({d.digest for d in parsed.required_blobs})
    children = list({d.digest for d in parsed.children})
    held = prepared.send(conn, HELD_BLOBS, {"repository": repository, "digests": wanted}) if wanted else None
    present = None
    if children:
        present = prepared.send(conn, PRESENT_MANIFESTS, {"repository": repository, "digests": children})
    return held, present


def check_references(parsed: ParsedManifest, sent: Sent) -> None:
    """MANIFEST_BLOB_UNKNOWN or MANIFEST_INVALID unless the repository holds what ``parsed`` needs."""
    held, present = sent
    if held is not None:
        sizes = {row.digest: row.size for row in held.rows()}
        for descriptor in parsed.required_blobs:
            size = sizes.get(descriptor.digest)
            if size is None:
                raise RegistryError(
                    ErrorCode.MANIFEST_BLOB_UNKNOWN,
                    f"blob {descriptor.digest} is not in the repository",
                    detail={"digest": descriptor.digest},
                )
            if size != descriptor.size:
                raise RegistryError(
                    ErrorCode.MANIFEST_INVALID,
                    f"blob {descriptor.digest} has size {size}, not {descriptor.size}",
                    detail={"digest": descriptor.digest},
                )
    if present is not None:
        found = {row.digest for row in present.rows()}
        for descriptor in parsed.children:
            if descriptor.digest not in found:
                raise RegistryError(
                    ErrorCode.MANIFEST_BLOB_UNKNOWN,
                    f"manifest {descriptor.digest} listed in the index is not in the repository",
                    detail={"digest": descriptor.digest},
                )


def insert_references(conn: Connection, manifest_id: int, parsed: ParsedManifest) -> None:
    """Record a new manifest's blobs and children (sent without waiting; on PostgreSQL one
    statement each, however many layers or children)."""
    referenced = {d.digest: d for d in parsed.required_blobs}
    if referenced:
        rows = [
            {"manifest_id": manifest_id, "digest": d.digest, "media_type": d.media_type, "size": d.size}
            for d in referenced.values()
        ]
        _insert_rows(conn, INSERT_MANIFEST_BLOB, _BLOBS_FROM_ARRAYS, manifest_id, rows)
    children = {d.digest: d for d in parsed.children}
    if children:
        rows = [
            {
                "manifest_id": manifest_id,
                "child_digest": d.digest,
                "os": platform_value(d.platform, "os"),
                "architecture": platform_value(d.platform, "architecture"),
                "variant": platform_value(d.platform, "variant"),
            }
            for d in children.values()
        ]
        _insert_rows(conn, INSERT_MANIFEST_CHILD, _CHILDREN_FROM_ARRAYS, manifest_id, rows)


def _insert_rows(
    conn: Connection, each: sa.Insert, from_arrays: sa.Insert, manifest_id: int, rows: list[dict[str, Any]]
) -> None:
    if conn.dialect.name != "postgresql":
        prepared.execute_many(conn, each, rows)
        return
    columns = [name for name in rows[0] if name != "manifest_id"]
    arrays = {f"{name}s": [row[name] for row in rows] for name in columns}
    prepared.execute_later(conn, from_arrays, {"manifest_id": manifest_id, **arrays})


def platform_value(document: dict[str, Any] | None, key: str) -> str | None:
    """A platform field (``os``, ``architecture``, ``variant``) as a column holds it, or None."""
    value = (document or {}).get(key)
    return value[:64] if isinstance(value, str) and value else None
