"""/healthz and /readyz: no credentials needed, and readiness names what is down."""

from __future__ import annotations


def test_alive_and_ready_without_credentials(anonymous):
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"database": "ok", "storage": "ok"}}
    assert anonymous.head("/readyz").status_code == 200


def test_not_ready_when_the_database_fails(anonymous, dockyard, monkeypatch):
    def down(*args, **kwargs):
        raise ConnectionRefusedError("connection refused")

    assert anonymous.get("/healthz").status_code == 200  # the network rules are cached from here on
    monkeypatch.setattr(dockyard.db, "read", down)
    ready = anonymous.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": "unavailable: ConnectionRefusedError", "storage": "ok"}
    assert anonymous.get("/healthz").status_code == 200  # alive, not ready


def test_not_ready_when_the_store_fails(anonymous, dockyard, monkeypatch):
    def down(digest):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(dockyard.store, "stat", down)
    ready = anonymous.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["storage"] == "unavailable: OSError"
    assert ready.json()["checks"]["database"] == "ok"
