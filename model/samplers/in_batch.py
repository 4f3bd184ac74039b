"""In-batch negatives: the batch's own positives, with their popularity as sampling probability."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from recallstream.model.samplers.candidate_sample import CandidateSample

__all__ = ["InBatchSampler"]


class InBatchSampler:
    """Use the batch's positive items as each other's negatives.

    A positive enters a batch with probability proportional to its share of
    the positive stream, so that share (estimated elsewhere, e.g. by
    ``recallstream.streaming.popularity.FrequencyEstimator.probability``) is its sampling
    probability for logQ.

    Parameters
    ----------
    probability
        Maps an array of ids to an array of their estimated share of the
        positive stream; every id in a batch must get a value in (0, 1].

    Examples
    --------
    >>> sampler = InBatchSampler(lambda ids: np.array([{"a": 0.6, "b": 0.4}[i] for i in ids]))
    >>> sample = sampler.sample(["b", "a", "b"])
    >>> sample.ids.tolist(), sample.probabilities.tolist()
    (['b', 'a', 'b'], [0.4, 0.6, 0.4])
    """

    def __init__(self, probability: Callable[[np.ndarray], np.ndarray]) -> None:
        self.probability = probability

    def sample(self, batch_ids: Sequence[str] | np.ndarray) -> CandidateSample:
        """Return the batch ids themselves and their popularity probabilities."""
        ids = np.asarray(batch_ids, dtype=object).reshape(-1)
        probabilities = np.asarray(self.probability(ids), dtype=np.float64).reshape(-1)
        if probabilities.shape != ids.shape:
            raise ValueError(f"probability returned {probabilities.size} values for {ids.size} ids")
        if not bool(np.all((probabilities > 0) & (probabilities <= 1))):
            raise ValueError("every batch id needs a popularity probability in (0, 1]; "
                             "update the estimator with the batch before sampling")
        return CandidateSample(ids, probabilities)
