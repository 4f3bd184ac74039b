"""Loading the snapshot a worker resets to: verified, and fit for the worker's model.

Examples
--------
>>> import tempfile
>>> from recallstream.consumers.snapshot_follower import SnapshotFollower
>>> load_snapshot(SnapshotFollower(tempfile.mkdtemp()), 1, learner=None) is None  # no store
True
"""

from __future__ import annotations

import logging

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
    if snapshot.tower_config != learner.model.config.to_dict():
        log.error("snapshot v%d has other towers than this worker's model; ignored", version)
        follower.refuse(version)
        return None
    return snapshot
