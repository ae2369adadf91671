"""`dockyard login` replaces an older `podman login` in the file podman reads first.

As root without XDG_RUNTIME_DIR, podman and skopeo read ``/run/containers/0/auth.json`` before
anything under HOME. The test runs podman, `dockyard login` and skopeo in a private mount
namespace whose ``/run`` is an empty tmpfs, so the real ``/run`` is never touched. HOME is a
temporary folder, and DOCKER_CONFIG stays unset (podman 4 would use it as its only auth file).
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import pytest

from tests.cli.conftest import Cli
from tests.e2e.support import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    DockyardServer,
    dockyard_command,
    require_tool,
    run,
)
from tests.support.images import make_image, write_oci_layout

pytestmark = pytest.mark.e2e


def test_dockyard_login_wins_over_a_stale_podman_login(
    admin: Cli, registry: DockyardServer, tmp_path: Path
) -> None:
    if os.getuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("this test needs root and unshare(1) for a private /run")
    podman = require_tool("podman", "podman")
    skopeo = require_tool("skopeo", "skopeo")

    created = admin.json("user", "create", "--name", "cli-stale-dave")
    old_secret = next(c["value"] for c in created["credentials"] if c["name"] == "secret")
    admin.json("role", "assignment", "create", "--assignee", "cli-stale-dave", "--role", "AcrPush")

    layout = tmp_path / "layout"
    write_oci_layout(layout, {"v1": make_image("cli-stale-login")})
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    home = tmp_path / "home"
    home.mkdir()
    storage = tmp_path / "storage"
    q = shlex.quote
    dockyard = " ".join(q(part) for part in dockyard_command())
    podman_store = f"--root {q(str(storage / 'root'))} --runroot /run/podman --storage-driver vfs"
    target = f"docker://{registry.host}/cli-stale/app:v1"
    script = f"""
set -eu
mount -t tmpfs -o mode=755 tmpfs /run
echo {q(old_secret)} | {q(podman)} {podman_store} login --tls-verify=false \\
    -u cli-stale-dave --password-stdin {q(registry.host)}
test -f /run/containers/0/auth.json
DOCKYARD_USERNAME={q(ADMIN_USERNAME)} DOCKYARD_PASSWORD={q(ADMIN_PASSWORD)} \\
    {dockyard} user credential reset --name cli-stale-dave --registry {q(registry.url)} >/dev/null
echo {q(ADMIN_PASSWORD)} | {dockyard} login {q(registry.host)} -u {q(ADMIN_USERNAME)} --password-stdin
{q(skopeo)} --policy {q(str(policy))} copy --dest-tls-verify=false oci:{q(str(layout))}:v1 {q(target)}
"""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DOCKYARD_")
        and key not in ("XDG_RUNTIME_DIR", "REGISTRY_AUTH_FILE", "DOCKER_CONFIG")
    }
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        TMPDIR=str(tmp_path),
    )
    done = run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script], env=env, timeout=180)
    assert "Login for" in done.stderr
    assert "/run/containers/0/auth.json" in done.stderr, "the login went where podman reads first"
    assert admin.json("repository", "show-tags", "--repository", "cli-stale/app") == ["v1"]
