"""How the worker process uses its cores and answers signals."""

from __future__ import annotations

import os
import signal
import threading


def set_training_threads() -> int:
    """Leave one core to the ingestion thread: torch gets the others (at least one).

    Two torch threads next to a busy Python thread on two cores slow each other
    down, because torch's workers spin while they wait for the core.
    """
    import torch

    threads = max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)
    return threads


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
