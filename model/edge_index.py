"""Qdrant Edge (``qdrant-edge-py``) behind :class:`~recallstream.model.vector_index.VectorIndex`.

Qdrant Edge is the Qdrant engine in-process (segments, HNSW, write-ahead log,
persistence) without a server. It knows one *shard* per folder and has no
collections or aliases, so :class:`EdgeClient` provides the small part of
``qdrant_client.QdrantClient``'s interface that ``VectorIndex`` calls, on a
folder laid out as::

    PATH/.lock                    held (flock) while a client has the folder open
    PATH/collections/NAME/        one EdgeShard per collection
    PATH/collections/NAME.json    its vector size, distance and metadata
    PATH/aliases.json             alias -> collection (replaced atomically)

A collection exists once its ``NAME.json`` does (written after its shard is
created, removed before its shard is deleted), so a crash half-way through
either leaves no half collection behind: the next open removes the remains.

Aliases are emulated: a table in memory, swapped whole under a lock and written
to ``aliases.json`` by rename (then the folder is fsynced), so a reader resolves
a name to the old or the new collection, never neither, and a restart finds the
last table written. One ``update_collection_aliases`` call is one table swap:
several alias actions apply together (``VectorIndex.swap_aliases``).
Deleting a collection deletes its aliases first, as Qdrant does.

``query_points`` with ``lookup_from`` (recall by user id) reads the user's
vector, then searches. Filters: ``HasIdCondition`` and
``FieldCondition`` with ``MatchAny``/``MatchValue``, in ``must``/``must_not``/
``should``. One client per folder (as with qdrant-client's local mode): a second
one, in this process or another, gets :class:`FolderInUse`.

**Upserts write what changed.** Qdrant Edge's Python binding converts each payload
value on its own, trying bool, then numbers, before a string or a list, and each
failed try is costly (about 15 µs a string here, 50 for a list of two: most of an
item's write, and it holds the GIL). So the client remembers the payload it last
wrote for each point (:func:`plan_upsert`): when a point's new payload has the same
keys and changes only some of their values (an item's ``model_version``,
``updated_at`` and ``last_click_ts``, not its ``categories`` or ``title``), it
writes the vector alone and sets the changed values, one request for all the points
that share them. A reader may meanwhile see a point's new vector with its previous
values for a moment. Only small payloads are remembered (``_REMEMBERED_VALUES``):
users' histories are long and change with every write anyway.

Examples
--------
>>> import tempfile
>>> from recallstream.model.vector_index import VectorIndex
>>> folder = tempfile.mkdtemp()
>>> index = VectorIndex.connect(f"edge:{folder}")
>>> index.ensure_collection("items", dim=2)
>>> index.upsert("items", ["a", "b"], np.array([[1.0, 0.0], [0.0, 1.0]]))
>>> index.search("items", [0.9, 0.1], limit=1)[0][0]
'a'
>>> index.close()
>>> again = VectorIndex.connect(f"edge:{folder}")
>>> again.count("items"), again.search("items", [0.1, 0.9], limit=1)[0][0]
(2, 'b')
>>> again.close()
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

PREFIX = "edge:"

log = logging.getLogger(__name__)


class FolderInUse(RuntimeError):
    """Another client (in this process or another) has the Qdrant Edge folder open.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> first = EdgeClient(folder)
    >>> EdgeClient(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    recallstream.model.edge_index.FolderInUse: Qdrant Edge folder '...' is open in another client ...
    >>> first.close()
    >>> EdgeClient(folder).close()  # released
    """


class EdgeClient:
    """The qdrant-client calls VectorIndex makes, on Qdrant Edge shards in ``path``.

    Use it through :class:`~recallstream.model.vector_index.VectorIndex` (``edge:PATH``);
    its methods take and return qdrant-client's models.

    >>> import tempfile
    >>> from qdrant_client import models
    >>> client = EdgeClient(tempfile.mkdtemp())
    >>> client.create_collection("items_v1", models.VectorParams(size=2, distance="Cosine"))
    True
    >>> client.update_collection_aliases([models.CreateAliasOperation(
    ...     create_alias=models.CreateAlias(collection_name="items_v1", alias_name="items"))])
    True
    >>> client.collection_exists("items"), client.count("items").count
    (True, 0)
    >>> client.close()
    """

    def __init__(self, path: str) -> None:
        import qdrant_edge  # noqa: F401  (fail early if the package is missing)

        if not path:
            raise ValueError("edge: needs a folder, e.g. edge:var/qdrant-edge")
        self.root = Path(path)
        (self.root / "collections").mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise FolderInUse(f"Qdrant Edge folder {str(self.root)!r} is open in another client "
                              "(one process, one client per folder)") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        self._lock = threading.RLock()
        self._shards: dict[str, Any] = {}
        # collection -> point id -> the payload last written (plan_upsert); lost at a
        # restart, which only makes the next write of each point a whole one
        self._written: dict[str, dict[Any, dict]] = {}
        self._meta: dict[str, dict] = {}
        for meta_file in sorted((self.root / "collections").glob("*.json")):
            name = meta_file.stem
            self._meta[name] = json.loads(meta_file.read_text())
            self._shards[name] = self._edge.EdgeShard.load(str(self._dir(name)))
        for folder in (self.root / "collections").iterdir():
            if folder.is_dir() and folder.name not in self._shards:  # created or deleted half-way
                shutil.rmtree(folder, ignore_errors=True)
        aliases_file = self.root / "aliases.json"
        aliases: dict[str, str] = (json.loads(aliases_file.read_text())
                                   if aliases_file.exists() else {})
        dangling = {a: c for a, c in aliases.items() if c not in self._shards}
        if dangling:  # only a crash inside delete_collection leaves these
            log.warning("Qdrant Edge %s: dropping aliases of missing collections %s",
                        self.root, dangling)
        self._aliases = {a: c for a, c in aliases.items() if a not in dangling}

    @property
    def _edge(self):
        import qdrant_edge

        return qdrant_edge

    def _dir(self, name: str) -> Path:
        return self.root / "collections" / name

    def _shard(self, name: str):
        collection = self._aliases.get(name, name)
        try:
            return self._shards[collection]
        except KeyError:
            raise ValueError(f"Collection {name!r} not found") from None

    # -- collections and aliases -------------------------------------------------

    def collection_exists(self, name: str) -> bool:
        return name in self._aliases or name in self._shards

    def get_collection(self, name: str):
        from qdrant_client import models

        self._shard(name)
        meta = self._meta[self._aliases.get(name, name)]
        vectors = models.VectorParams(size=meta["size"], distance=models.Distance(meta["distance"]))
        return SimpleNamespace(config=SimpleNamespace(params=SimpleNamespace(vectors=vectors),
                                                      metadata=meta.get("metadata")))

    def update_collection(self, collection_name: str, metadata: dict | None = None) -> bool:
        """Merge ``metadata`` into the collection's (top-level keys replaced), as Qdrant does."""
        with self._lock:
            self._shard(collection_name)
            name = self._aliases.get(collection_name, collection_name)
            if metadata is not None:
                meta = {**self._meta[name],
                        "metadata": {**(self._meta[name].get("metadata") or {}),
                                     **json.loads(json.dumps(metadata))}}
                _write_json(self._dir(name).with_suffix(".json"), meta)
                self._meta[name] = meta
        return True

    def create_collection(self, name: str, vectors_config) -> bool:
        edge = self._edge
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad collection name {name!r}")
        with self._lock:
            if self.collection_exists(name):
                raise ValueError(f"Collection {name!r} already exists")
            distance = str(getattr(vectors_config.distance, "value", vectors_config.distance))
            config = edge.EdgeConfig(vectors={"": edge.EdgeVectorParams(
                size=int(vectors_config.size), distance=getattr(edge.Distance, distance))})
            if self._dir(name).exists():  # a collection deleted half-way
                shutil.rmtree(self._dir(name))
            self._shards[name] = edge.EdgeShard.create(str(self._dir(name)), config)
            self._written.pop(name, None)
            self._meta[name] = {"size": int(vectors_config.size), "distance": distance}
            _write_json(self._dir(name).with_suffix(".json"), self._meta[name])
        return True

    def delete_collection(self, name: str) -> bool:
        with self._lock:
            collection = self._aliases.get(name, name)
            if collection not in self._shards:
                return False
            # aliases first, then the collection's record, then its files: a crash at any
            # point leaves either the collection whole or no trace a reader could find
            self._set_aliases({a: c for a, c in self._aliases.items() if c != collection})
            meta_file = self._dir(collection).with_suffix(".json")
            meta_file.unlink(missing_ok=True)
            _fsync_dir(meta_file.parent)
            shard = self._shards.pop(collection)
            self._meta.pop(collection, None)
            self._written.pop(collection, None)
            shard.close()
            shutil.rmtree(self._dir(collection), ignore_errors=True)
        return True

    def get_aliases(self):
        from qdrant_client import models

        return models.CollectionsAliasesResponse(aliases=[
            models.AliasDescription(alias_name=a, collection_name=c)
            for a, c in self._aliases.items()])

    def update_collection_aliases(self, change_aliases_operations) -> bool:
        with self._lock:
            table = dict(self._aliases)
            for action in change_aliases_operations:
                if getattr(action, "delete_alias", None) is not None:
                    table.pop(action.delete_alias.alias_name, None)
                elif getattr(action, "create_alias", None) is not None:
                    create = action.create_alias
                    if create.collection_name not in self._shards:
                        raise ValueError(f"Collection {create.collection_name!r} not found")
                    if create.alias_name in self._shards:
                        raise ValueError(f"Collection {create.alias_name!r} already exists")
                    table[create.alias_name] = create.collection_name
                else:
                    raise NotImplementedError(f"alias action {action!r}")
            self._set_aliases(table)
        return True

    def _set_aliases(self, table: dict[str, str]) -> None:
        _write_json(self.root / "aliases.json", table)
        self._aliases = table  # one assignment: readers see the old table or the new one

    # -- points ------------------------------------------------------------------

    def upsert(self, name: str, points, wait: bool = True) -> None:
        """Insert or replace ``points`` (a qdrant-client ``Batch``): writes only what
        changed for points whose payload it remembers (module docstring)."""
        edge = self._edge
        ids = [_edge_id(i) for i in points.ids]
        payloads = points.payloads or [{}] * len(ids)
        with self._lock:
            collection = self._aliases.get(name, name)
            shard = self._shard(collection)
            written = self._written.setdefault(collection, {})
            plan = plan_upsert(written, ids, payloads)
            for point in ids:  # forgotten until written: a failed write leaves no stale memory
                written.pop(point, None)
            if plan.whole:
                shard.update(edge.UpdateOperation.upsert_points([
                    edge.Point(id=ids[k], vector=list(points.vectors[k]), payload=payloads[k])
                    for k in plan.whole]))
            if plan.changed:
                shard.update(edge.UpdateOperation.update_vectors([
                    edge.PointVectors(id=ids[k], vector=list(points.vectors[k]))
                    for positions in plan.changed.values() for k in positions]))
                for values, positions in plan.changed.items():
                    if values:
                        shard.update(edge.UpdateOperation.set_payload(
                            [ids[k] for k in positions], {key: v for key, _, v in values}))
            for k in plan.remember:  # a copy: the caller's lists may change later
                written[ids[k]] = _copied(payloads[k])

    def delete(self, name: str, points_selector, wait: bool = True) -> None:
        ids = [_edge_id(i) for i in points_selector.points]
        with self._lock:
            collection = self._aliases.get(name, name)
            written = self._written.get(collection, {})
            for point in ids:
                written.pop(point, None)
            self._shard(collection).update(self._edge.UpdateOperation.delete_points(ids))

    def count(self, name: str, exact: bool = True):
        from qdrant_client import models

        return models.CountResult(count=self._shard(name).count(self._edge.CountRequest(exact=True)))

    def retrieve(self, name: str, ids, with_vectors: bool = False, with_payload: Any = True):
        from qdrant_client import models

        records = self._shard(name).retrieve([_edge_id(i) for i in ids],
                                             with_payload=bool(with_payload),
                                             with_vector=bool(with_vectors))
        return [models.Record(id=str(r.id), payload=r.payload if with_payload else None,
                              vector=_plain_vector(r.vector) if with_vectors else None)
                for r in records]

    def query_points(self, name: str, query, limit: int = 10, query_filter=None,
                     with_payload: bool = True, lookup_from=None):
        from qdrant_client import models

        edge = self._edge
        if isinstance(query, (str, int, uuid.UUID)):  # a point id: use that point's vector
            source = lookup_from.collection if lookup_from is not None else name
            found = self._shard(source).retrieve([_edge_id(query)], with_payload=False,
                                                 with_vector=True)
            if not found:
                raise ValueError(f"No point with id {query} found in {source!r}")
            query = _plain_vector(found[0].vector)
        vector = np.asarray(query, dtype=np.float32).tolist()
        request = edge.QueryRequest(limit=int(limit), query=edge.Query.Nearest(vector),
                                    with_payload=bool(with_payload),
                                    filter=_edge_filter(edge, query_filter))
        hits = self._shard(name).query(request)
        return SimpleNamespace(points=[
            models.ScoredPoint(id=str(p.id), version=0, score=float(p.score), payload=p.payload)
            for p in hits])

    def optimize(self, name: str) -> bool:
        """Run Qdrant Edge's segment optimizers on collection ``name`` (builds its HNSW
        index; blocking). Without it a shard answers by scanning its segments."""
        return bool(self._shard(name).optimize())

    def close(self) -> None:
        """Flush and close every shard and release the folder (idempotent)."""
        try:
            with getattr(self, "_lock", threading.RLock()):
                for shard in getattr(self, "_shards", {}).values():
                    shard.flush()
                    shard.close()
                if hasattr(self, "_shards"):
                    self._shards.clear()
        finally:
            if not self._lock_file.closed:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                self._lock_file.close()


#: Payloads of at most this many values (a list counts its items) are remembered.
_REMEMBERED_VALUES = 16


@dataclass
class UpsertPlan:
    """How :meth:`EdgeClient.upsert` writes a list of points (positions in that list).

    ``whole``: points written with their whole payload (new, unknown, or a key added,
    removed, or a list changed). ``changed``: the other points, by the payload values
    that changed (a tuple of ``(key, type, value)``, empty when none did); each gets its
    vector alone and those values. ``remember``: points whose payload to remember.
    """

    whole: list[int] = field(default_factory=list)
    changed: dict[tuple, list[int]] = field(default_factory=dict)
    remember: list[int] = field(default_factory=list)


def plan_upsert(written: Mapping[Any, Mapping], ids: Sequence, payloads: Sequence[Mapping]) -> UpsertPlan:
    """Plan the writes of ``payloads`` against ``written``, the payloads last written.

    >>> stored = {"a": {"v": 1, "title": "Heat"}, "b": {"v": 1, "title": "Ran"}}
    >>> plan_upsert(stored, ["a", "b", "c"], [{"v": 2, "title": "Heat"},
    ...                                      {"v": 2, "title": "Ran"}, {"v": 2}])
    UpsertPlan(whole=[2], changed={(('v', <class 'int'>, 2),): [0, 1]}, remember=[0, 1, 2])
    >>> plan_upsert(stored, ["a", "b"], [{"v": 1}, {"v": 1, "title": ["Ran"]}])
    UpsertPlan(whole=[0, 1], changed={}, remember=[0, 1])
    """
    plan = UpsertPlan()
    repeated = len(set(ids)) < len(ids)  # whole writes keep their order: the last one wins
    for k, (point, payload) in enumerate(zip(ids, payloads)):
        if _values(payload) <= _REMEMBERED_VALUES:
            plan.remember.append(k)
        changes = None if repeated else _changes(written.get(point), payload)
        if changes is None:
            plan.whole.append(k)
        else:  # grouped by value and type: as keys, 1, 1.0 and True are one
            group = tuple((key, type(value), value) for key, value in changes)
            plan.changed.setdefault(group, []).append(k)
    return plan


def _changes(before: Mapping | None, after: Mapping) -> tuple | None:
    """The ``(key, value)`` pairs of ``after`` that differ from ``before``; None when
    a whole write is needed: nothing known, other keys, or a changed list or object
    (setting it costs as much as writing it whole)."""
    if before is None or before.keys() != after.keys():
        return None
    changes = tuple((key, value) for key, value in after.items() if not _same(before[key], value))
    if any(isinstance(value, (list, dict)) for _, value in changes):
        return None
    return changes


def _same(a, b) -> bool:
    """Equal as stored: of one type (1, 1.0 and True are three values), lists and
    objects item by item. NaN is never the same (written again: harmless)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    return a == b


def _copied(value):
    if isinstance(value, dict):
        return {key: _copied(v) for key, v in value.items()}
    return [_copied(v) for v in value] if isinstance(value, list) else value


def _values(payload: Mapping) -> int:
    return sum(len(v) if isinstance(v, (list, dict)) else 1 for v in payload.values())


def _edge_id(point_id):
    return str(point_id) if not isinstance(point_id, int) else point_id


def _plain_vector(vector) -> list[float]:
    if isinstance(vector, dict):  # named vectors: ours is the unnamed one
        vector = vector.get("", next(iter(vector.values())))
    return [float(x) for x in vector]


def _edge_filter(edge, query_filter):
    """A qdrant-client ``models.Filter`` as a Qdrant Edge ``Filter`` (the conditions we use)."""
    if query_filter is None:
        return None

    def condition(c):
        if hasattr(c, "has_id"):
            return edge.HasIdCondition(point_ids={_edge_id(i) for i in c.has_id})
        match = getattr(c, "match", None)
        if hasattr(match, "any"):
            return edge.FieldCondition(key=c.key, match=edge.MatchAny(any=list(match.any)))
        if hasattr(match, "value"):
            return edge.FieldCondition(key=c.key, match=edge.MatchValue(match.value))
        raise NotImplementedError(f"filter condition {c!r} on Qdrant Edge")

    def conditions(part):
        return [condition(c) for c in part] if part else None

    return edge.Filter(must=conditions(query_filter.must), should=conditions(query_filter.should),
                       must_not=conditions(query_filter.must_not))


def _write_json(path: Path, obj) -> None:
    """Replace ``path`` with ``obj`` as JSON atomically and durably (temp, fsync, rename,
    fsync the folder): a crash leaves the old file or the new one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
