"""``recallstream topics create [--partitions N]``: create the topics, idempotently.

Creates exposures and clicks (same partition count, keyed by user_id), items
and users (log-compacted, keyed by id), dead-letters, and the joiner's examples
and joiner-state (partitioned like clicks), with the names of the settings; see :func:`recallstream.streaming.kafka_io.create_topics`.
"""

from __future__ import annotations

from recallstream.consumers.usage import UsageError, require_broker


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("topics", help="manage the Kafka topics")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", parents=[subparsers.settings_parent],
        help="create the topics that do not exist (--partitions sets exposures/clicks/items/users)")
    create.set_defaults(func=run_create)


def run_create(args, settings) -> int:
    from recallstream.streaming.kafka_io import create_topics, topic_layout

    require_broker(settings)
    try:
        created = create_topics(settings)
    except ValueError as error:  # exposures and clicks exist with another partition count
        raise UsageError(str(error)) from None
    for name, spec in topic_layout(settings).items():
        state = "created" if name in created else "exists"
        print(f"{name:<24} {state:<8} partitions={spec['num_partitions']} "
              f"{spec['configs'].get('cleanup.policy', 'delete')}")
    return 0
