"""``recallstream replay`` against a real broker: everything published is read back intact."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter, defaultdict

import orjson
import pytest

from recallstream.consumers.cli import main
from recallstream.consumers.replay import ReplayPlan
from recallstream.streaming.decoding import Invalid, decode
from recallstream.streaming.events import Click, EntityRecord, Exposure
from recallstream.streaming.kafka_io import (admin_client, end_offsets, read_topic, scratch_settings,
                                             topic_layout)
from recallstream.streaming.movielens import load_movielens

TOPIC_FLAGS = ("bootstrap_servers", "partitions", "topic_exposures", "topic_clicks", "topic_items",
               "topic_users", "topic_dead_letters", "topic_examples", "topic_joiner_state")


def settings_flags(settings) -> list[str]:
    return settings.flags(*TOPIC_FLAGS)


def replay(settings, capsys, *args: str) -> dict:
    code = main(["replay", "--no-progress", "--json", *settings_flags(settings), *args])
    assert code == 0
    return orjson.loads(capsys.readouterr().out)


def read_back(settings, kind: str) -> list[tuple[int, object]]:
    """``(partition, decoded event)`` of every record of the topic of ``kind``."""
    topic = getattr(settings, f"topic_{kind}")
    return [(record.partition, decode(kind, record.key, record.value))
            for record in read_topic(settings, topic)]


@pytest.fixture(scope="module")
def ml100k():
    return load_movielens("ml-100k")


def test_full_ml100k_replay_is_read_back_complete_and_valid(topic_settings, capsys, ml100k):
    summary = replay(topic_settings, capsys, "--dataset", "ml-100k", "--max")
    assert (summary["users"], summary["items"], summary["clicks"], summary["exposures"],
            summary["failed"]) == (943, 1682, 100_000, 400_000, 0)

    users = [event for _, event in read_back(topic_settings, "users")]
    items = [event for _, event in read_back(topic_settings, "items")]
    assert all(isinstance(e, EntityRecord) for e in users + items)
    assert {e.entity_id: e.features for e in users} == ml100k.users and len(users) == 943
    assert {e.entity_id: e.features for e in items} == ml100k.items and len(items) == 1682

    clicks = read_back(topic_settings, "clicks")
    exposures = read_back(topic_settings, "exposures")
    assert not [e for _, e in clicks + exposures if isinstance(e, Invalid)]
    assert len(clicks) == 100_000 and len(exposures) == 400_000
    assert all(isinstance(e, Click) for _, e in clicks)
    assert all(isinstance(e, Exposure) for _, e in exposures)
    # The clicks are exactly the ratings, and no event id repeats.
    rated = Counter(zip(ml100k.ratings["user_id"].tolist(), ml100k.ratings["item_id"].tolist(),
                        ml100k.ratings["timestamp"].astype(float).tolist()))
    assert Counter((c.user_id, c.item_id, c.ts) for _, c in clicks) == rated
    event_ids = [e.event_id for _, e in clicks + exposures]
    assert len(set(event_ids)) == len(event_ids)
    _check_impression_lists(clicks, exposures)
    _check_time_order_per_partition(clicks)


def _check_impression_lists(clicks, exposures):
    shown = defaultdict(list)
    for partition, exposure in exposures:
        shown[exposure.impression_id].append((partition, exposure))
    assert len(shown) == len(clicks)
    for partition, click in clicks:
        lists = shown[click.impression_id]
        assert sorted(e.position for _, e in lists) == [0, 1, 2, 3]
        assert [e.item_id for _, e in lists].count(click.item_id) == 1
        assert len({e.item_id for _, e in lists}) == 4
        assert {(p, e.user_id) for p, e in lists} == {(partition, click.user_id)}  # co-partitioned
        assert {e.ts for _, e in lists} == {click.ts - 1.0}


def _check_time_order_per_partition(clicks):
    last_ts = {}
    for partition, click in clicks:  # read_topic keeps offset order within a partition
        assert click.ts >= last_ts.get(partition, float("-inf"))
        last_ts[partition] = click.ts


def test_limited_paced_replay_publishes_the_plan_prefix(topic_settings, capsys, ml100k):
    start = time.monotonic()
    summary = replay(topic_settings, capsys, "--limit", "100", "--rate", "1000",
                     "--exposures-per-click", "2", "--seed", "9")
    elapsed = time.monotonic() - start
    assert (summary["clicks"], summary["exposures"], summary["failed"]) == (100, 300, 0)
    assert elapsed >= 400 / 1000  # 400 events at 1000/s: pacing makes it last at least 0.4 s

    plan = ReplayPlan(ml100k, limit=100, exposures_per_click=2, seed=9, name="ml-100k")
    expected = defaultdict(list)
    for topic, key, value in plan.event_records(topic_settings):
        expected[topic].append((key, value))
    for kind in ("exposures", "clicks"):
        topic = getattr(topic_settings, f"topic_{kind}")
        records = list(read_topic(topic_settings, topic))
        by_partition = defaultdict(list)
        for record in records:
            by_partition[record.partition].append((record.key, record.value))
        # Each partition holds its users' records in plan order.
        for partition_records in by_partition.values():
            keys = {key for key, _ in partition_records}
            assert partition_records == [kv for kv in expected[topic] if kv[0] in keys]
        assert sum(map(len, by_partition.values())) == len(expected[topic])


def test_replay_creates_missing_topics_with_the_settings_partitions(kafka_settings, capsys):
    # Fresh names, not created by a fixture: the replay must create them itself.
    settings = scratch_settings(kafka_settings, f"replay-creates-{uuid.uuid4().hex[:8]}")
    try:
        replay(settings, capsys, "--limit", "10", "--max", "--partitions", "3")
        assert len(end_offsets(settings, settings.topic_clicks)) == 3
        assert len(end_offsets(settings, settings.topic_exposures)) == 3
        assert sum(end_offsets(settings, settings.topic_clicks).values()) == 10
    finally:
        with admin_client(settings) as admin:
            admin.delete_topics(list(topic_layout(settings)), raise_errors=False)


def test_records_the_broker_rejects_are_counted_and_fail_the_command(topic_settings, capsys):
    # An exposures topic that accepts no record larger than 60 bytes: every exposure is refused.
    settings = dataclasses.replace(topic_settings,
                                   topic_exposures=topic_settings.topic_exposures + "-tiny")
    with admin_client(settings) as admin:
        admin.create_topics({settings.topic_exposures: {
            "num_partitions": settings.partitions, "configs": {"max.message.bytes": "60"}}})
        admin.wait_for_topics([settings.topic_exposures], timeout_ms=30_000)
    try:
        code = main(["replay", "--no-progress", "--json", "--limit", "5", "--max",
                     *settings_flags(settings)])
        out, err = capsys.readouterr()
        summary = orjson.loads(out)
        assert code == 1 and "the broker did not acknowledge" in err
        assert (summary["clicks"], summary["exposures"]) == (5, 20)
        assert summary["failed"] >= 20 and "MessageSizeTooLarge" in summary["first_error"]
        # Every record sent is either in its topic or counted as failed (the idempotent
        # producer may abort records queued behind a fatal error too).
        sent = 943 + 1682 + 5 + 20
        stored = sum(sum(end_offsets(settings, topic).values()) for topic in (
            settings.topic_users, settings.topic_items, settings.topic_exposures,
            settings.topic_clicks))
        assert stored + summary["failed"] == sent
    finally:
        with admin_client(settings) as admin:
            admin.delete_topics([settings.topic_exposures], raise_errors=False)



def test_a_replay_whose_broker_goes_away_gives_up_with_a_clear_error(tmp_path):
    """The broker stops during a replay and never comes back: the replay stops at its
    flush timeout, with a message, instead of waiting forever (kafka-python 3.0 does not
    expire the records of a broker it cannot reach)."""
    import threading

    from recallstream.consumers.local_kafka import LocalBroker, fetch_jars, free_port
    from recallstream.consumers.replay import ReplayStalled, publish
    from recallstream.streaming.kafka_io import create_topics
    from recallstream.streaming.settings import Settings

    private = LocalBroker(data_dir=(tmp_path / "kafka").resolve(), port=free_port(),
                          jars_dir=fetch_jars(Settings.resolve().kafka_cache_dir))
    private.start(timeout_s=120)
    try:
        settings = dataclasses.replace(Settings.resolve(), bootstrap_servers=private.bootstrap_servers)
        create_topics(settings)
        plan = ReplayPlan(load_movielens("ml-100k"), limit=40)
        outcome = {}

        def replay_slowly():
            try:  # 40 clicks with their exposures and catalog, over about 4 s
                outcome["summary"] = publish(plan, settings, rate=50, progress=False,
                                             flush_timeout_s=5.0)
            except ReplayStalled as error:
                outcome["error"] = error

        thread = threading.Thread(target=replay_slowly)
        thread.start()
        # Stopped once clicks arrive: the producer has then sent to every topic. Stopped
        # earlier, a send to a topic it has no metadata for blocks for max_block_ms
        # (60 s) instead, the other way this replay gives up (a fixed sleep made the test
        # take 20 or 75 s by the machine's speed).
        wait_for_records(settings, settings.topic_clicks)
        assert private.stop()
        thread.join(timeout=120)
        assert not thread.is_alive(), "the replay still waits for a broker that is gone"
    finally:
        private.stop()
    assert "summary" not in outcome
    assert "stopped taking or acknowledging" in str(outcome["error"])
    assert private.bootstrap_servers in str(outcome["error"])


def wait_for_records(settings, topic: str, timeout_s: float = 60.0) -> None:
    """Until ``topic`` holds a record."""
    from kafka import TopicPartition

    from recallstream.streaming.kafka_io import make_consumer

    consumer = make_consumer(settings)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        deadline = time.monotonic() + timeout_s
        while not any(consumer.end_offsets(partitions).values()):
            assert time.monotonic() < deadline, f"no record reached {topic} in {timeout_s} s"
            time.sleep(0.1)
    finally:
        consumer.close()
