"""SnapshotStore: versions, the CURRENT pointer, retention, crash leftovers, damaged
files and code-executing payloads; the learner state round trip."""

from __future__ import annotations

import hashlib
import io
import json
import logging

import pytest
import torch

from recallstream.model import checkpoint
from recallstream.model.online import OnlineLearner, stream_tower_config
from recallstream.model.snapshot_store import (CorruptSnapshot, EventRange, SnapshotLocked,
                                               SnapshotStore, UnsafeSnapshot)

CUT = {"examples": {0: 40, 1: 38}}
DAY = 86400.0


@pytest.fixture
def learner():
    learner = OnlineLearner(stream_tower_config(id_buckets=64, dim=4), seed=0, uniform_negatives=2)
    items = {f"i{n}": {} for n in range(5)}
    learner.train_batch(["u1", "u2", "u1"], ["i1", "i2", "i3"], users={}, items=items)
    return learner


def publish(store, learner, examples=3, cut=CUT):
    return store.publish(learner.state_dict(), cut_offsets=cut,
                         event_range=EventRange(first_ts=2 * DAY, last_ts=5 * DAY), examples=examples,
                         metadata={"epochs": 1.0})


def test_publish_then_current_round_trips_everything(tmp_path, learner):
    store = SnapshotStore(tmp_path)
    assert publish(store, learner) == 1
    assert (tmp_path / "CURRENT").read_text() == "v1\n"
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == ["learner.ckpt", "manifest.json"]
    snapshot = store.current()
    assert snapshot.version == 1 and store.current_version() == 1
    assert snapshot.cut_offsets == {"examples": {0: 40, 1: 38}}  # int partitions again
    assert snapshot.event_range == EventRange(2 * DAY, 5 * DAY) and snapshot.event_range.days == 3.0
    assert snapshot.examples == 3 and snapshot.metadata == {"epochs": 1.0}
    assert snapshot.tower_config == learner.model.config.to_dict()
    assert snapshot.train_config == learner.train_config.to_dict()
    loaded = snapshot.learner()
    assert torch.equal(loaded.model.embed_items(["i1", "i9"], {}), learner.model.embed_items(["i1", "i9"], {}))
    assert loaded.histories_of(["u1", "u2"]) == [["i1", "i3"], ["i2"]]
    assert loaded.estimator.step == 3 and loaded.uniform_negatives == 2


def test_a_running_learner_takes_the_weights_and_keeps_its_histories(tmp_path, learner):
    store = SnapshotStore(tmp_path)
    publish(store, learner)
    worker = OnlineLearner(stream_tower_config(id_buckets=64, dim=4), seed=1)
    worker.follow(["u7"], ["i4"])
    worker.load_weights(store.current().learner())
    assert torch.equal(worker.model.embed_items(["i2"], {}), learner.model.embed_items(["i2"], {}))
    assert worker.histories_of(["u7", "u1"]) == [["i4"], []] and worker.estimator.step == 1


def test_versions_increase_and_retention_keeps_the_newest(tmp_path, learner):
    store = SnapshotStore(tmp_path, keep=2)
    assert [publish(store, learner) for _ in range(4)] == [1, 2, 3, 4]
    assert store.versions() == [3, 4] and store.current_version() == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", "LOCK", "v3", "v4"]
    store1 = SnapshotStore(tmp_path, keep=1)
    assert publish(store1, learner) == 5 and store1.versions() == [5]


def test_a_version_renamed_but_not_pointed_to_stays_invisible(tmp_path, learner):
    store = SnapshotStore(tmp_path)
    publish(store, learner)
    state = learner.state_dict()
    payload = checkpoint.encode(state)
    from recallstream.model.snapshot_store import _manifest
    store._write_version(2, _manifest(2, state, CUT, None, 3, {}, payload), payload)
    assert store.versions() == [1, 2]
    assert store.current_version() == 1 and store.current().version == 1
    assert store.load(2).version == 2  # whole, just not published
    assert publish(SnapshotStore(tmp_path, keep=1), learner) == 3 and store.versions() == [3]


def test_leftover_temporary_folders_are_not_versions_and_are_cleaned(tmp_path, learner):
    store = SnapshotStore(tmp_path)
    publish(store, learner)
    leftover = tmp_path / ".tmp-v9-12345"
    leftover.mkdir()
    (leftover / "manifest.json").write_text("{")
    (tmp_path / ".tmp-CURRENT-12345").write_text("v9\n")
    (tmp_path / ".trash-v0").mkdir()
    assert store.versions() == [1] and store.current().version == 1
    assert publish(store, learner) == 2  # the temporary name does not take a number
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", "LOCK", "v1", "v2"]


def test_damaged_pointer_falls_back_to_the_newest_intact_version_with_one_warning(tmp_path, learner, caplog):
    store = SnapshotStore(tmp_path)
    publish(store, learner)
    publish(store, learner)
    (tmp_path / "CURRENT").write_text("v")  # torn
    with caplog.at_level(logging.WARNING, logger="recallstream.model.snapshot_store"):
        assert store.current().version == 2
        assert store.current().version == 2
        assert store.current_version() == 2
    assert len(caplog.records) == 1 and "CURRENT" in caplog.records[0].getMessage()


def test_pointer_to_a_missing_folder_falls_back(tmp_path, learner):
    store = SnapshotStore(tmp_path)
    publish(store, learner)
    (tmp_path / "CURRENT").write_text("v7\n")
    assert store.current_version() == 1 and store.current().version == 1


def test_a_missing_pointer_falls_back_with_one_warning(tmp_path, learner, caplog):
    store = SnapshotStore(tmp_path)
    publish(store, learner)
    (tmp_path / "CURRENT").unlink()
    with caplog.at_level(logging.WARNING, logger="recallstream.model.snapshot_store"):
        assert store.current().version == 1 and store.current_version() == 1
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == ["no CURRENT file; using v1"]


def test_damaged_current_version_falls_back_to_the_previous_one(tmp_path, learner, caplog):
    store = SnapshotStore(tmp_path)
    publish(store, learner)
    publish(store, learner)
    path = tmp_path / "v2" / "learner.ckpt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSnapshot, match="SHA-256"):
        store.load(2)
    with caplog.at_level(logging.WARNING, logger="recallstream.model.snapshot_store"):
        assert store.current().version == 1
    assert len(caplog.records) == 1 and "v2" in caplog.records[0].getMessage()


def test_an_edited_manifest_fails_its_checksum(tmp_path, learner):
    store = SnapshotStore(tmp_path)
    publish(store, learner)
    path = tmp_path / "v1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["cut_offsets"]["examples"]["0"] = 0
    path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptSnapshot, match="checksum"):
        store.load(1)
    assert store.current() is None  # nothing intact is left


def test_truncated_learner_file_is_corrupt(tmp_path, learner):
    store = SnapshotStore(tmp_path)
    publish(store, learner)
    path = tmp_path / "v1" / "learner.ckpt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptSnapshot):
        store.load(1)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _framed(payload: bytes) -> bytes:
    """A checkpoint file around ``payload``, with valid checksums (as a forger would write)."""
    header = json.dumps({"format_version": checkpoint.FORMAT_VERSION, "payload_bytes": len(payload),
                         "payload_sha256": hashlib.sha256(payload).hexdigest(),
                         "created_at": 0.0}, sort_keys=True).encode()
    return b"".join([checkpoint.MAGIC, header, b"\n", hashlib.sha256(header).hexdigest().encode(),
                     b"\n", payload])


def test_a_payload_that_would_run_code_is_refused_not_run(tmp_path, learner):
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"model": _RunsCode(marker)}, buffer)
    payload = buffer.getvalue()
    # the payload is real: an unrestricted load runs it
    torch.load(io.BytesIO(payload), weights_only=False)
    assert marker.exists()
    marker.unlink()

    store = SnapshotStore(tmp_path / "store")
    publish(store, learner)
    from recallstream.model.snapshot_store import _manifest
    forged = _framed(payload)
    store._write_version(2, _manifest(2, learner.state_dict(), CUT, None, 3, {}, forged), forged)
    store._write_pointer(2)
    with pytest.raises(UnsafeSnapshot, match="execute code"):
        store.load(2)
    assert not marker.exists()
    assert store.current().version == 1 and not marker.exists()


def test_a_second_publisher_is_refused_while_one_publishes(tmp_path, learner):
    store = SnapshotStore(tmp_path)
    with store._writer_lock():
        with pytest.raises(SnapshotLocked, match="another process"):
            publish(SnapshotStore(tmp_path), learner)
    assert store.versions() == [] and store.current() is None
    assert publish(store, learner) == 1


def test_bad_arguments(tmp_path, learner):
    with pytest.raises(ValueError, match="keep"):
        SnapshotStore(tmp_path, keep=0)
    with pytest.raises(ValueError, match="tower_config"):
        SnapshotStore(tmp_path).publish({"model": {}}, cut_offsets={}, event_range=None, examples=0)
