"""Tests of the streaming frequency estimator (Yi et al. 2019)."""

from __future__ import annotations

import numpy as np
import pytest

from recallstream.streaming.popularity import FrequencyEstimator, string_key


def reference_estimates(estimator: FrequencyEstimator, batches, queries) -> np.ndarray:
    """A straightforward per-bucket Python loop of the paper's update, for comparison.

    It borrows only the bucket mapping of ``estimator``; the arithmetic is its own.
    """
    last_seen: dict[tuple[int, int], int] = {}
    gap: dict[tuple[int, int], float] = {}
    alpha = estimator.alpha
    for step, batch in enumerate(batches, start=1):
        touched = set()
        for row, buckets in enumerate(estimator.buckets(batch)):
            for bucket in buckets.tolist():
                touched.add((row, bucket))
        for cell in touched:  # a bucket counts once per step
            observed = step - last_seen.get(cell, 0)
            gap[cell] = observed if cell not in gap else (1 - alpha) * gap[cell] + alpha * observed
            last_seen[cell] = step
    out = []
    for column in estimator.buckets(queries).T.tolist():
        largest = max(gap.get((row, bucket), len(batches) + 1.0) for row, bucket in enumerate(column))
        out.append(min(1.0, 1.0 / largest))
    return np.array(out)


def zipf_probabilities(num_items: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, num_items + 1) ** exponent
    return weights / weights.sum()


def zipf_batches(rng, item_ids, shares, batch_size, steps):
    drawn = rng.choice(len(item_ids), size=(steps, batch_size), p=shares)
    return [[item_ids[i] for i in row] for row in drawn]


def test_hand_computed_sequence():
    est = FrequencyEstimator(num_buckets=4096, alpha=0.5)
    assert len(set(est.buckets(["x", "y", "z"])[0].tolist())) == 3  # no collision in this case
    est.update(["x"])            # t=1: x first seen, gap = 1 - 0 = 1
    est.update(["y"])            # t=2: y first seen, gap = 2
    est.update([])               # t=3: an empty step still advances the clock
    est.update(["x", "x", "y"])  # t=4: x gap = .5*1 + .5*(4-1) = 2 (once, not twice); y = .5*2 + .5*(4-2) = 2
    est.update(["x"])            # t=5: x gap = .5*2 + .5*(5-4) = 1.5
    # x: 1/1.5; y: 1/2; z never seen in 5 steps: 1/(5+1)
    np.testing.assert_allclose(est.probability(["x", "y", "z"]), [1 / 1.5, 0.5, 1 / 6])
    assert est.step == 5


@pytest.mark.parametrize("num_hashes", [1, 3])
def test_matches_python_loop_on_random_streams(num_hashes):
    rng = np.random.default_rng(7)
    item_ids = [f"item-{i}" for i in range(300)]
    # few buckets so that collisions happen; repeated ids within a batch
    est = FrequencyEstimator(num_buckets=128, alpha=0.1, num_hashes=num_hashes, seed=3)
    batches = [[item_ids[i] for i in rng.integers(0, 300, size=rng.integers(0, 40))]
               for _ in range(200)]
    for batch in batches:
        est.update(batch)
    queries = item_ids + ["unseen-a", "unseen-b"]
    np.testing.assert_allclose(est.probability(queries), reference_estimates(est, batches, queries))


def test_tracks_zipf_head_probabilities_after_warm_up():
    rng = np.random.default_rng(2020)
    item_ids = [str(i) for i in range(1000)]
    shares = zipf_probabilities(1000, 1.1)
    batch_size = 16
    # the true per-step probability that item k is in a batch drawn with replacement
    true_step_probability = 1 - (1 - shares) ** batch_size
    head = item_ids[:10]
    est = FrequencyEstimator(num_buckets=1 << 14, alpha=0.01, num_hashes=2)
    for step, batch in enumerate(zipf_batches(rng, item_ids, shares, batch_size, 6000), start=1):
        est.update(batch)
        if step >= 3000 and step % 500 == 0:
            relative = est.probability(head) / true_step_probability[:10] - 1
            assert np.all(np.abs(relative) < 0.15), (step, relative.round(3))


def test_follows_an_abrupt_popularity_shift():
    rng = np.random.default_rng(11)
    item_ids = [str(i) for i in range(1000)]
    shares = zipf_probabilities(1000, 1.1)
    batch_size = 16
    head = item_ids[:10]
    shifted = shares.copy()
    shifted[:10] = shares[:10][::-1]  # the 10th most popular becomes the first and so on
    before = 1 - (1 - shares[:10]) ** batch_size
    after = 1 - (1 - shifted[:10]) ** batch_size

    fast = FrequencyEstimator(num_buckets=1 << 14, alpha=0.02, num_hashes=2)
    slow = FrequencyEstimator(num_buckets=1 << 14, alpha=0.002, num_hashes=2)
    for batch in zipf_batches(rng, item_ids, shares, batch_size, 3000):
        fast.update(batch)
        slow.update(batch)
    np.testing.assert_allclose(fast.probability(head), before, rtol=0.25)

    shifted_stream = zipf_batches(rng, item_ids, shifted, batch_size, 3000)
    for batch in shifted_stream[:300]:
        fast.update(batch)
        slow.update(batch)
    # 300 steps after the shift the larger alpha has moved much closer to the new values
    fast_error = np.abs(np.log(fast.probability(head) / after)).mean()
    slow_error = np.abs(np.log(slow.probability(head) / after)).mean()
    assert fast_error < slow_error / 2, (fast_error, slow_error)
    # ... and later it tracks them; averaged over 1,000 steps to look past the EMA's noise
    recent = []
    for step, batch in enumerate(shifted_stream[300:], start=300):
        fast.update(batch)
        if step >= 2000:
            recent.append(fast.probability(head))
    relative = np.mean(recent, axis=0) / after - 1
    assert np.all(np.abs(relative) < 0.15), relative.round(3)


def test_more_hash_functions_reduce_collision_overestimation():
    rng = np.random.default_rng(5)
    item_ids = [str(i) for i in range(2000)]
    shares = zipf_probabilities(2000, 1.0)
    batches = zipf_batches(rng, item_ids, shares, 8, 3000)
    true_step_probability = 1 - (1 - shares) ** 8
    errors = {}
    for num_hashes in (1, 4):
        # 512 buckets for 2,000 items: most buckets are shared
        est = FrequencyEstimator(num_buckets=512, alpha=0.02, num_hashes=num_hashes)
        for batch in batches:
            est.update(batch)
        ratio = est.probability(item_ids[:500]) / true_step_probability[:500]
        errors[num_hashes] = np.median(ratio)
    assert errors[1] > 1.5  # collisions overestimate with one hash ...
    assert errors[4] < errors[1] / 1.5  # ... far less with the largest of four gaps


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    est = FrequencyEstimator(num_buckets=256, alpha=0.1, num_hashes=2, seed=9)
    batches = [[str(i) for i in rng.integers(0, 100, size=20)] for _ in range(100)]
    for batch in batches[:50]:
        est.update(batch)
    restored = FrequencyEstimator.from_state_dict(est.state_dict())
    for batch in batches[50:]:
        est.update(batch)
        restored.update(batch)
    ids = [str(i) for i in range(120)]
    np.testing.assert_array_equal(restored.probability(ids), est.probability(ids))
    assert restored.step == est.step == 100


def test_load_state_dict_rejects_other_hyperparameters():
    state = FrequencyEstimator(num_buckets=256, alpha=0.1).state_dict()
    with pytest.raises(ValueError, match="num_buckets"):
        FrequencyEstimator(num_buckets=512, alpha=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="alpha"):
        FrequencyEstimator(num_buckets=256, alpha=0.2).load_state_dict(state)


@pytest.mark.parametrize("kwargs", [
    {"num_buckets": 0, "alpha": 0.1},
    {"num_buckets": 10.5, "alpha": 0.1},
    {"num_buckets": 10, "alpha": 0.0},
    {"num_buckets": 10, "alpha": 1.5},
    {"num_buckets": 10, "alpha": 0.1, "num_hashes": 0},
    {"num_buckets": 10, "alpha": 0.1, "cache_size": -1},
])
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        FrequencyEstimator(**kwargs)


def test_string_keys_are_stable_across_processes():
    # Python's hash() is salted per process; the key is BLAKE2b-64 of the UTF-8 id, shifted to
    # 63 bits, so this value (blake2b(b"movie-1", digest_size=8) = b1551b1e0bba088d) never changes.
    assert string_key("movie-1") == int.from_bytes(bytes.fromhex("b1551b1e0bba088d"), "little") >> 1
    assert string_key("movie-1") == 5081288558037019352


def test_integer_keys_and_seeds():
    est = FrequencyEstimator(num_buckets=1 << 16, alpha=0.5, num_hashes=2, seed=1)
    keys = np.array([1, 2, 3], dtype=np.int64)
    assert est.buckets(keys).shape == (2, 3)
    other_seed = FrequencyEstimator(num_buckets=1 << 16, alpha=0.5, num_hashes=2, seed=2)
    assert not np.array_equal(est.buckets(keys), other_seed.buckets(keys))
    est.update(keys)
    np.testing.assert_allclose(est.probability(keys), [1.0, 1.0, 1.0])
