"""CIFAR-10-shaped python batches written for tests: the real key layout, pickled as the originals are."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
# Colours of equal BT.601 luma (about 128): the classes differ in hue alone, so grey copies cannot tell them apart.
HUES = np.array([[200, 100, 128], [60, 160, 90], [128, 128, 128], [100, 140, 200]], dtype=np.float64)


def write_cifar(root: Path, per_batch: int = 10_000, classes: int = 10, noise: int = 40, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with five training batches, a test batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = np.arange(per_batch) % classes
        rng.shuffle(labels)
        colour = HUES[labels % len(HUES)].astype(np.int16)[:, :, None] + rng.integers(
            -noise, noise + 1, (per_batch, 3, 1024), dtype=np.int16
        )
        data = np.clip(colour, 0, 255).astype(np.uint8).reshape(per_batch, 3072)
        content = {
            b"batch_label": batch.encode(),
            b"labels": labels.tolist(),
            b"data": data,
            b"filenames": [f"{batch}_{i}.png".encode() for i in range(per_batch)],
        }
        (folder / batch).write_bytes(pickle.dumps(content, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": NAMES[:classes], b"num_vis": 3072}, protocol=2))
    return folder
