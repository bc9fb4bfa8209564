"""The results store: one directory per (dataset, method, bits, seed, protocol) cell.

``<out>/<dataset>/<method>/<bits>bits/seed<seed>-<protocol hash>/`` holds

- ``config.json``     the resolved configuration (protocol, method options, optimiser)
- ``codes.npz``       packed binary codes, labels and slice ids of queries and database,
                      the database's continuous codes (float16, for search), and per-query
                      metric values; any metric not stored is computed from the codes, so
                      new metrics never need retraining
- ``train_log.jsonl`` loss terms per epoch
- ``model.pt``        the trained weights (``checkpoint.pt`` while training)
- ``metrics.json``    metrics, tie diagnostics, timing, method origin and versions; written last, it
                      marks the cell as finished

Every file is written to a temporary name and renamed, so an interrupted run never
leaves a half-written result, and a finished cell is never lost or recomputed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hashbench import atomic

PROTOCOL_KEYS = ("backbone", "pretrained", "epochs", "image_size", "split", "validation", "options", "train")


@dataclass
class CellConfig:
    """Everything that determines a cell's result."""

    dataset: str
    method: str
    bits: int
    seed: int
    backbone: str
    pretrained: bool
    epochs: int
    image_size: int
    split: str
    validation: float = 0.0  # share of the training side held out to watch training
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def protocol_hash(self) -> str:
        protocol = {k: getattr(self, k) for k in PROTOCOL_KEYS}
        return hashlib.sha1(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()[:8]

    def directory(self, out: Path) -> Path:
        return out / self.dataset / self.method / f"{self.bits}bits" / f"seed{self.seed}-{self.protocol_hash()}"

    def label(self) -> str:
        return f"{self.dataset}/{self.method}/{self.bits} bits/seed {self.seed}"


def is_finished(directory: Path) -> bool:
    return (directory / "metrics.json").exists()


def write_codes(directory: Path, **arrays: np.ndarray) -> None:
    atomic.atomic_write(directory / "codes.npz", lambda handle: np.savez_compressed(handle, **arrays))


def load_codes(directory: Path) -> dict[str, np.ndarray]:
    with np.load(Path(directory) / "codes.npz", allow_pickle=False) as data:
        return dict(data)


@lru_cache(maxsize=8)
def _read_codes(path: str, modified: float) -> dict[str, np.ndarray]:
    """codes.npz read once per version of the file, for the readers below (tables ask per metric and per seed)."""
    return load_codes(Path(path))


def _codes(directory: Path | str) -> dict[str, np.ndarray]:
    return _read_codes(str(directory), (Path(directory) / "codes.npz").stat().st_mtime)


@lru_cache(maxsize=256)
def _per_query(directory: str, metric: str, modified: float) -> np.ndarray:
    from hashbench.evaluate import evaluate_packed

    codes = _read_codes(directory, modified)
    stored = codes.get(f"per_query/{metric}")
    if stored is not None:
        return stored
    return evaluate_packed(codes["query_codes"], codes["query_labels"], codes["database_codes"], codes["database_labels"], int(codes["bits"]), (metric,)).per_query[metric]


def per_query(directory: Path | str, metric: str) -> np.ndarray:
    """A finished cell's per-query values of ``metric``: stored, or computed from its codes."""
    path = Path(directory) / "codes.npz"
    return _per_query(str(directory), metric.lower(), path.stat().st_mtime)


def query_ids(directory: Path | str) -> np.ndarray:
    return _codes(directory)["query_ids"]


def load_cells(out: Path) -> pd.DataFrame:
    """One row per finished cell under ``out``: config, protocol, metrics."""
    rows = []
    for metrics_path in sorted(Path(out).glob("*/*/*bits/seed*/metrics.json")):
        directory = metrics_path.parent
        config = CellConfig(**json.loads((directory / "config.json").read_text()))  # fills fields older cells lack
        record = json.loads(metrics_path.read_text())
        rows.append({**asdict(config), "protocol": config.protocol_hash(), "directory": str(directory), **record["metrics"], "seconds": record.get("seconds"), "origin": record.get("origin"), "synthetic": record.get("synthetic", False)})
    return pd.DataFrame(rows)
