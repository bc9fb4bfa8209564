"""Frozen features, computed once and read by every cell that hashes them.

A frozen backbone gives the same features to every training-free method, every float reference, every head trained
alone (``--freeze-backbone``), every code length and every seed of a pretrained backbone, so they are computed in
one pass over the dataset and stored under the hashbench home, keyed by what determines them (:class:`FeatureKey`):
the backbone (and a method's own encoder on it) and its weights (with the seed for a random init), the data version,
the image size and the precision the encoder ran in.

``<home>/features/<dataset>/<key digest>/`` holds ``features.f32`` (float32 rows in the dataset's slice order),
``journal.json`` while it is built (rows done, committed after each chunk is on disk) and ``manifest.json`` once it is
complete (the key, the shape and the file's sha256, written last). A build killed at any point resumes from its last
commit; a complete cache whose file no longer matches its manifest is reported and built again. One writer per key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hashbench.store import atomic, locks
from hashbench.store.digest import file_sha256
from hashbench.store.paths import features_dir

FEATURES, JOURNAL, MANIFEST = "features.f32", "journal.json", "manifest.json"
CHUNK_ROWS = 2048  # rows computed and committed at a time: what a killed build loses at most


@dataclass(frozen=True)
class FeatureKey:
    """What frozen features depend on; two cells with equal keys read the same cache."""

    dataset: str
    fingerprint: str  # the data version
    backbone: str
    weights: str  # the weights' identity; a random init's includes its seed
    image_size: int
    precision: str  # fp32, bf16 or fp16: the encoder's arithmetic changes its features

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def folder(self) -> Path:
        return features_dir() / self.dataset / self.digest()


def cached_features(key: FeatureKey, n_rows: int, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(n_rows, width) float32 features of every slice of the dataset, memory-mapped: read from the cache, or computed
    with ``compute(rows)`` (the features of those slice rows) chunk by chunk, resuming what a killed build committed."""
    folder = key.folder()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with locks.exclusive(
        folder.parent / f".{key.digest()}@lock",
        wait=True,
        on_wait=lambda who: print(f"waiting: features {key.digest()} are being computed by {who}", file=sys.stderr),
    ):
        problem = _damage(folder, key, n_rows)
        if problem:
            print(f"warning: the feature cache {folder} {problem}; computing it again", file=sys.stderr)
            shutil.rmtree(folder)
        if not (folder / MANIFEST).exists():
            _build(folder, key, n_rows, compute)
        width = json.loads((folder / MANIFEST).read_text())["width"]
    return np.memmap(folder / FEATURES, dtype=np.float32, mode="r", shape=(n_rows, width))


def _damage(folder: Path, key: FeatureKey, n_rows: int) -> str:
    """Why a complete cache cannot be used ('' if it can, or if none is complete)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        return ""
    try:
        manifest = json.loads(manifest_path.read_text())
        expected_bytes = n_rows * manifest["width"] * 4
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"has an unreadable manifest ({type(exc).__name__})"
    if manifest.get("key") != asdict(key) or manifest.get("rows") != n_rows:
        return "was written for other data or another backbone"
    path = folder / FEATURES
    if not path.exists() or path.stat().st_size != expected_bytes:
        return f"is {path.stat().st_size if path.exists() else 0:,} bytes, not the {expected_bytes:,} its manifest says"
    if file_sha256(path) != manifest.get("sha256"):
        return "does not match its manifest's checksum (changed or damaged)"
    return ""


def _build(folder: Path, key: FeatureKey, n_rows: int, compute: Callable[[np.ndarray], np.ndarray]) -> None:
    """Compute the rows a previous build did not commit, appending chunk by chunk; the manifest last."""
    folder.mkdir(parents=True, exist_ok=True)
    journal_path, path = folder / JOURNAL, folder / FEATURES
    done, width = _committed(journal_path, key, n_rows)
    if not path.exists() or path.stat().st_size < done * width * 4:  # less on disk than committed: start over
        done, width = 0, 0
    with open(path, "ab") as handle:
        handle.truncate(done * width * 4)  # anything after the last commit is cut and redone
        for start in range(done, n_rows, CHUNK_ROWS):
            rows = np.arange(start, min(start + CHUNK_ROWS, n_rows))
            features = np.ascontiguousarray(compute(rows), dtype=np.float32)
            if width and features.shape[1] != width:
                raise RuntimeError(f"the backbone gave {features.shape[1]} features, the cache holds {width}")
            width = features.shape[1]
            handle.write(features.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
            atomic.write_json(
                journal_path, {"key": asdict(key), "rows": n_rows, "done": int(rows[-1]) + 1, "width": width}
            )
    atomic.write_json(
        folder / MANIFEST, {"key": asdict(key), "rows": n_rows, "width": width, "sha256": file_sha256(path)}
    )
    journal_path.unlink(missing_ok=True)


def _committed(journal_path: Path, key: FeatureKey, n_rows: int) -> tuple[int, int]:
    """(rows done, width) of the build the journal records; (0, 0) when there is none to resume."""
    try:
        journal = json.loads(journal_path.read_text())
    except (OSError, ValueError):
        return 0, 0
    if journal.get("key") != asdict(key) or journal.get("rows") != n_rows:
        return 0, 0
    return int(journal.get("done", 0)), int(journal.get("width", 0))
