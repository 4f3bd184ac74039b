"""Streaming estimate of how often each item appears in a training batch.

The in-batch softmax samples its negatives from the stream itself, so popular
items are over-represented as negatives. The logQ correction subtracts
``log p(item)`` from every logit, where ``p`` is the probability that the item
appears in a batch. :class:`FrequencyEstimator` estimates that probability
online, with the algorithm of Yi et al., "Sampling-Bias-Corrected Neural
Modeling for Large Corpus Item Recommendations" (RecSys 2019): per hash bucket
it keeps ``A`` (the last step the bucket was seen) and ``B`` (an exponential
moving average of the gap, in steps, between two sightings); ``p = 1 / B``.

Definitions chosen here
-----------------------
* **One step per batch, duplicates count once.** ``update(ids)`` is one global
  step. An item that appears k times in a batch updates its bucket once (the gap
  since the last *step* it was seen), so ``1 / B`` estimates the per-step
  inclusion probability ``P(item in batch)`` -- the "sampling probability of
  item j in a random batch" of the paper -- not the per-occurrence frequency.
  For an item whose share of the positive stream is ``q`` and batches of size
  ``n`` this is ``1 - (1 - q)**n``, about ``n * q`` for all but the head items.
* **Or one step per click** (``per_click=True``): each occurrence is its own
  step, in order, so ``1 / B`` estimates the item's share ``q`` of the click
  stream itself, which does not saturate for head items; the expected number
  of copies of the item in a batch of ``n`` clicks is then ``n * q``.
* **How the worker uses it.** The worker passes ``log(probability(ids))`` as
  ``log_q`` to the in-batch softmax. A factor common to all candidates (such as
  dividing by the batch size to get the share per candidate slot) shifts every
  logit of a row by the same constant, which the softmax cancels, so only the
  relative values matter and no conversion is needed.
* **Items never seen.** A bucket seen for the first time at step t gets the gap
  ``t`` (it was not seen in any earlier step, so the gap since the start of the
  stream is the only evidence); before that, ``probability`` reports
  ``1 / (t + 1)``. Unknown items therefore have a small probability that shrinks
  as the stream grows, and there is no arbitrary prior to wash out.
* **Collisions.** Items sharing a bucket add up, which shortens the gap and
  overestimates ``p``. With ``num_hashes`` independent hash functions the
  estimate takes the largest gap (count-min style), the least collided one.
* **Stable hashing.** String ids are hashed with BLAKE2b (stable across
  processes and restarts, unlike ``hash``), cached per id, then mixed into
  ``num_hashes`` bucket indices with a vectorised SplitMix64 finaliser seeded by
  ``seed``. Integer numpy arrays are taken as already hashed 64-bit keys (for a
  caller that holds stable integer item indices).

The estimator has no torch dependency; its state is plain numpy arrays and
numbers (:meth:`FrequencyEstimator.state_dict`) for the worker's checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from recallstream.streaming.hashing import blake2b64, splitmix64

# String id -> 64-bit key cache size; cleared when full so that an unbounded id
# universe cannot grow memory without limit (a catalog fits many times over).
DEFAULT_CACHE_SIZE = 1 << 20


class FrequencyEstimator:
    """Per-step probability that an item appears in a batch (Yi et al. 2019).

    Parameters
    ----------
    num_buckets : int
        Buckets per hash function; collisions overestimate probabilities, so
        use several times the number of distinct items.
    alpha : float
        Learning rate of the gap average, in (0, 1]. Larger adapts faster to a
        popularity shift but is noisier.
    num_hashes : int, default 1
        Independent hash functions; the estimate takes the largest gap.
    seed : int, default 0
        Seed of the bucket hash functions.
    cache_size : int, default 1_048_576
        Maximum number of string ids whose hash is cached.
    per_click : bool, default False
        Count a step per click instead of per batch (see the module docstring).

    Examples
    --------
    Item "a" is in every batch, "b" in every second one:

    >>> est = FrequencyEstimator(num_buckets=64, alpha=0.5)
    >>> for step in range(1, 21):
    ...     est.update(["a", "b"] if step % 2 == 0 else ["a"])
    >>> est.probability(["a", "b", "never-seen"]).round(3).tolist()
    [1.0, 0.5, 0.048]
    >>> est.step
    20

    Per click, "a" is every second click and "c" every fourth:

    >>> est = FrequencyEstimator(num_buckets=64, alpha=0.5, per_click=True)
    >>> for _ in range(10):
    ...     est.update(["a", "b", "a", "c"])
    >>> est.probability(["a", "b", "c"]).round(3).tolist(), est.step
    ([0.5, 0.25, 0.25], 40)
    """

    def __init__(self, num_buckets: int, alpha: float, num_hashes: int = 1, seed: int = 0,
                 cache_size: int = DEFAULT_CACHE_SIZE, per_click: bool = False) -> None:
        if not isinstance(num_buckets, (int, np.integer)) or num_buckets < 1:
            raise ValueError(f"num_buckets must be a positive integer, got {num_buckets!r}")
        if not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if not isinstance(num_hashes, (int, np.integer)) or num_hashes < 1:
            raise ValueError(f"num_hashes must be a positive integer, got {num_hashes!r}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size!r}")
        self.num_buckets = int(num_buckets)
        self.alpha = float(alpha)
        self.num_hashes = int(num_hashes)
        self.seed = int(seed)
        self.cache_size = int(cache_size)
        self.per_click = bool(per_click)
        self.step = 0
        # Row r holds hash function r; B == 0 marks a bucket never seen (a real gap is >= 1).
        self.last_seen = np.zeros((self.num_hashes, self.num_buckets), dtype=np.int64)
        self.gap = np.zeros((self.num_hashes, self.num_buckets), dtype=np.float64)
        self._salts = splitmix64(np.arange(self.num_hashes, dtype=np.uint64)
                                 + np.uint64(self.seed % (1 << 64)) * np.uint64(self.num_hashes))
        self._key_cache: dict[str, int] = {}

    def update(self, ids: Iterable[str] | np.ndarray) -> None:
        """Advance one step (``per_click``: one per id) and record that ``ids`` (one batch's
        items) were seen.

        ``B <- (1 - alpha) * B + alpha * (t - A)`` then ``A <- t`` for each
        distinct bucket of the batch; repeated ids in one batch count once.
        """
        flat = self._flat_buckets(ids)
        if not self.per_click:
            self.step += 1
            if flat.size:
                # Duplicate indices read the same old values and write the same new
                # value, so fancy assignment applies each bucket exactly once per step.
                self._observe(flat, self.step)
            return
        count = flat.size // self.num_hashes
        steps = np.tile(self.step + 1 + np.arange(count, dtype=np.int64), self.num_hashes)
        self.step += count
        # The k-th occurrences of each bucket in this batch, k = 0, 1, ...: one vector update
        # each, in click order, so that a repeated item sees the gap since its previous copy.
        order = np.lexsort((steps, flat))
        flat, steps = flat[order], steps[order]
        starts = np.r_[0, np.flatnonzero(np.diff(flat)) + 1]
        occurrence = np.arange(flat.size) - np.repeat(starts, np.diff(np.r_[starts, flat.size]))
        for k in range(int(occurrence.max(initial=-1)) + 1):
            kth = occurrence == k
            self._observe(flat[kth], steps[kth])

    def _observe(self, flat: np.ndarray, steps: np.ndarray | int) -> None:
        """``B <- (1 - alpha) B + alpha (t - A)``, ``A <- t`` for the buckets ``flat`` seen at ``steps``."""
        last_seen = self.last_seen.reshape(-1)
        gap = self.gap.reshape(-1)
        observed = steps - last_seen[flat]
        old = gap[flat]
        gap[flat] = np.where(old == 0.0, observed, (1.0 - self.alpha) * old + self.alpha * observed)
        last_seen[flat] = steps

    def probability(self, ids: Iterable[str] | np.ndarray) -> np.ndarray:
        """Estimated per-step probability that each id is in a batch, in (0, 1].

        Returns a float64 array aligned with ``ids``.
        """
        flat = self._flat_buckets(ids)
        gaps = self.gap.reshape(-1)[flat].reshape(self.num_hashes, -1)
        gaps = np.where(gaps == 0.0, float(self.step + 1), gaps)
        return np.minimum(1.0, 1.0 / gaps.max(axis=0))

    def keys(self, ids: Iterable[str] | np.ndarray) -> np.ndarray:
        """Stable 64-bit keys of ``ids`` (strings hashed, integer arrays as they are)."""
        if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":
            return ids.astype(np.int64, copy=False).reshape(-1).view(np.uint64)
        ids = ids if isinstance(ids, (list, tuple)) else list(ids)
        cache = self._key_cache
        try:
            keys = [cache[i] for i in ids]
        except KeyError:
            keys = [self._cached_key(i) for i in ids]
        # Cached keys fit in 63 bits: building an int64 array from them is the fast path.
        return np.array(keys, dtype=np.int64).view(np.uint64)

    def _cached_key(self, item_id: str) -> int:
        key = self._key_cache.get(item_id)
        if key is None:
            if len(self._key_cache) >= self.cache_size:
                self._key_cache.clear()
            key = string_key(item_id)
            if self.cache_size:
                self._key_cache[item_id] = key
        return key

    def buckets(self, ids: Iterable[str] | np.ndarray) -> np.ndarray:
        """Bucket of each id under each hash function, shape ``(num_hashes, len(ids))``."""
        keys = self.keys(ids)
        mixed = splitmix64(keys[None, :] ^ self._salts[:, None])
        return (mixed % np.uint64(self.num_buckets)).astype(np.int64)

    def _flat_buckets(self, ids) -> np.ndarray:
        # Index into the flattened (num_hashes, num_buckets) arrays: one fancy op for all rows.
        rows = np.arange(self.num_hashes, dtype=np.int64)[:, None] * self.num_buckets
        return (self.buckets(ids) + rows).reshape(-1)

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters, step and arrays (numpy) for a checkpoint."""
        return {
            "num_buckets": self.num_buckets, "alpha": self.alpha,
            "num_hashes": self.num_hashes, "seed": self.seed, "per_click": self.per_click,
            "step": self.step,
            "last_seen": self.last_seen.copy(), "gap": self.gap.copy(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the hyperparameters must match this estimator."""
        for name in ("num_buckets", "alpha", "num_hashes", "seed", "per_click"):
            if state.get(name, False) != getattr(self, name):
                raise ValueError(f"state has {name}={state[name]!r}, estimator has "
                                 f"{getattr(self, name)!r}")
        shape = (self.num_hashes, self.num_buckets)
        last_seen = np.asarray(state["last_seen"], dtype=np.int64)
        gap = np.asarray(state["gap"], dtype=np.float64)
        if last_seen.shape != shape or gap.shape != shape:
            raise ValueError(f"state arrays have shapes {last_seen.shape} and {gap.shape}, "
                             f"expected {shape}")
        self.step = int(state["step"])
        self.last_seen = last_seen.copy()
        self.gap = gap.copy()

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "FrequencyEstimator":
        """A new estimator restored from :meth:`state_dict`."""
        estimator = cls(int(state["num_buckets"]), float(state["alpha"]),
                        int(state["num_hashes"]), int(state["seed"]),
                        per_click=bool(state.get("per_click", False)))
        estimator.load_state_dict(state)
        return estimator


def string_key(item_id: str) -> int:
    """Stable 63-bit key of a string id (BLAKE2b), the same in every process.

    >>> string_key("42") == string_key("42") != string_key("43")
    True
    """
    return blake2b64(item_id) >> 1
