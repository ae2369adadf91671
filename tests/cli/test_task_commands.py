"""`dockyard task …`, `build`, `run` and `patch` against a real `dockyard serve` (builds: tests/e2e)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import Cli

pytestmark = pytest.mark.e2e

CMD = "127.0.0.1:1/never:1 echo never-run"


def test_task_round_trip_without_showing_secrets(admin: Cli) -> None:
    created = admin.run(
        "task", "create", "-n", "cli-task-one", "-c", "/dev/null", "--cmd", CMD,
        "--set", "color=blue", "--set-secret", "password=hunter2-secret",
        "--commit-trigger-enabled", "false", "--base-image-trigger-enabled", "false",
        "--schedule", "0 3 * * *", "--schedule", "weekly:30 4 * * 1", "-o", "json",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    task = json.loads(created.stdout)
    assert "Shown only now" in created.stderr
    secret = task["triggerSecret"]
    assert len(secret) >= 20
    assert task["triggerUrls"] == {
        "github": f"{admin.registry}/api/v1/tasks/cli-task-one/triggers/github",
        "git": f"{admin.registry}/api/v1/tasks/cli-task-one/triggers/git",
    }
    shown = admin.json("task", "show", "-n", "cli-task-one")
    assert secret not in json.dumps(shown)
    assert "hunter2-secret" not in json.dumps(shown)
    assert shown["values"] == {"color": "blue"}
    assert shown["commitTriggerEnabled"] is False
    assert sorted((t["name"], t["schedule"]) for t in shown["timers"]) == [
        ("t1", "0 3 * * *"),
        ("weekly", "30 4 * * 1"),
    ]
    assert "cli-task-one" in [t["name"] for t in admin.json("task", "list")]
    table = admin.ok("task", "list", "-o", "table").stdout
    assert "cli-task-one" in table
    assert "{" not in table

    updated = admin.json("task", "update", "-n", "cli-task-one", "--status", "disabled", "--set", "color=red")
    assert (updated["status"], updated["values"]) == ("Disabled", {"color": "red"})
    admin.fails("task", "update", "-n", "cli-task-one", code=2)

    renewed = admin.json("task", "trigger-secret", "-n", "cli-task-one")["triggerSecret"]
    assert renewed != secret

    admin.ok("task", "delete", "-n", "cli-task-one", "--yes")
    failed = admin.fails("task", "show", "-n", "cli-task-one")
    assert failed.stderr.startswith("ERROR: ")


def test_timers(admin: Cli) -> None:
    admin.ok("task", "create", "-n", "cli-timers", "-c", "/dev/null", "--cmd", CMD)
    assert admin.json("task", "timer", "list", "-n", "cli-timers") == []
    added = admin.json(
        "task", "timer", "add", "-n", "cli-timers", "--timer-name", "hourly", "--schedule", "0 * * * *"
    )
    assert (added["name"], added["schedule"], added["enabled"]) == ("hourly", "0 * * * *", True)
    admin.json("task", "timer", "update", "-n", "cli-timers", "--timer-name", "hourly", "--enabled", "false")
    listed = admin.json("task", "timer", "list", "-n", "cli-timers")
    assert [(t["name"], t["enabled"]) for t in listed] == [("hourly", False)]
    admin.fails("task", "timer", "add", "-n", "cli-timers", "--timer-name", "bad", "--schedule", "61 * * * *")
    admin.fails("task", "timer", "update", "-n", "cli-timers", "--timer-name", "hourly", code=2)
    admin.ok("task", "timer", "remove", "-n", "cli-timers", "--timer-name", "hourly")
    assert admin.json("task", "timer", "list", "-n", "cli-timers") == []
    admin.ok("task", "delete", "-n", "cli-timers", "--yes")


def test_a_queued_build_uploads_the_folder_and_can_be_canceled(admin: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "ctx"
    folder.mkdir()
    (folder / "Dockerfile").write_text("FROM 127.0.0.1:1/never:1\n")
    started = admin.ok("build", "-t", "cli-build:{{.Run.ID}}", "--no-wait", str(folder), "-o", "json")
    assert "Uploaded context sha256:" in started.stderr
    run = json.loads(started.stdout)
    assert (run["type"], run["task"]) == ("build", None)
    assert run["status"] in ("Queued", "Started", "Running", "Failed", "Error")
    shown = admin.json("task", "show-run", "--run-id", run["runId"])
    assert shown["runId"] == run["runId"]
    listed = admin.json("task", "list-runs", "--top", "50")
    assert run["runId"] in [r["runId"] for r in listed]
    if shown["status"] in ("Queued", "Started", "Running"):
        canceled = admin.run("task", "cancel-run", "--run-id", run["runId"], "-o", "json")
        # the run may end (it cannot pull its base) between show-run and cancel-run: 409 then
        assert canceled.exit_code in (0, 1), canceled.output
    logs = admin.run("task", "logs", "--run-id", run["runId"])  # follows until the run has ended
    assert logs.exit_code == 0, logs.output
    assert admin.json("task", "show-run", "--run-id", run["runId"])["status"] in (
        "Canceled",
        "Failed",
        "Error",
    )


def test_bad_command_lines_exit_2(admin: Cli, tmp_path: Path) -> None:
    admin.fails("build", str(tmp_path), code=2)  # no -t and no --no-push
    admin.fails("build", "-t", "x:1", str(tmp_path / "missing"), code=2)
    admin.fails("build", "-t", "x:1", "--build-arg", "NOT_IN_THE_ENVIRONMENT_XYZ", str(tmp_path), code=2)
    admin.fails("run", str(tmp_path), code=2)  # neither -f nor --cmd
    admin.fails("run", "-f", "missing.yaml", str(tmp_path), code=2)
    admin.fails("patch", "--image", "no-tag", code=2)
    admin.fails("task", "logs", code=2)
    admin.fails("task", "create", "-n", "cli-bad-task", "-c", "/dev/null", code=2)


def test_not_logged_in_is_one_line(cli: Cli) -> None:
    result = cli.fails("task", "list")
    assert result.stderr.startswith("ERROR: not logged in")
    assert "Traceback" not in result.output
