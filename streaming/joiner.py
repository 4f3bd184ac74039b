"""Join each click to its exposure, in event time, with bounded and checkpointable state.

A click refers to its exposure by ``(impression_id, item_id)``. The two arrive on
different topics, so either may come first:

- a click whose exposure is already known is emitted at once, joined (freshness:
  the common case costs no waiting);
- otherwise it waits, and is emitted joined when its exposure arrives, or as an
  *orphan* (a positive without exposure, still worth training on) once the
  exposure stream has passed the click's time plus ``window_s``: its exposure
  can no longer come in order;
- an exposure is kept until the click stream has passed its time plus
  ``window_s``: later clicks on it would be out of the window;
- a duplicate delivery (same ``event_id``) of an exposure or a click is ignored
  while its id is remembered (for ``window_s`` of its stream's event time).

Watermarks are per *lane*: the caller passes the Kafka partition number,
because exposures and clicks are co-partitioned by user (same key, same
partition count), so lane ``p`` of both streams holds the same users. While a
backlog is read, one partition can run days of event time ahead of another;
lane watermarks keep that skew from expiring clicks whose exposures are merely
behind in another partition. State per lane is bounded by ``max_entries``
exposures, waiting clicks and remembered ids each; beyond it the oldest entry
goes (a waiting click is then emitted as an orphan, never dropped).

The joiner is deterministic given the order of its inputs, and its whole state
(waiting clicks included) is in :meth:`ClickJoiner.state_dict`, so it is
checkpointed with the offsets: a click is emitted exactly once across restarts.

Examples
--------
>>> from recallstream.streaming.events import Click, Exposure
>>> joiner = ClickJoiner(window_s=60.0)
>>> joiner.add_click(Click("c1", 100.0, "u1", "i1", "imp1"))   # before its exposure: waits
[]
>>> [p.exposure.position for p in joiner.add_exposure(Exposure("e1", 99.0, "u1", "i1", "imp1", 3))]
[3]
>>> joiner.add_click(Click("c1", 100.0, "u1", "i1", "imp1"))   # duplicate delivery: ignored
[]
>>> joiner.add_click(Click("c2", 101.0, "u2", "i5", "imp2"))   # its exposure never comes
[]
>>> joiner.add_exposure(Exposure("e9", 170.0, "u3", "i7", "imp3"))[0].orphan
True
>>> joiner.counters["joined"], joiner.counters["orphans"], joiner.counters["duplicate_clicks"]
(1, 1, 1)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

from recallstream.streaming.events import Click, Exposure

_NO_WATERMARK = float("-inf")
_STATE_VERSION = 1
# Events are saved as field lists in declaration order (rebuilt positionally).
_exposure_fields = attrgetter(*(f.name for f in fields(Exposure)))
_click_fields = attrgetter(*(f.name for f in fields(Click)))


@dataclass(slots=True)
class Positive:
    """A click ready for training, with its exposure if one was found (else an orphan).

    Examples
    --------
    >>> from recallstream.streaming.events import Click
    >>> Positive(Click("c", 1.0, "u", "i", "m"), None).orphan
    True
    """

    click: Click
    exposure: Exposure | None

    @property
    def orphan(self) -> bool:
        """True when no exposure was found within the window."""
        return self.exposure is None


class _Lane:
    """Join state of one partition number: exposures, waiting clicks, seen ids, watermarks.

    The tables are OrderedDicts used as FIFO queues in arrival order: a plain dict
    finds its first entry by skipping the slots of deleted ones, which makes
    expiring from the front quadratic; an OrderedDict pops and peeks it in O(1).
    """

    __slots__ = ("exposures", "waiting", "num_waiting", "exposure_ids", "click_ids",
                 "exposure_watermark", "click_watermark")

    def __init__(self) -> None:
        self.exposures: OrderedDict[tuple[str, str], Exposure] = OrderedDict()
        self.waiting: OrderedDict[tuple[str, str], list[Click]] = OrderedDict()
        self.num_waiting = 0
        self.exposure_ids: OrderedDict[str, float] = OrderedDict()
        self.click_ids: OrderedDict[str, float] = OrderedDict()
        self.exposure_watermark = _NO_WATERMARK
        self.click_watermark = _NO_WATERMARK

    def state(self) -> dict[str, Any]:
        return {
            "exposures": [_exposure_fields(e) for e in self.exposures.values()],
            "waiting": [_click_fields(c) for clicks in self.waiting.values() for c in clicks],
            "exposure_ids": list(self.exposure_ids.items()),
            "click_ids": list(self.click_ids.items()),
            "exposure_watermark": _finite_or_none(self.exposure_watermark),
            "click_watermark": _finite_or_none(self.click_watermark),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "_Lane":
        lane = cls()
        for fields in state["exposures"]:
            exposure = Exposure(*fields)
            lane.exposures[(exposure.impression_id, exposure.item_id)] = exposure
        for fields in state["waiting"]:
            click = Click(*fields)
            lane.waiting.setdefault((click.impression_id, click.item_id), []).append(click)
            lane.num_waiting += 1
        lane.exposure_ids = OrderedDict((event_id, ts) for event_id, ts in state["exposure_ids"])
        lane.click_ids = OrderedDict((event_id, ts) for event_id, ts in state["click_ids"])
        lane.exposure_watermark = _none_to_no_watermark(state["exposure_watermark"])
        lane.click_watermark = _none_to_no_watermark(state["click_watermark"])
        return lane


class ClickJoiner:
    """Pair clicks with exposures by ``(impression_id, item_id)`` within an event-time window.

    Parameters
    ----------
    window_s : float
        Join window in event seconds (> 0): how long a click waits for its
        exposure, and an exposure for its clicks, in the other stream's time.
    max_entries : int
        Per lane, at most this many exposures, waiting clicks, and remembered
        event ids of each stream (> 0).

    Attributes
    ----------
    counters : dict of str to int
        ``exposures`` and ``clicks`` (distinct ones added), ``duplicate_exposures``,
        ``duplicate_clicks``, ``joined``, ``orphans``, ``evicted_exposures``
        (dropped for capacity before their window ended).

    Examples
    --------
    >>> from recallstream.streaming.events import Click, Exposure
    >>> joiner = ClickJoiner(window_s=30.0)
    >>> _ = joiner.add_exposure(Exposure("e1", 10.0, "u1", "i1", "m1", position=0), lane=2)
    >>> [(p.click.event_id, p.exposure.event_id) for p in joiner.add_click(
    ...     Click("c1", 12.0, "u1", "i1", "m1"), lane=2)]
    [('c1', 'e1')]
    >>> restored = ClickJoiner(window_s=30.0)
    >>> restored.load_state_dict(joiner.state_dict())
    >>> restored.add_click(Click("c1", 12.0, "u1", "i1", "m1"), lane=2)   # still a duplicate
    []
    """

    def __init__(self, window_s: float = 1800.0, max_entries: int = 200_000) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.window_s = float(window_s)
        self.max_entries = max_entries
        self._lanes: dict[int, _Lane] = {}
        self.counters = dict.fromkeys(
            ("exposures", "clicks", "duplicate_exposures", "duplicate_clicks", "joined",
             "orphans", "evicted_exposures"), 0)

    def add_exposure(self, exposure: Exposure, lane: int = 0) -> list[Positive]:
        """Record an exposure; return the clicks it completes and those it makes orphans."""
        state = self._lane(lane)
        if exposure.event_id in state.exposure_ids:
            self.counters["duplicate_exposures"] += 1
            return []
        self.counters["exposures"] += 1
        state.exposure_ids[exposure.event_id] = exposure.ts
        key = (exposure.impression_id, exposure.item_id)
        state.exposures.setdefault(key, exposure)  # the first exposure of an item in a list wins
        completed = state.waiting.pop(key, ())
        state.num_waiting -= len(completed)
        positives = [self._joined(click, exposure) for click in completed]
        if exposure.ts > state.exposure_watermark:
            state.exposure_watermark = exposure.ts
            self._expire_waiting(state, positives)
        self._bound_exposures(state)
        return positives

    def add_click(self, click: Click, lane: int = 0) -> list[Positive]:
        """Record a click; return it joined if its exposure is known (else it waits)."""
        state = self._lane(lane)
        if click.event_id in state.click_ids:
            self.counters["duplicate_clicks"] += 1
            return []
        self.counters["clicks"] += 1
        state.click_ids[click.event_id] = click.ts
        if click.ts > state.click_watermark:
            state.click_watermark = click.ts
            self._expire_exposures(state)
        positives: list[Positive] = []
        exposure = state.exposures.get((click.impression_id, click.item_id))
        if exposure is not None:
            positives.append(self._joined(click, exposure))
        elif click.ts + self.window_s < state.exposure_watermark:
            positives.append(self._orphan(click))  # too late: its exposure cannot come any more
        else:
            state.waiting.setdefault((click.impression_id, click.item_id), []).append(click)
            state.num_waiting += 1
            self._bound_waiting(state, positives)
        _bound_ids(state.click_ids, self.max_entries)
        return positives

    def lane_state(self, lane: int) -> dict[str, Any]:
        """The state of one lane (JSON-able), for a joiner that owns lanes separately."""
        return self._lane(lane).state()

    def load_lane_state(self, lane: int, state: dict[str, Any] | None) -> None:
        """Replace one lane's state by a :meth:`lane_state` (None: an empty lane)."""
        self._lanes[lane] = _Lane() if state is None else _Lane.from_state(state)

    def drop_lane(self, lane: int) -> None:
        """Forget one lane (its partition moved to another process)."""
        self._lanes.pop(lane, None)

    def waiting_clicks(self) -> int:
        """How many clicks wait for their exposure (over all lanes)."""
        return sum(lane.num_waiting for lane in self._lanes.values())

    def state_dict(self) -> dict[str, Any]:
        """The whole state as plain JSON-able Python structures (for the checkpoint)."""
        return {"version": _STATE_VERSION, "window_s": self.window_s,
                "max_entries": self.max_entries, "counters": dict(self.counters),
                "lanes": {str(lane): state.state() for lane, state in self._lanes.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` (window and bound stay this joiner's)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported joiner state version {state.get('version')!r}")
        self.counters = {**dict.fromkeys(self.counters, 0), **state["counters"]}
        self._lanes = {int(lane): _Lane.from_state(s) for lane, s in state["lanes"].items()}

    def _lane(self, lane: int) -> _Lane:
        state = self._lanes.get(lane)
        if state is None:
            state = self._lanes[lane] = _Lane()
        return state

    def _joined(self, click: Click, exposure: Exposure) -> Positive:
        self.counters["joined"] += 1
        return Positive(click, exposure)

    def _orphan(self, click: Click) -> Positive:
        self.counters["orphans"] += 1
        return Positive(click, None)

    def _expire_waiting(self, state: _Lane, out: list[Positive]) -> None:
        # Waiting clicks are in arrival order; stop at the first still inside the window.
        horizon = state.exposure_watermark - self.window_s
        while state.waiting:
            key = next(iter(state.waiting))
            clicks = state.waiting[key]
            if clicks[0].ts >= horizon:
                break
            del state.waiting[key]
            state.num_waiting -= len(clicks)
            out.extend(self._orphan(click) for click in clicks)
        _expire_ids(state.exposure_ids, horizon)

    def _expire_exposures(self, state: _Lane) -> None:
        horizon = state.click_watermark - self.window_s
        while state.exposures:
            key = next(iter(state.exposures))
            if state.exposures[key].ts >= horizon:
                break
            del state.exposures[key]
        _expire_ids(state.click_ids, horizon)

    def _bound_exposures(self, state: _Lane) -> None:
        while len(state.exposures) > self.max_entries:
            state.exposures.popitem(last=False)
            self.counters["evicted_exposures"] += 1
        _bound_ids(state.exposure_ids, self.max_entries)

    def _bound_waiting(self, state: _Lane, out: list[Positive]) -> None:
        while state.num_waiting > self.max_entries:
            clicks = state.waiting.popitem(last=False)[1]
            state.num_waiting -= len(clicks)
            out.extend(self._orphan(click) for click in clicks)


def _expire_ids(ids: OrderedDict[str, float], horizon: float) -> None:
    while ids:
        event_id = next(iter(ids))
        if ids[event_id] >= horizon:
            break
        del ids[event_id]


def _bound_ids(ids: OrderedDict[str, float], max_entries: int) -> None:
    while len(ids) > max_entries:
        ids.popitem(last=False)


def _finite_or_none(watermark: float) -> float | None:
    return None if watermark == _NO_WATERMARK else watermark


def _none_to_no_watermark(watermark: float | None) -> float:
    return _NO_WATERMARK if watermark is None else float(watermark)
