"""The service tiers (SKUs) and what each one allows: ACR's table, which an operator may override (pure).

``-1`` means unlimited, as in ACR's usage API. The numbers are ACR's ``../shared/reference/acr.md``
§1a/§1b; request rates are per minute, per registry and per identity, refilled continuously with a
burst of one minute's worth.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

UNLIMITED = -1
GIB = 1024**3


class Sku(enum.StrEnum):
    """ACR's service tiers, in rising order."""

    Basic = "Basic"
    Standard = "Standard"
    Premium = "Premium"


class RateCategory(enum.StrEnum):
    """What a request counts against (a request may count against several, e.g. referrers is read too)."""

    read = "read"  # GET, HEAD, OPTIONS on the data plane
    write = "write"  # PUT, PATCH, POST
    delete = "delete"  # DELETE
    referrers = "referrers"  # GET /v2/<name>/referrers/<digest>
    oauth = "oauth"  # /oauth2/token and /oauth2/exchange: per registry only


@dataclass(frozen=True)
class Rate:
    """Requests per minute for one category: the whole registry and each identity (None: registry only)."""

    registry: int
    identity: int | None


@dataclass(frozen=True)
class Tier:
    """What one SKU includes. Counts are maxima; ``UNLIMITED`` (-1) lifts a limit; 0 forbids."""

    sku: Sku
    storage_bytes: int
    webhooks: int
    tokens: int
    scope_maps: int
    ip_rules: int
    replicas: int
    cache_rules: int
    anonymous_pull: bool
    private_only: bool  # public network access may be disabled
    customer_keys: bool
    rates: Mapping[RateCategory, Rate]

    def allows(self, limit: str, count: int) -> bool:
        """Whether a registry that has ``count`` of ``limit`` (a count field's name) may add one more."""
        maximum = getattr(self, limit)
        return maximum == UNLIMITED or count < maximum


def _rates(read: tuple[int, int], write: tuple[int, int], delete: tuple[int, int],
           referrers: tuple[int, int], oauth: int) -> dict[RateCategory, Rate]:  # fmt: skip
    return {
        RateCategory.read: Rate(*read),
        RateCategory.write: Rate(*write),
        RateCategory.delete: Rate(*delete),
        RateCategory.referrers: Rate(*referrers),
        RateCategory.oauth: Rate(oauth, None),
    }


_BASIC_STANDARD_RATES = _rates((10_000, 5_000), (2_000, 1_000), (1_000, 500), (500, 250), 10_000)

#: ACR's tiers as published (acr.md §1a, §1b "current request-rate limits").
DEFAULT_TIERS: Mapping[Sku, Tier] = {
    Sku.Basic: Tier(
        Sku.Basic, 10 * GIB, webhooks=2, tokens=100, scope_maps=100, ip_rules=0, replicas=0,
        cache_rules=0, anonymous_pull=False, private_only=False, customer_keys=False,
        rates=_BASIC_STANDARD_RATES,
    ),
    Sku.Standard: Tier(
        Sku.Standard, 100 * GIB, webhooks=10, tokens=500, scope_maps=500, ip_rules=0, replicas=0,
        cache_rules=1000, anonymous_pull=True, private_only=False, customer_keys=False,
        rates=_BASIC_STANDARD_RATES,
    ),
    Sku.Premium: Tier(
        Sku.Premium, 500 * GIB, webhooks=500, tokens=50_000, scope_maps=50_000, ip_rules=200,
        replicas=UNLIMITED, cache_rules=1000, anonymous_pull=True, private_only=True,
        customer_keys=True,
        rates=_rates((20_000, 10_000), (4_000, 2_000), (4_000, 2_000), (2_000, 1_000), 20_000),
    ),
}  # fmt: skip

_COUNTS = {f.name for f in fields(Tier) if f.type in ("int",)}
_FLAGS = {f.name for f in fields(Tier) if f.type in ("bool",)}


class TierTableError(ValueError):
    """An operator's override names an unknown tier, field or category, or has a bad value."""


def tier_table(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[Sku, Tier]:
    """ACR's tiers with an operator's overrides applied.

    ``overrides`` maps a SKU name to field values, e.g. ``{"Premium": {"webhooks": 1000,
    "storage_bytes": -1, "rates": {"read": {"registry": 60000, "identity": -1}}}}`` (the
    settings file's ``[tiers.Premium]`` tables). Unknown names raise ``TierTableError``.
    """
    table = dict(DEFAULT_TIERS)
    for name, values in (overrides or {}).items():
        try:
            sku = Sku(name)
        except ValueError:
            raise TierTableError(f"unknown tier {name!r} (one of {', '.join(Sku)})") from None
        changes: dict[str, Any] = {}
        for key, value in values.items():
            if key in _COUNTS:
                if isinstance(value, bool) or not isinstance(value, int) or value < UNLIMITED:
                    raise TierTableError(f"tiers.{name}.{key} must be an integer ≥ -1 (-1: unlimited)")
                changes[key] = value
            elif key in _FLAGS:
                if not isinstance(value, bool):
                    raise TierTableError(f"tiers.{name}.{key} must be true or false")
                changes[key] = value
            elif key == "rates":
                changes[key] = _override_rates(name, table[sku].rates, value)
            else:
                raise TierTableError(f"tiers.{name}: unknown setting {key!r}")
        table[sku] = replace(table[sku], **changes)
    return table


def _override_rates(name: str, rates: Mapping[RateCategory, Rate], values: Any) -> dict[RateCategory, Rate]:
    if not isinstance(values, Mapping):
        raise TierTableError(f"tiers.{name}.rates must be a table of categories")
    result = dict(rates)
    for key, value in values.items():
        try:
            category = RateCategory(key)
        except ValueError:
            raise TierTableError(f"tiers.{name}.rates: unknown category {key!r}") from None
        if not isinstance(value, Mapping) or not set(value) <= {"registry", "identity"}:
            raise TierTableError(f"tiers.{name}.rates.{key} takes 'registry' and 'identity'")
        merged = {"registry": result[category].registry, "identity": result[category].identity, **value}
        for scope, number in merged.items():
            if number is None and scope == "identity":
                continue
            if isinstance(number, bool) or not isinstance(number, int) or number < UNLIMITED or number == 0:
                raise TierTableError(f"tiers.{name}.rates.{key}.{scope} must be a positive integer or -1")
        result[category] = Rate(merged["registry"], merged["identity"])
    return result
