"""IndexSync: background writes reach Qdrant, coalesce per id, and surface failures."""


import time

import numpy as np
import pytest

from recallstream.model.index_sync import IndexSync
from recallstream.model.vector_index import VectorIndex


@pytest.fixture
def index():
    index = VectorIndex.connect(":memory:")
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


def test_failed_writes_are_retried_until_qdrant_is_back(index):
    sync = IndexSync(FlakyIndex(index, failures=3), items="items", users="users", dim=2,
                     initial_backoff_s=0.01)
    sync.put_items(["a", "b"], np.eye(2), [{"v": 1}, {"v": 1}])
    sync.drain(timeout_s=10)
    assert sync.failed_writes == 3
    assert index.count("items") == 2
    sync.close()


def test_drain_does_not_return_while_qdrant_is_down(index):
    sync = IndexSync(FlakyIndex(index, failures=10**6), items="items", users="users", dim=2,
                     initial_backoff_s=0.01, max_backoff_s=0.02)
    sync.put_items(["a"], np.ones((1, 2)), [{}])
    with pytest.raises(TimeoutError, match="still pending"):
        sync.drain(timeout_s=0.5)
    assert sync.pending() == 1 and sync.failed_writes >= 2
    sync.index.failures = 0  # Qdrant is back: the same write goes through
    sync.drain(timeout_s=10)
    assert index.count("items") == 1
    sync.close()


def test_a_newer_vector_queued_during_a_failed_write_wins(index):
    flaky = FlakyIndex(index, failures=1)
    sync = IndexSync(flaky, items="items", users="users", dim=2, initial_backoff_s=0.2)
    sync.put_items(["a"], np.array([[1.0, 0.0]]), [{"v": "old"}])
    time.sleep(0.05)  # the first write is failing or waiting to retry
    sync.put_items(["a"], np.array([[0.0, 1.0]]), [{"v": "new"}])
    sync.drain(timeout_s=10)
    assert index.search("items", [0.0, 1.0], limit=1)[0][2]["v"] == "new"
    sync.close()


def test_mismatched_lengths_are_rejected(index):
    sync = IndexSync(index, items="items", users="users", dim=2)
    with pytest.raises(ValueError, match="2 ids, 1 vectors"):
        sync.put_items(["a", "b"], np.ones((1, 2)), [{}, {}])
    sync.close()


class CountingIndex(FlakyIndex):
    def __init__(self, index):
        super().__init__(index, failures=0)
        self.writes = 0

    def upsert(self, *args, **kwargs):
        self.writes += 1
        super().upsert(*args, **kwargs)


def test_min_interval_coalesces_updates_of_hot_items(index):
    counting = CountingIndex(index)
    sync = IndexSync(counting, items="items", users="users", dim=2, min_interval_s=0.3)
    started = time.monotonic()
    for step in range(30):  # one hot item, updated every 10 ms for 0.3 s
        sync.put_items(["hot"], np.array([[1.0, step]]), [{"step": step}])
        time.sleep(0.01)
    sync.drain(timeout_s=5)  # a drain writes at once, without waiting for the interval
    assert time.monotonic() - started < 1.0
    assert counting.writes <= 3
    assert index.search("items", [1.0, 0.0], limit=1)[0][2]["step"] == 29
    sync.close()
