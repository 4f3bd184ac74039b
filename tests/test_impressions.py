"""The impression-list simulation: structure, determinism, uniformity, a reference implementation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from recallstream.streaming.hashing import splitmix64
from recallstream.streaming.impressions import ImpressionSimulator, counter_random

MASK = 2**64 - 1


def reference_splitmix64(x: int) -> int:
    """SplitMix64 with Python integers (Steele, Lea & Flood 2014)."""
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def reference_random(seed: int, index: int, slot: int, attempt: int) -> int:
    state = reference_splitmix64(seed)
    for part in (index, slot, attempt):
        state = reference_splitmix64(state ^ part)
    return state


def reference_list(catalog: list[str], k: int, seed: int, index: int, clicked: str) -> list[str]:
    """The documented rule, one row at a time: k distinct others then the click's position."""
    pool = [item for item in catalog if item != clicked]  # the catalog without the click
    others: list[str] = []
    for slot in range(k):
        attempt = 0
        while (item := pool[reference_random(seed, index, slot, attempt) % len(pool)]) in others:
            attempt += 1
        others.append(item)
    position = reference_random(seed, index, k, 0) % (k + 1)
    return others[:position] + [clicked] + others[position:]


CATALOG = [str(i) for i in range(1, 21)]


def test_splitmix64_matches_python_integers():
    values = [0, 1, 2**63, MASK, 123456789]
    got = splitmix64(np.array(values, dtype=np.uint64)).tolist()
    assert got == [reference_splitmix64(v) for v in values]
    assert counter_random(5, np.array([9]), 2, 1).tolist() == [reference_random(5, 9, 2, 1)]


@pytest.mark.parametrize("k", [0, 1, 3, 19])
def test_lists_match_the_reference(k):
    rng = np.random.default_rng(0)
    index = rng.integers(0, 10**6, size=300)
    clicked = rng.choice(CATALOG, size=300).tolist()
    sim = ImpressionSimulator(CATALOG, exposures_per_click=k, seed=42)
    expected = [reference_list(CATALOG, k, 42, i, c) for i, c in zip(index.tolist(), clicked)]
    assert sim.lists(index, clicked).tolist() == expected


def test_list_structure():
    rng = np.random.default_rng(1)
    clicked = rng.choice(CATALOG, size=2000).tolist()
    sim = ImpressionSimulator(CATALOG, exposures_per_click=3, seed=3)
    lists = sim.lists(np.arange(2000), clicked)
    positions = sim.click_positions(np.arange(2000))
    assert lists.shape == (2000, 4)
    for row, item, position in zip(lists.tolist(), clicked, positions.tolist()):
        assert row.count(item) == 1 and row[position] == item
        assert len(set(row)) == 4  # no item twice, so no other item equals the click


def test_events_ids_positions_and_times():
    sim = ImpressionSimulator(CATALOG, exposures_per_click=3, seed=3, lead_s=2.5, id_prefix="ml/")
    (exposures, click), = sim.events([17], ["u5"], ["7"], [1000])
    assert [e.position for e in exposures] == [0, 1, 2, 3]
    assert [e.event_id for e in exposures] == ["ml/17/e0", "ml/17/e1", "ml/17/e2", "ml/17/e3"]
    assert {e.impression_id for e in exposures} == {"ml/17"} and click.impression_id == "ml/17"
    assert {e.user_id for e in exposures} == {"u5"} and {e.ts for e in exposures} == {997.5}
    assert (click.event_id, click.user_id, click.item_id, click.ts) == ("ml/17/c", "u5", "7", 1000.0)
    assert [e.item_id for e in exposures] == sim.lists([17], ["7"])[0].tolist()


def test_deterministic_and_independent_of_the_subset_replayed():
    rng = np.random.default_rng(2)
    clicked = rng.choice(CATALOG, size=500).tolist()
    sim = ImpressionSimulator(CATALOG, exposures_per_click=3, seed=11)
    full = sim.lists(np.arange(500), clicked)
    again = ImpressionSimulator(list(CATALOG), exposures_per_click=3, seed=11)
    assert np.array_equal(full, again.lists(np.arange(500), clicked))
    picked = np.array([499, 3, 250])
    assert np.array_equal(sim.lists(picked, [clicked[i] for i in picked]), full[picked])
    other_seed = ImpressionSimulator(CATALOG, exposures_per_click=3, seed=12)
    assert (other_seed.lists(np.arange(500), clicked) != full).mean() > 0.5


def test_other_items_and_positions_are_uniform():
    n, k = 40_000, 3
    sim = ImpressionSimulator(CATALOG, exposures_per_click=k, seed=5)
    lists = sim.lists(np.arange(n), ["1"] * n)
    others = Counter(lists[lists != "1"].tolist())
    expected = n * k / (len(CATALOG) - 1)  # 6315.8 per item
    assert set(others) == set(CATALOG) - {"1"}
    # Binomial sd is about 77; 5 sd bounds a fair draw comfortably.
    assert all(abs(count - expected) < 5 * 77 for count in others.values())
    positions = np.bincount(sim.click_positions(np.arange(n)), minlength=k + 1)
    assert np.all(np.abs(positions - n / (k + 1)) < 5 * 87)  # sd = sqrt(n/4*3/4) ~ 87


def test_bad_arguments():
    with pytest.raises(ValueError, match="cannot fill"):
        ImpressionSimulator(["a", "b"], exposures_per_click=2)
    with pytest.raises(ValueError, match="duplicate"):
        ImpressionSimulator(["a", "a", "b"], exposures_per_click=1)
    with pytest.raises(ValueError, match=">= 0"):
        ImpressionSimulator(["a"], exposures_per_click=-1)
    sim = ImpressionSimulator(["a", "b"], exposures_per_click=1)
    with pytest.raises(ValueError, match="not in the catalog"):
        sim.lists([0], ["z"])
    with pytest.raises(ValueError, match="length"):
        sim.lists([0, 1], ["a"])
