"""Tests of the worker's background checkpoint writes (consumers/checkpoint_writer.py)."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from recallstream.consumers.checkpoint_writer import CheckpointWriter
from recallstream.consumers.worker_state import StagedCheckpoint
from recallstream.model.checkpoint import CheckpointStore, CheckpointWriteFailed, StagedState


def staged(step: int) -> StagedCheckpoint:
    state = {"step": step, "offsets": {"examples": {0: step}}, "created_at": float(step)}
    return StagedCheckpoint(StagedState(state), state["offsets"], state["created_at"])


class HeldStore(CheckpointStore):
    """A store whose writes wait for ``release``."""

    def __init__(self, directory) -> None:
        super().__init__(directory)
        self.release = threading.Event()

    def save_staged(self, state):
        assert self.release.wait(30)
        return super().save_staged(state)


def test_a_running_write_is_not_collected_and_blocks_the_next_until_collected(tmp_path):
    store = HeldStore(tmp_path)
    writer = CheckpointWriter(store)
    writer.start(staged(1), started=time.perf_counter())
    assert not writer.finished() and writer.collect(wait=False) is None
    with pytest.raises(RuntimeError, match="still to be collected"):
        writer.start(staged(2), started=time.perf_counter())
    store.release.set()
    written = writer.collect(wait=True)
    assert (written.offsets, written.created_at, written.error) == ({"examples": {0: 1}}, 1.0, None)
    assert written.seconds >= 0 and store.load_latest()["step"] == 1
    writer.start(staged(2), started=time.perf_counter())  # collected: the next may start
    written = writer.collect(wait=True)
    assert written.offsets == {"examples": {0: 2}} and store.load_latest()["step"] == 2
    assert [p.name for p in store.paths()] == ["ckpt-0000000001", "ckpt-0000000002"]


def test_a_write_that_fails_is_reported_not_raised(tmp_path):
    class FullDisk(CheckpointStore):
        def save_staged(self, state):
            raise CheckpointWriteFailed(OSError(errno.ENOSPC, "No space left on device"), "ckpt-1")

    writer = CheckpointWriter(FullDisk(tmp_path))
    writer.start(staged(1), started=time.perf_counter())
    written = writer.collect(wait=True)
    assert isinstance(written.error, CheckpointWriteFailed)
    assert written.error.errno == errno.ENOSPC


def test_any_other_error_of_a_write_reaches_the_collector(tmp_path):
    class Broken(CheckpointStore):
        def save_staged(self, state):
            raise KeyError("a bug")

    writer = CheckpointWriter(Broken(tmp_path))
    writer.start(staged(1), started=time.perf_counter())
    with pytest.raises(RuntimeError, match="writing a checkpoint failed") as raised:
        writer.collect(wait=True)
    assert isinstance(raised.value.__cause__, KeyError)
    assert writer.collect(wait=True) is None  # raised once


def test_close_lets_a_running_write_finish(tmp_path):
    store = HeldStore(tmp_path)
    writer = CheckpointWriter(store)
    writer.start(staged(1), started=time.perf_counter())
    threading.Timer(0.2, store.release.set).start()
    writer.close()
    assert store.load_latest()["step"] == 1
