"""Dead letters: records that failed to decode, kept losslessly with the reason.

A dead letter is one JSON object (orjson) on the dead-letters topic::

    {"topic", "partition", "offset", "reason", "ts",
     "raw", "raw_key", "raw_size", "raw_sha256", "raw_truncated"}

``raw`` and ``raw_key`` are the base64 of the original value and key (``null``
for a null one), ``ts`` the time it was dead-lettered (epoch seconds),
``raw_size`` the length of the original value and ``raw_sha256`` its hex digest.

Size: a record of over 1 MiB is itself invalid (``too_large``), and its base64
is 4/3 larger, beyond a broker's default ``message.max.bytes`` (about 1 MiB).
The event topics accept records up to ``recallstream.streaming.kafka_io.MAX_MESSAGE_BYTES``
(4 MiB) so that such a record arrives at all, and the dead-letters topic
accepts twice that (``DEAD_LETTERS_MAX_MESSAGE_BYTES``, set by
``create_topics``; the dead-letter producer raises ``max_request_size`` to
match). So every record a topic can hold is dead-lettered whole. A value over
:data:`MAX_RAW_BYTES` (only possible from a topic configured beyond 4 MiB) is
truncated to that many bytes with ``raw_truncated`` true, keeping its full
size and sha256; the original stays at topic/partition/offset in its source
topic until retention removes it. The key of a dead letter is
``topic:partition:offset``, so a dead letter produced twice (at-least-once, after
a restart from a checkpoint) is recognisable as the same.

Examples
--------
>>> value = dead_letter_record("clicks", 2, 41, "invalid_json", b"{oops", b"u1", now=100.0)
>>> letter = parse_dead_letter(value)
>>> letter["reason"], letter["offset"], raw_value(letter), raw_key(letter)
('invalid_json', 41, b'{oops', b'u1')
>>> dead_letter_key("clicks", 2, 41)
b'clicks:2:41'
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import orjson

#: Longest raw value (bytes) kept whole in a dead letter: the largest record the topics accept.
MAX_RAW_BYTES = 4 << 20
#: The fields every dead letter has.
FIELDS = ("topic", "partition", "offset", "reason", "ts", "raw", "raw_key", "raw_size",
          "raw_sha256", "raw_truncated")


def dead_letter_record(topic: str, partition: int, offset: int, reason: str,
                       raw_value: bytes | None, raw_key: bytes | None, *,
                       now: float | None = None, max_raw_bytes: int = MAX_RAW_BYTES) -> bytes:
    """The dead-letter value (JSON bytes) of one rejected record.

    Parameters
    ----------
    topic, partition, offset
        Where the rejected record is.
    reason : str
        Why it was rejected (``recallstream.streaming.decoding.REASONS``).
    raw_value, raw_key : bytes or None
        The record's original value and key.
    now : float, optional
        Time of dead-lettering in epoch seconds (default: the wall clock).
    max_raw_bytes : int
        Longer values are truncated to this many bytes (see the module docstring).

    Examples
    --------
    >>> letter = parse_dead_letter(dead_letter_record("t", 0, 5, "too_large", b"abcdef", None,
    ...                                               now=1.0, max_raw_bytes=4))
    >>> raw_value(letter), letter["raw_size"], letter["raw_truncated"], letter["raw_key"]
    (b'abcd', 6, True, None)
    """
    if max_raw_bytes < 0:
        raise ValueError(f"max_raw_bytes must be >= 0, got {max_raw_bytes}")
    truncated = raw_value is not None and len(raw_value) > max_raw_bytes
    kept = raw_value[:max_raw_bytes] if truncated else raw_value
    return orjson.dumps({
        "topic": topic, "partition": partition, "offset": offset, "reason": reason,
        "ts": time.time() if now is None else now,
        "raw": _b64(kept), "raw_key": _b64(raw_key),
        "raw_size": None if raw_value is None else len(raw_value),
        "raw_sha256": None if raw_value is None else hashlib.sha256(raw_value).hexdigest(),
        "raw_truncated": truncated,
    })


def dead_letter_key(topic: str, partition: int, offset: int) -> bytes:
    """The Kafka key of a dead letter: the rejected record's coordinates."""
    return f"{topic}:{partition}:{offset}".encode()


def parse_dead_letter(value: bytes) -> dict[str, Any]:
    """Read a dead letter back (raw fields stay base64; see :func:`raw_value`).

    Raises
    ------
    ValueError
        If ``value`` is not a dead letter (not JSON, or fields missing).
    """
    letter = orjson.loads(value)
    if not isinstance(letter, dict) or any(name not in letter for name in FIELDS):
        raise ValueError("not a dead letter")
    return letter


def raw_value(letter: dict[str, Any]) -> bytes | None:
    """The original value kept in a parsed dead letter (truncated if ``raw_truncated``)."""
    return None if letter["raw"] is None else base64.b64decode(letter["raw"])


def raw_key(letter: dict[str, Any]) -> bytes | None:
    """The original key kept in a parsed dead letter."""
    return None if letter["raw_key"] is None else base64.b64decode(letter["raw_key"])


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")
