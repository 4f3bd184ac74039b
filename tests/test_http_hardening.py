"""The worker's HTTP endpoint against slow, hostile or curious clients, over real sockets
(no broker, no model: a stand-in recaller answers /recall)."""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time

import orjson
import pytest

from recallstream.consumers import http_server
from recallstream.consumers.local_kafka import free_port
from recallstream.model.recall import UnknownUser
from recallstream.streaming.settings import Settings

API_KEY = "qdrant-key-do-not-echo"
WAIT_S = 10


class Result:
    def __init__(self, user_id):
        self.user_id = user_id

    def to_dict(self):
        return {"user_id": self.user_id, "model_version": 1, "items": []}


class StandInRecaller:
    """Answers every user but `ghost` (unknown) and `broken` (an index error quoting a secret)."""

    def recall(self, user_id, k, exclude_seen=False, categories=None):
        if user_id == "ghost":
            raise UnknownUser(user_id)
        if user_id == "broken":
            raise RuntimeError(f"Unexpected Response: 403 (api-key: {API_KEY}) raw payload b'...'")
        return Result(user_id)


@pytest.fixture
def server():
    port = free_port()
    server = http_server.serve(port)
    http_server.attach(port, StandInRecaller())
    yield server
    server.shutdown()
    server.server_close()
    http_server._SERVERS.pop(port, None)


def port_of(server) -> int:
    return server.server_address[1]


def get(server, path: str, headers=None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=WAIT_S)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server hung up (reads end or the connection resets) within WAIT_S."""
    sock.settimeout(WAIT_S)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_the_endpoint_binds_the_loopback_address_by_default(server):
    assert server.server_address[0] == "127.0.0.1"
    assert Settings.resolve(environ={}).http_host == "127.0.0.1"
    assert get(server, "/recall?user_id=1")[0] == 200


def test_a_client_stalled_mid_request_line_is_cut_off_and_blocks_nobody(server, monkeypatch):
    monkeypatch.setattr(http_server.Handler, "timeout", 2.0)
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=WAIT_S) as stalled:
        stalled.sendall(b"GET /recall?user_id=1 HT")  # half a request line, then nothing
        started = time.monotonic()
        # meanwhile other clients are answered at once
        for user in ("1", "2", "3"):
            status, body = get(server, f"/recall?user_id={user}")
            assert status == 200 and orjson.loads(body)["user_id"] == user
        assert time.monotonic() - started < 2.0  # before the stalled client's timeout
        assert closed_by_server(stalled)
        assert time.monotonic() - started < 2.0 + 3.0


def test_a_client_trickling_its_request_head_is_cut_off_at_the_deadline(server, monkeypatch):
    monkeypatch.setattr(http_server.Handler, "timeout", 0.5)  # each byte comes sooner than this
    monkeypatch.setattr(http_server.Handler, "head_timeout_s", 1.0)
    request = b"GET /recall?user_id=1 HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"y" * 200
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=WAIT_S) as slow:
        started = time.monotonic()
        cut_off = None
        for byte in request:
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut_off = time.monotonic() - started
                break
            time.sleep(0.1)
        if cut_off is None:
            assert closed_by_server(slow)
            cut_off = time.monotonic() - started
        assert 1.0 <= cut_off < 1.0 + 3.0  # the deadline, not the per-read timeout, ended it
        assert get(server, "/recall?user_id=1")[0] == 200


def test_request_line_and_headers_are_capped(server):
    assert get(server, "/recall?user_id=" + "1" * (http_server.MAX_REQUEST_LINE + 1))[0] == 414
    padding = {f"X-Pad-{n}": "x" * 1000 for n in range(http_server.MAX_HEADER_BYTES // 1000 + 2)}
    assert get(server, "/recall?user_id=1", headers=padding)[0] == 431
    assert get(server, "/recall?user_id=1", headers={"X-Pad": "x" * 100})[0] == 200


@pytest.mark.parametrize("query, status", [
    ("user_id=1", 200), ("user_id=ghost", 404), ("", 400), ("user_id=1&k=0", 400),
    ("user_id=1&k=1001", 400), ("user_id=1&api_key=x", 400), ("user_id=%00", 400),
    ("user_id=1&user_id=2", 400), ("user_id=" + "u" * 257, 400),
])
def test_every_parameter_is_validated(server, query, status):
    code, body = get(server, "/recall?" + query)
    assert code == status and (status == 200 or orjson.loads(body)["error"])


def test_an_index_error_is_a_503_that_echoes_and_logs_no_secret(server, caplog):
    caplog.set_level(logging.DEBUG)
    status, body = get(server, "/recall?user_id=broken", headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 503 and API_KEY.encode() not in body and b"payload" not in body
    assert not [r for r in caplog.records if API_KEY in r.getMessage() or "raw payload" in r.getMessage()]
    assert any("503" in r.getMessage() and "RuntimeError" in r.getMessage() for r in caplog.records)


def test_other_methods_and_paths_reveal_nothing(server):
    connection = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=WAIT_S)
    connection.request("POST", "/recall", body=b"user_id=1")
    response = connection.getresponse()
    assert response.status == 501 and b"Traceback" not in response.read()
    connection.close()
    status, body = get(server, "/../../etc/passwd")
    assert status == 404 and b"root" not in body
