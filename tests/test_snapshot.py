"""Snapshots: a trained model comes back whole (weights, feature statistics, configs, data range,
optimizer state), foreign or newer folders are refused, and a rewrite replaces the old one."""

import json

import pytest
import torch

from recallstream.model.features import Categorical, Numeric
from recallstream.model.snapshot import MANIFEST, load_snapshot, save_snapshot
from recallstream.model.towers import TowerConfig, TwoTower
from recallstream.model.train_step import Batch, Optimizers, TrainConfig, train_step

ITEMS = {str(k): {"release_year": 1950 + 5 * k} for k in range(12)}


def year_model(seed=0):
    torch.manual_seed(seed)
    return TwoTower(TowerConfig((Categorical("user_id", 64, 8),),
                                (Categorical("item_id", 64, 8), Numeric("release_year")),
                                hidden=(16,), output_dim=8))


def batch(model, users=("1", "2", "3", "4"), items=("0", "5", "9", "11")):
    return Batch(user_inputs=model.encode_users(list(users), {}),
                 item_inputs=model.encode_items(list(items), ITEMS),
                 item_ids=torch.tensor([int(i) for i in items]))


def trained(steps=5):
    model, config = year_model(), TrainConfig(sparse_lr=0.05, dense_lr=0.01)
    optimizers = Optimizers(model, config)
    for _ in range(steps):
        train_step(model, optimizers, batch(model), config)
    return model, config, optimizers


def test_trained_model_comes_back_with_its_feature_statistics_and_configs(tmp_path):
    model, config, _ = trained()
    save_snapshot(tmp_path / "snap", model, train_config=config,
                  data_range={"interactions": 20, "last_timestamp": 7}, metadata={"epochs": 5})
    loaded = load_snapshot(tmp_path / "snap")
    counts = [v.item() for k, v in model.state_dict().items() if k.endswith(".count")]
    assert counts == [20.0]  # 5 steps of 4 items went through release_year's running statistics
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    ids = [str(k) for k in range(12)]
    model.eval()
    assert torch.equal(loaded.model.embed_items(ids, ITEMS), model.embed_items(ids, ITEMS))
    assert torch.equal(loaded.model.embed_users(["1", "9"], {}), model.embed_users(["1", "9"], {}))
    assert not loaded.model.training
    assert loaded.model.config == model.config and loaded.train_config == config
    assert (loaded.data_range, loaded.metadata) == ({"interactions": 20, "last_timestamp": 7},
                                                    {"epochs": 5})
    assert loaded.optimizer_state is None


def test_saved_optimizer_state_resumes_training_exactly(tmp_path):
    model, config, optimizers = trained()
    save_snapshot(tmp_path / "snap", model, train_config=config, optimizers=optimizers)
    loaded = load_snapshot(tmp_path / "snap")
    resumed, resumed_optimizers = loaded.model, loaded.optimizers()
    resumed.train()
    for _ in range(3):
        train_step(model, optimizers, batch(model), config)
        train_step(resumed, resumed_optimizers, batch(resumed), config)
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_without_optimizer_state_training_restarts_from_fresh_moments(tmp_path):
    model, config, optimizers = trained()
    save_snapshot(tmp_path / "snap", model, train_config=config)
    fresh = load_snapshot(tmp_path / "snap")
    fresh_optimizers = fresh.optimizers()
    fresh.model.train()
    train_step(model, optimizers, batch(model), config)
    train_step(fresh.model, fresh_optimizers, batch(fresh.model), config)
    # same weights before the step, other Adam moments: the step differs
    assert not torch.equal(fresh.model.state_dict()["user_tower.mlp.0.weight"],
                           model.state_dict()["user_tower.mlp.0.weight"])


def test_rewriting_a_snapshot_replaces_it_and_leaves_no_scratch_folders(tmp_path):
    first, second = year_model(seed=1), year_model(seed=2)
    save_snapshot(tmp_path / "snap", first, data_range={"day": 1})
    save_snapshot(tmp_path / "snap", second, data_range={"day": 2})
    loaded = load_snapshot(tmp_path / "snap")
    assert loaded.data_range == {"day": 2}
    assert torch.equal(loaded.model.state_dict()["user_tower.mlp.0.weight"],
                       second.state_dict()["user_tower.mlp.0.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap"]


def test_foreign_and_newer_folders_are_refused(tmp_path):
    save_snapshot(tmp_path / "snap", year_model())
    manifest_path = tmp_path / "snap" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "version": manifest["version"] + 1}))
    with pytest.raises(ValueError, match="version 2 is not supported"):
        load_snapshot(tmp_path / "snap")
    manifest_path.write_text(json.dumps({**manifest, "format": "something-else"}))
    with pytest.raises(ValueError, match="not a recallstream snapshot"):
        load_snapshot(tmp_path / "snap")
    with pytest.raises(FileNotFoundError):
        load_snapshot(tmp_path / "missing")
