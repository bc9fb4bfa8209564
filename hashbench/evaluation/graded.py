"""What the metrics of the first K items read beyond the ranking counts: their labels (majority votes) and their
graded relevance (nDCG, ACG, weighted mAP).

A grade says how relevant a database item is to a query, on several attributes at once: ``label_weight`` when they
share a label, plus the weight of every other attribute (modality, body part, ...) on which they agree; an unknown
value (-1) agrees with nothing. With no :class:`Grading`, the grade is 1 for sharing a label and 0 otherwise. The ideal
ranking for nDCG holds the best grades of the query's own ranking, so items a query leaves out are not in it either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hashbench.evaluation.ranking import RankCounts

IDEAL_SCRATCH = 1 << 26  # bound on query chunk x attribute combinations x K when finding the ideal grades


@dataclass(frozen=True)
class Grading:
    """Graded relevance: ``label_weight`` for a shared label plus ``weights[a]`` when attribute a agrees."""

    label_weight: float
    query_keys: np.ndarray  # (q, A) int64 attribute values as numbers shared by both sides, -1 unknown
    database_keys: np.ndarray  # (n, A)
    weights: np.ndarray  # (A,)


def label_rows(words: np.ndarray) -> np.ndarray:
    """Packed label words back to (n, bits) bool rows; the classes are the leading columns."""
    return np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=1).astype(bool)


def _grading(grading: Grading | None, n_queries: int, n_items: int) -> Grading:
    if grading is not None:
        return grading
    return Grading(1.0, np.zeros((n_queries, 0), np.int64), np.zeros((n_items, 0), np.int64), np.zeros(0))


def _agreement(query_keys: np.ndarray, item_keys: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sum of the weights of the attributes on which a query and an item agree; broadcasts over leading axes."""
    agree = (query_keys == item_keys) & (query_keys >= 0)
    return (agree * weights).sum(axis=-1)


def attach_top(
    counts: RankCounts,
    query_classes: np.ndarray,
    database_classes: np.ndarray,
    grading: Grading | None,
    query_groups: np.ndarray | None,
    database_groups: np.ndarray | None,
) -> None:
    """Fill the counts' label rows and grades of the first items, and each query's ideal grades (original positions)."""
    grading = _grading(grading, len(query_classes), len(database_classes))
    items = counts.top_items
    shown = items >= 0
    safe = np.where(shown, items, 0)
    counts.query_classes = query_classes
    counts.top_labels = database_classes[safe] & shown[:, :, None]
    shared = (counts.top_labels & query_classes[:, None, :]).any(axis=2)
    agreement = _agreement(grading.query_keys[:, None, :], grading.database_keys[safe], grading.weights)
    counts.top_grades = np.where(shown, grading.label_weight * shared + agreement, 0.0)
    counts.ideal_grades = ideal_grades(
        query_classes, database_classes, grading, query_groups, database_groups, items.shape[1]
    )


def ideal_grades(
    query_classes: np.ndarray,
    database_classes: np.ndarray,
    grading: Grading,
    query_groups: np.ndarray | None,
    database_groups: np.ndarray | None,
    k: int,
) -> np.ndarray:
    """(q, k): the k best grades among the items each query ranks, descending; 0 where the ranking is shorter.

    Items with the same labels and attribute values grade alike for every query, so the work is over those
    combinations and their counts (less those of the query's own group where it leaves a group out), not items.
    """
    ideal = np.zeros((len(query_classes), k))
    if not len(database_classes):
        return ideal
    combined = np.concatenate([database_classes.astype(np.int64), grading.database_keys], axis=1)
    combos, which, sizes = np.unique(combined, axis=0, return_inverse=True, return_counts=True)
    which = which.reshape(-1)
    n_classes = database_classes.shape[1]
    combo_classes, combo_keys = combos[:, :n_classes].astype(bool), combos[:, n_classes:]
    per_query_sizes = np.broadcast_to(sizes, (len(query_classes), len(sizes)))
    if query_groups is not None:
        group_names, group_of_item = np.unique(database_groups, return_inverse=True)
        in_group = np.zeros((len(group_names), len(sizes)), np.int64)
        grouped = database_groups >= 0
        np.add.at(in_group, (group_of_item.reshape(-1)[grouped], which[grouped]), 1)
        position = np.searchsorted(group_names, query_groups).clip(0, len(group_names) - 1)
        own = (query_groups >= 0) & (group_names[position] == query_groups)
        per_query_sizes = per_query_sizes - np.where(own[:, None], in_group[position], 0)
    chunk = max(1, IDEAL_SCRATCH // max(len(sizes) * max(k, 1), 1))
    places = np.arange(1, k + 1)
    for start in range(0, len(query_classes), chunk):
        rows = slice(start, start + chunk)
        shared = (query_classes[rows].astype(np.int64) @ combo_classes.T.astype(np.int64)) > 0
        grades = grading.label_weight * shared + _agreement(
            grading.query_keys[rows, None, :], combo_keys[None, :, :], grading.weights
        )
        order = np.argsort(-grades, axis=1, kind="stable")
        best = np.take_along_axis(grades, order, axis=1)
        reach = np.cumsum(np.take_along_axis(per_query_sizes[rows], order, axis=1), axis=1)
        # place t goes to the first combination whose running count reaches t
        combo_at = (reach[:, :, None] < places[None, None, :]).sum(axis=1)
        within = combo_at < len(sizes)
        ideal[rows] = np.where(within, np.take_along_axis(best, np.minimum(combo_at, len(sizes) - 1), axis=1), 0.0)
    return ideal
