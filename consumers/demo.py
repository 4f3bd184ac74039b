"""``recallstream demo``: the main job end to end on embedded defaults.

1. uses the broker at ``KAFKA_BOOTSTRAP_SERVERS``, or starts the local one
   (and stops it at the end if it started it);
2. creates topics of its own for this run (deleted at the end);
3. replays MovieLens-100K into them at an accelerated rate, in a child process,
   while
4. the joiner (a child process) joins exposures and clicks into training
   examples, exactly once, and the worker trains on them with the embedded default
   index (Qdrant Edge in the run's checkpoint folder) and serves ``/metrics`` and ``/recall``;
5. prints a short report: clicks trained, dead letters, the rolling recall@50
   of each click against the model before it learned from it, and recall sets
   for a few users next to their recent history.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
import time
import uuid

import orjson

from recallstream.consumers.usage import CommandError, positive_int


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", parents=[subparsers.settings_parent],
                                   help="run the whole job on MovieLens-100K and report")
    parser.add_argument("--limit", type=positive_int, default=None, help="replay only N ratings")
    parser.add_argument("--rate", type=float, default=40_000.0,
                        help="replay rate in events/s (exposures + clicks)")
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
    from recallstream.model.vector_index import VectorIndex
    from recallstream.streaming.movielens import load_movielens

    dataset = load_movielens("ml-100k")
    plan = ReplayPlan(dataset, limit=args.limit)
    say(f"replaying {plan.num_clicks:,} clicks and {plan.num_exposures:,} exposures at "
        f"{args.rate:,.0f} events/s; the joiner turns them into examples and the worker "
        f"trains as they arrive "
        f"(metrics on http://127.0.0.1:{settings.metrics_port}/metrics)")
    index = VectorIndex.connect(settings.qdrant_location())
    started = time.monotonic()
    # The replay runs in its own process: producer and worker each get a core and a GIL.
    replay = subprocess.Popen(_replay_command(args, settings), stdout=subprocess.PIPE)
    joiner = JoinerProcess(settings, exit_when_idle_s=10.0)
    try:
        report = Worker(settings, WorkerOptions(exit_when_idle_s=10.0, progress=True),
                        index=index, upstream=joiner).run()
        sys.stderr.write("\n")
        replayed = orjson.loads(replay.communicate(timeout=60)[0])
        joined = joiner.stop()
        _print_report(report, replayed, joined, time.monotonic() - started, settings,
                      index, dataset, args.users.split(","))
    finally:
        if replay.poll() is None:
            replay.kill()
        joiner.stop()
        index.close()
    if not report["clicks_trained"] == plan.num_clicks == replayed["clicks"]:
        raise CommandError(f"{plan.num_clicks} clicks planned, {replayed['clicks']} replayed, "
                           f"{report['clicks_trained']} trained")
    return 0


def _replay_command(args, settings) -> list[str]:
    command = [sys.executable, "-m", "recallstream.consumers.cli", "replay", "--dataset", "ml-100k",
               "--rate", str(args.rate), "--json", "--no-progress"]
    if args.limit is not None:
        command += ["--limit", str(args.limit)]
    return command + settings.flags("bootstrap_servers", "topic_exposures", "topic_clicks",
                                    "topic_items", "topic_users", "topic_dead_letters",
                                    "topic_examples", "topic_joiner_state", "partitions", "seed")


def _print_report(report, replayed, joined, seconds, settings, index, dataset, user_ids) -> None:
    say("")
    say("report")
    say(f"  clicks replayed         {replayed['clicks']:>10,}  with {replayed['exposures']:,} exposures")
    say(f"  joiner                  {joined['examples']:>10,}  examples from {joined['records']:,} "
        f"records ({joined['orphans']:,} orphans, {joined['us_per_record']} µs of join work per record)")
    say(f"  clicks trained          {report['clicks_trained']:>10,}  in {report['batches']} batches")
    say(f"  dead letters            {report['dead_lettered'] + joined['dead_lettered']:>10,}")
    say(f"  rolling recall@50       {report['rolling_recall@50']:>10.3f}  "
        f"(last 5,000 clicks, each scored before training on it; "
        f"most-popular-so-far: {report['popularity_rolling_recall@50']:.3f})")
    say(f"  prequential recall@50   {report['prequential_recall@50']:>10.3f}  "
        f"(all clicks; most-popular-so-far: {report['popularity_prequential_recall@50']:.3f})")
    say(f"  training loss           {_loss(report['loss_first_batches']):>10}  (first 20 batches) -> "
        f"{_loss(report['loss_recent_batches'])} (latest 20)")
    say(f"  wall time               {seconds:>10.1f} s")
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
