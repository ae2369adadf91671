"""The executor with the real builder: buildah builds on a busybox base pulled from Dockyard, pushes,
podman runs the result; failures, timeouts and cancel kill real processes; contexts from git."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from dockyard.builds.buildah import BuildahBuilder
from dockyard.builds.contexts import prepare_context
from dockyard.builds.executor import SKIPPED, Executor
from dockyard.builds.interfaces import ContextSource, Deadline, PreparedContext, RegistryAccess
from dockyard.builds.spec import CANCELED, FAILED, SUCCEEDED, TIMEOUT, RunVariables, Step, TaskSpec
from dockyard.config import Settings
from tests.e2e.support import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    ContainerTools,
    DockyardServer,
    fetch_manifest,
    push_busybox_base,
)

pytestmark = pytest.mark.e2e

BASE = "executor/busybox:1"
SECRET = "s3cr3t-build-value"
CHECK = 'test -f /built && cat /workspace/hello.txt && test "$(cat /msg)" = "$EXPECTED" && echo secret-ok'
ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


class Log:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text


@pytest.fixture(scope="module")
def base_image(
    container_tools: ContainerTools, dockyard_server: DockyardServer, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """``host/executor/busybox:1``: busybox (as /bin/busybox and /bin/sh) from scratch, pushed to Dockyard."""
    store = tmp_path_factory.mktemp("base-store")
    return push_busybox_base(container_tools, store, "executor-base", f"{dockyard_server.host}/{BASE}")


def access(server: DockyardServer) -> RegistryAccess:
    return RegistryAccess(host=server.host, username=ADMIN_USERNAME, password=ADMIN_PASSWORD, plain_http=True)


def variables(server: DockyardServer, run_id: str) -> RunVariables:
    return RunVariables(
        run_id=run_id,
        registry=server.host,
        registry_name="dockyard",
        date="20260101-000000z",
        values={"secretMsg": SECRET},
        secret_values=frozenset({"secretMsg"}),
    )


def run_spec(
    server: DockyardServer,
    tmp_path: Path,
    spec: TaskSpec,
    run_id: str,
    *,
    context: Path | None = None,
    seconds: float = 120,
    canceled=lambda: False,
):
    workdir = tmp_path / f"work-{run_id}"
    builder = BuildahBuilder(workdir, access(server), "linux/amd64")
    runroot = builder.runroot
    log = Log()
    context_dir = context or tmp_path / "empty"
    context_dir.mkdir(exist_ok=True)
    outcome = Executor(builder, access(server), log).execute(
        spec,
        PreparedContext(path=context_dir),
        variables(server, run_id),
        canceled,
        time.monotonic() + seconds,
    )
    assert not workdir.exists(), "close() removes the private store"
    assert not runroot.exists(), "close() removes the runroot"
    assert ADMIN_PASSWORD not in log.text
    assert SECRET not in log.text
    return outcome, log.text


def test_build_push_run(
    base_image: str, dockyard_server: DockyardServer, registry_http: httpx.Client, tmp_path: Path
) -> None:
    context = tmp_path / "ctx"
    (context / "app").mkdir(parents=True)
    (context / "app" / "Dockerfile").write_text(
        "ARG BASE\nFROM $BASE\nARG MSG\n"
        'RUN /bin/busybox --install -s /bin && echo built > /built && echo "$MSG" > /msg\n'
    )
    (context / "hello.txt").write_text("from the context\n")
    image = "{{.Run.Registry}}/executor/app:{{.Run.ID}}"
    spec = TaskSpec(
        steps=(
            Step(
                id="build",
                kind="build",
                command=f"-t {image} -f app/Dockerfile --build-arg BASE={base_image} "
                "--build-arg MSG={{.Values.secretMsg}} --label stage=e2e app",
            ),
            Step(id="push", kind="push", images=(image,)),
            Step(
                id="check",
                kind="cmd",
                command=f"{image} sh -c '{CHECK}'",
                env=("EXPECTED={{.Values.secretMsg}}",),
            ),
        )
    )
    outcome, log = run_spec(dockyard_server, tmp_path, spec, "dyx1", context=context)
    assert outcome.status == SUCCEEDED, log
    assert "from the context" in log
    assert "secret-ok" in log
    assert len(outcome.images) == 1
    pushed = outcome.images[0]
    assert (pushed.repository, pushed.tag) == ("executor/app", "dyx1")
    manifest = fetch_manifest(registry_http, "executor/app", "dyx1")
    assert pushed.digest == "sha256:" + hashlib.sha256(manifest).hexdigest()
    base_digest = registry_http.head("/v2/executor/busybox/manifests/1", headers={"Accept": ACCEPT}).headers[
        "Docker-Content-Digest"
    ]
    assert outcome.base_images == ((base_image, base_digest),)
    assert "Step ID: check marked as successful" in log
    assert "Run ID: dyx1 was successful after" in log


def test_failure_timeout_and_cancel_kill_containers(
    base_image: str, dockyard_server: DockyardServer, tmp_path: Path
) -> None:
    sleeper = f"{base_image} /bin/busybox sleep 120"
    started = time.monotonic()
    spec = TaskSpec(
        steps=(
            Step(id="sleeper", kind="cmd", command=sleeper, when=("-",)),
            Step(id="bad", kind="cmd", command=f"{base_image} sh -c 'exit 3'", when=("-",)),
            Step(id="never", kind="cmd", command=f"{base_image} sh -c 'echo never-ran'"),
        )
    )
    outcome, log = run_spec(dockyard_server, tmp_path, spec, "dyx2")
    assert outcome.status == FAILED, log
    assert {s.id: s.status for s in outcome.steps} == {"sleeper": CANCELED, "bad": FAILED, "never": SKIPPED}
    assert outcome.error == "step bad failed: exit code 3"
    assert "never-ran" not in log

    timed = TaskSpec(steps=(Step(id="slow", kind="cmd", command=sleeper, timeout=3, retries=1),))
    outcome, log = run_spec(dockyard_server, tmp_path, timed, "dyx3")
    assert outcome.status == FAILED, log
    assert outcome.steps[0].status == TIMEOUT
    assert outcome.steps[0].attempts == 2

    begin = time.monotonic()
    outcome, log = run_spec(
        dockyard_server,
        tmp_path,
        TaskSpec(steps=(Step(id="slow", kind="cmd", command=sleeper),)),
        "dyx4",
        canceled=lambda: time.monotonic() > begin + 3,
    )
    assert outcome.status == CANCELED, log
    assert time.monotonic() - begin < 30
    assert time.monotonic() - started < 110
    leftovers = subprocess.run(
        ["pgrep", "-f", "busybox sleep 120"], check=False, capture_output=True, text=True
    )
    assert leftovers.stdout.strip() == "", "the killed containers' processes are gone"


def test_run_deadline_is_timeout(base_image: str, dockyard_server: DockyardServer, tmp_path: Path) -> None:
    spec = TaskSpec(steps=(Step(id="slow", kind="cmd", command=f"{base_image} /bin/busybox sleep 120"),))
    outcome, log = run_spec(dockyard_server, tmp_path, spec, "dyx5", seconds=4)
    assert outcome.status == TIMEOUT, log


def test_git_context_build(base_image: str, dockyard_server: DockyardServer, tmp_path: Path) -> None:
    repo = tmp_path / "roots" / "repo"
    (repo / "svc").mkdir(parents=True)
    (repo / "svc" / "Dockerfile").write_text(f"FROM {base_image}\nCOPY marker /marker\n")
    (repo / "svc" / "marker").write_text("v1\n")
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": str(tmp_path)}
    author = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "one"]):
        subprocess.run(["git", *author, *args], cwd=repo, env=env, check=True, capture_output=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    settings = Settings(data_dir=tmp_path / "data", builds_local_git_roots=[tmp_path / "roots"])
    log = Log()
    prepared = prepare_context(
        ContextSource(kind="git", location=str(repo), ref=commit, folder="svc"),
        tmp_path / "git-ctx",
        log=log,
        read_source=lambda _d: iter(()),
        settings=settings,
        deadline=Deadline(at=time.monotonic() + 60),
    )
    assert prepared.commit == commit
    image = "{{.Run.Registry}}/executor/git:{{.Run.ID}}"
    spec = TaskSpec(
        steps=(
            Step(id="build", kind="build", command=f"-t {image} ."),
            Step(id="run", kind="cmd", command=f"{image} /bin/busybox cat /marker"),
        )
    )
    outcome, text = run_spec(dockyard_server, tmp_path, spec, "dyx6", context=prepared.path)
    assert outcome.status == SUCCEEDED, text
    assert "v1" in text
    assert outcome.images == ()  # built and run, never pushed


def test_oci_artifact_context_on_this_registry(
    dockyard_server: DockyardServer, registry_http: httpx.Client, tmp_path: Path
) -> None:
    import gzip
    import io
    import tarfile

    from tests.e2e.support import push_blob, put_manifest

    def layer(name: str, data: bytes) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as archive:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        return gzip.compress(out.getvalue(), mtime=0)

    layers = [layer("Dockerfile", b"FROM scratch\n"), layer("Dockerfile", b"FROM scratch\nLABEL second=1\n")]
    config = b"{}"
    repository = "executor/context"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.dockyard.context",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": push_blob(registry_http, repository, config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": push_blob(registry_http, repository, data),
                "size": len(data),
            }
            for data in layers
        ],
    }
    put_manifest(
        registry_http,
        repository,
        "v1",
        json.dumps(manifest).encode(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    prepared = prepare_context(
        ContextSource(kind="oci", location=f"oci://{dockyard_server.host}/{repository}:v1"),
        tmp_path / "oci-ctx",
        log=Log(),
        read_source=lambda _d: iter(()),
        settings=Settings(data_dir=tmp_path / "data"),
        deadline=Deadline(at=time.monotonic() + 60),
        registry=access(dockyard_server),
    )
    assert (prepared.path / "Dockerfile").read_text() == "FROM scratch\nLABEL second=1\n"  # layers in order
