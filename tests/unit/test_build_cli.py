"""The CLI's local parts of `dockyard build`: `.dockerignore` as docker reads it, the context tar, sources."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from dockyard.builds.spec import FINAL_STATUSES
from dockyard.cli import build_commands
from dockyard.cli.dockerignore import context_bytes, excluded, parse


def _excluded(lines: str, path: str) -> bool:
    return excluded(path, parse(lines))


# The examples of docker's own documentation (docs.docker.com, "Dockerignore files").
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("somedir/temporary.txt", True),
        ("somedir/temp", True),
        ("somedir/temp/inside.txt", True),  # a matched folder takes its contents
        ("temporary.txt", False),  # */temp* is one level down only
        ("a/b/temporary.txt", False),
    ],
)
def test_one_level_wildcard(path: str, expected: bool) -> None:
    assert _excluded("# comment\n*/temp*\n", path) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [("somedir/subdir/temporary.txt", True), ("somedir/temporary.txt", False), ("a/b/c/temp", False)],
)
def test_two_level_wildcard(path: str, expected: bool) -> None:
    assert _excluded("*/*/temp*", path) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [("tempa", True), ("tempb", True), ("temp", False), ("tempab", False), ("x/tempa", False)],
)
def test_question_mark(path: str, expected: bool) -> None:
    assert _excluded("temp?", path) is expected


@pytest.mark.parametrize(
    ("path", "expected"), [("main.go", True), ("a/b/c.go", True), ("a/b/c.gox", False), ("go", False)]
)
def test_double_star_any_depth(path: str, expected: bool) -> None:
    assert _excluded("**/*.go", path) is expected


def test_patterns_are_anchored_at_the_root_unlike_gitignore() -> None:
    assert _excluded("*.md", "notes.md")
    assert not _excluded("*.md", "docs/notes.md")
    assert _excluded("/build/", "build/out.o")  # leading and trailing slashes are dropped
    assert _excluded("./secrets", "secrets")
    assert not _excluded("secrets", "app/secrets")


def test_exception_lines() -> None:
    assert not _excluded("*.md\n!README.md", "README.md")
    assert _excluded("*.md\n!README.md", "CHANGES.md")
    # "No markdown files are included in the context except README files other than README-secret.md"
    rules = "*.md\n!README*.md\nREADME-secret.md"
    assert _excluded(rules, "README-secret.md")
    assert not _excluded(rules, "README-public.md")
    assert _excluded(rules, "other.md")
    # "All of the README files are included. The middle line has no effect"
    rules = "*.md\nREADME-secret.md\n!README*.md"
    assert not _excluded(rules, "README-secret.md")


def test_a_re_included_file_inside_an_excluded_folder() -> None:
    rules = "vendor\n!vendor/keep.txt"
    assert _excluded(rules, "vendor/drop.txt")
    assert not _excluded(rules, "vendor/keep.txt")


def test_classes_escapes_and_bad_patterns() -> None:
    assert _excluded("file[0-9].txt", "file7.txt")
    assert not _excluded("file[^0-9].txt", "file7.txt")
    assert _excluded(r"weird\*name", "weird*name")
    assert not _excluded(r"weird\*name", "weirdXname")
    assert _excluded("a.b", "a.b")
    assert not _excluded("a.b", "axb")
    assert _excluded("dir/**", "dir/x/y")
    with pytest.raises(ValueError, match="must be followed"):
        parse("!")
    with pytest.raises(ValueError, match="unterminated"):
        parse("bad[class")


def _names(tar_gz: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(tar_gz))) as tar:
        return {m.name for m in tar.getmembers()}


def test_the_context_tar_honours_dockerignore_but_keeps_the_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM base\n")
    (tmp_path / "build.Dockerfile").write_text("FROM base\n")
    (tmp_path / ".dockerignore").write_text("*Dockerfile\n.dockerignore\nnode_modules\n*.log\n!keep.log\n")
    (tmp_path / "app.py").write_text("print(1)\n")
    (tmp_path / "debug.log").write_text("x")
    (tmp_path / "keep.log").write_text("x")
    (tmp_path / "node_modules" / "pkg").mkdir(parents=True)
    (tmp_path / "node_modules" / "pkg" / "index.js").write_text("x")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "trace.log").write_text("x")  # *.log is the root's only
    names = _names(context_bytes(tmp_path))
    assert names == {"Dockerfile", ".dockerignore", "app.py", "keep.log", "src", "src/trace.log"}
    # with -f, that file is the one always sent
    assert "build.Dockerfile" in _names(context_bytes(tmp_path, "build.Dockerfile"))
    assert "Dockerfile" not in _names(context_bytes(tmp_path, "build.Dockerfile"))


def test_the_tar_resets_owners_and_is_reproducible(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM base\n")
    first = context_bytes(tmp_path)
    assert first == context_bytes(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first))) as tar:
        (member,) = tar.getmembers()
        assert (member.uid, member.gid, member.uname) == (0, 0, "")


@pytest.mark.parametrize(
    ("context", "kind"),
    [
        ("https://github.com/org/app.git#main:src", "git"),
        ("git@github.com:org/app.git", "git"),
        ("https://example.com/ctx.tar.gz", "tarball"),
        ("https://example.com/ctx.tgz#ignored", "tarball"),
        ("oci://127.0.0.1:5000/ctx:1", "oci"),
        ("/dev/null", "none"),
    ],
)
def test_remote_contexts(context: str, kind: str) -> None:
    source = build_commands.remote_source(context)
    assert source is not None
    assert source["kind"] == kind
    if kind == "oci":
        assert source["location"] == "127.0.0.1:5000/ctx:1"


def test_a_local_folder_is_not_remote() -> None:
    assert build_commands.remote_source("./app") is None
    assert build_commands.remote_source("app") is None


def test_final_statuses_match_the_builds_room() -> None:
    assert build_commands.FINAL_STATUSES == FINAL_STATUSES


# -- following a run's log: a stream that is cut is resumed from its byte offset ---------------------


class _FakeRegistry:
    """A tiny HTTP server: a run whose log stream is cut after each line until the run has ended."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.log = b"step one\nstep two\nstep three\n"
        self.offsets: list[tuple[str, int]] = []
        self.status_calls = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                return None

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                if parts.path.endswith("/logs"):
                    offset = int(query["offset"][0])
                    follow = query.get("follow") == ["true"]
                    fake.offsets.append(("follow" if follow else "tail", offset))
                    rest = fake.log[offset:]
                    body = rest[: rest.index(b"\n") + 1] if follow and rest else rest
                    self._answer(body, "text/plain; charset=utf-8")
                else:
                    fake.status_calls += 1
                    status = "Running" if fake.status_calls < 2 else "Succeeded"
                    run = {"runId": "dy5", "status": status, "outputImages": [], "error": None}
                    self._answer(json.dumps(run).encode(), "application/json")

            def _answer(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_the_log_is_resumed_from_its_offset_and_its_tail_read_once(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    from dockyard.cli.client import RegistryClient

    fake = _FakeRegistry()
    try:
        ended = build_commands.stream_log(RegistryClient(fake.url), "dy5")
    finally:
        fake.close()
    assert ended["status"] == "Succeeded"
    assert capsysbinary.readouterr().out == fake.log
    assert fake.offsets == [("follow", 0), ("follow", 9), ("tail", 18)]


def test_ctrl_c_stops_following_and_says_how_to_follow_again(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import typer

    from dockyard.cli.client import RegistryClient
    from dockyard.cli.output import OutputFormat

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(build_commands, "stream_log", interrupted)
    with pytest.raises(typer.Exit) as exited:
        build_commands.follow(
            RegistryClient("http://127.0.0.1:1"),
            {"runId": "dy9"},
            logs=True,
            wait=True,
            output=OutputFormat.json,
        )
    assert exited.value.exit_code == 130
    assert "dockyard task logs --run-id dy9" in capsys.readouterr().err


@pytest.mark.parametrize(("status", "code"), [("Succeeded", None), ("Failed", 1), ("Timeout", 1)])
def test_the_exit_code_is_the_runs_outcome(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], status: str, code: int | None
) -> None:
    import typer

    from dockyard.cli.client import RegistryClient
    from dockyard.cli.output import OutputFormat

    image = {"repository": "app", "tag": "dy3", "digest": "sha256:" + "a" * 64}
    ended = {"runId": "dy3", "status": status, "outputImages": [image], "error": None}
    monkeypatch.setattr(build_commands, "stream_log", lambda *_a: ended)
    monkeypatch.setattr(build_commands, "wait_run", lambda *_a: ended)
    client = RegistryClient("http://127.0.0.1:5000")
    for logs in (True, False):
        if code is None:
            build_commands.follow(client, {"runId": "dy3"}, logs=logs, wait=True, output=OutputFormat.json)
        else:
            with pytest.raises(typer.Exit) as exited:
                build_commands.follow(
                    client, {"runId": "dy3"}, logs=logs, wait=True, output=OutputFormat.json
                )
            assert exited.value.exit_code == code
        err = capsys.readouterr().err
        assert f"pushed 127.0.0.1:5000/app:dy3@sha256:{'a' * 64}" in err
        # the streamed log ends with the outcome; without it the command says it
        assert ("was successful" in err) is (status == "Succeeded" and not logs)
        assert (f"ended {status}" in err) is (status != "Succeeded" and not logs)


def test_a_dockerfile_in_an_excluded_folder_is_still_sent(tmp_path: Path) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text("FROM base\n")
    (tmp_path / "docker" / "other.txt").write_text("x")
    (tmp_path / ".dockerignore").write_text("docker\n")
    assert _names(context_bytes(tmp_path, "docker/Dockerfile")) == {".dockerignore", "docker/Dockerfile"}
