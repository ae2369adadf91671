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
        ("app:" + "(" * 500 + "x" + ")" * 500, "nested too deeply"),  # under the 1,024-character limit
        ("(" * 500 + "x" + ")" * 500 + ":v1", "nested too deeply"),
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


# -- edge cases found by mutation testing (scripts/mutate) ------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "size"),
    [
        (r"\d{3}", 3),  # a plain escape is one atom; the braces after it are its repeat
        (r"\P{L}{5}", 5),  # \p \P \x \N \u \U take a braced argument
        (r"\x{41}{5}", 5),
        (r"\N{LATIN SMALL LETTER A}{5}", 5),
        (r"\u{41}{5}", 5),
        (r"\U{41}{5}", 5),
        (r"}\p{L}{2}", 3),  # the argument's closing brace is searched after the escape
        ("[^]a]{3}", 3),  # "]" right after "[^" is literal
        ("[^]]{3}x", 4),
        (r"[\]]{3}x", 4),  # an escaped "]" does not close the class
        ("[abc", 1),  # an unterminated class runs to the end
        ("a{1}b", 2),
        ("a{0}b", 2),  # a zero repeat still counts its atom once
        ("()x", 2),  # an empty group counts 1
        ("XY|Z", 3),  # alternation, anchors and quantifiers are not atoms
        ("a)b", 3),  # an unbalanced ")" is a character here (the compile refuses it)
        ("(", 1),  # unclosed groups are closed at the end
        ("((ab", 2),
        ("((a", 1),
    ],
)
def test_expanded_size_of_escapes_classes_and_groups(pattern, size):
    assert rules.expanded_size(pattern) == size


def test_repeat_count_errors_quote_the_repeat():
    with pytest.raises(PurgeInputError) as info:
        rules.expanded_size("a{1001}")
    assert str(info.value) == "repeat count '{1001}' is over 1000"
    with pytest.raises(PurgeInputError) as info:
        rules.expanded_size("a{1,99999999999999999999}")
    assert str(info.value) == "repeat count '{1,99999999999999999' is over 1000"


def test_leading_zeros_do_not_hide_a_repeat_count():
    pattern = "(a{0000001000}){0000001000}"  # regex compiles it as (a{1000}){1000}
    assert rules.expanded_size(pattern) == 1000 * 1000
    with pytest.raises(PurgeInputError, match="is over 1000"):
        rules.expanded_size("a{00000000000000001001}")
    assert rules.expanded_size("a{0002}") == 2


def test_the_size_limit_is_inclusive_and_the_message_is_bounded():
    at_limit = "a{1000}" * 20
    assert parse_filter(f"app:{at_limit}") == Filter("app", at_limit)
    tag = "x" * 250 + "(a{1000}){20}"
    text = f"app:{tag}"
    with pytest.raises(PurgeInputError) as info:
        parse_filter(text)
    assert str(info.value) == f"filter {text[:200]!r}: regular expression {tag[:200]!r} is too large"


@pytest.mark.parametrize("text", ["app:[abc", "app:a)b"])
def test_malformed_regexes_are_input_errors(text):
    with pytest.raises(PurgeInputError, match="invalid regular expression"):
        parse_filter(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", timedelta(0)),  # Go accepts a bare 0
        ("1d0", timedelta(days=1)),
        ("0000000001d", timedelta(days=1)),  # leading zeros do not count as digits
        ("9" * 5000 + "d", timedelta(days=150 * 365)),  # more digits than int() takes
        ("1d99999999h", timedelta(days=150 * 365)),
    ],
)
def test_ago_edge_values(text, expected):
    assert parse_ago(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "^--ago is empty$"),
        ("   ", "^--ago is empty$"),
        ("3h2d", "days come first"),
        ("1x", r"use \[days\]d then a Go duration"),
        (".s", r"use \[days\]d then a Go duration"),
        ("1d.h", r"use \[days\]d then a Go duration"),
    ],
)
def test_bad_ago_messages(text, message):
    with pytest.raises(PurgeInputError, match=message):
        parse_ago(text)


def test_go_durations_and_their_errors():
    assert rules.parse_go_duration("0") == timedelta(0)
    assert rules.parse_go_duration("1h30m.5s") == timedelta(hours=1, minutes=30, milliseconds=500)
    assert rules.parse_go_duration("99999999h") == timedelta(days=150 * 365)
    with pytest.raises(PurgeInputError) as info:
        rules.parse_go_duration("1x")
    assert str(info.value) == "invalid duration '1x'"
    with pytest.raises(PurgeInputError) as info:
        rules.parse_go_duration("")
    assert str(info.value) == "invalid duration ''"


SLOW = "(a|aa)+$"  # exponential backtracking on "aaaa…!"


def test_a_regex_that_runs_out_of_time_is_an_input_error(monkeypatch):
    monkeypatch.setattr(rules, "MATCH_TIMEOUT_SECONDS", 0.05)
    source = "(a|aa)+(?#" + "c" * 250 + ")$"
    text = "a" * 250 + "!"
    with pytest.raises(PurgeInputError) as info:
        rules._search(rules.regex.compile(source), text, source)
    assert str(info.value) == f"regular expression {source[:200]!r} timed out after 0.05 s on {text[:200]!r}"


def test_tag_and_repository_regexes_that_run_out_of_time_are_input_errors(monkeypatch):
    monkeypatch.setattr(rules, "MATCH_TIMEOUT_SECONDS", 0.05)
    with pytest.raises(PurgeInputError, match=r"regular expression '\(a\|aa\)\+\$' timed out"):
        select_tags([tag("a" * 60 + "!", 3)], SLOW, None, 0)
    with pytest.raises(PurgeInputError, match=r"regular expression '\(a\|aa\)\+' timed out"):
        tag_filters([Filter(SLOW.rstrip("$"), "v1")], ["a" * 60 + "!"])


def test_an_untagged_manifest_exactly_at_the_cutoff_stays():
    row = manifest("a")
    assert chosen([row], row.updated_at) == []
    assert chosen([row], row.updated_at + timedelta(microseconds=1)) == ["a"]


def test_keeping_spreads_over_several_passes_whatever_the_order():
    # each keep is only seen once the row after it in the list has been looked at
    referrers = [
        manifest("sig-of-sig", subject="sig"),
        manifest("sig", subject="image"),
        manifest("image", tags=1),
    ]
    assert chosen(referrers) == []
    children = [
        manifest("leaf"),
        manifest("mid", children=("leaf",)),
        manifest("top", tags=1, children=("mid",)),
    ]
    assert chosen(children) == []
    mixed = [
        manifest("sig", subject="child"),
        manifest("child"),
        manifest("index", tags=1, children=("child",)),
    ]
    assert chosen(mixed) == []


def test_without_tags_keeps_every_other_field_and_counts_each_deleted_tag():
    row = ManifestRow("a", INDEX, days_ago(4), 3, ("c1",), "subject", True)
    projected = without_tags([row], [tag("x", 1, "a"), tag("y", 1, "a")])
    assert projected == [ManifestRow("a", INDEX, days_ago(4), 1, ("c1",), "subject", True)]
    assert without_tags([row], [tag(n, 1, "a") for n in "wxyz"])[0].tags == 0
