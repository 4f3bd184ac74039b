"""The snapshot's window start (streaming/example_window.py), without a broker."""

from __future__ import annotations

from collections import namedtuple

from kafka import TopicPartition

from recallstream.streaming.example_window import _starts_at

Found = namedtuple("Found", "offset timestamp")


class TimeIndex:
    """Answers offsets_for_times like kafka-python, which refuses negative target times."""

    def __init__(self, first_ms: dict[TopicPartition, tuple[int, int]]) -> None:
        self.first_ms = first_ms  # partition -> (first offset, its timestamp in ms)
        self.asked: dict[TopicPartition, int] = {}

    def offsets_for_times(self, times: dict[TopicPartition, int]) -> dict:
        for tp, ms in times.items():
            if ms < 0:
                raise ValueError(f"The target time for partition {tp} is {ms}. "
                                 f"The target time cannot be negative.")
        self.asked.update(times)
        return {tp: Found(*self.first_ms[tp]) if ms <= self.first_ms[tp][1] else None
                for tp, ms in times.items()}


def test_a_window_longer_than_the_time_since_the_epoch_starts_at_the_first_record():
    # `recallstream snapshot --snapshot-days 1e6` (every example before the cut) on
    # MovieLens (1997-1998): newest - days reaches back before 1970.
    partitions = [TopicPartition("examples", 0), TopicPartition("examples", 1)]
    index = TimeIndex({partitions[0]: (0, 874_724_710_000), partitions[1]: (0, 874_724_727_000)})
    starts = _starts_at(index, partitions, start_ts=893_286_638.0 - 1e6 * 86_400,
                        cut={partitions[0]: 500, partitions[1]: 480})
    assert starts == {partitions[0]: 0, partitions[1]: 0}
    assert set(index.asked.values()) == {0}


def test_a_window_inside_the_stream_starts_at_its_first_record_and_never_past_the_cut():
    tp = TopicPartition("examples", 0)
    index = TimeIndex({tp: (40, 1_000_000)})
    assert _starts_at(index, [tp], start_ts=999.0, cut={tp: 100}) == {tp: 40}
    assert _starts_at(index, [tp], start_ts=2_000.0, cut={tp: 100}) == {tp: 100}  # none after
