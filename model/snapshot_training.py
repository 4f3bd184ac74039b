"""Full training of a snapshot: epochs over recorded clicks, each with the history it saw.

The worker's learner takes every click once, in order. A snapshot takes the
clicks of the last days several times, shuffled, with the same towers, the
same loss and the same step (:meth:`recallstream.model.online.OnlineLearner.step`),
so that the online learner can load it (:meth:`~recallstream.model.online.OnlineLearner.load_weights`).
Each click is paired with the user's history as it stood just before it, so a
snapshot never trains on a history that contains the click itself. The logQ
of a snapshot step uses each item's share of the clicks it trains on.

Examples
--------
>>> from recallstream.model.online import OnlineLearner, stream_tower_config
>>> learner = OnlineLearner(stream_tower_config(id_buckets=256, dim=8), seed=0)
>>> clicks = RecordedClicks()
>>> for n in range(40):
...     clicks.add(f"u{n % 4}", f"i{n % 7}", history=[f"i{(n - 1) % 7}"])
>>> losses = train_snapshot(learner, clicks, users={}, items={f"i{n}": {} for n in range(7)},
...                         epochs=2, batch_size=16, seed=0)
>>> len(losses)
5
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np


class RecordedClicks:
    """Clicks in stream order, each with its user's history just before it."""

    def __init__(self) -> None:
        self.user_ids: list[str] = []
        self.item_ids: list[str] = []
        self.histories: list[list[str]] = []

    def __len__(self) -> int:
        return len(self.item_ids)

    def add(self, user_id: str, item_id: str, history: Sequence[str]) -> None:
        self.user_ids.append(user_id)
        self.item_ids.append(item_id)
        self.histories.append(list(history))

    def extend(self, user_ids: Sequence[str], item_ids: Sequence[str],
               histories: Sequence[Sequence[str]]) -> None:
        for user_id, item_id, history in zip(user_ids, item_ids, histories, strict=True):
            self.add(user_id, item_id, history)


def train_snapshot(learner, clicks: RecordedClicks, users: Mapping[str, Mapping],
                   items: Mapping[str, Mapping], *, epochs: float = 1.0, batch_size: int = 1024,
                   seed: int = 0, start: int = 0, progress=None) -> list[float]:
    """Train ``learner`` on ``clicks[start:]`` for ``epochs`` (shuffled); returns the losses.

    A fractional epoch takes that share of a shuffled pass. ``progress``, if
    given, is called with the number of steps done after each step.
    """
    if not epochs > 0 or batch_size < 1:
        raise ValueError(f"epochs must be positive and batch_size at least 1, got {epochs}, {batch_size}")
    rows = np.arange(start, len(clicks))
    if rows.size == 0:
        return []
    share = _shares([clicks.item_ids[r] for r in rows])
    order = _shuffled_passes(rows, epochs, np.random.default_rng(seed))
    losses = []
    for begin in range(0, len(order), batch_size):
        chosen = order[begin:begin + batch_size]
        batch = learner.make_batch([clicks.user_ids[r] for r in chosen],
                                   [clicks.item_ids[r] for r in chosen],
                                   [clicks.histories[r] for r in chosen], users, items, share=share)
        losses.append(learner.step(batch))
        if progress is not None:
            progress(len(losses))
    return losses


def train_full(learner, user_ids: Sequence[str], item_ids: Sequence[str],
               users: Mapping[str, Mapping], items: Mapping[str, Mapping], *, epochs: float = 1.0,
               batch_size: int = 1024, seed: int = 0, progress=None) -> list[float]:
    """A full training of a fresh ``learner`` on clicks in event order (the snapshot job's).

    Each click gets the history its user had just before it among these clicks
    (:meth:`~recallstream.model.online.OnlineLearner.prefix_histories`), the epochs
    run through :func:`train_snapshot`, and afterwards the learner takes the clicks
    in (:meth:`~recallstream.model.online.OnlineLearner.follow`): its histories and
    popularity estimate end where the clicks end, as a worker's would. Returns the
    losses.

    Examples
    --------
    >>> from recallstream.model.online import OnlineLearner, stream_tower_config
    >>> learner = OnlineLearner(stream_tower_config(id_buckets=64, dim=4), seed=0)
    >>> losses = train_full(learner, ["u1", "u2", "u1"], ["a", "b", "c"], {}, {},
    ...                     epochs=2, batch_size=2)
    >>> len(losses), list(learner.histories["u1"]), learner.estimator.step
    (3, ['a', 'c'], 3)
    """
    clicks = RecordedClicks()
    clicks.extend(user_ids, item_ids, learner.prefix_histories(user_ids, item_ids))
    losses = train_snapshot(learner, clicks, users, items, epochs=epochs, batch_size=batch_size,
                            seed=seed, progress=progress)
    learner.follow(user_ids, item_ids)
    return losses


def snapshot_steps(clicks: int, epochs: float, batch_size: int) -> int:
    """Steps :func:`train_snapshot` takes over ``clicks`` clicks (for a progress bar).

    >>> snapshot_steps(40, epochs=2, batch_size=16), snapshot_steps(10, epochs=0.5, batch_size=4)
    (5, 2)
    """
    if clicks == 0:
        return 0
    return -(-max(1, int(round(epochs * clicks))) // batch_size)


def _shuffled_passes(rows: np.ndarray, epochs: float, rng: np.random.Generator) -> np.ndarray:
    whole = int(np.ceil(epochs))
    order = np.concatenate([rng.permutation(rows) for _ in range(whole)])
    return order[:max(1, int(round(epochs * len(rows))))]


def _shares(item_ids: Sequence[str]):
    """Function: ids -> each id's share of ``item_ids`` (an absent id: half a click)."""
    counts = Counter(item_ids)
    total = len(item_ids)

    def share(ids: Sequence[str]) -> np.ndarray:
        return np.array([counts.get(i, 0.5) / total for i in ids], dtype=np.float64)
    return share
