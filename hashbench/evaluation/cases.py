"""The items of one side as the evaluator ranks them, and cases (series, studies, patients) built from slices.

Clinicians retrieve cases, not slices. A case's code is each bit's majority over its slices (a tie gives 1, as
sign(0) = +1 does) or the sign of its slices' mean continuous code; its labels are every label of its slices (so
cases may be multi-label: relevant when they share one); its patient, study and series are its slices' where they
agree (-1 where they do not); an attribute is its slices' most frequent value. Slices without an id at the level
are cases of their own.

Cases are ranked by the Hamming distance between their codes, or (``nearest_slices``) by the set distance of the
closest pair of slices, one of each case: a case is near when any of its slices is, as when a radiologist recognises a
lesion seen on one slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hashbench.store.results import GROUP_LEVELS


@dataclass(frozen=True)
class Items:
    """One side: packed codes, labels (class ids or multi-hot rows), (n, 3) patient/study/series ids, (n, A) attributes."""

    codes: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    attributes: np.ndarray
    embeddings: np.ndarray | None = None  # the continuous codes, where stored

    def __len__(self) -> int:
        return len(self.codes)


def case_of(groups: np.ndarray, level: str) -> np.ndarray:
    """(n,) case number of each slice: its id at ``level``, or a case of its own where it has none."""
    ids = groups[:, GROUP_LEVELS.index(level)]
    own = np.where(ids >= 0, ids, -1 - np.arange(len(ids)))  # a distinct negative id per slice without one
    return np.unique(own, return_inverse=True)[1].reshape(-1)


def _reduce(values: np.ndarray, order: np.ndarray, starts: np.ndarray, function) -> np.ndarray:
    return function.reduceat(values[order], starts, axis=0) if len(values) else values[:0]


def aggregate(items: Items, level: str, n_bits: int, n_classes: int, case_code: str = "vote") -> Items:
    """The cases of ``items`` at ``level`` (series, study, patient), in order of their ids."""
    case = case_of(items.groups, level)
    order = np.argsort(case, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(case[order]) != 0]) if len(case) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(case)])
    if case_code == "mean":
        if items.embeddings is None:
            raise ValueError(
                "--case-code mean needs the slices' continuous codes, which this cell did not store: "
                "use --case-code vote, or run the cell again with --force"
            )
        bits = _summed_embeddings(items, order, starts) >= 0
    else:
        slice_bits = np.unpackbits(items.codes, axis=1)[:, :n_bits].astype(np.int64)
        bits = 2 * _reduce(slice_bits, order, starts, np.add) >= sizes[:, None]
    hot = items.labels.astype(bool) if items.labels.ndim == 2 else np.eye(n_classes, dtype=bool)[items.labels]
    labels = _reduce(hot, order, starts, np.logical_or).astype(np.uint8)
    low, high = _reduce(items.groups, order, starts, np.minimum), _reduce(items.groups, order, starts, np.maximum)
    groups = np.where(low == high, low, -1)
    embeddings = None if items.embeddings is None else _summed_embeddings(items, order, starts) / sizes[:, None]
    return Items(
        np.packbits(bits, axis=1), labels, groups, _most_frequent(items.attributes, case, len(starts)), embeddings
    )


def _summed_embeddings(items: Items, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each case's sum of its slices' continuous codes, in float64."""
    return _reduce(items.embeddings.astype(np.float64), order, starts, np.add)


PAIR_SCRATCH = 1 << 24  # bound on query slices x database slices held at once


def nearest_slices(query: Items, database: Items, level: str, n_bits: int) -> np.ndarray:
    """(query cases, database cases) int64: the smallest Hamming distance between a slice of one and a slice of the
    other, cases in the order :func:`aggregate` gives them."""
    query_case, database_case = case_of(query.groups, level), case_of(database.groups, level)
    n_query_cases = int(query_case.max(initial=-1)) + 1
    order = np.argsort(database_case, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(database_case[order]) != 0]) if len(order) else np.zeros(0, np.int64)
    nearest = np.full((n_query_cases, len(starts)), n_bits, np.int64)
    if not len(order):
        return nearest
    database_codes = database.codes[order]
    chunk = max(1, PAIR_SCRATCH // max(len(order), 1))
    for start in range(0, len(query), chunk):
        codes = query.codes[start : start + chunk]
        pairs = np.bitwise_count(codes[:, None, :] ^ database_codes[None, :, :]).sum(axis=2, dtype=np.int64)
        np.minimum.at(nearest, query_case[start : start + chunk], np.minimum.reduceat(pairs, starts, axis=1))
    return nearest


def _most_frequent(attributes: np.ndarray, case: np.ndarray, n_cases: int) -> np.ndarray:
    """(cases, A): each attribute's most frequent value in each case (ties: the value sorted first)."""
    columns = []
    for column in attributes.T:
        values, value_of = np.unique(column, return_inverse=True)
        tally = np.zeros((n_cases, len(values)), np.int64)
        np.add.at(tally, (case, value_of.reshape(-1)), 1)
        columns.append(values[tally.argmax(axis=1)] if len(values) else np.full(n_cases, ""))
    return np.stack(columns, axis=1) if columns else np.zeros((n_cases, 0), str)
