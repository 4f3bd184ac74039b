"""The shared train step: every loss learns, sparse rows move only when touched, state round-trips."""

import copy

import pytest
import torch

from recallstream.model.dat import DatConfig
from recallstream.model.features import Categorical
from recallstream.model.losses import catalog_softmax, in_batch_softmax
from recallstream.model.towers import TowerConfig, TwoTower
from recallstream.model.train_step import (LOSSES, Batch, CatalogBatch, Optimizers, TrainConfig, catalog_step,
                              compute_loss, train_step)

PAIR_LOSSES = [loss for loss in LOSSES if loss != "catalog_softmax"]


def id_model(augmented=False, seed=0):
    torch.manual_seed(seed)
    return TwoTower(TowerConfig((Categorical("user_id", 50, 8),), (Categorical("item_id", 50, 8),),
                                hidden=(16,), output_dim=8, augmented=augmented))


def batch(users=(1, 2, 3, 4), items=(10, 11, 12, 10)):
    items = torch.tensor(items)
    return Batch(user_inputs={"user_id": torch.tensor(users)}, item_inputs={"item_id": items},
                 item_ids=items, log_q=torch.log(torch.tensor([0.4, 0.2, 0.2, 0.4])),
                 categories=torch.tensor([1, 1, 2, 1]))


@pytest.mark.parametrize("loss", PAIR_LOSSES)
def test_every_loss_decreases_on_a_repeated_batch(loss):
    model, config = id_model(), TrainConfig(loss=loss)
    optimizers = Optimizers(model, config)
    losses = [train_step(model, optimizers, batch(), config) for _ in range(40)]
    assert losses[-1] < losses[0]


def test_softmax_loss_is_the_shared_in_batch_softmax_with_log_q_and_hit_removal():
    model, config = id_model(), TrainConfig(temperature=0.1)
    b = batch()
    with torch.no_grad():
        expected = in_batch_softmax(model.user_vectors(b.user_inputs), model.item_vectors(b.item_inputs),
                                    temperature=0.1, log_q=b.log_q, candidate_ids=b.item_ids)
        assert compute_loss(model, b, config).item() == pytest.approx(expected.item())
        no_log_q = compute_loss(model, b, TrainConfig(temperature=0.1, use_log_q=False))
        assert no_log_q.item() != pytest.approx(expected.item())


def catalog_batch():
    return CatalogBatch(user_inputs={"user_id": torch.tensor([1, 2])},
                        catalog_inputs={"item_id": torch.arange(10, 16)},
                        rows=torch.tensor([0, 0, 1]), columns=torch.tensor([0, 3, 5]))


def test_catalog_step_is_the_catalog_softmax_and_it_learns():
    model, config = id_model(), TrainConfig(loss="catalog_softmax", temperature=0.1)
    b = catalog_batch()
    with torch.no_grad():
        expected = catalog_softmax(model.user_vectors(b.user_inputs), model.item_vectors(b.catalog_inputs),
                                   b.rows, b.columns, temperature=0.1).item()
    optimizers = Optimizers(model, config)
    losses = [catalog_step(model, optimizers, b, config) for _ in range(40)]
    assert losses[0] == pytest.approx(expected)
    assert losses[-1] < losses[0]


def test_catalog_loss_and_pair_batches_do_not_mix():
    model = id_model()
    with pytest.raises(ValueError, match="catalog_step"):
        train_step(model, Optimizers(model, TrainConfig()), batch(), TrainConfig(loss="catalog_softmax"))
    with pytest.raises(ValueError, match="not 'softmax'"):
        catalog_step(model, Optimizers(model, TrainConfig()), catalog_batch(), TrainConfig())
    dat = TrainConfig(loss="catalog_softmax", dat=DatConfig(enabled=True))
    augmented = id_model(augmented=True)
    with pytest.raises(ValueError, match="DAT"):
        catalog_step(augmented, Optimizers(augmented, dat), catalog_batch(), dat)


def test_only_touched_embedding_rows_change():
    model, config = id_model(), TrainConfig()
    before = model.item_tower.blocks["item_id"].table.weight.detach().clone()
    train_step(model, Optimizers(model, config), batch(), config)
    after = model.item_tower.blocks["item_id"].table.weight.detach()
    changed = (before != after).any(dim=1).nonzero().flatten().tolist()
    assert changed == [10, 11, 12]


def test_extra_negatives_enter_the_softmax():
    model, config = id_model(), TrainConfig()
    b = batch()
    with torch.no_grad():
        plain = compute_loss(model, b, config).item()
        b.negative_inputs = {"item_id": torch.tensor([30, 31])}
        b.negative_ids = torch.tensor([30, 31])
        b.negative_log_q = torch.log(torch.tensor([0.01, 0.01]))
        assert compute_loss(model, b, config).item() > plain


def test_dat_adds_the_auxiliary_loss_and_trains_the_augmented_vectors():
    model = id_model(augmented=True)
    on = TrainConfig(dat=DatConfig(enabled=True, mimic_weight=1.0, cal_weight=1.0))
    off = TrainConfig(dat=DatConfig(enabled=False))
    with torch.no_grad():
        assert compute_loss(model, batch(), on).item() > compute_loss(model, batch(), off).item()
    before = model.user_augmented.table.weight.detach().clone()
    train_step(model, Optimizers(model, on), batch(), on)
    assert not torch.equal(before, model.user_augmented.table.weight.detach())


def test_optimizer_state_round_trip_gives_identical_next_steps():
    config = TrainConfig()
    model = id_model()
    optimizers = Optimizers(model, config)
    train_step(model, optimizers, batch(), config)
    twin = copy.deepcopy(model)
    twin_optimizers = Optimizers(twin, config)
    # a deep copy, as a checkpoint on disk would be (load_state_dict keeps tensor references)
    twin_optimizers.load_state_dict(copy.deepcopy(optimizers.state_dict()))
    for m, o in ((model, optimizers), (twin, twin_optimizers)):
        train_step(m, o, batch(items=(12, 13, 10, 11)), config)
    for (name, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("bad", [dict(loss="hinge"), dict(temperature=0.0), dict(pointwise_negatives=0)])
def test_bad_train_configs_are_value_errors(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)
