"""Uncertainty of leaderboard numbers: bootstrap intervals over queries, paired tests between methods.

A cell's score is a mean over queries (and over seeds where there are several). Two
sources of noise matter: which queries happen to be in the test side (the bootstrap
and the paired randomisation test resample or relabel queries), and which seed
trained the network (a Welch t-test on the per-seed means; with short training it
is usually the larger of the two). Every function is seeded, so tables are
reproducible to the last digit.

Queries that are slices of patients are not independent: a patient's slices look alike and score alike. Given each
query's patient (``clusters``), the bootstrap resamples patients and the randomisation test flips the sign of a
whole patient's differences, so the intervals are as wide as the number of patients warrants. A query dropped by the
view (NaN) is left out of every mean.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from hashbench.evaluation.stored import DEFAULT_VIEW, cell_per_query, query_clusters
from hashbench.evaluation.view import View

ROUNDS = 2000
BATCH = 256  # resampling rounds per vectorised step: bounds memory at BATCH x queries


def _per_query(per_seed: np.ndarray) -> np.ndarray:
    """(seeds, queries) -> one value per query: the mean over the seeds that count it (NaN where none does)."""
    per_seed = np.atleast_2d(np.asarray(per_seed, dtype=np.float64))
    counted = (~np.isnan(per_seed)).sum(axis=0)
    totals = np.nansum(per_seed, axis=0)
    return np.divide(totals, counted, out=np.full(per_seed.shape[1], np.nan), where=counted > 0)


def _cluster_sums(values: np.ndarray, clusters: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster (each query its own without clusters): the sum of the counted values and how many were counted."""
    counted = ~np.isnan(values)
    if clusters is None:
        return np.where(counted, values, 0.0), counted.astype(np.float64)
    n_clusters = int(clusters.max()) + 1 if len(clusters) else 0
    sums = np.bincount(clusters, weights=np.where(counted, values, 0.0), minlength=n_clusters)
    sizes = np.bincount(clusters, weights=counted.astype(np.float64), minlength=n_clusters)
    return sums[sizes > 0], sizes[sizes > 0]  # a patient with nothing counted is not a patient of the sample


def bootstrap_interval(
    per_seed: np.ndarray,
    level: float = 0.95,
    rounds: int = ROUNDS,
    seed: int = 0,
    clusters: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile interval of the cell's mean when the queries (with ``clusters``, each query's patient number: the
    patients) are resampled with replacement."""
    sums, sizes = _cluster_sums(_per_query(per_seed), clusters)
    if sizes.sum() == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, rounds, BATCH):
        drawn = rng.integers(0, len(sums), (min(BATCH, rounds - start), len(sums)))
        counted = sizes[drawn].sum(axis=1)
        means.append(np.divide(sums[drawn].sum(axis=1), counted, out=np.full(len(drawn), np.nan), where=counted > 0))
    tail = (1 - level) / 2
    low, high = np.nanquantile(np.concatenate(means), [tail, 1 - tail])
    return float(low), float(high)


@dataclass
class Comparison:
    """A minus B on the same queries."""

    difference: float
    interval: tuple[float, float]  # paired bootstrap, 95 %
    p_queries: float  # paired randomisation (sign-flip) test on per-query differences
    p_seeds: float | None  # Welch t-test on per-seed means; None with fewer than two seeds a side
    n_queries: int  # counted: a query either side drops is not
    seeds: tuple[int, int]
    patients: int | None = None  # the clusters resampled, where queries share patients


def compare(
    a: np.ndarray, b: np.ndarray, rounds: int = 10_000, seed: int = 0, clusters: np.ndarray | None = None
) -> Comparison:
    """Paired comparison of per-query values ``a`` and ``b``, each (seeds, queries) over the same queries; with
    ``clusters`` (each query's patient number) patients are resampled and sign-flipped whole. A query either side
    drops is left out."""
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"the two sides have {a.shape[1]} and {b.shape[1]} queries: compare cells on the same dataset and split"
        )
    differences = _per_query(a) - _per_query(b)
    sums, sizes = _cluster_sums(differences, clusters)
    n_counted = sizes.sum()
    observed = sums.sum() / n_counted if n_counted else float("nan")
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, rounds, BATCH):
        signs = rng.choice(np.array([-1.0, 1.0]), (min(BATCH, rounds - start), len(sums)))
        extreme += int((np.abs(signs @ sums / max(n_counted, 1)) >= abs(observed) - 1e-12).sum())
    p_seeds = None
    if len(a) >= 2 and len(b) >= 2:
        from scipy.stats import ttest_ind

        a_means, b_means = np.nanmean(a, axis=1), np.nanmean(b, axis=1)
        with warnings.catch_warnings():  # near-identical seeds: the t statistic is ill-conditioned, handled below
            warnings.simplefilter("ignore", RuntimeWarning)
            p_seeds = float(ttest_ind(a_means, b_means, equal_var=False).pvalue)
        if np.isnan(p_seeds):  # no spread on either side: the means are equal or they are not
            p_seeds = 1.0 if a_means.mean() == b_means.mean() else 0.0
    p_queries = (1 + extreme) / (1 + rounds) if n_counted else float("nan")  # no query counted: nothing tested
    return Comparison(
        float(observed),
        bootstrap_interval(differences, rounds=rounds, seed=seed, clusters=clusters),
        p_queries,
        p_seeds,
        int(n_counted),
        (len(a), len(b)),
        None if clusters is None else int((sizes > 0).sum()),
    )


@dataclass
class CellComparison:
    """One metric of ``compare_cells``: the two sides' means over the queries both count, and their paired
    comparison (so A - B is the difference of the means)."""

    metric: str
    mean_a: float
    mean_b: float
    result: Comparison


PROTOCOL_FIELDS = ("split", "run_backbone", "pretrained", "epochs", "image_size", "augment", "profile", "validation")


def compare_cells(
    a: list, b: list, metrics: tuple[str, ...], view: View = DEFAULT_VIEW
) -> tuple[list[CellComparison], list[str]]:
    """A minus B per metric, and warnings to print beside it; each side a list of finished cells (seeds), judged as
    ``view`` says; intervals and the randomisation test resample each query's patient where queries share patients.

    Raises ValueError when the cells are not of one data version and split (their queries and training sets
    differ, so a paired test would compare nothing). Warns where the protocols differ and where a side's
    codes have dead bits.
    """
    first = a[0].config
    for cell in (*a, *b):
        config = cell.config
        if (config.dataset, config.dataset_fingerprint, config.split_hash) != (
            first.dataset,
            first.dataset_fingerprint,
            first.split_hash,
        ):
            raise ValueError(
                f"{cell.directory} ran on {config.dataset} data version {config.dataset_fingerprint or 'unrecorded'}, split {config.split_hash or 'unrecorded'}; "
                f"{a[0].directory} on {first.dataset} data version {first.dataset_fingerprint or 'unrecorded'}, split {first.split_hash or 'unrecorded'}: "
                "compare cells of one data version and split"
            )
        if not np.array_equal(cell.query_ids(), a[0].query_ids()):
            raise ValueError(
                f"{cell.directory} was evaluated on other queries than {a[0].directory}: compare cells of one data version and split"
            )
    warnings = []
    for name in PROTOCOL_FIELDS:
        values = [sorted({str(getattr(cell.config, name)) for cell in side}) for side in (a, b)]
        if values[0] != values[1]:
            warnings.append(f"the sides differ in {name}: {', '.join(values[0])} vs {', '.join(values[1])}")
    for label, side in (("A", a), ("B", b)):
        notes = sorted({cell.collapse() for cell in side} - {""})
        if notes:
            warnings.append(
                f"{label} has degenerate codes ({'; '.join(notes)}): its scores are the tie order's as much as the "
                "model's"
            )
    rows = []
    clusters = query_clusters(a[0], view)
    for metric in metrics:
        values = [np.stack([cell_per_query(cell, metric, view) for cell in side]) for side in (a, b)]
        per_query = [_per_query(side) for side in values]
        both = ~np.isnan(per_query[0]) & ~np.isnan(per_query[1])  # the queries the difference is over
        means = [float(side[both].mean()) if both.any() else float("nan") for side in per_query]
        rows.append(CellComparison(metric, *means, compare(*values, clusters=clusters)))
    return rows, warnings
