"""The evaluator against a brute-force Python reference and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from hashbench.evaluate import binarize, evaluate, hamming, pack, parse_metric


def reference(query_bits, query_labels, db_bits, db_labels, k):
    """Plain Python: distances by loop, stable ranking by (distance, index), AP@k as in metrics.md."""
    aps, precisions = [], []
    for q in range(len(query_bits)):
        distances = [sum(int(a != b) for a, b in zip(query_bits[q], db_bits[i])) for i in range(len(db_bits))]
        ranking = sorted(range(len(db_bits)), key=lambda i: (distances[i], i))
        top = ranking[: (len(ranking) if k is None else k)]
        found, total = 0, 0.0
        for rank, item in enumerate(top, start=1):
            if query_labels[q] == db_labels[item]:
                found += 1
                total += found / rank
        aps.append(total / found if found else 0.0)
        precisions.append(found / len(top))
    return float(np.mean(aps)), float(np.mean(precisions))


@pytest.mark.parametrize("bits", [4, 12, 16])
def test_matches_brute_force_on_random_codes_with_heavy_ties(bits):
    rng = np.random.default_rng(bits)
    db_bits = rng.random((300, bits)) < 0.5
    query_bits = rng.random((40, bits)) < 0.5
    db_labels, query_labels = rng.integers(0, 5, 300), rng.integers(0, 5, 40)
    names = ("map@1", "map@10", "map@100", "map@all", "p@1", "p@10", "p@all")
    # a tiny memory budget forces many chunks
    result = evaluate(query_bits, query_labels, db_bits, db_labels, names, memory_bytes=300 * 32 * 7)
    for k in (1, 10, 100, None):
        expected_map, expected_p = reference(query_bits, query_labels, db_bits, db_labels, k)
        suffix = "all" if k is None else k
        assert result.metrics[f"map@{suffix}"] == pytest.approx(expected_map, abs=1e-9)
        if k != 100:
            assert result.metrics[f"p@{suffix}"] == pytest.approx(expected_p, abs=1e-9)


def test_map_at_all_equals_sklearn_average_precision_with_distinct_distances():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    bits = 64
    db_bits = rng.random((50, bits)) < 0.5
    query_bits = rng.random((1, bits)) < 0.5
    labels = rng.integers(0, 2, 50)
    distances = hamming(pack(query_bits), pack(db_bits))[0].astype(float)
    scores = -distances - np.arange(50) * 1e-6  # distinct scores, the stable order
    expected = average_precision_score(labels == 1, scores)
    assert evaluate(query_bits, np.array([1]), db_bits, labels, ("map@all",)).metrics["map@all"] == pytest.approx(expected, abs=1e-9)


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
    assert hamming(pack(bits[:1]), pack(bits[1:]))[0, 0] == 3


def test_unknown_metric_lists_the_families():
    with pytest.raises(ValueError, match="map@K"):
        parse_metric("ndcg@10")
