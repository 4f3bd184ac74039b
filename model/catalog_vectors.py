"""The vectors of a whole catalog at one model version, for exact top-k scoring.

Prequential scoring asks, for each click, whether the clicked item is among
the user's ``k`` best items of the catalog. :class:`CatalogVectors` answers it
exactly, with one matrix product per batch of users, leaving out each user's
excluded items (as a serving filter would drop what the user already has).

Examples
--------
>>> import numpy as np
>>> catalog = CatalogVectors(["a", "b", "c"], np.array([[1.0, 0.0], [0.7, 0.7], [0.0, 1.0]]))
>>> catalog.in_top_k(np.array([[1.0, 0.1], [1.0, 0.1]]), ["b", "b"], k=1, exclude=[[], ["a"]]).tolist()
[False, True]
>>> catalog.in_top_k(np.array([[1.0, 0.1]]), ["unknown"], k=3, exclude=[[]]).tolist()
[False]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch


class CatalogVectors:
    """Item ids and their vectors ``[N, dim]`` (see the module docstring).

    Parameters
    ----------
    item_ids : sequence of str
        Distinct ids, one per row of ``vectors``.
    vectors : ndarray
    """

    def __init__(self, item_ids: Sequence[str], vectors: np.ndarray,
                 rows: Mapping[str, int] | None = None) -> None:
        self.item_ids = list(item_ids)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self._row = rows if rows is not None else {item_id: row for row, item_id in enumerate(self.item_ids)}

    @classmethod
    def embed(cls, learner, items: Mapping[str, Mapping]) -> "CatalogVectors":
        """Every item of ``items`` embedded by ``learner``'s current model (anything with
        ``embed_items(ids, items)`` and ``dim``), rows in sorted id order."""
        item_ids = sorted(items)
        if not item_ids:
            return cls([], np.zeros((0, learner.dim), dtype=np.float32))
        return cls(item_ids, learner.embed_items(item_ids, items))

    def __len__(self) -> int:
        return len(self.item_ids)

    def in_top_k(self, user_vectors: np.ndarray, item_ids: Sequence[str], k: int,
                 exclude: Sequence[Sequence[str]]) -> np.ndarray:
        """Row i: is ``item_ids[i]`` among the ``k`` best items for ``user_vectors[i]``?

        The items of ``exclude[i]`` (other than the target) are not candidates;
        a target not in the catalog is a miss.
        """
        targets = np.array([self._row.get(item_id, -1) for item_id in item_ids], dtype=np.int64)
        known = targets >= 0
        if not known.any():
            return known
        scores = np.asarray(user_vectors, dtype=np.float32) @ self.vectors.T
        target_scores = scores[np.arange(len(targets)), np.maximum(targets, 0)]
        # rank of the target = how many candidates score strictly higher
        better = np.count_nonzero(scores > target_scores[:, None], axis=1)
        # leaving items out lowers a rank by at most their number: only the rows in
        # between need to know which of their excluded items outscored the target
        counts = np.fromiter(map(len, exclude), dtype=np.int64, count=len(exclude))
        for i in np.flatnonzero(known & (better >= k) & (better - counts < k)).tolist():
            better[i] -= self._outscoring(scores[i], target_scores[i], targets[i], exclude[i])
        return known & (better < k)

    def _outscoring(self, scores: np.ndarray, target_score: float, target: int,
                    excluded: Sequence[str]) -> int:
        """How many distinct ``excluded`` items of the catalog score above the target."""
        rows = {self._row[e] for e in excluded if e in self._row} - {target}
        if not rows:
            return 0
        return int(np.count_nonzero(scores[np.fromiter(rows, dtype=np.int64)] > target_score))


class EncodedCatalog:
    """The whole catalog's ids (sorted) and item-tower inputs, encoded once per version of
    the items table (``tables.items_version``): encoding hashes every feature value in
    Python and costs more than the tower's forward pass, which is all a batch then runs.

    Examples
    --------
    >>> from recallstream.model.online import OnlineLearner, stream_tower_config
    >>> from recallstream.streaming.entity_tables import EntityTables
    >>> from recallstream.streaming.events import EntityRecord
    >>> learner = OnlineLearner(stream_tower_config(id_buckets=64, dim=4), seed=0)
    >>> tables, catalog = EntityTables(), EncodedCatalog()
    >>> _ = tables.apply([EntityRecord("items", i, 1.0, {}) for i in ("b", "a")])
    >>> vectors = catalog.vectors(learner, tables)
    >>> vectors.item_ids, bool(np.allclose(vectors.vectors, learner.embed_items(["a", "b"], tables.items)))
    (['a', 'b'], True)
    >>> _ = tables.apply([EntityRecord("items", "c", 2.0, {})])
    >>> catalog.vectors(learner, tables).item_ids  # a new version of the table: encoded again
    ['a', 'b', 'c']
    >>> encode = catalog.encoder(learner, tables)  # rows of the encoded catalog
    >>> all(torch.equal(encode(["c", "a"])[name], tensor)
    ...     for name, tensor in learner.encode_items(["c", "a"], tables.items).items())
    True
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._item_ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._inputs = None

    def vectors(self, learner, tables) -> CatalogVectors:
        """The catalog of ``tables`` embedded by ``learner``'s current weights."""
        self._refresh(learner, tables)
        if not self._item_ids:
            return CatalogVectors([], np.zeros((0, learner.dim), dtype=np.float32))
        return CatalogVectors(self._item_ids, learner.embed_encoded_items(self._inputs), self._rows)

    def encoder(self, learner, tables) -> Callable[[Sequence[str]], dict]:
        """``ids -> their item-tower inputs``, rows of the encoded catalog (what
        ``learner.encode_items(ids, tables.items)`` gives, without encoding again)."""
        self._refresh(learner, tables)
        rows, inputs = self._rows, self._inputs

        def encode(item_ids: Sequence[str]) -> dict:
            at = [rows.get(item_id, -1) for item_id in item_ids]
            if inputs is None or -1 in at:  # an item outside the catalog
                return learner.encode_items(item_ids, tables.items)
            index = torch.tensor(at, dtype=torch.int64)
            return {name: tensor.index_select(0, index) for name, tensor in inputs.items()}
        return encode

    def _refresh(self, learner, tables) -> None:
        key = (id(learner), tables.items_version)
        if key != self._key:
            self._item_ids = sorted(tables.items)
            self._rows = {item_id: row for row, item_id in enumerate(self._item_ids)}
            self._inputs = learner.encode_items(self._item_ids, tables.items) if self._item_ids else None
            self._key = key


@dataclass
class BatchVectors:
    """What one minibatch is scored with before its step, computed once and shared by
    the prequential monitor and the health figures: each click's prefix history, the
    whole catalog's vectors and the batch's user vectors (with those histories).

    Examples
    --------
    >>> class Learner:  # a 2-d stand-in: items on the axes, a user is its last item
    ...     dim = 2
    ...     def prefix_histories(self, user_ids, item_ids): return [[] for _ in user_ids]
    ...     def embed_items(self, ids, items): return np.array([[1.0, 0.0] if i == "a" else [0.0, 1.0] for i in ids])
    ...     def embed_users(self, ids, users, histories): return np.ones((len(ids), 2))
    >>> batch = BatchVectors.compute(Learner(), ["u1"], ["b"], {}, {"b": {}, "a": {}})
    >>> batch.catalog.item_ids, batch.users.shape, batch.histories
    (['a', 'b'], (1, 2), [[]])
    """

    histories: list[list[str]]
    catalog: CatalogVectors
    users: np.ndarray

    @classmethod
    def compute(cls, learner, user_ids: Sequence[str], item_ids: Sequence[str],
                users: Mapping[str, Mapping], items: Mapping[str, Mapping]) -> "BatchVectors":
        histories = learner.prefix_histories(user_ids, item_ids)
        return cls(histories, CatalogVectors.embed(learner, items),
                   np.asarray(learner.embed_users(user_ids, users, histories), dtype=np.float32))
