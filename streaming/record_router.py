"""Route fetched records: invalid ones to dead letters, items and users to entity
changes, training examples to the positives.

:class:`RecordRouter` is pure stream logic, with no Kafka objects: it takes
records grouped by partition (anything with ``topic`` and ``partition``
attributes as the group key, and records with ``topic``, ``partition``,
``offset``, ``key`` and ``value``) and returns what they became. Within one
call, groups are handled by kind (items, users, then examples), so that
catalog changes precede the clicks on them. Examples are the joiner's output
(:mod:`recallstream.streaming.example_joiner`): each is one click, joined to
its exposure or an orphan, ready for training.

Examples
--------
>>> from collections import namedtuple
>>> Partition = namedtuple("Partition", "topic partition")
>>> Record = namedtuple("Record", "topic partition offset key value")
>>> router = RecordRouter({"x": "examples", "i": "items"})
>>> routed = router.route({
...     Partition("x", 0): [Record("x", 0, 5, b"u1", b"{oops")],
...     Partition("i", 0): [Record("i", 0, 9, b"i1", b'{"item_id": "i1", "ts": 1, "features": {}}')]})
>>> [(r.offset, reason) for r, reason in routed.dead_letters], routed.ingested.entities
([(5, 'invalid_json')], [EntityRecord(kind='items', entity_id='i1', ts=1.0, features={}, extra=None)])
>>> routed.next_offsets == {Partition("x", 0): 6, Partition("i", 0): 10}
True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from recallstream.streaming.decoding import Invalid, decode
from recallstream.streaming.events import EntityRecord, Tombstone
from recallstream.streaming.joiner import Positive

# Handling order of the kinds within one call (see the module docstring).
_KIND_ORDER = {"items": 0, "users": 1, "examples": 2}


@dataclass(slots=True)
class Ingested:
    """What a batch of records produced for the trainer.

    Attributes
    ----------
    positives : list of Positive
        Clicks ready for training, joined to their exposure or orphans.
    replayed : list of Positive
        Clicks read again after a reset to a snapshot (:meth:`RecordRouter.replay`):
        to train on top of the snapshot, but already counted, scored and remembered.
    entities : list of EntityRecord or Tombstone
        Item and user changes, in stream order, for the feature tables.
    records : int
        Raw records handled (valid or not).

    Examples
    --------
    >>> Ingested().records
    0
    """

    positives: list[Positive] = field(default_factory=list)
    entities: list[EntityRecord | Tombstone] = field(default_factory=list)
    records: int = 0
    replayed: list[Positive] = field(default_factory=list)

    def extend(self, other: "Ingested") -> None:
        """Append ``other`` (the next records) to this result."""
        self.positives += other.positives
        self.entities += other.entities
        self.records += other.records
        self.replayed += other.replayed

    def clicks(self) -> list[TrainingClick]:
        """The positives as the trainer reads them: (user id, item id, event time)."""
        return _clicks(self.positives)

    def replayed_clicks(self) -> list[TrainingClick]:
        """The replayed positives, as :meth:`clicks`."""
        return _clicks(self.replayed)

    def compact(self) -> "IngestedClicks":
        """What the trainer reads of this result, in a form that pickles small (for a
        reading process: :mod:`recallstream.streaming.ingest_process`)."""
        return IngestedClicks(self.clicks(), self.entities, self.records, self.replayed_clicks())


# (user id, item id, event time): all the trainer takes from an example
TrainingClick = tuple[str, str, float]


def _clicks(positives: list[Positive]) -> list[TrainingClick]:
    return [(p.click.user_id, p.click.item_id, p.click.ts) for p in positives]


@dataclass(slots=True)
class IngestedClicks:
    """:meth:`Ingested.compact`: an :class:`Ingested` reduced to what the trainer reads,
    with the same :meth:`clicks`, :meth:`replayed_clicks`, ``entities`` and ``records``.

    Examples
    --------
    >>> from recallstream.streaming.events import Click as ClickEvent
    >>> positive = Positive(ClickEvent("c1", 5.0, "u1", "i1", "m1"), None)
    >>> Ingested(positives=[positive], records=2).compact().clicks()
    [('u1', 'i1', 5.0)]
    """

    click_rows: list[TrainingClick]
    entities: list[EntityRecord | Tombstone]
    records: int
    replayed_rows: list[TrainingClick]

    def clicks(self) -> list[TrainingClick]:
        return self.click_rows

    def replayed_clicks(self) -> list[TrainingClick]:
        return self.replayed_rows


@dataclass(slots=True)
class Routed:
    """What :meth:`RecordRouter.route` made of a batch of records.

    Attributes
    ----------
    ingested : Ingested
    dead_letters : list of (record, reason)
        Invalid records, each with the reason it failed to decode.
    next_offsets : dict of partition to int
        For each partition with records, the offset after its last one.
    """

    ingested: Ingested = field(default_factory=Ingested)
    dead_letters: list[tuple[Any, str]] = field(default_factory=list)
    next_offsets: dict[Hashable, int] = field(default_factory=dict)


class RecordRouter:
    """Decode and route records, keeping the counters (see the module docstring).

    Parameters
    ----------
    kinds : mapping of str to str
        Topic name to record kind (``examples``, ``items``, ``users``).
    """

    def __init__(self, kinds: Mapping[str, str]) -> None:
        unknown = set(kinds.values()) - set(_KIND_ORDER)
        if unknown:
            raise ValueError(f"cannot route {sorted(unknown)}; kinds are {sorted(_KIND_ORDER)}")
        self.kinds = dict(kinds)
        self._seen: Counter[str] = Counter()
        self._dead_lettered: Counter[str] = Counter()
        self._replay_until: dict[str, dict[int, int]] = {}  # topic -> partition -> offset

    def replay(self, topic: str, until: Mapping[int, int]) -> None:
        """Records of ``topic`` read again below these offsets (per partition) are
        *replayed*: handled before, now read again after a rewind (a reset to a
        snapshot). Their examples go to ``Ingested.replayed``, and counters skip them."""
        self._replay_until[topic] = {int(p): o for p, o in until.items()}

    def route(self, batches: Mapping[Any, Iterable[Any]]) -> Routed:
        """Handle records grouped by partition (see the module docstring)."""
        out = Routed()
        kinds = self.kinds
        for tp in sorted(batches, key=lambda tp: (_KIND_ORDER[kinds[tp.topic]], tp.partition)):
            kind = kinds[tp.topic]
            until = self._replay_until.get(tp.topic, {}).get(tp.partition, -1)
            for record in batches[tp]:
                decoded = decode(kind, record.key, record.value)
                if record.offset < until:
                    if decoded.__class__ is Positive:  # dead letters and counts: done before
                        out.ingested.replayed.append(decoded)
                elif decoded.__class__ is Invalid:
                    self._dead_lettered[decoded.reason] += 1
                    out.dead_letters.append((record, decoded.reason))
                else:
                    self._apply(decoded, out.ingested)
                out.ingested.records += 1
                out.next_offsets[tp] = record.offset + 1
            if out.next_offsets.get(tp, -1) >= until >= 0:  # the replay of this partition is over
                del self._replay_until[tp.topic][tp.partition]
        return out

    def counters(self) -> dict[str, Any]:
        """Valid records: ``examples_seen`` (of which ``orphans``: clicks the joiner found
        no exposure for), ``entity_records``, ``tombstones``; invalid ones: ``dead_lettered``
        (reason to count) and ``dead_lettered_total``."""
        return {
            "examples_seen": self._seen["examples"], "orphans": self._seen["orphans"],
            "entity_records": self._seen["entity_records"], "tombstones": self._seen["tombstones"],
            "dead_lettered": dict(self._dead_lettered),
            "dead_lettered_total": sum(self._dead_lettered.values()),
        }

    def state_dict(self) -> dict[str, Any]:
        """The counters and what is being replayed, as plain JSON-able structures."""
        return {"seen": dict(self._seen), "dead_lettered": dict(self._dead_lettered),
                "replay_until": {topic: {str(p): o for p, o in parts.items()}
                                 for topic, parts in self._replay_until.items() if parts}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._seen = Counter(state["seen"])
        self._dead_lettered = Counter(state["dead_lettered"])
        self._replay_until = {topic: {int(p): o for p, o in parts.items()}
                              for topic, parts in state.get("replay_until", {}).items()}

    def _apply(self, decoded: Positive | EntityRecord | Tombstone, out: Ingested) -> None:
        cls = decoded.__class__
        if cls is Positive:
            self._seen["examples"] += 1
            self._seen["orphans"] += decoded.exposure is None
            out.positives.append(decoded)
        else:
            self._seen["entity_records" if cls is EntityRecord else "tombstones"] += 1
            out.entities.append(decoded)
