"""How the worker process uses its cores and memory, and answers signals."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
from collections.abc import Iterator


def set_training_threads() -> int:
    """Leave one core to the reading (its process, or its thread): torch gets the others
    (at least one), and numpy's BLAS (the prequential scores' products) one thread; the
    torch threads' number.

    Two torch threads next to a busy Python thread on two cores slow each other
    down, because torch's workers spin while they wait for the core. OpenBLAS's
    workers spin after every product too: in the worker, numpy's one extra BLAS
    thread burned about as much CPU as the training thread itself (measured with
    ``bench pipeline``), taken from the reading, the joiner and the broker.
    """
    import torch
    from threadpoolctl import threadpool_limits

    threads = max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)
    threadpool_limits(limits=1, user_api="blas")
    return threads


@contextlib.contextmanager
def frozen_heap() -> Iterator[int]:
    """Keep the objects alive on entry out of the cyclic garbage collector's walks until
    exit; yields how many were frozen.

    A worker's start-up leaves hundreds of thousands of long-lived objects (torch's and
    qdrant-client's modules, the model, the feature tables). Each full collection walked
    them all: about 0.3 s with the GIL held, a pause of training, reading and Qdrant
    writes alike, every few thousand clicks. Frozen objects are still freed when no
    longer referenced; only a reference cycle among them waits for the exit.

    Examples
    --------
    >>> with frozen_heap() as frozen:
    ...     print(frozen > 0, gc.get_freeze_count() > 0)
    True True
    >>> gc.get_freeze_count()
    0
    """
    gc.collect()  # start-up's garbage goes first
    gc.freeze()
    try:
        yield gc.get_freeze_count()
    finally:
        gc.unfreeze()


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (a graceful stop) instead of killing the process.

    Examples
    --------
    >>> stop = threading.Event()
    >>> previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    >>> stop_on_signals(stop); signal.raise_signal(signal.SIGTERM); stop.is_set()
    True
    >>> for signum, handler in previous.items(): _ = signal.signal(signum, handler)
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
