"""scripts/test: its help is printed before anything is installed or run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "test"


def test_help_prints_usage_and_installs_nothing(tmp_path: Path) -> None:
    # A PATH with dirname and cat alone (no apt-get, npm or python): any install or run attempt
    # would fail the call.
    for tool in ("dirname", "cat"):
        found = shutil.which(tool)
        assert found is not None
        (tmp_path / tool).symlink_to(found)
    done = subprocess.run(
        ["/bin/bash", str(SCRIPT), "--help"],
        check=False,
        capture_output=True,
        text=True,
        env={"PATH": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: scripts/test [PYTEST ARGUMENTS...]")
    assert "installing" not in done.stdout + done.stderr
