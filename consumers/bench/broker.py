"""Local broker start-up: seconds to a first answer, for a new data folder and a restart.

Each run starts a broker (:class:`recallstream.consumers.local_kafka.LocalBroker`) on a free
port in a new temporary folder (storage formatting included), stops it, starts
it again on the same folder (already formatted) and stops it. Figures are
medians over ``--runs`` runs of wall seconds from the call to ``start`` until
the broker answers a metadata request, and of ``stop``. ``jars_cached_s`` is
the time of :func:`recallstream.consumers.local_kafka.fetch_jars` when the jars are already
in the cache (what every start pays). Start-up is mostly JVM and Kafka
initialisation, so on a shared machine it varies with the load.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def add_arguments(parser) -> None:
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds allowed for one start")


def run(args, settings) -> dict[str, Any]:
    from recallstream.consumers.local_kafka import LocalBroker, fetch_jars, free_port, kafka_version

    fetch_jars(settings.kafka_cache_dir)
    began = time.perf_counter()
    jars = fetch_jars(settings.kafka_cache_dir)
    jars_cached_s = time.perf_counter() - began
    timings: dict[str, list[float]] = {"first_start_s": [], "restart_s": [], "stop_s": []}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-broker-") as folder:
            broker = LocalBroker(Path(folder) / "kafka", free_port(), jars)
            try:
                timings["first_start_s"].append(_timed(broker.start, args.timeout))
                timings["stop_s"].append(_timed(broker.stop))
                timings["restart_s"].append(_timed(broker.start, args.timeout))
                timings["stop_s"].append(_timed(broker.stop))
            finally:
                broker.stop()
    figures = {name: round(statistics.median(values), 2) for name, values in timings.items()}
    return {"kafka_version": kafka_version(), "runs": args.runs, **figures,
            "jars_cached_s": round(jars_cached_s, 4)}


def _timed(function, *args) -> float:
    began = time.perf_counter()
    function(*args)
    return time.perf_counter() - began
