"""The evaluator against brute-force Python references and hand-worked cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hashbench.evaluation.evaluate import (
    binarize,
    evaluate,
    parse_metric,
    per_class,
    pr_by_radius,
    precision_curve,
    tie_diagnostics,
    top1_confusion,
)
from hashbench.evaluation.ranking import code_words, count_ranks, label_words, tie_order

MASK64 = 0xFFFFFFFFFFFFFFFF


def splitmix64_key(seed, position):
    """The tie key in plain Python integers: SplitMix64's finaliser of seed * 2**32 + position, modulo 2**64."""
    z = (seed * 2**32 + position + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def index_ties(n_items):
    return list(range(n_items))


def random_ties(seed):
    """Tie keys of the random rule: the splitmix64 key, then the position (for equal keys)."""
    return lambda n_items: [(splitmix64_key(seed, i), i) for i in range(n_items)]


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


def ranking_of(query, db_bits, tie_keys):
    """Database indices sorted by (distance, tie key): the whole ranking, in plain Python."""
    distances, keys = distances_of(query, db_bits), tie_keys(len(db_bits))
    return sorted(range(len(db_bits)), key=lambda i: (distances[i], keys[i]))


def reference(query_bits, query_labels, db_bits, db_labels, ks, tie_keys=index_ties):
    """Plain Python: ranking by (distance, tie key), then for each k (None: all) mean AP@k and P@k as in docs/metrics.md."""
    aps, precisions = {k: [] for k in ks}, {k: [] for k in ks}
    for q in range(len(query_bits)):
        ranking = ranking_of(query_bits[q], db_bits, tie_keys)
        for k in ks:
            relevant = [query_labels[q] == db_labels[i] for i in ranking[: (len(ranking) if k is None else k)]]
            aps[k].append(ap(relevant))
            precisions[k].append(sum(relevant) / len(relevant))
    return {k: (float(np.mean(aps[k])), float(np.mean(precisions[k]))) for k in ks}


def every_tie_order(query, query_label, db_bits, db_labels):
    """The relevance list of the ranking under every order of every tie group, by enumeration."""
    distances = distances_of(query, db_bits)
    groups = [
        [db_labels[i] == query_label for i in range(len(db_bits)) if distances[i] == d] for d in sorted(set(distances))
    ]
    return [
        [x for group in orders for x in group]
        for orders in itertools.product(*[list(itertools.permutations(g)) for g in groups])
    ]


def tie_reference(query, query_label, db_bits, db_labels):
    """AP over the whole ranking for every order of every tie group: (mean, max, min)."""
    orders = every_tie_order(query, query_label, db_bits, db_labels)
    values = [ap(order, normalise_by=sum(order)) for order in orders]
    return float(np.mean(values)), max(values), min(values)


def heavy_ties(seed, n_queries, n_items, bits, classes):
    rng = np.random.default_rng(seed)
    return (
        rng.random((n_queries, bits)) < 0.5,
        rng.integers(0, classes, n_queries),
        rng.random((n_items, bits)) < 0.5,
        rng.integers(0, classes, n_items),
    )


RANK_METRICS = ("map@1", "map@10", "map@100", "map@all", "p@1", "p@10", "p@100", "p@all")


def assert_rank_metrics_match(result, expected):
    for k, (expected_map, expected_p) in expected.items():
        suffix = "all" if k is None else k
        assert result.metrics[f"map@{suffix}"] == pytest.approx(expected_map, abs=1e-9)
        assert result.metrics[f"p@{suffix}"] == pytest.approx(expected_p, abs=1e-9)


@pytest.mark.parametrize("bits", [4, 12, 16, 70])
def test_stable_metrics_match_brute_force_on_random_codes_with_heavy_ties(bits):
    query_bits, query_labels, db_bits, db_labels = heavy_ties(bits, 40, 300, bits, 5)
    result = evaluate(query_bits, query_labels, db_bits, db_labels, RANK_METRICS, tie_break="index")
    assert_rank_metrics_match(result, reference(query_bits, query_labels, db_bits, db_labels, (1, 10, 100, None)))


@pytest.mark.parametrize("bits, seed", [(4, 0), (4, 7), (12, 3), (12, 2**32 + 5)])
def test_random_tie_rule_matches_brute_force_ranking_by_distance_then_key(bits, seed):
    query_bits, query_labels, db_bits, db_labels = heavy_ties(bits, 40, 300, bits, 5)
    result = evaluate(query_bits, query_labels, db_bits, db_labels, RANK_METRICS, tie_break="random", tie_seed=seed)
    expected = reference(query_bits, query_labels, db_bits, db_labels, (1, 10, 100, None), random_ties(seed))
    assert_rank_metrics_match(result, expected)
    # at 4 and 12 bits ties decide: the index order gives other numbers, so the check above could fail
    stable = reference(query_bits, query_labels, db_bits, db_labels, (1, 10), index_ties)
    assert any(abs(expected[k][0] - stable[k][0]) > 1e-3 for k in (1, 10))


def test_tie_order_is_the_order_of_the_splitmix64_keys():
    assert splitmix64_key(0, 0) == 0xE220A8397B1DCDAF  # the published first output of SplitMix64 from state 0
    assert splitmix64_key(0, 1234567) == 6457827717110365317  # ... and from state 1234567
    for seed in (0, 1, 12345, -3, 2**32 + 5):
        order = tie_order(500, seed)
        assert order.tolist() == sorted(range(500), key=lambda j: (splitmix64_key(seed, j), j))
        np.testing.assert_array_equal(np.sort(order), np.arange(500))
        np.testing.assert_array_equal(order, tie_order(500, seed))
        # a key belongs to a position, so a smaller database keeps the same relative order
        np.testing.assert_array_equal(tie_order(300, seed), order[order < 300])
    assert not np.array_equal(tie_order(500, 0), tie_order(500, 1))
    assert len(tie_order(0, 0)) == 0


def test_expected_precision_and_map_at_1_are_the_expectation_over_all_tie_orders():
    ks = (1, 2, 3, 5, 9, 20)  # 20 is beyond the database: capped at its 9 items, like p@K
    names = (*(f"p@{k}-tie" for k in ks), "map@1-tie")
    for seed in range(12):
        query_bits, query_labels, db_bits, db_labels = heavy_ties(seed, 3, 9, 3, 2)
        result = evaluate(query_bits, query_labels, db_bits, db_labels, names)
        assert result.counts.hits.shape[1] == 0  # histograms only: no stable pass
        for q in range(3):
            orders = every_tie_order(query_bits[q], query_labels[q], db_bits, db_labels)
            for k in ks:
                top = min(k, 9)
                assert result.per_query[f"p@{k}-tie"][q] == pytest.approx(
                    np.mean([sum(order[:top]) / top for order in orders]), abs=1e-9
                )
            assert result.per_query["map@1-tie"][q] == pytest.approx(np.mean([order[0] for order in orders]), abs=1e-9)


def class_sorted_collapsed_database(classes=5, per_class=400, queries_per_class=200, bits=4):
    """Integer codes and labels: every class draws from all 2**bits codes, favouring a few; stored class 0 first."""
    rng = np.random.default_rng(0)
    codes = np.arange(2**bits)

    def draw(c, n):
        weights = np.where(codes % classes == c, 4.0, 1.0)
        return rng.choice(codes, n, p=weights / weights.sum())

    db_codes = np.concatenate([draw(c, per_class) for c in range(classes)])
    query_codes = np.concatenate([draw(c, queries_per_class) for c in range(classes)])
    return (
        query_codes,
        np.repeat(np.arange(classes), queries_per_class),
        db_codes,
        np.repeat(np.arange(classes), per_class),
    )


def test_class_sorted_database_with_massive_ties_is_order_neutral():
    """5 classes x 400 items stored class 0 first (as an ingested database is), 4-bit codes: 16 buckets of ~125
    items, every class in every bucket; 200 queries a class, each with a database code.

    A query's nearest tie group is its own bucket, and with a fixed key per item every query of a bucket gets
    the same top-1. So for one seed class c's MAP@1 is sum_b w_cb B_b, w_cb the share of class-c queries in
    bucket b, B_b ~ Bernoulli(p_cb) with p_cb the share of class c in the bucket, independent over the disjoint
    buckets: mean sum_b w_cb p_cb (map@1-tie), variance sum_b w_cb^2 p_cb (1 - p_cb). Averaged over S seeds the
    standard error is sqrt(variance / S); it is the buckets, not the queries, that are the samples.
    """
    classes, bits, seeds = 5, 4, 40
    query_codes, query_labels, db_codes, db_labels = class_sorted_collapsed_database(classes, bits=bits)

    def as_bits(values):
        return ((values[:, None] >> np.arange(bits)) & 1).astype(bool)

    query_bits = as_bits(query_codes)
    databases = {"stored": (as_bits(db_codes), db_labels), "reversed": (as_bits(db_codes[::-1]), db_labels[::-1])}
    names = [str(c) for c in range(classes)]

    def class_means(result, metric):
        return np.array(list(per_class(result.per_query[metric], query_labels, names).values()))

    in_bucket = np.array([np.bincount(db_codes[db_labels == c], minlength=2**bits) for c in range(classes)])
    assert in_bucket.min() > 0  # every class in every bucket
    share = in_bucket / in_bucket.sum(axis=0)  # p_cb
    weight = np.array(
        [
            np.bincount(query_codes[query_labels == c], minlength=2**bits) / np.sum(query_labels == c)
            for c in range(classes)
        ]
    )  # w_cb
    standard_error = np.sqrt((weight**2 * share * (1 - share)).sum(axis=1) / seeds)
    assert 8 * standard_error.max() < 0.25  # the widest tolerance below, far inside the index order's gap of 1.0

    expected, random_map1, random_map10, random_p10, p10_tie = {}, {}, {}, {}, {}
    for order, (db_bits, labels) in databases.items():
        tie_free = evaluate(query_bits, query_labels, db_bits, labels, ("map@1-tie", "p@10-tie"))
        expected[order], p10_tie[order] = class_means(tie_free, "map@1-tie"), class_means(tie_free, "p@10-tie")
        runs = [
            evaluate(
                query_bits,
                query_labels,
                db_bits,
                labels,
                ("map@1", "map@10", "p@10"),
                tie_break="random",
                tie_seed=seed,
            )
            for seed in range(seeds)
        ]
        random_map1[order] = np.array([class_means(run, "map@1") for run in runs])
        random_map10[order] = np.array([class_means(run, "map@10") for run in runs])
        random_p10[order] = np.array([class_means(run, "p@10") for run in runs])
    np.testing.assert_allclose(expected["stored"], (share * weight).sum(axis=1), atol=1e-12)
    np.testing.assert_allclose(expected["reversed"], expected["stored"], atol=1e-12)
    np.testing.assert_allclose(p10_tie["reversed"], p10_tie["stored"], atol=1e-12)
    for order in databases:
        # random ties: per class, MAP@1 averages to map@1-tie within 4 standard errors, P@10 to p@10-tie
        assert np.all(np.abs(random_map1[order].mean(axis=0) - expected[order]) <= 4 * standard_error), order
        p10_error = random_p10[order].std(axis=0, ddof=1) / np.sqrt(seeds)
        assert np.all(np.abs(random_p10[order].mean(axis=0) - p10_tie[order]) <= 4 * p10_error + 1e-12), order
    assert np.all(
        np.abs(random_map1["stored"].mean(axis=0) - random_map1["reversed"].mean(axis=0)) <= 8 * standard_error
    )
    # MAP@10 has no closed-form expectation: its standard errors from the spread over seeds
    map10_error = np.sqrt(
        (random_map10["stored"].var(axis=0, ddof=1) + random_map10["reversed"].var(axis=0, ddof=1)) / seeds
    )
    assert np.all(
        np.abs(random_map10["stored"].mean(axis=0) - random_map10["reversed"].mean(axis=0)) <= 4 * map10_error
    )
    assert map10_error.max() < 0.05

    # index ties: storage order decides. Class 0 leads every bucket when stored first and trails when reversed
    for order, (db_bits, labels) in databases.items():
        index = evaluate(query_bits, query_labels, db_bits, labels, ("map@1", "map@10"), tie_break="index")
        first, last = (0, classes - 1) if order == "stored" else (classes - 1, 0)
        for metric in ("map@1", "map@10"):
            by_class = class_means(index, metric)
            assert by_class[first] == 1.0 and by_class[last] == 0.0, (order, metric, by_class)
        # and it is exactly the stable-index brute force (the ranking depends on the query's code alone)
        stored_codes = db_codes if order == "stored" else db_codes[::-1]
        rankings = {
            code: sorted(range(len(stored_codes)), key=lambda i: (bin(code ^ stored_codes[i]).count("1"), i))
            for code in set(query_codes.tolist())
        }
        for k in (1, 10):
            expected_ap = [
                ap([labels[i] == label for i in rankings[code][:k]]) for code, label in zip(query_codes, query_labels)
            ]
            np.testing.assert_allclose(index.per_query[f"map@{k}"], expected_ap, rtol=0, atol=1e-12)


def test_torch_path_matches_the_kernel_under_the_random_tie_rule():
    query_bits, query_labels, db_bits, db_labels = heavy_ties(11, 30, 500, 12, 6)
    names = ("map@1", "map@10", "map@all", "p@100", "map@tie")
    kernel = evaluate(query_bits, query_labels, db_bits, db_labels, names, device="cpu", tie_seed=3)
    on_torch = evaluate(
        query_bits, query_labels, db_bits, db_labels, names, device="torch:cpu", memory_bytes=4 * 500 * 64, tie_seed=3
    )
    for name in ("distance_counts", "relevant_counts", "cutoffs", "hits", "top1"):
        np.testing.assert_array_equal(getattr(on_torch.counts, name), getattr(kernel.counts, name), err_msg=name)
    np.testing.assert_allclose(on_torch.counts.precision_sums, kernel.counts.precision_sums, rtol=0, atol=1e-12)
    for name in names:
        np.testing.assert_allclose(on_torch.per_query[name], kernel.per_query[name], rtol=0, atol=1e-12, err_msg=name)
    index = evaluate(query_bits, query_labels, db_bits, db_labels, names, device="cpu", tie_break="index")
    assert not np.array_equal(index.counts.top1, kernel.counts.top1)  # the rule changed the ranking on both paths


def test_top1_is_an_original_database_position_under_the_random_rule():
    query_bits, query_labels, db_bits, db_labels = heavy_ties(12, 40, 200, 6, 4)
    for seed, options in ((0, {}), (9, {"tie_seed": 9})):  # no options: the default rule, random with seed 0
        result = evaluate(query_bits, query_labels, db_bits, db_labels, ("map@1",), **options)
        top1 = [ranking_of(query_bits[q], db_bits, random_ties(seed))[0] for q in range(40)]
        assert result.counts.top1.tolist() == top1
        confusion = np.zeros((4, 4), dtype=np.int64)
        for q in range(40):
            confusion[query_labels[q], db_labels[top1[q]]] += 1
        np.testing.assert_array_equal(top1_confusion(result.counts, query_labels, db_labels, 4), confusion)
        assert np.trace(confusion) / 40 == pytest.approx(result.metrics["map@1"], abs=1e-12)
    empty = evaluate(query_bits[:3], query_labels[:3], np.zeros((0, 6), bool), np.zeros(0, dtype=int), ("map@1",))
    assert empty.counts.top1.tolist() == [-1, -1, -1]


def test_unknown_tie_rule_and_map_at_k_tie_are_refused():
    query_bits, query_labels, db_bits, db_labels = heavy_ties(13, 2, 10, 4, 2)
    with pytest.raises(ValueError, match="random, index"):
        evaluate(query_bits, query_labels, db_bits, db_labels, ("map@1",), tie_break="distance")
    with pytest.raises(ValueError, match="no closed form.*p@10-tie or map@tie"):
        parse_metric("map@10-tie")
    assert parse_metric("MAP@1-tie").name == "map@1-tie"


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
    result = evaluate(
        query,
        np.array([1]),
        db_bits[keep],
        rng.integers(0, 2, keep.sum()),
        ("map@all", "map@tie", "map@tie-best", "map@tie-worst"),
    )
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
    result = evaluate(query_bits, query_labels, db_bits, db_labels, ("map@1",), curve_cutoffs=ks, tie_break="index")
    expected = reference(query_bits, query_labels, db_bits, db_labels, ks)
    np.testing.assert_allclose(precision_curve(result.counts, ks), [expected[k][1] for k in ks], atol=1e-12)


def test_torch_path_gives_the_same_counts_in_small_chunks():
    """The GPU path (+/-1 matmul, one sort of unique keys) checked on the CPU, four queries a chunk."""
    query_bits, query_labels, db_bits, db_labels = heavy_ties(9, 30, 500, 20, 6)
    args = (
        code_words(query_bits),
        label_words(query_labels, 6),
        code_words(db_bits),
        label_words(db_labels, 6),
        20,
        (1, 10, 100, 500),
    )
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
    assert (
        diagnostics["nearest_tie_size"] == 6
        and diagnostics["occupied_buckets"] == 1
        and diagnostics["largest_bucket_share"] == 1.0
    )
    assert diagnostics["dead_bits"] == 4 and diagnostics["bit_balance"] == 0.0
    assert diagnostics["map@tie"] == pytest.approx(
        sum(1 / t for t in range(1, 7)) / 6
    )  # mean of 1/rank over ranks 1..6
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
    assert evaluate(query_bits, np.array([1]), db_bits, labels, ("map@all",), tie_break="index").metrics[
        "map@all"
    ] == pytest.approx(expected, abs=1e-9)


def test_string_labels_and_empty_sides():
    query, database = np.array([[0, 1]], bool), np.array([[0, 1], [1, 1]], bool)
    assert (
        evaluate(query, np.array(["lung"]), database, np.array(["liver", "lung"]), ("map@1",)).metrics["map@1"] == 0.0
    )
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


def test_index_tie_rule_breaks_ties_by_database_index():
    query = np.array([[0, 0]], bool)
    database = np.array([[1, 0], [0, 1], [0, 0]], bool)  # distances 1, 1, 0
    # ranking: item 2 (d=0), then item 0, item 1 (tie by index)
    labels = np.array([1, 0, 0])
    assert evaluate(query, np.array([1]), database, labels, ("map@2",), tie_break="index").metrics[
        "map@2"
    ] == pytest.approx(1 / 2)
    assert evaluate(query, np.array([0]), database, labels, ("map@1",), tie_break="index").metrics["map@1"] == 1.0


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
    assert evaluate(query, query_labels, database, database_labels, ("map@all",)).metrics["map@all"] == pytest.approx(
        1 / 2
    )


def test_sign_of_zero_is_plus_one_and_padding_bits_do_not_count():
    codes = np.array([[0.0, -0.5, 2.0], [-1.0, 0.0, -3.0]])
    bits = binarize(codes)
    np.testing.assert_array_equal(bits, [[True, False, True], [False, True, False]])
    result = evaluate(bits[:1], np.array([0]), bits[1:], np.array([0]), ("map@1",))
    assert result.counts.distance_counts[0].tolist() == [0, 0, 0, 1]  # distance 3 over 3 bits, padding ignored


def test_unknown_metric_lists_the_families():
    for bad in ("ndcg@all", "p@tie", "map@r2", "map@0", "p@all-tie", "p@0-tie"):
        with pytest.raises(ValueError, match="map@K|at least 1"):
            parse_metric(bad)


def test_database_blocks_bound_the_kernel_scratch_without_changing_any_count():
    query_bits, query_labels, db_bits, db_labels = heavy_ties(10, 25, 3000, 24, 7)
    args = (
        code_words(query_bits),
        label_words(query_labels, 7),
        code_words(db_bits),
        label_words(db_labels, 7),
        24,
        (1, 10, 1000, 3000),
    )
    whole, blocked = count_ranks(*args), count_ranks(*args, memory_bytes=1)  # 64-item blocks: 47 of them
    for name in ("distance_counts", "relevant_counts", "hits", "top1"):
        np.testing.assert_array_equal(getattr(blocked, name), getattr(whole, name), err_msg=name)
    np.testing.assert_allclose(blocked.precision_sums, whole.precision_sums, rtol=0, atol=1e-12)


def test_the_pass_over_one_word_codes_counts_what_the_pass_over_keys_counts():
    """One-word codes and labels are counted straight from the words; padded with a zero word (the same distances and
    relevance) they go through keys: every count, the precision sums included, bit for bit, with and without groups
    (a query with no group takes the one-word pass, one with a group the keys)."""
    query_bits, query_labels, db_bits, db_labels = heavy_ties(14, 30, 2000, 40, 5)
    words = [code_words(query_bits), label_words(query_labels, 5), code_words(db_bits), label_words(db_labels, 5)]
    padded = [np.concatenate([side, np.zeros_like(side)], axis=1) for side in words]
    rng = np.random.default_rng(14)
    query_groups, database_groups = rng.integers(-1, 8, 30), rng.integers(0, 8, 2000)
    for groups in ({}, {"query_groups": query_groups, "database_groups": database_groups}):
        one_word, keys = (count_ranks(*sides, 40, (1, 10, 500, 2000), **groups) for sides in (words, padded))
        for name in ("distance_counts", "relevant_counts", "hits", "precision_sums", "top1"):
            np.testing.assert_array_equal(getattr(one_word, name), getattr(keys, name), err_msg=name)


# --- leaving a query's own group (patient, study, series) out of its ranking ----------------------------------------


GROUP_METRICS = ("map@1", "map@10", "map@all", "p@1", "p@10", "p@all", "p@10-tie")
GROUP_TIE_METRICS = ("map@tie", "map@tie-best", "map@tie-worst")  # their reference enumerates orders: small data only


def grouped(seed, n_items, n_queries=30, bits=8, classes=4):
    """Heavy ties, and patients on both sides: a query's own patient holds about a quarter of a small database and a
    twelfth of a large one."""
    patients = 4 if n_items <= 16 else 12
    query_bits, query_labels, db_bits, db_labels = heavy_ties(seed, n_queries, n_items, bits, classes)
    rng = np.random.default_rng(seed + 100)
    query_groups, database_groups = rng.integers(0, patients, n_queries), rng.integers(0, patients, n_items)
    query_groups[:3] = -1  # no group: nothing left out for these queries
    return query_bits, query_labels, db_bits, db_labels, query_groups, database_groups


def per_query_reference(query_bits, query_labels, db_bits, db_labels, query_groups, database_groups, tie_keys):
    """Plain Python: each query ranked over the database items outside its group (tie keys of their positions)."""
    keys = tie_keys(len(db_bits))
    values = {name: [] for name in GROUP_METRICS + GROUP_TIE_METRICS}
    small = len(db_bits) <= 16
    for q in range(len(query_bits)):
        kept = [i for i in range(len(db_bits)) if query_groups[q] < 0 or database_groups[i] != query_groups[q]]
        ranking = [kept[i] for i in ranking_of(query_bits[q], db_bits[kept], lambda n: [keys[i] for i in kept])]
        relevant = [query_labels[q] == db_labels[i] for i in ranking]
        for k, suffix in ((1, "1"), (10, "10"), (len(relevant), "all")):
            values[f"map@{suffix}"].append(ap(relevant[:k]))
            values[f"p@{suffix}"].append(sum(relevant[:k]) / min(k, len(relevant)) if relevant else 0.0)
        mean, best, worst = (
            tie_reference(query_bits[q], query_labels[q], db_bits[kept], db_labels[kept])
            if kept and small
            else (0.0,) * 3
        )
        values["map@tie"].append(mean)
        values["map@tie-best"].append(best)
        values["map@tie-worst"].append(worst)
        values["p@10-tie"].append(_expected_precision(query_bits[q], query_labels[q], db_bits[kept], db_labels[kept]))
    return values


def _expected_precision(query, label, db_bits, db_labels, k=10):
    """P@k expected over tie orders: whole groups before k, and the straddling group's relevant share of what fits."""
    distances = [int((query != item).sum()) for item in db_bits]
    k, taken, expected = min(k, len(distances)), 0, 0.0
    for d in sorted(set(distances)):
        members = [i for i, x in enumerate(distances) if x == d]
        fit = min(len(members), max(0, k - taken))
        expected += fit * sum(db_labels[i] == label for i in members) / len(members)
        taken += len(members)
    return expected / k if k else 0.0


@pytest.mark.parametrize("tie_break, keys", [("index", index_ties), ("random", random_ties(0))])
@pytest.mark.parametrize(
    "device, memory, n_items",
    [
        ("cpu", 1 << 30, 240),
        ("cpu", 1, 240),
        ("torch:cpu", 5 * 240 * 64, 240),
        ("cpu", 1 << 30, 14),
        ("torch:cpu", 1 << 30, 14),
    ],
)
def test_excluded_items_are_neither_counted_nor_ranked(tie_break, keys, device, memory, n_items):
    # 240 items: 64-item blocks with memory=1, five-query chunks on the torch path; 14 items: the tie-aware metrics too
    query_bits, query_labels, db_bits, db_labels, query_groups, database_groups = grouped(5, n_items=n_items)
    names = GROUP_METRICS + (GROUP_TIE_METRICS if n_items <= 16 else ())
    result = evaluate(
        query_bits,
        query_labels,
        db_bits,
        db_labels,
        names,
        tie_break=tie_break,
        device=device,
        memory_bytes=memory,
        query_groups=query_groups,
        database_groups=database_groups,
    )
    expected = per_query_reference(query_bits, query_labels, db_bits, db_labels, query_groups, database_groups, keys)
    for name in names:
        np.testing.assert_allclose(result.per_query[name], expected[name], rtol=0, atol=1e-12, err_msg=name)
    own = (query_groups[:, None] >= 0) & (query_groups[:, None] == database_groups[None, :])
    np.testing.assert_array_equal(result.counts.ranked, len(db_bits) - own.sum(axis=1))
    assert not own[np.arange(len(own)), result.counts.top1].any()  # the top-1 item is never the query's own


def test_leaving_out_the_exact_duplicates_of_a_query_lowers_map_at_1():
    # every query has an identical copy in the database from its own patient, and nothing else that near
    rng = np.random.default_rng(0)
    db_bits = rng.random((60, 32)) < 0.5
    db_labels = rng.integers(0, 3, 60)
    patients = np.arange(60)
    query_bits, query_labels, query_groups = db_bits[:20].copy(), db_labels[:20], patients[:20]
    plain = evaluate(query_bits, query_labels, db_bits, db_labels, ("map@1",))
    excluded = evaluate(
        query_bits, query_labels, db_bits, db_labels, ("map@1",), query_groups=query_groups, database_groups=patients
    )
    assert plain.metrics["map@1"] == 1.0
    assert excluded.metrics["map@1"] < 0.7  # three random classes: the copy is gone, a stranger comes first


def test_a_query_whose_whole_database_is_its_own_group_scores_zero_and_ranks_nothing():
    query_bits, query_labels, db_bits, db_labels = heavy_ties(1, 2, 5, 6, 2)
    result = evaluate(
        query_bits,
        query_labels,
        db_bits,
        db_labels,
        ("map@10", "p@all", "map@tie", "p@5-tie"),
        query_groups=np.array([7, -1]),
        database_groups=np.full(5, 7),
    )
    assert result.counts.ranked.tolist() == [0, 5] and result.counts.top1[0] == -1
    assert all(values[0] == 0.0 for values in result.per_query.values())


def test_groups_must_come_for_both_sides_and_match_their_rows():
    query_bits, query_labels, db_bits, db_labels = heavy_ties(1, 4, 10, 6, 2)
    with pytest.raises(ValueError, match="both sides"):
        evaluate(query_bits, query_labels, db_bits, db_labels, query_groups=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="one id per query"):
        evaluate(
            query_bits,
            query_labels,
            db_bits,
            db_labels,
            query_groups=np.zeros(3, np.int64),
            database_groups=np.zeros(10, np.int64),
        )


def test_codes_crowded_into_one_bucket_are_flagged_without_a_dead_bit():
    from hashbench.store.results import collapse_note

    rng = np.random.default_rng(0)
    database = rng.random((100, 8)) < 0.5
    database[:82] = database[0]  # 82 of 100 items share one code; every bit still varies
    diagnostics = tie_diagnostics(
        evaluate(database[:5], np.zeros(5, int), database, np.zeros(100, int), ("map@1",)).counts, database
    )
    assert diagnostics["dead_bits"] == 0 and diagnostics["largest_bucket_share"] == pytest.approx(0.82)
    assert collapse_note(0, 8, diagnostics["largest_bucket_share"]) == "one code holds 82% of the database"
    assert collapse_note(3, 8, 0.2) == "partly collapsed: 3/8 dead bits"
    assert collapse_note(8, 8, 1.0) == "collapsed: 8/8 dead bits"
    assert collapse_note(0, 8, 0.49) == ""


def test_one_code_per_class_of_a_perfect_model_is_not_flagged_even_when_a_class_holds_most_of_the_database():
    from hashbench.store.results import NO_CODE, collapse_note, largest_class_share

    labels = np.array([0] * 60 + [1] * 25 + [2] * 15)
    assert largest_class_share(labels) == pytest.approx(0.6)
    assert collapse_note(0, 8, 0.6, largest_class_share(labels)) == ""  # the majority class's one code
    assert collapse_note(0, 8, 0.7, 0.6) == "one code holds 70% of the database"  # it holds other classes too
    multi_hot = np.array([[1, 0], [1, 0], [1, 1], [0, 1]])
    assert largest_class_share(multi_hot) == pytest.approx(0.5)  # label sets: {0} twice, {0, 1}, {1}
    assert collapse_note(NO_CODE, NO_CODE, 1.0) == ""  # a float reference has no code to collapse
