"""``recallstream demo``: the main job end to end on embedded defaults.

1. uses the broker at ``KAFKA_BOOTSTRAP_SERVERS``, or starts the local one
   (and stops it at the end if it started it);
2. creates topics of its own for this run (deleted at the end);
3. replays MovieLens-100K into them at an accelerated rate, in two parts, each
   a child process, while
4. the joiner (a child process) joins exposures and clicks into training
   examples, exactly once, and the worker trains on them with the embedded default
   index (Qdrant Edge in the run's checkpoint folder) and serves ``/metrics`` and
   ``/recall``;
5. between the two parts, once the worker has trained the first, takes a
   snapshot (``recallstream snapshot``); the worker resets to it at the next
   event-day boundary of the second part and trains what followed the cut again
   on top of it;
6. prints a short report: clicks trained, dead letters, the snapshot and the
   reset, the rolling recall@50 of each click against the model before it
   learned from it (and a PNG of it over the run), and recall sets for a few
   users next to their recent history.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson

from recallstream.consumers.usage import CommandError, positive_int


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", parents=[subparsers.settings_parent],
                                   help="run the whole job on MovieLens-100K and report")
    parser.add_argument("--limit", type=positive_int, default=None, help="replay only N ratings")
    parser.add_argument("--rate", type=float, default=40_000.0,
                        help="replay rate in events/s (exposures + clicks)")
    parser.add_argument("--keep-running", action="store_true",
                        help="once the stream is trained, keep the worker (/metrics, /recall) "
                             "and the joiner up until Ctrl-C, then report")
    parser.add_argument("--users", default="1,196,405",
                        help="comma-separated user ids whose recall sets are shown")
    parser.set_defaults(func=run)


def run(args, settings) -> int:
    from recallstream.consumers.local_kafka import running_broker
    from recallstream.streaming.kafka_io import scratch_topics

    run_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    settings = dataclasses.replace(settings, qdrant="edge:",
                                   checkpoint_dir=tempfile.mkdtemp(prefix=f"{run_id}-ckpt-"))
    with running_broker(settings, say=say) as settings, scratch_topics(settings, run_id) as settings:
        say(f"topics of this run: {run_id}-{{exposures,clicks,examples,items,users,dead-letters}}")
        return _run_on_topics(args, settings)


def _run_on_topics(args, settings) -> int:
    from recallstream.consumers.joiner_process import JoinerProcess
    from recallstream.consumers.replay import ReplayPlan
    from recallstream.consumers.worker import Worker, WorkerOptions
    from recallstream.streaming.movielens import load_movielens

    dataset = load_movielens("ml-100k")
    plan = ReplayPlan(dataset, limit=args.limit)
    first = plan.num_clicks * 3 // 5  # the snapshot is taken after these; the rest follow it
    settings = dataclasses.replace(
        settings, snapshot_dir=str(Path(settings.checkpoint_dir) / "snapshots"),
        snapshot_check_s=1.0, reset_every_event_days=1.0)
    say(f"replaying {plan.num_clicks:,} clicks and {plan.num_exposures:,} exposures at "
        f"{args.rate:,.0f} events/s, in two parts ({first:,} clicks, a snapshot, the rest); the "
        f"joiner turns them into examples and the worker trains as they arrive")
    say(f"metrics: http://127.0.0.1:{settings.metrics_port}/metrics   recall: curl "
        f"'http://127.0.0.1:{settings.metrics_port}/recall?user_id={args.users.split(',')[0]}&k=10'")
    started = time.monotonic()
    joiner = JoinerProcess(settings)
    worker = Worker(settings, WorkerOptions(progress=True), upstream=joiner)
    thread = threading.Thread(target=worker.run, name="demo-worker")
    curve: list[tuple[int, float, float]] = []  # clicks trained, rolling recall@50, most popular
    replays = []
    try:
        thread.start()
        replays.append(_replay(args, settings, limit=first, skip=0))
        _wait(worker, thread, curve, lambda: worker.counters["clicks_trained"] >= first)
        sys.stderr.write("\n")
        snapshot = _take_snapshot(settings)
        replays.append(_replay(args, settings, limit=args.limit, skip=first))
        _wait(worker, thread, curve, lambda: worker.counters["clicks_trained"] >= plan.num_clicks
              and worker.follower.resets >= 1 and worker.prefetcher.caught_up())
        sys.stderr.write("\n")
        if args.keep_running:
            say("everything is up (Ctrl-C to stop): the worker, its /metrics and /recall, the joiner")
            _wait(worker, thread, curve, lambda: False)
    except KeyboardInterrupt:
        say("stopping")
    finally:
        worker.stop.set()
        thread.join()
        joined = joiner.stop()
    report = worker.report()
    plot = _plot(curve, Path(settings.checkpoint_dir) / "prequential_recall.png")
    _print_report(report, replays, joined, snapshot, time.monotonic() - started, settings,
                  dataset, args.users.split(","), plot)
    if not report["clicks_trained"] == plan.num_clicks == sum(r["clicks"] for r in replays):
        raise CommandError(f"{plan.num_clicks} clicks planned, {sum(r['clicks'] for r in replays)} "
                           f"replayed, {report['clicks_trained']} trained")
    return 0


def _replay(args, settings, limit, skip) -> dict:
    command = _replay_command(args, settings, limit) + ["--skip", str(skip)]
    return orjson.loads(subprocess.run(command, stdout=subprocess.PIPE, check=True).stdout)


def _replay_command(args, settings, limit) -> list[str]:
    command = [sys.executable, "-m", "recallstream.consumers.cli", "replay", "--dataset", "ml-100k",
               "--rate", str(args.rate), "--json", "--no-progress"]
    if limit is not None:
        command += ["--limit", str(limit)]
    return command + settings.flags("bootstrap_servers", "topic_exposures", "topic_clicks",
                                    "topic_items", "topic_users", "topic_dead_letters",
                                    "topic_examples", "topic_joiner_state", "partitions", "seed")


def _take_snapshot(settings) -> dict:
    # The first snapshot has no earlier one to start from: it trains on all examples so far.
    say("taking a snapshot: `recallstream snapshot` trains on every example so far")
    done = subprocess.run([sys.executable, "-m", "recallstream.consumers.cli", "snapshot", "--json",
                           "--snapshot-days", "3650",
                           *settings.flags("bootstrap_servers", "topic_examples", "topic_items",
                                           "topic_users", "snapshot_dir")],
                          stdout=subprocess.PIPE, check=True)
    snapshot = orjson.loads(done.stdout)
    say(f"snapshot v{snapshot['version']}: {snapshot['examples']:,} examples; the worker resets to "
        f"it at the next event-day boundary and trains what followed its cut again on top of it")
    return snapshot


def _wait(worker, thread, curve, done, timeout_s: float = 900.0) -> None:
    """Sample the worker's figures every second until ``done()`` (or the worker ended)."""
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and not done() and time.monotonic() < deadline:
        time.sleep(1.0)
        if worker.trainer is None:  # still starting
            continue
        report = worker.report()
        if report.get("rolling_recall@50") is not None:
            curve.append((report["clicks_trained"], report["rolling_recall@50"],
                          report["popularity_rolling_recall@50"]))
    if not thread.is_alive():
        raise CommandError("the worker stopped early; its error is above")


def _plot(curve, path: Path) -> Path | None:
    """The rolling prequential recall@50 of the model and of most-popular, as a PNG."""
    if not curve:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clicks, model, popular = zip(*curve)
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(clicks, model, label="two-tower (worker)")
    axes.plot(clicks, popular, label="most popular so far")
    axes.set_xlabel("clicks trained")
    axes.set_ylabel("rolling prequential recall@50")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _print_report(report, replays, joined, snapshot, seconds, settings, dataset, user_ids,
                  plot) -> None:
    say("")
    say("report")
    say(f"  clicks replayed         {sum(r['clicks'] for r in replays):>10,}  with "
        f"{sum(r['exposures'] for r in replays):,} exposures")
    say(f"  joiner                  {joined['examples']:>10,}  examples from {joined['records']:,} "
        f"records ({joined['orphans']:,} orphans, {joined['us_per_record']} µs of join work per record)")
    say(f"  clicks trained          {report['clicks_trained']:>10,}  in {report['batches']} batches")
    say(f"  dead letters            {report['dead_lettered'] + joined['dead_lettered']:>10,}")
    say(f"  snapshot                {'v' + str(snapshot['version']):>10}  ({snapshot['examples']:,} "
        f"examples); resets {report['resets']}, clicks trained on top of it "
        f"{report['clicks_since_snapshot']:,}")
    say(f"  rolling recall@50       {report['rolling_recall@50']:>10.3f}  "
        f"(last 5,000 clicks, each scored before training on it; "
        f"most-popular-so-far: {report['popularity_rolling_recall@50']:.3f})")
    say(f"  prequential recall@50   {report['prequential_recall@50']:>10.3f}  "
        f"(all clicks; most-popular-so-far: {report['popularity_prequential_recall@50']:.3f})")
    say(f"  training loss           {_loss(report['loss_first_batches']):>10}  (first 20 batches) -> "
        f"{_loss(report['loss_recent_batches'])} (latest 20)")
    say(f"  wall time               {seconds:>10.1f} s")
    if plot is not None:
        say(f"  recall over time        {plot}")
    from recallstream.model.vector_index import VectorIndex

    index = VectorIndex.connect(settings.qdrant_location())  # the worker has closed it
    history = _recent_history(dataset)
    for user_id in user_ids:
        recent = history.get(user_id, [])[-5:]
        say(f"\nuser {user_id}: last clicks")
        for item_id in recent:
            say(f"    {_title(dataset, item_id)}")
        say("  recall (top 10 from Qdrant, by user id alone):")
        try:
            hits = index.search_by_point_id(settings.collection_items, settings.collection_users,
                                            user_id, limit=10)
        except KeyError:
            say("    (no vector yet: the user has not clicked)")
            continue
        for item_id, score, _ in hits:
            say(f"    {score:5.3f}  {_title(dataset, item_id)}")
    index.close()
    say(f"\nwhere to look next: the checkpoints, snapshots and Qdrant Edge index of this run are in "
        f"{settings.checkpoint_dir}; `recallstream demo --keep-running` leaves the worker's "
        f"/metrics and /recall up")


def _loss(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _recent_history(dataset) -> dict[str, list[str]]:
    ratings = dataset.ratings[dataset.time_order()]
    history: dict[str, list[str]] = {}
    for user_id, item_id in zip(ratings["user_id"].tolist(), ratings["item_id"].tolist()):
        history.setdefault(user_id, []).append(item_id)
    return history


def _title(dataset, item_id: str) -> str:
    item = dataset.items.get(item_id, {})
    genres = ", ".join(item.get("genres") or [])
    return f"{item.get('title', item_id)}  [{genres}]"


def say(line: str) -> None:
    print(line, flush=True)
