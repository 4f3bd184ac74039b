"""Offline training of the two towers on a fixed set of interactions.

:class:`OfflineTrainer` encodes the catalog, the users and each user's history
once, then runs epochs of shuffled minibatches through the same
:func:`recallstream.model.train_step.train_step` the online worker calls. It takes plain
arrays and dicts (no Kafka, no dataset reader): the caller passes the
interactions, the user and item feature dicts and the catalog.

The user's history feature is the list of the user's *training* items (the
newest ``History.max_length`` by timestamp). While training on a pair, the
pair's own item is removed from the user's history, so the model never sees
the label among its inputs; at evaluation the history is the training items
only, never the held-out ones.

logQ: an item's sampling probability as an in-batch candidate is its share of
the training interactions.

With ``TrainConfig(loss="catalog_softmax")`` a step takes whole users instead
of pairs and scores them against every catalog item
(:func:`recallstream.model.train_step.catalog_step`); nothing is sampled, so logQ is unused.

Examples
--------
>>> import numpy as np
>>> from recallstream.model.features import Categorical
>>> from recallstream.model.towers import TowerConfig
>>> from recallstream.model.train_step import TrainConfig
>>> config = TowerConfig((Categorical("user_id", 64, 8),), (Categorical("item_id", 64, 8),),
...                      hidden=(16,), output_dim=8)
>>> data = Interactions(np.array(["u1", "u2", "u1"]), np.array(["a", "b", "b"]), np.array([1, 2, 3]))
>>> trainer = OfflineTrainer(config, TrainConfig(), users={}, items={}, catalog=["a", "b", "c"],
...                          settings=OfflineSettings(batch_size=2, seed=0, progress=False))
>>> trainer.fit_history(data)
>>> losses = [trainer.train_epoch(data) for _ in range(2)]
>>> trainer.score_users(["u1"]).shape
torch.Size([1, 3])
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recallstream.model.evaluation import (TEST, TRAIN, VALID, mask_scores, popularity_scores, rank_top_k,
                              recbole_split, tfrs_split, top_k_share, topk_metrics)
from recallstream.model.features import History
from recallstream.model.towers import HISTORY, ITEM_ID, USER_ID, TwoTower, TowerConfig
from recallstream.model.train_step import Batch, CatalogBatch, Optimizers, TrainConfig, catalog_step, train_step

__all__ = ["Interactions", "OfflineSettings", "OfflineTrainer", "run_recbole_protocol",
           "run_tfrs_protocol", "seed_everything"]


@dataclass(frozen=True)
class Interactions:
    """Positive (user, item) interactions with their timestamps, as parallel arrays.

    Examples
    --------
    >>> data = Interactions(np.array(["1", "2"]), np.array(["10", "11"]), np.array([5, 3]))
    >>> len(data), len(data.subset(np.array([1])))
    (2, 1)
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.user_ids)
        if len(self.item_ids) != n or len(self.timestamps) != n:
            raise ValueError("user_ids, item_ids and timestamps must have one length")

    def __len__(self) -> int:
        return len(self.user_ids)

    def subset(self, index: np.ndarray) -> "Interactions":
        return Interactions(self.user_ids[index], self.item_ids[index], self.timestamps[index])


@dataclass(frozen=True)
class OfflineSettings:
    """Loop settings: batch size, seed, threads, progress bar, history dropout.

    ``history_dropout`` hides each history item of a training row with this
    probability (a denoising input, as in Mult-DAE), so the towers learn to
    recover a user's items from part of their history instead of memorising it.

    ``batch_size`` counts training pairs per step; with the ``catalog_softmax``
    loss a step takes ``users_per_step`` users with all their pairs instead
    (``None``: every user, one step per epoch).
    """

    batch_size: int = 1024
    seed: int = 2020
    num_threads: int = 2
    progress: bool = True
    history_dropout: float = 0.0
    users_per_step: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2, got {self.batch_size}")
        if self.users_per_step is not None and self.users_per_step < 1:
            raise ValueError(f"users_per_step must be at least 1, got {self.users_per_step}")
        if not 0.0 <= self.history_dropout < 1.0:
            raise ValueError(f"history_dropout must be in [0, 1), got {self.history_dropout}")


def seed_everything(seed: int, num_threads: int | None = None) -> None:
    """Seed Python, NumPy and torch (and fix torch's thread count) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
    if num_threads:
        torch.set_num_threads(num_threads)


class OfflineTrainer:
    """Trains a fresh :class:`TwoTower` on interactions over a fixed catalog.

    Parameters
    ----------
    model_config, train_config
        The model and its loss/optimizer settings.
    users, items
        Feature dicts by id (missing ids get only their id feature).
    catalog
        Every item id that can be recommended (the ranking's columns).
    settings
        Batch size, seed, threads, progress bar.
    """

    def __init__(self, model_config: TowerConfig, train_config: TrainConfig, *,
                 users: Mapping[str, Mapping], items: Mapping[str, Mapping],
                 catalog: Sequence[str], settings: OfflineSettings = OfflineSettings()) -> None:
        seed_everything(settings.seed, settings.num_threads)
        self.settings = settings
        self.train_config = train_config
        self.model = TwoTower(model_config)
        self.optimizers = Optimizers(self.model, train_config)
        self.users, self.items = users, items
        self.catalog = np.asarray(list(catalog), dtype=str)
        self.item_code = {item_id: code for code, item_id in enumerate(self.catalog.tolist())}
        if len(self.item_code) != len(self.catalog):
            raise ValueError("catalog ids must be distinct")
        self.item_inputs = self.model.encode_items(self.catalog.tolist(), items)
        self.categories = torch.from_numpy(_primary_categories(self.catalog, items))
        self._rng = np.random.default_rng(settings.seed)
        self._torch_rng = torch.Generator().manual_seed(settings.seed)
        self._user_row: dict[str, int] = {}
        self._user_inputs: dict[str, torch.Tensor] = {}
        self._history_codes = torch.zeros(0, 0, dtype=torch.long)
        self._log_q = torch.zeros(len(self.catalog))
        self._fitted: tuple[Interactions, np.ndarray, np.ndarray] | None = None
        self.epochs_trained = 0

    # --- data preparation -----------------------------------------------------------------

    def fit_history(self, train: Interactions) -> None:
        """Encode the users of ``train`` with their training histories and set logQ from ``train``.

        Call it once per training set, before :meth:`train_epoch`.
        """
        user_list = sorted(set(train.user_ids.tolist()) | set(self.users))
        self._user_row = {user_id: row for row, user_id in enumerate(user_list)}
        self._fitted = None  # the user rows just changed
        rows, codes = self._encode_pairs(train)
        self._fitted = (train, rows, codes)  # train_epoch(train) reuses the encoding
        self._user_inputs = self.model.encode_users(user_list, self.users)
        self._history_codes = self._encode_histories(rows, codes, train.timestamps, len(user_list))
        counts = np.bincount(codes, minlength=len(self.catalog)).astype(np.float64)
        with np.errstate(divide="ignore"):
            self._log_q = torch.from_numpy(np.log(counts / max(counts.sum(), 1.0))).float()

    def _encode_histories(self, rows, codes, timestamps, num_users: int) -> torch.Tensor:
        """``[users, N]`` catalog codes of each user's newest N training items, -1 padded."""
        spec = self._history_spec()
        width = spec.max_length if spec is not None else 1
        history = np.full((num_users, width), -1, dtype=np.int64)
        if spec is None or len(rows) == 0:
            return torch.from_numpy(history)
        order = np.lexsort((timestamps, rows))  # by user, oldest first
        sorted_rows, sorted_codes = rows[order], codes[order]
        starts = np.searchsorted(sorted_rows, np.arange(num_users))
        ends = np.searchsorted(sorted_rows, np.arange(num_users), side="right")
        for row, (start, end) in enumerate(zip(starts, ends)):
            newest = sorted_codes[max(start, end - width):end]
            history[row, :len(newest)] = newest
        return torch.from_numpy(history)

    def _history_spec(self) -> History | None:
        return next((s for s in self.model.config.user_features if isinstance(s, History)), None)

    def _encode_pairs(self, data: Interactions) -> tuple[np.ndarray, np.ndarray]:
        """User rows and catalog codes of ``data``'s pairs (the fitted set's are kept)."""
        if self._fitted is not None and data is self._fitted[0]:
            return self._fitted[1], self._fitted[2]
        rows = np.fromiter((self._user_row[u] for u in data.user_ids.tolist()), dtype=np.int64,
                           count=len(data))
        return rows, self._item_codes(data.item_ids)

    def _item_codes(self, item_ids: np.ndarray) -> np.ndarray:
        try:
            return np.fromiter((self.item_code[i] for i in item_ids.tolist()), dtype=np.int64,
                               count=len(item_ids))
        except KeyError as error:
            raise ValueError(f"item {error.args[0]!r} is not in the catalog") from None

    # --- batches --------------------------------------------------------------------------

    def user_inputs(self, rows: torch.Tensor, exclude_codes: torch.Tensor | None = None,
                    history_dropout: float = 0.0) -> dict:
        """Encoded inputs of user ``rows``; ``exclude_codes`` removes each row's item from its
        history, ``history_dropout`` hides each other history item with that probability."""
        inputs = {name: tensor[rows] for name, tensor in self._user_inputs.items()}
        spec = self._history_spec()
        if spec is not None:
            codes = self._history_codes[rows]
            if exclude_codes is not None:
                codes = codes.masked_fill(codes == exclude_codes[:, None], -1)
            if history_dropout > 0:
                hidden = torch.rand(codes.shape, generator=self._torch_rng) < history_dropout
                codes = codes.masked_fill(hidden, -1)
            buckets = self.item_inputs[ITEM_ID] if ITEM_ID in self.item_inputs else None
            inputs[spec.name] = self._history_buckets(spec, codes, buckets)
        return inputs

    def _history_buckets(self, spec: History, codes: torch.Tensor, buckets) -> torch.Tensor:
        if buckets is None or not self._same_buckets(spec):
            buckets = spec.encode([[item_id] for item_id in self.catalog.tolist()])[:, -1]
        padded = torch.cat([torch.zeros(1, dtype=torch.long), buckets])
        return padded[codes + 1]  # code -1 (padding or excluded) -> bucket 0

    def _same_buckets(self, spec: History) -> bool:
        item_id = self.model.item_id_feature
        return (item_id is not None and item_id.num_buckets == spec.num_buckets
                and spec.hash_key == item_id.name)

    def make_batch(self, train_rows: np.ndarray, user_rows: np.ndarray, codes: np.ndarray) -> Batch:
        """The :class:`Batch` of training pairs ``(user_rows[k], codes[k])``."""
        users = torch.from_numpy(user_rows[train_rows])
        items = torch.from_numpy(codes[train_rows])
        return Batch(
            user_inputs=self.user_inputs(users, exclude_codes=items,
                                         history_dropout=self.settings.history_dropout),
            item_inputs={name: tensor[items] for name, tensor in self.item_inputs.items()},
            item_ids=items, log_q=self._log_q[items], categories=self.categories[items])

    # --- training and scoring -------------------------------------------------------------

    def make_catalog_batch(self, users: np.ndarray, user_rows: np.ndarray,
                           codes: np.ndarray) -> CatalogBatch:
        """The :class:`CatalogBatch` of user rows ``users`` with all their training pairs."""
        position = np.full(len(self._user_row), -1, dtype=np.int64)
        position[users] = np.arange(len(users))
        pairs = np.flatnonzero(position[user_rows] >= 0)
        # the history may hold the positives themselves: a denoising input, as in Mult-DAE
        return CatalogBatch(
            user_inputs=self.user_inputs(torch.from_numpy(users),
                                         history_dropout=self.settings.history_dropout),
            catalog_inputs=self.item_inputs,
            rows=torch.from_numpy(position[user_rows[pairs]]),
            columns=torch.from_numpy(codes[pairs]))

    def train_epoch(self, train: Interactions) -> float:
        """One shuffled pass over ``train``; returns the mean loss."""
        user_rows, codes = self._encode_pairs(train)
        if self.train_config.loss == "catalog_softmax":
            users = self._rng.permutation(np.unique(user_rows))
            size = self.settings.users_per_step or max(len(users), 1)
            batches = (self.make_catalog_batch(users[s:s + size], user_rows, codes)
                       for s in range(0, len(users), size))
            return self._run_steps(batches, -(-len(users) // size), catalog_step)
        order = self._rng.permutation(len(train))
        size = self.settings.batch_size
        # a last batch of one row has no in-batch negative: merge it into the previous batch
        starts = [s for s in range(0, len(order), size) if len(order) - s >= 2 or s == 0]
        ends = starts[1:] + [len(order)]
        batches = (self.make_batch(order[start:end], user_rows, codes)
                   for start, end in zip(starts, ends))
        return self._run_steps(batches, len(starts), train_step)

    def _run_steps(self, batches, count: int, step) -> float:
        """Apply ``step`` to each batch under a progress bar; the epoch's mean loss."""
        from tqdm import tqdm

        # a one-step epoch needs no bar of its own (the caller's epoch bar shows progress)
        bar = tqdm(batches, total=count, desc=f"epoch {self.epochs_trained + 1}", unit="batch",
                   disable=not self.settings.progress or count <= 1, leave=False)
        total, steps = 0.0, 0
        for batch in bar:
            total += step(self.model, self.optimizers, batch, self.train_config)
            steps += 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
        self.epochs_trained += 1
        return total / max(steps, 1)

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """``[catalog, D]`` vectors of every catalog item (eval mode)."""
        return self._eval(lambda: self.model.item_vectors(self.item_inputs))

    @torch.no_grad()
    def user_vectors(self, user_ids: Sequence[str]) -> torch.Tensor:
        """``[U, D]`` vectors of users with their full training histories (eval mode)."""
        rows = torch.tensor([self._user_row[u] for u in user_ids], dtype=torch.long)
        return self._eval(lambda: self.model.user_vectors(self.user_inputs(rows)))

    @torch.no_grad()
    def score_users(self, user_ids: Sequence[str]) -> torch.Tensor:
        """``[U, catalog]`` similarity of each user to every catalog item."""
        return self.user_vectors(user_ids) @ self.item_vectors().T

    def _eval(self, compute):
        self.model.eval()
        try:
            return compute()
        finally:
            self.model.train()

    def state(self) -> dict:
        """Model weights (feature statistics included) and optimizer states."""
        return {"model": self.model.state_dict(), "optimizers": self.optimizers.state_dict()}

    def load_state(self, state: Mapping) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizers.load_state_dict(state["optimizers"])


def _primary_categories(catalog: np.ndarray, items: Mapping[str, Mapping]) -> np.ndarray:
    """Integer code of each item's first genre (0 when it has none), for DAT's alignment loss."""
    names: dict[str, int] = {}
    codes = np.zeros(len(catalog), dtype=np.int64)
    for row, item_id in enumerate(catalog.tolist()):
        genres = items.get(item_id, {}).get("genres") or []
        if genres:
            codes[row] = names.setdefault(str(genres[0]), len(names) + 1)
    return codes


# --- the two offline protocols -------------------------------------------------------------

def run_recbole_protocol(data: Interactions, *, users: Mapping[str, Mapping],
                         items: Mapping[str, Mapping], catalog: Sequence[str],
                         model_config: TowerConfig, train_config: TrainConfig,
                         settings: OfflineSettings = OfflineSettings(), max_epochs: int = 40,
                         patience: int = 5, k: int = 10, split_seed: int = 2020) -> dict:
    """RecBole's protocol (see :mod:`recallstream.model.evaluation`): per-user 8:1:1 split, the epoch with the
    best validation MRR@k, full ranking with seen items masked; plus the most-popular baseline.

    Returns one flat dict: test metrics, ``popularity_`` metrics, ``valid_`` metrics of the
    chosen epoch, and the settings used.
    """
    if max_epochs < 1 or patience < 0:
        raise ValueError(f"need max_epochs >= 1 and patience >= 0, got {max_epochs}, {patience}")
    user_list, user_codes = np.unique(data.user_ids, return_inverse=True)
    parts = recbole_split(user_codes, seed=split_seed)
    trainer = OfflineTrainer(model_config, train_config, users=users, items=items,
                             catalog=catalog, settings=settings)
    item_codes = trainer._item_codes(data.item_ids)
    train = data.subset(parts == TRAIN)
    trainer.fit_history(train)
    relevant = {part: _relevant_sets(user_codes[parts == part], item_codes[parts == part],
                                     len(user_list)) for part in (VALID, TEST)}
    seen = {VALID: parts == TRAIN, TEST: parts != TEST}

    def ranked(scores: torch.Tensor, part: int) -> np.ndarray:
        mask = seen[part]
        return rank_top_k(mask_scores(scores, user_codes[mask], item_codes[mask]), k)

    best: tuple[float, int, dict, dict] | None = None
    waited = 0
    from tqdm import tqdm

    # one bar over the epochs (an epoch may be a single step), with the running best
    epochs = tqdm(range(1, max_epochs + 1), desc="recbole", unit="epoch",
                  disable=not settings.progress)
    for epoch in epochs:
        trainer.train_epoch(train)
        valid = topk_metrics(ranked(trainer.score_users(user_list.tolist()), VALID),
                             relevant[VALID], k)
        if best is None or valid[f"mrr@{k}"] > best[0]:
            best = (valid[f"mrr@{k}"], epoch, valid, copy.deepcopy(trainer.model.state_dict()))
            waited = 0
            epochs.set_postfix(best_valid_mrr=best[0], best_epoch=epoch)
        else:
            waited += 1
            if waited >= patience:
                break
    _, best_epoch, valid, weights = best
    trainer.model.load_state_dict(weights)
    test = topk_metrics(ranked(trainer.score_users(user_list.tolist()), TEST), relevant[TEST], k)
    popular = torch.from_numpy(popularity_scores(item_codes[parts == TRAIN], len(trainer.catalog)))
    popularity = topk_metrics(ranked(popular.expand(len(user_list), -1), TEST), relevant[TEST], k)
    return {
        **{key: value for key, value in test.items() if key != "users"},
        **{f"popularity_{key}": value for key, value in popularity.items() if key != "users"},
        **{f"valid_{key}": value for key, value in valid.items() if key != "users"},
        "settings": {
            "protocol": "recbole", "split": "per-user shuffle, 8:1:1", "split_seed": split_seed,
            "test_users": test["users"], "items_ranked": len(trainer.catalog),
            "masked_at_test": "train+valid items", "best_epoch": best_epoch,
            "epochs_run": trainer.epochs_trained, "max_epochs": max_epochs, "patience": patience,
            "early_stopping_metric": f"valid mrr@{k}",
            "model": model_config.to_dict(), "train": train_config.to_dict(),
            "batch_size": settings.batch_size, "seed": settings.seed,
            "history_dropout": settings.history_dropout,
        },
    }


def run_tfrs_protocol(data: Interactions, *, users: Mapping[str, Mapping],
                      items: Mapping[str, Mapping], catalog: Sequence[str],
                      model_config: TowerConfig, train_config: TrainConfig,
                      settings: OfflineSettings = OfflineSettings(), epochs: int = 10,
                      split_seed: int = 42, train_size: int = 80_000, test_size: int = 20_000,
                      ks: Sequence[int] = (1, 5, 10, 50, 100)) -> dict:
    """The TFRS tutorial's protocol: shuffle (seed 42), first 80,000 train, next 20,000 test, share
    of test interactions whose item is in the user's top K of all items, nothing masked. The
    protocol has no validation set, so the number of epochs is fixed in advance.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    train_index, test_index = tfrs_split(len(data), seed=split_seed, train_size=train_size,
                                         test_size=test_size)
    trainer = OfflineTrainer(model_config, train_config, users=users, items=items,
                             catalog=catalog, settings=settings)
    train, test = data.subset(train_index), data.subset(test_index)
    trainer.fit_history(train)
    for _ in range(epochs):
        trainer.train_epoch(train)
    test_users, test_rows = np.unique(test.user_ids, return_inverse=True)
    test_codes = trainer._item_codes(test.item_ids)
    depth = max(ks)
    model_top = rank_top_k(trainer.score_users(test_users.tolist()), depth)
    popular = torch.from_numpy(popularity_scores(trainer._item_codes(train.item_ids),
                                                 len(trainer.catalog)))
    popular_top = rank_top_k(popular[None, :], depth)
    return {
        **top_k_share(model_top, test_rows, test_codes, ks),
        **{f"popularity_{key}": value for key, value in top_k_share(
            popular_top, np.zeros(len(test_codes), dtype=np.int64), test_codes, ks).items()},
        "settings": {
            "protocol": "tfrs", "split": f"shuffle, first {train_size} train, next {test_size} test",
            "split_seed": split_seed, "items_ranked": len(trainer.catalog), "masked": "nothing",
            "epochs": epochs, "model": model_config.to_dict(), "train": train_config.to_dict(),
            "batch_size": settings.batch_size, "seed": settings.seed,
            "history_dropout": settings.history_dropout,
        },
    }


def _relevant_sets(user_codes: np.ndarray, item_codes: np.ndarray, num_users: int) -> list[set]:
    relevant: list[set] = [set() for _ in range(num_users)]
    for user, item in zip(user_codes.tolist(), item_codes.tolist()):
        relevant[user].add(item)
    return relevant
