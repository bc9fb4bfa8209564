"""Cases (series, studies, patients) built from slices, against plain Python, and evaluated as the evaluator ranks them."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from hashbench.evaluation.cases import Items, aggregate, nearest_slices
from hashbench.evaluation.evaluate import evaluate_packed
from hashbench.evaluation.view import View


def slices(seed, n=60, bits=7, classes=3):
    """Slices of 6 patients, 2 studies each, 2 series per study; some series without an id; attributes per slice."""
    rng = np.random.default_rng(seed)
    patient = rng.integers(0, 6, n)
    study = patient * 2 + rng.integers(0, 2, n)
    series = study * 2 + rng.integers(0, 2, n)
    series[:3] = -1  # unknown: each such slice is a case of its own
    codes = rng.random((n, bits)) < 0.5
    embeddings = rng.normal(size=(n, bits)).astype(np.float16)
    attributes = np.stack([rng.choice(["CT", "MR", ""], n), rng.choice(["CHEST", "HEAD"], n)], axis=1)
    return Items(
        np.packbits(codes, axis=1),
        rng.integers(0, classes, n),
        np.stack([patient, study, series], axis=1),
        attributes,
        embeddings,
    ), codes


def reference_cases(items, bits, level, case_code, classes=3):
    """Plain Python: each case's code, label set, agreed groups and most frequent attributes, in order of case id."""
    column = {"patient": 0, "study": 1, "series": 2}[level]
    ids = [int(g) if g >= 0 else -1 - i for i, g in enumerate(items.groups[:, column])]
    cases = []
    for case in sorted(set(ids)):
        members = [i for i, x in enumerate(ids) if x == case]
        if case_code == "vote":
            code = [2 * sum(int(bits[i][b]) for i in members) >= len(members) for b in range(bits.shape[1])]
        else:
            code = [sum(float(items.embeddings[i][b]) for i in members) >= 0 for b in range(bits.shape[1])]
        labels = [int(any(items.labels[i] == c for i in members)) for c in range(classes)]
        groups = [
            int(items.groups[members[0], g]) if len({int(items.groups[i, g]) for i in members}) == 1 else -1
            for g in range(3)
        ]
        attributes = []
        for a in range(items.attributes.shape[1]):
            tally = Counter(str(items.attributes[i, a]) for i in members)
            attributes.append(min(tally, key=lambda v: (-tally[v], v)))
        cases.append((code, labels, groups, attributes))
    return cases


@pytest.mark.parametrize("level", ["series", "study", "patient"])
@pytest.mark.parametrize("case_code", ["vote", "mean"])
def test_cases_match_plain_python(level, case_code):
    items, bits = slices(1)
    cases = aggregate(items, level, bits.shape[1], 3, case_code)
    expected = reference_cases(items, bits, level, case_code)
    assert len(cases) == len(expected)
    unpacked = np.unpackbits(cases.codes, axis=1)[:, : bits.shape[1]].astype(bool)
    for row, (code, labels, groups, attributes) in enumerate(expected):
        assert unpacked[row].tolist() == code
        assert cases.labels[row].tolist() == labels
        assert cases.groups[row].tolist() == groups
        assert cases.attributes[row].tolist() == attributes


def test_a_tie_in_the_vote_gives_one_as_the_sign_of_zero_does():
    items = Items(
        np.packbits(np.array([[1, 0], [0, 0]], bool), axis=1),
        np.array([0, 0]),
        np.array([[0, 0, 0], [0, 0, 0]]),
        np.zeros((2, 0), str),
    )
    cases = aggregate(items, "patient", 2, 1)
    assert np.unpackbits(cases.codes, axis=1)[0, :2].tolist() == [1, 0]


def test_case_level_ranking_is_the_ranking_of_the_case_codes_with_multi_label_cases():
    """Two patients that share a class are relevant to each other even when their other classes differ."""
    query, bits = slices(2)
    database, _ = slices(3, n=90)
    cases_q, cases_d = aggregate(query, "patient", 7, 3), aggregate(database, "patient", 7, 3)
    result = evaluate_packed(cases_q.codes, cases_q.labels, cases_d.codes, cases_d.labels, 7, ("p@all",))
    shares = (cases_q.labels.astype(int) @ cases_d.labels.T.astype(int)) > 0
    np.testing.assert_allclose(result.per_query["p@all"], shares.mean(axis=1))


def test_mean_case_code_without_stored_embeddings_says_how_to_get_them():
    items, _ = slices(0)
    older = Items(items.codes, items.labels, items.groups, items.attributes)
    with pytest.raises(ValueError, match="--case-code vote"):
        aggregate(older, "series", 7, 3, "mean")


def test_the_view_caption_names_what_differs_from_the_default():
    assert View().caption() == ""
    text = View("same-patient", "series", relevance=(("label", 2.0), ("modality", 1.0)), normalise="all").caption()
    for part in (
        "series-level retrieval",
        "own patient left out",
        "2 x same label + 1 x same modality",
        "all relevant",
    ):
        assert part in text
    assert "dropped" in View(empty="drop").caption()


@pytest.mark.parametrize("level", ["series", "patient"])
def test_nearest_slices_is_the_closest_pair_of_slices_of_two_cases(level):
    query, query_bits = slices(4)
    database, database_bits = slices(5, n=80)
    distances = nearest_slices(query, database, level, 7)
    column = {"patient": 0, "series": 2}[level]

    def case_members(items):
        ids = [int(g) if g >= 0 else -1 - i for i, g in enumerate(items.groups[:, column])]
        return [[i for i, x in enumerate(ids) if x == case] for case in sorted(set(ids))]

    for a, query_members in enumerate(case_members(query)):
        for b, database_members in enumerate(case_members(database)):
            closest = min(
                int((query_bits[i] != database_bits[j]).sum()) for i in query_members for j in database_members
            )
            assert distances[a, b] == closest


def test_ranking_by_given_distances_is_the_ranking_by_those_distances():
    """Given the codes' own Hamming distances, the distance path ranks exactly as the code path does."""
    query, query_bits = slices(6)
    database, database_bits = slices(7, n=90)
    hamming = (query_bits[:, None, :] != database_bits[None, :, :]).sum(axis=2)
    metrics = ("map@10", "map@all", "p@5", "acc@5", "ndcg@10", "map@tie", "p@r2")
    for tie_break in ("index", "random"):
        options = {"tie_break": tie_break, "query_groups": query.groups[:, 0], "database_groups": database.groups[:, 0]}
        by_codes = evaluate_packed(query.codes, query.labels, database.codes, database.labels, 7, metrics, **options)
        by_distances = evaluate_packed(
            query.codes, query.labels, database.codes, database.labels, 7, metrics, distances=hamming, **options
        )
        for name in metrics:
            np.testing.assert_allclose(by_distances.per_query[name], by_codes.per_query[name], atol=1e-12)


def test_nearest_slice_distance_needs_cases():
    with pytest.raises(ValueError, match="add --level"):
        View(case_distance="min")
    assert "closest pair of slices" in View(level="series", case_distance="min").caption()
