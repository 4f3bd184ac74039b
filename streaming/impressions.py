"""A seeded simulation of the impression list behind each logged click.

MovieLens records what users rated, not what they were shown. To replay it as a
stream of exposures and clicks, each rating (user ``u`` clicked item ``i`` at
``ts``) becomes one impression list of ``K + 1`` exposures: the clicked item and
``K`` other items, in shuffled positions ``0..K``, all exposed ``lead_s`` seconds
before the click, which refers to the list by its ``impression_id``.

The ``K`` other items are drawn **uniformly from the catalog**, distinct, never the
clicked item. Uniform rather than popularity-weighted because:

- the click stream already carries the popularity signal (the worker estimates
  it for logQ); exposures drawn from the same popularity would only echo it;
- every catalog item gets exposed, including never-clicked ones, which exercises
  the cold-item paths downstream;
- a list depends only on ``(seed, rating index, clicked item, catalog)``, not on
  the history before it, so a replay of any prefix or subset (``--limit``) yields
  exactly the same lists and event ids as the full replay.

The randomness is counter-based (SplitMix64 of seed, rating index, slot and
attempt), which makes that random access possible and keeps the simulation
vectorised over all ratings. Event ids derive from the rating index and position,
so replaying twice produces the same ids and a duplicate delivery is detectable.

Examples
--------
>>> sim = ImpressionSimulator(["a", "b", "c", "d", "e"], exposures_per_click=2, seed=7)
>>> exposures, click = next(sim.events([0], ["u1"], ["c"], [100]))
>>> sorted(e.item_id for e in exposures).count("c"), [e.position for e in exposures]
(1, [0, 1, 2])
>>> click.item_id, click.impression_id == exposures[0].impression_id, exposures[0].ts
('c', True, 99.0)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from recallstream.streaming.events import Click, Exposure
from recallstream.streaming.hashing import splitmix64


def counter_random(seed: int, index: np.ndarray, slot: int, attempt: np.ndarray | int = 0) -> np.ndarray:
    """64 random bits per element, a pure function of ``(seed, index, slot, attempt)``.

    Examples
    --------
    >>> a = counter_random(1, np.arange(3), slot=0)
    >>> bool((a == counter_random(1, np.arange(3), slot=0)).all()), len(set(a.tolist()))
    (True, 3)
    """
    state = splitmix64(np.full(np.shape(index), seed % 2**64, dtype=np.uint64))
    for part in (np.asarray(index, dtype=np.uint64), np.uint64(slot), np.asarray(attempt, np.uint64)):
        state = splitmix64(state ^ part)
    return state


@dataclass(frozen=True)
class ImpressionSimulator:
    """Turns logged clicks into impression lists (see the module docstring).

    Parameters
    ----------
    catalog : sequence of str
        The item ids that can be exposed; clicked items must be among them.
    exposures_per_click : int
        ``K``, how many other items each list shows besides the clicked one.
    seed : int
        Seed of the simulation.
    lead_s : float
        How many seconds before its click the list is exposed.
    id_prefix : str
        Prefix of impression and event ids (e.g. the dataset and seed), so that
        different simulations never share ids.

    Examples
    --------
    >>> sim = ImpressionSimulator(["a", "b", "c", "d"], exposures_per_click=3, seed=1)
    >>> sorted(sim.lists([5], ["b"])[0].tolist())  # K = 3 of 4 items: all of them
    ['a', 'b', 'c', 'd']
    >>> sim.click_positions([5]).tolist() == [sim.lists([5], ["b"])[0].tolist().index("b")]
    True
    """

    catalog: Sequence[str]
    exposures_per_click: int = 3
    seed: int = 2020
    lead_s: float = 1.0
    id_prefix: str = ""
    _ids: np.ndarray = field(init=False, repr=False, compare=False)
    _index_of: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        ids = np.asarray(list(self.catalog), dtype=object)
        if len(set(ids.tolist())) != len(ids):
            raise ValueError("catalog has duplicate item ids")
        if self.exposures_per_click < 0:
            raise ValueError(f"exposures_per_click must be >= 0, got {self.exposures_per_click}")
        if len(ids) < self.exposures_per_click + 1:
            raise ValueError(f"a catalog of {len(ids)} items cannot fill lists of "
                             f"{self.exposures_per_click + 1} distinct items")
        object.__setattr__(self, "_ids", ids)
        object.__setattr__(self, "_index_of", {item: i for i, item in enumerate(ids.tolist())})

    def lists(self, rating_index: Iterable[int], clicked_items: Iterable[str]) -> np.ndarray:
        """Item ids of each impression list, shape ``[n, K + 1]``, column = position."""
        return self._ids[self._list_indices(rating_index, clicked_items)]

    def click_positions(self, rating_index: Iterable[int]) -> np.ndarray:
        """Position of the clicked item in each list, shape ``[n]`` (independent of the item)."""
        index = np.asarray(rating_index, dtype=np.int64)
        slot = self.exposures_per_click  # the slots 0..K-1 draw the other items
        return (counter_random(self.seed, index, slot) % np.uint64(slot + 1)).astype(np.int64)

    def events(self, rating_index: Iterable[int], user_ids: Iterable[str],
               item_ids: Iterable[str], timestamps: Iterable[float]
               ) -> Iterator[tuple[list[Exposure], Click]]:
        """Yield, per rating, its exposures (by position) and then its click.

        ``rating_index`` identifies each rating (its row in the dataset); ids and
        lists depend on it, not on the order or subset of ratings replayed.
        """
        index = np.asarray(rating_index, dtype=np.int64)
        item_ids = list(item_ids)
        lists = self.lists(index, item_ids).tolist()
        for i, user, item, ts, shown in zip(index.tolist(), user_ids, item_ids, timestamps, lists):
            impression = f"{self.id_prefix}{i}"
            shown_ts = float(ts) - self.lead_s
            exposures = [Exposure(f"{impression}/e{position}", shown_ts, user, shown_item,
                                  impression, position=position)
                         for position, shown_item in enumerate(shown)]
            yield exposures, Click(f"{impression}/c", float(ts), user, item, impression)

    def _list_indices(self, rating_index, clicked_items) -> np.ndarray:
        index = np.asarray(rating_index, dtype=np.int64)
        clicked = np.asarray([self._catalog_index(item) for item in clicked_items], dtype=np.int64)
        if clicked.shape != index.shape:
            raise ValueError("rating_index and clicked_items differ in length")
        others = self._draw_others(index, clicked)
        positions = self.click_positions(index)
        width = self.exposures_per_click + 1
        is_click = np.arange(width) == positions[:, None]
        lists = np.empty((len(index), width), dtype=np.int64)
        lists[is_click] = clicked
        lists[~is_click] = others.ravel()  # row-major: the other items keep their drawn order
        return lists

    def _draw_others(self, index: np.ndarray, clicked: np.ndarray) -> np.ndarray:
        """K distinct catalog indices per row, none equal to the clicked one."""
        n_other = np.uint64(len(self._ids) - 1)
        others = np.empty((len(index), self.exposures_per_click), dtype=np.int64)
        for slot in range(self.exposures_per_click):
            attempt = np.zeros(len(index), dtype=np.uint64)
            pending = np.arange(len(index))
            while len(pending):  # redraw only the rows whose draw repeats an earlier slot
                drawn = (counter_random(self.seed, index[pending], slot, attempt[pending])
                         % n_other).astype(np.int64)
                drawn += drawn >= clicked[pending]  # skip over the clicked item
                others[pending, slot] = drawn
                repeated = (others[pending, :slot] == drawn[:, None]).any(axis=1)
                pending = pending[repeated]
                attempt[pending] += np.uint64(1)
        return others

    def _catalog_index(self, item: str) -> int:
        try:
            return self._index_of[item]
        except KeyError:
            raise ValueError(f"clicked item {item!r} is not in the catalog") from None
