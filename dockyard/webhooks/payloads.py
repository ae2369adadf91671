"""Webhook bodies, byte for byte: ACR's JSON, optionally in a CloudEvents 1.0 envelope; HMAC signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import datetime
from typing import Any

from dockyard.db import utcnow
from dockyard.events.services import (
    BUILD_FAILED,
    BUILD_SUCCEEDED,
    CHART_DELETE,
    CHART_PUSH,
    DELETE,
    PUSH,
    QUARANTINE,
    RepositoryEvent,
)

SIGNATURE_HEADER = "X-Dockyard-Signature-256"
ACR_CHART_MEDIA_TYPE = "application/vnd.acr.helm.chart"
CLOUDEVENT_TYPES = {
    PUSH: "Microsoft.ContainerRegistry.ImagePushed",
    DELETE: "Microsoft.ContainerRegistry.ImageDeleted",
    CHART_PUSH: "Microsoft.ContainerRegistry.ChartPushed",
    CHART_DELETE: "Microsoft.ContainerRegistry.ChartDeleted",
    QUARANTINE: "Microsoft.ContainerRegistry.ImageQuarantined",
    BUILD_SUCCEEDED: "Dockyard.Builds.RunSucceeded",
    BUILD_FAILED: "Dockyard.Builds.RunFailed",
    "ping": "Dockyard.Webhook.Ping",
}


def acr_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def acr_payload(event: RepositoryEvent) -> dict[str, Any]:
    """The JSON ACR posts for this event (push, delete, chart_push, chart_delete, quarantine)."""
    document: dict[str, Any] = {"id": event.uid, "timestamp": acr_time(event.time), "action": event.action}
    if event.action in (CHART_PUSH, CHART_DELETE):
        target: dict[str, Any] = {
            "mediaType": ACR_CHART_MEDIA_TYPE,
            "size": event.size,
            "digest": event.digest,
            "repository": event.repository,
            "tag": event.tag,
            "name": event.repository.rsplit("/", 1)[-1],
            "version": event.tag,
        }
        document["target"] = {k: v for k, v in target.items() if v is not None}
        return document
    if event.action in (BUILD_SUCCEEDED, BUILD_FAILED):
        return _build_payload(document, event)
    if event.action == DELETE:
        document["target"] = {
            "mediaType": event.media_type,
            "digest": event.digest,
            "repository": event.repository,
        }
    else:
        target = {
            "mediaType": event.media_type,
            "size": event.size,
            "digest": event.digest,
            "length": event.size,
            "repository": event.repository,
        }
        if event.tag:
            target["tag"] = event.tag
        document["target"] = target
    origin = event.origin
    document["request"] = {
        "id": origin.request_id,
        "host": origin.host,
        "method": origin.method,
        "useragent": origin.user_agent,
    }
    return document


def _build_payload(document: dict[str, Any], event: RepositoryEvent) -> dict[str, Any]:
    """A build event: the ACR shape (target = the first image the run pushed) plus the ``run``."""
    target = {"repository": event.repository, "tag": event.tag, "digest": event.digest}
    document["target"] = {k: v for k, v in target.items() if v is not None}
    try:
        run = json.loads(event.artifact_type or "{}")
    except ValueError:
        run = {}
    document["run"] = {key: run.get(key) for key in ("id", "task", "status", "trigger")}
    origin = event.origin
    document["request"] = {
        "id": origin.request_id,
        "host": origin.host,
        "method": origin.method,
        "useragent": origin.user_agent,
    }
    return document


def ping_payload() -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "timestamp": acr_time(utcnow()), "action": "ping"}


def cloudevent(document: dict[str, Any], registry: str) -> dict[str, Any]:
    """``document`` as a structured-mode CloudEvents 1.0 event."""
    target = document.get("target", {})
    subject = target.get("repository")
    if subject and target.get("tag"):
        subject = f"{subject}:{target['tag']}"
    elif subject and target.get("digest"):
        subject = f"{subject}@{target['digest']}"
    event = {
        "specversion": "1.0",
        "id": document["id"],
        "source": f"/registries/{registry}",
        "type": CLOUDEVENT_TYPES.get(document["action"], f"Dockyard.{document['action']}"),
        "time": document["timestamp"],
        "datacontenttype": "application/json",
        "data": document,
    }
    if subject:
        event["subject"] = subject
    return event


def encode(document: dict[str, Any], payload_format: str, registry: str) -> bytes:
    """The exact bytes sent (and signed), kept so every retry sends the same."""
    body = cloudevent(document, registry) if payload_format == "cloudevents" else document
    return json.dumps(body, separators=(",", ":")).encode()


def content_type(payload_format: str) -> str:
    return "application/cloudevents+json" if payload_format == "cloudevents" else "application/json"


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the body>``; receivers recompute and compare in constant time."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
