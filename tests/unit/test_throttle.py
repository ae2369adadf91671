"""The sign-in throttle's token buckets, with a hand-driven clock."""

from __future__ import annotations

import pytest

from dockyard.access.throttle import LoginThrottle, SignedInCredentials, TokenBuckets, client_bucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_one_per_refill():
    buckets = TokenBuckets(3, refill_seconds=10)
    for _ in range(3):
        assert buckets.wait("k", 0) == 0
        buckets.take("k", 0)
    assert buckets.wait("k", 0) == pytest.approx(10)
    assert buckets.wait("k", 4) == pytest.approx(6)
    assert buckets.wait("k", 10) == 0
    buckets.take("k", 10)
    assert buckets.wait("k", 10) == pytest.approx(10)
    assert buckets.wait("other", 10) == 0  # keys are independent


def test_a_bucket_never_holds_more_than_its_burst_nor_less_than_nothing():
    buckets = TokenBuckets(2, refill_seconds=1)
    buckets.take("k", 0)
    buckets.give_back("k", 0)
    buckets.give_back("k", 0)  # more than was taken: still only the burst
    buckets.take("k", 0)
    buckets.take("k", 0)
    assert buckets.wait("k", 0) == pytest.approx(1)
    for _ in range(5):
        buckets.take("k", 0)
    assert buckets.wait("k", 0) == pytest.approx(1)  # not below zero: one refill frees it
    assert buckets.wait("k", 10_000) == 0
    buckets.give_back("never-seen", 0)
    assert buckets.wait("never-seen", 0) == 0


def test_the_least_recently_used_buckets_are_forgotten():
    buckets = TokenBuckets(1, refill_seconds=100, max_keys=2)
    for key in ("a", "b"):
        buckets.take(key, 0)
    buckets.wait("a", 0)  # a used again: b is the oldest
    buckets.take("c", 0)
    assert buckets.wait("a", 0) > 0
    assert buckets.wait("b", 0) == 0
    assert buckets.wait("c", 0) > 0


def test_attempts_take_their_place_and_successes_give_it_back():
    clock = Clock()
    throttle = LoginThrottle(per_client=2, per_user=100, refill_seconds=5, clock=clock)
    assert throttle.attempt("alice", "192.0.2.1") == 0
    throttle.succeeded("alice", "192.0.2.1")
    for _ in range(2):
        assert throttle.attempt("alice", "192.0.2.1") == 0  # two in flight (or failed)
    assert throttle.attempt("alice", "192.0.2.1") == 5
    assert throttle.attempt("bob", "192.0.2.2") == 0  # another client is not held up
    clock.now += 4.2
    assert throttle.attempt("alice", "192.0.2.1") == 1  # whole seconds, rounded up
    clock.now += 0.8
    assert throttle.attempt("alice", "192.0.2.1") == 0


def test_a_user_name_is_throttled_across_clients_and_cases():
    clock = Clock()
    throttle = LoginThrottle(per_client=100, per_user=3, refill_seconds=5, clock=clock)
    for n in range(3):
        assert throttle.attempt("Alice", f"192.0.2.{n}") == 0
    assert throttle.attempt("alice", "198.51.100.1") == 10  # per user: twice the client refill
    assert throttle.attempt("ALICE", "198.51.100.2") == 10
    assert throttle.attempt("", "198.51.100.3") == 0  # no user name (a refresh token): client only


def test_credentials_that_signed_in_from_a_client_skip_both_counts_there():
    clock = Clock()
    throttle = LoginThrottle(per_client=3, per_user=1, refill_seconds=5, clock=clock)
    assert throttle.attempt("alice", "192.0.2.1") == 0  # a guess empties alice's bucket
    assert throttle.attempt("alice", "192.0.2.2") == 10
    for _ in range(5):  # the owner's client, which signed in before: no count at all
        assert throttle.attempt("alice", "192.0.2.9", signed_in_before=True) == 0
        throttle.succeeded("alice", "192.0.2.9", signed_in_before=True)
    assert throttle.attempt("alice", "192.0.2.3") == 10  # the successes gave nothing to alice's bucket


def test_a_sign_in_the_user_count_refuses_still_costs_its_client():
    clock = Clock()
    throttle = LoginThrottle(per_client=3, per_user=1, refill_seconds=5, clock=clock)
    assert throttle.attempt("alice", "192.0.2.1") == 0  # alice's bucket is empty now
    assert [throttle.attempt("alice", "192.0.2.2") for _ in range(3)] == [10, 10, 10]
    assert throttle.attempt("bob", "192.0.2.2") == 5  # guessing at alice spent 192.0.2.2's tokens


def test_signed_in_credentials_are_remembered_for_a_while_by_client_name_and_password():
    clock = Clock()
    signed_in = SignedInCredentials(100, clock)
    assert not signed_in.recalls("192.0.2.1", "alice", "right")
    signed_in.remember("192.0.2.1", "alice", "right")
    assert signed_in.recalls("192.0.2.1", "alice", "right")
    assert not signed_in.recalls("192.0.2.1", "alice", "wrong")
    assert not signed_in.recalls("192.0.2.1", "bob", "right")
    assert not signed_in.recalls("192.0.2.2", "alice", "right")  # another client: not the owner's device
    assert not signed_in.recalls("192.0.2.1", "alicer", "ight")  # the parts are not just run together
    signed_in.remember("2001:db8:1:2::5", "alice", "right")
    assert signed_in.recalls("2001:db8:1:2::77", "alice", "right")  # the same /64
    assert not signed_in.recalls("2001:db8:1:3::5", "alice", "right")
    clock.now += 100
    assert signed_in.recalls("192.0.2.1", "alice", "right")
    signed_in.remember("192.0.2.1", "alice", "right")  # signing in again renews it
    clock.now += 99.5
    assert signed_in.recalls("192.0.2.1", "alice", "right")  # 199.5 s after the first, 99.5 s after this one
    clock.now += 1  # recalling renews nothing
    assert not signed_in.recalls("192.0.2.1", "alice", "right")
    signed_in.remember("192.0.2.1", "alice", "right")
    signed_in.forget("192.0.2.1", "alice", "right")
    assert not signed_in.recalls("192.0.2.1", "alice", "right")
    signed_in.forget("192.0.2.1", "never", "seen")


def test_the_least_recently_used_signed_in_credentials_are_forgotten():
    signed_in = SignedInCredentials(100, Clock(), max_entries=2)
    signed_in.remember("c", "a", "1")
    signed_in.remember("c", "b", "2")
    assert signed_in.recalls("c", "a", "1")  # a used again: b is the oldest
    signed_in.remember("c", "c", "3")
    assert signed_in.recalls("c", "a", "1")
    assert not signed_in.recalls("c", "b", "2")
    assert signed_in.recalls("c", "c", "3")


def test_each_process_remembers_under_its_own_key():
    one, other = SignedInCredentials(100, Clock()), SignedInCredentials(100, Clock())
    assert one._digest("c", "alice", "right") != other._digest("c", "alice", "right")
    assert one._digest("c", "alice", "right") == one._digest("c", "alice", "right")
    assert "right" not in repr(one._signed_in)


@pytest.mark.parametrize(
    ("client", "bucket"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        (None, "-"),
        ("", "-"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_clients_are_counted_by_address_or_ipv6_64(client, bucket):
    assert client_bucket(client) == bucket


def test_a_right_password_gives_the_user_name_its_token_back():
    throttle = LoginThrottle(per_client=5, per_user=1, refill_seconds=5, clock=Clock())
    assert throttle.attempt("alice", "192.0.2.1") == 0
    throttle.succeeded("alice", "192.0.2.1")
    assert throttle.attempt("alice", "192.0.2.2") == 0  # the user name's one token came back


def test_a_bucket_refilled_to_exactly_one_token_lets_the_next_try_through():
    clock = Clock()
    throttle = LoginThrottle(per_client=1, per_user=5, refill_seconds=5, clock=clock)
    assert throttle.attempt("", "192.0.2.1") == 0
    assert throttle.attempt("", "192.0.2.1") == 5
    clock.now += 5  # exactly one refill
    assert throttle.attempt("", "192.0.2.1") == 0


def test_remembered_credentials_still_wait_while_their_clients_bucket_is_empty():
    """A neighbour behind the owner's address guesses the shared client bucket empty: the owner's
    right password then waits too, so the neighbour cannot tell it from a wrong one."""
    clock = Clock()
    throttle = LoginThrottle(per_client=2, per_user=1, refill_seconds=6, clock=clock)
    assert throttle.attempt("alice", "192.0.2.50") == 0  # someone empties alice's bucket
    for _ in range(2):  # the neighbour's wrong guesses from the owner's address
        assert throttle.attempt("alice", "192.0.2.1") == 12
    assert throttle.attempt("alice", "192.0.2.1", signed_in_before=True) == 6
    clock.now += 6
    assert throttle.attempt("alice", "192.0.2.1", signed_in_before=True) == 0  # takes nothing
    assert throttle.attempt("alice", "192.0.2.1", signed_in_before=True) == 0


def test_one_user_signing_in_from_many_clients_forgets_only_its_own_oldest():
    signed_in = SignedInCredentials(100, Clock(), max_entries=5, per_user=3)
    signed_in.remember("192.0.2.1", "owner", "right")
    for n in range(10):  # another account, from ten addresses
        signed_in.remember(f"198.51.100.{n}", "Mallory", "pw")
    assert signed_in.recalls("192.0.2.1", "owner", "right")
    assert [signed_in.recalls(f"198.51.100.{n}", "mallory", "pw") for n in range(10)] == [False] * 10
    kept = [signed_in.recalls(f"198.51.100.{n}", "Mallory", "pw") for n in range(10)]
    assert kept == [False] * 7 + [True] * 3
    signed_in.remember("192.0.2.2", "MALLORY", "pw")  # the same name in other letters counts with it
    assert not signed_in.recalls("198.51.100.7", "Mallory", "pw")
    for user in ("b", "c", "d"):  # past max_entries in all, the least recently used go first
        signed_in.remember("192.0.2.1", user, "x")
    assert not signed_in.recalls("192.0.2.1", "owner", "right")
    assert signed_in.recalls("192.0.2.1", "d", "x")
    signed_in.forget("192.0.2.1", "d", "x")
    assert not signed_in.recalls("192.0.2.1", "d", "x")
