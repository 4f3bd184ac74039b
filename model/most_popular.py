"""The most-popular-so-far baseline of prequential recall: items ranked by their clicks so far.

A strong baseline on a stream (published prequential studies on MovieLens find
it beats incremental matrix factorisation several times over); the model's
recall means something only beside it, on the same clicks and exclusion rule.
Examples
--------
>>> baseline = MostPopularSoFar()
>>> baseline.update(["a", "a", "a", "b", "b", "c"])
>>> baseline.hits_at_k(["b", "c", "c"], k=2, exclude=[[], [], ["a"]]).tolist()
[True, False, True]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


class MostPopularSoFar:
    """Ranks items by the clicks seen so far (ties: first clicked first).

    ``hits_at_k`` leaves out each row's excluded items (what the user clicked
    before), as the model's prequential scoring does; ``hits_then_count`` scores
    clicks one at a time, each against the counts of every click before it.

    Examples
    --------
    >>> baseline = MostPopularSoFar()
    >>> baseline.hits_then_count(["a", "a", "b", "a"], k=1, exclude=[[], [], [], ["b"]]).tolist()
    [False, True, False, True]
    >>> baseline.counts
    {'a': 3, 'b': 1}
    """

    def __init__(self) -> None:
        self._slot: dict[str, int] = {}  # item -> order of its first click
        self._counts = np.zeros(16, dtype=np.int64)

    @property
    def counts(self) -> dict[str, int]:
        """Clicks per item, in the order of their first click."""
        return {item: int(self._counts[slot]) for item, slot in self._slot.items()}

    def update(self, item_ids: Iterable[str]) -> None:
        """Count clicks (call after scoring them)."""
        for item_id in item_ids:
            slot = self._slot_of(item_id)  # may grow the array: index it afterwards
            self._counts[slot] += 1

    def hits_at_k(self, item_ids: Sequence[str], k: int,
                  exclude: Sequence[Sequence[str]]) -> np.ndarray:
        """Row i: is ``item_ids[i]`` among the top ``k`` items not in ``exclude[i]``?"""
        return np.array([self._hit(item_id, k, excluded)
                         for item_id, excluded in zip(item_ids, exclude)], dtype=bool)

    def hits_then_count(self, item_ids: Sequence[str], k: int,
                        exclude: Sequence[Sequence[str]]) -> np.ndarray:
        """Score each click, then count it, in order (counts updated after every click).

        All clicks at once: click ``i`` is ranked by the counts before the batch plus the
        batch's clicks before ``i``, which only the batch's own items have.
        """
        if not item_ids:
            return np.zeros(0, dtype=bool)
        slots = np.array([self._slot_of(item_id) for item_id in item_ids], dtype=np.int64)
        size = len(self._slot)
        counts = self._counts[:size]
        batch_slots, at = np.unique(slots, return_inverse=True)
        # before[i, j]: count of the batch's j-th item just before click i
        seen = np.zeros((len(slots), len(batch_slots)), dtype=np.int64)
        seen[np.arange(len(slots)), at] = 1
        before = counts[batch_slots] + np.cumsum(seen, axis=0) - seen
        # one key orders the ranking: more clicks first, then the earlier first click
        batch_keys = before * size + (size - 1 - batch_slots)
        target_keys = batch_keys[np.arange(len(slots)), at]
        others = np.ones(size, dtype=bool)
        others[batch_slots] = False
        other_keys = np.sort(counts[others] * size + (size - 1 - np.flatnonzero(others)))
        ahead = (len(other_keys) - np.searchsorted(other_keys, target_keys, side="right")
                 + np.count_nonzero(batch_keys > target_keys[:, None], axis=1))
        lengths = np.fromiter(map(len, exclude), dtype=np.int64, count=len(exclude))
        clicked = before[np.arange(len(slots)), at] > 0
        hits = clicked & (ahead < k)
        # leaving items out moves a target up by at most their number
        for i in np.flatnonzero(clicked & (ahead >= k) & (ahead - lengths < k)).tolist():
            left_out = self._keys_at(i, exclude[i], slots[i], counts, batch_slots, before)
            hits[i] = ahead[i] - np.count_nonzero(left_out > target_keys[i]) < k
        np.add.at(self._counts, slots, 1)
        return hits

    def _keys_at(self, i: int, excluded: Sequence[str], target: int, counts: np.ndarray,
                 batch_slots: np.ndarray, before: np.ndarray) -> np.ndarray:
        """The ranking keys of the distinct ``excluded`` items other than the target,
        just before the batch's click ``i``."""
        found = (self._slot.get(item_id) for item_id in set(excluded))
        slots = np.fromiter((s for s in found if s is not None and s != target), dtype=np.int64)
        at = np.minimum(np.searchsorted(batch_slots, slots), len(batch_slots) - 1)
        in_batch = batch_slots[at] == slots
        now = np.where(in_batch, before[i, at], counts[slots])
        size = len(counts)
        return now * size + (size - 1 - slots)

    def _hit(self, item_id: str, k: int, excluded: Sequence[str]) -> bool:
        slot = self._slot.get(item_id)
        if slot is None or self._counts[slot] == 0:
            return False
        counts = self._counts[:len(self._slot)]
        count = counts[slot]
        ahead = int(np.count_nonzero(counts > count)) + int(np.count_nonzero(counts[:slot] == count))
        if ahead < k:
            return True  # leaving items out can only move the target up
        if ahead - len(excluded) >= k:
            return False  # ... and by at most their number
        for other in set(excluded):
            s = self._slot.get(other)
            if s is not None and s != slot and (counts[s] > count or (counts[s] == count and s < slot)):
                ahead -= 1
        return ahead < k

    def _slot_of(self, item_id: str) -> int:
        slot = self._slot.get(item_id)
        if slot is None:
            slot = self._slot[item_id] = len(self._slot)
            if slot == len(self._counts):
                self._counts = np.concatenate([self._counts, np.zeros_like(self._counts)])
        return slot

    def state_dict(self) -> dict:
        return {"counts": self.counts}

    def load_state_dict(self, state: Mapping) -> None:
        self.__init__()
        for item_id, count in state["counts"].items():  # first-click order kept
            slot = self._slot_of(item_id)
            self._counts[slot] = int(count)
