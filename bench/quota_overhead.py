"""What the storage quota adds to a blob push, in-process, on SQLite with many blobs stored.

    .venv/bin/python bench/quota_overhead.py [--blobs 200000] [--pushes 300]

Pushes 4 KiB blobs through UploadService (start + closing PUT, the monolithic path) with:
no quota (as before the tiers room), an unlimited tier (-1: no database read), a limited tier
with the stored-bytes figure cached per process (what ships), and the same summing the blobs
table on every check (cache 0 s: the design not taken). Also prints one stored-bytes read.
Median and minimum of five rounds, in ms per push.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from dockyard.app import build
from dockyard.config import Settings
from dockyard.db import utcnow
from dockyard.migrations import upgrade
from dockyard.registry.models import blobs
from dockyard.tiers.quota import StorageQuota
from dockyard.tiers.services import stored_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blobs", type=int, default=200_000, help="blob rows stored before measuring")
    parser.add_argument("--pushes", type=int, default=300, help="pushes per round")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="quota-bench-"))
    settings = Settings(data_dir=folder, database_url=f"sqlite:///{folder}/dockyard.db", access_log=False)
    parts = build(settings)
    upgrade(parts.db)
    now = utcnow()
    with parts.db.write() as conn:
        for start in range(0, args.blobs, 10_000):
            rows = [
                {
                    "digest": f"sha256:{hashlib.sha256(str(i).encode()).hexdigest()}",
                    "size": 1000,
                    "created_at": now,
                }
                for i in range(start, min(start + 10_000, args.blobs))
            ]
            conn.execute(blobs.insert(), rows)
    with parts.db.read() as conn:
        began = time.perf_counter()
        used = stored_bytes(conn)
        read_ms = (time.perf_counter() - began) * 1000
    print(f"{args.blobs} blobs stored ({used} bytes); one stored-bytes read: {read_ms:.1f} ms")

    tiers = parts.service("tiers")
    uploads = parts.registry.uploads
    premium = tiers.current()
    counter = [0]

    def push() -> None:
        counter[0] += 1
        data = hashlib.shake_256(f"bench{counter[0]}".encode()).digest(4096)
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        state = uploads.start("bench/app")
        uploads.complete("bench/app", state.id, digest, iter((data,)), content_length=len(data))

    def variant(name: str, quota: StorageQuota | None, storage_bytes: int) -> None:
        tiers.table[premium.sku] = dataclasses.replace(premium, storage_bytes=storage_bytes)
        tiers.forget()
        uploads._quota = quota  # swapping the hook is the point of the bench
        push()  # warm up
        rounds = []
        for _ in range(5):
            began = time.perf_counter()
            for _ in range(args.pushes):
                push()
            rounds.append((time.perf_counter() - began) * 1000 / args.pushes)
        print(f"{name:<40} median {statistics.median(rounds):.3f} ms/push, min {min(rounds):.3f}")

    big = 10**15
    variant("no quota (before)", None, -1)
    variant("unlimited tier (-1)", StorageQuota(parts.db, tiers), -1)
    variant("limited tier, figure cached 5 s", StorageQuota(parts.db, tiers), big)
    variant("limited tier, SUM on every check", StorageQuota(parts.db, tiers, cache_seconds=0), big)
    with parts.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(blobs)).scalar_one() > args.blobs
    parts.db.dispose()


if __name__ == "__main__":
    main()
