"""Decode and validate raw Kafka records into events, never raising.

:func:`decode` turns the raw key and value bytes of one record into an event of
``recallstream.streaming.events`` or an :class:`Invalid` carrying a short, stable reason.
Reasons are machine-readable and come from the bounded set :data:`REASONS`
(they become a Prometheus label and a dead-letter field, so no raw value ever
appears in one).

Rules (schemas in issue 2):

- a record (key + value) over 1 MiB is ``too_large``; the value must be a UTF-8
  JSON object (``invalid_json``, ``not_an_object``);
- structure limits, checked next, in this order (each a reason of its own):
  at most :data:`MAX_FIELDS` fields in the record (``too_many_fields``); an item's or
  user's ``features`` object at most :data:`MAX_FEATURES` features
  (``too_many_features``); then, walking every nested value depth first in field
  order, containers at most :data:`MAX_DEPTH` deep counting the record itself
  (``too_deep``), lists of at most :data:`MAX_LIST_ITEMS` elements
  (``list_too_long``) and nested objects of at most :data:`MAX_OBJECT_KEYS` keys
  (``too_many_keys``);
- ids are strings or integers (normalised to ``str``; booleans are rejected),
  1 to 256 characters (``invalid_id:<field>``);
- ``ts`` is an int or a finite float, epoch seconds (``non_finite:ts``);
- ``position`` is optional, an int >= 0 (``out_of_range:position``); ``context``
  is an optional object;
- a field that is absent or JSON ``null`` is missing (``missing_field:<field>``);
  a present field of another type is ``wrong_type:<field>``;
- unknown fields are kept in the event's ``extra`` and otherwise ignored;
- the reason given is that of the first failing rule, fields checked in schema
  order (``event_id``, ``ts``, ``user_id``, ``item_id``, ``impression_id``,
  ``position``, ``context``; entities: key, id, ``ts``, ``features``);
- exposures and clicks: the key only routes the record (the producer keys by
  user id for co-partitioning); it is not checked;
- examples (the joiner's output, key ``user_id``): the click's fields, as a click,
  and ``exposure``, null for an orphan or an object with ``event_id``, ``ts``
  and optional ``position``, ``context`` and ``extra`` (``wrong_type:exposure``
  otherwise); they decode to a :class:`~recallstream.streaming.joiner.Positive`;
- items and users: the key is the entity id and must be UTF-8 and a valid id
  (``missing_key``, ``invalid_key``); the id in the value must equal it
  (``key_mismatch``), since compaction keeps the latest value *per key* and a
  value filed under another key would silently shadow or resurrect an entity;
  a null value is a :class:`~recallstream.streaming.events.Tombstone`.

Examples
--------
>>> decode("clicks", b"u1", b'{"event_id":"c1","ts":5,"user_id":1,"item_id":"i2","impression_id":"m"}')
Click(event_id='c1', ts=5.0, user_id='1', item_id='i2', impression_id='m', extra=None)
>>> decode("clicks", None, b'{"event_id":"c1","ts":5}')
Invalid(reason='missing_field:user_id')
>>> decode("exposures", None, b'{"oops')
Invalid(reason='invalid_json')
>>> decode("items", b"i1", None)
Tombstone(kind='items', entity_id='i1')
>>> decode("items", b"i1", b'{"item_id":"i2","ts":1,"features":{}}')
Invalid(reason='key_mismatch')
>>> decode("examples", b"u1", b'{"event_id":"c1","ts":5,"user_id":"u1","item_id":"i2",'
...        b'"impression_id":"m","exposure":null,"joiner":{"orphan":true}}').exposure is None
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import orjson

from recallstream.streaming.events import ENTITY_ID_FIELD, Click, EntityRecord, Exposure, Tombstone
from recallstream.streaming.joiner import Positive

#: Largest valid record, key plus value, in bytes.
MAX_RECORD_BYTES = 1 << 20
#: Longest valid id, in characters.
MAX_ID_CHARS = 256
#: Most fields in a record (known and unknown ones).
MAX_FIELDS = 64
#: Most features in an item's or user's ``features`` object.
MAX_FEATURES = 256
#: Deepest nesting of objects and lists, the record itself being depth 1.
MAX_DEPTH = 8
#: Longest list anywhere in a record (genres, title tokens, context lists).
MAX_LIST_ITEMS = 1024
#: Most keys of an object nested in a record (``context``, a feature's value, ...).
MAX_OBJECT_KEYS = 256
#: The record kinds, one per topic role.
KINDS = ("exposures", "clicks", "items", "users", "examples")


@dataclass(slots=True, frozen=True)
class Invalid:
    """A record that failed to decode or validate; ``reason`` is one of :data:`REASONS`.

    Examples
    --------
    >>> decode("users", None, b"{}")
    Invalid(reason='missing_key')
    """

    reason: str


Decoded = Union[Exposure, Click, EntityRecord, Tombstone, Positive, Invalid]

_EXPOSURE_FIELDS = frozenset(
    ("event_id", "ts", "user_id", "item_id", "impression_id", "position", "context"))
_CLICK_FIELDS = frozenset(("event_id", "ts", "user_id", "item_id", "impression_id"))
_ID_FIELDS = ("event_id", "user_id", "item_id", "impression_id")
_ALL_FIELDS = _ID_FIELDS + ("ts", "position", "context", "features", "exposure")

# Reason strings are built once: the hot path never formats a string.
_MISSING = {name: f"missing_field:{name}" for name in _ALL_FIELDS}
_WRONG_TYPE = {name: f"wrong_type:{name}" for name in _ALL_FIELDS}
_INVALID_ID = {name: f"invalid_id:{name}" for name in _ID_FIELDS}

#: Every reason :func:`decode` can return (bounded, so it can label a metric).
REASONS = frozenset(
    ["too_large", "invalid_json", "not_an_object", "null_value", "missing_key", "invalid_key",
     "key_mismatch", "non_finite:ts", "out_of_range:position", "decoder_error",
     "too_many_fields", "too_many_features", "too_deep", "list_too_long", "too_many_keys"]
    + list(_MISSING.values()) + list(_WRONG_TYPE.values()) + list(_INVALID_ID.values()))


class _Rejected(Exception):
    """Raised inside the decoder with the reason; never escapes :func:`decode`."""


def decode(kind: str, key: bytes | None, value: bytes | None) -> Decoded:
    """Decode one raw record of topic role ``kind``; never raises on any bytes.

    Parameters
    ----------
    kind : {"exposures", "clicks", "items", "users", "examples"}
        The role of the topic the record was read from.
    key, value : bytes or None
        The raw Kafka key and value.

    Returns
    -------
    Exposure, Click, EntityRecord, Tombstone, Positive (examples) or Invalid

    Raises
    ------
    ValueError
        If ``kind`` is not one of :data:`KINDS` (a programming error, not bad data).

    Examples
    --------
    >>> decode("exposures", b"u1", b'{"event_id":"e","ts":1.5,"user_id":"u1","item_id":7,'
    ...        b'"impression_id":"m","position":2,"new_field":true}')  # doctest: +NORMALIZE_WHITESPACE
    Exposure(event_id='e', ts=1.5, user_id='u1', item_id='7', impression_id='m', position=2,
             context=None, extra={'new_field': True})
    >>> decode("exposures", None, b'{"event_id":"e","ts":1,"user_id":"u","item_id":true}')
    Invalid(reason='wrong_type:item_id')
    """
    try:
        decoder = _DECODERS[kind]
    except KeyError:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}") from None
    try:
        return decoder(kind, key, value)
    except _Rejected as rejected:
        return Invalid(rejected.args[0])
    except Exception:  # noqa: BLE001 - a decoder bug must dead-letter the record, not kill the worker
        return Invalid("decoder_error")


def _decode_exposure(kind: str, key: bytes | None, value: bytes | None) -> Exposure:
    obj = _load_object(key, value, entity=False)
    event = Exposure(_id(obj, "event_id"), _ts(obj), _id(obj, "user_id"), _id(obj, "item_id"),
                     _id(obj, "impression_id"), _position(obj), _optional_object(obj, "context"))
    if len(obj) != 5 + ("position" in obj) + ("context" in obj):
        event.extra = _extra(obj, _EXPOSURE_FIELDS)
    return event


def _decode_click(kind: str, key: bytes | None, value: bytes | None) -> Click:
    obj = _load_object(key, value, entity=False)
    event = Click(_id(obj, "event_id"), _ts(obj), _id(obj, "user_id"), _id(obj, "item_id"),
                  _id(obj, "impression_id"))
    if len(obj) != 5:
        event.extra = _extra(obj, _CLICK_FIELDS)
    return event


def _decode_example(kind: str, key: bytes | None, value: bytes | None) -> Positive:
    obj = _load_object(key, value, entity=False)
    click = Click(_id(obj, "event_id"), _ts(obj), _id(obj, "user_id"), _id(obj, "item_id"),
                  _id(obj, "impression_id"), _dict_or_none(obj.get("click_extra")))
    shown = obj.get("exposure")
    if shown is None:
        return Positive(click, None)
    if shown.__class__ is not dict:
        raise _Rejected(_WRONG_TYPE["exposure"])
    exposure = Exposure(_id(shown, "event_id"), _ts(shown), click.user_id, click.item_id,
                        click.impression_id, _position(shown), _optional_object(shown, "context"),
                        _dict_or_none(shown.get("extra")))
    return Positive(click, exposure)


def _decode_entity(kind: str, key: bytes | None, value: bytes | None) -> EntityRecord | Tombstone:
    entity_id = _entity_key(key)
    if value is None:
        return Tombstone(kind, entity_id)
    obj = _load_object(key, value, entity=True)
    id_field = ENTITY_ID_FIELD[kind]
    if _id(obj, id_field) != entity_id:
        raise _Rejected("key_mismatch")
    ts = _ts(obj)
    features = obj.get("features")
    if features is None:
        raise _Rejected(_MISSING["features"])
    if features.__class__ is not dict:
        raise _Rejected(_WRONG_TYPE["features"])
    record = EntityRecord(kind, entity_id, ts, features)
    if len(obj) != 3:
        record.extra = _extra(obj, frozenset((id_field, "ts", "features")))
    return record


_DECODERS: dict[str, Callable[[str, bytes | None, bytes | None], Decoded]] = {
    "exposures": _decode_exposure, "clicks": _decode_click,
    "items": _decode_entity, "users": _decode_entity, "examples": _decode_example,
}


def _load_object(key: bytes | None, value: bytes | None, entity: bool) -> dict[str, Any]:
    if value is None:
        raise _Rejected("null_value")
    if len(value) + (len(key) if key is not None else 0) > MAX_RECORD_BYTES:
        raise _Rejected("too_large")
    try:
        obj = orjson.loads(value)  # rejects invalid UTF-8, NaN/Infinity and nesting > 1024
    except orjson.JSONDecodeError:
        raise _Rejected("invalid_json") from None
    if obj.__class__ is not dict:
        raise _Rejected("not_an_object")
    if len(obj) > MAX_FIELDS:
        raise _Rejected("too_many_fields")
    if entity:
        features = obj.get("features")
        if features.__class__ is dict and len(features) > MAX_FEATURES:
            raise _Rejected("too_many_features")
    for field in obj.values():
        if field.__class__ is dict or field.__class__ is list:
            _check_nested(field, 2)
    return obj


def _check_nested(value: dict | list, depth: int) -> None:
    # Depth first, in order; `depth` counts the record as 1. Bounded by MAX_DEPTH, so the
    # recursion is too (and orjson has already refused anything nested beyond 1024).
    if depth > MAX_DEPTH:
        raise _Rejected("too_deep")
    if value.__class__ is list:
        if len(value) > MAX_LIST_ITEMS:
            raise _Rejected("list_too_long")
        items = value
    else:
        if len(value) > MAX_OBJECT_KEYS:
            raise _Rejected("too_many_keys")
        items = value.values()
    for item in items:
        if item.__class__ is dict or item.__class__ is list:
            _check_nested(item, depth + 1)


def _entity_key(key: bytes | None) -> str:
    if key is None:
        raise _Rejected("missing_key")
    try:
        entity_id = key.decode()
    except UnicodeDecodeError:
        raise _Rejected("invalid_key") from None
    if not 0 < len(entity_id) <= MAX_ID_CHARS:
        raise _Rejected("invalid_key")
    return entity_id


def _id(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    cls = value.__class__
    if cls is int:  # exact class test: bool is a subclass of int and is rejected below
        value = str(value)
    elif cls is not str:
        raise _Rejected(_MISSING[name] if value is None else _WRONG_TYPE[name])
    if 0 < len(value) <= MAX_ID_CHARS:
        return value
    raise _Rejected(_INVALID_ID[name])


def _ts(obj: dict[str, Any]) -> float:
    value = obj.get("ts")
    cls = value.__class__
    if cls is float:
        # orjson never yields inf or nan; checked anyway so that the rule holds whatever the parser
        if value - value == 0.0:  # false for inf and nan
            return value
        raise _Rejected("non_finite:ts")
    if cls is int:
        return float(value)  # orjson ints fit in 64 bits, so this cannot overflow
    raise _Rejected(_MISSING["ts"] if value is None else _WRONG_TYPE["ts"])


def _position(obj: dict[str, Any]) -> int | None:
    value = obj.get("position")
    if value is None:
        return None
    if value.__class__ is not int:
        raise _Rejected(_WRONG_TYPE["position"])
    if value < 0:
        raise _Rejected("out_of_range:position")
    return value


def _optional_object(obj: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = obj.get(name)
    if value is None or value.__class__ is dict:
        return value
    raise _Rejected(_WRONG_TYPE[name])


def _extra(obj: dict[str, Any], known: frozenset[str]) -> dict[str, Any] | None:
    extra = {name: value for name, value in obj.items() if name not in known}
    return extra or None


def _dict_or_none(value: Any) -> dict[str, Any] | None:
    """Unknown fields a producer kept (the examples' ``extra``): an object, or nothing."""
    return value if value.__class__ is dict and value else None
