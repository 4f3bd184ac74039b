"""The ``--json`` outputs that no other test file parses: each is one JSON object on stdout
with the documented keys and values.

Parsed elsewhere: ``inspect`` (test_ingest_kafka), ``replay`` (test_replay_kafka), ``worker``
(test_worker_kafka), ``joiner`` (test_joiner_kafka), ``train`` and ``eval offline`` (test_offline_cli), ``bench`` train,
popularity, sampler and decode (test_bench_cli). ``demo`` has no ``--json``.
"""

import dataclasses

import orjson
import pytest

from recallstream.consumers.cli import main
from recallstream.streaming.settings import Settings

from conftest import after_last_record

WORKER_FLAGS = ("bootstrap_servers", "topic_exposures", "topic_clicks", "topic_items",
                "topic_users", "topic_dead_letters", "topic_examples", "topic_joiner_state",
                "consumer_group", "partitions",
                "batch_size", "batch_timeout_s", "checkpoint_dir", "metrics_port", "qdrant")
EXPOSURES = 4  # per replayed click: the clicked item and 3 others


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return orjson.loads(capsys.readouterr().out)


def test_config_prints_every_setting_with_flags_applied_and_secrets_masked(capsys):
    described = run_json(capsys, "config", "--partitions", "7", "--qdrant-api-key", "s3cret")
    assert set(described) == set(Settings.__dataclass_fields__)
    assert described["partitions"] == 7 and described["qdrant_api_key"] == "***"


@pytest.fixture
def trained(topic_settings, tmp_path, capsys):
    """A few hundred clicks replayed and trained: ``(settings, worker report)``; the
    checkpoint directory holds the worker's checkpoints."""
    settings = dataclasses.replace(topic_settings, batch_size=50, batch_timeout_s=0.2,
                                   checkpoint_dir=str(tmp_path / "ckpt"), metrics_port=0,
                                   qdrant=":memory:")
    flags = settings.flags(*WORKER_FLAGS)
    replayed = run_json(capsys, "replay", "--limit", "200", "--max", "--no-progress", *flags)
    assert (replayed["clicks"], replayed["failed"]) == (200, 0)
    report = run_json(capsys, "worker", "--with-joiner", "--exit-when-idle", "2", *flags)
    return settings, report


def test_checkpoint_inspect_prints_offsets_by_partition_and_the_counters(trained, capsys):
    settings, report = trained
    summary = run_json(capsys, "checkpoint", "inspect", "--checkpoint-dir", settings.checkpoint_dir)
    assert summary["clicks_trained"] == report["clicks_trained"] == 200
    # 200 clicks in batches of 50, and partial ones when the joiner's examples pause
    assert summary["batches"] == summary["model_version"] == report["batches"] >= 4
    assert summary["examples_seen"] == 200 and summary["dead_lettered"] == 0
    assert report["joiner"]["examples"] == 200 and report["joiner"]["exposures"] == EXPOSURES * 200
    assert summary["path"].startswith(settings.checkpoint_dir)
    # JSON keys are strings: partition numbers come back as "0", "1"
    examples = summary["offsets"][settings.topic_examples]
    assert examples == {str(p): o for p, o in after_last_record(settings, settings.topic_examples).items()}


def test_bench_qdrant_reports_upsert_and_search_figures_per_size(capsys):
    figures = run_json(capsys, "bench", "qdrant", "--runs", "1", "--sizes", "50,200",
                       "--dim", "8", "--queries", "5", "--limit", "10", "--qdrant", ":memory:")
    assert (figures["qdrant"], figures["dim"], figures["limit"], figures["runs"]) == (
        ":memory:", 8, 10, 1)
    for size in (50, 200):
        sized = [key for key in figures if key.endswith(f"_{size}")]
        assert sized and all(figures[key] > 0 for key in sized), figures


def test_bench_qdrant_on_the_default_edge_uses_a_scratch_folder(capsys, tmp_path):
    figures = run_json(capsys, "bench", "qdrant", "--runs", "1", "--sizes", "50", "--dim", "8",
                       "--queries", "5", "--limit", "10", "--checkpoint-dir", str(tmp_path))
    assert figures["qdrant"] == "edge:" and figures["upsert_points_per_s_50"] > 0
    assert not (tmp_path / "qdrant-edge").exists()  # never the worker's index


def test_bench_recall_reports_p50_and_p99_per_embedded_backend_and_size(capsys, monkeypatch):
    monkeypatch.delenv("QDRANT_URL", raising=False)
    figures = run_json(capsys, "bench", "recall", "--sizes", "100,300", "--dim", "8",
                       "--users", "5", "--queries", "10", "--limit", "5")
    for backend in ("memory", "edge"):
        for size in (100, 300):
            for way in ("api", "http"):
                p50, p99 = (figures[f"{backend}_{way}_p{q}_ms_{size}"] for q in (50, 99))
                assert 0 < p50 <= p99, (backend, way, size, figures)


def test_bench_replay_reports_events_per_second(kafka_settings, capsys):
    figures = run_json(capsys, "bench", "replay", "--runs", "1", "--limit", "50",
                       *kafka_settings.flags("bootstrap_servers"))
    # each click comes with EXPOSURES exposures: the clicked item's and 3 others
    assert (figures["events"], figures["limit"], figures["runs"]) == (50 * (1 + EXPOSURES), 50, 1)
    assert figures["replay_events_per_s"] > 0 and figures["default_producer_events_per_s"] > 0
    assert figures["tuning_gain"] > 0


def test_bench_pipeline_reports_pipeline_and_bare_step_rates(kafka_settings, capsys):
    from recallstream.consumers.bench.pipeline import _local_broker_pid

    figures = run_json(capsys, "bench", "pipeline", "--runs", "1", "--limit", "300",
                       "--batch-size", "100", "--checkpoint-every-batches", "1",
                       *kafka_settings.flags("bootstrap_servers", "broker_port", "broker_data_dir"))
    assert (figures["clicks"], figures["events"], figures["batch_size"]) == (300, 300 * (1 + EXPOSURES), 100)
    assert figures["pipeline_clicks_per_s"] > 0 and figures["bare_step_samples_per_s"] > 0
    assert figures["ratio"] > 0 and figures["joiner_startup_s"] > 0
    # timed from the joiner's first records: faster than from the joiner's start
    assert figures["pipeline_events_per_s"] > figures["events_per_s_with_startup"] > 0
    # the worker's own time (first batch to last) lies within the pipeline's
    assert figures["worker_clicks_per_s"] >= figures["pipeline_clicks_per_s"]
    assert figures["backlog_clicks_per_s"] > 0  # a second worker, on the joined backlog
    # checkpoints written in the background before the last batch: what each cost
    assert figures["checkpoints"] >= 1
    assert figures["checkpoint_pause_ms"] > 0 and figures["checkpoint_written_ms"] > 0
    # where the CPU goes: the worker per click, the joiner per record, the broker per event
    assert figures["worker_cpu_us_per_click"] > 0 and figures["joiner_cpu_us_per_record"] > 0
    assert 0 < figures["cores_busy"] <= figures["cores"] + 0.5  # sampling rounds up a little
    if _local_broker_pid(kafka_settings) is not None:  # the project's broker: its CPU is read
        assert 0 < figures["broker_cpu_us_per_event"] < figures["cpu_us_per_event"]
    else:  # another broker's CPU is not this machine's to read
        assert figures["broker_cpu_us_per_event"] is None and figures["cpu_us_per_event"] is None


def test_bench_freshness_reports_probe_latencies(kafka_settings, capsys):
    figures = run_json(capsys, "bench", "freshness", "--runs", "1", "--warmup", "100",
                       "--probes", "3", "--interval", "0.05", "--rate", "20",
                       "--batch-size", "20", "--batch-timeout-s", "0.2",
                       *kafka_settings.flags("bootstrap_servers"))
    assert (figures["probes"], figures["probes_timed_out"], figures["runs"]) == (3, 0, 1)
    assert 0 < figures["freshness_p50_s"] <= figures["freshness_p99_s"] <= figures["freshness_max_s"]


def test_bench_broker_reports_start_restart_and_stop_seconds(capsys):
    figures = run_json(capsys, "bench", "broker", "--runs", "1")
    assert figures["kafka_version"].startswith("4.") and figures["runs"] == 1
    assert all(figures[key] > 0 for key in ("first_start_s", "restart_s", "stop_s"))
