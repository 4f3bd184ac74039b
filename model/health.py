"""Model-health and popularity figures of an online learner, for the metrics and drift detectors.

Read-only: nothing here changes the learner. :func:`batch_health` scores a
minibatch before its training step (users with the histories they had just
before each click, as the prequential monitor does):

- ``in_batch_accuracy``: share of clicks whose item outscores every other item of
  the batch for that user;
- ``positive_score`` and ``negative_score``: mean score of the (user, clicked item)
  pairs and of the (user, other item of the batch) pairs;
- ``user_norm`` and ``item_norm``: mean vector norms (1 for normalised towers, 0
  where a tower outputs zero vectors);
- ``collapse``: mean pairwise cosine of a fixed sample of catalog items (about 0 for
  spread vectors, 1 when every item points the same way);
- ``coverage``: distinct items among the top ``k`` of the batch's users, over the catalog size.

:func:`popularity_health` summarises the learner's click-share estimate.

Examples
--------
>>> from recallstream.model.online import OnlineLearner, stream_tower_config
>>> learner = OnlineLearner(stream_tower_config(id_buckets=64, dim=4), seed=0)
>>> items = {"a": {}, "b": {}, "c": {}}
>>> health = batch_health(learner, ["u1", "u2"], ["a", "b"], {}, items, k=2)
>>> sorted(health)
['collapse', 'coverage', 'in_batch_accuracy', 'item_norm', 'negative_score', 'positive_score', 'user_norm']
>>> round(health["item_norm"], 3), 0.0 < health["coverage"] <= 1.0
(1.0, True)
>>> learner.estimator.update(["a"] * 9 + ["b"])
>>> sorted(popularity_health(learner, ["a", "b"], items))
['entropy', 'log_q_mean', 'top_share']
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from recallstream.model.catalog_vectors import BatchVectors

COLLAPSE_SAMPLE = 128  # items of the fixed sample (the first ids in sorted order)


def batch_health(learner, user_ids: Sequence[str], item_ids: Sequence[str],
                 users: Mapping[str, Mapping], items: Mapping[str, Mapping], k: int = 50,
                 batch: BatchVectors | None = None) -> dict:
    """Health figures of one minibatch, before its step (see the module docstring);
    ``batch``: its vectors, if the caller has them already."""
    if not items or not user_ids:
        return {}
    if batch is None:
        batch = BatchVectors.compute(learner, user_ids, item_ids, users, items)
    catalog, vectors, user_vectors = batch.catalog.item_ids, batch.catalog.vectors, batch.users
    row = {item_id: n for n, item_id in enumerate(catalog)}
    known = [n for n, item_id in enumerate(item_ids) if item_id in row]
    out = {"user_norm": float(np.linalg.norm(user_vectors, axis=1).mean()),
           "item_norm": float(np.linalg.norm(vectors, axis=1).mean())}
    if known:
        batch_rows = np.array([row[item_ids[n]] for n in known])
        scores = user_vectors[known] @ vectors[batch_rows].T  # [clicks, clicks]
        positive = np.diag(scores)
        other = batch_rows[None, :] != batch_rows[:, None]  # another item, not a copy
        out["positive_score"] = float(positive.mean())
        out["negative_score"] = float(scores[other].mean()) if other.any() else 0.0
        best_other = np.where(other, scores, -np.inf).max(axis=1)
        out["in_batch_accuracy"] = float((positive > best_other).mean())
    sample = vectors[:COLLAPSE_SAMPLE]
    out["collapse"] = mean_pairwise_cosine(sample)
    top = min(k, len(catalog))
    all_scores = user_vectors @ vectors.T
    recommended = np.argpartition(-all_scores, top - 1, axis=1)[:, :top]
    out["coverage"] = len(np.unique(recommended)) / len(catalog)
    return out


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine over distinct pairs of rows (zero rows count as cosine 1: collapsed).

    >>> mean_pairwise_cosine(np.array([[1.0, 0.0], [0.0, 1.0]])), mean_pairwise_cosine(np.zeros((3, 2)))
    (0.0, 1.0)
    """
    n = len(vectors)
    if n < 2:
        return 0.0
    norms = np.linalg.norm(vectors, axis=1)
    if not norms.any():
        return 1.0
    unit = vectors / np.where(norms == 0, 1.0, norms)[:, None]
    cos = unit @ unit.T
    cos[norms == 0, :] = 1.0
    cos[:, norms == 0] = 1.0
    return float((cos.sum() - np.trace(cos)) / (n * (n - 1)))


def popularity_health(learner, batch_item_ids: Sequence[str], items: Mapping[str, Mapping]) -> dict:
    """The click-share estimate over the catalog: ``entropy`` (normalised to [0, 1] by the
    log of the catalog size), ``top_share`` (share of the top 1% of items) and
    ``log_q_mean``, the mean logQ correction of the batch's items as the step applied it
    (log of the expected copies among the candidates; call after the step)."""
    catalog = sorted(items)
    if not catalog:
        return {}
    share = np.asarray(learner.estimator.probability(catalog), dtype=np.float64)
    p = share / share.sum()
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum()
    top = max(1, len(catalog) // 100)
    uniform = learner.uniform_negatives / len(catalog)
    copies = len(batch_item_ids) * np.asarray(learner.estimator.probability(list(batch_item_ids))) + uniform
    return {"entropy": float(entropy / np.log(len(catalog))) if len(catalog) > 1 else 0.0,
            "top_share": float(np.sort(p)[-top:].sum()),
            "log_q_mean": float(np.log(copies).mean()) if len(batch_item_ids) else 0.0}
