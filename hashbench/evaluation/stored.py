"""Metrics of a stored cell, recomputed from its codes through the evaluator, under the current tie rule.

The results store (:mod:`hashbench.store.results`) reads and verifies a cell's files and knows no metric; what is
derived from the stored codes (metrics, per-query values, tie diagnostics, the top-1 confusion matrix, per-class
metrics, PR and P@k curves) is computed here, so new metrics never need retraining. A float reference's cell is ranked
by its stored features instead.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from hashbench.evaluation.cases import Items, aggregate, nearest_slices
from hashbench.evaluation.evaluate import (
    DEFAULT_TIE_RULE,
    Evaluation,
    Grading,
    evaluate_features,
    evaluate_packed,
    per_class,
    pr_by_radius,
    precision_curve,
    tie_diagnostics,
    top1_confusion,
)
from hashbench.evaluation.view import HAMMING, LABEL, NO_EXCLUSION, SLICE, View
from hashbench.store.digest import file_version
from hashbench.store.results import ATTRIBUTES, CODES, GROUP_LEVELS, Cell

DEFAULT_VIEW = View()
AGE_BANDS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 200, "80+"))
SUBGROUPS = ("modality", "collection", "body_part", "sex", "age", "manufacturer", "slice_thickness")  # --by
UNKNOWN = "unknown"


def _rerun(cell: Cell, what: str) -> ValueError:
    return ValueError(
        f"{cell.directory} was stored without {what} (by an older hashbench): run it again with --force to evaluate it "
        "this way"
    )


def _side(cell: Cell, side: str) -> Items:
    """One side of the cell's stored items at slice level."""
    codes = cell.codes()
    n = len(codes[f"{side}_codes"])
    groups = codes.get(f"{side}_groups")
    attributes = codes.get(f"{side}_attributes")
    return Items(
        codes[f"{side}_codes"],
        codes[f"{side}_labels"],
        np.full((n, len(GROUP_LEVELS)), -1, np.int64) if groups is None else groups,
        np.full((n, len(ATTRIBUTES)), "") if attributes is None else attributes,
        codes.get(f"{side}_embeddings"),
    )


def judged_items(cell: Cell, view: View = DEFAULT_VIEW) -> tuple[Items, Items]:
    """The queries and the database as ``view`` ranks them: slices, or cases built from them (cached per version of
    the codes file)."""
    return _judged_items(cell, view, *file_version(cell.result_path(CODES)))


@lru_cache(maxsize=64)
def _judged_items(cell: Cell, view: View, *version) -> tuple[Items, Items]:
    codes = cell.codes()
    needs_groups = (
        view.level != SLICE or view.exclude != NO_EXCLUSION or any(name in GROUP_LEVELS for name, _ in view.relevance)
    )
    needs_attributes = any(name in ATTRIBUTES for name, _ in view.relevance)
    if needs_groups and "query_groups" not in codes:
        raise _rerun(cell, "its slices' patient, study and series")
    if needs_attributes and "query_attributes" not in codes:
        raise _rerun(cell, "its slices' attributes (modality, body part, ...)")
    if ranking_of(cell, view) != HAMMING and "query_embeddings" not in codes:
        raise _rerun(cell, "its queries' continuous codes")
    query, database = _side(cell, "query"), _side(cell, "database")
    if view.level == SLICE:
        return query, database
    case_code = "vote" if cell.float_distance else view.case_code  # a float case is its slices' mean features alone
    shape = (int(codes["bits"]), len(codes["class_names"]), case_code)
    return aggregate(query, view.level, *shape), aggregate(database, view.level, *shape)


def case_distances(cell: Cell, view: View) -> np.ndarray | None:
    """The set distances the view ranks cases by (None: the Hamming distances of their codes), cached per version of
    the codes file."""
    if view.case_distance == "code":
        return None
    return _case_distances(cell, view.level, *file_version(cell.result_path(CODES)))


@lru_cache(maxsize=8)
def _case_distances(cell: Cell, level: str, *version) -> np.ndarray:
    judged_items(cell, View(level=level))  # refuses cells stored without their groups
    return nearest_slices(_side(cell, "query"), _side(cell, "database"), level, int(cell.codes()["bits"]))


def _grading(query: Items, database: Items, view: View) -> Grading | None:
    """The view's graded relevance as numbers shared by both sides; None for the default (a shared label is 1)."""
    if not view.relevance:
        return None
    weights = dict(view.relevance)
    keys = []
    for name in weights:
        if name == LABEL:
            continue
        if name in GROUP_LEVELS:
            column = GROUP_LEVELS.index(name)
            keys.append((query.groups[:, column], database.groups[:, column]))
        else:
            column = ATTRIBUTES.index(name)
            values = np.concatenate([query.attributes[:, column], database.attributes[:, column]])
            numbers = np.unique(values, return_inverse=True)[1].reshape(-1)
            numbers = np.where(values == "", -1, numbers)
            keys.append((numbers[: len(query)], numbers[len(query) :]))
    others = [w for name, w in weights.items() if name != LABEL]
    return Grading(
        weights.get(LABEL, 0.0),
        np.stack([q for q, _ in keys], axis=1) if keys else np.zeros((len(query), 0), np.int64),
        np.stack([d for _, d in keys], axis=1) if keys else np.zeros((len(database), 0), np.int64),
        np.array(others, dtype=np.float64),
    )


def evaluate_cell(
    cell: Cell, metrics: tuple[str, ...], curve_cutoffs: tuple[int, ...] = (), view: View = DEFAULT_VIEW
) -> Evaluation:
    """Metrics recomputed from the cell's stored codes, under the current tie rule, as ``view`` judges them."""
    query, database = judged_items(cell, view)
    groups = {}
    if view.exclude != NO_EXCLUSION:
        column = GROUP_LEVELS.index(view.exclude.removeprefix("same-"))
        groups = {"query_groups": query.groups[:, column], "database_groups": database.groups[:, column]}
    ranking = ranking_of(cell, view)
    if ranking != HAMMING:
        if view.case_distance != "code":  # the view refuses it with --ranking: here only a float reference's own
            raise ValueError(
                f"{cell.config.label()} is a float reference: its cases are ranked by their mean features, not by "
                "their closest slices; drop --case-distance for it"
            )
        return evaluate_features(
            query.embeddings,
            query.labels,
            database.embeddings,
            database.labels,
            metrics,
            ranking,
            curve_cutoffs,
            **DEFAULT_TIE_RULE,
            **groups,
            grading=_grading(query, database, view),
            **view.conventions,
        )
    return evaluate_packed(
        query.codes,
        query.labels,
        database.codes,
        database.labels,
        int(cell.codes()["bits"]),
        metrics,
        curve_cutoffs=curve_cutoffs,
        **DEFAULT_TIE_RULE,
        **groups,
        grading=_grading(query, database, view),
        distances=case_distances(cell, view),
        **view.conventions,
    )


def ranking_of(cell: Cell, view: View) -> str:
    """How the cell's items are ranked under ``view``: a float reference by its own distance whatever the view says
    (it has no code), any other cell as the view says."""
    return cell.float_distance or view.ranking


def cell_per_query(cell: Cell, metric: str, view: View = DEFAULT_VIEW) -> np.ndarray:
    """Per-query values of ``metric`` (NaN: a query dropped by the view): stored when they were computed as asked (the
    current tie rule, the default view), else from the codes (cached per version of the codes file)."""
    return _cell_per_query(cell, metric.lower(), view, *file_version(cell.result_path(CODES)))


@lru_cache(maxsize=512)
def _cell_per_query(cell: Cell, metric: str, view: View, *version) -> np.ndarray:
    stored = cell.codes().get(f"per_query/{metric}")
    if stored is not None and cell.evaluation_rule() == DEFAULT_TIE_RULE and view.is_default:
        return stored
    return evaluate_cell(cell, (metric,), view=view).per_query[metric]


def query_clusters(cell: Cell, view: View = DEFAULT_VIEW) -> np.ndarray | None:
    """Each query's patient as a cluster number, for intervals that resample patients; None when every query is its
    own patient (or the cell did not store patients)."""
    return clusters_of(query_patients(cell, view))


def query_patients(cell: Cell, view: View = DEFAULT_VIEW) -> np.ndarray:
    """Each query's patient id in the dataset (-1: unknown, or a case of several patients)."""
    return judged_items(cell, view)[0].groups[:, 0]


def clusters_of(patients: np.ndarray) -> np.ndarray | None:
    """Patient ids (-1: unknown, a patient of its own) as cluster numbers from 0; None when no two queries share one."""
    if (patients < 0).all():
        return None
    clusters = np.where(patients >= 0, patients, -1 - np.arange(len(patients)))
    clusters = np.unique(clusters, return_inverse=True)[1].reshape(-1)
    return None if clusters.max(initial=-1) + 1 == len(clusters) else clusters


def query_subgroups(cell: Cell, by: str, view: View = DEFAULT_VIEW) -> np.ndarray:
    """(queries,) each query's subgroup under ``by`` (SUBGROUPS); age in bands; 'unknown' where not recorded."""
    if by not in SUBGROUPS:
        raise ValueError(f"--by {by!r} is not valid; valid: {', '.join(SUBGROUPS)}")
    query, _ = judged_items(cell, view)
    if by == "collection":
        names = np.array(cell.class_names)
        rows = query.labels.astype(bool) if query.labels.ndim == 2 else np.eye(len(names), dtype=bool)[query.labels]
        return np.array(["+".join(names[row]) or UNKNOWN for row in rows])
    if "query_attributes" not in cell.codes():
        raise _rerun(cell, "its slices' attributes (modality, body part, ...)")
    values = query.attributes[:, ATTRIBUTES.index(by)]
    if by == "age":
        values = np.array([_age_band(value) for value in values])
    return np.where(values == "", UNKNOWN, values)


def _age_band(age: str) -> str:
    try:
        years = float(age)
    except ValueError:
        return ""
    return next((band for low, high, band in AGE_BANDS if low <= years < high), "")


def cell_tie_diagnostics(cell: Cell) -> dict[str, float]:
    """As recorded at the end of training, or computed from the codes for cells that did not record them (or recorded
    them under another tie rule)."""
    record = cell.record
    if "ties" in record and cell.evaluation_rule() == DEFAULT_TIE_RULE:
        return record["ties"]
    return tie_diagnostics(evaluate_cell(cell, ("map@1",)).counts, cell.database_bits())


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


def cell_curves(cell: Cell, cutoffs: tuple[int, ...], view: View = DEFAULT_VIEW) -> dict[str, np.ndarray]:
    """PR curve by Hamming radius and P@k at ``cutoffs`` (those within the database)."""
    ks = tuple(k for k in cutoffs if k <= len(judged_items(cell, view)[1]))
    counts = evaluate_cell(cell, (), curve_cutoffs=ks, view=view).counts
    precision, recall = pr_by_radius(counts)
    return {"precision": precision, "recall": recall, "ks": np.array(ks), "p_at_k": precision_curve(counts, ks)}
