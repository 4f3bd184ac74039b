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
  ``pipeline_clicks_per_s`` the clicks trained; ``worker_clicks_per_s`` the worker's
  own rate, from its first batch to its last (the pipeline's time also holds the
  wait for the first examples: on a backlog, the joiner's first polls are mostly
  exposures, and a partition's clicks may come only at the end);
  ``backlog_clicks_per_s`` the rate of a second fresh worker, started after the first
  on the examples the joiner wrote, the joiner gone (a restart's or a reset's
  catch-up: the trainer alone, without the joiner beside it on the machine);
  ``joiner_records_per_s`` the
  joiner's input records over its active time (first poll with records to last
  commit) and ``joiner_us_per_record`` its own Python work per input record
  (decode, join, encode).
- **bare step**: the same model (``OnlineLearner``) with the same batch size,
  fed the same clicks from memory: only ``train_batch`` (its popularity
  estimate and one optimizer step), with the worker's encoding (the catalog
  encoded once, each batch's users once; the catalog's encoding is not timed).

``ratio`` = ``pipeline_clicks_per_s / bare_step_samples_per_s``: the share of
the model's own training speed that survives the stream around it.

**Where the CPU goes** (the pipeline's processes share the machine's ``cores``):
``worker_cpu_us_per_click`` (the worker's process and its reading process over the
pipeline's time, per click trained), ``joiner_cpu_us_per_record`` (the joiner's process, all its
threads, while active, per input record), ``broker_cpu_us_per_event`` (the
project's local broker over the pipeline's time, per event; None on any other
broker), ``cpu_us_per_event`` (the three together) and ``cores_busy`` (their
CPU seconds per second of the pipeline). ``cores * 1e6 / cpu_us_per_event`` is
the most events/s these processes could pass on this machine at that cost.

**Checkpoints** (the worker writes one every 50 batches, in a background thread, and
a last one when it stops): ``checkpoints`` is how many the pipeline's worker wrote
that way (its last is not counted), ``checkpoint_pause_ms`` how long training stopped for each
(staging its state, committing its offsets) and ``checkpoint_written_ms`` how long
each took from staging to its file written, while training went on (means; None
without one: a run of fewer than 50 batches has none).

Figures are medians over ``--runs`` runs.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
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
        broker_pid = _local_broker_pid(settings)
        for _ in range(args.runs):  # interleaved, so both see the same load
            pipeline.append(_pipeline_run(settings, plan, args.backend, broker_pid))
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
            "worker_clicks_per_s": round(statistics.median(
                run["clicks_trained"] / run["worker_seconds"] for run in pipeline)),
            "backlog_clicks_per_s": round(statistics.median(
                run["backlog_clicks_per_s"] for run in pipeline)),
            "joiner_records_per_s": round(statistics.median(run["joiner_records_per_s"]
                                                            for run in pipeline)),
            "joiner_us_per_record": statistics.median(run["joiner_us_per_record"]
                                                      for run in pipeline),
            "bare_step_samples_per_s": round(samples), "ratio": round(clicks / samples, 3),
            **_cpu_figures(pipeline, events), **_checkpoint_figures(pipeline),
            "batch_size": settings.batch_size, "clicks": plan.num_clicks, "events": events,
            "exposures_per_click": args.exposures_per_click, "backend": args.backend,
            "runs": args.runs,
            "torch_threads": torch.get_num_threads()}


def _pipeline_run(settings, plan, backend: str, broker_pid: int | None) -> dict[str, float]:
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
            cpu = _CpuTrace(broker_pid, reader_pid=getattr(worker.ingestor, "pid", None))
            while thread.is_alive():
                cpu.sample()
                thread.join(0.05)
        finally:
            worker.stop.set()
            thread.join()
            joined = upstream.stop()
        _check_trained(worker, plan, f"joiner report: {joined}", joiner_reported=bool(joined))
        backlog = _backlog_run(topics, index, plan)
    first_record = joined["first_record_at"]  # the joiner's monotonic clock: this machine's
    last_batch = worker.timing["last_batch"]
    broker_cpu = cpu.broker_between(first_record, last_batch)
    return {"seconds": last_batch - first_record,
            "startup_s": first_record - started,
            "clicks_trained": worker.counters["clicks_trained"],
            "worker_seconds": last_batch - worker.timing["first_batch"],
            "joiner_records_per_s": joined["records"] / joined["active_s"],
            "joiner_us_per_record": joined["us_per_record"],
            "joiner_records": joined["records"],
            "worker_cpu_s": cpu.worker_between(first_record, last_batch),
            "joiner_cpu_s": joined["active_cpu_s"],
            "broker_cpu_s": broker_cpu,
            "backlog_clicks_per_s": backlog,
            "checkpoint_times": dict(worker.checkpoint_times)}


def _check_trained(worker, plan, detail: str, joiner_reported: bool = True) -> None:
    """Figures only from runs that trained every click replayed."""
    if worker.counters["clicks_trained"] != plan.num_clicks or not joiner_reported:
        raise CommandError(f"{plan.num_clicks} clicks replayed, {worker.counters['clicks_trained']} "
                           f"trained; {detail}")


def _backlog_run(topics, index: str, plan) -> float:
    """A second fresh worker on the examples the joiner wrote, the joiner gone (a restart's
    or a reset's catch-up): its clicks per second, first batch to last."""
    from recallstream.consumers.worker import Worker, WorkerOptions

    with tempfile.TemporaryDirectory(prefix="bench-backlog-ckpt-") as folder:
        worker = Worker(dataclasses.replace(topics, checkpoint_dir=folder, qdrant=index),
                        WorkerOptions(exit_when_idle_s=1.0))
        worker.run()
    _check_trained(worker, plan, "the backlog run")
    return worker.counters["clicks_trained"] / (worker.timing["last_batch"]
                                                - worker.timing["first_batch"])


class _CpuTrace:
    """CPU seconds of the worker (this process: the main thread only waits; plus its
    reading process, if it has one) and of the broker, sampled with the monotonic clock
    so that a window can be cut out after the run (the joiner tells its first record's
    time only when it ends)."""

    def __init__(self, broker_pid: int | None, reader_pid: int | None) -> None:
        self.broker_pid = broker_pid
        self.reader_pid = reader_pid
        self.reader_cpu_s = 0.0  # the last reading: the reading process ends with the worker
        self.samples: list[tuple[float, float, float | None]] = []
        self.sample()

    def sample(self) -> None:
        self.reader_cpu_s = _process_cpu_s(self.reader_pid) or self.reader_cpu_s
        worker = time.process_time() + self.reader_cpu_s
        self.samples.append((time.monotonic(), worker, _process_cpu_s(self.broker_pid)))

    def worker_between(self, start: float, end: float) -> float:
        return self._at(end, 1) - self._at(start, 1)

    def broker_between(self, start: float, end: float) -> float | None:
        first, last = self._at(start, 2), self._at(end, 2)
        return None if first is None or last is None else last - first

    def _at(self, when: float, column: int):
        # the first sample at or after `when` (samples are 50 ms apart)
        return next((row[column] for row in self.samples if row[0] >= when), self.samples[-1][column])


def _process_cpu_s(pid: int | None) -> float | None:
    """User plus system CPU seconds of a running process (None: no pid, or it ended)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _local_broker_pid(settings) -> int | None:
    """The pid of the project's local broker when the benchmark runs on it (its CPU is
    then measured); None for any other broker."""
    from recallstream.consumers.local_kafka import LocalBroker

    broker = LocalBroker(Path(settings.broker_data_dir).expanduser().resolve(),
                         settings.broker_port, jars_dir=Path())
    if broker.bootstrap_servers != settings.bootstrap_servers:
        return None
    return broker.running_pid()


def _cpu_figures(pipeline: list[dict], events: int) -> dict[str, Any]:
    """Where the machine's CPU goes, medians over the runs: the worker's per click trained,
    the joiner's (all its threads, while active) per input record, the local broker's per
    event (None on another broker), the three together per event, and the cores they kept
    busy during the pipeline's time (this machine has ``cores``)."""
    def figure(values: list[float], digits: int = 1) -> float | None:
        return round(statistics.median(values), digits) if values else None

    broker_measured = all(run["broker_cpu_s"] is not None for run in pipeline)
    total = [run["worker_cpu_s"] + run["joiner_cpu_s"] + (run["broker_cpu_s"] or 0.0)
             for run in pipeline]
    return {
        "worker_cpu_us_per_click": figure(
            [1e6 * run["worker_cpu_s"] / run["clicks_trained"] for run in pipeline]),
        "joiner_cpu_us_per_record": figure(
            [1e6 * run["joiner_cpu_s"] / run["joiner_records"] for run in pipeline]),
        "broker_cpu_us_per_event": figure(
            [1e6 * run["broker_cpu_s"] / events for run in pipeline] if broker_measured else []),
        "cpu_us_per_event": figure([1e6 * cpu / events for cpu in total] if broker_measured else []),
        "cores_busy": figure([cpu / run["seconds"] for cpu, run in zip(total, pipeline)], 2),
        "cores": os.cpu_count()}


def _checkpoint_figures(pipeline: list[dict]) -> dict[str, Any]:
    """The pipeline worker's background checkpoints (medians over the runs): how many,
    and per checkpoint the training's pause and the time to the file written, in ms."""
    times = [run["checkpoint_times"] for run in pipeline]
    written = [t for t in times if t["checkpoints"]]

    def per_checkpoint_ms(key: str) -> float | None:
        values = [1000 * t[key] / t["checkpoints"] for t in written]
        return round(statistics.median(values), 1) if values else None

    return {"checkpoints": statistics.median(t["checkpoints"] for t in times),
            "checkpoint_pause_ms": per_checkpoint_ms("pause_s"),
            "checkpoint_written_ms": per_checkpoint_ms("written_s")}


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
