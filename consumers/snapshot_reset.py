"""The worker's reset to a snapshot: loading it (verified, and fit for the worker's
model) and applying it (:func:`reset_to`).

Examples
--------
>>> import tempfile
>>> from recallstream.consumers.snapshot_follower import SnapshotFollower
>>> load_snapshot(SnapshotFollower(tempfile.mkdtemp()), 1, learner=None) is None  # no store
True
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("recallstream.worker")


def load_snapshot(follower, version: int, learner):
    """Snapshot ``version`` of ``follower``'s store, or None (logged once, and the version
    refused for good) if it does not load or its towers differ from ``learner``'s."""
    from recallstream.model.snapshot_store import SnapshotError

    store = follower.store()
    if store is None:
        return None
    try:
        snapshot = store.load(version)
    except SnapshotError as error:
        log.error("snapshot v%d cannot be used, the model carries on without it: %s", version, error)
        follower.refuse(version)
        return None
    if not snapshot.fits(learner):
        log.error("snapshot v%d has other towers than this worker's model; ignored", version)
        follower.refuse(version)
        return None
    return snapshot


def reset_to(snapshot, queued, trainer, ingestor, follower, topic: str, checkpoint) -> None:
    """Reset a paused worker to ``snapshot``: train what it has read (``queued`` results
    of the paused prefetcher and the partial minibatch: the rewind starts after them),
    take the snapshot's weights, rewind ``topic`` to the snapshot's cut (what follows is
    trained again on top of it), re-embed everything into new Qdrant collections and
    switch the aliases, then ``checkpoint()`` (returns the saved state, or None when it
    could not be written: the reset stands, the next checkpoint saves it)."""
    from recallstream.consumers import metrics

    started = time.perf_counter()
    for ingested in queued:
        trainer.consume(ingested)
    trainer.flush()
    trainer.learner.load_weights(snapshot.learner())
    ingestor.rewind(topic, snapshot.cut_offsets.get(topic, {}))
    trainer.publisher.rebuild(snapshot.version, trainer.counters["batches"])
    follower.reset_done(snapshot.version)
    trainer.counters["clicks_since_snapshot"] = 0
    state = checkpoint()
    seconds = time.perf_counter() - started
    if state is not None:
        metrics.observe_checkpoint(seconds, state["created_at"])
    metrics.observe_reset(snapshot.version, snapshot.created_at, seconds)
    log.info("reset to snapshot v%d (cut %s) in %.1f s; catching up from there",
             snapshot.version, snapshot.cut_offsets.get(topic), seconds)
