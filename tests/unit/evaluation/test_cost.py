"""Retrieval cost: every backend answers what a brute-force sort answers, recall counts ties fairly, columns read
records of every age."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hashbench.evaluation import cost
from hashbench.evaluation.evaluate import pack


def codes(rng, n, bits, distinct=None):
    """Packed random codes; drawn from ``distinct`` codes where given, so distances tie heavily."""
    pool = rng.random((distinct or n, bits)) < 0.5
    return pack(pool[rng.integers(0, len(pool), n)] if distinct else pool)


def brute_force(query, database):
    """(distances, order): Hamming distances and the stable (distance, position) order, from unpacked bits."""
    distances = (np.unpackbits(query[None], axis=1) != np.unpackbits(database, axis=1)).sum(axis=1)
    return distances, np.argsort(distances, kind="stable")


@pytest.mark.parametrize("bits", [12, 64, 100])
def test_the_popcount_scan_returns_the_stable_top_k_at_any_code_length(bits):
    """Padding bits are zero on every code, so a 12- or 100-bit code ranks as its bits do."""
    rng = np.random.default_rng(bits)
    database, queries = codes(rng, 500, bits, distinct=40), codes(rng, 20, bits)
    scan = cost.popcount_backend(database)
    prepared = scan.prepare(queries)
    for row, query in enumerate(queries):
        _, order = brute_force(query, database)
        for k in (1, 10, 499, 500, 600):
            np.testing.assert_array_equal(scan.search(prepared, row, k), order[:k])


def test_the_histogram_top_k_is_a_stable_sort_of_tied_distances():
    rng = np.random.default_rng(0)
    distances = rng.integers(0, 5, 1000).astype(np.uint16)
    for k in (0, 1, 7, 200, 1000, 5000):
        np.testing.assert_array_equal(cost.nearest_by_histogram(distances, k), np.argsort(distances, kind="stable")[:k])


def test_recall_counts_any_item_tied_at_the_kth_distance_and_nothing_missing_or_farther():
    # 8-bit codes at distances 0, 1, 1, 1, 2 from the query: the exact top 2 is item 0 and one of items 1-3
    query = np.packbits(np.zeros((1, 8), bool), axis=1)
    database = np.packbits(
        np.array([[0] * 8, [1] + [0] * 7, [0, 1] + [0] * 6, [0, 0, 1] + [0] * 5, [1, 1] + [0] * 6]), axis=1
    )
    kth = cost.exact_kth_distances(query, database, 2)
    assert kth.tolist() == [1]
    assert cost.recall_at([np.array([0, 3])], kth, query, database, 2) == 1.0  # a tie at the 2nd distance counts
    assert cost.recall_at([np.array([3, 2])], kth, query, database, 2) == 1.0  # both at the 2nd distance: within it
    assert cost.recall_at([np.array([0, 4])], kth, query, database, 2) == 0.5  # farther than the 2nd: not found
    assert cost.recall_at([np.array([0, -1])], kth, query, database, 2) == 0.5  # -1: the index found nothing there
    assert cost.recall_at([np.array([0, 1, 2])], kth, query, database, 2) == 1.0  # only the first k places count
    # k larger than the database: every item is within the last one's distance
    everything = cost.exact_kth_distances(query, database, 10)
    assert everything.tolist() == [2] and cost.recall_at([np.arange(5)], everything, query, database, 10) == 1.0


def test_every_faiss_backend_finds_true_distances_and_hash_recall_matches_a_recount():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    bits = 32
    database, queries = codes(rng, 2000, bits, distinct=300), codes(rng, 40, bits)
    backends = {b.name: b for b in cost.faiss_backends(faiss, database, bits)}
    assert set(backends) == {"faiss-flat", "faiss-hash", "faiss-multihash"}
    measured = {c.name: c for c in cost.measure(list(backends.values()), queries, database)}
    for name, backend in backends.items():
        prepared, found = backend.prepare(queries), 0.0
        for row, query in enumerate(queries):
            distances, order = brute_force(query, database)
            answer = backend.search(prepared, row, cost.K)
            kept = answer[answer >= 0]
            if backend.exact:  # ties may be returned in another order, never other distances
                np.testing.assert_array_equal(np.sort(distances[kept]), distances[order[: cost.K]])
            found += (distances[kept] <= distances[order[cost.K - 1]]).sum() / cost.K
        assert measured[name].recall == pytest.approx(found / len(queries), abs=1e-12), name
        assert measured[name].median_ms > 0 and measured[name].p95_ms >= measured[name].median_ms
    assert measured["faiss-flat"].recall == 1.0 and measured["faiss-flat"].index_bytes == database.nbytes


def test_hash_tables_are_shaped_by_the_database_size():
    """A key of about log2(n) bits, and about bits / log2(n) substrings for multi-index hashing."""
    shapes = cost.hash_parameters(1_000_000, 64)
    assert shapes["faiss-hash"] == {"key_bits": 20, "flips": 2}  # log2(10^6) = 19.9
    assert shapes["faiss-multihash"] == {"tables": 3, "key_bits": 21, "flips": 2}  # 64 / 20 = 3.2 tables
    for n, bits in ((1, 1), (2, 8), (300, 48), (10**7, 128), (50, 1024)):
        for flips in (0, 2, 4):
            single, multi = cost.hash_parameters(n, bits, flips).values()
            assert 1 <= single["key_bits"] <= min(bits, max(1, round(math.log2(max(n, 2)))))
            assert multi["tables"] * multi["key_bits"] <= bits and multi["key_bits"] >= 1
            assert single["flips"] == min(flips, single["key_bits"]) and multi["flips"] == min(flips, multi["key_bits"])


def test_the_torch_ranking_returns_exact_distances():
    """The GPU path's arithmetic, run on the CPU: (bits - <query, item>) / 2 of +/-1 codes is the Hamming distance."""
    rng = np.random.default_rng(2)
    bits = 20
    database, queries = codes(rng, 300, bits, distinct=30), codes(rng, 10, bits)
    backend = cost.torch_backend(database, bits, "cpu")
    prepared = backend.prepare(queries)
    assert backend.index_bytes == 300 * bits * 4  # float32 signs on the CPU
    for row, query in enumerate(queries):
        distances, order = brute_force(query, database)
        answer = backend.search(prepared, row, cost.K)
        np.testing.assert_array_equal(np.sort(distances[answer]), distances[order[: cost.K]])


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_the_float_scans_rank_as_a_sort_of_the_distances(distance):
    rng = np.random.default_rng(3)
    database, queries = rng.normal(size=(400, 24)), rng.normal(size=(15, 24))
    backends, _ = cost.float_backends(database, distance)
    for backend in backends:
        prepared = backend.prepare(queries)
        for row, query in enumerate(queries):
            if distance == "cosine":
                unit = database / np.linalg.norm(database, axis=1, keepdims=True)
                distances = 1 - unit @ (query / np.linalg.norm(query))
            else:
                distances = np.linalg.norm(database - query, axis=1)
            np.testing.assert_array_equal(backend.search(prepared, row, cost.K), np.argsort(distances)[: cost.K])


def test_faiss_runs_on_one_thread_while_timed_and_its_setting_is_restored():
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    with cost.single_threaded(faiss):
        assert faiss.omp_get_max_threads() == cost.THREADS
    assert faiss.omp_get_max_threads() == before


def test_a_cell_cost_records_what_ran_and_why_the_rest_did_not(monkeypatch):
    rng = np.random.default_rng(4)
    encoding = cost.Encoding(images=250, seconds=0.5, source="images")
    recorded = cost.cell_cost(encoding, codes(rng, 250, 16)[:50], codes(rng, 250, 16)[50:], 16)
    assert recorded["encode_images_per_s"] == 500 and recorded["bytes_per_item"] == 2
    assert recorded["queries_timed"] == 50 and recorded["threads"] == 1 and recorded["database_items"] == 200
    assert "popcount" in recorded["search"] and "torch" in recorded["not_run"]
    features = cost.cell_cost(
        encoding,
        query_features=rng.normal(size=(5, 7)),
        database_features=rng.normal(size=(9, 7)),
        float_distance="euclidean",
    )
    assert features["bytes_per_item"] == 4 * 7 and "float-scan" in features["search"]
    assert features["not_run"]["faiss-hash"] == "float features: no binary code to hash"
    nothing = cost.cell_cost(encoding, codes(rng, 1, 16)[:0], codes(rng, 10, 16), 16)
    assert nothing["search"] == {} and nothing["queries_timed"] == 0
    assert nothing["not_run"]["popcount"] == "no queries or no database to time"
    monkeypatch.setattr(cost, "import_faiss", lambda: None)
    without = cost.cell_cost(encoding, codes(rng, 5, 16), codes(rng, 10, 16), 16)
    assert set(without["search"]) == {"popcount"} and "faiss not installed" in without["not_run"]["faiss-hash"]


def test_cost_columns_read_records_of_every_age():
    record = {
        "bytes_per_item": 4,
        "encode_images_per_s": 120.0,
        "search": {
            "popcount": {"median_ms": 0.02, "p95_ms": 0.03},
            "faiss-hash": {"median_ms": 0.01, "recall@10": 0.5},
        },
        "not_run": {"faiss-multihash": "faiss not installed (pip install 'hashbench[faiss]')"},
    }
    assert cost.cost_value("search-ms", record) == (0.02, "")
    assert cost.cost_value("bytes", record) == (4.0, "")
    assert cost.cost_value("recall@10-hash", record) == (0.5, "")
    assert cost.cost_value("recall@10-multihash", record) == (
        None,
        "not run: faiss not installed (pip install 'hashbench[faiss]')",
    )
    assert cost.cost_value("search-ms-flat", record) == (None, "not measured")
    assert cost.cost_value("search-ms", None) == (None, "not measured")  # a cell from before costs were recorded
    assert cost.cost_value("bytes", {"bytes_per_item": "four"}) == (None, "not measured")  # never read as a number
