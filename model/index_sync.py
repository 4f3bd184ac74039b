"""Keep Qdrant's item and user vectors in step with a model that keeps learning.

The trainer should not wait for Qdrant: in embedded mode an upsert costs about
0.15 ms per point in Python, as much as a training step for a few hundred
points. :class:`IndexSync` therefore hands vectors to one background writer
thread. Vectors handed over while the writer is busy are coalesced per id
(the newest vector wins), so a slow index costs freshness, never throughput or
memory beyond one pending vector per id. Deletions of retired items go through
the same queue, in order with the upserts of the same id.

Qdrant holds derived data only: every vector can be recomputed from the
model. So the worker never checkpoints stream offsets past vectors that are
lost: it calls :meth:`IndexSync.drain` before a checkpoint (the pending
vectors reach Qdrant or the error surfaces), and re-embeds the whole catalog
after a restart.

Examples
--------
>>> import numpy as np
>>> from model.vector_index import VectorIndex
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
from collections.abc import Sequence

import numpy as np

from model.vector_index import VectorIndex

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
    """

    def __init__(self, index: VectorIndex, *, items: str, users: str, dim: int,
                 max_points_per_write: int = 2048) -> None:
        self.index = index
        self.items, self.users = items, users
        self.max_points_per_write = max_points_per_write
        index.ensure_collection(items, dim)
        index.ensure_collection(users, dim)
        # kind -> id -> (vector, payload) or _DELETE; insertion order is write order
        self._pending: dict[str, dict[str, object]] = {"item": {}, "user": {}}
        self._lock = threading.Condition()
        self._busy = False
        self._error: BaseException | None = None
        self._closed = False
        self.points_written = 0
        self._thread = threading.Thread(target=self._run, name="index-sync", daemon=True)
        self._thread.start()

    def put_items(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> None:
        """Queue item vectors (each replaces any pending vector of the same id)."""
        self._put("item", ids, vectors, payloads)

    def put_users(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Queue user vectors (used for recall by user id)."""
        self._put("user", ids, vectors, [{}] * len(ids))

    def delete_items(self, ids: Sequence[str]) -> None:
        """Queue the removal of retired items."""
        with self._lock:
            self._raise_error()
            for item_id in ids:
                self._pending["item"].pop(item_id, None)
                self._pending["item"][item_id] = _DELETE
            self._lock.notify_all()

    def pending(self) -> int:
        """Vectors and deletions not yet written."""
        with self._lock:
            return sum(len(p) for p in self._pending.values())

    def drain(self, timeout_s: float | None = None) -> None:
        """Wait until everything queued so far is written; re-raise a writer error."""
        with self._lock:
            done = self._lock.wait_for(
                lambda: self._error is not None or (not self._busy and not any(self._pending.values())),
                timeout=timeout_s)
            self._raise_error()
            if not done:
                raise TimeoutError(f"Qdrant writes still pending after {timeout_s} s")

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
            self._raise_error()
            pending = self._pending[kind]
            for item_id, vector, payload in zip(ids, vectors, payloads):
                pending.pop(item_id, None)  # re-insert: the newest write goes last
                pending[item_id] = (vector, payload)
            self._lock.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError("writing vectors to Qdrant failed") from self._error

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._closed or any(self._pending.values()))
                if not any(self._pending.values()):
                    return  # closed and nothing left
                kind, work = self._take()
                self._busy = True
            try:
                self._write(kind, work)
            except BaseException as error:  # surfaced to the trainer by drain()/put
                log.error("Qdrant write failed: %s", error)
                with self._lock:
                    self._error = error
                    self._busy = False
                    self._lock.notify_all()
                return
            with self._lock:
                self._busy = False
                self.points_written += len(work)
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
