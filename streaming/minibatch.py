"""Group a stream into minibatches, emitted at a size OR after a timeout, whichever first.

Like faust's ``Stream.take(max_, within)``: a batch is ready when it holds
``size`` items, or when ``timeout_s`` seconds have passed since its *first*
item arrived, so a slow stream still trains promptly and a fast one trains on
full batches. The clock is injectable for tests.

Examples
--------
>>> now = [0.0]
>>> batcher = Minibatcher(size=3, timeout_s=1.0, clock=lambda: now[0])
>>> batcher.add_many([1, 2, 3, 4])
[[1, 2, 3]]
>>> batcher.poll()        # [4] is not full and not old enough
>>> now[0] = 1.5
>>> batcher.poll()
[4]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Minibatcher(Generic[T]):
    """Collect items into batches of ``size``, flushing a partial one after ``timeout_s``.

    Parameters
    ----------
    size : int
        Items per full batch (> 0).
    timeout_s : float
        A partial batch is ready this many seconds after its first item (>= 0).
    clock : callable, optional
        Monotonic seconds (default ``time.monotonic``).

    Examples
    --------
    >>> batcher = Minibatcher(size=2, timeout_s=10.0, clock=lambda: 0.0)
    >>> batcher.add("a"), batcher.add("b"), batcher.add("c")
    (None, ['a', 'b'], None)
    >>> len(batcher), batcher.pending(), batcher.flush(), batcher.flush()
    (1, ['c'], ['c'], None)
    """

    def __init__(self, size: int, timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not timeout_s >= 0:
            raise ValueError(f"timeout_s must be >= 0, got {timeout_s}")
        self.size = size
        self.timeout_s = timeout_s
        self._clock = clock
        self._items: list[T] = []
        self._first_at = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> list[T] | None:
        """Add one item; return the batch it completes (by size or timeout), if any."""
        if not self._items:
            self._first_at = self._clock()
        self._items.append(item)
        if len(self._items) >= self.size or self._expired():
            return self._take()
        return None

    def add_many(self, items: Iterable[T]) -> list[list[T]]:
        """Add items in order; return every batch they complete."""
        batches = []
        for item in items:
            batch = self.add(item)
            if batch is not None:
                batches.append(batch)
        return batches

    def pending(self) -> list[T]:
        """A copy of the items of the partial batch (saved with a checkpoint)."""
        return list(self._items)

    def extend(self, items: Iterable[T]) -> None:
        """Put items back into the partial batch (restoring a checkpoint); its
        timeout starts now. Raises ValueError if they would fill a batch."""
        items = list(items)
        if len(self._items) + len(items) >= self.size:
            raise ValueError(f"{len(self._items) + len(items)} items do not fit a partial batch "
                             f"of size {self.size}")
        if items and not self._items:
            self._first_at = self._clock()
        self._items.extend(items)

    def poll(self) -> list[T] | None:
        """The partial batch if its timeout has passed (call it when no item arrives)."""
        if self._items and self._expired():
            return self._take()
        return None

    def time_left(self) -> float | None:
        """Seconds until the partial batch times out (0 if due), or None if empty.

        Useful as the consumer's poll timeout, so a partial batch is not held longer.
        """
        if not self._items:
            return None
        return max(0.0, self._first_at + self.timeout_s - self._clock())

    def flush(self) -> list[T] | None:
        """The partial batch now, whatever its size or age (None if empty)."""
        return self._take() if self._items else None

    def _expired(self) -> bool:
        return self._clock() - self._first_at >= self.timeout_s

    def _take(self) -> list[T]:
        batch, self._items = self._items, []
        return batch
