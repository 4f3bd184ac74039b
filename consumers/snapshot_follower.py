"""When the worker resets to a newer daily snapshot, and which snapshot it is based on.

The snapshot job (``recallstream snapshot``) publishes versions into
``snapshot_dir`` (:mod:`recallstream.model.snapshot_store`); the worker asks
:class:`SnapshotFollower` at batch boundaries whether to reset. It reads only
the store's pointer, and at most every ``check_every_s`` seconds of wall time:

- by default (production) a reset is due as soon as the pointer names a newer
  version than the model is based on, so a daily snapshot job means a daily reset;
- with ``every_event_days`` (replays: the demo and the tests) a newer version
  waits for the next boundary of that many days of *event* time, counted in the
  clicks the worker trains, so a replay shows its reset where a day ends.

The follower's state (the version the model is based on, the number of resets,
the event day of the last decision) is part of the worker's checkpoint.

Examples
--------
>>> import tempfile
>>> follower = SnapshotFollower(tempfile.mkdtemp(), check_every_s=0.0, every_event_days=1.0)
>>> follower.due(newest_click_ts=86_400.0 * 3 + 5)    # no snapshot yet
>>> follower.state_dict()
{'version': None, 'resets': 0, 'day': 3}
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any


class SnapshotFollower:
    """Decides when the worker resets to a snapshot (see the module docstring).

    Parameters
    ----------
    directory : str or Path
        The snapshot store's folder (``snapshot_dir``); nothing is due while it is missing.
    check_every_s : float
        Read the pointer at most this often (seconds of wall time).
    every_event_days : float or None
        Reset only at boundaries of this many days of event time (None: at once).

    Attributes
    ----------
    version : int or None
        The snapshot version the model is based on (None: never reset).
    resets : int
        Resets so far.
    """

    def __init__(self, directory, check_every_s: float = 30.0,
                 every_event_days: float | None = None) -> None:
        if every_event_days is not None and not every_event_days > 0:
            raise ValueError(f"every_event_days must be > 0, got {every_event_days!r}")
        self.directory = Path(directory)
        self.check_every_s = check_every_s
        self.every_event_days = every_event_days
        self.version: int | None = None
        self.resets = 0
        self._day: int | None = None  # event-day index of the last boundary seen
        self._checked_at = -math.inf
        self._store = None
        self._refused: set[int] = set()

    def due(self, newest_click_ts: float | None) -> int | None:
        """The newer snapshot version to reset to now, or None."""
        boundary = self._crossed_day(newest_click_ts)
        if self.every_event_days is not None and not boundary:
            return None
        if time.monotonic() - self._checked_at < self.check_every_s and not boundary:
            return None
        self._checked_at = time.monotonic()
        store = self.store()
        newest = store.current_version() if store is not None else None
        if newest is None or newest in self._refused or (self.version is not None
                                                         and newest <= self.version):
            return None
        return newest

    def store(self):
        """The snapshot store, once its folder exists (the worker never creates it)."""
        if self._store is None and self.directory.is_dir():
            from recallstream.consumers import metrics
            from recallstream.model.snapshot_store import SnapshotStore

            self._store = SnapshotStore(
                self.directory, on_corrupt=lambda kind, _message: metrics.observe_corrupt_file(kind))
        return self._store

    def refuse(self, version: int) -> None:
        """Never try ``version`` again (it could not be loaded or does not fit the model)."""
        self._refused.add(version)

    def reset_done(self, version: int) -> None:
        self.version = version
        self.resets += 1

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version, "resets": self.resets, "day": self._day}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.version, self.resets, self._day = state["version"], state["resets"], state["day"]

    def _crossed_day(self, ts: float | None) -> bool:
        """True when ``ts`` is in a later event-day period than the last one seen."""
        if self.every_event_days is None or ts is None:
            return False
        day = int(ts // (self.every_event_days * 86_400))
        crossed = self._day is not None and day > self._day
        if self._day is None or day > self._day:
            self._day = day
        return crossed
