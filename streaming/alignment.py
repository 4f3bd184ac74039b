"""Release records from many partitions in an order fixed by the logs, not by fetch timing.

``KafkaConsumer.poll`` returns whatever fetches completed first, so the
interleaving of partitions changes from run to run. The worker's minibatches,
and therefore its model, would change with it, and a restart from a
checkpoint would not reproduce the run it replaces. :class:`RecordAligner`
removes that nondeterminism the way Kafka Streams does, by record timestamp:

- records are buffered per partition, in offset order (never reordered within
  a partition, so offsets stay contiguous);
- time is cut into windows of ``window_ms`` of record timestamp; the window
  holding the oldest buffered record is *closed* when every partition has
  either buffered a record at or past the window's end, or is caught up
  (everything up to its high watermark is buffered);
- a closed window is released as one group: from each partition, the prefix
  of its buffer below the window's end.

Every decision depends only on the records' timestamps and on the log ends,
so two runs over the same finished logs release the same groups, and a run
restarted between two groups continues exactly as the uninterrupted run.
On a live stream a caught-up partition never blocks the others, so nothing
waits for quiet partitions.

Examples
--------
>>> from collections import namedtuple
>>> R = namedtuple("R", "topic partition offset timestamp")
>>> aligner = RecordAligner(window_ms=100)
>>> aligner.add({"a": [R("a", 0, 0, 10), R("a", 0, 1, 150)], "b": [R("b", 0, 0, 120)]})
>>> groups = aligner.release(caught_up=lambda tp: False)   # window [0, 100): both passed it
>>> [[(r.topic, r.offset) for tp in sorted(g) for r in g[tp]] for g in groups]
[[('a', 0)]]
>>> aligner.release(caught_up=lambda tp: False)            # window [100, 200): "a" passed it, "b" not
[]
>>> groups = aligner.release(caught_up=lambda tp: True)
>>> [[(r.topic, r.offset) for tp in sorted(g) for r in g[tp]] for g in groups]
[[('a', 1), ('b', 0)]]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any


class RecordAligner:
    """Buffer per partition and release timestamp windows deterministically.

    Parameters
    ----------
    window_ms : int
        Width of a release window in record-timestamp milliseconds. Within a
        window the consumer of the groups decides the order (the ingestor
        handles catalog records before events).

    Notes
    -----
    Records need ``timestamp`` (ms); partitions are any hashable keys (the
    worker uses ``TopicPartition``). A partition must be registered (by
    :meth:`track` or by records in :meth:`add`) to hold windows back.
    """

    def __init__(self, window_ms: int = 100) -> None:
        if window_ms <= 0:
            raise ValueError(f"window_ms must be positive, got {window_ms}")
        self.window_ms = int(window_ms)
        self._buffers: dict[Hashable, deque] = {}
        # Largest timestamp ever buffered per partition: every released record is
        # below the current window's end, so this is >= end iff the buffer holds such a record.
        self._max_ts: dict[Hashable, int] = {}

    def track(self, partitions: Iterable[Hashable]) -> None:
        """Register partitions that may still deliver records (so they hold windows back)."""
        for tp in partitions:
            self._buffers.setdefault(tp, deque())

    def add(self, batches: Mapping[Hashable, Iterable[Any]]) -> None:
        """Buffer fetched records (partition to records in offset order)."""
        for tp, records in batches.items():
            records = list(records)
            self._buffers.setdefault(tp, deque()).extend(records)
            if records:
                newest = max(r.timestamp for r in records)
                self._max_ts[tp] = max(self._max_ts.get(tp, newest), newest)

    def buffered(self, tp: Hashable | None = None) -> int:
        """Records buffered in one partition, or in all."""
        if tp is not None:
            return len(self._buffers.get(tp, ()))
        return sum(len(b) for b in self._buffers.values())

    def release(self, caught_up: Callable[[Hashable], bool],
                max_records: int | None = None) -> list[dict[Hashable, list]]:
        """Closed windows, oldest first, each as partition -> records.

        ``caught_up(tp)`` says whether everything the partition holds up to
        its high watermark has been added here. With ``max_records``, stops
        after the window that reaches that many records (the rest stay for the
        next call, in the same order).
        """
        groups = []
        released = 0
        while max_records is None or released < max_records:
            end = self._oldest_window_end()
            if end is None or not all(self._passed(tp, end, caught_up) for tp in self._buffers):
                break
            groups.append(self._take_below(end))
            released += sum(len(records) for records in groups[-1].values())
        return groups

    def clear(self) -> None:
        """Forget every buffered record (after seeking the consumer elsewhere)."""
        for buffer in self._buffers.values():
            buffer.clear()
        self._max_ts.clear()

    def _oldest_window_end(self) -> int | None:
        heads = [b[0].timestamp for b in self._buffers.values() if b]
        if not heads:
            return None
        return (min(heads) // self.window_ms + 1) * self.window_ms

    def _passed(self, tp: Hashable, end: int, caught_up: Callable[[Hashable], bool]) -> bool:
        # A buffered record at or past `end` means the prefix below it is complete.
        return self._max_ts.get(tp, -1) >= end or caught_up(tp)

    def _take_below(self, end: int) -> dict[Hashable, list]:
        group = {}
        for tp, buffer in self._buffers.items():
            taken = []
            while buffer and buffer[0].timestamp < end:
                taken.append(buffer.popleft())
            if taken:
                group[tp] = taken
        return group
