"""Blob upload protocol: monolithic, single-POST, chunked, status, cancel, mount, and their errors."""

import hashlib
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dockyard.db import utcnow
from dockyard.registry.models import blobs, uploads
from dockyard.registry.services.upload_sessions import new_upload_id
from tests.support.auth import ADMIN
from tests.support.images import sha256
from tests.support.registry import error_codes, push_blob
from tests.support.stores import stored_blobs, upload_leftovers

DATA = bytes(range(256)) * 40  # 10 KiB


def start(client, repository="team/app"):
    response = client.post(f"/v2/{repository}/blobs/uploads/")
    assert response.status_code == 202
    return response


def test_post_then_put_creates_a_pullable_blob(client):
    started = start(client)
    location = started.headers["location"]
    assert location.startswith("/v2/team/app/blobs/uploads/")
    assert started.headers["docker-upload-uuid"] in location
    assert started.headers["range"] == "0-0"
    finished = client.put(location, params={"digest": sha256(DATA)}, content=DATA)
    assert finished.status_code == 201
    assert finished.headers["location"] == f"/v2/team/app/blobs/{sha256(DATA)}"
    assert finished.headers["docker-content-digest"] == sha256(DATA)
    pulled = client.get(finished.headers["location"])
    assert pulled.status_code == 200
    assert pulled.content == DATA


def test_single_post_with_digest_uploads_monolithically(client):
    response = client.post("/v2/team/app/blobs/uploads/", params={"digest": sha256(DATA)}, content=DATA)
    assert response.status_code == 201
    assert response.headers["docker-content-digest"] == sha256(DATA)
    assert client.get(f"/v2/team/app/blobs/{sha256(DATA)}").content == DATA


def test_single_post_with_wrong_digest_stores_nothing(client, dockyard):
    wrong = sha256(b"something else")
    response = client.post("/v2/team/app/blobs/uploads/", params={"digest": wrong}, content=DATA)
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert client.head(f"/v2/team/app/blobs/{wrong}").status_code == 404
    assert client.head(f"/v2/team/app/blobs/{sha256(DATA)}").status_code == 404
    assert stored_blobs(dockyard.store) == []
    assert upload_leftovers(dockyard.store) == 0


def test_put_with_wrong_digest_fails_and_ends_the_session(client):
    location = start(client).headers["location"]
    wrong = sha256(b"other")
    response = client.put(location, params={"digest": wrong}, content=DATA)
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert client.head(f"/v2/team/app/blobs/{wrong}").status_code == 404
    assert client.get(location).status_code == 404


def test_chunked_upload_with_content_range(client):
    location = start(client).headers["location"]
    first = client.patch(location, content=DATA[:4000], headers={"Content-Range": "0-3999"})
    assert first.status_code == 202
    assert first.headers["range"] == "0-3999"
    location = first.headers["location"]
    status = client.get(location)
    assert status.status_code == 204
    assert status.headers["range"] == "0-3999"
    assert status.headers["docker-upload-uuid"]
    second = client.patch(location, content=DATA[4000:], headers={"Content-Range": f"4000-{len(DATA) - 1}"})
    assert second.status_code == 202
    assert second.headers["range"] == f"0-{len(DATA) - 1}"
    done = client.put(second.headers["location"], params={"digest": sha256(DATA)})
    assert done.status_code == 201
    assert client.get(f"/v2/team/app/blobs/{sha256(DATA)}").content == DATA


def test_streamed_patch_without_content_range_then_final_chunk_in_put(client):
    location = start(client).headers["location"]
    streamed = client.patch(location, content=DATA[:5000])
    assert streamed.status_code == 202
    assert streamed.headers["range"] == "0-4999"
    done = client.put(
        streamed.headers["location"],
        params={"digest": sha256(DATA)},
        content=DATA[5000:],
        headers={"Content-Range": f"5000-{len(DATA) - 1}"},
    )
    assert done.status_code == 201
    assert client.get(f"/v2/team/app/blobs/{sha256(DATA)}").content == DATA


@pytest.mark.parametrize("bad_range", ["150-249", "1-100"], ids=["gap", "overlap"])
def test_out_of_order_chunk_is_416_with_current_range(client, bad_range):
    location = start(client).headers["location"]
    client.patch(location, content=DATA[:100], headers={"Content-Range": "0-99"})
    response = client.patch(location, content=DATA[:100], headers={"Content-Range": bad_range})
    assert response.status_code == 416
    assert error_codes(response) == ["BLOB_UPLOAD_INVALID"]
    assert response.headers["range"] == "0-99"
    assert response.headers["location"] == location
    assert client.get(location).headers["range"] == "0-99"


def test_resent_chunk_is_416_and_changes_nothing(client):
    location = start(client).headers["location"]
    client.patch(location, content=DATA[:100], headers={"Content-Range": "0-99"})
    again = client.patch(location, content=DATA[:100], headers={"Content-Range": "0-99"})
    assert again.status_code == 416
    done = client.put(location, params={"digest": sha256(DATA[:100])})
    assert done.status_code == 201


def test_content_range_must_match_the_body_length(client):
    location = start(client).headers["location"]
    response = client.patch(location, content=DATA[:100], headers={"Content-Range": "0-49"})
    assert response.status_code == 416
    assert client.get(location).headers["range"] == "0-0"


def test_malformed_content_range_is_400(client):
    location = start(client).headers["location"]
    response = client.patch(location, content=b"abc", headers={"Content-Range": "zero-two"})
    assert response.status_code == 400
    assert error_codes(response) == ["BLOB_UPLOAD_INVALID"]


def test_put_without_digest_is_digest_invalid(client):
    location = start(client).headers["location"]
    response = client.put(location, content=DATA)
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:1234",
        "sha256:" + "G" * 64,
        "sha256:" + "A" * 64,
        "md5:" + "a" * 32,
        "notadigest",
        "sha256:",
    ],
)
def test_invalid_digests_are_rejected(client, digest):
    location = start(client).headers["location"]
    response = client.put(location, params={"digest": digest}, content=DATA)
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


def test_sha512_digests_are_verified(client):
    digest = "sha512:" + hashlib.sha512(DATA).hexdigest()
    location = start(client).headers["location"]
    assert client.put(location, params={"digest": digest}, content=DATA).status_code == 201
    assert client.get(f"/v2/team/app/blobs/{digest}").content == DATA
    wrong = "sha512:" + hashlib.sha512(b"x").hexdigest()
    response = client.post("/v2/team/app/blobs/uploads/", params={"digest": wrong}, content=DATA)
    assert error_codes(response) == ["DIGEST_INVALID"]


def test_empty_blob(client):
    digest = push_blob(client, "team/app", b"")
    response = client.get(f"/v2/team/app/blobs/{digest}")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == "0"


def test_cancel_ends_the_session(client):
    location = start(client).headers["location"]
    client.patch(location, content=DATA[:10])
    assert client.delete(location).status_code == 204
    assert error_codes(client.get(location)) == ["BLOB_UPLOAD_UNKNOWN"]
    assert client.patch(location, content=b"x").status_code == 404
    assert client.delete(location).status_code == 404


def test_unknown_upload_is_blob_upload_unknown(client):
    for method in ("get", "patch", "delete"):
        response = getattr(client, method)("/v2/team/app/blobs/uploads/not-a-session")
        assert response.status_code == 404
        assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]
    response = client.put("/v2/team/app/blobs/uploads/nope", params={"digest": sha256(b"")})
    assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]


def test_session_belongs_to_its_repository(client):
    upload_id = start(client, "team/app").headers["docker-upload-uuid"]
    response = client.get(f"/v2/other/blobs/uploads/{upload_id}")
    assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]


def test_a_new_process_continues_an_upload(client, settings, dockyard):
    """Sessions live in the database: a second app (another process) finishes the upload."""
    from starlette.testclient import TestClient

    from dockyard.app import create_app

    location = start(client).headers["location"]
    client.patch(location, content=DATA[:3000], headers={"Content-Range": "0-2999"})
    with TestClient(create_app(settings, background_jobs=False), headers=ADMIN) as other:
        assert other.get(location).headers["range"] == "0-2999"
        patched = other.patch(
            location, content=DATA[3000:], headers={"Content-Range": f"3000-{len(DATA) - 1}"}
        )
        assert patched.status_code == 202
        assert other.put(location, params={"digest": sha256(DATA)}).status_code == 201
    assert client.get(f"/v2/team/app/blobs/{sha256(DATA)}").content == DATA


def test_mount_from_a_repository_that_has_the_blob(client):
    digest = push_blob(client, "source/repo", DATA)
    response = client.post("/v2/target/repo/blobs/uploads/", params={"mount": digest, "from": "source/repo"})
    assert response.status_code == 201
    assert response.headers["location"] == f"/v2/target/repo/blobs/{digest}"
    assert response.headers["docker-content-digest"] == digest
    assert client.get(f"/v2/target/repo/blobs/{digest}").content == DATA


def test_mount_that_cannot_be_done_starts_an_upload(client):
    push_blob(client, "source/repo", DATA)
    unknown = sha256(b"never pushed")
    response = client.post("/v2/target/repo/blobs/uploads/", params={"mount": unknown, "from": "source/repo"})
    assert response.status_code == 202
    assert "/blobs/uploads/" in response.headers["location"]
    wrong_source = client.post(
        "/v2/target/repo/blobs/uploads/", params={"mount": sha256(DATA), "from": "empty/repo"}
    )
    assert wrong_source.status_code == 202


def test_automatic_mount_without_from(client):
    digest = push_blob(client, "source/repo", DATA)
    response = client.post("/v2/target/auto/blobs/uploads/", params={"mount": digest})
    assert response.status_code == 201
    assert client.get(f"/v2/target/auto/blobs/{digest}").content == DATA


def test_mount_with_invalid_source_name(client):
    response = client.post(
        "/v2/target/repo/blobs/uploads/", params={"mount": sha256(DATA), "from": "Bad//Name"}
    )
    assert response.status_code == 400
    assert error_codes(response) == ["NAME_INVALID"]


def test_put_in_one_request_ends_the_session_and_leaves_no_upload_data(client, dockyard):
    location = start(client).headers["location"]
    assert client.put(location, params={"digest": sha256(DATA)}, content=DATA).status_code == 201
    assert client.get(location).status_code == 404  # the session ended with the blob's link
    assert client.get(f"/v2/team/app/blobs/{sha256(DATA)}").content == DATA
    assert [blob.size for blob in stored_blobs(dockyard.store)] == [len(DATA)]
    assert upload_leftovers(dockyard.store) == 0


def recorded_blob(dockyard, digest: str):
    """The blob's row (linked or not), or None."""
    return dockyard.db.run_lookup(
        lambda conn: conn.execute(sa.select(blobs.c.state).where(blobs.c.digest == digest)).first()
    )


def recorded_row(dockyard, state: str, generation: int, digest: str = sha256(DATA)) -> None:
    row = blobs.insert().values(
        digest=digest, size=len(DATA), created_at=utcnow(), state=state, generation=generation
    )
    dockyard.db.run_write(lambda conn: conn.execute(row))


def test_a_closing_put_of_a_blob_collection_is_deleting_is_refused_and_links_nothing(client, dockyard):
    """The closing PUT assumes a new blob; the row it finds sends it back to read it first."""
    recorded_row(dockyard, "deleting", 1)
    refused = client.put(start(client).headers["location"], params={"digest": sha256(DATA)}, content=DATA)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert client.head(f"/v2/team/app/blobs/{sha256(DATA)}").status_code == 404
    with dockyard.db.read() as conn:
        assert conn.execute(sa.select(blobs.c.state, blobs.c.generation)).all() == [("deleting", 1)]


def test_a_closing_put_of_a_blob_whose_bytes_were_collected_brings_it_back(client, dockyard):
    recorded_row(dockyard, "gone", 4)
    location = start(client).headers["location"]
    assert client.put(location, params={"digest": sha256(DATA)}, content=DATA).status_code == 201
    assert client.get(f"/v2/team/app/blobs/{sha256(DATA)}").content == DATA
    with dockyard.db.read() as conn:
        assert conn.execute(sa.select(blobs.c.state, blobs.c.generation)).all() == [("live", 4)]
    assert client.get(location).status_code == 404  # the session ended


def test_closing_put_whose_chunk_alone_has_the_digest_still_verifies_the_whole_upload(client, dockyard):
    location = start(client).headers["location"]
    patched = client.patch(location, content=b"head", headers={"Content-Range": "0-3"})
    assert patched.status_code == 202
    # DATA alone has this digest, but the upload holds b"head" + DATA, which does not
    response = client.put(patched.headers["location"], params={"digest": sha256(DATA)}, content=DATA)
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert client.head(f"/v2/team/app/blobs/{sha256(DATA)}").status_code == 404
    # The one-round-trip close it tried first (the body alone matched) was rolled back whole.
    assert recorded_blob(dockyard, sha256(DATA)) is None


def test_closing_put_with_the_last_chunk_completes_an_upload_holding_bytes(client):
    location = start(client).headers["location"]
    patched = client.patch(location, content=DATA[:100], headers={"Content-Range": "0-99"})
    response = client.put(patched.headers["location"], params={"digest": sha256(DATA)}, content=DATA[100:])
    assert response.status_code == 201
    assert client.get(f"/v2/team/app/blobs/{sha256(DATA)}").content == DATA


# -- sessions that nothing was written to have no row -------------------------------------------


def _writes_during(dockyard, action):
    """The INSERT/UPDATE/DELETE statements on ``uploads`` the database saw while ``action`` ran."""
    written: list[str] = []

    def record(conn, cursor, statement, *args):
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb in ("INSERT", "UPDATE", "DELETE") and " uploads" in statement:
            written.append(statement)

    sa.event.listen(dockyard.db.engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        sa.event.remove(dockyard.db.engine, "before_cursor_execute", record)
    return written


def _upload_rows(dockyard):
    with dockyard.db.read() as conn:
        return conn.execute(sa.select(uploads.c.id, uploads.c.size)).all()


def test_starting_an_upload_writes_nothing(client, dockyard):
    started = []
    assert _writes_during(dockyard, lambda: started.append(start(client))) == []
    assert _upload_rows(dockyard) == []
    assert client.get(started[0].headers["location"]).headers["range"] == "0-0"


def test_a_completed_session_stays_unknown(client, dockyard):
    location = start(client).headers["location"]
    assert client.put(location, params={"digest": sha256(DATA)}, content=DATA).status_code == 201
    assert error_codes(client.get(location)) == ["BLOB_UPLOAD_UNKNOWN"]
    again = client.put(location, params={"digest": sha256(b"x")}, content=b"x")
    assert error_codes(again) == ["BLOB_UPLOAD_UNKNOWN"]
    assert client.head(f"/v2/team/app/blobs/{sha256(b'x')}").status_code == 404
    assert recorded_blob(dockyard, sha256(b"x")) is None
    patched = client.patch(location, content=b"more", headers={"Content-Range": "0-3"})
    assert error_codes(patched) == ["BLOB_UPLOAD_UNKNOWN"]


def test_a_completed_chunked_session_stays_unknown(client):
    location = start(client).headers["location"]
    client.patch(location, content=DATA[:100], headers={"Content-Range": "0-99"})
    done = client.put(location, params={"digest": sha256(DATA)}, content=DATA[100:])
    assert done.status_code == 201
    assert error_codes(client.get(location)) == ["BLOB_UPLOAD_UNKNOWN"]


def test_a_cancelled_session_nothing_was_written_to_stays_unknown(client):
    location = start(client).headers["location"]
    assert client.delete(location).status_code == 204
    assert error_codes(client.get(location)) == ["BLOB_UPLOAD_UNKNOWN"]
    assert error_codes(client.delete(location)) == ["BLOB_UPLOAD_UNKNOWN"]
    refused = client.put(location, params={"digest": sha256(DATA)}, content=DATA)
    assert error_codes(refused) == ["BLOB_UPLOAD_UNKNOWN"]
    assert client.head(f"/v2/team/app/blobs/{sha256(DATA)}").status_code == 404


@pytest.mark.parametrize(
    "made_up",
    [
        "3f2504e0-4f89-41d3-9a0c-0305e82c3301",  # a UUIDv4, as earlier versions gave (they need a row)
        "not-an-upload",
        "../../etc/passwd",
    ],
)
def test_ids_the_registry_did_not_give_are_unknown(client, made_up):
    for response in (
        client.get(f"/v2/team/app/blobs/uploads/{made_up}"),
        client.patch(f"/v2/team/app/blobs/uploads/{made_up}", content=b"x", headers={"Content-Range": "0-0"}),
        client.put(f"/v2/team/app/blobs/uploads/{made_up}", params={"digest": sha256(b"x")}, content=b"x"),
        client.delete(f"/v2/team/app/blobs/uploads/{made_up}"),
    ):
        assert response.status_code == 404, (made_up, response.status_code)


def test_an_id_altered_in_any_way_is_unknown(client):
    upload_id = start(client).headers["docker-upload-uuid"]
    flipped = upload_id[:-1] + ("0" if upload_id[-1] != "0" else "1")
    for altered in (upload_id.upper(), flipped, upload_id.replace("-", "")):
        response = client.put(
            f"/v2/team/app/blobs/uploads/{altered}", params={"digest": sha256(DATA)}, content=DATA
        )
        assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"], altered


def test_an_expired_or_future_id_is_unknown(client):
    day = 24 * 3600
    for issued in (time.time() - day - 60, time.time() + 3600):
        upload_id = new_upload_id("team/app", now=issued)
        location = f"/v2/team/app/blobs/uploads/{upload_id}"
        assert error_codes(client.get(location)) == ["BLOB_UPLOAD_UNKNOWN"]
        assert error_codes(client.put(location, params={"digest": sha256(DATA)}, content=DATA)) == [
            "BLOB_UPLOAD_UNKNOWN"
        ]
    recent = new_upload_id("team/app", now=time.time() - day + 600)
    done = client.put(f"/v2/team/app/blobs/uploads/{recent}", params={"digest": sha256(DATA)}, content=DATA)
    assert done.status_code == 201


def test_closed_sessions_are_forgotten_once_their_ids_expire(client, dockyard):
    location = start(client).headers["location"]
    assert client.put(location, params={"digest": sha256(DATA)}, content=DATA).status_code == 201
    assert [row.size for row in _upload_rows(dockyard)] == [-1]  # kept: the id must stay unknown
    uploads_service = dockyard.registry.uploads
    uploads_service.expire(now=utcnow() + timedelta(days=1, minutes=1))  # another node may still open it
    assert [row.size for row in _upload_rows(dockyard)] == [-1]
    uploads_service.expire(now=utcnow() + timedelta(days=1, minutes=6))  # past the clocks' allowed skew
    assert _upload_rows(dockyard) == []


def test_a_session_id_made_up_without_a_post_is_refused_by_a_write_lock(client, dockyard):
    """An upload id needs no secret: its first write is checked as its POST would have been."""
    push_blob(client, "team/app", DATA)
    assert client.patch("/acr/v1/team%2Fapp", json={"writeEnabled": False}).status_code == 200
    assert error_codes(client.post("/v2/team/app/blobs/uploads/")) == ["DENIED"]
    made_up_id = new_upload_id("team/app")
    made_up = f"/v2/team/app/blobs/uploads/{made_up_id}"
    patched = client.patch(made_up, content=DATA[:100], headers={"Content-Range": "0-99"})
    assert error_codes(patched) == ["DENIED"]
    assert made_up_id not in [row.id for row in _upload_rows(dockyard)]
    assert upload_leftovers(dockyard.store) == 0


def test_completing_a_chunked_session_keeps_neither_its_store_state_nor_its_digest_state(client, dockyard):
    location = start(client).headers["location"]
    client.patch(location, content=DATA[:100], headers={"Content-Range": "0-99"})
    assert client.put(location, params={"digest": sha256(DATA)}, content=DATA[100:]).status_code == 201
    with dockyard.db.read() as conn:
        row = conn.execute(sa.select(uploads.c.size, uploads.c.store_state, uploads.c.hash_state)).one()
    assert tuple(row) == (-1, None, None)


def test_a_cancelled_session_drops_its_data(client, dockyard):
    location = start(client).headers["location"]
    client.patch(location, content=DATA[:100], headers={"Content-Range": "0-99"})
    assert upload_leftovers(dockyard.store) == 1
    assert client.delete(location).status_code == 204
    assert upload_leftovers(dockyard.store) == 0


def test_a_first_write_that_finds_the_session_just_opened_goes_on(client, dockyard, monkeypatch):
    """Two first writes to one session: the one whose insert finds the other's row locks that row."""
    from dockyard.registry.services import upload_sessions

    location = start(client).headers["location"]
    upload_id = location.rsplit("/", 1)[1]
    opened = upload_sessions.open_upload

    def opened_meanwhile(conn, repository, upload, now, expiry, size=0):
        assert opened(conn, repository, upload, now, expiry, size)  # the row the other write made
        return opened(conn, repository, upload, now, expiry, size)  # finds the row: False

    monkeypatch.setattr(upload_sessions, "open_upload", opened_meanwhile)
    patched = client.patch(location, content=DATA[:100], headers={"Content-Range": "0-99"})
    assert patched.status_code == 202, patched.text
    monkeypatch.undo()
    assert [(row.id, row.size) for row in _upload_rows(dockyard)] == [(upload_id, 100)]
