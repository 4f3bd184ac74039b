"""The seeded chaos schedule of ``recallstream soak``: which fault, when.

A schedule spreads the requested faults over the middle of a run of
``duration_s`` seconds (from 10 % to 85 % of it): the window is cut into one
slot per fault, the faults are dealt to the slots in a seeded random order, and
each fault starts at a seeded random moment of the first half of its slot (the
second half leaves room for the recovery). Snapshots are dealt only to slots in
the first half of the window, so that the stream still crosses event-day
boundaries after them and the worker resets to them. A Qdrant outage lasts
``outage_s`` seconds from its start; a broker restart is clean (SIGTERM) or hard
(SIGKILL), by a seeded coin.

The same seed, duration and counts give the same schedule, always.

Examples
--------
>>> schedule = ChaosSchedule.plan(seed=7, duration_s=100.0,
...                               counts={"kill_worker": 2, "snapshot": 1})
>>> [(f.kind, round(f.at_s, 1)) for f in schedule.faults]
[('snapshot', 14.9), ('kill_worker', 35.6), ('kill_worker', 70.3)]
>>> schedule == ChaosSchedule.plan(seed=7, duration_s=100.0, counts={"kill_worker": 2, "snapshot": 1})
True
>>> [f.kind for f in schedule.due(20.0)], [f.kind for f in schedule.due(20.0)]
(['snapshot'], [])
>>> len(schedule.pending())
2
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: Every fault kind a schedule can hold, in the order reports list them.
FAULT_KINDS = ("kill_joiner", "kill_worker", "restart_broker", "qdrant_outage", "snapshot")

WINDOW = (0.10, 0.85)  # share of the run in which faults start


@dataclass(frozen=True)
class Fault:
    """One fault of a schedule.

    Attributes
    ----------
    at_s : float
        Seconds from the start of the run.
    kind : str
        One of :data:`FAULT_KINDS`.
    duration_s : float
        How long it lasts (Qdrant outages; 0 for instantaneous faults).
    hard : bool
        For a broker restart: SIGKILL instead of a clean stop.

    Examples
    --------
    >>> Fault(3.0, "qdrant_outage", duration_s=5.0).ends_at_s
    8.0
    """

    at_s: float
    kind: str
    duration_s: float = 0.0
    hard: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {', '.join(FAULT_KINDS)}")

    @property
    def ends_at_s(self) -> float:
        return self.at_s + self.duration_s


@dataclass
class ChaosSchedule:
    """The faults of one run, in time order (see the module docstring).

    Use :meth:`plan` to make one; :meth:`due` hands out the faults whose time has come,
    each once.

    Examples
    --------
    >>> ChaosSchedule.plan(seed=1, duration_s=10.0, counts={"restart_broker": 1}).faults[0].kind
    'restart_broker'
    >>> ChaosSchedule.plan(seed=1, duration_s=10.0, counts={"reboot": 1})
    Traceback (most recent call last):
    ...
    ValueError: unknown fault kind 'reboot'; known: kill_joiner, kill_worker, restart_broker, qdrant_outage, snapshot
    """

    faults: list[Fault]
    _next: int = field(default=0, compare=False, repr=False)

    @classmethod
    def plan(cls, seed: int, duration_s: float, counts: dict[str, int],
             outage_s: float = 8.0) -> "ChaosSchedule":
        """A schedule of ``counts[kind]`` faults of each kind over ``duration_s`` seconds."""
        if not duration_s > 0:
            raise ValueError(f"duration_s must be positive, got {duration_s!r}")
        for kind, count in counts.items():
            Fault(0.0, kind)  # validates the kind
            if count < 0:
                raise ValueError(f"count of {kind} must be >= 0, got {count}")
        rng = random.Random(seed)
        kinds = [kind for kind in FAULT_KINDS for _ in range(counts.get(kind, 0))]
        slots = _deal(kinds, rng)
        start, end = WINDOW[0] * duration_s, WINDOW[1] * duration_s
        width = (end - start) / max(1, len(kinds))
        faults = []
        for slot, kind in enumerate(slots):
            at = start + width * (slot + rng.uniform(0.0, 0.5))
            faults.append(Fault(round(at, 3), kind,
                                duration_s=outage_s if kind == "qdrant_outage" else 0.0,
                                hard=kind == "restart_broker" and rng.random() < 0.5))
        return cls(faults)

    def due(self, elapsed_s: float) -> list[Fault]:
        """The faults starting at or before ``elapsed_s`` not handed out yet."""
        out = []
        while self._next < len(self.faults) and self.faults[self._next].at_s <= elapsed_s:
            out.append(self.faults[self._next])
            self._next += 1
        return out

    def pending(self) -> list[Fault]:
        """The faults not handed out yet."""
        return self.faults[self._next:]

    def counts(self) -> dict[str, int]:
        """Faults per kind (every kind, zeros included).

        >>> ChaosSchedule([Fault(1.0, "snapshot")]).counts()["snapshot"]
        1
        """
        return {kind: sum(f.kind == kind for f in self.faults) for kind in FAULT_KINDS}


def _deal(kinds: list[str], rng: random.Random) -> list[str]:
    """``kinds`` in a seeded order whose snapshots all fall in the first half of the slots."""
    others = [k for k in kinds if k != "snapshot"]
    snapshots = len(kinds) - len(others)
    rng.shuffle(others)
    first_half = max(snapshots, (len(kinds) + 1) // 2)
    places = sorted(rng.sample(range(first_half), snapshots))
    order, rest = [], iter(others)
    for slot in range(len(kinds)):
        order.append("snapshot" if slot in places else next(rest))
    return order
