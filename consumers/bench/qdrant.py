"""Upsert throughput and search latency of the vector index on the configured Qdrant.

For each catalog size, each run creates a fresh collection, upserts every item
(points/s), re-upserts 1,000 "changed" items as the worker does after a batch
(seconds), and times ``--queries`` top-``--limit`` searches (p50 and p99 in ms).
Figures are medians over ``--runs`` runs. The location is ``--qdrant``; the
default (``edge:``) is Qdrant Edge in a temporary folder, never the worker's index.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time

from recallstream.consumers.usage import positive_int


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", default="1682,50000",
                        help="comma-separated catalog sizes (default: ml-100k items and 50k)")
    parser.add_argument("--dim", type=positive_int, default=64, help="vector dimension")
    parser.add_argument("--queries", type=positive_int, default=100, help="searches per run")
    parser.add_argument("--limit", type=positive_int, default=100, help="top-k of each search")


def run(args, settings) -> dict:
    import numpy as np

    from recallstream.model.vector_index import VectorIndex

    rng = np.random.default_rng(settings.seed)
    figures: dict = {"qdrant": settings.qdrant if "://" not in settings.qdrant else "server",
                     "dim": args.dim, "limit": args.limit, "runs": args.runs}
    scratch = tempfile.mkdtemp(prefix="bench-qdrant-") if settings.qdrant == "edge:" else None
    location = f"edge:{scratch}" if scratch else settings.qdrant_location()
    index = VectorIndex.connect(location, settings.qdrant_api_key or None)
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            vectors = rng.normal(size=(size, args.dim)).astype(np.float32)
            queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
            runs = [_one_run(index, f"bench_{size}_{r}", vectors, queries, args.limit)
                    for r in range(args.runs)]
            for key in runs[0]:
                figures[f"{key}_{size}"] = round(statistics.median(r[key] for r in runs), 4)
    finally:
        index.close()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return figures


def _one_run(index, name, vectors, queries, limit) -> dict:
    ids = [str(i) for i in range(len(vectors))]
    index.ensure_collection(name, dim=vectors.shape[1])
    try:
        start = time.perf_counter()
        index.upsert(name, ids, vectors)
        upsert_s = time.perf_counter() - start

        changed = ids[: min(1000, len(ids))]
        start = time.perf_counter()
        index.upsert(name, changed, vectors[: len(changed)] * 2)
        changed_s = time.perf_counter() - start

        latencies = []
        for query in queries:
            start = time.perf_counter()
            index.search(name, query, limit=limit)
            latencies.append(time.perf_counter() - start)
    finally:
        index.delete_collection(name)
    latencies_ms = sorted(1000 * s for s in latencies)
    return {
        "upsert_points_per_s": len(ids) / upsert_s,
        "upsert_1000_changed_s": changed_s,
        "search_p50_ms": latencies_ms[len(latencies_ms) // 2],
        "search_p99_ms": latencies_ms[min(len(latencies_ms) - 1, int(0.99 * len(latencies_ms)))],
    }
