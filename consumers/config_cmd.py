"""``recallstream config``: print the effective settings and where each came from."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "config", parents=[subparsers.settings_parent],
        help="print the effective settings (flags > environment > defaults)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args, settings) -> int:
    from recallstream.consumers.cli import print_json
    from recallstream.streaming.settings import Settings

    described = settings.describe()
    if args.json:
        print_json(described)
        return 0
    width = max(len(name) for name in described)
    for name, value in described.items():
        print(f"{name:<{width}}  {value!r:<30}  ${Settings.env_name(name)}")
    return 0
