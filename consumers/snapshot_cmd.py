"""``recallstream snapshot``: a full training on the last days of examples, published as a version.

One run (cron or the compose file's loop call it daily):

1. reads the examples of the last ``--snapshot-days`` of event time from ``examples``
   up to the cut, the end offsets at its start
   (:func:`recallstream.streaming.example_window.read_window`, ``read_committed``);
2. reads the item and user features of the compacted ``items`` and ``users`` topics;
3. trains a learner of the worker's configuration, warm-started from the current
   snapshot's weights (``--snapshot-warm-start``, default 1), for ``--snapshot-epochs``
   (:func:`recallstream.model.snapshot_training.train_full`: the training of the stream
   evaluation's snapshot policy), with a progress bar on stderr;
4. publishes it into ``--snapshot-dir`` as the next version
   (:class:`recallstream.model.snapshot_store.SnapshotStore`), with the cut offsets.

Any failure (no broker, no examples, a read that stalls, another job publishing)
exits non-zero with one line on stderr, and the current snapshot stays current.
"""

from __future__ import annotations

import sys
import time

from recallstream.consumers.usage import CommandError, UsageError, require_broker
from recallstream.streaming.settings import Settings


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "snapshot", parents=[subparsers.settings_parent],
        help="train a full snapshot on the last days of examples and make it the current version")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=run)


def run(args, settings: Settings) -> int:
    """The command: 0 once the new version is current; 1 on failure; 2 without a broker."""
    from recallstream.consumers.cli import print_report

    require_broker(settings)
    print_report(take_snapshot(settings, progress=not args.no_progress), args.json)
    return 0


def take_snapshot(settings: Settings, *, progress: bool = False) -> dict:
    """Read, train, publish; returns the summary (the ``--json`` output).

    Raises :class:`CommandError` (status 1) when there is nothing to train on or the
    broker fails, :class:`UsageError` (status 2) for bad settings or a missing topic.
    """
    from kafka.errors import KafkaError

    from recallstream.model.snapshot_store import EventRange, SnapshotError, SnapshotStore
    from recallstream.streaming.example_window import read_window

    started = time.perf_counter()
    _check(settings)
    store = SnapshotStore(settings.snapshot_dir, keep=settings.snapshot_keep)
    topic = settings.topic_examples
    try:
        window = read_window(settings, settings.snapshot_days)
        tables = _read_entities(settings)
    except ValueError as error:  # a missing topic
        raise UsageError(str(error)) from None
    except (KafkaError, TimeoutError) as error:
        raise CommandError(f"reading the examples failed ({error!r}); "
                           f"the current snapshot is unchanged") from None
    read_s = time.perf_counter() - started
    if not window.examples:
        raise CommandError(f"no examples in topic {topic!r} before the cut {window.cut}; "
                           f"the current snapshot is unchanged")
    learner, warm_from = _start_learner(store, settings)
    losses = _train(learner, window, tables, settings, progress)
    train_s = time.perf_counter() - started - read_s
    event_range = EventRange(first_ts=window.first_ts, last_ts=window.last_ts)
    metadata = {"days": settings.snapshot_days, "epochs": settings.snapshot_epochs,
                "batch_size": settings.snapshot_batch_size, "seed": settings.seed,
                "start_offsets": {topic: {str(p): o for p, o in window.starts.items()}},
                "steps": len(losses), "final_loss": losses[-1], "warm_start_from": warm_from,
                "items": len(tables.items),
                "users": len(tables.users)}
    try:
        version = store.publish(learner.state_dict(), cut_offsets={topic: window.cut},
                                event_range=event_range, examples=len(window.examples),
                                metadata=metadata)
    except (SnapshotError, OSError) as error:
        raise CommandError(f"publishing into {settings.snapshot_dir} failed: {error}") from None
    return {"version": version, "snapshot_dir": str(store.directory),
            "examples": len(window.examples), "records_read": window.records_read,
            "skipped": window.skipped,
            "event_range": {"first_ts": event_range.first_ts, "last_ts": event_range.last_ts,
                            "days": round(event_range.days, 6)},
            "cut_offsets": {topic: window.cut}, "start_offsets": {topic: window.starts},
            "items": len(tables.items), "users": len(tables.users),
            "epochs": settings.snapshot_epochs, "warm_start_from": warm_from, "steps": len(losses),
            "final_loss": round(losses[-1], 6),
            "read_s": round(read_s, 3), "train_s": round(train_s, 3),
            "seconds": round(time.perf_counter() - started, 3)}


def _check(settings: Settings) -> None:
    if not settings.snapshot_days > 0:
        raise UsageError(f"--snapshot-days must be positive, got {settings.snapshot_days}")
    if not settings.snapshot_epochs > 0:
        raise UsageError(f"--snapshot-epochs must be positive, got {settings.snapshot_epochs}")
    if settings.snapshot_batch_size < 1 or settings.snapshot_keep < 1:
        raise UsageError("--snapshot-batch-size and --snapshot-keep must be at least 1")


def _read_entities(settings: Settings):
    """The item and user tables as the compacted topics hold them now."""
    from recallstream.streaming.decoding import Invalid, decode
    from recallstream.streaming.entity_tables import EntityTables
    from recallstream.streaming.kafka_io import read_topic

    tables = EntityTables()
    for kind, topic in (("items", settings.topic_items), ("users", settings.topic_users)):
        changes = (decode(kind, r.key, r.value) for r in read_topic(settings, topic))
        tables.apply(c for c in changes if not isinstance(c, Invalid))
    return tables


def _start_learner(store, settings: Settings):
    """A learner of the worker's configuration, with the current snapshot's weights when
    ``snapshot_warm_start`` is 1 and the towers match (as the stream evaluation's snapshot
    policy: yesterday's model, trained again on the window); its version or None."""
    from recallstream.model.online import OnlineLearner

    learner = OnlineLearner(seed=settings.seed)
    previous = store.current() if settings.snapshot_warm_start else None
    if previous is None or not previous.fits(learner):
        return learner, None
    learner.load_weights(previous.learner())
    return learner, previous.version


def _train(learner, window, tables, settings: Settings, progress: bool) -> list[float]:
    from tqdm import tqdm

    from recallstream.model.snapshot_training import snapshot_steps, train_full

    steps = snapshot_steps(len(window.examples), settings.snapshot_epochs,
                           settings.snapshot_batch_size)
    with tqdm(total=steps, desc="snapshot", unit="step", file=sys.stderr,
              disable=not progress) as bar:
        losses = train_full(learner, [e.user_id for e in window.examples],
                            [e.item_id for e in window.examples], tables.users, tables.items,
                            epochs=settings.snapshot_epochs,
                            batch_size=settings.snapshot_batch_size, seed=settings.seed,
                            progress=lambda done: bar.update(1))
    return losses
