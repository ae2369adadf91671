"""/metrics: request series by route template, pushes/pulls, state from the database, who may read it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from dockyard.app import create_app
from dockyard.db import utcnow
from dockyard.observability.metrics import Metrics
from dockyard.webhooks.models import deliveries, webhooks
from tests.support.auth import create_user
from tests.support.images import make_image
from tests.support.registry import push_image

MANIFEST_ROUTE = "/v2/{name}/manifests/{reference}"


@pytest.fixture
def settings(settings):
    """Fresh state at every scrape, so a test sees what it just changed."""
    return settings.model_copy(update={"metrics_state_seconds": 0})


def test_state_is_read_once_per_window_however_many_scrapes(dockyard, statements):
    metrics = Metrics(dockyard.db, state_seconds=60)
    first = list(metrics.state.collect())
    statements.clear()
    for _ in range(20):
        assert [m.name for m in metrics.state.collect()] == [m.name for m in first]
    assert statements == []


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, keyed by name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def scrape(client: TestClient) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


def test_push_and_pull_move_the_counts_labelled_by_route_template(client):
    image = make_image("metrics")
    before = scrape(client)
    assert value(before, "dockyard_manifest_pushes_total") == 0
    push_image(client, "team/app", image, tag="v1")
    assert client.get("/v2/team/app/manifests/v1", headers={"Accept": image.media_type}).status_code == 200
    assert client.head("/v2/team/app/manifests/v1", headers={"Accept": image.media_type}).status_code == 200
    assert client.get("/v2/team/app/manifests/nope").status_code == 404
    text = client.get("/metrics").text
    after = samples(text)

    assert value(after, "dockyard_manifest_pushes_total") == 1
    assert value(after, "dockyard_manifest_pulls_total") == 1  # GET 200 only: not the HEAD, not the 404
    put = {"route": MANIFEST_ROUTE, "method": "PUT"}
    get = {"route": MANIFEST_ROUTE, "method": "GET"}
    assert value(after, "dockyard_http_requests_total", **put, status="201") == 1
    assert value(after, "dockyard_http_requests_total", **get, status="200") == 1
    assert value(after, "dockyard_http_requests_total", **get, status="404") == 1
    assert (
        value(after, "dockyard_http_requests_total", route=MANIFEST_ROUTE, method="HEAD", status="200") == 1
    )
    assert value(after, "dockyard_http_request_duration_seconds_count", **get) == 2
    assert value(after, "dockyard_http_request_bytes_total", **put) == len(image.manifest)
    assert value(after, "dockyard_http_response_bytes_total", **get) >= len(image.manifest)
    blob_uploads = {"route": "/v2/{name}/blobs/uploads/{upload_id}", "method": "PUT", "status": "201"}
    assert value(after, "dockyard_http_requests_total", **blob_uploads) == len(image.blobs)
    assert "team/app" not in text  # raw paths never become labels
    assert value(after, "dockyard_storage_blobs") == len(image.blobs)
    assert value(after, "dockyard_storage_used_bytes") == sum(len(blob.data) for blob in image.blobs)


def test_unmatched_paths_and_invented_methods_share_bounded_labels(client):
    for path in ("/nothing/here", "/another/random/path", "/x?y=1"):
        assert client.get(path).status_code == 404
    assert client.request("BREW", "/v2/").status_code == 405
    after = scrape(client)
    assert value(after, "dockyard_http_requests_total", route="unmatched", method="GET", status="404") == 3
    assert value(after, "dockyard_http_requests_total", route="/v2/", method="other", status="405") == 1


def test_webhook_backlog_is_read_from_the_database(client, dockyard):
    now = utcnow()
    with dockyard.db.write() as conn:
        hook = conn.execute(
            webhooks.insert().values(
                name="hookone",
                uri="http://hooks.example/h",
                actions=["push"],
                headers={},
                enabled=True,
                payload_format="acr",
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key[0]
        row = {
            "webhook_id": hook,
            "action": "push",
            "body": b"{}",
            "attempts": 0,
            "next_attempt_at": now,
            "retry_until": now,
            "updated_at": now,
        }
        conn.execute(
            deliveries.insert(),
            [
                {**row, "event_uid": "a", "status": "pending", "created_at": now.replace(year=now.year - 1)},
                {**row, "event_uid": "b", "status": "pending", "created_at": now},
                {**row, "event_uid": "c", "status": "dead", "attempts": 5, "created_at": now},
                {**row, "event_uid": "d", "status": "succeeded", "created_at": now},
            ],
        )
    scraped = scrape(client)
    assert value(scraped, "dockyard_webhook_deliveries", state="pending") == 2
    assert value(scraped, "dockyard_webhook_deliveries", state="delivering") == 0
    assert value(scraped, "dockyard_webhook_deliveries", state="dead") == 1
    assert value(scraped, "dockyard_webhook_oldest_pending_seconds") > 364 * 86400


def test_the_job_runtime_hook_reports_its_queue(dockyard):
    stats = SimpleNamespace(queue_depth=7, oldest_due_age_seconds=12.5)
    scraped = samples(Metrics(dockyard.db, job_stats=lambda: stats).render().decode())
    assert value(scraped, "dockyard_jobs_queue_depth") == 7
    assert value(scraped, "dockyard_jobs_oldest_due_seconds") == 12.5
    assert value(samples(Metrics(dockyard.db).render().decode()), "dockyard_jobs_queue_depth") == 0


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.7.8", "::1"])
def test_private_addresses_scrape_without_credentials(app, address):
    with TestClient(app, client=(address, 40000)) as anonymous:
        assert anonymous.get("/metrics").status_code == 200


def test_other_addresses_need_a_registry_reader(app, client):
    reader = create_user(client, "watcher", role="Reader")
    puller = create_user(client, "puller", role="AcrPull")
    with TestClient(app, client=("203.0.113.9", 40000)) as outside:
        refused = outside.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer realm=")
        assert "dockyard_http_requests_total" not in refused.text
        assert outside.get("/metrics", headers=puller).status_code == 403
        assert outside.get("/metrics", headers=reader).status_code == 200


def test_a_forwarded_client_is_judged_by_its_own_address(settings, dockyard):
    """Behind a trusted proxy (itself on a private network) the forwarded address decides."""
    proxied = create_app(settings.model_copy(update={"trusted_proxies": ["10.0.0.0/8"]}), dockyard)
    with TestClient(proxied, client=("10.0.0.2", 40000)) as via_proxy:
        assert via_proxy.get("/metrics", headers={"X-Forwarded-For": "198.51.100.4"}).status_code == 401
        assert via_proxy.get("/metrics", headers={"X-Forwarded-For": "10.9.9.9"}).status_code == 200


def test_metrics_networks_and_switching_metrics_off(settings, dockyard):
    narrow = create_app(settings.model_copy(update={"metrics_networks": ["192.0.2.0/24"]}), dockyard)
    with (
        TestClient(narrow, client=("10.1.2.3", 1)) as private,
        TestClient(narrow, client=("192.0.2.9", 1)) as ok,
    ):
        assert private.get("/metrics").status_code == 401
        assert ok.get("/metrics").status_code == 200
    off = create_app(settings.model_copy(update={"metrics_enabled": False}), dockyard)
    with TestClient(off, client=("127.0.0.1", 1)) as local:
        assert local.get("/metrics").status_code == 404


def test_scrape_holds_no_secrets(client, dockyard):
    text = client.get("/metrics").text
    assert "dockyard_storage_used_bytes" in text
    for secret in ("password", "secret", "token", dockyard.settings.admin_password):
        assert secret not in text.lower()


def test_a_database_outage_still_serves_the_request_series(app, dockyard, monkeypatch):
    with TestClient(app, client=("127.0.0.1", 40000)) as local:  # no sign-in: nothing else reads
        assert value(scrape(local), "dockyard_state_up") == 1

        def down(*args, **kwargs):
            raise ConnectionRefusedError("connection refused")

        monkeypatch.setattr(dockyard.db, "read", down)
        scraped = scrape(local)
    assert value(scraped, "dockyard_state_up") == 0
    assert ("dockyard_storage_used_bytes", frozenset()) not in scraped
    assert value(scraped, "dockyard_http_requests_total", route="/metrics", method="GET", status="200") == 1
