"""``recallstream bench NAME``: benchmark commands that print figures as JSON.

Each benchmark lives in its own module exposing ``add_arguments(parser)`` and
``run(args, settings) -> dict``; this module routes to them and holds the
synthetic click stream several of them draw (:func:`zipf_item_batches`).
Benchmarks report medians over several runs and, where there is one, a baseline
measured in the same run, because the machines are shared and noisy.
"""

from __future__ import annotations

import importlib

from recallstream.consumers.usage import positive_int

# benchmark name -> module; each module has add_arguments(parser) and run(args, settings) -> dict
BENCHMARKS: dict[str, str] = {
    "pipeline": "recallstream.consumers.bench.pipeline",
    "freshness": "recallstream.consumers.bench.freshness",
    "broker": "recallstream.consumers.bench.broker",
    "popularity": "recallstream.consumers.bench.popularity",
    "qdrant": "recallstream.consumers.bench.qdrant",
    "decode": "recallstream.consumers.bench.decode",
    "sampler": "recallstream.consumers.bench.sampler",
    "replay": "recallstream.consumers.bench.replay",
    "train": "recallstream.consumers.bench.train",
    "recall": "recallstream.consumers.bench.recall",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and print its figures")
    names = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        sub = names.add_parser(name, parents=[subparsers.settings_parent],
                               help=(module.__doc__ or "").strip().splitlines()[0])
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        sub.add_argument("--runs", type=positive_int, default=5,
                         help="repetitions; the median is reported")
        module.add_arguments(sub)
        sub.set_defaults(func=_runner(module))


def _runner(module):
    def run(args, settings) -> int:
        from recallstream.consumers.cli import print_report

        print_report(module.run(args, settings), args.json)
        return 0
    return run


def zipf_item_batches(seed: int, catalog: int, steps: int, batch_size: int,
                      exponent: float) -> list[list[str]]:
    """``steps`` batches of ``batch_size`` ids ``item-<rank>``, ranks drawn from a Zipf law.

    Examples
    --------
    >>> batches = zipf_item_batches(0, catalog=100, steps=3, batch_size=4, exponent=1.1)
    >>> len(batches), len(batches[0]), batches[0][0].startswith("item-")
    (3, 4, True)
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    ranks = np.arange(1, catalog + 1, dtype=np.float64)
    shares = ranks ** -exponent / np.sum(ranks ** -exponent)
    drawn = rng.choice(catalog, size=(steps, batch_size), p=shares)
    return [[f"item-{i}" for i in row] for row in drawn.tolist()]
