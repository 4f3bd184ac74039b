"""Dual Augmented Two-tower (DAT; Yu et al., DLP-KDD 2021): augmented vectors, mimic loss, CAL.

Each user and item gets an *augmented vector* ``a``, looked up by the same
hashed id index the towers use and concatenated to its tower's input. The
Adaptive-Mimic Mechanism trains ``a_u`` to imitate the item tower's output
``p_v`` on positive pairs (and ``a_v`` to imitate ``p_u``), so each tower
sees a summary of what the other tower found relevant. The tower outputs are
detached in the mimic loss: it moves the augmented vectors only.

The Category Alignment Loss (CAL) pulls the covariance of item vectors of
each minor category towards that of the major category (CORAL, Sun & Saenko
2016), so that sparse categories get representations as well spread as the
dominant one.

Whether DAT is on, and how much each auxiliary loss weighs, is a
:class:`DatConfig`; the trainer adds :func:`dat_auxiliary_loss` to its main
loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "AugmentedVectors",
    "DatConfig",
    "category_alignment_loss",
    "dat_auxiliary_loss",
    "mimic_loss",
]


@dataclass(frozen=True)
class DatConfig:
    """Switch and weights of the DAT auxiliary losses.

    Parameters
    ----------
    enabled
        Off: no augmented vectors, no auxiliary loss.
    mimic_weight
        Weight of :func:`mimic_loss` (user and item parts together).
    cal_weight
        Weight of :func:`category_alignment_loss`; 0 switches CAL off alone.

    Examples
    --------
    >>> DatConfig(enabled=True, mimic_weight=0.5, cal_weight=0.0)
    DatConfig(enabled=True, mimic_weight=0.5, cal_weight=0.0)
    """

    enabled: bool = False
    mimic_weight: float = 0.5
    cal_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.mimic_weight < 0 or self.cal_weight < 0:
            raise ValueError(f"DAT weights must be non-negative, got {self.mimic_weight}, {self.cal_weight}")


class AugmentedVectors(nn.Module):
    """One learned vector per hashed id bucket, to concatenate to a tower's input.

    Parameters
    ----------
    num_buckets
        Size of the id hash space (the same buckets as the tower's id embedding).
    dim
        Vector size; must equal the *other* tower's output size, which it mimics.
    sparse
        Sparse gradients (for ``torch.optim.SparseAdam`` / sparse-aware SGD).

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> augmented = AugmentedVectors(num_buckets=100, dim=8)
    >>> augmented(torch.tensor([3, 3, 42])).shape
    torch.Size([3, 8])
    """

    def __init__(self, num_buckets: int, dim: int, *, sparse: bool = False) -> None:
        super().__init__()
        if num_buckets < 1 or dim < 1:
            raise ValueError(f"num_buckets and dim must be positive, got {num_buckets}, {dim}")
        self.num_buckets = num_buckets
        self.dim = dim
        self.table = nn.Embedding(num_buckets, dim, sparse=sparse)
        # small start: the towers first learn from the real features, the mimic loss fills these in
        nn.init.normal_(self.table.weight, std=0.01)

    def forward(self, bucket_indices: torch.Tensor) -> torch.Tensor:
        """``[B]`` bucket indices -> ``[B, dim]`` augmented vectors."""
        return self.table(bucket_indices)


def mimic_loss(
    aug_user: torch.Tensor,
    item_out: torch.Tensor,
    aug_item: torch.Tensor,
    user_out: torch.Tensor,
    labels: torch.Tensor | Sequence[float],
) -> torch.Tensor:
    """Adaptive-Mimic loss: ``(1/T) sum_pairs y * (||a_u - sg(p_v)||^2 + ||a_v - sg(p_u)||^2)``.

    ``sg`` is stop-gradient (``detach``): only the augmented vectors learn from
    it. As in the paper the sum runs over all ``T`` pairs of the batch, so
    negative pairs (``y = 0``) add nothing but still count in ``T``; the
    squared error is summed over the vector dimensions.

    Parameters
    ----------
    aug_user, aug_item
        ``[T, d]`` augmented vectors of each pair's user and item.
    item_out, user_out
        ``[T, d]`` tower outputs of each pair's item and user.
    labels
        ``[T]`` 1 for positive pairs, 0 for negatives.

    Returns
    -------
    torch.Tensor
        Scalar: user part plus item part.

    Examples
    --------
    >>> import torch
    >>> a_u, p_v = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    >>> a_v, p_u = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    >>> mimic_loss(a_u, p_v, a_v, p_u, [1.0]).item()   # 1^2 + 2^2
    5.0
    """
    shape = aug_user.shape
    if aug_user.dim() != 2 or any(t.shape != shape for t in (item_out, aug_item, user_out)):
        raise ValueError("aug_user, item_out, aug_item, user_out must all be [T, d] of one shape, got "
                         f"{[tuple(t.shape) for t in (aug_user, item_out, aug_item, user_out)]}")
    y = torch.as_tensor(labels, dtype=aug_user.dtype, device=aug_user.device)
    if y.shape != shape[:1]:
        raise ValueError(f"labels must have shape ({shape[0]},), got {tuple(y.shape)}")
    user_error = ((aug_user - item_out.detach()) ** 2).sum(dim=1)
    item_error = ((aug_item - user_out.detach()) ** 2).sum(dim=1)
    return (y * (user_error + item_error)).sum() / shape[0]


def category_alignment_loss(
    item_vectors: torch.Tensor,
    categories: torch.Tensor | np.ndarray | Sequence,
    major=None,
) -> torch.Tensor:
    """Sum over minor categories of ``||C_major - C_minor||_F^2 / (4 d^2)``.

    ``C`` is the unbiased covariance (``n - 1``) of the batch's item vectors
    of a category. The DAT paper sums the squared Frobenius distances over
    the minor categories; each term here carries CORAL's ``1 / (4 d^2)``
    scale, so the loss does not grow with the vector size. Categories with
    fewer than two items in the batch have no covariance and are skipped.
    Both sides get gradients (CORAL aligns the two distributions jointly).

    Parameters
    ----------
    item_vectors
        ``[N, d]`` item tower outputs.
    categories
        ``[N]`` one category per item (ints or strings), e.g. an item's
        primary genre.
    major
        The major category; ``None`` picks the most frequent one in the batch
        (ties: the smallest value).

    Returns
    -------
    torch.Tensor
        Scalar, 0 when the batch has no minor category with two items.

    Examples
    --------
    >>> import torch
    >>> vectors = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    >>> # major "a": x = 1, -1, 1 -> variance (4/9 + 16/9 + 4/9) / 2 = 4/3 on axis 0
    >>> # minor "b": y = 1, -1 -> variance 2 / 1 = 2 on axis 1; ((4/3)^2 + 2^2) / (4 * 2^2)
    >>> round(category_alignment_loss(vectors, ["a", "a", "a", "b", "b"]).item(), 6)
    0.361111
    """
    if item_vectors.dim() != 2:
        raise ValueError(f"item_vectors must be [N, d], got {tuple(item_vectors.shape)}")
    labels = np.asarray(categories.cpu() if isinstance(categories, torch.Tensor) else categories).reshape(-1)
    if labels.size != item_vectors.shape[0]:
        raise ValueError(f"{labels.size} categories for {item_vectors.shape[0]} items")
    values, counts = np.unique(labels, return_counts=True)
    if major is None:
        major = values[int(np.argmax(counts))]
    if major not in set(values.tolist()):
        raise ValueError(f"major category {major!r} has no item in the batch")
    major_covariance = _covariance(item_vectors[torch.from_numpy(labels == major)])
    if major_covariance is None:
        raise ValueError(f"major category {major!r} needs at least two items in the batch")
    scale = 4.0 * item_vectors.shape[1] ** 2
    loss = item_vectors.new_zeros(())
    for value in values:
        if value == major:
            continue
        covariance = _covariance(item_vectors[torch.from_numpy(labels == value)])
        if covariance is not None:
            loss = loss + ((major_covariance - covariance) ** 2).sum() / scale
    return loss


def dat_auxiliary_loss(
    config: DatConfig,
    *,
    aug_user: torch.Tensor,
    user_out: torch.Tensor,
    aug_item: torch.Tensor,
    item_out: torch.Tensor,
    labels: torch.Tensor | Sequence[float],
    categories: torch.Tensor | np.ndarray | Sequence | None = None,
    major=None,
) -> torch.Tensor:
    """``mimic_weight * mimic + cal_weight * CAL`` (0 when DAT is disabled).

    CAL is computed on ``item_out`` when ``cal_weight > 0`` and ``categories``
    are given.

    Examples
    --------
    >>> import torch
    >>> ones, zeros = torch.ones(2, 3), torch.zeros(2, 3)
    >>> on = DatConfig(enabled=True, mimic_weight=0.5, cal_weight=0.0)
    >>> dat_auxiliary_loss(on, aug_user=ones, user_out=zeros, aug_item=zeros, item_out=zeros,
    ...                    labels=[1.0, 0.0]).item()   # 0.5 * (3 + 0) / 2
    0.75
    >>> dat_auxiliary_loss(DatConfig(enabled=False), aug_user=ones, user_out=zeros,
    ...                    aug_item=zeros, item_out=zeros, labels=[1.0, 0.0]).item()
    0.0
    """
    total = user_out.new_zeros(())
    if not config.enabled:
        return total
    if config.mimic_weight > 0:
        total = total + config.mimic_weight * mimic_loss(aug_user, item_out, aug_item, user_out, labels)
    if config.cal_weight > 0 and categories is not None:
        total = total + config.cal_weight * category_alignment_loss(item_out, categories, major)
    return total


def _covariance(vectors: torch.Tensor) -> torch.Tensor | None:
    if vectors.shape[0] < 2:
        return None
    centred = vectors - vectors.mean(dim=0, keepdim=True)
    return centred.T @ centred / (vectors.shape[0] - 1)
