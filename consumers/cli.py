"""The ``recallstream`` command line.

Each command lives in its own module under ``consumers/`` and exposes
``add_parser(subparsers)``, which adds its sub-parser and sets ``func`` to a
function ``run(args, settings) -> int``. Command modules keep heavy imports
(torch, qdrant) inside their functions so that ``recallstream --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import orjson

from recallstream.consumers.usage import CommandError, exit_status_epilog
from recallstream.streaming.settings import Settings, add_setting_flags

# One module per command (or command group); order is the order of --help.
COMMAND_MODULES = [
    "recallstream.consumers.config_cmd",
    "recallstream.consumers.broker",
    "recallstream.consumers.topics",
    "recallstream.consumers.replay",
    "recallstream.consumers.inspect_topic",
    "recallstream.consumers.joiner_cmd",
    "recallstream.consumers.snapshot_cmd",
    "recallstream.consumers.worker_cmd",
    "recallstream.consumers.checkpoint_cmd",
    "recallstream.consumers.recall_cmd",
    "recallstream.consumers.demo",
    "recallstream.consumers.soak",
    "recallstream.consumers.train",
    "recallstream.consumers.evaluate",
    "recallstream.consumers.bench",
]


def build_parser() -> argparse.ArgumentParser:
    settings_parent = argparse.ArgumentParser(add_help=False)
    add_setting_flags(settings_parent)
    parser = argparse.ArgumentParser(
        prog="recallstream",
        description="Streaming online-learning recall: Kafka events -> two towers -> Qdrant.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers.settings_parent = settings_parent  # command modules pass it as a parent
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    _add_epilog(parser, exit_status_epilog())
    return parser


def _add_epilog(parser: argparse.ArgumentParser, epilog: str) -> None:
    # Every parser, sub-commands' included, ends its --help with the exit statuses.
    parser.epilog = epilog
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the epilog's lines
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_epilog(sub, epilog)


def settings_from_args(args: argparse.Namespace) -> Settings:
    names = Settings.__dataclass_fields__.keys()
    return Settings.resolve(flags={n: getattr(args, n, None) for n in names})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    try:
        return int(args.func(args, settings) or 0)
    except CommandError as error:
        print(f"recallstream {args.command}: error: {error}", file=sys.stderr)
        return error.status


# Numbers as keys (partition offsets) become strings, as JSON requires; numpy values are numbers.
JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def print_json(obj) -> None:
    """Print one JSON object on stdout (the ``--json`` output of every command).

    Examples
    --------
    >>> print_json({"offsets": {"clicks": {0: 12}}})
    {
      "offsets": {
        "clicks": {
          "0": 12
        }
      }
    }
    """
    sys.stdout.write(orjson.dumps(obj, option=JSON_OPTIONS).decode() + "\n")
    sys.stdout.flush()


def print_report(figures: dict, as_json: bool) -> None:
    """Print ``figures`` as one JSON object (``--json``) or as one ``key: value`` line each.

    Examples
    --------
    >>> print_report({"batches": 3, "dead_lettered": 0}, as_json=False)
    batches: 3
    dead_lettered: 0
    """
    if as_json:
        print_json(figures)
        return
    for key, value in figures.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    sys.exit(main())
