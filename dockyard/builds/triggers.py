"""Commit and pull-request triggers: signature checks and what a GitHub or git-hook delivery asks for.

Pure: the routes read the task, call ``authenticated`` on the raw body before anything else, then
``github_decision`` / ``git_decision`` say whether to answer ping, ignore, refuse or queue a run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dockyard.builds.services.common import split_git_location
from dockyard.builds.spec import COMMIT, PULL_REQUEST

SIGNATURE_HEADER = "x-hub-signature-256"
TOKEN_HEADER = "x-dockyard-trigger-token"  # noqa: S105 - a header name
EVENT_HEADER = "x-github-event"
MAX_BODY = 1024 * 1024
PR_ACTIONS = frozenset({"opened", "synchronize", "reopened"})
SHA = re.compile(r"^[0-9a-f]{7,64}\Z")
BRANCH = re.compile(r"^[^\x00-\x1f\x7f ~^:?*\[\\]{1,255}\Z")


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, body)>``, as GitHub sends it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def authenticated(secret: str, body: bytes, headers: Mapping[str, str], *, token_allowed: bool) -> bool:
    """Whether the delivery carries a valid signature of ``body`` (or, where allowed, the token)."""
    given = headers.get(SIGNATURE_HEADER)
    if given is not None:
        return hmac.compare_digest(given.strip().encode(), signature(secret, body).encode())
    token = headers.get(TOKEN_HEADER)
    if token_allowed and token is not None:
        return hmac.compare_digest(token.strip().encode(), secret.encode())
    return False


@dataclass(frozen=True)
class Decision:
    """``run`` (queue with ``trigger`` and ``detail``), ``ping``, ``ignored`` or ``off`` (409)."""

    outcome: str
    reason: str = ""
    trigger: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def _branch_of(context: str) -> str | None:
    """The branch a task follows (its context's ``#branch``), None for any branch."""
    _, ref, _ = split_git_location(context)
    return ref


def parse_json(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def github_decision(event: str, payload: Mapping[str, Any], task: Any) -> Decision:
    """What a GitHub webhook delivery of ``event`` means for ``task`` (its row)."""
    if event == "ping":
        return Decision("ping")
    if event == "push":
        return _push(payload, task)
    if event == "pull_request":
        return _pull_request(payload, task)
    return Decision("ignored", f"event {event[:40]!r}")


def _push(payload: Mapping[str, Any], task: Any) -> Decision:
    ref, after = payload.get("ref"), payload.get("after")
    if not isinstance(ref, str) or not ref.startswith("refs/heads/"):
        return Decision("ignored", "not a branch push")
    if payload.get("deleted") or not isinstance(after, str) or not SHA.match(after) or set(after) == {"0"}:
        return Decision("ignored", "a branch deletion")
    branch = ref.removeprefix("refs/heads/")
    wanted = _branch_of(task.context)
    if wanted is not None and branch != wanted:
        return Decision("ignored", f"a push to {branch}, not {wanted}")
    if not task.commit_trigger:
        return Decision("off", "the commit trigger is off")
    return Decision("run", trigger=COMMIT, detail={"commit": after, "branch": branch})


def _pull_request(payload: Mapping[str, Any], task: Any) -> Decision:
    action = payload.get("action")
    if action not in PR_ACTIONS:
        return Decision("ignored", f"pull request action {str(action)[:40]}")
    pull, number = payload.get("pull_request"), payload.get("number")
    head = pull.get("head") if isinstance(pull, Mapping) else None
    sha = head.get("sha") if isinstance(head, Mapping) else None
    if not isinstance(number, int) or not isinstance(sha, str) or not SHA.match(sha):
        return Decision("ignored", "a pull request event without number and head sha")
    if not task.pull_request_trigger:
        return Decision("off", "the pull request trigger is off")
    detail = {"commit": sha, "pullRequest": number, "ref": f"refs/pull/{number}/head"}
    return Decision("run", trigger=PULL_REQUEST, detail=detail)


def git_decision(payload: Mapping[str, Any], task: Any) -> Decision:
    """A generic push ``{"commit", "branch"}`` from a git hook."""
    commit, branch = payload.get("commit"), payload.get("branch")
    if commit is not None and (not isinstance(commit, str) or not SHA.match(commit)):
        return Decision("invalid", "commit must be a hexadecimal sha")
    if branch is not None and (not isinstance(branch, str) or not BRANCH.match(branch)):
        return Decision("invalid", "branch must be a branch name")
    wanted = _branch_of(task.context)
    if wanted is not None and branch is not None and branch != wanted:
        return Decision("ignored", f"a push to {branch}, not {wanted}")
    if not task.commit_trigger:
        return Decision("off", "the commit trigger is off")
    detail = {k: v for k, v in (("commit", commit), ("branch", branch or wanted)) if v}
    return Decision("run", trigger=COMMIT, detail=detail)
