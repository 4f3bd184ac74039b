"""Cosine similarity of each anchor with one or several vectors of its own row."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def row_cosine(anchor: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Cosine of ``anchor[i]`` with ``others[i]`` (``[B, D]``) or each ``others[i, k]`` (``[B, K, D]``).

    Returns ``[B]`` or ``[B, K]``. Vectors need not be normalised; a zero
    vector has cosine 0 with everything (``F.normalize``'s epsilon).
    """
    if anchor.dim() != 2:
        raise ValueError(f"anchor must be [B, D], got {tuple(anchor.shape)}")
    if others.dim() not in (2, 3) or others.shape[0] != anchor.shape[0] or others.shape[-1] != anchor.shape[1]:
        raise ValueError(f"expected [B, D] or [B, K, D] matching anchor {tuple(anchor.shape)}, "
                         f"got {tuple(others.shape)}")
    anchor = F.normalize(anchor, dim=-1)
    others = F.normalize(others, dim=-1)
    if others.dim() == 2:
        return (anchor * others).sum(dim=-1)
    return (anchor.unsqueeze(1) * others).sum(dim=-1)
