"""Feature specs: encoding, missing values, running statistics, JSON round trip."""

import math

import numpy as np
import pytest
import torch

from recallstream.model.features import (Categorical, Dense, History, MultiCategorical, Numeric, Vocabulary,
                            encode_records, spec_from_dict, spec_to_dict)
from recallstream.model.hashing import bucketize


def test_categorical_prefix_and_missing():
    spec = Categorical("zip", 100, 4, prefix_length=2)
    encoded = spec.encode(["12345", "12999", None, float("nan")]).tolist()
    assert encoded[0] == encoded[1] == int(bucketize(["12"], 100, key="zip")[0])
    assert encoded[2:] == [0, 0]


def test_multi_categorical_mean_pools_present_values_only():
    spec = MultiCategorical("genres", 50, 3, max_values=4)
    module = spec.build()
    encoded = spec.encode([["a", "b"], ["a"], []])
    table = module.table.weight.detach()
    a, b = table[encoded[0, 0]], table[encoded[0, 1]]
    out = module(encoded).detach()
    assert torch.allclose(out[0], (a + b) / 2)
    assert torch.allclose(out[1], a)
    assert torch.equal(out[2], torch.zeros(3))


def test_title_strings_become_lowercase_word_tokens():
    spec = MultiCategorical("title", 1000, 2, max_values=5)
    assert torch.equal(spec.encode(["Toy Story (1995)"]), spec.encode([["toy", "story", "1995"]]))


def test_history_keeps_the_newest_items_in_the_item_id_buckets():
    spec = History("history", 1000, 4, max_length=2, hash_key="item_id")
    encoded = spec.encode([["1", "2", "3"]])[0].tolist()
    assert encoded == bucketize(["2", "3"], 1000, key="item_id").tolist()


def test_running_standardize_matches_numpy_over_batches_and_ignores_missing():
    spec = Numeric("year", "standardize")
    module = spec.build().train()
    rng = np.random.default_rng(0)
    batches = [rng.normal(1990, 10, size=n) for n in (5, 17, 40)]
    for batch in batches:
        module(spec.encode(list(batch) + [None, "n/a"]))
    seen = np.concatenate(batches)
    assert module.mean.item() == pytest.approx(seen.mean())
    assert (module.m2 / module.count).sqrt().item() == pytest.approx(seen.std())
    module.eval()
    out = module(spec.encode([seen.mean() + seen.std(), None]))
    assert out.tolist()[0] == pytest.approx([1.0, 0.0], abs=1e-5)
    assert out.tolist()[1] == [0.0, 1.0]


def test_statistics_are_frozen_in_eval_mode_and_travel_in_the_state_dict():
    spec = Numeric("age", "log")
    module = spec.build()
    module(spec.encode([1, 10, 100]))
    module.eval()
    module(spec.encode([1e6]))
    restored = spec.build()
    restored.load_state_dict(module.state_dict())
    assert restored.mean.item() == pytest.approx(np.mean(np.log1p([1, 10, 100])))


def test_bucketize_boundaries_are_right_closed_on_the_lower_edge():
    spec = Numeric("age", "bucketize", boundaries=(18, 35))
    slots = spec.build()(spec.encode([17.9, 18, 34.9, 35, None])).argmax(dim=1).tolist()
    assert slots == [1, 2, 2, 3, 0]


def test_vocabulary_unknown_and_one_hot_width():
    spec = Vocabulary("gender", ("F", "M"))
    assert spec.encode(["M", "?", None]).tolist() == [2, 0, 0]
    assert spec.build()(spec.encode(["M"])).tolist() == [[0.0, 0.0, 1.0]]


def test_dense_vectors_pass_through_and_bad_ones_are_zeros():
    spec = Dense("v", 2)
    assert spec.encode([[1, 2], [1, 2, 3], [math.nan, 1], None]).tolist() == [
        [1.0, 2.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]


def test_encode_records_reads_sources_and_missing_keys():
    specs = [Categorical("zip_prefix", 100, 2, source="zip_code", prefix_length=3), Numeric("age")]
    encoded = encode_records(specs, [{"zip_code": "02139", "age": 30}, {}])
    assert encoded["zip_prefix"][1] == 0 and math.isnan(encoded["age"][1])


@pytest.mark.parametrize("spec", [
    Categorical("a", 10, 2, prefix_length=3), Vocabulary("b", ("x", "y"), dim=3),
    MultiCategorical("c", 10, 2), History("d", 10, 2, max_length=3), Numeric("e", "bucketize", (1, 2)),
    Dense("f", 5)])
def test_specs_round_trip_through_dicts(spec):
    assert spec_from_dict(spec_to_dict(spec)) == spec


@pytest.mark.parametrize("make", [
    lambda: Categorical("a", 0, 2), lambda: Vocabulary("b", ("x", "x")),
    lambda: Numeric("c", "cube"), lambda: Numeric("c", "bucketize", (2, 1)),
    lambda: spec_from_dict({"kind": "Nope"})])
def test_bad_specs_are_value_errors(make):
    with pytest.raises(ValueError):
        make()
