"""Freshness: seconds from a click being produced to Qdrant returning the clicked item's new vector.

Setup: scratch topics with the MovieLens-100K catalog, profiles and the first
``--warmup`` clicks; a worker (default settings, embedded Qdrant) runs in a
thread of this process and catches up, fed by one joiner (a child process, as
``worker --with-joiner`` runs it). Background load: the next ratings are
produced at ``--rate`` clicks/s (each with its exposures) while
``--probes`` probe clicks are sent, ``--interval`` seconds apart. A probe is a
click, with its exposure, of a real user on a random catalog item, stamped
with the current time. The worker writes each item's newest trained click
time into the item's Qdrant payload (``last_click_ts``), so the probe is
fresh when Qdrant returns that item with ``last_click_ts`` at least the
probe's stamp: the vector computed after training on it. Latency runs from
the producer's acknowledgement of the click to that read. Figures: p50 and
p99 over all probes of all ``--runs``.
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
import threading
import time
import uuid
from typing import Any

import numpy as np

from recallstream.consumers.usage import positive_int


def add_arguments(parser) -> None:
    parser.add_argument("--warmup", type=int, default=5_000, help="clicks trained before probing")
    parser.add_argument("--rate", type=float, default=500.0,
                        help="background clicks/s produced while probing")
    parser.add_argument("--probes", type=positive_int, default=40, help="probe clicks per run")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between probes")
    parser.add_argument("--timeout", type=float, default=30.0, help="give up on a probe after S s")


def run(args, settings) -> dict[str, Any]:
    from recallstream.consumers.local_kafka import running_broker
    from recallstream.streaming.kafka_io import scratch_topics
    from recallstream.streaming.movielens import load_movielens

    dataset = load_movielens("ml-100k")
    settings = dataclasses.replace(settings, metrics_port=0, qdrant=":memory:")
    latencies: list[float] = []
    with running_broker(settings) as settings:
        for run_number in range(args.runs):
            run_id = f"bench-freshness-{uuid.uuid4().hex[:8]}"
            with scratch_topics(settings, run_id) as topics:
                latencies += _one_run(args, topics, dataset, seed=run_number)
    lost = sum(1 for latency in latencies if latency is None)
    measured = np.array([latency for latency in latencies if latency is not None])
    return {"freshness_p50_s": round(float(np.percentile(measured, 50)), 3),
            "freshness_p99_s": round(float(np.percentile(measured, 99)), 3),
            "freshness_max_s": round(float(measured.max()), 3),
            "probes": len(latencies), "probes_timed_out": lost,
            "batch_size": settings.batch_size, "batch_timeout_s": settings.batch_timeout_s,
            "background_clicks_per_s": args.rate, "runs": args.runs}


def _one_run(args, settings, dataset, seed: int) -> list[float | None]:
    from recallstream.consumers.joiner_process import JoinerProcess
    from recallstream.consumers.replay import ReplayPlan, publish
    from recallstream.consumers.worker import Worker, WorkerOptions
    from recallstream.model.vector_index import VectorIndex

    publish(ReplayPlan(dataset, limit=args.warmup), settings, progress=False)
    index = VectorIndex.connect(":memory:")
    joiner = JoinerProcess(settings)
    with tempfile.TemporaryDirectory(prefix="bench-freshness-ckpt-") as folder:
        worker = Worker(dataclasses.replace(settings, checkpoint_dir=folder), WorkerOptions(),
                        index=index, upstream=joiner)
        thread = threading.Thread(target=worker.run, name="worker", daemon=True)
        thread.start()
        if _wait_until(lambda: worker.counters["clicks_trained"] >= args.warmup,
                       timeout_s=300) is None:
            raise RuntimeError(f"the worker did not train the {args.warmup} warm-up clicks in 300 s")
        stop_background = threading.Event()
        background = threading.Thread(target=_background_clicks, daemon=True,
                                      args=(settings, dataset, args, stop_background))
        background.start()
        try:
            return _probe(args, settings, dataset, index, random.Random(seed))
        finally:
            stop_background.set()
            background.join()
            worker.stop.set()
            thread.join()
            joiner.stop()
            index.close()


def _probe(args, settings, dataset, index, rng) -> list[float | None]:
    from recallstream.streaming.events import Click, Exposure
    from recallstream.streaming.kafka_io import make_producer

    producer = make_producer(settings, linger_ms=0)
    users, items = sorted(dataset.users), sorted(dataset.items)
    latencies = []
    try:
        for n in range(args.probes):
            user_id, item_id = rng.choice(users), rng.choice(items)
            stamp = time.time()
            probe = f"probe-{uuid.uuid4().hex}"
            exposure = Exposure(f"{probe}/e", stamp - 0.001, user_id, item_id, probe, 0)
            click = Click(f"{probe}/c", stamp, user_id, item_id, probe)
            producer.send(settings.topic_exposures, key=exposure.key(), value=exposure.to_json())
            producer.send(settings.topic_clicks, key=click.key(), value=click.to_json()).get(10)
            sent = time.monotonic()
            latencies.append(_wait_until(
                lambda: (index.retrieve_payloads(settings.collection_items, [item_id])
                         .get(item_id, {}).get("last_click_ts") or 0) >= stamp,
                timeout_s=args.timeout, since=sent))
            time.sleep(args.interval)
    finally:
        producer.close()
    return latencies


def _background_clicks(settings, dataset, args, stop: threading.Event) -> None:
    """Clicks after the warm-up, paced at ``args.rate``, until ``stop``."""
    from recallstream.consumers.replay import PRODUCER_OPTIONS, ReplayPlan
    from recallstream.streaming.kafka_io import make_producer

    producer = make_producer(settings, **PRODUCER_OPTIONS)
    plan = ReplayPlan(dataset, limit=None)
    per_click = plan.exposures_per_click + 2
    started = time.monotonic()
    try:
        for n, (topic, key, value) in enumerate(plan.event_records(settings)):
            if n < args.warmup * per_click:
                continue  # already produced by the warm-up
            if stop.is_set():
                return
            producer.send(topic, key=key, value=value)
            clicks = n // per_click - args.warmup
            delay = started + clicks / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        producer.close()


def _wait_until(condition, timeout_s: float, since: float | None = None) -> float | None:
    """Seconds from ``since`` (default now) until ``condition()`` holds, or None at timeout."""
    since = time.monotonic() if since is None else since
    while time.monotonic() - since < timeout_s:
        if condition():
            return time.monotonic() - since
        time.sleep(0.005)
    return None
