"""In-batch sampled softmax with TensorFlow Recommenders ``Retrieval`` semantics.

The loss is a linear pipeline of opt-in corrections, each its own small
function (as in ``tfrs.tasks.Retrieval`` and ``tfrs.layers.loss``):

1. scores ``query @ candidates.T`` (the caller normalises for cosine),
2. division by the temperature,
3. sampling-probability (logQ) correction: ``log_q`` is subtracted from every
   column, the positive's included, exactly as TFRS does,
4. removal of accidental hits: candidates sharing the positive's id get a
   large negative logit; likewise, with ``query_ids``, the other positives of
   the same query (a time-ordered stream batches a user's clicks together, and
   what the user also clicked is no negative for that user),
5. hard-negative mining: the positive plus the ``k`` largest negative logits,
6. softmax cross-entropy per row, then a weighted mean over rows.

Reduction: TFRS's default loss is ``CategoricalCrossentropy(reduction=SUM)``,
i.e. ``sum_i w_i * l_i``. This module returns the mean over rows instead,
with weights applied as Keras' ``SUM_OVER_BATCH_SIZE`` reduction does:
``sum_i w_i * l_i / B`` (divided by the number of rows, *not* by the sum of
the weights), so it equals the TFRS loss divided by ``B``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "in_batch_softmax",
    "mine_hard_negatives",
    "remove_accidental_hits",
    "remove_same_query_positives",
]


def in_batch_softmax(
    query: torch.Tensor,
    candidates: torch.Tensor,
    *,
    temperature: float | None = None,
    log_q: torch.Tensor | Sequence[float] | None = None,
    candidate_ids: torch.Tensor | np.ndarray | Sequence | None = None,
    num_hard_negatives: int | None = None,
    sample_weight: torch.Tensor | Sequence[float] | None = None,
    query_ids: torch.Tensor | np.ndarray | Sequence | None = None,
) -> torch.Tensor:
    """Softmax cross-entropy of each query against in-batch and extra candidates.

    Row ``i``'s positive is candidate ``i``; every other candidate is a
    negative for it. Candidates beyond the first ``B`` are extra sampled
    negatives shared by all rows.

    Parameters
    ----------
    query
        ``[B, D]`` query (user) vectors.
    candidates
        ``[C, D]`` candidate (item) vectors with ``C >= B``; rows ``0..B-1``
        are the positives of the queries, rows ``B..C-1`` extra negatives.
    temperature
        Logits are divided by it; must be positive. ``None`` means 1.
    log_q
        ``[C]`` log of each candidate's sampling probability, subtracted from
        every logit of its column (training-time correction of the popularity
        bias of in-batch negatives; serving uses the plain score).
    candidate_ids
        ``[C]`` candidate ids (integers or strings). When given, accidental
        hits are removed: for row ``i``, any candidate ``j != i`` with the same
        id as candidate ``i`` does not count as a negative.
    num_hard_negatives
        When given, each row keeps only its positive and its
        ``num_hard_negatives`` largest negative logits (all of them when there
        are fewer). Must be at least 1.
    sample_weight
        ``[B]`` non-negative weight per row.
    query_ids
        ``[B]`` query (user) ids. When given, for row ``i`` the positive of any
        other row ``j < B`` of the same query does not count as a negative.

    Returns
    -------
    torch.Tensor
        Scalar: ``sum_i w_i * loss_i / B`` (plain mean without weights).

    Raises
    ------
    ValueError
        On mis-shaped or contradictory arguments.

    Examples
    --------
    >>> import torch
    >>> from recallstream.model.losses import in_batch_softmax
    >>> generator = torch.Generator().manual_seed(0)
    >>> query = torch.nn.functional.normalize(torch.randn(4, 8, generator=generator), dim=1)
    >>> items = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=1)
    >>> loss = in_batch_softmax(query, items, temperature=0.1,
    ...                         candidate_ids=["a", "b", "a", "c", "d", "e"])
    >>> loss.shape, bool(loss > 0)
    (torch.Size([]), True)
    >>> # two orthogonal unit vectors: logits [[1, 0], [0, 1]], loss = log(1 + e^-1)
    >>> round(in_batch_softmax(torch.eye(2), torch.eye(2)).item(), 4)
    0.3133
    """
    batch_size, num_candidates = _check_shapes(query, candidates)
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if num_hard_negatives is not None and num_hard_negatives < 1:
        raise ValueError(f"num_hard_negatives must be at least 1, got {num_hard_negatives}")

    logits = query @ candidates.T
    if temperature is not None:
        logits = logits / temperature
    if log_q is not None:
        logits = logits - _as_vector(log_q, num_candidates, "log_q", logits)
    if candidate_ids is not None:
        logits = remove_accidental_hits(logits, candidate_ids)
    if query_ids is not None:
        logits = remove_same_query_positives(logits, query_ids)
    targets = torch.arange(batch_size, device=logits.device)
    if num_hard_negatives is not None:
        logits = mine_hard_negatives(logits, num_hard_negatives)
        targets = torch.zeros_like(targets)
    row_losses = F.cross_entropy(logits, targets, reduction="none")
    if sample_weight is not None:
        weights = _as_vector(sample_weight, batch_size, "sample_weight", row_losses)
        if bool((weights < 0).any()):
            raise ValueError("sample_weight must be non-negative")
        row_losses = row_losses * weights
    return row_losses.sum() / batch_size


def remove_accidental_hits(
    logits: torch.Tensor, candidate_ids: torch.Tensor | np.ndarray | Sequence
) -> torch.Tensor:
    """Give a large negative logit to negatives that share the positive's id.

    Parameters
    ----------
    logits
        ``[B, C]`` logits; row ``i``'s positive is column ``i``.
    candidate_ids
        ``[C]`` ids (integers or strings).

    Returns
    -------
    torch.Tensor
        ``[B, C]`` logits where entry ``(i, j)``, ``j != i``, with
        ``candidate_ids[j] == candidate_ids[i]`` is replaced by a large
        negative finite value, so it gets zero probability and zero gradient.

    Examples
    --------
    >>> import torch
    >>> masked = remove_accidental_hits(torch.zeros(2, 3), ["x", "y", "x"])
    >>> (masked < -1e30).tolist()
    [[False, False, True], [False, False, False]]
    """
    batch_size, num_candidates = logits.shape
    codes = _id_codes(candidate_ids, num_candidates).to(logits.device)
    same_id = codes[:batch_size, None] == codes[None, :]
    is_positive = torch.eye(batch_size, num_candidates, dtype=torch.bool, device=logits.device)
    # finite (not -inf) so that a row can never become all -inf and produce NaN
    return logits.masked_fill(same_id & ~is_positive, _large_negative(logits.dtype))


def remove_same_query_positives(
    logits: torch.Tensor, query_ids: torch.Tensor | np.ndarray | Sequence
) -> torch.Tensor:
    """Give a large negative logit to the other in-batch positives of the same query.

    Parameters
    ----------
    logits
        ``[B, C]`` logits; row ``i``'s positive is column ``i``; columns ``B..C-1``
        (shared sampled negatives) are left alone.
    query_ids
        ``[B]`` ids (integers or strings).

    Examples
    --------
    >>> import torch
    >>> masked = remove_same_query_positives(torch.zeros(3, 4), ["u", "v", "u"])
    >>> (masked < -1e30).int().tolist()
    [[0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    """
    batch_size = logits.shape[0]
    codes = _id_codes(query_ids, batch_size).to(logits.device)
    same_query = torch.zeros_like(logits, dtype=torch.bool)
    same_query[:, :batch_size] = codes[:, None] == codes[None, :]
    same_query[:, :batch_size].fill_diagonal_(False)
    return logits.masked_fill(same_query, _large_negative(logits.dtype))


def mine_hard_negatives(logits: torch.Tensor, num_hard_negatives: int) -> torch.Tensor:
    """Keep each row's positive and its ``num_hard_negatives`` largest negatives.

    Parameters
    ----------
    logits
        ``[B, C]`` logits; row ``i``'s positive is column ``i``.
    num_hard_negatives
        ``k``; capped at ``C - 1`` (then every negative is kept, as in TFRS).

    Returns
    -------
    torch.Tensor
        ``[B, 1 + min(k, C - 1)]``: column 0 is the positive, the rest the
        largest negatives in decreasing order.

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 4.0, -1.0]])
    >>> mine_hard_negatives(logits, 2).tolist()
    [[0.0, 3.0, 2.0], [0.0, 5.0, 4.0]]
    """
    batch_size, num_candidates = logits.shape
    kept = min(num_hard_negatives, num_candidates - 1)
    rows = torch.arange(batch_size, device=logits.device)
    positives = logits[rows, rows].unsqueeze(1)
    is_positive = torch.eye(batch_size, num_candidates, dtype=torch.bool, device=logits.device)
    # selection only: indices come from a detached copy, values (and gradients) from logits
    selection = logits.detach().masked_fill(is_positive, float("-inf"))
    hardest = selection.topk(kept, dim=1).indices
    return torch.cat([positives, logits.gather(1, hardest)], dim=1)


def _check_shapes(query: torch.Tensor, candidates: torch.Tensor) -> tuple[int, int]:
    if query.dim() != 2 or candidates.dim() != 2:
        raise ValueError(
            f"query and candidates must be 2-D, got {tuple(query.shape)} and {tuple(candidates.shape)}"
        )
    batch_size, num_candidates = query.shape[0], candidates.shape[0]
    if query.shape[1] != candidates.shape[1]:
        raise ValueError(f"dimension mismatch: query {query.shape[1]}, candidates {candidates.shape[1]}")
    if batch_size == 0:
        raise ValueError("empty batch")
    if num_candidates < batch_size:
        raise ValueError(f"need at least one candidate per query: C={num_candidates} < B={batch_size}")
    return batch_size, num_candidates


def _as_vector(values, length: int, name: str, like: torch.Tensor) -> torch.Tensor:
    vector = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    if vector.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(vector.shape)}")
    if not bool(torch.isfinite(vector).all()):
        raise ValueError(f"{name} must be finite")
    return vector


def _id_codes(candidate_ids, length: int) -> torch.Tensor:
    """Integer codes equal exactly where the ids are equal (works for strings)."""
    if isinstance(candidate_ids, torch.Tensor):
        codes = candidate_ids
    else:
        _, inverse = np.unique(np.asarray(candidate_ids), return_inverse=True)
        codes = torch.from_numpy(inverse.reshape(-1))
    if codes.shape != (length,):
        raise ValueError(f"candidate_ids must have shape ({length},), got {tuple(codes.shape)}")
    return codes


def _large_negative(dtype: torch.dtype) -> float:
    # like TFRS's MIN_FLOAT: far below any real logit, far enough from the
    # dtype's minimum that subtracting the row maximum cannot overflow
    return torch.finfo(dtype).min / 100.0
