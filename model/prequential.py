"""A baseline for prequential (test-then-train) recall: the most clicked items so far.

The worker scores each click against the model before training on it; the
same click is scored against this baseline, so that the model's rolling
recall@K has something to be compared with on the same stream.

Examples
--------
>>> baseline = MostPopularSoFar()
>>> baseline.update(["a", "a", "a", "b", "b", "c"])
>>> baseline.hits_at_k(["b", "c", "c"], k=2, exclude=[[], [], ["a"]]).tolist()
[True, False, True]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


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
