"""KafkaSource hands out each record once per seek, whatever its client does (pure logic:
a scripted client stands in for the KafkaConsumer)."""

from __future__ import annotations

from collections import namedtuple

from kafka import TopicPartition

from recallstream.streaming.kafka_source import KafkaSource

Record = namedtuple("Record", "topic partition offset key value")
TP = TopicPartition("examples", 0)


class ScriptedConsumer:
    """poll() returns the given offsets of partition 0, one list per call."""

    def __init__(self, *polls):
        self.polls = list(polls)
        self.sought = []

    def partitions_for_topic(self, topic):
        return {0}

    def assign(self, partitions):
        pass

    def seek_to_beginning(self, *partitions):
        pass

    def seek(self, tp, offset):
        self.sought.append(offset)

    def poll(self, timeout_ms, max_records=None):
        offsets = self.polls.pop(0)
        return {TP: [Record("examples", 0, o, b"u", b"{}") for o in offsets]}


def offsets(batches):
    return [r.offset for r in batches.get(TP, [])]


def test_records_the_client_fetches_a_second_time_are_dropped_and_counted():
    # a broker restart: the client detected a "truncation" and went back to offset 3
    source = KafkaSource(["examples"], ScriptedConsumer([0, 1, 2, 3, 4], [3, 4, 5, 6], [7]))
    assert offsets(source.fetch(0.1)) == [0, 1, 2, 3, 4]
    assert offsets(source.fetch(0.1)) == [5, 6]
    assert offsets(source.fetch(0.1)) == [7]
    assert source.refetched == 2


def test_a_seek_or_a_rewind_makes_earlier_offsets_welcome_again():
    consumer = ScriptedConsumer([0, 1, 2, 3], [1, 2], [0, 1, 2, 3, 4])
    source = KafkaSource(["examples"], consumer)
    assert offsets(source.fetch(0.1)) == [0, 1, 2, 3]
    source.seek({"examples": {"0": 1}})  # a restore from a checkpoint
    assert offsets(source.fetch(0.1)) == [1, 2]
    source.handled({TP: 3})
    assert source.rewind("examples", {0: 0}) == {0: 3}  # a reset to a snapshot's cut
    assert offsets(source.fetch(0.1)) == [0, 1, 2, 3, 4]
    assert source.refetched == 0 and consumer.sought == [1, 0]
