"""Run the ASGI app under granian: a small supervisor process and worker processes serving HTTP.

The supervisor never imports the application (SQLAlchemy, Starlette, the services): workers
load it after the fork, and migrations run in a short-lived child. Once the command line has
read the settings and prepared the database, it replaces itself (same PID) with a fresh
interpreter that imports granian and this module only (``supervise_from_fd``), so the
supervisor does not carry the CLI's and the settings' libraries either.

A worker stops when its supervisor dies, however it dies (even SIGKILL), and a server refuses a
port that another process still listens on: granian binds with SO_REUSEPORT, so without that
check a second server (or an orphaned worker) would silently share the address.
"""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import functools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from dockyard.config import Settings
    from dockyard.tls import ServerTls

log = logging.getLogger("dockyard")


def configure_logging(settings: Settings) -> None:
    """Log to stderr at the configured level, one line (text or a JSON object) per record."""
    configure_log_output(str(settings.log_level.value), str(settings.log_format))


def configure_log_output(level: str, log_format: str) -> None:
    """``configure_logging`` from the level's and the format's names (the supervisor has no Settings)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from dockyard.observability.logs import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # httpx logs every request's full URL at INFO: a webhook's service URI (or an upstream's) may
    # carry a credential in its query, which nothing else Dockyard writes ever shows
    logging.getLogger("httpx").setLevel(logging.WARNING)


#: How often a worker checks that its supervisor is still its parent.
SUPERVISOR_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1
_M_ARENA_MAX = -8
#: glibc malloc arenas per process. The default (8 per core) lets the worker threads' allocations
#: fragment across many arenas: 2 cut a worker's peak RSS in bench/ from 149 to 121 MiB, with no
#: CPU cost above the noise.
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas in this process and the workers it forks.

    False (nothing done) off Linux, without glibc's ``mallopt``, or when ``MALLOC_ARENA_MAX`` is set
    (glibc then reads the operator's own value).
    """
    if sys.platform != "linux" or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return mallopt is not None and mallopt(_M_ARENA_MAX, arenas) == 1


def load_app(settings_json: str, _target: str) -> object:
    """Granian's target loader, run inside each worker process."""
    from dockyard.app import create_app
    from dockyard.config import Settings

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings)
    return _DrainOnceStarted(create_app(settings))


#: Set in a worker once its app has started (``drain_when_supervisor_dies``).
_started = threading.Event()


def stop_with_supervisor(supervisor: int, *, grace: float) -> None:
    """Stop this process when ``supervisor`` (its parent) dies.

    While the worker boots, the supervisor's death kills it at once: it has nothing to drain
    yet, and a SIGTERM that reaches granian's handler during the app's startup could hang the
    worker for good. Once the app has started (``drain_when_supervisor_dies``) it gets SIGTERM
    and ``grace`` seconds to drain. On Linux the kernel sends the signal at once
    (PR_SET_PDEATHSIG). Everywhere, a watcher thread notices the new parent within
    SUPERVISOR_POLL_SECONDS and does the same.
    """
    _set_death_signal(signal.SIGKILL)
    print_stacks_on_sigusr2(restart=True)
    threading.Thread(
        target=_watch_supervisor, args=(supervisor, grace), name="dockyard-supervisor-watch", daemon=True
    ).start()


def print_stacks_on_sigusr2(*, restart: bool) -> None:
    """``kill -USR2`` prints this process's stacks (``_print_stacks``) instead of ending it.
    Call it from the main thread.

    ``restart`` (SA_RESTART): a system call the signal interrupts in a native thread (granian's,
    libpq's) resumes rather than failing with EINTR; for a worker, whose main thread waits in
    epoll, which the signal interrupts anyway. The supervisor's main thread waits on a lock,
    which the kernel would restart: there the signal must interrupt it for the handler to run.
    """
    signal.signal(signal.SIGUSR2, _print_stacks)
    signal.siginterrupt(signal.SIGUSR2, not restart)


def _print_stacks(signum: int, frame: object) -> None:
    """``kill -USR2 <worker>``: print every thread's stack to stderr.

    A Python-level handler: it runs in the main thread (the event loop's) holding the interpreter
    lock, so no other thread's frames change while they are read. faulthandler's own C-level
    handler reads them without the lock and can crash a worker that is busy in several threads.
    The loop wakes for a signal however idle it is, and a main thread blocked in a wait (a lock,
    poll, sleep: calls the kernel never restarts) runs the handler too; one stuck in native code
    that holds the lock does not."""
    faulthandler.dump_traceback(all_threads=True)


def drain_when_supervisor_dies() -> None:
    """The worker's app has started: from now on the supervisor's death lets it drain (SIGTERM)."""
    _started.set()
    _set_death_signal(signal.SIGTERM)


def _set_death_signal(signum: int) -> None:
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))


def _watch_supervisor(supervisor: int, grace: float) -> None:
    while os.getppid() == supervisor:
        time.sleep(SUPERVISOR_POLL_SECONDS)
    if not _started.is_set():
        log.warning(
            "the supervisor (PID %d) has gone while worker %d booted; it exits", supervisor, os.getpid()
        )
        os._exit(1)
    log.warning("the supervisor (PID %d) has gone; worker %d stops", supervisor, os.getpid())
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        # Again and again: a SIGTERM that arrives before the event loop handles the signal is lost.
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(SUPERVISOR_POLL_SECONDS)
    log.error("worker %d did not stop within %.0f s of its supervisor's death; exiting", os.getpid(), grace)
    os._exit(1)


class _DrainOnceStarted:
    """The app, telling its worker when its lifespan startup has completed
    (``drain_when_supervisor_dies``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def telling(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                drain_when_supervisor_dies()
            await send(message)

        await self.app(scope, receive, telling)


def port_in_use(host: str, port: int) -> str | None:
    """Why ``dockyard serve`` cannot listen on ``host:port``, or None when the port is free.

    Binds once without SO_REUSEPORT, which fails while any process listens on the port (with or
    without SO_REUSEPORT). SO_REUSEADDR lets connections of a stopped server in TIME_WAIT pass.
    """
    if port == 0:
        return None
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        return f"cannot listen on {where}: {exc.strerror}"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"cannot listen on {where}: another process already holds port {port}"
            return f"cannot listen on {where}: {exc.strerror}"
    return None


def _prepare_database(settings_json: str) -> None:
    """Migrate the schema and, on a new registry, create the admin user (showing its passwords once)."""
    from dockyard.access.services import bootstrap, build_access_services
    from dockyard.config import Settings
    from dockyard.db import Database
    from dockyard.migrations import upgrade
    from dockyard.observability.logs import write_notice

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings)
    db = Database(settings.database_url, pool_size=1)
    try:
        if settings.migrate_on_start:
            upgrade(db)
        access = build_access_services(settings, db)
        created = bootstrap(settings, access)
        admin = access.identities.admin()
    finally:
        db.dispose()
    disabled = admin is not None and not admin.enabled
    if created:
        state = " (disabled until `dockyard admin enable`)" if disabled else ""
        lines = [
            "",
            f"Admin user created{state}; its passwords are shown only now:",
            f"  username:  {settings.admin_username}",
            *(f"  {c.name + ':':<10} {c.value}" for c in created),
            "Log in with: dockyard login / docker login / podman login / skopeo --creds",
            "",
        ]
        write_notice("\n".join(lines), settings.log_format)
    if disabled:
        log.warning(
            "the admin user %r is disabled; set DOCKYARD_ADMIN_PASSWORD at first start, or run "
            "`dockyard admin enable` where the database is reachable",
            admin.name,
        )


def _allow_open_files(wanted: int) -> None:
    """Raise this process's (and so its workers') open-file limit towards ``wanted``: every
    connection holds a descriptor, and the usual soft limit of 1,024 would cap them first."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def prepare(settings: Settings) -> None:
    """Create the data folder, migrate the schema and bootstrap access (in a child process)."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # private images, signing keys
    child = multiprocessing.get_context("fork").Process(
        target=_prepare_database, args=(settings.child_json(),)
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"preparing the database failed (exit code {child.exitcode}); see the log above")


def serve(
    settings: Settings,
    *,
    workers: int = 1,
    tls: ServerTls | None = None,
    announce: Callable[[], None] | None = None,
) -> None:
    """Serve the registry until interrupted: HTTPS with ``tls`` (from `dockyard.tls.configure`), else HTTP.

    Checks the port, prepares the database, calls ``announce`` (the start banner), then becomes
    the supervisor (``supervise``) in a fresh interpreter with the same PID.
    """
    configure_logging(settings)
    refusal = port_in_use(settings.host, settings.port)
    if refusal is not None:
        raise SystemExit(f"ERROR: {refusal}")
    prepare(settings)
    if announce is not None:
        announce()
    created_metrics_dir = None
    if settings.metrics_enabled:
        from dockyard.observability import multiprocess

        if settings.metrics_dir is None:
            created_metrics_dir = multiprocess.fresh_multiprocess_dir()
            settings = settings.model_copy(update={"metrics_dir": created_metrics_dir})
        # Before any worker exists: prometheus_client picks its multiprocess mode at import.
        os.environ[multiprocess.ENV] = str(settings.metrics_dir)
    _allow_open_files(settings.max_connections + 1024)
    plan = {
        "settings": settings.child_json(),
        "host": settings.host,
        "port": settings.port,
        "workers": workers,
        "log_level": str(settings.log_level.value),
        "log_format": str(settings.log_format),
        "shutdown_timeout": settings.shutdown_timeout_seconds,
        "max_connections": settings.max_connections,
        "header_timeout_ms": settings.header_timeout_seconds * 1000,
        "tls": None if tls is None else {"cert": str(tls.cert), "key": str(tls.key)},
        "remove_on_exit": None if created_metrics_dir is None else str(created_metrics_dir),
    }
    _become_supervisor(plan)


#: A plan longer than this is not passed through a pipe (whose buffer the writer must not fill).
_PLAN_PIPE_BYTES = 60_000


def _become_supervisor(plan: dict[str, Any]) -> None:
    """Replace this process with a fresh interpreter that runs ``supervise(plan)``; the plan
    (secrets included) goes through an inherited pipe, not the command line or environment."""
    data = json.dumps(plan).encode()
    if sys.platform != "linux" or len(data) > _PLAN_PIPE_BYTES:
        supervise(plan)
        return
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    os.set_inheritable(read_end, True)
    sys.stdout.flush()
    sys.stderr.flush()
    # The command line stays visible after the code (for ps and pgrep), and is otherwise unused.
    code = "import sys; from dockyard.server import supervise_from_fd; supervise_from_fd(int(sys.argv[1]))"
    os.execv(sys.executable, [sys.executable, "-c", code, str(read_end), *sys.argv])  # noqa: S606 (our own interpreter)


def supervise_from_fd(fd: int) -> None:
    """The fresh supervisor's entry point: read the plan from ``fd`` and ``supervise`` it."""
    with os.fdopen(fd, "rb") as source:
        plan = json.loads(source.read())
    try:
        supervise(plan)
    except KeyboardInterrupt:
        sys.exit(130)


def supervise(plan: dict[str, Any]) -> None:
    """Run granian's supervisor and its workers until interrupted (``plan``: see ``serve``)."""
    from granian.constants import Interfaces, Loops, SSLProtocols
    from granian.http import HTTP1Settings
    from granian.server import Server

    configure_log_output(plan["log_level"], plan["log_format"])
    limit_malloc_arenas()  # before granian forks its workers, which inherit the setting
    log_options = {}
    if plan["log_format"] == "json":
        from dockyard.observability.logs import granian_log_config

        log_options = {"log_dictconfig": granian_log_config()}
    ssl_options = {}
    if plan["tls"] is not None:
        # TLS 1.2 as the floor: every registry client speaks it, and some older ones no more.
        ssl_options = {
            "ssl_cert": Path(plan["tls"]["cert"]),
            "ssl_key": Path(plan["tls"]["key"]),
            "ssl_protocol_min": SSLProtocols.tls12,
        }
    server = Server(
        "dockyard",
        address=plan["host"],
        port=plan["port"],
        interface=Interfaces.ASGI,
        workers=plan["workers"],
        loop=Loops.auto,  # uvloop (a dependency) when importable: about a quarter less CPU per request
        log_level=plan["log_level"],
        log_access=False,
        websockets=False,
        workers_kill_timeout=plan["shutdown_timeout"],
        backlog=4096,
        backpressure=plan["max_connections"],
        http1_settings=HTTP1Settings(header_read_timeout=plan["header_timeout_ms"]),
        **ssl_options,
        **log_options,
    )
    loader = functools.partial(load_app, plan["settings"])
    # Armed in each worker the moment it is forked, not when granian gets round to the loader: a
    # supervisor killed while a worker still boots (or imports the app) must not leave it orphaned.
    supervisor, grace = os.getpid(), plan["shutdown_timeout"]
    os.register_at_fork(after_in_child=lambda: stop_with_supervisor(supervisor, grace=grace))
    print_stacks_on_sigusr2(restart=False)  # a USR2 sent to every process of the server must not end it
    try:
        server.serve(target_loader=loader)
    finally:
        if plan["remove_on_exit"] is not None:
            shutil.rmtree(plan["remove_on_exit"], ignore_errors=True)
