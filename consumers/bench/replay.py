"""Replay speed: exposures + clicks per second that ``recallstream replay --max`` publishes.

Each run replays the first ``--limit`` MovieLens-100K ratings (users and items
first, then each click with its simulated exposures) into fresh topics on the
configured broker, flush included, and deletes the topics afterwards. Figures
are medians over ``--runs`` runs of wall-clock events/s (the producer's sender
thread and the broker share the machine, so one process's CPU time would flatter
it). Measured in the same run for comparison: ``default_producer_events_per_s``,
the same replay through ``make_producer``'s defaults, so ``tuning_gain`` shows what
the replay's producer options buy; and ``plan_events_per_s``, building and
encoding the same events without Kafka, the replay's own share of the cost.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from recallstream.consumers.usage import positive_int, require_broker


def add_arguments(parser) -> None:
    parser.add_argument("--limit", type=positive_int, default=20_000,
                        help="ratings replayed per run (each with its exposures)")


def run(args, settings) -> dict[str, Any]:
    from recallstream.consumers.replay import PRODUCER_OPTIONS, ReplayPlan
    from recallstream.streaming.movielens import load_movielens

    require_broker(settings)
    plan = ReplayPlan(load_movielens("ml-100k"), limit=args.limit, seed=settings.seed,
                      name="ml-100k")
    events = plan.num_clicks + plan.num_exposures
    tuned, default = [], []
    for _ in range(args.runs):  # interleaved, so both see the same machine load
        tuned.append(_replay_rate(plan, settings, PRODUCER_OPTIONS))
        default.append(_replay_rate(plan, settings, {}))
    figures = {
        "replay_events_per_s": int(statistics.median(tuned)),
        "default_producer_events_per_s": int(statistics.median(default)),
        "plan_events_per_s": int(statistics.median(_plan_rate(plan, settings, events)
                                                   for _ in range(args.runs))),
    }
    figures["tuning_gain"] = round(figures["replay_events_per_s"]
                                   / figures["default_producer_events_per_s"], 2)
    figures.update(events=events, limit=args.limit, runs=args.runs,
                   producer_options=PRODUCER_OPTIONS)
    return figures


def _replay_rate(plan, settings, producer_options: dict) -> float:
    from recallstream.consumers.replay import publish
    from recallstream.streaming.kafka_io import make_producer, scratch_topics

    with scratch_topics(settings, f"bench-replay-{uuid.uuid4().hex[:8]}") as scratch:
        producer = make_producer(scratch, **producer_options)
        try:
            summary = publish(plan, scratch, progress=False, producer=producer)
        finally:
            producer.close()
    if summary.failed:
        raise RuntimeError(f"{summary.failed} records were not acknowledged")
    return (summary.clicks + summary.exposures) / summary.seconds


def _plan_rate(plan, settings, events: int) -> float:
    start = time.perf_counter()
    for _ in plan.event_records(settings):
        pass
    return events / (time.perf_counter() - start)
