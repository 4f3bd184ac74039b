"""Fault: a step slower than ``max_poll_interval_ms``, and loss of group membership (issue 15).

- The joiner is in a consumer group. One of two joiners has a transaction that takes
  longer than its ``max_poll_interval_s`` (a delay injected while it holds the
  transaction open): it leaves the group, the other joiner takes its partitions over,
  and its own transaction, fenced by its stale generation, aborts; then it rejoins.
  Every click still yields exactly one example for a read_committed reader.
- The worker assigns its partitions by hand (no group membership to lose): a training
  step slower than its consumer's ``max_poll_interval_ms`` still trains every example
  once.
"""

from __future__ import annotations

import dataclasses
import threading
import time

from recallstream.streaming.example_joiner import ExampleJoiner, JoinerOptions

from conftest import after_last_record, committed_offsets, replayed_and_joined
from test_joiner_kafka import WINDOW_S, assert_exactly_once, committed_examples, make_stream, produce

POLL_INTERVAL_S = 2.0
DELAY_S = 6.0  # three poll intervals


class SlowJoiner(ExampleJoiner):
    """A joiner whose ``slow_at``-th transaction stalls ``DELAY_S`` seconds while open."""

    def __init__(self, *args, slow_at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.slow_at = slow_at
        self.stalled = 0

    def _write_state(self, lane, state):
        if self.counters["transactions"] + 1 == self.slow_at and not self.stalled:
            self.stalled += 1
            time.sleep(DELAY_S)
        return super()._write_state(lane, state)


def run_in_thread(job) -> tuple[threading.Thread, dict]:
    outcome = {}

    def target():
        try:
            outcome["report"] = job.run()
        except BaseException as error:  # reported by the test
            outcome["error"] = error

    thread = threading.Thread(target=target, name=f"joiner-{job.options.instance}")
    thread.start()
    return thread, outcome


def test_a_joiner_slower_than_its_poll_interval_loses_and_duplicates_nothing(topic_settings):
    settings = dataclasses.replace(topic_settings, join_window_s=WINDOW_S)
    stream = make_stream(2000, seed=31)
    options = dict(max_poll_records=150, snapshot_every=3, session_timeout_s=6.0,
                   transaction_timeout_s=20.0, max_poll_interval_s=POLL_INTERVAL_S)
    slow = SlowJoiner(settings, JoinerOptions(instance="slow", **options), slow_at=3)
    steady = ExampleJoiner(settings, JoinerOptions(instance="steady", **options))
    producer = threading.Thread(target=produce, args=(settings, stream, 6.0))
    producer.start()
    threads = [run_in_thread(slow), run_in_thread(steady)]
    expected = len(stream.joined) + len(stream.orphans)
    try:
        producer.join()
        deadline = time.monotonic() + 120
        while len(committed_examples(settings)) < expected and time.monotonic() < deadline:
            for thread, outcome in threads:
                assert "error" not in outcome, f"a joiner failed: {outcome['error']!r}"
            time.sleep(0.5)
    finally:
        slow.stop.set()
        steady.stop.set()
        for thread, _ in threads:
            thread.join(timeout=60)
    for thread, outcome in threads:
        assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    assert slow.stalled == 1, "the delay was never injected"
    assert_exactly_once(settings, stream, committed_examples(settings))
    # the slow joiner lost its membership: its stalled transaction was fenced and aborted
    assert threads[0][1]["report"]["aborted"] >= 1


# -- the worker

CLICKS = 1000
BATCH = 100


def test_a_worker_step_slower_than_max_poll_interval_trains_every_example_once(
        kafka_settings, tmp_path, monkeypatch):
    from recallstream.consumers import stream_trainer
    from recallstream.consumers.worker import Worker, WorkerOptions
    from recallstream.model.checkpoint import CheckpointStore
    from recallstream.model.vector_index import VectorIndex
    from recallstream.streaming import kafka_source

    consumers = []
    make_consumer = kafka_source.make_consumer

    def short_poll_interval(settings, **overrides):  # the worker's consumer: 1 s between polls
        consumer = make_consumer(settings, **overrides, max_poll_interval_ms=1000)
        consumers.append(consumer)
        return consumer

    slow_steps = []
    train = stream_trainer.StreamTrainer.train

    def slow_train(self, batch):
        if len(slow_steps) < 3:
            slow_steps.append(len(batch))
            time.sleep(2.5)  # 2.5 poll intervals
        return train(self, batch)

    monkeypatch.setattr(kafka_source, "make_consumer", short_poll_interval)
    monkeypatch.setattr(stream_trainer.StreamTrainer, "train", slow_train)
    # reading in the worker's own process (reader_process=0), where the patched consumer is
    # made; a reading process runs the same consumer, which no patch here reaches
    tuned = dataclasses.replace(kafka_settings, batch_size=BATCH, batch_timeout_s=0.3,
                                checkpoint_every_batches=2, checkpoint_every_s=1e6,
                                metrics_port=0, checkpoint_dir=str(tmp_path / "ckpt"),
                                reader_process=0)
    with replayed_and_joined(tuned, "slow", CLICKS) as settings:
        index = VectorIndex.connect(":memory:")
        report = Worker(settings, WorkerOptions(exit_when_idle_s=3.0), index=index).run()
        assert len(slow_steps) == 3 and consumers, "the fault was not injected"
        assert (report["clicks_trained"], report["examples_seen"]) == (CLICKS, CLICKS)
        end = after_last_record(settings, settings.topic_examples)
        state = CheckpointStore(settings.checkpoint_dir).load_latest()
        assert {int(p): o for p, o in state["offsets"][settings.topic_examples].items()} == end
        committed = committed_offsets(settings, settings.topic_examples)
        assert committed == end
        again = Worker(settings, WorkerOptions(exit_when_idle_s=2.0), index=index).run()
        assert again["clicks_trained"] == CLICKS  # nothing trained twice after a restart
        index.close()
