"""The two towers as an online learner: train on clicks as they come, embed, score.

:class:`OnlineLearner` is what the worker (and an offline replay of a stream)
drives, one minibatch at a time. It owns the model, its optimizers, each
user's recent click history (an input of the user tower, and what keeps recall
fresh between updates), and the latest vector of every catalog item it has
embedded (to score a click before training on it: prequential evaluation).
Everything but the item vectors, which are recomputed after a restart, is in
:meth:`OnlineLearner.state_dict`, in tensors and plain containers.

Examples
--------
>>> import numpy as np
>>> from recallstream.model.towers import movielens_config
>>> learner = OnlineLearner(movielens_config(id_buckets=1024, output_dim=8, hidden=(16,)), seed=0)
>>> items = {"1": {"title": "Toy Story", "genres": ["Comedy"]}, "2": {"title": "Heat"}}
>>> learner.embed_items(["1", "2"], items).shape
(2, 8)
>>> learner.hits_at_k(["u1"], ["1"], k=1, users={}).dtype
dtype('bool')
>>> loss = learner.train_batch(["u1", "u2"], ["1", "2"], np.log([0.5, 0.5]), users={}, items=items)
>>> list(learner.histories["u1"])
['1']
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from recallstream.model.hashing import stable_hash
from recallstream.model.towers import HISTORY, TowerConfig, TwoTower, movielens_config
from recallstream.model.train_step import Batch, Optimizers, TrainConfig, train_step

STATE_VERSION = 1
# Online default: hashed id tables of 2^15 rows keep the checkpoint near 100 MB
# (weights plus SparseAdam moments) while leaving few collisions in a catalog of thousands.
ONLINE_ID_BUCKETS = 1 << 15


def default_tower_config() -> TowerConfig:
    """The towers the worker trains unless told otherwise (MovieLens-style features)."""
    return movielens_config(id_buckets=ONLINE_ID_BUCKETS)


class OnlineLearner:
    """Incremental training of a :class:`~recallstream.model.towers.TwoTower` (see the module docstring).

    Parameters
    ----------
    tower_config : TowerConfig, optional
        Default :func:`default_tower_config`.
    train_config : TrainConfig, optional
        Loss and optimizer settings of each step (default ``TrainConfig()``).
    seed : int
        Seeds the weight initialisation.

    Attributes
    ----------
    model : TwoTower
    histories : dict of str to list of str
        Each user's most recent clicked items, oldest first.
    """

    def __init__(self, tower_config: TowerConfig | None = None,
                 train_config: TrainConfig | None = None, *, seed: int = 2020) -> None:
        torch.manual_seed(seed)
        self.model = TwoTower(tower_config or default_tower_config())
        self.train_config = train_config or TrainConfig()
        self.optimizers = Optimizers(self.model, self.train_config)
        self.history_length = next((spec.max_length for spec in self.model.config.user_features
                                    if spec.name == HISTORY), 0)
        self.histories: dict[str, deque[str]] = {}
        self.item_vectors = ItemVectors(self.dim)

    @property
    def dim(self) -> int:
        return self.model.config.output_dim

    def train_batch(self, user_ids: Sequence[str], item_ids: Sequence[str], log_q: np.ndarray,
                    users: Mapping[str, Mapping], items: Mapping[str, Mapping]) -> float:
        """One optimizer step on the clicks ``(user_ids[i], item_ids[i])``; returns the loss.

        ``log_q[i]`` is the log probability of ``item_ids[i]`` being an in-batch
        candidate (the popularity estimate). Each user's history is the one from
        before the batch, and grows by the batch's clicks afterwards.
        """
        batch = Batch(
            user_inputs=self.model.encode_users(user_ids, users, self._histories_of(user_ids)),
            item_inputs=self.model.encode_items(item_ids, items),
            item_ids=torch.from_numpy(stable_hash(item_ids, key="item_id").view(np.int64)),
            log_q=torch.as_tensor(np.asarray(log_q), dtype=torch.float32))
        loss = train_step(self.model, self.optimizers, batch, self.train_config)
        for user_id, item_id in zip(user_ids, item_ids):
            history = self.histories.get(user_id)
            if history is None:
                history = self.histories[user_id] = deque(maxlen=self.history_length)
            history.append(item_id)
        return loss

    def embed_items(self, item_ids: Sequence[str], items: Mapping[str, Mapping]) -> np.ndarray:
        """Current vectors ``[N, dim]`` of the items (remembered for :meth:`hits_at_k`)."""
        vectors = self.model.embed_items(list(item_ids), items).numpy()
        self.item_vectors.put(item_ids, vectors)
        return vectors

    def embed_users(self, user_ids: Sequence[str], users: Mapping[str, Mapping]) -> np.ndarray:
        """Current vectors ``[N, dim]`` of the users, with their recent histories."""
        return self.model.embed_users(list(user_ids), users, self._histories_of(user_ids)).numpy()

    def hits_at_k(self, user_ids: Sequence[str], item_ids: Sequence[str], k: int,
                  users: Mapping[str, Mapping]) -> np.ndarray:
        """Whether each clicked item is among the user's top ``k`` of the embedded catalog.

        Call it before training on the clicks (test-then-train). Items in the
        user's recent history are not candidates, as a serving filter would drop them.
        """
        user_vectors = self.embed_users(user_ids, users)
        histories = self._histories_of(user_ids)
        return self.item_vectors.in_top_k(user_vectors, item_ids, k, exclude=histories)

    def forget_items(self, item_ids: Sequence[str]) -> None:
        """Retired items are no longer candidates."""
        self.item_vectors.remove(item_ids)

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION,
                "tower_config": self.model.config.to_dict(),
                "train_config": self.train_config.to_dict(),
                "model": self.model.state_dict(),
                "optimizers": self.optimizers.state_dict(),
                "histories": {user: list(items) for user, items in self.histories.items()},
                "rng": torch.get_rng_state()}

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"learner state version {state.get('version')!r} is not {STATE_VERSION}")
        if state["tower_config"] != self.model.config.to_dict():
            raise ValueError("the checkpoint's towers differ from this learner's configuration")
        self.model.load_state_dict(state["model"])
        self.optimizers.load_state_dict(state["optimizers"])
        self.histories = {user: deque(items, maxlen=self.history_length)
                          for user, items in state["histories"].items()}
        torch.set_rng_state(state["rng"])

    def _histories_of(self, user_ids: Sequence[str]) -> list[list[str]]:
        return [list(self.histories.get(user_id, ())) for user_id in user_ids]


class ItemVectors:
    """The latest vector of each item, in one growable matrix (for exact top-k scoring).

    Examples
    --------
    >>> cache = ItemVectors(dim=2)
    >>> cache.put(["a", "b", "c"], np.array([[1.0, 0.0], [0.7, 0.7], [0.0, 1.0]]))
    >>> cache.in_top_k(np.array([[1.0, 0.1], [1.0, 0.1]]), ["b", "b"], k=1, exclude=[[], ["a"]]).tolist()
    [False, True]
    >>> cache.remove(["a"]); len(cache)
    2
    """

    def __init__(self, dim: int) -> None:
        self._row: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._matrix = np.zeros((16, dim), dtype=np.float32)
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self._row)

    def put(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        for item_id, vector in zip(item_ids, vectors):
            row = self._row.get(item_id)
            if row is None:
                row = self._free.pop() if self._free else self._append_row()
                self._row[item_id] = row
                self._ids[row] = item_id
            self._matrix[row] = vector

    def remove(self, item_ids: Sequence[str]) -> None:
        for item_id in item_ids:
            row = self._row.pop(item_id, None)
            if row is not None:
                self._ids[row] = None
                self._free.append(row)

    def in_top_k(self, user_vectors: np.ndarray, item_ids: Sequence[str], k: int,
                 exclude: Sequence[Sequence[str]]) -> np.ndarray:
        """Row i: is ``item_ids[i]`` among the ``k`` best items for ``user_vectors[i]``?

        The items of ``exclude[i]`` (other than the target) are not candidates.
        """
        targets = np.array([self._row.get(item_id, -1) for item_id in item_ids], dtype=np.int64)
        known = targets >= 0
        if not known.any():
            return known
        scores = user_vectors @ self._matrix[:len(self._ids)].T
        scores[:, [row for row, item in enumerate(self._ids) if item is None]] = -np.inf
        rows = np.arange(len(targets))
        target_scores = scores[rows, np.maximum(targets, 0)]
        excluded = [(i, self._row[e]) for i, items in enumerate(exclude) for e in items if e in self._row]
        if excluded:
            at = np.array(excluded, dtype=np.int64)
            scores[at[:, 0], at[:, 1]] = -np.inf
        # rank of the target = how many candidates score strictly higher
        better = (scores > target_scores[:, None]).sum(axis=1)
        return known & (better < k)

    def _append_row(self) -> int:
        if len(self._ids) == len(self._matrix):
            grown = np.zeros((2 * len(self._matrix), self._matrix.shape[1]), dtype=np.float32)
            grown[:len(self._matrix)] = self._matrix
            self._matrix = grown
        self._ids.append(None)
        return len(self._ids) - 1
