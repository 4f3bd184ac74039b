"""Cost of count^0.75 negative sampling per training step (update counts, then draw negatives).

Each step adds one batch of clicked ids (``--batch-size`` from the settings,
Zipf-distributed over ``--catalog`` ids) to the running counts and draws
``--negatives`` ids. Side by side in the same run: the sampler rebuilding its
table at every step (exact), rebuilding every ``--rebuild-every`` steps, and a
naive baseline recomputing ``count ** 0.75`` and calling ``Generator.choice``
with it at every step. The counts are warmed with one pass first, so every id
is known. Figures are medians over ``--runs`` runs of ``--steps`` steps.
"""

from __future__ import annotations

import statistics
import time

from recallstream.consumers.usage import positive_int


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=positive_int, default=50, help="training steps per run")
    parser.add_argument("--catalog", type=positive_int, default=100_000, help="distinct item ids")
    parser.add_argument("--negatives", type=positive_int, default=1024,
                        help="random negatives drawn per step")
    parser.add_argument("--rebuild-every", type=positive_int, default=10,
                        help="lazy rebuild period of the second variant")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of item ranks")


def run(args, settings) -> dict:
    import numpy as np

    from recallstream.consumers.bench import zipf_item_batches
    from recallstream.model.samplers import UnigramSampler

    batches = zipf_item_batches(settings.seed, args.catalog, args.steps, settings.batch_size,
                                args.zipf)
    catalog = [f"item-{i}" for i in range(args.catalog)]

    def sampler_steps(rebuild_every: int) -> float:
        sampler = UnigramSampler(rebuild_every=rebuild_every, seed=settings.seed)
        sampler.update(catalog)
        start = time.perf_counter()
        for batch in batches:
            sampler.update(batch)
            sampler.sample(args.negatives)
        return args.steps / (time.perf_counter() - start)

    def naive_steps() -> float:
        slot_of = {item_id: slot for slot, item_id in enumerate(catalog)}
        counts = np.ones(args.catalog)
        draw_rng = np.random.default_rng(settings.seed)
        start = time.perf_counter()
        for batch in batches:
            np.add.at(counts, [slot_of[i] for i in batch], 1.0)
            weights = counts ** 0.75
            draw_rng.choice(args.catalog, size=args.negatives, p=weights / weights.sum())
        return args.steps / (time.perf_counter() - start)

    exact = [sampler_steps(1) for _ in range(args.runs)]
    lazy = [sampler_steps(args.rebuild_every) for _ in range(args.runs)]
    naive = [naive_steps() for _ in range(args.runs)]
    return {
        "catalog": args.catalog,
        "batch_size": settings.batch_size,
        "negatives_per_step": args.negatives,
        "steps_per_s_exact": round(statistics.median(exact), 1),
        f"steps_per_s_rebuild_every_{args.rebuild_every}": round(statistics.median(lazy), 1),
        "steps_per_s_naive_choice": round(statistics.median(naive), 1),
        "speedup_exact_vs_naive": round(statistics.median(exact) / statistics.median(naive), 2),
        "runs": args.runs,
    }
