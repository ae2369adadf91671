import hashlib

import pytest

from dockyard.oci.digest import compute_digest, is_digest, new_hasher, parse_digest
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.names import is_valid_name, parse_reference, validate_name, validate_tag


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


DIGEST = "sha256:" + "b" * 64


@pytest.mark.parametrize(
    "value",
    [DIGEST, "sha512:" + "c" * 128, "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"],
)
def test_is_digest(value):
    assert is_digest(value)


@pytest.mark.parametrize(
    "value",
    [
        DIGEST + "\n",
        DIGEST + " extra",
        "\n" + DIGEST,
        "sha256",
        "sha256:",
        ":" + "b" * 64,
        "Sha256:" + "b" * 64,
        "sha256:b/c",
    ],
)
def test_is_digest_refuses_anything_around_the_grammar(value):
    assert not is_digest(value)


@pytest.mark.parametrize(
    "tag", ["a", "A", "0", "_", "latest", "_x.Y-1", "v1.2.3", "a" * 128, "_" + "." * 127, "A-_."]
)
def test_valid_tags(tag):
    assert validate_tag(tag) == tag
    assert parse_reference(tag) == (tag, None)


@pytest.mark.parametrize(
    "tag", ["", "a" * 129, ".hidden", "-dash", "a/b", "a b", "a+b", "tag\n", "\ntag", "tag ", "é", "a@b"]
)
def test_invalid_tags(tag):
    with pytest.raises(RegistryError) as failure:
        validate_tag(tag)
    assert failure.value.code is ErrorCode.MANIFEST_INVALID
    assert failure.value.message == f"invalid tag {tag!r}"
    with pytest.raises(RegistryError) as by_reference:
        parse_reference(tag)
    assert by_reference.value.code is ErrorCode.MANIFEST_INVALID
    assert by_reference.value.message == f"invalid tag {tag!r}"


def test_errors_quote_a_bounded_prefix_of_huge_values():
    with pytest.raises(RegistryError) as tag:
        validate_tag("-" * 1000)
    assert tag.value.message == f"invalid tag {'-' * 200!r}"
    with pytest.raises(RegistryError) as reference:
        parse_reference("-" * 1000)
    assert reference.value.message == f"invalid tag {'-' * 200!r}"
    with pytest.raises(RegistryError) as name:
        validate_name("A" * 1000)
    assert name.value.message == f"invalid repository name {'A' * 300!r}"


@pytest.mark.parametrize("reference", [DIGEST + "\n", DIGEST + "x", "sha256:" + "b" * 63, "latest:1", "a:b"])
def test_a_reference_with_a_colon_must_be_a_valid_digest(reference):
    with pytest.raises(RegistryError) as failure:
        parse_reference(reference)
    assert failure.value.code is ErrorCode.DIGEST_INVALID


def test_parse_digest_explains_what_is_wrong():
    with pytest.raises(RegistryError) as unsupported:
        parse_digest("md5:" + "a" * 32)
    assert unsupported.value.message == "unsupported digest algorithm 'md5'; use sha256 or sha512"
    too_long = "x" * 250 + ":" + "a" * 6  # 257 characters of otherwise valid grammar
    with pytest.raises(RegistryError) as long:
        parse_digest(too_long)
    assert long.value.message == f"invalid digest {too_long[:80]!r}"
    longest = "x" * 249 + ":" + "a" * 6  # 256 characters: the grammar's limit, an unknown algorithm
    with pytest.raises(RegistryError) as unknown:
        parse_digest(longest)
    assert unknown.value.message.startswith("unsupported digest algorithm")
    with pytest.raises(RegistryError) as short:
        parse_digest("sha256:abc")
    assert short.value.message == "invalid sha256 digest 'sha256:abc'"
    with pytest.raises(RegistryError) as bad_hex:
        parse_digest("sha256:" + "a" * 100)
    assert bad_hex.value.message == f"invalid sha256 digest {('sha256:' + 'a' * 100)[:80]!r}"
