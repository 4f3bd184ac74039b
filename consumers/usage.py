"""Checks of command-line input shared by the commands.

A command that finds bad input after parsing raises :class:`UsageError`;
``recallstream``'s ``main`` prints it on one line and exits with status 2.
Counts use :func:`positive_int` as their argparse ``type``, so argparse itself
rejects them. (This module is separate from ``consumers.cli`` so that the
class is one and the same when the CLI runs as ``python -m consumers.cli``.)
"""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """Bad input a command finds after parsing (e.g. a dataset folder without MovieLens
    files): ``consumers.cli.main`` prints it on one line, without a traceback, and exits 2."""


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
    """:func:`streaming.movielens.load_movielens`, with its errors as :class:`UsageError`."""
    from streaming.movielens import DatasetUnavailable, load_movielens

    try:
        return load_movielens(name, data_dir)
    except (ValueError, DatasetUnavailable) as error:
        raise UsageError(str(error)) from None
