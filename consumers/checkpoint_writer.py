"""The worker's checkpoint writes, in a background thread, so that training goes on.

Serialising, checksumming, writing and fsyncing a checkpoint of tens of MB on the
training thread stopped training for as long as it took, every 50 batches. Staging
the state (a copy of one instant, :class:`~recallstream.model.checkpoint.StagedState`)
still happens on the training thread, with the reading paused, so the checkpoint is
exactly as consistent as before; only the write moves to :class:`CheckpointWriter`.
The caller collects each finished write (:meth:`CheckpointWriter.collect`) and
only then commits its offsets: nothing is committed before its checkpoint is durable.
One write at a time, so the store numbers its files in order.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class WrittenCheckpoint:
    """A finished write: the offsets its checkpoint holds, its creation time (wall
    clock) and seconds from staging to durable; ``error`` is the
    :class:`~recallstream.model.checkpoint.CheckpointWriteFailed` of a write that
    failed (then nothing may be committed)."""

    offsets: dict[str, Any]
    created_at: float
    seconds: float
    error: Exception | None = None


class CheckpointWriter:
    """Writes staged checkpoints to ``store`` in a background thread, one at a time.

    Examples
    --------
    >>> import tempfile
    >>> from recallstream.consumers.worker_state import StagedCheckpoint
    >>> from recallstream.model.checkpoint import CheckpointStore, StagedState
    >>> store = CheckpointStore(tempfile.mkdtemp())
    >>> writer = CheckpointWriter(store)
    >>> state = {"offsets": {"examples": {0: 7}}, "created_at": 1.0}
    >>> writer.start(StagedCheckpoint(StagedState(state), state["offsets"], 1.0),
    ...              started=time.perf_counter())
    >>> written = writer.collect(wait=True)
    >>> written.offsets, written.error, [p.name for p in store.paths()]
    ({'examples': {0: 7}}, None, ['ckpt-0000000001'])
    >>> writer.collect(wait=True) is None  # each write is collected once
    True
    """

    def __init__(self, store) -> None:
        self.store = store
        self._thread: threading.Thread | None = None
        self._written: WrittenCheckpoint | None = None
        self._crash: BaseException | None = None

    def start(self, checkpoint, started: float) -> None:
        """Write ``checkpoint`` (a :class:`~recallstream.consumers.worker_state.StagedCheckpoint`)
        in the background; ``started`` is the ``time.perf_counter()`` at which staging
        began. The previous write must have been collected."""
        if self._thread is not None:
            raise RuntimeError("a checkpoint write is still to be collected")
        self._thread = threading.Thread(target=self._write, name="checkpoint-writer",
                                        args=(checkpoint, started))
        self._thread.start()

    def finished(self) -> bool:
        """True when a write has ended and waits to be collected."""
        return self._thread is not None and not self._thread.is_alive()

    def collect(self, wait: bool) -> WrittenCheckpoint | None:
        """The write that ended (waiting for it if ``wait``), once; None if none.
        Re-raises what a write raised other than a failure to write the file."""
        if self._thread is None or (self._thread.is_alive() and not wait):
            return None
        self._thread.join()
        self._thread = None
        written, crash, self._written, self._crash = self._written, self._crash, None, None
        if crash is not None:
            raise RuntimeError("writing a checkpoint failed") from crash
        return written

    def close(self) -> None:
        """Let a running write finish (its file is a valid checkpoint); nothing is collected."""
        if self._thread is not None:
            self._thread.join()

    def _write(self, checkpoint, started: float) -> None:
        from recallstream.model.checkpoint import CheckpointWriteFailed

        try:
            self.store.save_staged(checkpoint.state)
            error = None
        except CheckpointWriteFailed as failed:
            error = failed
        except BaseException as crash:  # handed to the training thread by collect()
            self._crash = crash
            return
        self._written = WrittenCheckpoint(checkpoint.offsets, checkpoint.created_at,
                                          time.perf_counter() - started, error)
