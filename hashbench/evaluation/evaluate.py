"""The evaluator: every retrieval metric from one ranking pass, through one metric registry.

The definitions are in docs/metrics.md. The ranking is by ascending Hamming distance;
inside a tie group items are ordered by a fixed seeded random key per database position
(:func:`hashbench.evaluation.ranking.tie_order`), so no class gains from how the database is stored,
and ``tie_break="index"`` keeps storage order, the convention of published code. The
tie-aware metrics average over all tie orders instead. The counting itself (no sort, no
query x database matrix) lives in :mod:`hashbench.evaluation.ranking`.

Metric names (the registry, :func:`parse_metric`):

- ``map@K`` / ``map@all``  AP over the top K, normalised by the relevant items found there
                            (the DAFH / DPSH / DeepHash convention; ``map@all`` is textbook AP)
- ``p@K`` / ``p@all``      precision of the top K
- ``p@K-tie``              P@K expected over all tie orders
- ``map@1-tie``            MAP@1 expected over all tie orders (the same as ``p@1-tie``); there is no
                            closed form for K > 1, so ``map@K-tie`` is refused there
- ``map@tie``              tie-aware mAP: AP over the whole ranking, expected over all tie orders
- ``map@tie-best`` / ``map@tie-worst``  the same AP with relevant items first / last in every tie
- ``p@rR``                 precision within Hamming radius R (0 for a query with nothing inside)

Curves for plots come from the same counts: :func:`pr_by_radius`, :func:`precision_curve`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

from hashbench.evaluation.ranking import DEFAULT_MEMORY_BYTES, RankCounts, count_ranks, label_words, packed_words, tie_order

DEFAULT_METRICS = ("map@1", "map@1-tie", "map@10", "map@all", "map@tie")  # what run and leaderboard show unless told
TIE_METRICS = ("map@tie", "map@tie-best", "map@tie-worst")
STORED_METRICS = ("map@1", "map@1-tie", "map@10", "map@100", "map@all", *TIE_METRICS, "p@10", "p@r2")  # every cell stores these per query
TIE_BREAKS = ("random", "index")
DEFAULT_TIE_BREAK = "random"
DEFAULT_TIE_SEED = 0
DEFAULT_TIE_RULE = {"tie_break": DEFAULT_TIE_BREAK, "tie_seed": DEFAULT_TIE_SEED}  # as results record it


def binarize(codes: np.ndarray) -> np.ndarray:
    """Continuous codes to bits: True for +1. sign(0) is +1, so a code is never 0."""
    return np.asarray(codes) >= 0


def pack(bits: np.ndarray) -> np.ndarray:
    """Boolean (n, b) to uint8 (n, ceil(b/8)); padding bits are zero for every code, so distances are exact."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=1)


# --- metrics -------------------------------------------------------------------------


@lru_cache(maxsize=4)
def harmonic(n: int) -> np.ndarray:
    """H[0..n], H[i] = 1 + 1/2 + ... + 1/i."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])


def _ratio(numerator, denominator) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=np.asarray(denominator) > 0)


def _before(counts: np.ndarray) -> np.ndarray:
    """Items ranked before each distance group."""
    return np.cumsum(counts, axis=1) - counts


def average_precision_at(counts: RankCounts, k: int | None) -> np.ndarray:
    if not len(counts.cutoffs):  # an empty database: every cutoff was capped to 0
        return np.zeros(len(counts.hits))
    column = counts.at(counts.n_database if k is None else k)
    return _ratio(counts.precision_sums[:, column], counts.hits[:, column])


def precision_at(counts: RankCounts, k: int | None) -> np.ndarray:
    if not len(counts.cutoffs):  # an empty database
        return np.zeros(len(counts.hits))
    k = counts.n_database if k is None else min(k, counts.n_database)
    return _ratio(counts.hits[:, counts.at(k)], k)


def expected_precision_at(counts: RankCounts, k: int) -> np.ndarray:
    """P@k expected over all orders within each tie group, from the histograms alone.

    Each group has as many items in the top k as fit after the N items before it (all of its n, none, or
    k - N for the group straddling k), and in expectation r / n of them are relevant.
    """
    k = min(k, counts.n_database)
    n, r = counts.distance_counts, counts.relevant_counts
    in_top = np.clip(k - _before(n), 0, n)
    return _ratio(_ratio(r * in_top, n).sum(axis=1), k)


def tie_aware_average_precision(counts: RankCounts, order: str = "expected") -> np.ndarray:
    """AP over the whole ranking with each tie group in expected, best or worst order; closed forms per group.

    A group of n items, r relevant, after N items of which R relevant. Expected (McSherry & Najork 2008):
    (r / n) * sum_{t=1..n} (R + 1 + (t-1)(r-1)/(n-1)) / (N + t). Best: sum_{t=1..r} (R + t) / (N + t).
    Worst: sum_{t=1..r} (R + t) / (N + n - r + t). Each sum is a difference of harmonic numbers.
    """
    n, r = counts.distance_counts, counts.relevant_counts
    before_n, before_r = _before(n), _before(r)
    H = harmonic(counts.n_database)
    if order == "expected":
        slope = _ratio(r - 1, n - 1)  # 0 for a group of one
        inner = n * slope + (before_r + 1 - slope * (1 + before_n)) * (H[before_n + n] - H[before_n])
        groups = _ratio(r * inner, n)
    elif order == "best":
        groups = r + (before_r - before_n) * (H[before_n + r] - H[before_n])
    elif order == "worst":
        groups = r + (before_r - before_n - n + r) * (H[before_n + n] - H[before_n + n - r])
    else:
        raise ValueError(f"order must be expected, best or worst, not {order!r}")
    return _ratio(groups.sum(axis=1), r.sum(axis=1))


def precision_within_radius(counts: RankCounts, radius: int) -> np.ndarray:
    inside = slice(0, radius + 1)
    return _ratio(counts.relevant_counts[:, inside].sum(axis=1), counts.distance_counts[:, inside].sum(axis=1))


@dataclass(frozen=True)
class Metric:
    """A per-query metric and what the ranking pass must count for it."""

    name: str
    per_query: Callable[[RankCounts], np.ndarray]
    cutoff: int | None = None  # a rank cutoff the stable pass tracks; None for none
    needs_all: bool = False  # tracks the whole ranking (cutoff = database size)


METRIC_PATTERN = re.compile(r"^(?P<family>map|p)@(?:(?P<k>\d+)(?P<expected>-tie)?|(?P<all>all)|(?P<tie>tie(?:-best|-worst)?)|r(?P<radius>\d+))$")
METRIC_HELP = "map@K, map@all, p@K, p@all, p@K-tie, map@1-tie, map@tie, map@tie-best, map@tie-worst, p@rR (precision within Hamming radius R)"


def parse_metric(name: str) -> Metric:
    """A metric by name; unknown names raise with the list of valid forms."""
    match = METRIC_PATTERN.match(name.lower())
    if not match or (match["family"] == "p" and match["tie"]) or (match["family"] == "map" and match["radius"]):
        raise ValueError(f"unknown metric {name!r}; valid: {METRIC_HELP}")
    family, name = match["family"], name.lower()
    if match["tie"]:
        order = {"tie": "expected", "tie-best": "best", "tie-worst": "worst"}[match["tie"]]
        return Metric(name, lambda counts: tie_aware_average_precision(counts, order))
    if match["radius"]:
        radius = int(match["radius"])
        return Metric(name, lambda counts: precision_within_radius(counts, radius))
    function = average_precision_at if family == "map" else precision_at
    if match["all"]:
        return Metric(name, lambda counts: function(counts, None), needs_all=True)
    k = int(match["k"])
    if k == 0:
        raise ValueError(f"{name}: k must be at least 1")
    if match["expected"]:
        if family == "map" and k > 1:
            raise ValueError(f"{name}: the expected MAP@k over tie orders has no closed form for k > 1; use p@{k}-tie or map@tie")
        return Metric(name, lambda counts: expected_precision_at(counts, k))  # MAP@1 is P@1
    return Metric(name, lambda counts: function(counts, k), cutoff=k)


# --- evaluation ----------------------------------------------------------------------


@dataclass
class Evaluation:
    """Mean of each metric, its per-query values (for significance tests), and the counts (for curves)."""

    metrics: dict[str, float]
    per_query: dict[str, np.ndarray] = field(repr=False)
    counts: RankCounts = field(repr=False)


def class_masks(query_labels: np.ndarray, database_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label bit masks for both sides: class ids or names (1-D, mapped jointly) or multi-hot rows (2-D)."""
    query_labels, database_labels = np.asarray(query_labels), np.asarray(database_labels)
    if query_labels.ndim == 2:
        return label_words(query_labels), label_words(database_labels)
    names, ids = np.unique(np.concatenate([query_labels, database_labels]), return_inverse=True)
    return label_words(ids[: len(query_labels)], len(names)), label_words(ids[len(query_labels) :], len(names))


def evaluate_packed(
    query_packed: np.ndarray,
    query_labels: np.ndarray,
    database_packed: np.ndarray,
    database_labels: np.ndarray,
    n_bits: int,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    curve_cutoffs: tuple[int, ...] = (),
    device: str = "auto",
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    *,
    tie_break: str = DEFAULT_TIE_BREAK,
    tie_seed: int = DEFAULT_TIE_SEED,
) -> Evaluation:
    """All ``metrics`` from one ranking pass over packed codes (np.packbits rows).

    ``curve_cutoffs``: extra rank cutoffs to count, for :func:`precision_curve`. ``device``: 'auto' (CUDA when
    torch sees one, else the CPU kernel), 'cpu', or a torch device. ``memory_bytes`` bounds the scratch memory
    (CPU: database blocks over all threads; GPU: query chunks); it never changes a result.

    ``tie_break``: 'random' orders each tie group by the key of :func:`~hashbench.evaluation.ranking.tie_order` with
    ``tie_seed``, whatever order the database is stored in; 'index' by database position, the stable
    convention of published code (storage order: an ingested database is sorted by class, which favours the
    lowest class in every tie). Either way ``counts.top1`` holds original database positions.
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {', '.join(TIE_BREAKS)}, not {tie_break!r}")
    parsed = [parse_metric(name) for name in metrics]
    n_items = len(database_packed)
    cutoffs = {m.cutoff for m in parsed if m.cutoff} | ({n_items} if any(m.needs_all for m in parsed) else set()) | set(curve_cutoffs)
    query_masks, database_masks = class_masks(query_labels, database_labels)
    database_words = packed_words(database_packed)
    if tie_break == "random":
        # the kernel breaks ties by index, so rank the rows in key order: one gather, and both backends agree
        order = tie_order(n_items, tie_seed)
        database_words, database_masks = database_words[order], database_masks[order]
    counts = count_ranks(
        packed_words(query_packed), query_masks, database_words, database_masks, n_bits,
        sorted(cutoffs), stable=bool(cutoffs), device=device, memory_bytes=memory_bytes,
    )
    if tie_break == "random":
        ranked = counts.top1 >= 0  # -1: an empty database
        counts.top1[ranked] = order[counts.top1[ranked]]
    per_query = {m.name: m.per_query(counts) for m in parsed}
    means = {name: float(values.mean()) if len(values) else float("nan") for name, values in per_query.items()}
    return Evaluation(means, per_query, counts)


def evaluate(
    query_bits: np.ndarray,
    query_labels: np.ndarray,
    database_bits: np.ndarray,
    database_labels: np.ndarray,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    *,
    tie_break: str = DEFAULT_TIE_BREAK,
    tie_seed: int = DEFAULT_TIE_SEED,
    **options,
) -> Evaluation:
    """All ``metrics`` for boolean (n, bits) codes; the tie rule and ``options`` as for :func:`evaluate_packed`."""
    query_bits, database_bits = np.asarray(query_bits, dtype=bool), np.asarray(database_bits, dtype=bool)
    return evaluate_packed(pack(query_bits), query_labels, pack(database_bits), database_labels, query_bits.shape[1], metrics, tie_break=tie_break, tie_seed=tie_seed, **options)


# --- curves and breakdowns -----------------------------------------------------------


def pr_by_radius(counts: RankCounts) -> tuple[np.ndarray, np.ndarray]:
    """Mean precision and recall of the items within Hamming radius r, for r = 0..bits (the hashing PR curve)."""
    within_n, within_r = np.cumsum(counts.distance_counts, axis=1), np.cumsum(counts.relevant_counts, axis=1)
    precision = _ratio(within_r, within_n).mean(axis=0)
    recall = _ratio(within_r, counts.relevant_counts.sum(axis=1, keepdims=True)).mean(axis=0)
    return precision, recall


def precision_curve(counts: RankCounts, ks: tuple[int, ...]) -> np.ndarray:
    """Mean P@k for each k (each must have been a cutoff of the pass)."""
    return np.array([precision_at(counts, k).mean() for k in ks])


def per_class(values: np.ndarray, query_labels: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """Mean of a per-query metric within each query class (per-class MAP); a multi-label query counts in each of its classes."""
    members = query_labels.astype(bool) if query_labels.ndim == 2 else query_labels[:, None] == np.arange(len(class_names))
    return {name: float(values[members[:, i]].mean()) for i, name in enumerate(class_names) if members[:, i].any()}


def tie_diagnostics(counts: RankCounts, database_bits: np.ndarray) -> dict[str, float]:
    """How much of a cell's score is tie luck, and why: bounds over tie orders, tie sizes, bucket use, bit balance."""
    n, r = counts.distance_counts, counts.relevant_counts
    nearest = np.argmax(n > 0, axis=1)
    rows = np.arange(len(n))
    database_bits = np.asarray(database_bits, dtype=bool)
    ones = database_bits.mean(axis=0) if len(database_bits) else np.zeros(database_bits.shape[1])
    _, bucket_sizes = np.unique(pack(database_bits), axis=0, return_counts=True)
    return {
        "map@1-best": float((r[rows, nearest] > 0).mean()),
        "map@1-worst": float((r[rows, nearest] == n[rows, nearest]).mean()),
        **{name: float(tie_aware_average_precision(counts, order).mean()) for name, order in zip(TIE_METRICS, ("expected", "best", "worst"))},
        "nearest_tie_size": float(n[rows, nearest].mean()),
        "occupied_buckets": int(len(bucket_sizes)),
        "largest_bucket_share": float(bucket_sizes.max() / len(database_bits)) if len(database_bits) else 0.0,
        "bit_balance": float(1 - 2 * np.abs(ones - 0.5).mean()),  # 1: every bit splits the database in half
        "dead_bits": int(((ones == 0) | (ones == 1)).sum()),
    }


def top1_confusion(counts: RankCounts, query_labels: np.ndarray, database_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts: the query's class (row) against the class of its top-1 item (column), under the evaluation's tie rule.

    The paper's Figure 3 (its 'MAP@1 confusion matrix'); the diagonal share of a row is that class's MAP@1.
    """
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (query_labels, database_labels[counts.top1]), 1)
    return matrix
