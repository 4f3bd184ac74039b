"""Fault: Qdrant unavailable, or slow, for a while (issue 15).

Real broker; the fault is injected at the vector-index boundary: a wrapper around
:class:`VectorIndex` whose writes fail as a server's connection errors do (or sleep)
while the test says so. While Qdrant is away the worker keeps training, retries its
writes with a growing backoff, counts each failed write in
``recallstream_qdrant_write_failures_total``, and neither checkpoints nor commits offsets
past vectors that did not arrive (its checkpoint's drain waits). When Qdrant is back it
catches up: the final index holds every catalog item with the final model version
(``reembed_every_batches=1`` re-embeds the catalog after each batch, as a long run does
every few batches) and every click is trained once.

(A worker whose Qdrant never comes back: tests/test_worker_index_stall.py.)
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from prometheus_client import REGISTRY

from recallstream.consumers.worker import Worker, WorkerOptions
from recallstream.model.checkpoint import CheckpointStore
from recallstream.model.vector_index import VectorIndex
from recallstream.streaming.kafka_io import read_topic

from conftest import after_last_record, committed_offsets, replayed_and_joined

CLICKS = 1200
BATCH = 100


class FlakyIndex:
    """A VectorIndex whose writes fail (``down``) or take ``delay_s`` longer, on demand."""

    def __init__(self, index: VectorIndex):
        self.index = index
        self.down = threading.Event()
        self.delay_s = 0.0
        self.failed_writes = 0
        self.slow_writes = 0

    def __getattr__(self, name):
        return getattr(self.index, name)

    def _fault(self):
        if self.down.is_set():
            self.failed_writes += 1
            raise ConnectionRefusedError("injected: Qdrant is unavailable")
        if self.delay_s:
            self.slow_writes += 1
            time.sleep(self.delay_s)

    def upsert(self, *args, **kwargs):
        self._fault()
        return self.index.upsert(*args, **kwargs)

    def delete(self, *args, **kwargs):
        self._fault()
        return self.index.delete(*args, **kwargs)


def failures() -> float:
    return sum(REGISTRY.get_sample_value("recallstream_qdrant_write_failures_total",
                                         {"collection": c}) or 0.0 for c in ("items", "users"))


def committed(settings) -> dict:
    return committed_offsets(settings, settings.topic_examples)


@pytest.fixture
def stream(kafka_settings, tmp_path):
    tuned = dataclasses.replace(kafka_settings, batch_size=BATCH, batch_timeout_s=0.3,
                                checkpoint_every_batches=2, checkpoint_every_s=1e6,
                                reembed_every_batches=1, qdrant_drain_timeout_s=120.0,
                                qdrant_write_interval_s=0.0, metrics_port=0,
                                checkpoint_dir=str(tmp_path / "ckpt"))
    with replayed_and_joined(tuned, "qdrant", CLICKS) as settings:
        yield settings


def catalog(settings) -> set[str]:
    return {r.key.decode() for r in read_topic(settings, settings.topic_items) if r.value}


def assert_caught_up(settings, index: VectorIndex, report: dict) -> None:
    assert report["clicks_trained"] == CLICKS  # batches may be more: partial ones time out
    items = catalog(settings)
    payloads = index.retrieve_payloads(settings.collection_items, sorted(items))
    assert set(payloads) == items  # every catalog item has its point
    assert {p["model_version"] for p in payloads.values()} == {report["batches"]}
    state = CheckpointStore(settings.checkpoint_dir).load_latest()
    assert state["counters"]["clicks_trained"] == CLICKS
    assert {int(p): o for p, o in state["offsets"][settings.topic_examples].items()} == after_last_record(
        settings, settings.topic_examples)


def test_qdrant_away_for_a_while_retries_commits_nothing_past_it_and_catches_up(stream):
    settings = stream
    memory = VectorIndex.connect(":memory:")
    flaky = FlakyIndex(memory)
    worker = Worker(settings, WorkerOptions(exit_when_idle_s=3.0), index=flaky)
    before = failures()
    flaky.down.set()  # away from the start: even the start-up catalog waits
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(report=worker.run()), name="worker")
    thread.start()
    try:
        deadline = time.monotonic() + 60
        # down until a checkpoint is due (2 batches) and several writes have failed
        while (worker.counters["batches"] < 3 or flaky.failed_writes < 4) and time.monotonic() < deadline:
            assert thread.is_alive(), "the worker stopped while Qdrant was away"
            time.sleep(0.05)
        assert worker.counters["batches"] >= 3 and flaky.failed_writes >= 4
        # while Qdrant is away: no checkpoint and no committed offset past unwritten vectors
        assert CheckpointStore(settings.checkpoint_dir).paths() == []
        assert committed(settings) == {}
        assert memory.count(settings.collection_items) == 0
        failed_metric = failures() - before
        assert failed_metric >= 4
        retries = worker.trainer.publisher.sync.failed_writes
        assert retries >= 4  # put back and tried again, not dropped
    finally:
        flaky.down.clear()  # Qdrant is back
        thread.join(timeout=180)
    assert not thread.is_alive()
    assert_caught_up(settings, memory, outcome["report"])
    assert committed(settings) == after_last_record(settings, settings.topic_examples)
    assert worker.trainer.publisher.sync.rejected_points == 0  # nothing dropped for it
    memory.close()


def test_a_slow_qdrant_costs_freshness_not_clicks(stream):
    settings = stream
    memory = VectorIndex.connect(":memory:")
    slow = FlakyIndex(memory)
    slow.delay_s = 0.4  # every write: far slower than a training step
    report = Worker(settings, WorkerOptions(exit_when_idle_s=3.0), index=slow).run()
    assert slow.slow_writes >= 3
    assert_caught_up(settings, memory, report)
    memory.close()
