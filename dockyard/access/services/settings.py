"""Registry-wide settings changed at run time: the SKU, anonymous pull and network rules.

Each change is checked against the tier inside its transaction (``TierService.lock`` first):
a feature the tier lacks or a count past its limit is 409 LIMIT_EXCEEDED, and so is a SKU
change while the registry holds more than the new tier allows.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from dockyard.access.models import INSERT_SETTING_IF_MISSING, UPSERT_SETTING, registry_settings
from dockyard.db import Database, utcnow
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.tiers.services import SKU_KEY, TierService, limit_exceeded
from dockyard.tiers.table import Sku

#: Other processes see a change within this many seconds; this process at once.
CACHE_SECONDS = 5.0
DEFAULT_ACTIONS = ("Allow", "Deny")


@dataclass(frozen=True)
class RegistrySettings:
    """ACR's registry properties that Dockyard changes at run time."""

    anonymous_pull_enabled: bool = False
    public_network_access: bool = True
    default_action: str = "Allow"
    ip_rules: tuple[str, ...] = ()


def _invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.INVALID_REQUEST, message)


def normalize_rule(rule: str) -> str:
    """An IPv4/IPv6 address or CIDR, normalised (``10.0.0.7/8`` → ``10.0.0.0/8``)."""
    try:
        return str(ipaddress.ip_network(rule.strip(), strict=False))
    except ValueError:
        raise _invalid(f"{rule!r} is not an IP address or CIDR range") from None


class RegistrySettingsService:
    """Reads (cached) and changes the registry's run-time settings."""

    def __init__(self, db: Database, tiers: TierService) -> None:
        self._db = db
        self._tiers = tiers
        self._cached: tuple[RegistrySettings, float] | None = None
        self._lock = threading.Lock()

    def get(self) -> RegistrySettings:
        with self._lock:
            cached = self._cached
        if cached is not None and time.monotonic() - cached[1] < CACHE_SECONDS:
            return cached[0]
        with self._db.read() as conn:
            stored = dict(conn.execute(sa.select(registry_settings.c.key, registry_settings.c.value)).all())
        fields = {k: v for k, v in stored.items() if k in RegistrySettings.__dataclass_fields__}
        if "ip_rules" in fields:
            fields["ip_rules"] = tuple(fields["ip_rules"])
        current = RegistrySettings(**fields)
        with self._lock:
            self._cached = (current, time.monotonic())
        return current

    def anonymous_pull(self) -> bool:
        """Whether anonymous pull is in effect: switched on, and allowed by the current tier.

        A tier lacking it (an operator's settings change, not a refused downgrade) turns it off.
        """
        return self.get().anonymous_pull_enabled and self._tiers.current().anonymous_pull

    def update(self, **changes: Any) -> RegistrySettings:
        """Change some settings; unknown names and bad values are INVALID_REQUEST."""
        current = self.get()
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if value is None:
                continue
            if name in ("anonymous_pull_enabled", "public_network_access"):
                if not isinstance(value, bool):
                    raise _invalid(f"{name} must be true or false")
                values[name] = value
            elif name == "default_action":
                if value not in DEFAULT_ACTIONS:
                    raise _invalid("default_action must be Allow or Deny")
                values[name] = value
            elif name == "ip_rules":
                values[name] = sorted({normalize_rule(rule) for rule in value})
            elif name == "sku":
                if value not in tuple(Sku):
                    raise _invalid(f"sku must be one of {', '.join(Sku)}")
                values[SKU_KEY] = value
            else:
                raise _invalid(f"unknown setting {name!r}")
        now = utcnow()

        def work(conn: sa.Connection) -> None:
            self._tiers.lock(conn)
            for key, value in values.items():
                conn.execute(
                    UPSERT_SETTING[conn.dialect.name], {"key": key, "value": value, "updated_at": now}
                )
            self._check_tier(conn, values)

        self._db.run_write(work)
        if SKU_KEY in values:
            self._tiers.forget()
        kept = {k: tuple(v) if k == "ip_rules" else v for k, v in values.items() if k != SKU_KEY}
        updated = replace(current, **kept)
        with self._lock:
            self._cached = (updated, time.monotonic())
        return updated

    def change_ip_rule(self, rule: str, *, add: bool) -> RegistrySettings:
        """Add or remove one IP rule atomically (concurrent changes never overwrite each other)."""
        rule = normalize_rule(rule)

        def work(conn: sa.Connection) -> list[str]:
            conn.execute(
                self._insert_if_missing(conn.dialect.name),
                {"key": "ip_rules", "value": [], "updated_at": utcnow()},
            )
            locked = sa.select(registry_settings.c.value).where(registry_settings.c.key == "ip_rules")
            if conn.dialect.name == "postgresql":
                locked = locked.with_for_update()
            rules = list(conn.execute(locked).scalar_one())
            if add and rule not in rules:
                self._tiers.check_count(conn, "ip_rules", len(rules))
                rules = sorted([*rules, rule])
            elif not add:
                if rule not in rules:
                    raise RegistryError(ErrorCode.NOT_FOUND, f"there is no IP rule {rule}")
                rules = [r for r in rules if r != rule]
            conn.execute(
                registry_settings.update()
                .where(registry_settings.c.key == "ip_rules")
                .values(value=rules, updated_at=utcnow())
            )
            return rules

        rules = self._db.run_write(work)
        updated = replace(self.get(), ip_rules=tuple(rules))
        with self._lock:
            self._cached = (updated, time.monotonic())
        return updated

    def _check_tier(self, conn: sa.Connection, values: dict[str, Any]) -> None:
        """Refuse what the (possibly new) tier does not allow, in the changing transaction."""
        tiers = self._tiers
        if values.get("anonymous_pull_enabled") is True:
            tiers.require(conn, "anonymous_pull", "anonymous pull")
        if values.get("public_network_access") is False:
            tiers.require(conn, "private_only", "disabling public network access")
        if values.get("default_action") == "Deny":
            tier = tiers.read(conn)
            if tier.ip_rules == 0:
                raise limit_exceeded(
                    f"network rules (default action Deny) need the {tiers.lowest('ip_rules')} tier or higher;"
                    f" this registry is {tier.sku}",
                    tier=str(tier.sku),
                    limit="ip_rules",
                )
        if values.get("ip_rules"):
            tiers.check_count(conn, "ip_rules", 0, adding=len(values["ip_rules"]))
        if SKU_KEY in values:
            problems = tiers.violations(conn, tiers.read(conn))
            if problems:
                raise limit_exceeded(
                    f"cannot change the SKU to {values[SKU_KEY]}: " + "; ".join(problems),
                    tier=values[SKU_KEY],
                    problems=problems,
                )

    @staticmethod
    def _insert_if_missing(dialect: str) -> sa.Insert:
        return INSERT_SETTING_IF_MISSING[dialect]
