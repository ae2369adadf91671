"""`dockyard config soft-delete|retention`, `dockyard manifest list-deleted|list-deleted-tags|restore`
and `dockyard repository list-deleted` (as `az acr config …`, `az acr manifest …`)."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from dockyard.cli.client import connect
from dockyard.cli.options import RegistryOption, TopOption
from dockyard.cli.output import OutputFormat, emit, output_option

POLICIES = "/api/v1/registry/policies"
DELETED_COLUMNS = ["digest", "tags", "mediaType", "imageSize", "deletedTime", "expiresTime"]

config_app = typer.Typer(help="Registry policies: soft delete and retention.", no_args_is_help=True)
soft_delete_app = typer.Typer(help="Soft delete: deleted images go to a recycle bin.", no_args_is_help=True)
retention_app = typer.Typer(help="Retention of untagged manifests.", no_args_is_help=True)
config_app.add_typer(soft_delete_app, name="soft-delete")
config_app.add_typer(retention_app, name="retention")
manifest_app = typer.Typer(help="Manifests in the recycle bin: list and restore.", no_args_is_help=True)


class Status(enum.StrEnum):
    enabled = "enabled"
    disabled = "disabled"


class RetentionType(enum.StrEnum):
    UntaggedManifests = "UntaggedManifests"


StatusOption = Annotated[Status | None, typer.Option("--status", help="Enable or disable the policy.")]
RepositoryOption = Annotated[str, typer.Option("--repository", "-n", help="Repository name, e.g. team/app.")]


@soft_delete_app.command("show")
def soft_delete_show(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """Show the soft-delete policy."""
    with connect(registry) as client:
        emit(client.json("GET", f"{POLICIES}/soft-delete"), output)


@soft_delete_app.command("update")
def soft_delete_update(
    registry: RegistryOption = None,
    days: Annotated[int | None, typer.Option("--days", help="Days a deleted image is kept (1-90).")] = None,
    status: StatusOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Change the soft-delete policy."""
    body = {"retentionDays": days, "status": status.value if status else None}
    with connect(registry) as client:
        emit(client.json("PATCH", f"{POLICIES}/soft-delete", json=body), output)


@retention_app.command("show")
def retention_show(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """Show the retention policy for untagged manifests."""
    with connect(registry) as client:
        emit(client.json("GET", f"{POLICIES}/retention"), output)


@retention_app.command("update")
def retention_update(
    registry: RegistryOption = None,
    days: Annotated[
        int | None, typer.Option("--days", help="Days after untagging before deletion (0-365).")
    ] = None,
    status: StatusOption = None,
    kind: Annotated[
        RetentionType, typer.Option("--type", help="What the policy applies to.")
    ] = RetentionType.UntaggedManifests,
    output: OutputFormat = output_option,
) -> None:
    """Change the retention policy for untagged manifests."""
    body = {"days": days, "status": status.value if status else None, "type": kind.value}
    with connect(registry) as client:
        emit(client.json("PATCH", f"{POLICIES}/retention", json=body), output)


@manifest_app.command("list-deleted")
def list_deleted(
    repository: RepositoryOption,
    registry: RegistryOption = None,
    top: TopOption = None,
    output: OutputFormat = output_option,
) -> None:
    """List a repository's manifests in the recycle bin, newest deletion first."""
    with connect(registry) as client:
        path = f"/api/v1/deleted/{client.repo_path(repository)}/_manifests"
        found = list(client.pages(path, "manifests", {}, top))
    emit(found, output, DELETED_COLUMNS)


@manifest_app.command("list-deleted-tags")
def list_deleted_tags(
    repository: RepositoryOption,
    registry: RegistryOption = None,
    top: TopOption = None,
    output: OutputFormat = output_option,
) -> None:
    """List the tags the repository's manifests in the recycle bin had."""
    with connect(registry) as client:
        found = list(client.pages(f"/api/v1/deleted/{client.repo_path(repository)}/_tags", "tags", {}, top))
    emit(found, output, ["tag", "digest", "deletedTime", "expiresTime"])


@manifest_app.command("restore")
def restore(
    repository: RepositoryOption,
    digest: Annotated[str, typer.Option("--digest", "-d", help="The deleted manifest's digest.")],
    registry: RegistryOption = None,
    tag: Annotated[
        str | None, typer.Option("--tag", "-t", help="Restore this tag instead of the ones it had.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Take back tags that now point at another manifest.")
    ] = False,
    output: OutputFormat = output_option,
) -> None:
    """Restore a manifest from the recycle bin with its tags."""
    with connect(registry) as client:
        path = f"/api/v1/deleted/{client.repo_path(repository)}/_manifests/{digest}/restore"
        emit(client.json("POST", path, json={"tag": tag, "force": force}), output)


def list_deleted_repositories(
    registry: RegistryOption = None, top: TopOption = None, output: OutputFormat = output_option
) -> None:
    """List repositories deleted as a whole whose manifests are in the recycle bin."""
    with connect(registry) as client:
        names = list(client.pages("/api/v1/deleted-repositories", "repositories", {}, top))
    emit(names, output)
