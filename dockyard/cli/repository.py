"""`dockyard repository …`: list, show, show-tags, show-manifests, delete, untag, update (as `az acr
repository`), and the write-once tag policy (`repository immutability show|set`)."""

from __future__ import annotations

import enum
from typing import Annotated, Any

import typer

from dockyard.cli.client import confirm_delete, connect
from dockyard.cli.options import RegistryOption, TopOption
from dockyard.cli.output import OutputFormat, emit, fail, output_option

app = typer.Typer(
    help="Manage repositories: list, inspect, lock, untag and delete images.", no_args_is_help=True
)
immutability_app = typer.Typer(
    help="Write-once tags: a repository's tag immutability policy.", no_args_is_help=True
)
app.add_typer(immutability_app, name="immutability")


class OrderBy(enum.StrEnum):
    time_asc = "time_asc"
    time_desc = "time_desc"


RepositoryOption = Annotated[str, typer.Option("--repository", help="Repository name, e.g. team/app.")]
OrderOption = Annotated[OrderBy | None, typer.Option("--orderby", help="Order by last update time.")]
DetailOption = Annotated[bool, typer.Option("--detail", help="Show details, not just names.")]


def parse_image(image: str) -> tuple[str, str | None, str | None]:
    """Split ``repo:tag`` or ``repo@digest`` into (repository, tag, digest)."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, None, digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :], None
    return image, None, None


def _list(
    registry: str | None, repository: str, collection: str, orderby: OrderBy | None, top: int | None
) -> list[dict[str, Any]]:
    """Every item of /acr/v1/<repository>/_<collection>, across pages, at most ``top``."""
    params = {"orderby": orderby.value.replace("_", "")} if orderby else {}
    with connect(registry) as client:
        path = f"/acr/v1/{client.repo_path(repository)}/_{collection}"
        return list(client.pages(path, collection, params, top))


@app.command("list")
def list_repositories(
    registry: RegistryOption = None, top: TopOption = None, output: OutputFormat = output_option
) -> None:
    """List repository names."""
    with connect(registry) as client:
        names = list(client.pages("/acr/v1/_catalog", "repositories", {}, top))
    emit(names, output)


@app.command("show")
def show(
    registry: RegistryOption = None,
    repository: Annotated[str | None, typer.Option("--repository", help="Repository name.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="repo:tag or repo@digest.")] = None,
    output: OutputFormat = output_option,
) -> None:
    """Show a repository's, a tag's or a manifest's properties."""
    if bool(repository) == bool(image):
        raise fail("give exactly one of --repository or --image", 2)
    with connect(registry) as client:
        if repository:
            data = client.request("GET", f"/acr/v1/{client.repo_path(repository)}").json()
        else:
            assert image is not None
            name, tag, digest = parse_image(image)
            if digest:
                data = client.request("GET", f"/acr/v1/{client.repo_path(name)}/_manifests/{digest}").json()[
                    "manifest"
                ]
            else:
                data = client.request(
                    "GET", f"/acr/v1/{client.repo_path(name)}/_tags/{tag or 'latest'}"
                ).json()["tag"]
    emit(data, output)


@app.command("show-tags")
def show_tags(
    repository: RepositoryOption,
    registry: RegistryOption = None,
    detail: DetailOption = False,
    orderby: OrderOption = None,
    top: TopOption = None,
    output: OutputFormat = output_option,
) -> None:
    """List a repository's tags."""
    found = _list(registry, repository, "tags", orderby, top)
    if detail:
        emit(found, output, columns=["name", "digest", "createdTime", "lastUpdateTime"])
    else:
        emit([tag["name"] for tag in found], output)


@app.command("show-manifests")
def show_manifests(
    repository: RepositoryOption,
    registry: RegistryOption = None,
    detail: DetailOption = False,
    orderby: OrderOption = None,
    top: TopOption = None,
    output: OutputFormat = output_option,
) -> None:
    """List a repository's manifests with their tags."""
    found = _list(registry, repository, "manifests", orderby, top)
    if not detail:
        found = [
            {"digest": m["digest"], "tags": m.get("tags", []), "timestamp": m["createdTime"]} for m in found
        ]
        emit(found, output, columns=["digest", "tags", "timestamp"])
        return
    emit(
        found,
        output,
        columns=["digest", "mediaType", "imageSize", "architecture", "os", "tags", "createdTime"],
    )


@app.command("delete")
def delete(
    registry: RegistryOption = None,
    repository: Annotated[
        str | None, typer.Option("--repository", help="Delete this whole repository.")
    ] = None,
    image: Annotated[
        str | None,
        typer.Option("--image", help="Delete repo:tag's manifest (and all its tags) or repo@digest."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    output: OutputFormat = output_option,
) -> None:
    """Delete a repository, or an image's manifest with every tag pointing at it."""
    if bool(repository) == bool(image):
        raise fail("give exactly one of --repository or --image", 2)
    target = repository or image
    confirm_delete(str(target), yes=yes)
    with connect(registry) as client:
        if repository:
            result = client.request("DELETE", f"/acr/v1/{client.repo_path(repository)}").json()
            emit(result, output)
            return
        assert image is not None
        name, tag, digest = parse_image(image)
        if not digest:
            digest = client.request(
                "GET", f"/acr/v1/{client.repo_path(name)}/_tags/{tag or 'latest'}"
            ).json()["tag"]["digest"]
        client.request("DELETE", f"/acr/v1/{client.repo_path(name)}/_manifests/{digest}")
    emit({"deleted": f"{name}@{digest}"}, output)


@app.command("untag")
def untag(
    image: Annotated[str, typer.Option("--image", help="repo:tag to remove; the manifest stays.")],
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Remove a tag from a repository without deleting the manifest."""
    name, tag, digest = parse_image(image)
    if digest or not tag:
        raise fail("--image must be repo:tag", 2)
    with connect(registry) as client:
        client.request("DELETE", f"/acr/v1/{client.repo_path(name)}/_tags/{tag}")
    emit({"untagged": f"{name}:{tag}"}, output)


def _flag(name: str, what: str) -> Any:
    return typer.Option(f"--{name}", help=f"{what} (true or false).")


def _boolean(value: str | None, flag: str) -> bool | None:
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise fail(f"{flag} must be true or false", 2)


@app.command("update")
def update(
    registry: RegistryOption = None,
    repository: Annotated[str | None, typer.Option("--repository", help="Lock a whole repository.")] = None,
    image: Annotated[
        str | None, typer.Option("--image", help="Lock a tag (repo:tag) or a manifest (repo@digest).")
    ] = None,
    write_enabled: Annotated[str | None, _flag("write-enabled", "Allow overwrite and delete")] = None,
    delete_enabled: Annotated[str | None, _flag("delete-enabled", "Allow delete")] = None,
    read_enabled: Annotated[str | None, _flag("read-enabled", "Allow pulls")] = None,
    list_enabled: Annotated[str | None, _flag("list-enabled", "Show in listings")] = None,
    output: OutputFormat = output_option,
) -> None:
    """Lock or unlock a repository, tag or manifest (ACR's changeable attributes)."""
    if bool(repository) == bool(image):
        raise fail("give exactly one of --repository or --image", 2)
    changes = {
        key: value
        for key, value in {
            "writeEnabled": _boolean(write_enabled, "--write-enabled"),
            "deleteEnabled": _boolean(delete_enabled, "--delete-enabled"),
            "readEnabled": _boolean(read_enabled, "--read-enabled"),
            "listEnabled": _boolean(list_enabled, "--list-enabled"),
        }.items()
        if value is not None
    }
    if not changes:
        raise fail(
            "give at least one of --write-enabled, --delete-enabled, --read-enabled, --list-enabled", 2
        )
    with connect(registry) as client:
        if repository:
            data = client.request("PATCH", f"/acr/v1/{client.repo_path(repository)}", json=changes).json()
        else:
            assert image is not None
            name, tag, digest = parse_image(image)
            if digest:
                path = f"/acr/v1/{client.repo_path(name)}/_manifests/{digest}"
                data = client.request("PATCH", path, json=changes).json()["manifest"]
            else:
                path = f"/acr/v1/{client.repo_path(name)}/_tags/{tag or 'latest'}"
                data = client.request("PATCH", path, json=changes).json()["tag"]
    emit(data, output)


def _policy_path(client: Any, repository: str) -> str:
    return f"/api/v1/repositories/{client.repo_path(repository)}/immutability"


@immutability_app.command("show")
def immutability_show(
    repository: RepositoryOption, registry: RegistryOption = None, output: OutputFormat = output_option
) -> None:
    """Show a repository's write-once tag policy (its own, or the registry default it inherits)."""
    with connect(registry) as client:
        emit(client.request("GET", _policy_path(client, repository)).json(), output)


@immutability_app.command("set")
def immutability_set(
    repository: RepositoryOption,
    enabled: Annotated[
        str, typer.Option("--enabled", help="true, false, or default (follow the registry-wide setting).")
    ],
    exempt: Annotated[
        list[str] | None,
        typer.Option(
            "--exempt", help="A tag (or fnmatch pattern, e.g. 'dev-*') that stays movable; repeatable."
        ),
    ] = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Make a repository's tags write-once: a pushed tag never moves to another digest (exemptions may)."""
    state = None if enabled.strip().lower() == "default" else _boolean(enabled, "--enabled")
    body: dict[str, Any] = {"enabled": state}
    if exempt is not None:
        body["exemptions"] = exempt
    with connect(registry) as client:
        emit(client.request("PUT", _policy_path(client, repository), json=body).json(), output)
