"""The access room's behaviour, free of HTTP, built together."""

from __future__ import annotations

from dataclasses import dataclass

from dockyard.access.services.audit import AuditService
from dockyard.access.services.authentication import Authenticator
from dockyard.access.services.identities import CredentialInfo, IdentityService
from dockyard.access.services.scope_maps import ScopeMapService
from dockyard.access.services.settings import RegistrySettingsService
from dockyard.access.tokens import TokenService
from dockyard.config import Settings
from dockyard.db import Database
from dockyard.tiers.services import TierService


@dataclass(frozen=True)
class AccessServices:
    identities: IdentityService
    scope_maps: ScopeMapService
    settings: RegistrySettingsService
    audit: AuditService
    tokens: TokenService
    authenticator: Authenticator
    db: Database
    #: The tiers room's service (limits every create checks).
    tiers: TierService


#: Held (Database.exclusive) during first-start setup, so nodes starting together create it once.
BOOTSTRAP_LOCK = "dockyard.bootstrap"


def build_access_services(
    settings: Settings, db: Database, tiers: TierService | None = None
) -> AccessServices:
    tiers = tiers or TierService(db, settings)
    tokens = TokenService(
        db,
        service=settings.registry_name,
        access_lifetime=settings.access_token_seconds,
        refresh_lifetime=settings.refresh_token_seconds,
        refresh_chain=settings.refresh_chain_seconds,
    )
    authenticator = Authenticator(db, tokens)
    return AccessServices(
        identities=IdentityService(db, tiers, on_change=authenticator.forget),
        scope_maps=ScopeMapService(db, tiers, on_change=authenticator.forget),
        settings=RegistrySettingsService(db, tiers),
        audit=AuditService(db),
        tokens=tokens,
        authenticator=authenticator,
        db=db,
        tiers=tiers,
    )


def bootstrap(settings: Settings, access: AccessServices) -> list[CredentialInfo]:
    """First-start setup: system scope maps and the admin user.

    The admin user is enabled in the embedded (SQLite) deployment and when
    ``DOCKYARD_ADMIN_PASSWORD`` is set; otherwise it starts disabled. Returns the admin's
    passwords when they were generated now (to be shown once), else nothing.
    """
    password = settings.admin_password or None
    enabled = settings.database_url.startswith("sqlite") or password is not None
    # Nodes starting together on a new database: one creates, the others then find it all there.
    with access.db.exclusive(BOOTSTRAP_LOCK):
        access.scope_maps.ensure_system_maps()
        access.tokens.ensure_key()
        created = access.identities.bootstrap_admin(settings.admin_username, password, enabled=enabled)
    return [c for c in created if c.value and not (password and c.value == password)]
