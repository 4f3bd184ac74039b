"""``recallstream checkpoint inspect``: what the newest checkpoint holds."""

from __future__ import annotations

from recallstream.consumers.usage import CommandError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("checkpoint", help="look into the worker's checkpoints")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    inspect = actions.add_parser("inspect", parents=[subparsers.settings_parent],
                                 help="print the newest checkpoint's offsets and counters")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(func=run_inspect)


def summarize(state: dict, path: str) -> dict:
    """The fields `checkpoint inspect` prints, from a loaded worker checkpoint."""
    counters = state["counters"]
    ingest = state["ingest"]
    return {
        "path": path,
        "offsets": {topic: {int(p): o for p, o in parts.items()}
                    for topic, parts in state["offsets"].items()},
        "clicks_trained": counters["clicks_trained"],
        "examples_seen": ingest["seen"].get("examples", 0),
        "dead_lettered": sum(ingest["dead_lettered"].values()),
        "batches": counters["batches"],
        "model_version": counters["batches"],
        "snapshot_version": (state.get("snapshot") or {}).get("version"),
        "resets": (state.get("snapshot") or {}).get("resets", 0),
        "clicks_since_snapshot": counters.get("clicks_since_snapshot", counters["clicks_trained"]),
        "created_at": state["created_at"],
    }


def run_inspect(args, settings) -> int:
    from recallstream.consumers.cli import print_report
    from recallstream.model.checkpoint import CheckpointStore

    store = CheckpointStore(settings.checkpoint_dir)
    paths = store.paths()
    state = store.load_latest()
    if state is None:
        raise CommandError(f"no checkpoint in {settings.checkpoint_dir}")
    print_report(summarize(state, str(paths[-1])), args.json)
    return 0
