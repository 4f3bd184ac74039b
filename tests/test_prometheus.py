"""deploy/prometheus and deploy/grafana against Debian's Prometheus (CI installs the
``prometheus`` package, .ci/run): promtool checks, and a real Prometheus server scraping
a worker that trains on a short replay, queried through its HTTP API."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from recallstream.consumers.local_kafka import free_port
from recallstream.consumers.replay import ReplayPlan, publish
from recallstream.consumers.worker import Worker, WorkerOptions
from recallstream.model.checkpoint import CheckpointStore
from recallstream.model.drift import SIGNALS
from recallstream.model.vector_index import VectorIndex
from recallstream.streaming.movielens import load_movielens

from conftest import join_examples

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
CLICKS = 3000


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: install Debian's prometheus package (.ci/run does)"
    return path


def run(*args: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(args, input=stdin, capture_output=True, timeout=60)
    out = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, out
    return out


def test_promtool_check_config_and_rules():
    assert "SUCCESS" in run(tool("promtool"), "check", "config", str(DEPLOY / "prometheus/prometheus.yml"))
    assert "10 rules found" in run(tool("promtool"), "check", "rules", str(DEPLOY / "prometheus/alerts.yml"))


def test_promtool_test_rules_fire_and_hold():
    assert "SUCCESS" in run(tool("promtool"), "test", "rules", str(DEPLOY / "prometheus/alerts_test.yml"))


def wait_for(condition, what: str, deadline_s: float = 30.0):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")


@pytest.fixture(scope="module")
def scraped(kafka_settings, tmp_path_factory):
    """A worker trains on a CLICKS-click replay while a real Prometheus scrapes it every
    second; yields (query function, the worker's /metrics URL) once the run is scraped."""
    from recallstream.streaming.kafka_io import scratch_topics

    tmp = tmp_path_factory.mktemp("prometheus")
    port, prom_port = free_port(), free_port()
    tuned = dataclasses.replace(kafka_settings, batch_size=256, batch_timeout_s=0.5,
                                checkpoint_every_s=1e6, checkpoint_every_batches=4,
                                metrics_port=port, checkpoint_dir=str(tmp / "ckpt"))
    config = tmp / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus/alerts.yml")],
        "scrape_configs": [{"job_name": "recallstream-worker",
                            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}))
    server = subprocess.Popen([tool("prometheus"), f"--config.file={config}",
                               f"--storage.tsdb.path={tmp / 'data'}",
                               f"--web.listen-address=127.0.0.1:{prom_port}"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "wb"))

    def query(expr: str, at: float | None = None) -> list:
        """An instant query, now or at ``at`` (epoch seconds)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode(params)
        body = json.load(urllib.request.urlopen(url, timeout=5))
        assert body["status"] == "success", body
        return body["data"]["result"]

    try:
        with scratch_topics(tuned, f"prom-{os.getpid()}-{random.randrange(1 << 30)}",
                            partitions=2) as settings:
            summary = publish(ReplayPlan(load_movielens("ml-100k"), limit=CLICKS), settings, progress=False)
            assert summary.clicks == CLICKS
            join_examples(settings)
            index = VectorIndex.connect(":memory:")
            worker = Worker(settings, WorkerOptions(exit_when_idle_s=2.0), index=index)
            thread = threading.Thread(target=worker.run, daemon=True)
            thread.start()
            thread.join(timeout=120)
            assert not thread.is_alive(), "the worker did not finish its replay"
            assert worker.counters["clicks_trained"] == CLICKS
            # Prometheus has scraped the finished run: after the worker's last checkpoint,
            # which follows its final figures (a scrape after its 11th batch but before the
            # end would show the records still to come as lag)
            last = CheckpointStore(settings.checkpoint_dir).load_latest()["created_at"]
            wait_for(lambda: query(f"recallstream_last_checkpoint_timestamp_seconds >= {last - 1e-3}")
                     and query("recallstream_freshness_seconds_count > 0"),
                     "Prometheus to scrape the finished run")
            # the moment the scraped run is complete: rates over the last minute cover it then,
            # whatever the scrapes after it do on a loaded machine
            query.run_scraped_at = time.time()
            yield query, f"http://127.0.0.1:{port}/metrics"
            index.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def value(query, expr: str) -> float:
    result = query(expr)
    assert result, f"no data for {expr}"
    return float(result[0]["value"][1])


def test_promtool_check_metrics_on_a_live_scrape(scraped):
    _, url = scraped
    text = urllib.request.urlopen(url, timeout=5).read()
    run(tool("promtool"), "check", "metrics", stdin=text)


def test_series_exist_with_plausible_values(scraped):
    query, _ = scraped
    # flow
    assert value(query, 'recallstream_records_consumed_total{topic="examples"}') >= CLICKS
    assert value(query, 'recallstream_joins_total{outcome="matched"}') >= CLICKS
    # caught up: at most the few records the aligner holds back at the end of the stream
    # (it releases a window of record time only once a later record arrives)
    assert 0 <= value(query, "sum(recallstream_consumer_lag_records)") <= 10
    assert value(query, "recallstream_model_version") >= CLICKS // 256
    assert value(query, 'recallstream_qdrant_points_written_total{collection="items"}') > 0
    assert time.time() - value(query, "recallstream_last_checkpoint_timestamp_seconds") < 120
    # freshness: a trained click's vector is in Qdrant within seconds, not never
    assert 0 < value(query, "histogram_quantile(0.5, recallstream_freshness_seconds_bucket)") < 30
    assert value(query, "recallstream_train_step_seconds_count") >= CLICKS // 256
    # quality
    assert 0 < value(query, "recallstream_prequential_recall_at_50") <= 1
    assert 0 < value(query, "recallstream_popularity_recall_at_50") <= 1
    assert 0 < value(query, "recallstream_recommendation_coverage_ratio") <= 1
    # model health and popularity
    assert 0 < value(query, "recallstream_train_loss") < 20
    assert 0 <= value(query, "recallstream_in_batch_accuracy") <= 1
    assert value(query, "recallstream_item_vector_norm_mean") == pytest.approx(1, abs=1e-3)
    assert -1 <= value(query, "recallstream_item_embedding_mean_cosine") < 0.9
    assert 0 <= value(query, "recallstream_catalog_never_trained_ratio") < 1
    assert 0 < value(query, "recallstream_popularity_normalized_entropy") <= 1
    assert 0 < value(query, "recallstream_popularity_top1pct_share") < 1
    assert math.isfinite(value(query, "recallstream_logq_correction_mean"))
    # drift: a series per signal, counts and timestamps consistent
    detected = {r["metric"]["signal"]: float(r["value"][1]) for r in query("recallstream_drift_detected_total")}
    assert set(detected) == set(SIGNALS)
    assert all(n >= 0 for n in detected.values())
    assert query("recallstream_drift_statistic")
    for r in query("recallstream_drift_last_detected_timestamp_seconds"):
        assert (float(r["value"][1]) > 0) == (detected[r["metric"]["signal"]] > 0)


def test_every_dashboard_query_returns_data(scraped):
    query, _ = scraped
    dashboard = json.loads((DEPLOY / "grafana/dashboards/recallstream.json").read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Flow", "Freshness", "Quality", "Drift", "Model health"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 25
    empty = [expr for expr in exprs if not query(expr, at=query.run_scraped_at)]
    assert not empty, f"dashboard queries without data: {empty}"
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {"prometheus"}
    assert "uid: prometheus" in (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
