"""IndexSync: background writes reach Qdrant, coalesce per id, and surface failures.

The writer thread is observed through fake indexes and a fake retry pause that signal
when they are called (or block until the test lets them go on), never through sleeps or
wall-clock bounds.
"""

import threading

import numpy as np
import pytest

from recallstream.model.index_sync import IndexSync
from recallstream.model.vector_index import VectorIndex

WAIT_S = 10  # how long a wait for something that must happen may take before the test fails


@pytest.fixture(params=["memory", "edge"])
def index(request, tmp_path):
    """Every test runs on both embedded backends: qdrant-client's local mode and Qdrant Edge."""
    index = VectorIndex.connect(":memory:" if request.param == "memory"
                                else f"edge:{tmp_path / 'qdrant-edge'}")
    yield index
    index.close()


def test_newest_vector_of_an_id_wins(index):
    sync = IndexSync(index, items="items", users="users", dim=2)
    for step in range(50):
        angle = step / 50
        sync.put_items(["a", "b"], np.array([[np.cos(angle), np.sin(angle)], [0.0, 1.0]]),
                       [{"step": step}, {"step": step}])
    sync.drain()
    stored = index.retrieve_vectors("items", ["a"])["a"]
    np.testing.assert_allclose(stored, [np.cos(49 / 50), np.sin(49 / 50)], atol=1e-6)
    assert index.search("items", [0.0, 1.0], limit=1)[0][2]["step"] == 49
    assert index.count("items") == 2
    sync.close()


def test_delete_after_put_removes_the_point(index):
    sync = IndexSync(index, items="items", users="users", dim=2)
    sync.put_items(["a", "b"], np.eye(2), [{}, {}])
    sync.delete_items(["a"])
    sync.drain()
    assert [i for i, _, _ in index.search("items", [1.0, 0.0], limit=5)] == ["b"]
    sync.close()


class FlakyIndex:
    """Wraps an index; its first `failures` writes fail (Qdrant going away and back)."""

    def __init__(self, index, failures: int):
        self.index, self.failures = index, failures

    def ensure_collection(self, name, dim):
        self.index.ensure_collection(name, dim)

    def upsert(self, *args, **kwargs):
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("qdrant is down")
        self.index.upsert(*args, **kwargs)


class Pauses:
    """IndexSync's `sleep` between retries: records each pause and returns at once, except
    the `block_at`-th, which waits until `resume` is set."""

    def __init__(self, block_at=None):
        self.seconds, self.block_at = [], block_at
        self.changed = threading.Condition()
        self.resume = threading.Event()

    def __call__(self, seconds):
        with self.changed:
            self.seconds.append(seconds)
            count = len(self.seconds)
            self.changed.notify_all()
        if count == self.block_at:
            self.resume.wait()

    def wait_for(self, count) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.seconds) >= count, timeout=WAIT_S)


def test_failed_writes_are_retried_until_qdrant_is_back(index):
    pauses = Pauses()
    sync = IndexSync(FlakyIndex(index, failures=3), items="items", users="users", dim=2,
                     initial_backoff_s=0.01, sleep=pauses)
    sync.put_items(["a", "b"], np.eye(2), [{"v": 1}, {"v": 1}])
    sync.drain(timeout_s=WAIT_S)
    assert sync.failed_writes == 3
    assert pauses.seconds == [0.01, 0.02, 0.04]  # the pause doubles per consecutive failure
    assert index.count("items") == 2
    sync.close()


def test_drain_does_not_return_while_qdrant_is_down(index):
    flaky = FlakyIndex(index, failures=10**6)
    pauses = Pauses(block_at=3)
    sync = IndexSync(flaky, items="items", users="users", dim=2,
                     initial_backoff_s=0.01, max_backoff_s=0.02, sleep=pauses)
    try:
        sync.put_items(["a"], np.ones((1, 2)), [{}])
        assert pauses.wait_for(3), "the writer did not retry"
        # the writer waits in its third pause: three writes failed and were put back
        with pytest.raises(TimeoutError, match="still pending"):
            sync.drain(timeout_s=0.1)
        assert sync.pending() == 1 and sync.failed_writes == 3
        assert pauses.seconds == [0.01, 0.02, 0.02]  # doubled up to max_backoff_s
        flaky.failures = 0  # Qdrant is back: the same write goes through
    finally:
        pauses.resume.set()
    sync.drain(timeout_s=WAIT_S)
    assert index.count("items") == 1 and sync.failed_writes == 3
    sync.close()


class GatedIndex(FlakyIndex):
    """Records each upsert's {id: payload}; its first upsert signals `entered`, waits for
    `fail`, then raises (a write that fails while the trainer queues newer vectors)."""

    def __init__(self, index):
        super().__init__(index, failures=1)
        self.calls = []
        self.entered, self.fail = threading.Event(), threading.Event()

    def upsert(self, collection, ids, vectors, payloads, **kwargs):
        self.calls.append(dict(zip(ids, payloads)))
        if len(self.calls) == 1:
            self.entered.set()
            self.fail.wait()
        super().upsert(collection, ids, vectors, payloads, **kwargs)


def test_a_newer_vector_queued_during_a_failed_write_wins(index):
    gated = GatedIndex(index)
    sync = IndexSync(gated, items="items", users="users", dim=2, initial_backoff_s=0.01,
                     sleep=Pauses())
    old, new = {"v": "old"}, {"v": "new"}
    try:
        sync.put_items(["a", "b"], np.array([[1.0, 0.0], [1.0, 0.0]]), [old, old])
        assert gated.entered.wait(WAIT_S), "the first write never started"
        sync.put_items(["a"], np.array([[0.0, 1.0]]), [new])  # while that write is under way
    finally:
        gated.fail.set()  # the first write fails and is put back: a's newer vector wins
    sync.drain(timeout_s=WAIT_S)
    assert sync.failed_writes == 1
    assert gated.calls == [{"a": old, "b": old}, {"b": old, "a": new}]  # the retry, coalesced
    assert index.search("items", [0.0, 1.0], limit=1)[0][2] == {**new, "item_id": "a"}
    np.testing.assert_allclose(index.retrieve_vectors("items", ["a"])["a"], [0.0, 1.0], atol=1e-6)
    sync.close()


def test_mismatched_lengths_are_rejected(index):
    sync = IndexSync(index, items="items", users="users", dim=2)
    with pytest.raises(ValueError, match="2 ids, 1 vectors"):
        sync.put_items(["a", "b"], np.ones((1, 2)), [{}, {}])
    sync.close()


class CountingIndex(FlakyIndex):
    """Counts completed writes; wait_for_writes(n) waits until n have completed."""

    def __init__(self, index):
        super().__init__(index, failures=0)
        self.writes = 0
        self.written = threading.Condition()

    def upsert(self, *args, **kwargs):
        super().upsert(*args, **kwargs)
        with self.written:
            self.writes += 1
            self.written.notify_all()

    def wait_for_writes(self, count) -> bool:
        with self.written:
            return self.written.wait_for(lambda: self.writes >= count, timeout=WAIT_S)


def test_min_interval_coalesces_updates_of_hot_items(index):
    counting = CountingIndex(index)
    # an interval no test run reaches: what is written before the drain is the first write only
    sync = IndexSync(counting, items="items", users="users", dim=2, min_interval_s=3600)
    sync.put_items(["hot"], np.array([[1.0, 0.0]]), [{"step": 0}])
    assert counting.wait_for_writes(1), "the first write did not go at once"
    for step in range(1, 30):  # one hot item, updated 29 times within the interval
        sync.put_items(["hot"], np.array([[1.0, step]]), [{"step": step}])
    assert counting.writes == 1 and sync.pending() == 1  # coalesced, waiting for the interval
    sync.drain(timeout_s=WAIT_S)  # a drain writes at once: a drain that waited would time out
    assert counting.writes == 2
    assert index.search("items", [1.0, 0.0], limit=1)[0][2]["step"] == 29
    sync.close()
