"""A real small filesystem for "disk full" tests: tmpfs mounted as root, or a simulated quota otherwise."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dockyard.storage import filesystem


class SmallFilesystem:
    """``size`` bytes of space at ``path``, with a ballast file to take up room on demand."""

    def __init__(self, path: Path, size: int, *, mounted: bool) -> None:
        self.path = path
        self.size = size
        self.mounted = mounted
        self.ballast = path / "ballast"

    def used(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def free(self) -> int:
        if self.mounted:
            stats = os.statvfs(self.path)
            return stats.f_bavail * stats.f_frsize
        return self.size - self.used()

    def fill(self, leave: int) -> None:
        """Grow the ballast until only about ``leave`` bytes are free."""
        with self.ballast.open("ab") as handle:
            handle.write(b"\0" * max(self.free() - leave, 0))

    def release(self) -> None:
        """Remove the ballast: the space an operator frees."""
        self.ballast.unlink(missing_ok=True)


@contextmanager
def small_filesystem(path: Path, size: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallFilesystem]:
    """A tmpfs of ``size`` bytes mounted at ``path`` (unmounted afterwards).

    Where mounting is not allowed (not root), the filesystem blob store's upload writes under
    ``path`` fail with ENOSPC past ``size`` bytes, and so does an fsync while more is used there.
    """
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
    )
    space = SmallFilesystem(path, size, mounted=mount.returncode == 0)
    if not space.mounted:
        real_fdopen = os.fdopen

        def quota_fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
            file = real_fdopen(fd, *args, **kwargs)
            inside = Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(path)
            return _QuotaFile(file, space) if inside else file

        real_fsync = os.fsync

        def quota_fsync(fd: int) -> None:
            # As on filesystems with delayed allocation, a write past the space fails at the latest here.
            inside = Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(path)
            if inside and space.used() > size:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(filesystem.os, "fdopen", quota_fdopen, raising=True)
        monkeypatch.setattr(filesystem.os, "fsync", quota_fsync, raising=True)
    try:
        yield space
    finally:
        if space.mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)


class _QuotaFile:
    """A raw file whose writes fail with ENOSPC past the small filesystem's size."""

    def __init__(self, file: Any, space: SmallFilesystem) -> None:
        self._file = file
        self._space = space

    def write(self, data: bytes | memoryview) -> int:
        if len(data) > self._space.free():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._file.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)
