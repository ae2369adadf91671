"""The Builder of this machine: buildah (``bud --isolation chroot``) and podman with runc, daemonless.

Each builder owns a private container world under its ``workdir``: storage (vfs) in
``workdir/store``, a runroot under /tmp (podman refuses longer paths), containers.conf,
registries.conf, policy.json and an auth file holding the run's credential for this registry —
given to every tool through environment variables and flags, never touching the machine's
configuration or store. ``close`` kills what is left and removes it all.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import stat
import tempfile
import time
from pathlib import Path

import httpx

from dockyard.builds.interfaces import (
    BuildError,
    BuildResult,
    ContainerRequest,
    Deadline,
    LogSink,
    RegistryAccess,
)
from dockyard.builds.processes import ProcessGroups, run_process
from dockyard.builds.spec import BuildRequest

_POLICY = '{"default": [{"type": "insecureAcceptAnything"}]}\n'
_CONTAINERS_CONF = (
    "[containers]\n"
    'netns = "none"\n'
    'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
    "[engine]\n"
    'runtime = "runc"\n'
    'cgroup_manager = "cgroupfs"\n'
    'events_logger = "file"\n'
)
#: Time allowed to the clean-up commands of ``close`` and of a killed container.
CLEANUP_SECONDS = 60.0


def image_word(image: str, what: str) -> str:
    """``image`` as one argv word for buildah or podman: BuildError when it is empty, starts with
    ``-`` (it would be read as a flag: ``--privileged``, ``--volume=/:/host``) or holds blanks."""
    if not image or image.startswith("-") or any(c.isspace() or ord(c) < 32 or c == "\x7f" for c in image):
        raise BuildError(f"{what} {image[:100]!r}: not an image reference")
    return image


def _container_name(step: str | None) -> str:
    base = "".join(c if c.isalnum() or c in "_.-" else "-" for c in (step or "step")).lstrip("_.-")
    return f"{(base or 'step')[:40]}-{secrets.token_hex(4)}"


def remove_tree(path: Path) -> None:
    """``rmtree`` that also removes read-only folders (vfs layers keep an image's modes)."""

    def make_writable(function: object, name: str, _exc: object) -> None:
        parent = os.path.dirname(name)
        with contextlib.suppress(OSError):
            os.chmod(parent, stat.S_IRWXU)
            os.chmod(name, stat.S_IRWXU)
        if os.path.isdir(name) and not os.path.islink(name):
            shutil.rmtree(name, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    if path.exists():
        shutil.rmtree(path, onerror=make_writable)


class BuildahBuilder:
    """A Builder running buildah and podman in a private store; one per run, closed at its end."""

    def __init__(
        self,
        workdir: Path,
        registry: RegistryAccess,
        platform: str | None,
        *,
        network: str = "none",
    ) -> None:
        self.workdir = workdir
        self.registry = registry
        self.platform = platform
        self.network = network if network in ("none", "host") else "none"
        self._groups = ProcessGroups()
        self._containers: list[str] = []
        config = workdir / "config"
        (config / "containers").mkdir(parents=True, exist_ok=True)
        (workdir / "tmp").mkdir(exist_ok=True)
        (workdir / "home").mkdir(exist_ok=True)
        self.store = workdir / "store"
        self.store.mkdir(exist_ok=True)
        self.runroot = Path(tempfile.mkdtemp(prefix="dy-run-", dir="/tmp"))
        self.policy = config / "policy.json"
        self.policy.write_text(_POLICY)
        (config / "containers" / "policy.json").write_text(_POLICY)
        registries = 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n'
        if registry.plain_http:
            registries += f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n'
        (config / "registries.conf").write_text(registries)
        (config / "containers.conf").write_text(_CONTAINERS_CONF)
        (config / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{self.store}"\nrunroot = "{self.runroot}"\n'
        )
        self.auth_file = config / "auth.json"
        token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
        fd = os.open(self.auth_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"auths": {registry.host: {"auth": token}}}, out)
        self.cert_dir: Path | None = None
        if registry.ca_file is not None:
            self.cert_dir = config / "certs"
            self.cert_dir.mkdir(exist_ok=True)
            shutil.copyfile(registry.ca_file, self.cert_dir / "ca.crt")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
            "HOME": str(workdir / "home"),
            "LANG": "C.UTF-8",
            "TMPDIR": str(workdir / "tmp"),
            "XDG_CONFIG_HOME": str(config),
            "XDG_DATA_HOME": str(workdir / "home"),
            "XDG_RUNTIME_DIR": str(self.runroot),
            "CONTAINERS_CONF": str(config / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(config / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(config / "registries.conf"),
            "REGISTRY_AUTH_FILE": str(self.auth_file),
            "BUILDAH_ISOLATION": "chroot",
        }
        self._store_flags = [
            "--root",
            str(self.store),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "vfs",
        ]

    # -- helpers -------------------------------------------------------------------------------

    def _mask(self, text: str) -> str:
        return text.replace(self.registry.password, "***") if self.registry.password else text

    def _tls_flags(self) -> list[str]:
        return ["--cert-dir", str(self.cert_dir)] if self.cert_dir is not None else []

    def _run(
        self,
        tool: str,
        args: list[str],
        log: LogSink | None,
        deadline: Deadline,
        *,
        cwd: Path | None = None,
        capture: bool = False,
    ) -> tuple[int, str]:
        return run_process(
            [tool, *self._store_flags, *args],
            env=self.env,
            log=log,
            deadline=deadline,
            cwd=cwd,
            mask=self._mask,
            groups=self._groups,
            capture=capture,
            what=f"{tool} {args[0]}",
        )

    def _cleanup_deadline(self) -> Deadline:
        return Deadline(at=time.monotonic() + CLEANUP_SECONDS)

    # -- the Builder protocol ------------------------------------------------------------------

    def build(self, context: Path, request: BuildRequest, log: LogSink, deadline: Deadline) -> BuildResult:
        """``buildah bud`` of ``request`` in ``context`` (the run's context folder)."""
        from dockyard.builds.dockerfile import final_stage_bases

        build_dir = (context / request.context).resolve()
        if not build_dir.is_relative_to(context.resolve()) or not build_dir.is_dir():
            raise BuildError(f"build context {request.context!r}: no such folder in the run's context")
        dockerfile = self._dockerfile(context, build_dir, request.dockerfile)
        iidfile = Path(tempfile.mkstemp(prefix="iid-", dir=self.workdir / "tmp")[1])
        args = ["bud", "--isolation", "chroot", "--layers=false", "--iidfile", str(iidfile)]
        args += [
            "--signature-policy",
            str(self.policy),
            "--authfile",
            str(self.auth_file),
            "-f",
            str(dockerfile),
        ]
        args += self._tls_flags()
        for tag in request.tags:
            args += ["-t", tag]
        for key, value in request.build_args:
            args += ["--build-arg", f"{key}={value}"]
        for key, value in request.labels:
            args += ["--label", f"{key}={value}"]
        platform = request.platform or self.platform
        args += platform_flags(platform, os.uname().machine)
        if request.target:
            args += ["--target", request.target]
        if request.no_cache:
            args.append("--no-cache")
        args.append("--pull=always" if request.pull else "--pull=false")
        args.append(str(build_dir))
        code, _ = self._run("buildah", args, log, deadline, cwd=context)
        if code != 0:
            raise BuildError(f"buildah bud failed (exit code {code})")
        image_id = iidfile.read_text().strip()
        iidfile.unlink(missing_ok=True)
        bases = final_stage_bases(
            dockerfile.read_text(errors="replace"), dict(request.build_args), request.target
        )
        return BuildResult(image_id=image_id, base_images=tuple(bases))

    @staticmethod
    def _dockerfile(context: Path, build_dir: Path, name: str | None) -> Path:
        if name is not None:
            path = (context / name).resolve()
            if not path.is_relative_to(context.resolve()) or not path.is_file():
                raise BuildError(f"-f {name!r}: no such file in the run's context")
            return path
        for default in ("Dockerfile", "Containerfile"):
            if (build_dir / default).is_file():
                return build_dir / default
        raise BuildError("no Dockerfile (or Containerfile) in the build context")

    def push(self, image: str, log: LogSink, deadline: Deadline) -> str:
        """``buildah push`` of the local image ``image`` to ``docker://image``; the manifest digest."""
        image_word(image, "push")
        digestfile = Path(tempfile.mkstemp(prefix="digest-", dir=self.workdir / "tmp")[1])
        args = ["push", "--signature-policy", str(self.policy), "--authfile", str(self.auth_file)]
        args += [*self._tls_flags(), "--digestfile", str(digestfile), image, f"docker://{image}"]
        code, _ = self._run("buildah", args, log, deadline)
        if code != 0:
            raise BuildError(f"buildah push {image} failed (exit code {code})")
        digest = digestfile.read_text().strip()
        digestfile.unlink(missing_ok=True)
        return digest

    def base_digest(self, reference: str) -> str | None:
        """The digest ``reference`` (``host/repo:tag``) has on this registry now, or None when it is
        elsewhere or cannot be read (the run records None; the base-image poller HEADs those)."""
        from dockyard.upstream.client import parse_source

        try:
            ref = parse_source(reference)
        except ValueError:
            return None
        if ref.registry != self.registry.host.lower():
            return None
        if ref.is_digest:
            return ref.reference
        return self._head_digest(ref.repository, ref.reference)

    def _head_digest(self, repository: str, reference: str) -> str | None:
        import ssl

        from dockyard.oci.mediatypes import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
        from dockyard.upstream.client import HttpUpstream
        from dockyard.upstream.interfaces import Credentials, UpstreamError
        from dockyard.webhooks.addresses import networks

        context = ssl.create_default_context()
        if self.registry.ca_file is not None:
            context.load_verify_locations(cafile=str(self.registry.ca_file))
        client = HttpUpstream(
            self.registry.host,
            Credentials(self.registry.username, self.registry.password),
            scheme="http" if self.registry.plain_http else "https",
            ssl_context=context,
            allowed=networks(["0.0.0.0/0", "::/0"]),  # this registry itself
            insecure_hosts=frozenset({self.registry.host}) if self.registry.plain_http else frozenset(),
            timeout=30.0,
        )
        try:
            accept = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
            return client.head_manifest(repository, reference, accept).digest
        except (UpstreamError, httpx.HTTPError):
            return None
        finally:
            client.close()

    def _run_args(self, request: ContainerRequest, name: str) -> list[str]:
        args = ["--name", name, "--network", self.network, "--pull", "never"]
        workdir = request.workdir
        if workdir and (not workdir.startswith("/") or any(c in workdir for c in ":,\n")):
            raise BuildError(f"working directory {workdir[:100]!r}: an absolute path without ':' or ','")
        if request.mount is not None and request.workdir:
            args += ["-v", f"{request.mount}:{request.workdir}", "-w", request.workdir]
        elif request.workdir:
            args += ["-w", request.workdir]
        if request.env:
            env_file = Path(tempfile.mkstemp(prefix="env-", dir=self.workdir / "tmp")[1])
            env_file.write_text("".join(f"{k}={v}\n" for k, v in request.env.items() if "\n" not in v))
            args += ["--env-file", str(env_file)]
        if request.entry_point:
            args += ["--entrypoint", request.entry_point]
        if request.user:
            args += ["--user", request.user]
        return [*args, image_word(request.image, "cmd image"), *request.args]

    def _ensure_image(self, request: ContainerRequest, log: LogSink, deadline: Deadline) -> None:
        image_word(request.image, "cmd image")
        if not request.pull:
            code, _ = self._run("podman", ["image", "exists", request.image], None, deadline)
            if code == 0:
                return
        args = ["pull", "--authfile", str(self.auth_file), *self._tls_flags(), request.image]
        code, _ = self._run("podman", args, log, deadline)
        if code != 0:
            raise BuildError(f"podman pull {request.image} failed (exit code {code})")

    def run(self, request: ContainerRequest, log: LogSink, deadline: Deadline) -> int:
        """``podman run --rm`` of ``request``; its exit code (the container is removed if killed)."""
        self._ensure_image(request, log, deadline)
        name = _container_name(request.name)
        try:
            code, _ = self._run("podman", ["run", "--rm", *self._run_args(request, name)], log, deadline)
        except BuildError:
            self._remove_container(name)
            raise
        return code

    def start(self, request: ContainerRequest, log: LogSink) -> None:
        """``podman run -d``: left running, removed by ``close``."""
        deadline = Deadline(at=time.monotonic() + 600)
        self._ensure_image(request, log, deadline)
        name = _container_name(request.name)
        self._containers.append(name)
        code, _ = self._run("podman", ["run", "-d", *self._run_args(request, name)], log, deadline)
        if code != 0:
            raise BuildError(f"podman run -d {request.image} failed (exit code {code})")

    def _remove_container(self, name: str) -> None:
        self._run("podman", ["rm", "-f", "-t", "0", name], None, self._cleanup_deadline())

    def close(self) -> None:
        """Kill what is still running, remove the containers, the store and the runroot."""
        self._groups.kill_all()
        with contextlib.suppress(BuildError, OSError):
            self._run("podman", ["rm", "-a", "-f", "-t", "0"], None, self._cleanup_deadline())
        with contextlib.suppress(BuildError, OSError):
            self._run("buildah", ["rm", "--all"], None, self._cleanup_deadline())
        remove_tree(self.workdir)
        remove_tree(self.runroot)


#: ``uname -m`` → the OCI platform buildah builds for when given no ``--platform``.
_NATIVE = {"x86_64": "linux/amd64", "aarch64": "linux/arm64", "armv7l": "linux/arm/v7", "i686": "linux/386"}


def platform_flags(platform: str | None, machine: str) -> list[str]:
    """``--platform`` for buildah, left out when it is this machine's own (buildah 1.28 would then
    warn in every log that TARGETARCH, TARGETOS and TARGETPLATFORM were not consumed)."""
    if not platform or platform == _NATIVE.get(machine):
        return []
    return ["--platform", platform]
