"""Where `dockyard login` keeps credentials: the files docker, podman, skopeo and buildah read first.

Each file maps a registry host to ``{"auth": base64("user:password")}``. After a login the
user is the null GUID and the password a refresh token, as `az acr login` stores it, so
docker, podman, skopeo, buildah and every `dockyard` command share one login. Other
entries in the files are kept; files are replaced atomically and readable only by their owner.

The containers tools (containers-auth.json(5)) read ``$REGISTRY_AUTH_FILE`` alone when it is
set; otherwise ``$XDG_RUNTIME_DIR/containers/auth.json`` (``/run/containers/UID/auth.json``
without XDG_RUNTIME_DIR), then ``$XDG_CONFIG_HOME/containers/auth.json``, then docker's file.
Docker reads ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``. A login is written
to the first file each tool reads, and replaces the host's entry wherever a later file has one,
so no stale login (an older `podman login`) can win.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockyard.cli.output import fail

#: Docker and ACR log in with this user name and a refresh token as the password.
NULL_GUID = "00000000-0000-0000-0000-000000000000"
ENV_USERNAME = "DOCKYARD_USERNAME"
ENV_PASSWORD = "DOCKYARD_PASSWORD"  # noqa: S105 - the name of an environment variable


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    #: Where they came from: "environment" or the file they were read from.
    source: str

    @property
    def from_environment(self) -> bool:
        return self.source == "environment"


#: Where the containers tools keep per-user runtime files without XDG_RUNTIME_DIR.
RUN_CONTAINERS = Path("/run/containers")


@dataclass(frozen=True)
class AuthFile:
    """One file that holds registry logins, and whether a login creates its entry there."""

    path: Path
    #: True: the first file some tool reads, so a login always writes it. False: a fallback that
    #: a login only updates when it already has an entry for the host.
    primary: bool


def docker_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def _config_home() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME")
    return Path(config_home) if config_home else Path.home() / ".config"


def _runtime_auth_path() -> Path | None:
    """The containers tools' runtime auth file, or None when they cannot use one.

    A set but missing XDG_RUNTIME_DIR makes them skip it; without XDG_RUNTIME_DIR they use
    ``/run/containers/UID``, which only root can create.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "containers" / "auth.json" if Path(runtime).is_dir() else None
    folder = RUN_CONTAINERS / str(os.getuid())
    if os.getuid() == 0 or os.access(folder, os.W_OK):
        return folder / "auth.json"
    return None


def containers_auth_path() -> Path:
    """The file podman, skopeo and buildah read first (and `podman login` writes)."""
    explicit = os.environ.get("REGISTRY_AUTH_FILE")
    if explicit:
        return Path(explicit)
    return _runtime_auth_path() or _config_home() / "containers" / "auth.json"


def auth_files() -> list[AuthFile]:
    """Every file a tool reads logins from, in the containers tools' reading order."""
    first = containers_auth_path()
    files = [AuthFile(first, primary=True)]
    if not os.environ.get("REGISTRY_AUTH_FILE"):
        fallback = _config_home() / "containers" / "auth.json"
        if fallback != first:
            files.append(AuthFile(fallback, primary=False))
    docker = docker_config_path()
    if docker not in {f.path for f in files}:
        files.append(AuthFile(docker, primary=True))
    return files


def cli_config_path() -> Path:
    """Where the CLI remembers its default registry: ``$XDG_CONFIG_HOME/dockyard/cli.json``."""
    return _config_home() / "dockyard" / "cli.json"


def default_registry() -> str | None:
    """The registry `dockyard login` last signed in to, if any."""
    value = read_json(cli_config_path()).get("registry")
    return value if isinstance(value, str) and value else None


def remember_registry(url: str) -> None:
    """Make ``url`` the registry commands use when neither --registry nor DOCKYARD_REGISTRY says."""
    path = cli_config_path()
    config = read_json(path)
    config["registry"] = url
    write_json(path, config)


def forget_registry(url: str) -> None:
    path = cli_config_path()
    config = read_json(path)
    if config.get("registry") == url:
        del config["registry"]
        write_json(path, config)


def read_json(path: Path) -> dict[str, Any]:
    """The file's JSON object; {} when it does not exist. A damaged file is an error, never overwritten."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc}") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise fail(f"{path} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(data, dict):
        raise fail(f"{path} does not hold a JSON object; fix or remove it")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``data``, mode 600 (its folder is created 700 if missing)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(data, file, indent="\t")
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the platform allows it
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _host_keys(host: str) -> set[str]:
    """The keys that name ``host`` in an auths map (docker also writes scheme-prefixed keys)."""
    return {host, f"{host}/", f"http://{host}", f"http://{host}/", f"https://{host}", f"https://{host}/"}


def encode_auth(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _decode_entry(entry: Any) -> tuple[str, str] | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            decoded = base64.b64decode(entry["auth"], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        username, sep, password = decoded.partition(":")
        return (username, password) if sep else None
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return entry["username"], entry["password"]
    return None


def stored_credentials(host: str) -> Credentials | None:
    """What `dockyard login` (or docker/podman login) stored for ``host``, from the first file that has it."""
    keys = _host_keys(host)
    for path in (f.path for f in auth_files()):
        auths = read_json(path).get("auths")
        if not isinstance(auths, dict):
            continue
        ordered = [host, *sorted(k for k in auths if k in keys and k != host)]
        for key in ordered:
            found = _decode_entry(auths.get(key))
            if found is not None:
                return Credentials(found[0], found[1], str(path))
    return None


def environment_credentials() -> Credentials | None:
    """DOCKYARD_USERNAME and DOCKYARD_PASSWORD, when both are set."""
    username = os.environ.get(ENV_USERNAME)
    password = os.environ.get(ENV_PASSWORD)
    if not username and not password:
        return None
    if not username or not password:
        raise fail(f"set both {ENV_USERNAME} and {ENV_PASSWORD}, or neither")
    return Credentials(username, password, "environment")


def credentials_for(host: str) -> Credentials | None:
    """The environment's credentials if set, else the stored login for ``host``, else None."""
    return environment_credentials() or stored_credentials(host)


def _auths(data: dict[str, Any]) -> dict[str, Any]:
    auths = data.get("auths")
    return auths if isinstance(auths, dict) else {}


def _read_all() -> list[tuple[AuthFile, dict[str, Any]]]:
    """Every auth file's content, read before any is written: a damaged one stops the change whole."""
    return [(file, read_json(file.path)) for file in auth_files()]


def store(host: str, username: str, password: str) -> list[Path]:
    """Save the login where each tool reads first, and over any older entry; return the files written."""
    entry = {"auth": encode_auth(username, password)}
    written = []
    for file, data in _read_all():
        auths = _auths(data)
        present = [key for key in auths if key in _host_keys(host)]
        if not file.primary and not present:
            continue
        for key in present:
            del auths[key]  # a stale scheme-prefixed entry could be read before the new one
        auths[host] = entry
        data["auths"] = auths
        write_json(file.path, data)
        written.append(file.path)
    return written


def remove(host: str) -> list[Path]:
    """Remove ``host``'s entries from every file a tool reads; return the files that had one."""
    changed = []
    for file, data in _read_all():
        auths = _auths(data)
        present = [key for key in auths if key in _host_keys(host)]
        if not present:
            continue
        for key in present:
            del auths[key]
        write_json(file.path, data)
        changed.append(file.path)
    return changed


def token_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, unverified (only to explain a refusal), or None if it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def credential_helper(host: str) -> str | None:
    """The docker credential helper configured for ``host``, if any (docker then ignores ``auths``)."""
    config = read_json(docker_config_path())
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict) and isinstance(helpers.get(host), str):
        return helpers[host]
    store_name = config.get("credsStore")
    return store_name if isinstance(store_name, str) and store_name else None
