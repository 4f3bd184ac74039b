"""The worker's Prometheus metrics, declared once, and the ``/metrics`` endpoint
(served by :mod:`recallstream.consumers.http_server`, beside ``/recall``).

Metric names are part of the deployment (``deploy/prometheus``, the Grafana
dashboard, the README's table): they live here only. Labels come from small
fixed sets (topic kind, reason, outcome, collection, signal), never ids.
Callers report through the ``observe_*`` functions.
"""

from __future__ import annotations

import time
from typing import Mapping

from prometheus_client import Counter, Gauge, Histogram, Info

from recallstream.model.drift import SIGNALS

# --- flow
CLICKS_TRAINED = Counter("recallstream_clicks_trained_total", "Clicks applied to the model")
BATCHES = Counter("recallstream_batches_total", "Training steps taken")
EXAMPLES_TRAINED = Counter("recallstream_examples_trained_total",
                           "Candidates of the training softmax: clicks plus sampled negatives")
RECORDS = Counter("recallstream_records_consumed_total",
                  "Valid records consumed, by topic kind (examples, entities, tombstones)",
                  ["topic"])
DEAD_LETTERS = Counter("recallstream_dead_letters_total", "Records sent to the dead-letter topic",
                       ["reason"])
JOINS = Counter("recallstream_joins_total", "Trained examples whose click the joiner matched to its exposure, or not (orphaned)",
                ["outcome"])
LAG = Gauge("recallstream_consumer_lag_records",
            "End offset minus next offset to handle, summed over the topic's partitions", ["topic"])
LAST_CLICK_TS = Gauge("recallstream_last_trained_click_timestamp_seconds",
                      "Event time of the newest click trained on")
LAST_PROCESSED_TS = Gauge("recallstream_last_processed_timestamp_seconds",
                          "Wall time the worker last trained a batch")
TRAIN_SECONDS = Histogram("recallstream_train_step_seconds", "Duration of one training step")
CHECKPOINT_SECONDS = Histogram("recallstream_checkpoint_seconds",
                               "Duration of one checkpoint, from staging its state to its file written")
CHECKPOINT_PAUSE_SECONDS = Histogram(
    "recallstream_checkpoint_pause_seconds",
    "Time training stopped for one checkpoint: staging its state, waiting for the previous "
    "write, committing its offsets (the file is written in the background meanwhile)")
CHECKPOINT_FAILURES = Counter(
    "recallstream_checkpoint_failures_total",
    "Checkpoints that could not be written (disk full, I/O error): retried at the next one")
CORRUPT_FILES = Counter(
    "recallstream_corrupt_files_total",
    "Damaged files skipped for the previous good one: checkpoint, snapshot, snapshot_pointer",
    ["kind"])
LAST_CHECKPOINT_TS = Gauge("recallstream_last_checkpoint_timestamp_seconds",
                           "Wall time of the newest checkpoint")
QDRANT_PENDING = Gauge("recallstream_qdrant_pending_points", "Vectors waiting for the Qdrant writer")
QDRANT_WRITE_SECONDS = Histogram("recallstream_qdrant_write_seconds", "Duration of one Qdrant write",
                                 ["collection"])
QDRANT_POINTS = Counter("recallstream_qdrant_points_written_total", "Points written to Qdrant",
                        ["collection"])
QDRANT_FAILURES = Counter("recallstream_qdrant_write_failures_total", "Qdrant writes that failed",
                          ["collection"])
QDRANT_REJECTED = Counter(
    "recallstream_qdrant_points_rejected_total",
    "Vectors dropped instead of written: non_finite (NaN or infinity), refused (by Qdrant)",
    ["collection", "reason"])
FRESHNESS_SECONDS = Histogram(
    "recallstream_freshness_seconds",
    "From the trainer taking a click in to its item's new vector written to Qdrant",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0))
SNAPSHOT_VERSION = Gauge("recallstream_snapshot_version",
                         "Version of the daily snapshot the model is based on (0: none yet)")
SNAPSHOT_CREATED_TS = Gauge("recallstream_snapshot_last_success_timestamp_seconds",
                            "Publication time of the newest snapshot the worker reset to")
RESETS = Counter("recallstream_resets_total", "Resets of the model to a newer snapshot")
RESET_SECONDS = Histogram("recallstream_reset_seconds",
                          "Duration of a reset: load, rewind, re-embed into new collections, swap")
MODEL_VERSION = Gauge("recallstream_model_version", "Training steps of the model (Qdrant model_version)")
BUILD = Info("recallstream_build", "Version and configuration of the worker")

# --- model health
LOSS = Gauge("recallstream_train_loss", "Loss of the latest training step")
IN_BATCH_ACCURACY = Gauge("recallstream_in_batch_accuracy",
                          "Share of the latest batch's clicks whose item outscored the batch's other items")
POSITIVE_SCORE = Gauge("recallstream_positive_score_mean", "Mean score of the latest batch's clicks")
NEGATIVE_SCORE = Gauge("recallstream_negative_score_mean",
                       "Mean score of the latest batch's users against the batch's other items")
USER_NORM = Gauge("recallstream_user_vector_norm_mean", "Mean norm of the latest batch's user vectors")
ITEM_NORM = Gauge("recallstream_item_vector_norm_mean", "Mean norm of the catalog's item vectors")
COLLAPSE = Gauge("recallstream_item_embedding_mean_cosine",
                 "Mean pairwise cosine of a fixed sample of item vectors (1: collapsed)")
NEVER_TRAINED = Gauge("recallstream_catalog_never_trained_ratio",
                      "Share of catalog items no trained click has touched")

# --- popularity and logQ
POPULARITY_ENTROPY = Gauge("recallstream_popularity_normalized_entropy",
                           "Entropy of the estimated click distribution over log(catalog size)")
POPULARITY_TOP = Gauge("recallstream_popularity_top1pct_share",
                       "Estimated click share of the top 1% of items")
LOG_Q = Gauge("recallstream_logq_correction_mean", "Mean logQ correction of the latest batch's items")

# --- quality online
ROLLING_RECALL = Gauge("recallstream_prequential_recall_at_50",
                       "Share of the latest clicks whose item was in the user's top 50 before training")
POPULAR_RECALL = Gauge("recallstream_popularity_recall_at_50",
                       "The same for the most-popular-so-far baseline")
COVERAGE = Gauge("recallstream_recommendation_coverage_ratio",
                 "Distinct items in the top 50 of the latest batch's users, over the catalog size")

# --- drift
DRIFT_DETECTED = Counter("recallstream_drift_detected_total", "Drift detections, by signal", ["signal"])
DRIFT_LAST_TS = Gauge("recallstream_drift_last_detected_timestamp_seconds",
                      "Wall time of the latest detection, by signal (0: none yet)", ["signal"])
DRIFT_STATISTIC = Gauge("recallstream_drift_statistic",
                        "Latest value fed to the signal's detector", ["signal"])

for _signal in SIGNALS:  # every series exists from the start
    DRIFT_DETECTED.labels(_signal)
    DRIFT_LAST_TS.labels(_signal)
for _outcome in ("matched", "orphaned"):
    JOINS.labels(_outcome)
for _topic in ("exposures", "clicks", "entities", "tombstones"):
    RECORDS.labels(_topic)
for _kind in ("checkpoint", "snapshot", "snapshot_pointer"):
    CORRUPT_FILES.labels(_kind)
for _collection in ("items", "users"):
    for _reason in ("non_finite", "refused"):
        QDRANT_REJECTED.labels(_collection, _reason)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics (and /recall) on ``host:port`` (0: not at all), once per process: a
    worker that runs again in the same process (tests, the demo) keeps the endpoint it had."""
    from recallstream.consumers import http_server

    http_server.serve(port, host)


def observe_batch(clicks: int, step_seconds: float, loss: float, rolling_recall: float | None,
                  newest_click_ts: float, pending_writes: int) -> None:
    """One trained minibatch of ``clicks`` clicks."""
    CLICKS_TRAINED.inc(clicks)
    BATCHES.inc()
    TRAIN_SECONDS.observe(step_seconds)
    LOSS.set(loss)
    if rolling_recall is not None:
        ROLLING_RECALL.set(rolling_recall)
    LAST_CLICK_TS.set(newest_click_ts)
    LAST_PROCESSED_TS.set(time.time())
    QDRANT_PENDING.set(pending_writes)


def observe_checkpoint(seconds: float, created_at: float) -> None:
    """One checkpoint written (wall time ``created_at``) in ``seconds``."""
    CHECKPOINT_SECONDS.observe(seconds)
    LAST_CHECKPOINT_TS.set(created_at)


def observe_checkpoint_pause(seconds: float) -> None:
    """Training stopped ``seconds`` for one checkpoint written in the background."""
    CHECKPOINT_PAUSE_SECONDS.observe(seconds)


def observe_checkpoint_failure() -> None:
    """A checkpoint that could not be written (the worker retries at the next one)."""
    CHECKPOINT_FAILURES.inc()


def observe_corrupt_file(kind: str) -> None:
    """A damaged file of ``kind`` (checkpoint, snapshot, snapshot_pointer) skipped.

    >>> before = CORRUPT_FILES.labels("checkpoint")._value.get()
    >>> observe_corrupt_file("checkpoint")
    >>> CORRUPT_FILES.labels("checkpoint")._value.get() - before
    1.0
    """
    CORRUPT_FILES.labels(kind).inc()


_HEALTH_GAUGES = {"in_batch_accuracy": IN_BATCH_ACCURACY, "positive_score": POSITIVE_SCORE,
                  "negative_score": NEGATIVE_SCORE, "user_norm": USER_NORM, "item_norm": ITEM_NORM,
                  "collapse": COLLAPSE, "coverage": COVERAGE, "entropy": POPULARITY_ENTROPY,
                  "top_share": POPULARITY_TOP, "log_q_mean": LOG_Q,
                  "never_trained": NEVER_TRAINED, "popular_recall": POPULAR_RECALL}


def observe_health(figures: Mapping[str, float | None], examples: int, version: int) -> None:
    """Model health, popularity and quality figures of the latest batch (keys of
    ``_HEALTH_GAUGES``; missing or None ones keep their value)."""
    for key, value in figures.items():
        if value is not None and key in _HEALTH_GAUGES:
            _HEALTH_GAUGES[key].set(value)
    EXAMPLES_TRAINED.inc(examples)
    MODEL_VERSION.set(version)


def observe_drift(fired: list[str], statistic: Mapping[str, float]) -> None:
    """Detections (one signal name each) and the current statistic of each signal."""
    now = time.time()
    for signal in fired:
        DRIFT_DETECTED.labels(signal).inc()
        DRIFT_LAST_TS.labels(signal).set(now)
    for signal, value in statistic.items():
        DRIFT_STATISTIC.labels(signal).set(value)


def observe_qdrant_write(collection: str, points: int, seconds: float, ok: bool) -> None:
    """One write of ``points`` points to ``collection`` (items or users)."""
    QDRANT_WRITE_SECONDS.labels(collection).observe(seconds)
    if ok:
        QDRANT_POINTS.labels(collection).inc(points)
    else:
        QDRANT_FAILURES.labels(collection).inc()


def observe_qdrant_rejected(kind: str, points: int, reason: str) -> None:
    """``points`` vectors of ``kind`` (item or user) dropped for ``reason`` (non_finite, refused).

    >>> before = QDRANT_REJECTED.labels("items", "non_finite")._value.get()
    >>> observe_qdrant_rejected("item", 2, "non_finite")
    >>> QDRANT_REJECTED.labels("items", "non_finite")._value.get() - before
    2.0
    """
    QDRANT_REJECTED.labels("items" if kind == "item" else "users", reason).inc(points)


def observe_reset(version: int, created_at: float, seconds: float) -> None:
    SNAPSHOT_VERSION.set(version)
    SNAPSHOT_CREATED_TS.set(created_at)
    RESETS.inc()
    RESET_SECONDS.observe(seconds)


def observe_freshness(seconds: float) -> None:
    FRESHNESS_SECONDS.observe(seconds)


class IngestCounters:
    """Turns the ingestor's cumulative counters (restored from the checkpoint) into
    increments of this process's Prometheus counters: the first call sets the baseline.

    Examples
    --------
    >>> before = RECORDS.labels("examples")._value.get()
    >>> counters = {"examples_seen": 5, "orphans": 0, "entity_records": 0, "tombstones": 0,
    ...             "dead_lettered": {}}
    >>> ingest = IngestCounters()
    >>> ingest.observe(counters, {"examples": 3})
    >>> ingest.observe({**counters, "examples_seen": 7}, {"examples": 1})
    >>> RECORDS.labels("examples")._value.get() - before, LAG.labels("examples")._value.get()
    (2.0, 1.0)
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], float] | None = None

    def observe(self, counters: Mapping, lag: Mapping[str, int]) -> None:
        examples, orphans = counters["examples_seen"], counters["orphans"]
        now = {("topic", "examples"): examples,
               ("topic", "entities"): counters["entity_records"],
               ("topic", "tombstones"): counters["tombstones"],
               # how the joiner job joined the examples' clicks
               ("outcome", "matched"): examples - orphans, ("outcome", "orphaned"): orphans,
               **{("reason", reason): n for reason, n in counters["dead_lettered"].items()}}
        last, self._last = self._last, now
        for topic, records in lag.items():
            LAG.labels(topic).set(records)
        if last is None:
            return
        metric = {"topic": RECORDS, "outcome": JOINS, "reason": DEAD_LETTERS}
        for (kind, label), value in now.items():
            delta = value - last.get((kind, label), 0)
            if delta > 0:
                metric[kind].labels(label).inc(delta)


def set_build_info(**labels) -> None:
    """``recallstream_build_info``: the installed version and the configuration, as labels."""
    BUILD.info({"version": _installed_version(), **{key: str(value) for key, value in labels.items()}})


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recallstream")
    except PackageNotFoundError:
        return "unknown"
