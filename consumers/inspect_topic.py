"""``recallstream inspect TOPIC [--json]``: count a topic's valid and invalid records.

Reads the topic from its beginning to the end it has when the command starts,
with manual assignment and no consumer group (``recallstream.streaming.kafka_io.read_topic``),
so it commits nothing and changes nothing. Each record is decoded as the kind
its topic has in the settings (``--topic-clicks`` etc., or ``--kind``). On the
dead-letters topic every record is an invalid one: they are counted by the
reason they carry (``unreadable_dead_letter`` for one that does not parse).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from recallstream.consumers.usage import UsageError, require_broker

UNREADABLE_DEAD_LETTER = "unreadable_dead_letter"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", parents=[subparsers.settings_parent],
        help="count valid and invalid records of a topic, by reason (read-only)")
    parser.add_argument("topic", metavar="TOPIC", help="topic name")
    parser.add_argument("--kind", choices=["exposures", "clicks", "examples", "items", "users", "dead-letters"],
                        help="how to decode the records (default: from the topic name)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args, settings) -> int:
    from recallstream.consumers.cli import print_json
    from recallstream.streaming.kafka_io import read_topic

    kind = args.kind or kind_of_topic(settings, args.topic)
    if kind is None:
        raise UsageError(f"{args.topic!r} is none of the configured topics; pass --kind")
    require_broker(settings)
    try:
        # examples count once their joiner's transaction commits
        records = read_topic(settings, args.topic, read_committed=kind == "examples")
        report = count_records(args.topic, kind, records)
    except ValueError as error:  # the topic does not exist
        raise UsageError(str(error)) from None
    if args.json:
        print_json(report)
    else:
        print(f"{report['topic']}: {report['records']} records, {report['valid']} valid, "
              f"{report['invalid']} invalid")
        for reason, count in report["invalid_by_reason"].items():
            print(f"  {reason:<32} {count}")
    return 0


def kind_of_topic(settings, topic: str) -> str | None:
    """The record kind of ``topic`` under ``settings`` (``dead-letters`` too), or None.

    Examples
    --------
    >>> from recallstream.streaming.settings import Settings
    >>> s = Settings.resolve(environ={})
    >>> kind_of_topic(s, s.topic_users), kind_of_topic(s, s.topic_dead_letters), kind_of_topic(s, "x")
    ('users', 'dead-letters', None)
    """
    return {settings.topic_exposures: "exposures", settings.topic_clicks: "clicks",
            settings.topic_examples: "examples", settings.topic_items: "items",
            settings.topic_users: "users", settings.topic_dead_letters: "dead-letters"}.get(topic)


def count_records(topic: str, kind: str, records: Iterable[Any]) -> dict[str, Any]:
    """Count ``records`` (with ``key`` and ``value``) as valid or invalid by reason.

    Examples
    --------
    >>> from types import SimpleNamespace as R
    >>> count_records("c", "clicks", [R(key=None, value=b"{"), R(key=None, value=b"[]"),
    ...                               R(key=None, value=b"{")])  # doctest: +NORMALIZE_WHITESPACE
    {'topic': 'c', 'records': 3, 'valid': 0, 'invalid': 3,
     'invalid_by_reason': {'invalid_json': 2, 'not_an_object': 1}}
    """
    from recallstream.streaming.dead_letters import parse_dead_letter
    from recallstream.streaming.decoding import Invalid, decode

    total, reasons = 0, Counter()
    for record in records:
        total += 1
        if kind == "dead-letters":
            try:
                reasons[str(parse_dead_letter(record.value)["reason"])] += 1
            except (ValueError, TypeError):
                reasons[UNREADABLE_DEAD_LETTER] += 1
        else:
            decoded = decode(kind, record.key, record.value)
            if decoded.__class__ is Invalid:
                reasons[decoded.reason] += 1
    invalid = sum(reasons.values())
    return {"topic": topic, "records": total, "valid": total - invalid, "invalid": invalid,
            "invalid_by_reason": dict(sorted(reasons.items()))}
