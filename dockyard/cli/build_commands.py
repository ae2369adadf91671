"""`dockyard build`, `dockyard run` and `dockyard patch` (as `az acr build` / `az acr run`): quick runs.

A local folder context is tarred (gzip, honouring `.dockerignore`), uploaded to
``POST /api/v1/builds/sources`` and built from its digest; a git URL, a tarball URL or an
``oci://`` artifact is passed to the registry, which fetches it. The run's log is streamed until
it ends; the command exits 0 only if the run succeeded. Ctrl-C stops following, not the run.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any
from urllib.parse import quote, urlencode

import typer

from dockyard.cli.client import (
    RegistryClient,
    Response,
    connect,
    error_message,
    refused_login_message,
    unreachable,
)
from dockyard.cli.options import RegistryOption
from dockyard.cli.output import OutputFormat, emit, fail, output_option

RUN_COLUMNS = [
    "runId",
    "task",
    "type",
    "status",
    "trigger",
    "createTime",
    "finishTime",
    "outputImages",
    "error",
]
#: The statuses a run ends in (dockyard.builds.spec.FINAL_STATUSES; a unit test keeps them equal).
FINAL_STATUSES = frozenset({"Succeeded", "Failed", "Canceled", "Error", "Timeout"})
#: How long a log stream may stay silent before the CLI reconnects (a long RUN step prints nothing).
STREAM_IDLE_SECONDS = 60.0
_TARBALL = re.compile(r"\.(tar|tar\.gz|tgz)$", re.IGNORECASE)

ImageOption = Annotated[
    list[str] | None,
    typer.Option("--image", "-t", help="repository:tag to push, e.g. app:{{.Run.ID}} (repeatable)."),
]
NoLogsOption = Annotated[bool, typer.Option("--no-logs", help="Do not stream the log; wait for the end.")]
NoWaitOption = Annotated[bool, typer.Option("--no-wait", help="Print the queued run and return at once.")]
TimeoutOption = Annotated[
    int | None, typer.Option("--timeout", min=1, help="The run's timeout in seconds [default: 3600].")
]
PlatformOption = Annotated[
    str | None, typer.Option("--platform", help="os/arch[/variant], e.g. linux/arm64 [default: linux/amd64].")
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="A value for {{.Values.name}}: name=value (repeatable).")
]
SetSecretOption = Annotated[
    list[str] | None,
    typer.Option("--set-secret", help="A secret value (masked in logs): name=value (repeatable)."),
]


# -- arguments ------------------------------------------------------------------------------------


def pairs(values: list[str] | None, option: str, *, from_environment: bool = False) -> dict[str, str]:
    """``name=value`` options as a dict; with ``from_environment`` a bare ``name`` takes $name (docker)."""
    result: dict[str, str] = {}
    for item in values or []:
        name, equals, value = item.partition("=")
        if not equals:
            if not from_environment or name not in os.environ:
                raise fail(f"{option} {item!r}: use name=value", 2)
            value = os.environ[name]
        if not name:
            raise fail(f"{option} {item!r}: the name is empty", 2)
        result[name] = value
    return result


def remote_source(context: str) -> dict[str, Any] | None:
    """The run's ``source`` for a context the registry fetches itself; None for a local folder."""
    if context == "/dev/null":
        return {"kind": "none"}
    if context.startswith("oci://"):
        return {"kind": "oci", "location": context.removeprefix("oci://")}
    if re.match(r"^(https?|git|ssh)://|^[\w.-]+@[\w.-]+:", context):
        url = context.split("#", 1)[0]
        if _TARBALL.search(url) and context.startswith(("http://", "https://")):
            return {"kind": "tarball", "location": context}
        return {"kind": "git", "location": context}
    return None


# -- HTTP streams (the client's urllib, with a streamed body or answer) ----------------------------


@contextmanager
def open_stream(
    client: RegistryClient,
    method: str,
    path: str,
    *,
    params: Mapping[str, Any] | None = None,
    body: IO[bytes] | None = None,
    size: int | None = None,
    content_type: str = "application/octet-stream",
    timeout: float | None = 30.0,
) -> Iterator[Any]:
    """An open answer (an http.client.HTTPResponse) to a request whose body is read from ``body``.

    A status of 300 or more is a CLI error carrying the registry's message.
    """
    import http.client
    import urllib.error
    import urllib.request

    from dockyard import __version__
    from dockyard.cli.client import _opener
    from dockyard.cli.credentials import encode_auth

    url = f"{client.base_url}{path}"
    if params:
        url += "?" + urlencode({k: v for k, v in params.items() if v is not None})
    headers = {"User-Agent": f"dockyard-cli/{__version__}", "Accept": "application/json, text/plain"}
    if body is not None:
        headers["Content-Type"] = content_type
        headers["Content-Length"] = str(size)
    if client.credentials is not None:
        auth = encode_auth(client.credentials.username, client.credentials.password)
        headers["Authorization"] = f"Basic {auth}"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310 - http(s) only
    try:
        answer = _opener().open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            response = Response(exc.code, exc.headers, exc.read(), url)
        if exc.code == 401:
            raise fail(
                refused_login_message(client.base_url, client.credentials, error_message(response))
            ) from None
        raise fail(error_message(response)) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise fail(unreachable(client.base_url, exc)) from None
    with answer:
        yield answer


class _Counting:
    """A file whose reads advance a progress callback (urllib sends a file body in 8 KiB reads)."""

    def __init__(self, file: IO[bytes], advance: Any) -> None:
        self.file = file
        self.advance = advance

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.advance(len(data))
        return data


def upload_context(client: RegistryClient, folder: Path, dockerfile: str | None) -> dict[str, Any]:
    """Tar ``folder`` (honouring .dockerignore) into a temporary file and upload it; the source's digest."""
    import json

    from dockyard.cli.dockerignore import write_context

    with tempfile.TemporaryFile(prefix="dockyard-context-") as spool:
        try:
            count = write_context(folder, spool, dockerfile)
        except (OSError, ValueError) as exc:
            raise fail(f"cannot read the context {folder}: {exc}") from None
        size = spool.tell()
        spool.seek(0)
        what = f"Uploading context: {count} files, {size} bytes"
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task(f"upload ({count} files)", total=size)
                body = _Counting(spool, lambda n: bar.advance(task, n))
                with open_stream(client, "POST", "/api/v1/builds/sources", body=body, size=size) as answer:  # type: ignore[arg-type]
                    uploaded = json.loads(answer.read())
        else:
            typer.echo(what, err=True)
            with open_stream(client, "POST", "/api/v1/builds/sources", body=spool, size=size) as answer:
                uploaded = json.loads(answer.read())
    typer.echo(f"Uploaded context {uploaded['digest']} ({uploaded['size']} bytes).", err=True)
    return {"kind": "upload", "location": uploaded["digest"]}


def context_source(client: RegistryClient, context: str, dockerfile: str | None) -> dict[str, Any]:
    """The ``source`` of a run: the remote context as given, or a local folder uploaded."""
    source = remote_source(context)
    if source is not None:
        return source
    folder = Path(context)
    if not folder.is_dir():
        raise fail(f"the context {context!r} is neither a folder nor a git, tarball or oci:// URL", 2)
    return upload_context(client, folder, dockerfile)


# -- following a run ------------------------------------------------------------------------------


def run_path(run_id: str) -> str:
    return f"/api/v1/runs/{quote(run_id, safe='')}"


def stream_log(client: RegistryClient, run_id: str, offset: int = 0) -> dict[str, Any]:
    """Copy the run's log to stdout from ``offset`` until the run ends; the ended run."""

    out = sys.stdout.buffer
    while True:
        try:
            params = {"offset": offset, "follow": "true"}
            with open_stream(
                client, "GET", f"{run_path(run_id)}/logs", params=params, timeout=STREAM_IDLE_SECONDS
            ) as answer:
                while chunk := answer.read1(65536):
                    out.write(chunk)
                    out.flush()
                    offset += len(chunk)
        except (TimeoutError, ConnectionError):
            pass  # silent for a minute, or cut: ask again from where the log stopped
        run = client.json("GET", run_path(run_id))
        if run["status"] in FINAL_STATUSES:
            tail = client.request("GET", f"{run_path(run_id)}/logs", params={"offset": offset})
            out.write(tail.content)
            out.flush()
            return run
        time.sleep(0.5)  # the stream ended early (a proxy or a restart): reconnect


def wait_run(client: RegistryClient, run_id: str) -> dict[str, Any]:
    """Poll the run until it ends."""
    while True:
        run = client.json("GET", run_path(run_id))
        if run["status"] in FINAL_STATUSES:
            return run
        time.sleep(1.0)


def _seconds(run: dict[str, Any]) -> str:
    from datetime import datetime

    start, end = run.get("startTime"), run.get("finishTime")
    if not start or not end:
        return ""
    took = datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(
        start.replace("Z", "+00:00")
    )
    return f" after {int(took.total_seconds())}s"


def summary(run: dict[str, Any], registry_host: str, *, status: bool = True) -> str:
    """The outcome (az's closing line; the streamed log already ends with it) and the images pushed."""
    lines = []
    if status and run["status"] == "Succeeded":
        lines.append(f"Run ID: {run['runId']} was successful{_seconds(run)}")
    elif status:
        reason = f": {run['error']}" if run.get("error") else ""
        lines.append(f"Run ID: {run['runId']} ended {run['status']}{_seconds(run)}{reason}")
    for image in run.get("outputImages") or []:
        lines.append(f"  pushed {registry_host}/{image['repository']}:{image['tag']}@{image['digest']}")
    return "\n".join(lines)


def follow(
    client: RegistryClient, run: dict[str, Any], *, logs: bool, wait: bool, output: OutputFormat
) -> None:
    """Stream or wait for a started run (Ctrl-C stops following only); exit 1 unless it succeeded."""
    from urllib.parse import urlsplit

    run_id = run["runId"]
    if not wait:
        emit(run, output, RUN_COLUMNS)
        return
    typer.echo(f"Queued a run with ID: {run_id}", err=True)
    try:
        ended = stream_log(client, run_id) if logs else wait_run(client, run_id)
    except KeyboardInterrupt:
        typer.echo(
            f"\nStopped following run {run_id}; it goes on. Follow it again with: "
            f"dockyard task logs --run-id {run_id}",
            err=True,
        )
        raise typer.Exit(130) from None
    closing = summary(ended, urlsplit(client.base_url).netloc, status=not logs)
    if closing:
        typer.echo(closing, err=True)
    if not logs:
        emit(ended, output, RUN_COLUMNS)
    if ended["status"] != "Succeeded":
        raise typer.Exit(1)


def start_run(client: RegistryClient, body: dict[str, Any]) -> dict[str, Any]:
    return client.json("POST", "/api/v1/runs", json=body)


# -- commands -------------------------------------------------------------------------------------


def build(
    context: Annotated[
        str, typer.Argument(help="A local folder, a git URL (…#branch:folder), a tarball URL or oci://…")
    ],
    image: ImageOption = None,
    file: Annotated[
        str | None, typer.Option("--file", "-f", help="The Dockerfile, relative to the context.")
    ] = None,
    build_arg: Annotated[
        list[str] | None, typer.Option("--build-arg", help="name=value, or name to take $name (repeatable).")
    ] = None,
    secret_build_arg: Annotated[
        list[str] | None,
        typer.Option("--secret-build-arg", help="A build argument masked in logs: name=value (repeatable)."),
    ] = None,
    platform: PlatformOption = None,
    no_push: Annotated[bool, typer.Option("--no-push", help="Build only; push nothing.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not use cached layers.")] = False,
    no_logs: NoLogsOption = False,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Build an image on the registry (a quick task) and push it, streaming the log."""
    if not image and not no_push:
        raise fail("give at least one --image/-t to push, or --no-push", 2)
    body: dict[str, Any] = {
        "type": "build",
        "images": image or [],
        "args": pairs(build_arg, "--build-arg", from_environment=True),
        "secretArgs": pairs(secret_build_arg, "--secret-build-arg", from_environment=True),
        "noPush": no_push,
        "noCache": no_cache,
    }
    if file:
        body["file"] = file
    if platform:
        body["platform"] = platform
    if timeout:
        body["timeout"] = timeout
    with connect(registry) as client:
        body["source"] = context_source(client, context, file or "Dockerfile")
        run = start_run(client, body)
        follow(client, run, logs=not no_logs, wait=not no_wait, output=output)


def run(
    context: Annotated[
        str, typer.Argument(help="A local folder, a git URL, a tarball URL, oci://… or /dev/null.")
    ],
    file: Annotated[
        str | None,
        typer.Option("--file", "-f", help="The task file (acr-task.yaml): in the context, or a local file."),
    ] = None,
    cmd: Annotated[str | None, typer.Option("--cmd", help='Run one container: "<image> args".')] = None,
    values: SetOption = None,
    secret_values: SetSecretOption = None,
    platform: PlatformOption = None,
    no_logs: NoLogsOption = False,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Run a multi-step task file, or one command, once (a quick run)."""
    if (file is None) == (cmd is None):
        raise fail("give --file/-f (a task file) or --cmd, one of them", 2)
    body: dict[str, Any] = {
        "values": pairs(values, "--set"),
        "secretValues": pairs(secret_values, "--set-secret"),
    }
    if cmd is not None:
        body.update(type="cmd", cmd=cmd)
    else:
        assert file is not None
        body["type"] = "file"
        local_folder = remote_source(context) is None
        inside = local_folder and (Path(context) / file).is_file()
        if inside:
            body["file"] = file
        elif Path(file).is_file():
            body["taskFile"] = Path(file).read_text(encoding="utf-8")
        elif local_folder:
            raise fail(f"no task file {file!r} in {context} or here", 2)
        else:
            body["file"] = file  # in the remote context
    if platform:
        body["platform"] = platform
    if timeout:
        body["timeout"] = timeout
    with connect(registry) as client:
        body["source"] = context_source(client, context, None)
        started = start_run(client, body)
        follow(client, started, logs=not no_logs, wait=not no_wait, output=output)


def patch(
    image: Annotated[str, typer.Option("--image", "-t", help="The image to patch: repository:tag.")],
    tag: Annotated[
        str | None, typer.Option("--tag", help="What to push it as [default: repository:tag-patched].")
    ] = None,
    no_logs: NoLogsOption = False,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Rebuild an image with its OS packages upgraded and push it as …-patched."""
    if ":" not in image.rsplit("/", 1)[-1]:
        raise fail(f"--image {image!r}: give repository:tag", 2)
    body: dict[str, Any] = {"type": "patch", "image": image, "tag": tag or f"{image}-patched"}
    if timeout:
        body["timeout"] = timeout
    with connect(registry) as client:
        started = start_run(client, body)
        follow(client, started, logs=not no_logs, wait=not no_wait, output=output)
