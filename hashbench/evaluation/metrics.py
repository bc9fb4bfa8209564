"""The metric table: every metric family is one entry of :data:`METRICS`, the one place its name is defined.

An entry (:class:`MetricFamily`) holds the family's name pattern (``map@K``, ``p@rR``), from which both the
regex that recognises its names and the list of valid forms in error messages are derived; the per-query
function of the ranking counts (:class:`~hashbench.evaluation.ranking.RankCounts`) and the parsed
parameters; what the ranking pass must count for it; and a one-line help. :func:`parse_metric` looks a
name up in the table. The definitions, with formulas, are in docs/metrics.md.

Adding a metric is appending one entry, e.g. miss@K, 1 when no relevant item is in the top K::

    def miss_at(counts, k):
        return (counts.hits[:, counts.at(k)] == 0).astype(float)

    METRICS.append(MetricFamily("miss@K", miss_at, "K", "1 when no relevant item is in the top K"))
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache, partial
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the names are read without the compiled ranking (the command line's defaults)
    from hashbench.evaluation.ranking import RankCounts

DEFAULT_METRICS = ("map@1", "map@1-tie", "map@10", "map@all", "map@tie")  # what run and leaderboard show unless told
TIE_METRICS = ("map@tie", "map@tie-best", "map@tie-worst")
# every cell stores these per query:
STORED_METRICS = ("map@1", "map@1-tie", "map@10", "map@100", "map@all", *TIE_METRICS, "p@10", "p@r2")

AP_NORMALISATIONS = ("found", "min", "all")  # AP@k over the relevant found in the top k, min(R, k), or all R
EMPTY_QUERIES = {"zero": 0.0, "drop": float("nan")}  # a query whose score has nothing to divide by: 0, or left out
CONVENTIONS = {"normalise": AP_NORMALISATIONS, "empty": tuple(EMPTY_QUERIES)}  # keyword -> its valid values
DEFAULT_CONVENTIONS = {"normalise": "found", "empty": "zero"}

PLACEHOLDERS = {"K": ("k", 1), "R": ("radius", 0)}  # in a pattern: (keyword of the per-query function, least value)
WHOLE_RANKING = "all"  # a family's cutoff when it needs the whole ranking counted


# --- per-query functions of the ranking counts -----------------------------------------


@lru_cache(maxsize=4)
def harmonic(n: int) -> np.ndarray:
    """H[0..n], H[i] = 1 + 1/2 + ... + 1/i."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])


def ratio(numerator, denominator, empty: float = 0.0) -> np.ndarray:
    """numerator / denominator, ``empty`` where the denominator is 0: by default a query with nothing to count scores
    0, and counts; NaN leaves it out of the mean."""
    numerator = np.asarray(numerator, dtype=np.float64)
    out = np.full(np.broadcast_shapes(numerator.shape, np.shape(denominator)), empty)
    return np.divide(numerator, denominator, out=out, where=np.asarray(denominator) > 0)


def average_precision_at(
    counts: RankCounts, k: int | None, normalise: str = "found", empty: str = "zero"
) -> np.ndarray:
    """AP of the top k (None: the whole ranking), its sum of precisions over the relevant found there (the DAFH paper's
    and most hashing code's), over min(R, k), or over all R relevant items the ranking holds."""
    if not len(counts.cutoffs):  # an empty database: every cutoff was capped to 0
        return np.full(len(counts.hits), EMPTY_QUERIES[empty])
    column = counts.at(counts.n_database if k is None else k)
    relevant = counts.relevant_counts.sum(axis=1)
    denominator = {
        "found": counts.hits[:, column],
        "min": relevant if k is None else np.minimum(relevant, k),
        "all": relevant,
    }[normalise]
    return ratio(counts.precision_sums[:, column], denominator, EMPTY_QUERIES[empty])


def precision_at(counts: RankCounts, k: int | None) -> np.ndarray:
    if not len(counts.cutoffs):  # an empty database
        return np.zeros(len(counts.hits))
    column = counts.at(counts.n_database if k is None else k)
    return ratio(counts.hits[:, column], counts.ranked if k is None else np.minimum(k, counts.ranked))


def expected_precision_at(counts: RankCounts, k: int) -> np.ndarray:
    """P@k expected over all orders within each tie group, from the histograms alone.

    Each group has as many items in the top k as fit after the N items before it (all of its n, none, or
    k - N for the group straddling k), and in expectation r / n of them are relevant.
    """
    k = np.minimum(k, counts.ranked)  # per query: a query that leaves items out ranks fewer
    n, r = counts.distance_counts, counts.relevant_counts
    in_top = np.clip(k[:, None] - counts.items_before, 0, n)
    return ratio(ratio(r * in_top, n).sum(axis=1), k)


def tie_aware_average_precision(counts: RankCounts, order: str = "expected", empty: str = "zero") -> np.ndarray:
    """AP over the whole ranking with each tie group in expected, best or worst order; closed forms per group.

    A group of n items, r relevant, after N items of which R relevant. Expected (McSherry & Najork 2008):
    (r / n) * sum_{t=1..n} (R + 1 + (t-1)(r-1)/(n-1)) / (N + t). Best: sum_{t=1..r} (R + t) / (N + t).
    Worst: sum_{t=1..r} (R + t) / (N + n - r + t). Each sum is a difference of harmonic numbers.
    """
    n, r = counts.distance_counts, counts.relevant_counts
    before_n, before_r = counts.items_before, counts.relevant_before
    H = harmonic(counts.n_database)
    if order == "expected":
        slope = ratio(r - 1, n - 1)  # 0 for a group of one
        inner = n * slope + (before_r + 1 - slope * (1 + before_n)) * (H[before_n + n] - H[before_n])
        groups = ratio(r * inner, n)
    elif order == "best":
        groups = r + (before_r - before_n) * (H[before_n + r] - H[before_n])
    elif order == "worst":
        groups = r + (before_r - before_n - n + r) * (H[before_n + n] - H[before_n + n - r])
    else:
        raise ValueError(f"order must be expected, best or worst, not {order!r}")
    return ratio(groups.sum(axis=1), r.sum(axis=1), EMPTY_QUERIES[empty])


def precision_within_radius(counts: RankCounts, radius: int) -> np.ndarray:
    inside = slice(0, radius + 1)
    return ratio(counts.relevant_counts[:, inside].sum(axis=1), counts.distance_counts[:, inside].sum(axis=1))


def hit_at(counts: RankCounts, k: int) -> np.ndarray:
    if not len(counts.cutoffs):  # an empty database
        return np.zeros(len(counts.hits))
    return (counts.hits[:, counts.at(k)] > 0).astype(np.float64)


def majority_vote_at(counts: RankCounts, k: int) -> np.ndarray:
    """1 when the label most frequent in the top k is one of the query's; a tie goes to the label met nearest the top."""
    labels = counts.top_labels[:, :k]
    votes = labels.sum(axis=1)
    first = labels.argmax(axis=1)  # the place of each label's first item (where it has one)
    score = np.where(votes > 0, votes * (k + 1) + (k - first), 0)
    winner = score.argmax(axis=1)
    rows = np.arange(len(winner))
    return (counts.query_classes[rows, winner] & (votes[rows, winner] > 0)).astype(np.float64)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_at(counts: RankCounts, k: int, empty: str = "zero") -> np.ndarray:
    """DCG of the top k, gain 2^grade - 1 and discount 1 / log2(place + 1), over that of the best ranking."""
    gains, ideal = 2.0 ** counts.top_grades[:, :k] - 1, 2.0 ** counts.ideal_grades[:, :k] - 1
    discounts = _discounts(gains.shape[1])
    return ratio(gains @ discounts, ideal @ discounts, EMPTY_QUERIES[empty])


def acg_at(counts: RankCounts, k: int) -> np.ndarray:
    """Mean grade of the top k (of the whole ranking where it is shorter)."""
    return ratio(counts.top_grades[:, :k].sum(axis=1), np.minimum(k, counts.ranked))


def weighted_average_precision_at(counts: RankCounts, k: int, empty: str = "zero") -> np.ndarray:
    """AP with ACG for precision: the mean, over the places of the top k holding a relevant item (grade > 0), of
    the ACG up to that place."""
    grades = counts.top_grades[:, :k]
    acg = np.cumsum(grades, axis=1) / np.arange(1, grades.shape[1] + 1)
    relevant = grades > 0
    return ratio((acg * relevant).sum(axis=1), relevant.sum(axis=1), EMPTY_QUERIES[empty])


# --- the table -------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricFamily:
    """One entry of the metric table: a name pattern and everything the evaluator needs to compute its names."""

    pattern: str  # lower-case literal text and placeholders (PLACEHOLDERS): "map@K" names map@1, map@10, ...
    per_query: Callable[..., np.ndarray]  # (counts, **parameters by their keywords) -> one value per query
    cutoff: str | None  # what the pass counts: the top K (a placeholder), WHOLE_RANKING, or None (histograms suffice)
    help: str  # one line, shown beside the pattern where the valid forms are listed
    refuse: Callable[..., str | None] | None = None  # (**parameters) -> why these values are refused, None if not
    conventions: tuple[str, ...] = ()  # keywords of CONVENTIONS the per-query function takes (AP normalisation, ...)
    reads_top: bool = False  # reads the first K items themselves (their labels, their grades), not only counts

    def __post_init__(self):
        placeholders = [letter for letter in self.pattern if letter.isupper()]
        unknown = [letter for letter in placeholders if letter not in PLACEHOLDERS]
        if unknown:
            raise ValueError(f"{self.pattern}: placeholders are {', '.join(PLACEHOLDERS)}, not {', '.join(unknown)}")
        if self.cutoff not in (None, WHOLE_RANKING, *placeholders):
            raise ValueError(f"{self.pattern}: cutoff must be a placeholder of the pattern, {WHOLE_RANKING!r} or None")

    @cached_property
    def regex(self) -> re.Pattern:
        """The pattern with each placeholder a named group of digits, the rest literal."""
        pieces = re.split("([A-Z])", self.pattern)
        parts = (rf"(?P<{PLACEHOLDERS[p][0]}>\d+)" if p in PLACEHOLDERS else re.escape(p) for p in pieces)
        return re.compile("".join(parts))


def _refuse_k_over_1(k: int) -> str | None:
    if k > 1:
        return f"the expected MAP@k over tie orders has no closed form for k > 1; use p@{k}-tie or map@tie"
    return None


AP = ("normalise", "empty")
METRICS: list[MetricFamily] = [
    MetricFamily("map@K", average_precision_at, "K", "AP of the top K", conventions=AP),
    MetricFamily("map@all", partial(average_precision_at, k=None), WHOLE_RANKING, "AP of the whole ranking", None, AP),
    MetricFamily("p@K", precision_at, "K", "precision of the top K"),
    MetricFamily("p@all", partial(precision_at, k=None), WHOLE_RANKING, "precision of the whole ranking"),
    MetricFamily("p@K-tie", expected_precision_at, None, "P@K expected over tie orders"),
    MetricFamily("map@K-tie", expected_precision_at, None, "expected MAP@1 over tie orders: K = 1", _refuse_k_over_1),
    *(
        MetricFamily(name, partial(tie_aware_average_precision, order=order), None, text, conventions=("empty",))
        for name, order, text in (
            ("map@tie", "expected", "AP, mean over tie orders"),
            ("map@tie-best", "best", "AP, best tie order"),
            ("map@tie-worst", "worst", "AP, worst tie order"),
        )
    ),
    MetricFamily("p@rR", precision_within_radius, None, "precision within Hamming radius R"),
    MetricFamily("hit@K", hit_at, "K", "1 when a relevant item is in the top K"),
    MetricFamily("acc@K", majority_vote_at, "K", "1 when the top K's majority label is the query's", reads_top=True),
    MetricFamily("ndcg@K", ndcg_at, "K", "normalised DCG of graded relevance", None, ("empty",), True),
    MetricFamily("acg@K", acg_at, "K", "mean relevance grade of the top K", reads_top=True),
    MetricFamily("wmap@K", weighted_average_precision_at, "K", "AP weighted by ACG", None, ("empty",), True),
]


@dataclass(frozen=True)
class Metric:
    """A per-query metric and what the ranking pass must count for it."""

    name: str
    per_query: Callable[[RankCounts], np.ndarray]
    cutoff: int | None = None  # a rank cutoff the stable pass tracks; None for none
    needs_all: bool = False  # tracks the whole ranking (cutoff = database size)
    top: int = 0  # how many of the first-ranked items it reads
    radius: bool = False  # counts the items within a Hamming radius: a float ranking has none


def valid_forms() -> str:
    """The table's patterns with their help, for messages."""
    return ", ".join(f"{family.pattern} ({family.help})" for family in METRICS)


def check_conventions(conventions: dict[str, str]) -> dict[str, str]:
    """The conventions, each checked against its valid values (ValueError naming them); defaults filled in."""
    for keyword, value in conventions.items():
        if keyword not in CONVENTIONS:
            raise ValueError(f"unknown convention {keyword!r}; valid: {', '.join(CONVENTIONS)}")
        if value not in CONVENTIONS[keyword]:
            raise ValueError(f"{keyword} {value!r} is not valid; valid: {', '.join(CONVENTIONS[keyword])}")
    return {**DEFAULT_CONVENTIONS, **conventions}


def parse_metric(name: str, **conventions: str) -> Metric:
    """A metric by name, from the first table entry whose pattern matches; unknown names raise with the valid forms.
    ``conventions`` (:data:`CONVENTIONS`) reach the families that take them."""
    for family in METRICS:
        match = family.regex.fullmatch(name.lower())
        if match:
            break
    else:
        raise ValueError(f"unknown metric {name!r}; valid: {valid_forms()}")
    name = name.lower()
    parameters = {keyword: int(value) for keyword, value in match.groupdict().items()}
    for keyword, least in PLACEHOLDERS.values():
        if parameters.get(keyword, least) < least:
            raise ValueError(f"{name}: {keyword} must be at least {least}")
    refusal = family.refuse and family.refuse(**parameters)
    if refusal:
        raise ValueError(f"{name}: {refusal}")
    cutoff = parameters[PLACEHOLDERS[family.cutoff][0]] if family.cutoff in PLACEHOLDERS else None
    chosen = check_conventions(conventions)
    per_query = partial(family.per_query, **parameters, **{keyword: chosen[keyword] for keyword in family.conventions})
    top = cutoff if family.reads_top else 0
    return Metric(
        name,
        per_query,
        cutoff=cutoff,
        needs_all=family.cutoff == WHOLE_RANKING,
        top=top,
        radius=PLACEHOLDERS["R"][0] in parameters,
    )
