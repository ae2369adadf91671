"""The deploy/ examples parse, name only settings Dockyard has, and probe the right endpoints.

No Docker engine or cluster runs here: these checks read the files (PyYAML) instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
AWS = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}


def settings_variables() -> set[str]:
    return {f"DOCKYARD_{name.upper()}" for name in Settings.model_fields}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def check_variables(names: set[str], where: str) -> None:
    unknown = {n for n in names if n.startswith("DOCKYARD_")} - settings_variables()
    assert not unknown, f"{where} sets variables Dockyard does not read: {sorted(unknown)}"


def test_compose_file_describes_the_scale_out_shape() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "seaweedfs", "create-bucket", "migrate", "registry", "worker", "nginx"} <= set(
        services
    )
    registry = services["registry"]
    assert registry["command"][0] == "serve"
    assert registry["deploy"]["replicas"] >= 2
    assert services["worker"]["command"] == ["worker"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name in ("registry", "worker", "migrate"):
        env = services[name]["environment"]
        assert set(env) >= AWS, name
        assert env["DOCKYARD_DATABASE_URL"].startswith("postgresql://")
        assert env["DOCKYARD_STORAGE"].startswith("s3://")
        check_variables(set(env), f"compose service {name}")
    assert registry["environment"]["DOCKYARD_RUN_WORKER"] == "false"
    assert "/readyz" in " ".join(registry["healthcheck"]["test"])
    for config in compose["configs"].values():
        assert (DEPLOY / config["file"]).is_file()
    assert "server registry:5000" in (DEPLOY / "nginx.conf").read_text()


def test_kubernetes_manifests() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    documents = [doc for resource in kustomization["resources"] for doc in load_all(KUBERNETES / resource)]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in documents:
        assert {"apiVersion", "kind", "metadata"} <= set(doc)
        assert doc["metadata"]["name"]
        by_kind.setdefault(doc["kind"], []).append(doc)
    assert {"Namespace", "ConfigMap", "Secret", "Job", "Deployment", "Service"} <= set(by_kind)
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    serve = deployments["dockyard"]["spec"]["template"]["spec"]["containers"][0]
    assert serve["args"][0] == "serve"
    assert serve["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert serve["livenessProbe"]["httpGet"]["path"] == "/healthz"
    worker = deployments["dockyard-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"] == ["worker"]
    for deployment in deployments.values():
        spec = deployment["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    service = by_kind["Service"][0]
    serve_labels = deployments["dockyard"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= serve_labels.items()
    config = by_kind["ConfigMap"][0]["data"]
    secret = by_kind["Secret"][0]["stringData"]
    assert {k for k in (*config, *secret) if k.startswith("AWS_")} == AWS
    assert "DOCKYARD_DATABASE_URL" in secret
    check_variables(set(config) | set(secret), "the ConfigMap and Secret")


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_file_parses(path: Path) -> None:
    assert load_all(path)
