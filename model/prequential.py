"""Prequential (test-then-train) recall of an online learner, and its baseline.

River's ``progressive_val_score`` is the idea: every click is scored against
the model *before* the model trains on it, so the score measures prediction of
the future, on the stream itself, without a held-out set.
:class:`PrequentialMonitor` scores a minibatch of clicks with fresh vectors of
the whole known catalog, computed from the learner's current model (so the
figure does not depend on what was written to the vector index, or when), and
scores the same clicks against :class:`MostPopularSoFar`, the items clicked
most so far, so the model's recall@K has something to be compared with. Both
leave out the items the user clicked before, as the learner keeps them (its
recent history), as a serving filter would. The worker drives it; an offline
replay of a stream can drive it the same way.

Examples
--------
>>> baseline = MostPopularSoFar()
>>> baseline.update(["a", "a", "a", "b", "b", "c"])
>>> baseline.hits_at_k(["b", "c", "c"], k=2, exclude=[[], [], ["a"]]).tolist()
[True, False, True]
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from recallstream.model.catalog_vectors import CatalogVectors


class MostPopularSoFar:
    """Ranks items by the clicks seen so far (ties: first clicked first).

    ``hits_at_k`` leaves out each row's excluded items (the user's recent
    history), as the model's prequential scoring does.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def update(self, item_ids: Iterable[str]) -> None:
        """Count clicks (call after scoring them)."""
        self.counts.update(item_ids)

    def hits_at_k(self, item_ids: Sequence[str], k: int,
                  exclude: Sequence[Sequence[str]]) -> np.ndarray:
        """Row i: is ``item_ids[i]`` among the top ``k`` items not in ``exclude[i]``?"""
        longest = max((len(e) for e in exclude), default=0)
        rank = {item: r for r, (item, _) in enumerate(self.counts.most_common(k + longest))}
        hits = np.zeros(len(item_ids), dtype=bool)
        for i, (item_id, excluded) in enumerate(zip(item_ids, exclude)):
            target = rank.get(item_id)
            if target is None:
                continue
            ahead = sum(1 for e in set(excluded) if e != item_id and rank.get(e, target) < target)
            hits[i] = target - ahead < k
        return hits

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping) -> None:
        self.counts = Counter(state["counts"])


class HitRate:
    """Hits over every click scored, and over the latest ``window`` clicks.

    Examples
    --------
    >>> rate = HitRate(window=2)
    >>> rate.add(np.array([True, False, False]))
    >>> rate.overall(), rate.rolling()
    (0.3333333333333333, 0.0)
    """

    def __init__(self, window: int) -> None:
        self.hits = 0
        self.clicks = 0
        self.latest: deque[bool] = deque(maxlen=window)

    def add(self, hits: np.ndarray) -> None:
        self.hits += int(hits.sum())
        self.clicks += len(hits)
        self.latest.extend(hits.tolist())

    def overall(self) -> float | None:
        return self.hits / self.clicks if self.clicks else None

    def rolling(self) -> float | None:
        return sum(self.latest) / len(self.latest) if self.latest else None

    def state_dict(self) -> dict:
        return {"hits": self.hits, "clicks": self.clicks, "latest": list(self.latest)}

    def load_state_dict(self, state: Mapping) -> None:
        self.hits, self.clicks = int(state["hits"]), int(state["clicks"])
        self.latest.clear()
        self.latest.extend(bool(hit) for hit in state["latest"])


class PrequentialMonitor:
    """Test-then-train recall@``k`` of a learner and of the baseline (see the module docstring).

    Parameters
    ----------
    k : int
        Size of the recall set.
    window : int
        Clicks of the rolling figures.

    Examples
    --------
    >>> from recallstream.model.online import OnlineLearner
    >>> from recallstream.model.towers import movielens_config
    >>> learner = OnlineLearner(movielens_config(id_buckets=64, output_dim=4, hidden=(8,)), seed=0)
    >>> items = {"a": {}, "b": {}}
    >>> monitor = PrequentialMonitor(k=1, window=10)
    >>> loss = learner.train_batch(["u1"], ["a"], users={}, items=items)
    >>> monitor.score(learner, ["u1"], ["b"], users={}, items=items).tolist()  # a: clicked before
    [True]
    >>> report = monitor.report()  # the baseline had counted no click yet
    >>> report["prequential_recall@1"], report["popularity_prequential_recall@1"]
    (1.0, 0.0)
    >>> monitor.baseline.counts
    Counter({'b': 1})
    """

    def __init__(self, k: int = 50, window: int = 5000) -> None:
        self.k = k
        self.baseline = MostPopularSoFar()
        self.model_hits = HitRate(window)
        self.popular_hits = HitRate(window)

    def score(self, learner, user_ids: Sequence[str], item_ids: Sequence[str],
              users: Mapping[str, Mapping], items: Mapping[str, Mapping]) -> np.ndarray:
        """Score the clicks ``(user_ids[i], item_ids[i])`` before ``learner`` trains on them.

        ``items`` is the whole known catalog (every candidate); ``users`` the user
        features. Returns the model's hits; both rates and the baseline's counts
        take the clicks in.
        """
        catalog = CatalogVectors.embed(learner, items)
        exclude = learner.histories_of(user_ids)
        hits = catalog.in_top_k(learner.embed_users(user_ids, users), item_ids, self.k, exclude)
        self.model_hits.add(hits)
        self.popular_hits.add(self.baseline.hits_at_k(item_ids, self.k, exclude))
        self.baseline.update(item_ids)
        return hits

    def rolling_recall(self) -> float | None:
        """The model's recall@k over the latest clicks (None before the first)."""
        return self.model_hits.rolling()

    def report(self) -> dict:
        k = self.k
        return {"prequential_hits": self.model_hits.hits, "prequential_clicks": self.model_hits.clicks,
                "popularity_hits": self.popular_hits.hits,
                f"prequential_recall@{k}": self.model_hits.overall(),
                f"rolling_recall@{k}": self.model_hits.rolling(),
                f"popularity_prequential_recall@{k}": self.popular_hits.overall(),
                f"popularity_rolling_recall@{k}": self.popular_hits.rolling()}

    def state_dict(self) -> dict:
        return {"k": self.k, "model": self.model_hits.state_dict(),
                "popular": self.popular_hits.state_dict(), "baseline": self.baseline.state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        if state["k"] != self.k:
            raise ValueError(f"the saved figures are recall@{state['k']}, not recall@{self.k}")
        self.model_hits.load_state_dict(state["model"])
        self.popular_hits.load_state_dict(state["popular"])
        self.baseline.load_state_dict(state["baseline"])
