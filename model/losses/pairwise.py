"""Pairwise (triplet) losses on cosine similarity: the positive must beat the negative."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recallstream.model.losses._cosine import row_cosine

__all__ = ["triplet_hinge", "triplet_logistic"]


def triplet_hinge(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, *, margin: float = 0.2
) -> torch.Tensor:
    """Mean of ``max(0, cos(a, b-) + margin - cos(a, b+))`` over all triplets.

    Parameters
    ----------
    anchor
        ``[B, D]`` query vectors ``a``.
    positive
        ``[B, D]`` clicked items ``b+``.
    negative
        ``[B, D]`` one negative per row, or ``[B, K, D]`` several; each
        (anchor, positive, negative) triplet counts once.
    margin
        Required cosine gap ``m`` (non-negative).

    Returns
    -------
    torch.Tensor
        Scalar mean loss.

    Examples
    --------
    >>> import torch
    >>> a = torch.tensor([[1.0, 0.0]])
    >>> # cos(a, b+) = 1, cos(a, b-) = 0.8 (b- = [0.8, 0.6]): max(0, 0.8 + 0.3 - 1) = 0.1
    >>> round(triplet_hinge(a, a, torch.tensor([[0.8, 0.6]]), margin=0.3).item(), 6)
    0.1
    """
    if margin < 0:
        raise ValueError(f"margin must be non-negative, got {margin}")
    gap = _negative_minus_positive(anchor, positive, negative)
    return torch.clamp(gap + margin, min=0.0).mean()


def triplet_logistic(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, *, scale: float = 10.0
) -> torch.Tensor:
    """Mean of ``log(1 + exp(scale * (cos(a, b-) - cos(a, b+))))`` over all triplets.

    A smooth hinge (BPR on cosine); computed with ``softplus`` so that large
    gaps neither overflow nor lose precision.

    Parameters
    ----------
    anchor, positive, negative
        As in :func:`triplet_hinge`.
    scale
        ``σ > 0``; cosine lives in [-1, 1], so ``σ`` sets how sharp the
        preference is (the temperature's inverse).

    Returns
    -------
    torch.Tensor
        Scalar mean loss.

    Examples
    --------
    >>> import torch
    >>> a = torch.tensor([[1.0, 0.0]])
    >>> # equal cosines: log(1 + e^0) = log 2
    >>> round(triplet_logistic(a, a, a, scale=4.0).item(), 6)
    0.693147
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    gap = _negative_minus_positive(anchor, positive, negative)
    return F.softplus(scale * gap).mean()


def _negative_minus_positive(anchor, positive, negative) -> torch.Tensor:
    if positive.shape != anchor.shape:
        raise ValueError(f"positive must have the anchor's shape {tuple(anchor.shape)}, got {tuple(positive.shape)}")
    positive_cosine = row_cosine(anchor, positive)
    negative_cosine = row_cosine(anchor, negative)
    if negative_cosine.dim() == 2:
        positive_cosine = positive_cosine.unsqueeze(1)
    return negative_cosine - positive_cosine
