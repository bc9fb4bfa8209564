"""The evaluator: Hamming ranking over packed bits and the retrieval metrics.

Definitions follow ../shared/notes/metrics.md. The ranking is by ascending Hamming
distance with ties broken by database index (a stable sort), so results never
depend on the machine's sort. Codes are packed 8 bits a byte; distances are XOR +
popcount; queries are processed in chunks so memory stays bounded.

Metrics form a registry (:data:`METRICS`, names like ``map@10``, ``p@100``,
``map@all``): each is a function of one ranked chunk, so new ones slot in and every
metric comes out of the same ranking pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

DEFAULT_METRICS = ("map@1", "map@10", "map@all")
DEFAULT_MEMORY_BYTES = 256 * 2**20
BYTES_PER_PAIR = 32  # distance, order, relevance, hit counts and precision, per (query, item)


def binarize(codes: np.ndarray) -> np.ndarray:
    """Continuous codes to bits: True for +1. sign(0) is +1, so a code is never 0."""
    return np.asarray(codes) >= 0


def pack(bits: np.ndarray) -> np.ndarray:
    """Boolean (n, b) to uint8 (n, ceil(b/8)); padding bits are zero for every code, so distances are exact."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=1)


def hamming(query_packed: np.ndarray, database_packed: np.ndarray) -> np.ndarray:
    """(q, n) Hamming distances between packed codes."""
    xor = np.bitwise_xor(query_packed[:, None, :], database_packed[None, :, :])
    return np.bitwise_count(xor).sum(axis=2, dtype=np.uint16)


def relevance(query_labels: np.ndarray, database_labels: np.ndarray) -> np.ndarray:
    """(q, n) True where the items share a label: class ids (1-D) or multi-hot rows (2-D)."""
    if query_labels.ndim == 1:
        return query_labels[:, None] == database_labels[None, :]
    return (query_labels.astype(np.float32) @ database_labels.astype(np.float32).T) > 0


@dataclass
class RankedChunk:
    """A chunk of queries with the database ranked: relevance and hit counts in rank order."""

    relevant: np.ndarray  # (q, n) bool, in rank order
    hits: np.ndarray  # (q, n) cumulative relevant count in rank order

    def cutoff(self, k: int | None) -> int:
        n = self.relevant.shape[1]
        return n if k is None else min(k, n)

    def precision_sum(self, k: int) -> np.ndarray:
        """sum_{i<=k} rel(i) * P(i), the numerator of AP."""
        ranks = np.arange(1, k + 1, dtype=np.float64)
        return (self.relevant[:, :k] * (self.hits[:, :k] / ranks)).sum(axis=1)


def average_precision_at(chunk: RankedChunk, k: int | None) -> np.ndarray:
    """AP@k normalised by the relevant items in the top k (the DAFH / DPSH / DeepHash convention); 0 when none."""
    k = chunk.cutoff(k)
    found = chunk.hits[:, k - 1].astype(np.float64)
    return np.divide(chunk.precision_sum(k), found, out=np.zeros_like(found), where=found > 0)


def precision_at(chunk: RankedChunk, k: int | None) -> np.ndarray:
    k = chunk.cutoff(k)
    return chunk.hits[:, k - 1] / k


METRIC_FAMILIES: dict[str, Callable[[RankedChunk, int | None], np.ndarray]] = {
    "map": average_precision_at,  # map@all = AP over the whole ranking, normalised by all relevant items
    "p": precision_at,
}
METRIC_PATTERN = re.compile(r"^(?P<family>[a-z]+)@(?P<k>\d+|all)$")


def parse_metric(name: str) -> tuple[Callable[[RankedChunk, int | None], np.ndarray], int | None]:
    match = METRIC_PATTERN.match(name.lower())
    if not match or match["family"] not in METRIC_FAMILIES:
        raise ValueError(f"unknown metric {name!r}; valid: {', '.join(f'{f}@K or {f}@all' for f in METRIC_FAMILIES)}")
    k = None if match["k"] == "all" else int(match["k"])
    if k == 0:
        raise ValueError(f"{name}: k must be at least 1")
    return METRIC_FAMILIES[match["family"]], k


@dataclass
class Evaluation:
    """Mean of each metric, and its per-query values (for significance tests and new summaries)."""

    metrics: dict[str, float]
    per_query: dict[str, np.ndarray] = field(repr=False)


def evaluate(
    query_bits: np.ndarray,
    query_labels: np.ndarray,
    database_bits: np.ndarray,
    database_labels: np.ndarray,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> Evaluation:
    """Rank the database for every query and compute ``metrics`` from the same ranking."""
    parsed = {name: parse_metric(name) for name in metrics}
    query_packed, database_packed = pack(query_bits), pack(database_bits)
    n_queries, n_items = len(query_packed), len(database_packed)
    chunk_size = max(1, memory_bytes // max(n_items * BYTES_PER_PAIR, 1))
    per_query = {name: np.empty(n_queries) for name in metrics}
    for start in range(0, n_queries, chunk_size):
        stop = min(start + chunk_size, n_queries)
        distances = hamming(query_packed[start:stop], database_packed)
        order = np.argsort(distances, axis=1, kind="stable")  # ties: lower database index first
        relevant = np.take_along_axis(relevance(query_labels[start:stop], database_labels), order, axis=1)
        chunk = RankedChunk(relevant, np.cumsum(relevant, axis=1, dtype=np.int32))
        for name, (function, k) in parsed.items():
            per_query[name][start:stop] = function(chunk, k)
    return Evaluation({name: float(values.mean()) if n_queries else float("nan") for name, values in per_query.items()}, per_query)


def top1_confusion(query_packed: np.ndarray, query_labels: np.ndarray, database_packed: np.ndarray, database_labels: np.ndarray, n_classes: int, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> np.ndarray:
    """(C, C) counts: the query's class (row) against the class of its top-1 item (column), stable ties.

    The paper's Figure 3 (its 'MAP@1 confusion matrix'); the diagonal share of a row is that class's MAP@1.
    """
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    chunk_size = max(1, memory_bytes // max(len(database_packed) * database_packed.shape[1] * 2, 1))
    for start in range(0, len(query_packed), chunk_size):
        stop = start + chunk_size
        nearest = hamming(query_packed[start:stop], database_packed).argmin(axis=1)  # first minimum: lowest index wins ties
        np.add.at(matrix, (query_labels[start:stop], database_labels[nearest]), 1)
    return matrix
