"""Tests of the Dual Augmented Two-tower pieces: augmented vectors, mimic loss, CAL, config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recallstream.model.dat import AugmentedVectors, DatConfig, category_alignment_loss, dat_auxiliary_loss, mimic_loss


def randn(*shape, seed=0, grad=False):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=grad)


# ---------------------------------------------------------------------------
# mimic loss


def test_mimic_hand_computed_only_positives_count_but_all_pairs_divide():
    # pair 0 positive: ||[1, 1] - [0, 1]||^2 = 1 and ||[0, 0] - [2, 0]||^2 = 4
    # pair 1 negative: ignored even though far apart; T = 2 -> (1 + 4) / 2 = 2.5
    aug_user = torch.tensor([[1.0, 1.0], [9.0, 9.0]])
    item_out = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    aug_item = torch.tensor([[0.0, 0.0], [-9.0, 9.0]])
    user_out = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    assert mimic_loss(aug_user, item_out, aug_item, user_out, torch.tensor([1.0, 0.0])).item() == 2.5


def test_mimic_is_zero_when_augmented_vectors_equal_the_other_towers_output():
    user_out, item_out = randn(5, 4, seed=1), randn(5, 4, seed=2)
    assert mimic_loss(item_out.clone(), item_out, user_out.clone(), user_out, [1.0] * 5).item() == 0.0


def test_mimic_gradients_reach_only_the_augmented_vectors():
    aug_user, aug_item = randn(4, 3, seed=3, grad=True), randn(4, 3, seed=4, grad=True)
    user_out, item_out = randn(4, 3, seed=5, grad=True), randn(4, 3, seed=6, grad=True)
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0])
    mimic_loss(aug_user, item_out, aug_item, user_out, labels).backward()
    assert user_out.grad is None and item_out.grad is None  # stop-gradient on the tower outputs
    # d/da_u of (1/T) y ||a_u - p_v||^2 = 2 y (a_u - p_v) / T
    expected = 2 * labels[:, None] * (aug_user - item_out).detach() / 4
    assert torch.allclose(aug_user.grad, expected)
    assert aug_user.grad[1].abs().sum() == 0  # negative pair: no gradient


def test_mimic_agrees_with_numpy_reference():
    rng = np.random.default_rng(7)
    a_u, p_v, a_v, p_u = (rng.normal(size=(9, 5)) for _ in range(4))
    labels = rng.integers(0, 2, size=9).astype(float)
    expected = sum(labels[t] * (np.sum((a_u[t] - p_v[t]) ** 2) + np.sum((a_v[t] - p_u[t]) ** 2))
                   for t in range(9)) / 9
    tensors = [torch.from_numpy(x) for x in (a_u, p_v, a_v, p_u)]
    assert mimic_loss(*tensors, labels).item() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("shapes", "labels", "message"),
    [
        (((2, 3), (2, 3), (2, 3), (2, 4)), [1.0, 1.0], "one shape"),
        (((2, 3), (2, 3), (2, 3), (3, 3)), [1.0, 1.0], "one shape"),
        (((2, 3), (2, 3), (2, 3), (2, 3)), [1.0], "labels"),
    ],
)
def test_mimic_rejects_bad_shapes(shapes, labels, message):
    with pytest.raises(ValueError, match=message):
        mimic_loss(*(torch.zeros(s) for s in shapes), labels)


# ---------------------------------------------------------------------------
# category alignment loss


def coral_reference(vectors: np.ndarray, categories: list, major) -> float:
    d = vectors.shape[1]
    major_cov = np.cov(vectors[[c == major for c in categories]], rowvar=False)
    total = 0.0
    for value in sorted(set(categories) - {major}):
        rows = vectors[[c == value for c in categories]]
        if len(rows) >= 2:
            total += np.sum((major_cov - np.cov(rows, rowvar=False)) ** 2) / (4 * d * d)
    return total


def test_cal_is_zero_for_identical_distributions():
    vectors = randn(6, 3, seed=8)
    # the minor category holds the same vectors in another order: same covariance
    both = torch.cat([vectors, vectors[torch.tensor([5, 3, 1, 0, 2, 4])]])
    loss = category_alignment_loss(both, ["major"] * 6 + ["minor"] * 6, "major")
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    # a shifted copy (other mean, same covariance) is also aligned: CORAL ignores means
    shifted = torch.cat([vectors, vectors + 5.0])
    assert category_alignment_loss(shifted, [0] * 6 + [1] * 6, 0).item() == pytest.approx(0.0, abs=1e-12)


def test_cal_is_positive_for_different_spreads():
    vectors = randn(6, 3, seed=9)
    spread = torch.cat([vectors, 3.0 * vectors])
    assert category_alignment_loss(spread, [0] * 6 + [1] * 6, 0).item() > 0.01


def test_cal_agrees_with_numpy_reference():
    rng = np.random.default_rng(10)
    for _ in range(10):
        vectors = rng.normal(size=(40, 4)) * rng.uniform(0.5, 2.0, size=4)
        categories = rng.choice(["drama", "comedy", "horror", "noir"], size=40, p=[0.5, 0.3, 0.15, 0.05]).tolist()
        major = max(sorted(set(categories)), key=categories.count)
        expected = coral_reference(vectors, categories, major)
        assert category_alignment_loss(torch.from_numpy(vectors), categories).item() == pytest.approx(expected)
        assert category_alignment_loss(torch.from_numpy(vectors), categories, major).item() == pytest.approx(expected)


def test_cal_skips_singleton_categories_and_accepts_tensor_categories():
    vectors = randn(5, 2, seed=11)
    with_singleton = category_alignment_loss(vectors, torch.tensor([0, 0, 0, 1, 2]), 0)
    assert with_singleton.item() == 0.0  # categories 1 and 2 have one item each
    two_minor = category_alignment_loss(vectors, torch.tensor([0, 0, 0, 1, 1]), 0)
    assert two_minor.item() == pytest.approx(coral_reference(vectors.numpy(), [0, 0, 0, 1, 1], 0))


def test_cal_gradcheck():
    vectors = randn(7, 2, seed=12, grad=True)
    categories = ["a", "a", "a", "b", "b", "c", "c"]
    assert torch.autograd.gradcheck(lambda v: category_alignment_loss(v, categories, "a"), (vectors,))


@pytest.mark.parametrize(
    ("vectors", "categories", "major", "message"),
    [
        (torch.zeros(4), [0, 0, 1, 1], None, r"\[N, d\]"),
        (torch.zeros(4, 2), [0, 0, 1], None, "3 categories for 4 items"),
        (torch.zeros(4, 2), [0, 0, 1, 1], 7, "no item"),
        (torch.zeros(4, 2), [0, 1, 1, 1], 0, "at least two"),
    ],
)
def test_cal_rejects_bad_arguments(vectors, categories, major, message):
    with pytest.raises(ValueError, match=message):
        category_alignment_loss(vectors, categories, major)


# ---------------------------------------------------------------------------
# augmented vectors and the switch


def test_augmented_vectors_are_keyed_by_bucket_and_learn_sparsely():
    torch.manual_seed(0)
    augmented = AugmentedVectors(50, 4, sparse=True)
    vectors = augmented(torch.tensor([7, 7, 3]))
    assert vectors.shape == (3, 4)
    assert torch.equal(vectors[0], vectors[1])
    vectors.sum().backward()
    gradient = augmented.table.weight.grad
    assert gradient.is_sparse
    assert sorted(set(gradient.coalesce().indices()[0].tolist())) == [3, 7]


@pytest.mark.parametrize(("buckets", "dim"), [(0, 4), (10, 0)])
def test_augmented_vectors_reject_empty_tables(buckets, dim):
    with pytest.raises(ValueError):
        AugmentedVectors(buckets, dim)


def test_dat_auxiliary_loss_weights_and_switches():
    aug_user, user_out, aug_item, item_out = (randn(6, 3, seed=s) for s in range(20, 24))
    labels = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    categories = ["x", "x", "x", "y", "y", "y"]
    inputs = dict(aug_user=aug_user, user_out=user_out, aug_item=aug_item, item_out=item_out, labels=labels)
    mimic = mimic_loss(aug_user, item_out, aug_item, user_out, labels).item()
    cal = category_alignment_loss(item_out, categories, "x").item()
    on = DatConfig(enabled=True, mimic_weight=0.3, cal_weight=2.0)
    assert dat_auxiliary_loss(on, categories=categories, major="x", **inputs).item() == pytest.approx(0.3 * mimic + 2 * cal)
    assert dat_auxiliary_loss(on, **inputs).item() == pytest.approx(0.3 * mimic)  # no categories: no CAL
    no_cal = DatConfig(enabled=True, mimic_weight=1.0, cal_weight=0.0)
    assert dat_auxiliary_loss(no_cal, categories=categories, **inputs).item() == pytest.approx(mimic)
    assert dat_auxiliary_loss(DatConfig(enabled=False), categories=categories, **inputs).item() == 0.0


def test_dat_config_rejects_negative_weights():
    with pytest.raises(ValueError, match="non-negative"):
        DatConfig(enabled=True, mimic_weight=-0.1)
    with pytest.raises(ValueError, match="non-negative"):
        DatConfig(enabled=True, cal_weight=-1.0)
