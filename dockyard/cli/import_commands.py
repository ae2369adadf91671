"""`dockyard import` (as `az acr import`): copy an image from another registry, then follow the job."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from dockyard.cli.client import connect
from dockyard.cli.options import RegistryOption
from dockyard.cli.output import OutputFormat, emit, fail, output_option

COLUMNS = ["id", "status", "source", "digest", "targetTags", "repositories", "error"]
#: Plain (non-terminal) output prints a progress line at most this often (seconds).
LINE_EVERY = 2.0


def _progress_text(item: dict[str, Any]) -> str:
    p = item["progress"]
    return (
        f"{item['status']}: manifests {p['manifestsDone']}/{p['manifestsTotal']}, "
        f"bytes {p['bytesDone']}/{p['bytesTotal']}"
    )


def import_image(
    source: Annotated[
        str, typer.Option("--source", help="registry/repository:tag or registry/repository@digest to copy.")
    ],
    image: Annotated[
        list[str] | None,
        typer.Option("--image", "-t", help="Target repository:tag (repeatable); default: the source's name."),
    ] = None,
    repository: Annotated[
        str | None, typer.Option("--repository", help="Copy by digest into this repository, without a tag.")
    ] = None,
    username: Annotated[str | None, typer.Option("--username", "-u", help="User name at the source.")] = None,
    password: Annotated[
        str | None,
        typer.Option("--password", "-p", help="Password or token at the source (prompted if omitted)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing target tags.")] = False,
    include_referrers: Annotated[
        bool, typer.Option("--include-referrers", help="Also copy the image's referrers (signatures, SBOMs).")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the import to finish.")] = True,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait at most.")] = 3600.0,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Import an image (an index with every platform) from another registry."""
    if username is not None and password is None:
        password = typer.prompt(f"Password for {username}", hide_input=True)
    body: dict[str, Any] = {"source": source, "force": force, "includeReferrers": include_referrers}
    if image:
        body["targetTags"] = image
    if repository:
        body["repository"] = repository
    if username is not None:
        body["username"] = username
        body["password"] = password
    with connect(registry) as client:
        started = client.json("POST", "/api/v1/imports", json=body)
        if not wait:
            emit(started, output, columns=COLUMNS)
            return
        poll = lambda: client.json("GET", f"/api/v1/imports/{started['id']}")  # noqa: E731
        if sys.stdout.isatty():
            current = _follow_with_bar(started, poll, timeout)
        else:
            current = _follow_plain(started, poll, timeout)
    if current["status"] != "succeeded":
        raise fail(f"import {current['id']} failed: {current.get('error')}")
    emit(current, output, columns=COLUMNS)


def _finished(item: dict[str, Any]) -> bool:
    return item["status"] not in ("queued", "running")


def _follow_plain(started: dict[str, Any], poll: Any, timeout: float) -> dict[str, Any]:
    """One progress line on stderr whenever it changed (at most every LINE_EVERY seconds)."""
    deadline = time.monotonic() + timeout
    current, last_line, last_at = started, "", 0.0
    while True:
        line = _progress_text(current)
        if line != last_line and (time.monotonic() - last_at >= LINE_EVERY or _finished(current)):
            typer.echo(line, err=True)
            last_line, last_at = line, time.monotonic()
        if _finished(current):
            return current
        if time.monotonic() > deadline:
            raise fail(f"import {started['id']} is still {current['status']}")
        time.sleep(0.5)
        current = poll()


def _follow_with_bar(started: dict[str, Any], poll: Any, timeout: float) -> dict[str, Any]:
    """A rich progress bar (bytes, speed, manifests) on stderr, so stdout keeps only the result."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    deadline = time.monotonic() + timeout
    current = started
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(f"import {started['source']}", total=None)
        while True:
            p = current["progress"]
            bar.update(
                task,
                completed=p["bytesDone"],
                total=p["bytesTotal"] or None,
                description=f"{current['status']} ({p['manifestsDone']}/{p['manifestsTotal']} manifests)",
            )
            if _finished(current):
                return current
            if time.monotonic() > deadline:
                raise fail(f"import {started['id']} is still {current['status']}")
            time.sleep(0.25)
            current = poll()
