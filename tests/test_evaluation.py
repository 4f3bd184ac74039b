"""Offline metrics and splits against hand-computed cases and a plain reimplementation."""

import math

import numpy as np
import pytest
import torch

from recallstream.model.evaluation import (mask_scores, rank_top_k, recbole_split, split_counts, tfrs_split,
                              top_k_share, topk_metrics)


def reference_metrics(top, relevant, k):
    """Straightforward per-user loops, written from the textbook definitions."""
    sums = dict(recall=0.0, ndcg=0.0, hit=0.0, mrr=0.0, precision=0.0)
    users = 0
    for ranked, items in zip(top, relevant):
        if not items:
            continue
        users += 1
        ranked = list(ranked[:k])
        hits = [item in items for item in ranked]
        sums["recall"] += sum(hits) / len(items)
        sums["precision"] += sum(hits) / k
        sums["hit"] += float(any(hits))
        sums["mrr"] += next((1 / (i + 1) for i, h in enumerate(hits) if h), 0.0)
        dcg = sum(1 / math.log2(i + 2) for i, h in enumerate(hits) if h)
        ideal = sum(1 / math.log2(i + 2) for i in range(min(len(items), k)))
        sums["ndcg"] += dcg / ideal
    return {f"{name}@{k}": round(value / users, 4) for name, value in sums.items()}


def test_hand_computed_user():
    # top [4, 2, 9, 7]; relevant {2, 7, 8}: hits at ranks 2 and 4
    # recall 2/3, precision 2/4, mrr 1/2, ndcg (1/log2 3 + 1/log2 5) / (1 + 1/log2 3 + 1/2)
    metrics = topk_metrics(np.array([[4, 2, 9, 7]]), [{2, 7, 8}], k=4)
    assert metrics["recall@4"] == round(2 / 3, 4)
    assert metrics["precision@4"] == 0.5 and metrics["mrr@4"] == 0.5 and metrics["hit@4"] == 1.0
    expected_ndcg = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 0.5)
    assert metrics["ndcg@4"] == round(expected_ndcg, 4)


def test_users_without_relevant_items_are_not_averaged():
    metrics = topk_metrics(np.array([[1, 2], [3, 4]]), [{1}, set()], k=2)
    assert metrics["users"] == 1 and metrics["recall@2"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_metrics_agree_with_the_reference_on_random_rankings(seed):
    rng = np.random.default_rng(seed)
    top = np.stack([rng.permutation(30)[:10] for _ in range(50)])
    relevant = [set(rng.choice(30, size=rng.integers(0, 15), replace=False).tolist()) for _ in range(50)]
    ours = topk_metrics(top, relevant, k=10)
    assert {key: ours[key] for key in reference_metrics(top, relevant, 10)} == reference_metrics(top, relevant, 10)


def test_split_counts_follow_recbole_rounding():
    assert split_counts(20) == [16, 2, 2]
    assert split_counts(27) == [23, 2, 2]     # int(2.7) = 2 for valid and test
    assert split_counts(9) == [7, 1, 1]       # 0.9 rounds up to 1 for the small parts
    assert split_counts(2) == [1, 0, 1]       # test is topped up first, then train keeps one
    assert sum(split_counts(737)) == 737


def test_recbole_split_is_per_user_seeded_and_covers_everything():
    users = np.repeat(np.arange(30), np.arange(5, 35))
    parts = recbole_split(users, seed=2020)
    assert np.array_equal(parts, recbole_split(users, seed=2020))
    assert not np.array_equal(parts, recbole_split(users, seed=1))
    for user in range(30):
        assert np.bincount(parts[users == user], minlength=3).tolist() == split_counts(user + 5)


def test_recbole_split_matches_recbole_shuffle_by_hand():
    # torch.manual_seed(2020); torch.randperm(10) = [0, 7, 5, 4, 2, 6, 1, 8, 9, 3] (RecBole's
    # 'RO' ordering). Users alternate 0, 1, ...: user 0's rows in shuffled order are 0, 4, 2, 6, 8,
    # split 3:1:1 -> 6 valid, 8 test; user 1's are 7, 5, 1, 9, 3 -> 9 valid, 3 test.
    users = np.array([0, 1] * 5)
    assert recbole_split(users, seed=2020).tolist() == [0, 0, 0, 2, 0, 0, 1, 0, 2, 1]


def recbole_build_reference(users: np.ndarray, seed: int) -> np.ndarray:
    """RecBole 1.2.1's Dataset.build with RO ordering and RS 8:1:1 grouped by user, written
    out plainly: global torch seed, randperm, groups in first-seen order, _calcu_split_ids."""
    torch.manual_seed(seed)
    shuffled = torch.randperm(len(users)).tolist()
    groups: dict[int, list[int]] = {}
    for row in shuffled:
        groups.setdefault(int(users[row]), []).append(row)
    parts = np.full(len(users), -1)
    for rows in groups.values():
        total = len(rows)
        counts = [int(0.8 * total), int(0.1 * total), int(0.1 * total)]
        counts[0] = total - counts[1] - counts[2]
        for i in (1, 2):
            if counts[0] <= 1:
                break
            if 0 < 0.1 * total < 1:
                counts[-i] += 1
                counts[0] -= 1
        ends = np.cumsum(counts)
        for position, row in enumerate(rows):
            parts[row] = int(np.searchsorted(ends, position, side="right"))
    return parts


def test_recbole_split_agrees_with_a_plain_recbole_build():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 40, size=700)
    assert np.array_equal(recbole_split(users, seed=2020), recbole_build_reference(users, 2020))


def test_tfrs_split_is_a_seeded_shuffle():
    train, test = tfrs_split(100, seed=42, train_size=80, test_size=20)
    order = np.random.default_rng(42).permutation(100)
    assert np.array_equal(train, order[:80]) and np.array_equal(test, order[80:])
    with pytest.raises(ValueError):
        tfrs_split(10, train_size=8, test_size=3)


def test_masking_and_ranking():
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.2, 0.3]])
    masked = mask_scores(scores, np.array([0]), np.array([0]))
    assert rank_top_k(masked, 2).tolist() == [[1, 2], [2, 0]]   # tie 0/1 -> lower index first
    assert scores[0, 0] == 0.9                                     # the input is not modified


def test_top_k_share_counts_interactions_not_users():
    top = np.array([[5, 6, 7], [7, 6, 5]])
    # user 0 clicked 5 (rank 1) and 7 (rank 3); user 1 clicked 9 (absent)
    share = top_k_share(top, np.array([0, 0, 1]), np.array([5, 7, 9]), ks=(1, 3))
    assert share == {"top1": round(1 / 3, 4), "top3": round(2 / 3, 4)}
