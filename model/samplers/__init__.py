"""Negative samplers; each returns a :class:`CandidateSample` (ids and sampling probabilities for logQ)."""

from model.samplers.candidate_sample import CandidateSample
from model.samplers.hard import HardNegativeSampler
from model.samplers.in_batch import InBatchSampler
from model.samplers.mixed import MixedSampler
from model.samplers.unigram import UnigramSampler

__all__ = [
    "CandidateSample",
    "HardNegativeSampler",
    "InBatchSampler",
    "MixedSampler",
    "UnigramSampler",
]
