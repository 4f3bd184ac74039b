"""Offline evaluation: the two published MovieLens protocols, as pure functions.

**RecBole** (``recbole_split``, ``topk_metrics``): every rating is a positive;
each user's interactions are shuffled and split 8:1:1 with RecBole's rounding
(:func:`split_counts`); all items are ranked, the user's training items masked
at validation and training plus validation items masked at test. Metrics @K
follow RecBole 1.2.1's definitions, averaged over users with at least one
relevant item: recall = hits / |relevant|, precision = hits / K, hit = any hit,
MRR = 1 / rank of the first hit (0 without a hit), NDCG with binary relevance
and the ideal DCG over ``min(|relevant|, K)`` positions.

**TFRS** (``tfrs_split``, ``top_k_share``): ratings shuffled with one seed,
the first 80,000 train and the next 20,000 test; the score is the share of test
interactions whose item is in the top K of all items for its user, seen items
not masked.

Examples
--------
>>> import numpy as np
>>> top = np.array([[3, 1, 2]])
>>> metrics = topk_metrics(top, [{1, 9}], k=3)
>>> metrics["recall@3"], metrics["mrr@3"], metrics["precision@3"]
(0.5, 0.5, 0.3333)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "mask_scores", "popularity_scores", "rank_top_k", "recbole_split", "split_counts",
    "tfrs_split", "top_k_share", "topk_metrics",
]

TRAIN, VALID, TEST = 0, 1, 2


def split_counts(total: int, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> list[int]:
    """Sizes of the parts of ``total`` interactions, rounded as RecBole does.

    Every part but the first is rounded down; then, while the first keeps
    more than one, each later part whose exact share is in (0, 1) gets one.

    Examples
    --------
    >>> split_counts(20), split_counts(25), split_counts(5), split_counts(1)
    ([16, 2, 2], [21, 2, 2], [3, 1, 1], [1, 0, 0])
    """
    if total < 0 or not ratios or any(r < 0 for r in ratios):
        raise ValueError(f"need total >= 0 and non-negative ratios, got {total}, {ratios}")
    scale = sum(ratios)
    ratios = [r / scale for r in ratios]
    counts = [int(r * total) for r in ratios]
    counts[0] = total - sum(counts[1:])
    for i in range(1, len(ratios)):
        if counts[0] <= 1:
            break
        if 0 < ratios[-i] * total < 1:
            counts[-i] += 1
            counts[0] -= 1
    return counts


def recbole_split(user_codes: np.ndarray, *, seed: int = 2020,
                  ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """Part of each interaction (0 train, 1 valid, 2 test) after a per-user shuffle and split.

    As RecBole 1.2.1 does with ``eval_args.order: RO``: all interactions (in
    file order) are shuffled with ``torch.randperm`` after
    ``torch.manual_seed(seed)``, then each user's interactions, in shuffled
    order, are cut by :func:`split_counts`. Same seed and file order, same split.

    Examples
    --------
    >>> # torch.manual_seed(2020); torch.randperm(10) is [0, 7, 5, 4, 2, 6, 1, 8, 9, 3]:
    >>> # the first 8 train, interaction 9 valid, interaction 3 test
    >>> recbole_split(np.zeros(10, dtype=int), seed=2020).tolist()
    [0, 0, 0, 2, 0, 0, 0, 0, 0, 1]
    """
    user_codes = np.asarray(user_codes)
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(user_codes), generator=generator).numpy()
    order = shuffled[np.argsort(user_codes[shuffled], kind="stable")]
    parts = np.empty(len(user_codes), dtype=np.int8)
    sorted_users = user_codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for start, end in zip(starts, ends):
        boundaries = np.cumsum([start] + split_counts(end - start, ratios))
        for part, (lo, hi) in enumerate(zip(boundaries[:-1], boundaries[1:])):
            parts[order[lo:hi]] = part
    return parts


def tfrs_split(num_ratings: int, *, seed: int = 42, train_size: int = 80_000,
               test_size: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the train and test ratings: shuffle with ``seed``, take the first ``train_size``,
    then the next ``test_size``.

    Examples
    --------
    >>> train, test = tfrs_split(10, seed=0, train_size=8, test_size=2)
    >>> len(train), len(test), sorted(np.r_[train, test].tolist()) == list(range(10))
    (8, 2, True)
    """
    if train_size < 0 or test_size < 0 or train_size + test_size > num_ratings:
        raise ValueError(f"cannot take {train_size} + {test_size} of {num_ratings} ratings")
    order = np.random.default_rng(seed).permutation(num_ratings)
    return order[:train_size], order[train_size:train_size + test_size]


def popularity_scores(item_codes: np.ndarray, num_items: int) -> np.ndarray:
    """Training count of every item (the most-popular baseline's score).

    Examples
    --------
    >>> popularity_scores(np.array([2, 2, 0]), 4).tolist()
    [1.0, 0.0, 2.0, 0.0]
    """
    return np.bincount(item_codes, minlength=num_items).astype(np.float64)


def mask_scores(scores: torch.Tensor, rows: np.ndarray, columns: np.ndarray) -> torch.Tensor:
    """Copy of ``scores`` with the ``(rows, columns)`` entries set to -inf (seen items)."""
    masked = scores.clone()
    masked[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(columns, dtype=torch.long)] = -torch.inf
    return masked


def rank_top_k(scores: torch.Tensor, k: int) -> np.ndarray:
    """``[U, k]`` item indices of the highest scores per row, best first.

    Ties go to the lower item index, so the ranking does not depend on the sort.

    Examples
    --------
    >>> rank_top_k(torch.tensor([[0.1, 0.5, 0.5, 0.2]]), 3).tolist()
    [[1, 2, 3]]
    """
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in [1, {scores.shape[1]}], got {k}")
    # a stable descending sort on the float64 scores breaks ties by index
    order = torch.sort(scores.double(), dim=1, descending=True, stable=True).indices
    return order[:, :k].numpy()


def topk_metrics(top_items: np.ndarray, relevant: Sequence[set], k: int = 10) -> dict[str, float]:
    """RecBole's recall, NDCG, hit, MRR and precision @k, averaged over users with relevant items.

    Parameters
    ----------
    top_items
        ``[U, >=k]`` ranked item indices per user.
    relevant
        ``U`` sets of relevant (held-out) item indices.
    k
        Cut-off.

    Returns
    -------
    dict
        ``recall@k``, ``ndcg@k``, ``hit@k``, ``mrr@k``, ``precision@k``
        rounded to 4 decimals, and ``users`` (how many were averaged).

    Examples
    --------
    >>> # hits at ranks 1 and 3 of 2 relevant: DCG = 1 + 1/log2(4) = 1.5,
    >>> # ideal = 1 + 1/log2(3) = 1.6309, NDCG = 0.9197
    >>> topk_metrics(np.array([[5, 6, 7]]), [{5, 7}], k=3)["ndcg@3"]
    0.9197
    """
    top = np.asarray(top_items)[:, :k]
    if top.shape[0] != len(relevant) or top.shape[1] < k:
        raise ValueError(f"need {len(relevant)} rows of at least {k} items, got {top.shape}")
    users = [u for u, items in enumerate(relevant) if items]
    hits = np.array([[item in relevant[u] for item in top[u]] for u in users], dtype=bool)
    counts = np.array([len(relevant[u]) for u in users], dtype=np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(counts, k).astype(int) - 1]
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.inf)
    metrics = {
        "recall": hits.sum(axis=1) / counts,
        "ndcg": (hits * discounts).sum(axis=1) / ideal,
        "hit": hits.any(axis=1).astype(np.float64),
        "mrr": 1.0 / first,
        "precision": hits.sum(axis=1) / k,
    }
    out = {f"{name}@{k}": round(float(values.mean()), 4) if len(users) else 0.0
           for name, values in metrics.items()}
    out["users"] = len(users)
    return out


def top_k_share(top_items: np.ndarray, user_rows: np.ndarray, item_codes: np.ndarray,
                ks: Sequence[int] = (1, 5, 10, 50, 100)) -> dict[str, float]:
    """Share of test interactions ``(user_rows[j], item_codes[j])`` whose item is in the user's top K.

    Parameters
    ----------
    top_items
        ``[U, >=max(ks)]`` ranked item indices per user (nothing masked).
    user_rows, item_codes
        The test interactions: row of ``top_items`` and item index.

    Examples
    --------
    >>> top = np.array([[0, 1, 2], [2, 1, 0]])
    >>> top_k_share(top, np.array([0, 1, 1]), np.array([1, 2, 0]), ks=(1, 2))
    {'top1': 0.3333, 'top2': 0.6667}
    """
    top = np.asarray(top_items)
    if top.shape[1] < max(ks):
        raise ValueError(f"top_items has {top.shape[1]} columns, need {max(ks)}")
    matches = top[np.asarray(user_rows)] == np.asarray(item_codes)[:, None]
    # position of the item in its user's list, or beyond every cut-off
    position = np.where(matches.any(axis=1), matches.argmax(axis=1), top.shape[1])
    return {f"top{k}": round(float((position < k).mean()), 4) for k in ks}
