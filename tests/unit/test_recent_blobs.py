"""RecentBlobs: small blobs' bytes by digest, least recently used dropped past a byte budget."""

from __future__ import annotations

from dockyard.registry.services.blobs import RecentRedirects
from dockyard.registry.services.digests import ENTRY_OVERHEAD, RecentBlobs
from dockyard.storage import Redirect


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


def test_recent_redirects_are_reused_while_fresh_then_signed_again() -> None:
    now = [100.0]
    redirects = RecentRedirects(reuse_seconds=300, size=2, clock=lambda: now[0])
    url = Redirect("https://store/a?sig=1")
    assert redirects.get("sha256:a", None) is None
    redirects.keep("sha256:a", None, url)
    assert redirects.get("sha256:a", None) is url
    assert redirects.get("sha256:a", "located/x") is None  # another copy of the blob: its own URL
    now[0] += 299.9
    assert redirects.get("sha256:a", None) is url
    now[0] += 0.1
    assert redirects.get("sha256:a", None) is None  # a quarter of its life gone: sign anew


def test_recent_redirects_keep_at_most_their_size_least_recently_used_first_out() -> None:
    redirects = RecentRedirects(size=2)
    for name in ("a", "b"):
        redirects.keep(name, None, Redirect(name))
    assert redirects.get("a", None) == Redirect("a")  # "b" is now the least recently used
    redirects.keep("c", None, Redirect("c"))
    assert redirects.get("b", None) is None
    assert redirects.get("a", None) == Redirect("a")
    assert redirects.get("c", None) == Redirect("c")
