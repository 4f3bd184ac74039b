"""The worker writes its checkpoints in a background thread (consumers/checkpoint_writer.py).

Against a real broker, with the write of the first checkpoint held back: training goes
on meanwhile, but only until the next checkpoint is due (one write at a time); nothing
is committed to the consumer group before the file is written; the file holds the state
of the moment it was staged, not of the moment it was written; and the run ends with
every click trained exactly once.
"""

from __future__ import annotations

import dataclasses
import threading
import time

from recallstream.consumers.worker import Worker, WorkerOptions
from recallstream.model.checkpoint import CheckpointStore
from recallstream.model.vector_index import VectorIndex

from conftest import after_last_record, committed_offsets, replayed_and_joined

CLICKS = 5000  # a poll brings up to 2,000 records: the second checkpoint is due long before the end
BATCH = 100
EVERY = 4  # batches between checkpoints


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def settled(value, quiet_s: float = 1.0, timeout_s: float = 60.0):
    """``value()`` once it has not changed for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last = value()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        if value() == last:
            return last
        last = value()
    raise AssertionError(f"still changing after {timeout_s} s: {last}")


def test_training_goes_on_while_a_checkpoint_is_written_and_its_offsets_wait_for_the_file(
        kafka_settings, tmp_path, monkeypatch):
    writing, release = threading.Event(), threading.Event()
    staged_batches: list[int] = []
    written: list[dict] = []
    save_staged = CheckpointStore.save_staged

    def held_save_staged(store, staged):
        staged_batches.append(staged.storable["counters"]["batches"])
        if len(staged_batches) == 1:
            writing.set()
            assert release.wait(120), "the test never released the write"
        path = save_staged(store, staged)
        written.append(CheckpointStore.load(path))
        return path

    monkeypatch.setattr(CheckpointStore, "save_staged", held_save_staged)
    tuned = dataclasses.replace(kafka_settings, batch_size=BATCH, batch_timeout_s=0.5,
                                checkpoint_every_batches=EVERY, checkpoint_every_s=1e6,
                                metrics_port=0, checkpoint_dir=str(tmp_path / "ckpt"))
    with replayed_and_joined(tuned, "background-checkpoint", CLICKS) as settings:
        index = VectorIndex.connect(":memory:")
        worker = Worker(settings, WorkerOptions(exit_when_idle_s=3.0), index=index)
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.update(report=worker.run()))
        thread.start()
        try:
            assert writing.wait(60), "no checkpoint was started"
            # the write is held: training goes on up to the next checkpoint due ...
            wait_until(lambda: worker.counters["batches"] >= staged_batches[0] + EVERY, 60,
                       f"training went on during the write (staged at {staged_batches}, "
                       f"{worker.counters})")
            blocked = settled(lambda: worker.counters["batches"])
            assert blocked < CLICKS // BATCH  # ... and waits there: one write at a time
            assert CheckpointStore(settings.checkpoint_dir).paths() == []
            assert committed_offsets(settings, settings.topic_examples) == {}
        finally:
            release.set()
            thread.join(timeout=180)
        assert not thread.is_alive()

        # the first file holds the state it was staged with, written batches later
        assert written[0]["counters"]["batches"] == staged_batches[0] < blocked
        assert outcome["report"]["clicks_trained"] == CLICKS
        state = CheckpointStore(settings.checkpoint_dir).load_latest()
        assert state["counters"]["clicks_trained"] == CLICKS
        end = after_last_record(settings, settings.topic_examples)
        assert {int(p): o for p, o in state["offsets"][settings.topic_examples].items()} == end
        assert committed_offsets(settings, settings.topic_examples) == end
        # a restart finds nothing left to train: every click trained exactly once
        again = Worker(settings, WorkerOptions(exit_when_idle_s=2.0), index=index).run()
        assert again["clicks_trained"] == CLICKS
        index.close()
