"""The consumed side of Kafka: assigned partitions, fetches, positions and offsets.

:class:`KafkaSource` reads every partition of the given topics with manual
assignment (never a group rebalance), from the beginning unless told where to
resume. It keeps the *next offset to handle* of every partition, which its
caller advances with :meth:`KafkaSource.handled` once records are handled, and
which a checkpoint saves: committed group offsets are never read back (the
checkpoint is the truth); :meth:`KafkaSource.commit` writes them for lag
monitoring only.

A broker that goes away (restarts, a network cut) is waited out: a fetch that fails
with a retriable Kafka error (connection refused, timeouts, no leader yet) returns
nothing after a short pause and the next one tries again; positions are unchanged, since
no record was handed out. A commit that fails is logged and left to the next one.

A record is handed out once per seek: after a broker restart the client may move its
position back by itself (it detects a log truncation through the new leader epoch and
seeks to the divergence), and the records it fetches again were handed out already.
They are dropped, counted in ``refetched`` and logged.

Examples
--------
>>> class OnePartition:  # stands in for a KafkaConsumer
...     def partitions_for_topic(self, topic): return {0}
...     def assign(self, partitions): self.assigned = partitions
...     def seek_to_beginning(self, *partitions): pass
...     def seek(self, tp, offset): pass
>>> source = KafkaSource(["clicks"], consumer=OnePartition())
>>> source.seek({"clicks": {"0": 7}}); source.offsets()
{'clicks': {0: 7}}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from recallstream.streaming.kafka_io import make_consumer, partitions_of

# Bytes fetched per partition and request: small, so that every fetch brings a little of
# each partition and an aligner never waits long for a lagging one (a larger record still
# comes whole: the broker always returns at least one record batch).
FETCH_BYTES_PER_PARTITION = 256 * 1024
# While the broker is away: a pause between two failed fetches, and a warning this often.
RETRY_PAUSE_S = 0.5
WARN_EVERY_S = 10.0

log = logging.getLogger(__name__)


def is_retriable(error: BaseException) -> bool:
    """Whether a Kafka client error is transient (broker away, leader moving, timeouts).

    >>> from kafka.errors import KafkaConnectionError, UnknownTopicOrPartitionError
    >>> is_retriable(KafkaConnectionError("111 ECONNREFUSED")), is_retriable(ValueError())
    (True, False)
    """
    return isinstance(error, KafkaError) and bool(getattr(error, "retriable", False))


class KafkaSource:
    """Assign, fetch, seek, track and commit offsets (see the module docstring).

    Parameters
    ----------
    topics : iterable of str
        Every partition of each is assigned.
    consumer : KafkaConsumer
        Owned by the source (:meth:`close` closes it); see :meth:`connect`.
    """

    def __init__(self, topics: Iterable[str], consumer: KafkaConsumer) -> None:
        self._consumer = consumer
        self._next: dict[TopicPartition, int] = {}
        self._warned_at = -float("inf")
        self.fetch_failures = 0
        self.refetched = 0  # records the client fetched a second time, dropped
        self._fetched: dict[TopicPartition, int] = {}  # next offset expected from the client
        self.partitions = [tp for topic in topics for tp in partitions_of(consumer, topic)]
        consumer.assign(self.partitions)
        consumer.seek_to_beginning(*self.partitions)

    @classmethod
    def connect(cls, settings, topics: Iterable[str]) -> "KafkaSource":
        """A ``read_committed`` source on ``topics`` with a consumer of
        ``settings.consumer_group`` (used by :meth:`commit` only, never joined)."""
        # read_committed: the joiner's examples count once their transaction commits
        return cls(topics, make_consumer(settings, group_id=settings.consumer_group,
                                         isolation_level="read_committed",
                                         max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION))

    def fetch(self, timeout_s: float, max_records: int | None = None) -> dict[TopicPartition, list]:
        """The next records of each partition (waiting up to ``timeout_s`` for some);
        nothing, after a short pause, while the broker cannot be reached."""
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as error:
            if not is_retriable(error):
                raise
            self.fetch_failures += 1
            self._warn(f"fetching failed ({error!r}); retrying until the broker is back")
            time.sleep(RETRY_PAUSE_S)
            return {}
        for tp, records in batches.items():
            expected = self._fetched.get(tp)
            if records and expected is not None and records[0].offset < expected:
                records = batches[tp] = self._drop_refetched(tp, records, expected)
            if records:
                self._fetched[tp] = records[-1].offset + 1
        return batches

    def _drop_refetched(self, tp: TopicPartition, records: list, expected: int) -> list:
        fresh = [record for record in records if record.offset >= expected]
        self.refetched += len(records) - len(fresh)
        log.warning("%s: the client fetched %d records below offset %d a second time (its "
                    "position moved back after a broker restart); dropped",
                    tp, len(records) - len(fresh), expected)
        return fresh

    def fetched_to_end(self, tp: TopicPartition) -> bool:
        """True when ``tp`` is fetched up to its last known end (False while the broker
        cannot be reached: the consumer may have to ask it for the position)."""
        highwater = self._consumer.highwater(tp)
        if highwater is None:
            return False
        try:
            return self._consumer.position(tp) >= highwater
        except KafkaError as error:
            if not is_retriable(error):
                raise
            self._warn(f"reading the position failed ({error!r}); retrying until the broker is back")
            return False

    def handled(self, next_offsets: Mapping[TopicPartition, int]) -> None:
        """Records up to these offsets (exclusive) are handled."""
        self._next.update(next_offsets)

    def offsets(self) -> dict[str, dict[int, int]]:
        """Topic to partition to the next offset to handle, for every partition handled or sought."""
        out: dict[str, dict[int, int]] = {}
        for tp, offset in sorted(self._next.items()):
            out.setdefault(tp.topic, {})[tp.partition] = offset
        return out

    def lag(self, settled: Callable[[TopicPartition], bool] = lambda tp: False) -> dict[str, int]:
        """Topic to records not yet handled (last known end offset minus next offset to
        handle, summed over its partitions; partitions without a known end count 0).

        A partition fetched to its end for which ``settled(tp)`` holds (its caller keeps
        none of its records back) counts 0: the offsets left between the last record
        handled and the end are transaction markers, never records to handle.
        """
        out: dict[str, int] = {}
        for tp in self.partitions:
            highwater = self._consumer.highwater(tp)
            behind = max(0, highwater - self._next.get(tp, 0)) if highwater is not None else 0
            if behind and settled(tp) and self.fetched_to_end(tp):
                behind = 0
            out[tp.topic] = out.get(tp.topic, 0) + behind
        return out

    def seek(self, offsets: Mapping[str, Mapping[int | str, int]]) -> None:
        """Resume from ``offsets`` (topic to partition to next offset, as :meth:`offsets`).

        Partitions not named keep their position. Partition numbers may be
        strings (as after a JSON round trip).
        """
        assigned = set(self.partitions)
        for topic, partitions in offsets.items():
            for partition, offset in partitions.items():
                tp = TopicPartition(topic, int(partition))
                if tp not in assigned:
                    raise ValueError(f"{topic}[{partition}] is not one of the consumed partitions")
                self._consumer.seek(tp, offset)
                self._next[tp] = self._fetched[tp] = offset

    def rewind(self, topic: str, offsets: Mapping[int, int]) -> dict[int, int]:
        """Move ``topic``'s partitions to ``offsets`` and every other partition back to
        its next offset to handle (records fetched but not handled are fetched again);
        returns ``topic``'s next offsets to handle before the move."""
        before = self.offsets().get(topic, {})
        for tp in self.partitions:
            if tp.topic == topic and tp.partition in offsets:
                self._consumer.seek(tp, offsets[tp.partition])
                self._next[tp] = self._fetched[tp] = offsets[tp.partition]
            elif tp in self._next:
                self._consumer.seek(tp, self._next[tp])
                self._fetched[tp] = self._next[tp]
            else:
                self._consumer.seek_to_beginning(tp)
                self._fetched.pop(tp, None)
        return before

    def commit(self, offsets: Mapping[str, Mapping[int | str, int]] | None = None) -> None:
        """Commit ``offsets`` (default: :meth:`offsets`) to the consumer group, for lag
        monitoring only; call it after the checkpoint that holds them."""
        offsets = self.offsets() if offsets is None else offsets
        try:
            self._consumer.commit({
                TopicPartition(topic, int(partition)): OffsetAndMetadata(offset, "", -1)
                for topic, partitions in offsets.items() for partition, offset in partitions.items()})
        except KafkaError as error:  # the checkpoint holds them: the next commit catches up
            self._warn(f"committing offsets for lag monitoring failed ({error!r}); the next "
                       f"checkpoint commits again")

    def _warn(self, message: str) -> None:
        if time.monotonic() - self._warned_at >= WARN_EVERY_S:
            self._warned_at = time.monotonic()
            log.warning("%s", message)

    def unstick(self) -> bool:
        """Wake a fetch that kafka-python 3.0.12 lost track of; True if it could.

        Rarely, under heavy load, ``KafkaConsumer.poll`` blocks forever: its
        thread waits for a task of the client's I/O thread that never completes
        (seen here in ``Fetcher.fetch_records``). Failing the client's pending
        cross-thread waits with a timeout makes that poll return as if no record
        had arrived; nothing is skipped, the next poll fetches from the same
        position. This reaches into the client's internals, so it does nothing
        if they are not there.
        """
        from kafka.errors import KafkaTimeoutError

        fail = getattr(getattr(self._consumer, "_net", None), "_fail_pending_waiters", None)
        if fail is None:
            return False
        fail(KafkaTimeoutError("woken by recallstream: the poll was stuck"))
        return True

    def close(self) -> None:
        self._consumer.close()


def as_state(offsets: Mapping[str, Mapping[int, int]]) -> dict[str, dict[str, Any]]:
    """``offsets`` with partition numbers as strings: JSON object keys are strings.

    Examples
    --------
    >>> as_state({"clicks": {0: 12}})
    {'clicks': {'0': 12}}
    """
    return {topic: {str(p): o for p, o in parts.items()} for topic, parts in offsets.items()}
