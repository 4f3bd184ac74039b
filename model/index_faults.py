"""TEST HOOK: make the vector index fail on demand, for fault-injection runs (the soak).

Not for production. When the environment variable :data:`OUTAGE_FILE_ENV`
(``RECALLSTREAM_TEST_QDRANT_OUTAGE_FILE``) names a file,
:meth:`recallstream.model.vector_index.VectorIndex.connect` wraps its client in an
:class:`OutageClient`: every call to the client then raises
``ConnectionRefusedError`` (what an unreachable Qdrant server raises, so the
retries and backoff of the real failure path run) for as long as that file
exists. ``recallstream soak`` creates the file to start an outage and removes it
to end it. Without the variable nothing is wrapped, and the index's calls pay
nothing for this hook.

Examples
--------
>>> import os, tempfile
>>> from qdrant_client import QdrantClient
>>> flag = os.path.join(tempfile.mkdtemp(), "qdrant-down")
>>> client = OutageClient(QdrantClient(location=":memory:"), flag)
>>> client.collection_exists("items")
False
>>> open(flag, "w").close()
>>> client.collection_exists("items")
Traceback (most recent call last):
...
ConnectionRefusedError: injected Qdrant outage (test hook: RECALLSTREAM_TEST_QDRANT_OUTAGE_FILE exists)
>>> os.remove(flag); client.collection_exists("items")
False
>>> with_injected_outages("client", environ={}) == "client"
True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

OUTAGE_FILE_ENV = "RECALLSTREAM_TEST_QDRANT_OUTAGE_FILE"

# Closing must work during an outage: a worker that stops then cannot hang or crash on it.
_ALWAYS_ALLOWED = frozenset({"close"})


class OutageClient:
    """A Qdrant client (or EdgeClient) whose calls fail while ``flag_path`` exists.

    Parameters
    ----------
    client : object
        The real client; attributes that are not callables pass through unchanged.
    flag_path : str
        The outage lasts as long as this file exists.

    Examples
    --------
    See the module docstring.
    """

    def __init__(self, client: Any, flag_path: str) -> None:
        self._wrapped = client
        self._flag_path = flag_path
        self.calls_refused = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._wrapped, name)
        if not callable(attribute) or name in _ALWAYS_ALLOWED:
            return attribute

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if os.path.exists(self._flag_path):
                self.calls_refused += 1
                raise ConnectionRefusedError(
                    f"injected Qdrant outage (test hook: {OUTAGE_FILE_ENV} exists)")
            return attribute(*args, **kwargs)

        return guarded


def with_injected_outages(client: Any, environ: Mapping[str, str] | None = None) -> Any:
    """``client`` wrapped in an :class:`OutageClient` when :data:`OUTAGE_FILE_ENV` is set,
    else ``client`` itself."""
    flag_path = (os.environ if environ is None else environ).get(OUTAGE_FILE_ENV)
    return OutageClient(client, flag_path) if flag_path else client
