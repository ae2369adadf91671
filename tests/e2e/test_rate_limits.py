"""Request-rate limits across processes: two `dockyard serve` nodes (three worker processes) on one
PostgreSQL, flooded at once, admit together no more than the registry's one bucket allows."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import server_group
from tests.e2e.support import ADMIN, DockyardServer
from tests.support.postgres import free_port, private_cluster

pytestmark = pytest.mark.e2e

OWNER = __name__.replace(".", "/") + ".py"
#: The registry's reads: 120 a minute (a burst of 120, then 2 a second); identities unlimited.
CAPACITY = 120
PER_SECOND = CAPACITY / 60
LEASE_SECONDS = 1.0  # dockyard.ratelimits.buckets.LEASE_SECONDS: the documented bound's slack
FLOOD_SECONDS = 6.0
THREADS_PER_NODE = 4


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, e2e_logs: Path) -> Iterator[list[DockyardServer]]:
    root = tmp_path_factory.mktemp("ratelimits")
    tiers = {"Premium": {"rates": {"read": {"registry": CAPACITY, "identity": -1}}}}
    with private_cluster() as database_url:
        env = {"DOCKYARD_DATABASE_URL": database_url, "DOCKYARD_TIERS": json.dumps(tiers)}
        with server_group() as group:
            a = DockyardServer(
                log_dir=e2e_logs,
                port=free_port(),
                data_dir=root / "a",
                owner=OWNER,
                env=env,
                extra_args=["--workers", "2"],
            )
            b = DockyardServer(log_dir=e2e_logs, port=free_port(), data_dir=root / "b", owner=OWNER, env=env)
            group.start(a, wait=False)
            group.start(b, wait=False)
            a.wait_ready()
            b.wait_ready()
            yield [a, b]


def test_two_nodes_share_the_registry_bucket(nodes: list[DockyardServer]) -> None:
    results: Counter[tuple[int, int]] = Counter()  # (node, status)
    retry_after: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + FLOOD_SECONDS
    go = threading.Barrier(len(nodes) * THREADS_PER_NODE)
    spans: list[tuple[float, float]] = []

    def flood(index: int, node: DockyardServer) -> None:
        with httpx.Client(base_url=node.url, auth=ADMIN, timeout=30.0) as client:
            client.get("/api/v1/registry").raise_for_status()  # signed in (and the management API is free)
            go.wait()
            first = time.monotonic()
            while time.monotonic() < deadline:
                response = client.get("/v2/")
                with lock:
                    results[index, response.status_code] += 1
                    if response.status_code == 429:
                        assert response.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
                        retry_after.append(int(response.headers["Retry-After"]))
            with lock:
                spans.append((first, time.monotonic()))

    threads = [
        threading.Thread(target=flood, args=(index, node))
        for index, node in enumerate(nodes)
        for _ in range(THREADS_PER_NODE)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(spans) == len(threads), "a flooding thread failed"
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    admitted = sum(count for (_, status), count in results.items() if status == 200)
    refused = sum(count for (_, status), count in results.items() if status == 429)
    assert set(status for _, status in results) == {200, 429}, results
    # The documented bound: one bucket's capacity plus its refill over the flood and one lease lifetime.
    bound = CAPACITY + PER_SECOND * (elapsed + LEASE_SECONDS)
    print(f"admitted {admitted} of {admitted + refused} in {elapsed:.1f} s (bound {bound:.0f}): {results}")
    assert admitted <= bound
    assert admitted >= CAPACITY  # leased tokens left unspent lapse, but never a whole bucket's worth
    assert all(results[index, 200] > 0 for index in range(len(nodes)))  # both nodes drew from it
    assert retry_after
    assert all(1 <= seconds <= 60 for seconds in retry_after)
