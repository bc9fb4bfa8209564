"""How a stored cell's codes are judged: what a query's ranking leaves out, whether slices or cases are retrieved,
what makes an item relevant and how much, and the mAP conventions of other codebases.

A :class:`View` is parsed once from the user's options (every value checked, with the fix in the message) and
handed to everything that evaluates, tabulates or compares; its :meth:`View.caption` is how a table says which
view it shows. The default view is the slice-level, label-relevance ranking every cell is evaluated with when it
finishes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hashbench.evaluation.metrics import AP_NORMALISATIONS, EMPTY_QUERIES
from hashbench.store.results import ATTRIBUTES, GROUP_LEVELS

NO_EXCLUSION = "none"
EXCLUSIONS = (NO_EXCLUSION, *(f"same-{level}" for level in GROUP_LEVELS))  # what a query's ranking may leave out
SLICE = "slice"
LEVELS = (SLICE, "series", "study", "patient")  # what a query and a database item are, finest first
CASE_CODES = ("vote", "mean")  # a case's code: each bit's majority over its slices, or the sign of their mean code
CASE_DISTANCES = ("code", "min")  # between cases: Hamming of their codes, or of their closest pair of slices
HAMMING = "hamming"
RANKINGS = (HAMMING, "cosine", "euclidean")  # the binary codes, or the continuous codes before binarisation
LABEL = "label"
RELEVANCE_ATTRIBUTES = (LABEL, *GROUP_LEVELS, *ATTRIBUTES)  # what graded relevance may count
NORMALISATION_TEXT = {
    "found": "",
    "min": "AP@k normalised by min(R, k)",
    "all": "AP@k normalised by all relevant items",
}


def _refuse(option: str, value: str, valid) -> None:
    raise ValueError(f"{option} {value!r} is not valid; valid: {', '.join(valid)}")


def parse_relevance(text: str) -> tuple[tuple[str, float], ...]:
    """'label,modality' or 'label=2,body_part=1' as ((attribute, weight), ...); '' for the label alone."""
    pairs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in RELEVANCE_ATTRIBUTES:
            _refuse("--relevance attribute", name, RELEVANCE_ATTRIBUTES)
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--relevance {part!r}: the weight must be a number, e.g. {name}=2") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"--relevance {part!r}: a weight must be a positive finite number; leave the attribute out instead"
            )
        pairs.append((name, value))
    if len({name for name, _ in pairs}) < len(pairs):
        raise ValueError(f"--relevance {text!r} names an attribute twice; name each once")
    return tuple(pairs)


@dataclass(frozen=True)
class View:
    """One way of judging stored codes; hashable, so it keys caches."""

    exclude: str = NO_EXCLUSION
    level: str = SLICE
    case_code: str = "vote"
    case_distance: str = "code"
    relevance: tuple[tuple[str, float], ...] = ()  # () : a shared label is grade 1
    normalise: str = "found"
    empty: str = "zero"
    ranking: str = HAMMING

    def __post_init__(self):
        for option, value, valid in (
            ("--exclude", self.exclude, EXCLUSIONS),
            ("--level", self.level, LEVELS),
            ("--case-code", self.case_code, CASE_CODES),
            ("--case-distance", self.case_distance, CASE_DISTANCES),
            ("--ap-norm", self.normalise, AP_NORMALISATIONS),
            ("--empty-queries", self.empty, tuple(EMPTY_QUERIES)),
            ("--ranking", self.ranking, RANKINGS),
        ):
            if value not in valid:
                _refuse(option, value, valid)
        if self.case_distance != "code" and self.ranking != HAMMING:
            raise ValueError(
                f"--case-distance {self.case_distance} counts bits between slices; with --ranking {self.ranking} "
                "drop it (a case's continuous code is its slices' mean)"
            )
        if self.case_distance != "code" and self.level == SLICE:
            raise ValueError(
                f"--case-distance {self.case_distance} compares cases: add --level series, study or patient"
            )
        if self.exclude != NO_EXCLUSION:
            left_out = self.exclude.removeprefix("same-")
            if LEVELS.index(left_out) < LEVELS.index(self.level):
                raise ValueError(
                    f"--exclude {self.exclude} at --level {self.level}: a {self.level} holds several of its "
                    f"{left_out} ids; leave out the same {self.level} or a coarser group "
                    f"({', '.join(f'same-{lvl}' for lvl in LEVELS[LEVELS.index(self.level) :] if lvl != SLICE)})"
                )

    @classmethod
    def from_options(
        cls,
        exclude: str = NO_EXCLUSION,
        level: str = SLICE,
        case_code: str = "vote",
        case_distance: str = "code",
        relevance: str = "",
        normalise: str = "found",
        empty: str = "zero",
        ranking: str = HAMMING,
    ) -> View:
        """The view the command-line options name; ValueError naming a bad value and the valid ones."""
        return cls(exclude, level, case_code, case_distance, parse_relevance(relevance), normalise, empty, ranking)

    @property
    def conventions(self) -> dict[str, str]:
        return {"normalise": self.normalise, "empty": self.empty}

    @property
    def is_default(self) -> bool:
        return self == View()

    def caption(self) -> str:
        """'' for the default view; else '; ' and what differs, as a caption says it."""
        parts = []
        if self.ranking != HAMMING:
            parts.append(
                f"ranked by the {self.ranking} distance of the continuous codes, before binarisation (what the codes "
                "would score as floats)"
            )
        if self.level != SLICE:
            if self.ranking != HAMMING:
                ranked = f"a {self.level}'s continuous code is its slices' mean"
            elif self.case_distance == "min":
                ranked = f"ranked by the closest pair of slices of two {self.level}s"
            else:
                code = (
                    "each bit's majority vote" if self.case_code == "vote" else "the sign of the mean continuous code"
                )
                ranked = f"a {self.level}'s code is {code} over its slices"
            parts.append(
                f"{self.level}-level retrieval (queries and database items are {self.level}s; {ranked}; its labels are "
                "its slices')"
            )
        if self.exclude != NO_EXCLUSION:
            parts.append(f"each query's own {self.exclude.removeprefix('same-')} left out of its ranking")
        if self.relevance:
            grades = " + ".join(f"{weight:g} x same {name}" for name, weight in self.relevance)
            parts.append(f"graded relevance for nDCG/ACG/wMAP: {grades}")
        if NORMALISATION_TEXT[self.normalise]:
            parts.append(NORMALISATION_TEXT[self.normalise])
        if self.empty == "drop":
            parts.append("queries with nothing relevant to normalise by are dropped from AP and nDCG means")
        return "".join(f"; {part}" for part in parts)
