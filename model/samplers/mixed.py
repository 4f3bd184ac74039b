"""Mixed Negative Sampling (Yang et al., WWW 2020): in-batch plus random (plus hard) negatives."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from recallstream.model.samplers.candidate_sample import CandidateSample
from recallstream.model.samplers.hard import HardNegativeSampler
from recallstream.model.samplers.in_batch import InBatchSampler
from recallstream.model.samplers.unigram import UnigramSampler

__all__ = ["MixedSampler"]


class MixedSampler:
    """Candidates = the batch's positives, then ``round(random_ratio * B)`` random ids, then hard ones.

    In-batch negatives over-represent popular items; random draws from the
    whole corpus bring in the long tail (MNS). All candidates are treated as
    draws from one mixture proposal, so every returned id gets the mixture
    probability (MNS's correction)::

        q(j) = (B q_batch(j) + R q_random(j) + H q_hard(j)) / (B + R + H)

    with ``R`` random and ``H = B * k`` hard candidates. ``q_random`` and
    ``q_batch`` are evaluated for *every* returned id (a random draw may also
    be a popular batch item and vice versa).

    Parameters
    ----------
    in_batch
        Supplies the popularity probabilities of batch ids.
    random
        Random sampler (``power=0.75`` unigram, or ``power=0`` for MNS's
        uniform), or ``None``.
    hard
        Hard-negative sampler, or ``None``.
    random_ratio
        Random candidates per batch positive (``R = round(random_ratio * B)``).

    Examples
    --------
    >>> popularity = {"a": 0.5, "b": 0.3, "c": 0.2}
    >>> in_batch = InBatchSampler(lambda ids: np.array([popularity.get(i, 0.0) for i in ids]))
    >>> random = UnigramSampler(power=0.0, seed=1)
    >>> random.update(["a", "b", "c", "d"])              # uniform: 1/4 each
    >>> sample = MixedSampler(in_batch, random, random_ratio=1.0).sample(["a", "b"])
    >>> sample.ids.tolist()
    ['a', 'b', 'c', 'd']
    >>> # a: (2 * 0.5 + 2 * 0.25) / 4 = 0.375; d: (2 * 0 + 2 * 0.25) / 4 = 0.125
    >>> sample.probabilities.tolist()
    [0.375, 0.275, 0.225, 0.125]
    """

    def __init__(
        self,
        in_batch: InBatchSampler,
        random: UnigramSampler | None = None,
        hard: HardNegativeSampler | None = None,
        *,
        random_ratio: float = 1.0,
    ) -> None:
        if random_ratio < 0:
            raise ValueError(f"random_ratio must be non-negative, got {random_ratio}")
        if random is None and random_ratio > 0:
            raise ValueError("random_ratio > 0 needs a random sampler")
        self.in_batch = in_batch
        self.random = random
        self.hard = hard
        self.random_ratio = random_ratio

    def sample(
        self,
        batch_ids: Sequence[str] | np.ndarray,
        *,
        scores: np.ndarray | None = None,
        item_ids: Sequence[str] | np.ndarray | None = None,
        exclude: Sequence[Iterable[str]] | None = None,
    ) -> CandidateSample:
        """Return ``B + R + H`` candidates; the first ``B`` are ``batch_ids`` in order.

        ``scores``, ``item_ids`` and ``exclude`` are passed to the hard sampler
        (required exactly when it is configured).
        """
        batch = self.in_batch.sample(batch_ids)
        # (part, function giving the probability of any id under that part's distribution)
        components = [(batch, self.in_batch.probability)]
        if self.random is not None and self.random_ratio > 0:
            drawn = self.random.sample(int(round(self.random_ratio * len(batch))))
            components.append((drawn, self.random.probability))
        hard = self._hard_part(scores, item_ids, exclude)
        if hard is not None:
            components.append((hard, _empirical_probability(hard)))
        ids = np.concatenate([part.ids for part, _ in components])
        mixture = sum(len(part) * np.asarray(probability(ids), dtype=np.float64).reshape(-1)
                      for part, probability in components)
        return CandidateSample(ids, mixture / len(ids))

    def _hard_part(self, scores, item_ids, exclude) -> CandidateSample | None:
        given = [argument is not None for argument in (scores, item_ids, exclude)]
        if self.hard is None:
            if any(given):
                raise ValueError("scores/item_ids/exclude given but no hard sampler configured")
            return None
        if not all(given):
            raise ValueError("the hard sampler needs scores, item_ids and exclude")
        return self.hard.sample(scores, item_ids, exclude)


def _empirical_probability(part: CandidateSample):
    """Probability of any id under ``part``'s own distribution (0 for ids it never returned)."""
    probability_of = dict(zip(part.ids.tolist(), part.probabilities.tolist()))
    return lambda ids: np.array([probability_of.get(item_id, 0.0) for item_id in ids.tolist()])
