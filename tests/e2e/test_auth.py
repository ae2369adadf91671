"""Signing in with real clients: skopeo --creds, podman login, and repository-scoped tokens."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import ContainerTools, DockyardServer, fetch_manifest
from tests.support.images import make_image, write_oci_layout

pytestmark = pytest.mark.e2e


def _layout(tmp_path: Path, seed: str) -> Path:
    path = tmp_path / f"layout-{seed}"
    write_oci_layout(path, {"img": make_image(seed)})
    return path


def _podman_login_and_push(
    tools: ContainerTools,
    store: Path,
    host: str,
    login: tuple[str, str],
    layout: Path,
    registry_http: httpx.Client,
    target: str,
) -> None:
    """A wrong password is refused; ``podman login`` with the right one, then a push of the layout's
    image to ``target`` (``repo:tag``), checked by its config digest."""
    user, password = login
    wrong = tools.podman_unchecked(store, "login", "--tls-verify=false", "-u", user, "-p", "wrong", host)
    assert wrong.returncode != 0
    login_args = ("login", "--tls-verify=false", "-u", user, "--password-stdin", host)
    tools.podman(store, *login_args, stdin=password + "\n")
    assert host in json.loads(tools.auth_file.read_text())["auths"]
    policy = f"--signature-policy={tools.policy}"
    tools.podman(store, "pull", "--tls-verify=false", policy, f"oci:{layout}:img")
    image_id = tools.podman(store, "images", "-q").stdout.split()[0]
    tools.podman(store, "push", "--tls-verify=false", policy, image_id, f"docker://{host}/{target}")
    repository, tag = target.rsplit(":", 1)
    manifest = json.loads(fetch_manifest(registry_http, repository, tag))
    assert manifest["config"]["digest"].split(":")[1].startswith(image_id)


def _fresh_tools(tmp_path: Path) -> ContainerTools:
    """Tools with an empty auth file: nothing signed in."""
    return ContainerTools(tmp_path / "tools")


def test_skopeo_with_creds(
    dockyard_server: DockyardServer, registry_http: httpx.Client, tmp_path: Path
) -> None:
    tools = _fresh_tools(tmp_path)
    try:
        host = dockyard_server.host
        layout = _layout(tmp_path, "creds")
        target = f"docker://{host}/auth/skopeo:v1"
        anonymous = tools.skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:img", target, check=False)
        assert anonymous.returncode != 0
        assert (
            "unauthorized" in anonymous.stderr.lower()
            or "authentication required" in anonymous.stderr.lower()
        )
        wrong = tools.skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "dockyard:wrong",
            f"oci:{layout}:img",
            target,
            check=False,
        )
        assert wrong.returncode != 0
        tools.skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "dockyard:e2e-admin-password",
            f"oci:{layout}:img",
            target,
        )
        listed = tools.skopeo(
            "list-tags",
            "--tls-verify=false",
            "--creds",
            "dockyard:e2e-admin-password",
            f"docker://{host}/auth/skopeo",
        )
        assert json.loads(listed.stdout)["Tags"] == ["v1"]
        failures = registry_http.get("/api/v1/audit", params={"action": "login"}).json()["events"]
        assert any(  # counted per client and written in aggregate; reading the log writes them first
            e["outcome"] == "failure" and "dockyard" in e["detail"].get("names", []) for e in failures
        )
    finally:
        tools.close()


def test_podman_login_push_and_pull_as_a_user(
    dockyard_server: DockyardServer, registry_http: httpx.Client, tmp_path: Path
) -> None:
    created = registry_http.post("/api/v1/users", json={"name": "podman-user"})
    assert created.status_code == 201, created.text
    secret = created.json()["credentials"][0]["value"]
    assigned = registry_http.post(
        "/api/v1/role-assignments",
        json={"assignee": "podman-user", "role": "AcrPush", "scope": "repository:auth/*"},
    )
    assert assigned.status_code == 201
    tools = _fresh_tools(tmp_path)
    try:
        host = dockyard_server.host
        layout = _layout(tmp_path, "podman-auth")
        store = tmp_path / "store"
        policy = f"--signature-policy={tools.policy}"
        _podman_login_and_push(
            tools, store, host, ("podman-user", secret), layout, registry_http, "auth/podman:v1"
        )
        tools.podman(store, "rmi", "-a", "-f")
        tools.podman(store, "pull", "--tls-verify=false", policy, f"{host}/auth/podman:v1")
        outside = tools.podman_unchecked(
            store,
            "push",
            "--tls-verify=false",
            policy,
            f"{host}/auth/podman:v1",
            f"{host}/elsewhere/podman:v1",
        )
        assert outside.returncode != 0  # AcrPush on auth/* only
        tools.podman(store, "logout", host)
        assert host not in json.loads(tools.auth_file.read_text()).get("auths", {})
    finally:
        tools.close()


def test_clients_still_sign_in_and_push_with_anonymous_pull_on(
    dockyard_server: DockyardServer, registry_http: httpx.Client, tmp_path: Path
) -> None:
    """Anonymous pull on: GET /v2/ still challenges (containers/image decides from it alone
    whether to send credentials), so podman and skopeo push with theirs, a wrong podman login is
    refused, and a pull without any credentials works."""
    assert registry_http.patch("/api/v1/registry", json={"anonymousPullEnabled": True}).status_code == 200
    tools = _fresh_tools(tmp_path)
    try:
        host = dockyard_server.host
        layout = _layout(tmp_path, "anonymous-on")
        store = tmp_path / "store"
        tools.skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "dockyard:e2e-admin-password",
            f"oci:{layout}:img",
            f"docker://{host}/auth/anonymous-on:v1",
        )
        inspected = tools.skopeo(
            "inspect", "--tls-verify=false", "--no-creds", f"docker://{host}/auth/anonymous-on:v1"
        )
        assert json.loads(inspected.stdout)["Digest"].startswith("sha256:")
        login = ("dockyard", "e2e-admin-password")
        _podman_login_and_push(tools, store, host, login, layout, registry_http, "auth/anonymous-on:v2")
        refused = tools.skopeo(  # an anonymous push is still refused
            "copy",
            "--dest-tls-verify=false",
            "--dest-no-creds",
            f"oci:{layout}:img",
            f"docker://{host}/auth/anonymous-on:v3",
            check=False,
        )
        assert refused.returncode != 0
    finally:
        registry_http.patch("/api/v1/registry", json={"anonymousPullEnabled": False})
        tools.close()


def test_repository_scoped_token(
    dockyard_server: DockyardServer, registry_http: httpx.Client, tmp_path: Path
) -> None:
    host = dockyard_server.host
    tools = ContainerTools(tmp_path / "admin-tools")
    tools.authorize(host)
    token_tools = _fresh_tools(tmp_path)
    try:
        for repo in ("team/a", "team/b"):
            tools.skopeo(
                "copy",
                "--dest-tls-verify=false",
                f"oci:{_layout(tmp_path, repo.replace('/', '-'))}:img",
                f"docker://{host}/{repo}:v1",
            )
        scope_map = registry_http.post(
            "/api/v1/scope-maps",
            json={"name": "team-a-pull", "actions": {"team/a": ["content/read", "metadata/read"]}},
        )
        assert scope_map.status_code == 201
        token = registry_http.post(
            "/api/v1/tokens", json={"name": "team-a-reader", "scopeMap": "team-a-pull"}
        ).json()
        password = token["credentials"][0]["value"]
        creds = f"team-a-reader:{password}"
        out = tmp_path / "out"
        token_tools.skopeo(
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            creds,
            f"docker://{host}/team/a:v1",
            f"oci:{out}:a",
        )
        assert json.loads((out / "index.json").read_text())["manifests"]
        listed = token_tools.skopeo(
            "list-tags", "--tls-verify=false", "--creds", creds, f"docker://{host}/team/a"
        )
        assert json.loads(listed.stdout)["Tags"] == ["v1"]
        push = token_tools.skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            creds,
            f"oci:{out}:a",
            f"docker://{host}/team/a:v2",
            check=False,
        )
        assert push.returncode != 0
        read_b = token_tools.skopeo(
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            creds,
            f"docker://{host}/team/b:v1",
            f"oci:{out}:b",
            check=False,
        )
        assert read_b.returncode != 0
        assert "v2" not in registry_http.get("/v2/team/a/tags/list").json()["tags"]
        with httpx.Client(base_url=dockyard_server.url, auth=("team-a-reader", password)) as as_token:
            assert as_token.get("/v2/_catalog").status_code == 403
            assert as_token.get("/v2/team/b/tags/list").status_code == 403
            assert as_token.get("/v2/team/a/tags/list").status_code == 200
    finally:
        tools.close()
        token_tools.close()
