"""Training throughput (samples/s) of the default two-tower model, sparse-aware vs dense optimizers.

Times :func:`recallstream.model.train_step.train_step` on pre-encoded batches of the default
MovieLens model (batch 1024: the ``--batch-size`` setting) with users and items drawn
from a large synthetic id space, so the embedding tables are as big as in
production. The sparse-aware run updates embedding rows with ``SparseAdam``
(only rows in the batch) and the rest with ``AdamW``; the baseline in the same
run uses dense embedding gradients and ``AdamW`` over every row.
"""

from __future__ import annotations

import statistics
import time

from recallstream.consumers.usage import positive_int


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=positive_int, default=20, help="timed steps per run")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads")


def run(args, settings) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    sparse = [_samples_per_s(args, settings, dense=False) for _ in range(args.runs)]
    dense = [_samples_per_s(args, settings, dense=True) for _ in range(args.runs)]
    return {
        "train_samples_per_s": round(statistics.median(sparse), 1),
        "dense_optimizer_samples_per_s": round(statistics.median(dense), 1),
        "speedup": round(statistics.median(sparse) / statistics.median(dense), 2),
        "batch_size": settings.batch_size, "steps_per_run": args.steps, "runs": args.runs,
        "threads": args.threads, "model": "movielens_config() defaults",
    }


def _samples_per_s(args, settings, *, dense: bool) -> float:
    import dataclasses

    import numpy as np
    import torch

    from recallstream.model.towers import TwoTower, movielens_config
    from recallstream.model.train_step import Batch, Optimizers, TrainConfig, train_step

    seed = settings.seed
    torch.manual_seed(seed)
    config = movielens_config()
    if dense:
        config = dataclasses.replace(
            config, user_features=tuple(_dense(s) for s in config.user_features),
            item_features=tuple(_dense(s) for s in config.item_features))
    model = TwoTower(config)
    train_config = TrainConfig()
    optimizers = Optimizers(model, train_config)
    batches = [_batch(model, np.random.default_rng(seed + k), settings.batch_size) for k in range(4)]
    train_step(model, optimizers, batches[0], train_config)  # warm-up: allocations, optimizer state
    started = time.perf_counter()
    for step in range(args.steps):
        train_step(model, optimizers, batches[step % len(batches)], train_config)
    return args.steps * settings.batch_size / (time.perf_counter() - started)


def _dense(spec):
    import dataclasses

    return dataclasses.replace(spec, sparse=False) if hasattr(spec, "sparse") else spec


def _batch(model, rng, size: int):
    import torch

    from recallstream.model.train_step import Batch

    genres = ["Action", "Comedy", "Drama", "Thriller", "Romance", "Sci-Fi"]
    user_ids = [f"u{k}" for k in rng.integers(0, 100_000, size)]
    item_ids = [f"i{k}" for k in rng.zipf(1.3, size) % 50_000]
    users = {u: {"age": int(rng.integers(10, 70)), "gender": "MF"[int(rng.integers(2))],
                 "occupation": "writer", "zip_code": f"{int(rng.integers(99999)):05d}"}
             for u in user_ids}
    items = {i: {"title": f"movie {i}", "release_year": int(rng.integers(1930, 2000)),
                 "genres": list(rng.choice(genres, 2, replace=False))} for i in item_ids}
    histories = [[f"i{k}" for k in rng.integers(0, 50_000, 50)] for _ in user_ids]
    codes = torch.tensor([int(i[1:]) for i in item_ids])
    counts = torch.bincount(codes, minlength=50_000).float()
    return Batch(user_inputs=model.encode_users(user_ids, users, histories),
                 item_inputs=model.encode_items(item_ids, items), item_ids=codes,
                 log_q=torch.log(counts[codes] / size))
