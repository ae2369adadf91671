"""Executor with a scripted builder: the step graph, parallelism, timeouts, cancel, retries, masking."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dockyard.builds.executor import SKIPPED, Executor
from dockyard.builds.interfaces import (
    BuildError,
    BuildResult,
    ContainerRequest,
    Deadline,
    LogSink,
    PreparedContext,
    RegistryAccess,
)
from dockyard.builds.processes import run_process
from dockyard.builds.spec import (
    CANCELED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    TIMEOUT,
    BuildRequest,
    PushedImage,
    RunVariables,
    Step,
    TaskSpec,
)

REGISTRY = RegistryAccess(
    host="reg.test:5000", username="00000000-0000-0000-0000-000000000000", password="regpass-xyz"
)
SECRET = "hunter2-secret"


class Log:
    def __init__(self) -> None:
        self.text = ""
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        with self.lock:
            self.text += text


class ScriptedBuilder:
    """cmd images: ``sleep S`` (a real process, killed on deadline), ``exit N``, ``flaky N`` (fails
    N times), ``say WORDS`` (logs them and the env); build tags containing ``broken`` fail."""

    def __init__(self) -> None:
        self.builds: list[BuildRequest] = []
        self.pushed: list[str] = []
        self.runs: list[ContainerRequest] = []
        self.started: list[ContainerRequest] = []
        self.flaky: dict[str, int] = {}
        self.closed = 0
        self.lock = threading.Lock()

    def build(self, context: Path, request: BuildRequest, log: LogSink, deadline: Deadline) -> BuildResult:
        self.builds.append(request)
        if any("broken" in tag for tag in request.tags):
            raise BuildError("buildah bud failed (exit code 1)")
        log.write(f"built {request.tags} in {context}\n")
        return BuildResult(
            image_id="sha256:img", base_images=(f"{REGISTRY.host}/base:1", "docker.io/library/alpine:3")
        )

    def base_digest(self, reference: str) -> str | None:
        return "sha256:base1" if reference.startswith(REGISTRY.host) else None

    def push(self, image: str, log: LogSink, deadline: Deadline) -> str:
        self.pushed.append(image)
        log.write(f"pushing {image} with {REGISTRY.password}\n")
        return "sha256:" + str(len(self.pushed)) * 64

    def run(self, request: ContainerRequest, log: LogSink, deadline: Deadline) -> int:
        with self.lock:
            self.runs.append(request)
        kind = request.image
        if kind == "sleep":
            code, _ = run_process(
                ["sleep", request.args[0]], env={"PATH": "/usr/bin:/bin"}, log=log, deadline=deadline
            )
            return code
        if kind == "exit":
            return int(request.args[0])
        if kind == "flaky":
            with self.lock:
                failures = self.flaky[request.name or ""] = self.flaky.get(request.name or "", 0) + 1
            return 1 if failures <= int(request.args[0]) else 0
        if kind == "say":
            log.write(" ".join(request.args) + f" env={dict(request.env)}\n")
            return 0
        raise BuildError(f"unknown image {kind}")

    def start(self, request: ContainerRequest, log: LogSink) -> None:
        self.started.append(request)

    def close(self) -> None:
        self.closed += 1


def variables(**values: str) -> RunVariables:
    secrets = frozenset(k for k in values if k.startswith("secret"))
    return RunVariables(
        run_id="dy7",
        registry=REGISTRY.host,
        registry_name="reg",
        date="20260101-000000z",
        values=values,
        secret_values=secrets,
    )


def execute(
    tmp_path: Path,
    *steps: Step,
    builder: ScriptedBuilder | None = None,
    seconds: float = 60,
    canceled=lambda: False,
    version: str = "v1.0.0",
    env: tuple[str, ...] = (),
    **values: str,
):
    builder = builder or ScriptedBuilder()
    log = Log()
    outcome = Executor(builder, REGISTRY, log).execute(
        TaskSpec(steps=steps, version=version, env=env),
        PreparedContext(path=tmp_path),
        variables(**values),
        canceled,
        time.monotonic() + seconds,
    )
    assert builder.closed == 1
    return outcome, log.text, builder


def statuses(outcome) -> dict[str, str]:
    return {step.id: step.status for step in outcome.steps}


def test_build_push_cmd_in_order(tmp_path: Path) -> None:
    outcome, log, builder = execute(
        tmp_path,
        Step(id="build", kind="build", command="-t {{.Run.Registry}}/app:{{.Run.ID}} -t other.io/x:1 ."),
        Step(id="push", kind="push", images=("{{.Run.Registry}}/app:{{.Run.ID}}", "other.io/x:1")),
        Step(id="test", kind="cmd", command="say hello {{.Values.who}}", env=("A=1",)),
        env=("A=0", "B=2"),
        who="world",
    )
    assert outcome.status == SUCCEEDED, log
    assert outcome.error is None
    assert statuses(outcome) == {"build": SUCCEEDED, "push": SUCCEEDED, "test": SUCCEEDED}
    assert builder.builds[0].tags == ("reg.test:5000/app:dy7", "other.io/x:1")
    assert builder.pushed == ["reg.test:5000/app:dy7", "other.io/x:1"]
    assert outcome.images == (PushedImage(repository="app", tag="dy7", digest="sha256:" + "1" * 64),)
    assert outcome.base_images == (
        ("reg.test:5000/base:1", "sha256:base1"),
        ("docker.io/library/alpine:3", None),
    )
    run = builder.runs[0]
    assert (run.image, run.args, dict(run.env)) == ("say", ("hello", "world"), {"A": "1", "B": "2"})
    assert (run.mount, run.workdir, run.name) == (tmp_path, "/workspace", "test")
    assert "Executing step ID: build. Timeout(sec): 600, Working directory: '/workspace'" in log
    assert "Step ID: build marked as successful (elapsed time in seconds: " in log
    assert (
        log.index("Step ID: build marked")
        < log.index("Executing step ID: push")
        < log.index("Executing step ID: test")
    )
    assert log.rstrip().endswith("Run ID: dy7 was successful after 0s")
    assert REGISTRY.password not in log
    assert "pushing reg.test:5000/app:dy7 with ***" in log


def test_parallel_steps_then_a_join(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome, log, builder = execute(
        tmp_path,
        Step(id="a", kind="cmd", command="sleep 1", when=("-",)),
        Step(id="b", kind="cmd", command="sleep 1", when=("-",)),
        Step(id="c", kind="cmd", command="say joined", when=("a", "b")),
    )
    elapsed = time.monotonic() - started
    assert outcome.status == SUCCEEDED, log
    assert 1.0 <= elapsed < 1.8, elapsed  # a and b ran at once
    assert log.index("Step ID: a marked as successful") < log.index("Executing step ID: c")
    assert log.index("Step ID: b marked as successful") < log.index("Executing step ID: c")
    assert [r.image for r in builder.runs][-1] == "say"


def test_failure_kills_running_steps_and_skips_the_rest(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome, log, _builder = execute(
        tmp_path,
        Step(id="slow", kind="cmd", command="sleep 30", when=("-",)),
        Step(id="bad", kind="cmd", command="exit 3", when=("-",)),
        Step(id="after", kind="cmd", command="say never", when=("bad",)),
    )
    assert time.monotonic() - started < 5
    assert outcome.status == FAILED
    assert outcome.error == "step bad failed: exit code 3"
    assert statuses(outcome) == {"slow": CANCELED, "bad": FAILED, "after": SKIPPED}
    assert outcome.steps[1].exit_code == 3
    assert "never" not in log
    assert "Run ID: dy7 failed after 0s. Error: step bad failed: exit code 3" in log


def test_ignore_errors_lets_the_run_go_on(tmp_path: Path) -> None:
    outcome, log, _builder = execute(
        tmp_path,
        Step(id="bad", kind="cmd", command="exit 2", ignore_errors=True),
        Step(id="next", kind="cmd", command="say after"),
    )
    assert outcome.status == SUCCEEDED, log
    assert statuses(outcome) == {"bad": FAILED, "next": SUCCEEDED}
    assert "Step ID: bad failed, errors ignored: step bad failed: exit code 2" in log


def test_retries(tmp_path: Path) -> None:
    outcome, log, _builder = execute(tmp_path, Step(id="f", kind="cmd", command="flaky 2", retries=2))
    assert outcome.status == SUCCEEDED, log
    assert outcome.steps[0].attempts == 3
    assert log.count("retrying") == 2
    outcome, _log, _builder = execute(tmp_path, Step(id="f", kind="cmd", command="flaky 2", retries=1))
    assert outcome.status == FAILED
    assert outcome.steps[0].attempts == 2


def test_retry_delay_and_start_delay(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome, _log, _builder = execute(
        tmp_path,
        Step(id="f", kind="cmd", command="flaky 1", retries=1, retry_delay=1),
        Step(id="g", kind="cmd", command="say late", start_delay=1),
    )
    assert outcome.status == SUCCEEDED
    assert time.monotonic() - started >= 2.0


def test_step_timeout_kills_and_fails(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome, log, _builder = execute(tmp_path, Step(id="s", kind="cmd", command="sleep 30", timeout=1))
    assert 1.0 <= time.monotonic() - started < 4
    assert outcome.status == FAILED
    assert statuses(outcome) == {"s": TIMEOUT}
    assert outcome.error == "step s timed out"
    assert "Step ID: s marked as failed" in log


def test_run_deadline_is_a_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome, log, _builder = execute(
        tmp_path,
        Step(id="s", kind="cmd", command="sleep 30"),
        Step(id="t", kind="cmd", command="say x"),
        seconds=1,
    )
    assert time.monotonic() - started < 4
    assert outcome.status == TIMEOUT
    assert statuses(outcome) == {"s": TIMEOUT, "t": SKIPPED}
    assert "Error: the run's timeout passed" in log


def test_cancel_kills_the_running_step(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome, log, _builder = execute(
        tmp_path,
        Step(id="s", kind="cmd", command="sleep 30"),
        Step(id="t", kind="cmd", command="say x"),
        canceled=lambda: time.monotonic() > started + 0.5,
    )
    assert time.monotonic() - started < 3
    assert outcome.status == CANCELED
    assert statuses(outcome) == {"s": CANCELED, "t": SKIPPED}
    assert "Run ID: dy7 was canceled after" in log


def test_unknown_variable_fails_the_run(tmp_path: Path) -> None:
    outcome, log, builder = execute(
        tmp_path, Step(id="s", kind="cmd", command="say {{.Values.missing}}", retries=3)
    )
    assert outcome.status == FAILED
    assert outcome.error is not None
    assert "{{.Values.missing}}" in outcome.error
    assert outcome.steps[0].attempts == 1
    assert builder.runs == []
    assert "--set missing=" in log


def test_bad_build_arguments_fail_the_step(tmp_path: Path) -> None:
    outcome, _log, builder = execute(tmp_path, Step(id="b", kind="build", command="--squash ."))
    assert outcome.status == FAILED
    assert outcome.error == "step b failed: unsupported build flag(s): --squash"
    assert builder.builds == []
    outcome, _log, _builder = execute(tmp_path, Step(id="b", kind="build", command="-t broken ."))
    assert outcome.error == "step b failed: buildah bud failed (exit code 1)"


def test_secrets_never_reach_the_log(tmp_path: Path) -> None:
    outcome, log, builder = execute(
        tmp_path,
        Step(
            id="s", kind="cmd", command="say {{.Values.secretToken}}", env=("TOKEN={{.Values.secretToken}}",)
        ),
        Step(id="b", kind="build", command="--build-arg T={{.Values.secretToken}} -t x/broken ."),
        secretToken=SECRET,
    )
    assert outcome.status == FAILED
    assert builder.runs[0].env["TOKEN"] == SECRET  # the container gets it
    assert builder.builds[0].build_args == (("T", SECRET),)
    assert SECRET not in log
    assert "*** env={'TOKEN': '***'}" in log


def test_aliases_detach_and_working_directory(tmp_path: Path) -> None:
    outcome, log, builder = execute(
        tmp_path,
        Step(id="db", kind="cmd", command="say $ID", detach=True),
        Step(
            id="s",
            kind="cmd",
            command="say $ID $$ID",
            working_directory="/src",
            user="1000",
            entry_point="sh",
        ),
        Step(id="raw", kind="cmd", command="say x", disable_working_directory_override=True),
        version="v1.1.0",
    )
    assert outcome.status == SUCCEEDED, log
    assert statuses(outcome) == {"db": RUNNING, "s": SUCCEEDED, "raw": SUCCEEDED}
    assert builder.started[0].args == ("dy7",)
    run, raw = builder.runs
    assert (run.args, run.workdir, run.user, run.entry_point) == (("dy7", "$ID"), "/src", "1000", "sh")
    assert "Working directory: '/src'" in log
    assert (raw.mount, raw.workdir) == (None, None)


def test_builder_crash_is_an_error_and_still_closes(tmp_path: Path) -> None:
    class Crashing(ScriptedBuilder):
        def run(self, request: ContainerRequest, log: LogSink, deadline: Deadline) -> int:
            raise RuntimeError("boom")

    outcome, _log, builder = execute(tmp_path, Step(id="s", kind="cmd", command="say x"), builder=Crashing())
    assert outcome.status == "Error"
    assert outcome.error == "RuntimeError: boom"
    assert builder.closed == 1


def test_steps_that_wait_for_a_failed_ignored_step_still_run(tmp_path: Path) -> None:
    outcome, _log, _builder = execute(
        tmp_path,
        Step(id="a", kind="cmd", command="exit 1", ignore_errors=True, when=("-",)),
        Step(id="b", kind="cmd", command="say ok", when=("a",)),
    )
    assert statuses(outcome) == {"a": FAILED, "b": SUCCEEDED}


def test_ignore_errors_does_not_hide_a_failing_run_deadline(tmp_path: Path) -> None:
    outcome, _log, _builder = execute(
        tmp_path, Step(id="a", kind="cmd", command="sleep 30", ignore_errors=True), seconds=0.5
    )
    assert outcome.status == TIMEOUT


@pytest.mark.parametrize("command", ["", "'unterminated"])
def test_bad_cmd_text(tmp_path: Path, command: str) -> None:
    outcome, _log, _builder = execute(tmp_path, Step(id="s", kind="cmd", command=command))
    assert outcome.status == FAILED


def test_a_missing_tool_is_a_build_error_naming_it() -> None:
    with pytest.raises(BuildError, match="dockyard-no-such-tool is not installed on this worker"):
        run_process(
            ["dockyard-no-such-tool", "bud"],
            env={"PATH": "/usr/bin:/bin"},
            log=None,
            deadline=Deadline(at=time.monotonic() + 10),
        )
