"""MostPopularSoFar against a plain ranking of the counts."""

import random

from recallstream.model.prequential import MostPopularSoFar


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
