"""The seams between the builds room's parts: the builder engine, the context, the log (no I/O here)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from dockyard.builds.spec import BuildRequest


class BuildError(Exception):
    """A step could not run (its tool failed, or its input is wrong): the message is for the run's log."""


class StepTimedOut(BuildError):
    """A step ran past its deadline; its processes were killed."""


class RunCanceled(BuildError):
    """The run was canceled while a step ran; its processes were killed."""


class LogSink(Protocol):
    """Where a run's log goes: the executor and the builder write lines (with their ``\\n``)."""

    def write(self, text: str) -> None: ...


@dataclass(frozen=True)
class Deadline:
    """When a step must end (``time.monotonic()`` seconds) and how to ask whether the run was canceled."""

    at: float
    canceled: Callable[[], bool] = lambda: False


@dataclass(frozen=True)
class RegistryAccess:
    """How builders reach this registry: its address and a credential (the null-GUID user + a refresh
    token of the run's identity), and whether it is plain HTTP or HTTPS signed by ``ca_file``."""

    host: str  # host:port as builders dial it; also {{.Run.Registry}}
    username: str
    password: str
    plain_http: bool = False
    ca_file: Path | None = None


@dataclass(frozen=True)
class BuildResult:
    """What ``Builder.build`` made: the local image id and the final stage's base (``FROM``) references."""

    image_id: str
    base_images: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerRequest:
    """A ``cmd`` step: run ``image`` with ``args`` (podman, runc), the context mounted at ``workdir``."""

    image: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    entry_point: str | None = None
    workdir: str | None = None
    mount: Path | None = None  # the run's context folder, mounted at ``workdir`` unless None
    user: str | None = None
    pull: bool = False
    name: str | None = None  # the step id (ACR: the container's DNS name)


class Builder(Protocol):
    """An image build engine (buildah here; BuildKit, kaniko or podman could implement it too).

    Every call streams its tool's output to ``log``, kills what it started when ``deadline`` passes
    (StepTimedOut) or the run is canceled (RunCanceled), and raises BuildError when the tool fails.
    One Builder serves one run: its local image store is private to the run and removed by ``close``.
    """

    def build(
        self, context: Path, request: BuildRequest, log: LogSink, deadline: Deadline
    ) -> BuildResult: ...

    def push(self, image: str, log: LogSink, deadline: Deadline) -> str:
        """Push the local image named ``image`` (``host/repo:tag``) to its registry; its manifest digest."""
        ...

    def run(self, request: ContainerRequest, log: LogSink, deadline: Deadline) -> int:
        """Run a container to its end; its exit code."""
        ...

    def start(self, request: ContainerRequest, log: LogSink) -> None:
        """Start a detached container (``detach: true``); it is stopped by ``close``."""
        ...

    def close(self) -> None: ...


ContextKind = Literal["none", "upload", "git", "tarball", "oci"]


@dataclass(frozen=True)
class ContextSource:
    """Where a run's build context comes from.

    * ``upload``: ``location`` is the digest of a tar (optionally gzip'd) stored as a build source;
    * ``git``: ``location`` is a git URL or (when allowed) a local repository path, ``ref`` a branch,
      tag or commit (``…#ref:folder``), ``folder`` a sub-folder; ``token`` an access token for https;
    * ``tarball``: an http(s) URL of a tar(.gz);
    * ``oci``: ``location`` is ``host/repo:tag`` or ``@digest`` of an artifact whose layers are tars;
    * ``none``: an empty folder (``dockyard run --cmd`` with ``/dev/null``).
    """

    kind: ContextKind
    location: str = ""
    ref: str | None = None
    folder: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class PreparedContext:
    """The context on disk, and the commit and branch it came from (git), for ``{{.Run.Commit}}``."""

    path: Path
    commit: str = ""
    branch: str = ""
