"""Full softmax over the whole catalogue (the multinomial likelihood of Mult-VAE).

When the catalogue is small enough to score whole (MovieLens: 1,682 items),
sampled negatives and their logQ correction are not needed: every item is a
candidate for every user, and the loss of a positive pair ``(u, j)`` is
``-log softmax(q_u · c / τ)_j`` over all items. Users are scored once and
their positives gathered, so a batch costs ``[U, N]`` logits however many
positives each user has. As in Liang et al. (WWW 2018), a user's other
positives stay in the denominator.

Examples
--------
>>> import torch
>>> query = torch.tensor([[1.0, 0.0]])
>>> catalog = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
>>> # logits [1, 0]: -log(e / (e + 1)) = log(1 + e^-1) = 0.3133
>>> round(float(catalog_softmax(query, catalog, torch.tensor([0]), torch.tensor([0]))), 4)
0.3133
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["catalog_softmax"]


def catalog_softmax(
    query: torch.Tensor,
    catalog: torch.Tensor,
    rows: torch.Tensor,
    columns: torch.Tensor,
    *,
    temperature: float | None = None,
    sample_weight: torch.Tensor | Sequence[float] | None = None,
) -> torch.Tensor:
    """Mean softmax cross-entropy of positive pairs against every catalogue item.

    Parameters
    ----------
    query
        ``[U, D]`` query (user) vectors, one per user of the batch.
    catalog
        ``[N, D]`` vectors of every item.
    rows, columns
        ``[P]`` positive pairs: query ``rows[k]`` clicked catalogue item ``columns[k]``.
    temperature
        Logits are divided by it; must be positive. ``None`` means 1.
    sample_weight
        ``[P]`` non-negative weight per pair.

    Returns
    -------
    torch.Tensor
        Scalar: ``sum_k w_k * loss_k / P`` (plain mean without weights).
    """
    rows, columns = torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(columns, dtype=torch.long)
    _check(query, catalog, rows, columns, temperature)
    logits = query @ catalog.T
    if temperature is not None:
        logits = logits / temperature
    losses = -torch.log_softmax(logits, dim=1)[rows, columns]
    if sample_weight is not None:
        weight = torch.as_tensor(sample_weight, dtype=losses.dtype)
        if weight.shape != losses.shape:
            raise ValueError(f"sample_weight must be [{len(losses)}], got {tuple(weight.shape)}")
        if (weight < 0).any():
            raise ValueError("sample_weight must be non-negative")
        losses = losses * weight
    return losses.mean()


def _check(query, catalog, rows, columns, temperature) -> None:
    if query.dim() != 2 or catalog.dim() != 2 or query.shape[1] != catalog.shape[1]:
        raise ValueError(f"query and catalog must be [U, D] and [N, D], got "
                         f"{tuple(query.shape)} and {tuple(catalog.shape)}")
    if rows.dim() != 1 or rows.shape != columns.shape or len(rows) == 0:
        raise ValueError(f"rows and columns must be equal, non-empty [P], got "
                         f"{tuple(rows.shape)} and {tuple(columns.shape)}")
    if rows.min() < 0 or rows.max() >= len(query) or columns.min() < 0 or columns.max() >= len(catalog):
        raise ValueError("rows and columns must index query and catalog")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
