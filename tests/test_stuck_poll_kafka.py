"""The stuck-poll cure against a real KafkaConsumer (issue 15's known defect).

The hang seen under heavy load: ``KafkaConsumer.poll`` blocked for good because its thread
waited for a task of the client's I/O thread that never completed. Here the client is
made to lose that task the same way (the I/O thread never gets the poll's waiter), so
the poll blocks; :meth:`KafkaSource.unstick` must wake it without skipping a record, and
the next polls read every record once.
"""

from __future__ import annotations

import threading

from kafka import KafkaProducer

from recallstream.streaming.kafka_source import KafkaSource

RECORDS = 50
WAIT_S = 30


def read_all(source: KafkaSource, expected: int) -> list[int]:
    offsets = []
    for _ in range(200):
        for records in source.fetch(timeout_s=0.2).values():
            offsets += [record.offset for record in records]
        if len(offsets) >= expected:
            break
    return offsets


def test_a_poll_whose_io_task_is_lost_is_woken_and_skips_nothing(topic_settings):
    topic = topic_settings.topic_examples
    producer = KafkaProducer(bootstrap_servers=topic_settings.bootstrap_servers)
    for n in range(RECORDS):
        producer.send(topic, value=b"%d" % n, partition=0)
    producer.flush()
    producer.close()

    source = KafkaSource.connect(topic_settings, [topic])
    net = source._consumer._net
    schedule = net.call_soon_threadsafe
    lost = threading.Event()

    def lose_the_task(callback):  # the I/O thread never runs the waiter: poll waits forever
        lost.set()

    net.call_soon_threadsafe = lose_the_task
    fetched: list = []
    poll = threading.Thread(target=lambda: fetched.append(source.fetch(timeout_s=0.2)), daemon=True)
    poll.start()
    try:
        assert lost.wait(WAIT_S), "the poll never handed a task to the I/O thread"
        poll.join(1.0)
        assert poll.is_alive(), "the poll returned although its task was lost"
        net.call_soon_threadsafe = schedule  # the client works again, the poll still hangs
        assert source.unstick()
        poll.join(WAIT_S)
        assert not poll.is_alive(), "unstick did not wake the poll"
        assert fetched == [{}]  # woken as a poll that found nothing
        assert read_all(source, RECORDS) == list(range(RECORDS))  # from the same position
    finally:
        net.call_soon_threadsafe = schedule
        source.close()
