"""recallstream.model.losses.catalog_softmax against hand arithmetic and a plain-python reference."""

from __future__ import annotations

import math
import random

import pytest
import torch

from recallstream.model.losses import catalog_softmax, in_batch_softmax


def reference_catalog_softmax(query, catalog, rows, columns, *, temperature=None, sample_weight=None):
    """Loops and math.exp/log: each pair's cross-entropy over every catalogue item."""
    total = 0.0
    for k, (row, column) in enumerate(zip(rows, columns)):
        logits = [sum(a * b for a, b in zip(query[row], item)) for item in catalog]
        if temperature is not None:
            logits = [x / temperature for x in logits]
        top = max(logits)
        log_sum_exp = top + math.log(sum(math.exp(x - top) for x in logits))
        weight = 1.0 if sample_weight is None else sample_weight[k]
        total += weight * (log_sum_exp - logits[column])
    return total / len(rows)


def _loss(query, catalog, rows, columns, **options):
    return catalog_softmax(torch.tensor(query, dtype=torch.float64),
                           torch.tensor(catalog, dtype=torch.float64),
                           torch.tensor(rows), torch.tensor(columns), **options).item()


def test_two_positives_of_one_user_hand_computed():
    # logits of the user: [2, 0, 0] (temperature 0.5 doubles [1, 0, 0]);
    # log Z = log(e^2 + 2) = 2.2395; item 0: log Z - 2 = 0.2395; item 1: log Z - 0 = 2.2395
    # mean = (0.2395 + 2.2395) / 2 = 1.2395
    loss = _loss([[1, 0]], [[1, 0], [0, 1], [0, -1]], [0, 0], [0, 1], temperature=0.5)
    assert loss == pytest.approx(1.2395, abs=1e-4)


def test_sample_weight_scales_each_pair_and_divides_by_the_pair_count():
    # same pairs as above, weights 1 and 0: only item 0's 0.2395 counts, over 2 pairs: 0.1198
    loss = _loss([[1, 0]], [[1, 0], [0, 1], [0, -1]], [0, 0], [0, 1], temperature=0.5,
                 sample_weight=[1.0, 0.0])
    assert loss == pytest.approx(math.log(1 + 2 * math.exp(-2)) / 2)
    assert loss == pytest.approx(0.1198, abs=1e-4)


def test_agrees_with_reference_on_random_inputs():
    rng = random.Random(7)
    for _ in range(30):
        users, items, dim = rng.randint(1, 4), rng.randint(2, 6), rng.randint(1, 4)
        pairs = rng.randint(1, 8)
        query = [[rng.gauss(0, 1) for _ in range(dim)] for _ in range(users)]
        catalog = [[rng.gauss(0, 1) for _ in range(dim)] for _ in range(items)]
        rows = [rng.randrange(users) for _ in range(pairs)]
        columns = [rng.randrange(items) for _ in range(pairs)]
        options = {}
        if rng.random() < 0.5:
            options["temperature"] = rng.uniform(0.05, 2.0)
        if rng.random() < 0.5:
            options["sample_weight"] = [rng.uniform(0, 2) for _ in range(pairs)]
        expected = reference_catalog_softmax(query, catalog, rows, columns, **options)
        assert _loss(query, catalog, rows, columns, **options) == pytest.approx(expected, rel=1e-9)


def test_equals_in_batch_softmax_when_the_catalogue_is_the_batch():
    # one pair per user, user i clicked item i, no sampling correction: the two losses coincide
    torch.manual_seed(0)
    query, catalog = torch.randn(4, 3), torch.randn(4, 3)
    both = dict(temperature=0.3)
    expected = in_batch_softmax(query, catalog, **both)
    assert catalog_softmax(query, catalog, torch.arange(4), torch.arange(4), **both).item() == \
        pytest.approx(expected.item())


def test_gradients_reach_every_catalogue_item_and_the_queries():
    query = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    catalog = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    catalog_softmax(query, catalog, torch.tensor([0, 1, 1]), torch.tensor([4, 0, 2]),
                    temperature=0.2).backward()
    assert (query.grad.abs().sum(dim=1) > 0).all()
    assert (catalog.grad.abs().sum(dim=1) > 0).all()  # negatives are pushed too
    assert torch.autograd.gradcheck(
        lambda q, c: catalog_softmax(q, c, torch.tensor([0, 1]), torch.tensor([1, 3]), temperature=0.7,
                                     sample_weight=torch.tensor([0.5, 2.0], dtype=torch.float64)),
        (query.detach().requires_grad_(), catalog.detach().requires_grad_()))


@pytest.mark.parametrize(
    ("arguments", "options", "message"),
    [
        ((torch.ones(2, 3), torch.ones(4, 2), [0], [0]), {}, "query and catalog"),
        ((torch.ones(2, 3), torch.ones(4, 3), [0, 1], [0]), {}, "rows and columns"),
        ((torch.ones(2, 3), torch.ones(4, 3), [], []), {}, "non-empty"),
        ((torch.ones(2, 3), torch.ones(4, 3), [2], [0]), {}, "index"),
        ((torch.ones(2, 3), torch.ones(4, 3), [0], [4]), {}, "index"),
        ((torch.ones(2, 3), torch.ones(4, 3), [0], [1]), {"temperature": 0.0}, "temperature"),
        ((torch.ones(2, 3), torch.ones(4, 3), [0], [1]), {"sample_weight": [1.0, 2.0]}, "sample_weight"),
        ((torch.ones(2, 3), torch.ones(4, 3), [0], [1]), {"sample_weight": [-1.0]}, "non-negative"),
    ],
)
def test_rejects_bad_arguments(arguments, options, message):
    query, catalog, rows, columns = arguments
    with pytest.raises(ValueError, match=message):
        catalog_softmax(query, catalog, torch.tensor(rows, dtype=torch.long),
                        torch.tensor(columns, dtype=torch.long), **options)
