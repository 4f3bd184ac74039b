"""The item and user feature tables: id to the features of the id's latest record.

There is one pair of tables, shared by ingestion and training. The ingestor
does not write to it: it reports each item or user change
(:class:`~recallstream.streaming.events.EntityRecord`, or a
:class:`~recallstream.streaming.events.Tombstone` that retires the id), and the
trainer applies the changes here in stream order, before the clicks that
follow them. So a click is trained with the features its place in the stream
implies, however far ahead of the trainer the prefetching ingestor runs, and
the tables' state is checkpointed once, with the trainer's.

Examples
--------
>>> from recallstream.streaming.events import EntityRecord, Tombstone
>>> tables = EntityTables()
>>> changes = tables.apply([EntityRecord("items", "i1", 1.0, {"genres": ["Drama"]}),
...                         EntityRecord("users", "u1", 1.0, {"age": 30}),
...                         EntityRecord("items", "i2", 1.0, {}), Tombstone("items", "i2")])
>>> tables.items, tables.users
({'i1': {'genres': ['Drama']}}, {'u1': {'age': 30}})
>>> changes
CatalogChanges(added_items=['i1'], retired_items=['i2'])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from recallstream.streaming.events import EntityRecord, Tombstone


def categories(value: Any) -> list[str]:
    """A multi-valued categorical feature (an item's ``genres``) as a list of strings.

    Producers send one category as a string or several as a list: a string is one
    category (never its characters), a list keeps its string and number elements
    (numbers as strings) in order and drops the others (null, booleans, objects,
    nested lists); a lone number is one category; anything else is none.

    >>> categories("Drama"), categories(["Drama", "Comedy"]), categories(None)
    (['Drama'], ['Drama', 'Comedy'], [])
    >>> categories(["Drama", 7, None, True, {"x": 1}, ["y"], ""]), categories(1995), categories({})
    (['Drama', '7'], ['1995'], [])
    """
    if value.__class__ is str:
        return [value] if value else []
    if isinstance(value, (list, tuple)):
        return [item if item.__class__ is str else str(item) for item in value
                if (item.__class__ is str and item) or item.__class__ in (int, float)]
    if value.__class__ in (int, float):
        return [str(value)]
    return []


@dataclass(frozen=True)
class CatalogChanges:
    """What one :meth:`EntityTables.apply` did to the catalog, in its final state.

    Attributes
    ----------
    added_items : list of str
        Items (sorted) that got a record and are in the catalog afterwards.
    retired_items : list of str
        Items (sorted) that got a tombstone and are not in the catalog afterwards.
    """

    added_items: list[str]
    retired_items: list[str]


class EntityTables:
    """Items and users, each id to its latest features (see the module docstring).

    Attributes
    ----------
    items, users : dict of str to dict
    items_version : int
        Goes up whenever the items table changes (through :meth:`apply` or
        :meth:`load_state_dict`): what the catalog's encoded inputs are cached by.
    """

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.items_version = 0

    def apply(self, changes: Iterable[EntityRecord | Tombstone]) -> CatalogChanges:
        """Apply entity changes in order; return what became of the items they named."""
        recorded, retired = set(), set()
        for change in changes:
            table = self.items if change.kind == "items" else self.users
            if change.__class__ is EntityRecord:
                table[change.entity_id] = change.features
                if change.kind == "items":
                    recorded.add(change.entity_id)
            else:
                table.pop(change.entity_id, None)
                if change.kind == "items":
                    retired.add(change.entity_id)
        if recorded or retired:
            self.items_version += 1
        # An item retired and recorded again in one call counts by its final state.
        return CatalogChanges(added_items=sorted(i for i in recorded if i in self.items),
                              retired_items=sorted(i for i in retired if i not in self.items))

    def state_dict(self) -> dict[str, Any]:
        return {"items": dict(self.items), "users": dict(self.users)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.items = dict(state["items"])
        self.users = dict(state["users"])
        self.items_version += 1
