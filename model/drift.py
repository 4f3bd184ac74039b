"""Drift detectors on the worker's live signals (river), with checkpointable state.

A river detector's ``drift_detected`` flag lasts one update, so
:class:`DriftMonitor` turns each flag into a detection that the caller counts
(``recallstream_drift_detected_total{signal}``). The signals and their detectors:

=========================  =======================================  ==============================
signal                     value fed, when                          detector
=========================  =======================================  ==============================
``miss_at_50``             1 if a scored click missed the top 50    ``river.drift.binary.DDM``
``loss``                   training loss, per batch                 ``PageHinkley`` (upward)
``positive_score``         mean score of the batch's positives      ``ADWIN``
``user_norm``              mean user vector norm, per batch         ``ADWIN``
``item_norm``              mean item vector norm, per batch         ``ADWIN``
``item_popularity``        Jensen-Shannon divergence of the clicked ``PageHinkley`` (upward)
                           items of a window vs the window before
``item_genres``            the same over the clicked items' genres  ``PageHinkley`` (upward)
``user_age``               the same over the clickers' age buckets  ``PageHinkley`` (upward)
=========================  =======================================  ==============================

The input-drift reference is the previous window of clicks (there is no
snapshot job yet to take one at). Everything here is torch- and Kafka-free.

Examples
--------
>>> monitor = DriftMonitor()
>>> monitor.update("miss_at_50", [0, 0, 0, 1] * 100 + [1] * 100)  # misses 1 in 4, then all
['miss_at_50']
>>> monitor.statistic["miss_at_50"] > 0.3
True
>>> restored = DriftMonitor()
>>> restored.load_state_dict(monitor.state_dict())
>>> restored.statistic == monitor.statistic
True
"""

from __future__ import annotations

import io
import math
import pickle
from collections import Counter
from typing import Any, Callable, Hashable, Iterable, Mapping

STATE_VERSION = 1
POPULARITY_WINDOW = 1000  # clicks per window of the input-drift signals


def _river():
    # imported on first use: river.drift imports scipy.stats (over a second), which the
    # commands that only name the signals (every CLI start, the joiner) need not pay
    from river import drift
    from river.drift import binary  # noqa: F401 (loads the submodule drift.binary)
    return drift


def _divergence_detector():
    # One value per window; JS between two windows of the same distribution is a small,
    # steady positive figure (sampling noise), an abrupt shift moves it far up at once.
    return _river().PageHinkley(min_instances=3, delta=0.02, threshold=0.15, mode="up")


DETECTORS: dict[str, Callable[[], Any]] = {
    "miss_at_50": lambda: _river().binary.DDM(warm_start=300),
    "loss": lambda: _river().PageHinkley(min_instances=30, delta=0.05, threshold=5.0, mode="up"),
    "positive_score": lambda: _river().ADWIN(delta=0.002),
    "user_norm": lambda: _river().ADWIN(delta=0.002),
    "item_norm": lambda: _river().ADWIN(delta=0.002),
    "item_popularity": _divergence_detector,
    "item_genres": _divergence_detector,
    "user_age": _divergence_detector,
}
SIGNALS = tuple(DETECTORS)


def jensen_shannon(p: Mapping[Hashable, float], q: Mapping[Hashable, float]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two count tables.

    >>> jensen_shannon({"a": 5}, {"a": 2}), jensen_shannon({"a": 1}, {"b": 1})
    (0.0, 1.0)
    """
    p_total, q_total = sum(p.values()), sum(q.values())
    if not p_total or not q_total:
        return 0.0
    out = 0.0
    for key in set(p) | set(q):
        pi, qi = p.get(key, 0) / p_total, q.get(key, 0) / q_total
        mi = (pi + qi) / 2
        if pi:
            out += 0.5 * pi * math.log2(pi / mi)
        if qi:
            out += 0.5 * qi * math.log2(qi / mi)
    return max(0.0, min(1.0, out))


class WindowDivergence:
    """Counts of categories over windows of ``window`` observations; each full window
    yields its Jensen-Shannon divergence from the window before (the first yields none).

    >>> windows = WindowDivergence(window=2)
    >>> windows.add(["a", "a", "b", "b"])
    [1.0]
    """

    def __init__(self, window: int = POPULARITY_WINDOW) -> None:
        self.window = window
        self._current: Counter = Counter()
        self._seen = 0
        self._reference: Counter | None = None

    def add(self, values: Iterable[Hashable]) -> list[float]:
        out = []
        for value in values:
            self._current[value] += 1
            self._seen += 1
            if self._seen == self.window:
                if self._reference is not None:
                    out.append(jensen_shannon(self._current, self._reference))
                self._reference, self._current, self._seen = self._current, Counter(), 0
        return out

    def state_dict(self) -> dict:
        return {"window": self.window, "current": dict(self._current), "seen": self._seen,
                "reference": None if self._reference is None else dict(self._reference)}

    def load_state_dict(self, state: Mapping) -> None:
        self.window, self._seen = int(state["window"]), int(state["seen"])
        self._current = Counter(state["current"])
        self._reference = None if state["reference"] is None else Counter(state["reference"])


class DriftMonitor:
    """One river detector per signal (see the module docstring).

    Attributes
    ----------
    statistic : dict of str to float
        The latest value fed to each signal's detector (the divergence for input drift).
    detections : dict of str to int
        Detections per signal since the monitor was created (checkpointed).
    """

    def __init__(self, window: int = POPULARITY_WINDOW) -> None:
        self.detectors = {name: make() for name, make in DETECTORS.items()}
        self.windows = {name: WindowDivergence(window)
                        for name in ("item_popularity", "item_genres", "user_age")}
        self.statistic: dict[str, float] = {}
        self.detections: dict[str, int] = {name: 0 for name in SIGNALS}

    def update(self, signal: str, values: Iterable[float]) -> list[str]:
        """Feed ``values`` to ``signal``'s detector; one entry of ``signal`` per detection."""
        detector = self.detectors[signal]
        fired = []
        for value in values:
            value = float(value)
            detector.update(value)
            self.statistic[signal] = value
            if detector.drift_detected:
                self.detections[signal] += 1
                fired.append(signal)
        running = getattr(detector, "_p", None)  # DDM's running error rate
        if running is not None and signal in self.statistic:
            self.statistic[signal] = running.get()  # the miss rate, not the latest 0/1
        return fired

    def observe_inputs(self, signal: str, categories: Iterable[Hashable]) -> list[str]:
        """Input drift: add clicked categories (item ids, genres, age buckets) to
        ``signal``'s windows, and feed each full window's divergence to its detector."""
        return self.update(signal, self.windows[signal].add(categories))

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "statistic": dict(self.statistic),
                "detections": dict(self.detections),
                "windows": {name: w.state_dict() for name, w in self.windows.items()},
                "detectors": {name: _dump(d) for name, d in self.detectors.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"drift state version {state.get('version')!r} is not {STATE_VERSION}")
        self.statistic = dict(state["statistic"])
        self.detections.update(state["detections"])
        for name, window_state in state["windows"].items():
            self.windows[name].load_state_dict(window_state)
        for name, dumped in state["detectors"].items():
            if name in self.detectors:
                self.detectors[name].__dict__.update(_load(dumped))


def _dump(detector) -> bytes:
    # the learned attributes only; bound methods are rebuilt by the fresh detector
    return pickle.dumps({key: value for key, value in vars(detector).items()
                         if not callable(value) or hasattr(value, "update")})


class _RiverOnly(pickle.Unpickler):
    """Unpickles river's own objects and nothing else: a checkpoint never runs other code."""

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "river":
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"drift state may not hold {module}.{name}")


def _load(data: bytes) -> dict:
    return _RiverOnly(io.BytesIO(bytes(data))).load()
