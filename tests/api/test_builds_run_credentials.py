"""A build run's registry credential lives while the run does: the run's end, its recovery after
its worker died, or its expiry revokes it."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from dockyard.access.models import credentials, identities
from dockyard.builds.credentials import RUN_CREDENTIAL_PREFIX, SYSTEM_IDENTITY
from dockyard.db import utcnow
from tests.support.auth import basic
from tests.support.builds import FakeEngine, set_run, use_engine

SCOPE = {"service": "dockyard", "scope": "repository:built/app:pull,push"}


def token_status(client, username: str, password: str) -> int:
    """What /oauth2/token answers the run's login (the way builders sign in)."""
    return client.get("/oauth2/token", params=SCOPE, headers=basic(username, password)).status_code


def run_credential_names(dockyard) -> set[str]:
    with dockyard.db.read() as conn:
        return set(
            conn.execute(
                sa.select(credentials.c.name)
                .join(identities, identities.c.id == credentials.c.identity_id)
                .where(
                    identities.c.name == SYSTEM_IDENTITY, credentials.c.name.startswith(RUN_CREDENTIAL_PREFIX)
                )
            ).scalars()
        )


class SignsIn(FakeEngine):
    """Records what /oauth2/token answered the run's credential while the run was executing."""

    def __init__(self, client) -> None:
        super().__init__()
        self.client = client
        self.during: list[int] = []

    def execute(self, spec, context, variables, *, registry, **kwargs):  # type: ignore[override]
        self.during.append(token_status(self.client, registry.username, registry.password))
        return super().execute(spec, context, variables, registry=registry, **kwargs)


def test_a_runs_credential_works_during_the_run_and_not_after(client, dockyard) -> None:
    engine = use_engine(dockyard, SignsIn(client))
    first = client.post("/api/v1/runs", json={"type": "cmd", "cmd": "busybox true"}).json()["runId"]
    second = client.post("/api/v1/runs", json={"type": "cmd", "cmd": "busybox true"}).json()["runId"]
    dockyard.runtime.run_jobs()
    assert client.get(f"/api/v1/runs/{first}").json()["status"] == "Succeeded"
    assert client.get(f"/api/v1/runs/{second}").json()["status"] == "Succeeded"
    assert engine.during == [200, 200]
    one, two = engine.registries
    assert one.password != two.password
    for access in (one, two):
        assert token_status(client, access.username, access.password) == 401
    assert run_credential_names(dockyard) == set()


def test_a_failed_run_revokes_its_credential_too(client, dockyard) -> None:
    class Fails(SignsIn):
        def execute(self, spec, context, variables, *, registry, **kwargs):  # type: ignore[override]
            super().execute(spec, context, variables, registry=registry, **kwargs)
            raise OSError("the disk is full")

    engine = use_engine(dockyard, Fails(client))
    run = client.post("/api/v1/runs", json={"type": "cmd", "cmd": "busybox true"}).json()["runId"]
    dockyard.runtime.run_jobs()
    assert client.get(f"/api/v1/runs/{run}").json()["status"] in ("Failed", "Error")
    assert engine.during == [200]
    access = engine.registries[0]
    assert token_status(client, access.username, access.password) == 401


def test_recovering_a_dead_workers_run_revokes_its_credential(client, dockyard) -> None:
    builds = dockyard.service("builds")
    stale = client.post("/api/v1/runs", json={"type": "cmd", "cmd": "x"}).json()["runId"]
    alive = client.post("/api/v1/runs", json={"type": "cmd", "cmd": "x"}).json()["runId"]
    dead_access = builds.credentials.mint(stale, 600)
    live_access = builds.credentials.mint(alive, 600)
    set_run(dockyard, stale, status="Running", heartbeat_at=utcnow() - timedelta(seconds=31), worker="gone")
    set_run(dockyard, alive, status="Running", heartbeat_at=utcnow(), worker="alive")
    assert token_status(client, dead_access.username, dead_access.password) == 200
    assert builds.jobs.recover() == 1
    assert token_status(client, dead_access.username, dead_access.password) == 401
    assert token_status(client, live_access.username, live_access.password) == 200
    assert run_credential_names(dockyard) == {RUN_CREDENTIAL_PREFIX + alive}


def test_a_revocation_sweeps_expired_run_credentials_and_keeps_the_rest(client, dockyard) -> None:
    builds = dockyard.service("builds")
    for run_id in ("dyold", "dykept", "dydone"):
        builds.credentials.mint(run_id, 600)
    with dockyard.db.write() as conn:
        conn.execute(
            credentials.update()
            .where(credentials.c.name == RUN_CREDENTIAL_PREFIX + "dyold")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    builds.credentials.revoke(["dydone"])
    assert run_credential_names(dockyard) == {RUN_CREDENTIAL_PREFIX + "dykept"}
    with dockyard.db.read() as conn:  # the identity's own credential is not a run's: never swept
        names = conn.execute(
            sa.select(credentials.c.name)
            .join(identities, identities.c.id == credentials.c.identity_id)
            .where(identities.c.name == SYSTEM_IDENTITY)
        ).scalars()
        assert len([name for name in names if not name.startswith(RUN_CREDENTIAL_PREFIX)]) == 1


def test_minting_again_for_a_run_replaces_its_credential(client, dockyard) -> None:
    """A run's job retried on another node mints again: the earlier token stops working."""
    builds = dockyard.service("builds")
    first = builds.credentials.mint("dyagain", 600)
    second = builds.credentials.mint("dyagain", 600)
    assert token_status(client, second.username, second.password) == 200
    assert token_status(client, first.username, first.password) == 401


def test_signing_in_as_the_task_identity_checks_no_more_hashes_than_for_anyone(
    anonymous, dockyard, monkeypatch
) -> None:
    """Each running build adds a credential row to ``system:tasks``: a password sign-in as it must
    not check one costly hash per run (nor ever succeed: nobody knows those secrets)."""
    from dockyard.access.services import authentication

    builds = dockyard.service("builds")
    for number in range(authentication.CREDENTIALS_CHECKED + 3):
        builds.credentials.mint(f"dymany{number}", 600)
    checked: list[str] = []
    verify = authentication.verify_secret

    def counting(secret_hash: str, password: str) -> bool:
        checked.append(secret_hash)
        return verify(secret_hash, password)

    monkeypatch.setattr(authentication, "verify_secret", counting)
    form = {"grant_type": "password", "username": SYSTEM_IDENTITY, "password": "guess", "service": "dockyard"}
    answer = anonymous.post("/oauth2/token", data=form)  # Basic cannot carry a name holding ':'
    assert answer.status_code == 401, answer.text
    assert len(checked) == authentication.CREDENTIALS_CHECKED
