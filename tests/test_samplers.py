"""Tests of the negative samplers: distributions drawn equal distributions reported."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from recallstream.model.samplers import CandidateSample, HardNegativeSampler, InBatchSampler, MixedSampler, UnigramSampler


def chi_square_statistic(observed: Counter, probabilities: dict[str, float], draws: int) -> float:
    return sum((observed.get(i, 0) - draws * p) ** 2 / (draws * p) for i, p in probabilities.items())


def chi_square_critical(degrees_of_freedom: int, z: float = 3.719) -> float:
    """Upper quantile (z = 3.719: 1 - 1e-4) by the Wilson-Hilferty approximation."""
    k = degrees_of_freedom
    return k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3


COUNTS = {f"item{k}": float(k + 1) for k in range(40)}  # counts 1..40


def unigram_with(counts: dict[str, float], **options) -> UnigramSampler:
    sampler = UnigramSampler(**options)
    sampler.update(list(counts), counts=list(counts.values()))
    return sampler


def expected_distribution(counts: dict[str, float], power: float = 0.75) -> dict[str, float]:
    weights = {i: c ** power for i, c in counts.items()}
    total = sum(weights.values())
    return {i: w / total for i, w in weights.items()}


# ---------------------------------------------------------------------------
# CandidateSample and InBatchSampler


def test_candidate_sample_checks_lengths_and_gives_log_q():
    with pytest.raises(ValueError, match="2 ids but 1"):
        CandidateSample(["a", "b"], [0.5])
    assert CandidateSample(["a"], [math.e ** -2]).log_q.tolist() == pytest.approx([-2.0])


def test_in_batch_returns_batch_and_popularity():
    popularity = {"a": 0.5, "b": 0.2}
    sample = InBatchSampler(lambda ids: np.array([popularity[i] for i in ids])).sample(["b", "a", "b"])
    assert sample.ids.tolist() == ["b", "a", "b"]
    assert sample.probabilities.tolist() == [0.2, 0.5, 0.2]


@pytest.mark.parametrize("probabilities", [[0.5, 0.0], [0.5, 1.5], [0.5, math.nan], [0.5]])
def test_in_batch_rejects_unusable_probabilities(probabilities):
    with pytest.raises(ValueError):
        InBatchSampler(lambda ids: np.array(probabilities)).sample(["a", "b"])


# ---------------------------------------------------------------------------
# UnigramSampler


def test_reported_probabilities_are_count_power_over_sum_exactly():
    sampler = unigram_with(COUNTS)
    expected = expected_distribution(COUNTS)
    reported = sampler.probability(list(COUNTS))
    assert reported.tolist() == pytest.approx([expected[i] for i in COUNTS], rel=1e-12)
    assert reported.sum() == pytest.approx(1.0, abs=1e-12)
    sample = sampler.sample(500)
    assert sample.probabilities.tolist() == pytest.approx([expected[i] for i in sample.ids], rel=1e-12)


def test_empirical_frequencies_match_count_power():
    draws = 200_000
    sampler = unigram_with(COUNTS, seed=123)
    observed = Counter(sampler.sample(draws).ids.tolist())
    expected = expected_distribution(COUNTS)
    assert max(abs(observed[i] / draws - p) for i, p in expected.items()) < 0.003
    assert chi_square_statistic(observed, expected, draws) < chi_square_critical(len(COUNTS) - 1)
    # the same test rejects the plain count distribution, so it has the power to fail
    linear = expected_distribution(COUNTS, power=1.0)
    assert chi_square_statistic(observed, linear, draws) > 10 * chi_square_critical(len(COUNTS) - 1)


def test_draws_are_reproducible_for_a_seed():
    first = unigram_with(COUNTS, seed=5).sample(50).ids.tolist()
    assert unigram_with(COUNTS, seed=5).sample(50).ids.tolist() == first
    assert unigram_with(COUNTS, seed=6).sample(50).ids.tolist() != first


def test_updates_change_the_distribution():
    sampler = UnigramSampler(seed=0)
    sampler.update(["a", "b"])  # a=1, b=1
    assert sampler.probability(["a", "b"]).tolist() == [0.5, 0.5]
    sampler.update(["b"] * 15)  # b=16: weights 1 and 16^0.75 = 8
    assert sampler.probability(["a", "b"]).tolist() == pytest.approx([1 / 9, 8 / 9])
    sampler.update(["c"], counts=[16.0])  # new id: weights 1, 8, 8
    assert sampler.probability(["a", "b", "c"]).tolist() == pytest.approx([1 / 17, 8 / 17, 8 / 17])
    assert len(sampler) == 3
    observed = Counter(sampler.sample(34_000).ids.tolist())
    assert observed["a"] / 34_000 == pytest.approx(1 / 17, abs=0.006)


def test_lazy_rebuild_reports_the_table_actually_used():
    sampler = UnigramSampler(rebuild_every=3, seed=0)
    sampler.update(["a"])  # first table: a only
    assert sampler.sample(1).ids.tolist() == ["a"]
    sampler.update(["b"], counts=[1000.0])
    sampler.update(["b"])
    # two updates since the build: still the old table, b can't be drawn and has probability 0
    stale = sampler.sample(200)
    assert set(stale.ids.tolist()) == {"a"} and stale.probabilities.tolist() == [1.0] * 200
    assert sampler.probability(["b"]).tolist() == [0.0]
    sampler.update(["a"], counts=[0.0])  # third update: rebuilt at the next draw
    weights = {"a": 1.0, "b": 1001.0 ** 0.75}
    assert sampler.probability(["a", "b"]).tolist() == pytest.approx(
        [weights["a"] / sum(weights.values()), weights["b"] / sum(weights.values())])


def test_unseen_and_zero_count_ids():
    sampler = UnigramSampler(seed=1)
    sampler.update(["a", "zero"], counts=[3.0, 0.0])
    assert sampler.probability(["zero", "never"]).tolist() == [0.0, 0.0]
    assert set(sampler.sample(1000).ids.tolist()) == {"a"}
    uniform = UnigramSampler(power=0.0, seed=1)  # 0 ** 0 = 1: uniform over every known id
    uniform.update(["a", "zero"], counts=[3.0, 0.0])
    assert uniform.probability(["a", "zero"]).tolist() == [0.5, 0.5]


def test_many_ids_grow_the_storage():
    sampler = UnigramSampler(seed=2)
    sampler.update([str(k) for k in range(1000)], counts=np.arange(1, 1001))
    probabilities = sampler.probability([str(k) for k in range(1000)])
    assert probabilities.sum() == pytest.approx(1.0)
    assert probabilities[999] / probabilities[0] == pytest.approx(1000 ** 0.75)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda s: s.sample(3), "no counts"),
        (lambda s: (s.update(["a"], counts=[0.0]), s.sample(1)), "all counts are zero"),
        (lambda s: s.update(["a"], counts=[-1.0]), "non-negative"),
        (lambda s: s.update(["a"], counts=[math.inf]), "finite"),
        (lambda s: s.update(["a", "b"], counts=[1.0]), "2 ids but 1 counts"),
        (lambda s: (s.update(["a"]), s.sample(-1)), "non-negative"),
    ],
)
def test_unigram_errors(action, message):
    with pytest.raises(ValueError, match=message):
        action(UnigramSampler())


@pytest.mark.parametrize(("options", "message"), [({"power": -0.5}, "power"), ({"rebuild_every": 0}, "rebuild_every")])
def test_unigram_rejects_bad_settings(options, message):
    with pytest.raises(ValueError, match=message):
        UnigramSampler(**options)


# ---------------------------------------------------------------------------
# HardNegativeSampler


def test_hard_negatives_hand_case_with_skip_top():
    # user 0 ranks: a .9 (clicked), b .8, d .5, c .1 -> skip b, take d, c
    # user 1 ranks: b .9, c .7, d .3 (clicked), a .2 -> skip b, take c, a
    scores = np.array([[0.9, 0.8, 0.1, 0.5], [0.2, 0.9, 0.7, 0.3]])
    sample = HardNegativeSampler(2, skip_top=1).sample(scores, ["a", "b", "c", "d"], exclude=[{"a"}, {"d"}])
    assert sample.ids.reshape(2, 2).tolist() == [["d", "c"], ["c", "a"]]
    # shares: c twice out of 4
    assert sample.probabilities.tolist() == [0.25, 0.5, 0.5, 0.25]


def test_hard_negatives_agree_with_sorting_and_never_return_positives():
    rng = np.random.default_rng(4)
    item_ids = [f"i{k}" for k in range(30)]
    scores = rng.normal(size=(6, 30))
    exclude = [set(rng.choice(item_ids, size=rng.integers(0, 8), replace=False).tolist()) for _ in range(6)]
    sample = HardNegativeSampler(5).sample(scores, item_ids, exclude)
    picks = sample.ids.reshape(6, 5)
    for row in range(6):
        ranked = sorted((i for i in item_ids if i not in exclude[row]),
                        key=lambda i: -scores[row, item_ids.index(i)])
        assert picks[row].tolist() == ranked[:5]
    counts = Counter(sample.ids.tolist())
    assert sample.probabilities.tolist() == [counts[i] / 30 for i in sample.ids]
    assert sum(sample.probabilities[np.unique(sample.ids.astype(str), return_index=True)[1]]) == pytest.approx(1.0)


def test_hard_negative_ties_go_to_the_earlier_column():
    sample = HardNegativeSampler(2).sample(np.zeros((1, 4)), ["w", "x", "y", "z"], exclude=[["w"]])
    assert sample.ids.tolist() == ["x", "y"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: HardNegativeSampler(0), "num_negatives"),
        (lambda: HardNegativeSampler(1, skip_top=-1), "skip_top"),
        (lambda: HardNegativeSampler(2).sample(np.zeros((1, 3)), ["a", "b"], [[]]), "scores must be"),
        (lambda: HardNegativeSampler(2).sample(np.zeros((2, 2)), ["a", "b"], [[]]), "exclude has 1 rows"),
        (lambda: HardNegativeSampler(2).sample(np.zeros((1, 2)), ["a", "b"], [["a"]]), "only 1 non-excluded"),
    ],
)
def test_hard_negative_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------
# MixedSampler

POPULARITY = {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}


def popularity(ids):
    return np.array([POPULARITY.get(i, 0.0) for i in ids])


def test_mixed_layout_and_mixture_probabilities():
    random = unigram_with({"a": 1.0, "e": 16.0}, seed=3)  # q_random: a 1/9, e 8/9
    hard = HardNegativeSampler(1)
    scores = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 1.0]])  # over items a, c, e
    mixed = MixedSampler(InBatchSampler(popularity), random, hard, random_ratio=1.5)
    sample = mixed.sample(["a", "b"], scores=scores, item_ids=["a", "c", "e"], exclude=[["e"], ["a"]])
    # B = 2 batch, R = round(1.5 * 2) = 3 random, H = 2 * 1 hard (c for user 0, e for user 1)
    assert sample.ids[:2].tolist() == ["a", "b"] and len(sample) == 7
    assert sample.ids[5:].tolist() == ["c", "e"]
    assert set(sample.ids[2:5].tolist()) <= {"a", "e"}
    q_random = {"a": 1 / 9, "e": 8 / 9}
    q_hard = {"c": 0.5, "e": 0.5}
    for item_id, reported in zip(sample.ids, sample.probabilities):
        expected = (2 * POPULARITY.get(item_id, 0) + 3 * q_random.get(item_id, 0) + 2 * q_hard.get(item_id, 0)) / 7
        assert reported == pytest.approx(expected)


def test_mixed_probabilities_are_the_distribution_of_a_candidate_position():
    # batches drawn from the popularity distribution, random ids from count^0.75: the id at a
    # uniformly chosen candidate position is distributed as the reported mixture
    rng = np.random.default_rng(9)
    random = unigram_with({"c": 1.0, "d": 16.0, "e": 81.0}, seed=10)
    mixed = MixedSampler(InBatchSampler(popularity), random, random_ratio=0.5)
    observed: Counter = Counter()
    reported: dict[str, float] = {}
    for _ in range(4000):
        batch = rng.choice(list(POPULARITY), size=8, p=list(POPULARITY.values()))
        sample = mixed.sample(batch)
        observed.update(sample.ids.tolist())
        reported.update(zip(sample.ids.tolist(), sample.probabilities.tolist()))
    positions = 4000 * 12
    for item_id, probability in reported.items():
        assert observed[item_id] / positions == pytest.approx(probability, abs=0.004)


def test_mixed_without_random_is_in_batch():
    sample = MixedSampler(InBatchSampler(popularity), random_ratio=0.0).sample(["c", "a"])
    assert sample.ids.tolist() == ["c", "a"]
    assert sample.probabilities.tolist() == [0.2, 0.4]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: MixedSampler(InBatchSampler(popularity), random_ratio=-1.0), "random_ratio"),
        (lambda: MixedSampler(InBatchSampler(popularity), random_ratio=1.0), "needs a random sampler"),
        (lambda: MixedSampler(InBatchSampler(popularity), random_ratio=0.0).sample(["a"], scores=np.zeros((1, 1))),
         "no hard sampler"),
        (lambda: MixedSampler(InBatchSampler(popularity), hard=HardNegativeSampler(1), random_ratio=0.0)
         .sample(["a"]), "needs scores"),
    ],
)
def test_mixed_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_draw_at_the_very_end_of_the_table_never_returns_a_zero_weight_id():
    from recallstream.model.samplers.unigram import _CumulativeTable

    class LargestUniform:  # the largest value Generator.random can return
        def random(self, size):
            return np.full(size, np.nextafter(1.0, 0.0))

    table = _CumulativeTable(np.array(["a", "b", "z"], dtype=object), np.array([0.1, 0.2, 0.0]))
    assert table.ids[table.draw(LargestUniform(), 3)].tolist() == ["b", "b", "b"]
