"""OnlineLearner: learns from a stream of minibatches, restores exactly (popularity estimate
included), and its prequential recall rises as it follows the stream."""

import copy
import random

import numpy as np
import pytest
import torch

from recallstream.model.online import OnlineLearner
from recallstream.model.prequential import PrequentialMonitor
from recallstream.model.towers import movielens_config


def small_learner(seed=0) -> OnlineLearner:
    return OnlineLearner(movielens_config(id_buckets=4096, output_dim=16, hidden=(32,),
                                          history_length=10), seed=seed)


def clustered_stream(rng: random.Random, batches: int, size: int = 64):
    """Users u0..u39 in 4 taste groups; each group clicks its own 10 items."""
    for _ in range(batches):
        users, items = [], []
        for _ in range(size):
            user = rng.randrange(40)
            users.append(f"u{user}")
            items.append(f"i{(user % 4) * 10 + rng.randrange(10)}")
        yield users, items


ITEMS = {f"i{n}": {"title": f"movie {n}", "genres": [f"g{n // 10}"]} for n in range(40)}


def test_prequential_hits_rise_as_the_learner_follows_the_stream():
    learner = small_learner()
    monitor = PrequentialMonitor(k=10)
    rates = []
    for users, items in clustered_stream(random.Random(1), batches=60):
        rates.append(monitor.score(learner, users, items, users={}, items=ITEMS).mean())
        learner.train_batch(users, items, {}, ITEMS)
    # k=10 of 40 items: random is 0.25; the group structure is learnable
    assert np.mean(rates[:5]) < 0.45
    assert np.mean(rates[-10:]) > 0.8


def test_restored_learner_continues_bit_for_bit():
    stream = list(clustered_stream(random.Random(2), batches=8))
    first = small_learner()
    for users, items in stream[:5]:
        first.train_batch(users, items, {}, ITEMS)
    second = small_learner(seed=99)  # different initial weights, overwritten by the state
    # deepcopy: in one process, torch's Optimizer.load_state_dict would otherwise share the
    # moment tensors with `first` (a checkpoint goes through bytes, so the worker never shares)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    for users, items in stream[5:]:
        assert first.train_batch(users, items, {}, ITEMS) == \
            second.train_batch(users, items, {}, ITEMS)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert first.histories == second.histories
    np.testing.assert_array_equal(first.estimator.probability(list(ITEMS)),
                                  second.estimator.probability(list(ITEMS)))


def test_state_of_other_towers_is_refused():
    state = small_learner().state_dict()
    other = OnlineLearner(movielens_config(id_buckets=2048, output_dim=16, hidden=(32,)), seed=0)
    with pytest.raises(ValueError, match="towers differ"):
        other.load_state_dict(state)


def test_history_holds_the_latest_clicks_before_the_batch():
    learner = small_learner()
    learner.train_batch(["u"] * 12, [f"i{n}" for n in range(12)], {}, ITEMS)
    assert list(learner.histories["u"]) == [f"i{n}" for n in range(2, 12)]  # length 10
