"""Pure parts of `dockyard gc`: durations and the freed table."""

from __future__ import annotations

import pytest
import typer

from dockyard.cli.gc_commands import freed_rows, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0), ("90", 90), ("90s", 90), ("30m", 1800), ("1h", 3600), ("2D", 172800)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1.5h", "-1h", "1w", "h", "1 h 2"])
def test_bad_durations(text):
    with pytest.raises(typer.BadParameter):
        parse_duration(text)


def test_freed_rows_keep_the_run_order():
    run = {"freed": {"links": {"items": 2, "bytes": 0}, "blobs": {"items": 1, "bytes": 10}}}
    assert freed_rows(run) == [
        {"kind": "links", "items": 2, "bytes": 0},
        {"kind": "blobs", "items": 1, "bytes": 10},
    ]
    assert freed_rows({"freed": None}) == []
