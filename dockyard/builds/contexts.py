"""Preparing a run's build context on disk: an uploaded tar, a git clone, a tarball URL, an OCI artifact.

Every kind ends as a folder the steps see as their working directory. Archives are unpacked with
tarfile's ``data`` filter after our own checks (no absolute names, no ``..``, no devices, links
only inside), bounded in bytes (``builds_context_max_bytes``) and files (MAX_FILES). git runs with
a hardened environment (no system or global config, no prompts, only http(s) — and ``file`` for a
local repository under ``builds_local_git_roots``), the access token as an ``http.extraHeader``
given through ``GIT_CONFIG_*`` variables, never in the URL, argv or log, and never over plain http
to a host ``insecure_upstreams`` does not list. Hosts are checked with
the upstream address rules (loopback, link-local and metadata refused unless
``upstream_allowed_networks`` allows them).
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import socket
import ssl
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from dockyard.builds.buildcmd import relative_path
from dockyard.builds.interfaces import (
    BuildError,
    ContextSource,
    Deadline,
    LogSink,
    PreparedContext,
    RegistryAccess,
    RunCanceled,
    StepTimedOut,
)
from dockyard.builds.origins import plain_http_allowed, plain_http_refused
from dockyard.builds.processes import run_process
from dockyard.upstream.addresses import GuardedTransport
from dockyard.webhooks.addresses import host_refusal, networks, parse_address

if TYPE_CHECKING:
    from dockyard.config import Settings

#: Most files (and folders, links) a context may hold.
MAX_FILES = 200_000
_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?\Z")
_CHUNK = 1024 * 1024
_OCI_LAYER_TYPES = ("tar", "tar+gzip", "tar.gzip", "rootfs.diff.tar")


# -- archives ----------------------------------------------------------------------------------


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks, counting (and bounding) what it read."""

    def __init__(self, chunks: Iterable[bytes], limit: int, deadline: Deadline) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""
        self._limit = limit
        self._deadline = deadline
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            _check_deadline(self._deadline, "unpacking the context")
            piece = next(self._chunks, None)
            if piece is None:
                return 0
            self._buffer = piece
            self.read_bytes += len(piece)
            if self.read_bytes > self._limit:
                raise BuildError(_too_large(self._limit))
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def _too_large(limit: int) -> str:
    return f"the context is larger than {limit} bytes (builds_context_max_bytes)"


def _check_deadline(deadline: Deadline, what: str) -> None:
    if deadline.canceled():
        raise RunCanceled(f"{what}: canceled")
    if time.monotonic() >= deadline.at:
        raise StepTimedOut(f"{what}: timed out")


#: Largest pax or GNU long-name header (tarfile reads one whole into memory).
MAX_TAR_HEADER = 1024 * 1024
_LONG_HEADERS = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)


class _BoundedTarInfo(tarfile.TarInfo):
    """TarInfo refusing pax/GNU long-name headers past MAX_TAR_HEADER before tarfile reads them."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type in _LONG_HEADERS and self.size > MAX_TAR_HEADER:
            raise BuildError(
                f"the archive holds a {self.size}-byte extended header (at most {MAX_TAR_HEADER})"
            )
        return super()._proc_member(archive)  # type: ignore[misc]


def _tar_bound(max_bytes: int) -> int:
    """Most bytes of uncompressed tar a context of ``max_bytes`` may need: contents, one header and
    padding block per member, and slack for long names (pax/GNU headers)."""
    return max_bytes + MAX_FILES * 2048 + 16 * _CHUNK


class _Bounded(io.RawIOBase):
    """Reads ``inner`` (uncompressed tar) and refuses past ``limit`` bytes: a compressed bomb, or huge
    pax/GNU long-name headers (tarfile holds those in memory), ends early instead of filling it."""

    def __init__(self, inner: io.BufferedIOBase, limit: int) -> None:
        self._inner = inner
        self._limit = limit
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(min(len(target), _CHUNK))
        self.read_bytes += len(data)
        if self.read_bytes > self._limit:
            raise BuildError(f"the context unpacks to more than {self._limit} bytes of tar")
        target[: len(data)] = data
        return len(data)


def _decompressed(raw: io.BufferedReader) -> io.BufferedIOBase:
    """``raw`` uncompressed: gzip, bzip2 and xz sniffed by their magic bytes, else as it is."""
    head = raw.peek(6)[:6]
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise BuildError(f"the archive holds an absolute path: {name!r}")
    if ".." in parts:
        raise BuildError(f"the archive holds a path leaving the context: {name!r}")
    if member.isdev():
        raise BuildError(f"the archive holds a device or fifo: {name!r}")
    if member.issym() or member.islnk():
        target = member.linkname
        base = posixpath_dir(name) if member.issym() else ""
        joined = os.path.normpath(os.path.join(base, target)) if not target.startswith("/") else target
        if target.startswith("/") or joined == ".." or joined.startswith("../"):
            raise BuildError(f"the archive holds a link leaving the context: {name!r} -> {target!r}")


def posixpath_dir(name: str) -> str:
    return name.rstrip("/").rpartition("/")[0]


def extract_tar(chunks: Iterable[bytes], dest: Path, *, max_bytes: int, deadline: Deadline) -> None:
    """Unpack a tar (gzip, bzip2 or xz sniffed) streamed as ``chunks`` into ``dest``, refusing
    absolute names, ``..``, devices and links leaving ``dest``; BuildError past ``max_bytes``
    (read or unpacked) or MAX_FILES members."""
    dest.mkdir(parents=True, exist_ok=True)
    reader = _ChunkReader(chunks, max_bytes, deadline)
    unpacked = 0
    count = 0
    try:
        plain = _Bounded(_decompressed(io.BufferedReader(reader, _CHUNK)), _tar_bound(max_bytes))
        stream = io.BufferedReader(plain, _CHUNK)
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as archive:
            for member in archive:
                count += 1
                if count > MAX_FILES:
                    raise BuildError(f"the context holds more than {MAX_FILES} files")
                _check_member(member)
                unpacked += max(member.size, 0)
                if unpacked > max_bytes:
                    raise BuildError(
                        f"the context is larger than {max_bytes} bytes (builds_context_max_bytes)"
                    )
                archive.extract(member, dest, filter="data")
    except tarfile.FilterError as exc:
        raise BuildError(f"the archive is refused: {exc}") from None
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
        raise BuildError(f"the context is not a readable tar archive: {exc}") from None


# -- hosts -------------------------------------------------------------------------------------


def check_host(host: str, settings: Settings) -> list[str]:
    """The addresses ``host`` is or resolves to; BuildError when the upstream rules refuse one."""
    if not host:
        raise BuildError("the URL names no host")
    allowed = networks(settings.upstream_allowed_networks)
    reason = host_refusal(host, [], allowed)  # metadata names and literal addresses, before any lookup
    if reason is not None:
        raise BuildError(f"refused to connect: {reason} (upstream_allowed_networks can allow it)")
    if parse_address(host) is not None:
        addresses = [host.strip("[]")]
    else:
        try:
            addresses = list({str(info[4][0]) for info in socket.getaddrinfo(host, None)})
        except (OSError, UnicodeError) as exc:
            raise BuildError(f"cannot resolve {host}: {exc}") from None
    reason = host_refusal(host, addresses, allowed)
    if reason is not None:
        raise BuildError(f"refused to connect: {reason} (upstream_allowed_networks can allow it)")
    return sorted(addresses)


def _pinned_resolve(url: str, settings: Settings) -> str | None:
    """``http.curloptResolve`` pinning ``url``'s host to the addresses just checked, so that git
    cannot be sent elsewhere by a second DNS answer (rebinding to loopback or metadata)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    addresses = check_host(host, settings)
    if parse_address(host) is not None:
        return None  # a literal address: nothing to resolve
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    listed = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
    return f"http.curloptResolve={host}:{port}:{listed}"


# -- git ---------------------------------------------------------------------------------------


def _git_environment(home: Path, token: str | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "LANG": "C.UTF-8",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_PROTOCOL_FROM_USER": "0",
        "GIT_LFS_SKIP_SMUDGE": "1",
    }
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        env.update(
            GIT_CONFIG_COUNT="1",
            GIT_CONFIG_KEY_0="http.extraHeader",
            GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}",
        )
    return env


def git_url(location: str, settings: Settings) -> tuple[str, bool]:
    """The URL git may fetch ``location`` from, and whether it is a local repository (BuildError if
    the location is refused: options, ``ext::``-style transports, ssh/git protocols, local paths
    outside ``builds_local_git_roots``, refused hosts)."""
    text = location.strip()
    if not text or text.startswith("-") or any(c in text for c in "\x00\n\r"):
        raise BuildError(f"refused git location {location[:100]!r}")
    if "::" in text.split("/", 1)[0] or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*::", text):
        raise BuildError(f"refused git location {location[:100]!r}: remote helpers are not allowed")
    scheme = urlsplit(text).scheme.lower() if "://" in text else ""
    if scheme in ("http", "https"):
        parts = urlsplit(text)
        if parts.username or parts.password:
            raise BuildError("give the git access token separately, not inside the URL")
        check_host(parts.hostname or "", settings)
        return text, False
    if scheme and scheme != "file":
        raise BuildError(f"refused git location {location[:100]!r}: only http(s) and allowed local paths")
    if not scheme and re.match(r"^[^/]+@[^/]+:|^[^/]+:", text):
        raise BuildError(f"refused git location {location[:100]!r}: ssh (scp-like) addresses are not allowed")
    path = Path(urlsplit(text).path if scheme == "file" else text)
    if not path.is_absolute():
        raise BuildError(f"refused git location {location[:100]!r}: a local path must be absolute")
    resolved = path.resolve()
    roots = [root.resolve() for root in settings.builds_local_git_roots]
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise BuildError(f"the local repository {location[:100]!r} is not under builds_local_git_roots")
    if not resolved.is_dir():
        raise BuildError(f"no git repository at {location[:100]!r}")
    return resolved.as_uri(), True


def _folder_size(root: Path, limit: int) -> int:
    total = 0
    count = 0
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            count += 1
            if count > MAX_FILES:
                raise BuildError(f"the context holds more than {MAX_FILES} files")
            total += os.lstat(os.path.join(folder, name)).st_size
            if total > limit:
                raise BuildError(_too_large(limit))
    return total


def clone_git(
    source: ContextSource, dest: Path, *, log: LogSink, settings: Settings, deadline: Deadline
) -> tuple[str, str]:
    """Clone ``source`` into ``dest``; the commit checked out and its branch ("" for a commit sha)."""
    url, local = git_url(source.location, settings)
    if source.token and not local and (refused := plain_http_refused(url, settings.insecure_upstreams)):
        raise BuildError(
            f"refused to send the git access token over plain http to {refused} "
            "(insecure_upstreams can allow its host)"
        )
    ref = (source.ref or "").strip()
    if ref.startswith("-") or any(c.isspace() or c in "\x00~^:?*[\\" for c in ref):
        raise BuildError(f"refused git ref {ref[:100]!r}")
    protocols = ["protocol.allow=never", "protocol.https.allow=always", "protocol.http.allow=always"]
    if local:
        protocols.append("protocol.file.allow=always")
    elif (pin := _pinned_resolve(url, settings)) is not None:
        protocols.append(pin)
    config = [
        *protocols,
        "http.followRedirects=false",
        "core.hooksPath=/dev/null",
        "advice.detachedHead=false",
    ]
    flags = [arg for item in config for arg in ("-c", item)]
    with tempfile.TemporaryDirectory(prefix="dy-git-") as home:
        env = _git_environment(Path(home), source.token)
        mask = (lambda text: text.replace(source.token, "***")) if source.token else (lambda text: text)

        def git(*args: str, where: Path | None = None, capture: bool = False) -> str:
            code, output = run_process(
                ["git", *flags, *args],
                env=env,
                log=None if capture else log,
                deadline=deadline,
                cwd=where,
                mask=mask,
                capture=capture,
                what="git",
            )
            if code != 0:
                raise BuildError(f"git {args[0]} failed (exit code {code})")
            return output.strip()

        dest.mkdir(parents=True, exist_ok=True)
        branch = ""
        if _SHA.match(ref):
            git("init", "-q", str(dest))
            try:
                git("fetch", "--depth", "1", "--no-tags", "--", url, ref, where=dest)
            except BuildError:  # servers that refuse unadvertised commits: fetch the branches
                log.write("fetching the commit alone failed; fetching every branch\n")
                git("fetch", "--no-tags", "--", url, "+refs/heads/*:refs/remotes/origin/*", where=dest)
            git("checkout", "-q", "--detach", ref, where=dest)
        else:
            branch_flags = ["--branch", ref] if ref else []
            git(
                "clone",
                "-q",
                "--depth",
                "1",
                "--single-branch",
                "--no-tags",
                *branch_flags,
                "--",
                url,
                str(dest),
            )
            branch = ref or git("rev-parse", "--abbrev-ref", "HEAD", where=dest, capture=True)
        commit = git("rev-parse", "HEAD", where=dest, capture=True)
    _folder_size(dest, settings.builds_context_max_bytes)
    return commit, branch


# -- tarballs and OCI artifacts ----------------------------------------------------------------


def _http_chunks(url: str, settings: Settings, deadline: Deadline) -> Iterator[bytes]:
    def allowed_scheme(request: httpx.Request) -> None:
        allowed = plain_http_allowed(request.url.host or "", request.url.port, settings.insecure_upstreams)
        if request.url.scheme != "https" and not allowed:
            raise BuildError(f"refused plain-http URL {request.url} (insecure_upstreams can allow its host)")

    context = ssl.create_default_context()
    if settings.upstream_ca_file:
        context.load_verify_locations(cafile=str(settings.upstream_ca_file))
    transport = GuardedTransport(networks(settings.upstream_allowed_networks), context, httpx.Limits())
    timeout = httpx.Timeout(
        settings.upstream_timeout_seconds, connect=min(settings.upstream_timeout_seconds, 10)
    )
    with (
        httpx.Client(
            transport=transport,
            timeout=timeout,
            follow_redirects=True,
            max_redirects=5,
            trust_env=False,
            event_hooks={"request": [allowed_scheme]},
        ) as client,
        client.stream("GET", url) as response,
    ):
        if response.status_code != 200:
            raise BuildError(f"GET {url}: HTTP {response.status_code}")
        for chunk in response.iter_bytes(_CHUNK):
            _check_deadline(deadline, "downloading the context")
            yield chunk


def fetch_tarball(url: str, dest: Path, *, settings: Settings, deadline: Deadline) -> None:
    """Download a tar(.gz) over http(s) (address rules, https unless the host is insecure) and unpack it."""
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise BuildError(f"refused tarball URL {url[:100]!r}: only http(s)")
    try:
        extract_tar(
            _http_chunks(url, settings, deadline),
            dest,
            max_bytes=settings.builds_context_max_bytes,
            deadline=deadline,
        )
    except httpx.HTTPError as exc:
        raise BuildError(f"GET {url}: {exc}") from None


def _hashed(chunks: Iterator[bytes], hasher: hashlib._Hash) -> Iterator[bytes]:
    for chunk in chunks:
        hasher.update(chunk)
        yield chunk


def fetch_oci(
    location: str,
    dest: Path,
    *,
    settings: Settings,
    deadline: Deadline,
    registry: RegistryAccess | None,
) -> None:
    """Unpack an OCI artifact's tar layers, in order (``oci://host/repo:tag`` or ``@digest``)."""
    from dockyard.oci.mediatypes import DOCKER_MANIFEST, OCI_MANIFEST
    from dockyard.upstream.client import HttpUpstream, open_upstream, parse_source
    from dockyard.upstream.interfaces import Credentials, UpstreamError

    try:
        ref = parse_source(location.removeprefix("oci://"))
    except ValueError as exc:
        raise BuildError(str(exc)) from None
    if registry is not None and ref.registry == registry.host.lower():
        context = ssl.create_default_context()
        if registry.ca_file is not None:
            context.load_verify_locations(cafile=str(registry.ca_file))
        client = HttpUpstream(
            ref.registry,
            Credentials(registry.username, registry.password),
            scheme="http" if registry.plain_http else "https",
            ssl_context=context,
            allowed=networks(["0.0.0.0/0", "::/0"]),  # this registry itself, wherever it listens
            insecure_hosts=frozenset({registry.host}) if registry.plain_http else frozenset(),
            timeout=settings.upstream_timeout_seconds,
        )
    else:
        client = open_upstream(ref.registry, None, settings)
    limit = settings.builds_context_max_bytes
    try:
        manifest = client.get_manifest(ref.repository, ref.reference, (OCI_MANIFEST, DOCKER_MANIFEST))
        layers = json.loads(manifest.payload).get("layers") or []
        if not isinstance(layers, list):
            raise BuildError(f"{location}: not an image or artifact manifest")
        for layer in layers:
            media_type = str(layer.get("mediaType", ""))
            if not any(media_type.endswith(kind) for kind in _OCI_LAYER_TYPES):
                raise BuildError(f"{location}: layer of type {media_type!r} is not a tar")
            digest = str(layer.get("digest", ""))
            hasher = hashlib.sha256()
            with client.open_blob(ref.repository, digest) as blob:
                extract_tar(_hashed(blob.chunks, hasher), dest, max_bytes=limit, deadline=deadline)
            if digest.startswith("sha256:") and hasher.hexdigest() != digest.removeprefix("sha256:"):
                raise BuildError(f"{location}: layer {digest} arrived with other bytes")
    except UpstreamError as exc:
        raise BuildError(f"{location}: {exc}") from None
    finally:
        client.close()


# -- the entry point ---------------------------------------------------------------------------


def prepare_context(
    source: ContextSource,
    dest: Path,
    *,
    log: LogSink,
    read_source: Callable[[str], Iterator[bytes]],
    settings: Settings,
    deadline: Deadline,
    registry: RegistryAccess | None = None,
) -> PreparedContext:
    """Put ``source`` in ``dest`` (created; expected absent or empty) and say where the steps start.

    ``read_source(digest)`` streams an uploaded context; ``registry`` (this registry's address and
    the run's credential) is used for ``oci://`` artifacts stored on this registry itself.
    Raises BuildError (refused or failed), StepTimedOut or RunCanceled.
    """
    dest.mkdir(parents=True, exist_ok=True)
    commit = branch = ""
    if source.kind == "none":
        pass
    elif source.kind == "upload":
        log.write(f"Unpacking the uploaded context {source.location}\n")
        stream = read_source(source.location)
        try:
            extract_tar(stream, dest, max_bytes=settings.builds_context_max_bytes, deadline=deadline)
        finally:
            close = getattr(stream, "close", None)
            if callable(close):
                close()  # a generator holding the blob open
    elif source.kind == "git":
        log.write("Cloning the git context\n")
        commit, branch = clone_git(source, dest, log=log, settings=settings, deadline=deadline)
        log.write(f"Context at commit {commit}{f' (branch {branch})' if branch else ''}\n")
    elif source.kind == "tarball":
        log.write(f"Downloading the context {source.location}\n")
        fetch_tarball(source.location, dest, settings=settings, deadline=deadline)
    elif source.kind == "oci":
        log.write(f"Pulling the context {source.location}\n")
        fetch_oci(source.location, dest, settings=settings, deadline=deadline, registry=registry)
    else:
        raise BuildError(f"unknown context kind {source.kind!r}")
    path = dest
    if source.folder and source.kind != "none":
        folder = relative_path(source.folder, "context folder")
        path = (dest / folder).resolve()
        if not path.is_relative_to(dest.resolve()) or not path.is_dir():
            raise BuildError(f"the context has no folder {source.folder!r}")
    return PreparedContext(path=path, commit=commit, branch=branch)
