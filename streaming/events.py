"""The events of the stream, as small slotted dataclasses, and their JSON encoding.

Four topics carry four kinds of records (schemas in issue 2):

- ``exposures`` (key ``user_id``): :class:`Exposure`, an item shown to a user
  in an impression list;
- ``clicks`` (key ``user_id``): :class:`Click`, a user clicked an item of an
  impression;
- ``items`` and ``users`` (compacted, key the entity id): :class:`EntityRecord`,
  the latest features of an item or a user, or a :class:`Tombstone` (a null
  value) that retires it.

Ids are always strings here (``recallstream.streaming.decoding`` normalises integer ids).
Unknown fields of a record are kept in ``extra`` and otherwise ignored, so a
record encoded again with ``to_json`` loses nothing. The classes are plain
slotted dataclasses because the decoder builds hundreds of thousands per second.

Examples
--------
>>> e = Exposure("e1", 1.5, "u1", "i9", "imp1", position=0)
>>> e.to_json()
b'{"event_id":"e1","ts":1.5,"user_id":"u1","item_id":"i9","impression_id":"imp1","position":0}'
>>> e.key()
b'u1'
>>> EntityRecord("items", "i9", 2.0, {"genres": ["Drama"]}).to_json()
b'{"item_id":"i9","ts":2.0,"features":{"genres":["Drama"]}}'
>>> Tombstone("items", "i9").to_json() is None
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

#: Entity kinds (topic roles) and the name of the id field in their values.
ENTITY_ID_FIELD = {"items": "item_id", "users": "user_id"}


def _dumps(fields: dict[str, Any], extra: dict[str, Any] | None) -> bytes:
    if extra:
        fields = {**fields, **extra}
    return orjson.dumps(fields)


@dataclass(slots=True)
class Exposure:
    """An item shown to a user within an impression list.

    Parameters
    ----------
    event_id : str
        Unique id of this event (duplicates are deliveries of the same event).
    ts : float
        Event time, epoch seconds.
    user_id, item_id : str
        Who saw what.
    impression_id : str
        The impression list this exposure belongs to; clicks refer to it.
    position : int or None
        Rank of the item in the impression list (0 = first), if known.
    context : dict or None
        Free-form context of the impression (device, page...), if any.
    extra : dict or None
        Unknown fields of the decoded record, kept so re-encoding is lossless.

    Examples
    --------
    >>> Exposure("e1", 10.0, "u1", "i1", "imp1", context={"page": "home"}).to_json()
    b'{"event_id":"e1","ts":10.0,"user_id":"u1","item_id":"i1","impression_id":"imp1","context":{"page":"home"}}'
    """

    event_id: str
    ts: float
    user_id: str
    item_id: str
    impression_id: str
    position: int | None = None
    context: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None

    def key(self) -> bytes:
        """The Kafka key: the user id, so a user's exposures and clicks share a partition."""
        return self.user_id.encode()

    def to_json(self) -> bytes:
        """The Kafka value (JSON, optional fields omitted when unset)."""
        fields: dict[str, Any] = {"event_id": self.event_id, "ts": self.ts, "user_id": self.user_id,
                                  "item_id": self.item_id, "impression_id": self.impression_id}
        if self.position is not None:
            fields["position"] = self.position
        if self.context is not None:
            fields["context"] = self.context
        return _dumps(fields, self.extra)


@dataclass(slots=True)
class Click:
    """A click of a user on an item of an impression list.

    Parameters are those of :class:`Exposure` without ``position`` and ``context``.

    Examples
    --------
    >>> c = Click("c1", 12.0, "u1", "i1", "imp1")
    >>> c.to_json()
    b'{"event_id":"c1","ts":12.0,"user_id":"u1","item_id":"i1","impression_id":"imp1"}'
    """

    event_id: str
    ts: float
    user_id: str
    item_id: str
    impression_id: str
    extra: dict[str, Any] | None = None

    def key(self) -> bytes:
        """The Kafka key: the user id."""
        return self.user_id.encode()

    def to_json(self) -> bytes:
        """The Kafka value (JSON)."""
        return _dumps({"event_id": self.event_id, "ts": self.ts, "user_id": self.user_id,
                       "item_id": self.item_id, "impression_id": self.impression_id}, self.extra)


@dataclass(slots=True)
class EntityRecord:
    """The latest features of an item (``kind="items"``) or a user (``kind="users"``).

    Parameters
    ----------
    kind : {"items", "users"}
        Which table the record belongs to.
    entity_id : str
        The item or user id; also the Kafka key of the record.
    ts : float
        Time of this version, epoch seconds.
    features : dict
        Feature name to value (catalog attributes, profile fields...).
    extra : dict or None
        Unknown fields of the decoded record.

    Examples
    --------
    >>> u = EntityRecord("users", "u7", 3.0, {"age": 31})
    >>> u.key(), u.to_json()
    (b'u7', b'{"user_id":"u7","ts":3.0,"features":{"age":31}}')
    """

    kind: str
    entity_id: str
    ts: float
    features: dict[str, Any]
    extra: dict[str, Any] | None = None

    def key(self) -> bytes:
        """The Kafka key: the entity id (the topic is compacted by it)."""
        return self.entity_id.encode()

    def to_json(self) -> bytes:
        """The Kafka value (JSON); the id field is ``item_id`` or ``user_id`` by kind."""
        return _dumps({ENTITY_ID_FIELD[self.kind]: self.entity_id, "ts": self.ts,
                       "features": self.features}, self.extra)


@dataclass(slots=True)
class Tombstone:
    """A null value on a compacted topic: the item or user ``entity_id`` is retired.

    Examples
    --------
    >>> t = Tombstone("items", "i9")
    >>> t.key(), t.to_json()
    (b'i9', None)
    """

    kind: str
    entity_id: str

    def key(self) -> bytes:
        """The Kafka key: the retired entity's id."""
        return self.entity_id.encode()

    def to_json(self) -> None:
        """The Kafka value of a tombstone: ``None``."""
        return None
