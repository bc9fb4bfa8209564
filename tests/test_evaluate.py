"""The evaluator against brute-force Python references and hand-worked cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hashbench.evaluate import binarize, evaluate, pack, parse_metric, pr_by_radius, precision_curve, tie_diagnostics
from hashbench.ranking import code_words, count_ranks, label_words


def distances_of(query, database):
    return [sum(int(a != b) for a, b in zip(query, item)) for item in database]


def ap(relevant_in_order, normalise_by=None):
    """AP of a 0/1 list: sum of precisions at relevant ranks over the relevant found (or over ``normalise_by``)."""
    found, total = 0, 0.0
    for rank, relevant in enumerate(relevant_in_order, start=1):
        if relevant:
            found += 1
            total += found / rank
    denominator = found if normalise_by is None else normalise_by
    return total / denominator if denominator else 0.0


def reference(query_bits, query_labels, db_bits, db_labels, k):
    """Plain Python: distances by loop, stable ranking by (distance, index), AP@k and P@k as in metrics.md."""
    aps, precisions = [], []
    for q in range(len(query_bits)):
        distances = distances_of(query_bits[q], db_bits)
        ranking = sorted(range(len(db_bits)), key=lambda i: (distances[i], i))
        top = ranking[: (len(ranking) if k is None else k)]
        relevant = [query_labels[q] == db_labels[i] for i in top]
        aps.append(ap(relevant))
        precisions.append(sum(relevant) / len(top))
    return float(np.mean(aps)), float(np.mean(precisions))


def tie_reference(query, query_label, db_bits, db_labels):
    """AP over the whole ranking for every order of every tie group: (mean, max, min), by enumeration."""
    distances = distances_of(query, db_bits)
    groups = [[db_labels[i] == query_label for i in range(len(db_bits)) if distances[i] == d] for d in sorted(set(distances))]
    total = sum(sum(g) for g in groups)
    values = [ap([x for group in orders for x in group], normalise_by=total) for orders in itertools.product(*[list(itertools.permutations(g)) for g in groups])]
    return float(np.mean(values)), max(values), min(values)


def heavy_ties(seed, n_queries, n_items, bits, classes):
    rng = np.random.default_rng(seed)
    return rng.random((n_queries, bits)) < 0.5, rng.integers(0, classes, n_queries), rng.random((n_items, bits)) < 0.5, rng.integers(0, classes, n_items)


@pytest.mark.parametrize("bits", [4, 12, 16, 70])
def test_stable_metrics_match_brute_force_on_random_codes_with_heavy_ties(bits):
    query_bits, query_labels, db_bits, db_labels = heavy_ties(bits, 40, 300, bits, 5)
    names = ("map@1", "map@10", "map@100", "map@all", "p@1", "p@10", "p@100", "p@all")
    result = evaluate(query_bits, query_labels, db_bits, db_labels, names)
    for k in (1, 10, 100, None):
        expected_map, expected_p = reference(query_bits, query_labels, db_bits, db_labels, k)
        suffix = "all" if k is None else k
        assert result.metrics[f"map@{suffix}"] == pytest.approx(expected_map, abs=1e-9)
        assert result.metrics[f"p@{suffix}"] == pytest.approx(expected_p, abs=1e-9)


def test_tie_aware_map_is_the_expectation_over_all_tie_orders():
    # tiny database: every order of every tie group can be enumerated (at most 5! x 4! x ... orders)
    for seed in range(12):
        query_bits, query_labels, db_bits, db_labels = heavy_ties(seed, 3, 9, 3, 2)
        result = evaluate(query_bits, query_labels, db_bits, db_labels, ("map@tie", "map@tie-best", "map@tie-worst"))
        for q in range(3):
            expected, best, worst = tie_reference(query_bits[q], query_labels[q], db_bits, db_labels)
            assert result.per_query["map@tie"][q] == pytest.approx(expected, abs=1e-9)
            assert result.per_query["map@tie-best"][q] == pytest.approx(best, abs=1e-9)
            assert result.per_query["map@tie-worst"][q] == pytest.approx(worst, abs=1e-9)


def test_tie_aware_map_equals_map_at_all_when_no_distance_ties():
    rng = np.random.default_rng(3)
    db_bits = np.array([[(i >> b) & 1 for b in range(6)] for i in rng.permutation(64)[:20]], bool)  # distinct codes
    query = np.zeros((1, 6), bool)
    db_bits = db_bits[np.argsort(db_bits.sum(axis=1), kind="stable")]
    distances = db_bits.sum(axis=1)
    keep = np.r_[True, distances[1:] != distances[:-1]]  # one item per distance: no ties
    result = evaluate(query, np.array([1]), db_bits[keep], rng.integers(0, 2, keep.sum()), ("map@all", "map@tie", "map@tie-best", "map@tie-worst"))
    assert len(set(round(v, 12) for v in result.metrics.values())) == 1


def test_precision_within_radius_and_pr_curve_match_brute_force():
    query_bits, query_labels, db_bits, db_labels = heavy_ties(7, 30, 200, 10, 4)
    result = evaluate(query_bits, query_labels, db_bits, db_labels, ("p@r2", "p@r0"))
    precisions, recalls = {r: [] for r in range(11)}, {r: [] for r in range(11)}
    for q in range(30):
        distances = distances_of(query_bits[q], db_bits)
        relevant = [db_labels[i] == query_labels[q] for i in range(200)]
        for radius in range(11):
            inside = [relevant[i] for i in range(200) if distances[i] <= radius]
            precisions[radius].append(sum(inside) / len(inside) if inside else 0.0)  # nothing inside: 0
            recalls[radius].append(sum(inside) / sum(relevant) if sum(relevant) else 0.0)
    assert result.metrics["p@r2"] == pytest.approx(np.mean(precisions[2]), abs=1e-9)
    assert result.metrics["p@r0"] == pytest.approx(np.mean(precisions[0]), abs=1e-9)
    precision, recall = pr_by_radius(result.counts)
    np.testing.assert_allclose(precision, [np.mean(precisions[r]) for r in range(11)], atol=1e-9)
    np.testing.assert_allclose(recall, [np.mean(recalls[r]) for r in range(11)], atol=1e-9)
    assert recall[-1] == pytest.approx(1.0)


def test_precision_curve_uses_the_stable_order():
    query_bits, query_labels, db_bits, db_labels = heavy_ties(8, 20, 150, 8, 3)
    ks = (1, 5, 50, 150)
    result = evaluate(query_bits, query_labels, db_bits, db_labels, ("map@1",), curve_cutoffs=ks)
    np.testing.assert_allclose(precision_curve(result.counts, ks), [reference(query_bits, query_labels, db_bits, db_labels, k)[1] for k in ks], atol=1e-12)


def test_torch_path_gives_the_same_counts_in_small_chunks():
    """The GPU path (+/-1 matmul, one sort of unique keys) checked on the CPU, four queries a chunk."""
    query_bits, query_labels, db_bits, db_labels = heavy_ties(9, 30, 500, 20, 6)
    args = (code_words(query_bits), label_words(query_labels, 6), code_words(db_bits), label_words(db_labels, 6), 20, (1, 10, 100, 500))
    kernel = count_ranks(*args)
    torch_counts = count_ranks(*args, device="torch:cpu", memory_bytes=4 * 500 * 40)
    for name in ("distance_counts", "relevant_counts", "cutoffs", "hits", "top1"):
        np.testing.assert_array_equal(getattr(torch_counts, name), getattr(kernel, name), err_msg=name)
    np.testing.assert_allclose(torch_counts.precision_sums, kernel.precision_sums, rtol=0, atol=1e-12)


def test_tie_diagnostics_on_collapsed_codes():
    # every database item has the query's code: one bucket, one tie group, bounds 1 and 0
    db_bits = np.zeros((6, 4), bool)
    db_bits[:, 0] = True
    result = evaluate(np.zeros((1, 4), bool), np.array([1]), db_bits, np.array([0, 0, 1, 0, 0, 0]), ("map@1",))
    diagnostics = tie_diagnostics(result.counts, db_bits)
    assert diagnostics["map@1-best"] == 1.0 and diagnostics["map@1-worst"] == 0.0
    assert diagnostics["nearest_tie_size"] == 6 and diagnostics["occupied_buckets"] == 1 and diagnostics["largest_bucket_share"] == 1.0
    assert diagnostics["dead_bits"] == 4 and diagnostics["bit_balance"] == 0.0
    assert diagnostics["map@tie"] == pytest.approx(sum(1 / t for t in range(1, 7)) / 6)  # mean of 1/rank over ranks 1..6
    assert diagnostics["map@tie-best"] == 1.0 and diagnostics["map@tie-worst"] == pytest.approx(1 / 6)


def test_map_at_all_equals_sklearn_average_precision_with_distinct_distances():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    db_bits = rng.random((50, 64)) < 0.5
    query_bits = rng.random((1, 64)) < 0.5
    labels = rng.integers(0, 2, 50)
    distances = np.array(distances_of(query_bits[0], db_bits), dtype=float)
    scores = -distances - np.arange(50) * 1e-6  # distinct scores, the stable order
    expected = average_precision_score(labels == 1, scores)
    assert evaluate(query_bits, np.array([1]), db_bits, labels, ("map@all",)).metrics["map@all"] == pytest.approx(expected, abs=1e-9)


def test_string_labels_and_empty_sides():
    query, database = np.array([[0, 1]], bool), np.array([[0, 1], [1, 1]], bool)
    assert evaluate(query, np.array(["lung"]), database, np.array(["liver", "lung"]), ("map@1",)).metrics["map@1"] == 0.0
    empty = evaluate(np.zeros((0, 2), bool), np.array([], dtype=int), database, np.array([0, 1]), ("map@10", "map@tie"))
    assert np.isnan(empty.metrics["map@10"]) and len(empty.per_query["map@tie"]) == 0


def test_hand_worked_ranking():
    # Query 000; database at distances 0, 1, 2 in index order; relevance [+,-,-] and [+,-,+].
    query = np.array([[0, 0, 0]], bool)
    database = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0]], bool)
    first = evaluate(query, np.array([1]), database, np.array([1, 0, 0]), ("map@3", "map@1", "p@3"))
    assert first.metrics == {"map@3": 1.0, "map@1": 1.0, "p@3": pytest.approx(1 / 3)}
    second = evaluate(query, np.array([1]), database, np.array([1, 0, 1]), ("map@3",))
    assert second.metrics["map@3"] == pytest.approx((1 / 1 + 2 / 3) / 2)  # 0.8333


def test_ties_are_broken_by_database_index():
    query = np.array([[0, 0]], bool)
    database = np.array([[1, 0], [0, 1], [0, 0]], bool)  # distances 1, 1, 0
    # ranking: item 2 (d=0), then item 0, item 1 (tie by index)
    labels = np.array([1, 0, 0])
    assert evaluate(query, np.array([1]), database, labels, ("map@2",)).metrics["map@2"] == pytest.approx(1 / 2)
    assert evaluate(query, np.array([0]), database, labels, ("map@1",)).metrics["map@1"] == 1.0


def test_query_with_no_relevant_item_scores_zero_and_still_counts():
    query = np.array([[0], [0]], bool)
    database = np.array([[0], [1]], bool)
    result = evaluate(query, np.array([1, 2]), database, np.array([1, 1]), ("map@all",))
    assert result.metrics["map@all"] == 0.5
    np.testing.assert_array_equal(result.per_query["map@all"], [1.0, 0.0])


def test_multi_label_relevance_means_sharing_any_label():
    query = np.array([[0, 0]], bool)
    database = np.array([[0, 0], [0, 1]], bool)
    query_labels = np.array([[1, 1, 0]])
    database_labels = np.array([[0, 0, 1], [0, 1, 0]])
    assert evaluate(query, query_labels, database, database_labels, ("map@all",)).metrics["map@all"] == pytest.approx(1 / 2)


def test_sign_of_zero_is_plus_one_and_padding_bits_do_not_count():
    codes = np.array([[0.0, -0.5, 2.0], [-1.0, 0.0, -3.0]])
    bits = binarize(codes)
    np.testing.assert_array_equal(bits, [[True, False, True], [False, True, False]])
    result = evaluate(bits[:1], np.array([0]), bits[1:], np.array([0]), ("map@1",))
    assert result.counts.distance_counts[0].tolist() == [0, 0, 0, 1]  # distance 3 over 3 bits, padding ignored


def test_unknown_metric_lists_the_families():
    for bad in ("ndcg@10", "p@tie", "map@r2", "map@0"):
        with pytest.raises(ValueError, match="map@K|at least 1"):
            parse_metric(bad)


def test_database_blocks_bound_the_kernel_scratch_without_changing_any_count():
    query_bits, query_labels, db_bits, db_labels = heavy_ties(10, 25, 3000, 24, 7)
    args = (code_words(query_bits), label_words(query_labels, 7), code_words(db_bits), label_words(db_labels, 7), 24, (1, 10, 1000, 3000))
    whole, blocked = count_ranks(*args), count_ranks(*args, memory_bytes=1)  # 64-item blocks: 47 of them
    for name in ("distance_counts", "relevant_counts", "hits", "top1"):
        np.testing.assert_array_equal(getattr(blocked, name), getattr(whole, name), err_msg=name)
    np.testing.assert_allclose(blocked.precision_sums, whole.precision_sums, rtol=0, atol=1e-12)
