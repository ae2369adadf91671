"""How the start banner names the `dockyard` command: bare only when PATH finds this one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dockyard.cli.serve import cli_command


def test_the_banner_names_a_command_that_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = Path(sys.executable).parent / "dockyard"
    assert own.is_file(), "the test environment installs the console script next to its python"

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing called dockyard on PATH
    assert cli_command() == str(own)

    other = tmp_path / "dockyard"  # another install earlier on PATH
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    assert cli_command() == str(own)

    link = tmp_path / "bin"
    link.mkdir()
    (link / "dockyard").symlink_to(own)  # what scripts/serve does
    monkeypatch.setenv("PATH", f"{link}{os.pathsep}{tmp_path}")
    assert cli_command() == "dockyard"
