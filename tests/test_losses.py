"""Tests of recallstream.model.losses.in_batch_softmax against hand arithmetic and a plain-python reference."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from recallstream.model.losses import in_batch_softmax, mine_hard_negatives, remove_accidental_hits

# ---------------------------------------------------------------------------
# independent reference: loops and math.exp/log, no torch, no vectorisation


def reference_in_batch_softmax(query, candidates, *, temperature=None, log_q=None,
                               candidate_ids=None, num_hard_negatives=None, sample_weight=None):
    batch_size, num_candidates = len(query), len(candidates)
    total = 0.0
    for i in range(batch_size):
        logits = []
        for j in range(num_candidates):
            score = sum(a * b for a, b in zip(query[i], candidates[j]))
            if temperature is not None:
                score /= temperature
            if log_q is not None:
                score -= log_q[j]
            logits.append(score)
        negatives = [
            logits[j] for j in range(num_candidates)
            if j != i and (candidate_ids is None or candidate_ids[j] != candidate_ids[i])
        ]
        if num_hard_negatives is not None:
            negatives = sorted(negatives, reverse=True)[:num_hard_negatives]
        kept = [logits[i]] + negatives
        top = max(kept)
        log_sum_exp = top + math.log(sum(math.exp(x - top) for x in kept))
        weight = 1.0 if sample_weight is None else sample_weight[i]
        total += weight * (log_sum_exp - logits[i])
    return total / batch_size


def _loss(query, candidates, **options):
    return in_batch_softmax(torch.tensor(query, dtype=torch.float64),
                            torch.tensor(candidates, dtype=torch.float64), **options).item()


# ---------------------------------------------------------------------------
# tiny hand-computed cases

E = math.e


def test_identity_two_by_two():
    # logits [[1, 0], [0, 1]]; each row: logsumexp(1, 0) - 1 = log(e + 1) - 1 = log(1 + e^-1)
    assert _loss([[1, 0], [0, 1]], [[1, 0], [0, 1]]) == pytest.approx(math.log(1 + 1 / E))


def test_temperature_divides_logits():
    # temperature 0.5: logits [[2, 0], [0, 2]]; each row: log(e^2 + 1) - 2 = log(1 + e^-2) = 0.126928
    loss = _loss([[1, 0], [0, 1]], [[1, 0], [0, 1]], temperature=0.5)
    assert loss == pytest.approx(math.log(1 + E ** -2))
    assert loss == pytest.approx(0.126928, abs=1e-6)


def test_log_q_is_subtracted_from_every_column_including_the_positive():
    # log_q = [log 0.5, log 0.25] = [-0.6931, -1.3863]
    # row 0 logits: [1 + 0.6931, 0 + 1.3863] = [1.6931, 1.3863]
    #   loss0 = log(e^1.6931 + e^1.3863) - 1.6931 = log(2e + 4) - log(2e) = log(1 + 2/e)
    # row 1 logits: [0 + 0.6931, 1 + 1.3863] = [0.6931, 2.3863]
    #   loss1 = log(2 + 4e) - log(4e) = log(1 + 1/(2e))
    loss = _loss([[1, 0], [0, 1]], [[1, 0], [0, 1]], log_q=[math.log(0.5), math.log(0.25)])
    assert loss == pytest.approx((math.log(1 + 2 / E) + math.log(1 + 1 / (2 * E))) / 2)


def test_extra_candidates_are_negatives_for_every_row():
    # third candidate [1, 1] scores 1 against both queries
    # row 0 logits [1, 0, 1]: log(e + 1 + e) - 1 = log(2 + 1/e); same for row 1 by symmetry
    loss = _loss([[1, 0], [0, 1]], [[1, 0], [0, 1], [1, 1]])
    assert loss == pytest.approx(math.log(2 + 1 / E))


def test_accidental_hits_leave_only_the_positive():
    # both candidates have id "a": each row's only negative is masked, softmax over one logit = 0
    loss = _loss([[1, 0], [0, 1]], [[1, 0], [0, 1]], candidate_ids=["a", "a"])
    assert loss == pytest.approx(0.0, abs=1e-12)


def test_hard_negative_mining_keeps_the_largest_negative():
    # B = 1, logits [1, 0.5, -1]; k = 1 keeps [1, 0.5]: log(e + e^0.5) - 1 = log(1 + e^-0.5)
    loss = _loss([[1, 0]], [[1, 0], [0.5, 0], [-1, 0]], num_hard_negatives=1)
    assert loss == pytest.approx(math.log(1 + E ** -0.5))


def test_sample_weight_is_divided_by_the_batch_size():
    # query rows [1, 0] and [2, 0] against candidates [1, 0], [0, 1]
    # row 0 logits [1, 0]: l0 = log(1 + e^-1); row 1 logits [0, 0]: l1 = log 2
    # weights [3, 1]: (3 l0 + 1 l1) / 2 (Keras sum_over_batch_size, not / (3 + 1))
    loss = _loss([[1, 0], [0, 2]], [[1, 0], [0, 0]], sample_weight=[3.0, 1.0])
    l0, l1 = math.log(1 + 1 / E), math.log(2)
    assert loss == pytest.approx((3 * l0 + l1) / 2)


def test_mine_hard_negatives_puts_the_positive_first():
    # row 0 negatives 3, 1, 2 -> top 2 = 3, 2; row 1 negatives 5, 4, -1 -> 5, 4
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 4.0, -1.0]])
    assert mine_hard_negatives(logits, 2).tolist() == [[0.0, 3.0, 2.0], [0.0, 5.0, 4.0]]


def test_remove_accidental_hits_masks_extra_negatives_with_the_positive_id():
    masked = remove_accidental_hits(torch.zeros(2, 4), torch.tensor([7, 8, 7, 8]))
    assert (masked < -1e30).tolist() == [[False, False, True, False], [False, False, False, True]]


# ---------------------------------------------------------------------------
# agreement with the reference on random inputs, every option and combination


def _random_case(rng: random.Random):
    batch_size = rng.randint(1, 6)
    num_candidates = batch_size + rng.randint(0, 4)
    dim = rng.randint(1, 5)
    query = [[rng.gauss(0, 1) for _ in range(dim)] for _ in range(batch_size)]
    candidates = [[rng.gauss(0, 1) for _ in range(dim)] for _ in range(num_candidates)]
    options = {}
    if rng.random() < 0.5:
        options["temperature"] = rng.uniform(0.05, 2.0)
    if rng.random() < 0.5:
        options["log_q"] = [math.log(rng.uniform(1e-4, 1.0)) for _ in range(num_candidates)]
    if rng.random() < 0.5:  # a small alphabet so that accidental hits happen often
        options["candidate_ids"] = [rng.choice("abcd") for _ in range(num_candidates)]
    if rng.random() < 0.5:
        options["num_hard_negatives"] = rng.randint(1, num_candidates + 1)
    if rng.random() < 0.5:
        options["sample_weight"] = [rng.uniform(0.0, 3.0) for _ in range(batch_size)]
    return query, candidates, options


def test_agrees_with_reference_on_random_inputs():
    rng = random.Random(20240607)
    seen_options = set()
    for _ in range(400):
        query, candidates, options = _random_case(rng)
        seen_options.add(frozenset(options))
        expected = reference_in_batch_softmax(query, candidates, **options)
        assert _loss(query, candidates, **options) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert len(seen_options) == 32  # every on/off combination of the five options was exercised


def test_hard_negatives_beyond_the_candidates_keep_everything():
    rng = random.Random(3)
    for _ in range(20):
        query, candidates, options = _random_case(rng)
        options.pop("num_hard_negatives", None)
        everything = _loss(query, candidates, **options)
        assert _loss(query, candidates, num_hard_negatives=len(candidates), **options) == pytest.approx(everything)


def test_mine_hard_negatives_keeps_exactly_k_largest():
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(7, 12, generator=generator)
    for k in range(1, 12):
        mined = mine_hard_negatives(logits, k)
        assert mined.shape == (7, k + 1)
        for i in range(7):
            negatives = sorted((logits[i, j].item() for j in range(12) if j != i), reverse=True)
            assert mined[i, 0].item() == logits[i, i].item()
            assert mined[i, 1:].tolist() == pytest.approx(negatives[:k])


# ---------------------------------------------------------------------------
# accidental hits never count as negatives


def test_accidental_hits_equal_dropping_the_duplicates():
    # ids [a, b, a, b]: row 0 must ignore candidate 2, row 1 candidate 3; compute each row alone
    # with the duplicate physically removed and compare
    generator = torch.Generator().manual_seed(11)
    query = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    c = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    with_ids = in_batch_softmax(query, c, candidate_ids=["a", "b", "a", "b"])
    row0 = in_batch_softmax(query[0:1], torch.stack([c[0], c[1], c[3]]))
    row1 = in_batch_softmax(query[1:2], torch.stack([c[1], c[0], c[2]]))
    assert with_ids.item() == pytest.approx((row0.item() + row1.item()) / 2, rel=1e-12)


def test_changing_a_masked_candidate_does_not_change_the_loss():
    generator = torch.Generator().manual_seed(12)
    query = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    candidates = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    ids = ["x", "y", "z", "x", "x"]  # extras 3 and 4 duplicate row 0's positive
    for options in ({}, {"temperature": 0.1}, {"num_hard_negatives": 4}):
        # with sample weight only on row 0, rows for which 3 and 4 are real negatives don't count
        weights = [1.0, 0.0, 0.0]
        before = in_batch_softmax(query, candidates, candidate_ids=ids, sample_weight=weights, **options)
        moved = candidates.clone()
        moved[3:] = 100.0 * query[0]  # would dominate the softmax if it counted
        moved.requires_grad_(True)
        after = in_batch_softmax(query, moved, candidate_ids=ids, sample_weight=weights, **options)
        assert after.item() == before.item()
        after.backward()
        assert moved.grad[3:].abs().max().item() == 0.0


def test_batch_of_one_with_masked_extras_only_has_zero_loss():
    query = torch.tensor([[0.3, -0.2]])
    candidates = torch.tensor([[1.0, 0.0], [5.0, 5.0], [-3.0, 2.0]])
    loss = in_batch_softmax(query, candidates, candidate_ids=torch.tensor([4, 4, 4]))
    assert loss.item() == 0.0


# ---------------------------------------------------------------------------
# gradients


def test_gradients_flow_to_both_towers():
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(4, 3, generator=generator, requires_grad=True)
    candidates = torch.randn(6, 3, generator=generator, requires_grad=True)
    in_batch_softmax(query, candidates, temperature=0.2, log_q=torch.full((6,), -2.0),
                     candidate_ids=[1, 2, 3, 4, 5, 1], num_hard_negatives=2).backward()
    assert query.grad.abs().sum() > 0
    assert candidates.grad[:4].abs().sum(dim=1).min() > 0  # every positive gets a gradient


def test_gradcheck_with_every_option():
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(3, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    candidates = torch.randn(5, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    log_q = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15], dtype=torch.float64))

    def loss(q, c):
        return in_batch_softmax(q, c, temperature=0.7, log_q=log_q, candidate_ids=["a", "b", "c", "a", "d"],
                                num_hard_negatives=2, sample_weight=[1.0, 0.5, 2.0])

    assert torch.autograd.gradcheck(loss, (query, candidates))


def test_float32_matches_float64():
    generator = torch.Generator().manual_seed(4)
    query = torch.randn(8, 4, generator=generator, dtype=torch.float64)
    candidates = torch.randn(10, 4, generator=generator, dtype=torch.float64)
    options = {"temperature": 0.05, "candidate_ids": list("abcdefgaba"), "num_hard_negatives": 3}
    wide = in_batch_softmax(query, candidates, **options).item()
    narrow = in_batch_softmax(query.float(), candidates.float(), **options).item()
    assert narrow == pytest.approx(wide, rel=1e-5)
    assert math.isfinite(narrow)


# ---------------------------------------------------------------------------
# argument checking


@pytest.mark.parametrize(
    ("query_shape", "candidate_shape", "options", "message"),
    [
        ((3, 2), (2, 2), {}, "C=2 < B=3"),
        ((3, 2), (3, 4), {}, "dimension mismatch"),
        ((3,), (3, 2), {}, "2-D"),
        ((0, 2), (0, 2), {}, "empty"),
        ((2, 2), (3, 2), {"log_q": [0.0, 0.0]}, "log_q must have shape"),
        ((2, 2), (3, 2), {"log_q": [0.0, -math.inf, 0.0]}, "log_q must be finite"),
        ((2, 2), (3, 2), {"candidate_ids": ["a", "b"]}, "candidate_ids must have shape"),
        ((2, 2), (3, 2), {"candidate_ids": torch.tensor([1, 2])}, "candidate_ids must have shape"),
        ((2, 2), (3, 2), {"num_hard_negatives": 0}, "at least 1"),
        ((2, 2), (3, 2), {"num_hard_negatives": -2}, "at least 1"),
        ((2, 2), (3, 2), {"temperature": 0.0}, "temperature"),
        ((2, 2), (3, 2), {"temperature": -1.0}, "temperature"),
        ((2, 2), (3, 2), {"sample_weight": [1.0, 1.0, 1.0]}, "sample_weight must have shape"),
        ((2, 2), (3, 2), {"sample_weight": [1.0, -1.0]}, "non-negative"),
    ],
)
def test_rejects_bad_arguments(query_shape, candidate_shape, options, message):
    with pytest.raises(ValueError, match=message):
        in_batch_softmax(torch.zeros(query_shape), torch.zeros(candidate_shape), **options)


def test_numpy_ids_are_accepted():
    loss = in_batch_softmax(torch.eye(2), torch.eye(2), candidate_ids=np.array([10, 10]))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


# ===========================================================================
# pairwise, pointwise and contrastive losses

from recallstream.model.losses import contrastive_margin, pointwise_bce, triplet_hinge, triplet_logistic  # noqa: E402


def _cos(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def _random_vectors(rng, *shape):
    return np.asarray(rng.normal(size=shape))


def test_triplet_hinge_hand_computed():
    # a = [1, 0]; b+ = [0.6, 0.8] (cos 0.6); negatives [0, 1] (cos 0) and [1, 1] (cos 1/sqrt 2 = 0.7071)
    # margin 0.2: max(0, 0 + 0.2 - 0.6) = 0; max(0, 0.7071 + 0.2 - 0.6) = 0.3071; mean = 0.15355
    anchor, positive = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])
    negatives = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    expected = (0.0 + (1 / math.sqrt(2) + 0.2 - 0.6)) / 2
    assert triplet_hinge(anchor, positive, negatives, margin=0.2).item() == pytest.approx(expected, rel=1e-6)


def test_triplet_logistic_hand_computed():
    # same vectors, scale 2: softplus(2 * (0 - 0.6)) = log(1 + e^-1.2) = 0.263282,
    # softplus(2 * (0.7071 - 0.6)) = log(1 + e^0.2142) = 0.807144
    anchor, positive = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])
    negatives = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    expected = (math.log(1 + math.exp(-1.2)) + math.log(1 + math.exp(2 * (1 / math.sqrt(2) - 0.6)))) / 2
    assert triplet_logistic(anchor, positive, negatives, scale=2.0).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("num_negatives", [None, 1, 4])
def test_triplet_losses_agree_with_reference(num_negatives):
    rng = np.random.default_rng(7)
    for _ in range(20):
        batch, dim = rng.integers(1, 6), rng.integers(1, 5)
        anchor, positive = _random_vectors(rng, batch, dim), _random_vectors(rng, batch, dim)
        shape = (batch, dim) if num_negatives is None else (batch, num_negatives, dim)
        negative = _random_vectors(rng, *shape)
        margin, scale = rng.uniform(0, 1), rng.uniform(0.5, 20)
        hinge, logistic = [], []
        for i in range(batch):
            rows = [negative[i]] if num_negatives is None else list(negative[i])
            for row in rows:
                gap = _cos(anchor[i], row) - _cos(anchor[i], positive[i])
                hinge.append(max(0.0, gap + margin))
                logistic.append(math.log1p(math.exp(scale * gap)))
        tensors = [torch.from_numpy(x) for x in (anchor, positive, negative)]
        assert triplet_hinge(*tensors, margin=margin).item() == pytest.approx(sum(hinge) / len(hinge), abs=1e-12)
        assert triplet_logistic(*tensors, scale=scale).item() == pytest.approx(sum(logistic) / len(logistic))


def test_triplet_logistic_is_stable_for_large_gaps():
    anchor = torch.tensor([[1.0, 0.0]], requires_grad=True)
    positive, negative = torch.tensor([[-1.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    # gap = 2, scale 1000: softplus(2000) = 2000 exactly in floating point, exp(2000) would overflow
    loss = triplet_logistic(anchor, positive, negative, scale=1000.0)
    assert loss.item() == pytest.approx(2000.0)
    loss.backward()
    assert torch.isfinite(anchor.grad).all()
    # the other way round: log(1 + e^-2000) underflows to 0, not to a negative number or NaN
    assert triplet_logistic(anchor, negative, positive, scale=1000.0).item() == 0.0


def test_pointwise_bce_hand_computed_and_weighted():
    # logits: 3 * cos = [3, 0]; losses: -log σ(3) = log(1 + e^-3) = 0.048587, -log(1 - σ(0)) = log 2
    q = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    items = torch.tensor([[5.0, 0.0], [0.0, 1.0]])
    l0, l1 = math.log(1 + math.exp(-3)), math.log(2)
    assert pointwise_bce(q, items, [1.0, 0.0], scale=3.0).item() == pytest.approx((l0 + l1) / 2)
    # weights [1, 3] divided by B = 2
    weighted = pointwise_bce(q, items, torch.tensor([1.0, 0.0]), scale=3.0, sample_weight=[1.0, 3.0])
    assert weighted.item() == pytest.approx((l0 + 3 * l1) / 2)


def test_pointwise_bce_agrees_with_reference():
    rng = np.random.default_rng(8)
    q, items = _random_vectors(rng, 12, 3), _random_vectors(rng, 12, 3)
    labels = rng.integers(0, 2, size=12).astype(float)
    expected = 0.0
    for i in range(12):
        p = 1 / (1 + math.exp(-5.0 * _cos(q[i], items[i])))
        expected -= labels[i] * math.log(p) + (1 - labels[i]) * math.log(1 - p)
    loss = pointwise_bce(torch.from_numpy(q), torch.from_numpy(items), labels, scale=5.0)
    assert loss.item() == pytest.approx(expected / 12)


def test_contrastive_margin_hand_computed():
    # normalised: a = [1, 0]; b0 = [1, 0] (d = 0), b1 = [0, 1] (d = sqrt 2), b2 = [-1, 0] (d = 2)
    # labels [1, 0, 0], margin 1.5: 0^2 + max(1.5 - 1.4142, 0)^2 + max(1.5 - 2, 0)^2 = 0.0073593
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    expected = (1.5 - math.sqrt(2)) ** 2 / 3
    assert contrastive_margin(a, b, [1.0, 0.0, 0.0], margin=1.5).item() == pytest.approx(expected, rel=1e-6)
    # positive orthogonal pair: d^2 = 2
    assert contrastive_margin(a[1:2], b[1:2], [1.0]).item() == pytest.approx(2.0)


def test_contrastive_margin_agrees_with_reference():
    rng = np.random.default_rng(9)
    a, b = _random_vectors(rng, 15, 4), _random_vectors(rng, 15, 4)
    labels = rng.integers(0, 2, size=15).astype(float)
    expected = 0.0
    for i in range(15):
        unit_a, unit_b = a[i] / np.linalg.norm(a[i]), b[i] / np.linalg.norm(b[i])
        d = math.sqrt(sum((x - y) ** 2 for x, y in zip(unit_a, unit_b)))
        expected += labels[i] * d * d + (1 - labels[i]) * max(0.8 - d, 0.0) ** 2
    loss = contrastive_margin(torch.from_numpy(a), torch.from_numpy(b), labels, margin=0.8)
    assert loss.item() == pytest.approx(expected / 15)


def test_contrastive_margin_gradient_is_finite_for_identical_vectors():
    a = torch.tensor([[0.3, 0.4]], dtype=torch.float64, requires_grad=True)
    loss = contrastive_margin(a, a.detach().clone(), [0.0], margin=1.0)  # negative pair at d = 0
    loss.backward()
    assert loss.item() == pytest.approx(1.0)
    assert torch.isfinite(a.grad).all()


def test_pairwise_pointwise_contrastive_gradcheck():
    generator = torch.Generator().manual_seed(21)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)

    a, p, n = rand(3, 2), rand(3, 2), rand(3, 2, 2)
    assert torch.autograd.gradcheck(lambda *x: triplet_logistic(*x, scale=3.0), (a, p, n))
    assert torch.autograd.gradcheck(lambda *x: triplet_hinge(*x, margin=0.5), (a, p, n))
    assert torch.autograd.gradcheck(lambda q, i: pointwise_bce(q, i, [1.0, 0.0, 0.0]), (a, p))
    assert torch.autograd.gradcheck(lambda u, v: contrastive_margin(u, v, [1.0, 0.0, 1.0], margin=1.9), (a, p))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: triplet_hinge(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3), margin=-0.1), "margin"),
        (lambda: triplet_hinge(torch.ones(2, 3), torch.ones(3, 3), torch.ones(2, 3)), "positive"),
        (lambda: triplet_hinge(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 2, 4)), "expected"),
        (lambda: triplet_logistic(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3), scale=0.0), "scale"),
        (lambda: pointwise_bce(torch.ones(2, 3), torch.ones(2, 3), [1.0]), "labels"),
        (lambda: pointwise_bce(torch.ones(2, 3), torch.ones(2, 3), [1.0, 2.0]), r"\[0, 1\]"),
        (lambda: pointwise_bce(torch.ones(2, 3), torch.ones(2, 3), [1.0, 0.0], sample_weight=[-1.0, 1.0]),
         "non-negative"),
        (lambda: contrastive_margin(torch.ones(2, 3), torch.ones(2, 3), [1.0, 0.0], margin=0.0), "margin"),
        (lambda: contrastive_margin(torch.ones(2, 3), torch.ones(2, 3), [1.0]), "labels"),
    ],
)
def test_other_losses_reject_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
