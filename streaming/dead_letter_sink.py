"""Produce dead letters to their topic, and confirm them before offsets move past them.

The record format is :mod:`recallstream.streaming.dead_letters`; this module
sends. :meth:`DeadLetterSink.confirm` flushes the producer and checks every
delivery since the last confirmation, so a caller that confirms before
advancing its offsets never covers a record whose dead letter might be lost.

Examples
--------
>>> class Sent:  # stands in for a delivered kafka-python future
...     def get(self, timeout): return None
>>> class Producer:  # stands in for a KafkaProducer
...     def __init__(self): self.keys = []
...     def send(self, topic, key, value): self.keys.append(key); return Sent()
...     def flush(self): pass
>>> from collections import namedtuple
>>> Record = namedtuple("Record", "topic partition offset key value")
>>> sink = DeadLetterSink("dead-letters", Producer())
>>> sink.send(Record("clicks", 0, 7, b"u1", b"{oops"), "invalid_json")
>>> sink.confirm(); sink.producer.keys
[b'clicks:0:7']
"""

from __future__ import annotations

from typing import Any

from recallstream.streaming.dead_letters import dead_letter_key, dead_letter_record


class DeadLetterSink:
    """Sends rejected records, with their reason, to the dead-letters topic.

    Parameters
    ----------
    topic : str
        The dead-letters topic.
    producer : KafkaProducer
        Owned by the sink (:meth:`close` closes it); see :meth:`connect`.
    """

    def __init__(self, topic: str, producer: Any) -> None:
        self.topic = topic
        self.producer = producer
        self._unconfirmed: list = []

    @classmethod
    def connect(cls, settings) -> "DeadLetterSink":
        """A sink on ``settings.topic_dead_letters``, whose producer takes dead letters
        of the largest records a topic accepts."""
        from recallstream.streaming.kafka_io import DEAD_LETTERS_MAX_MESSAGE_BYTES, make_producer

        return cls(settings.topic_dead_letters,
                   make_producer(settings, max_request_size=DEAD_LETTERS_MAX_MESSAGE_BYTES))

    def send(self, record: Any, reason: str) -> None:
        """Queue the dead letter of ``record`` (``topic``, ``partition``, ``offset``,
        ``key``, ``value``); its key ``topic:partition:offset`` identifies copies."""
        self._unconfirmed.append(self.producer.send(
            self.topic, key=dead_letter_key(record.topic, record.partition, record.offset),
            value=dead_letter_record(record.topic, record.partition, record.offset, reason,
                                     record.value, record.key)))

    def confirm(self) -> None:
        """Wait until every dead letter sent so far is delivered; raise if one was not."""
        if not self._unconfirmed:
            return
        self.producer.flush()
        unconfirmed, self._unconfirmed = self._unconfirmed, []
        for delivery in unconfirmed:
            delivery.get(timeout=0)  # raises if the broker did not take it

    def close(self) -> None:
        """Flush pending dead letters and close the producer."""
        self.producer.flush()
        self.producer.close()
