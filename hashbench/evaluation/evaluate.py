"""The evaluator: every retrieval metric from one ranking pass; the metrics themselves are a table.

The definitions are in docs/metrics.md. The ranking is by ascending Hamming distance;
inside a tie group items are ordered by a fixed seeded random key per database position
(:func:`hashbench.evaluation.ranking.tie_order`), so no class gains from how the database is stored,
and ``tie_break="index"`` keeps storage order, the convention of published code. The
tie-aware metrics average over all tie orders instead. The counting itself (no sort, no
query x database matrix) lives in :mod:`hashbench.evaluation.ranking`; the metric names, what each
needs counted and its per-query function are the table in :mod:`hashbench.evaluation.metrics`
(:data:`~hashbench.evaluation.metrics.METRICS`, :func:`~hashbench.evaluation.metrics.parse_metric`).

Curves for plots come from the same counts: :func:`pr_by_radius`, :func:`precision_curve`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from hashbench.evaluation.graded import Grading, attach_top, label_rows
from hashbench.evaluation.metrics import (  # re-exported: the names callers import from here
    DEFAULT_METRICS,
    STORED_METRICS,
    TIE_METRICS,
    Metric,
    average_precision_at,
    expected_precision_at,
    harmonic,
    parse_metric,
    precision_at,
    precision_within_radius,
    ratio,
    tie_aware_average_precision,
)
from hashbench.evaluation.ranking import (
    DEFAULT_MEMORY_BYTES,
    RankCounts,
    count_ranks,
    count_ranks_float,
    count_ranks_from_distances,
    label_words,
    packed_words,
    tie_order,
)

__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_TIE_RULE",
    "STORED_METRICS",
    "TIE_METRICS",
    "Evaluation",
    "Grading",
    "Metric",
    "average_precision_at",
    "binarize",
    "class_masks",
    "evaluate",
    "evaluate_features",
    "evaluate_packed",
    "expected_precision_at",
    "harmonic",
    "mean_over_queries",
    "pack",
    "parse_metric",
    "per_class",
    "pr_by_radius",
    "precision_at",
    "precision_curve",
    "precision_within_radius",
    "tie_aware_average_precision",
    "tie_diagnostics",
    "top1_confusion",
]

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
    labels = np.concatenate([query_labels, database_labels])
    if labels.dtype.kind in "iu" and len(labels) and 0 <= labels.min() and labels.max() < 64:
        ids, n_classes = labels, int(labels.max()) + 1  # class ids already: no sort to map them
    else:
        names, ids = np.unique(labels, return_inverse=True)
        n_classes = len(names)
    return label_words(ids[: len(query_labels)], n_classes), label_words(ids[len(query_labels) :], n_classes)


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
    query_groups: np.ndarray | None = None,
    database_groups: np.ndarray | None = None,
    grading: Grading | None = None,
    distances: np.ndarray | None = None,
    **conventions: str,
) -> Evaluation:
    """All ``metrics`` from one ranking pass over packed codes (np.packbits rows).

    ``curve_cutoffs``: extra rank cutoffs to count, for :func:`precision_curve`. ``device``: 'auto' (CUDA when
    torch sees one, else the CPU kernel), 'cpu', or a torch device. ``memory_bytes`` bounds the scratch memory
    (CPU: database blocks over all threads; GPU: query chunks); it never changes a result.

    ``tie_break``: 'random' orders each tie group by the key of :func:`~hashbench.evaluation.ranking.tie_order` with
    ``tie_seed``, whatever order the database is stored in; 'index' by database position, the stable
    convention of published code (storage order: an ingested database is sorted by class, which favours the
    lowest class in every tie). Either way ``counts.top1`` holds original database positions.

    ``query_groups`` / ``database_groups``: a group id per row (a patient, a study, a series; negative: none); each
    query's ranking leaves out the database items of its own group, exactly, as if they were not there.

    ``grading``: graded relevance for nDCG, ACG and weighted mAP (:class:`~hashbench.evaluation.graded.Grading`;
    None: a shared label is grade 1). ``conventions``: how AP is normalised and what an empty query scores
    (:data:`~hashbench.evaluation.metrics.CONVENTIONS`); a dropped query's value is NaN, left out of the mean.

    ``distances``: a (queries, database) matrix of integer distances in 0..n_bits to rank by instead of the
    codes' Hamming distances (a set distance between cases); ranked with torch ('auto': on CUDA when present).
    """
    parsed = [parse_metric(name, **conventions) for name in metrics]
    query_words, database_words = packed_words(query_packed), packed_words(database_packed)

    def count(order, query_masks, database_masks, groups, cutoffs, top) -> RankCounts:
        shared = {"memory_bytes": memory_bytes, **groups, "top": top}
        if distances is not None:
            columns = distances if order is None else np.asarray(distances)[:, order]
            return count_ranks_from_distances(columns, query_masks, database_masks, n_bits, cutoffs, device, **shared)
        words = database_words if order is None else database_words[order]
        return count_ranks(
            query_words, query_masks, words, database_masks, n_bits, cutoffs, bool(cutoffs), device, **shared
        )

    return _evaluate(
        count,
        parsed,
        query_labels,
        database_labels,
        curve_cutoffs,
        tie_break,
        tie_seed,
        query_groups,
        database_groups,
        grading,
    )


def evaluate_features(
    query_features: np.ndarray,
    query_labels: np.ndarray,
    database_features: np.ndarray,
    database_labels: np.ndarray,
    metrics: tuple[str, ...] = ("map@1", "map@10", "map@all"),
    distance: str = "cosine",
    curve_cutoffs: tuple[int, ...] = (),
    device: str = "auto",
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    *,
    tie_break: str = DEFAULT_TIE_BREAK,
    tie_seed: int = DEFAULT_TIE_SEED,
    query_groups: np.ndarray | None = None,
    database_groups: np.ndarray | None = None,
    grading: Grading | None = None,
    **conventions: str,
) -> Evaluation:
    """The ``metrics`` of continuous features ranked by ``distance`` ('cosine' or 'euclidean'): the float reference
    a binary code is measured against. Options as for :func:`evaluate_packed`; equal distances follow the tie rule.
    A float ranking has no tie groups, so each tie-aware metric is its plain form (``map@tie`` and its bounds are
    ``map@all``, ``map@1-tie`` is ``map@1``, ``p@K-tie`` is ``p@K``); a Hamming radius (``p@rR``) is refused."""
    radii = [name for name in metrics if parse_metric(name).radius]
    if radii:
        raise ValueError(f"{', '.join(radii)}: a Hamming radius has no meaning for continuous features; drop it")
    plain = {name: _tie_free(name) for name in metrics}
    parsed = [replace(parse_metric(form, **conventions), name=name) for name, form in plain.items()]

    def count(order, query_masks, database_masks, groups, cutoffs, top) -> RankCounts:
        features = database_features if order is None else np.asarray(database_features)[order]
        return count_ranks_float(
            query_features,
            query_masks,
            features,
            database_masks,
            distance,
            cutoffs,
            device,
            memory_bytes,
            **groups,
            top=top,
        )

    return _evaluate(
        count,
        parsed,
        query_labels,
        database_labels,
        curve_cutoffs,
        tie_break,
        tie_seed,
        query_groups,
        database_groups,
        grading,
    )


def _tie_free(name: str) -> str:
    """The form a metric takes on a ranking without ties."""
    name = name.lower()
    if name.startswith("map@tie"):
        return "map@all"
    return name.removesuffix("-tie")


def _evaluate(
    count,
    parsed,
    query_labels,
    database_labels,
    curve_cutoffs,
    tie_break,
    tie_seed,
    query_groups,
    database_groups,
    grading,
) -> Evaluation:
    """The tie rule, the labels as masks, one counting pass (``count``), the first items' labels and grades, and every
    metric's per-query values: what every ranking shares."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {', '.join(TIE_BREAKS)}, not {tie_break!r}")
    top = max((m.top for m in parsed), default=0)
    n_items = len(database_labels)
    cutoffs = {m.cutoff for m in parsed if m.cutoff} | set(curve_cutoffs)
    cutoffs |= {n_items} if any(m.needs_all for m in parsed) else set()
    query_masks, database_masks = class_masks(query_labels, database_labels)
    unpermuted_masks, unpermuted_groups = database_masks, database_groups
    order = None
    if tie_break == "random":
        # the ranking breaks ties by index, so rank the rows in key order: one gather, and every backend agrees
        order = tie_order(n_items, tie_seed)
        database_masks = database_masks[order]
        database_groups = None if database_groups is None else np.asarray(database_groups)[order]
    groups = {"query_groups": query_groups, "database_groups": database_groups}
    counts = count(order, query_masks, database_masks, groups, sorted(cutoffs), top)
    if order is not None:
        for items in (counts.top1, counts.top_items):
            ranked = items >= 0  # -1: nothing ranked there
            items[ranked] = order[items[ranked]]
    if top:
        attach_top(
            counts,
            label_rows(query_masks),
            label_rows(unpermuted_masks),
            grading,
            query_groups,
            unpermuted_groups,
        )
    per_query = {m.name: m.per_query(counts) for m in parsed}
    return Evaluation({name: mean_over_queries(values) for name, values in per_query.items()}, per_query, counts)


def mean_over_queries(values: np.ndarray) -> float:
    """The mean over the queries that count (a dropped query is NaN); NaN when none does."""
    counted = values[~np.isnan(values)]
    return float(counted.mean()) if len(counted) else float("nan")


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
    return evaluate_packed(
        pack(query_bits),
        query_labels,
        pack(database_bits),
        database_labels,
        query_bits.shape[1],
        metrics,
        tie_break=tie_break,
        tie_seed=tie_seed,
        **options,
    )


# --- curves and breakdowns -----------------------------------------------------------


def pr_by_radius(counts: RankCounts) -> tuple[np.ndarray, np.ndarray]:
    """Mean precision and recall of the items within Hamming radius r, for r = 0..bits (the hashing PR curve)."""
    within_n, within_r = np.cumsum(counts.distance_counts, axis=1), np.cumsum(counts.relevant_counts, axis=1)
    precision = ratio(within_r, within_n).mean(axis=0)
    recall = ratio(within_r, counts.relevant_counts.sum(axis=1, keepdims=True)).mean(axis=0)
    return precision, recall


def precision_curve(counts: RankCounts, ks: tuple[int, ...]) -> np.ndarray:
    """Mean P@k for each k (each must have been a cutoff of the pass)."""
    return np.array([precision_at(counts, k).mean() for k in ks])


def per_class(values: np.ndarray, query_labels: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """Mean of a per-query metric within each query class (per-class MAP); a multi-label query counts in each of its classes."""
    members = (
        query_labels.astype(bool) if query_labels.ndim == 2 else query_labels[:, None] == np.arange(len(class_names))
    )
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
        **{
            name: float(tie_aware_average_precision(counts, order).mean())
            for name, order in zip(TIE_METRICS, ("expected", "best", "worst"))
        },
        "nearest_tie_size": float(n[rows, nearest].mean()),
        "occupied_buckets": len(bucket_sizes),
        "largest_bucket_share": float(bucket_sizes.max() / len(database_bits)) if len(database_bits) else 0.0,
        "bit_balance": float(1 - 2 * np.abs(ones - 0.5).mean()),  # 1: every bit splits the database in half
        "dead_bits": int(((ones == 0) | (ones == 1)).sum()),
    }


def top1_confusion(
    counts: RankCounts, query_labels: np.ndarray, database_labels: np.ndarray, n_classes: int
) -> np.ndarray:
    """(C, C) counts: the query's class (row) against the class of its top-1 item (column), under the evaluation's tie rule.

    The paper's Figure 3 (its 'MAP@1 confusion matrix'); the diagonal share of a row is that class's MAP@1.
    """
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (query_labels, database_labels[counts.top1]), 1)
    return matrix
