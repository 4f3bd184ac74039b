"""IngestorProcess on a real broker: the worker's reading in a child process gives what
the StreamIngestor gives in the worker's own process, and the child neither outlives
the worker nor dies before it (fixtures in conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from recallstream.streaming.ingest import StreamIngestor
from recallstream.streaming.ingest_process import IngestorProcess, ReaderExited
from test_ingest_kafka import example_records, produce


def read_all(ingestor, expected_clicks: int, deadline_s: float = 60.0) -> list:
    """Poll until ``expected_clicks`` clicks arrived; the results in order."""
    results, clicks = [], 0
    deadline = time.monotonic() + deadline_s
    while clicks < expected_clicks and time.monotonic() < deadline:
        result = ingestor.poll(timeout_s=0.5)
        if result.records:
            results.append(result)
            clicks += len(result.clicks())
    assert clicks == expected_clicks, f"read {clicks} of {expected_clicks} clicks"
    return results


def items_record(settings, item_id: str) -> tuple:
    return (settings.topic_items, item_id.encode(),
            f'{{"item_id": "{item_id}", "ts": 1, "features": {{"genres": ["Drama"]}}}}'.encode())


def test_the_child_reads_what_the_ingestor_reads_and_resumes_from_its_state(topic_settings):
    produce(topic_settings, [items_record(topic_settings, "i1"), *example_records(topic_settings, 60),
                             (topic_settings.topic_examples, b"u1", b"{not json")])
    local = StreamIngestor.aligned(topic_settings)
    try:
        expected = read_all(local, 60)
        local_state, local_counters, local_lag = local.state_dict(), local.counters(), local.lag()
    finally:
        local.close()

    remote = IngestorProcess(topic_settings)
    try:
        got = read_all(remote, 60)
        assert [c for r in got for c in r.clicks()] == [c for r in expected for c in r.clicks()]
        assert [e for r in got for e in r.entities] == [e for r in expected for e in r.entities]
        assert sum(r.records for r in got) == sum(r.records for r in expected) == 62
        assert remote.state_dict() == local_state
        assert remote.counters() == local_counters
        assert remote.counters()["dead_lettered_total"] == 1
        assert remote.caught_up() and remote.lag() == local_lag and local_lag
        halfway = local_state
    finally:
        remote.close()

    # a new child restored from a state resumes there: nothing after it is lost or repeated
    produce(topic_settings, example_records(topic_settings, 70)[60:])
    again = IngestorProcess(topic_settings)
    try:
        again.load_state_dict(halfway)
        assert again.counters()["examples_seen"] == 60  # restored, and reported at once
        rest = read_all(again, 10)
        assert sorted(c[0:2] for r in rest for c in r.clicks()) == sorted(
            (f"u{n % 5}", f"i{n + 1}") for n in range(60, 70))
    finally:
        again.close()


def test_errors_in_the_child_reach_the_caller_and_the_child_serves_on(topic_settings):
    remote = IngestorProcess(topic_settings)
    try:
        with pytest.raises(ValueError, match="unsupported ingest state version") as raised:
            remote.load_state_dict({"version": -1})
        assert any("in the reading process" in note for note in raised.value.__notes__)
        assert remote.poll(timeout_s=0.2).records == 0  # still answering
        assert remote.unstick() in (True, False)  # answered while nothing is stuck
    finally:
        remote.close()
    remote.close()  # idempotent


def test_a_child_killed_under_the_worker_is_an_error_not_a_hang(topic_settings):
    remote = IngestorProcess(topic_settings)
    try:
        os.kill(remote.pid, signal.SIGINT)  # a Ctrl-C of the process group: ignored
        os.kill(remote.pid, signal.SIGTERM)
        assert remote.poll(timeout_s=0.2).records == 0
        os.kill(remote.pid, signal.SIGKILL)
        with pytest.raises(ReaderExited, match="exit code -9"):
            remote.poll(timeout_s=0.2)
    finally:
        remote.close()


def test_the_child_does_not_outlive_a_sigkilled_worker(topic_settings, tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from recallstream.streaming.settings import Settings
        from recallstream.streaming.ingest_process import IngestorProcess
        settings = Settings.resolve(environ={{
            "KAFKA_BOOTSTRAP_SERVERS": {topic_settings.bootstrap_servers!r},
            "RECALLSTREAM_TOPIC_EXAMPLES": {topic_settings.topic_examples!r},
            "RECALLSTREAM_TOPIC_ITEMS": {topic_settings.topic_items!r},
            "RECALLSTREAM_TOPIC_USERS": {topic_settings.topic_users!r},
            "RECALLSTREAM_TOPIC_DEAD_LETTERS": {topic_settings.topic_dead_letters!r}}})
        reader = IngestorProcess(settings)
        print(reader.pid, flush=True)
        while True:
            reader.poll(timeout_s=0.5)
    """)
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(worker.stdout.readline())
        assert _alive(child)
        worker.kill()
        worker.wait(timeout=30)
        deadline = time.monotonic() + 15
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the reading process outlived its worker"
    finally:
        worker.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone
    except FileNotFoundError:
        return False
