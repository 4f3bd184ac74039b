"""Versioned, atomic checkpoints of the worker's whole state, and its single-owner lock.

A checkpoint is one file ``ckpt-<seq:010d>`` in the checkpoint directory::

    RECALLSTREAM-CKPT\\n                  magic line
    {"format_version": 1, ...}\\n         header: one JSON line (payload size and SHA-256)
    <sha256 of the header line>\\n        so that a damaged header is told from a newer format
    <payload>                           torch.save of the state

The framing above never changes; ``format_version`` describes the payload.
The payload holds torch tensors, numpy arrays (stored as ``.npy`` bytes, written
and read with ``allow_pickle=False``) and plain containers of numbers and
strings, and is read with ``torch.load(weights_only=True)``: loading a
checkpoint never executes code from it. A payload that would (a pickled global
other than tensors and containers, an object array) is refused with
:class:`UnsafeCheckpoint`, a :class:`CorruptCheckpoint` that
:meth:`CheckpointStore.load_latest` skips, with a warning, for the previous one.

Crash safety: :meth:`CheckpointStore.save` writes a temporary file in the same
directory, fsyncs it, renames it over its final name with ``os.replace`` (atomic)
and fsyncs the directory, so a crash leaves the old or the new checkpoint, never
a torn one; and should a file be damaged anyway (disk, a copy gone wrong), its
checksum fails and :meth:`CheckpointStore.load_latest` falls back to the
previous checkpoint (one warning per file, and ``on_corrupt`` is called: the worker
counts it in ``recallstream_corrupt_files_total{kind="checkpoint"}``). Falling back is
consistent: a checkpoint holds the model and the offsets it reached together, so the
stream after it is simply trained again.

A full disk (or any other failure to write) leaves no temporary file behind and the
newest previous checkpoint valid: on a full disk :meth:`CheckpointStore.save` removes the
older ones and tries once more, then raises :class:`CheckpointWriteFailed`, and the
worker reports it and tries again at its next checkpoint (offsets are committed only
after a checkpoint is written).

Single owner: :class:`OwnerLock` holds an exclusive ``flock`` on
``<directory>/LOCK`` for the lifetime of the worker. The kernel drops the lock
when the process dies, even by SIGKILL, so a stale lock never needs cleaning.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import pickle
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
MAGIC = b"RECALLSTREAM-CKPT\n"
LOCK_FILE = "LOCK"

# A numpy array travels as {NDARRAY_KEY: <.npy bytes>}; dicts of the state may not use this key.
NDARRAY_KEY = "__recallstream_ndarray__"

_NAME = re.compile(r"^ckpt-(\d{10})$")
_TEMP = re.compile(r"^\.ckpt-\d{10}\.tmp$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

log = logging.getLogger(__name__)


class CheckpointError(Exception):
    """Base class of checkpoint errors."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint file fails its checks (torn, truncated or damaged)."""


class UnsafeCheckpoint(CorruptCheckpoint):
    """A checkpoint whose payload would run code or build arbitrary objects when loaded
    (a pickled global other than tensors and plain containers, an object array): refused
    without running anything, and skipped like a corrupt file by
    :meth:`CheckpointStore.load_latest`."""


class UnsupportedCheckpointVersion(CheckpointError):
    """A well-formed checkpoint written by a *newer* format than this code reads (a
    deployment rolled back): refused rather than skipped, since the older code would
    prune the newer checkpoints. A ``format_version`` that is older or not a number is
    damage, a :class:`CorruptCheckpoint`."""


class CheckpointWriteFailed(CheckpointError, OSError):
    """A checkpoint could not be written (disk full, I/O error); the previous ones are
    intact and no temporary file is left. ``errno`` is the underlying error's.

    Examples
    --------
    >>> import errno
    >>> error = CheckpointWriteFailed(OSError(errno.ENOSPC, "No space left on device"), "ckpt-2")
    >>> error.errno == errno.ENOSPC, str(error)
    (True, 'cannot write checkpoint ckpt-2: No space left on device (the previous checkpoint stays current)')
    """

    def __init__(self, cause: OSError, name: str) -> None:
        super().__init__(cause.errno, f"cannot write checkpoint {name}: {cause.strerror or cause} "
                                      "(the previous checkpoint stays current)")

    def __str__(self) -> str:
        return self.strerror


class CheckpointLocked(CheckpointError):
    """Another process owns the checkpoint directory.

    Attributes
    ----------
    directory : Path
    owner_pid : int or None
        The process id written by the owner into the lock file, when readable.
    """

    def __init__(self, directory: Path, owner_pid: int | None) -> None:
        self.directory = directory
        self.owner_pid = owner_pid
        owner = f"process {owner_pid}" if owner_pid else "another process"
        super().__init__(f"checkpoint directory {directory} is owned by {owner}; "
                         "exactly one worker may train a model")


class StagedState:
    """A checkpoint's state copied at one instant, to be written later or in another
    thread (:meth:`CheckpointStore.save_staged`) while the live state moves on.

    The copy shares nothing the live state can change: tensors are cloned, numpy
    arrays become their ``.npy`` bytes, containers are rebuilt. Values that cannot be
    stored raise ``ValueError`` here, at once, as :meth:`CheckpointStore.save` does.

    Examples
    --------
    >>> import tempfile
    >>> live = {"weights": torch.zeros(2), "gap": np.zeros(2), "step": [1]}
    >>> staged = StagedState(live)
    >>> live["weights"] += 1; live["gap"] += 1; live["step"].append(2)  # training goes on
    >>> store = CheckpointStore(tempfile.mkdtemp())
    >>> store.save_staged(staged).name
    'ckpt-0000000001'
    >>> saved = store.load_latest()
    >>> saved["weights"].tolist(), saved["gap"].tolist(), saved["step"]
    ([0.0, 0.0], [0.0, 0.0], [1])
    """

    def __init__(self, state: dict) -> None:
        self.storable = _storable_state(state, copy=True)


class CheckpointStore:
    """Numbered, atomic, checksummed checkpoints in one directory.

    Parameters
    ----------
    directory : str or Path
        Created if missing.
    keep : int, default 3
        How many of the newest checkpoints :meth:`save` keeps.
    on_corrupt : callable or None
        Called with ``(path, error)`` for each damaged checkpoint :meth:`load_latest`
        skips (the worker counts them in a metric).

    Examples
    --------
    >>> import tempfile
    >>> store = CheckpointStore(tempfile.mkdtemp(), keep=2)
    >>> store.load_latest() is None
    True
    >>> state = {"offsets": {"clicks": {0: 42}}, "weights": torch.ones(2),
    ...          "gap": np.arange(3.0)}
    >>> store.save(state).name
    'ckpt-0000000001'
    >>> loaded = store.load_latest()
    >>> loaded["offsets"], loaded["weights"].tolist(), loaded["gap"].tolist()
    ({'clicks': {0: 42}}, [1.0, 1.0], [0.0, 1.0, 2.0])
    >>> for _ in range(3):
    ...     _ = store.save(state)
    >>> [p.name for p in store.paths()]
    ['ckpt-0000000003', 'ckpt-0000000004']
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3,
                 on_corrupt=None) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep
        self.on_corrupt = on_corrupt
        self.directory.mkdir(parents=True, exist_ok=True)

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        names = [p.name for p in self.directory.iterdir() if _NAME.match(p.name)]
        return [self.directory / name for name in sorted(names)]

    def save(self, state: dict) -> Path:
        """Write ``state`` as the next checkpoint, atomically; return its path.

        Raises ``ValueError`` for values that cannot be stored without pickling
        arbitrary objects (anything but tensors, numpy arrays of plain dtypes,
        numbers, strings, bytes, None and dicts/lists/tuples of those), and
        :class:`CheckpointWriteFailed` when the file cannot be written (disk full): the
        temporary file is removed, the previous checkpoints stay as they were. On a full
        disk the older checkpoints are removed first (the newest stays) and the write is
        tried once more.
        """
        return self._save_storable(_storable_state(state, copy=False))

    def save_staged(self, staged: StagedState) -> Path:
        """:meth:`save` of a state staged earlier (:class:`StagedState`): it may run in
        another thread while the live state moves on. One save at a time per store."""
        return self._save_storable(staged.storable)

    def _save_storable(self, storable: dict) -> Path:
        prefix, payload = _frame(storable)
        existing = self.paths()
        seq = int(_NAME.match(existing[-1].name).group(1)) + 1 if existing else 1
        path = self.directory / f"ckpt-{seq:010d}"
        temp = self.directory / f".ckpt-{seq:010d}.tmp"
        try:
            self._write(temp, path, prefix, payload)
        except OSError as error:
            if error.errno not in _NO_SPACE or len(existing) < 2:
                raise CheckpointWriteFailed(error, path.name) from error
            # Disk full: give up the older checkpoints (the newest intact one stays) and
            # try once more, so that a disk with room for two keeps checkpointing.
            for old in existing[:-1]:
                old.unlink(missing_ok=True)
            log.warning("disk full while writing %s: removed %d older checkpoint(s), keeping "
                        "%s, and trying again", path.name, len(existing) - 1, existing[-1].name)
            try:
                self._write(temp, path, prefix, payload)
            except OSError as again:
                raise CheckpointWriteFailed(again, path.name) from again
        fsync_path(self.directory)
        self._prune()
        return path

    def _write(self, temp: Path, path: Path, prefix: bytes, payload) -> None:
        try:
            with open(temp, "wb") as f:
                f.write(prefix)
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except OSError:
            temp.unlink(missing_ok=True)
            raise

    def load_latest(self) -> dict | None:
        """The newest checkpoint that passes its checks, or None if there is none.

        A corrupt newest file (torn, truncated, random bytes, a damaged or older
        ``format_version``) is skipped for the one before, with one warning line and a
        call of ``on_corrupt``. Raises :class:`UnsupportedCheckpointVersion` rather than
        falling back past a checkpoint written by a newer format (that would roll the
        model back and prune the newer checkpoints), and :class:`CorruptCheckpoint` when
        checkpoints exist but none is intact.
        """
        paths = self.paths()
        for path in reversed(paths):
            try:
                return self.load(path)
            except CorruptCheckpoint as error:
                log.warning("skipping corrupt checkpoint, falling back to the previous one: %s",
                            error)
                if self.on_corrupt is not None:
                    self.on_corrupt(path, error)
        if paths:
            raise CorruptCheckpoint(f"no intact checkpoint among {[p.name for p in paths]}")
        return None

    @staticmethod
    def load(path: str | os.PathLike) -> dict:
        """Read and verify one checkpoint file."""
        return decode(Path(path).read_bytes(), source=str(path))

    def _prune(self) -> None:
        for old in self.paths()[:-self.keep]:
            old.unlink()
        # Only the owner writes here, so a leftover temporary file is from a crashed save.
        for leftover in self.directory.iterdir():
            if _TEMP.match(leftover.name):
                leftover.unlink()


def encode(state: dict) -> bytes:
    """The bytes of a checkpoint file holding ``state``."""
    prefix, payload = _frame(_storable_state(state, copy=False))
    return prefix + bytes(payload)


def _frame(storable: dict) -> tuple[bytes, memoryview]:
    # Magic and header, then the payload as a view: a large model is not copied again.
    buffer = io.BytesIO()
    torch.save(storable, buffer)
    payload = buffer.getbuffer()
    header = json.dumps({
        "format_version": FORMAT_VERSION, "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(), "created_at": time.time(),
    }, sort_keys=True).encode()
    header_checksum = hashlib.sha256(header).hexdigest().encode()
    return b"".join([MAGIC, header, b"\n", header_checksum, b"\n"]), payload


def decode(data: bytes, source: str = "checkpoint") -> dict:
    """The state stored in checkpoint bytes; raises on any failed check."""
    if not data.startswith(MAGIC):
        raise CorruptCheckpoint(f"{source}: not a recallstream checkpoint (bad magic)")
    header_end = data.find(b"\n", len(MAGIC))
    checksum_end = data.find(b"\n", header_end + 1) if header_end >= 0 else -1
    header_line = data[len(MAGIC):header_end]
    header_checksum = data[header_end + 1:checksum_end]
    if checksum_end < 0 or hashlib.sha256(header_line).hexdigest().encode() != header_checksum:
        raise CorruptCheckpoint(f"{source}: header checksum mismatch")
    payload = memoryview(data)[checksum_end + 1:]  # a view: no copy of a large model
    try:
        header = json.loads(header_line)
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise CorruptCheckpoint(f"{source}: header is not a JSON object")
    version = header.get("format_version")
    if version != FORMAT_VERSION and not (isinstance(version, int) and version > FORMAT_VERSION):
        raise CorruptCheckpoint(f"{source}: format_version {version!r} is not one this code "
                                f"or an older one wrote (this code reads {FORMAT_VERSION})")
    if not isinstance(header.get("payload_bytes"), int) or not isinstance(
            header.get("payload_sha256"), str):
        raise CorruptCheckpoint(f"{source}: header lacks payload_bytes or payload_sha256")
    if version != FORMAT_VERSION:
        raise UnsupportedCheckpointVersion(
            f"{source}: format_version {header.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION}; use a newer recallstream or another checkpoint directory")
    if len(payload) != header["payload_bytes"]:
        raise CorruptCheckpoint(f"{source}: payload has {len(payload)} bytes, header says "
                                f"{header['payload_bytes']} (truncated?)")
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise CorruptCheckpoint(f"{source}: payload checksum mismatch")
    try:
        stored = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refused a global: nothing ran
        raise UnsafeCheckpoint(
            f"{source}: refused to load: the payload holds objects other than tensors and "
            f"plain containers, which could run code ({_first_line(error)})") from None
    try:
        return _from_storable(stored)
    except ValueError as error:  # np.load(allow_pickle=False) of an object array
        raise UnsafeCheckpoint(f"{source}: refused to load an array that needs pickle "
                               f"({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line or "Unsupported" in line),
                lines[0] if lines else type(error).__name__)[:200]


def _storable_state(state: Any, copy: bool) -> dict:
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict, got {type(state).__name__}")
    return _to_storable(state, copy=copy)


# Stored as they are. A container's items of exactly these types skip the call (a state
# holds about 100,000 of them after 40,000 clicks: histories, tables, prequential sets).
_LEAF_TYPES = (bool, int, float, str, bytes)
_LEAVES = frozenset({type(None), *_LEAF_TYPES})


def _to_storable(value: Any, where: str = "state", copy: bool = False) -> Any:
    # Turn the state into what torch.load(weights_only=True) accepts; reject the rest early.
    # Containers are rebuilt and arrays become bytes anyway; copy=True clones tensors too.
    if isinstance(value, torch.Tensor):
        return value.detach().clone() if copy else value
    if value is None or isinstance(value, _LEAF_TYPES):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise ValueError(f"{where}: numpy arrays of objects cannot be stored")
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return {NDARRAY_KEY: buffer.getvalue()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        if NDARRAY_KEY in value:
            raise ValueError(f"{where}: the key {NDARRAY_KEY!r} is reserved")
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise ValueError(f"{where}: dict keys must be str or int, got {key!r}")
            out[key] = item if type(item) in _LEAVES else _to_storable(
                item, f"{where}[{key!r}]", copy)
        if isinstance(value, OrderedDict):
            out = OrderedDict(out)
            if hasattr(value, "_metadata"):  # module versions of a torch state_dict
                out._metadata = value._metadata
        return out
    if isinstance(value, (list, tuple)):
        items = [item if type(item) in _LEAVES else _to_storable(item, f"{where}[{i}]", copy)
                 for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise ValueError(f"{where}: cannot store a {type(value).__name__} without pickling it")


def _from_storable(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {NDARRAY_KEY}:
            return np.load(io.BytesIO(value[NDARRAY_KEY]), allow_pickle=False)
        out = {key: _from_storable(item) for key, item in value.items()}
        if isinstance(value, OrderedDict):
            out = OrderedDict(out)
            if hasattr(value, "_metadata"):
                out._metadata = value._metadata
        return out
    if isinstance(value, list):
        return [_from_storable(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_from_storable(item) for item in value)
    return value


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file, or a directory (which makes a rename inside it durable: without it
    a power loss can forget the new name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OwnerLock:
    """Exclusive ownership of a checkpoint directory by one process.

    An ``fcntl.flock`` on ``<directory>/LOCK``, whose content is the owner's
    pid. The kernel releases it when the process exits or is killed. A child
    made by ``fork`` shares the lock, so fork before acquiring it.

    Parameters
    ----------
    directory : str or Path
        The checkpoint directory (created if missing).

    Examples
    --------
    >>> import tempfile
    >>> directory = tempfile.mkdtemp()
    >>> with OwnerLock(directory).acquire() as lock:
    ...     try:
    ...         OwnerLock(directory).acquire()
    ...     except CheckpointLocked as error:
    ...         error.owner_pid == os.getpid()
    True
    >>> OwnerLock(directory).acquire().release()
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout_s: float = 0.0, poll_s: float = 0.1) -> "OwnerLock":
        """Take the lock, waiting up to ``timeout_s`` seconds (0: do not wait).

        Raises :class:`CheckpointLocked` if another process still holds it.
        """
        if timeout_s < 0 or poll_s <= 0:
            raise ValueError("timeout_s must be >= 0 and poll_s > 0")
        if self.held:
            raise ValueError(f"{self.path} is already held by this OwnerLock")
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    owner = _read_pid(fd)
                    os.close(fd)
                    raise CheckpointLocked(self.directory, owner) from None
                time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        try:  # the pid only names the owner in errors: a full disk must not stop a start
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as error:
            log.warning("holding %s, but cannot write the owner's pid into it: %s", self.path, error)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (the lock file stays: deleting it would race with waiters)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "OwnerLock":
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None
