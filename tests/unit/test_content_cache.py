"""ContentCache: per-repository invalidation, and no stale row cached across an invalidation."""

import random

from dockyard.changes import EVERYTHING, SETTINGS, ContentCache


def enabled_cache(capacity: int = 10) -> ContentCache:
    cache = ContentCache(capacity)
    cache.set_enabled(True)
    return cache


def test_a_disabled_cache_holds_nothing():
    cache = ContentCache()
    cache.put("repo", "latest", "v1", cache.generation())
    assert cache.get("repo", "latest") is None
    assert len(cache) == 0


def test_put_get_and_per_repository_invalidation():
    cache = enabled_cache()
    cache.put("a", "latest", "a1", cache.generation())
    cache.put("b", "latest", "b1", cache.generation())
    assert cache.get("a", "latest") == "a1"
    cache.invalidate("a")
    assert cache.get("a", "latest") is None
    assert cache.get("b", "latest") == "b1"  # b's entries survive a's invalidation
    cache.invalidate(EVERYTHING)
    assert cache.get("b", "latest") is None


def test_a_row_read_before_an_invalidation_is_not_cached():
    cache = enabled_cache()
    before = cache.generation()  # a reader takes the generation, then queries the database
    cache.invalidate("repo")  # meanwhile a change commits and its notification arrives
    cache.put("repo", "latest", "stale", before)
    assert cache.get("repo", "latest") is None


def test_switching_off_and_on_empties_the_cache():
    cache = enabled_cache()
    generation = cache.generation()
    cache.put("repo", "latest", "v1", generation)
    cache.set_enabled(False)
    cache.set_enabled(True)
    assert cache.get("repo", "latest") is None
    cache.put("repo", "latest", "v1", generation)  # taken before the listener reconnected
    assert cache.get("repo", "latest") is None


def test_capacity_evicts_the_oldest():
    cache = enabled_cache(capacity=2)
    for name in ("one", "two", "three"):
        cache.put("repo", name, name, cache.generation())
    assert cache.get("repo", "one") is None
    assert cache.get("repo", "two") == "two"  # holds exactly ``capacity`` entries
    assert cache.get("repo", "three") == "three"
    assert len(cache) == 2


def test_a_content_change_keeps_the_repository_settings():
    cache = enabled_cache()
    for repository in ("a", "b"):
        cache.put(repository, ("m", "latest"), f"{repository}1", cache.generation())
        cache.put(repository, (SETTINGS, "writable"), True, cache.generation())
    cache.invalidate_content("a")
    assert cache.get("a", ("m", "latest")) is None
    assert cache.get("a", (SETTINGS, "writable")) is True
    assert cache.get("b", ("m", "latest")) == "b1"  # another repository's content survives
    cache.invalidate_content(EVERYTHING)
    assert cache.get("b", ("m", "latest")) is None
    assert cache.get("b", (SETTINGS, "writable")) is True
    cache.invalidate("a")  # a change of the repository's own row drops its settings too
    assert cache.get("a", (SETTINGS, "writable")) is None
    assert cache.get("b", (SETTINGS, "writable")) is True
    cache.invalidate(EVERYTHING)
    assert cache.get("b", (SETTINGS, "writable")) is None


def test_a_setting_read_before_a_content_change_is_not_cached():
    cache = enabled_cache()
    before = cache.generation()
    cache.invalidate_content("repo")
    cache.put("repo", (SETTINGS, "writable"), True, before)
    assert cache.get("repo", (SETTINGS, "writable")) is None


def test_invalidations_drop_exactly_the_named_entries_through_evictions():
    """Random puts, evictions and both kinds of invalidation against a plain model of the cache."""
    rng = random.Random(20261204)
    capacity = 25
    cache = enabled_cache(capacity)
    model: dict[tuple[str, tuple[str, str]], int] = {}  # insertion-ordered, as the cache evicts
    repositories = [f"repo{n}" for n in range(6)] + [EVERYTHING]
    for step in range(5000):
        action = rng.random()
        repository = rng.choice(repositories[:-1])
        if action < 0.7:
            key = (rng.choice(["m", "b", SETTINGS]), str(rng.randrange(8)))
            cache.put(repository, key, step, cache.generation())
            if (repository, key) not in model and len(model) == capacity:
                del model[next(iter(model))]
            model[(repository, key)] = step
        elif action < 0.85:
            named = rng.choice(repositories)
            cache.invalidate_content(named)
            for entry in [e for e in model if named in (EVERYTHING, e[0]) and e[1][0] != SETTINGS]:
                del model[entry]
        else:
            named = rng.choice(repositories)
            cache.invalidate(named)
            for entry in [e for e in model if named in (EVERYTHING, e[0])]:
                del model[entry]
        assert len(cache) == len(model)
    for repository in repositories[:-1]:
        for kind in ("m", "b", SETTINGS):
            for number in range(8):
                key = (kind, str(number))
                assert cache.get(repository, key) == model.get((repository, key))


def test_every_invalidation_refuses_rows_read_before_it():
    cache = enabled_cache()
    invalidations = (cache.invalidate, cache.invalidate_content, lambda _: cache.set_enabled(True))
    for number, invalidate in enumerate(invalidations):
        key = ("m", f"tag-{number}")
        invalidate("repo")
        between = cache.generation()  # read after one change, before the next
        invalidate("repo")
        cache.put("repo", key, "stale", between)
        assert cache.get("repo", key) is None
        cache.put("repo", key, "fresh", cache.generation())
        assert cache.get("repo", key) == "fresh"


def test_a_notice_not_yet_applied_keeps_lookups_off_the_cache():
    cache = enabled_cache()
    cache.put("repo", ("m", "latest"), "v1", cache.generation())
    cache.unapplied = lambda: True
    assert cache.get("repo", ("m", "latest")) is None
    cache.unapplied = lambda: False
    assert cache.get("repo", ("m", "latest")) == "v1"
