"""recallstream.streaming.kafka_io against a real broker (see the fixtures in conftest.py)."""

from __future__ import annotations

import uuid

import pytest
from kafka import TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.structs import OffsetAndMetadata

from recallstream.streaming.kafka_io import (MAX_MESSAGE_BYTES, admin_client, create_topics, end_offsets,
                                make_consumer, make_producer, read_topic, scratch_settings, topic_layout,
                                wait_for_broker)
from recallstream.streaming.settings import Settings


def fresh_names(settings: Settings) -> Settings:
    """Settings with topic names no test has created yet."""
    return scratch_settings(settings, f"t-{uuid.uuid4().hex[:8]}")


def produce(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None]]):
    """Send (key, value) pairs in order; return [(partition, offset, key, value)] as acknowledged."""
    producer = make_producer(settings)
    futures = [producer.send(topic, key=key, value=value) for key, value in records]
    producer.flush()
    acknowledged = [(f.get(10).partition, f.get(10).offset, key, value)
                    for f, (key, value) in zip(futures, records)]
    producer.close()
    return acknowledged


def test_topic_layout_rejects_a_partition_count_below_one():
    with pytest.raises(ValueError, match="at least 1"):
        topic_layout(Settings(), partitions=0)


def test_wait_for_broker_sees_the_test_broker(kafka_settings):
    assert wait_for_broker(kafka_settings, timeout_s=10)


def test_create_topics_is_idempotent_with_partitions_and_compaction(kafka_settings):
    settings = fresh_names(kafka_settings)
    names = [settings.topic_exposures, settings.topic_clicks, settings.topic_items,
             settings.topic_users, settings.topic_dead_letters, settings.topic_examples,
             settings.topic_joiner_state]

    assert sorted(create_topics(settings, partitions=3)) == sorted(names)
    assert create_topics(settings, partitions=3) == []

    with admin_client(settings) as admin:
        counts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, ["cleanup.policy"]) for name in names],
            config_filter="all")
        admin.delete_topics(names)
    assert counts == {settings.topic_exposures: 3, settings.topic_clicks: 3,
                      settings.topic_items: 3, settings.topic_users: 3,
                      settings.topic_dead_letters: 1, settings.topic_examples: 3,
                      settings.topic_joiner_state: 3}
    policies = {name: entries["cleanup.policy"]["value"] for name, entries in configs["topic"].items()}
    assert policies == {settings.topic_exposures: "delete", settings.topic_clicks: "delete",
                        settings.topic_items: "compact", settings.topic_users: "compact",
                        settings.topic_dead_letters: "delete", settings.topic_examples: "delete",
                        settings.topic_joiner_state: "delete"}


def test_create_topics_refuses_clicks_partitioned_unlike_exposures(kafka_settings):
    settings = fresh_names(kafka_settings)
    with admin_client(settings) as admin:
        admin.create_topics({settings.topic_clicks: {"num_partitions": 3}})
    try:
        with pytest.raises(ValueError, match="same count"):
            create_topics(settings, partitions=2)
    finally:
        with admin_client(settings) as admin:
            admin.delete_topics(list(topic_layout(settings)), raise_errors=False)


def test_produced_records_read_back_in_partition_order_with_raw_bytes(topic_settings):
    topic = topic_settings.topic_clicks
    big = b"x" * (1024 * 1024 + 512 * 1024)  # over 1 MiB: must still travel, to be dead-lettered
    sent = produce(topic_settings, topic,
                   [(f"u{i}".encode(), f'{{"n": {i}}}'.encode()) for i in range(20)]
                   + [(None, b"no key"), (b"u3", None), (b"u4", big)])

    read = [(r.partition, r.offset, r.key, r.value) for r in read_topic(topic_settings, topic)]

    assert sorted(read) == sorted(sent)
    for partition in {p for p, *_ in sent}:  # per partition, the order of sending
        assert [r for r in read if r[0] == partition] == [s for s in sent if s[0] == partition]
    assert len(big) < MAX_MESSAGE_BYTES


def test_end_offsets_count_the_records_of_each_partition(topic_settings):
    topic = topic_settings.topic_exposures
    assert end_offsets(topic_settings, topic) == {0: 0, 1: 0}
    sent = produce(topic_settings, topic, [(f"u{i}".encode(), b"{}") for i in range(9)])
    expected = {0: 0, 1: 0}
    for partition, *_ in sent:
        expected[partition] += 1
    assert end_offsets(topic_settings, topic) == expected


def test_read_topic_stops_at_the_end_it_saw_when_it_started(topic_settings):
    topic = topic_settings.topic_clicks
    produce(topic_settings, topic, [(b"u1", b"1"), (b"u1", b"2"), (b"u1", b"3")])
    records = read_topic(topic_settings, topic)
    first = next(records)
    produce(topic_settings, topic, [(b"u1", b"4")])
    assert [first.value] + [r.value for r in records] == [b"1", b"2", b"3"]


def test_read_topic_starts_at_given_offsets(topic_settings):
    topic = topic_settings.topic_clicks
    sent = produce(topic_settings, topic, [(b"u1", b"a"), (b"u1", b"b"), (b"u1", b"c")])
    partition = sent[0][0]
    values = [r.value for r in read_topic(topic_settings, topic, from_offsets={partition: 2})]
    assert values == [b"c"]


def test_read_topic_of_an_empty_topic_yields_nothing(topic_settings):
    assert list(read_topic(topic_settings, topic_settings.topic_users)) == []


def test_read_topic_of_a_missing_topic_is_a_value_error(topic_settings):
    with pytest.raises(ValueError, match="does not exist"):
        list(read_topic(topic_settings, "no-such-topic-" + uuid.uuid4().hex))


def test_read_topic_creates_no_group_and_commits_nothing(topic_settings):
    topic = topic_settings.topic_clicks
    produce(topic_settings, topic, [(b"u1", b"a"), (b"u2", b"b")])
    with admin_client(topic_settings) as admin:
        groups_before = {g["group_id"] for g in admin.list_groups()}
        assert len(list(read_topic(topic_settings, topic))) == 2
        groups_after = {g["group_id"] for g in admin.list_groups()}
    assert groups_after == groups_before


def test_a_group_consumer_commits_offsets_that_a_new_member_sees(topic_settings):
    topic = topic_settings.topic_clicks
    sent = produce(topic_settings, topic, [(b"u1", b"a"), (b"u1", b"b")])
    tp = TopicPartition(topic, sent[0][0])
    consumer = make_consumer(topic_settings, group_id=topic_settings.consumer_group)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    polled = []
    while len(polled) < 2:
        polled += consumer.poll(timeout_ms=1000).get(tp, [])
    consumer.commit({tp: OffsetAndMetadata(polled[-1].offset + 1)})
    consumer.close()

    again = make_consumer(topic_settings, group_id=topic_settings.consumer_group)
    try:
        assert again.committed(tp) == 2
    finally:
        again.close()


def test_list_offsets_asks_again_while_a_leader_is_unknown():
    # kafka-python 3.0 leaves out partitions whose leader its metadata does not know yet
    # and then fails with a KeyError (a fresh client: seen once in CI, in a joiner restore)
    from kafka.errors import KafkaTimeoutError

    from recallstream.streaming.kafka_io import list_offsets

    class Consumer:  # answers without the partition twice, then with it
        def __init__(self, misses):
            self.misses = misses

        def end_offsets(self, partitions):
            if self.misses:
                self.misses -= 1
                raise KeyError(partitions[0])
            return {tp: 7 for tp in partitions}

    assert list_offsets(Consumer(misses=2), ["t-0"], "end") == {"t-0": 7}
    with pytest.raises(KafkaTimeoutError, match="no leader known"):
        list_offsets(Consumer(misses=10**6), ["t-0"], "end", timeout_s=0.5)
