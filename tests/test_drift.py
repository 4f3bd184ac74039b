"""Drift detectors (model/drift.py) on a seeded synthetic click stream whose item
popularity shifts abruptly midway, against the same stream without the shift."""

import numpy as np
import pytest

from recallstream.model.drift import DriftMonitor, jensen_shannon

CATALOG, CLICKS, SHIFT_AT, K = 1000, 12_000, 6_000, 50
BOUND = 3_000  # a detector must fire within this many clicks after the shift


def stream(shift: bool, seed: int = 7) -> np.ndarray:
    """Zipf-like clicks over CATALOG items; with ``shift``, the popularity ranks are
    reshuffled at SHIFT_AT (yesterday's tail becomes today's head)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, CATALOG + 1) ** 1.1
    weights /= weights.sum()
    before = rng.permutation(CATALOG)
    after = rng.permutation(CATALOG) if shift else before
    ranks = rng.choice(CATALOG, size=CLICKS, p=weights)
    return np.where(np.arange(CLICKS) < SHIFT_AT, before[ranks], after[ranks])


def run(items: np.ndarray) -> dict[str, list[int]]:
    """Feed the monitor as the worker does: per batch of 256 clicks, the misses of a
    most-popular-so-far top-K recommender (scored before counting) and the item ids."""
    monitor, counts = DriftMonitor(), np.zeros(CATALOG)
    fired: dict[str, list[int]] = {}
    for start in range(0, len(items), 256):
        batch = items[start:start + 256]
        misses = []
        for item in batch:
            top = np.argpartition(-counts, K)[:K]
            misses.append(0 if item in top else 1)
            counts[item] += 1
        for signal in monitor.update("miss_at_50", misses) + monitor.observe_inputs(
                "item_popularity", (f"i{item}" for item in batch)):
            fired.setdefault(signal, []).append(start + len(batch))
    return fired


@pytest.fixture(scope="module")
def shifted():
    return run(stream(shift=True))


@pytest.mark.parametrize("signal", ["miss_at_50", "item_popularity"])
def test_popularity_shift_fires_within_bound(shifted, signal):
    assert signal in shifted, shifted
    first = shifted[signal][0]
    assert SHIFT_AT < first <= SHIFT_AT + BOUND, (signal, shifted[signal])


def test_same_stream_without_shift_fires_none():
    assert run(stream(shift=False)) == {}


def test_jensen_shannon_hand_computed():
    # p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4)
    expected = 0.5 * (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25)) + 0.5 * np.log2(1 / 0.75)
    assert jensen_shannon({"a": 1, "b": 1}, {"a": 3}) == pytest.approx(expected)


def test_state_round_trip_continues_identically():
    items = stream(shift=True)
    whole, first, second = DriftMonitor(), DriftMonitor(), DriftMonitor()
    ids = [f"i{item}" for item in items]
    out_whole = whole.observe_inputs("item_popularity", ids) + whole.update("loss", items % 7)
    out_first = first.observe_inputs("item_popularity", ids[:SHIFT_AT + 500])
    second.load_state_dict(first.state_dict())
    out_second = (second.observe_inputs("item_popularity", ids[SHIFT_AT + 500:])
                  + second.update("loss", items % 7))
    assert out_first + out_second == out_whole
    assert second.statistic == whole.statistic and second.detections == whole.detections


def test_state_refuses_foreign_objects():
    import pickle
    state = DriftMonitor().state_dict()
    state["detectors"]["loss"] = pickle.dumps({"x": print})
    with pytest.raises(pickle.UnpicklingError):
        DriftMonitor().load_state_dict(state)


def test_the_catalog_wide_health_figures_come_every_n_batches():
    from recallstream.consumers.watch import TrainingWatch
    from recallstream.model.online import OnlineLearner
    from recallstream.model.towers import movielens_config

    learner = OnlineLearner(movielens_config(id_buckets=64, output_dim=4, hidden=(8,)), seed=0)
    items = {f"i{n}": {} for n in range(5)}
    watch = TrainingWatch(k=2, every=3)
    due = [bool(watch.before_step(learner, ["u1", "u2"], ["i1", "i2"], {}, items, version=v))
           for v in range(7)]
    assert due == [True, False, False, True, False, False, True]
    figures = watch.before_step(learner, ["u1", "u2"], ["i1", "i2"], {}, items, version=3)
    assert {"user_norm", "item_norm", "collapse", "coverage"} <= set(figures)
