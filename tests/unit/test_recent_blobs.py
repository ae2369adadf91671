"""RecentBlobs: small blobs' bytes by digest, least recently used dropped past a byte budget."""

from __future__ import annotations

from dockyard.registry.services.digests import ENTRY_OVERHEAD, RecentBlobs


def test_the_budget_drops_the_least_recently_used_first() -> None:
    recent = RecentBlobs(budget=10 + 4 * ENTRY_OVERHEAD, max_bytes=4)
    recent.keep("a", b"aaaa")
    recent.keep("b", b"bbbb")
    assert recent.get("a") == b"aaaa"  # now the most recently used
    recent.keep("c", b"cc")
    assert recent.get("b") == b"bbbb"
    recent.keep("d", b"d")  # 11 bytes in four entries: the least recently used ("a") goes
    assert recent.get("a") is None
    assert [recent.get(k) for k in "bcd"] == [b"bbbb", b"cc", b"d"]


def test_blobs_above_the_item_size_are_not_kept() -> None:
    recent = RecentBlobs(budget=10 * ENTRY_OVERHEAD, max_bytes=4)
    recent.keep("big", b"12345")
    assert recent.get("big") is None
    recent.keep("edge", b"1234")
    assert recent.get("edge") == b"1234"


def test_keeping_a_digest_again_counts_its_bytes_once() -> None:
    recent = RecentBlobs(budget=8 + 2 * ENTRY_OVERHEAD, max_bytes=4)
    for _ in range(5):
        recent.keep("a", b"aaaa")
    recent.keep("b", b"bbbb")  # both fit
    assert recent.get("a") == b"aaaa"
    assert recent.get("b") == b"bbbb"


def test_a_zero_budget_keeps_nothing() -> None:
    recent = RecentBlobs(budget=0)
    recent.keep("a", b"")
    recent.keep("b", b"x")
    assert recent.get("b") is None


def test_tiny_blobs_cannot_hold_more_than_the_budget() -> None:
    recent = RecentBlobs(budget=100 * ENTRY_OVERHEAD)
    for n in range(1000):
        recent.keep(f"sha256:{n}", b"x")
    assert sum(recent.get(f"sha256:{n}") is not None for n in range(1000)) < 100
