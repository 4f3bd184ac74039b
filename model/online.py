"""The two towers as an online learner: train on clicks as they come, embed.

:class:`OnlineLearner` is what the worker and the stream evaluation
(:mod:`recallstream.model.stream_eval`) drive, one minibatch at a time. It owns
the model, its optimizers, the streaming popularity estimate of the items (for
the logQ correction of the sampled softmax) and each user's recent click
history (an input of the user tower, and what keeps recall fresh between
updates). All of it is in :meth:`OnlineLearner.state_dict`, in tensors, numpy
arrays and plain containers. Scoring clicks before training on them is
:class:`recallstream.model.prequential.PrequentialMonitor`'s.

Each step is a sampled softmax over the batch's clicked items plus
``uniform_negatives`` items drawn uniformly from the known catalog (mixed
negative sampling: in a time-ordered batch most rows belong to a few users, so
in-batch negatives alone are few and all popular). Every candidate's logQ is
the log of its expected number of copies among the candidates,
``n * share + uniform_negatives / catalog size``, with ``share`` the item's
estimated share of the click stream. Within a batch each click sees its user's
history as it stands just before that click (earlier clicks of the batch
included), for training as for scoring.

Examples
--------
>>> learner = OnlineLearner(stream_tower_config(id_buckets=1024, dim=8), seed=0)
>>> items = {"1": {"title": "Toy Story", "genres": ["Comedy"]}, "2": {"title": "Heat"}}
>>> learner.embed_items(["1", "2"], items).shape
(2, 8)
>>> learner.prefix_histories(["u1", "u1"], ["1", "2"])  # what each click may see
[[], ['1']]
>>> loss = learner.train_batch(["u1", "u1"], ["1", "2"], users={}, items=items)
>>> list(learner.histories["u1"]), learner.estimator.step
(['1', '2'], 2)
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from recallstream.model.features import Categorical, History
from recallstream.model.hashing import stable_hash
from recallstream.model.towers import HISTORY, ITEM_ID, TowerConfig, TwoTower
from recallstream.model.train_step import Batch, Optimizers, TrainConfig, train_step
from recallstream.streaming.popularity import FrequencyEstimator

__all__ = ["OnlineLearner", "default_tower_config", "popularity_estimator", "stream_tower_config",
           "stream_train_config"]

# 3: per-click popularity estimate, uniform negatives, prefix histories.
STATE_VERSION = 3
# Online default: hashed id tables of 2^15 rows keep the checkpoint small while leaving
# few collisions in a catalog of thousands.
ONLINE_ID_BUCKETS = 1 << 15
# Measured on the MovieLens-100K stream (README, "Stream quality"): the user is the
# recency-weighted mean of the last 50 items' input embeddings, temperature 0.2.
STREAM_HISTORY_LENGTH = 50
STREAM_HISTORY_DECAY = 0.05
STREAM_TEMPERATURE = 0.2
UNIFORM_NEGATIVES = 512


def stream_tower_config(*, id_buckets: int = ONLINE_ID_BUCKETS, dim: int = 64,
                        history_length: int = STREAM_HISTORY_LENGTH,
                        decay: float = STREAM_HISTORY_DECAY) -> TowerConfig:
    """The towers the worker trains: a user is its recent history, an item its id.

    User vector: the normalised recency-weighted mean of the input embeddings of
    the user's last ``history_length`` clicked items; item vector: the normalised
    output embedding of its id. No MLP: with a history per user there is nothing
    for one to learn that the embeddings do not (the offline ablation agrees).

    Examples
    --------
    >>> config = stream_tower_config(id_buckets=64, dim=4)
    >>> [s.name for s in config.user_features], [s.name for s in config.item_features]
    (['history'], ['item_id'])
    """
    return TowerConfig(
        user_features=(History(HISTORY, id_buckets, dim, max_length=history_length,
                               hash_key=ITEM_ID, decay=decay),),
        item_features=(Categorical(ITEM_ID, id_buckets, dim),),
        hidden=None, output_dim=dim)


def stream_train_config(*, temperature: float = STREAM_TEMPERATURE, use_log_q: bool = True) -> TrainConfig:
    """The worker's step: sampled softmax, logQ, accidental hits and same-user positives removed."""
    return TrainConfig(loss="softmax", temperature=temperature, use_log_q=use_log_q,
                       remove_accidental_hits=True, sparse_lr=0.01, dense_lr=0.001)


def default_tower_config() -> TowerConfig:
    """The towers the worker trains unless told otherwise (:func:`stream_tower_config`)."""
    return stream_tower_config()


def popularity_estimator(seed: int) -> FrequencyEstimator:
    """The streaming estimate of each item's share of the clicks (the logQ of the softmax)."""
    # 2 x 2^17 buckets: few collisions for catalogs up to ~100k items, 4 MB of checkpoint;
    # alpha 0.01 per click: a gap average over the last ~100 sightings of the item
    return FrequencyEstimator(num_buckets=1 << 17, alpha=0.01, num_hashes=2, seed=seed,
                              per_click=True)


class OnlineLearner:
    """Incremental training of a :class:`~recallstream.model.towers.TwoTower` (see the module docstring).

    Parameters
    ----------
    tower_config : TowerConfig, optional
        Default :func:`default_tower_config`.
    train_config : TrainConfig, optional
        Loss and optimizer settings of each step (default :func:`stream_train_config`).
    seed : int
        Seeds the weight initialisation, the negative sampling and the popularity
        estimate's hashing.
    uniform_negatives : int
        Catalog items drawn uniformly as extra negatives of each step (0: in-batch only).

    Attributes
    ----------
    model : TwoTower
    estimator : FrequencyEstimator
        Each item's share of the click stream (:func:`popularity_estimator`).
    histories : dict of str to deque of str
        Each user's most recent clicked items, oldest first.
    """

    def __init__(self, tower_config: TowerConfig | None = None,
                 train_config: TrainConfig | None = None, *, seed: int = 2020,
                 uniform_negatives: int = UNIFORM_NEGATIVES) -> None:
        if uniform_negatives < 0:
            raise ValueError(f"uniform_negatives must be >= 0, got {uniform_negatives}")
        torch.manual_seed(seed)
        self.model = TwoTower(tower_config or default_tower_config())
        self.train_config = train_config or stream_train_config()
        self.optimizers = Optimizers(self.model, self.train_config)
        self.uniform_negatives = uniform_negatives
        self.history_length = next((spec.max_length for spec in self.model.config.user_features
                                    if spec.name == HISTORY), 0)
        self.histories: dict[str, deque[str]] = {}
        self.estimator = popularity_estimator(seed)
        self._sampler = torch.Generator().manual_seed(seed)  # its own: checkpointed, unshared

    @property
    def dim(self) -> int:
        return self.model.config.output_dim

    def train_batch(self, user_ids: Sequence[str], item_ids: Sequence[str],
                    users: Mapping[str, Mapping], items: Mapping[str, Mapping],
                    histories: Sequence[Sequence[str]] | None = None, *,
                    user_inputs: Mapping | None = None,
                    encode_items: Callable[[Sequence[str]], Mapping] | None = None) -> float:
        """One optimizer step on the clicks ``(user_ids[i], item_ids[i])``; returns the loss.

        ``items`` is the known catalog (the uniform negatives come from it);
        ``histories`` the :meth:`prefix_histories` of the clicks, if the caller
        has them already, and ``user_inputs`` their :meth:`encode_users`;
        ``encode_items(ids)`` gives the inputs of catalog items (default:
        :meth:`encode_items` on ``items``). The popularity estimate counts the
        batch first; afterwards each user's history grows by the batch's clicks.
        """
        if histories is None:
            histories = self.prefix_histories(user_ids, item_ids)
        self.estimator.update(item_ids)
        loss = self.step(self.make_batch(user_ids, item_ids, histories, users, items,
                                         user_inputs=user_inputs, encode_items=encode_items))
        self.remember(user_ids, item_ids)
        return loss

    def follow(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> None:
        """Take clicks in without a step: the popularity estimate and the histories move on."""
        self.estimator.update(item_ids)
        self.remember(user_ids, item_ids)

    def make_batch(self, user_ids: Sequence[str], item_ids: Sequence[str],
                   histories: Sequence[Sequence[str]], users: Mapping[str, Mapping],
                   items: Mapping[str, Mapping], share=None, *, user_inputs: Mapping | None = None,
                   encode_items: Callable[[Sequence[str]], Mapping] | None = None) -> Batch:
        """Encode clicks with the given histories, sample the uniform negatives, compute logQ.

        ``share(ids)`` is each item's share of the clicks (default: the streaming
        estimate; a snapshot passes the shares of the data it trains on);
        ``user_inputs`` and ``encode_items``: as in :meth:`train_batch`.
        """
        negatives = self._sample_negatives(items)
        copies = self._expected_copies(len(item_ids), len(items), share or self.estimator.probability)
        if encode_items is None:
            encode_items = lambda ids: self.model.encode_items(ids, items)  # noqa: E731
        return Batch(
            user_inputs=(user_inputs if user_inputs is not None
                         else self.model.encode_users(user_ids, users, histories)),
            item_inputs=encode_items(item_ids),
            item_ids=_codes(item_ids, ITEM_ID),
            log_q=torch.from_numpy(np.log(copies(item_ids))).float(),
            user_ids=_codes(user_ids, "user_id"),
            negative_inputs=encode_items(negatives) if negatives else None,
            negative_ids=_codes(negatives, ITEM_ID) if negatives else None,
            negative_log_q=torch.from_numpy(np.log(copies(negatives))).float() if negatives else None)

    def step(self, batch: Batch) -> float:
        """One optimizer step on an encoded batch (the snapshot trainer takes them too)."""
        return train_step(self.model, self.optimizers, batch, self.train_config)

    def remember(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> None:
        """Append the clicks to their users' histories, in order."""
        for user_id, item_id in zip(user_ids, item_ids):
            history = self.histories.get(user_id)
            if history is None:
                history = self.histories[user_id] = deque(maxlen=self.history_length)
            history.append(item_id)

    def prefix_histories(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> list[list[str]]:
        """Row i: user i's recent items just before click i (the batch's earlier clicks
        included, click i and later ones never)."""
        pending: dict[str, list[str]] = {}
        out = []
        for user_id, item_id in zip(user_ids, item_ids):
            earlier = pending.setdefault(user_id, [])
            history = list(self.histories.get(user_id, ())) + earlier
            out.append(history[-self.history_length:] if self.history_length else [])
            earlier.append(item_id)
        return out

    def embed_items(self, item_ids: Sequence[str], items: Mapping[str, Mapping]) -> np.ndarray:
        """Current vectors ``[N, dim]`` of the items."""
        return self.model.embed_items(list(item_ids), items).numpy()

    def encode_items(self, item_ids: Sequence[str], items: Mapping[str, Mapping]) -> dict:
        """The item tower's inputs of the items (what :meth:`embed_encoded_items` takes)."""
        return self.model.encode_items(list(item_ids), items)

    def embed_encoded_items(self, inputs: Mapping) -> np.ndarray:
        """Current vectors ``[N, dim]`` of items encoded by :meth:`encode_items`."""
        return self.model.embed_item_inputs(inputs).numpy()

    def encode_users(self, user_ids: Sequence[str], users: Mapping[str, Mapping],
                     histories: Sequence[Sequence[str]]) -> dict:
        """The user tower's inputs of the users with these histories."""
        return self.model.encode_users(list(user_ids), users, histories)

    def embed_encoded_users(self, inputs: Mapping) -> np.ndarray:
        """Current vectors ``[N, dim]`` of users encoded by :meth:`encode_users`."""
        return self.model.embed_user_inputs(inputs).numpy()

    def embed_users(self, user_ids: Sequence[str], users: Mapping[str, Mapping],
                    histories: Sequence[Sequence[str]] | None = None) -> np.ndarray:
        """Current vectors ``[N, dim]`` of the users, with their recent histories
        (or the ``histories`` given, e.g. :meth:`prefix_histories`)."""
        if histories is None:
            histories = self.histories_of(user_ids)
        return self.model.embed_users(list(user_ids), users, histories).numpy()

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION,
                "tower_config": self.model.config.to_dict(),
                "train_config": self.train_config.to_dict(),
                "uniform_negatives": self.uniform_negatives,
                "model": self.model.state_dict(),
                "optimizers": self.optimizers.state_dict(),
                "estimator": self.estimator.state_dict(),
                "histories": {user: list(items) for user, items in self.histories.items()},
                "rng": torch.get_rng_state(), "sampler_rng": self._sampler.get_state()}

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"learner state version {state.get('version')!r} is not {STATE_VERSION}")
        if state["tower_config"] != self.model.config.to_dict():
            raise ValueError("the checkpoint's towers differ from this learner's configuration")
        self.model.load_state_dict(state["model"])
        self.optimizers.load_state_dict(state["optimizers"])
        self.uniform_negatives = int(state["uniform_negatives"])
        self.estimator = FrequencyEstimator.from_state_dict(state["estimator"])  # seed included
        self.histories = {user: deque(items, maxlen=self.history_length)
                          for user, items in state["histories"].items()}
        torch.set_rng_state(state["rng"])
        self._sampler.set_state(state["sampler_rng"])

    def histories_of(self, user_ids: Sequence[str]) -> list[list[str]]:
        """Each user's recent clicked items, oldest first (empty for a new user)."""
        return [list(self.histories.get(user_id, ())) for user_id in user_ids]

    def _sample_negatives(self, items: Mapping[str, Mapping]) -> list[str]:
        if not self.uniform_negatives or not items:
            return []
        catalog = sorted(items)  # an order that does not depend on how the table was filled
        drawn = torch.randint(len(catalog), (self.uniform_negatives,), generator=self._sampler)
        return [catalog[i] for i in drawn.tolist()]

    def _expected_copies(self, batch_size: int, catalog_size: int, share):
        """Function: ids -> expected copies of each among the candidates of this step."""
        uniform = self.uniform_negatives / catalog_size if catalog_size else 0.0

        def copies(ids: Sequence[str]) -> np.ndarray:
            # the estimate gives an unseen item 1 / (clicks so far + 1): small, never zero
            return batch_size * np.asarray(share(ids), dtype=np.float64) + uniform
        return copies

    def load_weights(self, other: "OnlineLearner") -> None:
        """Take ``other``'s weights and optimizer state (a reset to a snapshot); the
        histories and the popularity estimate carry on."""
        self.model.load_state_dict(other.model.state_dict())
        self.optimizers.load_state_dict(copy.deepcopy(other.optimizers.state_dict()))


def _codes(ids: Sequence[str], key: str) -> torch.Tensor:
    """Stable int64 codes of string ids (equal exactly where the ids are equal)."""
    return torch.from_numpy(stable_hash(ids, key=key).view(np.int64))

