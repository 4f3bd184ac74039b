"""Contrastive margin loss (Hadsell et al. 2006 form, as in the first seed document)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from recallstream.model.losses._cosine import row_cosine

__all__ = ["contrastive_margin"]


def contrastive_margin(
    a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | Sequence[float], *, margin: float = 1.0
) -> torch.Tensor:
    """Mean of ``y * d^2 + (1 - y) * max(margin - d, 0)^2`` over pairs.

    ``d`` is the Euclidean distance between the *L2-normalised* vectors,
    ``d = ||a/|a| - b/|b| || = sqrt(2 - 2 cos(a, b))`` in [0, 2], so a margin
    in (0, 2] is meaningful (``margin = sqrt(2)`` pushes negatives to
    orthogonal or beyond). Positives (``y = 1``) are pulled together, negatives
    pushed at least ``margin`` apart. No 1/2 factors, as in the seed formula.

    Parameters
    ----------
    a, b
        ``[B, D]`` vectors of each pair.
    labels
        ``[B]`` with 1 for similar pairs and 0 for dissimilar ones.
    margin
        ``m > 0``.

    Returns
    -------
    torch.Tensor
        Scalar mean loss.

    Examples
    --------
    >>> import torch
    >>> a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    >>> b = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    >>> # orthogonal: d^2 = 2. positive: 2; negative: max(1.5 - sqrt 2, 0)^2 = 0.0074; mean = 1.0037
    >>> round(contrastive_margin(a, b, [1.0, 0.0], margin=1.5).item(), 4)
    1.0037
    """
    if not margin > 0:
        raise ValueError(f"margin must be positive, got {margin}")
    if b.shape != a.shape:
        raise ValueError(f"a and b shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    squared = torch.clamp(2.0 - 2.0 * row_cosine(a, b), min=0.0)
    # sqrt has an infinite slope at 0: take it only where d > 0 (the double `where` keeps the
    # unused branch's gradient finite) so identical vectors get an exact d = 0 and no NaN
    positive_part = squared > 0
    distance = torch.where(positive_part, torch.sqrt(torch.where(positive_part, squared, 1.0)), 0.0)
    y = torch.as_tensor(labels, dtype=squared.dtype, device=squared.device)
    if y.shape != squared.shape:
        raise ValueError(f"labels must have shape {tuple(squared.shape)}, got {tuple(y.shape)}")
    if bool(((y < 0) | (y > 1)).any()):
        raise ValueError("labels must lie in [0, 1]")
    losses = y * squared + (1.0 - y) * torch.clamp(margin - distance, min=0.0) ** 2
    return losses.mean()
