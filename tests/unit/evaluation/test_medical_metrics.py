"""The medical retrieval metrics (majority vote, hit, graded relevance) and the mAP conventions, against plain Python."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hashbench.evaluation.evaluate import Grading, evaluate

MASK64 = 0xFFFFFFFFFFFFFFFF


def splitmix64_key(seed, position):
    z = (seed * 2**32 + position + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


TIE_KEYS = {"index": lambda i: i, "random": lambda i: (splitmix64_key(0, i), i)}


def label_set(labels, row):
    labels = np.asarray(labels)
    return set(np.flatnonzero(labels[row])) if labels.ndim == 2 else {int(labels[row])}


def ranking(q, query_bits, db_bits, query_groups, database_groups, tie_break):
    """The database items query q ranks (its own group's left out), by (distance, tie key)."""
    kept = [
        i
        for i in range(len(db_bits))
        if query_groups is None or query_groups[q] < 0 or database_groups[i] != query_groups[q]
    ]
    key = TIE_KEYS[tie_break]
    return sorted(kept, key=lambda i: (int((query_bits[q] != db_bits[i]).sum()), key(i)))


def grade(q, i, query_labels, db_labels, attributes, label_weight=1.0):
    query_attributes, database_attributes, weights = attributes
    value = label_weight * bool(label_set(query_labels, q) & label_set(db_labels, i))
    for a, weight in enumerate(weights):
        if query_attributes[q][a] >= 0 and query_attributes[q][a] == database_attributes[i][a]:
            value += weight
    return value


def majority_vote(q, top, query_labels, db_labels):
    """The label most frequent in ``top``; a tie goes to the label met first."""
    votes, first = {}, {}
    for place, i in enumerate(top):
        for label in sorted(label_set(db_labels, i)):
            votes[label] = votes.get(label, 0) + 1
            first.setdefault(label, place)
    if not votes:
        return 0.0
    winner = max(votes, key=lambda label: (votes[label], -first[label]))
    return float(winner in label_set(query_labels, q))


def dcg(grades):
    return sum((2**g - 1) / math.log2(place + 2) for place, g in enumerate(grades))


def reference(query_bits, query_labels, db_bits, db_labels, k, groups=(None, None), attributes=None, tie_break="index"):
    """Per query: hit@k, acc@k, ndcg@k, acg@k, wmap@k and map@k under each normalisation (None: nothing to divide)."""
    attributes = attributes or ([[]] * len(query_bits), [[]] * len(db_bits), [])
    rows = {name: [] for name in ("hit", "acc", "ndcg", "acg", "wmap", "found", "min", "all")}
    for q in range(len(query_bits)):
        order = ranking(q, query_bits, db_bits, *groups, tie_break)
        top = order[:k]
        relevant = [bool(label_set(query_labels, q) & label_set(db_labels, i)) for i in order]
        grades = [grade(q, i, query_labels, db_labels, attributes) for i in order]
        rows["hit"].append(float(any(relevant[:k])))
        rows["acc"].append(majority_vote(q, top, query_labels, db_labels))
        ideal = dcg(sorted(grades, reverse=True)[:k])
        rows["ndcg"].append(dcg(grades[:k]) / ideal if ideal else None)
        rows["acg"].append(sum(grades[:k]) / len(top) if top else 0.0)
        places = [p for p in range(len(top)) if grades[p] > 0]
        rows["wmap"].append(sum(sum(grades[: p + 1]) / (p + 1) for p in places) / len(places) if places else None)
        found, precision_sum = 0, 0.0
        for place, hit in enumerate(relevant[:k], start=1):
            if hit:
                found += 1
                precision_sum += found / place
        total = sum(relevant)
        for name, denominator in (("found", found), ("min", min(total, k)), ("all", total)):
            rows[name].append(precision_sum / denominator if denominator else None)
    return rows


def mean_of(values, empty):
    """The mean with a None scoring 0 ('zero') or left out ('drop')."""
    kept = [0.0 if v is None else v for v in values] if empty == "zero" else [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else float("nan")


def heavy_ties(seed, n_queries=25, n_items=40, bits=6, classes=3, multi_label=False):
    rng = np.random.default_rng(seed)
    if multi_label:
        query_labels = (rng.random((n_queries, classes)) < 0.4).astype(np.uint8)
        db_labels = (rng.random((n_items, classes)) < 0.4).astype(np.uint8)
    else:
        query_labels, db_labels = rng.integers(0, classes, n_queries), rng.integers(0, classes, n_items)
    return rng.random((n_queries, bits)) < 0.5, query_labels, rng.random((n_items, bits)) < 0.5, db_labels


def with_attributes(seed, n_queries, n_items):
    """Two attributes (4 and 3 values, some unknown) weighted 1 and 0.5."""
    rng = np.random.default_rng(seed + 50)
    query_keys = np.stack([rng.integers(-1, 4, n_queries), rng.integers(-1, 3, n_queries)], axis=1)
    database_keys = np.stack([rng.integers(-1, 4, n_items), rng.integers(-1, 3, n_items)], axis=1)
    return query_keys, database_keys, np.array([1.0, 0.5])


MEDICAL = ("hit@5", "acc@5", "ndcg@5", "acg@5", "wmap@5", "map@5")


@pytest.mark.parametrize("device", ["cpu", "torch:cpu"])
@pytest.mark.parametrize("tie_break", ["index", "random"])
@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_medical_metrics_match_brute_force_with_ties_groups_and_grades(device, tie_break, multi_label, seed):
    query_bits, query_labels, db_bits, db_labels = heavy_ties(seed, multi_label=multi_label)
    rng = np.random.default_rng(seed + 9)
    query_groups, database_groups = rng.integers(-1, 5, len(query_bits)), rng.integers(0, 5, len(db_bits))
    query_keys, database_keys, weights = with_attributes(seed, len(query_bits), len(db_bits))
    expected = reference(
        query_bits,
        query_labels,
        db_bits,
        db_labels,
        5,
        (query_groups, database_groups),
        (query_keys, database_keys, weights),
        tie_break,
    )
    for normalise in ("found", "min", "all"):
        for empty in ("zero", "drop"):
            result = evaluate(
                query_bits,
                query_labels,
                db_bits,
                db_labels,
                MEDICAL,
                tie_break=tie_break,
                device=device,
                query_groups=query_groups,
                database_groups=database_groups,
                grading=Grading(1.0, query_keys, database_keys, weights),
                normalise=normalise,
                empty=empty,
            )
            assert result.metrics["map@5"] == pytest.approx(mean_of(expected[normalise], empty), abs=1e-12)
            assert result.metrics["ndcg@5"] == pytest.approx(mean_of(expected["ndcg"], empty), abs=1e-12)
            assert result.metrics["wmap@5"] == pytest.approx(mean_of(expected["wmap"], empty), abs=1e-12)
            for name, key in (("hit@5", "hit"), ("acc@5", "acc"), ("acg@5", "acg")):
                assert result.metrics[name] == pytest.approx(np.mean(expected[key]), abs=1e-12)


def test_without_a_grading_a_shared_label_is_grade_one():
    query_bits, query_labels, db_bits, db_labels = heavy_ties(3)
    expected = reference(query_bits, query_labels, db_bits, db_labels, 10)
    result = evaluate(query_bits, query_labels, db_bits, db_labels, ("ndcg@10", "acg@10", "p@10"), tie_break="index")
    assert result.metrics["ndcg@10"] == pytest.approx(mean_of(expected["ndcg"], "zero"), abs=1e-12)
    assert result.metrics["acg@10"] == pytest.approx(result.metrics["p@10"], abs=1e-12)  # binary grades: ACG is P


def test_hand_worked_graded_ranking():
    """Grades 2, 0, 1 at distances 0, 1, 2 (label worth 1, modality 1): nDCG@3 = (3 + 0 + 1/2) / (3 + 1/log2 3)."""
    query = np.zeros((1, 2), bool)
    database = np.array([[0, 0], [1, 0], [1, 1]], bool)
    grading = Grading(1.0, np.array([[7]]), np.array([[7], [3], [3]]), np.array([1.0]))
    result = evaluate(query, [0], database, [0, 1, 0], ("ndcg@3", "acg@3", "wmap@3", "acc@3", "hit@1"), grading=grading)
    assert result.metrics["ndcg@3"] == pytest.approx(3.5 / (3 + 1 / math.log2(3)), abs=1e-12)
    assert result.metrics["acg@3"] == pytest.approx(1.0, abs=1e-12)
    assert result.metrics["wmap@3"] == pytest.approx((2 + 1) / 2, abs=1e-12)  # ACG@1 = 2, ACG@3 = 1
    assert result.metrics["acc@3"] == 1.0  # label 0 twice, label 1 once
    assert result.metrics["hit@1"] == 1.0


def test_majority_vote_tie_goes_to_the_label_met_first():
    """Top 2: one item of label 1 at distance 0, one of label 0 (the query's) at distance 1: label 1 wins the tie."""
    query = np.zeros((1, 2), bool)
    database = np.array([[0, 0], [1, 0]], bool)
    assert evaluate(query, [0], database, [1, 0], ("acc@2",)).metrics["acc@2"] == 0.0
    assert evaluate(query, [0], database, [0, 1], ("acc@2",)).metrics["acc@2"] == 1.0


def test_map_conventions_on_a_hand_worked_ranking():
    """Relevance [+, -, +] in the top 3, five relevant in all: found 0.833, min(R, k) 0.556, all 0.333."""
    query = np.zeros((1, 3), bool)
    database = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]], bool)
    labels = [0, 1, 0, 0, 0, 0]
    expected = {"found": (1 + 2 / 3) / 2, "min": (1 + 2 / 3) / 3, "all": (1 + 2 / 3) / 5}
    for normalise, value in expected.items():
        result = evaluate(query, [0], database, labels, ("map@3",), tie_break="index", normalise=normalise)
        assert result.metrics["map@3"] == pytest.approx(value, abs=1e-12)


def test_dropping_empty_queries_changes_the_mean_and_marks_them():
    """Query 0 has its relevant item at rank 3, query 1 none: map@1 counts it as 0 (0.0 mean) or drops it (NaN)."""
    query = np.zeros((2, 2), bool)
    database = np.array([[0, 0], [1, 0], [1, 1]], bool)
    zero = evaluate(query, [0, 2], database, [1, 1, 0], ("map@1", "map@3"), tie_break="index")
    dropped = evaluate(query, [0, 2], database, [1, 1, 0], ("map@1", "map@3"), tie_break="index", empty="drop")
    assert zero.metrics["map@3"] == pytest.approx((1 / 3) / 2, abs=1e-12)
    assert dropped.metrics["map@3"] == pytest.approx(1 / 3, abs=1e-12)
    assert np.isnan(dropped.per_query["map@3"][1]) and np.isnan(dropped.metrics["map@1"])


@pytest.mark.parametrize("keyword, value", [("normalise", "relevant"), ("empty", "skip"), ("ordering", "x")])
def test_unknown_conventions_are_refused_with_the_valid_values(keyword, value):
    query_bits, query_labels, db_bits, db_labels = heavy_ties(0)
    with pytest.raises(ValueError, match="valid: "):
        evaluate(query_bits, query_labels, db_bits, db_labels, ("map@5",), **{keyword: value})


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("tie_break", ["index", "random"])
def test_continuous_features_rank_as_a_brute_force_float_ranking(distance, tie_break):
    """The float reference: every cutoff metric of a plain sort by cosine (or Euclidean) distance, to 1e-12."""
    from hashbench.evaluation.evaluate import evaluate_features

    rng = np.random.default_rng(11)
    query, database = rng.normal(size=(20, 6)), rng.normal(size=(50, 6))
    database[7] = database[3]  # an exact tie: broken by the tie rule
    query_labels, database_labels = rng.integers(0, 3, 20), rng.integers(0, 3, 50)
    query_groups, database_groups = rng.integers(-1, 4, 20), rng.integers(0, 4, 50)
    key = TIE_KEYS[tie_break]
    metrics = ("map@5", "map@all", "p@5", "hit@5", "acc@5", "ndcg@5")
    result = evaluate_features(
        query,
        query_labels,
        database,
        database_labels,
        metrics,
        distance,
        tie_break=tie_break,
        query_groups=query_groups,
        database_groups=database_groups,
    )
    for q in range(len(query)):
        kept = [i for i in range(50) if query_groups[q] < 0 or database_groups[i] != query_groups[q]]
        if distance == "cosine":
            similarity = database @ query[q] / (np.linalg.norm(database, axis=1) * np.linalg.norm(query[q]))
            distances = 1 - similarity
        else:
            distances = np.linalg.norm(database - query[q], axis=1)
        order = sorted(kept, key=lambda i: (round(float(distances[i]), 12), key(i)))
        relevant = [query_labels[q] == database_labels[i] for i in order]
        found, total, precision_sum = 0, sum(relevant), 0.0
        for place, hit in enumerate(relevant[:5], start=1):
            found += hit
            precision_sum += found / place if hit else 0.0
        assert result.per_query["map@5"][q] == pytest.approx(precision_sum / found if found else 0.0, abs=1e-12)
        assert result.per_query["p@5"][q] == pytest.approx(sum(relevant[:5]) / 5, abs=1e-12)
        assert result.per_query["hit@5"][q] == float(any(relevant[:5]))
        assert result.per_query["acc@5"][q] == majority_vote(q, order[:5], query_labels, database_labels)
        whole, seen = 0.0, 0
        for place, hit in enumerate(relevant, start=1):
            seen += hit
            whole += seen / place if hit else 0.0
        assert result.per_query["map@all"][q] == pytest.approx(whole / total if total else 0.0, abs=1e-12)


def test_tie_aware_metrics_take_their_plain_forms_and_radii_are_refused_for_continuous_features():
    from hashbench.evaluation.evaluate import evaluate_features

    rng = np.random.default_rng(0)
    query, database = rng.normal(size=(8, 4)), rng.normal(size=(30, 4))
    labels, database_labels = rng.integers(0, 2, 8), rng.integers(0, 2, 30)
    names = ("map@all", "map@tie", "map@tie-worst", "map@1", "map@1-tie", "p@5", "p@5-tie")
    result = evaluate_features(query, labels, database, database_labels, names)
    assert result.metrics["map@tie"] == result.metrics["map@tie-worst"] == result.metrics["map@all"]
    assert result.metrics["map@1-tie"] == result.metrics["map@1"] and result.metrics["p@5-tie"] == result.metrics["p@5"]
    with pytest.raises(ValueError, match="p@r2: a Hamming radius has no meaning"):
        evaluate_features(query, labels, database, database_labels, ("map@10", "p@r2"))
