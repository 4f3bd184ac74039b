"""Fault: torn or corrupt checkpoint, snapshot and pointer files (issue 15).

A truncated file, random bytes, or a wrong ``format_version`` makes loading fall back to
the previous good file with one clear log line and one increment of
``recallstream_corrupt_files_total{kind}``, never an exception that a restarted worker
would hit again (a crash loop). A checkpoint written by a *newer* format is the one
exception, refused on purpose (tests/test_checkpoint.py): falling back past it would let
the older code prune the newer checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random

import pytest
import torch
from prometheus_client import REGISTRY

from recallstream.consumers import metrics
from recallstream.consumers.snapshot_follower import SnapshotFollower
from recallstream.model.checkpoint import MAGIC, CheckpointStore
from recallstream.model.online import OnlineLearner, stream_tower_config
from recallstream.model.snapshot_store import LEARNER, MANIFEST, POINTER, SnapshotStore


def corrupt_count(kind: str) -> float:
    return REGISTRY.get_sample_value("recallstream_corrupt_files_total", {"kind": kind}) or 0.0


def counting_store(directory) -> CheckpointStore:
    """A store wired to the metric as the worker wires it."""
    return CheckpointStore(directory, on_corrupt=lambda _p, _e: metrics.observe_corrupt_file("checkpoint"))


def with_version(data: bytes, version) -> bytes:
    """The checkpoint bytes with another format_version and a header checksum that matches
    (a well-framed file of the wrong version, not a torn header)."""
    header_end = data.index(b"\n", len(MAGIC))
    checksum_end = data.index(b"\n", header_end + 1)
    header = json.loads(data[len(MAGIC):header_end])
    header["format_version"] = version
    line = json.dumps(header, sort_keys=True).encode()
    return MAGIC + line + b"\n" + hashlib.sha256(line).hexdigest().encode() + b"\n" + data[checksum_end + 1:]


DAMAGE = {
    "truncated": lambda data: data[:len(data) // 2],
    "torn_header": lambda data: data[:len(MAGIC) + 10],
    "random_bytes": lambda data: random.Random(1).randbytes(len(data)),
    "flipped_payload_byte": lambda data: data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:],
    "empty": lambda data: b"",
    "older_version": lambda data: with_version(data, 0),
    "version_not_a_number": lambda data: with_version(data, "two"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    store = counting_store(tmp_path)
    store.save({"i": 1, "w": torch.ones(3)})
    newest = store.save({"i": 2, "w": torch.zeros(3)})
    newest.write_bytes(DAMAGE[damage](newest.read_bytes()))
    before = corrupt_count("checkpoint")

    with caplog.at_level(logging.WARNING, logger="recallstream.model.checkpoint"):
        loaded = store.load_latest()

    assert loaded["i"] == 1 and loaded["w"].tolist() == [1.0, 1.0, 1.0]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and newest.name in lines[0] and "falling back" in lines[0]
    assert corrupt_count("checkpoint") - before == 1
    # a restarted worker gets the same answer: no crash loop, and the next save goes on
    assert counting_store(tmp_path).load_latest()["i"] == 1
    assert store.save({"i": 3}).name == "ckpt-0000000003" and store.load_latest() == {"i": 3}


def test_two_damaged_checkpoints_fall_back_two_steps_and_count_two(tmp_path):
    store = counting_store(tmp_path)
    for i in range(3):
        store.save({"i": i})
    paths = store.paths()
    paths[2].write_bytes(b"garbage")
    paths[1].write_bytes(paths[1].read_bytes()[:-1])
    before = corrupt_count("checkpoint")
    assert store.load_latest() == {"i": 0}
    assert corrupt_count("checkpoint") - before == 2


# -- snapshots and their pointer


def learner() -> OnlineLearner:
    return OnlineLearner(stream_tower_config(id_buckets=64, dim=4), seed=0)


def publish_two(directory) -> SnapshotStore:
    store = SnapshotStore(directory, on_corrupt=lambda kind, _m: metrics.observe_corrupt_file(kind))
    for examples in (10, 20):
        store.publish(learner().state_dict(), cut_offsets={"examples": {0: examples}},
                      event_range=None, examples=examples)
    return store


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "empty"])
def test_a_damaged_current_snapshot_falls_back_to_the_previous_version(tmp_path, caplog, damage):
    store = publish_two(tmp_path)
    path = tmp_path / "v2" / LEARNER
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    before = corrupt_count("snapshot")

    with caplog.at_level(logging.WARNING, logger="recallstream.model.snapshot_store"):
        first = store.current()
        again = store.current()  # a worker polls: the problem is told once

    assert (first.version, first.examples) == (again.version, again.examples) == (1, 10)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "v2" in lines[0] and "using v1" in lines[0]
    assert corrupt_count("snapshot") - before == 1


def test_a_snapshot_manifest_of_another_format_version_falls_back(tmp_path):
    from recallstream.model.snapshot_store import _checksum

    store = publish_two(tmp_path)
    manifest_path = tmp_path / "v2" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest["checksum"] = _checksum(manifest)
    manifest_path.write_text(json.dumps(manifest))
    before = corrupt_count("snapshot")
    assert store.current().version == 1
    assert corrupt_count("snapshot") - before == 1


@pytest.mark.parametrize("pointer", [b"v", b"\x00\xff\x13garbage", b"v2", b"", b"v9\n"])
def test_a_damaged_pointer_falls_back_to_the_newest_intact_version(tmp_path, caplog, pointer):
    store = publish_two(tmp_path)
    (tmp_path / POINTER).write_bytes(pointer)
    before = corrupt_count("snapshot_pointer") + corrupt_count("snapshot")

    with caplog.at_level(logging.WARNING, logger="recallstream.model.snapshot_store"):
        assert store.current_version() == 2
        assert store.current().version == 2

    assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
    assert corrupt_count("snapshot_pointer") + corrupt_count("snapshot") - before == 1


def test_the_snapshot_follower_counts_a_damaged_pointer(tmp_path):
    publish_two(tmp_path)
    (tmp_path / POINTER).write_bytes(b"\xff\xfe")
    before = corrupt_count("snapshot_pointer")
    follower = SnapshotFollower(tmp_path, check_every_s=0.0)
    assert follower.due(None) == 2  # the newest intact version, not a crash
    assert corrupt_count("snapshot_pointer") - before == 1


def test_every_snapshot_damaged_means_no_snapshot_not_a_crash(tmp_path):
    store = publish_two(tmp_path)
    for version in (1, 2):
        os.truncate(tmp_path / f"v{version}" / LEARNER, 7)
    assert store.current() is None
