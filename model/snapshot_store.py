"""Versioned snapshots of the online learner on disk, and the pointer to the current one.

The snapshot job (``recallstream snapshot``) publishes a fully trained learner
here; the worker watches :meth:`SnapshotStore.current_version` and resets to
:meth:`SnapshotStore.current`. Layout of the store's folder::

    CURRENT               "v7\\n": the current version (replaced atomically)
    v6/  v7/              one folder per version, N increasing, never rewritten
      manifest.json       configurations, event range, cut offsets, counts, checksums
      learner.ckpt        OnlineLearner.state_dict() in the checkpoint framing
    .tmp-v8-<pid>/        a version being written (a crashed writer's leftover)
    LOCK                  flock held by a writer while it publishes

``learner.ckpt`` uses :mod:`recallstream.model.checkpoint`'s framing (header with
the payload's SHA-256) and is read with ``torch.load(weights_only=True)``: loading a
snapshot never executes code from it, and a payload that asks to is refused with
:class:`UnsafeSnapshot`. The manifest records the file's size and SHA-256, and its
own ``checksum`` covers every other field, so a damaged file or manifest is found.

Crash safety: :meth:`SnapshotStore.publish` writes the version under a temporary
name, fsyncs its files and folder, renames it to ``v<N>``, fsyncs the store's folder,
then replaces ``CURRENT`` (temporary file, fsync, ``os.replace``, fsync of the folder).
The pointer's replacement is the commit: a crash at any earlier moment leaves the
previous version current, and a temporary folder never looks like a version. Old
versions are pruned after the pointer moves (renamed out of the ``v<N>`` namespace
first, then deleted), keeping the ``keep`` newest; the current one is never pruned.

Should the pointer or the version it names be damaged anyway (disk, a hand edit),
:meth:`SnapshotStore.current` falls back to the newest intact version, with one
warning per problem and one call of ``on_corrupt`` (the worker counts them in
``recallstream_corrupt_files_total{kind="snapshot"|"snapshot_pointer"}``).

A full disk while publishing raises :class:`SnapshotWriteFailed`: the half-written
version and pointer are removed, the previous version stays current, and the next
publication tries again.

Examples
--------
>>> import tempfile
>>> from recallstream.model.online import OnlineLearner, stream_tower_config
>>> learner = OnlineLearner(stream_tower_config(id_buckets=64, dim=4), seed=0)
>>> store = SnapshotStore(tempfile.mkdtemp(), keep=2)
>>> store.current() is None, store.current_version()
(True, None)
>>> store.publish(learner.state_dict(), cut_offsets={"examples": {0: 40, 1: 38}},
...               event_range=EventRange(first_ts=0.0, last_ts=86400.0), examples=78)
1
>>> snapshot = store.current()
>>> snapshot.version, snapshot.cut_offsets, snapshot.examples, snapshot.event_range.days
(1, {'examples': {0: 40, 1: 38}}, 78, 1.0)
>>> snapshot.learner().embed_items(["i1"], {}).tolist() == learner.embed_items(["i1"], {}).tolist()
True
>>> for _ in range(3):
...     _ = store.publish(learner.state_dict(), cut_offsets={}, event_range=None, examples=0)
>>> store.versions(), store.current_version()
([3, 4], 4)
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recallstream.model.checkpoint import (CheckpointError, UnsafeCheckpoint, decode, encode,
                                           fsync_path)

__all__ = ["CorruptSnapshot", "EventRange", "Snapshot", "SnapshotError", "SnapshotLocked",
           "SnapshotStore", "SnapshotWriteFailed", "UnsafeSnapshot"]

FORMAT = "recallstream.snapshot"
FORMAT_VERSION = 1
POINTER = "CURRENT"
MANIFEST = "manifest.json"
LEARNER = "learner.ckpt"
LOCK = "LOCK"

_VERSION = re.compile(r"^v([1-9]\d*)$")
_POINTER = re.compile(r"^v([1-9]\d*)\n$")
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"

log = logging.getLogger(__name__)


class SnapshotError(Exception):
    """Base class of snapshot store errors."""


class CorruptSnapshot(SnapshotError):
    """A version folder is missing a file or fails a check (torn, truncated, damaged)."""


class UnsafeSnapshot(CorruptSnapshot):
    """A snapshot's payload would execute code when loaded; it is refused, not run."""


class SnapshotLocked(SnapshotError):
    """Another process is publishing into the same store."""


class SnapshotWriteFailed(SnapshotError, OSError):
    """A version could not be written (disk full, I/O error): nothing of it is left and
    the previous version stays current. ``errno`` is the underlying error's.

    >>> import errno
    >>> SnapshotWriteFailed(OSError(errno.ENOSPC, "No space left on device"), 3).errno == errno.ENOSPC
    True
    """

    def __init__(self, cause: OSError, version: int) -> None:
        super().__init__(cause.errno, f"cannot write snapshot v{version}: "
                                      f"{cause.strerror or cause} (the previous version stays current)")

    def __str__(self) -> str:
        return self.strerror


@dataclass(frozen=True)
class EventRange:
    """Event times (epoch seconds) of the first and last example a snapshot trained on.

    >>> EventRange(first_ts=86400.0, last_ts=3 * 86400.0).days
    2.0
    """

    first_ts: float
    last_ts: float

    @property
    def days(self) -> float:
        return (self.last_ts - self.first_ts) / 86400.0


@dataclass(frozen=True)
class Snapshot:
    """One loaded, verified version (what the worker resets to).

    Attributes
    ----------
    version : int
    created_at : float
        Wall time of the publication, epoch seconds.
    cut_offsets : dict of str to dict of int to int
        ``{topic: {partition: offset}}``: the snapshot covers every record before these
        offsets (of what it chose to train on) and nothing at or after them. A worker
        resetting to it resumes those partitions there.
    event_range : EventRange or None
        Event times of the first and last example trained on (None: no example).
    examples : int
        Examples trained on (each once per epoch).
    learner_state : dict
        :meth:`recallstream.model.online.OnlineLearner.state_dict` of the trained learner:
        weights, optimizers, popularity estimate, histories.
    tower_config, train_config : dict
        The learner's configurations (``TowerConfig.to_dict()``, ``TrainConfig.to_dict()``).
    metadata : dict
        Free-form, JSON (e.g. epochs, seconds, the job's settings).
    """

    version: int
    created_at: float
    cut_offsets: dict[str, dict[int, int]]
    event_range: EventRange | None
    examples: int
    learner_state: dict = field(repr=False)
    tower_config: dict = field(repr=False)
    train_config: dict = field(repr=False)
    metadata: dict = field(default_factory=dict)

    def fits(self, learner) -> bool:
        """Whether ``learner`` (an OnlineLearner) has this snapshot's towers, so that it can
        take its weights (``learner.load_weights(snapshot.learner())``)."""
        return self.tower_config == learner.model.config.to_dict()

    def learner(self):
        """A new :class:`~recallstream.model.online.OnlineLearner` in this snapshot's state.

        A running worker keeps its own histories and popularity estimate and takes
        only the weights: ``worker_learner.load_weights(snapshot.learner())``.
        """
        from recallstream.model.online import OnlineLearner
        from recallstream.model.towers import TowerConfig
        from recallstream.model.train_step import TrainConfig

        learner = OnlineLearner(TowerConfig.from_dict(self.tower_config),
                                TrainConfig.from_dict(self.train_config),
                                uniform_negatives=int(self.learner_state["uniform_negatives"]))
        learner.load_state_dict(self.learner_state)
        return learner


class SnapshotStore:
    """The versioned snapshots in one folder (see the module docstring).

    Parameters
    ----------
    directory : str or Path
        Created if missing.
    keep : int, default 3
        How many versions :meth:`publish` keeps (the newest; the current one always).
    on_corrupt : callable or None
        Called with ``(kind, message)`` once per distinct damage found while reading,
        ``kind`` "snapshot" (a version folder) or "snapshot_pointer" (``CURRENT``).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, on_corrupt=None) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep
        self.on_corrupt = on_corrupt
        self.directory.mkdir(parents=True, exist_ok=True)
        self._warned: set[str] = set()  # one warning per distinct problem, not per poll

    # -- reading ----------------------------------------------------------------------

    def versions(self) -> list[int]:
        """Version numbers of the folders named ``v<N>``, ascending (intact or not)."""
        found = (_VERSION.match(p.name) for p in self.directory.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def current_version(self) -> int | None:
        """The version ``CURRENT`` names: one small file read, cheap enough to poll.

        A missing pointer with no version is None; a damaged pointer, or one naming
        a missing folder, falls back to the newest version whose manifest reads
        (one warning).
        """
        pointed = self._read_pointer()
        if pointed is not None and (self.directory / f"v{pointed}" / MANIFEST).is_file():
            return pointed
        for version in reversed(self.versions()):
            try:
                json.loads((self.directory / f"v{version}" / MANIFEST).read_text())
            except (OSError, ValueError):
                continue
            if pointed is not None:
                self._warn(f"{POINTER} names v{pointed}, which has no manifest; using v{version}",
                           "snapshot")
            elif self._pointer_missing():  # a damaged one was reported by _read_pointer
                self._warn(f"no {POINTER} file; using v{version}", "snapshot_pointer")
            return version
        return None

    def current(self) -> Snapshot | None:
        """The current snapshot, verified; None when the store has no intact version.

        If the pointer is damaged or names a damaged version, the newest intact
        version is returned instead, with one warning naming the problem.
        """
        pointed = self._read_pointer()
        # a damaged pointer was reported by _read_pointer; a missing one is reported here
        problem = f"no {POINTER} file" if pointed is None and self._pointer_missing() else None
        if pointed is not None:
            try:
                return self.load(pointed)
            except SnapshotError as error:
                problem = str(error)
        for version in reversed(self.versions()):
            if version == pointed:
                continue
            try:
                snapshot = self.load(version)
            except SnapshotError as error:
                self._warn(f"skipping snapshot v{version}: {error}")
                continue
            if pointed is None and problem:
                self._warn(f"{problem}; using v{version}", "snapshot_pointer")
            elif pointed is not None and not (self.directory / f"v{pointed}" / MANIFEST).is_file():
                self._warn(f"{POINTER} names v{pointed}, which has no manifest; using v{version}",
                           "snapshot")
            elif problem:
                self._warn(f"current snapshot unusable ({problem}); using v{version}")
            return snapshot
        if pointed is not None:
            self._warn(f"current snapshot unusable ({problem}) and no other intact version")
        return None

    def load(self, version: int) -> Snapshot:
        """Read and verify version ``version``.

        Raises
        ------
        CorruptSnapshot
            Missing folder or file, checksum mismatch, unknown format.
        UnsafeSnapshot
            The payload would execute code when unpickled.
        """
        folder = self.directory / f"v{version}"
        manifest = _read_manifest(folder)
        if manifest["version"] != version:
            raise CorruptSnapshot(f"{folder}: manifest says version {manifest['version']}")
        state = _read_learner(folder, manifest["files"][LEARNER])
        event_range = manifest["event_range"]
        return Snapshot(
            version=version, created_at=manifest["created_at"],
            cut_offsets={topic: {int(p): int(o) for p, o in offsets.items()}
                         for topic, offsets in manifest["cut_offsets"].items()},
            event_range=EventRange(**event_range) if event_range else None,
            examples=manifest["examples"], learner_state=state,
            tower_config=manifest["tower_config"], train_config=manifest["train_config"],
            metadata=manifest["metadata"])

    # -- writing ----------------------------------------------------------------------

    def publish(self, learner_state: Mapping[str, Any], *, cut_offsets: Mapping[str, Mapping[int, int]],
                event_range: EventRange | None, examples: int,
                metadata: Mapping[str, Any] | None = None) -> int:
        """Write a new version, make it current, prune old ones; return its number.

        ``learner_state`` is an ``OnlineLearner.state_dict()`` (its ``tower_config``
        and ``train_config`` are copied into the manifest). Raises
        :class:`SnapshotLocked` if another process is publishing here.
        """
        payload = encode(dict(learner_state))
        with self._writer_lock():
            version = max([*self.versions(), self._read_pointer() or 0]) + 1
            manifest = _manifest(version, learner_state, cut_offsets, event_range, examples,
                                 metadata or {}, payload)
            try:
                self._write_version(version, manifest, payload)
                self._write_pointer(version)
            except OSError as error:  # disk full: leave nothing half-written behind
                self._discard(version)
                raise SnapshotWriteFailed(error, version) from error
            self._prune(current=version)
        return version

    def _write_version(self, version: int, manifest: dict, payload: bytes) -> Path:
        scratch = self.directory / f"{_TEMP_PREFIX}v{version}-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        _write_file(scratch / LEARNER, payload)
        _write_file(scratch / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        fsync_path(scratch)
        target = self.directory / f"v{version}"
        os.rename(scratch, target)  # never replaces: the version number is new
        fsync_path(self.directory)
        return target

    def _discard(self, version: int) -> None:
        # Remove a failed publication's leftovers; the pointer was not replaced (a
        # rename does not fail half-way), so a version folder renamed already is unnamed.
        pointed = self._read_pointer()
        if pointed != version and (self.directory / f"v{version}").exists():
            shutil.rmtree(self.directory / f"v{version}", ignore_errors=True)
        for leftover in self.directory.iterdir():
            if leftover.name.startswith(_TEMP_PREFIX) and leftover.name.endswith(f"-{os.getpid()}"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)

    def _write_pointer(self, version: int) -> None:
        temp = self.directory / f"{_TEMP_PREFIX}{POINTER}-{os.getpid()}"
        _write_file(temp, f"v{version}\n".encode())
        os.replace(temp, self.directory / POINTER)
        fsync_path(self.directory)

    def _prune(self, current: int) -> None:
        # Called under the writer lock: every temporary entry is a crashed writer's.
        doomed = [v for v in self.versions()[:-self.keep] if v != current]
        for version in doomed:
            trash = self.directory / f"{_TRASH_PREFIX}v{version}"
            os.rename(self.directory / f"v{version}", trash)
        for leftover in self.directory.iterdir():
            if leftover.name.startswith((_TEMP_PREFIX, _TRASH_PREFIX)):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)

    def _writer_lock(self):
        return _FileLock(self.directory / LOCK)

    def _read_pointer(self) -> int | None:
        try:
            text = (self.directory / POINTER).read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            self._warn(f"cannot read {self.directory / POINTER}: {error}", "snapshot_pointer")
            return None
        match = _POINTER.match(text)
        if not match:
            self._warn(f"{self.directory / POINTER} is damaged ({text[:40]!r}); "
                       f"falling back to the newest intact version", "snapshot_pointer")
            return None
        return int(match.group(1))

    def _pointer_missing(self) -> bool:
        return not (self.directory / POINTER).exists()

    def _warn(self, message: str, kind: str = "snapshot") -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("snapshot store %s: %s", self.directory, message)
            if self.on_corrupt is not None:
                self.on_corrupt(kind, message)


def _manifest(version: int, learner_state: Mapping, cut_offsets: Mapping, event_range,
              examples: int, metadata: Mapping, payload: bytes) -> dict:
    for key in ("tower_config", "train_config"):
        if key not in learner_state:
            raise ValueError(f"learner_state has no {key!r}: pass OnlineLearner.state_dict()")
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "version": version,
        "created_at": time.time(),
        "tower_config": learner_state["tower_config"], "train_config": learner_state["train_config"],
        "cut_offsets": {str(topic): {str(int(p)): int(o) for p, o in offsets.items()}
                        for topic, offsets in cut_offsets.items()},
        "event_range": asdict(event_range) if event_range is not None else None,
        "examples": int(examples), "metadata": dict(metadata),
        "files": {LEARNER: {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}},
    }
    manifest["checksum"] = _checksum(manifest)
    return manifest


def _checksum(manifest: Mapping) -> str:
    """SHA-256 of the manifest's canonical JSON without its ``checksum`` field."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise CorruptSnapshot(f"{folder}: no {MANIFEST}") from None
    except (OSError, ValueError) as error:
        raise CorruptSnapshot(f"{folder}/{MANIFEST} does not read as JSON: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptSnapshot(f"{folder} is not a recallstream snapshot version")
    if manifest.get("checksum") != _checksum(manifest):
        raise CorruptSnapshot(f"{folder}/{MANIFEST}: checksum mismatch")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CorruptSnapshot(f"{folder}: format_version {manifest.get('format_version')!r}, "
                              f"this code reads {FORMAT_VERSION}")
    return manifest


def _read_learner(folder: Path, expected: Mapping) -> dict:
    path = folder / LEARNER
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CorruptSnapshot(f"{path}: {error}") from None
    if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise CorruptSnapshot(f"{path}: size or SHA-256 differs from the manifest")
    try:
        return decode(data, source=str(path))
    except (pickle.UnpicklingError, UnsafeCheckpoint) as error:
        raise UnsafeSnapshot(f"{path} holds objects that would execute code when loaded; "
                             f"refused ({str(error).splitlines()[0]})") from None
    except UnsafeCheckpoint as error:  # weights_only refused a global: nothing ran
        raise UnsafeSnapshot(f"{path} holds objects that would execute code when loaded; "
                             f"refused ({error})") from None
    except CheckpointError as error:
        raise CorruptSnapshot(str(error)) from None


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class _FileLock:
    """An exclusive, non-blocking ``flock`` (released by the kernel if the holder dies)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> "_FileLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SnapshotLocked(f"another process is publishing a snapshot into "
                                     f"{self.path.parent}; try again when it is done") from None
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
