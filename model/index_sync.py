"""Keep Qdrant's item and user vectors in step with a model that keeps learning.

The trainer should not wait for Qdrant: in embedded mode an upsert costs about
0.15 ms per point in Python, as much as a training step for a few hundred
points. :class:`IndexSync` therefore hands vectors to one background writer
thread. Vectors handed over while the writer is busy are coalesced per id
(the newest vector wins), so a slow index costs freshness, never throughput or
memory beyond one pending vector per id. Deletions of retired items go through
the same queue, in order with the upserts of the same id.

Failures are of two kinds (:func:`is_retryable`):

- **retryable** (Qdrant unavailable or timing out, beyond the retries of
  :class:`~recallstream.model.vector_index.VectorIndex`): the write is put back, unless a
  newer vector of the same id came in meanwhile, and tried again after a growing pause
  (up to ``max_backoff_s``): training goes on, and nothing is dropped;
- **permanent** (anything else, e.g. Qdrant refusing a point): the write is split into
  one write per point, so that only the points Qdrant refuses are dropped. A vector with
  a NaN or an infinity never reaches Qdrant: :meth:`IndexSync.put_items` and
  :meth:`IndexSync.put_users` skip it (any older pending vector of that id stays).
  Dropped points are reported to ``on_reject`` (the worker counts them in
  ``recallstream_qdrant_points_rejected_total``) and logged once per kind and reason.

Qdrant holds derived data only: every vector can be recomputed from the
model. So the worker never checkpoints stream offsets past vectors that are
lost: it calls :meth:`IndexSync.drain` before a checkpoint, which returns
only once everything queued has reached Qdrant, and re-embeds the whole
catalog after a restart unless a persistent index already holds it as of the
checkpoint (``IndexPublisher.ensure_catalog`` in the worker). A drain has a deadline (``drain_timeout_s``, the
setting ``qdrant_drain_timeout_s`` in the worker): past it, :class:`StalledIndex`
says that Qdrant has not taken the writes, and the worker exits (status 5) for a
supervisor to restart it from its last checkpoint.

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
>>> sync.put_items(["c"], np.array([[np.nan, 1.0]]), [{}])  # skipped: Qdrant refuses NaN
>>> sync.drain(); index.count("items"), sync.rejected_points
(1, 1)
>>> sync.close()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from recallstream.model.vector_index import VectorIndex, is_unavailable

log = logging.getLogger(__name__)

_DELETE = None  # pending marker of a retired item

#: Reasons of dropped points (the ``reason`` of ``on_reject``): a vector with a NaN or an
#: infinity, and a point Qdrant refused with a permanent error.
REJECT_REASONS = ("non_finite", "refused")


class StalledIndex(TimeoutError):
    """A drain did not finish within its deadline: Qdrant has not taken the queued writes.

    Examples
    --------
    >>> raise StalledIndex("3 points still pending after 1.0 s")
    Traceback (most recent call last):
    ...
    recallstream.model.index_sync.StalledIndex: 3 points still pending after 1.0 s
    """


def is_retryable(error: BaseException) -> bool:
    """Whether a failed write is worth trying again: Qdrant away or timing out.

    Everything else (Qdrant refusing the request, a bad vector) fails again the same way.

    >>> is_retryable(ConnectionRefusedError()), is_retryable(TimeoutError())
    (True, True)
    >>> is_retryable(ValueError("vectors must be finite"))
    False
    """
    return isinstance(error, (TimeoutError, OSError)) or is_unavailable(error)


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
        Least time between the starts of two rounds of writes (a round writes the
        pending items, then the pending users). Vectors queued meanwhile
        coalesce, so a hot item is written once per interval instead of once per
        batch: embedded Qdrant spends Python time per point, which the trainer
        feels through the GIL. :meth:`drain` does not wait for the interval.
    drain_timeout_s : float or None, default None
        Deadline of :meth:`drain` (and of the drain in :meth:`close`) when it is not
        given one: past it, :class:`StalledIndex`. None waits as long as it takes.
    sleep : callable, default time.sleep
        Waits out the pause after a failed write (tests pass one that records it).

    Attributes
    ----------
    on_write : callable or None
        Called by the writer thread after each write: ``(kind, ids, seconds, ok)``.
    on_reject : callable or None
        Called with ``(kind, count, reason)`` when points are dropped, ``reason`` one of
        :data:`REJECT_REASONS`.
    """

    def __init__(self, index: VectorIndex, *, items: str, users: str, dim: int,
                 max_points_per_write: int = 2048, initial_backoff_s: float = 0.5,
                 max_backoff_s: float = 10.0, min_interval_s: float = 0.0,
                 drain_timeout_s: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if drain_timeout_s is not None and drain_timeout_s <= 0:
            raise ValueError(f"drain_timeout_s must be > 0 or None, got {drain_timeout_s!r}")
        self.index = index
        self.drain_timeout_s = drain_timeout_s
        self.items, self.users = items, users
        self.max_points_per_write = max_points_per_write
        self.initial_backoff_s, self.max_backoff_s = initial_backoff_s, max_backoff_s
        self.failed_writes = 0
        self.min_interval_s = min_interval_s
        self._sleep = sleep
        self._draining = 0
        for name in (items, users):
            ensure_aliased(index, name, dim)
        # kind -> id -> (vector, payload) or _DELETE; insertion order is write order
        self._pending: dict[str, dict[str, object]] = {"item": {}, "user": {}}
        self._lock = threading.Condition()
        self._busy = False
        self._closed = False
        self._stalled = False  # a drain gave up: close() does not wait again
        self.points_written = 0
        self.rejected_points = 0
        self._logged_rejects: set[tuple[str, str]] = set()
        self.on_write: Callable[[str, list, float, bool], None] | None = None
        self.on_reject: Callable[[str, int, str], None] | None = None
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
        """Wait until everything queued so far is written or dropped as refused.

        Waits up to ``timeout_s`` seconds (default ``drain_timeout_s``; None: however
        long Qdrant is away), then raises :class:`StalledIndex`.
        """
        timeout_s = self.drain_timeout_s if timeout_s is None else timeout_s
        with self._lock:
            self._draining += 1
            self._lock.notify_all()
            try:
                done = self._lock.wait_for(
                    lambda: not self._busy and not any(self._pending.values()), timeout=timeout_s)
            finally:
                self._draining -= 1
            self._stalled = not done
            if not done:
                pending = sum(len(p) for p in self._pending.values())
                raise StalledIndex(f"Qdrant writes still pending after {timeout_s} s: "
                                   f"{pending} points not written, {self.failed_writes} "
                                   f"failed writes so far")

    def close(self, join_timeout_s: float = 60.0) -> None:
        """Write what is pending (unless a drain already gave up) and stop the writer
        thread, waiting up to ``join_timeout_s`` for a write under way."""
        try:
            if not self._stalled:
                self.drain()
        finally:
            with self._lock:
                self._closed = True
                self._stalled = True  # the writer stops at its next failure
                self._lock.notify_all()
            self._thread.join(join_timeout_s)
            if self._thread.is_alive():
                log.warning("the Qdrant writer is still in a write after %.0f s; leaving it",
                            join_timeout_s)

    def _put(self, kind: str, ids: Sequence[str], vectors: np.ndarray,
             payloads: Sequence[dict]) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(ids) != len(vectors) or len(ids) != len(payloads):
            raise ValueError(f"{len(ids)} ids, {len(vectors)} vectors, {len(payloads)} payloads")
        finite = np.isfinite(vectors).reshape(len(vectors), -1).all(axis=1)
        with self._lock:
            pending = self._pending[kind]
            for item_id, vector, payload, ok in zip(ids, vectors, payloads, finite):
                if ok:
                    pending.pop(item_id, None)  # re-insert: the newest write goes last
                    pending[item_id] = (vector, payload)
            self._lock.notify_all()
        if not finite.all():
            bad = [item_id for item_id, ok in zip(ids, finite) if not ok]
            self._reject(kind, bad, "non_finite", "vectors with NaN or infinity")

    def _run(self) -> None:
        backoff = self.initial_backoff_s
        last_round = float("-inf")
        owed: list[str] = []  # kinds still to write in this round
        while True:
            with self._lock:
                if not owed:  # a new round: at most one per min_interval_s
                    self._lock.wait_for(lambda: self._closed or self._draining or
                                        time.monotonic() - last_round >= self.min_interval_s,
                                        timeout=max(0.0, last_round + self.min_interval_s - time.monotonic()))
                    self._lock.wait_for(lambda: self._closed or any(self._pending.values()))
                    last_round = time.monotonic()
                    if not any(self._pending.values()):
                        return  # closed and nothing left
                    # every kind with pending vectors, items first: users written only when
                    # no item was pending would wait for a drain while clicks keep coming
                    owed = [kind for kind in ("item", "user") if self._pending[kind]]
                kind = owed.pop(0)  # still pending: only this thread takes from the queue
                work = self._take(kind)
                self._busy = True
            started = time.monotonic()
            try:
                self._write(kind, work)
            except Exception as error:
                self._report(kind, work, started, ok=False)
                retry = work if is_retryable(error) else self._write_one_by_one(kind, work, error)
                if not retry:
                    backoff = self.initial_backoff_s
                    continue
                self._put_back(kind, retry)
                log.warning("Qdrant write of %d points failed (%s); retrying in %.1f s",
                            len(retry), str(error)[:300], backoff)
                with self._lock:
                    if self._closed and self._stalled:
                        return  # closing after a drain gave up: nobody waits for these
                self._sleep(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            backoff = self.initial_backoff_s
            self._report(kind, work, started, ok=True)
            self._done(len(work))

    def _done(self, written: int) -> None:
        with self._lock:
            self._busy = False
            self.points_written += written
            self._lock.notify_all()

    def _write_one_by_one(self, kind: str, work: list, error: Exception) -> list:
        # A permanent error: find the points Qdrant refuses, drop them, write the others.
        # Returns what failed with a retryable error meanwhile (to put back).
        if len(work) == 1:
            self._reject(kind, [work[0][0]], "refused", repr(error)[:300])
            self._done(0)
            return []
        retry, written = [], 0
        for entry in work:
            started = time.monotonic()
            try:
                self._write(kind, [entry])
            except Exception as single:
                if is_retryable(single):
                    retry.append(entry)
                else:
                    self._reject(kind, [entry[0]], "refused", repr(single)[:300])
                continue
            self._report(kind, [entry], started, ok=True)
            written += 1
        if not retry:
            self._done(written)
        else:
            with self._lock:
                self.points_written += written
        return retry

    def _reject(self, kind: str, ids: list, reason: str, detail: str) -> None:
        with self._lock:
            self.rejected_points += len(ids)
            first = (kind, reason) not in self._logged_rejects
            self._logged_rejects.add((kind, reason))
        if first:  # once per kind and reason: the counter tells how many followed
            log.warning("dropping %d %s vector(s) Qdrant cannot take (%s: %s), e.g. id %r; "
                        "further ones are only counted", len(ids), kind, reason, detail,
                        str(ids[0])[:100])
        if self.on_reject is not None:
            try:
                self.on_reject(kind, len(ids), reason)
            except Exception as error:  # metrics must never stop the writer
                log.warning("on_reject hook failed: %s", error)

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

    def _take(self, kind: str) -> list:
        pending = self._pending[kind]
        return [(item_id, pending.pop(item_id)) for item_id in list(pending)[:self.max_points_per_write]]

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


def ensure_aliased(index: VectorIndex, alias: str, dim: int) -> None:
    """Make ``alias`` name a collection: if nothing of that name exists, create
    ``<alias>_v0`` and point the alias at it, so that a reset to a snapshot can later
    fill ``<alias>_v<N>`` and switch the alias atomically (an existing collection or
    alias of that name is kept, its dimension checked)."""
    if index.exists(alias):
        index.ensure_collection(alias, dim)
        return
    index.ensure_collection(f"{alias}_v0", dim)
    index.swap_alias(alias, f"{alias}_v0")
