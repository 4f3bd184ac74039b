"""Random negatives drawn with probability proportional to count ** 0.75 from running counts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from recallstream.model.samplers.candidate_sample import CandidateSample

__all__ = ["UnigramSampler"]


class UnigramSampler:
    """Draw ids with probability ``count ** power / sum(count ** power)``.

    Counts are updated as clicks stream in. Draws use a cumulative-weight
    table and binary search (inverse CDF): building it is one vectorised
    ``power`` and ``cumsum`` over the known ids (a few milliseconds per
    million ids), a draw costs ``O(log n)`` in compiled code. That is the
    cheap-rebuild equivalent of an alias table, whose ``O(n)`` construction
    cannot be vectorised in numpy; a Fenwick tree would give ``O(log n)``
    updates but needs a Python loop per tree level for every update and draw.
    The table is rebuilt lazily, at the next draw after ``rebuild_every``
    calls to :meth:`update` (1 = always exact). Reported probabilities are
    always those of the table actually drawn from, so logQ stays consistent
    even when the table lags the counts.

    Parameters
    ----------
    power
        Exponent applied to counts (0.75 as in word2vec; 0 gives uniform over
        the known ids, including those with count 0). Fixed at construction.
    rebuild_every
        Rebuild the table after this many updates (>= 1).
    seed
        Seed of the sampler's own random generator.

    Examples
    --------
    >>> sampler = UnigramSampler(seed=0)
    >>> sampler.update(["a", "b", "b"], counts=[1, 15, 1])   # counts a=1, b=16
    >>> sampler.probability(["a", "b", "unseen"]).round(4).tolist()   # 1 : 16**0.75 = 1 : 8
    [0.1111, 0.8889, 0.0]
    >>> sample = sampler.sample(4)
    >>> sample.ids.tolist(), sample.probabilities.round(4).tolist()
    (['b', 'b', 'a', 'a'], [0.8889, 0.8889, 0.1111, 0.1111])
    """

    def __init__(self, power: float = 0.75, *, rebuild_every: int = 1, seed: int = 0) -> None:
        if power < 0:
            raise ValueError(f"power must be non-negative, got {power}")
        if rebuild_every < 1:
            raise ValueError(f"rebuild_every must be at least 1, got {rebuild_every}")
        self._power = power
        self.rebuild_every = rebuild_every
        self._rng = np.random.default_rng(seed)
        self._slot_of: dict[str, int] = {}
        self._ids: list[str] = []
        self._id_array = np.empty(0, dtype=object)  # grown lazily from _ids at rebuild
        self._counts = np.zeros(16, dtype=np.float64)
        # count ** power, kept current for the touched slots so a rebuild is just a cumsum
        self._weights = np.zeros(16, dtype=np.float64)
        self._updates_since_build = 0
        self._table: _CumulativeTable | None = None

    @property
    def power(self) -> float:
        """Exponent applied to the counts."""
        return self._power

    def __len__(self) -> int:
        """Number of distinct ids ever counted."""
        return len(self._slot_of)

    def update(self, ids: Iterable[str], counts: Sequence[float] | np.ndarray | None = None) -> None:
        """Add ``counts`` (default 1 per occurrence) to the running count of each id."""
        ids = list(ids)
        increments = np.ones(len(ids)) if counts is None else np.asarray(counts, dtype=np.float64).reshape(-1)
        if increments.size != len(ids):
            raise ValueError(f"{len(ids)} ids but {increments.size} counts")
        if not bool(np.all(np.isfinite(increments) & (increments >= 0))):
            raise ValueError("counts must be finite and non-negative")
        slots = np.array(self._slots(ids), dtype=np.int64)
        np.add.at(self._counts, slots, increments)
        touched = np.unique(slots)
        self._weights[touched] = np.power(self._counts[touched], self._power)
        self._updates_since_build += 1

    def probability(self, ids: Iterable[str]) -> np.ndarray:
        """Probability that one draw returns each id (0 for ids never counted)."""
        table = self._current_table()
        slots = np.fromiter((self._slot_of.get(item_id, -1) for item_id in ids), dtype=np.int64)
        probabilities = np.zeros(slots.size)
        known = (slots >= 0) & (slots < table.size)
        probabilities[known] = table.probability(slots[known])
        return probabilities

    def sample(self, num_samples: int) -> CandidateSample:
        """Draw ``num_samples`` ids independently, with replacement."""
        if num_samples < 0:
            raise ValueError(f"num_samples must be non-negative, got {num_samples}")
        table = self._current_table()
        slots = table.draw(self._rng, num_samples)
        return CandidateSample(table.ids[slots], table.probability(slots))

    def _slots(self, ids: list[str]) -> list[int]:
        known = self._slot_of.get
        slots = [known(item_id) for item_id in ids]  # the hot path: one dict probe per id
        if None in slots:
            slots = [self._slot(item_id) if slot is None else slot for item_id, slot in zip(ids, slots)]
        return slots

    def _slot(self, item_id: str) -> int:
        slot = self._slot_of.get(item_id)
        if slot is None:
            slot = self._slot_of[item_id] = len(self._ids)
            self._ids.append(item_id)
            if slot == self._counts.size:  # amortised O(1) growth
                self._counts = np.concatenate([self._counts, np.zeros(slot)])
                self._weights = np.concatenate([self._weights, np.zeros(slot)])
        return slot

    def _current_table(self) -> "_CumulativeTable":
        if self._table is None or self._updates_since_build >= self.rebuild_every:
            if not self._ids:
                raise ValueError("no counts yet: call update() before sampling")
            if self._id_array.size < len(self._ids):
                new_ids = np.array(self._ids[self._id_array.size:], dtype=object)
                self._id_array = np.concatenate([self._id_array, new_ids])
            # copy: the table is a snapshot, later updates must not change what it reports
            self._table = _CumulativeTable(self._id_array, self._weights[: len(self._ids)].copy())
            self._updates_since_build = 0
        return self._table


class _CumulativeTable:
    """Immutable snapshot of the weights: inverse-CDF draws by binary search."""

    def __init__(self, ids: np.ndarray, weights: np.ndarray) -> None:
        self.ids = ids
        self.size = weights.size
        self._weights = weights
        self._cumulative = np.cumsum(weights)
        self._total = float(self._cumulative[-1])
        if not self._total > 0:
            raise ValueError("all counts are zero: nothing to sample")
        # float rounding can put u * total on the very end; never return a zero-weight slot then
        self._last_positive = int(np.searchsorted(self._cumulative, self._total, side="left"))

    def probability(self, slots: np.ndarray) -> np.ndarray:
        return self._weights[slots] / self._total

    def draw(self, rng: np.random.Generator, num_samples: int) -> np.ndarray:
        points = rng.random(num_samples) * self._total
        slots = np.searchsorted(self._cumulative, points, side="right")
        return np.minimum(slots, self._last_positive)
