"""Recall for readers: the top k items of a user from the vector index.

:class:`Recaller` answers "which items for this user?" from Qdrant alone: the
worker keeps every active user's vector in the ``users`` collection (payload
``user_id``, ``model_version``, ``recent_items``: the user's latest clicked
items, newest last), so a reader needs no model. Qdrant looks the user's vector
up itself (``query_points`` with ``lookup_from``) and ranks ``items`` (an alias
or a collection) by it. With fresh ``recent_clicks`` and an ``embed`` function
(a learner in the caller's process) the user vector is computed instead.

Filters: ``exclude_seen`` leaves out the user's ``recent_items`` (and the
``recent_clicks`` given); ``categories`` keeps items whose payload
``categories`` holds at least one of them.

Examples
--------
>>> import numpy as np
>>> from recallstream.model.vector_index import VectorIndex
>>> index = VectorIndex.connect(":memory:")
>>> for name in ("items", "users"):
...     index.ensure_collection(name, dim=2)
>>> index.upsert("items", ["a", "b", "c"], np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]),
...              [{"categories": ["x"]}, {"categories": ["y"]}, {"categories": ["x", "y"]}])
>>> index.upsert("users", ["u1"], np.array([[1.0, 0.1]]),
...              [{"model_version": 7, "recent_items": ["a"]}], kind="user")
>>> recaller = Recaller(index)
>>> result = recaller.recall("u1", k=2)
>>> result.model_version, [hit.item_id for hit in result.items]
(7, ['a', 'b'])
>>> [hit.item_id for hit in recaller.recall("u1", k=2, exclude_seen=True).items]
['b', 'c']
>>> [hit.item_id for hit in recaller.recall("u1", k=5, categories=["y"], exclude_seen=True).items]
['b', 'c']
>>> recaller.recall("nobody")  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
...
recallstream.model.recall.UnknownUser: 'nobody'
>>> index.close()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_K = 1000


class UnknownUser(KeyError):
    """The user has no vector in the users collection (and none was computed)."""


@dataclass(frozen=True)
class RecalledItem:
    item_id: str
    score: float
    payload: dict


@dataclass(frozen=True)
class RecallResult:
    user_id: str
    model_version: int | None
    items: list[RecalledItem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the HTTP endpoint and ``recallstream recall --json``.

        >>> RecallResult("u", 3, [RecalledItem("a", 0.5, {"item_id": "a"})]).to_dict()
        {'user_id': 'u', 'model_version': 3, 'items': [{'item_id': 'a', 'score': 0.5, 'payload': {'item_id': 'a'}}]}
        """
        return {"user_id": self.user_id, "model_version": self.model_version,
                "items": [{"item_id": h.item_id, "score": h.score, "payload": h.payload}
                          for h in self.items]}


# (user id, recent clicked item ids) -> user vector; a learner in the reader's process
Embed = Callable[[str, Sequence[str]], np.ndarray]


class Recaller:
    """Top-k items for a user (see the module docstring).

    Parameters
    ----------
    index : VectorIndex
    items, users : str
        Collections (or aliases) of item and user vectors.
    embed : callable, optional
        ``embed(user_id, recent_clicks) -> vector``, used when ``recent_clicks``
        are passed to :meth:`recall`.
    """

    def __init__(self, index, items: str = "items", users: str = "users",
                 embed: Embed | None = None) -> None:
        self.index = index
        self.items = items
        self.users = users
        self.embed = embed

    def recall(self, user_id: str, k: int = 10, *, exclude_seen: bool = False,
               categories: Sequence[str] | None = None,
               recent_clicks: Sequence[str] | None = None) -> RecallResult:
        """The ``k`` items nearest to the user, best first.

        Raises :class:`UnknownUser` when the user has no stored vector and no
        ``recent_clicks`` to embed, ``ValueError`` for k outside 1..MAX_K.
        """
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be in 1..{MAX_K}, got {k!r}")
        stored = self._user_payload(user_id)
        if recent_clicks is not None and self.embed is None:
            raise ValueError("recent_clicks need a Recaller with an embed function")
        if stored is None and recent_clicks is None:
            raise UnknownUser(user_id)
        exclude: list[str] = []
        if exclude_seen:
            exclude = list(dict.fromkeys([*(stored or {}).get("recent_items", []),
                                          *(recent_clicks or [])]))
        version = (stored or {}).get("model_version")
        if recent_clicks is not None:
            vector = np.asarray(self.embed(user_id, list(recent_clicks)), dtype=np.float32)
            hits = self.index.search(self.items, vector.reshape(-1), k, exclude,
                                     categories=categories)
        else:
            try:
                hits = self.index.search_by_point_id(self.items, self.users, user_id, k, exclude,
                                                     categories=categories)
            except KeyError:  # retired between the two calls
                raise UnknownUser(user_id) from None
        return RecallResult(user_id, version,
                            [RecalledItem(str(i), float(s), dict(p)) for i, s, p in hits])

    def _user_payload(self, user_id: str) -> dict | None:
        if not self.index.exists(self.users):
            return None
        return self.index.retrieve_payloads(self.users, [user_id], kind="user").get(user_id)
