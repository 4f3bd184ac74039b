"""The one module that talks to Qdrant: item and user vectors, search, alias swaps.

Everything else in recallstream goes through :class:`VectorIndex`, whose
interface is deliberately narrow (ensure a collection, upsert, delete, search,
retrieve, count, collection metadata, swap aliases) so that another backend
(Qdrant Edge, :mod:`recallstream.model.edge_index`) can stand behind it.

:func:`connect` makes the ``qdrant_client.QdrantClient`` from one location
string; the rest of the code path is the same for all three:

* ``":memory:"`` -- embedded, in this process (qdrant-client's local mode);
* a filesystem path -- embedded and persistent (one process per path);
* an ``http://`` or ``https://`` URL -- a Qdrant server (API key optional);
* ``"edge:PATH"`` -- Qdrant Edge, the Qdrant engine in this process, persistent in
  folder PATH (:mod:`recallstream.model.edge_index`, package ``qdrant-edge-py``).

Point ids are deterministic, ``uuid5(NAMESPACE, f"{kind}:{id}")``, so that
replaying a stream overwrites the same points instead of adding new ones. The
original id is kept in the payload under ``f"{kind}_id"`` (``item_id``,
``user_id``), which is where search results read it back from.

Collection names may be aliases: Qdrant resolves them in every call, and
:meth:`VectorIndex.swap_aliases` repoints several atomically (one request carrying
their delete and create actions; :meth:`VectorIndex.swap_alias` for one). qdrant-client's local mode supports aliases too
(``update_collection_aliases`` applies the actions to a copy of its alias table
and then replaces the table in one assignment), so no fallback is needed: a
query in another thread sees the old or the new collection, whole.

Server calls that fail to connect (or get 502/503/504) are retried with
exponential backoff, a bounded number of times, then the error is raised.

qdrant-client's local mode is plain Python over shared dicts and arrays, not
made for concurrent calls, so an index on it (or on Qdrant Edge, whose
collections and aliases are emulated in Python) serialises its calls with a lock:
the worker's writer thread and the recall endpoint's reader threads share one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

# Fixed forever: uuid5(NAMESPACE_URL, "recallstream:point-ids"). Changing it renames every point.
NAMESPACE = uuid.UUID("34e367ae-64d3-518c-8244-7fbb30c2bf8c")

DISTANCES = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid"}

log = logging.getLogger(__name__)
T = TypeVar("T")
Hit = tuple[str, float, dict]  # (id, score, payload) of a search result


@functools.lru_cache(maxsize=1 << 18)  # uuid5 costs microseconds; ids repeat
def point_id(entity_id: str, kind: str = "item") -> str:
    """Deterministic Qdrant point id (a UUID string) of an item or user id.

    >>> point_id("42")
    '8254aecb-8a51-5443-b6c3-f8f05491cf47'
    >>> point_id("42", kind="user") != point_id("42")
    True
    """
    return str(uuid.uuid5(NAMESPACE, f"{kind}:{entity_id}"))


def connect(location: str, api_key: str | None = None, timeout_s: float = 30.0):
    """A ``QdrantClient`` for ``":memory:"``, a local path or a server URL; an
    :class:`~recallstream.model.edge_index.EdgeClient` for ``"edge:PATH"``."""
    from qdrant_client import QdrantClient

    if not location:
        raise ValueError("Qdrant location must be ':memory:', a path, edge:PATH or an http(s) URL")
    if location.startswith("edge:"):
        from recallstream.model.edge_index import EdgeClient

        return EdgeClient(location[len("edge:"):])
    if location == ":memory:":
        return QdrantClient(location=":memory:")
    if location.startswith(("http://", "https://")):
        return QdrantClient(url=location, api_key=api_key or None, timeout=int(timeout_s))
    return QdrantClient(path=location)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for calls to a Qdrant server.

    Waits ``initial_s``, then doubles (``multiplier``) up to ``max_s``, for at
    most ``attempts`` calls in all.

    >>> RetryPolicy(attempts=4, initial_s=0.5, max_s=1.5).delays()
    [0.5, 1.0, 1.5]
    """

    attempts: int = 6
    initial_s: float = 0.2
    max_s: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_s < 0 or self.max_s < 0 or self.multiplier < 1:
            raise ValueError(f"invalid retry policy {self}")

    def delays(self) -> list[float]:
        """The waits between consecutive attempts."""
        return [min(self.max_s, self.initial_s * self.multiplier ** i)
                for i in range(self.attempts - 1)]


class VectorIndex:
    """Item and user vectors in Qdrant collections, addressed by string ids.

    Parameters
    ----------
    client : qdrant_client.QdrantClient
        From :func:`connect` (or :meth:`VectorIndex.connect`).
    batch_size : int, default 512
        Points per upsert request.
    retry : RetryPolicy
        Backoff for connection errors to a server (embedded mode never needs it).
    sleep : callable
        Used to wait between attempts (tests pass a recorder).

    Examples
    --------
    >>> index = VectorIndex.connect(":memory:")
    >>> index.ensure_collection("items", dim=2)
    >>> index.upsert("items", ["a", "b", "c"], np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]),
    ...              [{"genres": ["x"]}, {}, {}])
    >>> [(item, round(score, 2)) for item, score, _ in index.search("items", [1.0, 0.1], limit=2)]
    [('a', 1.0), ('b', 0.68)]
    >>> index.search("items", [1.0, 0.1], limit=1, exclude_ids=["a"])[0][0]
    'b'
    >>> index.count("items")
    3
    """

    def __init__(self, client, *, batch_size: int = 512, retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.client = client
        self.batch_size = batch_size
        self.retry = retry
        self._sleep = sleep
        local = type(getattr(client, "_client", client)).__name__ in ("QdrantLocal", "EdgeClient")
        self._lock = threading.RLock() if local else contextlib.nullcontext()

    @classmethod
    def connect(cls, location: str, api_key: str | None = None, **kwargs: Any) -> "VectorIndex":
        """An index on ``connect(location, api_key)``.

        A fault-injection run may set the test hook of :mod:`recallstream.model.index_faults`
        (an environment variable): the client is then wrapped to fail on demand.
        """
        from recallstream.model.index_faults import with_injected_outages

        index = cls(connect(location, api_key), **kwargs)  # decides on the lock by the real client
        index.client = with_injected_outages(index.client)
        return index

    def close(self) -> None:
        self.client.close()

    # -- collections and aliases -------------------------------------------------

    def ensure_collection(self, name: str, dim: int, distance: str = "cosine") -> None:
        """Create collection ``name`` unless it (or an alias of that name) exists.

        Raises ``ValueError`` if it exists with another dimension or distance.
        """
        from qdrant_client import models

        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim!r}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {sorted(DISTANCES)}, got {distance!r}")
        wanted = models.Distance(DISTANCES[distance])
        if self._call(self.client.collection_exists, name):
            params = self._call(self.client.get_collection, name).config.params.vectors
            if params.size != dim or params.distance != wanted:
                raise ValueError(f"collection {name!r} has dim {params.size} and distance "
                                 f"{params.distance}, wanted {dim} and {wanted}")
            return
        self._call(self.client.create_collection, name,
                   vectors_config=models.VectorParams(size=dim, distance=wanted))

    def exists(self, name: str) -> bool:
        """Whether collection (or alias) ``name`` exists."""
        return bool(self._call(self.client.collection_exists, name))

    def delete_collection(self, name: str) -> None:
        self._call(self.client.delete_collection, name)

    def metadata(self, name: str) -> dict:
        """The metadata of collection ``name`` (through an alias too); ``{}`` if none."""
        config = self._call(self.client.get_collection, self.resolve(name)).config
        return dict(getattr(config, "metadata", None) or {})

    def update_metadata(self, name: str, metadata: Mapping[str, Any]) -> None:
        """Merge ``metadata`` into collection ``name``'s: each top-level key is replaced.

        Collection metadata is Qdrant's place for application facts about the data
        (the model version its vectors come from, for one); it survives restarts
        wherever the points do.

        >>> index = VectorIndex.connect(":memory:")
        >>> index.ensure_collection("items", dim=2)
        >>> index.update_metadata("items", {"model": {"version": 3}})
        >>> index.update_metadata("items", {"note": "x"})
        >>> index.metadata("items")
        {'model': {'version': 3}, 'note': 'x'}
        """
        self._call(self.client.update_collection, self.resolve(name), metadata=dict(metadata))

    def resolve(self, name: str) -> str:
        """The collection behind ``name`` (itself if it is not an alias)."""
        return self.aliases().get(name, name)

    def aliases(self) -> dict[str, str]:
        """Alias name -> collection name."""
        response = self._call(self.client.get_aliases)
        return {a.alias_name: a.collection_name for a in response.aliases}

    def swap_alias(self, alias: str, collection: str) -> str | None:
        """Point ``alias`` at ``collection`` atomically; return its previous collection.

        Delete and create travel in one request, which Qdrant applies together,
        so readers of ``alias`` never find it missing or half switched.
        """
        return self.swap_aliases({alias: collection})[alias]

    def swap_aliases(self, targets: Mapping[str, str]) -> dict[str, str | None]:
        """Point every alias of ``targets`` (alias -> collection) at its collection, all
        in one alias request; return each alias's previous collection (None if new).

        Qdrant applies the actions of one request together (qdrant-client's local
        mode and Qdrant Edge replace their whole alias table at once), so a reader
        resolving ``items`` and ``users`` in one call sees both old or both new.
        Raises ``ValueError`` for no targets, a target that is not a collection, or
        an alias named like an existing collection; nothing is switched then.

        >>> index = VectorIndex.connect(":memory:")
        >>> for name in ("items_v1", "users_v1", "items_v2", "users_v2"):
        ...     index.ensure_collection(name, dim=2)
        >>> index.swap_aliases({"items": "items_v1", "users": "users_v1"})
        {'items': None, 'users': None}
        >>> index.swap_aliases({"items": "items_v2", "users": "users_v2"})
        {'items': 'items_v1', 'users': 'users_v1'}
        >>> index.aliases() == {"items": "items_v2", "users": "users_v2"}
        True
        """
        from qdrant_client import models

        if not targets:
            raise ValueError("swap_aliases needs at least one alias -> collection")
        with self._lock:  # embedded: no other call between reading and switching the table
            current = self.aliases()
            for alias, collection in targets.items():
                if not alias or not collection:
                    raise ValueError(f"empty alias or collection name in {dict(targets)!r}")
                if collection in current or not self.exists(collection):
                    raise ValueError(f"alias {alias!r}: {collection!r} is not a collection")
                if alias not in current and self.exists(alias):
                    raise ValueError(f"alias {alias!r}: a collection has that name")
            actions: list[Any] = []
            for alias, collection in targets.items():
                if alias in current:
                    actions.append(models.DeleteAliasOperation(
                        delete_alias=models.DeleteAlias(alias_name=alias)))
                actions.append(models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)))
            self._call(self.client.update_collection_aliases, change_aliases_operations=actions)
        return {alias: current.get(alias) for alias in targets}

    # -- points ------------------------------------------------------------------

    def upsert(self, name: str, ids: Sequence[str], vectors: np.ndarray,
               payloads: Sequence[dict] | None = None, *, kind: str = "item") -> None:
        """Insert or overwrite points, waiting until Qdrant has applied them.

        The payload of each point is ``payloads[i]`` plus ``{f"{kind}_id": ids[i]}``.
        """
        from qdrant_client import models

        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError(f"vectors must have shape (len(ids)={len(ids)}, dim), "
                             f"got {vectors.shape}")
        if payloads is not None and len(payloads) != len(ids):
            raise ValueError(f"{len(payloads)} payloads for {len(ids)} ids")
        if not np.all(np.isfinite(vectors)):
            raise ValueError("vectors must be finite (no NaN or infinity)")
        key = f"{kind}_id"
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start:start + self.batch_size]
            # built without validation (pydantic checks every float, about 7 µs a point
            # under the GIL): the ids, vectors and payloads are ours and checked above
            batch = models.Batch.model_construct(
                ids=[point_id(i, kind) for i in chunk],
                vectors=vectors[start:start + len(chunk)].tolist(),
                payloads=[{**(payloads[start + j] if payloads is not None else {}), key: i}
                          for j, i in enumerate(chunk)])
            self._call(self.client.upsert, name, points=batch, wait=True)

    def delete(self, name: str, ids: Sequence[str], *, kind: str = "item") -> None:
        """Delete the points of ``ids`` (ids without a point are ignored)."""
        from qdrant_client import models

        if not ids:
            return
        selector = models.PointIdsList(points=[point_id(i, kind) for i in ids])
        self._call(self.client.delete, name, points_selector=selector, wait=True)

    def count(self, name: str) -> int:
        """Exact number of points."""
        return self._call(self.client.count, name, exact=True).count

    def retrieve_vectors(self, name: str, ids: Sequence[str], *,
                         kind: str = "item") -> dict[str, np.ndarray]:
        """Stored vectors of those ``ids`` that have a point (cosine stores them normalised)."""
        points = self._call(self.client.retrieve, name, ids=[point_id(i, kind) for i in ids],
                            with_vectors=True, with_payload=[f"{kind}_id"])
        by_point = {str(p.id): np.asarray(p.vector, dtype=np.float32) for p in points}
        return {i: by_point[point_id(i, kind)] for i in ids if point_id(i, kind) in by_point}

    def retrieve_payloads(self, name: str, ids: Sequence[str], *,
                          kind: str = "item") -> dict[str, dict]:
        """Payloads of those ``ids`` that have a point."""
        points = self._call(self.client.retrieve, name, ids=[point_id(i, kind) for i in ids],
                            with_vectors=False, with_payload=True)
        key = f"{kind}_id"
        return {p.payload[key]: p.payload for p in points if key in p.payload}

    # -- search ------------------------------------------------------------------

    def search(self, name: str, vector: Sequence[float] | np.ndarray, limit: int,
               exclude_ids: Sequence[str] | None = None, *,
               kind: str = "item", categories: Sequence[str] | None = None) -> list[Hit]:
        """Nearest points to ``vector``, best first: ``(id, score, payload)``; with
        ``categories``, only points whose payload ``categories`` holds one of them."""
        query = np.asarray(vector, dtype=np.float32).tolist()
        return self._query(name, query, limit, exclude_ids, kind, categories)

    def search_by_point_id(self, items_name: str, users_name: str, user_id: str, limit: int,
                           exclude_ids: Sequence[str] | None = None, *,
                           categories: Sequence[str] | None = None) -> list[Hit]:
        """Recall for a user by id alone: the items nearest to the user's stored vector.

        Qdrant looks the vector up in ``users_name`` itself (``lookup_from``), so a
        client needs nothing but the user id. Raises ``KeyError`` if the user has
        no vector.
        """
        from qdrant_client import models

        lookup = models.LookupLocation(collection=users_name)
        try:
            return self._query(items_name, point_id(user_id, "user"), limit, exclude_ids, "item",
                               categories, lookup_from=lookup)
        except Exception:
            # Local and server modes word "no such point" differently; ask directly.
            if not self.retrieve_vectors(users_name, [user_id], kind="user"):
                raise KeyError(f"user {user_id!r} has no vector in {users_name!r}") from None
            raise

    def _query(self, name, query, limit, exclude_ids, kind, categories=None, **extra) -> list[Hit]:
        from qdrant_client import models

        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        query_filter = None
        if exclude_ids or categories:
            query_filter = models.Filter(
                must_not=[models.HasIdCondition(has_id=[point_id(i, kind) for i in exclude_ids])]
                if exclude_ids else None,
                must=[models.FieldCondition(key="categories",
                                            match=models.MatchAny(any=list(categories)))]
                if categories else None)
        response = self._call(self.client.query_points, name, query=query, limit=limit,
                              query_filter=query_filter, with_payload=True, **extra)
        key = f"{kind}_id"
        return [(p.payload.get(key, str(p.id)), p.score, p.payload) for p in response.points]

    # -- retries -----------------------------------------------------------------

    def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        for delay in [*self.retry.delays(), None]:
            try:
                with self._lock:
                    return method(*args, **kwargs)
            except Exception as error:
                if delay is None or not is_unavailable(error):
                    raise
                log.warning("Qdrant unavailable (%s); retrying in %.1f s", error, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the server could not be reached (worth retrying)."""
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(error, (ResponseHandlingException, httpx.TransportError, ConnectionError)):
        return True
    return isinstance(error, UnexpectedResponse) and error.status_code in (502, 503, 504)
