"""Feature specs: how a user's or item's feature dict becomes tower input.

A spec is a small frozen dataclass naming a feature, where its value comes from
(``source``, a key of the record dict) and how it is represented. It has two
halves:

- ``encode(values)`` turns a batch of raw values (strings, numbers, lists,
  vectors, ``None`` for missing) into a tensor, with no learned state;
- ``build()`` returns the ``nn.Module`` that turns that tensor into a
  ``[B, spec.output_dim]`` block of the tower input.

Unknown or missing values never raise: categorical values land in the reserved
bucket 0 (:mod:`recallstream.model.hashing`), numbers in a zero value plus a missing flag,
vectors in zeros. Learned feature state (running statistics of numeric
features) lives in module buffers, so it is saved and restored with the
model's ``state_dict``.

Specs round-trip through plain dicts (:func:`spec_to_dict`,
:func:`spec_from_dict`) so a snapshot stores them as JSON.

Examples
--------
>>> import torch
>>> _ = torch.manual_seed(0)
>>> genres = MultiCategorical("genres", num_buckets=64, dim=4, max_values=2)
>>> encoded = genres.encode([["Comedy", "Drama"], None])
>>> encoded.tolist()[1]
[0, 0]
>>> genres.build()(encoded).shape
torch.Size([2, 4])
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

from recallstream.model.hashing import bucketize

__all__ = [
    "Categorical", "Dense", "FeatureSpec", "History", "MultiCategorical", "Numeric",
    "Vocabulary", "encode_records", "spec_from_dict", "spec_to_dict",
]

_TOKEN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Categorical:
    """One categorical value (an id, a zip prefix) hashed into an embedding table.

    Parameters
    ----------
    name
        Feature name (also the hash key).
    num_buckets
        Table rows, bucket 0 reserved for missing values.
    dim
        Embedding size.
    source
        Record key of the value; defaults to ``name``.
    prefix_length
        Keep only the first characters (e.g. 3 for a zip-code prefix).
    sparse
        Sparse embedding gradients (for ``SparseAdam``); worth it for large tables.

    Examples
    --------
    >>> spec = Categorical("zip_prefix", num_buckets=100, dim=2, source="zip_code", prefix_length=3)
    >>> a, b, missing = spec.encode(["85711", "85702", None]).tolist()
    >>> a == b, missing
    (True, 0)
    """

    name: str
    num_buckets: int
    dim: int
    source: str = ""
    prefix_length: int | None = None
    sparse: bool = True

    def __post_init__(self) -> None:
        _check_positive(self, "num_buckets", "dim")

    @property
    def output_dim(self) -> int:
        return self.dim

    def encode(self, values: Sequence) -> torch.Tensor:
        texts = [_as_text(v) for v in values]
        if self.prefix_length is not None:
            texts = [t[: self.prefix_length] if t is not None else None for t in texts]
        return torch.from_numpy(bucketize(texts, self.num_buckets, key=self.name))

    def build(self) -> nn.Module:
        return _Embedding(self.num_buckets, self.dim, self.sparse)


@dataclass(frozen=True)
class Vocabulary:
    """A small closed vocabulary, one-hot (``dim=None``) or embedded.

    Index 0 is for missing or unknown values, ``1..len(values)`` the values.

    Examples
    --------
    >>> spec = Vocabulary("gender", values=("F", "M"))
    >>> spec.encode(["M", "x", None]).tolist(), spec.output_dim
    ([2, 0, 0], 3)
    >>> spec.build()(spec.encode(["F"])).tolist()
    [[0.0, 1.0, 0.0]]
    """

    name: str
    values: tuple[str, ...]
    dim: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        if len(set(self.values)) != len(self.values) or not self.values:
            raise ValueError(f"{self.name}: values must be distinct and non-empty")
        if self.dim is not None:
            _check_positive(self, "dim")

    @property
    def output_dim(self) -> int:
        return len(self.values) + 1 if self.dim is None else self.dim

    def encode(self, values: Sequence) -> torch.Tensor:
        index = {value: i + 1 for i, value in enumerate(self.values)}
        return torch.tensor([index.get(_as_text(v), 0) for v in values], dtype=torch.long)

    def build(self) -> nn.Module:
        if self.dim is None:
            return _OneHot(len(self.values) + 1)
        return _Embedding(len(self.values) + 1, self.dim, sparse=False)


@dataclass(frozen=True)
class MultiCategorical:
    """Several values per record (genres, title words) hashed and mean-pooled.

    A string value is split into lower-case word tokens; a list is taken as is.
    Encoded as ``[B, max_values]`` bucket indices padded with 0 (ignored by the pooling).

    Examples
    --------
    >>> spec = MultiCategorical("title_tokens", num_buckets=1000, dim=3, max_values=4)
    >>> encoded = spec.encode(["Toy Story", []])
    >>> [int((row > 0).sum()) for row in encoded]
    [2, 0]
    """

    name: str
    num_buckets: int
    dim: int
    max_values: int = 8
    source: str = ""
    sparse: bool = False

    def __post_init__(self) -> None:
        _check_positive(self, "num_buckets", "dim", "max_values")

    @property
    def output_dim(self) -> int:
        return self.dim

    def encode(self, values: Sequence) -> torch.Tensor:
        return _padded_buckets([_tokens(v)[: self.max_values] for v in values],
                               self.max_values, self.num_buckets, self.name)

    def build(self) -> nn.Module:
        return _MeanPool(self.num_buckets, self.dim, self.sparse)


@dataclass(frozen=True)
class History:
    """The recent history of a user: mean of the embeddings of the last ``max_length`` item ids.

    Values are lists of item ids, oldest first; the newest ``max_length`` are kept.
    The caller decides what the history is; it must never contain the
    interaction being scored or trained on (that would leak the label).

    With ``decay`` > 0 the mean is weighted by recency: the item ``k`` clicks
    before the newest weighs ``exp(-decay * k)`` (on MovieLens the last few
    items say most about the next click).

    Examples
    --------
    >>> spec = History("history", num_buckets=100, dim=4, max_length=2)
    >>> encoded = spec.encode([["1", "2", "3"], None])
    >>> encoded.shape, int((encoded[1] > 0).sum())
    (torch.Size([2, 2]), 0)
    >>> pool = History("history", num_buckets=100, dim=1, max_length=3, decay=math.log(2)).build()
    >>> with torch.no_grad():
    ...     pool.table.weight[1:4, 0] = torch.tensor([1.0, 2.0, 4.0])
    >>> pool(torch.tensor([[1, 2, 3], [3, 0, 0]])).squeeze(1).tolist()  # (1 + 2*2 + 4*4) / 7
    [3.0, 4.0]
    """

    name: str
    num_buckets: int
    dim: int
    max_length: int = 50
    source: str = ""
    hash_key: str = "item_id"  # same buckets as the item id feature
    sparse: bool = True
    decay: float = 0.0

    def __post_init__(self) -> None:
        _check_positive(self, "num_buckets", "dim", "max_length")
        if not self.decay >= 0:
            raise ValueError(f"{self.name}: decay must be >= 0, got {self.decay}")

    @property
    def output_dim(self) -> int:
        return self.dim

    def encode(self, values: Sequence) -> torch.Tensor:
        lists = [[] if v is None else [str(x) for x in v][-self.max_length:] for v in values]
        return _padded_buckets(lists, self.max_length, self.num_buckets, self.hash_key)

    def build(self) -> nn.Module:
        if self.decay > 0:
            return _RecencyPool(self.num_buckets, self.dim, self.sparse, self.decay)
        return _MeanPool(self.num_buckets, self.dim, self.sparse)


@dataclass(frozen=True)
class Numeric:
    """A number, standardised with running statistics, log-standardised or bucketised.

    ``transform``: ``"standardize"`` (``(x - mean) / std`` with mean and std
    kept up to date during training), ``"log"`` (the same on ``log1p(max(x, 0))``)
    or ``"bucketize"`` (one-hot of the interval between ``boundaries``). A
    missing value gives 0 plus a missing flag (standardize/log), or its own
    one-hot slot (bucketize).

    Examples
    --------
    >>> spec = Numeric("age", transform="bucketize", boundaries=(18, 35))
    >>> spec.build()(spec.encode([10, 20, 40, None])).argmax(dim=1).tolist()
    [1, 2, 3, 0]
    """

    name: str
    transform: str = "standardize"
    boundaries: tuple[float, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "boundaries", tuple(float(b) for b in self.boundaries))
        if self.transform not in ("standardize", "log", "bucketize"):
            raise ValueError(f"{self.name}: unknown transform {self.transform!r}")
        if self.transform == "bucketize" and (
                not self.boundaries or list(self.boundaries) != sorted(set(self.boundaries))):
            raise ValueError(f"{self.name}: bucketize needs increasing boundaries")

    @property
    def output_dim(self) -> int:
        return len(self.boundaries) + 2 if self.transform == "bucketize" else 2

    def encode(self, values: Sequence) -> torch.Tensor:
        """``[B]`` float tensor, NaN for missing or non-numeric values."""
        return torch.tensor([_as_float(v) for v in values], dtype=torch.float32)

    def build(self) -> nn.Module:
        if self.transform == "bucketize":
            return _Bucketize(self.boundaries)
        return _RunningStandardize(log=self.transform == "log")


@dataclass(frozen=True)
class Dense:
    """A precomputed vector (e.g. a 384-d title embedding), used as given; missing is zeros.

    Examples
    --------
    >>> spec = Dense("title_vector", dim=3)
    >>> spec.encode([[1, 2, 3], None]).tolist()
    [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
    """

    name: str
    dim: int
    source: str = ""

    def __post_init__(self) -> None:
        _check_positive(self, "dim")

    @property
    def output_dim(self) -> int:
        return self.dim

    def encode(self, values: Sequence) -> torch.Tensor:
        out = torch.zeros(len(values), self.dim)
        for row, value in enumerate(values):
            vector = None if value is None else np.asarray(value, dtype=np.float32).reshape(-1)
            if vector is not None and vector.shape == (self.dim,) and np.isfinite(vector).all():
                out[row] = torch.from_numpy(vector)
        return out

    def build(self) -> nn.Module:
        return nn.Identity()


FeatureSpec = Categorical | Vocabulary | MultiCategorical | History | Numeric | Dense
_KINDS = {cls.__name__: cls for cls in (Categorical, Vocabulary, MultiCategorical, History, Numeric, Dense)}


def source_of(spec: FeatureSpec) -> str:
    """The record key a spec reads (its ``source``, or its name)."""
    return spec.source or spec.name


def encode_records(specs: Sequence[FeatureSpec], records: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    """Encode a batch of record dicts: ``{spec.name: tensor}``; absent keys are missing values.

    Examples
    --------
    >>> specs = [Categorical("item_id", 100, 2), Numeric("release_year")]
    >>> encoded = encode_records(specs, [{"item_id": "1", "release_year": 1995}, {}])
    >>> sorted(encoded), int(encoded["item_id"][1]), bool(encoded["release_year"][1].isnan())
    (['item_id', 'release_year'], 0, True)
    """
    return {spec.name: spec.encode([record.get(source_of(spec)) for record in records])
            for spec in specs}


def spec_to_dict(spec: FeatureSpec) -> dict:
    """JSON-ready description of a spec (inverse of :func:`spec_from_dict`).

    Examples
    --------
    >>> spec = Vocabulary("gender", ("F", "M"))
    >>> spec_from_dict(spec_to_dict(spec)) == spec
    True
    """
    described = asdict(spec)
    for key, value in described.items():
        if isinstance(value, tuple):
            described[key] = list(value)
    return {"kind": type(spec).__name__, **described}


def spec_from_dict(described: Mapping) -> FeatureSpec:
    """Rebuild a spec from :func:`spec_to_dict` output; ``ValueError`` if unknown."""
    described = dict(described)
    kind = _KINDS.get(described.pop("kind", None))
    if kind is None:
        raise ValueError(f"unknown feature kind in {dict(described)!r}")
    names = {f.name for f in fields(kind)}
    unknown = set(described) - names
    if unknown:
        raise ValueError(f"{kind.__name__} has no fields {sorted(unknown)}")
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in described.items()})


# --- encoding helpers ---------------------------------------------------------------------

def _check_positive(spec, *names: str) -> None:
    for name in names:
        if getattr(spec, name) < 1:
            raise ValueError(f"{spec.name}: {name} must be positive, got {getattr(spec, name)}")


def _as_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def _as_float(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _tokens(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return _TOKEN.findall(value.lower())
    return [str(v) for v in value if v is not None and v != ""]


def _padded_buckets(lists: list[list[str]], width: int, num_buckets: int, key: str) -> torch.Tensor:
    lengths = np.fromiter((len(values) for values in lists), dtype=np.int64, count=len(lists))
    flat = bucketize([v for values in lists for v in values], num_buckets, key=key)
    out = np.zeros((len(lists), width), dtype=np.int64)
    rows = np.repeat(np.arange(len(lists)), lengths)
    columns = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, columns] = flat
    return torch.from_numpy(out)


# --- modules ------------------------------------------------------------------------------

class _Embedding(nn.Module):
    def __init__(self, rows: int, dim: int, sparse: bool) -> None:
        super().__init__()
        self.table = nn.Embedding(rows, dim, sparse=sparse)
        nn.init.normal_(self.table.weight, std=0.1)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.table(indices)


class _MeanPool(nn.Module):
    """Mean of the embeddings of the non-zero indices of each row (zeros for an empty row)."""

    def __init__(self, rows: int, dim: int, sparse: bool) -> None:
        super().__init__()
        # padding_idx 0: missing slots take no part in the mean and get no gradient
        self.table = nn.EmbeddingBag(rows, dim, mode="mean", sparse=sparse, padding_idx=0)
        nn.init.normal_(self.table.weight, std=0.1)
        with torch.no_grad():
            self.table.weight[0].zero_()

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.table(indices)


class _RecencyPool(nn.Module):
    """Recency-weighted mean of the embeddings of each row's non-zero indices, which are
    left-aligned oldest first (the newest is the last non-zero one)."""

    def __init__(self, rows: int, dim: int, sparse: bool, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.table = nn.EmbeddingBag(rows, dim, mode="sum", sparse=sparse, padding_idx=0)
        nn.init.normal_(self.table.weight, std=0.1)
        with torch.no_grad():
            self.table.weight[0].zero_()

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        present = indices != 0
        lengths = present.sum(dim=1, keepdim=True)
        age = (lengths - 1 - torch.arange(indices.shape[1])).clamp_min(0)  # 0 for the newest
        weights = torch.exp(-self.decay * age.float()) * present
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return self.table(indices, per_sample_weights=weights)


class _OneHot(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(indices, self.size).float()


class _Bucketize(nn.Module):
    def __init__(self, boundaries: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("boundaries", torch.tensor(boundaries, dtype=torch.float32))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        # slot 0: missing; slot k + 1: k boundaries at or below the value
        slots = torch.bucketize(values.nan_to_num(-math.inf), self.boundaries, right=True) + 1
        slots = torch.where(values.isnan(), torch.zeros_like(slots), slots)
        return nn.functional.one_hot(slots, len(self.boundaries) + 2).float()


class _RunningStandardize(nn.Module):
    """``[(x - mean) / std, missing]`` with mean/variance updated in training mode (Welford)."""

    def __init__(self, log: bool) -> None:
        super().__init__()
        self.log = log
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("m2", torch.zeros((), dtype=torch.float64))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        missing = values.isnan()
        x = values.clamp(min=0).log1p() if self.log else values
        if self.training:
            self._observe(x[~missing].double())
        std = (self.m2 / self.count).sqrt() if self.count > 1 else self.m2.new_ones(())
        z = ((x.double() - self.mean) / std.clamp(min=1e-6)).float()
        return torch.stack([z.masked_fill(missing, 0.0), missing.float()], dim=1)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        n = x.numel()
        if n == 0:
            return
        batch_mean = x.mean()
        total = self.count + n
        delta = batch_mean - self.mean
        self.m2 += ((x - batch_mean) ** 2).sum() + delta ** 2 * self.count * n / total
        self.mean += delta * n / total
        self.count.fill_(total)
