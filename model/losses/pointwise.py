"""Pointwise loss: binary cross-entropy on the scaled cosine of a (query, item) pair."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from recallstream.model.losses._cosine import row_cosine

__all__ = ["pointwise_bce"]


def pointwise_bce(
    query: torch.Tensor,
    item: torch.Tensor,
    labels: torch.Tensor | Sequence[float],
    *,
    scale: float = 10.0,
    sample_weight: torch.Tensor | Sequence[float] | None = None,
) -> torch.Tensor:
    """Binary cross-entropy with logit ``scale * cos(query, item)``.

    Labels are 1 for positive pairs and 0 for negatives; the pos:neg ratio
    (typically 1:2 to 1:3) is the caller's / sampler's choice, and so is any
    re-weighting (``sample_weight``).

    Parameters
    ----------
    query, item
        ``[B, D]`` vectors of each pair (normalised or not).
    labels
        ``[B]`` targets in [0, 1].
    scale
        ``> 0``; maps cosine in [-1, 1] to logits in [-scale, scale].
    sample_weight
        ``[B]`` non-negative weights; the result is ``sum_i w_i l_i / B``
        (same reduction as :func:`recallstream.model.losses.in_batch_softmax`).

    Returns
    -------
    torch.Tensor
        Scalar mean loss.

    Examples
    --------
    >>> import torch
    >>> q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    >>> items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> # positive with cos 1: -log σ(2); negative with cos 0: -log(1 - σ(0)) = log 2
    >>> round(pointwise_bce(q, items, [1.0, 0.0], scale=2.0).item(), 6)
    0.410038
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if item.shape != query.shape:
        raise ValueError(f"query and item shapes differ: {tuple(query.shape)} vs {tuple(item.shape)}")
    logits = scale * row_cosine(query, item)
    targets = _vector(labels, logits, "labels")
    if bool(((targets < 0) | (targets > 1)).any()):
        raise ValueError("labels must lie in [0, 1]")
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if sample_weight is not None:
        weights = _vector(sample_weight, logits, "sample_weight")
        if bool((weights < 0).any()):
            raise ValueError("sample_weight must be non-negative")
        losses = losses * weights
    return losses.sum() / losses.shape[0]


def _vector(values, like: torch.Tensor, name: str) -> torch.Tensor:
    vector = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    if vector.shape != like.shape:
        raise ValueError(f"{name} must have shape {tuple(like.shape)}, got {tuple(vector.shape)}")
    return vector
