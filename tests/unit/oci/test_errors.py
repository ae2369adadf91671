"""RegistryError: the spec's JSON error body, its defaults and overrides."""

import json

from dockyard.oci.errors import ErrorCode, RegistryError


def test_defaults_come_from_the_code():
    error = RegistryError(ErrorCode.BLOB_UNKNOWN)
    assert (error.message, error.status) == (ErrorCode.BLOB_UNKNOWN.default_message, 404)
    assert error.detail is None
    assert error.headers == {}
    assert str(error) == f"BLOB_UNKNOWN: {ErrorCode.BLOB_UNKNOWN.default_message}"
    assert json.loads(error.body()) == {
        "errors": [{"code": "BLOB_UNKNOWN", "message": ErrorCode.BLOB_UNKNOWN.default_message}]
    }


def test_message_status_detail_and_headers_override():
    error = RegistryError(
        ErrorCode.DIGEST_INVALID,
        "wrong digest",
        status=416,
        detail={"digest": "sha256:0"},
        headers={"Range": "0-9"},
    )
    assert (error.message, error.status, error.headers) == ("wrong digest", 416, {"Range": "0-9"})
    assert str(error) == "DIGEST_INVALID: wrong digest"
    assert json.loads(error.body()) == {
        "errors": [{"code": "DIGEST_INVALID", "message": "wrong digest", "detail": {"digest": "sha256:0"}}]
    }
