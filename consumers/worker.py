"""``recallstream worker``: Kafka events to incremental two-tower updates to Qdrant.

The worker composes named components and runs them on two threads (a third writes
checkpoints)::

    prefetch thread  StreamIngestor (streaming/ingest.py): fetch the joiner's
                     examples (read_committed) and the items and users, align,
                     decode, dead-letter -> positives and entity changes, in stream order
    trainer thread   StreamTrainer (consumers/stream_trainer.py): entity changes ->
                     EntityTables; clicks -> minibatch -> PrequentialMonitor scores
                     them -> OnlineLearner trains -> IndexPublisher -> Qdrant
                     (IndexSync's background writer)
    every N batches or seconds: pause the prefetcher, consume what it queued,
                     WorkerState.stage: drain Qdrant writes, copy the state; the
                     CheckpointWriter's thread writes it while training goes on; once
                     it is written, commit its offsets
    on a newer daily snapshot (SnapshotFollower, at a batch boundary): pause, train
                     what is queued, take the snapshot's weights, rewind the examples
                     to its cut (what follows is trained again on top of it), re-embed
                     everything into new Qdrant collections, switch the aliases, checkpoint

Exactly once with respect to the stream: everything that shapes the model is
saved together in one checkpoint (:mod:`recallstream.consumers.worker_state`),
and a restart seeks every partition to its saved offsets. Records reach the
join in an order fixed by the logs (:mod:`recallstream.streaming.alignment`),
so a restarted worker forms the same minibatches as one that never stopped.
One worker owns a checkpoint directory (a lock), so a second one refuses to
start instead of corrupting the model. Qdrant holds derived data: after a
(re)start the catalog is published again unless a persistent index holds it as of
the checkpoint (IndexPublisher.ensure_catalog).

A checkpoint that cannot be written (disk full) is logged and counted
(``recallstream_checkpoint_failures_total``); nothing is committed, training goes on
and the next checkpoint tries again (the final one, at a stop, raises). A damaged
checkpoint is skipped for the previous one when the worker starts
(``recallstream_corrupt_files_total{kind="checkpoint"}``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from recallstream.consumers import metrics
from recallstream.consumers.progress import print_progress
from recallstream.consumers.thread_policy import frozen_heap, set_training_threads
from recallstream.streaming.settings import Settings

log = logging.getLogger("recallstream.worker")

RECALL_K = 50
ROLLING_CLICKS = 5000  # window of the rolling prequential recall


@dataclass
class WorkerOptions:
    """How long the worker runs and how it reports (the stream settings are in Settings).

    Attributes
    ----------
    exit_when_idle_s : float or None
        Stop once every partition is caught up and nothing arrived for this long
        (None: run until SIGTERM/SIGINT).
    max_batches : int or None
        Stop after this many batches in this run (tests and benchmarks).
    lock_timeout_s : float
        Wait this long for another worker to release the checkpoint directory.
    progress : bool
        Print a progress line to stderr every few seconds.

    Examples
    --------
    >>> WorkerOptions(exit_when_idle_s=3.0).max_batches is None
    True
    """

    exit_when_idle_s: float | None = None
    max_batches: int | None = None
    lock_timeout_s: float = 0.0
    progress: bool = False


class Worker:
    """The online training job (see the module docstring).

    Use :meth:`run`; it returns the final report. ``stop`` (a threading.Event)
    ends it gracefully: the current batch finishes, a checkpoint is written,
    offsets are committed, clients are closed. ``index``, if given, is a
    VectorIndex owned by the caller (kept open). ``upstream``, if given, is the
    joiner feeding the examples topic (a :class:`~recallstream.consumers.joiner_process.
    JoinerProcess`): an idle worker stops only once it has finished, and its failure
    stops the worker.
    """

    def __init__(self, settings: Settings, options: WorkerOptions | None = None,
                 index=None, upstream=None) -> None:
        self.settings = settings
        self.options = options or WorkerOptions()
        self._given_index = index
        self.upstream = upstream
        self.stop = threading.Event()
        self.trainer = None
        self._loop_started: float | None = None
        # the checkpoints written in the background (the final one is not): how long
        # training stopped for them, and how long they took from staging to written
        self.checkpoint_times = {"checkpoints": 0, "pause_s": 0.0, "written_s": 0.0}

    @property
    def counters(self) -> dict[str, Any]:
        """``clicks_trained`` and ``batches`` so far (zeros until the worker has started)."""
        return self.trainer.counters if self.trainer else {"clicks_trained": 0, "batches": 0}

    @property
    def timing(self) -> dict[str, Any]:
        """Wall-clock marks of this run (benchmarks): ``loop_started``, ``first_batch``,
        ``last_batch`` (monotonic seconds) and the ``records`` consumed."""
        return {"loop_started": self._loop_started, **(self.trainer.timing if self.trainer else {})}

    def run(self) -> dict[str, Any]:
        from recallstream.model.checkpoint import CheckpointStore, OwnerLock

        lock = OwnerLock(self.settings.checkpoint_dir).acquire(self.options.lock_timeout_s)
        try:
            self.store = CheckpointStore(
                self.settings.checkpoint_dir,
                on_corrupt=lambda _path, _error: metrics.observe_corrupt_file("checkpoint"))
            metrics.serve_metrics(self.settings.metrics_port, self.settings.http_host)
            self._open()
            self._attach_recaller()
            try:
                with frozen_heap():
                    self._loop()
                    self._observe_ingest()  # the final lag and counts, whenever the last tick was
                    self._checkpoint(final=True)
            finally:
                self._close()
        finally:
            lock.release()
        return self.report()

    def _open(self) -> None:
        from recallstream.consumers.checkpoint_writer import CheckpointWriter
        from recallstream.consumers.worker_components import open_components
        from recallstream.streaming.prefetch import Prefetcher

        set_training_threads()
        self.ingestor, self.trainer, self.state, self.index, self.follower = open_components(
            self.settings, self._given_index, RECALL_K, ROLLING_CLICKS)
        saved = self.store.load_latest()
        if saved is not None:
            self.state.load_state_dict(saved)
        self.trainer.publisher.ensure_catalog(self.trainer.counters["batches"])
        # a few polls ahead are enough to overlap ingestion with training; more would only
        # lengthen the drain before each checkpoint (and a graceful stop)
        self.prefetcher = Prefetcher(self.ingestor, max_queued=4)
        self.writer = CheckpointWriter(self.store)
        self._staging_s = 0.0
        self._last_checkpoint_at = time.monotonic()
        self._batches_at_checkpoint = self.counters["batches"]
        self._ingest_metrics = metrics.IngestCounters()
        self._ingest_metrics.observe(self.ingestor.counters(), {})  # the baseline: restored counts
        metrics.set_build_info(batch_size=self.settings.batch_size, recall_k=RECALL_K)

    def _observe_ingest(self) -> None:
        try:  # the prefetch thread updates these counters meanwhile; skip a torn read
            self._ingest_metrics.observe(self.ingestor.counters(), self.ingestor.lag())
        except RuntimeError:
            pass

    def _attach_recaller(self) -> None:
        from recallstream.consumers import http_server
        from recallstream.model.recall import Recaller

        s = self.settings
        http_server.attach(s.metrics_port, Recaller(self.index, s.collection_items, s.collection_users))

    def _close(self) -> None:
        if self._given_index is None:  # the index closes: /recall has nothing to ask
            from recallstream.consumers import http_server

            http_server.attach(self.settings.metrics_port, None)
        # a write still running finishes first: its file is valid, and the lock must outlive it
        closers = [self.writer.close, self.prefetcher.close, self.trainer.publisher.close,
                   self.ingestor.close]
        if self._given_index is None:
            closers.append(self.index.close)
        for close in closers:
            try:
                close()
            except Exception as error:  # closing must not hide the real outcome
                log.warning("while closing: %s", error)

    def _loop(self) -> None:
        trainer = self.trainer
        self._loop_started = idle_since = time.monotonic()
        progress_at = metrics_at = 0.0
        batches_at_start = trainer.counters["batches"]
        self.prefetcher.start()
        while not self.stop.is_set():
            wait = trainer.batcher.time_left()
            ingested = self.prefetcher.get(timeout_s=0.2 if wait is None else min(0.2, wait))
            batches = trainer.counters["batches"]
            if ingested is not None:
                trainer.consume(ingested)
                idle_since = time.monotonic()
            trainer.train_due()
            self._maybe_reset()
            if self.upstream is not None:
                self.upstream.check()
            if trainer.counters["batches"] != batches:
                idle_since = time.monotonic()
            if self.writer.finished():
                self._collect_checkpoint(wait=False)
            if self._checkpoint_due():
                self._checkpoint()
            if time.monotonic() - metrics_at > 0.5:
                metrics_at = time.monotonic()
                self._observe_ingest()
            if self.options.progress and time.monotonic() - progress_at > 2.0:
                progress_at = time.monotonic()
                print_progress(self.report())
            max_batches = self.options.max_batches
            if max_batches is not None and trainer.counters["batches"] - batches_at_start >= max_batches:
                return
            if self._idle_for(idle_since) and not trainer.flush():
                return

    def _idle_for(self, idle_since: float) -> bool:
        limit = self.options.exit_when_idle_s
        return (limit is not None and time.monotonic() - idle_since >= limit
                and (self.upstream is None or self.upstream.finished())
                and self.prefetcher.caught_up())

    def _checkpoint_due(self) -> bool:
        s = self.settings
        return (self.counters["batches"] - self._batches_at_checkpoint >= s.checkpoint_every_batches
                or time.monotonic() - self._last_checkpoint_at >= s.checkpoint_every_s)

    def _checkpoint(self, final: bool = False) -> None:
        """Stage a checkpoint and write it in the background (training goes on; its offsets
        are committed once it is written); the final one is written before returning."""
        self._collect_checkpoint(wait=True)  # one write at a time
        with self._reading_paused():
            staging = time.perf_counter()
            if final:
                state = self._save_state(final=True)
            else:
                self.writer.start(self.state.stage(), staging)
                self._staging_s = time.perf_counter() - staging
        self._last_checkpoint_at = time.monotonic()
        self._batches_at_checkpoint = self.counters["batches"]
        if final:
            metrics.observe_checkpoint(time.perf_counter() - staging, state["created_at"])

    def _collect_checkpoint(self, wait: bool) -> None:
        """Commit the offsets of the checkpoint written in the background, if one ended
        (waiting for it if ``wait``); a failed write commits nothing."""
        waiting = time.perf_counter()
        written = self.writer.collect(wait)
        paused_s = time.perf_counter() - waiting + self._staging_s
        if written is None:
            return
        if written.error is not None:
            self._checkpoint_failed(written.error)
        else:
            with self._reading_paused():  # the consumer is the prefetch thread's
                committing = time.perf_counter()
                self.ingestor.commit(written.offsets)
                paused_s += time.perf_counter() - committing
            metrics.observe_checkpoint(written.seconds, written.created_at)
        metrics.observe_checkpoint_pause(paused_s)
        self.checkpoint_times["checkpoints"] += 1
        self.checkpoint_times["pause_s"] += paused_s
        self.checkpoint_times["written_s"] += written.seconds

    @contextlib.contextmanager
    def _reading_paused(self):
        """Stop the reading and train what it queued: the ingestor's state is then exactly
        what the trainer consumed."""
        with self.prefetcher.paused() as queued:
            for ingested in queued:
                self.trainer.consume(ingested)
            yield

    @staticmethod
    def _checkpoint_failed(error) -> None:
        metrics.observe_checkpoint_failure()
        log.error("%s; training goes on, nothing is committed, the next checkpoint "
                  "tries again", error)

    def _save_state(self, final: bool = False) -> dict[str, Any] | None:
        """Checkpoint and commit; None (logged, counted) when the file cannot be written:
        nothing is committed and the next checkpoint tries again. A final one raises."""
        from recallstream.model.checkpoint import CheckpointWriteFailed

        try:
            return self.state.save(self.store)
        except CheckpointWriteFailed as error:
            if final:
                metrics.observe_checkpoint_failure()
                raise
            self._checkpoint_failed(error)
            return None

    def _maybe_reset(self) -> None:
        from recallstream.consumers.snapshot_reset import load_snapshot, reset_to

        version = self.follower.due(self.trainer.newest_click_ts)
        snapshot = load_snapshot(self.follower, version, self.trainer.learner) if version else None
        if snapshot is None:
            return
        self._collect_checkpoint(wait=True)  # the reset writes its own checkpoint
        with self.prefetcher.paused() as queued:
            reset_to(snapshot, queued, self.trainer, self.ingestor, self.follower,
                     self.settings.topic_examples, self._save_state)
        self._last_checkpoint_at = time.monotonic()
        self._batches_at_checkpoint = self.counters["batches"]

    def report(self) -> dict[str, Any]:
        ingest = self.ingestor.counters()
        return {**self.counters, **self.trainer.monitor.report(), **self.trainer.loss_trace.report(),
                "examples_seen": ingest["examples_seen"],
                "dead_lettered": ingest["dead_lettered_total"], "orphans": ingest["orphans"],
                "refetched": ingest["refetched"],
                "last_loss": self.trainer.last_loss, "stuck_polls_woken": self.prefetcher.wakes,
                "snapshot_version": self.follower.version, "resets": self.follower.resets}

