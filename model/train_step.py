"""The one training step of the two towers, shared by the online worker and offline training.

:func:`train_step` takes a :class:`Batch` of encoded positives (row ``i``: a user
and the item it clicked), computes the configured loss on the towers' outputs,
and takes one optimizer step. Embedding tables with sparse gradients are
updated by ``SparseAdam`` (only the rows the batch touched), every other
parameter by ``AdamW``; :class:`Optimizers` holds both and checkpoints them.

Losses (``TrainConfig.loss``):

- ``"softmax"``: :func:`recallstream.model.losses.in_batch_softmax` over the batch's items
  (plus any extra sampled negatives), with temperature, logQ correction and
  removal of accidental hits;
- ``"triplet_hinge"`` / ``"triplet_logistic"``: each row's negative is another
  row's item (the batch rolled by one);
- ``"pointwise"``: BCE with the positive and ``pointwise_negatives`` rolled
  in-batch items as negatives;
- ``"contrastive"``: the contrastive margin loss on the same pairs;
- ``"catalog_softmax"``: a full softmax over every catalogue item
  (:func:`recallstream.model.losses.catalog_softmax`), for offline training over a catalogue
  small enough to score whole; it takes a :class:`CatalogBatch` and
  :func:`catalog_step` instead of a :class:`Batch`.

With DAT on (``TowerConfig.augmented``), the mimic loss and the category
alignment loss of :mod:`recallstream.model.dat` are added with :attr:`TrainConfig.dat` weights.

Examples
--------
>>> import torch
>>> from recallstream.model.features import Categorical
>>> from recallstream.model.towers import TowerConfig, TwoTower
>>> _ = torch.manual_seed(0)
>>> model = TwoTower(TowerConfig((Categorical("user_id", 100, 8),), (Categorical("item_id", 100, 8),),
...                              hidden=(16,), output_dim=8))
>>> optimizers = Optimizers(model, TrainConfig())
>>> batch = Batch(user_inputs={"user_id": torch.tensor([1, 2, 3])},
...               item_inputs={"item_id": torch.tensor([5, 6, 5])},
...               item_ids=torch.tensor([5, 6, 5]), log_q=torch.log(torch.tensor([0.5, 0.25, 0.5])))
>>> first = train_step(model, optimizers, batch, TrainConfig())
>>> later = [train_step(model, optimizers, batch, TrainConfig()) for _ in range(30)][-1]
>>> later < first
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

from recallstream.model.dat import DatConfig, dat_auxiliary_loss
from recallstream.model.losses import (catalog_softmax, contrastive_margin, in_batch_softmax, pointwise_bce,
                          triplet_hinge, triplet_logistic)
from recallstream.model.hashing import bucketize
from recallstream.model.towers import ITEM_ID, TwoTower

__all__ = ["Batch", "CatalogBatch", "LOSSES", "Optimizers", "TrainConfig", "catalog_step",
           "compute_loss", "train_step"]

LOSSES = ("softmax", "triplet_hinge", "triplet_logistic", "pointwise", "contrastive",
          "catalog_softmax")


@dataclass(frozen=True)
class TrainConfig:
    """Loss and optimizer settings of :func:`train_step`.

    Parameters
    ----------
    loss
        One of :data:`LOSSES`.
    temperature
        Softmax temperature (cosine logits are divided by it).
    use_log_q
        Subtract the batch's ``log_q`` from the softmax logits (popularity correction).
    remove_accidental_hits
        Ignore in-batch candidates with the same id as the row's positive (and, when the
        batch carries user ids, the same user's other positives).
    num_hard_negatives
        Keep only the hardest negatives per row (softmax), None for all.
    margin
        Margin of the triplet hinge and contrastive losses.
    pointwise_negatives
        Negatives per positive of the pointwise loss.
    sparse_lr, dense_lr, weight_decay
        ``SparseAdam`` rate of sparse embedding tables; ``AdamW`` rate and
        weight decay of the rest.
    dat
        Weights of the DAT auxiliary losses (used when the towers are augmented).

    Examples
    --------
    >>> TrainConfig.from_dict(TrainConfig(loss="pointwise").to_dict()).loss
    'pointwise'
    """

    loss: str = "softmax"
    temperature: float = 0.2
    use_log_q: bool = True
    remove_accidental_hits: bool = True
    num_hard_negatives: int | None = None
    margin: float = 0.2
    pointwise_negatives: int = 2
    sparse_lr: float = 0.01
    dense_lr: float = 0.001
    weight_decay: float = 0.0
    dat: DatConfig = field(default_factory=DatConfig)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not self.temperature > 0 or not self.sparse_lr > 0 or not self.dense_lr > 0:
            raise ValueError("temperature and learning rates must be positive")
        if self.pointwise_negatives < 1:
            raise ValueError(f"pointwise_negatives must be at least 1, got {self.pointwise_negatives}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, described: Mapping) -> "TrainConfig":
        described = dict(described)
        if isinstance(described.get("dat"), Mapping):
            described["dat"] = DatConfig(**described["dat"])
        return cls(**described)


@dataclass
class Batch:
    """One minibatch of positives, already encoded for the towers.

    Parameters
    ----------
    user_inputs, item_inputs
        Encoded features (``{name: tensor}``) of each row's user and clicked item.
    item_ids
        ``[B]`` integer id codes of the items (accidental hits compare them).
    log_q
        ``[B]`` log sampling probability of each item as an in-batch candidate.
    negative_inputs, negative_ids, negative_log_q
        Optional extra sampled negatives (softmax loss only), shared by all rows.
    sample_weight
        Optional ``[B]`` non-negative weights.
    categories
        Optional ``[B]`` category per item (the DAT category alignment loss).
    user_ids
        Optional ``[B]`` integer user codes: with accidental hits removed, a row's
        user's other positives in the batch are not its negatives either.
    """

    user_inputs: dict[str, torch.Tensor]
    item_inputs: dict[str, torch.Tensor]
    item_ids: torch.Tensor
    log_q: torch.Tensor | None = None
    negative_inputs: dict[str, torch.Tensor] | None = None
    negative_ids: torch.Tensor | None = None
    negative_log_q: torch.Tensor | None = None
    sample_weight: torch.Tensor | None = None
    categories: torch.Tensor | None = None
    user_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    @classmethod
    def from_ids(cls, model: TwoTower, user_ids: Sequence[str], item_ids: Sequence[str], *,
                 users: Mapping[str, Mapping], items: Mapping[str, Mapping],
                 histories: Sequence[Sequence[str]] | None = None,
                 log_q: Sequence[float] | torch.Tensor | None = None) -> "Batch":
        """Encode positives ``(user_ids[k], item_ids[k])`` from raw ids and feature dicts.

        ``histories[k]`` is user k's recent items *before* this click; accidental
        hits are detected on the hashed item id.

        Examples
        --------
        >>> from recallstream.model.towers import movielens_config
        >>> model = TwoTower(movielens_config(output_dim=8, hidden=(16,), id_buckets=1000))
        >>> batch = Batch.from_ids(model, ["u1", "u2"], ["i1", "i1"], users={}, items={},
        ...                        histories=[["i9"], []], log_q=[-1.0, -1.0])
        >>> len(batch), bool(batch.item_ids[0] == batch.item_ids[1])
        (2, True)
        """
        item_inputs = model.encode_items(item_ids, items)
        codes = item_inputs.get(ITEM_ID)
        if codes is None:
            codes = torch.from_numpy(bucketize(item_ids, 1 << 62, key=ITEM_ID))
        return cls(user_inputs=model.encode_users(user_ids, users, histories),
                   item_inputs=item_inputs, item_ids=codes,
                   log_q=None if log_q is None else torch.as_tensor(log_q, dtype=torch.float32))


class Optimizers:
    """``SparseAdam`` for the sparse embedding tables and ``AdamW`` for the rest.

    Examples
    --------
    >>> import torch
    >>> from recallstream.model.features import Categorical
    >>> from recallstream.model.towers import TowerConfig, TwoTower
    >>> model = TwoTower(TowerConfig((Categorical("user_id", 10, 2),), (Categorical("item_id", 10, 2),)))
    >>> optimizers = Optimizers(model, TrainConfig())
    >>> sorted(optimizers.state_dict())
    ['dense', 'sparse']
    """

    def __init__(self, model: TwoTower, config: TrainConfig) -> None:
        sparse, dense = model.sparse_parameters(), model.dense_parameters()
        self.sparse = torch.optim.SparseAdam(sparse, lr=config.sparse_lr) if sparse else None
        self.dense = torch.optim.AdamW(dense, lr=config.dense_lr,
                                       weight_decay=config.weight_decay) if dense else None

    def zero_grad(self) -> None:
        for optimizer in self._all():
            optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        for optimizer in self._all():
            optimizer.step()

    def state_dict(self) -> dict:
        return {"sparse": self.sparse.state_dict() if self.sparse else None,
                "dense": self.dense.state_dict() if self.dense else None}

    def load_state_dict(self, state: Mapping) -> None:
        for name, optimizer in (("sparse", self.sparse), ("dense", self.dense)):
            if optimizer is not None and state.get(name) is not None:
                optimizer.load_state_dict(state[name])

    def _all(self):
        return [o for o in (self.sparse, self.dense) if o is not None]


@dataclass
class CatalogBatch:
    """Users and their positives, each scored against the whole catalogue.

    Parameters
    ----------
    user_inputs
        Encoded features of the batch's ``U`` users.
    catalog_inputs
        Encoded features of every catalogue item (``N`` rows).
    rows, columns
        ``[P]`` positive pairs: user row ``rows[k]`` clicked catalogue item ``columns[k]``.
    sample_weight
        Optional ``[P]`` non-negative weights.
    """

    user_inputs: dict[str, torch.Tensor]
    catalog_inputs: dict[str, torch.Tensor]
    rows: torch.Tensor
    columns: torch.Tensor
    sample_weight: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def train_step(model: TwoTower, optimizers: Optimizers, batch: Batch, config: TrainConfig) -> float:
    """Compute the loss of ``batch`` and take one optimizer step; returns the loss value."""
    if config.loss == "catalog_softmax":
        raise ValueError("the catalog_softmax loss scores the whole catalogue: "
                         "train it with catalog_step and a CatalogBatch")
    return _step(model, optimizers, lambda: compute_loss(model, batch, config))


def catalog_step(model: TwoTower, optimizers: Optimizers, batch: CatalogBatch,
                 config: TrainConfig) -> float:
    """One optimizer step on the full-catalogue softmax of ``batch``; returns the loss value.

    Examples
    --------
    >>> from recallstream.model.features import Categorical
    >>> from recallstream.model.towers import TowerConfig
    >>> _ = torch.manual_seed(0)
    >>> model = TwoTower(TowerConfig((Categorical("user_id", 10, 4),), (Categorical("item_id", 10, 4),),
    ...                              hidden=None, output_dim=4))
    >>> config = TrainConfig(loss="catalog_softmax", sparse_lr=0.1)
    >>> optimizers = Optimizers(model, config)
    >>> batch = CatalogBatch({"user_id": torch.tensor([1, 2])}, {"item_id": torch.arange(5)},
    ...                      rows=torch.tensor([0, 0, 1]), columns=torch.tensor([3, 4, 0]))
    >>> losses = [catalog_step(model, optimizers, batch, config) for _ in range(20)]
    >>> losses[-1] < losses[0]
    True
    """
    if config.loss != "catalog_softmax":
        raise ValueError(f"catalog_step trains the catalog_softmax loss, not {config.loss!r}")
    if model.config.augmented and config.dat.enabled:
        raise ValueError("DAT needs in-batch pairs: use the softmax loss with train_step")

    def loss() -> torch.Tensor:
        return catalog_softmax(model.user_vectors(batch.user_inputs),
                               model.item_vectors(batch.catalog_inputs), batch.rows,
                               batch.columns, temperature=config.temperature,
                               sample_weight=batch.sample_weight)

    return _step(model, optimizers, loss)


def _step(model: TwoTower, optimizers: Optimizers, compute) -> float:
    model.train()
    optimizers.zero_grad()
    loss = compute()
    loss.backward()
    optimizers.step()
    return float(loss.detach())


def compute_loss(model: TwoTower, batch: Batch, config: TrainConfig) -> torch.Tensor:
    """The training loss of ``batch`` (main loss plus DAT terms), with gradients."""
    users = model.user_vectors(batch.user_inputs)
    items = model.item_vectors(batch.item_inputs)
    loss = _main_loss(model, users, items, batch, config)
    if model.config.augmented and config.dat.enabled:
        loss = loss + dat_auxiliary_loss(
            config.dat, aug_user=model.augmented_user(batch.user_inputs), user_out=users,
            aug_item=model.augmented_item(batch.item_inputs), item_out=items,
            labels=torch.ones(len(batch)), categories=batch.categories)
    return loss


def _main_loss(model: TwoTower, users, items, batch: Batch, config: TrainConfig) -> torch.Tensor:
    if config.loss == "softmax":
        return _softmax_loss(model, users, items, batch, config)
    if len(batch) < 2:
        raise ValueError(f"{config.loss} uses in-batch negatives: the batch needs 2+ rows")
    if config.loss in ("triplet_hinge", "triplet_logistic"):
        negatives = items.roll(1, dims=0)
        if config.loss == "triplet_hinge":
            return triplet_hinge(users, items, negatives, margin=config.margin)
        return triplet_logistic(users, items, negatives)
    queries, candidates, labels = _pointwise_pairs(users, items, config.pointwise_negatives)
    if config.loss == "pointwise":
        return pointwise_bce(queries, candidates, labels, scale=1.0 / config.temperature)
    return contrastive_margin(queries, candidates, labels, margin=config.margin)


def _softmax_loss(model, users, items, batch: Batch, config: TrainConfig) -> torch.Tensor:
    candidates, ids, log_q = items, batch.item_ids, batch.log_q
    if batch.negative_inputs is not None:
        candidates = torch.cat([items, model.item_vectors(batch.negative_inputs)])
        ids = torch.cat([ids, batch.negative_ids])
        if log_q is not None:
            log_q = torch.cat([log_q, batch.negative_log_q])
    return in_batch_softmax(
        users, candidates, temperature=config.temperature,
        log_q=log_q if config.use_log_q else None,
        candidate_ids=ids if config.remove_accidental_hits else None,
        query_ids=batch.user_ids if config.remove_accidental_hits else None,
        num_hard_negatives=config.num_hard_negatives, sample_weight=batch.sample_weight)


def _pointwise_pairs(users, items, negatives: int):
    """Each positive pair plus ``negatives`` pairs with other rows' items (labels 1 / 0)."""
    queries = [users] + [users] * negatives
    candidates = [items] + [items.roll(k, dims=0) for k in range(1, negatives + 1)]
    labels = [torch.ones(len(users))] + [torch.zeros(len(users))] * negatives
    return torch.cat(queries), torch.cat(candidates), torch.cat(labels)
