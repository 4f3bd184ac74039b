"""A worker whose Qdrant goes away for good (issue 15): its checkpoint's drain gives up after
``qdrant_drain_timeout_s`` with StalledIndex (the command's exit status 5), no checkpoint is
written past the vectors that did not arrive, and the worker closes without hanging.

Real broker; failures injected at the vector-index boundary (a wrapper whose writes fail as
a server's connection errors do)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from recallstream.consumers.worker import Worker, WorkerOptions
from recallstream.model.checkpoint import CheckpointStore
from recallstream.model.index_sync import StalledIndex
from recallstream.model.vector_index import VectorIndex

from conftest import replayed_and_joined

CLICKS = 600


class QdrantGone:
    """A VectorIndex whose collections exist but whose every write fails to connect."""

    def __init__(self, index: VectorIndex):
        self.index = index
        self.failed_writes = 0

    def __getattr__(self, name):
        return getattr(self.index, name)

    def upsert(self, *args, **kwargs):
        self.failed_writes += 1
        raise ConnectionRefusedError("Qdrant is gone")

    delete = upsert


def test_a_worker_whose_qdrant_never_comes_back_stops_with_stalled_index(kafka_settings, tmp_path):
    tuned = dataclasses.replace(kafka_settings, batch_size=100, batch_timeout_s=0.2,
                                checkpoint_every_batches=2, checkpoint_every_s=1e6,
                                qdrant_drain_timeout_s=1.0, qdrant_write_interval_s=0.0,
                                metrics_port=0, checkpoint_dir=str(tmp_path / "ckpt"))
    with replayed_and_joined(tuned, "stall", CLICKS) as settings:
        memory = VectorIndex.connect(":memory:")
        gone = QdrantGone(memory)
        worker = Worker(settings, WorkerOptions(exit_when_idle_s=30), index=gone)
        started = time.monotonic()
        with pytest.raises(StalledIndex, match="points not written"):
            worker.run()
        assert time.monotonic() - started < 120  # the deadline, then a prompt close
        assert worker.counters["batches"] >= 2 and gone.failed_writes >= 1
        # nothing was checkpointed (or committed) past the vectors Qdrant did not take
        assert CheckpointStore(settings.checkpoint_dir).paths() == []
        memory.close()


def test_a_worker_starting_while_qdrant_is_away_exits_with_status_5_on_one_line(
        topic_settings, tmp_path, monkeypatch, capsys):
    # Qdrant made unavailable through the test hook of model/index_faults.py, as the soak does
    from recallstream.consumers.cli import main
    from recallstream.model.index_faults import OUTAGE_FILE_ENV

    flag = tmp_path / "qdrant-down"
    flag.touch()
    monkeypatch.setenv(OUTAGE_FILE_ENV, str(flag))
    status = main(["worker", "--exit-when-idle", "1", "--checkpoint-dir", str(tmp_path / "ckpt"),
                   "--metrics-port", "0",
                   *topic_settings.flags("bootstrap_servers", "topic_examples", "topic_items",
                                         "topic_users", "topic_dead_letters", "consumer_group")])
    out, err = capsys.readouterr()
    assert status == 5, err[-2000:]
    assert out == "" and "Traceback" not in err
    assert "recallstream worker: error: Qdrant unavailable (injected Qdrant outage" in err
    assert not CheckpointStore(str(tmp_path / "ckpt")).paths()
