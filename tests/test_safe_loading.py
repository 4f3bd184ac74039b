"""Files recallstream loads never run code: a snapshot's tensors and the river drift state,
crafted so that unpickling them would call os.system, are refused and the marker file that
call would create never appears (checkpoints: tests/test_checkpoint.py)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from recallstream.model.drift import DriftMonitor
from recallstream.model.snapshot import TENSORS, load_snapshot, save_snapshot
from recallstream.model.towers import TwoTower, movielens_config


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_payload_would_run_code_if_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(RunsCode(marker)))
    assert marker.exists()  # so the refusals below are refusals, not a harmless payload


def test_a_snapshot_whose_tensors_would_run_code_is_refused(tmp_path):
    model = TwoTower(movielens_config(output_dim=4, hidden=(8,), id_buckets=100))
    folder = save_snapshot(tmp_path / "snap", model, data_range={"interactions": 0})
    marker = tmp_path / "pwned"
    torch.save({"model": model.state_dict(), "evil": RunsCode(marker)}, folder / TENSORS)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        load_snapshot(folder)
    assert not marker.exists()


def test_drift_state_holding_a_code_running_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    state = DriftMonitor().state_dict()
    state["detectors"]["loss"] = pickle.dumps({"x": RunsCode(marker)})
    with pytest.raises(pickle.UnpicklingError, match="may not hold posix.system|may not hold os.system"):
        DriftMonitor().load_state_dict(state)
    assert not marker.exists()


def test_drift_state_with_river_objects_only_still_loads():
    monitor = DriftMonitor()
    monitor.update("loss", [1.0, 2.0, 3.0])
    restored = DriftMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.state_dict()["detectors"] == monitor.state_dict()["detectors"]
