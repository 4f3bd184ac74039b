"""IndexSync: background writes reach Qdrant, coalesce per id, and surface failures.

The writer thread is observed through fake indexes and a fake retry pause that signal
when they are called (or block until the test lets them go on), never through sleeps or
wall-clock bounds (except the drain's deadline, whose point is the clock).
"""

import threading
import time

import numpy as np
import pytest

from recallstream.model.index_sync import IndexSync
from recallstream.model.vector_index import VectorIndex

WAIT_S = 10  # how long a wait for something that must happen may take before the test fails


@pytest.fixture(params=["memory", "edge"])
def index(request, tmp_path):
    """Every test runs on both embedded backends: qdrant-client's local mode and Qdrant Edge."""
    index = VectorIndex.connect(":memory:" if request.param == "memory"
                                else f"edge:{tmp_path / 'qdrant-edge'}")
    yield index
    index.close()


def test_newest_vector_of_an_id_wins(index):
    sync = IndexSync(index, items="items", users="users", dim=2)
    for step in range(50):
        angle = step / 50
        sync.put_items(["a", "b"], np.array([[np.cos(angle), np.sin(angle)], [0.0, 1.0]]),
                       [{"step": step}, {"step": step}])
    sync.drain()
    stored = index.retrieve_vectors("items", ["a"])["a"]
    np.testing.assert_allclose(stored, [np.cos(49 / 50), np.sin(49 / 50)], atol=1e-6)
    assert index.search("items", [0.0, 1.0], limit=1)[0][2]["step"] == 49
    assert index.count("items") == 2
    sync.close()


def test_delete_after_put_removes_the_point(index):
    sync = IndexSync(index, items="items", users="users", dim=2)
    sync.put_items(["a", "b"], np.eye(2), [{}, {}])
    sync.delete_items(["a"])
    sync.drain()
    assert [i for i, _, _ in index.search("items", [1.0, 0.0], limit=5)] == ["b"]
    sync.close()


class FlakyIndex:
    """Wraps an index; its first `failures` writes fail (Qdrant going away and back)."""

    def __init__(self, index, failures: int):
        self.index, self.failures = index, failures

    def __getattr__(self, name):  # collections and aliases: the wrapped index's
        return getattr(self.index, name)

    def upsert(self, *args, **kwargs):
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("qdrant is down")
        self.index.upsert(*args, **kwargs)


class Pauses:
    """IndexSync's `sleep` between retries: records each pause and returns at once, except
    the `block_at`-th, which waits until `resume` is set."""

    def __init__(self, block_at=None):
        self.seconds, self.block_at = [], block_at
        self.changed = threading.Condition()
        self.resume = threading.Event()

    def __call__(self, seconds):
        with self.changed:
            self.seconds.append(seconds)
            count = len(self.seconds)
            self.changed.notify_all()
        if count == self.block_at:
            self.resume.wait()

    def wait_for(self, count) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.seconds) >= count, timeout=WAIT_S)


def test_failed_writes_are_retried_until_qdrant_is_back(index):
    pauses = Pauses()
    sync = IndexSync(FlakyIndex(index, failures=3), items="items", users="users", dim=2,
                     initial_backoff_s=0.01, sleep=pauses)
    sync.put_items(["a", "b"], np.eye(2), [{"v": 1}, {"v": 1}])
    sync.drain(timeout_s=WAIT_S)
    assert sync.failed_writes == 3
    assert pauses.seconds == [0.01, 0.02, 0.04]  # the pause doubles per consecutive failure
    assert index.count("items") == 2
    sync.close()


def test_drain_does_not_return_while_qdrant_is_down(index):
    flaky = FlakyIndex(index, failures=10**6)
    pauses = Pauses(block_at=3)
    sync = IndexSync(flaky, items="items", users="users", dim=2,
                     initial_backoff_s=0.01, max_backoff_s=0.02, sleep=pauses)
    try:
        sync.put_items(["a"], np.ones((1, 2)), [{}])
        assert pauses.wait_for(3), "the writer did not retry"
        # the writer waits in its third pause: three writes failed and were put back
        with pytest.raises(TimeoutError, match="still pending"):
            sync.drain(timeout_s=0.1)
        assert sync.pending() == 1 and sync.failed_writes == 3
        assert pauses.seconds == [0.01, 0.02, 0.02]  # doubled up to max_backoff_s
        flaky.failures = 0  # Qdrant is back: the same write goes through
    finally:
        pauses.resume.set()
    sync.drain(timeout_s=WAIT_S)
    assert index.count("items") == 1 and sync.failed_writes == 3
    sync.close()


class GatedIndex(FlakyIndex):
    """Records each upsert's {id: payload}; its first upsert signals `entered`, waits for
    `fail`, then raises (a write that fails while the trainer queues newer vectors)."""

    def __init__(self, index):
        super().__init__(index, failures=1)
        self.calls = []
        self.entered, self.fail = threading.Event(), threading.Event()

    def upsert(self, collection, ids, vectors, payloads, **kwargs):
        self.calls.append(dict(zip(ids, payloads)))
        if len(self.calls) == 1:
            self.entered.set()
            self.fail.wait()
        super().upsert(collection, ids, vectors, payloads, **kwargs)


def test_a_newer_vector_queued_during_a_failed_write_wins(index):
    gated = GatedIndex(index)
    sync = IndexSync(gated, items="items", users="users", dim=2, initial_backoff_s=0.01,
                     sleep=Pauses())
    old, new = {"v": "old"}, {"v": "new"}
    try:
        sync.put_items(["a", "b"], np.array([[1.0, 0.0], [1.0, 0.0]]), [old, old])
        assert gated.entered.wait(WAIT_S), "the first write never started"
        sync.put_items(["a"], np.array([[0.0, 1.0]]), [new])  # while that write is under way
    finally:
        gated.fail.set()  # the first write fails and is put back: a's newer vector wins
    sync.drain(timeout_s=WAIT_S)
    assert sync.failed_writes == 1
    assert gated.calls == [{"a": old, "b": old}, {"b": old, "a": new}]  # the retry, coalesced
    assert index.search("items", [0.0, 1.0], limit=1)[0][2] == {**new, "item_id": "a"}
    np.testing.assert_allclose(index.retrieve_vectors("items", ["a"])["a"], [0.0, 1.0], atol=1e-6)
    sync.close()


def test_mismatched_lengths_are_rejected(index):
    sync = IndexSync(index, items="items", users="users", dim=2)
    with pytest.raises(ValueError, match="2 ids, 1 vectors"):
        sync.put_items(["a", "b"], np.ones((1, 2)), [{}, {}])
    sync.close()


class CountingIndex(FlakyIndex):
    """Counts completed writes; wait_for_writes(n) waits until n have completed."""

    def __init__(self, index):
        super().__init__(index, failures=0)
        self.writes = 0
        self.written = threading.Condition()

    def upsert(self, *args, **kwargs):
        super().upsert(*args, **kwargs)
        with self.written:
            self.writes += 1
            self.written.notify_all()

    def wait_for_writes(self, count) -> bool:
        with self.written:
            return self.written.wait_for(lambda: self.writes >= count, timeout=WAIT_S)


def test_min_interval_coalesces_updates_of_hot_items(index):
    counting = CountingIndex(index)
    # an interval no test run reaches: what is written before the drain is the first write only
    sync = IndexSync(counting, items="items", users="users", dim=2, min_interval_s=3600)
    sync.put_items(["hot"], np.array([[1.0, 0.0]]), [{"step": 0}])
    assert counting.wait_for_writes(1), "the first write did not go at once"
    for step in range(1, 30):  # one hot item, updated 29 times within the interval
        sync.put_items(["hot"], np.array([[1.0, step]]), [{"step": step}])
    assert counting.writes == 1 and sync.pending() == 1  # coalesced, waiting for the interval
    sync.drain(timeout_s=WAIT_S)  # a drain writes at once: a drain that waited would time out
    assert counting.writes == 2
    assert index.search("items", [1.0, 0.0], limit=1)[0][2]["step"] == 29
    sync.close()


def test_users_are_written_while_item_updates_keep_coming(index):
    # every item write brings a new item update, as a stream does: a writer that took
    # users only when no item was pending would leave them to the next drain
    writes, user_written = [], threading.Event()
    sync = IndexSync(index, items="items", users="users", dim=2, min_interval_s=0.01)

    def on_write(kind, ids, seconds, ok):
        writes.append(kind)
        if kind == "user":
            user_written.set()
        elif len(writes) < 20:
            sync.put_items(["hot"], np.array([[1.0, len(writes)]]), [{}])

    sync.on_write = on_write
    sync.put_items(["hot"], np.array([[1.0, 0.0]]), [{}])
    sync.put_users(["u"], np.array([[0.0, 1.0]]))
    assert user_written.wait(WAIT_S), writes
    # the first round may hold the item only; the second holds the pending user
    assert writes.index("user") <= 2, writes
    assert index.count("users") == 1  # written by the writer, not by a drain
    sync.close()


# -- permanent errors and the drain's deadline (issue 15) ------------------------------------

class RefusingIndex(FlakyIndex):
    """Wraps an index; refuses (ValueError, as Qdrant does for a bad point) any upsert that
    holds one of `refused`, and counts the upserts tried."""

    def __init__(self, index, refused):
        super().__init__(index, failures=0)
        self.refused, self.upserts = set(refused), 0

    def upsert(self, collection, ids, vectors, payloads, **kwargs):
        self.upserts += 1
        if self.refused & set(ids):
            raise ValueError("Qdrant refuses this point")
        super().upsert(collection, ids, vectors, payloads, **kwargs)


class Rejections:
    """IndexSync's on_reject hook: records (kind, count, reason)."""

    def __init__(self):
        self.calls = []

    def __call__(self, kind, count, reason):
        self.calls.append((kind, count, reason))


def test_a_nan_vector_is_skipped_and_counted_and_does_not_hang_the_drain(index, caplog):
    from recallstream.consumers import metrics

    counter = metrics.QDRANT_REJECTED.labels("items", "non_finite")
    before = counter._value.get()
    sync = IndexSync(index, items="items", users="users", dim=2, drain_timeout_s=WAIT_S)
    sync.on_reject = metrics.observe_qdrant_rejected
    sync.put_items(["good", "nan", "inf"], np.array([[1.0, 0.0], [np.nan, 1.0], [np.inf, 0.0]]),
                   [{}, {}, {}])
    sync.put_items(["nan2"], np.array([[0.0, np.nan]]), [{}])
    sync.drain()  # returns: nothing unwritable is left queued
    assert index.count("items") == 1 and index.retrieve_vectors("items", ["good"])
    assert sync.rejected_points == 3 and counter._value.get() - before == 3
    warnings = [r for r in caplog.records if "dropping" in r.getMessage()]
    assert len(warnings) == 1 and "non_finite" in warnings[0].getMessage()  # logged once
    sync.close()


def test_a_nan_vector_leaves_the_older_pending_vector_of_its_id(index):
    sync = IndexSync(index, items="items", users="users", dim=2, min_interval_s=3600)
    sync.put_items(["first"], np.array([[1.0, 0.0]]), [{}])  # the first write goes at once
    sync.put_items(["a"], np.array([[0.0, 1.0]]), [{"v": "good"}])
    sync.put_items(["a"], np.array([[np.nan, 1.0]]), [{"v": "nan"}])
    sync.drain(timeout_s=WAIT_S)
    assert index.retrieve_payloads("items", ["a"])["a"]["v"] == "good"
    sync.close()


def test_a_point_qdrant_refuses_is_dropped_alone_and_the_others_are_written(index):
    refusing = RefusingIndex(index, refused={"bad"})
    rejections = Rejections()
    pauses = Pauses()
    sync = IndexSync(refusing, items="items", users="users", dim=2, drain_timeout_s=WAIT_S,
                     sleep=pauses)
    sync.on_reject = rejections
    sync.put_items(["a", "bad", "b"], np.eye(3, 2) + 0.1, [{}, {}, {}])
    sync.drain()
    assert index.count("items") == 2 and sync.pending() == 0
    assert rejections.calls == [("item", 1, "refused")] and sync.rejected_points == 1
    assert pauses.seconds == []  # a permanent error is not retried with a pause
    assert refusing.upserts == 4  # the batch once, then each of its three points
    sync.put_items(["c"], np.array([[1.0, 1.0]]), [{}])  # the writer goes on as usual
    sync.drain()
    assert index.count("items") == 3
    sync.close()


def test_a_permanently_unavailable_index_makes_the_drain_raise_after_its_deadline(index):
    from recallstream.model.index_sync import StalledIndex

    flaky = FlakyIndex(index, failures=10**9)
    sync = IndexSync(flaky, items="items", users="users", dim=2, drain_timeout_s=0.3,
                     initial_backoff_s=0.01, max_backoff_s=0.05)
    sync.put_items(["a", "b"], np.eye(2), [{}, {}])
    started = time.monotonic()
    with pytest.raises(StalledIndex, match="2 points not written") as raised:
        sync.drain()
    assert isinstance(raised.value, TimeoutError)
    assert 0.3 <= time.monotonic() - started < WAIT_S
    assert sync.pending() + sync._busy >= 1 and sync.failed_writes >= 1
    assert sync.rejected_points == 0  # unavailable is not refused: nothing dropped
    started = time.monotonic()
    sync.close()  # does not wait for another deadline, and the writer thread stops
    assert not sync._thread.is_alive() and time.monotonic() - started < WAIT_S


@pytest.mark.parametrize("error", [TimeoutError("write timed out"),
                                   ConnectionRefusedError("refused")])
def test_a_transiently_failing_index_catches_up_within_the_deadline(index, error):
    class Transient(FlakyIndex):
        def upsert(self, *args, **kwargs):
            if self.failures > 0:
                self.failures -= 1
                raise error
            self.index.upsert(*args, **kwargs)

    pauses = Pauses()
    sync = IndexSync(Transient(index, failures=4), items="items", users="users", dim=2,
                     drain_timeout_s=WAIT_S, initial_backoff_s=0.01, sleep=pauses)
    sync.put_items(["a", "b"], np.eye(2), [{}, {}])
    sync.drain()
    assert index.count("items") == 2 and sync.failed_writes == 4 and sync.rejected_points == 0
    assert len(pauses.seconds) == 4
    sync.close()


def test_qdrant_unavailable_errors_are_retryable_and_others_are_not():
    import httpx
    from qdrant_client.http.exceptions import UnexpectedResponse

    from recallstream.model.index_sync import is_retryable

    unavailable = UnexpectedResponse(503, "Service Unavailable", b"", httpx.Headers())
    bad_request = UnexpectedResponse(400, "Bad Request", b"", httpx.Headers())
    assert is_retryable(unavailable) and is_retryable(httpx.ConnectTimeout("slow"))
    assert not is_retryable(bad_request) and not is_retryable(ValueError("nan"))
    assert not is_retryable(KeyError("x"))


def test_a_bad_drain_timeout_is_refused(index):
    with pytest.raises(ValueError, match="drain_timeout_s"):
        IndexSync(index, items="items", users="users", dim=2, drain_timeout_s=0)
