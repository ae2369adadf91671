import hashlib

import pytest

from dockyard.oci.digest import compute_digest, new_hasher, parse_digest
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.names import is_valid_name, parse_reference, validate_name


def test_parse_digest_accepts_sha256_and_sha512():
    hex256 = hashlib.sha256(b"x").hexdigest()
    hex512 = hashlib.sha512(b"x").hexdigest()
    assert parse_digest(f"sha256:{hex256}") == ("sha256", hex256)
    assert parse_digest(f"sha512:{hex512}") == ("sha512", hex512)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha256",
        "sha256:",
        ":abc",
        "sha256:" + "a" * 63,
        "sha256:" + "A" * 64,
        "sha512:" + "a" * 64,
        "sha384:" + "a" * 96,
        "SHA256:" + "a" * 64,
        "sha256:" + "a" * 64 + "\n",
        "x" * 300,
    ],
)
def test_parse_digest_rejects(value):
    with pytest.raises(RegistryError) as failure:
        parse_digest(value)
    assert failure.value.code is ErrorCode.DIGEST_INVALID
    assert failure.value.status == 400


def test_compute_digest_and_incremental_hasher_agree():
    hasher = new_hasher("sha512")
    hasher.update(b"ab")
    hasher.update(b"c")
    assert compute_digest(b"abc", "sha512") == f"sha512:{hasher.hexdigest()}"
    with pytest.raises(ValueError, match="unsupported"):
        new_hasher("md5")


@pytest.mark.parametrize(
    "name", ["a", "library/ubuntu", "a/b/c/d", "a-b", "a--b", "a__b", "a.b", "a_b", "0", "x" * 255]
)
def test_valid_names(name):
    assert validate_name(name) == name
    assert is_valid_name(name)


@pytest.mark.parametrize(
    "name", ["", "A", "a/", "/a", "a//b", "a___b", "a..b", "-a", "a-", "_a", "a b", "a/../b", "x" * 256, "é"]
)
def test_invalid_names(name):
    assert not is_valid_name(name)
    with pytest.raises(RegistryError) as failure:
        validate_name(name)
    assert failure.value.code is ErrorCode.NAME_INVALID


def test_parse_reference():
    digest = "sha256:" + "b" * 64
    assert parse_reference("latest") == ("latest", None)
    assert parse_reference("_x.Y-1") == ("_x.Y-1", None)
    assert parse_reference(digest) == (None, digest)
    with pytest.raises(RegistryError) as bad_tag:
        parse_reference(".hidden")
    assert bad_tag.value.code is ErrorCode.MANIFEST_INVALID
    with pytest.raises(RegistryError) as bad_digest:
        parse_reference("sha256:zz")
    assert bad_digest.value.code is ErrorCode.DIGEST_INVALID
