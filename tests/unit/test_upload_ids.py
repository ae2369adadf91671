"""Upload session ids: UUIDv7s that carry when they were issued and which repository they are for."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from dockyard.registry.services.upload_sessions import CLOCK_SKEW, new_upload_id, unopened_since

DAY = timedelta(days=1)
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_an_id_is_a_canonical_uuid7_that_says_when_it_was_issued():
    upload_id = new_upload_id("team/app", now=NOW.timestamp())
    parsed = uuid.UUID(upload_id)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == upload_id
    assert unopened_since(upload_id, "team/app", NOW, DAY) == NOW


def test_ids_differ_even_within_one_millisecond():
    ids = {new_upload_id("team/app", now=NOW.timestamp()) for _ in range(1000)}
    assert len(ids) == 1000


def test_an_id_opens_only_in_its_own_repository():
    upload_id = new_upload_id("team/app", now=NOW.timestamp())
    assert unopened_since(upload_id, "team/other", NOW, DAY) is None
    assert unopened_since(upload_id, "team/ap", NOW, DAY) is None


def test_an_id_opens_until_it_expires():
    upload_id = new_upload_id("team/app", now=NOW.timestamp())
    assert unopened_since(upload_id, "team/app", NOW + DAY - timedelta(seconds=1), DAY) == NOW
    assert unopened_since(upload_id, "team/app", NOW + DAY, DAY) is None


def test_an_id_from_a_clock_ahead_opens_within_the_allowed_skew():
    upload_id = new_upload_id("team/app", now=NOW.timestamp())
    assert unopened_since(upload_id, "team/app", NOW - CLOCK_SKEW, DAY) == NOW
    assert unopened_since(upload_id, "team/app", NOW - CLOCK_SKEW - timedelta(seconds=1), DAY) is None


@pytest.mark.parametrize(
    "other",
    [
        "3f2504e0-4f89-41d3-9a0c-0305e82c3301",  # a UUIDv4
        "",
        "not-a-uuid",
        "../../uploads",
    ],
)
def test_other_strings_are_not_ids_that_open(other):
    assert unopened_since(other, "team/app", NOW, DAY) is None


def test_any_change_to_an_id_stops_it_opening():
    upload_id = new_upload_id("team/app", now=NOW.timestamp())
    raw = uuid.UUID(upload_id).bytes
    assert unopened_since(upload_id.upper(), "team/app", NOW, DAY) is None
    assert unopened_since(upload_id.replace("-", ""), "team/app", NOW, DAY) is None
    assert unopened_since("{" + upload_id + "}", "team/app", NOW, DAY) is None
    for index in range(16):
        changed = bytearray(raw)
        changed[index] ^= 0x01
        assert unopened_since(str(uuid.UUID(bytes=bytes(changed))), "team/app", NOW, DAY) is None, index


def test_the_allowed_skew_is_five_minutes_as_documented():
    ahead = timedelta(minutes=4, seconds=59)
    assert unopened_since(new_upload_id("team/app", now=(NOW + ahead).timestamp()), "team/app", NOW, DAY)
    too_far = new_upload_id("team/app", now=(NOW + timedelta(minutes=5, seconds=1)).timestamp())
    assert unopened_since(too_far, "team/app", NOW, DAY) is None
