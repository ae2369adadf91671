"""The service tier table (pure): ACR's published numbers, `allows`, and an operator's overrides."""

from __future__ import annotations

import re

import pytest

from dockyard.tiers.table import (
    DEFAULT_TIERS,
    GIB,
    UNLIMITED,
    Rate,
    RateCategory,
    Sku,
    TierTableError,
    _rates,
    tier_table,
)


def refused(message: str) -> pytest.RaisesExc[TierTableError]:
    """Expect TierTableError with exactly ``message``."""
    return pytest.raises(TierTableError, match=f"^{re.escape(message)}$")


def test_the_default_table_is_acrs_published_one():
    assert tier_table() == DEFAULT_TIERS
    assert tier_table(None) == DEFAULT_TIERS
    assert tier_table({}) == DEFAULT_TIERS
    basic, standard, premium = (DEFAULT_TIERS[sku] for sku in (Sku.Basic, Sku.Standard, Sku.Premium))
    storage = (basic.storage_bytes, standard.storage_bytes, premium.storage_bytes)
    assert storage == (10 * GIB, 100 * GIB, 500 * GIB)
    assert (basic.webhooks, standard.webhooks, premium.webhooks) == (2, 10, 500)
    assert (basic.cache_rules, standard.cache_rules, premium.cache_rules) == (0, 1000, 1000)
    assert premium.replicas == UNLIMITED
    assert (basic.anonymous_pull, standard.anonymous_pull) == (False, True)
    assert (standard.private_only, premium.private_only, premium.customer_keys) == (False, True, True)
    assert basic.rates == standard.rates
    assert basic.rates[RateCategory.read] == Rate(10_000, 5_000)
    assert basic.rates[RateCategory.delete] == Rate(1_000, 500)
    assert premium.rates[RateCategory.write] == Rate(4_000, 2_000)
    assert premium.rates[RateCategory.referrers] == Rate(2_000, 1_000)
    assert premium.rates[RateCategory.oauth] == Rate(20_000, None)  # per registry only


def test_rates_are_built_per_category_and_oauth_counts_per_registry_only():
    rates = _rates((1, 2), (3, 4), (5, 6), (7, 8), 9)
    assert rates == {
        RateCategory.read: Rate(1, 2),
        RateCategory.write: Rate(3, 4),
        RateCategory.delete: Rate(5, 6),
        RateCategory.referrers: Rate(7, 8),
        RateCategory.oauth: Rate(9, None),
    }


def test_allows_below_the_maximum_never_at_it_and_always_when_unlimited():
    basic, premium = DEFAULT_TIERS[Sku.Basic], DEFAULT_TIERS[Sku.Premium]
    assert basic.allows("webhooks", 0)
    assert basic.allows("webhooks", 1)
    assert not basic.allows("webhooks", 2)  # two is the maximum: a third is refused
    assert not basic.allows("webhooks", 3)
    assert not basic.allows("ip_rules", 0)  # 0 forbids even the first
    assert premium.allows("replicas", 0)
    assert premium.allows("replicas", 10**9)  # -1: unlimited
    assert premium.allows("ip_rules", 199)
    assert not premium.allows("ip_rules", 200)


def test_overrides_change_only_the_named_tier_and_fields():
    table = tier_table({"Premium": {"webhooks": 1000, "storage_bytes": -1, "anonymous_pull": False}})
    premium = table[Sku.Premium]
    assert (premium.webhooks, premium.storage_bytes, premium.anonymous_pull) == (1000, UNLIMITED, False)
    assert premium.tokens == DEFAULT_TIERS[Sku.Premium].tokens
    assert premium.allows("storage_bytes", 10**15)
    assert table[Sku.Basic] == DEFAULT_TIERS[Sku.Basic]
    assert table[Sku.Standard] == DEFAULT_TIERS[Sku.Standard]
    assert DEFAULT_TIERS[Sku.Premium].webhooks == 500  # the published table is not changed


def test_several_tiers_are_overridden_at_once():
    table = tier_table({"Basic": {"webhooks": 0, "anonymous_pull": True}, "Standard": {"cache_rules": 5}})
    assert table[Sku.Basic].webhooks == 0
    assert not table[Sku.Basic].allows("webhooks", 0)
    assert table[Sku.Basic].anonymous_pull is True
    assert table[Sku.Standard].cache_rules == 5


@pytest.mark.parametrize("value", [-1, 0, 1, 2**40])
def test_counts_take_minus_one_zero_or_more(value):
    assert tier_table({"Standard": {"tokens": value}})[Sku.Standard].tokens == value


@pytest.mark.parametrize("value", [-2, True, False, 1.5, "10", None])
def test_counts_refuse_anything_but_an_integer_of_minus_one_or_more(value):
    with refused("tiers.Standard.tokens must be an integer ≥ -1 (-1: unlimited)"):
        tier_table({"Standard": {"tokens": value}})


@pytest.mark.parametrize("value", [1, 0, "true", None])
def test_flags_must_be_booleans(value):
    with refused("tiers.Basic.anonymous_pull must be true or false"):
        tier_table({"Basic": {"anonymous_pull": value}})


def test_unknown_tiers_and_settings_are_named():
    with refused("unknown tier 'Gold' (one of Basic, Standard, Premium)") as raised:
        tier_table({"Gold": {"webhooks": 1}})
    assert raised.value.__suppress_context__  # `from None`: the Sku lookup's ValueError is not shown
    with refused("unknown tier 'premium' (one of Basic, Standard, Premium)"):
        tier_table({"premium": {}})  # names are case-sensitive, as in the settings file
    with refused("tiers.Premium: unknown setting 'webhook'"):
        tier_table({"Premium": {"webhook": 1}})
    with refused("tiers.Premium: unknown setting 'sku'"):
        tier_table({"Premium": {"sku": "Basic"}})  # not an overridable count or flag


def test_a_rate_override_merges_into_the_tiers_rates():
    table = tier_table({"Basic": {"rates": {"read": {"registry": 60_000}, "write": {"identity": -1}}}})
    rates = table[Sku.Basic].rates
    assert rates[RateCategory.read] == Rate(60_000, 5_000)  # identity kept
    assert rates[RateCategory.write] == Rate(2_000, UNLIMITED)  # registry kept
    assert rates[RateCategory.delete] == Rate(1_000, 500)  # other categories kept
    assert table[Sku.Standard].rates[RateCategory.read] == Rate(10_000, 5_000)  # Standard shared Basic's


def test_a_rate_override_may_set_both_scopes_and_oauth_stays_per_registry():
    rates = tier_table(
        {"Premium": {"rates": {"delete": {"registry": 7, "identity": 3}, "oauth": {"registry": 100}}}}
    )[Sku.Premium].rates
    assert rates[RateCategory.delete] == Rate(7, 3)
    assert rates[RateCategory.oauth] == Rate(100, None)


def test_a_rate_override_may_give_oauth_a_per_identity_rate():
    rates = tier_table({"Standard": {"rates": {"oauth": {"identity": 50}}}})[Sku.Standard].rates
    assert rates[RateCategory.oauth] == Rate(10_000, 50)


def test_rate_overrides_are_validated():
    with refused("tiers.Basic.rates must be a table of categories"):
        tier_table({"Basic": {"rates": 5}})
    with refused("tiers.Basic.rates must be a table of categories"):
        tier_table({"Basic": {"rates": [("read", {"registry": 1})]}})
    with refused("tiers.Basic.rates: unknown category 'pull'") as raised:
        tier_table({"Basic": {"rates": {"pull": {"registry": 1}}}})
    assert raised.value.__suppress_context__
    with refused("tiers.Basic.rates.read takes 'registry' and 'identity'"):
        tier_table({"Basic": {"rates": {"read": 100}}})
    with refused("tiers.Basic.rates.read takes 'registry' and 'identity'"):
        tier_table({"Basic": {"rates": {"read": {"registry": 100, "burst": 5}}}})


@pytest.mark.parametrize("scope", ["registry", "identity"])
@pytest.mark.parametrize("value", [0, -2, True, 1.5, "100"])
def test_a_rate_is_positive_or_minus_one(scope, value):
    with refused(f"tiers.Premium.rates.read.{scope} must be a positive integer or -1"):
        tier_table({"Premium": {"rates": {"read": {scope: value}}}})


@pytest.mark.parametrize("scope", ["registry", "identity"])
@pytest.mark.parametrize("value", [-1, 1])
def test_a_rate_of_one_or_unlimited_is_accepted(scope, value):
    rate = tier_table({"Premium": {"rates": {"read": {scope: value}}}})[Sku.Premium].rates[RateCategory.read]
    assert getattr(rate, scope) == value


def test_only_the_identity_scope_may_be_none():
    with refused("tiers.Premium.rates.read.registry must be a positive integer or -1"):
        tier_table({"Premium": {"rates": {"read": {"registry": None}}}})
    rates = tier_table({"Premium": {"rates": {"read": {"identity": None}}}})[Sku.Premium].rates
    assert rates[RateCategory.read] == Rate(20_000, None)
