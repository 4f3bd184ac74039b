"""Fault: the disk fills up while checkpointing or snapshotting (issue 15).

The folder is a size-limited tmpfs (``mount -t tmpfs -o size=...``, unmounted in
teardown; the tests are skipped, saying why, where mounting is not permitted), filled to
the last byte by a filler file. Then a checkpoint or a snapshot cannot be written: the
previous file stays valid and current, no temporary file is left, the worker logs and
counts it (``recallstream_checkpoint_failures_total``) without committing offsets, and
the next checkpoint, once there is room again, succeeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import subprocess
import threading
import time

import pytest
from prometheus_client import REGISTRY

from recallstream.model.checkpoint import CheckpointStore, CheckpointWriteFailed
from recallstream.model.online import OnlineLearner, stream_tower_config
from recallstream.model.snapshot_store import SnapshotStore, SnapshotWriteFailed


@contextlib.contextmanager
def mounted_tmpfs(folder, size: str):
    """A tmpfs of ``size`` mounted on the new ``folder`` while the block runs (the test is
    skipped where mounting is refused)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{mounted.stderr.strip() or mounted.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 2 MiB mounted on a fresh folder (skipped where mounting is refused)."""
    with mounted_tmpfs(tmp_path / "small-disk", "2m") as folder:
        yield folder


@pytest.fixture
def snapshot_disk(tmp_path):
    """A tmpfs with room for a few snapshots of a small learner (4 MB each)."""
    with mounted_tmpfs(tmp_path / "snapshot-disk", "32m") as folder:
        yield folder


@pytest.fixture
def worker_disk(tmp_path):
    """A tmpfs with room for a few of the worker's checkpoints (tens of MB each)."""
    with mounted_tmpfs(tmp_path / "worker-disk", "256m") as folder:
        yield folder


def fill(folder) -> "os.PathLike":
    """Write a filler file into ``folder`` until the file system is full; its path."""
    filler = folder / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            while True:
                try:
                    f.write(chunk[:size])
                except OSError as error:
                    assert error.errno == errno.ENOSPC
                    break
    return filler


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_checkpoint_on_a_full_disk_fails_cleanly_and_the_next_one_succeeds(small_disk):
    store = CheckpointStore(small_disk / "ckpt")
    store.save({"i": 1, "pad": b"x" * 1000})
    filler = fill(small_disk)

    with pytest.raises(CheckpointWriteFailed, match="No space left") as raised:
        store.save({"i": 2, "pad": b"x" * 100_000})
    assert raised.value.errno == errno.ENOSPC and isinstance(raised.value, OSError)

    assert leftovers(store.directory) == []  # no torn temporary file
    assert [p.name for p in store.paths()] == ["ckpt-0000000001"]
    assert store.load_latest()["i"] == 1  # the previous one is still valid
    filler.unlink()
    assert store.save({"i": 2, "pad": b"x" * 100_000}).name == "ckpt-0000000002"
    assert store.load_latest()["i"] == 2


def test_a_full_disk_gives_up_older_checkpoints_to_write_the_next(small_disk, caplog):
    store = CheckpointStore(small_disk / "ckpt", keep=3)
    pad = os.urandom(400_000)
    with caplog.at_level(logging.WARNING, logger="recallstream.model.checkpoint"):
        for i in range(8):  # more than 2 MB in all: the disk fills up on the way
            path = store.save({"i": i, "pad": pad})
            assert store.load_latest()["i"] == i and leftovers(store.directory) == []
    removed = [r.getMessage() for r in caplog.records if "older checkpoint(s)" in r.getMessage()]
    assert removed, "the disk never filled up"
    assert path.name == "ckpt-0000000008" and len(store.paths()) >= 2
    # too big even alone beside the newest: fails, and the newest stays valid
    with pytest.raises(CheckpointWriteFailed):
        store.save({"i": 8, "pad": os.urandom(1_900_000)})
    assert [p.name for p in store.paths()] == ["ckpt-0000000008"]
    assert store.load_latest()["i"] == 7 and leftovers(store.directory) == []


def test_a_snapshot_on_a_full_disk_fails_cleanly_and_the_previous_stays_current(snapshot_disk):
    learner = OnlineLearner(stream_tower_config(id_buckets=64, dim=4), seed=0)
    store = SnapshotStore(snapshot_disk / "snapshots")
    assert store.publish(learner.state_dict(), cut_offsets={"examples": {0: 5}},
                         event_range=None, examples=5) == 1
    filler = fill(snapshot_disk)

    with pytest.raises(SnapshotWriteFailed, match="v2.*previous version stays current") as raised:
        store.publish(learner.state_dict(), cut_offsets={"examples": {0: 9}}, event_range=None,
                      examples=9)
    assert raised.value.errno == errno.ENOSPC

    assert leftovers(store.directory) == [] and store.versions() == [1]
    assert store.current_version() == 1 and store.current().examples == 5
    filler.unlink()
    assert store.publish(learner.state_dict(), cut_offsets={"examples": {0: 9}},
                         event_range=None, examples=9) == 2
    assert store.current().examples == 9


# -- the worker, against a real broker

CLICKS = 1200
BATCH = 100


def failures() -> float:
    return REGISTRY.get_sample_value("recallstream_checkpoint_failures_total") or 0.0


def test_a_worker_whose_checkpoint_disk_is_full_keeps_training_and_retries(
        kafka_settings, worker_disk, tmp_path, caplog):
    from recallstream.consumers.worker import Worker, WorkerOptions
    from recallstream.model.vector_index import VectorIndex

    from conftest import after_last_record, replayed_and_joined

    tuned = dataclasses.replace(kafka_settings, batch_size=BATCH, batch_timeout_s=0.5,
                                checkpoint_every_batches=2, checkpoint_every_s=1e6,
                                metrics_port=0, checkpoint_dir=str(worker_disk / "ckpt"))
    with replayed_and_joined(tuned, "diskfull", CLICKS) as settings:
        os.makedirs(settings.checkpoint_dir)
        filler = fill(worker_disk)  # full before the first checkpoint
        before = failures()
        index = VectorIndex.connect(":memory:")
        worker = Worker(settings, WorkerOptions(exit_when_idle_s=4.0), index=index)
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.update(report=worker.run()))
        with caplog.at_level(logging.ERROR, logger="recallstream.worker"):
            thread.start()
            deadline = time.monotonic() + 120
            while failures() - before < 1 and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            failed = failures() - before
            written_while_full = CheckpointStore(settings.checkpoint_dir).paths()
            filler.unlink()  # room again: the next checkpoint must succeed
            thread.join(timeout=180)
        assert not thread.is_alive()
        assert failed >= 1, "the worker did not report a failed checkpoint"
        assert written_while_full == []
        assert any("No space left" in r.getMessage() and "next checkpoint tries again" in r.getMessage()
                   for r in caplog.records)
        report = outcome["report"]
        assert report["clicks_trained"] == CLICKS
        state = CheckpointStore(settings.checkpoint_dir).load_latest()
        assert state["counters"]["clicks_trained"] == CLICKS
        assert {int(p): o for p, o in state["offsets"][settings.topic_examples].items()} == after_last_record(
            settings, settings.topic_examples)
        # a restart from that checkpoint finds nothing left: every click trained once
        again = Worker(settings, WorkerOptions(exit_when_idle_s=2.0), index=index).run()
        assert again["clicks_trained"] == CLICKS
        index.close()
