"""Throughput of the streaming popularity estimator (ids/s of update and probability).

The stream is a seeded Zipf draw of string item ids from a catalog, cut into
batches of ``--batch-size`` ids (the worker setting), one estimator step per batch as in the worker.
The first pass over the stream hashes every new id ("cold"); later passes find
the ids in the estimator's key cache, the steady state of a worker whose catalog
is known. Each figure is the median over ``--runs`` passes.
"""

from __future__ import annotations

import statistics
import time

from recallstream.consumers.usage import positive_int


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=positive_int, default=300, help="steps per run")
    parser.add_argument("--catalog", type=positive_int, default=50_000, help="distinct item ids")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of item ranks")
    parser.add_argument("--num-buckets", type=positive_int, default=1 << 20,
                        help="buckets per hash")
    parser.add_argument("--num-hashes", type=positive_int, default=1, help="hash functions")
    parser.add_argument("--alpha", type=float, default=0.01, help="gap learning rate")


def run(args, settings) -> dict:
    from recallstream.consumers.bench import zipf_item_batches
    from recallstream.streaming.popularity import FrequencyEstimator

    batches = zipf_item_batches(settings.seed, args.catalog, args.steps, settings.batch_size,
                                args.zipf)
    ids_per_run = args.steps * settings.batch_size

    estimator = FrequencyEstimator(args.num_buckets, args.alpha, args.num_hashes,
                                   seed=settings.seed)
    cold = ids_per_run / _seconds(estimator.update, batches)
    update = [ids_per_run / _seconds(estimator.update, batches) for _ in range(args.runs)]
    probability = [ids_per_run / _seconds(estimator.probability, batches) for _ in range(args.runs)]
    return {
        "update_ids_per_s": round(statistics.median(update)),
        "probability_ids_per_s": round(statistics.median(probability)),
        "update_cold_ids_per_s": round(cold),
        "batch_size": settings.batch_size,
        "catalog": args.catalog,
        "num_hashes": args.num_hashes,
        "runs": args.runs,
    }


def _seconds(method, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        method(batch)
    return time.perf_counter() - start
