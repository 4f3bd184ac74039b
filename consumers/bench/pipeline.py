"""Pipeline throughput: events/s from the producer's topics through the joiner and the
worker to Qdrant, against the bare train step.

Each run replays the first ``--limit`` MovieLens-100K clicks, each with
``--exposures-per-click`` exposures (the clicked item's and others), into fresh
scratch topics (not timed), then measures, side by side on the same machine load:

- **pipeline**: a fresh worker (new checkpoint folder, embedded Qdrant:
  ``--backend`` edge, the worker's default, or memory) starts in this process; once its loop runs, one joiner starts as a child process
  (``recallstream joiner``: its own process and GIL, as in production). The
  joiner reads exposures and clicks and writes one example per click, in Kafka
  transactions; the worker reads the examples (``read_committed``) and the
  catalog: decode, align, minibatch, popularity estimate, prequential scoring,
  train step, item and user vectors to Qdrant, checkpoints. Timed from the
  joiner's first poll with records to the worker's last batch: the rate of a
  running pipeline. ``joiner_startup_s`` is what comes before (the child
  process's imports, joining its group, restoring its lanes), and
  ``events_per_s_with_startup`` the rate timed from the joiner's start.
  ``pipeline_events_per_s`` counts the exposures and clicks produced;
  ``pipeline_clicks_per_s`` the clicks trained; ``joiner_records_per_s`` the
  joiner's input records over its active time (first poll with records to last
  commit) and ``joiner_us_per_record`` its own Python work per input record
  (decode, join, encode).
- **bare step**: the same model (``OnlineLearner``) with the same batch size,
  fed the same clicks from memory: only ``train_batch`` (its popularity
  estimate and one optimizer step), with the worker's encoding (the catalog
  encoded once, each batch's users once; the catalog's encoding is not timed).

``ratio`` = ``pipeline_clicks_per_s / bare_step_samples_per_s``: the share of
the model's own training speed that survives the stream around it. Figures
are medians over ``--runs`` runs.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import threading
import time
import uuid
from typing import Any

from recallstream.consumers.usage import CommandError, positive_int


def add_arguments(parser) -> None:
    parser.add_argument("--limit", type=positive_int, default=20_000,
                        help="clicks replayed for each run")
    parser.add_argument("--exposures-per-click", type=positive_int, default=4,
                        help="exposures per click, the clicked item's included (default: 4)")
    parser.add_argument("--backend", choices=("edge", "memory"), default="edge",
                        help="the worker's embedded index: edge (Qdrant Edge beside the run's "
                             "checkpoints, the worker's default) or memory (qdrant-client's "
                             "local mode)")


def run(args, settings) -> dict[str, Any]:
    import torch

    from recallstream.consumers.local_kafka import running_broker
    from recallstream.consumers.replay import ReplayPlan
    from recallstream.streaming.movielens import load_movielens

    dataset = load_movielens("ml-100k")
    plan = ReplayPlan(dataset, limit=args.limit, exposures_per_click=args.exposures_per_click - 1)
    settings = dataclasses.replace(settings, metrics_port=0)
    pipeline, bare = [], []
    with running_broker(settings) as settings:
        for _ in range(args.runs):  # interleaved, so both see the same load
            pipeline.append(_pipeline_run(settings, plan, args.backend))
            bare.append(_bare_step_rate(settings, dataset, plan))
    events = plan.num_clicks + plan.num_exposures
    seconds = statistics.median(run["seconds"] for run in pipeline)
    clicks = statistics.median(run["clicks_trained"] / run["seconds"] for run in pipeline)
    samples = statistics.median(bare)
    startup = statistics.median(run["startup_s"] for run in pipeline)
    return {"pipeline_events_per_s": round(events / seconds),
            "pipeline_clicks_per_s": round(clicks),
            "joiner_startup_s": round(startup, 2),
            "events_per_s_with_startup": round(statistics.median(
                events / (run["seconds"] + run["startup_s"]) for run in pipeline)),
            "joiner_records_per_s": round(statistics.median(run["joiner_records_per_s"]
                                                            for run in pipeline)),
            "joiner_us_per_record": statistics.median(run["joiner_us_per_record"]
                                                      for run in pipeline),
            "bare_step_samples_per_s": round(samples), "ratio": round(clicks / samples, 3),
            "batch_size": settings.batch_size, "clicks": plan.num_clicks, "events": events,
            "exposures_per_click": args.exposures_per_click, "backend": args.backend,
            "runs": args.runs,
            "torch_threads": torch.get_num_threads()}


def _pipeline_run(settings, plan, backend: str) -> dict[str, float]:
    from recallstream.consumers.replay import publish
    from recallstream.consumers.worker import Worker, WorkerOptions
    from recallstream.streaming.kafka_io import scratch_topics

    with scratch_topics(settings, f"bench-pipeline-{uuid.uuid4().hex[:8]}") as topics, \
            tempfile.TemporaryDirectory(prefix="bench-pipeline-ckpt-") as folder:
        publish(plan, topics, progress=False)
        upstream = _JoinerStartedLater()
        index = ":memory:" if backend == "memory" else "edge:"  # edge: in the checkpoint folder
        worker = Worker(dataclasses.replace(topics, checkpoint_dir=folder, qdrant=index),
                        WorkerOptions(exit_when_idle_s=2.0), upstream=upstream)
        thread = threading.Thread(target=worker.run, name="bench-worker")
        thread.start()
        try:
            while worker.timing["loop_started"] is None and thread.is_alive():
                time.sleep(0.01)
            started = time.monotonic()
            upstream.start(topics)
            thread.join()
        finally:
            worker.stop.set()
            thread.join()
            joined = upstream.stop()
    if worker.counters["clicks_trained"] != plan.num_clicks or not joined:
        raise CommandError(f"{plan.num_clicks} clicks replayed, {worker.counters['clicks_trained']} "
                           f"trained; joiner report: {joined}")
    first_record = joined["first_record_at"]  # the joiner's monotonic clock: this machine's
    return {"seconds": worker.timing["last_batch"] - first_record,
            "startup_s": first_record - started,
            "clicks_trained": worker.counters["clicks_trained"],
            "joiner_records_per_s": joined["records"] / joined["active_s"],
            "joiner_us_per_record": joined["us_per_record"]}


class _JoinerStartedLater:
    """The worker's upstream joiner, started once the worker's loop runs (its start-up,
    imports and the first catalog embedding, is not what the benchmark measures)."""

    def __init__(self) -> None:
        self._process = None

    def start(self, settings) -> None:
        from recallstream.consumers.joiner_process import JoinerProcess

        self._process = JoinerProcess(settings, exit_when_idle_s=1.0)

    def check(self) -> None:
        if self._process is not None:
            self._process.check()

    def finished(self) -> bool:
        return self._process is not None and self._process.finished()

    def stop(self):
        return self._process.stop() if self._process is not None else None


def _bare_step_rate(settings, dataset, plan) -> float:
    from recallstream.consumers.thread_policy import set_training_threads
    from recallstream.model.catalog_vectors import EncodedCatalog
    from recallstream.model.online import OnlineLearner
    from recallstream.streaming.entity_tables import EntityTables
    from recallstream.streaming.events import EntityRecord

    set_training_threads()  # the worker's setting: same model, same threads
    learner = OnlineLearner(seed=settings.seed)
    tables, catalog = EntityTables(), EncodedCatalog()
    tables.apply([EntityRecord("items", item_id, 0.0, features)
                  for item_id, features in dataset.items.items()])
    tables.users = dataset.users
    ratings = dataset.ratings[plan.order()]
    users, items = ratings["user_id"].tolist(), ratings["item_id"].tolist()
    size = settings.batch_size
    batches = [(users[i:i + size], items[i:i + size]) for i in range(0, len(users) - size + 1, size)]
    catalog.encoder(learner, tables)  # the catalog encoded once, before the timed steps
    started = time.perf_counter()
    for user_ids, item_ids in batches:  # the worker's encoding: catalog rows, users once
        histories = learner.prefix_histories(user_ids, item_ids)
        learner.train_batch(user_ids, item_ids, tables.users, tables.items, histories,
                            user_inputs=learner.encode_users(user_ids, tables.users, histories),
                            encode_items=catalog.encoder(learner, tables))
    return len(batches) * size / (time.perf_counter() - started)
