"""``recallstream snapshot`` on the real broker: a MovieLens slice replayed, joined by the
real joiner into ``examples``, then snapshots taken by the command as a subprocess;
through SIGKILLs at random moments the current snapshot always loads."""

from __future__ import annotations

import random
import signal
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict

import orjson
import pytest

from recallstream.consumers.cli import main
from recallstream.consumers.replay import ReplayPlan, publish
from recallstream.model.online import OnlineLearner, stream_tower_config
from recallstream.model.snapshot_store import EventRange, SnapshotStore
from recallstream.streaming.example_joiner import parse_example
from recallstream.streaming.kafka_io import end_offsets, read_topic, scratch_topics
from recallstream.streaming.movielens import load_movielens

CLICKS = 3000  # the first ratings of MovieLens-100K: 4.05 days of event time
DAYS = 3.0
DAY_S = 86400.0
FLAGS = ("bootstrap_servers", "topic_exposures", "topic_clicks", "topic_items", "topic_users",
         "topic_dead_letters", "topic_examples", "topic_joiner_state", "consumer_group",
         "partitions", "seed")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "recallstream.consumers.cli", *args]


def snapshot_command(settings, snapshot_dir, progress: bool = False) -> list[str]:
    return cli("snapshot", "--json", *([] if progress else ["--no-progress"]),
               "--snapshot-dir", str(snapshot_dir), "--snapshot-days", str(DAYS),
               "--snapshot-epochs", "1", *settings.flags(*FLAGS))


@pytest.fixture(scope="module")
def joined(kafka_settings):
    """Topics holding a replayed MovieLens slice and the joiner's examples of it."""
    with scratch_topics(kafka_settings, f"snapshot-{uuid.uuid4().hex[:8]}", partitions=2) as settings:
        plan = ReplayPlan(load_movielens("ml-100k"), limit=CLICKS, exposures_per_click=3,
                          seed=settings.seed, name="ml-100k")
        assert publish(plan, settings, progress=False).failed == 0
        joiner = subprocess.run(cli("joiner", "--exit-when-idle", "3", "--json",
                                    *settings.flags(*FLAGS)), capture_output=True, timeout=240)
        assert joiner.returncode == 0, joiner.stderr.decode()[-3000:]
        examples = [(parse_example(r.value), r.partition, r.offset)
                    for r in read_topic(settings, settings.topic_examples, read_committed=True)]
        assert len(examples) > CLICKS * 0.9  # the last window of clicks may wait for a watermark
        yield settings, examples


def in_window(examples, days):
    newest = max(e["ts"] for e, _, _ in examples)
    chosen = [(e["ts"], p, o, e) for e, p, o in examples if e["ts"] >= newest - days * DAY_S]
    return [e for _, _, _, e in sorted(chosen, key=lambda row: row[:3])]


def run_snapshot(settings, snapshot_dir) -> dict:
    done = subprocess.run(snapshot_command(settings, snapshot_dir), capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return orjson.loads(done.stdout)


def test_snapshot_trains_on_the_last_days_up_to_the_cut_and_loads(joined, tmp_path):
    settings, examples = joined
    expected = in_window(examples, DAYS)
    assert 0 < len(expected) < len(examples)  # the window leaves some examples out
    ends = end_offsets(settings, settings.topic_examples)
    summary = run_snapshot(settings, tmp_path)

    topic = settings.topic_examples
    assert summary["version"] == 1
    assert summary["cut_offsets"] == {topic: {str(p): o for p, o in ends.items()}}
    assert summary["examples"] == len(expected)
    assert summary["event_range"]["first_ts"] == expected[0]["ts"]
    assert summary["event_range"]["last_ts"] == max(e["ts"] for e in expected)
    assert summary["event_range"]["days"] <= DAYS
    assert (summary["items"], summary["users"]) == (1682, 943)
    # the seek by time started each partition at or before its first example of the window
    first_in_window = {}
    for e, p, o in examples:
        if e["ts"] >= expected[0]["ts"]:
            first_in_window[p] = min(o, first_in_window.get(p, o))
    assert all(summary["start_offsets"][topic][str(p)] <= o for p, o in first_in_window.items())

    snapshot = SnapshotStore(tmp_path).current()
    assert snapshot.version == 1 and snapshot.cut_offsets == {topic: ends}
    assert snapshot.examples == len(expected)
    assert snapshot.event_range == EventRange(expected[0]["ts"], max(e["ts"] for e in expected))
    learner = snapshot.learner()
    assert learner.estimator.step == len(expected)
    histories = defaultdict(list)
    for e in expected:
        histories[e["user_id"]].append(e["item_id"])
    assert set(learner.histories) == set(histories)
    user = max(histories, key=lambda u: len(histories[u]))
    assert learner.histories_of([user]) == [histories[user][-learner.history_length:]]
    vectors = learner.embed_items(["1", "50"], {})
    assert vectors.shape == (2, 64) and abs((vectors ** 2).sum(axis=1) - 1).max() < 1e-5

    # the next day's snapshot starts from this one's weights, not from scratch
    assert summary["warm_start_from"] is None
    again = run_snapshot(settings, tmp_path)
    assert (again["version"], again["warm_start_from"]) == (2, 1)


def start_job(settings, snapshot_dir) -> tuple[subprocess.Popen, threading.Event]:
    """The snapshot job as a subprocess, and an event set once its progress bar shows
    (training has started: what is left is the training, the write and the publication)."""
    process = subprocess.Popen(snapshot_command(settings, snapshot_dir, progress=True),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    training = threading.Event()

    def watch():
        seen = b""
        while chunk := os.read(process.stderr.fileno(), 4096):
            seen = (seen + chunk)[-64:]
            if b"snapshot:" in seen:
                training.set()
    threading.Thread(target=watch, daemon=True).start()
    return process, training


def test_sigkill_at_random_moments_leaves_a_current_snapshot_that_loads(joined, tmp_path):
    settings, _ = joined
    flags = ["--snapshot-dir", str(tmp_path), "--snapshot-days", str(DAYS), "--snapshot-epochs", "1"]
    assert main(["snapshot", "--no-progress", *flags, *settings.flags(*FLAGS)]) == 0  # v1
    store = SnapshotStore(tmp_path)
    rng = random.Random(12)
    unchanged = 0
    for kill in range(3):
        before = store.current_version()
        process, training = start_job(settings, tmp_path)
        if kill == 0:  # anywhere in the start-up
            time.sleep(rng.uniform(0.5, 5.0))
        else:  # a random moment of the training, the write or the publication
            assert training.wait(timeout=120), "the job never started training"
            time.sleep(rng.uniform(0.0, 4.0))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        snapshot = store.current()
        assert snapshot is not None and snapshot.version >= before
        unchanged += snapshot.version == before
        snapshot.learner()  # loads whole
        for version in store.versions():  # every folder named like a version is whole
            assert store.load(version).version == version
        assert all(p.name.startswith((".tmp-", "v", "CURRENT", "LOCK")) for p in tmp_path.iterdir())
    assert unchanged >= 1  # at least one kill landed before the new version was published
    last = store.current_version()
    assert main(["snapshot", "--no-progress", *flags, *settings.flags(*FLAGS)]) == 0
    assert store.current_version() > last and store.current().version == store.current_version()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # cleaned


def test_no_examples_fails_clearly_and_keeps_the_current_snapshot(topic_settings, tmp_path, capsys):
    store = SnapshotStore(tmp_path)
    small = OnlineLearner(stream_tower_config(id_buckets=64, dim=4), seed=0)
    store.publish(small.state_dict(), cut_offsets={}, event_range=None, examples=0)
    status = main(["snapshot", "--no-progress", "--snapshot-dir", str(tmp_path),
                   *topic_settings.flags(*FLAGS)])
    err = capsys.readouterr().err
    assert status == 1
    assert f"no examples in topic {topic_settings.topic_examples!r}" in err and "unchanged" in err
    assert store.current_version() == 1 and store.versions() == [1]
