"""Latency of recall calls (Recaller API and GET /recall) per embedded backend and catalog size.

For each backend (``memory``: qdrant-client's local mode; ``edge``: Qdrant Edge
in a temporary folder; ``server``: ``QDRANT_URL`` when set) and each catalog
size, fills ``items`` with synthetic unit vectors (with categories) and
``users`` with ``--users`` users, then times ``--queries`` recalls of a random
user's top ``--limit`` through :class:`~recallstream.model.recall.Recaller`
(``api``) and through the worker's HTTP endpoint on a free port (``http``: one
connection per request, as ``curl`` would). Reports p50 and p99 in ms, and the
upsert rate while filling. ``--runs`` is ignored: one fill per backend and size.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import urllib.request

from recallstream.consumers.usage import UsageError, positive_int

BACKENDS = ("memory", "edge", "server")


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated catalog sizes")
    parser.add_argument("--backends", default="memory,edge",
                        help="comma-separated, of memory, edge, server (server: QDRANT_URL; "
                             "added by default when QDRANT_URL is set)")
    parser.add_argument("--dim", type=positive_int, default=64, help="vector dimension")
    parser.add_argument("--users", type=positive_int, default=100, help="users to recall for")
    parser.add_argument("--queries", type=positive_int, default=200, help="recalls per measure")
    parser.add_argument("--limit", type=positive_int, default=10, help="k of each recall")
    parser.add_argument("--edge-optimize", action="store_true",
                        help="Qdrant Edge: run its optimizers (build the HNSW index) after the "
                             "fill, before measuring; reports edge_optimize_s")


def run(args, settings) -> dict:
    backends = [b for b in args.backends.split(",") if b]
    if os.environ.get("QDRANT_URL") and "server" not in backends and args.backends == "memory,edge":
        backends.append("server")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise UsageError(f"unknown backend(s) {unknown}; expected some of {list(BACKENDS)}")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        raise UsageError(f"--sizes must be comma-separated integers, got {args.sizes!r}") from None
    figures: dict = {"dim": args.dim, "limit": args.limit, "queries": args.queries}
    for backend in backends:
        for size in sizes:
            for key, value in _measure(backend, size, args, settings).items():
                figures[f"{backend}_{key}_{size}"] = round(value, 4)
    return figures


def _measure(backend: str, size: int, args, settings) -> dict:
    import numpy as np

    from recallstream.consumers import http_server
    from recallstream.consumers.local_kafka import free_port
    from recallstream.model.recall import Recaller
    from recallstream.model.vector_index import VectorIndex

    rng = np.random.default_rng(settings.seed)
    folder = tempfile.mkdtemp(prefix="bench-recall-")
    suffix = f"{os.getpid()}_{size}"
    items, users = f"bench_items_{suffix}", f"bench_users_{suffix}"
    location = {"memory": ":memory:", "edge": f"edge:{folder}",
                "server": os.environ.get("QDRANT_URL", "")}[backend]
    index = VectorIndex.connect(location, os.environ.get("QDRANT_API_KEY") or None,
                                batch_size=1000)
    port = free_port()
    try:
        index.ensure_collection(items, dim=args.dim)
        index.ensure_collection(users, dim=args.dim)
        vectors = rng.normal(size=(size, args.dim)).astype(np.float32)
        started = time.perf_counter()
        index.upsert(items, [str(i) for i in range(size)], vectors,
                     [{"categories": [f"c{i % 20}"], "model_version": 1} for i in range(size)])
        upsert_rate = size / (time.perf_counter() - started)
        extra = {}
        if backend == "edge" and args.edge_optimize:
            started = time.perf_counter()
            index.client.optimize(items)
            extra["optimize_s"] = time.perf_counter() - started
        user_ids = [f"u{u}" for u in range(args.users)]
        index.upsert(users, user_ids, rng.normal(size=(args.users, args.dim)),
                     [{"model_version": 1, "recent_items": [str(i) for i in
                                                            rng.integers(0, size, 20)]}
                      for _ in user_ids], kind="user")
        recaller = Recaller(index, items, users)
        picks = [user_ids[i] for i in rng.integers(0, args.users, args.queries)]
        api = _latencies(lambda user: recaller.recall(user, args.limit), picks)
        http_server.serve(port)
        http_server.attach(port, recaller)
        url = f"http://127.0.0.1:{port}/recall?k={args.limit}&user_id="
        http = _latencies(lambda user: urllib.request.urlopen(url + user, timeout=10).read(), picks)
    finally:
        http_server.attach(port, None)
        if backend == "server":
            for name in (items, users):
                index.delete_collection(name)
        index.close()
        shutil.rmtree(folder, ignore_errors=True)
    return {"upsert_points_per_s": upsert_rate, **extra,
            "api_p50_ms": _pct(api, 50), "api_p99_ms": _pct(api, 99),
            "http_p50_ms": _pct(http, 50), "http_p99_ms": _pct(http, 99)}


def _latencies(call, users) -> list[float]:
    call(users[0])  # warm up
    out = []
    for user in users:
        started = time.perf_counter()
        call(user)
        out.append(1000 * (time.perf_counter() - started))
    return out


def _pct(values: list[float], q: int) -> float:
    """Nearest-rank percentile.

    >>> _pct([1.0, 2.0, 3.0, 4.0], 50), _pct(list(range(1, 101)), 99)
    (2.0, 99)
    """
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, -(-q * len(ordered) // 100) - 1))]
