"""Recall for readers (issue 14): the Recaller, ``recallstream recall`` and ``GET /recall``,
against a worker that trained on a short MovieLens replay on the real broker.

The worker runs in a thread of this process with an embedded index the test owns, so
its HTTP endpoint stays up (with the index attached) after the replay is consumed;
readers hit /recall while it trains, too.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import random
import re
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from recallstream.consumers import http_server
from recallstream.consumers.cli import main
from recallstream.consumers.local_kafka import free_port
from recallstream.consumers.replay import ReplayPlan, publish
from recallstream.consumers.worker import Worker, WorkerOptions
from recallstream.model.recall import Recaller, UnknownUser
from recallstream.model.vector_index import VectorIndex
from recallstream.streaming.movielens import load_movielens

from conftest import join_examples

CLICKS = 3_000
BATCH = 250
USER = "1"  # the README snippet's user, among the replay's first clicks
README = Path(__file__).resolve().parents[1] / "README.md"


@dataclasses.dataclass
class Trained:
    settings: object
    index: VectorIndex
    worker: Worker
    url: str
    answered_while_running: dict
    users: set


def get(url: str, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + path, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


@pytest.fixture(scope="module")
def trained(kafka_settings):
    from recallstream.streaming.kafka_io import scratch_topics

    tuned = dataclasses.replace(kafka_settings, batch_size=BATCH, batch_timeout_s=0.5,
                                checkpoint_every_s=1e6, checkpoint_every_batches=1000,
                                reembed_every_batches=4, qdrant_write_interval_s=0.05,
                                metrics_port=free_port())
    with scratch_topics(tuned, f"recall-{os.getpid()}-{random.randrange(1 << 30)}",
                        partitions=2) as settings:
        ml = load_movielens("ml-100k")
        summary = publish(ReplayPlan(ml, limit=CLICKS), settings, progress=False)
        assert (summary.clicks, summary.failed) == (CLICKS, 0)
        join_examples(settings)
        users = {str(ml.ratings[i]["user_id"]) for i in ml.time_order()[:CLICKS]}
        assert USER in users
        with tempfile.TemporaryDirectory() as tmp:
            settings = dataclasses.replace(settings, checkpoint_dir=tmp)
            index = VectorIndex.connect(":memory:")
            worker = Worker(settings, WorkerOptions(exit_when_idle_s=1.5), index=index)
            url = f"http://127.0.0.1:{settings.metrics_port}"
            thread = threading.Thread(target=worker.run, name="worker-under-test")
            thread.start()
            answered: dict[int, int] = {}
            # concurrent readers while the worker trains: every answer is 200, 404 or 503
            readers = [threading.Thread(target=_read_while, args=(thread, url, answered))
                       for _ in range(3)]
            for reader in readers:
                reader.start()
            thread.join(timeout=120)
            for reader in readers:
                reader.join(timeout=30)
            assert not thread.is_alive()
            assert worker.counters["clicks_trained"] == CLICKS
            yield Trained(settings, index, worker, url, answered, users)
            http_server.attach(settings.metrics_port, None)
            index.close()


def _read_while(worker_thread: threading.Thread, url: str, answered: dict) -> None:
    deadline = time.monotonic() + 60
    while worker_thread.is_alive() and time.monotonic() < deadline:
        try:
            status, _ = get(url, f"/recall?user_id={USER}&k=20&exclude_seen=1")
        except (urllib.error.URLError, ConnectionError):
            continue  # the endpoint is not up yet
        answered[status] = answered.get(status, 0) + 1


def test_readers_are_served_while_the_worker_trains(trained):
    assert set(trained.answered_while_running) <= {200, 404, 503}, trained.answered_while_running
    assert trained.answered_while_running.get(200, 0) > 0


# -- the Python API ---------------------------------------------------------------------------

def test_recaller_returns_the_top_k_best_first_with_payloads(trained):
    s = trained.settings
    result = Recaller(trained.index, s.collection_items, s.collection_users).recall(USER, k=10)
    assert result.user_id == USER and 1 <= result.model_version <= trained.worker.counters["batches"]
    assert len(result.items) == 10
    scores = [hit.score for hit in result.items]
    assert scores == sorted(scores, reverse=True)
    for hit in result.items:
        assert hit.payload["item_id"] == hit.item_id and hit.payload["title"]
        assert isinstance(hit.payload["categories"], list)


def test_recaller_filters_seen_items_and_categories(trained):
    s = trained.settings
    recaller = Recaller(trained.index, s.collection_items, s.collection_users)
    seen = set(trained.index.retrieve_payloads(s.collection_users, [USER], kind="user")[USER]
               ["recent_items"])
    assert seen
    plain = recaller.recall(USER, k=100)
    assert seen & {hit.item_id for hit in plain.items}  # the user's own clicks rank high
    fresh = recaller.recall(USER, k=100, exclude_seen=True)
    assert len(fresh.items) == 100 and not seen & {hit.item_id for hit in fresh.items}
    dramas = recaller.recall(USER, k=30, categories=["Drama", "Horror"])
    assert len(dramas.items) == 30
    assert all({"Drama", "Horror"} & set(hit.payload["categories"]) for hit in dramas.items)


def test_recaller_embeds_fresh_clicks_and_refuses_unknown_users_and_bad_k(trained):
    s = trained.settings
    learner, tables = trained.worker.trainer.learner, trained.worker.trainer.tables
    embed = lambda user_id, clicks: learner.embed_users([user_id], tables.users, [clicks])[0]  # noqa: E731
    recaller = Recaller(trained.index, s.collection_items, s.collection_users, embed=embed)
    fresh = recaller.recall("a-new-user", k=5, recent_clicks=["50", "181"], exclude_seen=True)
    assert len(fresh.items) == 5 and not {"50", "181"} & {h.item_id for h in fresh.items}
    with pytest.raises(UnknownUser):
        recaller.recall("a-new-user")
    for k in (0, 1001):
        with pytest.raises(ValueError):
            recaller.recall(USER, k=k)


def test_the_readme_snippet_agrees_with_the_api(trained, monkeypatch, capsys):
    import qdrant_client

    snippet = re.search(r"```python\n(.*?)```", README.read_text().split("## Recall for readers")[1],
                        re.S).group(1)
    assert 'user_id = "1"' in snippet and "lookup_from" in snippet
    # the snippet's server is the worker's embedded Qdrant here
    monkeypatch.setattr(qdrant_client, "QdrantClient", lambda **_: trained.index.client)
    exec(compile(snippet, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    snippet_top = [(line.split()[0], float(line.split()[1])) for line in lines]
    s = trained.settings
    api_top = [(h.item_id, h.score)
               for h in Recaller(trained.index, s.collection_items, s.collection_users)
               .recall(USER, k=10).items]
    assert len(snippet_top) == len(api_top) == 10
    assert {i for i, _ in snippet_top} == {i for i, _ in api_top}
    for (a, sa), (b, sb) in zip(snippet_top, api_top):
        assert a == b or abs(sa - sb) < 1e-3  # same order up to ties (the snippet rounds)


# -- the HTTP endpoint ------------------------------------------------------------------------

def test_recall_endpoint_answers_the_documented_json(trained):
    status, body = get(trained.url, f"/recall?user_id={USER}&k=7&exclude_seen=1&category=Drama")
    assert status == 200 and set(body) == {"user_id", "model_version", "items"}
    assert body["user_id"] == USER and isinstance(body["model_version"], int)
    assert len(body["items"]) == 7
    for item in body["items"]:
        assert set(item) == {"item_id", "score", "payload"} and "Drama" in item["payload"]["categories"]
    status, body = get(trained.url, f"/recall?user_id={USER}")
    assert status == 200 and len(body["items"]) == 10
    assert get(trained.url, f"/recall?user_id={USER}&k=1000")[0] == 200


@pytest.mark.parametrize("query", [
    "", "k=5", "user_id=", f"user_id={USER}&k=", f"user_id={USER}&k=0", f"user_id={USER}&k=1001",
    f"user_id={USER}&k=-1", f"user_id={USER}&k=1e3", f"user_id={USER}&k=%EF%BC%91",
    f"user_id={USER}&k=99999999999999999999", f"user_id={USER}&user_id=2",
    f"user_id={USER}&exclude_seen=maybe", f"user_id={USER}&category=", f"user_id={USER}&colour=red",
    f"user_id={USER}&filter=x", "user_id=" + "9" * 300, f"user_id={USER}&category=" + "x" * 300,
    "user_id=%FF", "user_id=%0A1", "user_id", "user_id=1&&k=2", "&".join(["category=x"] * 30),
])
def test_recall_endpoint_rejects_bad_parameters_with_400(trained, query):
    status, body = get(trained.url, "/recall?" + query)
    assert status == 400 and body["error"]


def test_recall_endpoint_answers_404_for_unknown_users_and_paths(trained):
    status, body = get(trained.url, "/recall?user_id=nobody-at-all")
    assert status == 404 and "nobody-at-all" in body["error"]
    assert get(trained.url, "/nowhere")[0] == 404
    with urllib.request.urlopen(trained.url + "/metrics", timeout=10) as response:
        assert b"recallstream_clicks_trained_total" in response.read()


def test_recall_endpoint_answers_503_while_no_model_is_loaded():
    port = free_port()
    http_server.serve(port)
    status, body = get(f"http://127.0.0.1:{port}", f"/recall?user_id={USER}")
    assert status == 503 and "no model" in body["error"]


def test_request_line_and_header_sizes_are_capped(trained):
    host, port = "127.0.0.1", trained.settings.metrics_port
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request("GET", "/recall?user_id=" + "1" * (http_server.MAX_REQUEST_LINE + 10))
    assert connection.getresponse().status == 414
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request("GET", f"/recall?user_id={USER}",
                       headers={f"X-Pad-{n}": "x" * 1000 for n in range(20)})
    assert connection.getresponse().status == 431


def test_a_silent_client_is_disconnected_after_the_socket_timeout(trained, monkeypatch):
    monkeypatch.setattr(http_server.Handler, "timeout", 0.3)
    with socket.create_connection(("127.0.0.1", trained.settings.metrics_port), timeout=10) as sock:
        sock.sendall(b"GET /recall?user_id=1 HTTP/1.1\r\n")  # and then nothing
        started = time.monotonic()
        assert sock.recv(1024) == b""  # the server hung up
        assert time.monotonic() - started < 5


QUERY_CHARS = st.sampled_from(["user_id", "k", "exclude_seen", "category", "=", "&", "%", "+",
                               "1", "0", "1000", "-", "Drama", "%FF", "%00", "é", " ", ";", "x",
                               USER, "%3D", "%26", "true"])


@hsettings(max_examples=150, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=60), st.lists(QUERY_CHARS, max_size=20).map("".join)))
def test_no_query_string_yields_a_500(trained, text):
    query = urllib.parse.quote(text, safe="&=%+;:/?@!$'()*,")
    connection = http.client.HTTPConnection("127.0.0.1", trained.settings.metrics_port, timeout=10)
    connection.request("GET", "/recall?" + query)
    response = connection.getresponse()
    assert response.status in (200, 400, 404), (query, response.status)
    body = orjson.loads(response.read())
    assert ("items" in body) if response.status == 200 else body["error"]
    connection.close()


# -- the command line -------------------------------------------------------------------------

def test_recall_command_prints_titles_and_json(trained, capsys):
    flags = ["--recall-url", trained.url]
    assert main(["recall", USER, "-k", "3", *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"recall for user {USER}") and len(lines) == 4
    assert all(re.match(r"\s+\d+\s+-?\d\.\d{4}\s+\S+\s+.+\[.*\]$", line) for line in lines[1:])
    assert main(["recall", USER, "-k", "5", "--json", "--exclude-seen", *flags]) == 0
    body = orjson.loads(capsys.readouterr().out)
    assert body["user_id"] == USER and len(body["items"]) == 5


@pytest.mark.parametrize("argv, status, words", [
    (["recall", "nobody-at-all"], 2, "unknown user 'nobody-at-all'"),
    (["recall", USER, "-k", "1001"], 2, "at most 1000"),
    (["recall", USER, "--category", ""], 2, "category is empty"),
])
def test_recall_command_errors_are_one_line_with_status_2(trained, capsys, argv, status, words):
    assert main([*argv, "--recall-url", trained.url]) == status
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and words in err, err


def test_recall_command_without_a_worker_fails_with_status_1(capsys):
    assert main(["recall", USER, "--metrics-port", str(free_port())]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "no worker answers" in err and err.count("\n") == 1


@pytest.mark.skipif(not os.environ.get("QDRANT_URL"), reason="needs a Qdrant server (QDRANT_URL)")
def test_recall_command_asks_a_qdrant_server_directly(capsys):
    import numpy as np

    url = os.environ["QDRANT_URL"]
    suffix = f"{os.getpid()}-{random.randrange(1 << 30)}"
    items, users = f"items-{suffix}", f"users-{suffix}"
    index = VectorIndex.connect(url)
    try:
        index.ensure_collection(items, dim=2)
        index.ensure_collection(users, dim=2)
        index.upsert(items, ["a", "b"], np.array([[1.0, 0.0], [0.0, 1.0]]), [{}, {}])
        index.upsert(users, ["u"], np.array([[0.0, 1.0]]), [{"model_version": 1}], kind="user")
        common = ["--qdrant", url, "--collection-items", items, "--collection-users", users]
        assert main(["recall", "u", "-k", "1", "--json", *common]) == 0
        assert orjson.loads(capsys.readouterr().out)["items"][0]["item_id"] == "b"
        assert main(["recall", "nobody", *common]) == 2
    finally:
        index.delete_collection(items)
        index.delete_collection(users)
        index.close()


def test_bench_recall_reports_api_and_http_percentiles_per_backend_and_size(capsys):
    assert main(["bench", "recall", "--json", "--sizes", "300", "--users", "5", "--queries", "5",
                 "--dim", "8", "--edge-optimize"]) == 0
    figures = orjson.loads(capsys.readouterr().out)
    for backend in ("memory", "edge"):
        for key in ("api_p50_ms", "api_p99_ms", "http_p50_ms", "http_p99_ms", "upsert_points_per_s"):
            assert figures[f"{backend}_{key}_300"] > 0
        assert figures[f"{backend}_api_p50_ms_300"] <= figures[f"{backend}_api_p99_ms_300"]
    assert figures["edge_optimize_s_300"] >= 0 and "memory_optimize_s_300" not in figures
