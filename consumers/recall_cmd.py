"""``recallstream recall USER_ID [-k 10] [--json]``: a user's recall set.

With a Qdrant server (``--qdrant http://...``) the command asks Qdrant itself
(:class:`~recallstream.model.recall.Recaller`, no model needed). In the
embedded mode the index lives inside the worker's process, so it asks the
worker's ``/recall`` endpoint (setting ``recall_url``, by default
``http://127.0.0.1:METRICS_PORT``). An unknown user or a bad argument is exit
status 2; no worker answering, or one without a model yet, is status 1.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

import orjson

from recallstream.consumers.usage import CommandError, UsageError, positive_int

HTTP_TIMEOUT_S = 10.0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("recall", parents=[subparsers.settings_parent],
                                   help="print a user's recall set (top k items)")
    parser.add_argument("user_id", metavar="USER_ID")
    parser.add_argument("-k", type=positive_int, default=10, help="items to recall (1..1000)")
    parser.add_argument("--exclude-seen", action="store_true",
                        help="leave out the items the user clicked recently")
    parser.add_argument("--category", action="append", default=[],
                        help="keep items of this category (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args, settings) -> int:
    from recallstream.consumers.cli import print_json
    from recallstream.model.recall import MAX_K

    if args.k > MAX_K:
        raise UsageError(f"-k must be at most {MAX_K}, got {args.k}")
    if settings.qdrant.startswith(("http://", "https://")):
        result = recall_from_qdrant(settings, args)
    else:
        result = recall_from_worker(settings, args)
    if args.json:
        print_json(result)
    else:
        print_recall_set(result)
    return 0


def recall_from_qdrant(settings, args) -> dict:
    """Ask the Qdrant server directly."""
    from recallstream.model.recall import Recaller, UnknownUser
    from recallstream.model.vector_index import VectorIndex

    index = VectorIndex.connect(settings.qdrant, settings.qdrant_api_key or None)
    try:
        recaller = Recaller(index, settings.collection_items, settings.collection_users)
        return recaller.recall(args.user_id, args.k, exclude_seen=args.exclude_seen,
                               categories=args.category or None).to_dict()
    except UnknownUser:
        raise UsageError(f"unknown user {args.user_id!r}: no vector in "
                         f"{settings.collection_users!r} at {settings.qdrant}") from None
    finally:
        index.close()


def worker_url(settings) -> str:
    """The worker's endpoint in embedded mode.

    >>> from recallstream.streaming.settings import Settings
    >>> worker_url(Settings.resolve(environ={"RECALLSTREAM_METRICS_PORT": "8123"}))
    'http://127.0.0.1:8123'
    """
    return (settings.recall_url or f"http://127.0.0.1:{settings.metrics_port}").rstrip("/")


def recall_from_worker(settings, args) -> dict:
    """Ask the worker's /recall endpoint."""
    base = worker_url(settings)
    query = urllib.parse.urlencode([("user_id", args.user_id), ("k", args.k),
                                    *([("exclude_seen", 1)] if args.exclude_seen else []),
                                    *[("category", c) for c in args.category]])
    try:
        with urllib.request.urlopen(f"{base}/recall?{query}", timeout=HTTP_TIMEOUT_S) as response:
            return orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        message = _error_message(error)
        if error.code == 404:
            raise UsageError(f"unknown user {args.user_id!r}: the worker at {base} has no "
                             f"vector for it") from None
        if error.code == 400:
            raise UsageError(message) from None
        raise CommandError(f"the worker at {base} answered {error.code}: {message}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CommandError(f"no worker answers at {base} ({reason}); start `recallstream worker` "
                           f"or pass --recall-url / --qdrant http://...") from None


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        return str(orjson.loads(error.read())["error"])
    except Exception:
        return error.reason or f"HTTP {error.code}"


def print_recall_set(result: dict) -> None:
    """One line per item: rank, score, id, title and categories (MovieLens: genres).

    >>> print_recall_set({"user_id": "7", "model_version": 3, "items": [{"item_id": "1",
    ...     "score": 0.91234, "payload": {"title": "Toy Story", "categories": ["Comedy"]}}]})
    recall for user 7 (model version 3):
       1  0.9123  1  Toy Story  [Comedy]
    """
    print(f"recall for user {result['user_id']} (model version {result['model_version']}):")
    for rank, item in enumerate(result["items"], 1):
        payload = item.get("payload") or {}
        genres = ", ".join(payload.get("categories") or [])
        print(f"{rank:>4}  {item['score']:.4f}  {item['item_id']}  "
              f"{payload.get('title', '')}  [{genres}]")
