"""``recallstream train``: train the towers from scratch on a dataset and write a snapshot.

Trains on every rating of the dataset for ``--epochs`` epochs with a model
variant of ``eval offline`` (by default the full feature towers with history),
shows a progress bar, and writes a
snapshot folder (weights with feature state, configs, data range) that
:func:`recallstream.model.snapshot.load_snapshot` reads back.
"""

from __future__ import annotations

from recallstream.consumers.evaluate import ABLATIONS
from recallstream.consumers.usage import load_dataset, positive_int


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", parents=[subparsers.settings_parent],
        help="train the two towers from scratch and write a snapshot")
    parser.add_argument("--dataset", default="ml-100k", help="ml-100k (default) or ml-1m")
    parser.add_argument("--data-dir", default=None, help="folder with the dataset files")
    parser.add_argument("--epochs", type=positive_int, default=10,
                        help="training epochs (default 10)")
    parser.add_argument("--out", default="var/snapshots/latest", help="snapshot folder to write")
    parser.add_argument("--variant", default="features_history", choices=ABLATIONS,
                        help="model variant of `eval offline --ablation` (default features_history:"
                             " content features keep new items retrievable before their first click;"
                             " variant default takes one full-catalogue step per epoch: give it"
                             " --epochs 100 or more)")
    parser.add_argument("--with-optimizer", action="store_true",
                        help="also save the optimizer state (twice the weights' size, for resuming)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(func=run)


def run(args, settings) -> int:
    from recallstream.consumers.cli import print_json
    from recallstream.consumers.evaluate import protocol_setup
    from recallstream.model.offline import Interactions, OfflineSettings, OfflineTrainer
    from recallstream.model.snapshot import save_snapshot

    data = load_dataset(args.dataset, args.data_dir)
    ratings = data.ratings
    interactions = Interactions(ratings["user_id"], ratings["item_id"], ratings["timestamp"])
    setup = protocol_setup("recbole", args.variant)
    train_config = setup.train
    trainer = OfflineTrainer(setup.model, train_config, users=data.users, items=data.items,
                             catalog=sorted(data.items),
                             settings=OfflineSettings(seed=settings.seed,
                                                      history_dropout=setup.history_dropout))
    trainer.fit_history(interactions)
    losses = [round(trainer.train_epoch(interactions), 4) for _ in range(args.epochs)]
    data_range = {
        "dataset": args.dataset, "source": data.source, "interactions": len(ratings),
        "first_timestamp": int(ratings["timestamp"].min()),
        "last_timestamp": int(ratings["timestamp"].max()),
    }
    path = save_snapshot(args.out, trainer.model, train_config=train_config,
                         optimizers=trainer.optimizers if args.with_optimizer else None,
                         data_range=data_range,
                         metadata={"epochs": args.epochs, "epoch_losses": losses,
                                   "seed": settings.seed, "variant": args.variant})
    summary = {"snapshot": str(path), "epochs": args.epochs, "epoch_losses": losses, **data_range}
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {path} ({args.epochs} epochs, final loss {losses[-1]})")
    return 0
