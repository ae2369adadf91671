"""The folder where `dockyard serve`'s worker processes share metric values (prometheus_client's
multiprocess mode). Imported by the supervisor, which must not import prometheus_client: the
library picks its mode at import from ``PROMETHEUS_MULTIPROC_DIR``, and forked workers inherit it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

#: The environment variable prometheus_client reads at import.
ENV = "PROMETHEUS_MULTIPROC_DIR"


#: Folder names are this prefix, the supervisor's pid, a dash and random characters.
PREFIX = "dockyard-metrics-"


def memory_root() -> Path:
    """Where the folder goes: ``/dev/shm`` when it is a writable folder, else the temp folder.

    Never the data dir: prometheus_client writes through memory-mapped files, and a page of a
    mapped file that cannot be allocated on a full disk kills the worker with SIGBUS.
    """
    shm = Path("/dev/shm")  # noqa: S108 - folders are made by mkdtemp (random name, mode 0700)
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def fresh_multiprocess_dir(root: Path | None = None) -> Path:
    """A new private ``<root>/dockyard-metrics-<pid>-<random>`` for this server.

    Folders this user left there for servers that no longer run are removed.
    """
    root = memory_root() if root is None else root
    for folder in root.glob(PREFIX + "*"):
        pid = folder.name.removeprefix(PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and _ours(folder):
            shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root))


def _ours(folder: Path) -> bool:
    stat = folder.lstat()
    return folder.is_dir() and not folder.is_symlink() and stat.st_uid == os.geteuid()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
