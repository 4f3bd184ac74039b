"""User and item towers, and the two-tower model that holds both.

A :class:`Tower` embeds each of its features (see :mod:`recallstream.model.features`),
concatenates the blocks, runs an MLP and L2-normalises the output (cosine
similarity), or leaves it as is (dot product). :class:`TwoTower` pairs a user
tower and an item tower, optionally sharing the MLP weights (a siamese model;
both inputs must then have the same width), and knows how to turn raw ids plus
feature dicts into vectors.

:class:`TowerConfig` describes a model completely in JSON-ready values, so a
snapshot or checkpoint can rebuild it: ``TwoTower(TowerConfig.from_dict(d))``.
:func:`movielens_config` gives the MovieLens defaults (user: id, age, gender,
occupation, zip prefix, recent history; item: id, genres, release year, title
tokens).

Examples
--------
>>> import torch
>>> _ = torch.manual_seed(0)
>>> model = TwoTower(movielens_config(output_dim=8, hidden=(16,)))
>>> items = {"1": {"title": "Toy Story", "release_year": 1995, "genres": ["Comedy"]}}
>>> vectors = model.embed_items(["1", "unknown-item"], items)
>>> vectors.shape, round(float(vectors[0].norm()), 4)
(torch.Size([2, 8]), 1.0)
>>> users = {"7": {"age": 30, "gender": "F", "occupation": "writer", "zip_code": "02139"}}
>>> model.embed_users(["7"], users, histories=[["1"]]).shape
torch.Size([1, 8])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from recallstream.model.dat import AugmentedVectors
from recallstream.model.features import (Categorical, FeatureSpec, History, MultiCategorical, Numeric,
                            Vocabulary, encode_records, spec_from_dict, spec_to_dict)

__all__ = ["Tower", "TowerConfig", "TwoTower", "movielens_config"]

USER_ID = "user_id"
ITEM_ID = "item_id"
HISTORY = "history"

ML100K_OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer")


@dataclass(frozen=True)
class TowerConfig:
    """Everything needed to rebuild a :class:`TwoTower` (JSON-ready via :meth:`to_dict`).

    Parameters
    ----------
    user_features, item_features
        Feature specs of each tower; the user tower reads records keyed by
        ``user_id`` (plus ``history``), the item tower records keyed by ``item_id``.
    hidden
        Hidden layer sizes of each tower's MLP (``()``: a single linear layer;
        ``None``: no MLP, the concatenated features are the output, so their
        total width must be ``output_dim``).
    output_dim
        Size of the user and item vectors.
    similarity
        ``"cosine"`` (L2-normalised outputs) or ``"dot"``.
    shared
        Share the MLP between the towers (both inputs must have the same width).
    dropout
        Dropout after each hidden layer, in training mode.
    residual_ids
        Add the id embedding (``user_id`` / ``item_id``, of size ``output_dim``) to
        the MLP output: the id path stays a plain matrix factorisation and the
        other features learn a correction on top of it.
    augmented
        Dual Augmented Two-tower: a learned vector per user / item id bucket
        (:class:`recallstream.model.dat.AugmentedVectors`) concatenated to each tower's input.

    Examples
    --------
    >>> config = movielens_config()
    >>> TowerConfig.from_dict(config.to_dict()) == config
    True
    """

    user_features: tuple[FeatureSpec, ...]
    item_features: tuple[FeatureSpec, ...]
    hidden: tuple[int, ...] | None = (256,)
    output_dim: int = 64
    similarity: str = "cosine"
    shared: bool = False
    dropout: float = 0.0
    residual_ids: bool = False
    augmented: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_features", tuple(self.user_features))
        object.__setattr__(self, "item_features", tuple(self.item_features))
        if self.hidden is not None:
            object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {self.similarity!r}")
        if self.output_dim < 1 or any(h < 1 for h in self.hidden or ()):
            raise ValueError("output_dim and hidden sizes must be positive")
        if not self.user_features or not self.item_features:
            raise ValueError("each tower needs at least one feature")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return {
            "user_features": [spec_to_dict(s) for s in self.user_features],
            "item_features": [spec_to_dict(s) for s in self.item_features],
            "hidden": None if self.hidden is None else list(self.hidden), "output_dim": self.output_dim,
            "similarity": self.similarity, "shared": self.shared, "dropout": self.dropout,
            "residual_ids": self.residual_ids, "augmented": self.augmented,
        }

    @classmethod
    def from_dict(cls, described: Mapping) -> "TowerConfig":
        described = dict(described)
        described["user_features"] = tuple(spec_from_dict(s) for s in described["user_features"])
        described["item_features"] = tuple(spec_from_dict(s) for s in described["item_features"])
        return cls(**described)

    def without(self, *feature_names: str) -> "TowerConfig":
        """The same config without the named features (for ablations).

        Examples
        --------
        >>> [s.name for s in movielens_config().without("history", "age").user_features]
        ['user_id', 'gender', 'occupation', 'zip_prefix']
        """
        return replace(
            self,
            user_features=tuple(s for s in self.user_features if s.name not in feature_names),
            item_features=tuple(s for s in self.item_features if s.name not in feature_names))


def movielens_config(*, id_buckets: int = 1 << 17, output_dim: int = 64, hidden=(256,),
                     history_length: int = 100, similarity: str = "cosine",
                     dropout: float = 0.0, residual_ids: bool = False,
                     augmented: bool = False) -> TowerConfig:
    """MovieLens defaults: user id, age, gender, occupation, zip prefix, recent history;
    item id, genres, release year, title tokens.

    ``id_buckets`` sizes the user-id, item-id and history tables (hashed, so
    unseen ids need no vocabulary); ``history_length`` is N of the recent history.
    """
    dim = output_dim
    user = (
        Categorical(USER_ID, id_buckets, dim),
        Numeric("age", "bucketize", boundaries=(18, 25, 35, 45, 50, 56)),
        Vocabulary("gender", ("F", "M")),
        Vocabulary("occupation", ML100K_OCCUPATIONS, dim=8),
        Categorical("zip_prefix", 1024, 8, source="zip_code", prefix_length=3, sparse=False),
        History(HISTORY, id_buckets, dim, max_length=history_length, hash_key=ITEM_ID),
    )
    item = (
        Categorical(ITEM_ID, id_buckets, dim),
        MultiCategorical("genres", 64, 16, max_values=6),
        Numeric("release_year", "standardize"),
        Numeric("release_year_bucket", "bucketize", source="release_year",
                boundaries=(1960, 1970, 1980, 1990, 1995)),
        MultiCategorical("title_tokens", 8192, 16, max_values=10, source="title"),
    )
    return TowerConfig(user, item, hidden=hidden, output_dim=output_dim,
                       similarity=similarity, dropout=dropout, residual_ids=residual_ids,
                       augmented=augmented)


class Tower(nn.Module):
    """Feature blocks concatenated, then an MLP; output normalised when ``normalize``.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> tower = Tower([Categorical("item_id", 100, 4)], hidden=(8,), output_dim=3)
    >>> [round(n, 4) for n in tower({"item_id": torch.tensor([1, 2])}).norm(dim=1).tolist()]
    [1.0, 1.0]
    """

    def __init__(self, features: Sequence[FeatureSpec], *, hidden: Sequence[int] = (256,),
                 output_dim: int = 64, normalize: bool = True, dropout: float = 0.0,
                 mlp: nn.Module | None = None, extra_dim: int = 0,
                 residual: str | None = None) -> None:
        super().__init__()
        self.residual = residual
        self.specs = tuple(features)
        self.blocks = nn.ModuleDict({spec.name: spec.build() for spec in self.specs})
        self.input_dim = sum(spec.output_dim for spec in self.specs) + extra_dim
        self.normalize = normalize
        self.mlp = mlp if mlp is not None else _mlp(self.input_dim, hidden, output_dim, dropout)

    def forward(self, inputs: Mapping[str, torch.Tensor],
                extra: torch.Tensor | None = None) -> torch.Tensor:
        """``{feature name: encoded tensor}`` (plus an ``extra`` input block) -> ``[B, output_dim]``."""
        blocks = [self.blocks[spec.name](inputs[spec.name]) for spec in self.specs]
        if extra is not None:
            blocks.append(extra)
        out = self.mlp(torch.cat(blocks, dim=1))
        if self.residual is not None:
            out = out + blocks[[s.name for s in self.specs].index(self.residual)]
        return F.normalize(out, dim=1) if self.normalize else out

    def encode(self, records: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """Raw record dicts -> the encoded inputs of :meth:`forward`."""
        return encode_records(self.specs, records)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters with sparse gradients (for ``SparseAdam``)."""
        return sparse_parameters(self)

    def dense_parameters(self) -> list[nn.Parameter]:
        """All other parameters (for ``Adam``/``AdamW``)."""
        return dense_parameters(self)


class TwoTower(nn.Module):
    """A user tower and an item tower built from a :class:`TowerConfig`.

    ``score(u, v)`` is the row-wise similarity of the vectors (cosine on the
    normalised outputs, or dot). The ``embed_*`` methods take raw ids and
    feature dicts: an id without features (a new user or item) still gets a
    vector from its hashed id and the reserved missing buckets.
    """

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        normalize = config.similarity == "cosine"
        extra = config.output_dim if config.augmented else 0
        self.user_id_feature = _id_feature(config.user_features, USER_ID)
        self.item_id_feature = _id_feature(config.item_features, ITEM_ID)
        if config.residual_ids and not all(
                f is not None and f.dim == config.output_dim
                for f in (self.user_id_feature, self.item_id_feature)):
            raise ValueError("residual_ids needs user_id and item_id features of size output_dim")
        self.user_tower = Tower(config.user_features, hidden=config.hidden,
                                output_dim=config.output_dim, normalize=normalize,
                                dropout=config.dropout, extra_dim=extra,
                                residual=USER_ID if config.residual_ids else None)
        shared_mlp = self.user_tower.mlp if config.shared else None
        self.item_tower = Tower(config.item_features, hidden=config.hidden,
                                output_dim=config.output_dim, normalize=normalize,
                                dropout=config.dropout, mlp=shared_mlp, extra_dim=extra,
                                residual=ITEM_ID if config.residual_ids else None)
        if config.augmented and (self.user_id_feature is None or self.item_id_feature is None):
            raise ValueError(f"augmented towers need Categorical {USER_ID!r} and {ITEM_ID!r} features")
        if config.augmented:
            # each augmented vector mimics the *other* tower's output, hence output_dim
            self.user_augmented = AugmentedVectors(self.user_id_feature.num_buckets,
                                                   config.output_dim, sparse=True)
            self.item_augmented = AugmentedVectors(self.item_id_feature.num_buckets,
                                                   config.output_dim, sparse=True)
        if config.shared and self.item_tower.input_dim != self.user_tower.input_dim:
            raise ValueError(f"shared towers need equal input widths, got "
                             f"{self.user_tower.input_dim} and {self.item_tower.input_dim}")

    def augmented_user(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """DAT augmented vectors of the users of ``inputs`` (None when DAT is off)."""
        if not self.config.augmented:
            return None
        return self.user_augmented(inputs[self.user_id_feature.name])

    def augmented_item(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """DAT augmented vectors of the items of ``inputs`` (None when DAT is off)."""
        if not self.config.augmented:
            return None
        return self.item_augmented(inputs[self.item_id_feature.name])

    def user_vectors(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Encoded user inputs -> ``[B, output_dim]`` (with gradients in training)."""
        return self.user_tower(inputs, self.augmented_user(inputs))

    def item_vectors(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Encoded item inputs -> ``[B, output_dim]`` (with gradients in training)."""
        return self.item_tower(inputs, self.augmented_item(inputs))

    def user_records(self, user_ids: Sequence[str], users: Mapping[str, Mapping],
                     histories: Sequence[Sequence[str]] | None = None) -> list[dict]:
        """Records for the user tower: each user's features, its id and its history."""
        records = [{**users.get(user_id, {}), USER_ID: user_id} for user_id in user_ids]
        if histories is not None:
            for record, history in zip(records, histories, strict=True):
                record[HISTORY] = history
        return records

    def item_records(self, item_ids: Sequence[str], items: Mapping[str, Mapping]) -> list[dict]:
        """Records for the item tower: each item's features and its id."""
        return [{**items.get(item_id, {}), ITEM_ID: item_id} for item_id in item_ids]

    def encode_users(self, user_ids, users, histories=None) -> dict[str, torch.Tensor]:
        return self.user_tower.encode(self.user_records(user_ids, users, histories))

    def encode_items(self, item_ids, items) -> dict[str, torch.Tensor]:
        return self.item_tower.encode(self.item_records(item_ids, items))

    @torch.no_grad()
    def embed_items(self, item_ids: Sequence[str], items: Mapping[str, Mapping],
                    batch_size: int = 4096) -> torch.Tensor:
        """Vectors ``[N, output_dim]`` of items (eval mode, no gradient)."""
        return self.embed_item_inputs(self.encode_items(item_ids, items), batch_size)

    @torch.no_grad()
    def embed_item_inputs(self, inputs: Mapping[str, torch.Tensor],
                          batch_size: int = 4096) -> torch.Tensor:
        """:meth:`embed_items` of inputs :meth:`encode_items` gave (encoding is pure: the
        same records give the same inputs whatever the weights, so callers may keep them)."""
        count = len(next(iter(inputs.values()))) if inputs else 0
        return self._embed(self.item_vectors, inputs, count, batch_size)

    @torch.no_grad()
    def embed_users(self, user_ids: Sequence[str], users: Mapping[str, Mapping],
                    histories: Sequence[Sequence[str]] | None = None,
                    batch_size: int = 4096) -> torch.Tensor:
        """Vectors ``[N, output_dim]`` of users with their recent histories (eval mode)."""
        return self.embed_user_inputs(self.encode_users(user_ids, users, histories), batch_size)

    @torch.no_grad()
    def embed_user_inputs(self, inputs: Mapping[str, torch.Tensor],
                          batch_size: int = 4096) -> torch.Tensor:
        """:meth:`embed_users` of inputs :meth:`encode_users` gave."""
        count = len(next(iter(inputs.values()))) if inputs else 0
        return self._embed(self.user_vectors, inputs, count, batch_size)

    def score(self, user_vectors: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """Row-wise similarity of paired user and item vectors."""
        return (user_vectors * item_vectors).sum(dim=1)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Embedding tables with sparse gradients (for ``SparseAdam``)."""
        return sparse_parameters(self)

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other parameter (for ``Adam``/``AdamW``)."""
        return dense_parameters(self)

    def _embed(self, vectors, inputs, count: int, batch_size: int) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            parts = [vectors({k: v[start:start + batch_size] for k, v in inputs.items()})
                     for start in range(0, count, batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(parts) if parts else torch.zeros(0, self.config.output_dim)


def sparse_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The embedding tables of ``module`` that have sparse gradients."""
    return [m.weight for m in module.modules()
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse]


def dense_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``module`` that :func:`sparse_parameters` leaves out."""
    sparse = {id(p) for p in sparse_parameters(module)}
    return [p for p in module.parameters() if id(p) not in sparse]


def _mlp(input_dim: int, hidden: Sequence[int] | None, output_dim: int, dropout: float) -> nn.Module:
    if hidden is None:
        if input_dim != output_dim:
            raise ValueError(f"a tower without MLP needs input width {input_dim} == output_dim {output_dim}")
        return nn.Identity()
    layers: list[nn.Module] = []
    width = input_dim
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


def _id_feature(specs: Sequence[FeatureSpec], name: str) -> Categorical | None:
    for spec in specs:
        if spec.name == name and isinstance(spec, Categorical):
            return spec
    return None
