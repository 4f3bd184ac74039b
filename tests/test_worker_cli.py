"""`recallstream worker`'s own errors (no Kafka needed): one line on stderr, nothing on stdout,
and the documented exit status (3: the model is owned by another worker, 4: stalled ingestion,
5: Qdrant did not take the pending vectors in time, 1: the Qdrant Edge folder is open in
another process; test_no_broker covers 2, test_worker_kafka the 3 of a real second worker,
test_worker_index_stall the 5 of a real worker)."""

from pathlib import Path

import pytest

import recallstream.consumers.worker_cmd as worker_module
from recallstream.consumers.cli import main
from recallstream.model.checkpoint import CheckpointLocked
from recallstream.model.index_sync import StalledIndex
from recallstream.model.edge_index import FolderInUse
from recallstream.streaming.prefetch import StalledIngestion


@pytest.mark.parametrize("error, status, message", [
    (CheckpointLocked(Path("ckpt"), 4242), 3, "ckpt is owned by process 4242"),
    (StalledIngestion("a Kafka poll has not returned for 120 s"), 4,
     "a Kafka poll has not returned for 120 s; restart it"),
    (StalledIndex("Qdrant writes still pending after 300.0 s: 12 points not written"), 5,
     "12 points not written; restart it: it resumes from its last checkpoint"),
    (FolderInUse("Qdrant Edge folder 'idx' is open in another client"), 1,
     "Qdrant Edge folder 'idx' is open in another client"),
])
def test_worker_errors_go_to_stderr_with_their_status(error, status, message, monkeypatch,
                                                      capsys, tmp_path):
    def fail(self):
        raise error

    monkeypatch.setattr(worker_module, "require_broker", lambda settings: None)
    monkeypatch.setattr(worker_module.Worker, "run", fail)
    monkeypatch.setattr(worker_module, "stop_on_signals", lambda stop: None)  # leave pytest's
    assert main(["worker", "--checkpoint-dir", str(tmp_path)]) == status
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("recallstream worker: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_help_documents_exit_status_5(capsys):
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    out = capsys.readouterr().out
    assert "  5  worker: Qdrant did not take the pending vectors" in out
    assert "--qdrant-drain-timeout-s" in out
