"""The online learner learns, and its prequential scoring never sees the future.

- A stream with planted structure (users drawn from taste clusters): the loss falls well
  below ln(batch) and prequential recall beats most-popular-so-far within a bounded number
  of clicks.
- No leakage: each click's history is exactly its user's earlier clicks; later clicks of
  the same minibatch cannot change how earlier ones score.
- The pieces against straightforward reimplementations: the per-click popularity estimate,
  EASE (per-column ridge), the popularity baseline counted after every click, the
  recency-weighted history, the same-user mask of the softmax.
"""

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from recallstream.model.ease import Ease
from recallstream.model.features import History
from recallstream.model.losses import in_batch_softmax
from recallstream.model.online import OnlineLearner, stream_tower_config
from recallstream.model.most_popular import MostPopularSoFar
from recallstream.model.prequential import PrequentialMonitor
from recallstream.streaming.popularity import FrequencyEstimator

CLUSTERS, ITEMS_PER_CLUSTER, USERS = 8, 20, 160
CATALOG = {f"i{n}": {} for n in range(CLUSTERS * ITEMS_PER_CLUSTER)}


def clustered_clicks(seed: int, count: int):
    """Each user likes one cluster of items and clicks its items in random order."""
    rng = random.Random(seed)
    taste = {f"u{n}": n % CLUSTERS for n in range(USERS)}
    for _ in range(count):
        user = f"u{rng.randrange(USERS)}"
        item = taste[user] * ITEMS_PER_CLUSTER + rng.randrange(ITEMS_PER_CLUSTER)
        yield user, f"i{item}"


def small_learner(seed=0):
    return OnlineLearner(stream_tower_config(id_buckets=4096, dim=16), seed=seed, uniform_negatives=64)


def test_the_learner_learns_planted_tastes_and_beats_most_popular():
    torch.manual_seed(0)
    learner, monitor, batch = small_learner(), PrequentialMonitor(k=10, window=2000), 64
    clicks = list(clustered_clicks(seed=1, count=8000))
    losses = []
    for start in range(0, len(clicks), batch):
        users, items = zip(*clicks[start:start + batch])
        monitor.score(learner, users, items, {}, CATALOG)
        losses.append(learner.train_batch(users, items, {}, CATALOG))
    report = monitor.report()
    # the first steps know nothing: the loss of a uniform guess over the candidates
    assert losses[0] > math.log(batch)
    # the best possible: a uniform guess over the ~16 candidates of the user's cluster
    # (64 clicks and 64 uniform negatives over 8 clusters), ln 16 = 2.77
    assert np.mean(losses[-20:]) < math.log(batch) - 1.0
    # most-popular cannot know a user's cluster: about 10 of 160 items
    assert report["popularity_rolling_recall@10"] < 0.15
    assert report["rolling_recall@10"] > 0.35
    assert report["rolling_recall@10"] > 2 * report["popularity_rolling_recall@10"]


def test_prequential_recall_passes_most_popular_within_a_bounded_number_of_clicks():
    learner, monitor, batch = small_learner(seed=3), PrequentialMonitor(k=10, window=500), 64
    clicks = list(clustered_clicks(seed=2, count=4000))
    passed_at = None
    for start in range(0, len(clicks), batch):
        users, items = zip(*clicks[start:start + batch])
        monitor.score(learner, users, items, {}, CATALOG)
        learner.train_batch(users, items, {}, CATALOG)
        report = monitor.report()
        if report["rolling_recall@10"] > report["popularity_rolling_recall@10"] + 0.05:
            passed_at = start + batch
            break
    assert passed_at is not None and passed_at <= 3000


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9)), min_size=1, max_size=40),
       st.integers(1, 40))
def test_each_click_sees_exactly_its_users_earlier_clicks(clicks, split):
    learner = OnlineLearner(stream_tower_config(id_buckets=64, dim=4), seed=0)
    learner.history_length = 1000  # compare whole histories
    users, items = [f"u{u}" for u, _ in clicks], [f"i{i}" for _, i in clicks]
    learner.remember(users[:split], items[:split])  # earlier batches
    rest_users, rest_items = users[split:], items[split:]
    histories = learner.prefix_histories(rest_users, rest_items)
    for row, (user, history) in enumerate(zip(rest_users, histories)):
        position = split + row
        assert history == [items[n] for n in range(position) if users[n] == user]


def test_later_clicks_in_a_batch_cannot_change_how_earlier_clicks_score():
    clicks = list(clustered_clicks(seed=5, count=300))
    warm = small_learner(seed=1)
    for start in range(0, 200, 50):
        users, items = zip(*clicks[start:start + 50])
        warm.train_batch(users, items, {}, CATALOG)
    users, items = zip(*clicks[200:300])
    state = warm.state_dict()

    def hits_of(count):
        learner = small_learner(seed=1)
        learner.load_state_dict(state)
        monitor = PrequentialMonitor(k=20)
        monitor.observe(*zip(*clicks[:200]))
        model, popular = monitor.score_with_baseline(learner, users[:count], items[:count], {}, CATALOG)
        return model.tolist(), popular.tolist()

    whole_model, whole_popular = hits_of(100)
    first_model, first_popular = hits_of(40)
    assert whole_model[:40] == first_model and whole_popular[:40] == first_popular


def test_the_scored_click_is_not_in_its_own_history_or_exclusions():
    learner = small_learner()
    seen = []
    original = learner.embed_users
    learner.embed_users = lambda u, users, histories=None: seen.append(histories) or original(u, users, histories)
    monitor = PrequentialMonitor(k=5)
    monitor.score(learner, ["u", "u", "v"], ["i1", "i2", "i1"], {}, CATALOG)
    assert seen == [[[], ["i1"], []]]
    assert sorted(monitor.clicked.prefixes(["u"], ["i3"])[0]) == ["i1", "i2"]


def test_per_click_estimate_matches_a_plain_loop():
    rng = random.Random(0)
    stream = [[f"i{min(int(rng.expovariate(0.3)), 30)}" for _ in range(rng.randrange(1, 20))]
              for _ in range(60)]
    estimator = FrequencyEstimator(num_buckets=1 << 12, alpha=0.1, num_hashes=2, seed=3, per_click=True)
    buckets = {}
    last, gap, step = {}, {}, 0
    for batch in stream:
        estimator.update(batch)
        for item in batch:
            step += 1
            for h, bucket in enumerate(estimator.buckets([item])[:, 0]):
                key = (h, int(bucket))
                buckets.setdefault(item, []).append(key)
                observed = step - last.get(key, 0)
                gap[key] = observed if key not in gap else 0.9 * gap[key] + 0.1 * observed
                last[key] = step
    items = sorted({i for batch in stream for i in batch})
    expected = [1.0 / max(gap[key] for key in set(buckets[item])) for item in items]
    assert estimator.step == step
    np.testing.assert_allclose(estimator.probability(items), np.minimum(1.0, expected), rtol=1e-12)


def test_ease_matches_a_ridge_regression_per_column():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 200), rng.integers(0, 12, 200)
    ease = Ease(num_items=12, l2=5.0)
    ease.fit(users, items)
    matrix = np.zeros((30, 12))
    matrix[users, items] = 1.0
    for column in range(12):
        others = [j for j in range(12) if j != column]
        x = matrix[:, others]
        weights = np.linalg.solve(x.T @ x + 5.0 * np.eye(11), x.T @ matrix[:, column])
        np.testing.assert_allclose(ease.weights[others, column], weights, rtol=1e-4, atol=1e-5)
        assert ease.weights[column, column] == 0.0


def plain_popularity_hits(clicks, exclude, k):
    counts, first, hits = {}, {}, []
    for n, (item, excluded) in enumerate(zip(clicks, exclude)):
        ranking = sorted(counts, key=lambda i: (-counts[i], first[i]))
        candidates = [i for i in ranking if i == item or i not in excluded]
        hits.append(item in candidates[:k])
        counts[item] = counts.get(item, 0) + 1
        first.setdefault(item, n)
    return hits


def test_popularity_counted_after_every_click_matches_a_plain_ranking():
    for seed in range(20):
        rng = random.Random(seed)
        clicks = [f"i{rng.randrange(15)}" for _ in range(120)]
        exclude = [rng.sample(sorted(set(clicks)), rng.randrange(0, 5)) for _ in clicks]
        k = rng.randrange(1, 6)
        hits = MostPopularSoFar().hits_then_count(clicks, k, exclude).tolist()
        assert hits == plain_popularity_hits(clicks, exclude, k)


def test_popularity_scored_batch_after_batch_matches_a_plain_ranking_of_the_whole_stream():
    for seed in range(30):
        rng = random.Random(seed)
        items = [f"i{n}" for n in range(rng.randrange(2, 60))]
        clicks = [rng.choice(items[:rng.randrange(1, len(items) + 1)]) for _ in range(300)]
        # repeats, the clicked item itself and never-clicked ids among the exclusions
        exclude = [rng.choices(items, k=rng.randrange(0, 12)) + [click, "never"] for click in clicks]
        k = rng.randrange(1, 12)
        baseline, hits, start = MostPopularSoFar(), [], 0
        while start < len(clicks):
            end = start + rng.randrange(1, 80)
            hits += baseline.hits_then_count(clicks[start:end], k, exclude[start:end]).tolist()
            start = end
        assert hits == plain_popularity_hits(clicks, exclude, k)
        assert baseline.counts == {item: clicks.count(item) for item in dict.fromkeys(clicks)}


def test_history_without_decay_is_the_plain_mean_and_with_decay_weighs_recent_items_more():
    flat = History("h", num_buckets=50, dim=3, max_length=4).build()
    decayed = History("h", num_buckets=50, dim=3, max_length=4, decay=0.7).build()
    decayed.table.weight.data.copy_(flat.table.weight.data)
    indices = torch.tensor([[5, 9, 11, 0]])
    table = flat.table.weight.detach()
    assert torch.allclose(flat(indices), table[[5, 9, 11]].mean(0, keepdim=True), atol=1e-6)
    weights = torch.tensor([math.exp(-1.4), math.exp(-0.7), 1.0])
    expected = (weights[:, None] * table[[5, 9, 11]]).sum(0) / weights.sum()
    assert torch.allclose(decayed(indices), expected[None], atol=1e-6)
    with pytest.raises(ValueError, match="decay"):
        History("h", num_buckets=50, dim=3, decay=-1.0)


def test_same_user_positives_are_no_negatives():
    generator = torch.Generator().manual_seed(0)
    query = F.normalize(torch.randn(4, 5, generator=generator), dim=1)
    items = F.normalize(torch.randn(6, 5, generator=generator), dim=1)
    users = ["a", "b", "a", "a"]
    loss = in_batch_softmax(query, items, temperature=0.5, query_ids=users)
    logits = query @ items.T / 0.5
    expected = []
    for i in range(4):
        kept = [j for j in range(6) if j == i or j >= 4 or users[j] != users[i]]
        expected.append(-torch.log_softmax(logits[i, kept], dim=0)[kept.index(i)])
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-6)


def test_ease_fed_in_parts_equals_ease_fitted_at_once():
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 20, 150), rng.integers(0, 10, 150)
    whole = Ease(num_items=10, l2=3.0)
    whole.fit(users, items)
    parts = Ease(num_items=10, l2=3.0)
    parts.add(users[:70], items[:70])
    parts.refit()
    parts.add(users[70:], items[70:])
    parts.refit()
    np.testing.assert_allclose(parts.weights, whole.weights, rtol=1e-6)
