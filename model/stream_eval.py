"""Prequential evaluation of the online learner's update policies on a recorded click stream.

The protocol of ``recallstream eval stream`` (test-then-train, no Kafka):

- every click in order of (timestamp, position in the file); day
  ``d = floor((ts - first ts) / 86400)``;
- the clicks of the first ``train_only_days`` days only train: the first
  snapshot is trained on them; every later click is scored before anything
  learns from it: a hit when the clicked item is among the top ``k`` of the
  whole catalog, leaving out every item this user clicked before;
- the user tower sees the user's history as it stands just before the click
  (earlier clicks of the same minibatch included), never the click itself;
- the policies differ only in how the weights change: ``snapshot`` retrains at
  every day boundary (warm-started, on the last ``snapshot_window_days`` days)
  and does not change the weights in between; ``incremental`` trains the first
  snapshot, then only takes a step per minibatch; ``snapshot+incremental`` does
  both (each day starts from the new snapshot);
- baselines on the same clicks and exclusion rule: most-popular-so-far (counts
  updated after every click) and EASE refit at every day boundary on every
  click before it, scoring each user's history as it stands at the click.

The learner, its popularity estimate and the minibatcher are the worker's own
(:class:`~recallstream.model.online.OnlineLearner`,
:class:`~recallstream.streaming.minibatch.Minibatcher`), and so is the scoring
(:class:`~recallstream.model.prequential.PrequentialMonitor`).

Examples
--------
>>> stream = ClickStream(["u1", "u2", "u1"], ["a", "b", "b"], np.array([0, 90000, 90001]))
>>> stream.days.tolist()
[0, 1, 1]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from recallstream.model.ease import Ease
from recallstream.model.online import OnlineLearner, stream_tower_config, stream_train_config
from recallstream.model.prequential import PrequentialMonitor
from recallstream.model.snapshot_training import RecordedClicks, train_snapshot
from recallstream.streaming.minibatch import Minibatcher

POLICIES = ("incremental", "snapshot", "snapshot+incremental")
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class StreamEvalConfig:
    """The protocol's and the policy's settings (defaults: the worker's configuration).

    Examples
    --------
    >>> StreamEvalConfig(policy="snapshot").batch_size
    256
    >>> StreamEvalConfig(policy="nightly")
    Traceback (most recent call last):
    ...
    ValueError: policy must be one of ('incremental', 'snapshot', 'snapshot+incremental'), got 'nightly'
    """

    policy: str = "snapshot+incremental"
    log_q: bool = True
    k: int = 50
    batch_size: int = 256
    train_only_days: int = 7
    snapshot_window_days: int = 7
    snapshot_epochs: float = 1.0
    snapshot_batch_size: int = 1024
    temperature: float = 0.2
    ease_l2: float = 200.0
    seed: int = 2020

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if min(self.k, self.batch_size, self.train_only_days, self.snapshot_window_days,
               self.snapshot_batch_size) < 1:
            raise ValueError("k, batch sizes and day counts must be at least 1")


class ClickStream:
    """Clicks in event-time order with their day index (see the module docstring).

    Parameters
    ----------
    user_ids, item_ids : sequence of str
    timestamps : ndarray of int
        Epoch seconds, already in stream order.
    """

    def __init__(self, user_ids: Sequence[str], item_ids: Sequence[str], timestamps: np.ndarray) -> None:
        self.user_ids = list(user_ids)
        self.item_ids = list(item_ids)
        self.timestamps = np.asarray(timestamps, dtype=np.int64)
        if not len(self.user_ids) == len(self.item_ids) == len(self.timestamps):
            raise ValueError("user_ids, item_ids and timestamps must have the same length")
        if np.any(np.diff(self.timestamps) < 0):
            raise ValueError("timestamps must be in stream order")
        first = self.timestamps[0] if len(self.timestamps) else 0
        self.days = (self.timestamps - first) // SECONDS_PER_DAY

    @classmethod
    def from_ratings(cls, ratings: np.ndarray) -> "ClickStream":
        """Every rating a click, ordered by (timestamp, position in the file)."""
        order = np.argsort(ratings["timestamp"], kind="stable")
        return cls(ratings["user_id"][order].tolist(), ratings["item_id"][order].tolist(),
                   ratings["timestamp"][order])

    def day_ranges(self) -> list[tuple[int, int, int]]:
        """``(day, first click, end)`` of every day that has clicks."""
        days, starts = np.unique(self.days, return_index=True)
        ends = np.r_[starts[1:], len(self.days)]
        return [(int(d), int(s), int(e)) for d, s, e in zip(days, starts, ends)]


class Scoreboard:
    """Hits per scored click of the model and both baselines, by day."""

    def __init__(self) -> None:
        self.days: list[int] = []
        self.hits: dict[str, list[np.ndarray]] = {"model": [], "popularity": [], "ease": []}

    def add(self, day: int, **hits: np.ndarray) -> None:
        self.days.extend([day] * len(hits["model"]))
        for name, values in hits.items():
            self.hits[name].append(np.asarray(values, dtype=bool))

    def recall(self, name: str) -> float | None:
        flat = self._flat(name)
        return float(flat.mean()) if flat.size else None

    def by_period(self, name: str, days_per_period: int = 1) -> list[dict]:
        """``[{"day", "clicks", "recall"}]`` per period of scored clicks."""
        periods = np.asarray(self.days, dtype=np.int64) // days_per_period
        flat = self._flat(name)
        return [{"day": int(p) * days_per_period, "clicks": int((periods == p).sum()),
                 "recall": float(flat[periods == p].mean())} for p in np.unique(periods)]

    def _flat(self, name: str) -> np.ndarray:
        return np.concatenate(self.hits[name]) if self.hits[name] else np.zeros(0, dtype=bool)


class StreamEvaluation:
    """One replay of a click stream under one policy (see the module docstring).

    Parameters
    ----------
    stream : ClickStream
    users, items : mapping of id to features
        The user profiles and the whole catalog (every candidate).
    config : StreamEvalConfig
    """

    def __init__(self, stream: ClickStream, users: Mapping[str, Mapping],
                 items: Mapping[str, Mapping], config: StreamEvalConfig) -> None:
        self.stream, self.users, self.items, self.config = stream, users, items, config
        self.learner = self._new_learner()
        self.snapshot = self._new_learner()  # the daily fully trained model, warm-started
        self._snapshots_trained = 0
        self.monitor = PrequentialMonitor(k=config.k)
        self.catalog = {item_id: row for row, item_id in enumerate(sorted(items))}
        self.ease = Ease(len(self.catalog), l2=config.ease_l2)
        self._ease_seen = 0  # clicks handed to EASE so far
        self._user_index: dict[str, int] = {}
        self.recorded = RecordedClicks()
        self.scoreboard = Scoreboard()
        self.losses: list[float] = []

    def _new_learner(self) -> OnlineLearner:
        train = stream_train_config(temperature=self.config.temperature, use_log_q=self.config.log_q)
        return OnlineLearner(stream_tower_config(), train, seed=self.config.seed)

    def run(self, progress: Callable[[int, int], None] | None = None) -> dict:
        """Replay the whole stream; returns the report (the JSON of ``eval stream``)."""
        started = time.perf_counter()
        days = self.stream.day_ranges()
        for done, (day, begin, end) in enumerate(days):
            if day >= self.config.train_only_days:
                self._day_boundary(day, begin)
            self._replay_day(day, begin, end)
            if progress is not None:
                progress(done + 1, len(days))
        return self.report(time.perf_counter() - started)

    def report(self, wall_s: float) -> dict:
        board, k = self.scoreboard, self.config.k
        return {"policy": self.config.policy, "log_q": self.config.log_q,
                f"prequential_recall@{k}": board.recall("model"),
                "clicks_scored": len(board.days),
                "per_day": [{"day": p["day"], "clicks": p["clicks"], f"recall@{k}": p["recall"]}
                            for p in board.by_period("model")],
                f"popularity_recall@{k}": board.recall("popularity"),
                f"ease_recall@{k}": board.recall("ease"),
                "final_loss": float(np.mean(self.losses[-50:])) if self.losses else None,
                "config": asdict(self.config), "wall_s": round(wall_s, 1)}

    # -- one day -----------------------------------------------------------------------

    def _day_boundary(self, day: int, begin: int) -> None:
        first = not self._snapshots_trained
        if first or self.config.policy != "incremental":
            window_start = 0 if first else int(np.searchsorted(
                self.stream.days, day - self.config.snapshot_window_days))
            train_snapshot(self.snapshot, self.recorded, self.users, self.items,
                           epochs=self.config.snapshot_epochs,
                           batch_size=self.config.snapshot_batch_size,
                           seed=self.config.seed + day, start=window_start)
            self.learner.load_weights(self.snapshot)
            self._snapshots_trained += 1
        self._ease_add(begin)
        self.ease.refit()

    def _ease_add(self, end: int) -> None:
        """Hand EASE the clicks it has not seen, up to ``end``."""
        new = range(self._ease_seen, end)
        users = [self._user_index.setdefault(self.stream.user_ids[r], len(self._user_index)) for r in new]
        items = [self.catalog.get(self.stream.item_ids[r], -1) for r in new]
        known = [n for n, item in enumerate(items) if item >= 0]
        self.ease.add(np.array(users, dtype=np.int64)[known], np.array(items, dtype=np.int64)[known])
        self._ease_seen = end

    def _replay_day(self, day: int, begin: int, end: int) -> None:
        batcher: Minibatcher[int] = Minibatcher(self.config.batch_size, float("inf"))
        for batch in batcher.add_many(range(begin, end)):
            self._replay_batch(day, batch)
        rest = batcher.flush()
        if rest:
            self._replay_batch(day, rest)

    def _replay_batch(self, day: int, rows: list[int]) -> None:
        user_ids = [self.stream.user_ids[r] for r in rows]
        item_ids = [self.stream.item_ids[r] for r in rows]
        histories = self.learner.prefix_histories(user_ids, item_ids)
        scored = day >= self.config.train_only_days
        if scored:
            ease_hits = self._ease_hits(user_ids, item_ids)
            model, popular = self.monitor.score_with_baseline(self.learner, user_ids, item_ids,
                                                              self.users, self.items)
            self.scoreboard.add(day, model=model, popularity=popular, ease=ease_hits)
        else:
            self.monitor.observe(user_ids, item_ids)
        self.recorded.extend(user_ids, item_ids, histories)
        if scored and self.config.policy != "snapshot":
            self.losses.append(self.learner.train_batch(user_ids, item_ids, self.users, self.items,
                                                        histories=histories))
        else:
            self.learner.follow(user_ids, item_ids)

    def _ease_hits(self, user_ids: list[str], item_ids: list[str]) -> np.ndarray:
        before = self.monitor.clicked.prefixes(user_ids, item_ids)
        rows = np.zeros((len(user_ids), len(self.catalog)), dtype=np.float32)
        for i, items in enumerate(before):
            rows[i, [self.catalog[x] for x in items if x in self.catalog]] = 1.0
        scores = self.ease.scores(rows)
        targets = np.array([self.catalog.get(x, -1) for x in item_ids])
        known = targets >= 0
        target_scores = scores[np.arange(len(targets)), np.maximum(targets, 0)]
        scores[rows > 0] = -np.inf  # what the user clicked before is no candidate...
        scores[np.arange(len(targets)), np.maximum(targets, 0)] = target_scores  # ...but the target is
        better = (scores > target_scores[:, None]).sum(axis=1)
        return known & (better < self.config.k)

