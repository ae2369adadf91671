"""Red-team attacks on the builds room's tools (split from test_redteam_builds.py): flags smuggled
into podman and buildah, hostile context archives and git locations, task-file tricks.

``HOLE`` tests reproduce attacks that worked when they were written (each failed until its hole
was closed); ``REFUSED`` tests are attacks that were correctly refused. Every test's docstring
names the attack.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import time
from pathlib import Path

import pytest

from dockyard.access.services.identities import NULL_GUID
from dockyard.builds.buildah import BuildahBuilder
from dockyard.builds.buildcmd import parse_build_command
from dockyard.builds.contexts import clone_git, extract_tar, git_url
from dockyard.builds.interfaces import (
    BuildError,
    ContainerRequest,
    ContextSource,
    Deadline,
    RegistryAccess,
)
from dockyard.builds.taskfile import TaskFileError, load_task_file


def recording_builder(tmp_path: Path, calls: list[list[str]]) -> BuildahBuilder:
    """A BuildahBuilder whose tools are recorded instead of run."""
    registry = RegistryAccess(
        host="127.0.0.1:5000", username=NULL_GUID, password="run-token", plain_http=True
    )
    builder = BuildahBuilder(tmp_path / "run", registry, "linux/amd64")

    def fake_run(tool, args, log, deadline, *, cwd=None, capture=False):
        calls.append([tool, *args])
        return 0, ""

    builder._run = fake_run  # type: ignore[method-assign]
    return builder


class ListLog:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text


def far() -> Deadline:
    return Deadline(at=time.monotonic() + 60)


@pytest.mark.parametrize(
    "cmd_image",
    ["--privileged", "--volume=/:/host", "--network=host", "-v/:/host", "--pid=host", " --user=0"],
)
def test_hole_cmd_text_becomes_podman_flags(tmp_path: Path, cmd_image: str) -> None:
    """HOLE (closed; low: defence in depth). Attack: ``cmd: "--privileged busybox sh -c …"`` or
    ``--volume=/:/host busybox``: the executor takes the first word of the cmd text as the image
    and BuildahBuilder put it after ``podman run``'s own flags, where podman reads it as a flag (a
    privileged container, the host's root mounted, the host network). Only the pre-pull saved the
    host: ``podman image exists``/``podman pull`` of that same word fail for want of an image
    argument, so ``podman run`` was never reached — by accident. Expected: an explicit BuildError,
    no tool started."""
    calls: list[list[str]] = []
    builder = recording_builder(tmp_path, calls)
    request = ContainerRequest(image=cmd_image, args=("busybox", "cat", "/host/etc/shadow"), pull=True)
    with pytest.raises(BuildError):
        builder.run(request, ListLog(), far())
    with pytest.raises(BuildError):
        builder.start(request, ListLog())
    assert calls == []


def test_hole_cmd_working_directory_adds_mount_options(tmp_path: Path) -> None:
    """HOLE (closed; low). Attack: ``workingDirectory: "/w:U"`` (chown the host's context folder),
    ``/w:O`` (or ``/w:rw,z``,
    a relative path): the step's working directory is spliced into ``-v <context>:<workdir>``, so
    ``:``/``,`` add mount options podman honours. Expected: BuildError before podman runs."""
    calls: list[list[str]] = []
    builder = recording_builder(tmp_path, calls)
    for workdir in ("/w:O", "/w:rw,z", "relative", "/w\nx"):
        request = ContainerRequest(image="busybox", workdir=workdir, mount=tmp_path, pull=True)
        with pytest.raises(BuildError):
            builder.run(request, ListLog(), far())
    assert not any(c[:2] == ["podman", "run"] for c in calls)
    builder.run(ContainerRequest(image="busybox", workdir="/workspace", mount=tmp_path), ListLog(), far())
    run = next(c for c in calls if c[:2] == ["podman", "run"])
    assert run[run.index("-v") + 1] == f"{tmp_path}:/workspace"
    assert run[-1] == "busybox"  # the image is the last word, after the fixed flags


def test_hole_push_image_becomes_buildah_flag(tmp_path: Path) -> None:
    """HOLE (closed; low: defence in depth). Attack: a task file ``push: ["--authfile=/x"]`` (or
    ``{{.Values.img}}`` rendering to a flag): ``buildah push … <image> docker://<image>`` read it
    as an option (another auth file, ``--creds``, ``--digestfile=/etc/…``); the push then failed
    for want of a local image, so no harm was seen. Expected: BuildError, buildah not started."""
    calls: list[list[str]] = []
    builder = recording_builder(tmp_path, calls)
    for image in ("--authfile=/root/.docker/config.json", "-q", "app:1 --creds=a:b", ""):
        with pytest.raises(BuildError):
            builder.push(image, ListLog(), far())
    assert calls == []


def _tar_with_pax_headers(size: int, members: int = 1) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for index in range(members):
            info = tarfile.TarInfo(f"a{index}.txt")
            info.size = 1
            info.pax_headers = {"comment": "x" * size}
            archive.addfile(info, io.BytesIO(b"a"))
    return gzip.compress(out.getvalue(), mtime=0)


def test_hole_gzip_bomb_of_tar_headers(tmp_path: Path, monkeypatch) -> None:
    """HOLE (closed; high: an uploaded or tarball context). Attack: a 70 KiB .tar.gz whose pax
    header holds 64 MiB (gigabytes at scale) of text: the context bounds counted compressed bytes
    and member sizes, never what the headers decompress to — and tarfile reads a pax header whole
    into memory (a worker OOM). Also many headers each under any per-header bound. Expected:
    BuildError past 1 MiB per header, and once the uncompressed tar passes its overall bound."""
    from dockyard.builds import contexts

    bomb = _tar_with_pax_headers(64 * 1024 * 1024)
    assert len(bomb) < 200 * 1024
    with pytest.raises(BuildError, match="extended header"):
        extract_tar([bomb], tmp_path / "one", max_bytes=1024**3, deadline=far())
    monkeypatch.setattr(contexts, "MAX_FILES", 10)
    many = _tar_with_pax_headers(900 * 1024, members=25)  # 22 MiB of headers > 64 KiB + slack
    with pytest.raises(BuildError, match="more than"):
        extract_tar([many], tmp_path / "many", max_bytes=64 * 1024, deadline=far())
    small = _tar_with_pax_headers(1000)
    extract_tar([small], tmp_path / "ok", max_bytes=1024 * 1024, deadline=far())
    assert (tmp_path / "ok" / "a0.txt").read_bytes() == b"a"


def test_refused_context_escapes(tmp_path: Path, settings) -> None:
    """REFUSED. Attack: archives with absolute names, ``..``, symlinks and hardlinks leaving the
    context, a link then a file written through it, devices; git locations for ``ext::``,
    ``file://`` outside the roots, scp-like ssh, loopback, metadata, option-looking URLs and refs.
    Expected: BuildError each time, nothing written outside."""

    def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as archive:
            for info, data in members:
                info.size = len(data) if info.isreg() else 0
                archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
        return out.getvalue()

    def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        return info

    device = tarfile.TarInfo("dev")
    device.type = tarfile.CHRTYPE
    attacks = [
        tar_of((tarfile.TarInfo("/etc/evil"), b"x")),
        tar_of((tarfile.TarInfo("../evil"), b"x")),
        tar_of((tarfile.TarInfo("a/../../evil"), b"x")),
        tar_of((link("up", "../.."), b"")),
        tar_of((link("abs", "/etc"), b"")),
        tar_of((link("hard", "../outside", tarfile.LNKTYPE), b"")),
        tar_of((link("d", "sub/../.."), b""), (tarfile.TarInfo("d/evil"), b"x")),
        tar_of((device, b"")),
    ]
    for index, archive in enumerate(attacks):
        with pytest.raises(BuildError):
            extract_tar([archive], tmp_path / f"ctx{index}" / "in", max_bytes=1 << 20, deadline=far())
    assert not any(p.name == "evil" for p in tmp_path.rglob("*"))
    for location in (
        "ext::sh -c touch% /tmp/pwned",
        "file:///etc",
        "/etc",
        "git@github.com:a/b.git",
        "ssh://git@host/x",
        "git://host/x",
        "http://127.0.0.1:5000/x.git",
        "http://169.254.169.254/latest",
        "https://metadata.google.internal/x",
        "http://[::1]/x.git",
        "--upload-pack=touch /tmp/pwned",
        "https://user:pw@github.com/a/b.git",
        "https://github.com/a/b.git\n--upload-pack=x",
    ):
        with pytest.raises(BuildError):
            git_url(location, settings)
    root = tmp_path / "roots"
    (root / "repo").mkdir(parents=True)
    local = settings.model_copy(update={"builds_local_git_roots": [root]})
    source = ContextSource(kind="git", location=str(root / "repo"), ref="--upload-pack=touch x")
    with pytest.raises(BuildError, match="refused git ref"):
        clone_git(source, tmp_path / "clone", log=ListLog(), settings=local, deadline=far())
    with pytest.raises(BuildError, match="not under builds_local_git_roots"):
        git_url(f"{root}/repo/../../etc", local)


def test_refused_build_step_and_task_file_tricks() -> None:
    """REFUSED. Attack: build steps with ``-f /etc/shadow``, a context of ``/`` or ``..``, remote
    contexts, podman-only flags (``--volume``, ``--security-opt``); task files with YAML alias
    bombs, 300 KiB of text, deep nesting, unknown step keys (``privileged``)."""
    for text in (
        "-f /etc/shadow .",
        "-f ../../etc/shadow .",
        "/",
        "..",
        "https://evil.example/ctx.git",
        "--volume /:/host .",
        "--security-opt seccomp=unconfined .",
        "-t a . extra",
    ):
        with pytest.raises(BuildError):
            parse_build_command(text)
    assert parse_build_command("--build-arg HOME .", {}).build_args == ()  # no host environment
    bomb = "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\nsteps:\n  - cmd: busybox\n"
    deep = "steps:\n  - cmd: busybox\nx: " + "[" * 200 + "]" * 200 + "\n"
    for text in (
        bomb,
        "steps:\n  - cmd: busybox\n" + "#" * 300_000,
        deep,
        "steps:\n  - cmd: busybox\n    privileged: true\n",
    ):
        with pytest.raises(TaskFileError):
            load_task_file(text)


def test_hole_git_dns_rebinding(tmp_path: Path, settings, monkeypatch) -> None:
    """HOLE (closed; high where loopback or metadata hold secrets). Attack: a git context on a
    host whose DNS answers a public address to the server's check, then 127.0.0.1 (or
    169.254.169.254) to git's own lookup a moment later: ``check_host`` resolved once, git
    resolved again. Expected: git is told (``http.curloptResolve``) to use the checked address."""
    from dockyard.builds import contexts

    answers = iter([["93.184.216.34"]] * 2 + [["127.0.0.1"]] * 10)

    def rebinding(host, *args, **kwargs):
        return [(2, 1, 6, "", (address, 0)) for address in next(answers)]

    calls: list[list[str]] = []

    def fake_process(argv, **kwargs):
        calls.append(list(argv))
        return 1, ""

    monkeypatch.setattr(contexts.socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(contexts, "run_process", fake_process)
    source = ContextSource(kind="git", location="https://rebind.example/app.git", ref="main")
    with pytest.raises(BuildError):
        clone_git(source, tmp_path / "clone", log=ListLog(), settings=settings, deadline=far())
    flags = calls[0]
    assert "http.curloptResolve=rebind.example:443:93.184.216.34" in flags
    assert not any("127.0.0.1" in flag for flag in flags)
