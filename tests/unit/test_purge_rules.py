"""acr purge's selection rules (dockyard.lifecycle.purge_rules): filters, --ago, --keep, untagged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dockyard.lifecycle import purge_rules as rules
from dockyard.lifecycle.purge_rules import (
    Filter,
    ManifestRow,
    PurgeInputError,
    TagRow,
    cutoff_of,
    parse_ago,
    parse_filter,
    select_tags,
    select_untagged,
    tag_filters,
    without_tags,
)

NOW = datetime(2030, 6, 1, tzinfo=UTC)
INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE = "application/vnd.oci.image.manifest.v1+json"


def days_ago(n: float) -> datetime:
    return NOW - timedelta(days=n)


# -- filters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "repository", "tag"),
    [
        ("hello-world:.*", "hello-world", ".*"),
        ("team/app:^v[0-9]+$", "team/app", "^v[0-9]+$"),
        ("app:(?i:latest)", "app", "(?i:latest)"),  # the colon of a flag group is not the split
        ("app:[[:digit:]]+", "app", "[[:digit:]]+"),  # nor the colons of a POSIX class
        (".*:.*", ".*", ".*"),
    ],
)
def test_a_filter_splits_at_the_colon_acr_cli_splits_at(text, repository, tag):
    assert parse_filter(text) == Filter(repository, tag)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("app", "unable to correctly parse"),
        ("a:b:c", "unable to correctly parse"),
        (":v1", "missing repository"),
        ("app:", "missing tag"),
        ("app:(", "invalid regular expression"),
        ("(:v1", "invalid regular expression"),
    ],
)
def test_bad_filters_say_why(text, message):
    with pytest.raises(PurgeInputError, match=message):
        parse_filter(text)


def test_literal_repositories_are_taken_as_given_and_regexes_are_anchored():
    names = ["team/app", "team/app-old", "other/team/app", "x"]
    assert tag_filters([Filter("team/app", "v1")], names) == {"team/app": "v1"}
    assert tag_filters([Filter("missing", "v1")], names) == {"missing": "v1"}
    assert tag_filters([Filter("team/.*", "v1")], names) == {"team/app": "v1", "team/app-old": "v1"}
    assert tag_filters([Filter("t.am/app", "v1")], names) == {"team/app": "v1"}
    assert Filter("team/app", "v1").literal
    assert not Filter("team.app", "v1").literal


def test_filters_on_the_same_repository_are_joined_with_or():
    filters = [Filter("app", "^dev"), Filter("a.p", "^rc"), Filter("other", "x")]
    assert tag_filters(filters, ["app", "other"]) == {"app": "^dev|^rc", "other": "x"}


# -- --ago -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("2d3h6m", timedelta(days=2, hours=3, minutes=6)),
        ("12h", timedelta(hours=12)),
        ("1.5h", timedelta(minutes=90)),
        ("90s", timedelta(seconds=90)),
        ("500ms", timedelta(milliseconds=500)),
        ("0d", timedelta(0)),
        ("1d0s", timedelta(days=1)),
        ("100000d", timedelta(days=150 * 365)),  # capped at 150 years, as acr-cli does
        ("60000d99999h", timedelta(days=150 * 365)),
    ],
)
def test_ago_is_days_then_a_go_duration(text, expected):
    assert parse_ago(text) == expected


@pytest.mark.parametrize("text", ["", "d", "3h2d", "1x", "1d1x", "h", "1.d", "-1h", "1 d"])
def test_bad_ago_values_are_refused(text):
    with pytest.raises(PurgeInputError):
        parse_ago(text)


def test_the_cutoff_is_now_minus_ago():
    assert cutoff_of(NOW, timedelta(days=2)) == days_ago(2)
    assert cutoff_of(NOW, None) is None


# -- tags ------------------------------------------------------------------------------------------


def tag(name: str, age_days: float, digest: str = "sha256:a", locked: bool = False) -> TagRow:
    return TagRow(name, digest, days_ago(age_days), locked)


def test_tags_older_than_the_cutoff_that_match_are_selected():
    tags = [tag("v1", 10), tag("v2", 3), tag("latest", 10), tag("v3", 1)]
    chosen = select_tags(tags, "^v", days_ago(2), keep=0)
    assert [t.name for t in chosen] == ["v2", "v1"]  # newest first, as acr lists them


def test_the_cutoff_is_strict():
    exactly = tag("v1", 2)
    assert select_tags([exactly], ".*", exactly.updated_at, keep=0) == []
    assert select_tags([exactly], ".*", exactly.updated_at + timedelta(microseconds=1), keep=0) == [exactly]


def test_keep_spares_the_newest_of_the_tags_that_would_go():
    tags = [tag("v1", 10), tag("v2", 9), tag("v3", 8), tag("v4", 1)]
    chosen = select_tags(tags, "v", days_ago(5), keep=2)
    # v4 is too young to go and does not count; of v3, v2, v1 the two newest stay
    assert [t.name for t in chosen] == ["v1"]
    assert select_tags(tags, "v", days_ago(5), keep=3) == []
    assert select_tags(tags, "v", days_ago(5), keep=-1) == select_tags(tags, "v", days_ago(5), keep=0)


def test_the_tag_regex_searches_rather_than_matching_whole_names():
    tags = [tag("v1", 3), tag("v10", 3), tag("prod-v1", 3), tag("V1", 3)]
    assert sorted(t.name for t in select_tags(tags, "v1", days_ago(1), 0)) == ["prod-v1", "v1", "v10"]
    assert [t.name for t in select_tags(tags, "^v1$", days_ago(1), 0)] == ["v1"]


def test_locked_tags_are_never_selected_and_do_not_count_for_keep():
    tags = [tag("v1", 10), tag("v2", 9, locked=True), tag("v3", 8)]
    assert [t.name for t in select_tags(tags, ".*", days_ago(1), keep=1)] == ["v1"]


def test_no_cutoff_means_any_age():
    assert [t.name for t in select_tags([tag("v1", 0)], ".*", None, 0)] == ["v1"]


def test_ties_are_broken_by_name():
    tags = [tag("b", 3), tag("a", 3), tag("c", 3)]
    assert [t.name for t in select_tags(tags, ".*", days_ago(1), keep=1)] == ["b", "c"]


# -- untagged manifests ----------------------------------------------------------------------------


def manifest(
    digest: str,
    age_days: float = 10,
    tags: int = 0,
    children: tuple[str, ...] = (),
    subject: str | None = None,
    locked: bool = False,
) -> ManifestRow:
    media = INDEX if children else IMAGE
    return ManifestRow(digest, media, days_ago(age_days), tags, children, subject, locked)


def chosen(manifests: list[ManifestRow], cutoff: datetime | None = None) -> list[str]:
    return [m.digest for m in select_untagged(manifests, cutoff)]


def test_only_untagged_old_unlocked_manifests_go():
    rows = [manifest("a"), manifest("b", tags=1), manifest("c", age_days=1), manifest("d", locked=True)]
    assert chosen(rows, days_ago(5)) == ["a"]
    assert sorted(chosen(rows)) == ["a", "c"]


def test_children_of_a_kept_index_stay_even_nested():
    rows = [
        manifest("top", tags=1, children=("mid",)),
        manifest("mid", children=("leaf1", "leaf2")),
        manifest("leaf1"),
        manifest("leaf2"),
        manifest("loose"),
    ]
    assert chosen(rows) == ["loose"]


def test_children_of_a_young_untagged_index_stay():
    rows = [manifest("idx", age_days=0, children=("c",)), manifest("c")]
    assert chosen(rows, days_ago(1)) == []


def test_an_untagged_index_goes_before_its_children():
    rows = [manifest("c1"), manifest("c2"), manifest("idx", children=("c1", "c2"))]
    order = chosen(rows)
    assert sorted(order) == ["c1", "c2", "idx"]
    assert order[0] == "idx"


def test_a_child_shared_with_a_kept_index_stays():
    rows = [
        manifest("gone", children=("shared", "own")),
        manifest("kept", tags=1, children=("shared",)),
        manifest("shared"),
        manifest("own"),
    ]
    assert sorted(chosen(rows)) == ["gone", "own"]


def test_referrers_of_a_kept_subject_stay_and_go_with_a_deleted_one():
    rows = [
        manifest("subject", tags=1),
        manifest("sig", subject="subject"),
        manifest("old-subject"),
        manifest("sbom", subject="old-subject"),
    ]
    order = chosen(rows)
    assert sorted(order) == ["old-subject", "sbom"]
    assert order.index("sbom") < order.index("old-subject")


def test_the_subject_of_a_kept_referrer_stays():
    rows = [manifest("subject"), manifest("sig", subject="subject", tags=1), manifest("young", age_days=0)]
    assert chosen(rows, days_ago(1)) == []
    rows = [manifest("subject"), manifest("sig", subject="subject", age_days=0)]
    assert chosen(rows, days_ago(1)) == []


def test_a_chain_of_referrers_is_kept_from_its_tagged_end():
    rows = [
        manifest("image"),
        manifest("sig", subject="image"),
        manifest("sig-of-sig", subject="sig", locked=True),
    ]
    assert chosen(rows) == []


def test_a_referrer_whose_subject_is_missing_goes():
    assert chosen([manifest("sig", subject="sha256:gone")]) == ["sig"]


def test_without_tags_projects_the_tag_deletions():
    rows = [manifest("a", tags=2), manifest("b", tags=1), manifest("c")]
    projected = without_tags(rows, [tag("x", 1, "a"), tag("y", 1, "b")])
    assert [m.tags for m in projected] == [1, 0, 0]
    assert projected[2] is rows[2]
    assert chosen(projected) == ["b", "c"]


@pytest.mark.parametrize(
    ("pattern", "size"),
    [
        ("v1", 2),
        ("^v[0-9]{1,3}$", 4),
        ("(ab){3}", 6),
        ("((a{10})b){10}", 110),
        ("[[:alpha:]]{2}x", 3),
        ("[]a]{3}", 3),
        (r"\p{L}{5}", 5),
        ("a{}", 3),  # not a quantifier: literal characters
    ],
)
def test_expanded_size_bounds_counted_repeats(pattern, size):
    assert rules.expanded_size(pattern) == size


def test_repeat_counts_over_re2s_limit_and_huge_expansions_are_refused():
    with pytest.raises(rules.PurgeInputError, match="over 1000"):
        rules.expanded_size("a{1001}")
    with pytest.raises(rules.PurgeInputError, match="too large"):
        rules.parse_filter("app:(a{1000}){1000}")
