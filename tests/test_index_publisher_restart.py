"""IndexPublisher at start-up: a persistent index that holds the catalog as the checkpointed
model left it serves recall at once, without re-embedding; anything else is re-published.

A "restart" here is what the worker does: save the learner, the tables and the publisher's
state (after ``drain``, as ``WorkerState.save`` does), close, then build new ones from that
state on the same Qdrant Edge folder and call ``ensure_catalog`` with the saved version.
"""

from __future__ import annotations

import numpy as np
import pytest

from recallstream.consumers.index_publisher import MARKER, IndexPublisher
from recallstream.model.index_sync import IndexSync
from recallstream.model.online import OnlineLearner
from recallstream.model.recall import Recaller
from recallstream.model.towers import movielens_config
from recallstream.model.vector_index import VectorIndex
from recallstream.streaming.entity_tables import EntityTables
from recallstream.streaming.events import EntityRecord

ITEMS = 60
CLICKS = [(f"u{n % 7}", f"i{(n * 13) % ITEMS}", 1.7e9 + n) for n in range(80)]


class CountingLearner:
    """An OnlineLearner whose item embeddings are counted (the cost a restart should skip)."""

    def __init__(self, learner):
        self.learner = learner
        self.items_embedded = 0

    def embed_items(self, item_ids, items):
        self.items_embedded += len(item_ids)
        return self.learner.embed_items(item_ids, items)

    def __getattr__(self, name):
        return getattr(self.learner, name)


def build(location, state=None):
    """Index, publisher and counting learner, from a saved ``state`` (or fresh)."""
    learner = OnlineLearner(movielens_config(id_buckets=64, output_dim=8, hidden=(16,)), seed=0)
    tables = EntityTables()
    if state is None:
        tables.apply([EntityRecord("items", f"i{i}", 1.0, {"genres": [f"g{i % 3}"]})
                      for i in range(ITEMS)])
    else:
        learner.load_state_dict(state["learner"])
        tables.load_state_dict(state["tables"])
    counting = CountingLearner(learner)
    index = VectorIndex.connect(location)
    publisher = IndexPublisher(IndexSync(index, items="items", users="users", dim=8),
                               counting, tables, reembed_every_batches=1000)
    if state is not None:
        publisher.load_state_dict(state["publisher"])
    return index, publisher, counting


def train_and_checkpoint(location, batches=4):
    """A first run: publish, train a few batches, drain and save (as a checkpoint does)."""
    index, publisher, learner = build(location)
    assert publisher.ensure_catalog(0) is True and learner.items_embedded == ITEMS
    tables = publisher.tables
    for version in range(1, batches + 1):
        batch = CLICKS[(version - 1) * 20:version * 20]
        learner.train_batch([u for u, _, _ in batch], [i for _, i, _ in batch],
                            tables.users, tables.items)
        publisher.after_batch(batch, version=version)
    publisher.drain()
    state = {"learner": learner.state_dict(), "tables": tables.state_dict(),
             "publisher": publisher.state_dict(), "version": batches}
    recalled = {u: [h.item_id for h in Recaller(index).recall(u, k=10).items]
                for u in ("u0", "u3")}
    return index, publisher, state, recalled


def close(index, publisher):
    publisher.close()
    index.close()


def test_a_restart_on_the_same_edge_folder_serves_recall_without_re_embedding(tmp_path):
    location = f"edge:{tmp_path / 'qdrant-edge'}"
    index, publisher, state, recalled = train_and_checkpoint(location)
    close(index, publisher)

    index, publisher, learner = build(location, state)
    try:
        assert publisher.ensure_catalog(state["version"]) is False
        assert learner.items_embedded == 0
        assert publisher.sync.points_written == 0  # nothing written at all
        recaller = Recaller(index)  # right after start: the same answers as before the stop
        assert {u: [h.item_id for h in recaller.recall(u, k=10).items]
                for u in recalled} == recalled
        assert recaller.recall("u0").model_version == state["version"]
    finally:
        close(index, publisher)


def test_the_memory_backend_always_re_publishes(tmp_path):
    index, publisher, state, _ = train_and_checkpoint(":memory:")
    close(index, publisher)
    index, publisher, learner = build(":memory:", state)
    try:
        assert publisher.ensure_catalog(state["version"]) is True
        assert learner.items_embedded == ITEMS
        publisher.drain()
        assert index.count("items") == ITEMS
    finally:
        close(index, publisher)


@pytest.mark.parametrize("change", ["older checkpoint", "another model", "item missing",
                                    "written after the drain", "no marker"])
def test_an_index_that_does_not_match_the_checkpoint_is_re_published(tmp_path, change):
    location = f"edge:{tmp_path / 'qdrant-edge'}"
    index, publisher, state, _ = train_and_checkpoint(location)
    version = state["version"]
    if change == "older checkpoint":
        version -= 1  # the newest checkpoint was lost; the index is ahead of the model
    elif change == "another model":
        state["publisher"] = {**state["publisher"], "lineage": "another"}
    elif change == "item missing":
        index.delete("items", ["i5"])
    elif change == "written after the drain":  # then a crash before the next checkpoint
        publisher.after_batch(CLICKS[-5:], version=version + 1)
        publisher.sync.drain()  # the vectors arrived; no checkpoint followed
        assert index.metadata("items")[MARKER]["clean"] is False
    elif change == "no marker":
        index.update_metadata("items", {MARKER: None})
    publisher.sync.close()  # not publisher.drain: nothing marks the index clean again
    index.close()

    index, publisher, learner = build(location, state)
    try:
        assert publisher.ensure_catalog(version) is True
        assert learner.items_embedded == ITEMS
        publisher.drain()  # and once published, the index is marked clean at that version
        assert index.count("items") == ITEMS
        assert index.metadata("items")[MARKER] == {
            "lineage": publisher.lineage, "version": version, "items": ITEMS, "clean": True}
        assert np.isfinite(index.search("items", np.ones(8), limit=3)[0][1])
    finally:
        close(index, publisher)
