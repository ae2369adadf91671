"""Running a TaskSpec's steps with a Builder: the ``when`` graph, parallelism, timeouts, retries, logs.

Steps start when their prerequisites succeeded (or failed with ``ignoreErrors``), each in its own
thread. A failed step fails the run: the steps still running are killed (Canceled), those not
started are Skipped. Every line written goes through the run's secret masking. ACR's log lines:
``Executing step ID: …``, ``Step ID: … marked as successful (elapsed time in seconds: …)``,
``Run ID: … was successful after 5s`` / ``Run ID: … failed after 3s. Error: …``.
"""

from __future__ import annotations

import dataclasses
import queue
import shlex
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dockyard.builds.buildcmd import parse_build_command
from dockyard.builds.interfaces import (
    Builder,
    BuildError,
    ContainerRequest,
    Deadline,
    LogSink,
    PreparedContext,
    RegistryAccess,
    RunCanceled,
    StepTimedOut,
)
from dockyard.builds.spec import (
    CANCELED,
    ERROR,
    FAILED,
    RUNNING,
    SUCCEEDED,
    TIMEOUT,
    PushedImage,
    RunOutcome,
    RunVariables,
    Step,
    StepOutcome,
    TaskSpec,
)
from dockyard.builds.variables import UnknownVariable, mask, render

SKIPPED = "Skipped"
#: How often waiting steps and the scheduler look at the cancel flag and the deadlines (seconds).
POLL_SECONDS = 0.2


class _MaskedLog:
    """The run's log, thread-safe, with secret values and the registry password replaced by ``***``."""

    def __init__(self, log: LogSink, variables: RunVariables, password: str) -> None:
        self._log = log
        self._variables = variables
        self._password = password
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        text = mask(text, self._variables)
        if self._password:
            text = text.replace(self._password, "***")
        with self._lock:
            self._log.write(text)


@dataclass
class _Run:
    """What the step threads share with the scheduler."""

    spec: TaskSpec
    context: PreparedContext
    variables: RunVariables
    canceled: Callable[[], bool]
    deadline: float
    log: _MaskedLog
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    images: list[PushedImage] = dataclasses.field(default_factory=list)
    bases: dict[str, str | None] = dataclasses.field(default_factory=dict)

    def interrupted(self) -> bool:
        return self.stop.is_set() or self.canceled()

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` unless the run is stopped, canceled or out of time first."""
        end = min(time.monotonic() + seconds, self.deadline)
        while not self.interrupted() and time.monotonic() < end:
            self.stop.wait(min(POLL_SECONDS, max(0.0, end - time.monotonic())))
        if self.interrupted():
            raise RunCanceled("canceled")
        if time.monotonic() >= self.deadline:
            raise StepTimedOut("the run's timeout passed")


def _env(pairs: tuple[str, ...], variables: RunVariables, aliases: bool) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, _, value = render(pair, variables, aliases=aliases).partition("=")
        if key:
            env[key] = value
    return env


def _split_image(image: str) -> tuple[str, str, str]:
    """``host/repo:tag`` → (host, repo, tag); tag "" for a digest reference."""
    name, _, digest = image.partition("@")
    host, _, rest = name.partition("/")
    repo, tag = rest, ""
    if ":" in rest.rpartition("/")[2]:
        repo, _, tag = rest.rpartition(":")
    return host.lower(), repo, tag if not digest else ""


class Executor:
    """Runs one TaskSpec with ``builder`` against ``registry``, writing its log to ``log``."""

    def __init__(self, builder: Builder, registry: RegistryAccess, log: LogSink) -> None:
        self.builder = builder
        self.registry = registry
        self.log = log

    def execute(
        self,
        spec: TaskSpec,
        context: PreparedContext,
        variables: RunVariables,
        canceled: Callable[[], bool],
        run_deadline: float,
    ) -> RunOutcome:
        """Run every step (``run_deadline``: ``time.monotonic()`` seconds); always closes the builder."""
        from dockyard.builds.taskfile import dependencies

        log = _MaskedLog(self.log, variables, self.registry.password)
        run = _Run(spec, context, variables, canceled, run_deadline, log)
        started = time.monotonic()
        try:
            outcomes, status, error = self._schedule(run, dependencies(spec))
        except Exception as exc:  # a bug or the machine failing: the run is Error, the builder closed
            outcomes, status, error = {}, ERROR, f"{type(exc).__name__}: {exc}"
        finally:
            run.stop.set()
            try:
                self.builder.close()
            except Exception as exc:
                log.write(f"cleaning up the builder failed: {exc}\n")
        elapsed = round(time.monotonic() - started)
        if status == SUCCEEDED:
            log.write(f"Run ID: {variables.run_id} was successful after {elapsed}s\n")
        elif status == CANCELED:
            log.write(f"Run ID: {variables.run_id} was canceled after {elapsed}s\n")
        else:
            log.write(f"Run ID: {variables.run_id} failed after {elapsed}s. Error: {error}\n")
        steps = tuple(outcomes.get(step.id) or StepOutcome(id=step.id, status=SKIPPED) for step in spec.steps)
        return RunOutcome(
            status=status,
            error=mask(error, variables) if error else None,
            steps=steps,
            images=tuple(run.images),
            base_images=tuple(run.bases.items()),
        )

    # -- the graph -----------------------------------------------------------------------------

    def _schedule(
        self, run: _Run, graph: Mapping[str, tuple[str, ...]]
    ) -> tuple[dict[str, StepOutcome], str, str | None]:
        done: queue.Queue[tuple[StepOutcome, str | None]] = queue.Queue()
        outcomes: dict[str, StepOutcome] = {}
        passed: set[str] = set()  # succeeded, or failed with ignoreErrors
        running: dict[str, threading.Thread] = {}
        status, error = SUCCEEDED, None
        pending = list(run.spec.steps)
        while pending or running:
            if status == SUCCEEDED:
                for step in [s for s in pending if all(d in passed for d in graph.get(s.id, ()))]:
                    pending.remove(step)
                    thread = threading.Thread(
                        target=self._guarded,
                        args=(run, step, done),
                        name=f"step {step.id}",
                        daemon=True,
                    )
                    running[step.id] = thread
                    thread.start()
            if not running:
                break  # nothing runs and nothing can start: the rest is Skipped
            try:
                outcome, run_status = done.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if status == SUCCEEDED and run.canceled():
                    status, error = CANCELED, "the run was canceled"
                    run.stop.set()
                continue
            running.pop(outcome.id).join()
            outcomes[outcome.id] = outcome
            if run_status is None:
                passed.add(outcome.id)
            elif status == SUCCEEDED:
                status, error = run_status, outcome.error
                run.stop.set()  # the other running steps are killed
        if status == SUCCEEDED and pending:
            status, error = FAILED, "steps could not start: " + ", ".join(s.id for s in pending)
        return outcomes, status, error

    def _guarded(self, run: _Run, step: Step, done: queue.Queue[tuple[StepOutcome, str | None]]) -> None:
        """``_step``, whose unexpected exceptions (a bug, the machine failing) end the run as Error."""
        try:
            result = self._step(run, step)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            run.log.write(f"Step ID: {step.id} crashed: {message}\n")
            result = StepOutcome(id=step.id, status=FAILED, finished_at=time.time(), error=message), ERROR
        done.put(result)

    # -- one step ------------------------------------------------------------------------------

    def _step(self, run: _Run, step: Step) -> tuple[StepOutcome, str | None]:
        """Run ``step`` with its retries; its outcome, and the run's status if it ends the run (or None)."""
        timeout = step.timeout or run.spec.step_timeout
        workdir = step.working_directory or run.spec.working_directory
        attempts, started, exit_code = 0, time.monotonic(), None
        wall_start = time.time()
        try:
            run.wait(step.start_delay)  # also: refuse to start once the run is stopped
            run.log.write(
                f"Executing step ID: {step.id}. Timeout(sec): {timeout}, Working directory: '{workdir}'\n"
            )
            started = time.monotonic()
            while True:
                attempts += 1
                try:
                    exit_code = self._attempt(run, step, timeout)
                    break
                except (BuildError, UnknownVariable) as exc:
                    if isinstance(exc, (RunCanceled, UnknownVariable)) or attempts > step.retries:
                        raise
                    if isinstance(exc, StepTimedOut) and time.monotonic() >= run.deadline:
                        raise
                    run.log.write(f"Step ID: {step.id} attempt {attempts} failed: {exc}; retrying\n")
                    run.wait(step.retry_delay)
        except (BuildError, UnknownVariable) as exc:
            return self._failed(run, step, exc, started, wall_start, attempts)
        elapsed = time.monotonic() - started
        run.log.write(f"Step ID: {step.id} marked as successful (elapsed time in seconds: {elapsed:.2f})\n")
        outcome = StepOutcome(
            id=step.id,
            status=RUNNING if step.detach and step.kind == "cmd" else SUCCEEDED,
            started_at=wall_start,
            finished_at=time.time(),
            exit_code=exit_code,
            attempts=attempts,
        )
        return outcome, None

    def _failed(
        self,
        run: _Run,
        step: Step,
        exc: Exception,
        started: float,
        wall_start: float,
        attempts: int,
    ) -> tuple[StepOutcome, str | None]:
        elapsed = time.monotonic() - started
        code = exc.args[1] if isinstance(exc, _ExitCode) else None
        message = str(exc.args[0]) if exc.args else type(exc).__name__
        if isinstance(exc, RunCanceled):
            step_status = CANCELED
            run_status: str | None = CANCELED if run.canceled() else FAILED
        elif isinstance(exc, StepTimedOut):
            step_status = TIMEOUT
            run_past = time.monotonic() >= run.deadline
            run_status = TIMEOUT if run_past else FAILED
            message = "the run's timeout passed" if run_past else f"step {step.id} timed out"
        else:
            step_status, run_status = FAILED, FAILED
            message = f"step {step.id} failed: {message}"
        if step.ignore_errors and step_status != CANCELED and run_status != TIMEOUT:
            run.log.write(f"Step ID: {step.id} failed, errors ignored: {message}\n")
            run_status = None
        else:
            run.log.write(
                f"Step ID: {step.id} marked as failed (elapsed time in seconds: {elapsed:.2f}): {message}\n"
            )
        outcome = StepOutcome(
            id=step.id,
            status=step_status,
            started_at=wall_start,
            finished_at=time.time(),
            exit_code=code,
            error=message,
            attempts=attempts,
        )
        return outcome, run_status

    def _attempt(self, run: _Run, step: Step, timeout: int) -> int | None:
        deadline = Deadline(at=min(time.monotonic() + timeout, run.deadline), canceled=run.interrupted)
        aliases = run.spec.aliases
        variables = run.variables
        env = _env(run.spec.env, variables, aliases) | _env(step.env, variables, aliases)
        if step.kind == "build":
            request = parse_build_command(render(step.command, variables, aliases=aliases), env)
            result = self.builder.build(run.context.path, request, run.log, deadline)
            for base in result.base_images:
                self._record_base(run, base)
            return None
        if step.kind == "push":
            for image in step.images:
                rendered = render(image, variables, aliases=aliases)
                digest = self.builder.push(rendered, run.log, deadline)
                host, repository, tag = _split_image(rendered)
                if host == self.registry.host.lower():
                    with run.lock:
                        run.images.append(PushedImage(repository=repository, tag=tag, digest=digest))
            return None
        return self._cmd(run, step, env, deadline)

    def _cmd(self, run: _Run, step: Step, env: dict[str, str], deadline: Deadline) -> int:
        aliases, variables = run.spec.aliases, run.variables
        text = render(step.command, variables, aliases=aliases)
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise BuildError(f"cannot parse the command: {exc}") from None
        if not words:
            raise BuildError("the cmd step names no image")
        workdir = render(step.working_directory or run.spec.working_directory, variables, aliases=aliases)
        override = not step.disable_working_directory_override
        request = ContainerRequest(
            image=words[0],
            args=tuple(words[1:]),
            env=env,
            entry_point=render(step.entry_point, variables, aliases=aliases) if step.entry_point else None,
            workdir=workdir if override or step.working_directory else None,
            mount=run.context.path if override else None,
            user=render(step.user, variables, aliases=aliases) if step.user else None,
            pull=step.pull,
            name=step.id,
        )
        if step.detach:
            self.builder.start(request, run.log)
            return 0
        code = self.builder.run(request, run.log, deadline)
        if code != 0:
            raise _ExitCode(f"exit code {code}", code)
        return code

    def _record_base(self, run: _Run, reference: str) -> None:
        resolve = getattr(self.builder, "base_digest", None)
        digest = resolve(reference) if callable(resolve) else None
        with run.lock:
            if reference not in run.bases or digest is not None:
                run.bases[reference] = digest


class _ExitCode(BuildError):
    """A cmd step's container exited non-zero: ``args`` = (message, code)."""
