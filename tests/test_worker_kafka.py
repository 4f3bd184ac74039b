"""The online worker against a real broker: exactly-once training, crash recovery, one owner.

The stream is the first 20,000 MovieLens-100K clicks (in time order) with their
simulated exposures, replayed once per test module into fresh topics and joined
into training examples by the joiner job; poison records are then written to the
examples topic itself, for the worker to dead-letter.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
from prometheus_client import REGISTRY
import pytest
import torch

from recallstream.consumers.checkpoint_cmd import summarize
from recallstream.consumers.local_kafka import free_port
from recallstream.consumers.replay import ReplayPlan, publish
from recallstream.consumers.worker import Worker, WorkerOptions
from recallstream.model.checkpoint import CheckpointStore
from recallstream.model.recall import Recaller
from recallstream.model.vector_index import VectorIndex
from recallstream.streaming.kafka_io import read_topic
from recallstream.streaming.movielens import load_movielens

from conftest import after_last_record, join_examples

CLICKS = 20_000
BATCH = 500  # divides CLICKS: no partial batch whose flush time could differ between runs
# Poison in the examples topic: each must be dead-lettered, none may stop the worker.
POISON = [b"{not json", b'{"event_id": "x", "ts": NaN}', b"[1, 2, 3]", b"",
          b'{"event_id": "p", "ts": 1.0, "user_id": "", "item_id": "1", "impression_id": "i"}',
          b'{"event_id": "p", "ts": "yesterday", "user_id": "1", "item_id": "1", "impression_id": "i"}',
          b"\xff\xfe binary", b'{"event_id": "big", "pad": "' + b"x" * (1 << 20) + b'"}']


@pytest.fixture(scope="module")
def stream(kafka_settings, tmp_path_factory):
    """Topics holding the replay of the first CLICKS ratings (module-wide: replayed once)."""
    from recallstream.streaming.kafka_io import scratch_topics

    tuned = dataclasses.replace(kafka_settings, batch_size=BATCH, batch_timeout_s=1e6,
                                checkpoint_every_s=1e6, checkpoint_every_batches=4, metrics_port=0)
    with scratch_topics(tuned, f"worker-{os.getpid()}-{random.randrange(1 << 30)}",
                        partitions=2) as settings:
        yield _replayed(settings)


def _replayed(settings):
    """Publish the first CLICKS ratings, join them into examples, then add the POISON
    records to the examples."""
    from recallstream.streaming.kafka_io import make_producer

    summary = publish(ReplayPlan(load_movielens("ml-100k"), limit=CLICKS), settings, progress=False)
    assert (summary.clicks, summary.failed) == (CLICKS, 0)
    joined = join_examples(settings)
    assert (joined["examples"], joined["orphans"], joined["dead_lettered"]) == (CLICKS, 0, 0)
    producer = make_producer(settings)
    for n, value in enumerate(POISON):
        producer.send(settings.topic_examples, key=f"poison-{n}".encode(), value=value)
    producer.flush()
    producer.close()
    return settings


def with_checkpoints(settings, path) -> object:
    return dataclasses.replace(settings, checkpoint_dir=str(path))


def test_worker_trains_every_click_once_and_fills_qdrant(stream, tmp_path):
    settings = dataclasses.replace(with_checkpoints(stream, tmp_path / "ckpt"),
                                   metrics_port=free_port())
    index = VectorIndex.connect(":memory:")
    # the metrics are the process's: other workers of this test session counted before
    counted_before = REGISTRY.get_sample_value("recallstream_clicks_trained_total") or 0.0
    report = Worker(settings, WorkerOptions(exit_when_idle_s=3.0), index=index).run()

    assert report["clicks_trained"] == CLICKS
    assert report["batches"] == CLICKS // BATCH
    assert (report["examples_seen"], report["orphans"]) == (CLICKS, 0)
    assert report["dead_lettered"] == len(POISON)
    dead = list(read_topic(settings, settings.topic_dead_letters))
    assert len(dead) == len(POISON) and all(orjson.loads(r.value)["reason"] for r in dead)
    assert index.count(settings.collection_items) == 1682
    summary = summarize(CheckpointStore(settings.checkpoint_dir).load_latest(), "")
    assert summary["clicks_trained"] == CLICKS
    assert summary["offsets"][settings.topic_examples] == after_last_record(
        settings, settings.topic_examples)

    # recall with nothing but a user id: Qdrant looks the user's vector up itself
    ml = load_movielens("ml-100k")
    active_user = str(ml.ratings[ml.time_order()[0]]["user_id"])
    recall = index.search_by_point_id(settings.collection_items, settings.collection_users,
                                      active_user, limit=10)
    assert len(recall) == 10 and all(item_id for item_id, _, _ in recall)
    # the worker's /metrics (Prometheus text format) counted the same clicks
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics_port}/metrics").read()
    assert f"recallstream_clicks_trained_total {counted_before + CLICKS}".encode() in metrics
    # a second run finds nothing new: every click was applied exactly once
    again = Worker(settings, WorkerOptions(exit_when_idle_s=2.0), index=index).run()
    assert again["clicks_trained"] == CLICKS and again["batches"] == CLICKS // BATCH


def test_the_worker_loop_runs_with_its_start_up_heap_out_of_the_collectors_walks(stream, tmp_path):
    import gc

    class FreezeProbe:  # the worker's upstream hook, asked on every turn of its loop
        def __init__(self):
            self.frozen = []

        def check(self):
            self.frozen.append(gc.get_freeze_count())

        def finished(self):
            return True

    probe = FreezeProbe()
    report = Worker(with_checkpoints(stream, tmp_path / "ckpt"), WorkerOptions(exit_when_idle_s=1.0),
                    index=VectorIndex.connect(":memory:"), upstream=probe).run()
    assert report["clicks_trained"] == CLICKS
    # hundreds of thousands of objects (torch, qdrant-client, the model) frozen all along
    assert probe.frozen and min(probe.frozen) > 10_000, probe.frozen[:5]
    assert gc.get_freeze_count() == 0  # unfrozen when the worker stops


def test_a_restart_on_the_default_edge_index_serves_recall_without_re_embedding(stream, tmp_path):
    import threading

    settings = dataclasses.replace(with_checkpoints(stream, tmp_path / "ckpt"),
                                   metrics_port=free_port())
    assert settings.qdrant == "edge:"  # the default: Qdrant Edge beside the checkpoints
    assert settings.qdrant_location() == f"edge:{tmp_path / 'ckpt' / 'qdrant-edge'}"
    first = Worker(settings, WorkerOptions(exit_when_idle_s=2.0))
    assert first.run()["clicks_trained"] == CLICKS
    assert first.trainer.publisher.sync.points_written >= 1682  # the catalog, at least

    ml = load_movielens("ml-100k")
    user = str(ml.ratings[ml.time_order()[0]]["user_id"])
    second = Worker(settings, WorkerOptions(exit_when_idle_s=2.0))  # nothing new to train
    reports = []
    thread = threading.Thread(target=lambda: reports.append(second.run()), name="worker")
    thread.start()
    answer = None
    try:
        url = f"http://127.0.0.1:{settings.metrics_port}/recall?k=10&user_id={user}"
        while thread.is_alive() and answer is None:  # while the restarted worker runs
            try:
                answer = orjson.loads(urllib.request.urlopen(url, timeout=10).read())
            except OSError:  # not attached yet (503) or not listening yet
                time.sleep(0.02)
    finally:
        thread.join(timeout=120)
    assert reports and (reports[0]["clicks_trained"], reports[0]["batches"]) == (CLICKS, CLICKS // BATCH)
    assert second.trainer.publisher.sync.points_written == 0  # nothing re-embedded or rewritten
    assert answer is not None, "the restarted worker never answered /recall"
    assert len(answer["items"]) == 10
    assert max(i["payload"]["model_version"] for i in answer["items"]) == CLICKS // BATCH
    index = VectorIndex.connect(settings.qdrant_location())  # what the first run left
    try:
        stored = Recaller(index).recall(user, k=10)
    finally:
        index.close()
    assert [i["item_id"] for i in answer["items"]] == [h.item_id for h in stored.items]


def worker_command(settings) -> list[str]:
    flags = settings.flags("bootstrap_servers", "topic_examples", "topic_items",
                           "topic_users", "topic_dead_letters", "consumer_group", "batch_size",
                           "batch_timeout_s", "checkpoint_every_s", "checkpoint_every_batches",
                           "checkpoint_dir", "metrics_port")
    return [sys.executable, "-m", "recallstream.consumers.cli", "worker", "--exit-when-idle", "3", "--json",
            *flags]


def learner_tensors(settings) -> dict[str, torch.Tensor]:
    state = CheckpointStore(settings.checkpoint_dir).load_latest()
    return {k: v for k, v in flatten(state["learner"]).items() if isinstance(v, torch.Tensor)}


def flatten(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}/{key}"))
        return out
    if isinstance(tree, (list, tuple)):
        out = {}
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}/{i}"))
        return out
    return {prefix: tree}


def test_sigkilled_worker_resumes_to_the_same_model_as_an_uninterrupted_run(stream, tmp_path):
    calm = with_checkpoints(stream, tmp_path / "calm")
    subprocess.run(worker_command(calm), check=True, capture_output=True, timeout=600)

    crashed = with_checkpoints(stream, tmp_path / "crashed")
    rng = random.Random(2020)
    kills = 0
    for _ in range(3):  # SIGKILL at a random moment of each run, then start again
        process = subprocess.Popen(worker_command(crashed), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        time.sleep(rng.uniform(4.0, 12.0))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
    final = subprocess.run(worker_command(crashed), check=True, capture_output=True, timeout=600)
    assert kills >= 1, "the worker finished before any kill: lengthen the stream or shorten waits"

    report = orjson.loads(final.stdout)
    assert report["clicks_trained"] == CLICKS
    calm_state, crashed_state = learner_tensors(calm), learner_tensors(crashed)
    assert calm_state.keys() == crashed_state.keys() and calm_state
    # Same records in the same minibatches in the same order: the same arithmetic, bit for bit.
    for name in calm_state:
        assert torch.equal(calm_state[name], crashed_state[name]), name


def test_reading_in_a_thread_or_in_a_child_process_trains_the_same_model(stream, tmp_path):
    # the default reads in a child process (off the training's GIL); reader_process=0 in a
    # thread of the worker's own: the same records in the same order, the same model
    workers = {}
    for mode in (0, 1):
        settings = dataclasses.replace(with_checkpoints(stream, tmp_path / f"reader{mode}"),
                                       reader_process=mode)
        workers[mode] = Worker(settings, WorkerOptions(exit_when_idle_s=2.0),
                               index=VectorIndex.connect(":memory:"))
        report = workers[mode].run()
        assert (report["clicks_trained"], report["dead_lettered"]) == (CLICKS, len(POISON))
    assert not hasattr(workers[0].ingestor, "pid") and workers[1].ingestor.pid > 0
    in_thread = learner_tensors(workers[0].settings)
    in_child = learner_tensors(workers[1].settings)
    assert in_thread.keys() == in_child.keys() and in_thread
    for name in in_thread:
        assert torch.equal(in_thread[name], in_child[name]), name


def test_a_killed_reading_process_stops_the_worker_with_status_4_and_a_restart_finishes(
        stream, tmp_path):
    settings = with_checkpoints(stream, tmp_path / "ckpt")
    worker = subprocess.Popen(worker_command(settings), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        reader = _wait_for_child(worker.pid, "recallstream.streaming.ingest_process")
        time.sleep(4.0)  # training under way, a checkpoint or two behind it
        os.kill(reader, signal.SIGKILL)
        _, err = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert worker.returncode == 4, err.decode()[-2000:]
    assert b"reading process exited (exit code -9)" in err and b"restart it" in err
    final = subprocess.run(worker_command(settings), check=True, capture_output=True, timeout=600)
    # restored from the last checkpoint, then the rest: every click once
    assert orjson.loads(final.stdout)["clicks_trained"] == CLICKS


def _wait_for_child(parent: int, marker: str, timeout_s: float = 60.0) -> int:
    """The pid of ``parent``'s child process whose command line holds ``marker``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == parent and marker.encode() in (proc / "cmdline").read_bytes():
                    return int(proc.name)
            except (OSError, ValueError, IndexError):
                continue
        time.sleep(0.1)
    raise AssertionError(f"no child of {parent} runs {marker}")


def owned_by(lock_file, pid: int) -> bool:
    try:
        return lock_file.read_text().strip() == str(pid)
    except FileNotFoundError:
        return False


def test_second_worker_on_the_same_model_refuses(stream, tmp_path):
    settings = with_checkpoints(stream, tmp_path / "owned")
    first = subprocess.Popen(worker_command(settings), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        # the owner writes its pid into the lock file once it holds the lock
        lock_file = tmp_path / "owned" / "LOCK"
        deadline = time.monotonic() + 60
        while not owned_by(lock_file, first.pid) and first.poll() is None:
            assert time.monotonic() < deadline, "the first worker never took the lock"
            time.sleep(0.05)
        assert first.poll() is None, "the first worker ended before the second could start"
        second = subprocess.run(worker_command(settings), capture_output=True, timeout=120)
        assert second.returncode == 3
        assert b"owned by" in second.stderr and second.stdout == b""
    finally:
        first.wait(timeout=600)
    assert first.returncode == 0
    state = CheckpointStore(settings.checkpoint_dir).load_latest()
    assert state["counters"]["clicks_trained"] == CLICKS


def test_sigterm_checkpoints_commits_and_a_restart_finishes_the_stream(stream, tmp_path):
    from kafka import TopicPartition

    from recallstream.streaming.kafka_io import make_consumer

    settings = with_checkpoints(stream, tmp_path / "graceful")
    process = subprocess.Popen(worker_command(settings), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    store = CheckpointStore(settings.checkpoint_dir)
    deadline = time.monotonic() + 120
    while not store.paths() and time.monotonic() < deadline:  # a few batches are done
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()[-2000:]
    stopped = orjson.loads(out)
    assert 0 < stopped["clicks_trained"] < CLICKS, "SIGTERM came too late to test a graceful stop"

    # the final checkpoint holds what was trained, plus the clicks of the unfinished batch
    state = store.load_latest()
    assert state["counters"]["clicks_trained"] == stopped["clicks_trained"]
    assert len(state["pending_clicks"]) < BATCH
    # offsets reach the consumer group only after the checkpoint that holds them
    saved = {TopicPartition(topic, int(p)): offset for topic, parts in state["offsets"].items()
             for p, offset in parts.items()}
    group = make_consumer(settings, group_id=settings.consumer_group)
    try:
        assert {tp: group.committed(tp) for tp in saved} == saved
    finally:
        group.close()

    final = subprocess.run(worker_command(settings), check=True, capture_output=True, timeout=600)
    assert orjson.loads(final.stdout)["clicks_trained"] == CLICKS
