"""Training losses for the two towers; each loss is its own small module."""

from model.losses.softmax import in_batch_softmax, mine_hard_negatives, remove_accidental_hits

__all__ = [
    "in_batch_softmax",
    "mine_hard_negatives",
    "remove_accidental_hits",
]
