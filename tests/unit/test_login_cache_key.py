"""The login cache keeps keyed hashes of credentials: nothing a memory dump could brute-force offline."""

from __future__ import annotations

import hashlib
from typing import Any, cast

from dockyard.access.services.authentication import Authenticator


def _authenticator() -> Authenticator:
    return Authenticator(cast(Any, None), cast(Any, None))  # the key needs neither database nor tokens


def test_login_cache_keys_are_keyed_per_process_and_keep_user_and_password_apart() -> None:
    one, other = _authenticator(), _authenticator()
    key = one._login_key("alice", "s3cret")
    assert key == one._login_key("alice", "s3cret")
    assert key != other._login_key("alice", "s3cret")  # a key made for each authenticator
    assert key != hashlib.sha256(b"alice\0s3cret").digest()
    assert one._login_key("alic", "es3cret") != key  # the parts are not just run together
    assert one._login_key("alice", "s3cre") != key
