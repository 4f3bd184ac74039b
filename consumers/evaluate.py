"""``recallstream eval offline``: train from scratch and score a published offline protocol.

``--protocol recbole`` (per-user 8:1:1 split, early stopping on validation
MRR@10, full ranking with seen items masked) or ``--protocol tfrs`` (80,000 /
20,000 shuffled split, top-K share, nothing masked); both print the model's
metrics, the most-popular baseline on the same split (``popularity_`` keys)
and the settings used. ``--ablation`` runs the protocol once per variant (the
in-batch softmax with logQ, then from it: logQ off, each
other loss, DAT on, a linear projection, the feature towers with and without
history) and prints the headline metrics of each. ``eval stream`` is in
:mod:`recallstream.consumers.eval_stream`.
"""

from __future__ import annotations

import dataclasses
import time

from recallstream.consumers.usage import load_dataset, positive_int

PROTOCOLS = ("recbole", "tfrs")
ABLATIONS = ("default", "in_batch", "no_log_q", "triplet_hinge", "triplet_logistic", "pointwise",
             "contrastive", "dat", "linear_projection", "features", "features_history")
HEADLINE = {"recbole": ("recall@10", "ndcg@10", "mrr@10"), "tfrs": ("top10", "top50", "top100")}


def add_parser(subparsers) -> None:
    from recallstream.consumers import eval_stream

    group = subparsers.add_parser("eval", help="evaluate the model (offline protocols, stream replay)")
    commands = group.add_subparsers(dest="eval_command", required=True, metavar="WHAT")
    eval_stream.add_parser(commands, subparsers.settings_parent)
    parser = commands.add_parser(
        "offline", parents=[subparsers.settings_parent],
        help="train from scratch and score the recbole or tfrs protocol on MovieLens")
    parser.add_argument("--dataset", default="ml-100k", help="ml-100k (default) or ml-1m")
    parser.add_argument("--data-dir", default=None, help="folder with the dataset files")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="recbole")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="recbole: maximum epochs (early stopping); tfrs: epochs")
    parser.add_argument("--ablation", nargs="*", choices=ABLATIONS, default=None,
                        help="run these variants (all when none is named) and print their metrics")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args, settings) -> int:
    from recallstream.consumers.cli import print_json

    variants = None if args.ablation is None else (args.ablation or list(ABLATIONS))
    if variants is None:
        result = evaluate(args, settings, "default")
    else:
        result = {"protocol": args.protocol, "variants": {}}
        for variant in variants:
            figures = evaluate(args, settings, variant)
            keys = HEADLINE[args.protocol]
            result["variants"][variant] = {
                **{key: figures[key] for key in keys},
                **{f"popularity_{key}": figures[f"popularity_{key}"] for key in keys},
                "seconds": figures["settings"]["seconds"],
                **({"best_epoch": figures["settings"]["best_epoch"]}
                   if "best_epoch" in figures["settings"] else {}),
            }
    if args.json:
        print_json(result)
    else:
        _print_table(result)
    return 0


def evaluate(args, settings, variant: str) -> dict:
    """Run ``args.protocol`` with the model of ``variant``; the figures and settings used."""
    from recallstream.model.offline import (Interactions, OfflineSettings, run_recbole_protocol,
                               run_tfrs_protocol)

    data = load_dataset(args.dataset, args.data_dir)
    interactions = Interactions(data.ratings["user_id"], data.ratings["item_id"],
                                data.ratings["timestamp"])
    setup = protocol_setup(args.protocol, variant)
    epochs = setup.epochs if args.epochs is None else args.epochs
    loop = OfflineSettings(seed=settings.seed, progress=not args.no_progress,
                           history_dropout=setup.history_dropout)
    started = time.perf_counter()
    common = dict(users=data.users, items=data.items, catalog=sorted(data.items),
                  model_config=setup.model, train_config=setup.train, settings=loop)
    if args.protocol == "recbole":
        figures = run_recbole_protocol(interactions, max_epochs=epochs, patience=setup.patience,
                                       **common)
    else:
        figures = run_tfrs_protocol(interactions, epochs=epochs, **common)
    figures["settings"].update(dataset=args.dataset, variant=variant,
                               seconds=round(time.perf_counter() - started, 1))
    return figures


@dataclasses.dataclass(frozen=True)
class ProtocolSetup:
    """What one protocol run trains: model, loss and optimizer, epoch budget, history dropout."""

    model: object  # model.towers.TowerConfig (imported lazily, as torch is)
    train: object  # model.train_step.TrainConfig
    epochs: int
    patience: int
    history_dropout: float = 0.0


def protocol_setup(protocol: str, variant: str = "default") -> ProtocolSetup:
    """The model, training and epoch budget of a protocol run and variant.

    The default is the best configuration measured on MovieLens-100K for each
    protocol. recbole: ids only as 256-d cosine embeddings without MLP, trained
    with a softmax over the whole catalogue (1,682 items: no sampling, so no
    logQ), one step per epoch over all users. tfrs: the MovieLens feature towers
    (one linear layer, no history) with the in-batch softmax and logQ. The
    recbole variants change one thing each from ``in_batch``, the recbole model
    trained with the in-batch softmax and logQ.
    """
    from recallstream.model.dat import DatConfig
    from recallstream.model.towers import movielens_config
    from recallstream.model.train_step import LOSSES, TrainConfig

    dim = 256
    full = movielens_config(output_dim=dim, hidden=())
    ids_only = full.without(*[s.name for s in full.user_features + full.item_features
                              if s.name not in ("user_id", "item_id")])
    in_batch = TrainConfig(temperature=0.2, sparse_lr=0.05, dense_lr=0.001)
    if protocol == "tfrs":
        # unmasked ranking: content features separate a user's taste better
        return ProtocolSetup(full.without("history"), in_batch, epochs=10, patience=0)
    no_mlp = dataclasses.replace(ids_only, hidden=None)
    if variant == "default":
        # full-batch steps: 300 epochs are 300 steps (about 15 s), validation picks the best
        catalog = dataclasses.replace(in_batch, loss="catalog_softmax", sparse_lr=0.01)
        return ProtocolSetup(no_mlp, catalog, epochs=300, patience=30)
    setup = ProtocolSetup(no_mlp, in_batch, epochs=40, patience=5)
    if variant == "no_log_q":
        return dataclasses.replace(setup, train=dataclasses.replace(in_batch, use_log_q=False))
    if variant in LOSSES and variant != "catalog_softmax":
        return dataclasses.replace(setup, train=dataclasses.replace(in_batch, loss=variant))
    if variant == "dat":
        # the augmented vector widens the input, so DAT needs a (linear) projection
        return dataclasses.replace(setup, model=dataclasses.replace(ids_only, augmented=True),
                                   train=dataclasses.replace(in_batch, dat=DatConfig(enabled=True)))
    if variant == "linear_projection":
        return dataclasses.replace(setup, model=ids_only)
    if variant == "features":
        return dataclasses.replace(setup, model=full.without("history"))
    if variant == "features_history":
        # MLP over all features plus the id embeddings added to its output; history dropout 0.5
        return dataclasses.replace(
            setup, model=movielens_config(output_dim=dim, hidden=(256,), residual_ids=True),
            history_dropout=0.5)
    if variant != "in_batch":
        raise ValueError(f"unknown variant {variant!r}")
    return setup


def _print_table(result: dict) -> None:
    if "variants" not in result:
        for key, value in result.items():
            if key != "settings":
                print(f"{key:<24} {value}")
        return
    for variant, figures in result["variants"].items():
        print(f"{variant:<18} " + "  ".join(f"{k}={v}" for k, v in figures.items()))
