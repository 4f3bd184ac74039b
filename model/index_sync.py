"""Keep Qdrant's item and user vectors in step with a model that keeps learning.

The trainer should not wait for Qdrant: in embedded mode an upsert costs about
0.15 ms per point in Python, as much as a training step for a few hundred
points. :class:`IndexSync` therefore hands vectors to one background writer
thread. Vectors handed over while the writer is busy are coalesced per id
(the newest vector wins), so a slow index costs freshness, never throughput or
memory beyond one pending vector per id. Deletions of retired items go through
the same queue, in order with the upserts of the same id.

A failed write (Qdrant unavailable, beyond the retries of
:class:`~recallstream.model.vector_index.VectorIndex`) is put back, unless a newer vector of
the same id came in meanwhile, and tried again after a growing pause (up to
``max_backoff_s``): training goes on, and nothing is dropped.

Qdrant holds derived data only: every vector can be recomputed from the
model. So the worker never checkpoints stream offsets past vectors that are
lost: it calls :meth:`IndexSync.drain` before a checkpoint, which returns
only once everything queued has reached Qdrant, and re-embeds the whole
catalog after a restart unless a persistent index already holds it as of the
checkpoint (``IndexPublisher.ensure_catalog`` in the worker).

Examples
--------
>>> import numpy as np
>>> from recallstream.model.vector_index import VectorIndex
>>> index = VectorIndex.connect(":memory:")
>>> sync = IndexSync(index, items="items", users="users", dim=2)
>>> sync.put_items(["a", "b"], np.array([[1.0, 0.0], [0.0, 1.0]]), [{}, {}])
>>> sync.put_users(["u"], np.array([[1.0, 0.1]]))
>>> sync.drain()
>>> [item for item, _, _ in index.search_by_point_id("items", "users", "u", limit=2)]
['a', 'b']
>>> sync.delete_items(["a"]); sync.drain(); index.count("items")
1
>>> sync.close()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from recallstream.model.vector_index import VectorIndex

log = logging.getLogger(__name__)

_DELETE = None  # pending marker of a retired item


class IndexSync:
    """Coalescing background writer of item and user vectors (see the module docstring).

    Parameters
    ----------
    index : VectorIndex
    items, users : str
        Collection (or alias) names; both are created with ``dim`` if missing.
    dim : int
        Vector dimension.
    max_points_per_write : int, default 2048
        Upper bound of one write, so that a drain makes progress in steps.
    initial_backoff_s, max_backoff_s : float
        Pause after a failed write, doubled per consecutive failure up to the maximum.
    min_interval_s : float, default 0
        Least time between the starts of two writes. Vectors queued meanwhile
        coalesce, so a hot item is written once per interval instead of once per
        batch: embedded Qdrant spends Python time per point, which the trainer
        feels through the GIL. :meth:`drain` does not wait for the interval.
    sleep : callable, default time.sleep
        Waits out the pause after a failed write (tests pass one that records it).
    """

    def __init__(self, index: VectorIndex, *, items: str, users: str, dim: int,
                 max_points_per_write: int = 2048, initial_backoff_s: float = 0.5,
                 max_backoff_s: float = 10.0, min_interval_s: float = 0.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.index = index
        self.items, self.users = items, users
        self.max_points_per_write = max_points_per_write
        self.initial_backoff_s, self.max_backoff_s = initial_backoff_s, max_backoff_s
        self.failed_writes = 0
        self.min_interval_s = min_interval_s
        self._sleep = sleep
        self._draining = 0
        index.ensure_collection(items, dim)
        index.ensure_collection(users, dim)
        # kind -> id -> (vector, payload) or _DELETE; insertion order is write order
        self._pending: dict[str, dict[str, object]] = {"item": {}, "user": {}}
        self._lock = threading.Condition()
        self._busy = False
        self._closed = False
        self.points_written = 0
        # called by the writer thread after each write: (kind, ids, seconds, ok)
        self.on_write: Callable[[str, list, float, bool], None] | None = None
        self._thread = threading.Thread(target=self._run, name="index-sync", daemon=True)
        self._thread.start()

    def put_items(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> None:
        """Queue item vectors (each replaces any pending vector of the same id)."""
        self._put("item", ids, vectors, payloads)

    def put_users(self, ids: Sequence[str], vectors: np.ndarray,
                  payloads: Sequence[dict] | None = None) -> None:
        """Queue user vectors (used for recall by user id), with their payloads."""
        self._put("user", ids, vectors, payloads if payloads is not None else [{}] * len(ids))

    def delete_items(self, ids: Sequence[str]) -> None:
        """Queue the removal of retired items."""
        with self._lock:
            for item_id in ids:
                self._pending["item"].pop(item_id, None)
                self._pending["item"][item_id] = _DELETE
            self._lock.notify_all()

    def pending(self) -> int:
        """Vectors and deletions not yet written."""
        with self._lock:
            return sum(len(p) for p in self._pending.values())

    def drain(self, timeout_s: float | None = None) -> None:
        """Wait until everything queued so far is written (however long Qdrant is away,
        unless ``timeout_s`` is given: then TimeoutError)."""
        with self._lock:
            self._draining += 1
            self._lock.notify_all()
            try:
                done = self._lock.wait_for(
                    lambda: not self._busy and not any(self._pending.values()), timeout=timeout_s)
            finally:
                self._draining -= 1
            if not done:
                raise TimeoutError(f"Qdrant writes still pending after {timeout_s} s "
                                   f"({self.failed_writes} failed writes so far)")

    def close(self) -> None:
        """Write what is pending and stop the writer thread."""
        try:
            self.drain()
        finally:
            with self._lock:
                self._closed = True
                self._lock.notify_all()
            self._thread.join()

    def _put(self, kind: str, ids: Sequence[str], vectors: np.ndarray,
             payloads: Sequence[dict]) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(ids) != len(vectors) or len(ids) != len(payloads):
            raise ValueError(f"{len(ids)} ids, {len(vectors)} vectors, {len(payloads)} payloads")
        with self._lock:
            pending = self._pending[kind]
            for item_id, vector, payload in zip(ids, vectors, payloads):
                pending.pop(item_id, None)  # re-insert: the newest write goes last
                pending[item_id] = (vector, payload)
            self._lock.notify_all()

    def _run(self) -> None:
        backoff = self.initial_backoff_s
        last_write = float("-inf")
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._closed or self._draining or
                                    time.monotonic() - last_write >= self.min_interval_s,
                                    timeout=max(0.0, last_write + self.min_interval_s - time.monotonic()))
                self._lock.wait_for(lambda: self._closed or any(self._pending.values()))
                last_write = time.monotonic()
                if not any(self._pending.values()):
                    return  # closed and nothing left
                kind, work = self._take()
                self._busy = True
            started = time.monotonic()
            try:
                self._write(kind, work)
            except Exception as error:
                self._report(kind, work, started, ok=False)
                self._put_back(kind, work)
                log.warning("Qdrant write of %d points failed (%s); retrying in %.1f s",
                            len(work), error, backoff)
                self._sleep(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            backoff = self.initial_backoff_s
            self._report(kind, work, started, ok=True)
            with self._lock:
                self._busy = False
                self.points_written += len(work)
                self._lock.notify_all()

    def _report(self, kind: str, work: list, started: float, ok: bool) -> None:
        if self.on_write is not None:
            try:
                self.on_write(kind, [item_id for item_id, _ in work], time.monotonic() - started, ok)
            except Exception as error:  # metrics must never stop the writer
                log.warning("on_write hook failed: %s", error)

    def _put_back(self, kind: str, work: list) -> None:
        with self._lock:
            self.failed_writes += 1
            pending = self._pending[kind]
            newer = dict(pending)  # entries queued meanwhile are newer: they win
            pending.clear()
            pending.update((item_id, entry) for item_id, entry in work if item_id not in newer)
            pending.update(newer)
            self._busy = False
            self._lock.notify_all()

    def _take(self) -> tuple[str, list]:
        kind = "item" if self._pending["item"] else "user"
        pending = self._pending[kind]
        work = []
        for item_id in list(pending)[:self.max_points_per_write]:
            work.append((item_id, pending.pop(item_id)))
        return kind, work

    def _write(self, kind: str, work: list) -> None:
        # One pending entry per id (coalesced), so deletes and upserts never race on an id.
        collection = self.items if kind == "item" else self.users
        deletes = [item_id for item_id, entry in work if entry is _DELETE]
        upserts = [(item_id, entry) for item_id, entry in work if entry is not _DELETE]
        if deletes:
            self.index.delete(collection, deletes, kind=kind)
        if upserts:
            self.index.upsert(collection, [i for i, _ in upserts],
                              np.stack([vector for _, (vector, _) in upserts]),
                              [payload for _, (_, payload) in upserts], kind=kind)
