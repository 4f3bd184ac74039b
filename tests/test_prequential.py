"""Prequential scoring: MostPopularSoFar against a plain ranking of the counts, the monitor on
hand-set vectors, and exact top-k over the catalog against a plain ranking."""

import random

import numpy as np
import pytest

from recallstream.model.catalog_vectors import CatalogVectors
from recallstream.model.most_popular import MostPopularSoFar
from recallstream.model.prequential import PrequentialMonitor


def plain_hits(clicks, targets, k, exclude):
    first_seen = {}
    for n, item in enumerate(clicks):
        first_seen.setdefault(item, n)
    counts = {item: clicks.count(item) for item in first_seen}
    ranking = sorted(counts, key=lambda item: (-counts[item], first_seen[item]))
    hits = []
    for target, excluded in zip(targets, exclude):
        candidates = [item for item in ranking if item == target or item not in excluded]
        hits.append(target in candidates[:k])
    return hits


def test_matches_a_plain_ranking_on_random_streams():
    for seed in range(30):
        rng = random.Random(seed)
        items = [f"i{n}" for n in range(rng.randrange(2, 40))]
        clicks = [rng.choice(items[: rng.randrange(1, len(items) + 1)]) for _ in range(200)]
        baseline = MostPopularSoFar()
        baseline.update(clicks)
        targets = [rng.choice(items) for _ in range(50)]
        exclude = [rng.sample(items, rng.randrange(0, min(8, len(items)))) for _ in range(50)]
        k = rng.randrange(1, 10)
        assert baseline.hits_at_k(targets, k, exclude).tolist() == plain_hits(clicks, targets, k, exclude)


def test_state_round_trip_keeps_the_tie_order():
    baseline = MostPopularSoFar()
    baseline.update(["b", "a", "c", "a", "b"])
    restored = MostPopularSoFar()
    restored.load_state_dict(baseline.state_dict())
    targets, exclude = ["a", "b", "c"], [[], [], []]
    assert restored.hits_at_k(targets, 1, exclude).tolist() == \
        baseline.hits_at_k(targets, 1, exclude).tolist() == [False, True, False]


class StubLearner:
    """Vectors set by hand: user and item vectors, and each user's history."""

    dim = 2

    def __init__(self, items, users, histories=None):
        self.item_vectors, self.user_vectors = items, users
        self.histories = histories or {}

    def embed_items(self, item_ids, items):
        return np.array([self.item_vectors[i] for i in item_ids], dtype=np.float32)

    def embed_users(self, user_ids, users, histories=None):
        return np.array([self.user_vectors[u] for u in user_ids], dtype=np.float32)

    def prefix_histories(self, user_ids, item_ids):
        return [list(self.histories.get(u, ())) for u in user_ids]


CATALOG = {"a": {}, "b": {}, "c": {}}


def test_monitor_scores_against_the_current_model_of_the_whole_catalog():
    learner = StubLearner({"a": [1, 0], "b": [0, 1], "c": [0.5, 0.5]}, {"u": [1, 0]})
    monitor = PrequentialMonitor(k=1, window=10)
    # u ranks a (1.0), c (0.5), b (0.0)
    assert monitor.score(learner, ["u", "u"], ["a", "b"], {}, CATALOG).tolist() == [True, False]
    learner.item_vectors["b"] = [2, 0]  # the model moved: b now ranks first
    assert monitor.score(learner, ["u"], ["b"], {}, CATALOG).tolist() == [True]
    # an item not in the catalog (retired, or never recorded) is a miss
    assert monitor.score(learner, ["u"], ["d"], {}, CATALOG).tolist() == [False]
    assert monitor.score(learner, ["u"], ["a"], {}, {}).tolist() == [False]


def test_monitor_leaves_out_everything_the_user_clicked_before_even_in_the_same_batch():
    # u ranks a (1.0), d (0.9), c (0.5), b (0.0)
    learner = StubLearner({"a": [1, 0], "b": [0, 1], "c": [0.5, 0.5], "d": [0.9, 0.44]},
                          {"u": [1, 0], "v": [1, 0]})
    catalog = {"a": {}, "b": {}, "c": {}, "d": {}}
    monitor = PrequentialMonitor(k=1, window=10)
    assert monitor.score(learner, ["u"], ["a"], {}, catalog).tolist() == [True]
    # d: a was clicked before; c: a and d (the batch's earlier click) were; v has clicked nothing
    assert monitor.score(learner, ["u", "u", "v"], ["d", "c", "c"], {}, catalog).tolist() == \
        [True, True, False]
    # clicking an item again can still hit
    assert monitor.score(learner, ["u"], ["a"], {}, catalog).tolist() == [True]


def test_monitor_counts_the_baseline_after_scoring_and_keeps_rolling_windows():
    learner = StubLearner({"a": [1, 0], "b": [0, 1], "c": [0.5, 0.5]}, {"u": [0, 1], "v": [1, 0]})
    monitor = PrequentialMonitor(k=1, window=2)
    monitor.score(learner, ["u"], ["b"], {}, CATALOG)   # model hit; baseline knows nothing yet
    monitor.score(learner, ["v"], ["b"], {}, CATALOG)   # model miss; baseline: b was clicked
    monitor.score(learner, ["v"], ["a"], {}, CATALOG)   # model hit; baseline miss
    report = monitor.report()
    assert (report["prequential_hits"], report["prequential_clicks"], report["popularity_hits"]) \
        == (2, 3, 1)
    assert report["prequential_recall@1"] == 2 / 3 and report["rolling_recall@1"] == 0.5
    assert report["popularity_prequential_recall@1"] == 1 / 3
    assert report["popularity_rolling_recall@1"] == 0.5
    restored = PrequentialMonitor(k=1, window=2)
    restored.load_state_dict(monitor.state_dict())
    assert restored.report() == report
    with pytest.raises(ValueError, match="recall@1"):
        PrequentialMonitor(k=50).load_state_dict(monitor.state_dict())


def reference_in_top_k(scores_matrix, ids, user_vectors, targets, k, exclude):
    """Straightforward: sort every candidate for each user."""
    out = []
    for vector, target, excluded in zip(user_vectors, targets, exclude):
        if target not in ids:
            out.append(False)
            continue
        candidates = [(float(vector @ scores_matrix[ids.index(i)]), i) for i in ids
                      if i == target or i not in excluded]
        target_score = float(vector @ scores_matrix[ids.index(target)])
        better = sum(1 for score, _ in candidates if score > target_score)
        out.append(better < k)
    return out


def test_catalog_vectors_top_k_matches_a_plain_ranking():
    rng = np.random.default_rng(3)
    live = [f"i{n}" for n in range(40)] + ["new"]
    matrix = rng.normal(size=(len(live), 4)).astype(np.float32)
    catalog = CatalogVectors(live, matrix)
    users = rng.normal(size=(30, 4)).astype(np.float32)
    targets = [random.Random(n).choice(live + ["i45"]) for n in range(30)]  # i45: not in the catalog
    exclude = [random.Random(100 + n).sample(live, 5) for n in range(30)]
    got = catalog.in_top_k(users, targets, k=7, exclude=exclude).tolist()
    assert got == reference_in_top_k(matrix, live, users, targets, 7, exclude)
    assert any(got) and not all(got)


def test_catalog_vectors_top_k_matches_a_plain_ranking_with_repeated_and_self_exclusions():
    flipped = 0  # rows that only excluding items made a hit: the exclusion path ran
    for seed in range(20):
        rng = np.random.default_rng(seed)
        pick = random.Random(seed)
        live = [f"i{n}" for n in range(pick.randrange(5, 60))]
        matrix = rng.normal(size=(len(live), 3)).astype(np.float32)
        catalog = CatalogVectors(live, matrix)
        users = rng.normal(size=(25, 3)).astype(np.float32)
        targets = [pick.choice(live) for _ in range(25)]
        # repeats, the target itself and unknown ids, as a user's click prefixes have
        exclude = [pick.choices(live, k=pick.randrange(0, 15)) + [target, "gone"]
                   for target in targets]
        k = pick.randrange(1, 8)
        got = catalog.in_top_k(users, targets, k=k, exclude=exclude).tolist()
        assert got == reference_in_top_k(matrix, live, users, targets, k, exclude)
        flipped += sum(got) - sum(catalog.in_top_k(users, targets, k=k,
                                                   exclude=[[]] * len(targets)).tolist())
    assert flipped > 0
