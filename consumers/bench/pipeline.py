"""Pipeline throughput: events/s through the whole worker against the bare train step.

Setup (once): the first ``--limit`` MovieLens-100K clicks with their simulated
exposures are replayed into scratch topics (on the configured broker, or the
local one started for the benchmark).

Each run measures, side by side on the same machine load:

- **pipeline**: a fresh worker (new checkpoint folder, embedded Qdrant) reads
  the topics from the beginning: fetch, decode, align, join, minibatch,
  popularity estimate, prequential scoring, train step, item and user vectors
  to Qdrant, checkpoints. Timed from the start of its loop to its last batch
  (start-up, i.e. imports and the first catalog embedding, is excluded).
  ``pipeline_events_per_s`` counts every record consumed (exposures, clicks,
  catalog and profile records); ``pipeline_clicks_per_s`` the clicks trained.
- **bare step**: the same model (``OnlineLearner``) with the same batch size,
  fed the same clicks from memory: only ``train_batch`` (its popularity
  estimate and one optimizer step).

``ratio`` = ``pipeline_clicks_per_s / bare_step_samples_per_s``: the share of
the model's own training speed that survives the stream around it. Figures
are medians over ``--runs`` runs.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
import uuid
from typing import Any

from recallstream.consumers.usage import positive_int


def add_arguments(parser) -> None:
    parser.add_argument("--limit", type=positive_int, default=20_000,
                        help="clicks replayed for the runs")


def run(args, settings) -> dict[str, Any]:
    import torch

    from recallstream.consumers.local_kafka import running_broker
    from recallstream.consumers.replay import ReplayPlan, publish
    from recallstream.streaming.kafka_io import scratch_topics
    from recallstream.streaming.movielens import load_movielens

    dataset = load_movielens("ml-100k")
    plan = ReplayPlan(dataset, limit=args.limit)
    settings = dataclasses.replace(settings, metrics_port=0, qdrant=":memory:")
    run_id = f"bench-pipeline-{uuid.uuid4().hex[:8]}"
    pipeline, bare = [], []
    with running_broker(settings) as settings, scratch_topics(settings, run_id) as settings:
        publish(plan, settings, progress=False)
        for _ in range(args.runs):  # interleaved, so both see the same load
            pipeline.append(_pipeline_run(settings))
            bare.append(_bare_step_rate(settings, dataset, plan))
    events = statistics.median(events for events, _ in pipeline)
    clicks = statistics.median(clicks for _, clicks in pipeline)
    samples = statistics.median(bare)
    return {"pipeline_events_per_s": round(events), "pipeline_clicks_per_s": round(clicks),
            "bare_step_samples_per_s": round(samples), "ratio": round(clicks / samples, 3),
            "batch_size": settings.batch_size, "clicks": plan.num_clicks,
            "events": plan.num_clicks + plan.num_exposures, "runs": args.runs,
            "torch_threads": torch.get_num_threads()}


def _pipeline_run(settings) -> tuple[float, float]:
    from recallstream.consumers.worker import Worker, WorkerOptions

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-ckpt-") as folder:
        worker = Worker(dataclasses.replace(settings, checkpoint_dir=folder),
                        WorkerOptions(exit_when_idle_s=2.0))
        report = worker.run()
    seconds = worker.timing["last_batch"] - worker.timing["loop_started"]
    return worker.timing["records"] / seconds, report["clicks_trained"] / seconds


def _bare_step_rate(settings, dataset, plan) -> float:
    from recallstream.consumers.thread_policy import set_training_threads
    from recallstream.model.online import OnlineLearner

    set_training_threads()  # the worker's setting: same model, same threads
    learner = OnlineLearner(seed=settings.seed)
    ratings = dataset.ratings[plan.order()]
    users, items = ratings["user_id"].tolist(), ratings["item_id"].tolist()
    size = settings.batch_size
    batches = [(users[i:i + size], items[i:i + size]) for i in range(0, len(users) - size + 1, size)]
    started = time.perf_counter()
    for user_ids, item_ids in batches:
        learner.train_batch(user_ids, item_ids, dataset.users, dataset.items)
    return len(batches) * size / (time.perf_counter() - started)
