"""What every sampler returns: candidate ids and the probability each was sampled with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CandidateSample"]


@dataclass(frozen=True)
class CandidateSample:
    """Sampled candidate ids with their sampling probabilities.

    Parameters
    ----------
    ids
        ``[n]`` candidate ids (strings), possibly repeated (draws are with
        replacement).
    probabilities
        ``[n]`` probability that one draw of the sampler returns ``ids[k]``;
        ``log_q`` is what :func:`recallstream.model.losses.in_batch_softmax` subtracts.

    Examples
    --------
    >>> sample = CandidateSample(["a", "b"], [0.5, 0.25])
    >>> sample.ids.tolist(), sample.log_q.round(4).tolist()
    (['a', 'b'], [-0.6931, -1.3863])
    """

    ids: np.ndarray
    probabilities: np.ndarray

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids, dtype=object).reshape(-1)
        probabilities = np.asarray(self.probabilities, dtype=np.float64).reshape(-1)
        if ids.shape != probabilities.shape:
            raise ValueError(f"{ids.size} ids but {probabilities.size} probabilities")
        # frozen dataclass: normalise the fields once, here
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "probabilities", probabilities)

    def __len__(self) -> int:
        return int(self.ids.size)

    @property
    def log_q(self) -> np.ndarray:
        """``[n]`` natural log of the probabilities."""
        with np.errstate(divide="ignore"):
            return np.log(self.probabilities)
