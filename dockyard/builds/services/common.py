"""What the builds services share: run ids, records as the API shows them, input checks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dockyard.builds.spec import DEFAULT_PLATFORM, DEFAULT_RUN_TIMEOUT, MAX_RUN_TIMEOUT
from dockyard.oci.errors import ErrorCode, RegistryError

JOB_KIND = "builds.run"
#: The job lease outlasts the longest run; a dead worker's run is caught by its heartbeat instead.
LEASE_SECONDS = MAX_RUN_TIMEOUT + 3600
RUN_TYPES = ("build", "file", "cmd", "patch")
SOURCE_KINDS = ("none", "upload", "git", "tarball", "oci")
TASK_NAME = re.compile(r"^[A-Za-z0-9_-]{5,50}\Z")
TIMER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,50}\Z")
MAX_MAP_ENTRIES = 100
MAX_VALUE = 4096
STOPPED_WORKER = "the worker running it stopped"

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(number: int) -> str:
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = _ALPHABET[digit] + text
        if not number:
            return text


def run_id_of(seq: int) -> str:
    """The run id ACR-style clients see: ``dy`` + base36 of the run's sequence number."""
    return "dy" + base36(seq)


def invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.INVALID_REQUEST, message)


def conflict(message: str) -> RegistryError:
    return RegistryError(ErrorCode.INVALID_REQUEST, message, status=409)


def not_found(what: str) -> RegistryError:
    return RegistryError(ErrorCode.NOT_FOUND, f"{what} not found")


def check_map(value: object, name: str) -> dict[str, str]:
    """A JSON object of string → string (build args, values), bounded."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise invalid(f"{name} must be an object of strings")
    if len(value) > MAX_MAP_ENTRIES:
        raise invalid(f"{name}: at most {MAX_MAP_ENTRIES} entries")
    result: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or len(key) > 255 or "=" in key:
            raise invalid(f"{name}: invalid key {str(key)[:60]!r}")
        if not isinstance(item, str) or len(item) > MAX_VALUE:
            raise invalid(f"{name}.{key} must be a string of at most {MAX_VALUE} characters")
        result[key] = item
    return result


def check_images(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(i, str) and i and len(i) <= 512 for i in value):
        raise invalid("images must be a list of image names (repository[:tag])")
    if len(value) > 20:
        raise invalid("images: at most 20")
    return list(dict.fromkeys(value))


def check_timeout(value: object) -> int:
    if value is None:
        return DEFAULT_RUN_TIMEOUT
    if not isinstance(value, int) or isinstance(value, bool) or not 300 <= value <= MAX_RUN_TIMEOUT:
        raise invalid(f"timeout must be whole seconds from 300 to {MAX_RUN_TIMEOUT}")
    return value


def check_platform(value: object) -> str:
    if value is None or value == "":
        return DEFAULT_PLATFORM
    if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?", value):
        raise invalid("platform must be os/architecture[/variant], e.g. linux/amd64")
    return value


def split_git_location(location: str) -> tuple[str, str | None, str | None]:
    """``https://host/repo.git#ref:folder`` → (url, ref, folder); missing parts are None."""
    url, _, fragment = location.partition("#")
    if not fragment:
        return url, None, None
    ref, _, folder = fragment.partition(":")
    return url, ref or None, folder or None


def context_kind(context: str) -> str:
    """What a task's ``context`` names: none, git, tarball, oci (uploads are for quick runs only)."""
    if context == "/dev/null":
        return "none"
    if context.startswith("oci://"):
        return "oci"
    url = context.partition("#")[0]
    if url.startswith(("https://", "http://")) and url.endswith((".tar.gz", ".tgz", ".tar")):
        return "tarball"
    return "git"


@dataclass(frozen=True)
class TimerRecord:
    name: str
    schedule: str
    enabled: bool
    next_run_at: datetime | None


@dataclass(frozen=True)
class TaskRecord:
    """A task as the API shows it: secret values are never part of it, only their keys."""

    id: int
    name: str
    status: str
    context: str
    file: str | None
    task_file: str | None
    cmd: str | None
    images: list[str]
    args: dict[str, str]
    secret_arg_keys: list[str]
    values: dict[str, str]
    secret_value_keys: list[str]
    platform: str
    no_push: bool
    timeout: int
    commit_trigger: bool
    pull_request_trigger: bool
    base_image_trigger: bool
    has_git_access_token: bool
    created_at: datetime
    updated_at: datetime
    timers: list[TimerRecord] = field(default_factory=list)
    base_images: list[dict[str, Any]] = field(default_factory=list)
    #: Only in the answer to a create or a renewal.
    trigger_secret: str | None = None


@dataclass(frozen=True)
class RunRecord:
    seq: int
    run_id: str
    task: str | None
    type: str
    status: str
    trigger: str
    trigger_detail: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    platform: str
    outputs: list[dict[str, Any]]
    base_images: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    error: str | None
    log_size: int
