"""prepare_context: safe unpacking of uploads, hardened git clones, refused locations."""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.builds.contexts import MAX_FILES, extract_tar, git_url, prepare_context
from dockyard.builds.interfaces import BuildError, ContextSource, Deadline, RunCanceled, StepTimedOut
from dockyard.config import Settings


class Log:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text


def later(seconds: float = 60.0) -> Deadline:
    return Deadline(at=time.monotonic() + seconds)


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes], gz: bool = False) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    raw = out.getvalue()
    return gzip.compress(raw, mtime=0) if gz else raw


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def chunks(data: bytes, size: int = 7) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", **values)


@pytest.mark.parametrize("gz", [False, True])
def test_upload_unpacks_files_dirs_and_inner_links(tmp_path: Path, gz: bool) -> None:
    data = tar_bytes(
        (member("app", tarfile.DIRTYPE), b""),
        (member("app/Dockerfile"), b"FROM scratch\n"),
        (member("app/link", tarfile.SYMTYPE, "Dockerfile"), b""),
        (member("app/hard", tarfile.LNKTYPE, "app/Dockerfile"), b""),
        gz=gz,
    )
    log = Log()
    source = ContextSource(kind="upload", location="sha256:abc", folder="app")
    seen = []

    def read_source(digest: str) -> Iterator[bytes]:
        seen.append(digest)
        return chunks(data)

    prepared = prepare_context(
        source,
        tmp_path / "ctx",
        log=log,
        read_source=read_source,
        settings=settings(tmp_path),
        deadline=later(),
    )
    assert seen == ["sha256:abc"]
    assert prepared.path == (tmp_path / "ctx" / "app").resolve()
    assert (prepared.path / "Dockerfile").read_text() == "FROM scratch\n"
    assert (prepared.path / "link").read_text() == "FROM scratch\n"
    assert (prepared.path / "hard").read_text() == "FROM scratch\n"
    assert "sha256:abc" in log.text


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (member("../evil"), "leaving the context"),
        (member("a/../../evil"), "leaving the context"),
        (member("/etc/evil"), "absolute path"),
        (member("esc", tarfile.SYMTYPE, "../outside"), "link leaving"),
        (member("esc", tarfile.SYMTYPE, "/etc/passwd"), "link leaving"),
        (member("sub/esc", tarfile.SYMTYPE, "../../x"), "link leaving"),
        (member("hard", tarfile.LNKTYPE, "../x"), "link leaving"),
        (member("dev", tarfile.CHRTYPE), "device"),
        (member("blk", tarfile.BLKTYPE), "device"),
        (member("fifo", tarfile.FIFOTYPE), "device"),
    ],
)
def test_upload_refuses_escapes_and_devices(tmp_path: Path, bad: tarfile.TarInfo, message: str) -> None:
    data = tar_bytes((member("ok"), b"fine"), (bad, b"x"))
    with pytest.raises(BuildError, match=message):
        extract_tar(chunks(data), tmp_path / "ctx", max_bytes=10**6, deadline=later())
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "outside").exists()


def test_symlink_then_write_through_it_is_refused(tmp_path: Path) -> None:
    # A link that stays inside, then a file written "through" a link to a folder outside.
    (tmp_path / "outside").mkdir()
    data = tar_bytes(
        (member("d", tarfile.SYMTYPE, "."), b""),
        (member("d/../../outside/pwned"), b"x"),
    )
    with pytest.raises(BuildError):
        extract_tar(chunks(data), tmp_path / "ctx", max_bytes=10**6, deadline=later())
    assert not (tmp_path / "outside" / "pwned").exists()


def test_upload_bounds(tmp_path: Path) -> None:
    big = tar_bytes((member("big"), b"x" * 5000))
    with pytest.raises(BuildError, match="larger than 4096 bytes"):
        extract_tar(chunks(big, 100_000), tmp_path / "a", max_bytes=4096, deadline=later())
    # A small gzip that unpacks to more than the bound.
    bomb = tar_bytes((member("zeros"), b"\0" * 200_000), gz=True)
    assert len(bomb) < 4096 * 2
    with pytest.raises(BuildError, match="larger than"):
        extract_tar(chunks(bomb, 100_000), tmp_path / "b", max_bytes=len(bomb) + 10, deadline=later())
    with pytest.raises(BuildError, match="not a readable tar"):
        extract_tar(iter([b"not a tar at all" * 100]), tmp_path / "c", max_bytes=10**6, deadline=later())


def test_upload_file_count_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dockyard.builds import contexts

    monkeypatch.setattr(contexts, "MAX_FILES", 3)
    data = tar_bytes(*[(member(f"f{i}"), b"") for i in range(4)])
    with pytest.raises(BuildError, match="more than 3 files"):
        extract_tar(chunks(data), tmp_path / "ctx", max_bytes=10**6, deadline=later())
    assert MAX_FILES > 1000


def test_unpacking_stops_at_deadline_and_cancel(tmp_path: Path) -> None:
    data = tar_bytes((member("f"), b"x" * 1000))
    with pytest.raises(StepTimedOut):
        extract_tar(chunks(data), tmp_path / "a", max_bytes=10**6, deadline=Deadline(at=time.monotonic() - 1))
    canceled = Deadline(at=time.monotonic() + 60, canceled=lambda: True)
    with pytest.raises(RunCanceled):
        extract_tar(chunks(data), tmp_path / "b", max_bytes=10**6, deadline=canceled)


def test_none_is_an_empty_folder(tmp_path: Path) -> None:
    prepared = prepare_context(
        ContextSource(kind="none"),
        tmp_path / "ctx",
        log=Log(),
        read_source=lambda _d: iter(()),
        settings=settings(tmp_path),
        deadline=later(),
    )
    assert prepared.path == tmp_path / "ctx"
    assert list(prepared.path.iterdir()) == []
    assert prepared.commit == ""


# -- git ---------------------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    env = {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "HOME": str(cwd),
        "PATH": "/usr/bin:/bin",
    }
    author = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    return subprocess.run(
        ["git", *author, *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A repository under tmp_path/roots: main with two commits (sub/Dockerfile), and branch dev."""
    path = tmp_path / "roots" / "repo"
    path.mkdir(parents=True)
    git(path, "init", "-q")
    (path / "sub").mkdir()
    (path / "sub" / "Dockerfile").write_text("FROM scratch\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "one")
    first = git(path, "rev-parse", "HEAD")
    (path / "second.txt").write_text("2\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "two")
    git(path, "branch", "dev", first)
    return path, first, git(path, "rev-parse", "HEAD")


def clone(tmp_path: Path, source: ContextSource, dest: str = "ctx", **values: object):
    values.setdefault("builds_local_git_roots", [tmp_path / "roots"])
    return prepare_context(
        source,
        tmp_path / dest,
        log=Log(),
        read_source=lambda _d: iter(()),
        settings=settings(tmp_path, **values),
        deadline=later(),
    )


def test_git_default_branch(tmp_path: Path, repo: tuple[Path, str, str]) -> None:
    path, _first, head = repo
    prepared = clone(tmp_path, ContextSource(kind="git", location=str(path)))
    assert (prepared.commit, prepared.branch) == (head, "main")
    assert (prepared.path / "second.txt").exists()


def test_git_branch_and_folder(tmp_path: Path, repo: tuple[Path, str, str]) -> None:
    path, first, _head = repo
    prepared = clone(tmp_path, ContextSource(kind="git", location=path.as_uri(), ref="dev", folder="sub"))
    assert (prepared.commit, prepared.branch) == (first, "dev")
    assert prepared.path == (tmp_path / "ctx" / "sub").resolve()
    assert not (tmp_path / "ctx" / "second.txt").exists()


def test_git_commit_sha(tmp_path: Path, repo: tuple[Path, str, str]) -> None:
    path, first, _head = repo
    prepared = clone(tmp_path, ContextSource(kind="git", location=str(path), ref=first))
    assert (prepared.commit, prepared.branch) == (first, "")
    assert (prepared.path / "sub" / "Dockerfile").exists()
    assert not (prepared.path / "second.txt").exists()


def test_git_missing_folder_and_ref(tmp_path: Path, repo: tuple[Path, str, str]) -> None:
    path, _first, _head = repo
    with pytest.raises(BuildError, match="no folder 'nope'"):
        clone(tmp_path, ContextSource(kind="git", location=str(path), folder="nope"))
    with pytest.raises(BuildError, match="leaves"):
        clone(tmp_path, ContextSource(kind="git", location=str(path), folder="../.."), dest="x")
    with pytest.raises(BuildError, match="git clone failed"):
        clone(tmp_path, ContextSource(kind="git", location=str(path), ref="no-such-branch"), dest="y")


def test_git_context_size_bound(tmp_path: Path, repo: tuple[Path, str, str]) -> None:
    path, _first, _head = repo
    with pytest.raises(BuildError, match="larger than 1024"):
        clone(tmp_path, ContextSource(kind="git", location=str(path)), builds_context_max_bytes=1024)


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("ext::sh -c touch% /tmp/pwned", "remote helpers"),
        ("fd::3", "remote helpers"),
        ("-uupload-pack=touch /tmp/pwned", "refused git location"),
        ("--upload-pack=x", "refused git location"),
        ("ssh://host/repo.git", "only http"),
        ("git://host/repo.git", "only http"),
        ("git@github.com:x/y.git", "scp-like"),
        ("host:repo.git", "scp-like"),
        ("relative/repo", "must be absolute"),
        ("/etc", "not under builds_local_git_roots"),
        ("file:///etc", "not under builds_local_git_roots"),
        ("https://127.0.0.1/x.git", "loopback"),
        ("http://169.254.169.254/x.git", "refused to connect"),
        ("https://metadata.google.internal/x.git", "refused to connect"),
        ("https://user:pw@example.com/x.git", "not inside the URL"),
        ("https://example.com/x.git\n--upload-pack", "refused git location"),
    ],
)
def test_git_refused_locations(tmp_path: Path, location: str, message: str) -> None:
    with pytest.raises(BuildError, match=message):
        git_url(location, settings(tmp_path, builds_local_git_roots=[tmp_path]))


def test_git_local_paths_only_under_roots(tmp_path: Path, repo: tuple[Path, str, str]) -> None:
    path, _first, _head = repo
    assert git_url(str(path), settings(tmp_path, builds_local_git_roots=[tmp_path / "roots"])) == (
        path.resolve().as_uri(),
        True,
    )
    with pytest.raises(BuildError, match="builds_local_git_roots"):
        git_url(str(path), settings(tmp_path))  # no roots: local paths refused
    escape = tmp_path / "roots" / "repo" / ".." / ".." / "elsewhere"
    with pytest.raises(BuildError, match="builds_local_git_roots"):
        git_url(str(escape), settings(tmp_path, builds_local_git_roots=[tmp_path / "roots" / "repo"]))
    allowed = settings(tmp_path, upstream_allowed_networks=["127.0.0.0/8"])
    assert git_url("https://127.0.0.1/x.git", allowed) == ("https://127.0.0.1/x.git", False)


def test_git_refused_refs(tmp_path: Path, repo: tuple[Path, str, str]) -> None:
    path, _first, _head = repo
    for ref in ("--upload-pack=x", "a b", "a:b"):
        with pytest.raises(BuildError, match="refused git ref"):
            clone(tmp_path, ContextSource(kind="git", location=str(path), ref=ref))


def test_git_token_never_in_argv_or_log(
    tmp_path: Path, repo: tuple[Path, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dockyard.builds import contexts

    calls: list[tuple[list[str], dict[str, str]]] = []
    real = contexts.run_process

    def spy(argv, **kwargs):
        calls.append((list(argv), dict(kwargs["env"])))
        return real(argv, **kwargs)

    monkeypatch.setattr(contexts, "run_process", spy)
    path, _first, _head = repo
    log = Log()
    prepare_context(
        ContextSource(kind="git", location=str(path), token="s3cr3t-token"),
        tmp_path / "ctx",
        log=log,
        read_source=lambda _d: iter(()),
        settings=settings(tmp_path, builds_local_git_roots=[tmp_path / "roots"]),
        deadline=later(),
    )
    assert calls
    for argv, env in calls:
        assert not any("s3cr3t" in word for word in argv)
        assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
        assert env["GIT_CONFIG_VALUE_0"].startswith("Authorization: Basic ")
        assert env["GIT_TERMINAL_PROMPT"] == "0"
        assert env["GIT_CONFIG_NOSYSTEM"] == "1"
        assert "protocol.allow=never" in argv
        assert "protocol.file.allow=always" in argv
    assert "s3cr3t" not in log.text


def test_git_token_never_over_plain_http(tmp_path: Path) -> None:
    """A token is refused for an http remote insecure_upstreams does not list, before git starts."""
    source = ContextSource(kind="git", location="http://127.0.0.1:9/x.git", token="s3cr3t-token")
    loopback = {"upstream_allowed_networks": ["127.0.0.0/8"]}
    with pytest.raises(BuildError, match=r"plain http to 127\.0\.0\.1:9"):
        clone(tmp_path, source, **loopback)
    with pytest.raises(BuildError, match="git clone failed"):  # allowed: git runs (nothing listens)
        clone(tmp_path, source, dest="listed", insecure_upstreams=["127.0.0.1:9"], **loopback)
    with pytest.raises(BuildError, match="git clone failed"):  # no token: nothing to protect
        clone(tmp_path, ContextSource(kind="git", location=source.location), dest="anon", **loopback)


# -- tarball URLs ------------------------------------------------------------------------------


@pytest.fixture
def tar_server() -> Iterator[str]:
    """http://127.0.0.1:PORT serving /ctx.tar.gz, /redirect (to /ctx.tar.gz) and 404s."""
    import http.server
    import threading

    body = tar_bytes((member("Dockerfile"), b"FROM scratch\n"), gz=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/ctx.tar.gz":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/ctx.tar.gz")
                self.end_headers()
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fetch(tmp_path: Path, url: str, **values: object) -> Path:
    return prepare_context(
        ContextSource(kind="tarball", location=url),
        tmp_path / "ctx",
        log=Log(),
        read_source=lambda _d: iter(()),
        settings=settings(tmp_path, **values),
        deadline=later(),
    ).path


def test_tarball_fetched_through_the_address_rules(tmp_path: Path, tar_server: str) -> None:
    trusted = {"upstream_allowed_networks": ["127.0.0.0/8"], "insecure_upstreams": [tar_server]}
    path = fetch(tmp_path, f"http://{tar_server}/redirect", **trusted)
    assert (path / "Dockerfile").read_text() == "FROM scratch\n"
    with pytest.raises(BuildError, match="refused plain-http"):
        fetch(tmp_path, f"http://{tar_server}/ctx.tar.gz", upstream_allowed_networks=["127.0.0.0/8"])
    with pytest.raises(BuildError, match="loopback"):
        fetch(tmp_path, f"http://{tar_server}/ctx.tar.gz", insecure_upstreams=[tar_server])
    with pytest.raises(BuildError, match="HTTP 404"):
        fetch(tmp_path, f"http://{tar_server}/missing", **trusted)
    with pytest.raises(BuildError, match="only http"):
        fetch(tmp_path, "file:///etc/passwd", **trusted)
