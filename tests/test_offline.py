"""Offline training: learns a planted structure better than popularity, deterministic per seed,
no label leakage through the history, and (one moderate run) a 1-epoch smoke on MovieLens-100K."""

import numpy as np
import pytest
import torch

from recallstream.model.evaluation import mask_scores, popularity_scores, rank_top_k, topk_metrics
from recallstream.model.features import Categorical, History
from recallstream.model.offline import (Interactions, OfflineSettings, OfflineTrainer, run_recbole_protocol,
                           run_tfrs_protocol)
from recallstream.model.towers import TowerConfig, movielens_config
from recallstream.model.train_step import TrainConfig


def planted_clusters(seed=0, users=60, items=80, clusters=4, per_user=12):
    """Users of cluster c click mostly items of cluster c: a popularity list cannot know that."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        cluster = user % clusters
        own = [i for i in range(items) if i % clusters == cluster]
        for item in rng.choice(own, per_user, replace=False):
            rows.append((f"u{user}", f"i{item}", len(rows)))
    user_ids, item_ids, stamps = map(np.array, zip(*rows))
    return Interactions(user_ids, item_ids, stamps), [f"i{k}" for k in range(items)]


def small_config(history=True):
    users = (Categorical("user_id", 512, 16),) + ((History("history", 512, 16, max_length=20),)
                                                  if history else ())
    return TowerConfig(users, (Categorical("item_id", 512, 16),), hidden=(32,), output_dim=16)


def fit(data, catalog, seed=0, epochs=15, history=True):
    trainer = OfflineTrainer(small_config(history), TrainConfig(sparse_lr=0.05, dense_lr=0.01),
                             users={}, items={}, catalog=catalog,
                             settings=OfflineSettings(batch_size=64, seed=seed, progress=False))
    trainer.fit_history(data)
    for _ in range(epochs):
        trainer.train_epoch(data)
    return trainer


def test_training_beats_popularity_on_held_out_clicks():
    data, catalog = planted_clusters()
    rng = np.random.default_rng(1)
    held_out = rng.random(len(data)) < 0.2
    trainer = fit(data.subset(~held_out), catalog)
    users = sorted(set(data.user_ids.tolist()))
    row = {u: k for k, u in enumerate(users)}
    code = {i: k for k, i in enumerate(catalog)}
    train = data.subset(~held_out)
    seen_rows = np.array([row[u] for u in train.user_ids])
    seen_items = np.array([code[i] for i in train.item_ids])
    relevant = [set() for _ in users]
    for u, i in zip(data.user_ids[held_out], data.item_ids[held_out]):
        relevant[row[u]].add(code[i])
    model = topk_metrics(rank_top_k(mask_scores(trainer.score_users(users), seen_rows, seen_items), 5),
                         relevant, k=5)
    popular = torch.from_numpy(popularity_scores(seen_items, len(catalog))).expand(len(users), -1)
    baseline = topk_metrics(rank_top_k(mask_scores(popular, seen_rows, seen_items), 5), relevant, k=5)
    assert model["recall@5"] > baseline["recall@5"] + 0.2


def test_catalog_softmax_steps_take_whole_users_and_beat_popularity():
    data, catalog = planted_clusters(users=40, per_user=20)
    common = dict(users={}, items={}, catalog=catalog, model_config=small_config(history=False),
                  train_config=TrainConfig(loss="catalog_softmax", sparse_lr=0.05, dense_lr=0.01))
    trainer = OfflineTrainer(settings=OfflineSettings(users_per_step=16, seed=0, progress=False), **common)
    trainer.fit_history(data)
    user_rows = np.array([trainer._user_row[u] for u in data.user_ids])
    codes = np.array([trainer.item_code[i] for i in data.item_ids])
    step = trainer.make_catalog_batch(np.array([3, 7]), user_rows, codes)
    # every pair of users 3 and 7, and only theirs, against the whole catalogue
    assert sorted(step.rows.tolist()) == [0] * 20 + [1] * 20
    assert sorted(step.columns.tolist()) == sorted(codes[np.isin(user_rows, [3, 7])].tolist())
    assert step.catalog_inputs["item_id"].shape == (len(catalog),)
    recbole = run_recbole_protocol(data, max_epochs=30, patience=10,
                                   settings=OfflineSettings(users_per_step=16, seed=0, progress=False),
                                   **common)
    assert recbole["recall@10"] > recbole["popularity_recall@10"] + 0.2


def test_same_seed_same_model_other_seed_other_model():
    data, catalog = planted_clusters()
    a, b, c = (fit(data, catalog, seed=s, epochs=2) for s in (3, 3, 4))
    assert torch.equal(a.score_users(["u1"]), b.score_users(["u1"]))
    assert not torch.equal(a.score_users(["u1"]), c.score_users(["u1"]))


def test_the_trained_item_is_removed_from_its_users_history():
    data, catalog = planted_clusters()
    trainer = fit(data, catalog, epochs=0)
    batch = trainer.make_batch(np.arange(5), np.zeros(len(data), dtype=np.int64),
                               np.array([trainer.item_code[i] for i in data.item_ids]))
    history = batch.user_inputs["history"]
    item_buckets = batch.item_inputs["item_id"]
    assert not (history == item_buckets[:, None]).any()
    full = trainer.user_inputs(torch.zeros(5, dtype=torch.long))["history"]
    assert ((full > 0).sum(dim=1) == (history > 0).sum(dim=1) + 1).all()


def test_history_uses_the_newest_training_items():
    data = Interactions(np.array(["u"] * 4), np.array(["a", "b", "c", "d"]), np.array([4, 1, 3, 2]))
    config = TowerConfig((Categorical("user_id", 64, 4), History("history", 64, 4, max_length=2)),
                         (Categorical("item_id", 64, 4),), hidden=(), output_dim=4)
    trainer = OfflineTrainer(config, TrainConfig(), users={}, items={}, catalog=["a", "b", "c", "d"],
                             settings=OfflineSettings(progress=False))
    trainer.fit_history(data)
    newest = trainer.user_inputs(torch.tensor([0]))["history"][0].tolist()
    assert newest == trainer.model.encode_items(["c", "a"], {})["item_id"].tolist()


def test_items_outside_the_catalog_are_a_value_error():
    data, catalog = planted_clusters()
    trainer = OfflineTrainer(small_config(), TrainConfig(), users={}, items={}, catalog=catalog[:3],
                             settings=OfflineSettings(progress=False))
    with pytest.raises(ValueError, match="not in the catalog"):
        trainer.fit_history(data)


def test_protocols_run_end_to_end_on_synthetic_data():
    data, catalog = planted_clusters(users=40, per_user=20)
    common = dict(users={}, items={}, catalog=catalog, model_config=small_config(),
                  train_config=TrainConfig(sparse_lr=0.05, dense_lr=0.01),
                  settings=OfflineSettings(batch_size=64, seed=0, progress=False))
    recbole = run_recbole_protocol(data, max_epochs=8, patience=3, **common)
    assert recbole["recall@10"] > recbole["popularity_recall@10"]
    assert 1 <= recbole["settings"]["best_epoch"] <= 8
    tfrs = run_tfrs_protocol(data, epochs=3, train_size=600, test_size=200, ks=(1, 10), **common)
    assert set(tfrs) >= {"top1", "top10", "popularity_top1", "popularity_top10", "settings"}


def test_one_epoch_smoke_on_movielens_100k():
    movielens = pytest.importorskip("recallstream.streaming.movielens")
    try:
        data = movielens.load_movielens("ml-100k")
    except movielens.DatasetUnavailable as error:  # offline machine without the cached wheel
        pytest.skip(f"MovieLens-100K unavailable: {error}")
    ratings = data.ratings
    interactions = Interactions(ratings["user_id"], ratings["item_id"], ratings["timestamp"])
    figures = run_recbole_protocol(
        interactions, users=data.users, items=data.items, catalog=sorted(data.items),
        model_config=movielens_config(), train_config=TrainConfig(),
        settings=OfflineSettings(progress=False), max_epochs=1)
    assert figures["recall@10"] > figures["popularity_recall@10"]


def test_protocols_refuse_epoch_budgets_that_train_nothing():
    data, catalog = planted_clusters(users=10, per_user=10)
    common = dict(users={}, items={}, catalog=catalog, model_config=small_config(),
                  train_config=TrainConfig(), settings=OfflineSettings(progress=False))
    with pytest.raises(ValueError, match="max_epochs >= 1"):
        run_recbole_protocol(data, max_epochs=0, **common)
    with pytest.raises(ValueError, match="patience >= 0"):
        run_recbole_protocol(data, max_epochs=3, patience=-1, **common)
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        run_tfrs_protocol(data, epochs=0, train_size=60, test_size=20, **common)
