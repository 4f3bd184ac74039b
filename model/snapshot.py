"""Snapshots of a trained two-tower model: weights, feature state, config and data range.

A snapshot is a folder with two files:

- ``snapshot.json``: format name and version, the :class:`~recallstream.model.towers.TowerConfig`
  and :class:`~recallstream.model.train_step.TrainConfig` as JSON, the data range it was
  trained on (e.g. first/last timestamp, interaction count, or per-partition
  offsets of a stream cut) and free-form metadata;
- ``tensors.pt``: plain tensors only (model ``state_dict`` — feature running
  statistics included — and optionally the optimizer states), read back with
  ``torch.load(weights_only=True)`` so loading a snapshot never runs code.

The folder is written under a temporary name and renamed into place, so a
reader sees a whole snapshot or none.

Examples
--------
>>> import tempfile, torch
>>> from recallstream.model.towers import TwoTower, movielens_config
>>> _ = torch.manual_seed(0)
>>> model = TwoTower(movielens_config(output_dim=8, hidden=(16,), id_buckets=1000))
>>> folder = tempfile.mkdtemp() + "/snap"
>>> _ = save_snapshot(folder, model, data_range={"interactions": 0})
>>> loaded = load_snapshot(folder)
>>> loaded.data_range, torch.equal(loaded.model.embed_items(["1"], {}), model.embed_items(["1"], {}))
({'interactions': 0}, True)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from recallstream.model.checkpoint import fsync_path
from recallstream.model.towers import TowerConfig, TwoTower
from recallstream.model.train_step import Optimizers, TrainConfig

__all__ = ["SNAPSHOT_FORMAT", "SNAPSHOT_VERSION", "Snapshot", "load_snapshot", "save_snapshot"]

SNAPSHOT_FORMAT = "recallstream.two-tower-snapshot"
SNAPSHOT_VERSION = 1
MANIFEST = "snapshot.json"
TENSORS = "tensors.pt"


@dataclass
class Snapshot:
    """A loaded snapshot: the model (eval mode) and everything saved beside it."""

    model: TwoTower
    train_config: TrainConfig | None
    data_range: dict
    metadata: dict = field(default_factory=dict)
    optimizer_state: dict | None = None

    def optimizers(self) -> Optimizers:
        """Fresh optimizers for :attr:`model`, restored to the saved state when there is one."""
        optimizers = Optimizers(self.model, self.train_config or TrainConfig())
        if self.optimizer_state is not None:
            optimizers.load_state_dict(self.optimizer_state)
        return optimizers


def save_snapshot(directory: str | os.PathLike, model: TwoTower, *,
                  train_config: TrainConfig | None = None, optimizers: Optimizers | None = None,
                  data_range: Mapping | None = None, metadata: Mapping | None = None) -> Path:
    """Write a snapshot folder atomically (replacing an existing one); returns its path."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION,
        "model_config": model.config.to_dict(),
        "train_config": train_config.to_dict() if train_config else None,
        "data_range": dict(data_range or {}), "metadata": dict(metadata or {}),
        "has_optimizer_state": optimizers is not None,
    }
    tensors = {"model": model.state_dict(),
               "optimizers": optimizers.state_dict() if optimizers is not None else None}
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        torch.save(tensors, scratch / TENSORS)
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        for name in (TENSORS, MANIFEST):
            fsync_path(scratch / name)
        if target.exists():
            retired = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, retired)
            os.replace(scratch, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(scratch, target)
        fsync_path(target.parent)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def load_snapshot(directory: str | os.PathLike) -> Snapshot:
    """Read a snapshot folder; ``ValueError`` for a foreign format or an unsupported version."""
    folder = Path(directory)
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"{folder} is not a recallstream snapshot")
    if manifest.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"snapshot version {manifest.get('version')} is not supported "
                         f"(this code reads version {SNAPSHOT_VERSION})")
    tensors = torch.load(folder / TENSORS, weights_only=True)
    model = TwoTower(TowerConfig.from_dict(manifest["model_config"]))
    model.load_state_dict(tensors["model"])
    model.eval()
    train_config = manifest.get("train_config")
    return Snapshot(model=model,
                    train_config=TrainConfig.from_dict(train_config) if train_config else None,
                    data_range=manifest.get("data_range", {}), metadata=manifest.get("metadata", {}),
                    optimizer_state=tensors.get("optimizers"))
