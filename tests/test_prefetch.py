"""Prefetcher: ordered, bounded, pausable background polling."""

import threading
import time

import pytest

from recallstream.streaming.prefetch import Prefetcher


class Empty:
    records = 0  # what an ingestor's poll returns when nothing came


class CountingIngestor:
    """poll() returns 1, 2, 3, ... up to `limit`, then empty polls; may fail at a given poll."""

    def __init__(self, fail_at=None, limit=10**9):
        self.n, self.fail_at, self.limit = 0, fail_at, limit
        self.threads = set()
        self.polling = threading.Event()

    def poll(self, timeout_s):
        self.threads.add(threading.current_thread().name)
        if self.n >= self.limit:
            return Empty()
        self.polling.set()
        self.n += 1
        if self.n == self.fail_at:
            raise ConnectionError("broker gone")
        time.sleep(0.001)
        self.polling.clear()
        return self.n

    def caught_up(self):
        return self.n >= self.limit


def test_results_arrive_in_poll_order_from_the_background_thread():
    ingestor = CountingIngestor()
    prefetcher = Prefetcher(ingestor, max_queued=4)
    prefetcher.start()
    assert [prefetcher.get(timeout_s=5) for _ in range(50)] == list(range(1, 51))
    prefetcher.close()
    assert ingestor.threads == {"prefetch"}


def test_queue_is_bounded_when_the_consumer_lags():
    ingestor = CountingIngestor()
    prefetcher = Prefetcher(ingestor, max_queued=3)
    prefetcher.start()
    time.sleep(0.3)
    assert ingestor.n <= 4  # three queued, at most one more in flight
    prefetcher.close()


def test_pause_hands_over_the_queue_and_stops_polling():
    ingestor = CountingIngestor()
    prefetcher = Prefetcher(ingestor, max_queued=8)
    prefetcher.start()
    first = prefetcher.get(timeout_s=5)
    with prefetcher.paused() as queued:
        polled = ingestor.n
        assert not ingestor.polling.is_set()
        time.sleep(0.1)
        assert ingestor.n == polled  # nothing polled while paused
        assert [first, *queued] == list(range(1, polled + 1))
    assert prefetcher.get(timeout_s=5) == polled + 1
    prefetcher.close()


def test_caught_up_needs_an_empty_queue():
    prefetcher = Prefetcher(CountingIngestor(limit=5), max_queued=10)
    prefetcher.start()
    time.sleep(0.2)
    assert not prefetcher.caught_up()  # results are queued, though the source is at its end
    while prefetcher.get(timeout_s=0.05) is not None:
        pass
    assert prefetcher.caught_up()
    prefetcher.close()


def test_an_ingestion_error_reaches_the_trainer_after_the_results_before_it():
    prefetcher = Prefetcher(CountingIngestor(fail_at=3), max_queued=8)
    prefetcher.start()
    assert [prefetcher.get(timeout_s=5), prefetcher.get(timeout_s=5)] == [1, 2]
    with pytest.raises(RuntimeError, match="ingestion thread failed") as raised:
        prefetcher.get(timeout_s=5)
    assert isinstance(raised.value.__cause__, ConnectionError)
    prefetcher.close()


class HangingIngestor(CountingIngestor):
    def poll(self, timeout_s):
        if self.n == 2:
            time.sleep(3600)  # a poll that never returns
        return super().poll(timeout_s)


def test_a_poll_that_never_returns_is_reported_as_a_stall():
    from recallstream.streaming.prefetch import StalledIngestion

    prefetcher = Prefetcher(HangingIngestor(), max_queued=8, stall_timeout_s=0.3)
    prefetcher.start()
    assert [prefetcher.get(timeout_s=5), prefetcher.get(timeout_s=5)] == [1, 2]
    time.sleep(0.4)
    with pytest.raises(StalledIngestion, match="has not returned"):
        prefetcher.get(timeout_s=0.1)


class WakeableIngestor(CountingIngestor):
    """Its third poll hangs until unstick() is called (the kafka-python hang and its cure)."""

    def __init__(self):
        super().__init__()
        self.woken = threading.Event()

    def poll(self, timeout_s):
        if self.n == 2 and not self.woken.is_set():
            self.woken.wait()
            return Empty()
        return super().poll(timeout_s)

    def unstick(self):
        self.woken.set()
        return True


def test_a_stuck_poll_is_woken_and_ingestion_goes_on():
    prefetcher = Prefetcher(WakeableIngestor(), max_queued=8, wake_after_s=0.2, stall_timeout_s=30)
    prefetcher.start()
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 5 and time.monotonic() < deadline:
        item = prefetcher.get(timeout_s=0.1)
        if item is not None:
            got.append(item)
    assert got == [1, 2, 3, 4, 5]
    assert prefetcher.wakes == 1
    prefetcher.close()
