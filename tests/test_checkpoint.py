"""Tests of the atomic checkpoint store and the single-owner lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from recallstream.model.checkpoint import (
    FORMAT_VERSION, MAGIC, CheckpointLocked, CheckpointStore, CorruptCheckpoint, OwnerLock,
    NDARRAY_KEY, StagedState, UnsafeCheckpoint, UnsupportedCheckpointVersion,
)

REPO = Path(__file__).resolve().parents[1]


def trained_model_and_optimizers():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(20, 4, sparse=True)
    dense = torch.nn.Linear(4, 3)
    sparse_opt = torch.optim.SparseAdam(embedding.parameters(), lr=0.1)
    dense_opt = torch.optim.Adam(dense.parameters(), lr=0.1)
    for _ in range(2):
        loss = dense(embedding(torch.tensor([1, 5, 5]))).pow(2).sum()
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        loss.backward()
        sparse_opt.step()
        dense_opt.step()
    return embedding, dense, sparse_opt, dense_opt


def worker_like_state(seed: int = 0) -> dict:
    embedding, dense, sparse_opt, dense_opt = trained_model_and_optimizers()
    return {
        "model": {"embedding": embedding.state_dict(), "dense": dense.state_dict()},
        "optimizers": [sparse_opt.state_dict(), dense_opt.state_dict()],
        "estimator": {"step": 7, "alpha": 0.01, "gap": np.arange(6.0).reshape(2, 3) + seed,
                      "last_seen": np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)},
        "offsets": {"clicks": {0: 120, 1: 98}, "exposures": {0: 4000}},
        "features": {"items": {"42": {"title": "Toy Story", "genres": ["Animation"]}}},
        "join_state": [("u1", "i9", 1700000000.5)],
        "counters": {"clicks_trained": 218, "dead_lettered": 3},
        "ids": np.array(["a", "bb"]),
        "flag": np.bool_(True), "count": np.int64(5),
    }


def assert_same(a, b):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip_of_tensors_arrays_and_dicts(tmp_path):
    state = worker_like_state()
    store = CheckpointStore(tmp_path)
    path = store.save(state)
    assert path.name == "ckpt-0000000001"
    loaded = store.load_latest()
    expected = dict(state, flag=True, count=5)  # numpy scalars come back as Python numbers
    assert_same(expected, loaded)
    assert isinstance(loaded["model"]["dense"], OrderedDict)


def test_loaded_state_restores_model_and_optimizers(tmp_path):
    embedding, dense, sparse_opt, dense_opt = trained_model_and_optimizers()
    store = CheckpointStore(tmp_path)
    store.save({"embedding": embedding.state_dict(), "dense": dense.state_dict(),
                "sparse_opt": sparse_opt.state_dict(), "dense_opt": dense_opt.state_dict()})
    loaded = store.load_latest()
    torch.manual_seed(1)  # fresh, different weights
    embedding2, dense2 = torch.nn.Embedding(20, 4, sparse=True), torch.nn.Linear(4, 3)
    sparse_opt2 = torch.optim.SparseAdam(embedding2.parameters(), lr=0.1)
    dense_opt2 = torch.optim.Adam(dense2.parameters(), lr=0.1)
    embedding2.load_state_dict(loaded["embedding"])
    dense2.load_state_dict(loaded["dense"])
    sparse_opt2.load_state_dict(loaded["sparse_opt"])
    dense_opt2.load_state_dict(loaded["dense_opt"])
    # one more identical step on both copies gives identical weights
    for emb, lin, opts in ((embedding, dense, (sparse_opt, dense_opt)),
                           (embedding2, dense2, (sparse_opt2, dense_opt2))):
        loss = lin(emb(torch.tensor([2, 5]))).sum()
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for opt in opts:
            opt.step()
    assert torch.equal(embedding.weight, embedding2.weight)
    assert torch.equal(dense.weight, dense2.weight)


def test_a_staged_state_is_the_state_of_its_instant_while_training_goes_on(tmp_path):
    embedding, dense, sparse_opt, dense_opt = trained_model_and_optimizers()

    def state():
        return {"embedding": embedding.state_dict(), "dense": dense.state_dict(),
                "sparse_opt": sparse_opt.state_dict(), "dense_opt": dense_opt.state_dict(),
                "gap": gap, "history": history}

    gap, history = np.arange(4.0), {"u1": ["a"]}
    before = CheckpointStore(tmp_path / "now")
    before.save(state())  # what a blocking save of this instant writes
    staged = StagedState(state())
    for opt in (sparse_opt, dense_opt):  # training goes on: every part changes in place
        opt.zero_grad()
    dense(embedding(torch.tensor([1, 2]))).sum().backward()
    sparse_opt.step()
    dense_opt.step()
    gap += 1
    history["u1"].append("b")
    history["u2"] = ["c"]

    later = CheckpointStore(tmp_path / "later")
    later.save_staged(staged)
    assert_same(before.load_latest(), later.load_latest())
    assert not torch.equal(later.load_latest()["dense"]["weight"], dense.weight.detach())


@pytest.mark.parametrize("bad", [{"s": {1, 2}}, {"o": object()}, [1, 2]])
def test_staging_refuses_what_save_refuses_at_once(bad):
    with pytest.raises(ValueError):
        StagedState(bad)


def test_keeps_the_newest_n_and_numbers_on(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for i in range(5):
        store.save({"i": i})
    assert [p.name for p in store.paths()] == ["ckpt-0000000004", "ckpt-0000000005"]
    assert store.load_latest() == {"i": 4}
    assert CheckpointStore(tmp_path, keep=2).save({"i": 5}).name == "ckpt-0000000006"


def test_empty_directory_has_no_checkpoint(tmp_path):
    assert CheckpointStore(tmp_path / "new").load_latest() is None


def test_partial_temporary_file_from_a_crashed_save_is_ignored_then_removed(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save({"i": 1})
    full = (tmp_path / "ckpt-0000000001").read_bytes()
    (tmp_path / ".ckpt-0000000002.tmp").write_bytes(full[: len(full) // 2])
    assert store.load_latest() == {"i": 1}
    assert store.save({"i": 2}).name == "ckpt-0000000002"
    assert not list(tmp_path.glob(".ckpt-*.tmp"))
    assert store.load_latest() == {"i": 2}


@pytest.mark.parametrize("damage", ["truncate_payload", "truncate_header", "flip_payload_byte",
                                    "flip_header_byte", "empty", "garbage"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    store = CheckpointStore(tmp_path)
    store.save({"i": 1, "w": torch.arange(1000.0)})
    newest = store.save({"i": 2, "w": torch.arange(1000.0) * 2})
    data = bytearray(newest.read_bytes())
    if damage == "truncate_payload":
        data = data[:-100]
    elif damage == "truncate_header":
        data = data[: len(MAGIC) + 20]
    elif damage == "flip_payload_byte":
        data[-500] ^= 0x01
    elif damage == "flip_header_byte":
        data[len(MAGIC) + 5] ^= 0x01
    elif damage == "empty":
        data = b""
    else:
        data = b"\x00" * len(data)
    newest.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint):
        store.load(newest)
    loaded = store.load_latest()
    assert loaded["i"] == 1 and torch.equal(loaded["w"], torch.arange(1000.0))


def test_all_checkpoints_corrupt_is_an_error_not_a_fresh_start(tmp_path):
    store = CheckpointStore(tmp_path)
    path = store.save({"i": 1})
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CorruptCheckpoint, match="no intact checkpoint"):
        store.load_latest()


def rewrite_header(path: Path, **changes) -> None:
    import hashlib
    data = path.read_bytes()[len(MAGIC):]
    header_line, _, payload = data.split(b"\n", 2)
    header = json.loads(header_line)
    header.update(changes)
    new_line = json.dumps(header).encode()
    path.write_bytes(MAGIC + new_line + b"\n" + hashlib.sha256(new_line).hexdigest().encode()
                     + b"\n" + payload)


def test_unknown_format_version_is_a_clear_error(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save({"i": 1})
    newest = store.save({"i": 2})
    rewrite_header(newest, format_version=FORMAT_VERSION + 1)
    # no silent fallback to ckpt 1: that would roll the model back
    with pytest.raises(UnsupportedCheckpointVersion, match=f"format_version {FORMAT_VERSION + 1}"):
        store.load_latest()


class RunsCode:
    """Unpickling it calls os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_checkpoint(path, payload: bytes) -> None:
    """A checkpoint file with valid framing and checksums around ``payload``."""
    import hashlib

    header = json.dumps({"format_version": FORMAT_VERSION, "payload_bytes": len(payload),
                         "payload_sha256": hashlib.sha256(payload).hexdigest()}).encode()
    path.write_bytes(MAGIC + header + b"\n" + hashlib.sha256(header).hexdigest().encode()
                     + b"\n" + payload)


def test_a_payload_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    import io
    import pickle

    marker = tmp_path / "pwned"
    assert pickle.loads(pickle.dumps(RunsCode(marker))) == 0 and marker.exists()  # it would run
    marker.unlink()
    buffer = io.BytesIO()
    torch.save({"x": RunsCode(marker)}, buffer)
    path = tmp_path / "ckpt-0000000001"
    write_checkpoint(path, buffer.getvalue())
    with pytest.raises(UnsafeCheckpoint, match="ckpt-0000000001: refused to load.*could run code"):
        CheckpointStore.load(path)
    assert not marker.exists()


def test_a_plain_pickle_payload_is_refused_too(tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "ckpt-0000000001"
    write_checkpoint(path, pickle.dumps({"x": RunsCode(marker)}))
    with pytest.raises(UnsafeCheckpoint):
        CheckpointStore.load(path)
    assert not marker.exists()


def test_an_object_array_is_refused(tmp_path):
    import io

    array = io.BytesIO()
    np.save(array, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    buffer = io.BytesIO()
    torch.save({"a": {NDARRAY_KEY: array.getvalue()}}, buffer)
    path = tmp_path / "ckpt-0000000001"
    write_checkpoint(path, buffer.getvalue())
    with pytest.raises(UnsafeCheckpoint, match="needs pickle"):
        CheckpointStore.load(path)


def test_load_latest_skips_an_unsafe_newest_checkpoint_for_the_previous_one(tmp_path, caplog):
    import io

    store = CheckpointStore(tmp_path)
    store.save({"i": 1})
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"i": RunsCode(marker)}, buffer)
    write_checkpoint(tmp_path / "ckpt-0000000002", buffer.getvalue())
    assert store.load_latest() == {"i": 1}
    assert not marker.exists()
    assert any("refused to load" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bad", [{"s": {1, 2}}, {"o": object()}, {"a": np.array([{}], dtype=object)},
                                 {"d": {("tuple", "key"): 1}}, {"__recallstream_ndarray__": b""}])
def test_values_that_would_need_pickle_are_refused_at_save(tmp_path, bad):
    store = CheckpointStore(tmp_path)
    with pytest.raises(ValueError):
        store.save(bad)
    assert store.paths() == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        CheckpointStore(tmp_path, keep=0)
    with pytest.raises(ValueError):
        CheckpointStore(tmp_path).save([1, 2])


SAVE_FOREVER = textwrap.dedent("""
    import sys, numpy as np
    from recallstream.model.checkpoint import CheckpointStore
    store = CheckpointStore(sys.argv[1], keep=2)
    i = 0
    while True:
        i += 1
        store.save({"i": i, "block": np.full(200_000, i, dtype=np.int64)})
        if i == 3:
            print("saving", flush=True)
""")


def test_sigkill_during_saves_never_leaves_a_torn_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    for attempt in range(4):
        child = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(tmp_path)],
                                 cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "saving"
        time.sleep(float(rng.uniform(0.0, 0.3)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        state = CheckpointStore(tmp_path).load_latest()
        assert state["i"] >= 3
        assert np.all(state["block"] == state["i"])  # the payload of one save, whole


HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from recallstream.model.checkpoint import OwnerLock
    lock = OwnerLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    lock.release()
    print("released", flush=True)
    time.sleep(60)
""")


def start_holder(directory: Path, hold_s: float) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(directory), str(hold_s)],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_lock_refuses_a_second_process_and_frees_when_the_holder_is_killed(tmp_path):
    holder = start_holder(tmp_path, hold_s=600)
    try:
        with pytest.raises(CheckpointLocked) as caught:
            OwnerLock(tmp_path).acquire()
        assert caught.value.owner_pid == holder.pid
        assert str(holder.pid) in str(caught.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = OwnerLock(tmp_path).acquire()  # the kernel dropped the dead holder's flock
    assert (tmp_path / "LOCK").read_text().strip() == str(os.getpid())
    lock.release()


def test_lock_waits_up_to_a_timeout(tmp_path):
    holder = start_holder(tmp_path, hold_s=600)
    try:
        started = time.monotonic()
        with pytest.raises(CheckpointLocked):
            OwnerLock(tmp_path).acquire(timeout_s=0.5, poll_s=0.05)
        assert time.monotonic() - started >= 0.5
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    holder = start_holder(tmp_path, hold_s=0.5)  # releases after half a second
    try:
        with OwnerLock(tmp_path).acquire(timeout_s=30, poll_s=0.05) as lock:
            assert lock.held
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_lock_in_the_same_process_is_exclusive_too(tmp_path):
    with OwnerLock(tmp_path) as first:
        with pytest.raises(CheckpointLocked):
            OwnerLock(tmp_path).acquire()
        with pytest.raises(ValueError):
            first.acquire()
    assert not first.held
    OwnerLock(tmp_path).acquire().release()


def test_frequency_estimator_state_survives_a_checkpoint(tmp_path):
    from recallstream.streaming.popularity import FrequencyEstimator

    estimator = FrequencyEstimator(num_buckets=64, alpha=0.1, num_hashes=2, seed=4)
    for step in range(30):
        estimator.update([str(step % 7), str(step % 3)])
    CheckpointStore(tmp_path).save({"estimator": estimator.state_dict()})
    restored = FrequencyEstimator.from_state_dict(CheckpointStore(tmp_path).load_latest()["estimator"])
    ids = [str(i) for i in range(10)]
    np.testing.assert_array_equal(restored.probability(ids), estimator.probability(ids))
    assert restored.step == 30
