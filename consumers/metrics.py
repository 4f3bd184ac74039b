"""The worker's Prometheus metrics, declared once, and the ``/metrics`` endpoint
(served by :mod:`recallstream.consumers.http_server`, beside ``/recall``).

Metric names are part of the deployment (``deploy/prometheus``, the Grafana
dashboards): they live here only. Labels, if any, come from small fixed sets.
Callers report through :func:`observe_batch` and :func:`observe_checkpoint`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
    QDRANT_PENDING.set(pending_writes)


def observe_checkpoint(seconds: float, created_at: float) -> None:
    """One checkpoint written (wall time ``created_at``) in ``seconds``."""
    CHECKPOINT_SECONDS.observe(seconds)
    LAST_CHECKPOINT_TS.set(created_at)
