"""A metric is one entry of the metric table: a new one is computed, reported in leaderboards and listed in errors."""

from __future__ import annotations

import numpy as np
import pytest

from hashbench.api import RunRequest, run_grid
from hashbench.evaluation.evaluate import DEFAULT_TIE_RULE, evaluate, parse_metric
from hashbench.evaluation.metrics import METRICS, MetricFamily
from hashbench.evaluation.ranking import tie_order
from hashbench.evaluation.stored import cell_per_query
from hashbench.report import leaderboard
from hashbench.store.results import Cell, ResultsStore


def hits_at(counts, k):
    """1 when some relevant item is ranked within the top k, else 0."""
    return (counts.hits[:, counts.at(k)] > 0).astype(np.float64)


@pytest.fixture
def hits_metric():
    """hits@K, added by one table entry and removed afterwards, so no other test sees it."""
    family = MetricFamily("hits@K", hits_at, "K", "1 when a relevant item is in the top K")
    METRICS.append(family)
    yield family
    METRICS.remove(family)


def unpack_bits(packed, n_bits):
    return np.unpackbits(packed, axis=1)[:, :n_bits].astype(bool)


def brute_force_hits(query_bits, query_labels, db_bits, db_labels, k, tie_keys):
    """hits@k per query with explicit loops: rank by (Hamming distance, tie key), look at the first k items."""
    values = []
    for query, label in zip(query_bits, query_labels):
        distances = [sum(int(a != b) for a, b in zip(query, item)) for item in db_bits]
        ranking = sorted(range(len(db_bits)), key=lambda i: (distances[i], tie_keys[i]))
        values.append(1.0 if any(db_labels[i] == label for i in ranking[:k]) else 0.0)
    return values


def test_a_new_metric_is_one_table_entry_and_matches_brute_force(hits_metric):
    rng = np.random.default_rng(4)
    query_bits, db_bits = rng.random((25, 6)) < 0.5, rng.random((80, 6)) < 0.5  # 6 bits, 80 items: heavy ties
    query_labels, db_labels = rng.integers(0, 5, 25), rng.integers(0, 5, 80)
    ks = (1, 3, 10, 200)  # 200 is beyond the database: the whole ranking, like p@K
    names = tuple(f"hits@{k}" for k in ks)
    result = evaluate(query_bits, query_labels, db_bits, db_labels, (*names, "map@10"), tie_break="index")
    for k, name in zip(ks, names):
        expected = brute_force_hits(query_bits, query_labels, db_bits, db_labels, k, tie_keys=range(len(db_bits)))
        np.testing.assert_array_equal(result.per_query[name], expected, err_msg=name)
    assert 0 < result.metrics["hits@1"] < result.metrics["hits@3"] < 1  # the example tells the cutoffs apart
    alone = evaluate(query_bits, query_labels, db_bits, db_labels, ("map@10",), tie_break="index")
    np.testing.assert_array_equal(result.per_query["map@10"], alone.per_query["map@10"])  # its cutoffs change no other
    with pytest.raises(ValueError, match="hits@0: k must be at least 1"):
        parse_metric("hits@0")


def test_a_new_metric_appears_in_the_leaderboard_from_the_stored_codes(hits_metric, tiny_phantom, tmp_path):
    request = RunRequest(methods=["lsh"], bits=[8], dataset="phantom-tiny-seed0", profile="quick")
    run_grid(request, tiny_phantom.dataset, tmp_path)
    cells = ResultsStore(tmp_path).table()
    assert list(cells["status"]) == ["finished"]
    cell = Cell(cells["directory"].iloc[0])
    codes = cell.codes()
    assert "per_query/hits@10" not in codes  # not stored: the leaderboard computes it from the codes
    query_bits, db_bits = (unpack_bits(codes[side], 8) for side in ("query_codes", "database_codes"))
    assert DEFAULT_TIE_RULE == {"tie_break": "random", "tie_seed": 0}  # the rule the leaderboard ranks under
    tie_keys = np.argsort(tie_order(len(db_bits), 0))  # an item's place in the seeded order breaks its ties
    expected = brute_force_hits(query_bits, codes["query_labels"], db_bits, codes["database_labels"], 10, tie_keys)
    assert 0 < np.mean(expected) < 1

    boards = leaderboard.build(cells, ("hits@10",))
    assert [board.title for board in boards] == ["HITS@10"]
    value = boards[0].table.loc["lsh (training-free)", "8 bits"]
    assert value.startswith(f"{np.mean(expected):.3f} [")
    markdown = leaderboard.to_markdown(boards)
    assert "### HITS@10 — phantom-tiny-seed0\n" in markdown and f"| lsh (training-free) | {value} |" in markdown
    np.testing.assert_array_equal(cell_per_query(cell, "hits@10"), expected)


def test_the_unknown_metric_message_lists_the_table(hits_metric):
    with pytest.raises(ValueError, match="unknown metric") as raised:
        parse_metric("rbp@10")
    message = str(raised.value)
    for family in METRICS:
        assert f"{family.pattern} ({family.help})" in message
    assert "hits@K (1 when a relevant item is in the top K)" in message
    assert message.index("p@rR") < message.index("hits@K")  # in table order: the new entry last
    for refused, reason in (
        ("map@10-tie", "no closed form"),
        ("map@0", "k must be at least 1"),
        ("p@tie", "unknown"),
        ("map@r2", "unknown"),
    ):
        with pytest.raises(ValueError, match=reason):
            parse_metric(refused)


def test_without_the_entry_the_name_is_unknown_again():
    assert all(family.pattern != "hits@K" for family in METRICS)
    with pytest.raises(ValueError, match="unknown metric") as raised:
        parse_metric("hits@10")
    assert "hits@K" not in str(raised.value) and "map@K" in str(raised.value)


def test_an_entry_must_name_known_placeholders_and_a_cutoff_it_has():
    with pytest.raises(ValueError, match="placeholders are K, R, not N"):
        MetricFamily("ndcg@N", hits_at, None, "")
    with pytest.raises(ValueError, match="cutoff must be a placeholder"):
        MetricFamily("hits@rR", hits_at, "K", "")
