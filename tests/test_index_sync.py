"""IndexSync: background writes reach Qdrant, coalesce per id, and surface failures."""


import numpy as np
import pytest

from model.index_sync import IndexSync
from model.vector_index import VectorIndex


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


class FailingIndex:
    """An index whose upserts fail after `ok` calls (Qdrant going away)."""

    def __init__(self, ok: int):
        self.ok, self.calls = ok, 0

    def ensure_collection(self, name, dim):
        pass

    def upsert(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.ok:
            raise ConnectionError("qdrant is down")


def test_writer_failure_is_raised_by_drain_and_by_later_puts():
    sync = IndexSync(FailingIndex(ok=0), items="items", users="users", dim=2)
    sync.put_items(["a"], np.ones((1, 2)), [{}])
    with pytest.raises(RuntimeError, match="Qdrant") as raised:
        sync.drain(timeout_s=10)
    assert isinstance(raised.value.__cause__, ConnectionError)
    with pytest.raises(RuntimeError):
        sync.put_items(["b"], np.ones((1, 2)), [{}])


def test_mismatched_lengths_are_rejected(index):
    sync = IndexSync(index, items="items", users="users", dim=2)
    with pytest.raises(ValueError, match="2 ids, 1 vectors"):
        sync.put_items(["a", "b"], np.ones((1, 2)), [{}, {}])
    sync.close()
