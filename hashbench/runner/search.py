"""Retrieval with a trained cell: the nearest database images for new images or DICOM files.

A finished cell holds its model and its database codes, so it is a search index as it
stands. Queries are decoded exactly as the dataset was ingested (DICOM: the same
windowing and resize; PNG / JPEG: grey, the same resize), encoded by the cell's
network, and ranked by Hamming distance: with faiss's exhaustive binary index when
faiss is installed (it returns the stable (distance, index) order), with the built-in
popcount ranker otherwise. Hamming ties are then broken by the distance between the
continuous codes (``tie_break='embedding'``), which the cell stores for its database,
or by database position (``'index'``).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashbench.evaluation.evaluate import binarize, pack
from hashbench.model.trained import load_trained_network
from hashbench.runner.plan import resolve_device
from hashbench.store.results import Cell
from hashbench.training import engine


@dataclass
class Hit:
    rank: int
    slice_id: int
    distance: int
    label: str
    patient: str
    series: str
    path: str


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


class CellIndex:
    """A finished cell as a search index over its database side."""

    def __init__(self, directory: Path, device: str = "auto", use_faiss: bool | None = None):
        from hashbench.datasets import load_dataset

        cell = Cell(directory)
        if cell.status() != "finished":
            raise FileNotFoundError(f"{directory} is not a finished cell ({cell.problem() or cell.status()})")
        self.config = cell.config
        if cell.float_distance:
            raise ValueError(
                f"{directory} is a float reference ({self.config.method}): it holds features, not binary codes; "
                "search a cell of a hashing method"
            )
        codes = cell.codes()
        self.database_codes = codes["database_codes"]
        self.database_ids = codes["database_ids"]
        self.database_embeddings = codes.get("database_embeddings")
        self.dataset = load_dataset(self.config.dataset)
        recorded = self.config.dataset_fingerprint
        if recorded and self.dataset.fingerprint != recorded:
            raise ValueError(
                f"{self.config.dataset} was re-ingested with other content since this cell was trained (data version {self.dataset.fingerprint}, "
                f"the cell's {recorded}): its slice ids no longer name the same images. Re-run the cell on the current data."
            )
        self.device = resolve_device(device)
        self.network = load_trained_network(cell, str(self.device))
        self.collapse = cell.collapse()
        faiss = _faiss() if use_faiss is not False else None
        if use_faiss and faiss is None:
            raise ImportError("faiss is not installed: pip install faiss-cpu, or search without it")
        self.faiss_index = None
        if faiss is not None:
            self.faiss_index = faiss.IndexBinaryFlat(self.database_codes.shape[1] * 8)
            self.faiss_index.add(self.database_codes)

    @property
    def backend(self) -> str:
        return "faiss IndexBinaryFlat" if self.faiss_index is not None else "hashbench popcount ranker"

    def load_images(self, paths: list[Path]) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
        """uint8 (n, size, size) images decoded as the dataset was, a name per (file, frame), and the files skipped with why."""
        from hashbench.data.dicom import ImageOptions, SkippedFile
        from hashbench.data.images import decode_file
        from hashbench.data.ingest import NOT_REGULAR

        options = ImageOptions(**self.dataset.manifest["options"])
        images, names, skipped = [], [], []
        for path in map(Path, paths):
            try:
                if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the read, a device read without end
                    raise SkippedFile(NOT_REGULAR, "only regular files are read")
                frames = decode_file(path, path.read_bytes(), options).images
            except (SkippedFile, OSError) as exc:
                skipped.append((str(path), str(exc)))
                continue
            images += frames
            names += [str(path) if len(frames) == 1 else f"{path} frame {i}" for i in range(len(frames))]
        stacked = np.stack(images) if images else np.zeros((0, options.size, options.size), np.uint8)
        return stacked, names, skipped

    def embed(self, images: np.ndarray) -> np.ndarray:
        source = engine.ImageSource(images, np.arange(len(images)), self.device)
        return engine.encode(self.network, source, np.arange(len(images)), self.config.image_size)

    def search(self, embeddings: np.ndarray, k: int = 10, tie_break: str = "embedding") -> list[list[Hit]]:
        """The top ``k`` database slices for each query embedding."""
        if tie_break not in ("embedding", "index"):
            raise ValueError(f"tie_break={tie_break!r}; valid: embedding, index")
        if k < 1:
            raise ValueError(f"k={k}: ask for at least one neighbour per query")
        if tie_break == "embedding" and self.database_embeddings is None:
            tie_break = "index"  # a cell from before embeddings were stored
        query_codes = pack(binarize(embeddings))
        k = min(k, len(self.database_codes))
        results = []
        for q in range(len(query_codes)):
            candidates, distances = self._within_kth_distance(query_codes[q], k)
            second = (
                np.zeros(len(candidates))
                if tie_break == "index"
                else np.linalg.norm(self.database_embeddings[candidates].astype(np.float32) - embeddings[q], axis=1)
            )
            order = np.lexsort((candidates, second, distances))[:k]
            results.append([self._hit(rank, candidates[i], distances[i]) for rank, i in enumerate(order, start=1)])
        return results

    def _within_kth_distance(self, code: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Every database item at most as far as the k-th nearest (all its ties), with distances."""
        if self.faiss_index is not None:
            distances, _ = self.faiss_index.search(code[None], k)
            _, found_distances, found = self.faiss_index.range_search(code[None], int(distances[0, -1]) + 1)
            return found.astype(np.int64), found_distances.astype(np.int64)
        distances = np.bitwise_count(code ^ self.database_codes).sum(axis=1, dtype=np.int64)
        kth = np.partition(distances, k - 1)[k - 1]
        candidates = np.flatnonzero(distances <= kth)
        return candidates, distances[candidates]

    def _hit(self, rank: int, position: int, distance: int) -> Hit:
        slice_id = int(self.database_ids[position])
        row = self.dataset.index.loc[slice_id]
        path = Path(self.dataset.manifest["source"]) / row["path"]
        return Hit(rank, slice_id, int(distance), row["label"], row["patient"], row["series"], str(path))
