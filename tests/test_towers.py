"""Towers: shapes, normalisation, shared weights, ids without features, config round trip."""

import pytest
import torch

from recallstream.model.features import Categorical, MultiCategorical
from recallstream.model.towers import TowerConfig, TwoTower, movielens_config

ITEMS = {"1": {"title": "Toy Story", "release_year": 1995, "genres": ["Animation", "Comedy"]},
         "2": {"title": "GoldenEye", "release_year": 1995, "genres": ["Action"]}}
USERS = {"7": {"age": 24, "gender": "M", "occupation": "technician", "zip_code": "85711"}}


def small_config(**overrides):
    return movielens_config(output_dim=8, hidden=(16,), id_buckets=1000, **overrides)


def test_cosine_outputs_are_unit_vectors_and_dot_outputs_are_not():
    torch.manual_seed(0)
    cosine = TwoTower(small_config()).embed_items(["1", "2"], ITEMS)
    dot = TwoTower(small_config(similarity="dot")).embed_items(["1", "2"], ITEMS)
    assert torch.allclose(cosine.norm(dim=1), torch.ones(2))
    assert not torch.allclose(dot.norm(dim=1), torch.ones(2))


def test_unknown_ids_and_missing_features_still_embed():
    torch.manual_seed(0)
    model = TwoTower(small_config())
    vectors = model.embed_users(["7", "never-seen"], USERS, histories=[["1", "unknown-item"], []])
    assert vectors.shape == (2, 8) and torch.isfinite(vectors).all()


def test_history_changes_the_user_vector():
    torch.manual_seed(0)
    model = TwoTower(small_config())
    a = model.embed_users(["7"], USERS, histories=[["1"]])
    b = model.embed_users(["7"], USERS, histories=[["2"]])
    assert not torch.allclose(a, b)


def test_shared_towers_use_one_mlp():
    spec = (Categorical("user_id", 100, 4),)
    model = TwoTower(TowerConfig(spec, (Categorical("item_id", 100, 4),), hidden=(8,), output_dim=4,
                                 shared=True))
    assert model.user_tower.mlp is model.item_tower.mlp
    with pytest.raises(ValueError):
        TwoTower(TowerConfig(spec, (MultiCategorical("g", 10, 3),), shared=True))


def test_sparse_and_dense_parameters_partition_the_model():
    model = TwoTower(small_config(augmented=True))
    sparse, dense = model.sparse_parameters(), model.dense_parameters()
    assert {id(p) for p in sparse}.isdisjoint(id(p) for p in dense)
    assert len(sparse) + len(dense) == len(list(model.parameters()))
    assert model.user_tower.blocks["user_id"].table.weight in [p for p in sparse]


def test_config_round_trip_rebuilds_an_identical_model():
    torch.manual_seed(0)
    model = TwoTower(small_config(augmented=True))
    rebuilt = TwoTower(TowerConfig.from_dict(model.config.to_dict()))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.embed_items(["1"], ITEMS), model.embed_items(["1"], ITEMS))


def test_embedding_does_not_update_running_statistics():
    model = TwoTower(small_config())
    before = {k: v.clone() for k, v in model.state_dict().items() if "count" in k}
    model.embed_items(["1", "2"], ITEMS)
    after = {k: v for k, v in model.state_dict().items() if "count" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_configs_are_value_errors():
    spec = (Categorical("x", 10, 2),)
    with pytest.raises(ValueError):
        TowerConfig(spec, spec, similarity="euclid")
    with pytest.raises(ValueError):
        TwoTower(TowerConfig(spec, spec, augmented=True))   # DAT needs user_id/item_id features
