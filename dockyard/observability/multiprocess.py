"""The folder where `dockyard serve`'s worker processes share metric values (prometheus_client's
multiprocess mode). Imported by the supervisor, which must not import prometheus_client: the
library picks its mode at import from ``PROMETHEUS_MULTIPROC_DIR``, and forked workers inherit it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: The environment variable prometheus_client reads at import.
ENV = "PROMETHEUS_MULTIPROC_DIR"


def fresh_multiprocess_dir(data_dir: Path) -> Path:
    """An empty ``<data_dir>/metrics/<pid>`` for this server; folders of dead servers are removed."""
    root = data_dir / "metrics"
    root.mkdir(parents=True, exist_ok=True)
    for folder in root.iterdir():
        if folder.name.isdigit() and not _alive(int(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)
    path = root / str(os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
