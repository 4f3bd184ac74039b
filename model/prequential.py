"""Prequential (test-then-train) recall of an online learner, and its baseline.

River's ``progressive_val_score`` is the idea: every click is scored against
the model *before* the model trains on it, so the score measures prediction of
the future, on the stream itself, without a held-out set.
:class:`PrequentialMonitor` scores a minibatch of clicks with fresh vectors of
the whole known catalog, computed from the learner's current model (so the
figure does not depend on what was written to the vector index, or when), and
scores the same clicks against :class:`MostPopularSoFar`, the items clicked
most so far (counted after every click), so the model's recall@K has
something to be compared with. Both leave out every item the user clicked
before (:class:`ClickedBefore`), as a serving filter would, and the user tower
sees the user's history as it stands just before each click (earlier clicks
of the same batch included, the click itself never). The worker drives it;
the stream evaluation (:mod:`recallstream.model.stream_eval`) drives it the same way.

"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

from recallstream.model.catalog_vectors import BatchVectors
from recallstream.model.most_popular import MostPopularSoFar


class ClickedBefore:
    """Every item each user clicked, to leave out of that user's recall set.

    Examples
    --------
    >>> seen = ClickedBefore()
    >>> seen.prefixes(["u", "v", "u"], ["a", "b", "c"])  # what each click must not be ranked against
    [[], [], ['a']]
    >>> seen.add(["u", "v", "u"], ["a", "b", "c"]); sorted(seen.items["u"])
    ['a', 'c']
    """

    def __init__(self) -> None:
        self.items: dict[str, set[str]] = {}

    def prefixes(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> list[list[str]]:
        """Row i: the items user i clicked before click i (earlier rows included)."""
        pending: dict[str, list[str]] = {}
        out = []
        for user_id, item_id in zip(user_ids, item_ids):
            earlier = pending.setdefault(user_id, [])
            out.append([*self.items.get(user_id, ()), *earlier])
            earlier.append(item_id)
        return out

    def add(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> None:
        for user_id, item_id in zip(user_ids, item_ids):
            self.items.setdefault(user_id, set()).add(item_id)

    def state_dict(self) -> dict:
        return {"items": {user: sorted(items) for user, items in self.items.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        self.items = {user: set(items) for user, items in state["items"].items()}


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
    >>> from recallstream.model.online import OnlineLearner, stream_tower_config
    >>> learner = OnlineLearner(stream_tower_config(id_buckets=64, dim=4), seed=0)
    >>> items = {"a": {}, "b": {}}
    >>> monitor = PrequentialMonitor(k=1, window=10)
    >>> monitor.observe(["u2"], ["a"])  # u2 clicked a, unscored (a train-only start)
    >>> model, popular = monitor.score_with_baseline(learner, ["u1", "u1"], ["b", "a"], {}, items)
    >>> bool(model[1]), popular.tolist()  # u1's second click: b, clicked just before, is left out
    (True, [False, True])
    >>> monitor.report()["popularity_prequential_recall@1"]
    0.5
    >>> monitor.baseline.counts
    {'a': 2, 'b': 1}
    """

    def __init__(self, k: int = 50, window: int = 5000) -> None:
        self.k = k
        self.baseline = MostPopularSoFar()
        self.clicked = ClickedBefore()
        self.model_hits = HitRate(window)
        self.popular_hits = HitRate(window)

    def score(self, learner, user_ids: Sequence[str], item_ids: Sequence[str],
              users: Mapping[str, Mapping], items: Mapping[str, Mapping],
              vectors: BatchVectors | None = None) -> np.ndarray:
        """Score the clicks ``(user_ids[i], item_ids[i])`` before ``learner`` trains on them.

        ``items`` is the whole known catalog (every candidate); ``users`` the user
        features; ``vectors`` the batch's vectors if the caller has them already.
        Returns the model's hits; both rates and the baseline's counts take the
        clicks in.
        """
        return self.score_with_baseline(learner, user_ids, item_ids, users, items, vectors)[0]

    def score_with_baseline(self, learner, user_ids: Sequence[str], item_ids: Sequence[str],
                            users: Mapping[str, Mapping], items: Mapping[str, Mapping],
                            vectors: BatchVectors | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`score`, returning the hits of the model and of the baseline."""
        if vectors is None:
            vectors = BatchVectors.compute(learner, user_ids, item_ids, users, items)
        exclude = self.clicked.prefixes(user_ids, item_ids)
        hits = vectors.catalog.in_top_k(vectors.users, item_ids, self.k, exclude)
        popular = self.baseline.hits_then_count(item_ids, self.k, exclude)
        self.model_hits.add(hits)
        self.popular_hits.add(popular)
        self.clicked.add(user_ids, item_ids)
        return hits, popular

    def observe(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> None:
        """Take clicks in without scoring them (a stream's train-only start)."""
        self.baseline.update(item_ids)
        self.clicked.add(user_ids, item_ids)

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
                "popular": self.popular_hits.state_dict(), "baseline": self.baseline.state_dict(),
                "clicked": self.clicked.state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        if state["k"] != self.k:
            raise ValueError(f"the saved figures are recall@{state['k']}, not recall@{self.k}")
        self.model_hits.load_state_dict(state["model"])
        self.popular_hits.load_state_dict(state["popular"])
        self.baseline.load_state_dict(state["baseline"])
        self.clicked.load_state_dict(state["clicked"])
