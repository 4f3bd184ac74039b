"""Seeded poison records for the soak: values the joiner must dead-letter, never join.

:class:`PoisonMaker` decides, record by record, whether a poison record goes out
before the next real one (with probability ``rate``) and makes it: one of
:data:`POISON_KINDS`, each failing :func:`recallstream.streaming.decoding.decode`
for exposures and clicks alike (bad JSON, not an object, wrong types, a missing
field, a NaN time, binary bytes, an empty id). None of
them decodes, so none can become an example: each must end in ``dead-letters``
exactly once.

Examples
--------
>>> from recallstream.streaming.decoding import Invalid, decode
>>> maker = PoisonMaker(seed=3, rate=0.5)
>>> made = [maker.maybe() for _ in range(6)]
>>> [kind for kind, _, _ in filter(None, made)]
['null_impression', 'empty_user_id', 'invalid_json', 'null_impression']
>>> all(isinstance(decode(topic, key, value), Invalid)
...     for topic in ("exposures", "clicks") for key, value in POISON_VALUES.values())
True
"""

from __future__ import annotations

import random

import orjson

_CLICK = {"event_id": "poison", "ts": 1.0, "user_id": "1", "item_id": "1", "impression_id": "m"}


def _with(**fields) -> bytes:
    return orjson.dumps({**_CLICK, **fields})


def _without(name: str) -> bytes:
    return orjson.dumps({k: v for k, v in _CLICK.items() if k != name})


#: kind -> (key, value); every one is refused by the decoder of exposures and of clicks.
POISON_VALUES: dict[str, tuple[bytes, bytes]] = {
    "invalid_json": (b"1", b'{"event_id": "poison", "ts": '),
    "not_an_object": (b"1", b"[1, 2, 3]"),
    "wrong_type_ts": (b"1", _with(ts="yesterday")),
    "wrong_type_user": (b"1", _with(user_id=["1"])),
    "missing_user_id": (b"1", _without("user_id")),
    "nan_ts": (b"1", _with(ts=None).replace(b'"ts":null', b'"ts":NaN')),
    "binary": (b"1", b"\xff\xfe\x00 binary"),
    "empty_user_id": (b"1", _with(user_id="")),
    "null_impression": (b"1", _with(impression_id=None)),
}
POISON_KINDS = tuple(POISON_VALUES)


class PoisonMaker:
    """Seeded poison decisions and values (see the module docstring).

    Parameters
    ----------
    seed : int
    rate : float
        Probability that a poison record precedes a real one (0.01 for 1 %).
    """

    def __init__(self, seed: int, rate: float) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate must be in [0, 1), got {rate!r}")
        self.rate = rate
        self._rng = random.Random(seed)

    def maybe(self) -> tuple[str, bytes, bytes] | None:
        """``(kind, key, value)`` of a poison record to send now, or None."""
        if self._rng.random() >= self.rate:
            return None
        kind = self._rng.choice(POISON_KINDS)
        return (kind, *POISON_VALUES[kind])
