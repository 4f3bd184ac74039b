"""Fixtures giving integration tests a real Kafka broker and topics of their own.

- ``kafka_settings`` (session): :class:`Settings` pointing at a live broker:
  ``KAFKA_BOOTSTRAP_SERVERS`` when set, otherwise a broker this session starts
  with :class:`recallstream.consumers.local_kafka.LocalBroker` (the code behind
  ``recallstream broker start``) on a free port with a temporary data folder,
  and stops at the end of the session (under ``make test``'s pytest-xdist, one
  broker per test process).
- ``topic_settings`` (function): ``kafka_settings`` with topic names and a
  consumer group unique to the test, the topics created (2 partitions for
  exposures and clicks) and deleted afterwards.

Tests that use neither fixture never start a broker.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import uuid

import pytest

from recallstream.streaming.settings import Settings

TEST_PARTITIONS = 2


@pytest.fixture(scope="session")
def kafka_settings(tmp_path_factory):
    from recallstream.streaming.kafka_io import wait_for_broker

    # Only the broker address comes from the environment: other RECALLSTREAM_* variables of
    # the developer's shell must not change what the tests exercise.
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        settings = Settings.resolve(environ={"KAFKA_BOOTSTRAP_SERVERS": external})
        if not wait_for_broker(settings, timeout_s=30):
            pytest.fail(f"KAFKA_BOOTSTRAP_SERVERS={external} is set but no broker answers there")
        yield settings
        return
    broker = _start_test_broker(tmp_path_factory.mktemp("kafka"))
    try:
        yield broker.settings
    finally:
        broker.stop()


def _start_test_broker(data_dir):
    from recallstream.consumers.local_kafka import LocalBroker, fetch_jars, free_port

    cache_dir = Settings.resolve().kafka_cache_dir  # shared jar cache, honours the environment
    broker = LocalBroker(data_dir=data_dir.resolve(), port=free_port(),
                         jars_dir=fetch_jars(cache_dir))
    broker.start(timeout_s=120)
    return broker


@pytest.fixture
def topic_settings(kafka_settings, request):
    from recallstream.streaming.kafka_io import scratch_topics

    # Topic names allow [A-Za-z0-9._-]; '.' is avoided as Kafka treats it like '_' in metrics.
    run_id = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:120] + "-" + uuid.uuid4().hex[:8]
    with scratch_topics(kafka_settings, run_id, partitions=TEST_PARTITIONS) as settings:
        yield settings


def join_examples(settings, idle_s: float = 2.0) -> dict:
    """Run one joiner (the code behind ``recallstream joiner``) in this process until it
    has joined everything in ``settings``' exposures and clicks; its report.

    The worker trains on the joiner's ``examples`` topic, so the tests of the worker
    fill it this way after producing their events.
    """
    from recallstream.streaming.example_joiner import ExampleJoiner, JoinerOptions

    options = JoinerOptions(instance=f"test-{uuid.uuid4().hex[:8]}", exit_when_idle_s=idle_s,
                            session_timeout_s=6.0)
    return ExampleJoiner(settings, options).run()



@contextlib.contextmanager
def replayed_and_joined(settings, name: str, clicks: int):
    """Scratch topics (2 partitions, named after ``name``) holding the first ``clicks``
    MovieLens ratings as exposures and clicks, joined into examples; their settings."""
    from recallstream.consumers.replay import ReplayPlan, publish
    from recallstream.streaming.kafka_io import scratch_topics
    from recallstream.streaming.movielens import load_movielens

    with scratch_topics(settings, f"{name}-{os.getpid()}-{random.randrange(1 << 30)}",
                        partitions=2) as topics:
        summary = publish(ReplayPlan(load_movielens("ml-100k"), limit=clicks), topics,
                          progress=False)
        assert (summary.clicks, summary.failed) == (clicks, 0)
        join_examples(topics)
        yield topics


def after_last_record(settings, topic: str) -> dict[int, int]:
    """Per partition of ``topic``, the offset after its last committed record: where a
    reader that handled everything resumes (transaction markers take offsets too, so this
    is not the record count)."""
    from recallstream.streaming.kafka_io import read_topic

    after: dict[int, int] = {}
    for record in read_topic(settings, topic, read_committed=True):
        after[record.partition] = max(after.get(record.partition, 0), record.offset + 1)
    return after


def committed_offsets(settings, topic: str, group: str | None = None) -> dict[int, int]:
    """Per partition of ``topic``, the offset the consumer group (default the worker's)
    has committed; empty when it committed none."""
    from recallstream.streaming.kafka_io import admin_client

    group = group or settings.consumer_group
    with admin_client(settings) as admin:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    return {tp.partition: meta.offset for tp, meta in offsets.items()
            if tp.topic == topic and meta.offset >= 0}
