"""What the worker watches per minibatch: model health, popularity, quality, freshness and drift.

:class:`TrainingWatch` sits beside the :class:`~recallstream.consumers.stream_trainer.StreamTrainer`:
``before_step`` scores the batch's health before its step
(:func:`~recallstream.model.health.batch_health`), ``after_step`` feeds the drift
detectors (:class:`~recallstream.model.drift.DriftMonitor`, whose state is in the
checkpoint) and reports everything to :mod:`~recallstream.consumers.metrics`.
Freshness runs from the trainer taking a click in (``received``) to its item's
vector written to Qdrant (``written``, called by the Qdrant writer thread).
"""

from __future__ import annotations

import time
from typing import Sequence

from recallstream.consumers import metrics
from recallstream.model.drift import DriftMonitor
from recallstream.model.health import batch_health, popularity_health
from recallstream.streaming.entity_tables import categories


def age_bucket(age) -> str:
    """Decade of a user's age (``"unknown"`` without one).

    >>> age_bucket(34), age_bucket(None)
    ('30s', 'unknown')
    """
    try:
        return f"{int(age) // 10 * 10}s"
    except (TypeError, ValueError):
        return "unknown"


class TrainingWatch:
    """Health figures and drift detectors of a trainer's learner (module docstring).

    ``every``: the health figures that look at the whole catalog (scores, norms,
    collapse, coverage, the popularity estimate, the share never trained) are computed
    every this many batches; the rest (recall, loss, inputs) every batch.
    """

    def __init__(self, k: int = 50, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every!r}")
        self.k = k
        self.every = every
        self.drift = DriftMonitor()
        self._received: dict[str, float] = {}   # item -> earliest untrained click, wall time
        self._published: dict[str, float] = {}  # item -> that time, once trained and published

    def received(self, item_ids: Sequence[str]) -> None:
        now = time.time()
        for item_id in item_ids:
            self._received.setdefault(item_id, now)

    def written(self, kind: str, ids: list, seconds: float, ok: bool) -> None:
        metrics.observe_qdrant_write("items" if kind == "item" else "users", len(ids), seconds, ok)
        if ok and kind == "item":
            now = time.time()
            for item_id in ids:
                since = self._published.pop(item_id, None)
                if since is not None:
                    metrics.observe_freshness(now - since)

    def before_step(self, learner, user_ids, item_ids, users, items, batch=None,
                    version: int = 0) -> dict:
        """The catalog-wide health figures when batch ``version + 1`` is due for them."""
        if version % self.every:
            return {}
        return batch_health(learner, user_ids, item_ids, users, items, self.k, batch)

    def after_step(self, trainer, batch, hits, health: dict) -> None:
        """After the step on ``batch`` (before publishing it): figures, detectors, freshness marks."""
        learner, tables = trainer.learner, trainer.tables
        item_ids = [click[1] for click in batch]
        for item_id in set(item_ids):
            since = self._received.pop(item_id, None)
            if since is not None:
                self._published.setdefault(item_id, since)
        catalog = tables.items
        figures = dict(health)
        if health:  # the catalog-wide figures, on the batches due for them
            figures.update(popularity_health(learner, item_ids, catalog))
            trained = trainer.publisher.item_last_click
            figures["never_trained"] = (sum(1 for item in catalog if item not in trained
                                            and item not in item_ids) / len(catalog)) if catalog else None
        figures["popular_recall"] = trainer.monitor.popular_hits.rolling()
        metrics.observe_health(figures, len(batch) + learner.uniform_negatives,
                               trainer.counters["batches"])
        drift = self.drift
        fired = drift.update("miss_at_50", [0 if hit else 1 for hit in hits])
        fired += drift.update("loss", [trainer.last_loss])
        for signal in ("positive_score", "user_norm", "item_norm"):
            if signal in health:
                fired += drift.update(signal, [health[signal]])
        fired += drift.observe_inputs("item_popularity", item_ids)
        fired += drift.observe_inputs("item_genres", [genre for item in item_ids
                                                      for genre in categories((catalog.get(item) or {}).get("genres"))])
        fired += drift.observe_inputs("user_age", [age_bucket((tables.users.get(click[0]) or {}).get("age"))
                                                   for click in batch])
        metrics.observe_drift(fired, drift.statistic)

    def state_dict(self) -> dict:
        return {"drift": self.drift.state_dict()}

    def load_state_dict(self, state) -> None:
        self.drift.load_state_dict(state["drift"])
