"""Stable hashing: same buckets in every process, reserved bucket for missing values."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from recallstream.model.hashing import MISSING_BUCKET, bucketize, stable_hash


def test_hash_equals_keyed_blake2b_of_the_utf8_bytes():
    expected = int.from_bytes(
        hashlib.blake2b("café".encode(), digest_size=8, key=b"title").digest(), "little")
    assert int(stable_hash(["café"], key="title")[0]) == expected


def test_buckets_are_identical_in_a_fresh_process_with_another_hash_seed():
    code = ("from recallstream.model.hashing import bucketize; "
            "print(bucketize(['a', 'b', 'zip-02139'], 1000, key='k').tolist())")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={"PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert outputs == {str(bucketize(["a", "b", "zip-02139"], 1000, key="k").tolist()) + "\n"}


def test_missing_values_take_the_reserved_bucket_and_present_ones_never_do():
    values = [None, "", "x"] + [str(i) for i in range(2000)]
    buckets = bucketize(values, 17, key="f")
    assert buckets[:2].tolist() == [MISSING_BUCKET, MISSING_BUCKET]
    assert buckets[2:].min() >= 1 and buckets.max() <= 16


def test_buckets_of_values_hashed_before_equal_those_of_a_first_hashing():
    def keyed(value):
        return 1 + int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8,
                                                  key=b"warm").digest(), "little") % 12
    values = ["a", "b", "a", "ünï"]
    first = bucketize(values, 13, key="warm").tolist()  # hashes and remembers them
    again = bucketize(values, 13, key="warm").tolist()  # every value remembered
    assert first == again == [keyed(v) for v in values]
    assert bucketize(values + [None, ""], 13, key="warm").tolist() == again + [0, 0]


def test_buckets_spread_roughly_uniformly():
    buckets = bucketize([str(i) for i in range(20_000)], 11, key="f")
    counts = np.bincount(buckets, minlength=11)[1:]
    assert abs(counts - 2000).max() < 200  # 10 buckets of 2000 expected, sd ~42


def test_key_changes_the_hash_family():
    assert stable_hash(["a"], key="x")[0] != stable_hash(["a"], key="y")[0]


@pytest.mark.parametrize("buckets", [0, 1])
def test_too_few_buckets_is_a_value_error(buckets):
    with pytest.raises(ValueError):
        bucketize(["a"], buckets)
