"""Metrics of a stored cell, recomputed from its codes through the evaluator, under the current tie rule.

The results store (:mod:`hashbench.store.results`) reads and verifies a cell's files and knows no metric; what is
derived from the stored codes (metrics, per-query values, tie diagnostics, the collapse note, the top-1 confusion
matrix, per-class metrics, PR and P@k curves) is computed here, so new metrics never need retraining.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from hashbench.evaluation.evaluate import (
    DEFAULT_TIE_RULE,
    Evaluation,
    evaluate_packed,
    per_class,
    pr_by_radius,
    precision_curve,
    tie_diagnostics,
    top1_confusion,
)
from hashbench.store.digest import file_version
from hashbench.store.results import CODES, GROUP_LEVELS, Cell, collapse_note

NO_EXCLUSION = "none"
EXCLUSIONS = (NO_EXCLUSION, *(f"same-{level}" for level in GROUP_LEVELS))  # what a query's ranking may leave out


def check_exclusion(exclude: str) -> str:
    """``exclude`` if valid, else ValueError naming the valid values."""
    if exclude not in EXCLUSIONS:
        raise ValueError(f"--exclude {exclude!r} is not an exclusion; valid: {', '.join(EXCLUSIONS)}")
    return exclude


def cell_groups(cell: Cell, exclude: str) -> dict[str, np.ndarray]:
    """The group ids ``exclude`` leaves out of each query's ranking (its own patient's, study's or series' items), as
    evaluation options; none for 'none'."""
    if check_exclusion(exclude) == NO_EXCLUSION:
        return {}
    codes = cell.codes()
    if "query_groups" not in codes:
        raise ValueError(
            f"{cell.directory} was stored without its slices' patient, study and series (by an older hashbench): "
            "run it again with --force to evaluate it with --exclude"
        )
    column = GROUP_LEVELS.index(exclude.removeprefix("same-"))
    return {"query_groups": codes["query_groups"][:, column], "database_groups": codes["database_groups"][:, column]}


def evaluate_cell(
    cell: Cell, metrics: tuple[str, ...], curve_cutoffs: tuple[int, ...] = (), exclude: str = NO_EXCLUSION
) -> Evaluation:
    """Metrics recomputed from the cell's stored codes, under the current tie rule; ``exclude`` leaves each query's
    own patient (study, series) out of its ranking."""
    codes = cell.codes()
    return evaluate_packed(
        codes["query_codes"],
        codes["query_labels"],
        codes["database_codes"],
        codes["database_labels"],
        int(codes["bits"]),
        metrics,
        curve_cutoffs=curve_cutoffs,
        **DEFAULT_TIE_RULE,
        **cell_groups(cell, exclude),
    )


def cell_per_query(cell: Cell, metric: str, exclude: str = NO_EXCLUSION) -> np.ndarray:
    """Per-query values of ``metric``: stored when they were computed as asked (the current tie rule, nothing left out),
    else from the codes (cached per version of the codes file)."""
    return _cell_per_query(cell, metric.lower(), exclude, *file_version(cell.result_path(CODES)))


@lru_cache(maxsize=512)
def _cell_per_query(
    cell: Cell, metric: str, exclude: str, path: str, inode: int, mtime_ns: int, size: int
) -> np.ndarray:
    stored = cell.codes().get(f"per_query/{metric}")
    if stored is not None and cell.evaluation_rule() == DEFAULT_TIE_RULE and exclude == NO_EXCLUSION:
        return stored
    return evaluate_cell(cell, (metric,), exclude=exclude).per_query[metric]


def cell_tie_diagnostics(cell: Cell) -> dict[str, float]:
    """As recorded at the end of training, or computed from the codes for cells that did not record them (or recorded
    them under another tie rule)."""
    record = cell.record
    if "ties" in record and cell.evaluation_rule() == DEFAULT_TIE_RULE:
        return record["ties"]
    return tie_diagnostics(evaluate_cell(cell, ("map@1",)).counts, cell.database_bits())


def cell_collapse_note(cell: Cell) -> str:
    """'' for healthy codes; else what is dead: a collapsed cell's score is not a plain score."""
    return collapse_note(int(cell_tie_diagnostics(cell)["dead_bits"]), cell.config.bits)


def cell_confusion(cell: Cell) -> np.ndarray:
    """(C, C) counts of query class against the class of its top-1 item (the paper's Figure 3)."""
    codes = cell.codes()
    if cell.multi_label:
        raise ValueError(
            f"{cell.config.label()} is multi-label: a top-1 item can share several classes with its query, so there is no confusion matrix"
        )
    return top1_confusion(
        evaluate_cell(cell, ("map@1",)).counts,
        codes["query_labels"],
        codes["database_labels"],
        len(codes["class_names"]),
    )


def cell_per_class(cell: Cell, metrics: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Each metric's mean per query class."""
    labels = cell.codes()["query_labels"]
    return {metric: per_class(cell_per_query(cell, metric), labels, cell.class_names) for metric in metrics}


def cell_curves(cell: Cell, cutoffs: tuple[int, ...], exclude: str = NO_EXCLUSION) -> dict[str, np.ndarray]:
    """PR curve by Hamming radius and P@k at ``cutoffs`` (those within the database)."""
    ks = tuple(k for k in cutoffs if k <= len(cell.codes()["database_codes"]))
    counts = evaluate_cell(cell, (), curve_cutoffs=ks, exclude=exclude).counts
    precision, recall = pr_by_radius(counts)
    return {"precision": precision, "recall": recall, "ks": np.array(ks), "p_at_k": precision_curve(counts, ks)}
