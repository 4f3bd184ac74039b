"""The joiner's Prometheus metrics, served on ``--joiner-metrics-port`` (0: off).

:class:`JoinerMetrics` turns the joiner's cumulative counters
(:attr:`ExampleJoiner.counters <recallstream.streaming.example_joiner.ExampleJoiner>`)
into increments of this process's counters, from a thread that looks every second:
the join itself never waits for Prometheus.

Examples
--------
>>> before = RECORDS.labels("clicks")._value.get()
>>> watcher = JoinerMetrics(lambda: {"exposures": 3, "clicks": 2, "examples": 2, "orphans": 1,
...                                  "dead_lettered": 0, "transactions": 1, "aborted": 0})
>>> watcher.observe(); RECORDS.labels("clicks")._value.get() - before
2.0
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from prometheus_client import Counter

RECORDS = Counter("recallstream_joiner_records_total", "Valid input records joined, by topic kind",
                  ["topic"])
EXAMPLES = Counter("recallstream_joiner_examples_total",
                   "Training examples produced, by outcome (matched to an exposure, or orphaned)",
                   ["outcome"])
DEAD_LETTERS = Counter("recallstream_joiner_dead_letters_total", "Input records dead-lettered")
TRANSACTIONS = Counter("recallstream_joiner_transactions_total", "Kafka transactions, by result",
                       ["result"])


class JoinerMetrics:
    """Exports a joiner's counters (see the module docstring)."""

    def __init__(self, counters: Callable[[], Mapping[str, int]]) -> None:
        self._counters = counters
        self._last: dict[str, int] = {}
        self._stop = threading.Event()

    def observe(self) -> None:
        now = dict(self._counters())
        last, self._last = self._last, now
        for name, counter in (("exposures", RECORDS.labels("exposures")),
                              ("clicks", RECORDS.labels("clicks")),
                              ("dead_lettered", DEAD_LETTERS),
                              ("transactions", TRANSACTIONS.labels("committed")),
                              ("aborted", TRANSACTIONS.labels("aborted"))):
            counter.inc(max(0, now.get(name, 0) - last.get(name, 0)))
        examples = now.get("examples", 0) - last.get("examples", 0)
        orphans = now.get("orphans", 0) - last.get("orphans", 0)
        EXAMPLES.labels("matched").inc(max(0, examples - orphans))
        EXAMPLES.labels("orphaned").inc(max(0, orphans))

    def start(self, port: int, host: str) -> None:
        """Serve /metrics on ``host:port`` and export every second until :meth:`stop`."""
        from recallstream.consumers.metrics import serve_metrics

        serve_metrics(port, host)
        threading.Thread(target=self._run, name="joiner-metrics", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.observe()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.observe()
