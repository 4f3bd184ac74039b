"""The two towers as an online learner: train on clicks as they come, embed.

:class:`OnlineLearner` is what the worker (and an offline replay of a stream)
drives, one minibatch at a time. It owns the model, its optimizers, the
streaming popularity estimate of the items (for the logQ correction of the
in-batch softmax) and each user's recent click history (an input of the user
tower, and what keeps recall fresh between updates). All of it is in
:meth:`OnlineLearner.state_dict`, in tensors, numpy arrays and plain containers.
Scoring clicks before training on them is
:class:`recallstream.model.prequential.PrequentialMonitor`'s.

Examples
--------
>>> from recallstream.model.towers import movielens_config
>>> learner = OnlineLearner(movielens_config(id_buckets=1024, output_dim=8, hidden=(16,)), seed=0)
>>> items = {"1": {"title": "Toy Story", "genres": ["Comedy"]}, "2": {"title": "Heat"}}
>>> learner.embed_items(["1", "2"], items).shape
(2, 8)
>>> loss = learner.train_batch(["u1", "u2"], ["1", "2"], users={}, items=items)
>>> list(learner.histories["u1"]), learner.estimator.step
(['1'], 1)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from recallstream.model.hashing import stable_hash
from recallstream.model.towers import HISTORY, TowerConfig, TwoTower, movielens_config
from recallstream.model.train_step import Batch, Optimizers, TrainConfig, train_step
from recallstream.streaming.popularity import FrequencyEstimator

# 2: the popularity estimate joined the learner's state (it was the worker's).
STATE_VERSION = 2
# Online default: hashed id tables of 2^15 rows keep the checkpoint near 100 MB
# (weights plus SparseAdam moments) while leaving few collisions in a catalog of thousands.
ONLINE_ID_BUCKETS = 1 << 15


def default_tower_config() -> TowerConfig:
    """The towers the worker trains unless told otherwise (MovieLens-style features)."""
    return movielens_config(id_buckets=ONLINE_ID_BUCKETS)


def popularity_estimator(seed: int) -> FrequencyEstimator:
    """The streaming estimate of each item's chance to be in a batch (the logQ of the softmax)."""
    # 2 x 2^17 buckets: few collisions for catalogs up to ~100k items, 4 MB of checkpoint
    return FrequencyEstimator(num_buckets=1 << 17, alpha=0.05, num_hashes=2, seed=seed)


class OnlineLearner:
    """Incremental training of a :class:`~recallstream.model.towers.TwoTower` (see the module docstring).

    Parameters
    ----------
    tower_config : TowerConfig, optional
        Default :func:`default_tower_config`.
    train_config : TrainConfig, optional
        Loss and optimizer settings of each step (default ``TrainConfig()``).
    seed : int
        Seeds the weight initialisation and the popularity estimate's hashing.

    Attributes
    ----------
    model : TwoTower
    estimator : FrequencyEstimator
        How often each item is in a batch (:func:`popularity_estimator`).
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
        self.estimator = popularity_estimator(seed)

    @property
    def dim(self) -> int:
        return self.model.config.output_dim

    def train_batch(self, user_ids: Sequence[str], item_ids: Sequence[str],
                    users: Mapping[str, Mapping], items: Mapping[str, Mapping]) -> float:
        """One optimizer step on the clicks ``(user_ids[i], item_ids[i])``; returns the loss.

        The popularity estimate counts the batch first; the log probability of
        each item being an in-batch candidate is its logQ correction. Each
        user's history is the one from before the batch, and grows by the
        batch's clicks afterwards.
        """
        self.estimator.update(item_ids)
        log_q = np.log(self.estimator.probability(item_ids))
        batch = Batch(
            user_inputs=self.model.encode_users(user_ids, users, self.histories_of(user_ids)),
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
        """Current vectors ``[N, dim]`` of the items."""
        return self.model.embed_items(list(item_ids), items).numpy()

    def embed_users(self, user_ids: Sequence[str], users: Mapping[str, Mapping]) -> np.ndarray:
        """Current vectors ``[N, dim]`` of the users, with their recent histories."""
        return self.model.embed_users(list(user_ids), users, self.histories_of(user_ids)).numpy()

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION,
                "tower_config": self.model.config.to_dict(),
                "train_config": self.train_config.to_dict(),
                "model": self.model.state_dict(),
                "optimizers": self.optimizers.state_dict(),
                "estimator": self.estimator.state_dict(),
                "histories": {user: list(items) for user, items in self.histories.items()},
                "rng": torch.get_rng_state()}

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"learner state version {state.get('version')!r} is not {STATE_VERSION}")
        if state["tower_config"] != self.model.config.to_dict():
            raise ValueError("the checkpoint's towers differ from this learner's configuration")
        self.model.load_state_dict(state["model"])
        self.optimizers.load_state_dict(state["optimizers"])
        self.estimator = FrequencyEstimator.from_state_dict(state["estimator"])  # seed included
        self.histories = {user: deque(items, maxlen=self.history_length)
                          for user, items in state["histories"].items()}
        torch.set_rng_state(state["rng"])

    def histories_of(self, user_ids: Sequence[str]) -> list[list[str]]:
        """Each user's recent clicked items, oldest first (empty for a new user)."""
        return [list(self.histories.get(user_id, ())) for user_id in user_ids]

