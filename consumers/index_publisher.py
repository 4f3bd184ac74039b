"""What the worker writes to Qdrant, and when.

:class:`IndexPublisher` decides the worker's write policy and payload schema,
and hands the vectors to :class:`~recallstream.model.index_sync.IndexSync`
(the background writer). Qdrant holds derived data only, recomputable from the
model, so nothing here affects training or its evaluation.

- **Items** go to the items collection, point id uuid5 of the item id, with
  the payload ``model_version`` (batches trained), ``updated_at`` (wall time),
  ``last_click_ts`` (event time of the newest click on the item trained so
  far, so a reader sees how fresh the vector is) and ``categories`` (the item's
  ``genres``, read by :func:`~recallstream.streaming.entity_tables.categories`: a
  string is one category); written
  for the clicked items of each batch, for every new catalog item as soon as its
  record arrives (its content features make it retrievable before its first
  click), for the whole catalog every ``reembed_every_batches`` batches (the
  dense layers move every item) and at start-up; retired items are deleted.
- **Users** of each batch go to the users collection, so that recall needs
  only a user id, with the payload ``model_version`` and ``recent_items`` (the
  user's latest clicked items, newest last: what recall may leave out as seen).
  Items also carry ``title`` when the catalog has one.

**Start-up without re-embedding.** A persistent index (Qdrant Edge, a server)
still holds what the worker wrote before it stopped. The items collection's
metadata key ``recallstream_catalog`` records ``{"lineage", "version", "items",
"clean"}``: :meth:`IndexPublisher.drain` (which precedes every checkpoint) marks
the index clean at the newest version published, and the first write after
that marks it dirty before it is queued. :meth:`IndexPublisher.ensure_catalog`
at start-up skips the catalog when the index is clean at the checkpoint's
version, of the same model lineage (a random id kept in the checkpoint), with
one point per catalog item; otherwise (a fresh ``:memory:`` index, an older or
newer index, another model, a crash after a write) it publishes the catalog.
Marker writes that fail (a server away) are logged, not raised: the worker
keeps training as it does when vector writes fail, and the dirty mark is tried
again at the next write.

Examples
--------
>>> from recallstream.model.online import OnlineLearner
>>> from recallstream.model.towers import movielens_config
>>> from recallstream.model.vector_index import VectorIndex
>>> from recallstream.streaming.entity_tables import EntityTables
>>> from recallstream.streaming.events import EntityRecord
>>> learner = OnlineLearner(movielens_config(id_buckets=64, output_dim=4, hidden=(8,)), seed=0)
>>> tables = EntityTables()
>>> changes = tables.apply([EntityRecord("items", "i1", 1.0, {"genres": ["Drama"]})])
>>> index = VectorIndex.connect(":memory:")
>>> publisher = IndexPublisher(IndexSync(index, items="items", users="users", dim=4),
...                            learner, tables, reembed_every_batches=20)
>>> publisher.ensure_catalog(version=0)  # nothing in a new index: publish
True
>>> publisher.catalog_changed(changes, version=0)
>>> publisher.after_batch([("u1", "i1", 1700000000.0)], version=1)
>>> publisher.drain()
>>> index.count("items"), index.count("users")
(1, 1)
>>> publisher.ensure_catalog(version=1)  # the index holds version 1 of this model
False
>>> publisher.close(); index.close()
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence

from recallstream.model.index_sync import IndexSync
from recallstream.streaming.entity_tables import CatalogChanges, EntityTables, categories

log = logging.getLogger(__name__)

MARKER = "recallstream_catalog"  # key of the items collection's metadata (module docstring)


class IndexPublisher:
    """The item and user vectors the worker publishes (see the module docstring).

    Parameters
    ----------
    sync : IndexSync
        Owned by the publisher (:meth:`close` closes it).
    learner : OnlineLearner
        Embeds items and users (``embed_items``, ``embed_users``).
    tables : EntityTables
        The feature tables; the items table is the catalog.
    reembed_every_batches : int
        Publish the whole catalog after every this many batches.
    """

    def __init__(self, sync: IndexSync, learner, tables: EntityTables,
                 reembed_every_batches: int) -> None:
        self.sync = sync
        self.learner = learner
        self.tables = tables
        self.reembed_every_batches = reembed_every_batches
        self.item_last_click: dict[str, float] = {}  # item -> event time of its newest trained click
        self.lineage = uuid.uuid4().hex  # this model's line of checkpoints (state_dict keeps it)
        self._version: int | None = None  # newest model version published
        # the index may be marked clean (by an earlier run): the next write must mark it dirty
        self._clean = True

    def publish_catalog(self, version: int) -> None:
        """Every catalog item, embedded by the current model."""
        self._put_items(sorted(self.tables.items), version)

    def ensure_catalog(self, version: int) -> bool:
        """At start-up, with the model at ``version``: publish the catalog unless the
        index already holds it as this model left it then (see the module docstring);
        True if it published."""
        marker = self._read_marker()
        expected = {"lineage": self.lineage, "version": version,
                    "items": len(self.tables.items), "clean": True}
        if marker == expected and self._items_in_index() == len(self.tables.items):
            log.info("the index holds the catalog at model version %d: not re-embedded", version)
            self._version, self._clean = version, True
            return False
        log.info("publishing the catalog at model version %d (index marker: %s)", version, marker)
        self.publish_catalog(version)
        return True

    def catalog_changed(self, changes: CatalogChanges, version: int) -> None:
        """New items become retrievable at once; retired ones disappear."""
        self._put_items(changes.added_items, version)
        if changes.retired_items:
            self._before_write(version)
            self.sync.delete_items(changes.retired_items)

    def after_batch(self, clicks: Sequence[tuple[str, str, float]], version: int) -> None:
        """After the model trained on ``clicks`` (user id, item id, event time) and
        became ``version``: their items (or the whole catalog, when due) and users."""
        for _, item_id, ts in clicks:
            if ts > self.item_last_click.get(item_id, float("-inf")):
                self.item_last_click[item_id] = ts
        if version % self.reembed_every_batches == 0:
            self.publish_catalog(version)
        else:
            self._put_items(sorted({item_id for _, item_id, _ in clicks}), version)
        users = sorted({user_id for user_id, _, _ in clicks})
        self._before_write(version)
        self.sync.put_users(users, self.learner.embed_users(users, self.tables.users),
                            self._user_payloads(users, version))

    def rebuild(self, snapshot_version: int, version: int) -> None:
        """After a reset to snapshot ``snapshot_version``: embed every catalog item and
        every known user into new collections ``<items>_v<N>`` and ``<users>_v<N>``,
        switch both aliases in one request, then drop the collections they named.

        Readers of the aliases see the old collections whole until the switch and the
        new ones whole after it. If an earlier attempt got as far as the switch (a
        crash before the checkpoint), the new collections are filled again in place.
        """
        self.sync.drain()  # nothing queued for the old collections is left behind
        index, dim = self.sync.index, self.learner.dim
        targets = {alias: f"{alias}_v{snapshot_version}" for alias in (self.sync.items, self.sync.users)}
        for alias, target in targets.items():
            if index.resolve(alias) != target:
                if index.exists(target):  # half filled by an attempt that did not finish
                    index.delete_collection(target)
                index.ensure_collection(target, dim)
        items = sorted(self.tables.items)
        if items:
            index.upsert(targets[self.sync.items], items, self.learner.embed_items(items, self.tables.items),
                         self._item_payloads(items, version))
        users = sorted(self.learner.histories)
        if users:
            index.upsert(targets[self.sync.users], users, self.learner.embed_users(users, self.tables.users),
                         self._user_payloads(users, version), kind="user")
        previous = index.swap_aliases(targets)
        for alias, old in previous.items():
            if old is not None and old != targets[alias]:
                index.delete_collection(old)

    def pending(self) -> int:
        """Vectors and deletions not yet written."""
        return self.sync.pending()

    def drain(self) -> None:
        """Wait until everything published so far is in Qdrant (before a checkpoint, so
        offsets are never committed past vectors that did not arrive); then mark the
        index clean at the newest version published."""
        self.sync.drain()
        if self._version is not None and not self._clean:
            self._clean = self._write_marker(self._version, clean=True)

    def close(self) -> None:
        self.sync.close()

    def state_dict(self) -> dict:
        return {"item_last_click": dict(self.item_last_click), "lineage": self.lineage}

    def load_state_dict(self, state: Mapping) -> None:
        self.item_last_click = dict(state["item_last_click"])
        # older checkpoints have no lineage: keep the new one (the index is re-published)
        self.lineage = state.get("lineage") or self.lineage

    def _put_items(self, item_ids: Sequence[str], version: int) -> None:
        catalog = self.tables.items
        known = [item_id for item_id in item_ids if item_id in catalog]
        if not known:
            return
        self._before_write(version)
        self.sync.put_items(known, self.learner.embed_items(known, catalog),
                            self._item_payloads(known, version))

    def _item_payloads(self, item_ids: Sequence[str], version: int) -> list[dict]:
        catalog, now = self.tables.items, time.time()
        return [{"model_version": version, "updated_at": now,
                 "last_click_ts": self.item_last_click.get(item_id),
                 "categories": categories(catalog[item_id].get("genres")),
                 **({"title": catalog[item_id]["title"]} if catalog[item_id].get("title") else {})}
                for item_id in item_ids]

    def _user_payloads(self, user_ids: Sequence[str], version: int) -> list[dict]:
        return [{"model_version": version, "recent_items": history}
                for history in self.learner.histories_of(user_ids)]

    # -- the index's catalog marker -------------------------------------------------

    def _before_write(self, version: int) -> None:
        self._version = version if self._version is None else max(self._version, version)
        if self._clean:  # what the marker says stops being true with this write
            self._clean = not self._write_marker(self._version, clean=False)

    def _write_marker(self, version: int, clean: bool) -> bool:
        marker = {"lineage": self.lineage, "version": version, "items": len(self.tables.items),
                  "clean": clean}
        try:
            self.sync.index.update_metadata(self.sync.items, {MARKER: marker})
            return True
        except Exception as error:  # a restart then re-publishes (module docstring)
            log.warning("could not mark the index %s: %s", "clean" if clean else "dirty", error)
            return False

    def _read_marker(self) -> dict | None:
        try:
            return self.sync.index.metadata(self.sync.items).get(MARKER)
        except Exception as error:
            log.warning("could not read the index's catalog marker: %s", error)
            return None

    def _items_in_index(self) -> int | None:
        try:
            return self.sync.index.count(self.sync.items)
        except Exception as error:
            log.warning("could not count the index's items: %s", error)
            return None
