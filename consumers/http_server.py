"""The worker's HTTP endpoint: ``/metrics`` (Prometheus) and ``/recall`` (readers).

One :class:`ThreadingHTTPServer` per port and process (:func:`serve`), each
request in its own thread, so readers never wait for the trainer and the
trainer never waits for readers. ``/metrics`` is prometheus_client's default
registry (``generate_latest``). ``/recall`` asks the :class:`Recaller` the
worker attached (:func:`attach`), which reads Qdrant only (user vectors from
the users collection), so it touches neither the model nor the feature tables.

``GET /recall?user_id=U&k=10[&exclude_seen=1][&category=C ...]`` answers
``{"user_id", "model_version", "items": [{"item_id", "score", "payload"}]}``;
400 for a bad parameter (missing, empty, repeated, too long, k outside
1..1000, unknown names, malformed encoding), 404 for an unknown user, 503 while
no model is attached or the index cannot answer. Errors are JSON
``{"error": "..."}``. No input yields a 500: anything unexpected is a 503.

Defences against slow or hostile clients: request line at most
:data:`MAX_REQUEST_LINE` bytes (414), headers at most :data:`MAX_HEADER_BYTES`
in all (431), a socket timeout of :data:`SOCKET_TIMEOUT_S` between two reads and
a deadline of :data:`REQUEST_HEAD_TIMEOUT_S` for the whole request line and
headers (a client that trickles a byte at a time is cut off too); each
connection has its own thread, so a stalled client delays nobody else. It binds
127.0.0.1 unless told otherwise (setting ``http_host``). Error answers and log
lines never carry an exception's text from the index (it may hold a server's
answer or a payload): a 503 says only that the endpoint cannot answer, and the
log names the exception's type.

Examples
--------
>>> parse_recall_query("user_id=42&k=5&category=Drama&category=Comedy")
{'user_id': '42', 'k': 5, 'exclude_seen': False, 'categories': ['Drama', 'Comedy']}
>>> parse_recall_query("user_id=42&k=0")  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
...
recallstream.consumers.http_server.BadRequest: k must be an integer in 1..1000, got '0'
"""

from __future__ import annotations

import io
import logging
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from recallstream.model.recall import MAX_K, UnknownUser

log = logging.getLogger("recallstream.http")

MAX_REQUEST_LINE = 8192
MAX_HEADER_BYTES = 16384
SOCKET_TIMEOUT_S = 10.0
REQUEST_HEAD_TIMEOUT_S = 10.0  # the request line and every header, from the first wait on
MAX_VALUE_CHARS = 256  # user ids and categories
MAX_CATEGORIES = 20
DEFAULT_K = 10
RECALL_PARAMS = {"user_id", "k", "exclude_seen", "category"}
FLAGS = {"0": False, "1": True, "false": False, "true": True}


class BadRequest(ValueError):
    """A /recall query the endpoint refuses (400)."""


def parse_recall_query(query: str) -> dict:
    """Validate a /recall query string; :class:`BadRequest` says what is wrong."""
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query),
                                       encoding="utf-8", errors="strict",
                                       max_num_fields=MAX_CATEGORIES + 3)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"malformed query string: {error}") from None
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        if name not in RECALL_PARAMS:
            raise BadRequest(f"unknown parameter {name[:40]!r}; expected {sorted(RECALL_PARAMS)}")
        if not value:
            raise BadRequest(f"{name} is empty")
        if len(value) > MAX_VALUE_CHARS:
            raise BadRequest(f"{name} is longer than {MAX_VALUE_CHARS} characters")
        if not value.isprintable():
            raise BadRequest(f"{name} holds control characters")
        values.setdefault(name, []).append(value)
    for name in ("user_id", "k", "exclude_seen"):
        if len(values.get(name, ())) > 1:
            raise BadRequest(f"{name} is given more than once")
    if "user_id" not in values:
        raise BadRequest("user_id is missing")
    k_text = values.get("k", [str(DEFAULT_K)])[0]
    if not (k_text.isascii() and k_text.isdigit() and len(k_text) <= 4 and 1 <= int(k_text) <= MAX_K):
        raise BadRequest(f"k must be an integer in 1..{MAX_K}, got {k_text[:40]!r}")
    flag = values.get("exclude_seen", ["0"])[0].lower()
    if flag not in FLAGS:
        raise BadRequest(f"exclude_seen must be one of {sorted(FLAGS)}, got {flag[:40]!r}")
    return {"user_id": values["user_id"][0], "k": int(k_text), "exclude_seen": FLAGS[flag],
            "categories": values.get("category", [])}


class RecallHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address, handler) -> None:
        super().__init__(address, handler)
        self.recaller = None


class _HeadDeadline(io.RawIOBase):
    """The connection's reading side, with a deadline for the request head: each read waits
    at most the handler's socket timeout and never past the deadline (TimeoutError)."""

    def __init__(self, handler: "Handler") -> None:
        super().__init__()
        self.handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        handler = self.handler
        remaining = handler.head_deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request head not complete in time")
        handler.connection.settimeout(min(remaining, handler.timeout))
        return handler.connection.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    """One connection of the endpoint (see the module docstring); one thread each.

    Examples
    --------
    >>> Handler.timeout == SOCKET_TIMEOUT_S, Handler.head_timeout_s == REQUEST_HEAD_TIMEOUT_S
    (True, True)
    """

    server: RecallHTTPServer
    timeout = SOCKET_TIMEOUT_S
    head_timeout_s = REQUEST_HEAD_TIMEOUT_S
    head_deadline = float("inf")
    protocol_version = "HTTP/1.1"
    server_version = "recallstream"

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BufferedReader(_HeadDeadline(self))

    def handle_one_request(self) -> None:
        self.head_deadline = time.monotonic() + self.head_timeout_s
        super().handle_one_request()

    def parse_request(self) -> bool:
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline, self.request_version, self.command = "", "", ""
            self.close_connection = True
            self.send_error(414)
            return False
        if not super().parse_request():
            return False
        self.connection.settimeout(self.timeout)  # the head is in: answering has its own timeout
        if sum(len(k) + len(v) for k, v in self.headers.items()) > MAX_HEADER_BYTES:
            self.send_error(431, "Request Header Fields Too Large")
            return False
        return True

    def do_GET(self) -> None:
        try:
            path, _, query = self.path.partition("?")
            if path == "/metrics":
                self._metrics()
            elif path == "/recall":
                self._recall(query)
            else:
                self._json(404, {"error": f"no such path; try /recall or /metrics"})
        except Exception as error:  # never a 500: the index or the model cannot answer now
            # the type only: the text of an index error may quote a server answer or a payload
            log.warning("GET %s answered 503: %s", self.path.partition("?")[0][:100],
                        type(error).__name__)
            self._json(503, {"error": "temporarily unable to answer"})

    def _metrics(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)

    def _recall(self, query: str) -> None:
        try:
            params = parse_recall_query(query)
        except BadRequest as error:
            return self._json(400, {"error": str(error)})
        recaller = self.server.recaller
        if recaller is None:
            return self._json(503, {"error": "no model is loaded yet"})
        try:
            result = recaller.recall(params["user_id"], params["k"],
                                     exclude_seen=params["exclude_seen"],
                                     categories=params["categories"] or None)
        except UnknownUser:
            return self._json(404, {"error": f"unknown user {params['user_id']!r}"})
        self._json(200, result.to_dict())

    def _json(self, status: int, body: dict) -> None:
        self._send(status, orjson.dumps(body), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib's name
        log.debug("%s %s", self.address_string(), format % args)


_SERVERS: dict[int, RecallHTTPServer] = {}
_LOCK = threading.Lock()


def serve(port: int, host: str = "127.0.0.1") -> RecallHTTPServer | None:
    """Serve /metrics and /recall on ``host:port`` (port 0: not at all), once per port
    and process: a worker that runs again in the same process keeps its endpoint."""
    if not port:
        return None
    with _LOCK:
        if port not in _SERVERS:
            server = RecallHTTPServer((host, port), Handler)
            threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True).start()
            _SERVERS[port] = server
        return _SERVERS[port]


def attach(port: int, recaller) -> None:
    """Answer /recall on ``port`` with ``recaller`` (None: 503 until another is attached)."""
    server = _SERVERS.get(port)
    if server is not None:
        server.recaller = recaller
