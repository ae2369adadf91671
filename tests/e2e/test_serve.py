"""`dockyard serve` itself: its default data folder, and PostgreSQL instead of SQLite."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from dockyard.db import Database
from tests.e2e.support import ContainerTools, DockyardServer, fetch_blob, fetch_manifest, push_blob, wait_for
from tests.support.images import make_image, make_index, sha256, write_oci_layout

pytestmark = pytest.mark.e2e


def test_default_data_dir_is_created_in_the_working_directory(
    start_server: Callable[..., DockyardServer], tmp_path: Path
) -> None:
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    server = start_server(cwd=workdir)  # only --port: no --data-dir, no --database-url

    data = workdir / "dockyard-data"
    assert (data / "dockyard.db").is_file()
    assert (data / "storage").is_dir()
    stderr = server.stderr()
    assert f"listening on http://127.0.0.1:{server.port}" in stderr
    assert f"database: sqlite:///{data.resolve() / 'dockyard.db'}" in stderr
    assert f"storage:  {(data / 'storage').resolve()}" in stderr
    assert f" login 127.0.0.1:{server.port} -u dockyard" in stderr.split("log in:")[1].splitlines()[0]
    # the banner comes once the database is ready: after the new admin's passwords, before serving
    assert stderr.index("its passwords are shown only now") < stderr.index("listening on")

    # Blobs land in that folder.
    with server.http(timeout=30) as http:
        digest = push_blob(http, "serve/defaults", b"stored under ./dockyard-data\n")
    hex_digest = digest.split(":", 1)[1]
    assert (data / "storage" / "blobs" / "sha256" / hex_digest[:2] / hex_digest).read_bytes() == (
        b"stored under ./dockyard-data\n"
    )


def test_postgresql_round_trip_with_skopeo(
    start_server: Callable[..., DockyardServer],
    fresh_postgres_url: str,
    container_tools: ContainerTools,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir=data_dir, extra_args=["--database-url", fresh_postgres_url])
    container_tools.authorize(server.host)
    assert f"database: {fresh_postgres_url.rsplit('@', maxsplit=1)[-1]}" in server.stderr()
    assert not (data_dir / "dockyard.db").exists(), "the server must not fall back to SQLite"

    image = make_image("postgres-image", layers=2)
    arm = make_image("postgres-arm", architecture="arm64")
    index = make_index([image, arm])
    layout = tmp_path / "layout"
    write_oci_layout(layout, {"image": image}, {"multi": (index, [image, arm])})

    host = server.host
    container_tools.skopeo(
        "copy", "--dest-tls-verify=false", f"oci:{layout}:image", f"docker://{host}/pg/app:v1"
    )
    container_tools.skopeo(
        "copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:multi", f"docker://{host}/pg/app:multi"
    )

    with server.http(timeout=30) as http:
        assert fetch_manifest(http, "pg/app", "v1") == image.manifest
        assert fetch_manifest(http, "pg/app", "multi") == index
        for blob in [*image.blobs, *arm.blobs]:
            assert fetch_blob(http, "pg/app", blob.digest) == blob.data
        assert http.get("/v2/pg/app/tags/list").json() == {"name": "pg/app", "tags": ["multi", "v1"]}

    out = tmp_path / "out"
    container_tools.skopeo("copy", "--src-tls-verify=false", f"docker://{host}/pg/app:v1", f"oci:{out}:image")
    container_tools.skopeo(
        "copy", "--all", "--src-tls-verify=false", f"docker://{host}/pg/app:multi", f"oci:{out}:multi"
    )
    refs = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in json.loads((out / "index.json").read_text())["manifests"]
    }
    assert refs == {"image": image.digest, "multi": sha256(index)}
    for blob in [*image.blobs, *arm.blobs]:
        assert (out / "blobs" / "sha256" / blob.digest.split(":", 1)[1]).read_bytes() == blob.data

    # The metadata really is in PostgreSQL.
    db = Database(fresh_postgres_url, pool_size=1)
    try:
        with db.read() as conn:
            stored = conn.execute(
                sa.text(
                    "SELECT m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id"
                    " WHERE r.name = 'pg/app'"
                )
            ).scalars()
            assert set(stored) == {image.digest, arm.digest, sha256(index)}
    finally:
        db.dispose()


def test_access_log_counts_the_bytes_of_a_blob_download(
    dockyard_server: DockyardServer, registry_http: httpx.Client
) -> None:
    """Each request is logged as `client "METHOD path" status bytes-sent duration`."""
    data = b"counted by the access log\n" * 4000
    digest = push_blob(registry_http, "serve/access-log", data)
    assert fetch_blob(registry_http, "serve/access-log", digest) == data
    ranged = registry_http.get(f"/v2/serve/access-log/blobs/{digest}", headers={"Range": "bytes=0-99"})
    assert ranged.status_code == 206

    request = f'"GET /v2/serve/access-log/blobs/{digest}"'

    def logged() -> list[tuple[int, int]]:
        lines = [line for line in dockyard_server.stderr().splitlines() if request in line]
        return [(int(line.split()[-3]), int(line.split()[-2])) for line in lines]

    wait_for(lambda: len(logged()) >= 2, timeout=10, what=f"two access-log lines for {request}")
    assert logged() == [(200, len(data)), (206, 100)]


def test_postgresql_dropped_connections_are_replaced(
    start_server: Callable[..., DockyardServer], postgres_url: str, tmp_path: Path
) -> None:
    """A PostgreSQL restart or failover drops every connection; the next pulls must still succeed."""
    base, _, _ = postgres_url.rpartition("/")
    admin = Database(postgres_url, pool_size=1)
    database = "dockyard_e2e_reconnect"

    def recreate(*, create: bool) -> None:
        with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            if create:
                conn.execute(sa.text(f"CREATE DATABASE {database}"))

    server: DockyardServer | None = None
    try:
        recreate(create=True)
        server = start_server(data_dir=tmp_path / "data", extra_args=["--database-url", f"{base}/{database}"])
        image = make_image("postgres-reconnect")
        with server.http(timeout=30) as http:
            for blob in image.blobs:
                push_blob(http, "pg/reconnect", blob.data)
            put = http.put(
                "/v2/pg/reconnect/manifests/v1",
                content=image.manifest,
                headers={"Content-Type": image.media_type},
            )
            assert put.status_code == 201
            assert fetch_manifest(http, "pg/reconnect", "v1") == image.manifest  # connections are warm

            with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                dropped = conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": database},
                ).scalar()
            assert dropped, "the server held no PostgreSQL connection to drop"

            def backends_left() -> int:
                with admin.engine.connect() as conn:
                    return conn.execute(
                        sa.text(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE datname = :name AND pid <> pg_backend_pid()"
                        ),
                        {"name": database},
                    ).scalar()

            # As after a restart: the dropped backends are gone (and their sockets closed) first.
            wait_for(lambda: backends_left() == 0, timeout=10, what="the terminated backends to exit")

            manifest = http.get("/v2/pg/reconnect/manifests/v1", headers={"Accept": image.media_type})
            assert manifest.status_code == 200, f"{manifest.status_code} {manifest.text[:200]}"
            assert manifest.content == image.manifest
            blob = http.head(f"/v2/pg/reconnect/blobs/{image.config.digest}")
            assert blob.status_code == 200
            tags = http.get("/v2/pg/reconnect/tags/list")
            assert tags.status_code == 200
            assert tags.json()["tags"] == ["v1"]
    finally:
        if server is not None:
            server.stop()
        recreate(create=False)
        admin.dispose()
