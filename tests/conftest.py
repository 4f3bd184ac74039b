"""Fixtures giving integration tests a real Kafka broker and topics of their own.

- ``kafka_settings`` (session): :class:`Settings` pointing at a live broker:
  ``KAFKA_BOOTSTRAP_SERVERS`` when set, otherwise a broker this session starts
  with :class:`recallstream.consumers.local_kafka.LocalBroker` (the code behind
  ``recallstream broker start``) on a free port with a temporary data folder,
  and stops at the end of the session.
- ``topic_settings`` (function): ``kafka_settings`` with topic names and a
  consumer group unique to the test, the topics created (2 partitions for
  exposures and clicks) and deleted afterwards.

Tests that use neither fixture never start a broker.
"""

from __future__ import annotations

import os
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
