"""Fault: duplicate delivery and out-of-order events within the join window (issue 15).

The first CLICKS MovieLens ratings (exposures and clicks, with their catalog) go to two
sets of topics: once in order, and once disordered — within runs of events spanning less
than half the join window, records are shuffled (a click may come before its exposures),
one in ten is sent twice at once (a producer retry), and each run is followed by the
previous run sent again (a replayed file). The joiner (ClickJoiner dedups event ids for
``join_window_s`` of its stream's event time, see the README, "Duplicates and the dedup
window") must make the same examples of both, one per click, and a worker must train
exactly the same clicks.
"""

from __future__ import annotations

import dataclasses
import os
import random

import orjson
import pytest

from recallstream.consumers.replay import ReplayPlan
from recallstream.consumers.worker import Worker, WorkerOptions
from recallstream.model.vector_index import VectorIndex
from recallstream.streaming.example_joiner import parse_example
from recallstream.streaming.kafka_io import make_producer, read_topic, scratch_topics
from recallstream.streaming.movielens import load_movielens

from conftest import join_examples

CLICKS = 1500
BATCH = 100
WINDOW_S = 1800.0


def in_order(plan, settings) -> list[tuple[str, bytes, bytes]]:
    return list(plan.records(settings))


def disordered(plan, settings, seed: int = 5) -> tuple[list, int]:
    """The plan's records shuffled within runs shorter than half the window, one in ten
    twice, every run followed by the previous one again; and how many were extra."""
    rng = random.Random(seed)
    out = list(plan.entity_records(settings))
    runs, run = [], []
    for record in plan.event_records(settings):
        ts = orjson.loads(record[2])["ts"]
        if run and (ts - run[0][0] >= WINDOW_S / 2 or len(run) >= 40):
            runs.append(run)
            run = []
        run.append((ts, record))
    runs.append(run)
    extra = 0
    previous = None
    for run in runs:
        records = [record for _, record in run]
        rng.shuffle(records)
        for record in records:
            out.append(record)
            if rng.random() < 0.1:  # a producer retry: the same event again
                out.append(record)
                extra += 1
        # a replayed file: the previous run again, while its ids are still remembered
        if previous is not None and run[-1][0] - previous[0][0] < WINDOW_S:
            out.extend(record for _, record in previous)
            extra += len(previous)
        previous = run
    return out, extra


def clicks_before_their_exposure(settings, records) -> int:
    """Clicks delivered (first) before the exposure they refer to."""
    exposed, early = set(), 0
    for topic, _, value in records:
        event = orjson.loads(value)
        if "impression_id" not in event:
            continue  # an entity record
        key = (event["impression_id"], event["item_id"])
        if topic == settings.topic_exposures:
            exposed.add(key)
        elif key not in exposed:
            early += 1
    return early


def produce(settings, records) -> None:
    producer = make_producer(settings)
    failures = []
    for topic, key, value in records:
        producer.send(topic, key=key, value=value).add_errback(failures.append)
    producer.flush()
    producer.close()
    assert failures == []


def examples(settings) -> dict[str, tuple]:
    """click id -> (exposure id, position); fails on an example produced twice."""
    out = {}
    for record in read_topic(settings, settings.topic_examples, read_committed=True):
        example = parse_example(record.value)
        assert example["event_id"] not in out, f"{example['event_id']} produced twice"
        exposure = example["exposure"]
        out[example["event_id"]] = (exposure["event_id"], exposure["position"]) if exposure else None
    return out


@pytest.fixture
def base(kafka_settings, tmp_path):
    return dataclasses.replace(kafka_settings, join_window_s=WINDOW_S, batch_size=BATCH,
                               batch_timeout_s=0.3, checkpoint_every_batches=5,
                               checkpoint_every_s=1e6, metrics_port=0)


def test_duplicated_and_disordered_delivery_gives_the_in_order_examples_and_training(base, tmp_path):
    plan = ReplayPlan(load_movielens("ml-100k"), limit=CLICKS)
    run_id = f"dups-{os.getpid()}-{random.randrange(1 << 30)}"
    with scratch_topics(base, f"{run_id}-a", partitions=2) as calm, \
            scratch_topics(base, f"{run_id}-b", partitions=2) as rough:
        produce(calm, in_order(plan, calm))
        records, extra = disordered(plan, rough)
        assert extra > CLICKS // 2  # the fault really is there: many events come twice
        assert clicks_before_their_exposure(rough, records) > CLICKS // 10  # and out of order
        produce(rough, records)
        calm_report, rough_report = join_examples(calm), join_examples(rough)

        expected, got = examples(calm), examples(rough)
        assert len(expected) == CLICKS and calm_report["orphans"] == 0
        assert got == expected  # the same examples, each once, joined to the same exposures
        assert rough_report["examples"] == CLICKS

        for settings, name in ((calm, "calm"), (rough, "rough")):
            settings = dataclasses.replace(settings, checkpoint_dir=str(tmp_path / name))
            index = VectorIndex.connect(":memory:")
            report = Worker(settings, WorkerOptions(exit_when_idle_s=2.0), index=index).run()
            index.close()
            assert (report["clicks_trained"], report["examples_seen"]) == (CLICKS, CLICKS), name
