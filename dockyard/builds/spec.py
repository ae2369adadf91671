"""What a run does, as plain data: a task file's steps, its variables, and the outcome (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

#: ACR's run statuses, in the order a run passes through them (the last five end a run).
QUEUED, STARTED, RUNNING = "Queued", "Started", "Running"
SUCCEEDED, FAILED, CANCELED, ERROR, TIMEOUT = "Succeeded", "Failed", "Canceled", "Error", "Timeout"
RUN_STATUSES = (QUEUED, STARTED, RUNNING, SUCCEEDED, FAILED, CANCELED, ERROR, TIMEOUT)
FINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELED, ERROR, TIMEOUT})

#: Triggers a run can come from (ACR's names).
MANUAL, COMMIT, PULL_REQUEST, BASE_IMAGE, TIMER = (
    "Manual",
    "Commit",
    "PullRequest",
    "BaseImageUpdate",
    "Timer",
)

DEFAULT_STEP_TIMEOUT = 600
DEFAULT_RUN_TIMEOUT = 3600
MAX_RUN_TIMEOUT = 28800
DEFAULT_WORKING_DIRECTORY = "/workspace"
DEFAULT_PLATFORM = "linux/amd64"

StepKind = Literal["build", "push", "cmd"]


@dataclass(frozen=True)
class Step:
    """One step of a task file, its text still holding ``{{.Run.ID}}``-style variables.

    ``when``: None = after the previous step (the first step: at the start); ``("-",)`` = at the
    start, in parallel; otherwise the ids of the steps it waits for.
    """

    id: str
    kind: StepKind
    #: build: the ``docker build`` arguments (``-t img -f Dockerfile --build-arg k=v .``);
    #: cmd: ``<image> [args…]``; push: unused.
    command: str = ""
    #: push: the images to push.
    images: tuple[str, ...] = ()
    when: tuple[str, ...] | None = None
    timeout: int = DEFAULT_STEP_TIMEOUT
    retries: int = 0
    retry_delay: int = 0
    start_delay: int = 0
    ignore_errors: bool = False
    detach: bool = False
    #: ``KEY=value`` pairs, added to the task's ``env``.
    env: tuple[str, ...] = ()
    entry_point: str | None = None
    working_directory: str | None = None
    user: str | None = None
    #: cmd: pull the image even if the local store has it.
    pull: bool = False
    #: cmd: do not mount the context at the working directory.
    disable_working_directory_override: bool = False


@dataclass(frozen=True)
class TaskSpec:
    """A parsed task file (``acr-task.yaml``), or the synthesized steps of a quick build or run."""

    steps: tuple[Step, ...]
    version: str = "v1.0.0"
    step_timeout: int = DEFAULT_STEP_TIMEOUT
    working_directory: str = DEFAULT_WORKING_DIRECTORY
    env: tuple[str, ...] = ()

    @property
    def aliases(self) -> bool:
        """``$ID``-style aliases are on from version v1.1.0."""
        return self.version not in ("", "v1.0.0", "1.0.0", "v1.0")


@dataclass(frozen=True)
class RunVariables:
    """What ``{{.Run.*}}``, ``$ID``-style aliases and ``{{.Values.*}}`` expand to in one run."""

    run_id: str
    registry: str  # host[:port] builders reach the registry at (ACR: the login server FQDN)
    registry_name: str
    date: str  # UTC, ACR's format: 20190503-043342z
    os: str = "linux"
    architecture: str = "amd64"
    commit: str = ""
    branch: str = ""
    task_name: str = ""
    shared_volume: str = DEFAULT_WORKING_DIRECTORY
    values: Mapping[str, str] = field(default_factory=dict)
    #: Values whose text is masked as ``***`` in logs (``--set-secret``).
    secret_values: frozenset[str] = frozenset()


@dataclass(frozen=True)
class BuildRequest:
    """A ``build`` step's arguments, parsed (``buildcmd.parse_build_command``), variables expanded."""

    tags: tuple[str, ...]
    context: str = "."  # relative to the run's context folder (or a URL: not supported, refused)
    dockerfile: str | None = None  # relative to the context; None = Dockerfile / Containerfile
    build_args: tuple[tuple[str, str], ...] = ()
    target: str | None = None
    platform: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    no_cache: bool = False
    pull: bool = False


@dataclass(frozen=True)
class PushedImage:
    """An image a run pushed: ``repository`` within this registry (no host), the tag, its digest."""

    repository: str
    tag: str
    digest: str


@dataclass(frozen=True)
class StepOutcome:
    id: str
    status: str  # Succeeded | Failed | Canceled | Timeout | Skipped | Running (detached)
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    attempts: int = 0


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: one of FINAL_STATUSES, with what it pushed and the bases it was built on."""

    status: str
    error: str | None = None
    steps: tuple[StepOutcome, ...] = ()
    images: tuple[PushedImage, ...] = ()
    #: Final-stage ``FROM`` references of every build step (``host/repo:tag``, as written after
    #: variable expansion and ARG substitution), with the digest each resolved to when known.
    base_images: tuple[tuple[str, str | None], ...] = ()
