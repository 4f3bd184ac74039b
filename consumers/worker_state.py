"""The worker's checkpoint: one state made of its components' own states.

:class:`WorkerState` defines the checkpoint schema (``format`` 2)::

    format, created_at
    offsets          next offset of every partition (also inside "ingest"; read by
                     `recallstream checkpoint inspect` and committed to the group)
    ingest           StreamIngestor.state_dict: offsets, join state, record counters
    entities         EntityTables.state_dict: the item and user feature tables
    pending_clicks   the clicks of the partial minibatch
    counters         clicks_trained, batches (the model version)
    learner          OnlineLearner.state_dict: model, optimizers, popularity estimate,
                     histories, torch RNG
    monitor          PrequentialMonitor.state_dict: hit rates, most-popular baseline
    index            IndexPublisher.state_dict: newest trained click per item
    watch            TrainingWatch.state_dict: the drift detectors (model/drift.py)
    snapshot         SnapshotFollower.state_dict: the snapshot version the model is based
                     on, the resets so far

Saved together, atomically, they make training exactly once with respect to
the stream: a restart loads them and seeks every partition to its offsets.
A format-1 checkpoint (before the worker was split into components) is
upgraded when loaded (:func:`upgrade`).

Examples
--------
>>> state = upgrade({"format": 1, "created_at": 1.0, "offsets": {}, "pending_clicks": [],
...     "ingest": {"version": 1, "offsets": {}, "items": {"i1": {}}, "users": {}, "joiner": {},
...                "seen": {}, "dead_lettered": {}},
...     "counters": {"clicks_trained": 4, "batches": 1, "prequential_hits": 1,
...                  "prequential_clicks": 4, "popularity_hits": 2},
...     "item_last_click": {"i1": 9.0}, "estimator": {"step": 1}, "learner": {"version": 1},
...     "popular": {"counts": {"i1": 4}}})
>>> state["format"], state["entities"]["items"], state["learner"]["estimator"], state["counters"]
(2, {'i1': {}}, {'step': 1}, {'clicks_trained': 4, 'batches': 1})
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from recallstream.consumers.stream_trainer import StreamTrainer

STATE_FORMAT = 2


class StagedCheckpoint(NamedTuple):
    """A staged state (:class:`~recallstream.model.checkpoint.StagedState`) and what
    its write's caller needs: the offsets to commit once it is written, its time."""

    state: Any
    offsets: dict[str, Any]
    created_at: float


class WorkerState:
    """The state of an ingestor and a trainer, as one checkpoint (see the module docstring).

    Parameters
    ----------
    ingestor : StreamIngestor
        Anything with ``state_dict``, ``load_state_dict`` and ``commit(offsets)``.
    trainer : StreamTrainer
    """

    def __init__(self, ingestor, trainer: StreamTrainer, follower=None) -> None:
        self.ingestor = ingestor
        self.trainer = trainer
        self.follower = follower

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint; the ingestor must be paused at what the trainer consumed."""
        trainer = self.trainer
        ingest = self.ingestor.state_dict()
        return {"format": STATE_FORMAT, "created_at": time.time(),
                "offsets": ingest["offsets"], "ingest": ingest,
                "entities": trainer.tables.state_dict(),
                "pending_clicks": [list(click) for click in trainer.batcher.pending()],
                "counters": dict(trainer.counters),
                "learner": trainer.learner.state_dict(),
                "monitor": trainer.monitor.state_dict(),
                "loss_trace": trainer.loss_trace.state_dict(),
                "index": trainer.publisher.state_dict(),
                "watch": trainer.watch.state_dict(),
                "snapshot": self.follower.state_dict() if self.follower else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = upgrade(state)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not {STATE_FORMAT}")
        trainer = self.trainer
        self.ingestor.load_state_dict(state["ingest"])
        trainer.tables.load_state_dict(state["entities"])
        trainer.batcher.extend(tuple(click) for click in state["pending_clicks"])
        trainer.counters.update(state["counters"])
        trainer.learner.load_state_dict(state["learner"])
        trainer.monitor.load_state_dict(state["monitor"])
        if "loss_trace" in state:  # older checkpoints had none
            trainer.loss_trace.load_state_dict(state["loss_trace"])
        trainer.publisher.load_state_dict(state["index"])
        if "watch" in state:  # older checkpoints had no drift detectors
            trainer.watch.load_state_dict(state["watch"])
        if self.follower is not None and state.get("snapshot"):  # nor snapshots
            self.follower.load_state_dict(state["snapshot"])

    def save(self, store) -> dict[str, Any]:
        """Write the checkpoint to ``store`` once Qdrant has every published vector, then
        commit its offsets to the consumer group; returns the state saved."""
        self.trainer.publisher.drain()  # never commit offsets past vectors that did not arrive
        state = self.state_dict()
        store.save(state)
        self.ingestor.commit(state["offsets"])
        return state

    def stage(self) -> StagedCheckpoint:
        """The checkpoint as of now, copied for a write in the background, once Qdrant has
        every published vector; commit its offsets only after the write."""
        from recallstream.model.checkpoint import StagedState

        self.trainer.publisher.drain()  # as in save: the vectors arrive before the offsets
        staged = StagedState(self.state_dict())
        return StagedCheckpoint(staged, staged.storable["offsets"], staged.storable["created_at"])


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint in format 2 (other formats unchanged).

    Format 1 kept the feature tables in the ingestor's state, the popularity
    estimate and the most-popular baseline beside the learner, and the
    prequential counters among the worker's (its rolling windows were not saved).
    """
    if state.get("format") != 1:
        return state
    ingest = dict(state["ingest"])
    entities = {"items": ingest.pop("items"), "users": ingest.pop("users")}
    ingest["version"] = 2
    counters = state["counters"]
    clicks = counters["prequential_clicks"]
    return {"format": 2, "created_at": state["created_at"], "offsets": state["offsets"],
            "ingest": ingest, "entities": entities, "pending_clicks": state["pending_clicks"],
            "counters": {"clicks_trained": counters["clicks_trained"],
                         "batches": counters["batches"]},
            "learner": {**state["learner"], "version": 2, "estimator": state["estimator"]},
            "monitor": {"k": 50, "baseline": state["popular"],
                        "model": {"hits": counters["prequential_hits"], "clicks": clicks, "latest": []},
                        "popular": {"hits": counters["popularity_hits"], "clicks": clicks,
                                    "latest": []}},
            "index": {"item_last_click": state["item_last_click"]}}
