"""Prefetcher: ordered, bounded, pausable background polling.

Every wait here is on an event or a condition, and time is a clock the test advances,
so the outcomes do not depend on how fast the machine is; every Prefetcher a test
starts is closed by the `start` fixture, whatever the test's outcome.
"""

import threading
import time

import pytest

from recallstream.streaming.prefetch import Prefetcher, StalledIngestion

WAIT_S = 10  # how long a wait for something that must happen may take before the test fails


class Empty:
    records = 0  # what an ingestor's poll returns when nothing came


class CountingIngestor:
    """poll() returns 1, 2, 3, ... up to `limit`, then empty polls; may fail at a given poll."""

    def __init__(self, fail_at=None, limit=10**9):
        self.n, self.fail_at, self.limit = 0, fail_at, limit
        self.threads = set()
        self.polling = threading.Event()  # set while a poll runs
        self.started = threading.Event()  # set when a poll starts

    def poll(self, timeout_s):
        self.threads.add(threading.current_thread().name)
        self.started.set()
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

    def release(self):
        """Let a poll that waits for the test return (teardown)."""


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def start():
    """start(ingestor, **kwargs): a started Prefetcher, released and closed at teardown."""
    started = []

    def start(ingestor, **kwargs):
        prefetcher = Prefetcher(ingestor, **kwargs)
        started.append(prefetcher)
        prefetcher.start()
        return prefetcher

    yield start
    for prefetcher in started:
        try:
            prefetcher.ingestor.release()
        finally:
            prefetcher.close()


def test_results_arrive_in_poll_order_from_the_background_thread(start):
    ingestor = CountingIngestor()
    prefetcher = start(ingestor, max_queued=4)
    assert [prefetcher.get(timeout_s=WAIT_S) for _ in range(50)] == list(range(1, 51))
    prefetcher.close()
    assert ingestor.threads == {"prefetch"}


def test_queue_is_bounded_when_the_consumer_lags(start):
    ingestor = CountingIngestor()
    prefetcher = start(ingestor, max_queued=3)
    assert prefetcher.wait_until_full(WAIT_S), "the queue never filled"
    assert ingestor.n == 3  # the thread waits for the trainer, with nothing more polled
    assert prefetcher.get(timeout_s=WAIT_S) == 1
    assert prefetcher.wait_until_full(WAIT_S), "the thread did not refill the slot"
    assert ingestor.n == 4  # one slot freed, one more poll
    with prefetcher.paused() as queued:
        assert queued == [2, 3, 4]


def test_pause_hands_over_the_queue_and_stops_polling(start):
    ingestor = CountingIngestor()
    prefetcher = start(ingestor, max_queued=8)
    first = prefetcher.get(timeout_s=WAIT_S)
    with prefetcher.paused() as queued:
        polled = ingestor.n
        assert not ingestor.polling.is_set()
        assert [first, *queued] == list(range(1, polled + 1))
        ingestor.started.clear()
        # an absence: correct code passes however slow the machine (a slow one only gives
        # a thread that ignored the pause less time to show it)
        assert not ingestor.started.wait(0.1), "polled while paused"
        assert ingestor.n == polled
    assert prefetcher.get(timeout_s=WAIT_S) == polled + 1


def test_caught_up_needs_an_empty_queue(start):
    ingestor = CountingIngestor(limit=5)
    prefetcher = start(ingestor, max_queued=5)
    assert prefetcher.wait_until_full(WAIT_S), "the five results were not all queued"
    assert ingestor.caught_up()
    assert not prefetcher.caught_up()  # results are queued, though the source is at its end
    assert [prefetcher.get(timeout_s=WAIT_S) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert prefetcher.caught_up()


def test_after_a_pause_that_rewinds_the_source_the_prefetcher_is_not_caught_up(start):
    ingestor = CountingIngestor(limit=3)
    prefetcher = start(ingestor, max_queued=5)
    assert [prefetcher.get(timeout_s=WAIT_S) for _ in range(3)] == [1, 2, 3]
    deadline = time.monotonic() + WAIT_S
    while not prefetcher.caught_up():
        assert time.monotonic() < deadline, "never caught up"
        time.sleep(0.01)
    with prefetcher.paused():
        # another thread asking during the pause (the demo waits for the worker so) must
        # not be told the stale answer of the last poll: the rewind happens now
        assert not prefetcher.caught_up()
        ingestor.n, ingestor.limit = 1, 3  # a rewind (the worker's reset to a snapshot)
    assert not prefetcher.caught_up()  # whatever the last poll before the pause said
    assert [prefetcher.get(timeout_s=WAIT_S) for _ in range(2)] == [2, 3]


def test_an_ingestion_error_reaches_the_trainer_after_the_results_before_it(start):
    prefetcher = start(CountingIngestor(fail_at=3), max_queued=8)
    assert [prefetcher.get(timeout_s=WAIT_S), prefetcher.get(timeout_s=WAIT_S)] == [1, 2]
    with pytest.raises(RuntimeError, match="ingestion thread failed") as raised:
        prefetcher.get(timeout_s=WAIT_S)
    assert isinstance(raised.value.__cause__, ConnectionError)


def test_a_stalled_reading_reaches_the_trainer_as_a_stall_not_as_a_failure(start):
    class GoneReader(CountingIngestor):  # e.g. the reading process killed
        def poll(self, timeout_s):
            raise StalledIngestion("the reading process exited (exit code -9) during 'poll'")

    prefetcher = start(GoneReader(), max_queued=8)
    with pytest.raises(StalledIngestion, match="exit code -9"):  # the worker's exit status 4
        prefetcher.get(timeout_s=WAIT_S)


class HangingIngestor(CountingIngestor):
    """Its third poll does not return until the test releases it."""

    def __init__(self):
        super().__init__()
        self.hanging, self.released = threading.Event(), threading.Event()

    def poll(self, timeout_s):
        if self.n == 2 and not self.released.is_set():
            self.hanging.set()
            self.released.wait()
        return super().poll(timeout_s)

    def release(self):
        self.released.set()


def test_a_poll_that_never_returns_is_reported_as_a_stall(start):
    clock = FakeClock()
    ingestor = HangingIngestor()
    prefetcher = start(ingestor, max_queued=8, stall_timeout_s=30, clock=clock)
    assert [prefetcher.get(timeout_s=WAIT_S), prefetcher.get(timeout_s=WAIT_S)] == [1, 2]
    assert ingestor.hanging.wait(WAIT_S), "the third poll never started"
    clock.advance(29)
    assert prefetcher.get(timeout_s=0) is None  # a long poll, not yet a stall
    clock.advance(2)
    with pytest.raises(StalledIngestion, match="has not returned"):
        prefetcher.get(timeout_s=0)


class WakeableIngestor(CountingIngestor):
    """Its third poll hangs until unstick() is called (the kafka-python hang and its cure)."""

    def __init__(self):
        super().__init__()
        self.stuck, self.woken = threading.Event(), threading.Event()

    def poll(self, timeout_s):
        if self.n == 2 and not self.woken.is_set():
            self.stuck.set()
            self.woken.wait()
            return Empty()
        return super().poll(timeout_s)

    def unstick(self):
        self.woken.set()
        return True

    release = unstick


def test_a_stuck_poll_is_woken_and_ingestion_goes_on(start):
    clock = FakeClock()
    ingestor = WakeableIngestor()
    prefetcher = start(ingestor, max_queued=8, wake_after_s=5, stall_timeout_s=30, clock=clock)
    assert [prefetcher.get(timeout_s=WAIT_S), prefetcher.get(timeout_s=WAIT_S)] == [1, 2]
    assert ingestor.stuck.wait(WAIT_S), "the third poll never started"
    assert prefetcher.get(timeout_s=0) is None
    assert prefetcher.wakes == 0 and not ingestor.woken.is_set()  # not stuck for long yet
    clock.advance(6)
    assert prefetcher.get(timeout_s=0) is None  # this get wakes the poll
    assert prefetcher.wakes == 1 and ingestor.woken.is_set()
    assert [prefetcher.get(timeout_s=WAIT_S) for _ in range(3)] == [3, 4, 5]
    assert prefetcher.wakes == 1
