"""Training losses for the two towers; each loss is its own small module.

- :func:`in_batch_softmax` (listwise, TFRS ``Retrieval`` semantics) and its
  steps :func:`remove_accidental_hits`, :func:`mine_hard_negatives`;
- :func:`catalog_softmax` (listwise over the whole catalogue, no sampling);
- :func:`triplet_hinge`, :func:`triplet_logistic` (pairwise);
- :func:`pointwise_bce` (pointwise);
- :func:`contrastive_margin` (contrastive, distance based).
"""

from recallstream.model.losses.catalog import catalog_softmax
from recallstream.model.losses.contrastive import contrastive_margin
from recallstream.model.losses.pairwise import triplet_hinge, triplet_logistic
from recallstream.model.losses.pointwise import pointwise_bce
from recallstream.model.losses.softmax import in_batch_softmax, mine_hard_negatives, remove_accidental_hits

__all__ = [
    "catalog_softmax",
    "contrastive_margin",
    "in_batch_softmax",
    "mine_hard_negatives",
    "pointwise_bce",
    "remove_accidental_hits",
    "triplet_hinge",
    "triplet_logistic",
]
