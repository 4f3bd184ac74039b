"""The training examples of the last days of event time, read from ``examples`` up to a cut.

The snapshot job trains on "the last N days": days of event time counted back
from the newest example, so that a replay of old data (MovieLens is from 1997)
gives the same window as live data. :func:`read_window` reads them in four steps,
with one ``read_committed`` consumer assigned by hand (no group, commits nothing):

1. the *cut*: the end offsets of every partition at the start (for a
   ``read_committed`` consumer, the last stable offsets: everything before them is
   committed or aborted, nothing is still open). Examples produced later are not
   read, and the snapshot records the cut so that a worker resetting to it resumes
   there;
2. the newest event time, estimated from the last ``tail`` offsets before the cut of
   every partition;
3. the start of every partition: ``offsets_for_times`` at (newest - N days), by the
   examples' record timestamps (their click's event time in ms);
4. every example from there to the cut; :func:`select_window` then keeps those within
   N days of the newest one read (which may be newer than the estimate) and orders
   them by event time.

An example written late into a partition, with an event time older than records
before it, is seen as the broker's time index sees it: the seek by timestamp may
start after it.

Examples
--------
>>> rows = [WindowExample(ts=86400.0 * d, user_id="u1", item_id=f"i{d}", partition=d % 2, offset=d)
...         for d in (5, 1, 3, 2, 4)]
>>> [e.item_id for e in select_window(rows, days=2)]
['i3', 'i4', 'i5']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition

from recallstream.streaming.example_joiner import parse_example
from recallstream.streaming.kafka_io import (list_offsets, make_consumer, partitions_of,
                                             records_until)
from recallstream.streaming.settings import Settings

DAY_S = 86400.0
TAIL = 1000  # offsets per partition read to estimate the newest event time


@dataclass(frozen=True, order=True)
class WindowExample:
    """One click of the window: its event time, ids and place in the topic (the sort key
    ``(ts, partition, offset)`` orders a window the same way on every read)."""

    ts: float
    partition: int
    offset: int
    user_id: str = field(compare=False)
    item_id: str = field(compare=False)


@dataclass
class ExampleWindow:
    """What :func:`read_window` read.

    Attributes
    ----------
    topic : str
    cut : dict of int to int
        Partition to the end offset at the start (nothing at or after it was read).
    starts : dict of int to int
        Partition to the offset reading began at.
    days : float
    examples : list of WindowExample
        Those within ``days`` of the newest, in ``(ts, partition, offset)`` order.
    records_read : int
        Examples read, before the window's exact start was applied.
    skipped : int
        Records whose value is not an example (never written by the joiner).
    """

    topic: str
    cut: dict[int, int]
    starts: dict[int, int]
    days: float
    examples: list[WindowExample]
    records_read: int
    skipped: int

    @property
    def first_ts(self) -> float | None:
        return self.examples[0].ts if self.examples else None

    @property
    def last_ts(self) -> float | None:
        return max(e.ts for e in self.examples) if self.examples else None


def select_window(rows: Iterable[WindowExample], days: float) -> list[WindowExample]:
    """The rows with ``ts >= newest - days``, sorted by ``(ts, partition, offset)``."""
    rows = list(rows)
    if not rows:
        return []
    start = max(r.ts for r in rows) - days * DAY_S
    return sorted(r for r in rows if r.ts >= start)


def read_window(settings: Settings, days: float, *, idle_timeout_s: float = 30.0,
                tail: int = TAIL) -> ExampleWindow:
    """Read the examples of the last ``days`` of event time up to the current cut.

    Raises
    ------
    ValueError
        If ``days`` is not positive or the topic does not exist.
    TimeoutError
        If no record arrives for ``idle_timeout_s`` before the cut is reached.
    kafka.errors.KafkaError
        If the broker fails.
    """
    if not days > 0:
        raise ValueError(f"days must be positive, got {days}")
    topic = settings.topic_examples
    consumer = make_consumer(settings, isolation_level="read_committed")
    try:
        partitions = partitions_of(consumer, topic)
        cut = list_offsets(consumer, partitions, "end")
        begins = list_offsets(consumer, partitions, "beginning")
        newest = _newest_ts(consumer, begins, cut, tail, idle_timeout_s)
        if newest is None:
            return ExampleWindow(topic, _plain(cut), _plain(cut), days, [], 0, 0)
        starts = _starts_at(consumer, partitions, (newest - days * DAY_S), cut)
        rows, skipped = _examples(_read_ranges(consumer, starts, cut, idle_timeout_s))
    finally:
        consumer.close()
    return ExampleWindow(topic, _plain(cut), _plain(starts), days, select_window(rows, days),
                         len(rows), skipped)


def _newest_ts(consumer: KafkaConsumer, begins: Mapping[TopicPartition, int],
               cut: Mapping[TopicPartition, int], tail: int, idle_timeout_s: float) -> float | None:
    """The newest event time among the last ``tail`` offsets of each partition, looking
    further back where those hold no example (aborted transactions, markers)."""
    topic = next(iter(cut)).topic
    newest, unseen, reach = None, {tp for tp in cut if cut[tp] > begins[tp]}, tail
    while unseen:
        starts = {tp: max(begins[tp], cut[tp] - reach) for tp in unseen}
        rows, _ = _examples(_read_ranges(consumer, starts, cut, idle_timeout_s))
        for row in rows:
            newest = row.ts if newest is None else max(newest, row.ts)
            unseen.discard(TopicPartition(topic, row.partition))
        unseen = {tp for tp in unseen if starts[tp] > begins[tp]}  # not yet read from the start
        reach *= 10
    return newest


def _starts_at(consumer: KafkaConsumer, partitions: list[TopicPartition], start_ts: float,
               cut: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    """First offset of each partition whose record time is at or after ``start_ts`` (the
    cut when there is none; never past the cut). A window reaching back before the epoch
    starts at time 0: Kafka refuses a negative target time."""
    start_ms = max(0, math.floor(start_ts * 1000))  # int(ts * 1000) timestamps: floor keeps ties
    found = consumer.offsets_for_times({tp: start_ms for tp in partitions})
    return {tp: cut[tp] if found.get(tp) is None else min(found[tp].offset, cut[tp])
            for tp in partitions}


def _read_ranges(consumer: KafkaConsumer, starts: Mapping[TopicPartition, int],
                 ends: Mapping[TopicPartition, int], idle_timeout_s: float) -> Iterator:
    """Records of ``[starts[tp], ends[tp])`` of each partition (offset order within one)."""
    pending = {tp for tp in starts if starts[tp] < ends[tp]}
    consumer.assign(sorted(pending, key=lambda tp: tp.partition))
    for tp in pending:
        consumer.seek(tp, starts[tp])
    yield from records_until(consumer, pending, ends, idle_timeout_s)
    consumer.resume(*consumer.paused())  # the next range starts from a clean assignment


def _examples(records: Iterable) -> tuple[list[WindowExample], int]:
    rows, skipped = [], 0
    for record in records:
        try:
            value = parse_example(record.value)
            rows.append(WindowExample(ts=float(value["ts"]), partition=record.partition,
                                      offset=record.offset, user_id=str(value["user_id"]),
                                      item_id=str(value["item_id"])))
        except (ValueError, TypeError, KeyError):  # orjson.JSONDecodeError is a ValueError
            skipped += 1
    return rows, skipped


def _plain(offsets: Mapping[TopicPartition, int]) -> dict[int, int]:
    return {tp.partition: int(offset) for tp, offset in sorted(offsets.items())}
