"""The trainer side of the worker: ingested records in, model updates and vectors out.

:class:`StreamTrainer` takes each poll's result in stream order: it applies the
entity changes to the one pair of feature tables first, then adds the clicks
to the minibatcher. Each full (or timed-out) minibatch is

1. scored before training (:class:`~recallstream.model.prequential.PrequentialMonitor`),
2. trained on in one step (:meth:`~recallstream.model.online.OnlineLearner.train_batch`,
   which also updates the popularity estimate of its logQ correction),
3. published (:class:`~recallstream.consumers.index_publisher.IndexPublisher`)
   and reported to the metrics.

``counters["batches"]`` is the model version (the Qdrant payload's ``model_version``).

Examples
--------
>>> from recallstream.consumers.index_publisher import IndexPublisher
>>> from recallstream.model.index_sync import IndexSync
>>> from recallstream.model.online import OnlineLearner
>>> from recallstream.model.prequential import PrequentialMonitor
>>> from recallstream.model.towers import movielens_config
>>> from recallstream.model.vector_index import VectorIndex
>>> from recallstream.streaming.entity_tables import EntityTables
>>> from recallstream.streaming.events import Click, EntityRecord
>>> from recallstream.streaming.joiner import Positive
>>> from recallstream.streaming.minibatch import Minibatcher
>>> from recallstream.streaming.record_router import Ingested
>>> learner = OnlineLearner(movielens_config(id_buckets=64, output_dim=4, hidden=(8,)), seed=0)
>>> tables, index = EntityTables(), VectorIndex.connect(":memory:")
>>> sync = IndexSync(index, items="items", users="users", dim=4)
>>> trainer = StreamTrainer(learner, tables, PrequentialMonitor(k=1), Minibatcher(2, 60.0),
...                         IndexPublisher(sync, learner, tables, reembed_every_batches=5))
>>> clicks = [Positive(Click(f"c{n}", 10.0 + n, "u1", "i1", "m"), None) for n in range(3)]
>>> trainer.consume(Ingested(clicks, [EntityRecord("items", "i1", 1.0, {})], records=4))
>>> trainer.counters["clicks_trained"], trainer.counters["batches"], trainer.batcher.pending()
(2, 1, [('u1', 'i1', 12.0)])
>>> trainer.flush(), trainer.counters["clicks_trained"]
(True, 3)
>>> trainer.publisher.close(); index.close()
"""

from __future__ import annotations

import math
import time
from collections import deque

from recallstream.consumers import metrics
from recallstream.consumers.index_publisher import IndexPublisher
from recallstream.consumers.watch import TrainingWatch
from recallstream.model.catalog_vectors import BatchVectors, EncodedCatalog
from recallstream.model.prequential import PrequentialMonitor
from recallstream.streaming.entity_tables import EntityTables
from recallstream.streaming.minibatch import Minibatcher
from recallstream.streaming.record_router import Ingested, IngestedClicks, TrainingClick


class LossTrace:
    """The mean training loss of the first ``window`` batches and of the latest ``window``
    (whether the model learns: the first is about ln(candidates), the latest well below).

    Examples
    --------
    >>> trace = LossTrace(window=2)
    >>> for loss in (6.0, 5.0, 4.0, 2.0):
    ...     trace.add(loss)
    >>> trace.report()
    {'loss_first_batches': 5.5, 'loss_recent_batches': 3.0}
    """

    def __init__(self, window: int = 20) -> None:
        self.first: list[float] = []
        self.recent: deque[float] = deque(maxlen=window)

    def add(self, loss: float) -> None:
        if len(self.first) < self.recent.maxlen:
            self.first.append(loss)
        self.recent.append(loss)

    def report(self) -> dict:
        mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
        return {"loss_first_batches": mean(self.first), "loss_recent_batches": mean(self.recent)}

    def state_dict(self) -> dict:
        return {"first": list(self.first), "recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.first = list(state["first"])
        self.recent.clear()
        self.recent.extend(state["recent"])


class StreamTrainer:
    """Applies ingested records to the tables and the model (see the module docstring).

    Parameters
    ----------
    learner : OnlineLearner
    tables : EntityTables
    monitor : PrequentialMonitor
    batcher : Minibatcher of (user id, item id, event time)
    publisher : IndexPublisher
    health_every : int
        Compute the catalog-wide health figures every this many batches.

    Attributes
    ----------
    counters : dict
        ``clicks_trained`` and ``batches`` (the model version).
    last_loss : float
        Loss of the latest step (nan before the first).
    timing : dict
        Wall-clock marks for benchmarks: ``first_batch`` (monotonic time the first
        batch of this run began), ``last_batch`` (of the latest step) and
        ``records`` (raw records consumed).
    """

    def __init__(self, learner, tables: EntityTables, monitor: PrequentialMonitor,
                 batcher: Minibatcher, publisher: IndexPublisher, health_every: int = 1) -> None:
        self.learner = learner
        self.tables = tables
        self.monitor = monitor
        self.batcher = batcher
        self.publisher = publisher
        # clicks_since_snapshot: clicks applied on top of the snapshot the model is based
        # on (all of them before any reset); clicks_replayed: those read again after a reset
        self.counters = {"clicks_trained": 0, "batches": 0, "clicks_since_snapshot": 0,
                         "clicks_replayed": 0}
        self.last_loss = float("nan")
        self.newest_click_ts: float | None = None  # event time of the newest click trained
        self.loss_trace = LossTrace()
        self.timing = {"first_batch": None, "last_batch": None, "records": 0}
        self.watch = TrainingWatch(monitor.k, health_every)
        self.catalog = EncodedCatalog()
        publisher.sync.on_write = self.watch.written
        publisher.sync.on_reject = metrics.observe_qdrant_rejected

    def consume(self, ingested: Ingested | IngestedClicks) -> None:
        """Apply one poll's result: catalog changes first, then its clicks (in order)."""
        self.timing["records"] += ingested.records
        if ingested.entities:
            changes = self.tables.apply(ingested.entities)
            self.publisher.catalog_changed(changes, self.counters["batches"])
        replayed = ingested.replayed_clicks()
        if replayed:
            self.catch_up(replayed)
        clicks = ingested.clicks()
        self.watch.received([item_id for _, item_id, _ in clicks])
        for batch in self.batcher.add_many(clicks):
            self.train(batch)

    def catch_up(self, replayed: list[TrainingClick]) -> None:
        """Train the model on clicks read again after a reset to a snapshot (their
        popularity, histories, scores and counts were taken when first read): steps of
        the minibatch size, on top of the snapshot's weights."""
        size, learner = self.batcher.size, self.learner
        for start in range(0, len(replayed), size):
            chunk = replayed[start:start + size]
            user_ids = [user_id for user_id, _, _ in chunk]
            item_ids = [item_id for _, item_id, _ in chunk]
            self.last_loss = learner.step(learner.make_batch(
                user_ids, item_ids, learner.prefix_histories(user_ids, item_ids),
                self.tables.users, self.tables.items,
                encode_items=self.catalog.encoder(learner, self.tables)))
            self.counters["clicks_replayed"] += len(chunk)
            self.counters["clicks_since_snapshot"] += len(chunk)

    def train_due(self) -> bool:
        """Train the partial minibatch if its timeout has passed; True if it did."""
        due = self.batcher.poll()
        if due:
            self.train(due)
        return bool(due)

    def flush(self) -> bool:
        """Train the partial minibatch now, whatever its size; True if there was one."""
        rest = self.batcher.flush()
        if rest:
            self.train(rest)
        return bool(rest)

    def train(self, batch: list[tuple[str, str, float]]) -> None:
        """Score, train on and publish one minibatch of (user id, item id, event time)."""
        if self.timing["first_batch"] is None:
            self.timing["first_batch"] = time.monotonic()
        user_ids = [click[0] for click in batch]
        item_ids = [click[1] for click in batch]
        learner, users, items = self.learner, self.tables.users, self.tables.items
        # the catalog and the batch's users embedded once, for the scores and the health
        # figures; the users' inputs encoded once, for those and for the step
        histories = learner.prefix_histories(user_ids, item_ids)
        user_inputs = learner.encode_users(user_ids, users, histories)
        vectors = BatchVectors(histories, self.catalog.vectors(learner, self.tables),
                               learner.embed_encoded_users(user_inputs))
        hits = self.monitor.score(self.learner, user_ids, item_ids, users, items, vectors)
        health = self.watch.before_step(self.learner, user_ids, item_ids, users, items, vectors,
                                        self.counters["batches"])
        started = time.perf_counter()
        self.last_loss = learner.train_batch(user_ids, item_ids, users, items, histories,
                                             user_inputs=user_inputs,
                                             encode_items=self.catalog.encoder(learner, self.tables))
        self.loss_trace.add(self.last_loss)
        step_seconds = time.perf_counter() - started
        self.counters["clicks_trained"] += len(batch)
        self.counters["clicks_since_snapshot"] += len(batch)
        self.newest_click_ts = max(self.newest_click_ts or -math.inf, max(c[2] for c in batch))
        self.counters["batches"] += 1
        self.timing["last_batch"] = time.monotonic()
        self.watch.after_step(self, batch, hits, health)
        self.publisher.after_batch(batch, version=self.counters["batches"])
        metrics.observe_batch(len(batch), step_seconds, self.last_loss,
                              self.monitor.rolling_recall(), max(click[2] for click in batch),
                              self.publisher.pending())
