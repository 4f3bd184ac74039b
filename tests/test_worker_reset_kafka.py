"""The worker's reset to a daily snapshot, on the real broker.

The stream: the first FIRST MovieLens-100K clicks are replayed and joined into
examples, `recallstream snapshot` takes a snapshot of them (its cut: their end
offsets), then the next clicks up to ALL are replayed and joined. A worker trains
on all of them with no snapshot in sight; then it is started again with the
snapshot folder. It must reset to the snapshot: take its weights, rewind the
examples to the cut and train what follows once on top of it, fill new Qdrant
collections and switch the aliases, while a reader querying through the aliases
never fails and never gets fewer than k results.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import orjson
import pytest

from recallstream.consumers.checkpoint_cmd import summarize
from recallstream.consumers.replay import ReplayPlan, publish
from recallstream.consumers.worker import Worker, WorkerOptions
from recallstream.model.checkpoint import CheckpointStore
from recallstream.model.vector_index import VectorIndex
from recallstream.streaming.kafka_io import read_topic
from recallstream.streaming.movielens import load_movielens

from conftest import join_examples

FIRST, ALL = 3_000, 6_000
BATCH = 500
K = 10
FLAGS = ("bootstrap_servers", "topic_exposures", "topic_clicks", "topic_items", "topic_users",
         "topic_dead_letters", "topic_examples", "topic_joiner_state", "consumer_group",
         "batch_size", "batch_timeout_s", "checkpoint_every_s", "checkpoint_every_batches",
         "metrics_port", "snapshot_check_s")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "recallstream.consumers.cli", *args]


@pytest.fixture(scope="module")
def stream(kafka_settings, tmp_path_factory):
    """Topics with ALL clicks joined, and a snapshot folder whose v1 was taken after FIRST."""
    from recallstream.streaming.kafka_io import scratch_topics

    tuned = dataclasses.replace(kafka_settings, batch_size=BATCH, batch_timeout_s=1e6,
                                checkpoint_every_s=1e6, checkpoint_every_batches=4,
                                metrics_port=0, snapshot_check_s=0.0)
    snapshots = tmp_path_factory.mktemp("snapshots")
    with scratch_topics(tuned, f"reset-{os.getpid()}-{uuid.uuid4().hex[:8]}", partitions=2) as settings:
        ml = load_movielens("ml-100k")
        assert publish(ReplayPlan(ml, limit=FIRST), settings, progress=False).clicks == FIRST
        join_examples(settings)
        taken = subprocess.run(cli("snapshot", "--json", "--no-progress", "--snapshot-dir",
                                   str(snapshots), "--snapshot-days", "1000", "--snapshot-epochs", "1",
                                   *settings.flags(*FLAGS)), capture_output=True, timeout=300)
        assert taken.returncode == 0, taken.stderr.decode()[-2000:]
        snapshot = orjson.loads(taken.stdout)
        assert publish(ReplayPlan(ml, limit=ALL, skip=FIRST), settings, progress=False).clicks == ALL - FIRST
        assert join_examples(settings)["examples"] == ALL - FIRST
        yield settings, snapshots, snapshot


def examples_after(settings, cut: dict) -> int:
    """Examples at or after the cut offsets (what a reset trains again on top of the snapshot)."""
    return sum(1 for r in read_topic(settings, settings.topic_examples, read_committed=True)
               if r.offset >= cut.get(str(r.partition), cut.get(r.partition, 0)))


def trained_without_snapshots(settings, checkpoint_dir, index=None) -> dict:
    """A first worker run over every example, with no snapshot in sight."""
    blind = dataclasses.replace(settings, checkpoint_dir=str(checkpoint_dir),
                                snapshot_dir=str(checkpoint_dir / "no-snapshots"))
    return Worker(blind, WorkerOptions(exit_when_idle_s=2.0),
                  index=index or VectorIndex.connect(":memory:")).run()


def read_through_aliases(index, users: list[str], stop: threading.Event, outcomes: list) -> None:
    """Recall by user id through the aliases, in a loop: each outcome is the number of hits
    or the error."""
    while not stop.is_set():
        for user_id in users:
            try:
                outcomes.append(len(index.search_by_point_id("items", "users", user_id, limit=K)))
            except Exception as error:  # noqa: BLE001 - every failure is what the test counts
                outcomes.append(error)


def test_the_worker_resets_to_the_snapshot_catches_up_from_its_cut_and_swaps_unnoticed(stream, tmp_path):
    settings, snapshots, snapshot = stream
    index = VectorIndex.connect(":memory:")
    # the first run fills items_v0 and users_v0 behind the aliases items and users
    assert trained_without_snapshots(settings, tmp_path / "ckpt", index)["clicks_trained"] == ALL
    assert index.aliases() == {"items": "items_v0", "users": "users_v0"}
    ml = load_movielens("ml-100k")
    users = sorted({str(ml.ratings[i]["user_id"]) for i in ml.time_order()[:FIRST]})[:5]
    stop, outcomes = threading.Event(), []
    reader = threading.Thread(target=read_through_aliases, args=(index, users, stop, outcomes))
    reader.start()
    settings = dataclasses.replace(settings, checkpoint_dir=str(tmp_path / "ckpt"),
                                   snapshot_dir=str(snapshots))
    worker = Worker(settings, WorkerOptions(exit_when_idle_s=2.0), index=index)
    thread = threading.Thread(target=worker.run)
    thread.start()
    thread.join(timeout=240)
    stop.set()
    reader.join()
    assert not thread.is_alive()

    report = worker.report()
    assert (report["snapshot_version"], report["resets"]) == (snapshot["version"], 1)
    state = CheckpointStore(settings.checkpoint_dir).load_latest()
    summary = summarize(state, "")
    after_cut = examples_after(settings, snapshot["cut_offsets"][settings.topic_examples])
    assert after_cut == ALL - FIRST
    # every example after the cut applied once on top of the snapshot, none before it
    assert summary["clicks_since_snapshot"] == after_cut
    assert state["counters"]["clicks_replayed"] == after_cut
    assert (summary["snapshot_version"], summary["resets"]) == (snapshot["version"], 1)
    assert summary["clicks_trained"] == ALL  # scored and counted once, in the first run
    assert index.aliases() == {"items": f"items_v{snapshot['version']}",
                               "users": f"users_v{snapshot['version']}"}
    assert not index.exists("items_v0") and index.count("items") == 1682
    errors = [o for o in outcomes if not isinstance(o, int)]
    assert outcomes and not errors, errors[:3]
    assert min(outcomes) == K


def worker_command(settings) -> list[str]:
    return cli("worker", "--exit-when-idle", "3", "--json", "--checkpoint-dir", settings.checkpoint_dir,
               "--snapshot-dir", settings.snapshot_dir, "--qdrant", settings.qdrant,
               *settings.flags(*FLAGS))


def test_a_worker_killed_at_random_moments_of_its_reset_completes_it_on_restart(stream, tmp_path):
    settings, snapshots, snapshot = stream
    trained_without_snapshots(settings, tmp_path / "ckpt")
    settings = dataclasses.replace(settings, checkpoint_dir=str(tmp_path / "ckpt"),
                                   snapshot_dir=str(snapshots),
                                   qdrant=f"edge:{tmp_path / 'qdrant-edge'}")
    rng = random.Random(12)
    kills = 0
    for _ in range(3):
        process = subprocess.Popen(worker_command(settings), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        time.sleep(rng.uniform(3.0, 12.0))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
    final = subprocess.run(worker_command(settings), capture_output=True, timeout=300)
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    assert kills >= 1, "every run finished before its kill: the test killed nothing"

    summary = summarize(CheckpointStore(settings.checkpoint_dir).load_latest(), "")
    assert (summary["snapshot_version"], summary["resets"]) == (snapshot["version"], 1)
    assert summary["clicks_since_snapshot"] == ALL - FIRST
    index = VectorIndex.connect(settings.qdrant)
    try:
        assert index.aliases() == {"items": f"items_v{snapshot['version']}",
                                   "users": f"users_v{snapshot['version']}"}
        assert index.count("items") == 1682
    finally:
        index.close()
