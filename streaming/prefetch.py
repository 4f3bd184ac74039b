"""Run ingestion in a thread of its own, ahead of training, without losing exactly-once.

Fetching, decoding and joining are Python work; a training step spends most of
its time in torch kernels, which release the GIL. :class:`Prefetcher` polls a
:class:`~recallstream.streaming.ingest.StreamIngestor` in a background thread and queues
each poll's :class:`~recallstream.streaming.ingest.Ingested` result, in order, for the
trainer, so that the two overlap on two cores.

The ingestor's offsets and join state run ahead of the trainer by whatever
sits in the queue. A checkpoint needs them to agree, so
:meth:`Prefetcher.paused` stops the thread between two polls and hands the
caller everything still queued: once the caller has consumed it, the
ingestor's state describes exactly what the trainer has seen. The order of
the results never depends on the thread's timing, so neither does training.

The consumer is used only by the thread, except while paused (commits,
checkpoints), because kafka-python's consumer is not thread-safe.

Examples
--------
With any object that has ``poll(timeout_s)`` and ``caught_up()``:

>>> class Numbers:
...     def __init__(self): self.n = 0
...     def poll(self, timeout_s):
...         self.n += 1
...         return self.n
...     def caught_up(self): return False
>>> prefetcher = Prefetcher(Numbers(), max_queued=3)
>>> prefetcher.start()
>>> [prefetcher.get(timeout_s=5) for _ in range(3)]
[1, 2, 3]
>>> with prefetcher.paused() as queued:
...     position = 3 + len(queued)
...     queued == list(range(4, position + 1))
True
>>> prefetcher.get(timeout_s=5) == position + 1
True
>>> prefetcher.close()
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any


log = logging.getLogger(__name__)


class StalledIngestion(RuntimeError):
    """Reading stopped: the polling thread is stuck inside one poll, or the reading process
    is gone (restart from the checkpoint)."""


class Prefetcher:
    """Background poller with a bounded, ordered queue (see the module docstring).

    Parameters
    ----------
    ingestor : StreamIngestor (or anything with ``poll(timeout_s)`` and ``caught_up()``)
    max_queued : int
        Polls queued at most; the thread waits when the trainer is this far behind.
    poll_timeout_s : float
        Timeout of each poll (how quickly a pause or close is noticed).
    wake_after_s : float
        A poll still running after this long is woken with the ingestor's
        ``unstick()``, if it has one (kafka-python 3.0.12 polls were seen to hang
        under heavy load; see :meth:`recallstream.streaming.ingest.StreamIngestor.unstick`).
    stall_timeout_s : float
        A poll that has not returned after this long is a stall: :meth:`get`
        raises instead of waiting forever, so the process can restart from its
        checkpoint.
    clock : callable, default time.monotonic
        Seconds, for how long a poll has run (tests pass a clock they advance).
    """

    def __init__(self, ingestor: Any, max_queued: int = 32, poll_timeout_s: float = 0.1,
                 wake_after_s: float = 5.0, stall_timeout_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self.ingestor = ingestor
        self.max_queued = max_queued
        self.poll_timeout_s = poll_timeout_s
        self.wake_after_s = wake_after_s
        self.stall_timeout_s = stall_timeout_s
        self._clock = clock
        self.wakes = 0  # stuck polls woken so far
        self._poll_started = 0.0
        self._woken = False
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._pause_requests = 0
        self._polling = False
        self._closed = False
        self._error: BaseException | None = None
        self._caught_up = False
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def get(self, timeout_s: float) -> Any:
        """The next poll result, or None if none comes within ``timeout_s``.

        Re-raises an error of the polling thread (e.g. a dead letter that could not
        be delivered), after which the caller restarts from its checkpoint.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._error is not None, timeout=timeout_s)
            if self._queue:
                item = self._queue.popleft()
                self._cond.notify_all()
                return item
            self._raise_error()
            polling_for = self._clock() - self._poll_started if self._polling else 0.0
            if polling_for > self.stall_timeout_s:
                raise StalledIngestion(f"a Kafka poll has not returned for {self.stall_timeout_s} s")
            wake = polling_for > self.wake_after_s and not self._woken
            if wake:
                self._woken = True
        if wake and getattr(self.ingestor, "unstick", None) is not None:
            log.warning("a Kafka poll has run for %.0f s; waking it", polling_for)
            if self.ingestor.unstick():
                self.wakes += 1
        return None

    def caught_up(self) -> bool:
        """True when nothing is queued and the last poll found every partition at its end."""
        with self._cond:
            return not self._queue and self._caught_up

    def wait_until_full(self, timeout_s: float) -> bool:
        """Wait until ``max_queued`` results are queued and no poll runs, i.e. until the
        thread waits for the trainer; False if that does not happen within ``timeout_s``."""
        with self._cond:
            return self._cond.wait_for(
                lambda: len(self._queue) >= self.max_queued and not self._polling,
                timeout=timeout_s)

    @contextlib.contextmanager
    def paused(self) -> Iterator[list]:
        """Stop polling; yield the queued results (the caller must consume them all).

        The caller may move the ingestor meanwhile (a rewind): :meth:`caught_up` is
        false from the start of the pause (other threads may ask during it) until a
        poll after the pause finds every partition at its end.
        """
        with self._cond:
            self._pause_requests += 1
            self._cond.wait_for(lambda: not self._polling)
            self._caught_up = False
            queued = list(self._queue)
            self._queue.clear()
            self._raise_error()
        try:
            yield queued
        finally:
            with self._cond:
                self._pause_requests -= 1
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def _raise_error(self) -> None:
        if isinstance(self._error, StalledIngestion):  # says what stopped and what to do
            raise StalledIngestion(str(self._error)) from self._error
        if self._error is not None:
            raise RuntimeError("the ingestion thread failed") from self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or (
                    not self._pause_requests and len(self._queue) < self.max_queued))
                if self._closed:
                    return
                self._polling = True
                self._poll_started = self._clock()
                self._woken = False
            try:
                result = self.ingestor.poll(timeout_s=self.poll_timeout_s)
                caught_up = self.ingestor.caught_up()
            except BaseException as error:  # handed to the trainer by get()/paused()
                with self._cond:
                    self._error = error
                    self._polling = False
                    self._cond.notify_all()
                return
            with self._cond:
                if getattr(result, "records", None) != 0:  # an empty poll is not worth a slot
                    self._queue.append(result)
                self._caught_up = caught_up
                self._polling = False
                self._cond.notify_all()
