"""``recallstream joiner``: the command line of
:class:`~recallstream.streaming.example_joiner.ExampleJoiner`.

Runs one joiner process of the group ``<consumer_group>-joiner``: start several (each
with its own ``--instance``) to spread the partitions. SIGTERM or SIGINT stop it after
the current transaction; a SIGKILL loses nothing (the next owner of its partitions
restores their join state from the state log). Exit status 0 when stopped or idle,
2 without a broker. ``--joiner-metrics-port`` serves its Prometheus metrics.
"""

from __future__ import annotations

from recallstream.consumers.thread_policy import stop_on_signals
from recallstream.consumers.usage import positive_int, require_broker
from recallstream.streaming.settings import Settings

def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "joiner", parents=[subparsers.settings_parent],
        help="join exposures and clicks into training examples, exactly once (Kafka transactions)")
    parser.add_argument("--instance", default="0",
                        help="this process's name in the group (its transactional id); a "
                             "restart reuses it (default: 0)")
    parser.add_argument("--exit-when-idle", type=float, default=None, metavar="S",
                        help="stop after S seconds with nothing to join, once the group has "
                             "assigned its partitions and it has read them to their end "
                             "(default: run forever)")
    parser.add_argument("--snapshot-every", type=positive_int, default=20, metavar="N",
                        help="snapshot a partition's join state every N transactions (default: 20)")
    parser.add_argument("--max-poll-records", type=positive_int, default=5000, metavar="N",
                        help="records per poll, hence per transaction, at most (default: 5000)")
    parser.add_argument("--session-timeout", type=float, default=10.0, metavar="S",
                        help="consumer-group session timeout: how soon a dead joiner's partitions "
                             "move (default: 10)")
    parser.add_argument("--max-poll-interval", type=float, default=300.0, metavar="S",
                        help="a joiner slower than this between two polls leaves the group and "
                             "its transaction aborts; its partitions move (default: 300)")
    parser.add_argument("--transaction-timeout", type=float, default=60.0, metavar="S",
                        help="how long a dead joiner's open transaction blocks its partitions "
                             "when it is not restarted (default: 60)")
    parser.add_argument("--json", action="store_true", help="print the final counters as JSON")
    parser.set_defaults(func=run)

def run(args, settings: Settings) -> int:
    """The command: 0 when stopped or idle; without a broker, status 2."""
    from recallstream.consumers.cli import print_report
    from recallstream.streaming.example_joiner import ExampleJoiner, JoinerOptions

    require_broker(settings)
    job = ExampleJoiner(settings, JoinerOptions(
        instance=args.instance, snapshot_every=args.snapshot_every,
        max_poll_records=args.max_poll_records, session_timeout_s=args.session_timeout,
        transaction_timeout_s=args.transaction_timeout, exit_when_idle_s=args.exit_when_idle,
        max_poll_interval_s=args.max_poll_interval))
    stop_on_signals(job.stop)
    exported = None
    if settings.joiner_metrics_port:
        from recallstream.consumers.joiner_metrics import JoinerMetrics

        exported = JoinerMetrics(lambda: dict(job.counters))
        exported.start(settings.joiner_metrics_port, settings.http_host)
    try:
        report = job.run()
    finally:
        if exported is not None:
            exported.stop()
    print_report(report, args.json)
    return 0
