"""Red-team attacks on cmd steps with the real tools (podman + runc): step texts that try to become
podman flags. See tests/api/test_redteam_builds.py for the rest of the builds room's attacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.builds.spec import FAILED, SUCCEEDED, Step, TaskSpec
from tests.e2e.support import DockyardServer
from tests.e2e.test_builds_executor import base_image, run_spec  # noqa: F401 - the module fixture

pytestmark = pytest.mark.e2e


def test_hole_cmd_step_flags_reach_podman(
    base_image: str,  # noqa: F811 - the fixture imported above
    dockyard_server: DockyardServer,
    tmp_path: Path,
) -> None:
    """HOLE (closed; low: defence in depth). Attack: a task file's ``cmd: "--volume=/:/host <image>
    cat /host/<file>"``: the first word went after ``podman run``'s flags, where podman reads it as
    a flag; only the pre-pull of the same word (``podman pull --volume=…``: unknown flag) stopped
    it. Expected: refused explicitly before any tool runs, the host file never in the log; a
    ``workingDirectory`` carrying mount options fails the same way; a plain step still works."""
    marker = tmp_path / "host-only.txt"
    marker.write_text("host-secret-marker\n")
    image = "{{.Run.Registry}}/" + base_image.split("/", 1)[1]
    steps = (
        Step("escape", "cmd", f"--volume=/:/host {image} cat /host{marker}", ignore_errors=True),
        Step("options", "cmd", f"{image} true", working_directory="/w:O", ignore_errors=True),
        Step("plain", "cmd", f"{image} sh -c 'echo plain-ok'", when=("escape", "options")),
    )
    outcome, log = run_spec(dockyard_server, tmp_path, TaskSpec(steps=steps), "dyred1")
    assert "host-secret-marker" not in log
    statuses = {step.id: step.status for step in outcome.steps}
    assert statuses == {"escape": FAILED, "options": FAILED, "plain": SUCCEEDED}, log
    assert "not an image reference" in log
    assert "plain-ok" in log
