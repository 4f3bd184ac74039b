"""``recallstream worker``: Kafka events to incremental two-tower updates to Qdrant.

One loop, in this order::

    poll -> align (deterministic order) -> decode, dead-letter, join -> minibatch
         -> popularity estimate (logQ) -> score the clicks first (prequential recall)
         -> one train step -> changed item and user vectors -> Qdrant (background writer)
         -> every N batches or seconds: drain Qdrant writes, checkpoint, commit offsets

Exactly once with respect to the stream: the model, optimizer, popularity
estimate, feature tables, join state, the clicks waiting for a full batch and
the next offset of every partition are saved together, atomically, in one
checkpoint. A restart loads the newest checkpoint and seeks every partition to
its offsets, so a click is trained once whatever happened in between. Records
reach the join in an order fixed by the logs (:mod:`recallstream.streaming.alignment`), so a
restarted worker forms the same minibatches as one that never stopped.
Offsets are committed to the consumer group only after the checkpoint, and
only for lag monitoring. One worker owns a checkpoint directory (a lock), so a
second one refuses to start instead of corrupting the model.

Qdrant holds derived data: after a (re)start every catalog item is embedded
again, so the embedded ``:memory:`` mode loses nothing when the process dies.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from recallstream.consumers.usage import positive_int, require_broker
from recallstream.streaming.alignment import RecordAligner
from recallstream.streaming.events import EntityRecord
from recallstream.streaming.minibatch import Minibatcher
from recallstream.streaming.popularity import FrequencyEstimator
from recallstream.streaming.prefetch import Prefetcher
from recallstream.streaming.settings import Settings

log = logging.getLogger("recallstream.worker")

STATE_FORMAT = 1
RECALL_K = 50
ROLLING_CLICKS = 5000  # window of the rolling prequential recall

# Prometheus metrics of the worker (labels come from small fixed sets only).
CLICKS_TRAINED = Counter("recallstream_clicks_trained_total", "Clicks applied to the model")
BATCHES = Counter("recallstream_batches_total", "Training steps taken")
TRAIN_SECONDS = Histogram("recallstream_train_step_seconds", "Duration of one training step")
CHECKPOINT_SECONDS = Histogram("recallstream_checkpoint_seconds", "Duration of one checkpoint")
LOSS = Gauge("recallstream_train_loss", "Loss of the latest training step")
ROLLING_RECALL = Gauge("recallstream_prequential_recall_at_50",
                       "Share of the latest clicks whose item was in the user's top 50 before training")
LAST_CLICK_TS = Gauge("recallstream_last_trained_click_timestamp_seconds",
                      "Event time of the newest click trained on")
LAST_CHECKPOINT_TS = Gauge("recallstream_last_checkpoint_timestamp_seconds",
                           "Wall time of the newest checkpoint")
QDRANT_PENDING = Gauge("recallstream_qdrant_pending_points", "Vectors waiting for the Qdrant writer")


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
    """

    exit_when_idle_s: float | None = None
    max_batches: int | None = None
    lock_timeout_s: float = 0.0
    progress: bool = False


class Worker:
    """The online training loop (see the module docstring).

    Use :meth:`run`; it returns the final counters. ``stop`` (a threading.Event)
    ends it gracefully: the current batch finishes, a checkpoint is written,
    offsets are committed, clients are closed.
    """

    def __init__(self, settings: Settings, options: WorkerOptions | None = None,
                 index=None) -> None:
        self.settings = settings
        self.options = options or WorkerOptions()
        self._given_index = index  # a VectorIndex owned by the caller (kept open), or None
        self.stop = threading.Event()
        self.counters: dict[str, Any] = {"clicks_trained": 0, "batches": 0,
                                         "prequential_hits": 0, "prequential_clicks": 0,
                                         "popularity_hits": 0}
        # Wall-clock marks of this run (benchmarks): start of the loop, last batch trained,
        # and the records handled in between.
        self.timing = {"loop_started": None, "last_batch": None, "records": 0}
        self.last_loss = float("nan")
        self.rolling_hits: deque[bool] = deque(maxlen=ROLLING_CLICKS)
        self.rolling_popular_hits: deque[bool] = deque(maxlen=ROLLING_CLICKS)
        # item -> event time of the newest click on it trained so far (Qdrant payload: lets a
        # reader see how fresh an item's vector is)
        self.item_last_click: dict[str, float] = {}

    # -- life cycle -----------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from recallstream.model.checkpoint import CheckpointStore, OwnerLock

        lock = OwnerLock(self.settings.checkpoint_dir).acquire(self.options.lock_timeout_s)
        try:
            self.store = CheckpointStore(self.settings.checkpoint_dir)
            serve_metrics(self.settings.metrics_port)
            self._open()
            try:
                self._loop()
                self._checkpoint()
            finally:
                self._close()
        finally:
            lock.release()
        return self.report()

    def _open(self) -> None:
        from recallstream.model.index_sync import IndexSync
        from recallstream.model.online import OnlineLearner
        from recallstream.model.prequential import MostPopularSoFar
        from recallstream.model.vector_index import VectorIndex
        from recallstream.streaming.ingest import StreamIngestor

        s = self.settings
        set_training_threads()
        self.ingestor = StreamIngestor(s, aligner=RecordAligner(s.align_window_ms))
        self.batcher: Minibatcher[tuple] = Minibatcher(s.batch_size, s.batch_timeout_s)
        self.estimator = make_estimator(s.seed)
        self.learner = OnlineLearner(seed=s.seed)
        self.popular = MostPopularSoFar()
        self.items: dict[str, dict] = {}
        self.users: dict[str, dict] = {}
        state = self.store.load_latest()
        if state is not None:
            self._restore(state)
        # a few polls ahead are enough to overlap ingestion with training; more would only
        # lengthen the drain before each checkpoint (and a graceful stop)
        self.prefetcher = Prefetcher(self.ingestor, max_queued=4)
        self.index = self._given_index or VectorIndex.connect(s.qdrant, s.qdrant_api_key or None)
        self.sync = IndexSync(self.index, items=s.collection_items, users=s.collection_users,
                              dim=self.learner.dim, min_interval_s=s.qdrant_write_interval_s)
        self._reembed_catalog()
        self._last_checkpoint_at = time.monotonic()
        self._batches_at_checkpoint = self.counters["batches"]

    def _close(self) -> None:
        closers = [self.prefetcher.close, self.sync.close, self.ingestor.close]
        if self._given_index is None:
            closers.append(self.index.close)
        for close in closers:
            try:
                close()
            except Exception as error:  # closing must not hide the real outcome
                log.warning("while closing: %s", error)

    # -- the loop -------------------------------------------------------------------

    def _loop(self) -> None:
        self.timing["loop_started"] = idle_since = time.monotonic()
        batches_at_start = self.counters["batches"]
        progress_at = 0.0
        self.prefetcher.start()
        while not self.stop.is_set():
            wait = self.batcher.time_left()
            ingested = self.prefetcher.get(timeout_s=0.2 if wait is None else min(0.2, wait))
            trained = self.counters["batches"]
            if ingested is not None:
                self._consume(ingested)
                idle_since = time.monotonic()
            due = self.batcher.poll()
            if due:
                self._train(due)
            if self.counters["batches"] != trained:
                idle_since = time.monotonic()
            if self._checkpoint_due():
                self._checkpoint()
            if self.options.progress and time.monotonic() - progress_at > 2.0:
                progress_at = time.monotonic()
                self._print_progress()
            max_batches = self.options.max_batches
            if max_batches is not None and self.counters["batches"] - batches_at_start >= max_batches:
                return
            if self._idle_for(idle_since):
                rest = self.batcher.flush()
                if rest:
                    self._train(rest)
                    continue
                return

    def _consume(self, ingested) -> None:
        """Apply one poll's result: catalog changes first, then its clicks (in order)."""
        self.timing["records"] += ingested.records
        self._apply_entities(ingested.entities)
        for batch in self.batcher.add_many(
                (p.click.user_id, p.click.item_id, p.click.ts) for p in ingested.positives):
            self._train(batch)

    def _idle_for(self, idle_since: float) -> bool:
        limit = self.options.exit_when_idle_s
        return (limit is not None and time.monotonic() - idle_since >= limit
                and self.prefetcher.caught_up())

    def _apply_entities(self, entities) -> None:
        # The trainer's own copy of the feature tables follows the stream in order (the
        # ingestor's copy runs ahead by what the prefetcher has queued).
        for entity in entities:
            table = self.items if entity.kind == "items" else self.users
            if isinstance(entity, EntityRecord):
                table[entity.entity_id] = entity.features
            else:
                table.pop(entity.entity_id, None)
        added = [e.entity_id for e in entities if e.kind == "items" and isinstance(e, EntityRecord)]
        retired = [e.entity_id for e in entities if e.kind == "items" and not isinstance(e, EntityRecord)]
        if added:  # content features make a new item retrievable before its first click
            self._put_items(sorted(set(added)))
        if retired:
            self.sync.delete_items(sorted(set(retired)))
            self.learner.forget_items(retired)

    def _train(self, batch: list[tuple]) -> None:
        user_ids = [c[0] for c in batch]
        item_ids = [c[1] for c in batch]
        hits = self.learner.hits_at_k(user_ids, item_ids, RECALL_K, self.users)
        self.rolling_hits.extend(hits.tolist())
        self.counters["prequential_hits"] += int(hits.sum())
        self.counters["prequential_clicks"] += len(batch)
        # the same clicks against the most clicked items so far, for comparison
        popular = self.popular.hits_at_k(item_ids, RECALL_K,
                                         [self.learner.histories.get(u, ()) for u in user_ids])
        self.rolling_popular_hits.extend(popular.tolist())
        self.counters["popularity_hits"] += int(popular.sum())
        self.popular.update(item_ids)
        self.estimator.update(item_ids)
        log_q = np.log(self.estimator.probability(item_ids))
        started = time.perf_counter()
        self.last_loss = self.learner.train_batch(user_ids, item_ids, log_q,
                                                  self.users, self.items)
        TRAIN_SECONDS.observe(time.perf_counter() - started)
        self.counters["clicks_trained"] += len(batch)
        self.counters["batches"] += 1
        self.timing["last_batch"] = time.monotonic()
        for _, item_id, ts in batch:
            if ts > self.item_last_click.get(item_id, float("-inf")):
                self.item_last_click[item_id] = ts
        self._observe_batch(batch)
        if self.counters["batches"] % self.settings.reembed_every_batches == 0:
            self._reembed_catalog()
        else:
            self._put_items(sorted(set(item_ids)))
        users = sorted(set(user_ids))
        self.sync.put_users(users, self.learner.embed_users(users, self.users))

    def _observe_batch(self, batch: list[tuple]) -> None:
        CLICKS_TRAINED.inc(len(batch))
        BATCHES.inc()
        LOSS.set(self.last_loss)
        ROLLING_RECALL.set(_share(self.rolling_hits))
        LAST_CLICK_TS.set(max(c[2] for c in batch))
        QDRANT_PENDING.set(self.sync.pending())

    def _put_items(self, item_ids: list[str]) -> None:
        known = [i for i in item_ids if i in self.items]
        if not known:
            return
        vectors = self.learner.embed_items(known, self.items)
        now = time.time()
        version = self.counters["batches"]
        payloads = [{"model_version": version, "updated_at": now,
                     "last_click_ts": self.item_last_click.get(i),
                     "categories": list(self.items[i].get("genres") or [])}
                    for i in known]
        self.sync.put_items(known, vectors, payloads)

    def _reembed_catalog(self) -> None:
        self._put_items(sorted(self.items))

    # -- checkpoints ----------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        s = self.settings
        return (self.counters["batches"] - self._batches_at_checkpoint >= s.checkpoint_every_batches
                or time.monotonic() - self._last_checkpoint_at >= s.checkpoint_every_s)

    def _checkpoint(self) -> None:
        started = time.perf_counter()
        with self.prefetcher.paused() as queued:
            for ingested in queued:  # now the ingestor's state is exactly what was consumed
                self._consume(ingested)
            self.sync.drain()  # never commit offsets past vectors that did not reach Qdrant
            ingest = self.ingestor.state_dict()
            state = {
                "format": STATE_FORMAT, "created_at": time.time(),
                "offsets": ingest["offsets"], "ingest": ingest,
                "pending_clicks": [list(click) for click in self.batcher.pending()],
                "counters": dict(self.counters),
                "item_last_click": dict(self.item_last_click),
                "estimator": self.estimator.state_dict(),
                "learner": self.learner.state_dict(),
                "popular": self.popular.state_dict(),
            }
            self.store.save(state)
            self.ingestor.commit(ingest["offsets"])
        CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        LAST_CHECKPOINT_TS.set(state["created_at"])
        self._last_checkpoint_at = time.monotonic()
        self._batches_at_checkpoint = self.counters["batches"]

    def _restore(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not {STATE_FORMAT}")
        self.ingestor.load_state_dict(state["ingest"])
        self.items.update(self.ingestor.items)
        self.users.update(self.ingestor.users)
        self.batcher.extend(tuple(click) for click in state["pending_clicks"])
        self.counters.update(state["counters"])
        self.item_last_click.update(state["item_last_click"])
        self.estimator.load_state_dict(state["estimator"])
        self.learner.load_state_dict(state["learner"])
        self.popular.load_state_dict(state["popular"])

    # -- reporting ------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        ingest = self.ingestor.counters()
        clicks = self.counters["prequential_clicks"]
        return {**self.counters, "exposures_seen": ingest["exposures_seen"],
                "dead_lettered": ingest["dead_lettered_total"], "orphans": ingest["orphans"],
                f"prequential_recall@{RECALL_K}": self.counters["prequential_hits"] / clicks if clicks else None,
                f"rolling_recall@{RECALL_K}": _share(self.rolling_hits),
                f"popularity_prequential_recall@{RECALL_K}":
                    self.counters["popularity_hits"] / clicks if clicks else None,
                f"popularity_rolling_recall@{RECALL_K}": _share(self.rolling_popular_hits),
                "last_loss": self.last_loss,
                "stuck_polls_woken": self.prefetcher.wakes}

    def _print_progress(self) -> None:
        import sys

        r = self.report()
        loss = "-" if math.isnan(r["last_loss"]) else f"{r['last_loss']:.3f}"  # none trained yet
        sys.stderr.write(f"\rworker: {r['clicks_trained']:>8} clicks trained  {r['batches']:>5} batches  "
                         f"{r['exposures_seen']:>8} exposures  {r['dead_lettered']} dead letters  "
                         f"loss {loss}")
        sys.stderr.flush()


def _share(flags) -> float | None:
    return sum(flags) / len(flags) if flags else None


_METRICS_PORTS: set[int] = set()


def serve_metrics(port: int) -> None:
    """Serve /metrics on ``port`` (0: not at all), once per process: a worker that runs
    again in the same process (tests, the demo) keeps the endpoint it had."""
    if port and port not in _METRICS_PORTS:
        start_http_server(port)
        _METRICS_PORTS.add(port)


def make_estimator(seed: int) -> FrequencyEstimator:
    """The worker's popularity estimate for logQ (the pipeline benchmark uses the same)."""
    # 2 x 2^17 buckets: few collisions for catalogs up to ~100k items, 4 MB of checkpoint
    return FrequencyEstimator(num_buckets=1 << 17, alpha=0.05, num_hashes=2, seed=seed)


def set_training_threads() -> int:
    """Leave one core to the ingestion thread: torch gets the others (at least one).

    Two torch threads next to a busy Python thread on two cores slow each other
    down, because torch's workers spin while they wait for the core.
    """
    import os

    import torch

    threads = max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)
    return threads


# -- CLI ------------------------------------------------------------------------------

def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "worker", parents=[subparsers.settings_parent],
        help="consume events, train the towers incrementally, keep Qdrant fresh")
    parser.add_argument("--exit-when-idle", type=float, default=None, metavar="S",
                        help="stop after S seconds with nothing to read (default: run forever)")
    parser.add_argument("--max-batches", type=positive_int, default=None,
                        help="stop after this many batches")
    parser.add_argument("--lock-timeout", type=float, default=0.0, metavar="S",
                        help="wait up to S seconds for another worker to release the model")
    parser.add_argument("--progress", action="store_true", help="print progress to stderr")
    parser.add_argument("--json", action="store_true", help="print the final counters as JSON")
    parser.set_defaults(func=run)


def run(args, settings: Settings) -> int:
    from recallstream.consumers.cli import print_report
    from recallstream.model.checkpoint import CheckpointLocked
    from recallstream.streaming.prefetch import StalledIngestion

    require_broker(settings)
    worker = Worker(settings, WorkerOptions(exit_when_idle_s=args.exit_when_idle,
                                            max_batches=args.max_batches,
                                            lock_timeout_s=args.lock_timeout,
                                            progress=args.progress))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop.set())
    try:
        report = worker.run()
    except CheckpointLocked as error:
        print(f"recallstream worker: {error}", flush=True)
        return 3
    except StalledIngestion as error:
        print(f"recallstream worker: {error}; restart it: it resumes from its last checkpoint",
              flush=True)
        return 4
    print_report(report, args.json)
    return 0
