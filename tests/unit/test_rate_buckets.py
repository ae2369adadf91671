"""The rate limiter's bucket and lease arithmetic (pure; the clock is a number)."""

from __future__ import annotations

import pytest

from dockyard.ratelimits.buckets import (
    LEASE_SECONDS,
    Grant,
    LocalLease,
    batch_size,
    per_second,
    refilled,
    retry_after,
    seconds_until_token,
    take_lease,
)


def test_refill_is_continuous_and_capped_at_one_minute():
    rate = per_second(60)  # one a second
    assert refilled(0.0, 100.0, 100.5, 60, rate) == pytest.approx(0.5)
    assert refilled(10.0, 100.0, 110.0, 60, rate) == pytest.approx(20.0)
    assert refilled(10.0, 100.0, 1000.0, 60, rate) == 60.0
    assert refilled(10.0, 100.0, 90.0, 60, rate) == 10.0  # a clock behind the row's adds nothing


def test_a_lease_takes_whole_tokens_up_to_the_batch():
    rate = per_second(600)
    assert take_lease(50.0, 12, rate) == Grant(12, 38.0)
    assert take_lease(5.7, 12, rate) == Grant(5, pytest.approx(0.7))
    empty = take_lease(0.25, 12, rate)
    assert empty.tokens == 0
    assert empty.tokens_left == 0.25
    assert empty.wait_seconds == pytest.approx(0.075)  # 0.75 of a token at 10 a second


def test_batches_are_two_percent_of_the_bucket_and_at_least_one():
    assert batch_size(20_000) == 400
    assert batch_size(60) == 1
    assert batch_size(1) == 1


def test_retry_after_is_whole_seconds_and_never_zero():
    assert retry_after(0.0) == 1
    assert retry_after(0.2) == 1
    assert retry_after(19.0) == 19
    assert retry_after(19.01) == 20
    assert seconds_until_token(0.0, per_second(3)) == pytest.approx(20.0)
    assert seconds_until_token(1.5, 1.0) == 0.0


def test_a_local_lease_spends_refunds_and_lapses():
    lease = LocalLease()
    assert not lease.take(0.0)  # nothing leased yet
    lease.granted(Grant(2, 0.0), 100.0)
    assert lease.take(100.1)
    assert lease.take(100.2)
    assert not lease.take(100.3)
    lease.refund(100.4)
    assert lease.take(100.5)
    lease.granted(Grant(3, 0.0), 200.0)
    assert lease.take(200.0)
    assert not lease.take(200.0 + LEASE_SECONDS)  # lapsed: two unspent tokens left behind
    lease.refund(200.0 + LEASE_SECONDS)  # a refund after the lapse is dropped
    assert lease.leftover() == 2  # handed back with the next lease, then forgotten
    assert lease.leftover() == 0


def test_an_empty_grant_blocks_until_a_token_is_due():
    lease = LocalLease()
    lease.granted(Grant(0, 0.4, wait_seconds=6.0), 50.0)
    assert lease.blocked_until == 56.0
    assert not lease.take(51.0)
    lease.granted(Grant(1, 0.0), 56.0)
    assert lease.blocked_until == 0.0
    assert lease.take(56.0)


def test_the_admitted_total_stays_within_the_bucket_however_leases_interleave():
    """Two processes lease from one row in turn: what they admit never exceeds capacity + refill."""
    capacity, rate = 120, per_second(120)
    tokens, updated = float(capacity), 0.0
    admitted = 0
    now = 0.0
    held = [LocalLease(), LocalLease()]
    while now < 30.0:
        for lease in held:
            if lease.take(now):
                admitted += 1
                continue
            available = refilled(tokens, updated, now, capacity, rate)
            available = min(float(capacity), available + lease.leftover())
            grant = take_lease(available, batch_size(capacity), rate)
            tokens, updated = grant.tokens_left, now
            lease.granted(grant, now)
            if lease.take(now):
                admitted += 1
        now += 0.01
    assert admitted <= capacity + rate * 30.0
    assert admitted >= capacity + rate * 30.0 - 2 * batch_size(capacity) - 2


def test_a_lease_grants_a_single_whole_token():
    rate = per_second(60)
    assert take_lease(1.0, 12, rate) == Grant(1, 0.0)
    assert take_lease(1.75, 12, rate) == Grant(1, pytest.approx(0.75))
    assert take_lease(0.999, 12, rate).tokens == 0


def test_a_new_lease_holds_nothing_and_blocks_nothing():
    lease = LocalLease()
    assert lease.blocked_until == 0.0  # the limiter asks the shared bucket at once
    assert lease.expires == 0.0
    assert lease.pending is None
    lease.refund(0.5)  # nothing was taken from it: a refund has nothing to go back to
    assert not lease.take(0.5)
    assert lease.leftover() == 0


def test_a_refund_gives_back_exactly_one_token():
    lease = LocalLease()
    lease.granted(Grant(3, 0.0), 10.0)
    assert lease.take(10.1)
    lease.refund(10.2)
    assert lease.leftover() == 3
