"""The resumable SHA-2 hash: same digests as hashlib, exported state resumes anywhere, bad states refused."""

import hashlib
import random
import struct
import subprocess
import sys
import zlib

import pytest

from dockyard.oci.resumable import MAGIC, HashStateError, ResumableHash

ALGORITHMS = ["sha256", "sha512"]
RANDOM = random.Random(20240611)
DATA = RANDOM.randbytes(3000)


def _seal(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_matches_hashlib_over_random_split_points(algorithm):
    for _ in range(200):
        data = DATA[: RANDOM.randrange(len(DATA) + 1)]
        cuts = sorted(RANDOM.randrange(len(data) + 1) for _ in range(RANDOM.randrange(6)))
        hasher = ResumableHash(algorithm)
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
            hasher.update(data[start:end])
        assert hasher.hexdigest() == hashlib.new(algorithm, data).hexdigest()
        assert hasher.length == len(data)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_export_and_resume_at_every_split_point(algorithm):
    data = DATA[:600]  # several blocks of both algorithms, every buffer fill level
    expected = hashlib.new(algorithm, data).hexdigest()
    for cut in range(len(data) + 1):
        first = ResumableHash(algorithm)
        first.update(data[:cut])
        resumed = ResumableHash.resume(first.export())
        assert resumed.length == cut
        resumed.update(data[cut:])
        assert resumed.hexdigest() == expected, cut


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_digest_and_copy_leave_the_running_hash_alone(algorithm):
    hasher = ResumableHash(algorithm)
    hasher.update(b"abc")
    assert hasher.hexdigest() == hashlib.new(algorithm, b"abc").hexdigest()
    twin = hasher.copy()
    twin.update(b"def")
    hasher.update(b"xyz")
    assert twin.hexdigest() == hashlib.new(algorithm, b"abcdef").hexdigest()
    assert hasher.hexdigest() == hashlib.new(algorithm, b"abcxyz").hexdigest()


def test_memoryview_and_bytearray_updates():
    hasher = ResumableHash()
    hasher.update(memoryview(b"hello "))
    hasher.update(bytearray(b"world"))
    assert hasher.hexdigest() == hashlib.sha256(b"hello world").hexdigest()


def test_the_state_resumes_in_another_process():
    hasher = ResumableHash("sha512")
    hasher.update(DATA[:1000])
    script = (
        "import sys; from dockyard.oci.resumable import ResumableHash;"
        "h = ResumableHash.resume(bytes.fromhex(sys.argv[1])); h.update(bytes.fromhex(sys.argv[2]));"
        "print(h.hexdigest())"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, hasher.export().hex(), DATA[1000:2000].hex()],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == hashlib.sha512(DATA[:2000]).hexdigest()


def test_the_format_is_the_documented_one():
    hasher = ResumableHash("sha256")
    hasher.update(b"a" * 70)  # one block compressed, 6 bytes buffered
    state = hasher.export()
    assert state[:4] == MAGIC
    assert state[4:6] == bytes([1, 1])
    assert struct.unpack(">Q", state[6:14]) == (70,)
    assert state[46:52] == b"a" * 6
    assert len(state) == 46 + 6 + 4
    assert struct.unpack(">I", state[-4:]) == (zlib.crc32(state[:-4]),)
    assert ResumableHash("sha512").export()[5] == 2


def _corruptions(state: bytes):
    yield b""
    yield state[:10]
    yield state[:-1]
    yield state + b"\0"
    yield b"XXXX" + state[4:]
    for index in (6, 20, len(state) - 6, len(state) - 1):  # length, chaining value, buffer, crc
        flipped = bytearray(state)
        flipped[index] ^= 0x01
        yield bytes(flipped)
    yield _seal(state[:4] + bytes([2]) + state[5:-4])  # a future version
    yield _seal(state[:5] + bytes([9]) + state[6:-4])  # an unknown algorithm
    yield _seal(state[:6] + struct.pack(">Q", 71) + state[14:-4])  # length disagrees with the buffer
    yield _seal(state[:6] + struct.pack(">Q", 2**61 + 70) + state[14:-4])  # too long for sha256
    yield hashlib.sha256(b"x").digest()  # something else entirely


def test_corrupted_and_foreign_states_are_refused():
    hasher = ResumableHash("sha256")
    hasher.update(b"a" * 70)
    state = hasher.export()
    for bad in _corruptions(state):
        with pytest.raises(HashStateError):
            ResumableHash.resume(bad)
    assert ResumableHash.resume(state).length == 70


def test_unknown_algorithm():
    with pytest.raises(ValueError, match="no resumable hash"):
        ResumableHash("md5")
