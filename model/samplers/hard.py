"""Hard negatives: the items the model itself scores highest that the user did not click."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from recallstream.model.samplers.candidate_sample import CandidateSample

__all__ = ["HardNegativeSampler"]


class HardNegativeSampler:
    """Pick each user's top-scored items, skipping the user's positives.

    Parameters
    ----------
    num_negatives
        ``k``: hard negatives per user (>= 1).
    skip_top
        Ranks to pass over first (after removing positives): the very top
        unclicked items are often unlabelled positives, so skipping a few
        reduces false negatives.

    Notes
    -----
    The pick is deterministic given the scores, so there is no proposal
    distribution in the usual sense. The reported probability of a returned id
    is its share of this call's picks (``times picked / (B * k)``), i.e. the
    empirical distribution the pooled hard candidates were taken from; that is
    what :class:`recallstream.model.samplers.MixedSampler` mixes in. Pass ``log_q=None`` for
    them if no correction is wanted.

    Examples
    --------
    >>> sampler = HardNegativeSampler(2)
    >>> scores = np.array([[0.9, 0.8, 0.1, 0.5], [0.2, 0.9, 0.7, 0.3]])
    >>> sample = sampler.sample(scores, ["a", "b", "c", "d"], exclude=[["a"], []])
    >>> sample.ids.reshape(2, 2).tolist(), sample.probabilities.tolist()
    ([['b', 'd'], ['b', 'c']], [0.5, 0.25, 0.5, 0.25])
    """

    def __init__(self, num_negatives: int, *, skip_top: int = 0) -> None:
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")
        if skip_top < 0:
            raise ValueError(f"skip_top must be non-negative, got {skip_top}")
        self.num_negatives = num_negatives
        self.skip_top = skip_top

    def sample(
        self,
        scores: np.ndarray,
        item_ids: Sequence[str] | np.ndarray,
        exclude: Sequence[Iterable[str]],
    ) -> CandidateSample:
        """Return ``B * k`` ids, row-major: user ``i``'s picks at ``[i*k, (i+1)*k)`` best first.

        Parameters
        ----------
        scores
            ``[B, N]`` model scores of each user against the ``N`` items.
        item_ids
            ``[N]`` ids of the score columns.
        exclude
            ``B`` collections of ids never to return for that user (its
            clicked / positive items).
        """
        scores = np.asarray(scores, dtype=np.float64)
        item_ids = np.asarray(item_ids, dtype=object).reshape(-1)
        if scores.ndim != 2 or scores.shape[1] != item_ids.size:
            raise ValueError(f"scores must be [B, {item_ids.size}], got {scores.shape}")
        if len(exclude) != scores.shape[0]:
            raise ValueError(f"exclude has {len(exclude)} rows for {scores.shape[0]} users")
        column_of = {item_id: column for column, item_id in enumerate(item_ids)}
        picks = np.stack([
            self._pick_row(row, [column_of[i] for i in excluded if i in column_of])
            for row, excluded in zip(scores, exclude)
        ]) if scores.shape[0] else np.zeros((0, self.num_negatives), dtype=np.int64)
        ids = item_ids[picks.reshape(-1)]
        return CandidateSample(ids, _shares(ids))

    def _pick_row(self, row: np.ndarray, excluded_columns: list[int]) -> np.ndarray:
        wanted = self.skip_top + self.num_negatives
        allowed = np.ones(row.size, dtype=bool)
        allowed[excluded_columns] = False
        if int(allowed.sum()) < wanted:
            raise ValueError(f"a user has only {int(allowed.sum())} non-excluded items, "
                             f"{wanted} needed (skip_top + num_negatives)")
        candidates = np.flatnonzero(allowed)
        # stable sort on the negated score: ties go to the lower column, so picks are reproducible
        order = candidates[np.argsort(-row[candidates], kind="stable")]
        return order[self.skip_top:wanted]


def _shares(ids: np.ndarray) -> np.ndarray:
    """Each id's share of ``ids`` (how often it occurs / len)."""
    if ids.size == 0:
        return np.zeros(0)
    _, inverse, occurrences = np.unique(ids.astype(str), return_inverse=True, return_counts=True)
    return occurrences[inverse.reshape(-1)] / ids.size
