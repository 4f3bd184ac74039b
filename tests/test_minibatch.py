"""Minibatcher: size OR timeout since the first item, with an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recallstream.streaming.minibatch import Minibatcher


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_full_batches_are_emitted_by_size():
    batcher = Minibatcher(size=2, timeout_s=100.0, clock=FakeClock())
    assert batcher.add_many(range(5)) == [[0, 1], [2, 3]]
    assert len(batcher) == 1


def test_timeout_counts_from_the_first_item_of_the_batch():
    clock = FakeClock()
    batcher = Minibatcher(size=10, timeout_s=1.0, clock=clock)
    batcher.add("a")
    clock.now = 0.9
    assert batcher.add("b") is None
    assert batcher.time_left() == pytest.approx(0.1)
    clock.now = 1.0
    assert batcher.poll() == ["a", "b"]
    assert batcher.time_left() is None
    clock.now = 5.0
    batcher.add("c")                      # a new batch starts its own timer
    clock.now = 5.5
    assert batcher.poll() is None


def test_an_item_arriving_after_the_timeout_closes_the_batch_with_it():
    clock = FakeClock()
    batcher = Minibatcher(size=10, timeout_s=1.0, clock=clock)
    batcher.add(1)
    clock.now = 2.0
    assert batcher.add(2) == [1, 2]


def test_flush_returns_the_partial_batch_once():
    batcher = Minibatcher(size=3, timeout_s=1.0, clock=FakeClock())
    batcher.add_many("xy")
    assert batcher.flush() == ["x", "y"]
    assert batcher.flush() is None


def test_zero_timeout_emits_every_item_alone():
    batcher = Minibatcher(size=3, timeout_s=0.0, clock=FakeClock())
    assert batcher.add_many("ab") == [["a"], ["b"]]


@pytest.mark.parametrize("size, timeout_s", [(0, 1.0), (2, -1.0), (2, float("nan"))])
def test_bad_arguments_are_rejected(size, timeout_s):
    with pytest.raises(ValueError):
        Minibatcher(size=size, timeout_s=timeout_s)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 6), timeout=st.floats(0, 3),
       steps=st.lists(st.tuples(st.floats(0, 2), st.booleans()), max_size=40))
def test_matches_a_straightforward_model(size, timeout, steps):
    """Every item comes out once, in order; a batch never exceeds size; a batch is closed
    early only when its first item is at least ``timeout`` old."""
    clock = FakeClock()
    batcher = Minibatcher(size=size, timeout_s=timeout, clock=clock)
    out, arrival, n = [], {}, 0
    for advance, is_item in steps:
        clock.now += advance
        if is_item:
            arrival[n] = clock.now
            batch = batcher.add(n)
            n += 1
        else:
            batch = batcher.poll()
        if batch is not None:
            assert len(batch) <= size
            assert len(batch) == size or clock.now - arrival[batch[0]] >= timeout
            out.append(batch)
    rest = batcher.flush()
    out += [rest] if rest else []
    assert [i for batch in out for i in batch] == list(range(n))


def test_pending_items_survive_a_restore_into_a_new_batcher():
    clock = [0.0]
    first = Minibatcher(size=3, timeout_s=5.0, clock=lambda: clock[0])
    first.add_many(["a", "b"])
    saved = first.pending()
    restored = Minibatcher(size=3, timeout_s=5.0, clock=lambda: clock[0])
    clock[0] = 100.0
    restored.extend(saved)
    assert restored.poll() is None            # the timeout restarts at the restore
    assert restored.add("c") == ["a", "b", "c"]
    with pytest.raises(ValueError, match="do not fit"):
        restored.extend(["x", "y", "z"])
