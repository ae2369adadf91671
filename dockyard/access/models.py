"""Tables of the access room: identities, credentials, roles, scope maps, signing keys, settings, audit."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from dockyard.db import BIGINT, TIMESTAMP, metadata, per_dialect

#: Everyone who can sign in: the admin user, users, service principals and repository-scoped tokens.
identities = sa.Table(
    "identities",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("scope_map_id", BIGINT, sa.ForeignKey("scope_maps.id")),
    sa.Column("description", sa.String(512)),
    #: Bumped when credentials are renewed or the identity is disabled: revokes its refresh tokens.
    sa.Column("token_version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
)

#: Passwords and secrets, stored only as argon2 hashes; each may expire.
credentials = sa.Table(
    "credentials",
    metadata,
    sa.Column("identity_id", BIGINT, sa.ForeignKey("identities.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("secret_hash", sa.String(255), nullable=False),
    sa.Column("expires_at", TIMESTAMP),
    sa.Column("created_at", TIMESTAMP, nullable=False),
)

#: A role (AcrPull, Owner, …) granted to an identity on the registry or on repositories.
role_assignments = sa.Table(
    "role_assignments",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("identity_id", BIGINT, sa.ForeignKey("identities.id", ondelete="CASCADE"), nullable=False),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("scope", sa.String(300), nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.UniqueConstraint("identity_id", "role", "scope"),
)

scope_maps = sa.Table(
    "scope_maps",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("description", sa.String(512)),
    sa.Column("system", sa.Boolean, nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
)

#: One allowed action on a repository or a `prefix/*` pattern.
scope_map_rules = sa.Table(
    "scope_map_rules",
    metadata,
    sa.Column("scope_map_id", BIGINT, sa.ForeignKey("scope_maps.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("repository", sa.String(300), primary_key=True),
    sa.Column("action", sa.String(32), primary_key=True),
)

#: Keys that sign the token service's JWTs; retired keys still verify until their tokens expire.
signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("private_key", sa.Text, nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("retired_at", TIMESTAMP),
)

#: Registry-wide settings changed at run time (anonymous pull, network rules, …), one JSON value per key.
registry_settings = sa.Table(
    "registry_settings",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
)


def _upsert_setting(insert: Any) -> Any:
    statement = insert(registry_settings)
    return statement.on_conflict_do_update(
        index_elements=["key"],
        set_={"value": statement.excluded.value, "updated_at": statement.excluded.updated_at},
    )


#: Set one registry setting (``key``, ``value``, ``updated_at``), per dialect.
UPSERT_SETTING = per_dialect(_upsert_setting)
#: Set one registry setting unless it has a value already, per dialect.
INSERT_SETTING_IF_MISSING = per_dialect(
    lambda insert: insert(registry_settings).on_conflict_do_nothing(index_elements=["key"])
)

#: Sign-ins, failures and changes to access, newest last.
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("principal", sa.String(128)),
    sa.Column("client_ip", sa.String(64)),
    sa.Column("detail", sa.JSON(none_as_null=True)),
    sa.Index("ix_audit_events_created_at", "created_at"),
)
