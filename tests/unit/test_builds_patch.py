"""Patch tasks (dockyard.builds.patch): the generated Dockerfile, its upgrade script, the patched tag."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dockyard.builds.dockerfile import final_stage_bases
from dockyard.builds.patch import NO_PACKAGE_MANAGER, patch_dockerfile, patched_tag, upgrade_script

DIGEST = "sha256:" + "ab" * 32


def run_script(tmp_path: Path, tools: list[str]) -> tuple[int, list[str], str]:
    """Run the RUN script with only fake ``tools`` (and a fake ``rm``) on PATH; their calls, in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for tool in [*tools, "rm"]:
        fake = bin_dir / tool
        fake.write_text(f'#!/bin/sh\necho "${{DEBIAN_FRONTEND:-}}|{tool} $*" >> {log}\n')
        fake.chmod(0o755)
    dockerfile = patch_dockerfile("base:1")
    script = dockerfile.split("\nRUN ", 1)[1]
    result = subprocess.run(
        ["/bin/sh", "-c", script],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return result.returncode, calls, result.stderr


def test_dockerfile_shape() -> None:
    text = patch_dockerfile("reg:5000/app:1")
    lines = text.splitlines()
    assert lines[0] == "FROM reg:5000/app:1"
    assert lines[1] == "USER root"
    assert lines[2].startswith("RUN if command -v apt-get >/dev/null 2>&1; then ")
    assert text.endswith("fi\n")
    assert "USER" not in text.split("\nRUN ", 1)[1]
    assert upgrade_script() in text


def test_dockerfile_with_user() -> None:
    text = patch_dockerfile("app@" + DIGEST, user="1000:1000")
    assert text.startswith(f"FROM app@{DIGEST}\nUSER root\nRUN ")
    assert text.endswith("fi\nUSER 1000:1000\n")
    assert patch_dockerfile("app", user="nobody").endswith("\nUSER nobody\n")


def test_dockerfile_final_stage_is_the_image() -> None:
    assert final_stage_bases(patch_dockerfile("reg/app:1"), {}) == ("reg/app:1",)


@pytest.mark.parametrize("image", ["", "a b", "a\nRUN rm -rf /", "a\\", "x" * 513, "a\tb"])
def test_dockerfile_refuses_injection_in_the_image(image: str) -> None:
    with pytest.raises(ValueError, match="invalid image reference"):
        patch_dockerfile(image)


@pytest.mark.parametrize("user", ["", "root\nRUN id", "a b", "-x", "a:b:c", "u" * 65, "a:"])
def test_dockerfile_refuses_bad_users(user: str) -> None:
    with pytest.raises(ValueError, match="invalid user"):
        patch_dockerfile("app", user=user)


@pytest.mark.parametrize(
    ("tools", "expected"),
    [
        (
            ["apt-get"],
            [
                "noninteractive|apt-get update",
                "noninteractive|apt-get -y upgrade",
                "|rm -rf /var/lib/apt/lists/*",
            ],
        ),
        (["apk"], ["|apk upgrade --no-cache"]),
        (["dnf", "yum", "microdnf"], ["|dnf -y upgrade", "|dnf clean all"]),
        (["microdnf"], ["|microdnf -y upgrade", "|microdnf clean all"]),
        (["microdnf", "yum"], ["|microdnf -y upgrade", "|microdnf clean all"]),
        (["yum"], ["|yum -y upgrade", "|yum clean all"]),
        (["zypper"], ["|zypper -n update", "|zypper clean -a"]),
        (
            ["apk", "apt-get"],
            [
                "noninteractive|apt-get update",
                "noninteractive|apt-get -y upgrade",
                "|rm -rf /var/lib/apt/lists/*",
            ],
        ),
    ],
)
def test_upgrade_script_uses_the_first_package_manager(
    tmp_path: Path, tools: list[str], expected: list[str]
) -> None:
    code, calls, _ = run_script(tmp_path, tools)
    assert code == 0
    # The fake rm sees the expanded glob: compare up to the folder.
    assert [call.split("/lists/")[0] for call in calls] == [call.split("/lists/")[0] for call in expected]


def test_upgrade_script_fails_without_a_package_manager(tmp_path: Path) -> None:
    code, calls, stderr = run_script(tmp_path, [])
    assert code == 1
    assert calls == []
    assert stderr.strip() == NO_PACKAGE_MANAGER


def test_upgrade_script_stops_when_the_update_fails(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text('#!/bin/sh\n[ "$1" = update ] && exit 100\necho upgraded\n')
    (bin_dir / "apt-get").chmod(0o755)
    script = patch_dockerfile("x").split("\nRUN ", 1)[1]
    result = subprocess.run(
        ["/bin/sh", "-c", script],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 100
    assert "upgraded" not in result.stdout


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("app:1", "app:1-patched"),
        ("team/app:v1.2", "team/app:v1.2-patched"),
        ("app", "app:latest-patched"),
        ("reg:5000/app", "reg:5000/app:latest-patched"),
        ("reg:5000/app:3", "reg:5000/app:3-patched"),
        (f"app@{DIGEST}", "app:patched"),
        (f"app:1@{DIGEST}", "app:patched"),
        (f"reg:5000/team/app@{DIGEST}", "reg:5000/team/app:patched"),
        ("app:" + "t" * 120, "app:" + "t" * 120 + "-patched"),
    ],
)
def test_patched_tag(image: str, tag: str) -> None:
    assert patched_tag(image) == tag


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("", "invalid image reference"),
        ("a b:1", "invalid image reference"),
        ("app@sha256:short", "invalid digest"),
        ("app@latest", "invalid digest"),
        ("app:" + "t" * 121, "cannot derive a patched tag"),
        (":1", "cannot derive a patched tag"),
        ("app:.bad", "cannot derive a patched tag"),
    ],
)
def test_patched_tag_errors(image: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        patched_tag(image)
