"""Patch tasks: a generated Dockerfile that upgrades an image's OS packages (pure).

The patched image runs as ``root``: the base image's ``USER`` is not knowable without reading its
config, so ``patch_dockerfile(image, user=…)`` appends ``USER <user>`` when the caller knows it.
"""

from __future__ import annotations

import re

from dockyard.oci.digest import parse_digest
from dockyard.oci.errors import RegistryError
from dockyard.oci.names import TAG_GRAMMAR

NO_PACKAGE_MANAGER = "no supported package manager (apt-get, apk, dnf, microdnf, yum, zypper)"

#: One branch per package manager, tried in this order (dnf before yum: Fedora/RHEL 8+ have both).
_UPGRADES = (
    (
        "apt-get",
        "DEBIAN_FRONTEND=noninteractive apt-get update && "
        "DEBIAN_FRONTEND=noninteractive apt-get -y upgrade && rm -rf /var/lib/apt/lists/*",
    ),
    ("apk", "apk upgrade --no-cache"),
    ("dnf", "dnf -y upgrade && dnf clean all"),
    ("microdnf", "microdnf -y upgrade && microdnf clean all"),
    ("yum", "yum -y upgrade && yum clean all"),
    ("zypper", "zypper -n update && zypper clean -a"),
)
#: A user as Dockerfile's USER takes it: a name or uid, optionally ``:group``.
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})?\Z")
_IMAGE = re.compile(r"[^\s\\]{1,512}\Z")


def upgrade_script() -> str:
    """The shell script that upgrades the packages with the first package manager found."""
    lines = []
    for index, (tool, command) in enumerate(_UPGRADES):
        keyword = "if" if index == 0 else "elif"
        lines.append(f"{keyword} command -v {tool} >/dev/null 2>&1; then {command};")
    lines.append(f'else echo "{NO_PACKAGE_MANAGER}" >&2; exit 1;')
    lines.append("fi")
    return " \\\n    ".join(lines)


def patch_dockerfile(image: str, user: str | None = None) -> str:
    """``FROM image``, ``USER root``, one ``RUN`` upgrading the OS packages, then ``USER user`` if given."""
    if not _IMAGE.match(image):
        raise ValueError(f"invalid image reference {image[:120]!r}")
    if user is not None and not _USER.match(user):
        raise ValueError(f"invalid user {user[:80]!r}")
    text = f"FROM {image}\nUSER root\nRUN {upgrade_script()}\n"
    if user is not None:
        text += f"USER {user}\n"
    return text


def patched_tag(image: str) -> str:
    """The default name of a patched image: ``repo:tag`` → ``repo:tag-patched``.

    ``repo@sha256:…`` → ``repo:patched``; ``repo`` alone means ``repo:latest``.
    ValueError if the result would not be a valid tag.
    """
    if not image or any(char.isspace() for char in image):
        raise ValueError(f"invalid image reference {image[:120]!r}")
    name, at, digest = image.partition("@")
    if at:
        try:
            parse_digest(digest)
        except RegistryError:
            raise ValueError(f"invalid digest in {image[:120]!r}") from None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        repository, tag = name[:colon], name[colon + 1 :]
    else:
        repository, tag = name, "latest"
    patched = "patched" if at else f"{tag}-patched"
    if not repository or not TAG_GRAMMAR.match(patched):
        raise ValueError(f"cannot derive a patched tag from {image[:120]!r}")
    return f"{repository}:{patched}"
