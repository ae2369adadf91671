"""Builds on the registry, end to end: a real `dockyard serve` building with buildah, podman and git.

The issue's proof: a post-commit hook triggers a build (pushed, pullable with skopeo); a new base
image rebuilds its dependent image; a timer fires; a multi-step task tests before it pushes; a
failing step fails the run with its log; `dockyard build` honours `.dockerignore`; `dockyard patch`
runs the image's package manager; a GitHub webhook needs the right HMAC. One server and one base
image (busybox from scratch) serve the whole module; each test uses its own repositories and tasks.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dockyard.cli import app
from tests.e2e.conftest import server_group
from tests.e2e.support import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    ContainerTools,
    DockyardServer,
    fetch_blob,
    fetch_manifest,
    run,
    wait_for,
)
from tests.support.postgres import free_port

pytestmark = pytest.mark.e2e

BUSYBOX = Path("/bin/busybox")
#: The busybox applets the base image links (no dpkg or rpm: `dockyard patch` must find only the fake apk).
APPLETS = (
    "sh",
    "cat",
    "echo",
    "ls",
    "test",
    "[",
    "mkdir",
    "touch",
    "chmod",
    "cp",
    "true",
    "false",
    "env",
    "grep",
)
FINAL = {"Succeeded", "Failed", "Canceled", "Error", "Timeout"}
TIMER_TASK = "tick-timer"


# -- fixtures -------------------------------------------------------------------------------------


class Env:
    """The module's server, container tools and helpers around them."""

    def __init__(self, server: DockyardServer, tools: ContainerTools, root: Path) -> None:
        self.server = server
        self.tools = tools
        self.root = root
        self.git_root = root / "git"
        self.http = server.http(timeout=60.0)
        self.runner = CliRunner()

    @property
    def host(self) -> str:
        return self.server.host

    def cli(self, *args: str, code: int = 0) -> Any:
        """Run `dockyard …` in this process against the server, signed in as the admin."""
        env = {
            "DOCKYARD_REGISTRY": self.server.url,
            "DOCKYARD_USERNAME": ADMIN_USERNAME,
            "DOCKYARD_PASSWORD": ADMIN_PASSWORD,
            "HOME": str(self.root / "home"),
            "XDG_CONFIG_HOME": str(self.root / "home" / ".config"),
        }
        result = self.runner.invoke(app, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == code, (
            f"dockyard {' '.join(args)} exited {result.exit_code}, expected {code}\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
        return result

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "-o", "json").stdout)

    def run_info(self, run_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def runs(self, task: str) -> list[dict[str, Any]]:
        response = self.http.get("/api/v1/runs", params={"task": task})
        assert response.status_code == 200, response.text
        return response.json()["runs"]

    def wait_run(self, run_id: str, timeout: float = 150.0) -> dict[str, Any]:
        """Poll the run until it ends; the ended run."""

        def ended_run() -> dict[str, Any] | None:
            info = self.run_info(run_id)
            return info if info["status"] in FINAL else None

        ended = wait_for(
            ended_run,
            timeout=timeout,
            what=f"run {run_id} to end",
            interval=0.5,
        )
        assert isinstance(ended, dict)
        return ended

    def log(self, run_id: str) -> str:
        response = self.http.get(f"/api/v1/runs/{run_id}/logs")
        assert response.status_code == 200, response.text
        return response.text

    def assert_succeeded(self, run: dict[str, Any]) -> None:
        assert run["status"] == "Succeeded", (
            f"run {run['runId']}: {run}\n--- log ---\n{self.log(run['runId'])}"
        )

    def files_of(self, repository: str, reference: str) -> dict[str, bytes]:
        """Every regular file of an image, the upper layers winning (fetched over the registry API)."""
        manifest = json.loads(fetch_manifest(self.http, repository, reference))
        files: dict[str, bytes] = {}
        for layer in manifest["layers"]:
            data = fetch_blob(self.http, repository, layer["digest"])
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar.getmembers():
                    extracted = tar.extractfile(member) if member.isfile() else None
                    if extracted is not None:
                        files[member.name.removeprefix("./")] = extracted.read()
        return files

    def layers(self, repository: str, reference: str) -> list[str]:
        return [
            layer["digest"]
            for layer in json.loads(fetch_manifest(self.http, repository, reference))["layers"]
        ]

    def push_base(self, repository: str, extra: dict[str, str]) -> None:
        """buildah: busybox from scratch (+ ``extra`` files), pushed as ``repository`` to the server."""
        rootfs = (
            self.root / f"rootfs-{hashlib.sha256(repository.encode() + repr(extra).encode()).hexdigest()[:8]}"
        )
        shutil.rmtree(rootfs, ignore_errors=True)
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
        for applet in APPLETS:
            (rootfs / "bin" / applet).symlink_to("busybox")
        # `USER root` (patch Dockerfiles) needs a passwd file
        base_files = {"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n", "etc/group": "root:x:0:\n", **extra}
        for name, text in base_files.items():
            (rootfs / name).parent.mkdir(parents=True, exist_ok=True)
            (rootfs / name).write_text(text)
        store = self.root / "base-store"

        def buildah(*args: str) -> str:
            return self.tools.buildah(store, *args).stdout.strip()

        policy = f"--signature-policy={self.tools.policy}"
        container = buildah("from", policy, "scratch")
        buildah("copy", container, f"{rootfs}/", "/")
        buildah("config", "--cmd", '["/bin/sh"]', "--env", "PATH=/bin", container)
        image = buildah("commit", policy, "--rm", container)
        buildah("push", policy, "--tls-verify=false", image, f"docker://{self.host}/{repository}")

    def git_repo(self, name: str, files: dict[str, str]) -> Path:
        """A git repository under the allowed local roots with ``files`` committed on ``main``."""
        repo = self.git_root / name
        repo.mkdir(parents=True)
        self.git(repo, "init", "-q", "-b", "main")
        for path, text in files.items():
            (repo / path).write_text(text)
        self.git(repo, "add", "-A")
        self.git(repo, "commit", "-q", "-m", "first")
        return repo

    def git(self, repo: Path, *args: str) -> str:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "e2e",
            "GIT_AUTHOR_EMAIL": "e2e@example.com",
            "GIT_COMMITTER_NAME": "e2e",
            "GIT_COMMITTER_EMAIL": "e2e@example.com",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(self.root / "home"),
        }
        return run(["git", "-C", str(repo), *args], env=env).stdout.strip()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, e2e_logs: Path) -> Iterator[Env]:
    """One registry with builds on (local git repositories allowed under ``root/git``) and a base image."""
    if not BUSYBOX.is_file():
        pytest.fail("/bin/busybox is missing: apt-get install -y busybox-static", pytrace=False)
    root = tmp_path_factory.mktemp("builds")
    (root / "git").mkdir()
    (root / "home").mkdir()
    settings = {"DOCKYARD_BUILDS_LOCAL_GIT_ROOTS": str(root / "git"), "DOCKYARD_BUILDS_CONCURRENCY": "3"}
    server = DockyardServer(
        log_dir=e2e_logs,
        port=free_port(),
        data_dir=root / "data",
        owner=__name__.replace(".", "/") + ".py",
        env=settings,
    )
    with server_group() as group:
        group.start(server)
        tools = ContainerTools(root / "tools")
        tools.authorize(server.host)
        environment = Env(server, tools, root)
        environment.push_base("base:1", {})
        # the timer's task is created first, so that it has fired by the time its test runs
        environment.cli(
            "task", "create", "-n", TIMER_TASK, "-c", "/dev/null",
            "--cmd", f"{server.host}/base:1 echo tick-from-timer", "--schedule", "* * * * *",
        )  # fmt: skip
        yield environment
        environment.http.close()
        tools.close()


# -- a. a post-commit hook builds and pushes ------------------------------------------------------

HOOK = """#!/bin/sh
commit=$(git rev-parse HEAD)
branch=$(git rev-parse --abbrev-ref HEAD)
curl -fsS -X POST -H "X-Dockyard-Trigger-Token: {secret}" -H "Content-Type: application/json" \\
  -d "{{\\"commit\\": \\"$commit\\", \\"branch\\": \\"$branch\\"}}" \\
  -o "$(git rev-parse --git-dir)/trigger-answer.json" "{url}"
"""


def _dockerfile(env: Env, *lines: str) -> str:
    return "\n".join([f"FROM {env.host}/base:1", *lines]) + "\n"


def test_a_post_commit_hook_builds_pushes_and_the_image_is_pullable(env: Env) -> None:
    repo = env.git_repo("hooked", {"Dockerfile": _dockerfile(env, "RUN echo built-by-hook > /built.txt")})
    created = env.cli_json(
        "task", "create", "-n", "hooked-task", "-c", str(repo), "-f", "Dockerfile",
        "-t", "hooked:{{.Run.ID}}", "-t", "hooked:latest", "--base-image-trigger-enabled", "false",
    )  # fmt: skip
    secret = created["triggerSecret"]
    assert created["triggerUrls"]["git"] == f"{env.server.url}/api/v1/tasks/hooked-task/triggers/git"
    hook = repo / ".git" / "hooks" / "post-commit"
    hook.write_text(HOOK.format(secret=secret, url=created["triggerUrls"]["git"]))
    hook.chmod(0o755)

    (repo / "README").write_text("second commit\n")
    env.git(repo, "add", "README")
    env.git(repo, "commit", "-q", "-m", "second")
    head = env.git(repo, "rev-parse", "HEAD")
    answer = json.loads((repo / ".git" / "trigger-answer.json").read_text())
    assert answer["trigger"] == "Commit"
    ended = env.wait_run(answer["runId"])
    env.assert_succeeded(ended)
    assert ended["triggerDetail"]["commit"] == head
    assert ended["triggerDetail"]["branch"] == "main"
    assert {(i["repository"], i["tag"]) for i in ended["outputImages"]} == {
        ("hooked", ended["runId"]),
        ("hooked", "latest"),
    }
    assert ended["baseImages"][0]["image"] == f"{env.host}/base:1"
    # pullable by a real client, and it holds what the RUN step wrote
    layout = env.root / "pulled-hooked"
    env.tools.skopeo(
        "copy", "--src-tls-verify=false", f"docker://{env.host}/hooked:latest", f"oci:{layout}:x"
    )
    assert (layout / "index.json").is_file()
    assert env.files_of("hooked", "latest")["built.txt"] == b"built-by-hook\n"


# -- g. a GitHub push webhook needs the right HMAC -------------------------------------------------


def test_a_github_push_webhook_needs_the_right_signature(env: Env) -> None:
    repo = env.git_root / "hooked"
    head = env.git(repo, "rev-parse", "HEAD")
    secret = env.cli_json("task", "trigger-secret", "-n", "hooked-task")["triggerSecret"]
    body = json.dumps(
        {"ref": "refs/heads/main", "after": head, "repository": {"full_name": "e2e/hooked"}}
    ).encode()
    url = f"{env.server.url}/api/v1/tasks/hooked-task/triggers/github"
    headers = {"X-GitHub-Event": "push", "Content-Type": "application/json"}
    runs_before = len(env.runs("hooked-task"))

    wrong = hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()
    refused = httpx.post(url, content=body, headers={**headers, "X-Hub-Signature-256": f"sha256={wrong}"})
    assert refused.status_code == 401
    assert len(env.runs("hooked-task")) == runs_before  # nothing was queued

    def signed(payload: bytes) -> str:
        return "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()

    ping = b'{"zen": "Keep it logically awesome."}'
    pinged = httpx.post(
        url, content=ping, headers={"X-GitHub-Event": "ping", "X-Hub-Signature-256": signed(ping)}
    )
    assert pinged.status_code == 200, pinged.text
    unsigned = httpx.post(url, content=body, headers=headers)
    assert unsigned.status_code == 401

    right = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    accepted = httpx.post(url, content=body, headers={**headers, "X-Hub-Signature-256": f"sha256={right}"})
    assert accepted.status_code == 202, accepted.text
    run = accepted.json()
    assert (run["trigger"], run["triggerDetail"]["commit"]) == ("Commit", head)
    # the run is not needed: cancel it from the CLI (a running run stops within a second)
    assert env.cli_json("task", "cancel-run", "--run-id", run["runId"])["runId"] == run["runId"]
    assert env.wait_run(run["runId"])["status"] == "Canceled"


# -- b. a new base image rebuilds the dependent image ----------------------------------------------


def test_pushing_a_new_base_image_rebuilds_the_dependent_image(env: Env) -> None:
    env.push_base("rebase/base:1", {"etc/base-version": "1\n"})
    dockerfile = f"FROM {env.host}/rebase/base:1\nRUN echo dependent > /dependent.txt\n"
    repo = env.git_repo("dependent", {"Dockerfile": dockerfile})
    env.cli(
        "task",
        "create",
        "-n",
        "dependent-task",
        "-c",
        str(repo),
        "-f",
        "Dockerfile",
        "-t",
        "dependent:latest",
    )
    first = env.cli("task", "run", "-n", "dependent-task")  # streams the log, exits 0 on success
    assert "dependent" in first.stdout
    assert env.files_of("dependent", "latest")["etc/base-version"] == b"1\n"
    assert env.cli_json("task", "show", "-n", "dependent-task")["baseImages"]

    env.push_base("rebase/base:1", {"etc/base-version": "2\n"})
    new_base_layers = set(env.layers("rebase/base", "1"))

    def rebuilt() -> dict[str, Any] | None:
        runs = [r for r in env.runs("dependent-task") if r["trigger"] == "BaseImageUpdate"]
        return runs[0] if runs else None

    queued = wait_for(rebuilt, timeout=30, what="a BaseImageUpdate run of dependent-task", interval=0.5)
    assert isinstance(queued, dict)
    ended = env.wait_run(queued["runId"])
    env.assert_succeeded(ended)
    assert ended["triggerDetail"]["baseImage"] == f"{env.host}/rebase/base:1"
    assert new_base_layers <= set(env.layers("dependent", "latest"))
    assert env.files_of("dependent", "latest")["etc/base-version"] == b"2\n"


# -- d. a multi-step task tests before it pushes -------------------------------------------------

TASK_YAML = """version: v1.1.0
steps:
  - id: build
    build: -t $Registry/{repo}:$ID .
  - id: test
    cmd: $Registry/{repo}:$ID /app/test.sh
    when: [build]
  - id: push
    push: ["$Registry/{repo}:$ID"]
    when: [test]
"""
DOCKERFILE_WITH_TEST = "COPY test.sh /app/test.sh\nRUN chmod +x /app/test.sh\n"


def _tested_context(env: Env, name: str, repo: str, test_script: str) -> Path:
    folder = env.root / name
    folder.mkdir()
    (folder / "Dockerfile").write_text(_dockerfile(env, DOCKERFILE_WITH_TEST))
    (folder / "test.sh").write_text(test_script)
    (folder / "acr-task.yaml").write_text(TASK_YAML.format(repo=repo))
    return folder


def test_a_multi_step_task_pushes_only_when_its_test_step_passes(env: Env) -> None:
    passing = _tested_context(env, "tested-ok", "tested", "#!/bin/sh\necho 'TESTS PASSED: 1 of 1'\n")
    done = env.cli("run", "-f", "acr-task.yaml", str(passing))
    assert "TESTS PASSED: 1 of 1" in done.stdout
    run_id = done.stderr.split("Queued a run with ID: ")[1].split()[0]
    ended = env.run_info(run_id)
    assert [s["status"] for s in ended["steps"]] == ["Succeeded"] * 3
    assert [(i["repository"], i["tag"]) for i in ended["outputImages"]] == [("tested", run_id)]
    assert fetch_manifest(env.http, "tested", run_id)

    failing = _tested_context(
        env, "tested-bad", "tested-bad", "#!/bin/sh\necho 'TESTS FAILED: 1 of 1 (expected 42)'\nexit 3\n"
    )
    failed = env.cli("run", "-f", "acr-task.yaml", str(failing), code=1)
    assert "TESTS FAILED: 1 of 1 (expected 42)" in failed.stdout
    run_id = failed.stderr.split("Queued a run with ID: ")[1].split()[0]
    ended = env.run_info(run_id)
    assert ended["status"] == "Failed"
    assert ended["outputImages"] == []
    assert "TESTS FAILED" in env.log(run_id)
    assert env.http.get("/v2/tested-bad/tags/list").status_code == 404  # nothing was pushed


def test_the_task_file_in_the_docs_runs_as_written(env: Env) -> None:
    """docs/tasks.md's acr-task.yaml, taken from the page: build, test, push two tags (its push step
    once named a tag the build never made; new-user pass, helper-56)."""
    page = (Path(__file__).parents[2] / "docs" / "tasks.md").read_text()
    section = page[page.index("## Task files") :]
    task_file = section[
        section.index("```yaml\n") + len("```yaml\n") : section.index("```\n", section.index("```yaml"))
    ]
    folder = env.root / "docs-task"
    folder.mkdir()
    (folder / "Dockerfile").write_text(_dockerfile(env, "ARG VERSION", 'RUN echo "$VERSION" > /version'))
    (folder / "run-tests.sh").write_text('#!/bin/sh\necho "tests pass for CI=$CI"\n')
    (folder / "run-tests.sh").chmod(0o755)
    (folder / "acr-task.yaml").write_text(task_file)
    done = env.cli("run", "-f", "acr-task.yaml", "--set", "version=1.2", str(folder))
    assert "tests pass for CI=true" in done.stdout
    run_id = done.stderr.split("Queued a run with ID: ")[1].split()[0]
    ended = env.run_info(run_id)
    assert ended["status"] == "Succeeded"
    assert sorted((i["repository"], i["tag"]) for i in ended["outputImages"]) == [
        ("app", run_id),
        ("app", "latest"),
    ]
    assert fetch_manifest(env.http, "app", "latest") == fetch_manifest(env.http, "app", run_id)


# -- e. a failing step fails the run, with its log ---------------------------------------------------


def test_a_failing_step_gives_a_failed_run_with_logs(env: Env) -> None:
    dockerfile = _dockerfile(env, "RUN echo boom-before-failing && exit 7")
    repo = env.git_repo("failing", {"Dockerfile": dockerfile})
    env.cli(
        "task", "create", "-n", "failing-task", "-c", str(repo), "-f", "Dockerfile", "-t", "failing:latest"
    )
    started = env.cli_json("task", "run", "-n", "failing-task", "--no-wait")
    ended = env.wait_run(started["runId"])
    assert ended["status"] == "Failed"
    assert ended["steps"][0]["status"] == "Failed"
    logs = env.cli("task", "logs", "--name", "failing-task")
    assert "boom-before-failing" in logs.stdout
    listed = env.cli_json("task", "list-runs", "--name", "failing-task", "--run-status", "Failed")
    assert [r["runId"] for r in listed] == [started["runId"]]
    assert env.http.get("/v2/failing/tags/list").status_code == 404


# -- f. dockyard build of a local folder with .dockerignore; dockyard patch -------------------------

FAKE_APK = """#!/bin/sh
echo "apk $*" >> /var/fake-apk.log
"""


def test_dockyard_build_honours_dockerignore_and_patch_runs_the_package_manager(env: Env) -> None:
    folder = env.root / "patchme"
    (folder / "secrets").mkdir(parents=True)
    (folder / "Dockerfile").write_text(
        _dockerfile(env, "COPY . /ctx/", "COPY apk /bin/apk", "RUN chmod +x /bin/apk && mkdir -p /var")
    )
    (folder / ".dockerignore").write_text("secrets\n*.log\n!keep.log\n")
    (folder / "apk").write_text(FAKE_APK)
    (folder / "secrets" / "token.txt").write_text("do-not-send")
    (folder / "debug.log").write_text("noise")
    (folder / "keep.log").write_text("kept")
    done = env.cli("build", "-t", "patchme:1", str(folder))
    assert f"pushed {env.host}/patchme:1@sha256:" in done.stderr
    files = env.files_of("patchme", "1")
    sent = {name.removeprefix("ctx/") for name in files if name.startswith("ctx/")}
    assert sent == {"Dockerfile", ".dockerignore", "apk", "keep.log"}

    patched = env.cli("patch", "--image", "patchme:1")
    assert f"pushed {env.host}/patchme:1-patched@sha256:" in patched.stderr
    files = env.files_of("patchme", "1-patched")
    assert files["var/fake-apk.log"].startswith(b"apk ")
    assert set(env.layers("patchme", "1")) < set(env.layers("patchme", "1-patched"))


# -- c. a timer fires --------------------------------------------------------------------------------


def test_a_timer_fires(env: Env) -> None:
    """The task was created when the module's server started, with a `* * * * *` timer."""
    deadline = time.monotonic() + 75

    def fired() -> dict[str, Any] | None:
        runs = [r for r in env.runs(TIMER_TASK) if r["trigger"] == "Timer"]
        return runs[-1] if runs else None

    run = wait_for(
        fired, timeout=max(1.0, deadline - time.monotonic()), what="the timer to fire", interval=1.0
    )
    assert isinstance(run, dict)
    assert run["triggerDetail"]["timer"] == "t1"
    ended = env.wait_run(run["runId"])
    env.assert_succeeded(ended)
    assert "tick-from-timer" in env.log(run["runId"])
    timers = env.cli_json("task", "timer", "list", "-n", TIMER_TASK)
    assert [(t["name"], t["schedule"]) for t in timers] == [("t1", "* * * * *")]
    env.cli("task", "timer", "update", "-n", TIMER_TASK, "--timer-name", "t1", "--enabled", "false")
