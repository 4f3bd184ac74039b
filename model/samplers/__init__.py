"""Negative samplers; each returns a :class:`CandidateSample` (ids and sampling probabilities for logQ)."""

from recallstream.model.samplers.candidate_sample import CandidateSample
from recallstream.model.samplers.hard import HardNegativeSampler
from recallstream.model.samplers.in_batch import InBatchSampler
from recallstream.model.samplers.mixed import MixedSampler
from recallstream.model.samplers.unigram import UnigramSampler

__all__ = [
    "CandidateSample",
    "HardNegativeSampler",
    "InBatchSampler",
    "MixedSampler",
    "UnigramSampler",
]
