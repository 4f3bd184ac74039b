"""How commands report bad input and failures: the exceptions behind the exit statuses.

A command that cannot do what was asked raises :class:`CommandError` (exit
status 1) or, for bad input found after parsing, :class:`UsageError` (status 2:
:func:`load_dataset` for a bad ``--dataset``/``--data-dir``, :func:`require_broker`
when no Kafka broker answers); ``recallstream``'s ``main`` prints it on one line
on stderr and exits with the error's ``status`` (:data:`EXIT_STATUSES` lists them
all). Counts use :func:`positive_int` as their argparse ``type``, so argparse
itself rejects them (also status 2). (This module is separate from
``recallstream.consumers.cli`` so that the classes are one and the same when the
CLI runs as ``python -m recallstream.consumers.cli``.)
"""

from __future__ import annotations

import argparse


# Every exit status of every command, for the README and each command's --help.
EXIT_STATUSES = {
    0: "success",
    1: "the command ran and failed (the message says why)",
    2: "bad arguments, or no Kafka broker answers within 10 s",
    3: "worker: another worker holds the checkpoint directory",
    4: "worker: ingestion stalled (restart it: it resumes from its checkpoint)",
    5: "worker: Qdrant did not take the pending vectors within --qdrant-drain-timeout-s "
       "(restart it: it resumes from its checkpoint)",
}


def exit_status_epilog() -> str:
    """The exit statuses as a ``--help`` epilog.

    Examples
    --------
    >>> print(exit_status_epilog().splitlines()[2])
      1  the command ran and failed (the message says why)
    """
    return "exit status:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_STATUSES.items())


class CommandError(Exception):
    """A command cannot do what was asked: ``recallstream.consumers.cli.main`` prints it
    on one line on stderr, without a traceback, and exits with :attr:`status`."""

    status = 1


class UsageError(CommandError):
    """Bad input a command finds after parsing (e.g. a dataset folder without MovieLens
    files, or no broker answering): printed like any :class:`CommandError`, status 2."""

    status = 2


def positive_int(text: str) -> int:
    """argparse ``type`` for counts that must be at least 1.

    Examples
    --------
    >>> positive_int("3")
    3
    >>> positive_int("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be at least 1, got 0
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def load_dataset(name: str, data_dir: str | None):
    """:func:`recallstream.streaming.movielens.load_movielens`, with its errors as :class:`UsageError`.

    Examples
    --------
    >>> load_dataset("ml-9m", None)
    Traceback (most recent call last):
    ...
    recallstream.consumers.usage.UsageError: unknown dataset 'ml-9m'; expected one of ('ml-100k', 'ml-1m')
    """
    from recallstream.streaming.movielens import DatasetUnavailable, load_movielens

    try:
        return load_movielens(name, data_dir)
    except (ValueError, DatasetUnavailable) as error:
        raise UsageError(str(error)) from None


# How long a command waits for the broker to answer before giving up with a UsageError.
BROKER_WAIT_S = 10.0


def require_broker(settings) -> None:
    """Return once a Kafka broker answers at ``settings.bootstrap_servers``; a
    :class:`UsageError` that says how to start one if none does within ``BROKER_WAIT_S``."""
    from recallstream.streaming.kafka_io import wait_for_broker

    if not wait_for_broker(settings, timeout_s=BROKER_WAIT_S):
        raise UsageError(f"no Kafka broker answers at {settings.bootstrap_servers}; start one "
                         f"with `recallstream broker start` or set KAFKA_BOOTSTRAP_SERVERS")
