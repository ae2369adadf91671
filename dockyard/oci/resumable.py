"""Resumable SHA-256 and SHA-512: a running digest whose state is exported as bytes and resumed elsewhere.

hashlib cannot export its state, so this drives OpenSSL's low-level ``SHA256_CTX`` and
``SHA512_CTX`` through ctypes, from the libcrypto that Python's ``_hashlib`` already links
(same code, same speed as hashlib). The state is serialised in a format of our own, never
as raw struct bytes, so it does not depend on OpenSSL's memory layout:

State format, version 1 (all integers big-endian)::

    offset  size      field
    0       4         magic b"DKRH"
    4       1         version = 1
    5       1         algorithm: 1 = sha256, 2 = sha512
    6       8         message length so far, in bytes (uint64)
    14      32 | 64   chaining values h0..h7: uint32 (sha256) or uint64 (sha512)
    46 | 78 n         buffered bytes not yet compressed; n = length mod block size (64 | 128)
    end-4   4         CRC-32 (zlib) of everything before it

A state that fails any check (magic, version, algorithm, size, buffer length, CRC) is
refused with HashStateError. The CRC catches accidental corruption; it is not a MAC.
"""

from __future__ import annotations

import _hashlib
import ctypes
import struct
import zlib
from dataclasses import dataclass

MAGIC = b"DKRH"
VERSION = 1
_HEADER = struct.Struct(">4sBBQ")
_CRC = struct.Struct(">I")


class HashStateError(ValueError):
    """An exported hash state is corrupt, truncated, or not one this code wrote."""


class _Sha256Ctx(ctypes.Structure):
    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint8 * 64),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


class _Sha512Ctx(ctypes.Structure):
    _fields_ = [
        ("h", ctypes.c_uint64 * 8),
        ("Nl", ctypes.c_uint64),
        ("Nh", ctypes.c_uint64),
        ("data", ctypes.c_uint8 * 128),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


@dataclass(frozen=True, slots=True)
class _Algorithm:
    name: str
    code: int
    ctx: type[ctypes.Structure]
    word_bits: int
    block_size: int
    digest_size: int
    init: ctypes._CFuncPtr
    update: ctypes._CFuncPtr
    final: ctypes._CFuncPtr

    @property
    def words(self) -> struct.Struct:
        return struct.Struct(">8I" if self.word_bits == 32 else ">8Q")


def _bind(libcrypto: ctypes.CDLL, prefix: str) -> tuple[ctypes._CFuncPtr, ...]:
    init, update, final = (getattr(libcrypto, f"{prefix}_{name}") for name in ("Init", "Update", "Final"))
    init.argtypes = [ctypes.c_void_p]
    update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    for function in (init, update, final):
        function.restype = ctypes.c_int
    return init, update, final


def _load() -> dict[str, _Algorithm]:
    libcrypto = ctypes.CDLL(_hashlib.__file__)
    found = {
        "sha256": _Algorithm("sha256", 1, _Sha256Ctx, 32, 64, 32, *_bind(libcrypto, "SHA256")),
        "sha512": _Algorithm("sha512", 2, _Sha512Ctx, 64, 128, 64, *_bind(libcrypto, "SHA512")),
    }
    for algorithm in found.values():  # a layout that does not match OpenSSL's must fail loudly
        ctx = algorithm.ctx()
        algorithm.init(ctypes.byref(ctx))
        if ctx.md_len != algorithm.digest_size or ctx.num != 0:
            raise ImportError(f"unexpected OpenSSL {algorithm.name} context layout")
    return found


_ALGORITHMS = _load()
_BY_CODE = {algorithm.code: algorithm for algorithm in _ALGORITHMS.values()}
#: The algorithms a resumable hash supports.
ALGORITHMS = frozenset(_ALGORITHMS)


class ResumableHash:
    """An incremental SHA-2 hash (hashlib's interface) whose state can be exported and resumed."""

    __slots__ = ("_algorithm", "_ctx")

    def __init__(self, algorithm: str = "sha256") -> None:
        spec = _ALGORITHMS.get(algorithm)
        if spec is None:
            raise ValueError(f"no resumable hash for {algorithm!r}")
        self._algorithm = spec
        self._ctx = spec.ctx()
        spec.init(ctypes.byref(self._ctx))

    @property
    def name(self) -> str:
        return self._algorithm.name

    @property
    def length(self) -> int:
        """How many bytes have been hashed."""
        return ((self._ctx.Nh << self._algorithm.word_bits) | self._ctx.Nl) >> 3

    def update(self, data: bytes, /) -> None:
        if not isinstance(data, bytes):
            data = bytes(data)
        self._algorithm.update(ctypes.byref(self._ctx), data, len(data))

    def copy(self) -> ResumableHash:
        twin = ResumableHash.__new__(ResumableHash)
        twin._algorithm = self._algorithm
        twin._ctx = self._algorithm.ctx.from_buffer_copy(self._ctx)
        return twin

    def digest(self) -> bytes:
        ctx = self._algorithm.ctx.from_buffer_copy(self._ctx)  # Final consumes its context
        out = ctypes.create_string_buffer(self._algorithm.digest_size)
        self._algorithm.final(out, ctypes.byref(ctx))
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()

    def export(self) -> bytes:
        """The state in the documented format (see the module docstring)."""
        spec, ctx = self._algorithm, self._ctx
        length = self.length
        buffered = bytes(ctx.data)[: ctx.num]
        body = _HEADER.pack(MAGIC, VERSION, spec.code, length) + spec.words.pack(*ctx.h) + buffered
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def resume(cls, state: bytes) -> ResumableHash:
        """The hash a state from ``export`` describes; HashStateError if it is not a valid one."""
        if len(state) < _HEADER.size + _CRC.size:
            raise HashStateError("hash state is truncated")
        magic, version, code, length = _HEADER.unpack_from(state)
        if magic != MAGIC:
            raise HashStateError("not a Dockyard hash state")
        if version != VERSION:
            raise HashStateError(f"unsupported hash state version {version}")
        spec = _BY_CODE.get(code)
        if spec is None:
            raise HashStateError(f"unknown hash state algorithm {code}")
        buffered = length % spec.block_size
        words = spec.words
        if len(state) != _HEADER.size + words.size + buffered + _CRC.size:
            raise HashStateError("hash state has the wrong size for its length")
        (crc,) = _CRC.unpack_from(state, len(state) - _CRC.size)
        if zlib.crc32(state[: -_CRC.size]) != crc:
            raise HashStateError("hash state checksum mismatch")
        bits = length * 8
        if bits >> (2 * spec.word_bits):
            raise HashStateError("hash state length out of range")
        hasher = cls(spec.name)
        ctx = hasher._ctx
        for index, value in enumerate(words.unpack_from(state, _HEADER.size)):
            ctx.h[index] = value
        mask = (1 << spec.word_bits) - 1
        ctx.Nl = bits & mask
        ctx.Nh = bits >> spec.word_bits
        start = _HEADER.size + words.size
        ctypes.memmove(ctx.data, state[start : start + buffered], buffered)
        ctx.num = buffered
        return hasher
