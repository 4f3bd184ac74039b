"""The worker's reading in a process of its own, off the training process's GIL.

Fetching, parsing, decoding and routing records is Python work (kafka-python's
record parsing, the examples' JSON, the alignment). In the worker's process it
shares the GIL with the training step and the Qdrant writer;
:class:`IngestorProcess` runs a :class:`~recallstream.streaming.ingest.StreamIngestor`
in a child process instead and offers its methods to the worker unchanged, so
the :class:`~recallstream.streaming.prefetch.Prefetcher`, the checkpoints and
the resets to a snapshot work as with the ingestor itself.

- Each call is one request and one answer over a pipe, handled by the child in
  order, so the child's offsets and router state describe exactly the polls the
  worker has received: exactly-once holds as before.
- A poll's answer is its :meth:`~recallstream.streaming.record_router.Ingested.compact`
  form: (user id, item id, event time) tuples, about 23 bytes and 0.3 µs of
  unpickling a click.
- Every answer carries the ingestor's ``caught_up()``, ``counters()`` and ``lag()``,
  which the worker's threads then read without asking the child (they may ask
  while a poll runs).
- :meth:`IngestorProcess.unstick` reaches the child on a pipe of its own, so it
  wakes a poll while the poll runs.
- The child ignores SIGINT and SIGTERM (the worker decides when to stop and still
  needs the child for its last checkpoint), and exits when the worker does: on
  the end of its pipe, or by the kernel's parent-death signal after a SIGKILL.

Examples
--------
With a broker (see tests/test_ingest_process_kafka.py)::

    ingestor = IngestorProcess(settings)
    batch = ingestor.poll(timeout_s=0.5)        # an IngestedClicks
    batch.clicks(), ingestor.state_dict(), ingestor.counters()
    ingestor.close()
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import signal
import subprocess
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

from recallstream.streaming.prefetch import StalledIngestion
from recallstream.streaming.settings import Settings

log = logging.getLogger(__name__)

# Methods forwarded to the child as they are; poll is forwarded and compacted.
_FORWARDED = ("state_dict", "load_state_dict", "offsets", "seek", "rewind", "commit")


class ReaderExited(StalledIngestion):
    """The reading process is gone (killed, crashed): restart from the checkpoint."""


class IngestorProcess:
    """A :class:`~recallstream.streaming.ingest.StreamIngestor` in a child process
    (see the module docstring).

    Parameters
    ----------
    settings : Settings
        Broker and topic names, and ``align_window_ms``: the child runs
        ``StreamIngestor.aligned(settings)``.
    start_timeout_s : float
        How long the child may take to import and connect.

    Raises
    ------
    Exception
        Whatever the ingestor's constructor raised in the child (no broker, ...).
    """

    def __init__(self, settings: Settings, start_timeout_s: float = 120.0) -> None:
        self._calls, child_calls = multiprocessing.Pipe()
        self._wakes, child_wakes = multiprocessing.Pipe()
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {"caught_up": False, "counters": {}, "lag": {}}
        self._closed = False
        # A fresh interpreter running this module, not multiprocessing's spawn: that one
        # would import the caller's main script again, unguarded in users' own scripts.
        fds = (child_calls.fileno(), child_wakes.fileno())
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, *map(str, fds)], pass_fds=fds,
            stdin=subprocess.DEVNULL)
        child_calls.close()  # the child holds the only other ends: EOF when it dies
        child_wakes.close()
        try:
            self._calls.send(settings)
            with self._lock:
                self._answer("start", timeout_s=start_timeout_s)
        except BaseException:
            self._stop_process()
            raise

    def poll(self, timeout_s: float = 1.0, max_records: int | None = None):
        """The next records, handled (an :class:`IngestedClicks`)."""
        return self._call("poll", timeout_s, max_records)

    @property
    def pid(self) -> int:
        """The reading process's pid."""
        return self._process.pid

    def caught_up(self) -> bool:
        """As of the latest answer (:meth:`StreamIngestor.caught_up`)."""
        return self._status["caught_up"]

    def counters(self) -> dict[str, Any]:
        """As of the latest answer (:meth:`StreamIngestor.counters`)."""
        return self._status["counters"]

    def lag(self) -> dict[str, int]:
        """As of the latest answer (:meth:`StreamIngestor.lag`)."""
        return self._status["lag"]

    def unstick(self) -> bool:
        """Wake a poll that kafka-python lost track of (:meth:`StreamIngestor.unstick`)."""
        try:
            self._wakes.send("unstick")
            return bool(self._wakes.poll(10.0) and self._wakes.recv())
        except (EOFError, OSError):
            return False

    def __getattr__(self, name: str):
        if name in _FORWARDED:
            return lambda *args: self._call(name, *args)
        raise AttributeError(name)

    def close(self) -> None:
        """Close the child's ingestor (its producer and consumer) and end the child."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call("close", timeout_s=60.0)
        except (ReaderExited, TimeoutError) as error:
            log.warning("the reading process did not close cleanly: %s", error)
        finally:
            self._stop_process()

    def _call(self, name: str, *args, timeout_s: float | None = None):
        with self._lock:
            try:
                self._calls.send((name, args))
            except OSError as error:
                raise self._exited(name) from error
            return self._answer(name, timeout_s)

    def _answer(self, name: str, timeout_s: float | None):
        """The child's answer to ``name`` (the lock held): its value, or its error raised."""
        try:
            if timeout_s is not None and not self._calls.poll(timeout_s):
                raise TimeoutError(f"the reading process did not answer {name!r} "
                                   f"within {timeout_s} s")
            kind, value, status = self._calls.recv()
        except (EOFError, OSError) as error:
            raise self._exited(name) from error
        if kind == "error":
            raise value
        self._status = status
        return value

    def _exited(self, name: str) -> ReaderExited:
        return ReaderExited(f"the reading process exited (exit code {self._exit_code(5.0)}) "
                            f"during {name!r}")

    def _exit_code(self, timeout_s: float) -> int | None:
        try:
            return self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def _stop_process(self) -> None:
        if self._exit_code(10.0) is None:
            self._process.kill()
            self._process.wait()
        self._calls.close()
        self._wakes.close()


def _main(calls_fd: str, wakes_fd: str) -> None:
    """The child's entry point: the two pipes' ends, then the settings on the first."""
    _die_with_parent()
    calls, wakes = Connection(int(calls_fd)), Connection(int(wakes_fd))
    try:
        settings = calls.recv()
    except (EOFError, OSError):  # the worker is gone already
        return
    _serve(settings, calls, wakes)


def _serve(settings: Settings, calls: Connection, wakes: Connection) -> None:
    """Build the ingestor, then answer the worker's calls in order."""
    from recallstream.streaming.ingest import StreamIngestor

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        ingestor = StreamIngestor.aligned(settings)
    except BaseException as error:
        calls.send(("error", _portable(error), None))
        return
    threading.Thread(target=_serve_wakes, args=(ingestor, wakes), name="wakes",
                     daemon=True).start()
    calls.send(("ok", None, _status(ingestor)))
    while True:
        try:
            name, args = calls.recv()
        except (EOFError, OSError):  # the worker is gone
            break
        try:
            if name == "close":  # the last status stays readable (the worker's report)
                status = _status(ingestor)
                ingestor.close()
                calls.send(("ok", None, status))
                return
            result = getattr(ingestor, name)(*args)
            if name == "poll":
                result = result.compact()
            calls.send(("ok", result, _status(ingestor)))
        except BaseException as error:
            calls.send(("error", _portable(error), None))
    ingestor.close()


def _serve_wakes(ingestor, wakes) -> None:
    while True:
        try:
            wakes.recv()
            wakes.send(ingestor.unstick())
        except (EOFError, OSError):
            return


def _status(ingestor) -> dict[str, Any]:
    return {"caught_up": ingestor.caught_up(), "counters": ingestor.counters(),
            "lag": ingestor.lag()}


def _portable(error: BaseException) -> BaseException:
    """``error`` with the child's traceback as a note, or a RuntimeError saying what it
    was when it does not pickle."""
    error.add_note("in the reading process:\n" + "".join(traceback.format_exception(error)))
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}\n{error.__notes__[-1]}")


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a SIGKILLed worker
    leaves no reader behind); elsewhere the end of the pipe stops it.

    Linux sends the signal when the *thread* that started the child ends, so the
    worker starts it from the thread that runs it to the end (``Worker.run``)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    _main(*sys.argv[1:])
